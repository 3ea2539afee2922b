"""Hostile and odd archives: each is refused or handled as documented in soute.layer.apply,
and nothing outside the destination is touched."""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soute.errors import SouteError
from soute.layer import apply_layer
from test_layer_support import needs_root


@dataclass
class E:
    """One entry of a hand-made archive."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    pax: dict[str, str] | None = None
    devmajor: int = 0
    devminor: int = 0


def make_tar(*entries: E, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.linkname = e.linkname
            info.size = len(e.data)
            info.mtime = 1_000_000
            info.devmajor, info.devminor = e.devmajor, e.devminor
            if e.pax:
                info.pax_headers = dict(e.pax)
            tf.addfile(info, io.BytesIO(e.data) if e.data else None)
    return out.getvalue()


class Box:
    """tmp/box/{dest,sentinel}: the sentinel and everything around dest must stay as it was."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.box = tmp / "box"
        self.dest = self.box / "dest"
        self.sentinel = self.box / "sentinel"
        self.dest.mkdir(parents=True)
        self.sentinel.mkdir()
        (self.sentinel / "file").write_bytes(b"precious")
        (self.sentinel / "passwd").write_bytes(b"root:x:0:0")
        self.host_name = f"soute-hostile-{uuid.uuid4().hex}"

    def apply(self, data: bytes, *, overlay: bool = False) -> None:
        apply_layer(io.BytesIO(data), self.dest, overlay=overlay)

    def check_outside(self) -> None:
        assert os.listdir(self.tmp) == ["box"]
        assert sorted(os.listdir(self.box)) == ["dest", "sentinel"]
        assert sorted(os.listdir(self.sentinel)) == ["file", "passwd"]
        assert (self.sentinel / "file").read_bytes() == b"precious"
        assert (self.sentinel / "passwd").read_bytes() == b"root:x:0:0"
        assert not os.path.lexists(f"/etc/{self.host_name}")
        assert not os.path.lexists(f"/{self.host_name}")

    def refused(self, data: bytes, entry: str, *, overlay: bool = False) -> SouteError:
        with pytest.raises(SouteError) as info:
            self.apply(data, overlay=overlay)
        assert entry in str(info.value)
        self.check_outside()
        return info.value


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    b = Box(tmp_path)
    yield b
    b.check_outside()


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/../../x", "./../x", "a/b/../../../x", ".."])
def test_parent_escapes_are_refused(box: Box, name: str) -> None:
    err = box.refused(make_tar(E("a/", tarfile.DIRTYPE), E(name, data=b"evil")), name)
    assert "leaves the destination" in str(err)


def test_dotdot_inside_stays_inside(box: Box) -> None:
    box.apply(make_tar(E("a/b/../c", data=b"ok")))
    assert (box.dest / "a" / "c").read_bytes() == b"ok"


def test_absolute_names_are_rooted_in_dest(box: Box) -> None:
    # Like docker and containerd: a leading "/" means the image root.
    box.apply(make_tar(E(f"/etc/{box.host_name}", data=b"x"), E("//twice", data=b"y")))
    assert (box.dest / "etc" / box.host_name).read_bytes() == b"x"
    assert (box.dest / "twice").read_bytes() == b"y"


def test_dot_prefixed_names_and_root_entry(box: Box) -> None:
    box.apply(
        make_tar(
            E("./", tarfile.DIRTYPE, mode=0o700), E("./a/./b", data=b"1"), E(".", tarfile.DIRTYPE)
        )
    )
    assert (box.dest / "a" / "b").read_bytes() == b"1"
    assert box.dest.stat().st_mode & 0o777 == 0o755  # the root entry is skipped, like docker


# --- symlinks on the path -------------------------------------------------------------------


def test_write_through_absolute_symlink_stays_in_dest(box: Box) -> None:
    box.apply(
        make_tar(
            E("l", tarfile.SYMTYPE, linkname="/"),
            E("l/x", data=b"rooted"),
            E("var/", tarfile.DIRTYPE),
            E("run/", tarfile.DIRTYPE),
            E("var/run", tarfile.SYMTYPE, linkname="/run"),
            E("var/run/pid", data=b"1"),
        )
    )
    assert (box.dest / "x").read_bytes() == b"rooted"
    assert (box.dest / "run" / "pid").read_bytes() == b"1"
    assert os.readlink(box.dest / "l") == "/"


@pytest.mark.parametrize("target", ["../..", "..", "../sentinel", "a/../../..", "/../.."])
def test_write_through_escaping_symlink_is_refused(box: Box, target: str) -> None:
    data = make_tar(
        E("a/", tarfile.DIRTYPE),
        E("l", tarfile.SYMTYPE, linkname=target),
        E("l/file", data=b"evil"),
    )
    box.refused(data, "l/file")
    assert os.readlink(box.dest / "l") == target  # the symlink itself is fine to have


def test_symlink_chain_escape_is_refused(box: Box) -> None:
    data = make_tar(
        E("a/", tarfile.DIRTYPE),
        E("a/up", tarfile.SYMTYPE, linkname=".."),
        E("b", tarfile.SYMTYPE, linkname="a/up/a/up/.."),
        E("b/sentinel/file", data=b"evil"),
    )
    box.refused(data, "b/sentinel/file")


def test_symlink_loop_is_refused(box: Box) -> None:
    data = make_tar(
        E("a", tarfile.SYMTYPE, linkname="b"),
        E("b", tarfile.SYMTYPE, linkname="a"),
        E("a/x", data=b"x"),
    )
    err = box.refused(data, "a/x")
    assert "too many levels" in str(err)


def test_file_over_symlink_replaces_the_symlink(box: Box) -> None:
    data = make_tar(E("x", tarfile.SYMTYPE, linkname="../sentinel/file"), E("x", data=b"new"))
    box.apply(data)
    assert (box.dest / "x").read_bytes() == b"new"
    assert not (box.dest / "x").is_symlink()


def test_dir_over_symlink_replaces_the_symlink(box: Box) -> None:
    data = make_tar(
        E("d", tarfile.SYMTYPE, linkname="../sentinel"),
        E("d/", tarfile.DIRTYPE),
        E("d/file", data=b"new"),
    )
    box.apply(data)
    assert (box.dest / "d").is_dir() and not (box.dest / "d").is_symlink()


def test_parent_that_is_a_file_is_refused(box: Box) -> None:
    box.refused(make_tar(E("f", data=b"1"), E("f/x", data=b"2")), "f/x")


# --- hardlinks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("linkname", "why"),
    [
        ("../../etc/passwd", "leaves the destination"),
        ("../sentinel/passwd", "leaves the destination"),
        ("/etc/passwd", "not an earlier entry"),
        ("later", "not an earlier entry"),
        ("l/sentinel/passwd", "leads outside"),
        ("d", "is a directory"),
        ("self", "itself"),
    ],
)
def test_bad_hardlinks_are_refused(box: Box, linkname: str, why: str) -> None:
    data = make_tar(
        E("l", tarfile.SYMTYPE, linkname=".."),
        E("d/", tarfile.DIRTYPE),
        E("self", data=b"s"),
        E("self" if linkname == "self" else "h", tarfile.LNKTYPE, linkname=linkname),
        E("later", data=b"too late"),
    )
    err = box.refused(data, "self" if linkname == "self" else "h")
    assert why in str(err)


def test_hardlink_to_earlier_entry(box: Box) -> None:
    box.apply(
        make_tar(
            E("a/f", data=b"shared", mode=0o4755),
            E("b/h", tarfile.LNKTYPE, linkname="/a/f", mode=0o600),
        )
    )
    a, b = (box.dest / "a" / "f").stat(), (box.dest / "b" / "h").stat()
    assert (a.st_ino, a.st_nlink, a.st_mode & 0o7777) == (b.st_ino, 2, 0o4755)


def test_hardlink_to_lower_content_is_refused(box: Box) -> None:
    (box.dest / "lower").write_bytes(b"from a lower layer")
    box.refused(make_tar(E("h", tarfile.LNKTYPE, linkname="lower")), "h")


# --- duplicates -----------------------------------------------------------------------------


def test_duplicates_last_wins(box: Box) -> None:
    box.apply(
        make_tar(
            E("f", data=b"one"),
            E("f", data=b"two"),
            E("x", data=b"file"),
            E("x/", tarfile.DIRTYPE),
            E("x/in", data=b"in"),
            E("y/", tarfile.DIRTYPE),
            E("y/child", data=b"c"),
            E("y", data=b"now a file"),
            E("z/", tarfile.DIRTYPE, mode=0o700),
            E("z/keep", data=b"k"),
            E("z/", tarfile.DIRTYPE, mode=0o751),
        )
    )
    assert (box.dest / "f").read_bytes() == b"two"
    assert (box.dest / "x" / "in").read_bytes() == b"in"
    assert (box.dest / "y").read_bytes() == b"now a file"
    assert (box.dest / "z" / "keep").exists()
    assert (box.dest / "z").stat().st_mode & 0o7777 == 0o751


# --- sizes and framing ----------------------------------------------------------------------


def test_size_larger_than_the_data_is_an_error(box: Box) -> None:
    info = tarfile.TarInfo("big")
    info.size = 10**12
    data = info.tobuf(tarfile.PAX_FORMAT) + b"only this much"
    err = box.refused(data, "big")
    assert "truncated" in str(err)


def test_truncated_header_is_an_error(box: Box) -> None:
    data = make_tar(E("a", data=b"1"), E("b", data=b"2"))
    box.refused(data[: 512 * 3 + 100], "truncated")


def test_corrupt_header_is_an_error_not_the_end(box: Box) -> None:
    data = bytearray(make_tar(E("a", data=b"1"), E("b", data=b"2")))
    data[1024 + 5] ^= 0xFF  # in the second member's name
    box.refused(bytes(data), "checksum")


def test_compressed_input_gets_a_hint(box: Box) -> None:
    for data in (
        gzip.compress(make_tar(E("a")), mtime=0),
        gzip.compress(make_tar(E("a", data=os.urandom(4096))), mtime=0),
    ):
        err = box.refused(data, "layer tar")
        assert "gzip-compressed" in str(err) and "open_decompressed" in str(err)


def test_absurd_pax_header_is_refused(box: Box) -> None:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 1 << 40
    box.refused(info.tobuf(tarfile.GNU_FORMAT) + b"9 a=b\n", "extended header")


def test_malformed_pax_record_is_refused(box: Box) -> None:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    body = b"0 x=y\n"
    info.size = len(body)
    data = info.tobuf(tarfile.USTAR_FORMAT) + body + bytes(512 - len(body)) + make_tar(E("a"))
    box.refused(data, "PAX record")


def test_missing_end_blocks_are_accepted(box: Box) -> None:
    data = make_tar(E("a", data=b"1"))
    box.apply(data[:1024])  # header and data, no end-of-archive blocks
    assert (box.dest / "a").read_bytes() == b"1"


# --- whiteouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["d/.wh.", "d/.wh..", "d/.wh...", ".wh."])
@pytest.mark.parametrize("overlay", [False, True])
def test_malformed_whiteouts_are_refused(box: Box, name: str, overlay: bool) -> None:
    box.refused(make_tar(E("d/", tarfile.DIRTYPE), E(name)), name, overlay=overlay)


def test_whiteout_name_as_directory_is_refused(box: Box) -> None:
    box.refused(make_tar(E(".wh.x/y", data=b"1")), ".wh.x/y")


def test_aufs_metadata_is_skipped(box: Box) -> None:
    box.apply(
        make_tar(
            E(".wh..wh.plnk/", tarfile.DIRTYPE),
            E(".wh..wh.plnk/123", data=b"1"),
            E(".wh..wh.aufs", data=b""),
            E("d/.wh..wh.orph/x"),
            E("kept", data=b"k"),
        )
    )
    assert os.listdir(box.dest) == ["kept"]


def test_overlay_xattrs_from_a_layer_are_dropped(box: Box) -> None:
    box.apply(
        make_tar(
            E(
                "d/",
                tarfile.DIRTYPE,
                pax={
                    "SCHILY.xattr.trusted.overlay.opaque": "y",
                    "SCHILY.xattr.trusted.overlay.redirect": "/etc",
                    "SCHILY.xattr.user.fine": "ok",
                },
            )
        ),
        overlay=True,
    )
    assert os.listxattr(box.dest / "d") == ["user.fine"]


def test_whiteouts_only_hide_lower_content(box: Box) -> None:
    (box.dest / "d").mkdir()
    (box.dest / "d" / "lower").write_bytes(b"lower")
    (box.dest / "d" / "sub").mkdir()
    (box.dest / "d" / "sub" / "lower").write_bytes(b"lower")
    (box.dest / "gone").write_bytes(b"lower")
    box.apply(
        make_tar(
            E("d/", tarfile.DIRTYPE),
            E("d/new", data=b"mine"),
            E("d/sub/new", data=b"mine"),
            E("d/.wh..wh..opq"),  # after this layer's own entries: they stay
            E("d/later", data=b"mine"),
            E("mine", data=b"m"),
            E(".wh.mine"),  # a whiteout never hides its own layer
            E(".wh.gone"),
            E("nowhere/.wh.x"),
        )
    )
    (box.dest / "file").write_bytes(b"lower file")
    box.apply(make_tar(E("file/.wh..wh..opq"), E("file/.wh.x")))  # nothing to hide there
    assert (box.dest / "file").read_bytes() == b"lower file"
    assert sorted(os.listdir(box.dest / "d")) == ["later", "new", "sub"]
    assert os.listdir(box.dest / "d" / "sub") == ["new"]
    assert sorted(os.listdir(box.dest)) == ["d", "file", "mine"]


# --- devices and privileges -----------------------------------------------------------------


@needs_root
def test_devices_as_root(box: Box) -> None:
    box.apply(
        make_tar(
            E("null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
            E("loop", tarfile.BLKTYPE, devmajor=7, devminor=0, mode=0o660),
            E("fifo", tarfile.FIFOTYPE, mode=0o620),
        )
    )
    st = (box.dest / "null").lstat()
    assert os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert st.st_mode & 0o7777 == 0o666
    assert (box.dest / "loop").is_block_device()
    assert (box.dest / "fifo").is_fifo()


def test_devices_skipped_without_root(
    box: Box, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with caplog.at_level(logging.WARNING, logger="soute.layer.apply"):
        box.apply(
            make_tar(
                E("null", tarfile.CHRTYPE, devmajor=1, devminor=3),
                E("fifo", tarfile.FIFOTYPE),
                E("f", data=b"1"),
            )
        )
    assert sorted(os.listdir(box.dest)) == ["f", "fifo"]
    assert "skipping device 'null'" in caplog.text


def test_dest_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(SouteError, match="not a directory"):
        apply_layer(io.BytesIO(make_tar(E("a"))), tmp_path / "missing", overlay=False)


# --- fuzzing: whatever the archive, only SouteError, and nothing outside dest ---------------

_components = st.sampled_from(
    ["a", "b", "l", "..", ".", "", "sentinel", "file", ".wh.a", ".wh..wh..opq", "c"]
)
_paths = st.lists(_components, min_size=1, max_size=4).map("/".join)
_absolute = st.builds(lambda p: "/" + p, _paths)
_targets = st.one_of(
    st.sampled_from(["/", "..", "../..", "../sentinel", "../sentinel/file", "/etc", "l/.."]),
    _paths,
    _absolute,
)
_entries = st.lists(
    st.one_of(
        st.builds(
            E, st.one_of(_paths, _absolute), st.just(tarfile.REGTYPE), st.binary(max_size=20)
        ),
        st.builds(E, _paths, st.just(tarfile.DIRTYPE)),
        st.builds(E, _paths, st.just(tarfile.SYMTYPE), linkname=_targets),
        st.builds(E, _paths, st.just(tarfile.LNKTYPE), linkname=_targets),
        st.builds(E, _paths, st.just(tarfile.FIFOTYPE)),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=_entries, overlay=st.booleans())
def test_fuzz_entries_stay_inside(entries: list[E], overlay: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        b = Box(Path(tmp))
        with contextlib.suppress(SouteError):
            b.apply(make_tar(*entries), overlay=overlay)
        b.check_outside()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.integers(0, 20_000),
    flips=st.lists(st.tuples(st.integers(0, 20_000), st.integers(1, 255)), max_size=6),
)
def test_fuzz_corrupt_archives_fail_cleanly(cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(
        make_tar(
            E("d/", tarfile.DIRTYPE),
            E("d/" + "long" * 40, data=b"x" * 3000, pax={"SCHILY.xattr.user.k": "v"}),
            E("l", tarfile.SYMTYPE, linkname="d"),
            E("h", tarfile.LNKTYPE, linkname="l"),
            E("null", tarfile.CHRTYPE, devmajor=1, devminor=3),
            fmt=tarfile.GNU_FORMAT,
        )
        + make_tar(E("p/q", data=b"y" * 700))
    )
    for at, xor in flips:
        if at < len(data):
            data[at] ^= xor
    with tempfile.TemporaryDirectory() as tmp:
        b = Box(Path(tmp))
        with contextlib.suppress(SouteError):
            b.apply(bytes(data[: cut or len(data)]))
        b.check_outside()


_numbers = st.one_of(st.integers(0, 3000), st.sampled_from([-5, 2**21, 2**33, 2**40, 2**62]))
_pax_keys = st.sampled_from(
    [
        "path",
        "linkpath",
        "size",
        "uid",
        "gid",
        "mtime",
        "SCHILY.xattr.user.x",
        "SCHILY.xattr.trusted.overlay.opaque",
        "LIBARCHIVE.xattr.user.y",
        "GNU.sparse.map",
        "GNU.sparse.size",
        "GNU.sparse.major",
        "GNU.sparse.name",
        "GNU.sparse.realsize",
        "GNU.sparse.offset",
        "GNU.sparse.numbytes",
        "hdrcharset",
    ]
)
_pax_values = st.one_of(
    st.sampled_from(["", "0", "-1", "1.5", "x", "0,5,10,5", "1", "a\x00b", "../x", "99999999"]),
    st.text(max_size=10),
)


@st.composite
def _weird_member(draw: st.DrawFn) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(draw(st.one_of(_paths, _absolute)))
    info.type = draw(
        st.sampled_from(
            [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"S", b"D", b"V", b"Z", b"\x00"]
        )
    )
    info.linkname = draw(_targets)
    info.mode = draw(st.integers(0, 0o7777))
    info.uid, info.gid = draw(_numbers), draw(_numbers)
    info.mtime = draw(st.one_of(_numbers, st.just(-(2**40))))
    info.devmajor, info.devminor = draw(_numbers), draw(_numbers)
    info.pax_headers = draw(st.dictionaries(_pax_keys, _pax_values, max_size=3))
    data = draw(st.binary(max_size=1500))
    info.size = len(data)
    return info, data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    members=st.lists(_weird_member(), max_size=5),
    overlay=st.booleans(),
    fmt=st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
)
def test_fuzz_header_fields(
    members: list[tuple[tarfile.TarInfo, bytes]], overlay: bool, fmt: int
) -> None:
    out = io.BytesIO()
    try:
        with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
            for info, data in members:
                tf.addfile(info, io.BytesIO(data))
    except (ValueError, tarfile.TarError):
        return  # not even tarfile will write it
    with tempfile.TemporaryDirectory() as tmp:
        b = Box(Path(tmp))
        with contextlib.suppress(SouteError):
            b.apply(out.getvalue(), overlay=overlay)
        b.check_outside()


# ---------------------------------------------------------------------------- a changing tree


class _Swapping(io.RawIOBase):
    """A layer's output that, at its first write, runs ``swap``: the walk is then still
    reading the large file that comes first (its 1 MiB chunks fill the writer's queue of
    16), and reaches the swapped entries only after."""

    def __init__(self, swap: object) -> None:
        self.swap, self.data = swap, bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:  # type: ignore[override]
        if self.swap is not None:
            self.swap()  # type: ignore[operator]
            self.swap = None
        self.data += bytes(data)  # type: ignore[call-overload]
        return len(data)  # type: ignore[arg-type]


@needs_root
@pytest.mark.parametrize("swapped", ["directory", "file"])
def test_a_tree_changed_during_the_walk_never_puts_host_files_in_the_layer(
    tmp_path: Path, swapped: str
) -> None:
    """commit reads a running container's upper dir: the container may replace a directory
    it listed with a symlink to a host directory, or a file with a device node. The walk
    must refuse (the layer fails), not read the host's files or device."""
    from soute.layer import write_layer

    secret = tmp_path / "host"
    secret.mkdir()
    (secret / "shadow").write_bytes(b"host secret")
    tree = tmp_path / "upper"
    tree.mkdir()
    (tree / "a-large").write_bytes(bytes(24 << 20))
    (tree / "b").mkdir()
    (tree / "b" / "mine").write_bytes(b"mine")
    (tree / "c").write_bytes(b"c" * 4096)

    def swap() -> None:
        if swapped == "directory":
            os.rename(tree / "b", tree / "b-moved")
            os.symlink(secret, tree / "b")
        else:
            os.unlink(tree / "c")
            os.mknod(tree / "c", 0o644 | 0o020000, os.makedev(1, 9))  # /dev/urandom

    out = _Swapping(swap)
    with pytest.raises(SouteError, match="was replaced while it was being read"):
        write_layer(tree, out)  # type: ignore[arg-type]
    assert b"host secret" not in out.data


def test_the_walk_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """One descriptor per directory is held during the walk and closed after it, also when
    the walk fails: a build writes many layers in one process."""
    from soute.layer import write_layer

    for i in range(50):
        (tmp_path / "t" / f"d{i}" / "sub").mkdir(parents=True)
        (tmp_path / "t" / f"d{i}" / "sub" / "f").write_bytes(b"f")
    before = len(os.listdir("/proc/self/fd"))
    write_layer(tmp_path / "t", io.BytesIO())  # type: ignore[arg-type]
    (tmp_path / "t" / "d7" / "sub" / "f").chmod(0)
    os.setxattr(tmp_path / "t" / "d9", "trusted.overlay.redirect", b"x")  # refused
    with pytest.raises(SouteError):
        write_layer(tmp_path / "t", io.BytesIO())  # type: ignore[arg-type]
    assert len(os.listdir("/proc/self/fd")) == before
