"""Where COPY and ADD read from: the build context (``.dockerignore`` applied) or a stage's root.

:class:`SourceTree` is a directory read as BuildKit's FileOp reads a source: paths resolve
inside it (symlinks followed, ``..`` never above its root), and :meth:`SourceTree.checksum`
gives the content digest BuildKit keys the cache on (:mod:`soute.build.contenthash`).

:class:`BuildContext` is the local build context. It is what BuildKit's client transfers,
seen without the copy:

* paths matched by ``.dockerignore`` (``<Dockerfile>.dockerignore`` first) are absent, with
  fsutil's walk semantics: an excluded directory is walked only when a ``!`` exception
  could bring something below it back, and it is present (with its own metadata) exactly
  when something below it is;
* every file is owned by 0:0 (the client resets owners before sending);
* the root's own metadata is not part of the content digest.

``BuildContext.from_tar`` unpacks a tar context (``soute build - < context.tar``) once,
with the layer applier's safety checks, and reads it from there.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from soute.build.contenthash import ContentHasher, StatCache, resolve_path
from soute.errors import SouteError

if TYPE_CHECKING:
    from soute.build.fastlane import Memo
    from soute.dockerfile.ignore import PatternMatcher

__all__ = ["BuildContext", "SourceTree"]


@dataclass(slots=True)
class _Entry:
    bname: bytes
    st: os.stat_result
    info: tuple[bool, ...] | None  # the ignore matcher's per-pattern results (directories)


class SourceTree:
    """A directory COPY/ADD sources are read from: a stage's or an image's root.

    ``name`` labels it in errors (BuildKit shows its ref there). ``stat_cache`` is the
    SQLite file of file digests by stat (e.g. ``$SOUTE_ROOT/cache/contenthash.db``); without
    it every file is read on each new tree.
    """

    reset_owner = False
    local = False
    filtered = False
    memo: Memo | None = None  # a local context notes every path it looks at (build.fastlane)

    def __init__(self, root: Path, *, name: str = "", stat_cache: Path | None = None) -> None:
        self.root = Path(root)
        self.name = name or str(root)
        self._root_b = os.fsencode(os.path.abspath(root))
        self._stat_cache_path = stat_cache
        self._stat_cache: StatCache | None = None
        self._stat_cache_opened = False
        self._hasher: ContentHasher | None = None
        try:
            root_st = os.stat(self._root_b)
        except OSError as err:
            raise SouteError(f"cannot read {root}: {err.strerror}") from err
        if not stat.S_ISDIR(root_st.st_mode):
            raise SouteError(f"cannot read {root}: not a directory")

    # -- reading

    def fspath(self, rel: str) -> bytes:
        """The host path of ``rel`` (which must already be resolved)."""
        return self._root_b + b"/" + os.fsencode(rel) if rel else self._root_b

    def lstat(self, rel: str) -> os.stat_result | None:
        """The entry at ``rel`` (symlinks not followed), or ``None`` when absent."""
        path = self.fspath(rel)
        try:
            st: os.stat_result | None = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if self.memo is not None:
            self.memo.saw(path, st)
        return st

    def listdir(self, rel: str) -> list[str]:
        """The names in directory ``rel``, in byte order."""
        path = self.fspath(rel)
        try:
            names = os.listdir(path)
        except OSError as err:
            raise SouteError(f"cannot read /{rel}: {err.strerror}") from err
        if self.memo is not None:
            self.memo.look(path)  # its times move when a name comes or goes
        return [os.fsdecode(n) for n in sorted(names)]

    def entries(self, rel: str) -> list[tuple[bytes, os.stat_result]]:
        """Directory ``rel``'s entries: (name, lstat), in byte order of the names."""
        path = self.fspath(rel)
        try:
            with os.scandir(path) as it:
                found = [(e.name, e.stat(follow_symlinks=False)) for e in it]
        except OSError as err:
            raise SouteError(f"cannot read /{rel}: {err.strerror}") from err
        found.sort()
        if self.memo is not None:
            self._note_listing(path, found)
        return found

    def _note_listing(self, path: bytes, found: Sequence[tuple[bytes, os.stat_result]]) -> None:
        assert self.memo is not None
        self.memo.look(path)
        for name, st in found:
            self.memo.saw(path + b"/" + name, st)

    def readlink(self, rel: str) -> str:
        path = self.fspath(rel)
        if self.memo is not None:
            self.memo.look(path)  # a new target is a new link: new times
        return os.readlink(path.decode("utf-8", "surrogateescape"))

    def resolve(self, path: str, *, follow_last: bool = True) -> str | None:
        """``path`` with its symlinks resolved inside the tree, or ``None`` if it is absent."""
        parts = resolve_path(self.lstat, self.readlink, path, follow_last=follow_last)
        rel = "/".join(parts)
        return rel if self.lstat(rel) is not None else None

    def walk(self, rel: str = "") -> Iterator[str]:
        """Every path under ``rel`` (not ``rel`` itself), parents first, in byte order."""
        stack = [(rel, list(reversed(self.listdir(rel))))]
        while stack:
            here, pending = stack[-1]
            if not pending:
                stack.pop()
                continue
            name = pending.pop()
            child = f"{here}/{name}" if here else name
            st = self.lstat(child)
            if st is None:
                continue
            yield child
            if stat.S_ISDIR(st.st_mode):
                stack.append((child, list(reversed(self.listdir(child)))))

    # -- the content hash

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
        """BuildKit's content digest of ``path`` (a path, or a pattern with ``wildcard``).

        See :meth:`soute.build.contenthash.ContentHasher.checksum`. Digests are memoised
        for the tree's lifetime: make a new tree when its files may have changed.
        """
        if self._hasher is None:
            self._hasher = ContentHasher(self)
        return self._hasher.checksum(
            path,
            follow_links=follow_links,
            wildcard=wildcard,
            include_patterns=include_patterns,
            exclude_patterns=exclude_patterns,
            required_paths=required_paths,
        )

    def stat_cache(self) -> StatCache | None:
        if not self._stat_cache_opened:
            self._stat_cache_opened = True
            if self._stat_cache_path is not None:
                variant = (1 if self.reset_owner else 0) | (2 if self.local else 0)
                self._stat_cache = StatCache.open(
                    self._stat_cache_path, os.fsdecode(os.path.realpath(self._root_b)), variant
                )
        return self._stat_cache

    def close(self) -> None:
        """Write what the stat cache learnt and close it."""
        if self._stat_cache is not None:
            self._stat_cache.close()
            self._stat_cache = None

    def __enter__(self) -> SourceTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"


class BuildContext(SourceTree):
    """The local build context, with ``.dockerignore`` applied as BuildKit's walk does."""

    reset_owner = True
    local = True

    def __init__(
        self,
        root: Path,
        *,
        dockerfile: Path | None = None,
        ignore_patterns: Sequence[str] | None = None,
        stat_cache: Path | None = None,
        memo: Memo | None = None,
    ) -> None:
        """``ignore_patterns=None`` reads the ignore file BuildKit would use for
        ``dockerfile`` (default ``<root>/Dockerfile``); pass a list to set them. ``memo``
        notes every path looked at."""
        from soute.dockerfile.ignore import PatternMatcher, find_ignore_file, read_ignore_file

        super().__init__(root, name="context", stat_cache=stat_cache)
        self.memo = memo
        if ignore_patterns is None:
            ignore_file = find_ignore_file(self.root, dockerfile)
            if ignore_file is None:
                ignore_patterns = []
            else:
                try:
                    text = ignore_file.read_bytes().decode("utf-8", "surrogateescape")
                except OSError as err:
                    raise SouteError(f"cannot read {ignore_file}: {err.strerror}") from err
                ignore_patterns = read_ignore_file(text)
        self.ignore_patterns = list(ignore_patterns)
        self.matcher: PatternMatcher | None = (
            PatternMatcher(self.ignore_patterns) if self.ignore_patterns else None
        )
        self.filtered = self.matcher is not None
        self._dirs: dict[str, dict[str, _Entry]] = {}

    @classmethod
    def from_tar(
        cls,
        stream: BinaryIO,
        tmp_dir: Path,
        *,
        dockerfile: str = "Dockerfile",
        ignore_patterns: Sequence[str] | None = None,
        stat_cache: Path | None = None,
    ) -> BuildContext:
        """Unpack a (maybe compressed) tar context into ``tmp_dir/context`` and read it.

        ``dockerfile`` is the Dockerfile's path inside the archive. The caller removes
        ``tmp_dir`` when the build is done.
        """
        from soute.layer import apply_layer, open_decompressed

        root = Path(tmp_dir) / "context"
        root.mkdir(parents=True)
        apply_layer(open_decompressed(stream), root, overlay=False)
        return cls(
            root,
            dockerfile=root / dockerfile,
            ignore_patterns=ignore_patterns,
            stat_cache=stat_cache,
        )

    # -- the filtered view

    def lstat(self, rel: str) -> os.stat_result | None:
        if not rel:
            return super().lstat(rel)
        if self.matcher is None:
            return super().lstat(rel)
        parent, _, name = rel.rpartition("/")
        entries = self._entries(parent)
        entry = None if entries is None else entries.get(name)
        return None if entry is None else entry.st

    def listdir(self, rel: str) -> list[str]:
        if self.matcher is None:
            return super().listdir(rel)
        entries = self._entries(rel)
        return [] if entries is None else list(entries)

    def entries(self, rel: str) -> list[tuple[bytes, os.stat_result]]:
        if self.matcher is None:
            return super().entries(rel)
        found = self._entries(rel)
        return [] if found is None else [(e.bname, e.st) for e in found.values()]

    def is_ignored(self, rel: str) -> bool:
        """Whether ``rel`` is left out of the context by ``.dockerignore``."""
        return self.lstat(rel) is None and super().lstat(rel) is not None

    def _entries(self, rel: str) -> dict[str, _Entry] | None:
        """The present entries of directory ``rel`` (byte order), or ``None`` if it is absent."""
        if not rel:
            top = self._dirs.get("")
            return top if top is not None else self._scan("", None)
        parent, _, name = rel.rpartition("/")
        entries = self._entries(parent)
        entry = None if entries is None else entries.get(name)
        if entry is None or not stat.S_ISDIR(entry.st.st_mode):
            return None
        known = self._dirs.get(rel)
        return known if known is not None else self._scan(rel, entry.info)

    def _scan(self, rel: str, info: tuple[bool, ...] | None) -> dict[str, _Entry]:
        matcher = self.matcher
        assert matcher is not None
        found: list[tuple[bytes, str, _Entry]] = []
        try:
            with os.scandir(self.fspath(rel)) as it:
                for dirent in it:
                    name = os.fsdecode(dirent.name)
                    child = f"{rel}/{name}" if rel else name
                    st = dirent.stat(follow_symlinks=False)
                    excluded, child_info = matcher.matches_in_walk(child, info if rel else None)
                    entry = _Entry(dirent.name, st, child_info)
                    if excluded:
                        if not stat.S_ISDIR(st.st_mode) or matcher.excludes_dir_entirely(child):
                            continue
                        # Present only if something below it comes back (a "!" exception).
                        if not self._scan(child, child_info):
                            continue
                    found.append((dirent.name, name, entry))
        except OSError as err:
            raise SouteError(f"cannot read context directory /{rel}: {err.strerror}") from err
        found.sort()
        if self.memo is not None:
            self._note_listing(self.fspath(rel), [(b, e.st) for b, _, e in found])
        entries = {name: entry for _, name, entry in found}
        self._dirs[rel] = entries
        return entries
