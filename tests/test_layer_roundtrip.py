"""write_layer -> apply_layer round trips on real trees, and the writer's tar conventions."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soute.layer import LayerDigest, apply_layer, write_layer
from test_layer_support import (
    CAPABILITY,
    Spec,
    apply_bytes,
    build_tree,
    layer_bytes,
    needs_root,
    snapshot,
)

# --- random trees ---------------------------------------------------------------------------

_plain = st.text(alphabet=st.sampled_from("abcxyz019_-. ~@é漢"), min_size=1, max_size=12).map(
    lambda s: s.encode()
)
_binary = st.binary(min_size=1, max_size=6).map(
    lambda b: b"n" + b.replace(b"/", b"_").replace(b"\x00", b"_")
)
_long = st.integers(101, 250).map(lambda n: b"L" * n)
_names = st.one_of(_plain, _plain, _plain, _binary, _long).filter(
    lambda n: n not in (b".", b"..") and not n.startswith(b".wh.")
)
_ids = st.sampled_from([0, 0, 1, 1000, 65534, 2097151, 2097152, 4_000_000])
_mtimes = st.one_of(
    st.integers(0, 2**31),
    st.sampled_from([-1, -86_400 * 365 * 30, 8**11 - 1, 8**11, 2**34 - 1]),
).flatmap(lambda s: st.integers(0, 10**9 - 1).map(lambda ns: s * 10**9 + ns))
_file_modes = st.sampled_from([0o644, 0o755, 0o600, 0o000, 0o4755, 0o2755, 0o6711, 0o1644, 0o777])
_dir_modes = st.sampled_from([0o755, 0o700, 0o1777, 0o2775, 0o555, 0o000])
_values = st.binary(max_size=40)


@st.composite
def _xattrs(draw: st.DrawFn, kind: str) -> dict[str, bytes]:
    names = ["trusted.t", "trusted.other.name"]
    if kind in ("file", "dir"):
        names += ["user.a", "user.mime_type"]
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=3))
    xattrs = {n: draw(_values) for n in chosen}
    if kind == "file" and draw(st.booleans()):
        xattrs["security.capability"] = CAPABILITY
    return xattrs


@st.composite
def trees(draw: st.DrawFn) -> list[Spec]:
    dirs = [b""]
    files: list[bytes] = []
    specs: list[Spec] = []
    used: set[bytes] = set()
    for _ in range(draw(st.integers(1, 30))):
        parent = draw(st.sampled_from(dirs))
        rel = (parent + b"/" if parent else b"") + draw(_names)
        if rel in used or len(rel) > 1000:
            continue
        used.add(rel)
        kinds = ["dir", "dir", "file", "file", "file", "symlink", "fifo", "chr", "blk"]
        kind = draw(st.sampled_from(kinds + (["hardlink"] * 2 if files else [])))
        spec = Spec(kind, rel, uid=draw(_ids), gid=draw(_ids), mtime_ns=draw(_mtimes))
        if kind == "dir":
            spec.mode = draw(_dir_modes)
            dirs.append(rel)
        elif kind == "file":
            spec.mode = draw(_file_modes)
            spec.content = draw(
                st.one_of(
                    st.binary(max_size=2000), st.sampled_from([b"", b"\x00" * 513, b"x" * 70_000])
                )
            )
            files.append(rel)
        elif kind == "symlink":
            spec.target = draw(
                st.one_of(
                    st.sampled_from([b"/", b"..", b"../../..", b"/etc/passwd", b"dangling", b"."]),
                    _names,
                    st.sampled_from(files or [b"x"]),
                )
            )
        elif kind == "hardlink":
            spec.target = draw(st.sampled_from(files))
        elif kind in ("chr", "blk"):
            spec.mode = draw(st.sampled_from([0o600, 0o666, 0o640]))
            spec.rdev = draw(st.sampled_from([(0, 0), (1, 3), (7, 0), (4095, 1048575)]))
        else:
            spec.mode = draw(st.sampled_from([0o644, 0o600, 0o1666]))
        if kind != "hardlink":
            spec.xattrs = draw(_xattrs(kind))
        specs.append(spec)
    return specs


@needs_root
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=trees())
def test_roundtrip_random_trees(specs: list[Spec]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, dest = Path(tmp, "src"), Path(tmp, "dest")
        src.mkdir()
        dest.mkdir()
        build_tree(src, specs)
        data = layer_bytes(src)
        apply_bytes(data, dest)
        assert snapshot(dest) == snapshot(src)
        # Same tree, same DiffID; and the applied copy (new inodes, new creation order)
        # writes the very same bytes.
        assert layer_bytes(src) == data
        assert layer_bytes(dest) == data


# --- determinism and conventions ------------------------------------------------------------


def _sample(root: Path) -> None:
    build_tree(
        root,
        [
            Spec("dir", b"b", mode=0o755, mtime_ns=1),
            Spec("file", b"b/z", content=b"zz", mtime_ns=1_700_000_000_750_000_000),
            Spec("file", b"b.txt", content=b"b", mtime_ns=3),
            Spec("dir", b"a", mode=0o755),
            Spec("file", b"a/x", content=b"1" * 600, mode=0o4755),
            Spec("hardlink", b"a/y", target=b"b/z"),
            Spec("symlink", b"a/l", target=b"../b.txt"),
            Spec("dir", b"a/sub"),
            Spec("file", b"a-", content=b""),
        ],
    )


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return tf.getmembers()


def test_conventions(tmp_path: Path) -> None:
    _sample(tmp_path)
    data = layer_bytes(tmp_path)
    raw_names = []
    pos = 0
    while data[pos : pos + 512] != bytes(512):
        header = data[pos : pos + 512]
        raw_names.append(header[:100].rstrip(b"\x00"))
        size = int(header[124:136].rstrip(b"\x00") or b"0", 8)
        pos += 512 + (size + 511) // 512 * 512
    # Depth first, each directory sorted by bytes, directories with a trailing slash;
    # "a-" < "a/" would hold in a flat sort, but a directory's subtree follows it directly.
    assert raw_names == [b"a/", b"a/l", b"a/sub/", b"a/x", b"a/y", b"a-", b"b/", b"b/z", b"b.txt"]
    members = {m.name: m for m in _members(data)}
    # The hardlink group: the first path in archive order carries the data.
    assert members["a/y"].isreg() and members["a/y"].size == 2
    assert members["b/z"].islnk() and members["b/z"].size == 0
    assert members["b/z"].linkname == "a/y"
    assert members["a/x"].mode == 0o4755
    assert members["b/z"].mtime == 1_700_000_000  # truncated to whole seconds, no PAX record
    for m in members.values():
        assert m.uname == m.gname == ""
        assert "atime" not in m.pax_headers and "ctime" not in m.pax_headers
        assert "mtime" not in m.pax_headers
    assert len(data) % 10240 == 0


def test_hardlink_group_order_follows_sort(tmp_path: Path) -> None:
    build_tree(
        tmp_path,
        [
            Spec("file", b"zz", content=b"data"),
            Spec("hardlink", b"aa", target=b"zz"),
            Spec("hardlink", b"mm", target=b"zz"),
        ],
    )
    members = _members(layer_bytes(tmp_path))
    assert [(m.name, m.type, m.linkname) for m in members] == [
        ("aa", tarfile.REGTYPE, ""),
        ("mm", tarfile.LNKTYPE, "aa"),
        ("zz", tarfile.LNKTYPE, "aa"),
    ]


def test_epoch_clamps_mtimes(tmp_path: Path) -> None:
    build_tree(
        tmp_path,
        [
            Spec("file", b"old", mtime_ns=100 * 10**9),
            Spec("file", b"new", mtime_ns=2_000_000_000 * 10**9),
        ],
    )
    members = {m.name: m for m in _members(layer_bytes(tmp_path, epoch=1_000_000))}
    assert members["old"].mtime == 100
    assert members["new"].mtime == 1_000_000


def test_same_tree_same_diff_id(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _sample(one)
    _sample(two)
    first = write_layer(one, io.BytesIO(), overlay=False)
    assert isinstance(first, LayerDigest)
    assert write_layer(two, io.BytesIO(), overlay=False) == first
    os.utime(two / "a" / "x", ns=(0, 5 * 10**9))
    assert write_layer(two, io.BytesIO(), overlay=False) != first


def test_non_utf8_and_long_names_round_trip(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    deep = b"/".join([b"d" * 60] * 5)
    build_tree(
        src,
        [
            Spec("file", b"caf\xe9-latin1", content=b"1"),
            Spec("file", "café-漢字".encode(), content=b"2"),
            Spec("dir", b"d" * 60),
            *[Spec("dir", b"/".join([b"d" * 60] * i)) for i in range(2, 6)],
            Spec("file", deep + b"/" + b"f" * 200, content=b"3"),
            Spec("symlink", b"long-link", target=b"t" * 300),
            Spec("symlink", b"bin-link", target=b"\xff\xfe"),
        ],
    )
    data = layer_bytes(src)
    apply_bytes(data, dest)
    assert snapshot(dest) == snapshot(src)
    names = {m.name for m in _members(data)}  # tarfile reads it too (surrogateescape)
    assert os.fsdecode(b"caf\xe9-latin1") in names


def test_sparse_file_is_written_dense(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(3 << 20)
        f.write(b"tail")
    data = layer_bytes(src)
    member = _members(data)[0]
    assert member.type == tarfile.REGTYPE and member.size == (3 << 20) + 4
    apply_bytes(data, dest)
    assert (dest / "sparse").read_bytes() == (src / "sparse").read_bytes()


def test_sockets_are_skipped(tmp_path: Path) -> None:
    import socket

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock"))
        assert [m.name for m in _members(layer_bytes(src))] == ["f"]


def test_large_file_streams_in_chunks(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    payload = os.urandom(1 << 16) * 48  # 3 MiB: several write/read chunks
    (src / "big").write_bytes(payload)
    data = layer_bytes(src)
    apply_bytes(data, dest)
    assert (dest / "big").read_bytes() == payload


def test_write_layer_refuses_a_missing_root(tmp_path: Path) -> None:
    from soute.errors import SouteError

    with pytest.raises(SouteError, match="cannot write a layer"):
        write_layer(tmp_path / "nope", io.BytesIO())


def test_apply_accepts_pipes(tmp_path: Path) -> None:
    """A non-seekable stream that hands out a few bytes at a time."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    _sample(src)
    data = layer_bytes(src)

    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self.pos = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            n = min(len(buffer), 777, len(data) - self.pos)
            buffer[:n] = data[self.pos : self.pos + n]
            self.pos += n
            return n

    stream = Trickle()
    apply_layer(stream, dest, overlay=False)  # type: ignore[arg-type]
    assert stream.pos == len(data)  # read to the end, padding included
    assert snapshot(dest) == snapshot(src)
