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

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from soute.runtime.rootfs import INIT_LAYER, is_opaque_fd, merged_listdir, merged_lstat


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
    listed: set[str] = {""}  # the directories already in the list ("" is the root)
    held: dict[str, str] = {}  # directories above a stub: listed once something else is
    covered: dict[str, bool] = {}  # directories that hide what the image has in them

    def record(kind: str, rel: str) -> None:
        missing = []
        parent = rel.rpartition("/")[0]
        while parent not in listed:
            missing.append(parent)
            listed.add(parent)
            parent = parent.rpartition("/")[0]
        found.extend((held.get(p, "C"), p) for p in reversed(missing))
        found.append((kind, rel))
        listed.add(rel)

    def is_stub(rel: str, st: os.stat_result, names: list[str]) -> bool:
        if rel not in stubs:
            return False
        return (stat.S_ISREG(st.st_mode) and st.st_size == 0) or (
            stat.S_ISDIR(st.st_mode) and not names)

    for parts, st, names, opaque in _walk(upper):
        rel = "/" + "/".join(parts)
        if _whiteout(st):
            record("D", rel)
            continue
        before = merged_lstat(lowers, rel)
        if before is None and is_stub(rel, st, names):
            continue
        if before is None and stat.S_ISDIR(st.st_mode) and any(
                p.startswith(rel + "/") for p in stubs):
            held[rel] = "A"  # perhaps made for a stub alone: listed with what else it holds
            continue
        if before is None:
            record("A", rel)
            continue
        if _changed(before, st):
            record("C", rel)
        if not stat.S_ISDIR(st.st_mode):
            continue
        # Removed and made again (opaque, or below an opaque one): what the image had in it
        # is gone, but for what the container made again.
        covered[rel] = opaque or covered.get(rel.rpartition("/")[0], False)
        if covered[rel]:
            for name in merged_listdir(lowers, rel) - set(names):
                record("D", f"{rel}/{name}")
    # The walk's order, with those deletions in their places among what it found.
    return sorted(found, key=lambda change: [os.fsencode(p) for p in change[1].split("/")])


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# What a running container's changes to its tree while it is walked may raise: the entry is
# then left out (it was removed, or swapped for something else).
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


def _walk(top: Path) -> Iterator[tuple[list[str], os.stat_result, list[str], bool]]:
    """Every entry below ``top``: its path's parts, lstat, and for a directory its names
    (sorted) and whether it is opaque; a directory before its entries, names in byte order.

    Each directory is opened from ``top`` one component at a time, never following a
    symlink: a running container that swaps one in meanwhile cannot send the walk to the
    host's files. Only two descriptors are open at a time, and nothing recurses, however
    deep the container's tree (opening costs its depth in calls: fine for real trees)."""
    try:
        root = os.open(top, _DIR_FLAGS)
    except FileNotFoundError:
        return  # the container was removed meanwhile
    try:
        pending: list[tuple[list[str], os.stat_result | None]] = [([], None)]
        while pending:
            parts, st = pending.pop()
            if st is not None and not stat.S_ISDIR(st.st_mode):
                yield parts, st, [], False
                continue
            listed = _list(root, parts)
            if listed is None:
                continue
            st, names, children, opaque = listed
            if parts:
                yield parts, st, names, opaque
            pending.extend(([*parts, n], s) for n, s in reversed(children))
    finally:
        os.close(root)


def _list(root: int, parts: list[str]) -> tuple[
        os.stat_result, list[str], list[tuple[str, os.stat_result]], bool] | None:
    """Directory ``parts`` below ``root``: its fstat, sorted names, their lstats and whether
    it is opaque; None when it went away or is no longer a directory."""
    fd = os.dup(root)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in _GONE:
                    return None
                raise
            os.close(fd)
            fd = child
        names = sorted(os.listdir(fd), key=os.fsencode)
        children = []
        for name in names:
            try:
                children.append((name, os.stat(name, dir_fd=fd, follow_symlinks=False)))
            except FileNotFoundError:
                continue
        return os.fstat(fd), [n for n, _ in children], children, is_opaque_fd(fd)
    finally:
        os.close(fd)


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
    for _, st, _, _ in _walk(upper):
        if not stat.S_ISDIR(st.st_mode) and st.st_size and st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_size
    return total
