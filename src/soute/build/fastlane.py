"""The fast lane: a fully cached rebuild answered from the memo of the last one.

A build whose every step came from the cache leaves a *memo* in the store (table
``build_memos``), under its *request*: the command line, the working directory, the store,
whether standard error is a terminal, the environment variables a build reads, and the stamp
of soute's own code. The memo holds what that build depended on and what it printed:

* the Dockerfile's path and text;
* the ``lstat`` of every context path its content hashes looked at (directories included,
  so a file added or removed shows), or that the path was absent;
* each image name it resolved, by tag, and the image it found;
* the image it made, its tags, its ``--iidfile``, and its standard output and error.

The next ``soute build`` with the same request checks all of that before importing the
builder (about 60 ms of imports and the Dockerfile's parse): when nothing moved, it writes
the same output and exits; anything it cannot confirm sends it down the normal path, which
then writes a new memo. A memo is written only when nothing could have changed unseen: every
step cached, no remote source (``ADD`` of a URL or a git repository is checked on every
build, as BuildKit does), no ``--no-cache``, ``--secret``, ``--ssh``, ``--cache-from`` or
``--cache-to``, plain or quiet output, and no context entry changed in the two seconds
before the build began (a change in the same clock tick would leave its times as they were).

What the store forgets makes memos wrong, so SQLite triggers (``soute.store.meta``) delete
them all whenever an image, a layer, a snapshot or a build cache record is deleted, or a
cache record is replaced.

This module is imported on every ``soute build``: it imports nothing of soute's.
"""

from __future__ import annotations

import marshal
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

FORMAT = 1
RACY_NS = 2_000_000_000  # context entries changed this close to the build are not trusted
# The environment a build reads (besides the variables --build-arg NAME names).
_ENV_PREFIXES = ("SOUTE_",)
_ENV_NAMES = ("SOURCE_DATE_EPOCH", "NO_COLOR", "TERM", "HOME", "XDG_DATA_HOME")
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Sig = list[int]


def sig(st: os.stat_result) -> Sig:
    """What a change to a path changes: any write moves ctime, a replacement the inode."""
    return [st.st_mode, st.st_ino, st.st_dev, st.st_uid, st.st_gid, st.st_size,
            st.st_mtime_ns, st.st_ctime_ns]


def _code_stamp() -> list[int]:
    """soute's own code: a memo made by other code is not this code's."""
    total = count = 0
    for top, dirs, files in os.walk(_PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                st = os.stat(os.path.join(top, name))
                total += st.st_mtime_ns ^ (st.st_size << 20) ^ st.st_ino
                count += 1
    return [count, total]


def request(root: str, argv: list[str]) -> str:
    """The key of a build's memo: everything outside the store that the command's meaning
    depends on. ``argv`` is the whole command line after ``soute``."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES}
    for arg in argv:  # `--build-arg NAME` (and `--secret id=NAME`) read variable NAME
        for word in (arg, arg.rpartition("=")[2]):
            if word and word in os.environ:
                env[word] = os.environ[word]
    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):
        terminal = False
    # repr: the same text for the same values, in every process (marshal's is not).
    return repr([FORMAT, sys.version, _code_stamp(), root, os.getcwd(), argv, terminal,
                 sorted(env.items())])


class Memo:
    """What a build reads, gathered while it runs; spoiled by anything the fast lane could
    not check."""

    def __init__(self) -> None:
        self.started_ns = time.time_ns()
        self.paths: dict[str, Sig | None] = {}  # lstat of context paths; "\0" suffix: stat
        self.images: dict[str, str] = {}  # fully qualified tag looked up -> image ID
        self.keys: dict[str, str | None] = {}  # cache records the build used -> their layer
        self.spoiled: str | None = None  # why no memo is written

    def spoil(self, why: str) -> None:
        if self.spoiled is None:
            self.spoiled = why

    def saw(self, path: bytes | str, st: os.stat_result | None, *, follow: bool = False) -> None:
        key = os.fsdecode(path) + ("\0" if follow else "")
        self.paths[key] = None if st is None else sig(st)

    def look(self, path: bytes | str, *, follow: bool = False) -> None:
        """Record a path's status now (absent included)."""
        try:
            st = os.stat(path) if follow else os.lstat(path)
        except OSError:
            st = None
        self.saw(path, st, follow=follow)

    def image(self, tag: str | None, image_id: str, tag_target: str | None) -> None:
        """A name resolved to ``image_id``; ``tag`` is the tag it was looked up as."""
        if tag is None or tag_target != image_id:
            self.spoil("an image named by ID or digest")
        else:
            self.images[tag] = image_id

    def save(self, db: Any, request: str, *, dockerfile: str, text: str, image_id: str,
             tags: list[str], iidfile: str | None, stdout: str, stderr: str) -> bool:
        """Write the memo (``db``: the store's SQLite connection). False: not memorable."""
        if self.spoiled is not None:
            return False
        floor = self.started_ns - RACY_NS
        if any(s is not None and (s[7] > floor or s[6] > floor) for s in self.paths.values()):
            return False  # a change in the same clock tick would not show
        # In the caller's write transaction: a prune between the build's cache lookups and
        # now fired its trigger before this memo existed, so look again.
        keys = list(self.keys)
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            rows = dict(db.execute(f"SELECT key, diff_id FROM build_cache WHERE key IN "
                                   f"({','.join('?' * len(part))})", part).fetchall())
            if any(rows.get(k, "gone") != self.keys[k] for k in part):
                return False
        import re

        memo = {
            "dockerfile": dockerfile, "text": text, "paths": self.paths, "images": self.images,
            "image": image_id, "tags": tags, "iidfile": iidfile,
            # A fully cached step takes no time: replayed, it says so.
            "stdout": stdout, "stderr": re.sub(r"(?m)^(#\d+ DONE) \d+\.\ds$", r"\1 0.0s", stderr),
        }
        db.execute("INSERT OR REPLACE INTO build_memos(request, memo) VALUES (?, ?)",
                   (request, marshal.dumps(memo)))
        return True


class Tee:
    """A text stream that keeps a copy of what is written through it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def text(self) -> str:
        return "".join(self.parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def try_build(root: str, key: str) -> int | None:
    """Answer the ``soute build`` of :func:`request` ``key`` from its memo: the exit code,
    or None to build."""
    db_path = os.path.join(root, "meta.db")
    if sys.stdout is None or sys.stderr is None or not os.path.exists(db_path):
        return None  # (a closed stream is the normal path's to report)
    try:
        memo = _check(db_path, key)
    except Exception:  # whatever goes wrong, the normal path knows better
        return None
    if memo is None:
        return None
    if memo["iidfile"]:
        try:
            with open(memo["iidfile"], "w") as f:
                f.write(memo["image"])
        except OSError:
            return None  # the normal path says so, after the progress, as it does
    sys.stdout.write(memo["stdout"])
    sys.stdout.flush()
    sys.stderr.write(memo["stderr"])
    sys.stderr.flush()
    return 0


def _check(db_path: str, key: str) -> dict[str, Any] | None:
    """The memo of request ``key`` when everything it read is as it was, else None."""
    import sqlite3

    db = sqlite3.connect(db_path, timeout=60, isolation_level=None)
    try:
        row = db.execute("SELECT memo FROM build_memos WHERE request=?", (key,)).fetchone()
        if row is None:
            return None
        memo = marshal.loads(row[0])
        names = [*memo["images"], *memo["tags"]]
        found = dict(db.execute(
            f"SELECT name, image FROM tags WHERE name IN ({','.join('?' * len(names))})",
            names).fetchall()) if names else {}
    finally:
        db.close()
    # Each on its own: a build tagging the name it builds FROM moves that name, and the
    # next build starts from the image it made (the memo no longer holds then).
    if any(found.get(name) != image for name, image in memo["images"].items()):
        return None
    if any(found.get(tag) != memo["image"] for tag in memo["tags"]):
        return None
    with open(memo["dockerfile"], "rb") as f:
        if f.read().decode("utf-8", "surrogateescape") != memo["text"]:
            return None
    for key, want in memo["paths"].items():
        try:
            st = os.stat(key[:-1]) if key.endswith("\0") else os.lstat(key)
        except OSError:
            st = None
        if (None if st is None else sig(st)) != want:
            return None
    return memo  # type: ignore[no-any-return]
