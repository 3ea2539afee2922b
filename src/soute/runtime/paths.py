"""Paths inside a container root, resolved as the container would see them.

An image may hold ``/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf`` or an
``/etc -> /somewhere`` link; seen from the host those absolute targets point outside the root.
:func:`scoped_path` follows links with the root as ``/`` (what ``securejoin`` does for runc).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from collections.abc import Callable

_MAX_LINKS = 255


def scoped_path(root: str, path: str) -> str:
    """``root`` joined with ``path``, every symlink on the way resolved inside ``root``.

    Missing components are kept as written, so the result is where a file created at ``path``
    from inside the container would land. The result never leaves ``root``: ``..`` stops at it.
    """
    root = root.rstrip("/") or "/"
    pending = [p for p in reversed(path.split("/")) if p]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = _join(root, [*resolved, part])
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending.extend(p for p in reversed(target.split("/")) if p)
    return _join(root, resolved)


def relative_to(root: str, path: str) -> str:
    """``path`` (inside ``root``) relative to ``root``, ``""`` for the root itself."""
    root = root.rstrip("/")
    if path == root or path == root + "/":
        return ""
    return path[len(root) + 1:] if path.startswith(root + "/") else path.lstrip("/")


def is_within(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or below it, comparing whole components."""
    top = top.rstrip("/")
    return path == top or path.startswith(top + "/") or top == ""


def _join(root: str, parts: list[str]) -> str:
    if not parts:
        return root
    return (root if root != "/" else "") + "/" + "/".join(parts)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """rm -rf that never follows symlinks and survives entries already gone (shutil's
    rmtree, with the bz2 and lzma it imports, would cost `soute run --rm` 2-4 ms). It walks
    by directory handles, as shutil does: no path grows past PATH_MAX however deep the tree,
    and nothing swapped for a symlink meanwhile is followed."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, _DIR_FLAGS)
        try:
            _empty(fd)
        finally:
            os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(path)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _empty(root: int) -> None:
    """Remove what the directory open as ``root`` holds (what cannot go stays).

    Depth first without recursion, each directory opened from ``root`` one name at a time:
    two descriptors at most and no Python frames per level, however deep a container
    nested its directories."""
    stack: list[tuple[list[str], bool]] = [([], False)]  # (directory, its files done)
    while stack:
        parts, emptied = stack.pop()
        if emptied:  # its subdirectories had their turn: it goes, if it can
            if parts:
                with contextlib.suppress(OSError):
                    _in(root, parts[:-1], lambda fd, name=parts[-1]: os.rmdir(name, dir_fd=fd))
            continue
        subdirs: list[str] = []

        def files(fd: int, found: list[str] = subdirs) -> None:
            for entry in list(os.scandir(fd)):
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if is_dir:
                    found.append(entry.name)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.name, dir_fd=fd)

        with contextlib.suppress(OSError):
            _in(root, parts, files)
        stack.append((parts, True))
        stack.extend(([*parts, name], False) for name in subdirs)


def _in(root: int, parts: list[str], action: Callable[[int], object]) -> None:
    """``action(fd)`` on directory ``parts`` below ``root``, opened without following any
    symlink (OSError when it is gone or is no longer a directory)."""
    fd = os.dup(root)
    try:
        for part in parts:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        action(fd)
    finally:
        os.close(fd)
