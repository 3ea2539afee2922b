"""Round trips through a real overlayfs mount: upper dir -> layer -> full tree / lower dir."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_layer_roundtrip import trees
from test_layer_support import (
    CAPABILITY,
    Spec,
    apply_bytes,
    build_tree,
    copy_tree,
    layer_bytes,
    needs_root,
    overlay_mount,
    snapshot,
)

pytestmark = needs_root

T0 = 1_600_000_000 * 10**9

LOWER = [
    Spec("dir", b"etc", mode=0o755, mtime_ns=T0),
    Spec("file", b"etc/hello.txt", content=b"hello\n", mtime_ns=T0),
    Spec("file", b"etc/keep.conf", content=b"keep\n", mtime_ns=T0),
    Spec("file", b"etc/mode.txt", content=b"mode\n", mode=0o644, mtime_ns=T0),
    Spec("dir", b"bin", mode=0o755, mtime_ns=T0),
    Spec("file", b"bin/tool1", content=b"#!/bin/sh\n", mode=0o755, mtime_ns=T0),
    Spec(
        "file",
        b"bin/ping",
        content=b"ping",
        mode=0o4755,
        mtime_ns=T0,
        xattrs={"security.capability": CAPABILITY},
    ),
    Spec("dir", b"bin/sub", mtime_ns=T0),
    Spec("file", b"bin/sub/deep", content=b"deep", mtime_ns=T0),
    Spec("dir", b"opt", mode=0o755, mtime_ns=T0),
    Spec("dir", b"opt/gone", mtime_ns=T0),
    Spec("file", b"opt/gone/a", content=b"a", mtime_ns=T0),
    Spec("file", b"opt/stay", content=b"stay", mtime_ns=T0),
    Spec("dir", b"var", mtime_ns=T0),
    Spec("file", b"var/data", content=b"data", mtime_ns=T0, xattrs={"user.k": b"v"}),
    Spec("dir", b"lib", mtime_ns=T0),
    Spec("file", b"lib/a", content=b"shared", mtime_ns=T0),
    Spec("hardlink", b"lib/b", target=b"lib/a"),
    Spec("symlink", b"lib64", target=b"lib", mtime_ns=T0),
    Spec("dir", b"untouched", mode=0o700, uid=5, gid=6, mtime_ns=T0),
    Spec("file", b"untouched/f", content=b"u", mtime_ns=T0),
]


def _change(merged: Path) -> None:
    """What a RUN step might do, through the merged view."""
    (merged / "etc" / "hello.txt").unlink()
    os.rename(merged / "etc" / "keep.conf", merged / "etc" / "renamed.conf")
    os.chmod(merged / "etc" / "mode.txt", 0o600)
    shutil.rmtree(merged / "bin")
    (merged / "bin").mkdir()  # a lower dir removed and made again: an opaque dir
    (merged / "bin" / "new").write_bytes(b"new tool")
    shutil.rmtree(merged / "opt" / "gone")
    (merged / "etc" / "added").write_bytes(b"added")
    os.link(merged / "etc" / "added", merged / "etc" / "added2")
    (merged / "new" / "dir").mkdir(parents=True)
    (merged / "new" / "dir" / "file").write_bytes(b"x" * 5000)
    os.mkfifo(merged / "new" / "fifo")
    os.symlink("/etc/added", merged / "new" / "link")
    os.setxattr(merged / "var" / "data", "user.k", b"changed")
    os.setxattr(merged / "var" / "data", "user.added", b"1")
    os.chown(merged / "opt" / "stay", 42, 43)
    (merged / "lib" / "a").write_bytes(b"rewritten")  # copy-up breaks the lower hardlink
    for path in (merged / "new" / "dir" / "file", merged / "etc" / "added", merged / "new"):
        os.utime(path, ns=(T0 + 10**9, T0 + 10**9))


def test_overlay_round_trips(tmp_path: Path) -> None:
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    build_tree(lower, LOWER)
    base = snapshot(lower)

    with overlay_mount([lower], merged, upper, work):
        _change(merged)
        expected = snapshot(merged)
    assert expected != base

    data = layer_bytes(upper, overlay=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert {"etc/.wh.hello.txt", "etc/.wh.keep.conf", "opt/.wh.gone", "bin/.wh..wh..opq"} <= set(
        members
    )
    whiteout = members["etc/.wh.hello.txt"]
    assert (whiteout.type, whiteout.mode, whiteout.size) == (tarfile.REGTYPE, 0o600, 0)
    assert all(
        not k.startswith("SCHILY.xattr.trusted.overlay")
        for m in members.values()
        for k in m.pax_headers
    )
    assert members["etc/added2"].islnk() or members["etc/added"].islnk()

    # (a) Onto a copy of the lower tree, whiteouts deleting.
    full = tmp_path / "full"
    full.mkdir()
    copy_tree(lower, full)
    assert snapshot(full) == base
    apply_bytes(data, full, overlay=False)
    assert snapshot(full) == expected

    # (b) Unpacked as an overlay lower dir, then mounted over the base lower.
    layer_dir, view = tmp_path / "layer", tmp_path / "view"
    layer_dir.mkdir()
    view.mkdir()
    apply_bytes(data, layer_dir, overlay=True)
    assert os.getxattr(layer_dir / "bin", "trusted.overlay.opaque") == b"y"
    st = os.lstat(layer_dir / "etc" / "hello.txt")
    assert st.st_rdev == 0 and (st.st_mode & 0o170000) == 0o020000
    with overlay_mount([layer_dir, lower], view):
        assert snapshot(view) == expected
    # The unpacked lower dir describes the same change: it writes the same layer.
    assert layer_bytes(layer_dir, overlay=True) == data


def test_opaque_marker_follows_its_directory(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    build_tree(
        upper,
        [
            Spec("dir", b"d"),
            Spec("file", b"d/!first"),
            Spec("chr", b"d/gone"),
            Spec("file", b"d/-dash"),
        ],
    )
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    with tarfile.open(fileobj=io.BytesIO(layer_bytes(upper, overlay=True))) as tf:
        names = tf.getnames()
    # The spec asks for whiteouts before their siblings; the marker right after its dir.
    assert names == ["d", "d/.wh..wh..opq", "d/.wh.gone", "d/!first", "d/-dash"]


def test_full_tree_keeps_char_devices(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    build_tree(root, [Spec("chr", b"c", rdev=(0, 0), mode=0o600)])
    with tarfile.open(fileobj=io.BytesIO(layer_bytes(root, overlay=False))) as tf:
        (member,) = tf.getmembers()
    assert member.ischr() and member.name == "c"


def test_redirect_dirs_are_refused(tmp_path: Path) -> None:
    from soute.errors import SouteError

    upper = tmp_path / "upper"
    (upper / "moved").mkdir(parents=True)
    os.setxattr(upper / "moved", "trusted.overlay.redirect", b"/orig")
    with pytest.raises(SouteError, match="redirect_dir=off"):
        layer_bytes(upper, overlay=True)


# --- random lower trees, random changes through the merged view -----------------------------

_OPS = [
    "unlink",
    "rmtree",
    "replace_dir",
    "write",
    "mkdir",
    "chmod",
    "chown",
    "setxattr",
    "symlink",
    "hardlink",
    "rename",
    "truncate",
]


@st.composite
def _changes(draw: st.DrawFn) -> list[tuple[str, int, bytes]]:
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(_OPS),
                st.integers(0, 1000),
                st.binary(min_size=1, max_size=8).map(lambda b: b"n" + b.hex().encode()),
            ),
            min_size=1,
            max_size=8,
        )
    )


def _apply_changes(merged: Path, changes: list[tuple[str, int, bytes]]) -> None:
    top = os.fsencode(merged)
    for op, pick, name in changes:
        paths = sorted(
            os.fsencode(os.path.join(d, n)) for d, dirs, files in os.walk(top) for n in dirs + files
        )
        dirs = [top] + [p for p in paths if os.path.isdir(p) and not os.path.islink(p)]
        path = paths[pick % len(paths)] if paths else top
        here = dirs[pick % len(dirs)]
        try:
            if op == "unlink" and not os.path.isdir(path):
                os.unlink(path)
            elif op == "rmtree" and os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif op == "replace_dir" and here != top:
                shutil.rmtree(here)
                os.mkdir(here)
                with open(here + b"/" + name, "wb") as f:
                    f.write(name)
            elif op == "write":
                with open(here + b"/" + name, "wb") as f:
                    f.write(name * 100)
            elif op == "mkdir":
                os.mkdir(here + b"/" + name, 0o750)
            elif op == "chmod" and not os.path.islink(path):
                os.chmod(path, 0o4751 if pick % 2 else 0o640)
            elif op == "chown":
                os.chown(path, pick, pick + 1, follow_symlinks=False)
            elif op == "setxattr" and not os.path.islink(path):
                os.setxattr(path, "trusted.changed", name, follow_symlinks=False)
            elif op == "symlink":
                os.symlink(name, here + b"/" + name)
            elif op == "hardlink" and os.path.isfile(path) and not os.path.islink(path):
                os.link(path, here + b"/" + name)
            elif op == "rename" and not os.path.isdir(path):
                os.rename(path, here + b"/" + name)
            elif op == "truncate" and os.path.isfile(path) and not os.path.islink(path):
                os.truncate(path, 3)
        except OSError:
            pass  # e.g. EXDEV for directory renames without redirect_dir: the change is skipped


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lower_specs=trees(), changes=_changes())
def test_random_changes_round_trip(
    lower_specs: list[Spec], changes: list[tuple[str, int, bytes]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        lower, upper, work, merged, full, layer_dir, view = (
            t / n for n in ("lower", "upper", "work", "merged", "full", "layer", "view")
        )
        for d in (lower, upper, work, merged, full, layer_dir, view):
            d.mkdir()
        # A char device 0/0 in a lower dir *is* a whiteout to overlayfs: not lower content.
        build_tree(lower, [s for s in lower_specs if (s.kind, s.rdev) != ("chr", (0, 0))])
        with overlay_mount([lower], merged, upper, work):
            _apply_changes(merged, changes)
            expected = snapshot(merged)
        data = layer_bytes(upper, overlay=True)

        copy_tree(lower, full)
        apply_bytes(data, full, overlay=False)
        assert snapshot(full) == expected

        apply_bytes(data, layer_dir, overlay=True)
        with overlay_mount([layer_dir, lower], view):
            assert snapshot(view) == expected
        assert layer_bytes(layer_dir, overlay=True) == data
