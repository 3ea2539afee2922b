"""BuildKit's content hash of COPY/ADD sources (``cache/contenthash``), and a stat cache.

BuildKit keys a COPY or ADD on what the sources *contain*, never on their timestamps. The
rules reproduced here:

* **A file, symlink, fifo or device** hashes as sha256 over a legacy "tarsum v1" header and
  then, for regular files, the bytes. The header is the text ``name`` (always empty),
  ``mode`` (permission bits with setuid/setgid/sticky; a symlink always ``0777``), ``uid``,
  ``gid``, ``size`` (regular files only), ``typeflag``, ``linkname``, ``uname`` and
  ``gname`` (both empty), ``devmajor``, ``devminor``, each as its name followed by its
  decimal or text value, then every extended attribute except ``security.*`` (but
  ``security.capability``) and ``system.*``, sorted by name, as name followed by value.
  There is no ``mtime``: touching a file does not change its digest. A socket hashes as an
  empty regular file.
* **A directory** has two digests. Its *header* digest is the one above for the directory
  itself (the root of a local build context instead has the digest of no bytes, as the
  context's root is not transferred). Its *content* digest is sha256 over ``"\\0"`` + its
  header digest, then for each entry in byte order of the names ``"\\0" + name`` + the
  entry's digest (a subdirectory's content digest, so it covers the whole tree).
* **A wildcard, or a source with include/exclude patterns** hashes the list of the paths it
  selects (files, symlinks and directory *headers*), each as its path relative to the
  source's fixed prefix (``/`` turned into ``\\0``) followed by its digest. A single match
  whose base name is the pattern's is hashed as that match alone; no match at all is the
  digest of no bytes.

Digests are ``sha256:<hex>`` strings. Byte-for-byte equality with BuildKit is not claimed
(BuildKit's local source sees files through its own transfer), only these rules.

The stat cache maps (device, inode, size, mtime, ctime) to a file's digest in a small
SQLite table, so an unchanged context is a walk of ``lstat`` calls. Any write to a file,
and any chmod, chown or xattr change, moves its ctime; an entry is only trusted when the
file's ctime is older than the moment it was read by more than the filesystem's timestamp
granularity, so a file rewritten within the clock tick it was hashed in is never stale.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from soute.errors import SouteError

if TYPE_CHECKING:
    import sqlite3

    from soute.dockerfile.ignore import PatternMatcher

log = logging.getLogger(__name__)

EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()
MAX_SYMLINKS = 255  # BuildKit's and continuity's limit when resolving a path

_CHUNK = 1 << 20
_SMALL = 1 << 16  # files up to this size are read with one call
# A stat-cache entry is trusted only if the file's ctime is older than the moment it was
# read by more than the timestamp granularity (coarse kernel clock; whole seconds on
# filesystems that keep no sub-second times).
_RACY_NS = 50_000_000
_RACY_COARSE_NS = 2_000_000_000

_TYPEFLAGS = {
    stat.S_IFREG: b"0",
    stat.S_IFLNK: b"2",
    stat.S_IFCHR: b"3",
    stat.S_IFBLK: b"4",
    stat.S_IFDIR: b"5",
    stat.S_IFIFO: b"6",
    stat.S_IFSOCK: b"0",  # BuildKit clears the socket bit: it hashes as a regular file
}


class NotFoundError(SouteError):
    """A source path that is not in its tree: BuildKit's cache-key error."""

    def __init__(self, path: str, ref: str) -> None:
        self.path = path
        self.ref = ref
        super().__init__(
            f'failed to compute cache key: failed to calculate checksum of ref {ref}: "{path}":'
            " not found"
        )


class Tree(Protocol):
    """What the hasher reads: a directory tree, maybe filtered (``.dockerignore``).

    ``rel`` paths are relative to the root, ``/``-separated, ``""`` for the root itself.
    """

    name: str  # shown in errors, like BuildKit's ref
    reset_owner: bool  # uid/gid count as 0 (a local build context)
    local: bool  # the root's own header is not part of the content (a local context)
    filtered: bool  # some files are left out (.dockerignore): a walk does not see them all

    def lstat(self, rel: str) -> os.stat_result | None: ...

    def listdir(self, rel: str) -> list[str]: ...

    def entries(self, rel: str) -> list[tuple[bytes, os.stat_result]]:
        """Directory ``rel``'s entries as (name, lstat), in byte order of the names."""
        ...

    def readlink(self, rel: str) -> str: ...

    def fspath(self, rel: str) -> bytes: ...

    def resolve(self, path: str, *, follow_last: bool) -> str | None: ...

    def stat_cache(self) -> StatCache | None: ...


# --------------------------------------------------------------------------------------
# Go's path.Match and BuildKit's wildcard helpers


def contains_wildcards(name: str) -> bool:
    """Whether ``name`` has ``*``, ``?`` or ``[`` not escaped by ``\\``."""
    i = 0
    while i < len(name):
        c = name[i]
        if c == "\\":
            i += 2
            continue
        if c in "*?[":
            return True
        i += 1
    return False


def split_wildcards(path: str) -> tuple[str, str]:
    """The part of a ``/``-rooted path before its first wildcard component, and the rest."""
    parts = go_clean(path).split("/")
    head: list[str] = []
    tail: list[str] = []
    for part in parts:
        if tail or contains_wildcards(part):
            tail.append(part)
        else:
            head.append(part or "/")
    return go_join(*head), go_join(*tail)


def go_clean(path: str) -> str:
    """Go's ``path.Clean``."""
    if not path:
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    joined = "/".join(out)
    if rooted:
        return "/" + joined
    return joined or "."


def go_join(*parts: str) -> str:
    """Go's ``path.Join``: non-empty parts joined by ``/`` and cleaned; ``""`` if none."""
    kept = [p for p in parts if p]
    return go_clean("/".join(kept)) if kept else ""


def go_base(path: str) -> str:
    """Go's ``path.Base``."""
    if not path:
        return "."
    path = path.rstrip("/")
    if not path:
        return "/"
    return path.rsplit("/", 1)[-1]


def go_match(pattern: str, name: str) -> bool:
    """Go's ``path.Match`` (``filepath.Match`` on Unix).

    ``*`` and ``?`` never match ``/``; a ``[...]`` class may. A malformed pattern raises
    :class:`SouteError` whatever the name, as current Go does.
    """
    return _glob_regexp(pattern).fullmatch(name) is not None


@lru_cache(maxsize=256)
def _glob_regexp(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    n = len(pattern)

    def bad() -> SouteError:
        return SouteError(f"syntax error in pattern: {pattern}")

    def class_char(j: int) -> tuple[str, int]:
        # One (maybe escaped) character of a class; "-" and "]" must be escaped here.
        if j >= n or pattern[j] in "-]":
            raise bad()
        if pattern[j] == "\\":
            j += 1
            if j >= n:
                raise bad()
        return pattern[j], j + 1

    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "\\":
            if i + 1 >= n:
                raise bad()
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif c == "[":
            i += 1
            negated = i < n and pattern[i] == "^"
            if negated:
                i += 1
            ranges: list[str] = []
            while True:
                if i < n and pattern[i] == "]" and ranges:
                    i += 1
                    break
                lo, i = class_char(i)
                hi = lo
                if i < n and pattern[i] == "-":
                    hi, i = class_char(i + 1)
                if i >= n:
                    raise bad()
                if lo > hi:
                    ranges.append("(?!)")  # Go accepts an empty range; it matches nothing
                else:
                    ranges.append(f"{re.escape(lo)}-{re.escape(hi)}")
            alternatives = "|".join(f"[{r}]" if r != "(?!)" else r for r in ranges)
            out.append(f"(?!(?:{alternatives}))." if negated else f"(?:{alternatives})")
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def key_path(path: str) -> str:
    """BuildKit's ``keyPath``: ``/a/b`` form, ``""`` for the root."""
    cleaned = go_clean("/" + path)
    return "" if cleaned == "/" else cleaned


# --------------------------------------------------------------------------------------
# Single-entry digests


def _keep_in_hash(name: bytes) -> bool:
    if name == b"security.capability":
        return True
    return not name.startswith((b"security.", b"system."))


def read_xattrs(path: bytes) -> list[tuple[bytes, bytes]]:
    """The extended attributes that count in a digest, sorted by name."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.ENOENT, errno.EPERM):
            return []
        raise
    attrs: list[tuple[bytes, bytes]] = []
    for name in names:
        raw = os.fsencode(name)
        if not _keep_in_hash(raw):
            continue
        try:
            attrs.append((raw, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue  # vanished or unreadable: BuildKit skips it as well
    attrs.sort()
    return attrs


def tarsum_header(
    st: os.stat_result,
    *,
    linkname: bytes = b"",
    xattrs: Sequence[tuple[bytes, bytes]] = (),
    reset_owner: bool = False,
) -> bytes:
    """The v1 tarsum header BuildKit hashes in front of a file's bytes (no mtime, no name)."""
    fmt = stat.S_IFMT(st.st_mode)
    typeflag = _TYPEFLAGS.get(fmt)
    if typeflag is None:
        raise SouteError(f"cannot hash a file of type {oct(fmt)}")
    mode = st.st_mode & 0o7777
    if fmt == stat.S_IFLNK:
        mode |= 0o777
    size = st.st_size if fmt in (stat.S_IFREG, stat.S_IFSOCK) else 0
    major = minor = 0
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    uid, gid = (0, 0) if reset_owner else (st.st_uid, st.st_gid)
    parts = [
        b"name",
        b"mode%d" % mode,
        b"uid%d" % uid,
        b"gid%d" % gid,
        b"size%d" % size,
        b"typeflag" + typeflag,
        b"linkname" + linkname,
        b"uname",
        b"gname",
        b"devmajor%d" % major,
        b"devminor%d" % minor,
    ]
    parts.extend(name + value for name, value in xattrs)
    return b"".join(parts)


def entry_digest(path: bytes, st: os.stat_result, *, reset_owner: bool = False) -> str:
    """The digest of one non-directory entry, or of a directory's header."""
    linkname = os.fsencode(os.readlink(path)) if stat.S_ISLNK(st.st_mode) else b""
    header = tarsum_header(st, linkname=linkname, xattrs=read_xattrs(path), reset_owner=reset_owner)
    h = hashlib.sha256(header)
    if stat.S_ISREG(st.st_mode) and st.st_size > 0:
        _hash_content(h, path, st)
    return "sha256:" + h.hexdigest()


def _hash_content(h: hashlib._Hash, path: bytes, st: os.stat_result) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if st.st_size <= _SMALL:
            # One read normally does: a regular file only reads short at its end.
            while data := os.read(fd, st.st_size + 1):
                h.update(data)
                if len(data) <= st.st_size:
                    return
            return
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
    finally:
        os.close(fd)


def dir_digest(header: str, children: Sequence[tuple[bytes, str]]) -> str:
    """A directory's content digest from its header digest and its (name, digest) entries."""
    parts = [b"\x00", header.encode()]
    for name, digest in children:
        parts.append(b"\x00" + name)
        parts.append(digest.encode())
    return "sha256:" + hashlib.sha256(b"".join(parts)).hexdigest()


def list_digest(items: Sequence[tuple[str, str]]) -> str:
    """The digest of selected (relative path, digest) items, as BuildKit's file list."""
    parts: list[bytes] = []
    for rel, digest in items:
        parts.append(os.fsencode(rel).replace(b"/", b"\x00") or b"\x00")
        parts.append(digest.encode())
    return "sha256:" + hashlib.sha256(b"".join(parts)).hexdigest()


# --------------------------------------------------------------------------------------
# The stat cache


_Key = tuple[int, int]
_Row = tuple[int, int, int, bytes]  # size, mtime, ctime, sha256


@dataclass
class StatCache:
    """File digests by stat, kept in a SQLite file shared by every soute process.

    One table, rows keyed by (tree root, variant, device, inode) and checked against the
    file's size, mtime and ctime (a chmod, chown or xattr change moves the ctime too);
    ``variant`` separates digests with real owners from those of local contexts (owners
    counted as 0). All rows of a root are read at once, new ones written by :meth:`flush`;
    after a walk of the whole tree, :meth:`flush` also drops the rows of vanished inodes.
    """

    path: Path
    root: str
    variant: int
    _rows: dict[_Key, _Row] = field(default_factory=dict)
    _new: dict[_Key, _Row] = field(default_factory=dict)
    _seen: set[_Key] = field(default_factory=set)
    _conn: sqlite3.Connection | None = None
    full_walk: bool = False

    @classmethod
    def open(cls, path: Path, root: str, variant: int) -> StatCache | None:
        """The cache for ``root``, or ``None`` (with a warning) when the file is unusable."""
        import sqlite3

        cache = cls(path=path, root=root, variant=variant)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS contenthash_v1 ("
                " root TEXT NOT NULL, variant INTEGER NOT NULL,"
                " dev INTEGER NOT NULL, ino INTEGER NOT NULL,"
                " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
                " digest BLOB NOT NULL,"
                " PRIMARY KEY (root, variant, dev, ino)) WITHOUT ROWID"
            )
            rows = conn.execute(
                "SELECT dev, ino, size, mtime_ns, ctime_ns, digest"
                " FROM contenthash_v1 WHERE root = ? AND variant = ?",
                (root, variant),
            ).fetchall()
        except (OSError, sqlite3.Error) as err:
            log.warning("content hash cache %s is not usable: %s", path, err)
            return None
        cache._conn = conn
        cache._rows = {(r[0], r[1]): r[2:] for r in rows}
        return cache

    def lookup(self, st: os.stat_result) -> str | None:
        key = (st.st_dev, st.st_ino)
        self._seen.add(key)
        row = self._rows.get(key)
        if (
            row is not None
            and row[0] == st.st_size
            and row[1] == st.st_mtime_ns
            and row[2] == st.st_ctime_ns
        ):
            return "sha256:" + row[3].hex()
        return None

    def store(self, st: os.stat_result, digest: str, read_at_ns: int) -> None:
        margin = _RACY_COARSE_NS if st.st_ctime_ns % 1_000_000_000 == 0 else _RACY_NS
        if st.st_ctime_ns >= read_at_ns - margin:
            return  # racy: the file may change again within the same timestamp
        row = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, bytes.fromhex(digest[7:]))
        key = (st.st_dev, st.st_ino)
        self._rows[key] = row
        self._new[key] = row

    def flush(self) -> None:
        """Write new rows (and forget vanished inodes after a full walk)."""
        if self._conn is None:
            return
        import sqlite3

        stale = self._rows.keys() - self._seen if self.full_walk else set()
        if not self._new and not stale:
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT OR REPLACE INTO contenthash_v1 VALUES (?,?,?,?,?,?,?,?)",
                [(self.root, self.variant, *k, *row) for k, row in self._new.items()],
            )
            self._conn.executemany(
                "DELETE FROM contenthash_v1 WHERE root = ? AND variant = ? AND dev = ? AND ino = ?",
                [(self.root, self.variant, *k) for k in stale],
            )
            self._conn.execute("COMMIT")
        except sqlite3.Error as err:
            log.warning("cannot update content hash cache %s: %s", self.path, err)
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            return
        for key in stale:
            del self._rows[key]
        self._new.clear()

    def close(self) -> None:
        self.flush()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _stat_fields(st: os.stat_result) -> tuple[int, int, int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid)


# --------------------------------------------------------------------------------------
# The hasher


@dataclass(slots=True)
class _Frame:
    rel: str
    path: bytes
    st: os.stat_result
    pending: list[tuple[bytes, os.stat_result]]
    done: list[tuple[bytes, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Selected:
    path: str  # "/a/b" form
    rel: str  # tree-relative path of the entry (for follow-links re-hashing)
    digest: str = ""
    is_symlink: bool = False
    is_header: bool = False
    follow: bool = False
    included: bool = False
    include_info: tuple[bool, ...] | None = None
    exclude_info: tuple[bool, ...] | None = None


class ContentHasher:
    """Digests of paths in one :class:`Tree`, memoised for the hasher's lifetime."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self._digests: dict[bytes, str] = {}  # host path -> entry or dir content digest
        self._headers: dict[str, str] = {}  # rel -> dir header digest

    # -- public

    def checksum(
        self,
        path: str,
        *,
        follow_links: bool = False,
        wildcard: bool = False,
        include_patterns: Sequence[str] = (),
        exclude_patterns: Sequence[str] = (),
        required_paths: Sequence[str] = (),
    ) -> str:
        """BuildKit's ``contenthash.Checksum`` of ``path`` (see the module docstring).

        ``wildcard`` allows glob characters in ``path``; as BuildKit's FileOp does, the
        path is only treated as a pattern when it has one. ``follow_links`` follows a
        symlink named by ``path`` itself (or matched by it); links inside directories are
        always hashed as links.
        """
        try:
            wildcard = wildcard and contains_wildcards(path)
            if not wildcard and not include_patterns and not exclude_patterns:
                return self._lazy(path, follow_links)
            return self._selection(
                path, follow_links, wildcard, include_patterns, exclude_patterns, required_paths
            )
        finally:
            cache = self.tree.stat_cache()
            if cache is not None:
                cache.flush()

    # -- one path

    def _lazy(self, path: str, follow: bool) -> str:
        p = key_path(path)
        rel = self.tree.resolve(p, follow_last=follow)
        st = None if rel is None else self.tree.lstat(rel)
        if rel is None or st is None:
            raise NotFoundError(p or "/", self.tree.name)
        if rel == "":
            self._walked_all()
        return self._digest(rel, st)

    def _walked_all(self) -> None:
        # After a walk of every file, the stat cache may forget inodes it did not see.
        cache = self.tree.stat_cache()
        if cache is not None and not self.tree.filtered:
            cache.full_walk = True

    def _digest(self, rel: str, st: os.stat_result) -> str:
        key = self.tree.fspath(rel)
        known = self._digests.get(key)
        if known is not None:
            return known
        digest = self._dir(rel, st) if stat.S_ISDIR(st.st_mode) else self._entry(rel, st)
        self._digests[key] = digest
        return digest

    def _dir(self, rel: str, st: os.stat_result) -> str:
        # Iterative post-order walk (deep trees must not hit Python's recursion limit),
        # on byte paths: this loop is most of the time of a warm stat cache.
        tree = self.tree
        digests = self._digests
        cache = tree.stat_cache()
        path = tree.fspath(rel)
        frames: list[_Frame] = [_Frame(rel, path, st, tree.entries(rel))]
        result = ""
        while frames:
            frame = frames[-1]
            pending = frame.pending
            if pending:
                bname, child_st = pending.pop()
                child_path = frame.path + b"/" + bname
                known = digests.get(child_path)
                if known is None:
                    mode = child_st.st_mode
                    if stat.S_ISDIR(mode):
                        name = os.fsdecode(bname)
                        child = f"{frame.rel}/{name}" if frame.rel else name
                        frames.append(_Frame(child, child_path, child_st, tree.entries(child)))
                        continue
                    if cache is not None and stat.S_ISREG(mode):
                        known = cache.lookup(child_st)
                    if known is None:
                        known = self._entry_at(child_path, child_st, looked_up=True)
                    digests[child_path] = known
                frame.done.append((bname, known))
                continue
            frames.pop()
            frame.done.sort()
            result = dir_digest(self._header(frame.rel, frame.st), frame.done)
            digests[frame.path] = result
            if frames:
                frames[-1].done.append((frame.path.rsplit(b"/", 1)[-1], result))
        return result

    def _header(self, rel: str, st: os.stat_result) -> str:
        known = self._headers.get(rel)
        if known is None:
            if rel == "" and self.tree.local:
                known = EMPTY_DIGEST  # a local context's root is not part of its content
            else:
                known = entry_digest(self.tree.fspath(rel), st, reset_owner=self.tree.reset_owner)
            self._headers[rel] = known
        return known

    def _entry(self, rel: str, st: os.stat_result) -> str:
        return self._entry_at(self.tree.fspath(rel), st)

    def _entry_at(self, path: bytes, st: os.stat_result, *, looked_up: bool = False) -> str:
        reset = self.tree.reset_owner
        if not stat.S_ISREG(st.st_mode):
            return entry_digest(path, st, reset_owner=reset)
        cache = self.tree.stat_cache()
        if cache is not None and not looked_up:
            cached = cache.lookup(st)
            if cached is not None:
                return cached
        read_at = time.time_ns()
        digest = entry_digest(path, st, reset_owner=reset)
        if cache is not None:
            try:
                after = os.lstat(path)
            except OSError:
                return digest
            if _stat_fields(after) == _stat_fields(st):
                cache.store(st, digest, read_at)
        return digest

    # -- selections (wildcards, include/exclude patterns)

    def _selection(
        self,
        path: str,
        follow: bool,
        wildcard: bool,
        include_patterns: Sequence[str],
        exclude_patterns: Sequence[str],
        required_paths: Sequence[str],
    ) -> str:
        from soute.dockerfile.ignore import PatternMatcher

        ends_in_sep = path.endswith("/")
        p = key_path(path)
        include = PatternMatcher(include_patterns) if include_patterns else None
        exclude = PatternMatcher(exclude_patterns) if exclude_patterns else None
        start: str | None
        if wildcard:
            head, tail = split_wildcards(p)
            prefix = "" if head == "/" else head
            start = "" if head == "/" else self.tree.resolve(head, follow_last=bool(tail))
        else:
            prefix = p
            start = self.tree.resolve(p, follow_last=False)
        selected: list[_Selected] = []
        start_st = None if start is None else self.tree.lstat(start)
        if start is not None and start_st is not None and stat.S_ISDIR(start_st.st_mode):
            if start == "":
                self._walked_all()
            selected = self._select(
                start, prefix, p, ends_in_sep, wildcard, include, exclude, follow
            )
        for required in required_paths:
            if not any(item.path.startswith(required) for item in selected):
                raise NotFoundError(required, self.tree.name)
        for item in selected:
            if item.follow and item.is_symlink:
                item.digest = self._lazy(item.path, True)
        if not selected:
            return EMPTY_DIGEST
        if len(selected) == 1 and go_base(p) == go_base(selected[0].path):
            return selected[0].digest
        return list_digest([(s.path.removeprefix(prefix), s.digest) for s in selected])

    def _select(
        self,
        start: str,
        prefix: str,
        p: str,
        ends_in_sep: bool,
        wildcard: bool,
        include: PatternMatcher | None,
        exclude: PatternMatcher | None,
        follow: bool,
    ) -> list[_Selected]:
        selected: list[_Selected] = []
        parents: list[_Selected] = []  # headers of the directories we are inside
        last_match = ""
        for rel, st in self._walk(start):
            fn = prefix + "/" + rel if rel else prefix
            while parents and not fn.startswith(parents[-1].path + "/"):
                parents.pop()
            parent = parents[-1] if parents else None
            tree_rel = f"{start}/{rel}" if start and rel else (start or rel)
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_dir and fn == p and ends_in_sep:
                continue  # "dir/": the directory's own metadata is not part of it
            item = _Selected(
                path=fn,
                rel=tree_rel,
                is_symlink=stat.S_ISLNK(st.st_mode),
                is_header=is_dir,
                follow=parent is None and follow,
            )
            if wildcard:
                if not last_match or not fn.startswith(last_match + "/"):
                    if not go_match(p, fn):
                        continue
                    last_match = fn
                candidate = (fn + "/").removeprefix(last_match + "/").removesuffix("/")
            else:
                candidate = (fn + "/").removeprefix(p + "/").removesuffix("/")
            keep = _should_include(candidate, include, exclude, item, parent)
            if not keep and not is_dir:
                continue
            item.digest = self._header(tree_rel, st) if is_dir else self._digest(tree_rel, st)
            if keep:
                for header in parents:
                    if not header.included:
                        header.included = True
                        selected.append(header)
                item.included = True
                selected.append(item)
            if is_dir:
                parents.append(item)
        return selected

    def _walk(self, start: str) -> Iterator[tuple[str, os.stat_result]]:
        """Entries under ``start`` (itself first, as ``""``), parents before children, in
        byte order of their names: the order of BuildKit's radix tree."""
        tree = self.tree
        root_st = tree.lstat(start)
        if root_st is None:
            return
        yield "", root_st
        stack: list[tuple[str, list[str]]] = [("", list(reversed(tree.listdir(start))))]
        while stack:
            here, pending = stack[-1]
            if not pending:
                stack.pop()
                continue
            name = pending.pop()
            rel = f"{here}/{name}" if here else name
            st = tree.lstat(f"{start}/{rel}" if start else rel)
            if st is None:
                continue
            yield rel, st
            if stat.S_ISDIR(st.st_mode):
                child = f"{start}/{rel}" if start else rel
                stack.append((rel, list(reversed(tree.listdir(child)))))


def _should_include(
    candidate: str,
    include: PatternMatcher | None,
    exclude: PatternMatcher | None,
    item: _Selected,
    parent: _Selected | None,
) -> bool:
    if include is not None:
        hit, info = include.matches_in_walk(
            candidate, None if parent is None else parent.include_info
        )
        item.include_info = info
        if not hit:
            return False
    if exclude is not None:
        hit, info = exclude.matches_in_walk(
            candidate, None if parent is None else parent.exclude_info
        )
        item.exclude_info = info
        if hit:
            return False
    return True


# Resolution shared by every tree: continuity's RootPath / BuildKit's getFollowLinks.
def resolve_path(
    lstat: Callable[[str], os.stat_result | None],
    readlink: Callable[[str], str],
    path: str,
    *,
    follow_last: bool = True,
    base: Sequence[str] = (),
) -> list[str]:
    """The components of ``path`` with every symlink resolved inside the tree.

    ``..`` never climbs above ``base`` (a chroot) and an absolute link target starts again
    from it. Components that do not exist are kept as they are, so the result may name a
    missing entry. The last component is followed only with ``follow_last``.
    """
    resolved = list(base)
    floor = len(resolved)
    pending = [part for part in reversed(path.split("/"))]
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if len(resolved) > floor:
                resolved.pop()
            continue
        candidate = "/".join((*resolved, part))
        st = lstat(candidate)
        more = any(rest not in ("", ".") for rest in pending)
        if st is not None and stat.S_ISLNK(st.st_mode) and (follow_last or more):
            links += 1
            if links > MAX_SYMLINKS:
                raise SouteError(f"too many links resolving /{path.lstrip('/')}")
            target = readlink(candidate)
            if target.startswith("/"):
                resolved = list(base)
            pending.extend(reversed(target.split("/")))
            continue
        resolved.append(part)
    return resolved
