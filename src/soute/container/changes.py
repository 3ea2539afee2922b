"""``soute diff``: what a container changed in its filesystem, listed as docker lists it.

The container's upper directory holds every change; each of its entries is compared with
what the image (with the container's init layer) has at the same path, as docker 20.10
compares the two trees:

* ``A``: a path the image does not have;
* ``D``: a path the container removed (a whiteout; the image's entries under a directory
  the container removed and made again);
* ``C``: a path whose type, mode, owner or device changed, or for a non-directory its size
  or mtime (the same second, with either time lacking nanoseconds, counts as the same);
  and every directory that holds a change, listed before what it holds.

A directory's own mtime and size say nothing here: creating and removing a file in ``/root``
lists nothing. The order is the walk's (a directory, then its entries by name), where
docker's follows Go's random map order. A path's presence in the image is looked up inside
its layers: whiteouts and opaque directories are honoured and no symlink is followed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from soute.runtime.rootfs import INIT_LAYER, is_opaque, merged_listdir, merged_lstat


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _same_time(a: int, b: int) -> bool:
    if a == b:
        return True
    sec_a, ns_a = divmod(a, 1_000_000_000)
    sec_b, ns_b = divmod(b, 1_000_000_000)
    return sec_a == sec_b and (ns_a == 0 or ns_b == 0)


def _changed(old: os.stat_result, new: os.stat_result) -> bool:
    """docker's statDifferent: mode (with the type), owner and device; for a non-directory
    also its size and mtime."""
    if (old.st_mode, old.st_uid, old.st_gid, old.st_rdev) != (
            new.st_mode, new.st_uid, new.st_gid, new.st_rdev):
        return True
    if stat.S_ISDIR(new.st_mode):
        return False
    return old.st_size != new.st_size or not _same_time(old.st_mtime_ns, new.st_mtime_ns)


# The mountpoints the runtime makes in a running container's upper directory when the image
# lacks them (rootfs.make_stubs; they go when it stops): docker has them in its init layer.
RUNTIME_STUBS = frozenset({"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/proc",
                           "/sys", "/dev"})


def changes(upper: Path, lowers: Sequence[Path],
            stubs: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """(kind, path) of every change in ``upper`` over ``lowers`` (base first). ``stubs``:
    paths left out when they are the runtime's empty mountpoints (see RUNTIME_STUBS), with
    the directories made only to hold them."""
    found: list[tuple[str, str]] = []
    listed: set[bytes] = {b""}  # the directories already in the list ("" is the root)
    held: dict[bytes, str] = {}  # directories above a stub: listed once something else is
    stub_paths = {os.fsencode(p) for p in stubs}
    top = os.fsencode(upper)

    def record(kind: str, rel: bytes) -> None:
        missing = []
        parent = rel.rpartition(b"/")[0]
        while parent not in listed:
            missing.append(parent)
            listed.add(parent)
            parent = parent.rpartition(b"/")[0]
        found.extend((held.get(p, "C"), os.fsdecode(p)) for p in reversed(missing))
        found.append((kind, os.fsdecode(rel)))
        listed.add(rel)

    def is_stub(rel: bytes, st: os.stat_result, names: list[bytes]) -> bool:
        if rel not in stub_paths:
            return False
        return (stat.S_ISREG(st.st_mode) and st.st_size == 0) or (
            stat.S_ISDIR(st.st_mode) and not names)

    def visit(parts: list[bytes], st: os.stat_result, names: list[bytes]) -> None:
        rel = b"/" + b"/".join(parts)
        if _whiteout(st):
            record("D", rel)
            return
        before = merged_lstat(lowers, os.fsdecode(rel))
        if before is None and is_stub(rel, st, names):
            return
        if before is None and stat.S_ISDIR(st.st_mode) and any(
                p.startswith(rel + b"/") for p in stub_paths):
            held[rel] = "A"  # perhaps made for a stub alone: listed with what else it holds
            return
        if before is None:
            record("A", rel)
            return
        if _changed(before, st):
            record("C", rel)
        if stat.S_ISDIR(st.st_mode) and is_opaque(top + rel):
            # Removed and made again: what the image had in it is gone.
            gone = {os.fsencode(n) for n in merged_listdir(lowers, os.fsdecode(rel))}
            for name in sorted(gone - set(names)):
                record("D", rel + b"/" + name)

    def listing(parts: list[bytes]) -> list[bytes]:
        directory = top + b"/" + b"/".join(parts) if parts else top
        try:
            return sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []  # a running container removed it meanwhile

    # Depth first, a directory before its entries, names in byte order; no recursion,
    # whatever the depth the container made.
    stack = [[name] for name in reversed(listing([]))]
    while stack:
        parts = stack.pop()
        try:
            st = os.lstat(top + b"/" + b"/".join(parts))
        except FileNotFoundError:
            continue
        names = listing(parts) if stat.S_ISDIR(st.st_mode) else []
        visit(parts, st, names)
        stack.extend([*parts, name] for name in reversed(names))
    return found


def container_lowers(store_snapshots: list[Path], container_dir: Path) -> list[Path]:
    """The layers under a container's upper directory, base first: its image's snapshots,
    then its init layer when it has one."""
    init = container_dir / INIT_LAYER
    return [*store_snapshots, *([init] if init.is_dir() else [])]


def upper_size(upper: Path) -> int:
    """Bytes a container wrote (``ps -s``): the sizes of the non-directories in its upper
    directory, each inode once, as docker's ``directory.Size`` counts them."""
    total = 0
    seen: set[int] = set()
    stack = [os.fsencode(upper)]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue  # a running container removed it meanwhile
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            elif st.st_size and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total
