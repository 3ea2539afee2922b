"""The filesystem side of COPY and ADD, as BuildKit's FileOp copy (fsutil) does it.

:func:`copy_into` copies sources into an image. It reads the image through a view of two
directories: ``target_root`` (the image so far, read only) under ``write_root`` (the new
layer's upper dir, where everything is written). Pass the same directory twice to write
into a full tree instead.

The rules, per source, in order (``dockerfile2llb`` + ``FileOp`` + fsutil ``copy``):

* **Paths.** A relative ``dest`` is relative to WORKDIR; ``""`` and ``.`` mean WORKDIR
  itself. A trailing ``/`` (or ``/.``) on ``dest`` makes it a directory, created if
  needed. Sources are relative to their tree's root and cleaned (``../x`` is ``/x``,
  ``dir/`` is ``dir``). Symlinks in ``dest`` are followed inside the image, the last one
  included; symlinks in a source path are followed inside the source tree, and a source
  that *is* a symlink is copied as what it points to, under its own name.
* **Wildcards.** A source with ``*``, ``?`` or ``[`` (Go's ``filepath.Match``; ``\\``
  escapes) is matched against the tree below its literal prefix; each match is a source.
  A pattern that matches nothing copies nothing, without an error (BuildKit's
  ``AllowEmptyWildcard``); a missing literal source is BuildKit's cache-key error
  ``"/x": not found``.
* **Files.** A file goes to ``dest`` itself, or into it when ``dest`` is an existing
  directory. Several sources are handled one after the other with the same ``dest``:
  BuildKit does not refuse several sources with a ``dest`` without ``/``, the last file
  simply wins.
* **Directories** copy their *contents* into ``dest``, merging with what is there. A
  ``dest`` directory the copy creates is 0755 (or the ``--chmod`` octal mode) and owned by
  root (or ``--chown``), with the source directory's mtime; an existing one keeps its
  mode and owner. Below it, existing directories take the source's mode, owner and times.
* **Conflicts** (fsutil's): a directory never replaces a non-directory (``cannot copy to
  non-directory``), a file never replaces a directory (``cannot replace to directory ...
  with file``); files and symlinks replace files and symlinks.
* **Metadata.** Modes, mtimes, xattrs and hardlinks are kept. Owners are kept from a stage
  or image and are 0:0 from the build context, unless ``--chown``. Directories created
  for ``dest``'s parents are 0755 (or the octal ``--chmod``) and root-owned (or
  ``--chown``). Sockets become empty files, as in fsutil.
* **--chmod** octal sets the permission bits (and setuid/setgid/sticky) of everything
  copied; symbolic modes (``u+x,g-w``, BSD ``setmode`` semantics: ``X``, ``s``, ``t``,
  ``u=g``...) apply to each entry's own mode.
* **--exclude** patterns (``.dockerignore`` syntax) match paths relative to each copied
  source directory; the source itself is never excluded.
* **--parents** keeps each source's path below the tree root, or below a ``/./`` pivot.
* **ADD** unpacks a source that is a local tar archive (plain, gzip, bzip2, xz, zstd; by
  content, not by name) into ``dest`` as ``tar -x`` would, unless ``--unpack=false``.
* **Heredocs** (:class:`InlineSource`) are 0644 root-owned files named after the heredoc.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from soute.build.contenthash import (
    NotFoundError,
    contains_wildcards,
    go_base,
    go_clean,
    go_join,
    go_match,
    resolve_path,
    split_wildcards,
)
from soute.build.context import SourceTree
from soute.errors import SouteError

if TYPE_CHECKING:
    from soute.build.copyevents import CopyEvents
    from soute.dockerfile.ignore import PatternMatcher

__all__ = [
    "Chmod",
    "CopyResult",
    "InlineSource",
    "Source",
    "copy_into",
    "is_archive",
    "parse_chmod",
    "resolve_chown",
    "source_checksum",
]

log = logging.getLogger(__name__)

_DEFAULT_DIR_MODE = 0o755
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_MAX_USER_FILE = 10 << 20  # BuildKit refuses /etc/passwd or /etc/group larger than this
_TAR_BLOCK = 512


# --------------------------------------------------------------------------------------
# Sources and results


@dataclass(frozen=True)
class Source:
    """A source path as written in the Dockerfile (after expansion) and the tree it is in:
    the build context, a stage's root (``--from``) or an image's."""

    path: str
    tree: SourceTree
    literal: bool = False  # no wildcards: a downloaded file's name is taken as it is
    unpack: bool | None = None  # None: as copy_into's unpack says


@dataclass(frozen=True)
class InlineSource:
    """A heredoc source (``COPY <<EOF /dest``): a file ``name`` holding ``data``."""

    name: str
    data: bytes


@dataclass
class CopyResult:
    """What a copy wrote: image paths (``/a/b``) in the order they were created or changed.

    Parent directories that were only created in the upper dir to hold new entries (their
    content unchanged) are not listed.
    """

    paths: list[str] = field(default_factory=list)


def source_checksum(source: Source, *, parents: bool = False, excludes: Sequence[str] = ()) -> str:
    """The content digest BuildKit keys this source of a COPY/ADD on (its selector).

    Local sources are hashed with symlinks followed, wildcards allowed, ``--exclude`` and
    ``--parents`` patterns applied, as ``dockerfile2llb`` asks for them.
    """
    src, include, required = _split_source(source.path, parents)
    return source.tree.checksum(
        src,
        follow_links=True,
        wildcard=True,
        include_patterns=include,
        exclude_patterns=excludes,
        required_paths=required,
    )


# --------------------------------------------------------------------------------------
# --chmod


_SUID, _SGID, _STICKY = 0o4000, 0o2000, 0o1000
_STANDARD = _SUID | _SGID | 0o777
_WHO = {"a": _STANDARD, "u": _SUID | 0o700, "g": _SGID | 0o070, "o": 0o007}
_SHIFT = {"u": 6, "g": 3, "o": 0}


@dataclass(frozen=True)
class _ModeOp:
    op: str  # "+", "-", "X" (add if executable or directory), "copy" (u/g/o from another)
    bits: int
    source: str = ""  # copy: which class to read
    targets: str = ""  # copy: which classes to write
    clear: bool = False
    set: bool = False


@dataclass(frozen=True)
class Chmod:
    """A parsed ``--chmod``: an octal mode, or symbolic operations."""

    text: str
    octal: int | None = None
    ops: tuple[_ModeOp, ...] = ()

    def apply(self, mode: int, *, is_dir: bool) -> int:
        """The new permission bits (with setuid/setgid/sticky) for an entry of ``mode``."""
        if self.octal is not None:
            return self.octal & 0o7777
        original = mode & 0o7777
        new = original
        for op in self.ops:
            if op.op == "+":
                new |= op.bits
            elif op.op == "-":
                new &= ~op.bits
            elif op.op == "X":
                if original & 0o111 or is_dir:
                    new |= op.bits
            else:
                value = (new >> _SHIFT[op.source]) & 0o7
                if op.clear:
                    cleared = 0o7 if op.set else value
                    for t in op.targets:
                        new &= ~((cleared << _SHIFT[t]) & op.bits)
                if op.set:
                    for t in op.targets:
                        new |= (value << _SHIFT[t]) & op.bits
        return new & 0o7777

    @property
    def dir_mode(self) -> int:
        """The mode of directories created for ``dest``: fsutil's MkdirAll permission."""
        return (self.octal & 0o777) if self.octal is not None else _DEFAULT_DIR_MODE


def parse_chmod(text: str) -> Chmod:
    """``--chmod`` as BuildKit accepts it: octal up to 07777, or a symbolic mode (1.14+)."""
    non_octal = SouteError(
        f"invalid chmod parameter: '{text}'. it should be octal string and between 0 and 07777"
    )
    if re.fullmatch(r"[0-7]+", text):
        value = int(text, 8)
        if value > 0o7777:
            raise non_octal
        return Chmod(text, octal=value)
    if text[:1].isdigit():
        raise non_octal  # BuildKit answers with the octal error when it looks numeric
    ops = _parse_symbolic(text)
    if ops is None:
        raise SouteError("invalid syntax", hint=f"--chmod={text} is not a symbolic mode")
    return Chmod(text, ops=tuple(ops))


def _parse_symbolic(text: str) -> list[_ModeOp] | None:
    """BSD ``setmode`` clauses (umask 0), or ``None`` when the syntax is wrong."""
    ops: list[_ModeOp] = []

    def add(op: str, who: int, perm: int) -> None:
        if op == "=":
            ops.append(_ModeOp("-", who or _STANDARD))
            op = "+"
        ops.append(_ModeOp(op, (who & perm) if who else perm))

    def add_copy(source: str, who: int, op: str) -> None:
        if who:
            targets = "".join(
                t for t, bit in (("u", 0o400), ("g", 0o040), ("o", 0o004)) if who & bit
            )
        else:
            targets = "ugo"
        ops.append(_ModeOp("copy", 0xFFFF, source, targets, clear=op in "-=", set=op in "+="))

    i, n = 0, len(text)
    equal_done = False
    while True:
        who = 0
        while i < n and text[i] in _WHO:
            who |= _WHO[text[i]]
            i += 1
        if i >= n:
            return None
        while True:  # one or more operators for this "who"
            op = text[i]
            i += 1
            if op not in "+-=":
                return None
            if op == "=":
                equal_done = False
            who &= ~_STICKY
            perm = perm_x = 0
            while True:
                c = text[i] if i < n else ""
                if c == "r":
                    perm |= 0o444
                elif c == "w":
                    perm |= 0o222
                elif c == "x":
                    perm |= 0o111
                elif c == "X":
                    if op == "+":
                        perm_x = 0o111
                elif c == "s":
                    if who == 0 or who & ~0o007:
                        perm |= _SUID | _SGID
                elif c == "t":
                    if who == 0 or who & ~0o007:  # the sticky bit is not for "other" alone
                        who |= _STICKY
                        perm |= _STICKY
                elif c in ("u", "g", "o"):
                    if perm:
                        add(op, who, perm)
                        perm = 0
                    if op == "=":
                        equal_done = True
                    if perm_x:
                        add("X", who, perm_x)
                        perm_x = 0
                    add_copy(c, who, op)
                else:
                    if perm or (op == "=" and not equal_done):
                        if op == "=":
                            equal_done = True
                        add(op, who, perm)
                    if perm_x:
                        add("X", who, perm_x)
                    break
                i += 1
            if i >= n:
                return ops
            if text[i] == ",":
                i += 1
                break


# --------------------------------------------------------------------------------------
# --chown


def resolve_chown(spec: str, target_root: Path, write_root: Path | None = None) -> tuple[int, int]:
    """``--chown=user[:group]`` as BuildKit resolves it against the image's files.

    Numbers are ids (``root`` is 0); a lone user id is also the group id. A user name takes
    its uid and primary gid from ``/etc/passwd``, a group name its gid from ``/etc/group``.
    An unknown name is an error (BuildKit silently gives root: see docs/differences.md).
    """
    view = _View(target_root, write_root if write_root is not None else target_root)
    user, has_group, group = spec.partition(":")
    uid = gid = 0
    user_id = _parse_id(user)
    if user_id is not None:
        uid = gid = user_id
    elif user:
        for fields in _user_file(view, "etc/passwd", comments=False):
            if fields[0] == user:
                uid, gid = _atoi(fields, 2), _atoi(fields, 3)
                break
        else:
            raise SouteError(f"--chown: unknown user {user!r}: no such name in the image's "
                             "/etc/passwd", "add the user first (RUN useradd ...) or give ids")
    if has_group:
        group_id = _parse_id(group)
        if group_id is not None:
            gid = group_id
        elif group:
            for fields in _user_file(view, "etc/group", comments=True):
                if fields[0] == group:
                    gid = _atoi(fields, 2)
                    break
            else:
                raise SouteError(f"--chown: unknown group {group!r}: no such name in the "
                                 "image's /etc/group", "add the group first or give ids")
        else:
            gid = 0  # "user:" asks for group 0
    return uid, gid


def make_workdir(target_root: Path, write_root: Path, workdir: str, user: str) -> None:
    """WORKDIR's directory as BuildKit's mkdir makes it: each missing directory, parents
    included, 0755 and owned by the stage's ``USER`` (a name unknown to the image gives
    root, as in BuildKit). Symlinks resolve inside the image; directories that exist keep
    their metadata (copied up, mtime restored)."""
    view = _View(target_root, write_root)
    owner = None
    if user:
        try:
            owner = resolve_chown(user, target_root, write_root)
        except SouteError:
            owner = (0, 0)
    copier = _Copier(view, owner=owner, chmod=None, exclude=None, timestamp_ns=None)
    try:
        copier.mkdir_all(_rel(view.resolve(workdir)))
    except OSError as err:
        raise SouteError(f"mkdir {workdir}: {err.strerror or err}") from err
    finally:
        view.finish()


def _parse_id(text: str) -> int | None:
    """BuildKit's ``parseUID``: ``root``, or a decimal int32 (sign allowed)."""
    if text == "root":
        return 0
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        return None
    value = int(text)
    if not -(2**31) <= value < 2**31:
        return None
    return value & 0xFFFFFFFF


def _atoi(fields: list[str], index: int) -> int:
    # Go's Atoi with the error ignored, as moby/sys/user parses these files.
    try:
        return int(fields[index]) if index < len(fields) else 0
    except ValueError:
        return 0


def _user_file(view: _View, rel: str, *, comments: bool) -> Iterator[list[str]]:
    resolved = "/".join(view.resolve(rel))
    st = view.lstat(resolved)
    if st is None:
        return  # a missing file is a user that is not found
    if not stat.S_ISREG(st.st_mode):
        raise SouteError(f"/{resolved} is not a regular file")
    if st.st_size > _MAX_USER_FILE:
        raise SouteError(f'"/{resolved}" exceeds {_MAX_USER_FILE} bytes')
    with open(view.host_path(resolved), "rb") as f:
        text = f.read().decode("utf-8", "surrogateescape")
    for line in text.splitlines():
        line = line.strip()
        if not line or (comments and line.startswith("#")):
            continue
        yield line.split(":")


# --------------------------------------------------------------------------------------
# The image: an upper dir over a lower tree


class _View:
    """The image as the copy sees it: ``upper`` (the new layer) over ``lower``.

    Entries in ``upper`` hide those in ``lower``; directories merge, as in overlayfs.
    Paths are image-relative (``"a/b"``, ``""`` for the root). Directories of ``lower``
    are copied up (mode, owner, xattrs; mtime restored at the end) before anything is
    written into them.
    """

    def __init__(self, lower: Path, upper: Path) -> None:
        self.lower = os.fsencode(os.path.abspath(lower))
        self.upper = os.fsencode(os.path.abspath(upper))
        try:
            self.direct = os.path.samefile(self.lower, self.upper)
        except OSError as err:
            raise SouteError(f"cannot copy into {upper}: {err.strerror}") from err
        self._lower_dirs: dict[str, bool] = {"": True}
        self.hidden: set[str] = set()  # lower directories replaced by upper non-directories
        self.times: dict[bytes, tuple[int, int]] = {}  # upper dir -> (atime, mtime), set last
        # Called before anything but a plain create: a copy-up, a removal, an opaque dir.
        self.disturbed: Callable[[], None] = _nothing

    def host_path(self, rel: str) -> bytes:
        """Where ``rel`` is read from now (upper if it is there)."""
        upper = self.upper_path(rel)
        if self.direct or os.path.lexists(upper):
            return upper
        return self.lower + b"/" + os.fsencode(rel) if rel else self.lower

    def upper_path(self, rel: str) -> bytes:
        return self.upper + b"/" + os.fsencode(rel) if rel else self.upper

    def lstat(self, rel: str) -> os.stat_result | None:
        try:
            return os.lstat(self.upper_path(rel))
        except FileNotFoundError:
            pass
        except NotADirectoryError:
            return None  # an upper non-directory hides everything below it
        if self.direct or not self._lower_visible(rel):
            return None
        try:
            return os.lstat(self.lower + b"/" + os.fsencode(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _lower_visible(self, rel: str) -> bool:
        if self.hidden and any(rel == h or rel.startswith(h + "/") for h in self.hidden):
            return False
        parent = rel.rpartition("/")[0]
        return self._lower_dir(parent)

    def _lower_dir(self, rel: str) -> bool:
        known = self._lower_dirs.get(rel)
        if known is None:
            parent = rel.rpartition("/")[0]
            known = self._lower_dir(parent)
            if known:
                try:
                    known = stat.S_ISDIR(os.lstat(self.lower + b"/" + os.fsencode(rel)).st_mode)
                except OSError:
                    known = False
            self._lower_dirs[rel] = known
        return known

    def readlink(self, rel: str) -> str:
        return os.fsdecode(os.readlink(self.host_path(rel)))

    def resolve(
        self, path: str, *, follow_last: bool = True, base: Sequence[str] = ()
    ) -> list[str]:
        return resolve_path(self.lstat, self.readlink, path, follow_last=follow_last, base=base)

    def upper_dir(self, rel: str) -> bytes:
        """Make directory ``rel`` of the view a directory of the upper dir; its path."""
        path = self.upper_path(rel)
        if self.direct or not rel:
            return path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                raise SouteError(f"mkdir /{rel}: not a directory")
            return path
        self.upper_dir(rel.rpartition("/")[0])
        lower_st = self.lstat(rel)
        if lower_st is None or not stat.S_ISDIR(lower_st.st_mode):
            raise SouteError(f"mkdir /{rel}: not a directory")
        self.disturbed()
        os.mkdir(path, 0o700)
        lower = self.lower + b"/" + os.fsencode(rel)
        _lchown(path, lower_st.st_uid, lower_st.st_gid)
        os.chmod(path, stat.S_IMODE(lower_st.st_mode))
        _copy_xattrs(lower, path)
        self.times.setdefault(path, (lower_st.st_atime_ns, lower_st.st_mtime_ns))
        return path

    def make_dir(self, rel: str, mode: int) -> bytes:
        """Create directory ``rel`` in the upper dir (its parent must be a view directory)."""
        self.upper_dir(rel.rpartition("/")[0])
        path = self.upper_path(rel)
        os.mkdir(path, 0o700)
        if rel in self.hidden:
            self.disturbed()
            _set_opaque(path)  # the lower directory it replaces stays hidden
        os.chmod(path, mode)
        return path

    def clear(self, rel: str) -> bytes:
        """Make room for a new entry at ``rel``: remove what the upper dir has there; a
        lower directory there becomes hidden. Returns the upper path."""
        self.upper_dir(rel.rpartition("/")[0])
        path = self.upper_path(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            self.disturbed()
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        if not self.direct:
            lower = self._lower_visible(rel) and os.path.isdir(self.lower + b"/" + os.fsencode(rel))
            if lower and not os.path.islink(self.lower + b"/" + os.fsencode(rel)):
                self.disturbed()
                self.hidden.add(rel)
        return path

    def finish(self) -> None:
        """Set the directory times recorded during the copy, deepest first."""
        for path in sorted(self.times, key=lambda p: p.count(b"/"), reverse=True):
            atime, mtime = self.times[path]
            try:
                os.utime(path, ns=(atime, mtime), follow_symlinks=False)
            except FileNotFoundError:
                continue
        self.times.clear()


def _nothing() -> None:
    pass


def _set_opaque(path: bytes) -> None:
    for name in _OPAQUE_XATTRS:
        try:
            os.setxattr(path, name, b"y", follow_symlinks=False)
            return
        except OSError:
            continue
    raise SouteError(f"cannot mark {os.fsdecode(path)} opaque for overlayfs")


_warned_chown = False


def _lchown(path: bytes | int, uid: int, gid: int) -> None:
    """``lchown`` of a path, or ``fchown`` of a descriptor."""
    global _warned_chown
    try:
        if isinstance(path, int):
            os.fchown(path, uid, gid)
        else:
            os.lchown(path, uid, gid)
    except PermissionError:
        if os.geteuid() == 0:
            raise
        if not _warned_chown:  # without root, files stay ours (one warning per process)
            _warned_chown = True
            log.warning("not root: copied files keep the current user as owner")


def _copy_xattrs(src: bytes | int, dst: bytes | int, name_of_dst: bytes = b"") -> None:
    """fsutil copies every xattr and only logs failures; overlayfs' own are not copied.

    ``src`` and ``dst`` are paths (symlinks not followed) or open descriptors."""
    # A descriptor cannot be combined with follow_symlinks=False (it follows nothing).
    follow = isinstance(src, int)
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError:
        return
    for name in names:
        if name.startswith(_OVERLAY_XATTRS):
            continue
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=follow),
                        follow_symlinks=isinstance(dst, int))
        except OSError as err:
            where = name_of_dst or (dst if isinstance(dst, bytes) else b"")
            log.debug("xattr %s not copied to %s: %s", name, os.fsdecode(where), err)


# --------------------------------------------------------------------------------------
# Paths


def _normalize(parent: str, path: str, *, keep_slash: bool) -> str:
    """BuildKit's ``system.NormalizePath`` (then cleaned, as FileOp does)."""
    if not parent.startswith("/"):
        parent = go_join("/", parent)
    joined = path if path.startswith("/") else go_join(parent, path or parent)
    result = go_clean(joined)
    if keep_slash:
        if path.endswith("/") and not result.endswith("/"):
            result += "/"
        elif path.endswith("/."):
            result = (result if result == "/" else result + "/") + "."
    return result


def dest_path(dest: str, workdir: str = "/") -> str:
    """Where ``dest`` points: absolute, cleaned, keeping a trailing ``/`` or ``/.``."""
    if not dest.startswith("/") and dest in ("", "."):
        dest = "./"
    return _normalize(workdir or "/", dest, keep_slash=True)


def _split_source(path: str, parents: bool) -> tuple[str, list[str], list[str]]:
    """(source path, include patterns, required paths) for one source, as dockerfile2llb
    builds them; ``--parents`` splits ``a/./b`` at its pivot into ``a`` and pattern ``b``."""
    include: list[str] = []
    required: list[str] = []
    if parents:
        head, pivot, pattern = path.partition("/./")
        src = head if pivot else "/"
        if not pivot:
            pattern = path
        pattern = _normalize("/", pattern, keep_slash=False)
        include = [pattern.removeprefix("/")]
        if not contains_wildcards(src) and not contains_wildcards(pattern):
            required = [_normalize("/", go_join(src, pattern), keep_slash=False)]
        path = src
    return _normalize("/", path, keep_slash=False), include, required


def _rel(components: Sequence[str]) -> str:
    return "/".join(components)


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


# --------------------------------------------------------------------------------------
# The copier


@dataclass
class _Pending:
    """A source directory whose copy is delayed until something below it is included."""

    src: str
    dst: str
    st: os.stat_result
    copied: bool


class _Copier:
    def __init__(
        self,
        view: _View,
        *,
        owner: tuple[int, int] | None,
        chmod: Chmod | None,
        exclude: PatternMatcher | None,
        timestamp_ns: int | None,
        events: CopyEvents | None = None,
    ) -> None:
        self.view = view
        self.events = events
        if events is not None:
            view.disturbed = events.stop
        self.owner = owner
        self.chmod = chmod
        self.exclude = exclude
        self.timestamp_ns = timestamp_ns
        self.result = CopyResult()
        self.dir_mode = chmod.dir_mode if chmod is not None else _DEFAULT_DIR_MODE
        self._privileged = os.geteuid() == 0

    def settle(self) -> None:
        """Wait for the writes handed to the events' writer process (raising the first
        failure): before the copy touches a path that one of them may create."""
        if self.events is not None:
            self.events.settle()

    # -- directories for dest

    def mkdir_all(self, rel: str, mode: int | None = None) -> None:
        """fsutil's MkdirAll: missing directories get the copy's directory mode and owner."""
        parts = rel.split("/") if rel else []
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            st = self.view.lstat(sub)
            if st is not None:
                if not stat.S_ISDIR(st.st_mode):
                    raise SouteError(f"mkdir /{sub}: not a directory")
                continue
            path = self.view.make_dir(sub, self.dir_mode if mode is None else mode)
            if self.owner is not None:
                _lchown(path, *self.owner)
            if self.timestamp_ns is not None:
                self.view.times[path] = (self.timestamp_ns, self.timestamp_ns)
            self.result.paths.append("/" + sub)

    # -- one source

    def copy_source(
        self, tree: SourceTree, path: str, dest: str, *, parents: bool, unpack: bool,
        literal: bool = False,
    ) -> None:
        src, include_patterns, required = _split_source(path, parents)
        for req in required:
            if tree.resolve(req) is None:
                raise NotFoundError(req, tree.name)
        if contains_wildcards(src) and not literal:
            matches = _resolve_wildcards(tree, src)
        else:
            if tree.resolve(src) is None:
                raise NotFoundError(go_clean(src), tree.name)
            matches = [src]
        include = None
        if parents:
            from soute.dockerfile.ignore import PatternMatcher

            include = PatternMatcher(include_patterns)
        for match in matches:
            if unpack and self._unpack(tree, match, dest):
                continue
            self._copy_one(tree, match, dest, include)

    def _copy_one(
        self, tree: SourceTree, src: str, dest: str, include: PatternMatcher | None
    ) -> None:
        head, _, tail = dest.rpartition("/")
        ensure = dest if tail in ("", ".") else head + "/"
        self.mkdir_all(_rel(self.view.resolve(ensure)))
        dst = _rel(self.view.resolve(go_clean(dest)))
        src_rel = tree.resolve(src)
        src_st = None if src_rel is None else tree.lstat(src_rel)
        if src_rel is None or src_st is None:
            raise SouteError(f"lstat {src}: no such file or directory")
        self.settle()  # an earlier source may have queued a write to what this one replaces
        dst_st = self.view.lstat(dst)
        src_is_dir = stat.S_ISDIR(src_st.st_mode)
        if not src_is_dir and dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
            dst = _join(dst, go_base(src))
        self.mkdir_all(dst if src_is_dir and dst_st is None else _parent(dst))
        if self.events is not None and self.events.on:
            self._announce_dest(dst, src_st)
        walk = _Walk(tree, include=include, inodes={}, made_dest=src_is_dir and dst_st is None)
        self._copy(walk, src_rel, "", dst, False, None, None)
        self.settle()  # a heredoc's scratch file is removed once this returns

    def _announce_dest(self, dst: str, src_st: os.stat_result) -> None:
        """Announce the directories down to ``dst`` (the first source only): the copy of a
        directory into a new one writes nothing else into them, and gives ``dst`` the
        source's times."""
        events = self.events
        assert events is not None
        if events.started or not dst or not stat.S_ISDIR(src_st.st_mode):
            events.stop()
            return
        events.started = True
        parts = dst.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            path = self.view.upper_path(sub)
            try:
                st = os.lstat(path)
            except OSError:
                st = None
            if st is None or not stat.S_ISDIR(st.st_mode):
                events.stop()
                return
            _, mtime = self._times(src_st) if sub == dst else self.view.times.get(
                path, (0, st.st_mtime_ns))
            events.directory(sub, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime)

    def _copy(
        self,
        walk: _Walk,
        src: str,
        components: str,
        dst: str,
        overwrite: bool,
        include_info: tuple[bool, ...] | None,
        exclude_info: tuple[bool, ...] | None,
        fresh: bool = False,
    ) -> None:
        """Copy ``src`` to ``dst``; ``fresh``: ``dst``'s parent was made by this walk, so
        nothing is at ``dst`` yet (no lookup needed)."""
        included = True
        excluded = False
        if components:
            if walk.include is not None:
                included, include_info = walk.include.matches_in_walk(components, include_info)
            if self.exclude is not None:
                hit, exclude_info = self.exclude.matches_in_walk(components, exclude_info)
                if hit:
                    included = False
                    excluded = True
            if (
                not included
                and walk.include is None
                and (self.exclude is None or not self.exclude.has_exceptions)
            ):
                return
        st = walk.tree.lstat(src)
        if st is None:
            raise SouteError(f"failed to stat /{src}")
        is_dir = stat.S_ISDIR(st.st_mode)
        if not included and not is_dir:
            return
        target_st = None if fresh else self.view.lstat(dst)
        if included:
            self._create_parents(walk, overwrite)
        if not is_dir and target_st is not None and stat.S_ISDIR(target_st.st_mode):
            raise SouteError(f"cannot replace to directory /{dst} with file")

        copy_info = included
        restore_time = False
        info_done = False
        if is_dir:
            created = self._copy_dir(
                walk,
                src,
                components,
                dst,
                st,
                overwrite,
                included,
                excluded,
                include_info,
                exclude_info,
                fresh,
            )
            if not overwrite:
                copy_info = created
                restore_time = not created
        else:
            info_done = self._copy_entry(walk, src, st, dst, fresh)
        if copy_info and not info_done:
            self._copy_info(walk.tree, src, st, dst)
        elif restore_time and target_st is not None:
            path = self.view.upper_dir(dst)
            self.view.times[path] = self._times(st)
        if not is_dir and included and self.events is not None:
            self.events.entry(dst)

    def _copy_dir(
        self,
        walk: _Walk,
        src: str,
        components: str,
        dst: str,
        st: os.stat_result,
        overwrite: bool,
        included: bool,
        excluded: bool,
        include_info: tuple[bool, ...] | None,
        exclude_info: tuple[bool, ...] | None,
        fresh: bool = False,
    ) -> bool:
        created = False
        pending = _Pending(src, dst, st, copied=False)
        if included:
            created = self._dir_only(dst, st, overwrite, fresh)
            pending.copied = True
        if self.events is not None and self.events.on:
            if created:  # it ends with what _copy_info gives it once its children are made
                uid, gid = self._owner(walk.tree, st)
                mode = stat.S_IMODE(st.st_mode)
                if self.chmod is not None:
                    mode = self.chmod.apply(mode, is_dir=True)
                self.events.directory(dst, mode, uid, gid, self._times(st)[1])
            elif components or not included:  # a merge, or a directory made later if at all
                self.events.stop()
        walk.parents.append(pending)
        try:
            if excluded and (self.exclude is None or not self.exclude.has_exceptions):
                return False
            for name in walk.tree.listdir(src):
                self._copy(
                    walk,
                    _join(src, name),
                    _join(components, name),
                    _join(dst, name),
                    True,
                    include_info,
                    exclude_info,
                    # A directory this walk made holds only what it puts there.
                    created or (not components and walk.made_dest),
                )
        finally:
            walk.parents.pop()
        return created

    def _dir_only(
        self, dst: str, st: os.stat_result, overwrite: bool, fresh: bool = False
    ) -> bool:
        """Create directory ``dst`` for a source directory; True when it was created."""
        target = None if fresh else self.view.lstat(dst)
        if target is None:
            self.view.make_dir(dst, stat.S_IMODE(st.st_mode))
            self.result.paths.append("/" + dst)
            return True
        if not stat.S_ISDIR(target.st_mode):
            raise SouteError(f"cannot copy to non-directory: /{dst}")
        if overwrite:
            os.chmod(self.view.upper_dir(dst), stat.S_IMODE(st.st_mode))
            self.result.paths.append("/" + dst)
        return False

    def _create_parents(self, walk: _Walk, overwrite: bool) -> None:
        """Create the delayed directories above an included entry (``--parents``)."""
        for pending in walk.parents:
            if pending.copied:
                continue
            if self._dir_only(pending.dst, pending.st, overwrite):
                self._copy_info(walk.tree, pending.src, pending.st, pending.dst)
            pending.copied = True

    def _copy_entry(
        self, walk: _Walk, src: str, st: os.stat_result, dst: str, fresh: bool = False
    ) -> bool:
        """Create ``dst`` from the non-directory ``src``; True when its info (owner, mode,
        times, xattrs) is set too."""
        if not fresh:
            self.settle()
        target = self.view.upper_path(dst) if fresh else self.view.clear(dst)
        source = walk.tree.fspath(src)
        fmt = stat.S_IFMT(st.st_mode)
        info_done = False
        if fmt == stat.S_IFREG:
            first = walk.inodes.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
            if first is not None:
                if self.events is not None:
                    self.events.stop()  # the first path's header changes (a hardlink group)
                self.settle()
                os.link(first, target)
            else:
                self._write_file(walk.tree, source, st, target, hand_over=fresh)
                info_done = True
                if st.st_nlink > 1:
                    walk.inodes[(st.st_dev, st.st_ino)] = target
        elif fmt == stat.S_IFLNK:
            os.symlink(os.readlink(source), target)
        elif fmt == stat.S_IFSOCK:
            os.mknod(target, stat.S_IMODE(st.st_mode) | stat.S_IFREG)  # a socket's stub
        else:
            os.mknod(target, st.st_mode, st.st_rdev)
        self.result.paths.append("/" + dst)
        return info_done

    def _write_file(
        self, tree: SourceTree, source: bytes, st: os.stat_result, target: bytes,
        *, hand_over: bool = False,
    ) -> None:
        """Copy a regular file and set its info as :meth:`_copy_info` does. ``hand_over``:
        the events' writer process may do it (nothing may look at ``target`` until
        :meth:`settle`)."""
        uid, gid = self._owner(tree, st)
        mode = stat.S_IMODE(st.st_mode)
        if self.chmod is not None:
            mode = self.chmod.apply(mode, is_dir=False)
        times = self._times(st)
        if not (hand_over and self.events is not None
                and self.events.write_file(source, target, uid, gid, mode, times, _write_regular)):
            _write_regular(source, target, uid, gid, mode, times)

    def _owner(self, tree: SourceTree, st: os.stat_result) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner
        if tree.reset_owner:
            return 0, 0
        return st.st_uid, st.st_gid

    def _copy_info(self, tree: SourceTree, src: str, st: os.stat_result, dst: str) -> None:
        """Owner, mode, times and xattrs of a copied entry (fsutil's copyFileInfo)."""
        path = self.view.upper_dir(dst) if stat.S_ISDIR(st.st_mode) else self.view.upper_path(dst)
        uid, gid = self._owner(tree, st)
        _lchown(path, uid, gid)
        is_link = stat.S_ISLNK(st.st_mode)
        if not is_link:
            mode = stat.S_IMODE(st.st_mode)
            if self.chmod is not None:
                mode = self.chmod.apply(mode, is_dir=stat.S_ISDIR(st.st_mode))
            if stat.S_ISDIR(st.st_mode) and (mode & 0o300 != 0o300 or not self._privileged):
                self.settle()  # queued writes into it may need to search and write it
            os.chmod(path, mode)
        times = self._times(st)
        if stat.S_ISDIR(st.st_mode):
            self.view.times[path] = times  # children may still change it: set at the end
        else:
            os.utime(path, ns=times, follow_symlinks=False)
        _copy_xattrs(tree.fspath(src), path)

    def _times(self, st: os.stat_result) -> tuple[int, int]:
        if self.timestamp_ns is not None:
            return self.timestamp_ns, self.timestamp_ns
        return st.st_atime_ns, st.st_mtime_ns

    # -- ADD of a local archive

    def _unpack(self, tree: SourceTree, src: str, dest: str) -> bool:
        src_rel = tree.resolve(src)
        if src_rel is None or not is_archive(tree.fspath(src_rel)):
            return False
        if self.events is not None:
            self.events.stop()
        base = self.view.resolve(go_clean(dest))
        self.mkdir_all(_rel(base), _DEFAULT_DIR_MODE)  # unpacking ignores --chmod
        scratch = tempfile.mkdtemp(prefix=".soute-unpack-", dir=os.fsdecode(self.view.upper))
        try:
            implied = _extract(tree.fspath(src_rel), Path(scratch))
            if self.owner is not None:
                _chown_tree(os.fsencode(scratch), self.owner, implied)
            _Merge(self, os.fsencode(scratch), base, implied).run()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return True


@dataclass
class _Walk:
    """State of one fsutil ``Copy`` call: its tree, include patterns, hardlinks seen, and
    the directories above the current entry."""

    tree: SourceTree
    include: PatternMatcher | None
    inodes: dict[tuple[int, int], bytes]
    parents: list[_Pending] = field(default_factory=list)
    made_dest: bool = False  # the walk's destination directory was just made: it is empty


def _write_regular(
    source: bytes, target: bytes, uid: int, gid: int, mode: int, times: tuple[int, int]
) -> None:
    """Copy a regular file and set its info through the open descriptors: no path lookup
    per call, no chown or chmod that changes nothing."""
    src_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst_fd = os.open(
            target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            _copy_data(src_fd, dst_fd)
            made = os.fstat(dst_fd)
            chowned = (made.st_uid, made.st_gid) != (uid, gid)
            if chowned:
                _lchown(dst_fd, uid, gid)
            # After the chown, which clears setuid and setgid.
            if chowned or stat.S_IMODE(made.st_mode) != mode:
                os.fchmod(dst_fd, mode)
            os.utime(dst_fd, ns=times)
            _copy_xattrs(src_fd, dst_fd, target)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def _copy_data(src_fd: int, dst_fd: int) -> None:
    size = os.fstat(src_fd).st_size
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(src_fd, dst_fd, min(size - copied, 1 << 30))
            if n == 0:
                break
            copied += n
    except OSError as err:
        if copied or err.errno not in (
            errno.ENOSYS,
            errno.EXDEV,
            errno.EPERM,
            errno.EIO,
            errno.EOPNOTSUPP,
            errno.EINVAL,
        ):
            raise
    if copied < size:
        # Not copied in the kernel, or stopped short: the source shrank, or the disk is
        # full, which a write reports as ENOSPC (copy_file_range just returns 0).
        while chunk := os.read(src_fd, 1 << 20):
            data = memoryview(chunk)
            while data:
                data = data[os.write(dst_fd, data):]


def _resolve_wildcards(tree: SourceTree, src: str) -> list[str]:
    """fsutil's ResolveWildcards: matches of ``src`` below its literal prefix, in walk order.

    The prefix is resolved with symlinks followed; the walk does not enter symlinked
    directories and does not descend into a directory that matched.
    """
    head, tail = split_wildcards(src)
    base = tree.resolve(head)
    if base is None:
        raise SouteError(f"lstat {head}: no such file or directory")
    # "*" and "?" never match "/": deeper paths cannot match (a class might match one "/").
    depth = tail.count("/") + tail.count("[") + 1
    matches: list[str] = []
    stack: list[tuple[str, list[str]]] = []
    base_st = tree.lstat(base)
    if base_st is not None and stat.S_ISDIR(base_st.st_mode):
        stack.append(("", list(reversed(tree.listdir(base)))))
    while stack:
        here, pending = stack[-1]
        if not pending:
            stack.pop()
            continue
        name = pending.pop()
        rel = _join(here, name)
        full = _join(base, rel)
        st = tree.lstat(full)
        if st is None:
            continue
        if go_match(tail, rel):
            matches.append("/" + full)
            continue
        if stat.S_ISDIR(st.st_mode) and rel.count("/") + 1 < depth:
            stack.append((rel, list(reversed(tree.listdir(full)))))
    return matches


# --------------------------------------------------------------------------------------
# Archives


def is_archive(path: bytes | str) -> bool:
    """Whether ADD unpacks this file: a regular file whose (decompressed) start is a valid
    tar header. The name does not matter; an empty file is not an archive."""
    from soute.layer import open_decompressed

    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as f:
            stream = open_decompressed(f)
            head = b""
            while len(head) < 2 * _TAR_BLOCK and (chunk := stream.read(2 * _TAR_BLOCK - len(head))):
                head += chunk
    except Exception:  # anything unreadable is simply not an archive
        return False
    return _tar_header_ok(head)


def _tar_header_ok(head: bytes) -> bool:
    """Go's ``tar.Reader.Next`` on the first header: a block with a valid checksum."""
    if len(head) < _TAR_BLOCK:
        return False
    block = head[:_TAR_BLOCK]
    if block == bytes(_TAR_BLOCK):
        return False  # an empty archive (or zeros): Next reports the end, not a header
    field_ = block[148:156].strip(b" \x00")
    if not field_ or not re.fullmatch(rb"[0-7]+", field_):
        return False
    want = int(field_, 8)
    blanked = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(blanked)
    signed = sum(b - 256 if b > 127 else b for b in blanked)
    return want in (unsigned, signed)


def _extract(archive: bytes, scratch: Path) -> set[bytes]:
    """Unpack ``archive`` into ``scratch``; the directories the extraction had to make
    because the archive does not list them (absolute paths in ``scratch``)."""
    from soute.layer import apply_layer, open_decompressed

    with open(archive, "rb") as f:
        names = _ArchiveDirs(open_decompressed(f))
        # Chrooted at the destination, as BuildKit unpacks: a symlink's ".." stops there.
        apply_layer(names, scratch, overlay=False, chroot=True)  # type: ignore[arg-type]
    top = os.fsencode(scratch)

    def lstat(rel: str) -> os.stat_result | None:
        try:
            return os.lstat(os.path.join(top, os.fsencode(rel)))
        except OSError:
            return None

    def readlink(rel: str) -> str:
        return os.fsdecode(os.readlink(os.path.join(top, os.fsencode(rel))))

    # An entry under one of the archive's own symlinks landed where the link points.
    listed = {
        os.fsencode(_rel(resolve_path(lstat, readlink, os.fsdecode(name), follow_last=False)))
        for name in names.dirs
    }
    implied: set[bytes] = set()
    for here, dirs, _files in os.walk(top):
        for name in dirs:
            path = os.path.join(here, name)
            if os.path.relpath(path, top) not in listed:
                implied.add(path)
    return implied


class _ArchiveDirs:
    """A tar stream passed through unchanged, noting the directories its entries name.

    ``tar -x`` treats a directory the archive lists differently from one it only needs
    as a parent (the first replaces a symlink and takes the entry's metadata, the second
    is walked through). Reading the names as the applier reads the stream saves a second
    decompression. Anything it cannot follow only stops the noting, never the extraction.
    """

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.dirs: set[bytes] = set()
        self._buf = bytearray()
        self._state = "header"  # header | payload | sparse | done
        self._skip = 0
        self._payload = (b"", 0)  # kind, length
        self._pax: dict[bytes, bytes] = {}
        self._long: bytes | None = None
        self._pad = 0
        self._pending = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._inner.read(size)  # type: ignore[attr-defined]
        if data and self._state != "done":
            try:
                self._feed(data)
            except (ValueError, IndexError):
                self._state = "done"
        return data

    def _feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and self._state != "done":
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                continue
            want = self._payload[1] if self._state == "payload" else _TAR_BLOCK
            take = min(want - len(self._buf), end - pos)
            self._buf += data[pos : pos + take]
            pos += take
            if len(self._buf) < want:
                return
            block = bytes(self._buf)
            self._buf.clear()
            if self._state == "header":
                self._header(block)
            elif self._state == "payload":
                self._extension(block)
            else:  # old GNU sparse: extension headers until one says it is the last
                if not block[504]:
                    self._state = "header"
                    self._skip = self._pending

    def _header(self, block: bytes) -> None:
        if block == bytes(_TAR_BLOCK):
            self._state = "done"
            return
        kind = block[156:157]
        size = _tar_number(block[124:136])
        if kind in (b"x", b"g", b"L", b"K"):
            self._state = "payload"
            self._payload = (kind, size)
            self._pad = -size % _TAR_BLOCK
            return
        name = _cstr(block[0:100])
        if block[257:263] == b"ustar\x00":
            prefix = _cstr(block[345 : 476 if block[508:512] == b"tar\x00" else 500])
            if prefix:
                name = prefix + b"/" + name
        name = self._pax.get(b"GNU.sparse.name", self._pax.get(b"path", self._long or name))
        if kind in (b"5", b"D") or (kind == b"\x00" and name.endswith(b"/")):
            clean = _clean_name(name)
            if clean:
                self.dirs.add(clean)
        if b"size" in self._pax:
            size = int(self._pax[b"size"])
        data = 0 if kind in (b"1", b"2", b"3", b"4", b"5", b"6") else size
        self._pending = data + (-data % _TAR_BLOCK)
        self._pax = {}
        self._long = None
        if kind == b"S" and block[482]:
            self._state = "sparse"
        else:
            self._skip = self._pending

    def _extension(self, payload: bytes) -> None:
        kind = self._payload[0]
        if kind == b"x":
            self._pax.update(_pax_records(payload))
        elif kind == b"L":
            self._long = payload.split(b"\x00", 1)[0]
        self._state = "header"
        self._skip = self._pad


def _cstr(field_: bytes) -> bytes:
    return field_.split(b"\x00", 1)[0]


def _tar_number(field_: bytes) -> int:
    if field_[:1] and field_[0] & 0x80:  # base-256
        return int.from_bytes(bytes([field_[0] & 0x7F]) + field_[1:], "big")
    digits = field_.strip(b" \x00")
    return int(digits, 8) if digits else 0


def _pax_records(payload: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(payload):
        space = payload.index(b" ", pos)
        length = int(payload[pos:space])
        record = payload[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        records[key] = value
        pos += length
    return records


def _clean_name(name: bytes) -> bytes:
    parts: list[bytes] = []
    for part in name.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return b"/".join(parts)


def _chown_tree(scratch: bytes, owner: tuple[int, int], implied: set[bytes]) -> None:
    """``ADD --chown`` owns every unpacked entry (not the parents the archive left out)."""
    for top, dirs, files in os.walk(scratch):
        for name in (*dirs, *files):
            path = os.path.join(top, name)
            if path not in implied:
                _lchown(path, *owner)


class _Merge:
    """Move an extracted archive from ``scratch`` into the image below ``base``, as
    ``tar -x`` run (chrooted) in ``base`` would have left it."""

    def __init__(
        self, copier: _Copier, scratch: bytes, base: list[str], implied: set[bytes]
    ) -> None:
        self.copier = copier
        self.view = copier.view
        self.scratch = scratch
        self.base = base
        self.implied = implied

    def run(self) -> None:
        self._merge_dir(self.scratch, _rel(self.base))

    def _merge_dir(self, scratch_dir: bytes, dest: str) -> None:
        for raw in sorted(os.listdir(scratch_dir)):
            source = os.path.join(scratch_dir, raw)
            st = os.lstat(source)
            target = _join(dest, os.fsdecode(raw))
            existing = self.view.lstat(target)
            if stat.S_ISDIR(st.st_mode):
                implied = source in self.implied
                if implied and existing is not None and stat.S_ISLNK(existing.st_mode):
                    # A parent the archive does not list is walked through, as the kernel
                    # does: absolute links stay inside the unpack directory.
                    below = target[len(_rel(self.base)) :].lstrip("/")
                    resolved = _rel(self.view.resolve(below, base=self.base))
                    self.copier.mkdir_all(resolved, _DEFAULT_DIR_MODE)
                    self._merge_dir(source, resolved)
                    continue
                if existing is not None and stat.S_ISDIR(existing.st_mode):
                    if not implied:
                        self._take_metadata(source, st, target)
                    self._merge_dir(source, target)
                    if not implied:
                        path = self.view.upper_dir(target)
                        self.view.times[path] = (st.st_atime_ns, st.st_mtime_ns)
                    continue
            self._move(source, target)

    def _take_metadata(self, source: bytes, st: os.stat_result, target: str) -> None:
        path = self.view.upper_dir(target)
        _lchown(path, st.st_uid, st.st_gid)
        os.chmod(path, stat.S_IMODE(st.st_mode))
        _copy_xattrs(source, path)
        self.copier.result.paths.append("/" + target)

    def _move(self, source: bytes, target: str) -> None:
        path = self.view.clear(target)
        try:
            os.rename(source, path)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            shutil.move(source, path)  # a write_root on another filesystem than scratch
        self.copier.result.paths.append("/" + target)
        if os.path.isdir(path) and not os.path.islink(path):
            if target in self.view.hidden:
                _set_opaque(path)  # the image's directory it replaced stays hidden
            for top, dirs, files in os.walk(path):
                rel_top = target + os.fsdecode(top[len(path) :])
                for name in sorted((*dirs, *files)):
                    self.copier.result.paths.append("/" + _join(rel_top, os.fsdecode(name)))


# --------------------------------------------------------------------------------------
# The entry point


def copy_into(
    sources: Sequence[Source | InlineSource],
    dest: str,
    *,
    target_root: Path,
    write_root: Path,
    workdir: str = "/",
    chown: tuple[int, int] | str | None = None,
    chmod: str | Chmod | None = None,
    parents: bool = False,
    excludes: Sequence[str] = (),
    unpack: bool = False,
    timestamp_ns: int | None = None,
    events: CopyEvents | None = None,
) -> CopyResult:
    """Copy ``sources`` to ``dest`` in the image, as COPY (``unpack=False``) or ADD does.

    ``target_root`` is the image before the copy, read only; everything is written below
    ``write_root`` (the new layer's upper dir; the same directory as ``target_root`` to
    write into a full tree). ``chown`` is ``(uid, gid)`` or a ``--chown`` value resolved
    against the image's ``/etc/passwd`` and ``/etc/group`` (:func:`resolve_chown`).
    ``timestamp_ns`` sets every copied entry's mtime (BuildKit's copy ``CreatedTime``).
    ``unpack`` is ADD's archive unpacking (``--unpack=false`` turns it off).
    ``events`` announces finished entries to a layer writer (:mod:`soute.build.copyevents`).
    """
    from soute.dockerfile.ignore import PatternMatcher

    view = _View(target_root, write_root)
    mode = parse_chmod(chmod) if isinstance(chmod, str) and chmod else chmod or None
    owner = chown
    if isinstance(chown, str):
        owner = resolve_chown(chown, target_root, write_root) if chown else None
    copier = _Copier(
        view,
        owner=owner,
        chmod=mode if isinstance(mode, Chmod) else None,
        exclude=PatternMatcher(list(excludes)) if excludes else None,
        timestamp_ns=timestamp_ns,
        events=events,
    )
    target = dest_path(dest, workdir)
    done = False
    try:
        for source in sources:
            if isinstance(source, InlineSource):
                _copy_inline(copier, source, target)
            else:
                copier.copy_source(
                    source.tree, source.path, target, parents=parents,
                    unpack=unpack if source.unpack is None else source.unpack,
                    literal=source.literal,
                )
        done = True
    except OSError as err:
        where = f" {os.fsdecode(err.filename)}:" if err.filename else ""
        raise SouteError(f"copy to {target} failed:{where} {err.strerror or err}") from err
    finally:
        if events is not None:
            # After a failure, the writes still queued are dropped (before the times are set).
            events.end_writer(abort=not done)
        view.finish()
        if events is not None:
            events.flush()
    return copier.result


def _copy_inline(copier: _Copier, source: InlineSource, dest: str) -> None:
    """A heredoc: a 0644 root-owned file made in a scratch tree, then copied like a file."""
    if copier.events is not None:
        copier.events.stop()
    if "/" in source.name.strip("/") or source.name in ("", ".", ".."):
        raise SouteError(f"mkfile /{source.name}: no such file or directory")
    with tempfile.TemporaryDirectory(prefix="soute-heredoc-") as scratch:
        name = source.name.strip("/")
        path = os.path.join(scratch, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, source.data)
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        tree = _HeredocTree(Path(scratch), name="heredoc")
        copier._copy_one(tree, "/" + name, dest, None)


class _HeredocTree(SourceTree):
    reset_owner = True  # BuildKit makes the file as root
