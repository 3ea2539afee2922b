"""``soute cp``: files between a container and the host, with docker's rules.

The container's side is read or written by a child process that sees the container's root
as its own ``/``: a running container's mount namespace (``setns``: its volumes included),
or, for one that is not running, an overlay of its layers and upper dir mounted in a private
mount namespace, then ``chroot``. Symlinks in the container therefore resolve inside it,
whatever they point at. The two sides talk in tar: the side that reads writes an archive of
the source, named by its base name, and the side that writes extracts it where docker's
rules say (:func:`place`). An archive from the container is extracted on the host only
after checks of our own (:func:`_make_room`): no member lands outside the destination or
through a symlink, none is a device node, and setuid/setgid bits are dropped unless ``-a``
keeps the container's owners.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from soute.container.record import Container, ContainerError, alive
from soute.errors import SouteError

if TYPE_CHECKING:
    from soute.store.store import Store


class CopyError(ContainerError):
    exit_code = 1  # docker cp's status for its errors


def copy_out(store: Store, container: Container, src: str, dest: str, *, archive: bool = False,
             follow: bool = False) -> None:
    """``soute cp CONTAINER:SRC DEST`` (``DEST`` ``-``: the tar on standard output)."""
    read_fd, write_fd = os.pipe()

    def child() -> None:
        with os.fdopen(write_fd, "wb") as out:
            _write_archive(src, out, follow=follow, where=f"{container.name}:{src}")

    def parent() -> None:
        with os.fdopen(read_fd, "rb") as stream:
            if dest == "-":
                with os.fdopen(os.dup(1), "wb") as stdout:
                    shutil.copyfileobj(stream, stdout, 1 << 20)
                return
            owner = None if archive else (os.getuid(), os.getgid())
            place(stream, src, dest, owner=owner, host=True)

    _in_container(store, container, child, parent, close_in_parent=write_fd,
                  close_in_child=read_fd, writes=False)


def copy_in(store: Store, container: Container, src: str, dest: str, *, archive: bool = False,
            follow: bool = False) -> None:
    """``soute cp SRC CONTAINER:DEST`` (``SRC`` ``-``: a tar read from standard input,
    extracted into the directory ``DEST``)."""
    if src != "-" and not os.path.lexists(src):
        raise CopyError(f"stat {src}: no such file or directory")
    if src == "-" and sys.stdin.isatty():
        raise CopyError("cp - reads a tar archive from standard input, not a terminal",
                        "pipe one in: tar -c FILES | soute cp - CONTAINER:DIR")
    read_fd, write_fd = os.pipe()

    def child() -> None:
        with os.fdopen(read_fd, "rb") as stream:
            if src == "-":
                _extract_into(stream, dest)
            else:
                place(stream, src, dest, owner=None if archive else (0, 0), host=False)

    def parent() -> None:
        with os.fdopen(write_fd, "wb") as out:
            if src == "-":
                with os.fdopen(os.dup(0), "rb") as stdin:
                    shutil.copyfileobj(stdin, out, 1 << 20)
            else:
                _write_archive(src, out, follow=follow, where=src)

    _in_container(store, container, child, parent, close_in_parent=read_fd,
                  close_in_child=write_fd, writes=True)


# ---------------------------------------------------------------------------- docker's rules


def place(stream: IO[bytes], src: str, dest: str, *, owner: tuple[int, int] | None,
          host: bool) -> None:
    """Extract the archive of ``src`` (see :func:`_write_archive`) at ``dest`` as docker cp
    does: a file goes to ``dest``, or into it when it is a directory; a directory becomes
    ``dest`` when that does not exist, else goes into it (only its content with ``SRC/.``).
    ``owner``: the owner of every entry, or None to keep the archive's ids."""
    contents = src.endswith(("/.", "/./")) or src == "."
    dest = os.path.abspath(dest) + ("/" if dest.endswith("/") else "")
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        first = tar.next()
        if first is None:
            raise CopyError(f"nothing to copy from {src}")
        src_is_dir = first.isdir()
        dest_st = _stat(dest)
        if src_is_dir:
            if dest_st is not None and not stat.S_ISDIR(dest_st.st_mode):
                raise CopyError(f"cannot copy a directory to a file: {dest}")
            if dest_st is not None and not contents:
                target = os.path.join(dest, first.name)
            else:
                parent = os.path.dirname(dest.rstrip("/")) or "/"
                if dest_st is None and not os.path.isdir(parent):
                    raise CopyError(f"destination directory {parent} does not exist")
                target = dest
        else:
            if dest_st is not None and stat.S_ISDIR(dest_st.st_mode):
                target = os.path.join(dest, first.name)
            elif dest.endswith("/"):
                raise CopyError(f"destination directory {dest} does not exist",
                                "make it first, or leave out the trailing /")
            else:
                parent = os.path.dirname(dest) or "."
                if not os.path.isdir(parent):
                    raise CopyError(f"destination directory {parent} does not exist")
                target = dest
        # The user's side of the path is resolved now (before the archive made anything):
        # what the archive makes is then checked against a real directory.
        target = target.rstrip("/") or "/"
        # A symlink the user named as DEST is followed, as docker does; one found at
        # DEST/NAME (which an earlier copy from a container may have made) is replaced.
        if (src_is_dir and target == (dest.rstrip("/") or "/") and os.path.islink(target)
                and os.path.isdir(target)):
            target = os.path.realpath(target)
        where = os.path.realpath(os.path.dirname(target) or "/")
        top = os.path.basename(target)
        member: tarfile.TarInfo | None = first
        base = first.name
        while member is not None:
            member.name = _rebased(member.name, base, top)
            if member.islnk():
                if member.linkname != base and not member.linkname.startswith(base + "/"):
                    raise CopyError(f"refused {member.name}: a hardlink outside the copy")
                member.linkname = _rebased(member.linkname, base, top)
            if host and (member.ischr() or member.isblk()):
                raise CopyError(f"refused {member.name}: a device node is not made on the host",
                                "copy to - for a tar archive that keeps it")
            if owner is not None:
                member.uid, member.gid = owner
                member.uname = member.gname = ""
                if host:  # a container's setuid file must not become the host user's
                    member.mode &= ~(stat.S_ISUID | stat.S_ISGID)
            _extract(tar, member, where, host=host)
            member = tar.next()


def _rebased(name: str, base: str, top: str) -> str:
    """``name`` (``base`` or below it) renamed under ``top``."""
    rest = name[len(base):].lstrip("/")
    return top + ("/" + rest if rest else "")


class _Refused(Exception):
    """An archive member that would land outside the destination or through a symlink."""


# The checks are ours (_make_room). Extraction filters came with Python 3.11.4 (Debian 12
# has 3.11.2): where they exist, say that none is wanted, as later Pythons warn, then
# default to "data", which would refuse the container's absolute symlinks.
_NO_FILTER: dict[str, Any] = (
    {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {})


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, where: str, *, host: bool) -> None:
    # On the host the archive comes from the container: nothing may land outside the
    # destination, through its name, a symlink on the way or one already at its place
    # (_make_room). Inside the container it is the user's own archive in a chroot.
    try:
        if host:
            _make_room(member, where)
        tar.extract(member, where, numeric_owner=True, **_NO_FILTER)
    except _Refused as e:
        raise CopyError(f"refused {member.name}: {e}") from None
    except OSError as e:
        raise CopyError(f"cannot copy to {os.path.join(where, member.name)}: "
                        f"{e.strerror or e}") from None


def _make_room(member: tarfile.TarInfo, where: str) -> None:
    """Check that ``member`` stays below ``where`` (a real path) and would not be written
    through a symlink; remove the non-directory at its place, as docker replaces it."""
    root = where.rstrip("/") + "/"

    def inside(name: str) -> str:
        if os.path.isabs(name) or ".." in name.split("/"):
            raise _Refused(f"{name!r} leaves the destination")
        path = os.path.normpath(os.path.join(where, name))
        parent = os.path.dirname(path)
        if os.path.realpath(parent) != parent or not path.startswith(root):
            raise _Refused(f"{name!r} would be written through a symlink")
        return path

    path = inside(member.name)
    if member.islnk():
        target = inside(member.linkname)
        try:
            kind = os.lstat(target).st_mode
        except FileNotFoundError:
            raise _Refused(f"hardlink to {member.linkname!r}, not copied") from None
        if stat.S_ISLNK(kind) or stat.S_ISDIR(kind):
            raise _Refused(f"hardlink to {member.linkname!r}, not a file")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode) and member.isdir():
        return  # directories merge
    if stat.S_ISDIR(st.st_mode):
        raise _Refused(f"{path} is a directory")
    os.unlink(path)  # a file or symlink in the way: replaced, never written through


def _extract_into(stream: IO[bytes], dest: str) -> None:
    """``cp - CONTAINER:DEST``: the archive's members under the directory ``dest``."""
    if not os.path.isdir(dest):
        raise CopyError(f"destination directory {dest} does not exist",
                        "a tar read from standard input goes into a directory")
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            _extract(tar, member, dest, host=False)


def _write_archive(src: str, out: IO[bytes], *, follow: bool, where: str) -> None:
    """A tar of ``src`` whose first member is named by its base name (``.`` when it is
    the root or ends in ``/.``); a symlink is archived as one unless ``follow``."""
    path = src.rstrip("/") or "/"
    if path.endswith("/."):  # SRC/.: the directory itself; place() takes its content only
        path = path[:-2] or "/"
    # Named after SRC as typed, also when -L follows it: docker does, and a name taken from
    # the link's target would let the container choose what DEST/NAME the copy replaces.
    name = os.path.basename(path.rstrip("/")) or "."
    if follow:
        path = os.path.realpath(path)
    if not os.path.lexists(path):
        raise CopyError(f"Could not find the file {src} in {where.split(':')[0]}",
                        "check the path (soute exec CONTAINER ls DIR)")
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(path, arcname=name, recursive=True)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


# ---------------------------------------------------------------------------- the container


def _in_container(store: Store, container: Container, child: Callable[[], None],
                  parent: Callable[[], None], *, close_in_parent: int, close_in_child: int,
                  writes: bool) -> None:
    """Run ``child`` in a process whose root is the container's, ``parent`` here; their
    errors come back as one :class:`CopyError`."""
    err_r, err_w = os.pipe()
    with contextlib.ExitStack() as stack:
        state = container.state()
        if state.status == "restarting":
            raise CopyError(f"container {container.name} is restarting",
                            "copy once it runs, or after 'soute stop'")
        running = state.running and alive(state.pid, state.pid_start)
        layers = None
        if not running:
            if writes and not stack.enter_context(container.lock(blocking=False)):
                raise CopyError(f"container {container.name} started meanwhile: try again")
            layers = _stopped_root(store, container, stack, writes=writes)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through err_w and its status
            code = 1
            try:
                os.close(err_r)
                os.close(close_in_child)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _enter(state.pid if running else None, layers)
                _nothing_from_the_container()
                child()
                code = 0
            except BrokenPipeError:
                code = 3  # the parent stopped reading: its own error says why
            except BaseException as e:  # everything must end in _exit
                message = str(e) if isinstance(e, SouteError) else f"{type(e).__name__}: {e}"
                with contextlib.suppress(BaseException):
                    os.write(err_w, message.encode(errors="replace"))
            finally:
                os._exit(code)
        os.close(err_w)
        os.close(close_in_parent)
        failure: Exception | None = None
        try:
            parent()
        except Exception as e:  # the child's account, if it has one, comes first
            failure = e
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.close(close_in_child)  # the child's end: it sees EOF or EPIPE now
        with os.fdopen(err_r, "rb") as f:
            said = f.read().decode(errors="replace").strip()
        _, status = os.waitpid(pid, 0)
        # Who says why: our own error first (the child then only saw the pipe close), else
        # the child's (we then only saw its archive end early).
        if isinstance(failure, SouteError):
            raise failure
        if said:
            raise CopyError(said)
        if failure is not None and not isinstance(failure, (OSError, tarfile.TarError)):
            raise failure
        if failure is not None or os.waitstatus_to_exitcode(status) != 0:
            raise CopyError(f"the copy failed: {failure or f'status {status}'}")


def _stopped_root(store: Store, container: Container, stack: contextlib.ExitStack, *,
                  writes: bool) -> Path:
    """The overlay a stopped container runs on, ready to mount from ``links``: its upper dir
    for real when the copy writes, a read-only view of it otherwise."""
    import tempfile

    from soute.runtime.rootfs import INIT_LAYER, Layers, link_layers

    stack.enter_context(store.session())  # no garbage collection of its snapshots meanwhile
    lowers = store.snapshots(store.image(container.spec.image).diff_ids)
    init = container.dir / INIT_LAYER
    if init.is_dir():
        lowers.append(init)
    scratch = Path(tempfile.mkdtemp(prefix=f"cp-{container.id[:12]}-", dir=store.tmp))
    stack.callback(shutil.rmtree, scratch, ignore_errors=True)
    if writes:
        layers = Layers(lowers, container.upper, container.work)
    else:
        for d in ("upper", "work"):
            (scratch / d).mkdir()
        layers = Layers([*lowers, container.upper], scratch / "upper", scratch / "work")
    link_layers(layers, scratch / "links")
    (scratch / "root").mkdir()
    return scratch


def _nothing_from_the_container() -> None:
    """Once inside, this root process must not run any code of the container's: no name
    service lookups (glibc would load the container's NSS modules; tarfile asks for owner
    names), no import (Python would look in the container's files), and no blocking open of
    a FIFO put where a file was."""
    import importlib.machinery

    tarfile.pwd = tarfile.grp = None  # type: ignore[attr-defined]
    sys.meta_path[:] = [importlib.machinery.BuiltinImporter,
                        importlib.machinery.FrozenImporter]
    sys.path[:] = []
    sys.path_importer_cache.clear()

    def open_regular(name: str, mode: str = "rb") -> IO[bytes]:
        if mode != "rb":  # extracting (cp into the container): bounded by its root
            return _replace_file(name)
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CopyError(f"{name} changed while it was copied")
        return os.fdopen(fd, mode)

    tarfile.bltn_open = open_regular  # type: ignore[attr-defined]


def _replace_file(name: str) -> IO[bytes]:
    """A new file at ``name`` for tarfile to write, as docker replaces what is there: the
    old file (its other hardlinks keep it), or a FIFO or device node the container put in
    the way, is removed first and never opened."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISDIR(os.lstat(name).st_mode):
            os.unlink(name)
    # O_EXCL: whatever the container makes here meanwhile fails the copy, never redirects it.
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    return os.fdopen(fd, "wb")


def _enter(pid: int | None, scratch: Path | None) -> None:
    """Make the container's root this process's ``/``."""
    from soute.runtime import _linux

    if pid is not None:
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _linux.setns(fd, _linux.CLONE_NEWNS)  # root and cwd: the container's
        finally:
            os.close(fd)
        os.chdir("/")
        return
    assert scratch is not None
    from soute.runtime.rootfs import mount_overlay

    _linux.unshare(_linux.CLONE_NEWNS)
    _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
    # nodev: a device node the container made stays closed to this root process.
    mount_overlay(scratch / "links", str(scratch / "root"), _linux.MS_NODEV | _linux.MS_NOSUID)
    os.chroot(scratch / "root")
    os.chdir("/")

