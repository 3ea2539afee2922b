"""The container's root: an overlay of read-only snapshots under a fresh upper directory.

The upper directory is the step's changeset as it stands (overlay whiteouts and opaque
directories included), so nothing walks the whole tree to find what a RUN changed.

Two things keep that true:

- the overlay is mounted with ``redirect_dir=off,metacopy=off,index=off``: a renamed
  directory is copied up whole and a chmod copies the data, so every upper entry is
  self-contained (the layer writer refuses redirect and metacopy xattrs);
- mountpoints the runtime has to create (``/etc/hosts`` in an image without one, ``/proc``
  in a minimal image) are *stubs*: :func:`make_stubs` records them and :func:`remove_stubs`
  takes them out of the upper directory afterwards, with their parents' times, as
  BuildKit's ``MountStubsCleaner`` does.

A container (not a build step) also has an *init layer*, docker's ``<id>-init``: a directory
stacked between the image and the upper directory (:func:`make_init_layer`), so what it adds
(``/etc/mtab``) is in the container's view but never in its layer, ``commit`` or ``export``.

Mounting happens in the runtime's private mount namespace only (see ``executor``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from soute.errors import SouteError
from soute.runtime import _linux
from soute.runtime.paths import is_within, relative_to, scoped_path

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from typing import Any

# overlayfs stacks at most this many lower layers (OVL_MAX_STACK).
MAX_LOWERS = 500
# Keep every upper entry self-contained; see the module docstring.
OVERLAY_STRICT_OPTIONS = "redirect_dir=off,metacopy=off,index=off"
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# A container's init layer: this directory next to its upper/ and work/ (see make_init_layer).
INIT_LAYER = "init"


@dataclass(frozen=True, slots=True)
class Layers:
    """``lowers`` base first (as an image lists them), ``upper`` the new layer, ``work``
    overlayfs' scratch directory (empty, on the same filesystem as ``upper``)."""

    lowers: tuple[Path, ...]
    upper: Path
    work: Path

    def __init__(self, lowers: Sequence[Path | str], upper: Path | str, work: Path | str):
        object.__setattr__(self, "lowers", tuple(Path(p) for p in lowers))
        object.__setattr__(self, "upper", Path(upper))
        object.__setattr__(self, "work", Path(work))


def link_layers(layers: Layers, links_dir: Path) -> None:
    """Short names for the layer directories, so the overlay options fit in a page.

    The mount data of ``mount(2)`` is one page (4 KiB); 100 store paths of 80 bytes do not
    fit. ``links_dir`` gets ``0``..``n-1`` (lowers, base first), ``u`` and ``w``, and
    :func:`mount_overlay` mounts from inside it. A root without lowers (``FROM scratch``)
    gets an empty lower, as overlayfs needs one.
    """
    if len(layers.lowers) > MAX_LOWERS:
        raise SouteError(f"too many layers ({len(layers.lowers)}): overlayfs stacks at most "
                         f"{MAX_LOWERS}")
    for path in (*layers.lowers, layers.upper, layers.work):
        if not path.is_dir():
            raise SouteError(f"layer directory {path} does not exist")
    links_dir.mkdir(parents=True)
    lowers = list(layers.lowers)
    if not lowers:
        empty = links_dir.parent / (links_dir.name + "-empty")
        empty.mkdir()
        lowers = [empty]
    for i, path in enumerate(lowers):
        os.symlink(os.path.abspath(path), links_dir / str(i))
    os.symlink(os.path.abspath(layers.upper), links_dir / "u")
    os.symlink(os.path.abspath(layers.work), links_dir / "w")


# One page holds mount(2)'s data, its closing NUL included.
_MOUNT_DATA_MAX = 4095
# What the overlay's option parser would split a path at (link_layers' links avoid them).
_OPTION_SEPARATORS = frozenset(",:\\\n")


def overlay_in_place(layers: Layers) -> tuple[str, str] | None:
    """The overlay of ``layers`` without :func:`link_layers`' links, when it can be named
    that way: ``(directory, data)``, the layer directories relative to their common
    directory (mount from it with :func:`mount_overlay_data`) and the mount data without
    the options. None when the names do not fit in a page (or could not be parsed back,
    or there are no lowers): use :func:`link_layers`.

    A container's layers are all in its store: 25 links to make and remove on the store's
    disk cost more (4 ms on a slow one) than the rest of the mount. Checks what
    :func:`link_layers` checks.
    """
    if not layers.lowers or len(layers.lowers) > MAX_LOWERS:
        return None
    for path in (*layers.lowers, layers.upper, layers.work):
        if not path.is_dir():
            raise SouteError(f"layer directory {path} does not exist")
    paths = [os.path.abspath(p) for p in (*layers.lowers, layers.upper, layers.work)]
    directory = os.path.commonpath(paths)
    names = [os.path.relpath(p, directory) for p in paths]
    if any(name == "." or not _OPTION_SEPARATORS.isdisjoint(name) for name in names):
        return None
    *lowers, upper, work = names
    data = f"lowerdir={':'.join(reversed(lowers))},upperdir={upper},workdir={work}"
    if len(os.fsencode(f"{data},{_OPTION_SETS[0]}")) > _MOUNT_DATA_MAX:
        return None
    return directory, data


def overlay_data(links_dir: Path, extra: str = OVERLAY_STRICT_OPTIONS) -> str:
    """The overlay mount data for a :func:`link_layers` directory (top lower first)."""
    count = sum(1 for name in os.listdir(links_dir) if name.isdigit())
    lowerdir = ":".join(str(i) for i in reversed(range(count)))
    data = f"lowerdir={lowerdir},upperdir=u,workdir=w"
    return f"{data},{extra}" if extra else data


# Tried in order: uuid=off (5.9+) keeps overlay from tagging a fresh upper dir with a
# trusted.overlay.uuid xattr; older kernels know neither metacopy (4.19) nor index (4.13).
_OPTION_SETS = (f"{OVERLAY_STRICT_OPTIONS},uuid=off", OVERLAY_STRICT_OPTIONS, "")


def mount_overlay(links_dir: Path, target: str, flags: int = 0) -> None:
    """Mount the overlay of ``links_dir`` at ``target`` (with mount ``flags``).

    Changes the working directory for the call (overlay resolves the short names from it):
    only for a single-threaded process, the runtime's own child.
    """
    mount_overlay_data(links_dir, overlay_data(links_dir, ""), target, flags)


def mount_overlay_data(directory: str | Path, data: str, target: str, flags: int = 0) -> None:
    """Mount the overlay of ``data`` (names relative to ``directory``; see
    :func:`overlay_data`, :func:`overlay_in_place`) at ``target``, with the strictest
    options the kernel knows. Changes the working directory for the call, as
    :func:`mount_overlay`."""
    saved = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(directory)
        for i, extra in enumerate(_OPTION_SETS):
            try:
                _linux.mount("overlay", target, "overlay", flags,
                             f"{data},{extra}" if extra else data)
                return
            except OSError as err:
                if err.errno != errno.EINVAL or i == len(_OPTION_SETS) - 1:
                    raise
    finally:
        os.fchdir(saved)
        os.close(saved)


# ---------------------------------------------------------------------------- init layer


def write_merged_tar(lowers: Sequence[Path], work: Path, out: int) -> None:
    """The tree the overlay of ``lowers`` (base first) shows, as a tar written to ``out``: an
    image's or a container's whole root filesystem (``export``, ``build -o``). ``work`` is
    an empty scratch directory on the store's file system, left for the caller to remove.

    A child process mounts the overlay read-only in a mount namespace of its own, so
    nothing stays mounted whatever happens to this process."""
    from soute.layer import write_layer

    upper, scratch, root = work / "upper", work / "work", work / "root"
    for d in (upper, scratch, root):
        d.mkdir(parents=True)
    link_layers(Layers(lowers, upper, scratch), work / "layers")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports by exit status
        code = 1
        try:
            _linux.unshare(_linux.CLONE_NEWNS)
            _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
            # nodev: the walk opens files, and a device node is never one it should open.
            mount_overlay(work / "layers", str(root), _linux.MS_NODEV | _linux.MS_NOSUID)
            with os.fdopen(out, "wb", closefd=False) as f:
                write_layer(root, f, overlay=False)
            code = 0
        except BaseException as exc:  # everything must end in _exit
            with contextlib.suppress(BaseException):
                os.write(2, f"soute: {exc}\n".encode())
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:  # ^C: the child goes too
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    if os.waitstatus_to_exitcode(status) != 0:
        raise SouteError("cannot write the root filesystem (see the message above)")


def make_init_layer(lowers: Sequence[Path], directory: Path) -> None:
    """Write at ``directory`` the init layer of a container of the image ``lowers`` (base
    first): ``/etc/mtab -> /proc/mounts`` and an empty ``/.dockerenv``, as docker's
    daemon/initlayer makes them.

    Like docker, it replaces a file or symlink the image has at ``/etc/mtab`` (or at
    ``/etc``), and keeps a directory. A new ``/etc`` is 0755 root; an existing one keeps its
    mode and owner. Made aside and renamed into place: a half-made layer is never stacked.
    """
    tmp = directory.with_name(f".{directory.name}-{os.getpid()}-{os.urandom(4).hex()}")
    tmp.mkdir(mode=0o755)
    try:
        etc = merged_lstat(lowers, "etc")
        etc_is_dir = etc is not None and stat.S_ISDIR(etc.st_mode)
        mtab = merged_lstat(lowers, "etc/mtab") if etc_is_dir else None
        if mtab is None or not stat.S_ISDIR(mtab.st_mode):
            (tmp / "etc").mkdir()
            if etc is not None and etc_is_dir:
                os.chown(tmp / "etc", etc.st_uid, etc.st_gid)
                os.chmod(tmp / "etc", stat.S_IMODE(etc.st_mode))
            else:
                os.chmod(tmp / "etc", 0o755)  # whatever the umask
            os.symlink("/proc/mounts", tmp / "etc" / "mtab")
        # An empty /.dockerenv, as docker's: scripts look for it to know they are in a
        # container.
        os.close(os.open(tmp / ".dockerenv", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o755))
        os.chmod(tmp / ".dockerenv", 0o755)  # whatever the umask
        os.rename(tmp, directory)
    except BaseException:
        import shutil  # only now: every run imports this module

        shutil.rmtree(tmp, ignore_errors=True)
        raise


def merged_lstat(lowers: Sequence[Path], rel: str) -> os.stat_result | None:
    """``lstat`` of ``rel`` in the overlay of ``lowers`` (base first), without mounting it.

    None when it is not there or a whiteout hides it. Nothing is followed: a symlink on the
    way is not a directory, as overlayfs merges directories only.
    """
    return _merged(lowers, rel)[0]


def merged_listdir(lowers: Sequence[Path], rel: str) -> set[str]:
    """The names in directory ``rel`` of the overlay of ``lowers`` (base first), without
    mounting it: empty when it is not a directory there."""
    found, layers = _merged(lowers, rel)
    names: set[str] = set()
    if found is None or not stat.S_ISDIR(found.st_mode):
        return names
    hidden: set[str] = set()
    for layer in layers:  # top first, down to an opaque one
        with os.scandir(os.path.join(layer, rel.strip("/"))) as entries:
            for entry in entries:
                if entry.name in names or entry.name in hidden:
                    continue
                st = entry.stat(follow_symlinks=False)
                (hidden if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 else names).add(
                    entry.name)
    return names


def _merged(lowers: Sequence[Path], rel: str) -> tuple[os.stat_result | None, list[str]]:
    """What overlayfs finds at ``rel``, and the layers (top first) whose directories it
    merges there (none for a non-directory)."""
    parts = [p for p in rel.split("/") if p and p != "."]
    layers = [str(p) for p in reversed(lowers)]  # top first
    found: os.stat_result | None = None
    for depth in range(1, len(parts) + 1):
        sub = os.path.join(*parts[:depth])
        found, merged = None, []
        for layer in layers:
            path = os.path.join(layer, sub)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                break  # a whiteout hides it and everything below
            if found is None:
                found = st
            if not stat.S_ISDIR(st.st_mode):
                break  # a non-directory ends the lookup, under a directory or not
            merged.append(layer)
            if is_opaque(path):
                break
        if found is None or (depth < len(parts) and not stat.S_ISDIR(found.st_mode)):
            return None, []
        layers = merged
    return found, layers


# ---------------------------------------------------------------------------- stubs


@dataclass(slots=True)
class DirState:
    """An existing directory above a stub, as it was before the stub was made."""

    path: str  # relative to the root, "" for the root itself
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    in_upper: bool  # already in the upper directory before the stub (not a copy-up of ours)


@dataclass(slots=True)
class StubRecord:
    """Paths the runtime created for one mountpoint, parents first, and the directories
    above them, nearest first."""

    created: list[str] = field(default_factory=list)
    parents: list[DirState] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"created": self.created,
                "parents": [[d.path, d.mode, d.uid, d.gid, d.atime_ns, d.mtime_ns, d.in_upper]
                            for d in self.parents]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StubRecord:
        return cls([str(p) for p in data["created"]],
                   [DirState(str(p[0]), *(int(v) for v in p[1:6]), bool(p[6]))
                    for p in data["parents"]])


def mountpoints_on_root(destinations: Sequence[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """The (destination, is_dir) pairs whose mountpoint lives on the root filesystem: those
    not below an earlier mount's destination (``/dev/pts`` lands in the ``/dev`` tmpfs)."""
    out: list[tuple[str, bool]] = []
    seen: list[str] = []
    for dest, is_dir in destinations:
        norm = "/" + "/".join(p for p in dest.split("/") if p and p != ".")
        if not any(is_within(norm, earlier) for earlier in seen):
            out.append((norm, is_dir))
        seen.append(norm)
    return out


def make_stubs(
    root: str,
    upper: str | None,
    destinations: Sequence[tuple[str, bool]],
    records: list[StubRecord],
) -> None:
    """Create the missing mountpoints of ``destinations`` in the mounted ``root``.

    ``destinations`` are (path in the container, is a directory) pairs, already filtered by
    :func:`mountpoints_on_root`. Paths resolve inside the root (symlinks included), as the
    mounts themselves will. ``upper`` (the overlay's upper directory) tells which parents
    were there before; None when ``root`` is not an overlay. What was created is appended to
    ``records`` as it happens, so a failure halfway still lets the caller clean up.
    """
    for dest, is_dir in destinations:
        _make_stub(root, upper, scoped_path(root, dest), is_dir, records)


def _make_stub(root: str, upper: str | None, path: str, is_dir: bool,
               records: list[StubRecord]) -> None:
    rel = relative_to(root, path)
    parts = [p for p in rel.split("/") if p]
    existing = 0
    while existing < len(parts):
        try:
            st = os.lstat(os.path.join(root, *parts[: existing + 1]))
        except FileNotFoundError:
            break
        if existing + 1 < len(parts) and not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                          "/" + "/".join(parts[: existing + 1]))
        existing += 1
    if existing == len(parts):
        return
    record = StubRecord()
    for depth in range(existing, -1, -1):
        sub = "/".join(parts[:depth])
        st = os.lstat(os.path.join(root, sub) if sub else root)
        in_upper = depth == 0 or upper is None or os.path.lexists(os.path.join(upper, sub))
        record.parents.append(DirState(sub, st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns,
                                       st.st_mtime_ns, in_upper))
    records.append(record)
    for depth in range(existing + 1, len(parts) + 1):
        sub = "/".join(parts[:depth])
        full = os.path.join(root, sub)
        if depth < len(parts) or is_dir:
            os.mkdir(full, 0o755)
        else:
            os.close(os.open(full, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        record.created.append(sub)


def remove_stubs(upper: Path | str, records: Sequence[StubRecord]) -> None:
    """Take the stubs of ``records`` out of the upper directory (newest first).

    A stub still empty is removed; the directory above it gets its times back, and if our
    stub alone brought it into the upper directory (a copy-up, nothing else changed), it
    goes too, so the layer shows nothing the command did not do.
    """
    upper = str(upper)
    for record in reversed(records):
        if not record.parents:
            continue
        if not all(_beneath(upper, rel) for rel in
                   [*record.created, *(p.path for p in record.parents)]):
            continue  # the command made a symlink of a directory above: left as it is
        times = _times(_in_upper(upper, record.parents[0].path))
        if not all(_remove_if_empty(os.path.join(upper, rel)) for rel in reversed(record.created)):
            continue
        for i, parent in enumerate(record.parents):
            above = record.parents[i + 1].path if i + 1 < len(record.parents) else None
            above_times = _times(_in_upper(upper, above)) if above is not None else None
            if not _settle_parent(_in_upper(upper, parent.path), parent, times):
                break
            times = above_times


def _beneath(upper: str, rel: str) -> bool:
    """Whether every directory above ``rel`` in ``upper`` is a real one, or absent from
    it. The command may have replaced one with a symlink (``mv /etc /e; ln -s /x /etc``),
    which would take our removals to wherever it points: the host's files."""
    path = upper
    for part in rel.split("/")[:-1]:
        path = os.path.join(path, part)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except FileNotFoundError:
            return True
        except OSError:
            return False
    return True


def _in_upper(upper: str, rel: str) -> str:
    return os.path.join(upper, rel) if rel else upper


def _times(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_atime_ns, st.st_mtime_ns


def _remove_if_empty(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    try:
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(path)  # fails if the command put something there: then it stays
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(path)
        else:
            return False
    except OSError:
        return False
    return True


def _settle_parent(path: str, parent: DirState, times: tuple[int, int] | None) -> bool:
    """Restore one directory above removed stubs; True if it went too (a copy-up of ours).

    ``times`` are its times before the stubs were removed.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    ours_only = not parent.in_upper and not os.listdir(path)
    same = (st.st_mode, st.st_uid, st.st_gid) == (parent.mode, parent.uid, parent.gid)
    if ours_only and same and not is_opaque(path):
        try:
            os.rmdir(path)
            return True
        except OSError:
            pass
    # Kept: with its times from before the stub if nothing else happened inside, else as the
    # command left them (BuildKit's rule), so removing the stub changes nothing.
    restore = (parent.atime_ns, parent.mtime_ns) if ours_only else times
    if restore is not None:
        with contextlib.suppress(OSError):
            os.utime(path, ns=restore, follow_symlinks=False)
    return False


def is_opaque(path: str) -> bool:
    """Whether overlayfs hides what the layers below have in directory ``path``."""
    return _opaque_xattr(lambda name: os.getxattr(path, name, follow_symlinks=False))


def is_opaque_fd(fd: int) -> bool:
    """:func:`is_opaque` of an open directory."""
    return _opaque_xattr(lambda name: os.getxattr(fd, name))


def _opaque_xattr(get: Callable[[str], bytes]) -> bool:
    for name in _OPAQUE_XATTRS:
        try:
            if get(name) == b"y":
                return True
        except OSError:
            continue
    return False
