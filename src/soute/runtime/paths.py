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


def _empty(fd: int) -> None:
    """Remove what the directory open as ``fd`` holds (what cannot go stays)."""
    try:
        entries = list(os.scandir(fd))
    except OSError:
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            with contextlib.suppress(OSError):
                child = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                try:
                    _empty(child)
                finally:
                    os.close(child)
            with contextlib.suppress(OSError):
                os.rmdir(entry.name, dir_fd=fd)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.name, dir_fd=fd)
