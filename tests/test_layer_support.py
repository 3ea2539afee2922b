"""Helpers shared by the test_layer_* files: tree snapshots, tree building, overlay mounts.

The tests at the bottom check that the snapshot really tells trees apart, so the round-trip
tests built on it can fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from soute.layer import apply_layer, write_layer
from soute.layer.write import keep_xattr

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (owners, devices, xattrs)")

# A valid VFS_CAP_REVISION_2 value: cap_net_raw permitted and effective.
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int | None  # whole seconds; None where not compared
    size: int = 0
    digest: str = ""
    target: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, bytes], ...] = ()
    link_group: bytes = b""  # first path (bytes order) of its hardlink group, if any


def snapshot(root: Path, *, dir_mtimes: bool = True) -> dict[bytes, Node]:
    """Everything a layer records about the tree below ``root`` (the root itself excluded)."""
    top = os.fsencode(root)
    nodes: dict[bytes, Node] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    todo = [b""]
    while todo:
        rel_dir = todo.pop()
        for name in os.listdir(top + b"/" + rel_dir if rel_dir else top):
            rel = rel_dir + b"/" + name if rel_dir else name
            path = top + b"/" + rel
            st = os.lstat(path)
            mode = st.st_mode
            kind = {
                stat.S_IFDIR: "dir",
                stat.S_IFREG: "file",
                stat.S_IFLNK: "symlink",
                stat.S_IFCHR: "chr",
                stat.S_IFBLK: "blk",
                stat.S_IFIFO: "fifo",
                stat.S_IFSOCK: "sock",
            }[stat.S_IFMT(mode)]
            digest = ""
            if kind == "file":
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            xattrs = tuple(
                sorted(
                    (x, os.getxattr(path, x, follow_symlinks=False))
                    for x in os.listxattr(path, follow_symlinks=False)
                    if keep_xattr(x)
                )
            )
            if kind != "dir" and st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            nodes[rel] = Node(
                kind=kind,
                mode=stat.S_IMODE(mode),
                uid=st.st_uid,
                gid=st.st_gid,
                mtime=None if kind == "dir" and not dir_mtimes else st.st_mtime_ns // 10**9,
                size=st.st_size if kind == "file" else 0,
                digest=digest,
                target=os.readlink(path) if kind == "symlink" else b"",
                rdev=(os.major(st.st_rdev), os.minor(st.st_rdev))
                if kind in ("chr", "blk")
                else (0, 0),
                xattrs=xattrs,
            )
            if kind == "dir":
                todo.append(rel)
    for group in inodes.values():
        if len(group) > 1:
            first = min(group)
            for rel in group:
                nodes[rel] = _replace(nodes[rel], link_group=first)
    return nodes


def _replace(node: Node, **changes: object) -> Node:
    return Node(**{**node.__dict__, **changes})


@dataclass
class Spec:
    """One entry of a tree to build."""

    kind: str  # dir, file, symlink, hardlink, fifo, chr, blk
    rel: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    content: bytes = b""
    target: bytes = b""  # symlink target, or hardlink target path
    rdev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)


def build_tree(root: Path, specs: list[Spec]) -> None:
    """Create ``specs`` (parents listed before children) under the existing dir ``root``."""
    top = os.fsencode(root)
    for s in specs:
        path = top + b"/" + s.rel
        if s.kind == "dir":
            os.mkdir(path)
        elif s.kind == "file":
            with open(path, "wb") as f:
                f.write(s.content)
        elif s.kind == "symlink":
            os.symlink(s.target, path)
        elif s.kind == "fifo":
            os.mkfifo(path)
        elif s.kind in ("chr", "blk"):
            fmt = stat.S_IFCHR if s.kind == "chr" else stat.S_IFBLK
            os.mknod(path, fmt | 0o600, os.makedev(*s.rdev))
        if s.kind == "hardlink":
            continue
        os.chown(path, s.uid, s.gid, follow_symlinks=False)  # chown first: it clears caps
        for name, value in s.xattrs.items():
            os.setxattr(path, name, value, follow_symlinks=False)
        if s.kind != "symlink":
            os.chmod(path, s.mode)
    for s in specs:
        if s.kind == "hardlink":
            os.link(top + b"/" + s.target, top + b"/" + s.rel, follow_symlinks=False)
    # Times last, deepest first: creating entries changes their parents' mtimes.
    for s in sorted(specs, key=lambda s: s.rel.count(b"/"), reverse=True):
        if s.kind != "hardlink":
            os.utime(top + b"/" + s.rel, ns=(s.mtime_ns, s.mtime_ns), follow_symlinks=False)


def layer_bytes(root: Path, *, overlay: bool = False, epoch: int | None = None) -> bytes:
    out = io.BytesIO()
    digest = write_layer(root, out, overlay=overlay, epoch=epoch)
    data = out.getvalue()
    assert digest.size == len(data)
    assert digest.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    return data


def apply_bytes(data: bytes, dest: Path, *, overlay: bool = False) -> None:
    apply_layer(io.BytesIO(data), dest, overlay=overlay)


@contextlib.contextmanager
def overlay_mount(
    lowers: list[Path], target: Path, upper: Path | None = None, work: Path | None = None
) -> Iterator[Path]:
    """Mount overlayfs at ``target`` (lowers listed top first); unmount on exit."""
    options = "lowerdir=" + ":".join(str(p) for p in lowers)
    if upper is not None and work is not None:
        options += f",upperdir={upper},workdir={work}"
    options += ",redirect_dir=off,metacopy=off" if upper is not None else ""
    result = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(target)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount overlayfs here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def copy_tree(src: Path, dst: Path) -> None:
    """An exact copy (owners, modes, times, xattrs, hardlinks, devices): cp -a."""
    subprocess.run(["cp", "-a", "--preserve=all", f"{src}/.", str(dst)], check=True)


# --- the snapshot must see every difference a layer could get wrong ---------------------------


def _base_specs() -> list[Spec]:
    return [
        Spec("dir", b"d", mode=0o755, mtime_ns=10**9),
        Spec("file", b"d/f", content=b"x", mtime_ns=5 * 10**9, xattrs={"user.k": b"v"}),
        Spec("file", b"g", content=b"y", mtime_ns=0),
        Spec("symlink", b"l", target=b"d/f"),
        Spec("chr", b"c", rdev=(1, 3), mode=0o666),
    ]


# Each changes one thing a layer records; index into _base_specs() and the change.
_CHANGES: dict[str, tuple[int, dict[str, object]]] = {
    "mode": (1, {"mode": 0o4755}),
    "owner": (1, {"gid": 7}),
    "content": (1, {"content": b"z"}),
    "mtime": (1, {"mtime_ns": 6 * 10**9}),
    "dir_mtime": (0, {"mtime_ns": 2 * 10**9}),
    "target": (3, {"target": b"g"}),
    "xattr": (1, {"xattrs": {"user.k": b"w"}}),
    "rdev": (4, {"rdev": (1, 5)}),
}


@needs_root
@pytest.mark.parametrize("change", [*_CHANGES, "hardlink", "extra"])
def test_snapshot_notices(tmp_path: Path, change: str) -> None:
    same, changed = tmp_path / "same", tmp_path / "changed"
    for root in (tmp_path / "base", same, changed):
        root.mkdir()
    build_tree(tmp_path / "base", _base_specs())
    build_tree(same, _base_specs())
    specs = _base_specs()
    if change == "hardlink":
        specs[2] = Spec("hardlink", b"g", target=b"d/f")
    elif change == "extra":
        specs.append(Spec("fifo", b"p"))
    else:
        index, fields = _CHANGES[change]
        specs[index] = replace(specs[index], **fields)  # type: ignore[arg-type]
    build_tree(changed, specs)
    assert snapshot(tmp_path / "base") == snapshot(same)
    assert snapshot(tmp_path / "base") != snapshot(changed)


def test_write_layer_reports_the_outputs_error(tmp_path: Path) -> None:
    """The tar is written by a thread of its own: an error there still reaches the caller."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "big").write_bytes(os.urandom(3 << 20))

    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    from soute.errors import SouteError

    # As before the thread: an OSError, or a SouteError naming the file being read then.
    with pytest.raises((OSError, SouteError), match="No space left"):
        write_layer(tmp_path / "tree", Full(), overlay=False)  # type: ignore[arg-type]


def test_write_layer_hashes_once_with_a_blob_writer(tmp_path: Path) -> None:
    """A blob writer lends its hash to the layer writer: the DiffID is still the tar's."""
    from soute.store.blobs import BlobStore

    (tmp_path / "tree" / "d").mkdir(parents=True)
    (tmp_path / "tree" / "d" / "f").write_bytes(os.urandom(1 << 20))
    plain = io.BytesIO()
    expected = write_layer(tmp_path / "tree", plain, overlay=False)
    assert expected.diff_id == "sha256:" + hashlib.sha256(plain.getvalue()).hexdigest()
    (tmp_path / "blobs").mkdir()
    (tmp_path / "tmp").mkdir()
    blobs = BlobStore(tmp_path / "blobs", tmp_path / "tmp")
    with blobs.writer() as w:
        got = write_layer(tmp_path / "tree", w, overlay=False)  # type: ignore[arg-type]
        assert w.commit() == got.diff_id == expected.diff_id
    assert blobs.read(got.diff_id) == plain.getvalue()
