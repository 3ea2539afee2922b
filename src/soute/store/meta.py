"""Store metadata in SQLite (WAL): images, tags, layers and snapshots.

Blobs and snapshot directories live on the filesystem; these tables say which of them are
in use and how they relate. Every change is one transaction, so a killed process leaves the
tables as they were before or after it, never between.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 7

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,            -- config digest: docker's image ID
    manifest TEXT NOT NULL,         -- digest of our OCI manifest (naming the stored blobs)
    created TEXT,                   -- from the config
    size INTEGER NOT NULL,          -- sum of the uncompressed layer sizes
    added TEXT NOT NULL             -- when this store got it
);
CREATE TABLE IF NOT EXISTS tags (
    name TEXT PRIMARY KEY,          -- fully qualified: docker.io/library/debian:latest
    image TEXT NOT NULL REFERENCES images(id),
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tags_image ON tags(image);
CREATE TABLE IF NOT EXISTS repo_digests (
    name TEXT NOT NULL,             -- repository: docker.io/library/debian
    digest TEXT NOT NULL,           -- manifest digest at that registry
    image TEXT NOT NULL REFERENCES images(id),
    PRIMARY KEY (name, digest)
);
CREATE TABLE IF NOT EXISTS layers (
    diff_id TEXT PRIMARY KEY,       -- sha256 of the uncompressed tar, also its blob digest
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS image_layers (
    image TEXT NOT NULL REFERENCES images(id),
    position INTEGER NOT NULL,
    diff_id TEXT NOT NULL REFERENCES layers(diff_id),
    PRIMARY KEY (image, position)
);
CREATE TABLE IF NOT EXISTS build_cache (
    key TEXT PRIMARY KEY,           -- a build step's cache key (parent key + the step)
    diff_id TEXT,                   -- the layer it made, NULL when it made none
    size INTEGER NOT NULL,
    chain_id TEXT,                  -- the snapshot of the stack up to that layer
    created TEXT NOT NULL,          -- its history time, reused so rebuilds are identical
    used TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,            -- 64 hex digits, its files under containers/<id>/
    name TEXT NOT NULL UNIQUE,      -- without docker's leading slash
    image TEXT NOT NULL,            -- image ID: kept by garbage collection while it exists
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS containers_image ON containers(image);
CREATE TABLE IF NOT EXISTS snapshots (
    chain_id TEXT PRIMARY KEY,      -- directory name under snapshots/
    parent TEXT,                    -- chain ID below it, NULL for a base layer
    diff_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_locations (
    digest TEXT NOT NULL,           -- a blob as a registry holds it (compressed layer, config)
    repository TEXT NOT NULL,       -- where it was pulled from or pushed to: HOST/PATH
    diff_id TEXT NOT NULL,          -- its uncompressed content (a config: its own digest)
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (digest, repository)
);
CREATE INDEX IF NOT EXISTS blob_locations_diff_id ON blob_locations(diff_id);
CREATE TABLE IF NOT EXISTS packed_layers (
    diff_id TEXT PRIMARY KEY REFERENCES layers(diff_id),
    digest TEXT NOT NULL,           -- the compressed blob that holds it, as a registry sent it
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,          -- of the compressed blob
    verified INTEGER NOT NULL DEFAULT 0,  -- 1 once it decompressed to its DiffID
    repository TEXT                 -- HOST/PATH it came from: a blob location once verified
);
CREATE TABLE IF NOT EXISTS build_memos (
    request TEXT PRIMARY KEY,       -- a build's command line and surroundings (build.fastlane)
    memo BLOB NOT NULL              -- what that fully cached build read and printed
);
"""

# A memo says a rebuild would give the same image from the cache: forgetting an image, a
# layer, a snapshot or a cache record (or replacing one) may make that false, so every memo
# goes, whichever command forgets it.
_FORGET_MEMOS = "BEGIN DELETE FROM build_memos; END"
_TRIGGERS = [
    *(f"CREATE TRIGGER IF NOT EXISTS {table}_forget_memos AFTER DELETE ON {table} "
      + _FORGET_MEMOS for table in ("images", "layers", "snapshots", "build_cache")),
    "CREATE TRIGGER IF NOT EXISTS build_cache_update_memos AFTER UPDATE ON build_cache "
    + _FORGET_MEMOS,
    # INSERT OR REPLACE deletes the old row without firing delete triggers.
    "CREATE TRIGGER IF NOT EXISTS build_cache_replace_memos BEFORE INSERT ON build_cache "
    "WHEN EXISTS (SELECT 1 FROM build_cache WHERE key=NEW.key) " + _FORGET_MEMOS,
]


@dataclass(frozen=True)
class ImageRow:
    """A row of the images table."""

    id: str
    manifest: str
    created: str | None
    size: int
    added: str


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch a store's database to WAL (once: the mode is kept in the file).

    SQLite answers a switch that meets another connection's lock with "database is locked"
    at once, without the busy timeout: processes opening a new store together (four
    imports at a time, under load) saw it. Retried here, and done if another did it."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class Meta:
    """The tables, through one SQLite connection per thread (a build runs stages in
    threads): each thread's reads and transactions are its own, as between processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []  # every thread's, closed by close()
        self._guard = threading.Lock()
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            from soute.errors import SouteError

            self.close()
            raise SouteError(f"{path}: this store was made by a newer soute (schema {version}, "
                             f"this soute knows {SCHEMA_VERSION})",
                             "use that soute, or another store with --root")
        if version < SCHEMA_VERSION:
            with self.transaction() as db:
                # Statement by statement: executescript() would commit our transaction.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                for statement in _TRIGGERS:
                    db.execute(statement)
                # Columns added since the table was made (v6: the first packed layers).
                have = {r[1] for r in db.execute("PRAGMA table_info(packed_layers)")}
                for column in ("verified INTEGER NOT NULL DEFAULT 0", "repository TEXT"):
                    if column.split()[0] not in have:
                        db.execute(f"ALTER TABLE packed_layers ADD COLUMN {column}")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @property
    def db(self) -> sqlite3.Connection:
        """The calling thread's connection, opened on first use."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        return db

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN ourselves, so each change is one transaction.
        # check_same_thread=False only lets close() end other threads' connections; each is
        # used by its own thread.
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA busy_timeout=60000")
        _use_wal(db)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        with self._guard:
            self._opened.append(db)
        return db

    def release(self) -> None:
        """Close the calling thread's connection (a thread that is done with the store)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            self._local.db = None
            with self._guard:
                self._opened.remove(db)
            db.close()

    def close(self) -> None:
        with self._guard:
            opened, self._opened = self._opened, []
        for db in opened:
            db.close()
        self._local = threading.local()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ images

    def add_image(
        self, row: ImageRow, layers: Iterable[tuple[str, int]], tags: Iterable[str], now: str,
        packed: Iterable[tuple[str, str, str, int, bool, str | None]] = (),
    ) -> None:
        """``packed``: (diff_id, blob digest, media type, blob size, verified, repository) of
        the layers that are stored compressed only (see :meth:`Store.open_layer`). A verified
        one replaces the record of an unverified blob claiming the same DiffID."""
        layers = list(layers)
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO layers(diff_id, size) VALUES (?, ?)", layers
            )
            _add_packed(db, packed)
            exists = db.execute("SELECT 1 FROM images WHERE id=?", (row.id,)).fetchone()
            if not exists:
                db.execute(
                    "INSERT INTO images(id, manifest, created, size, added) VALUES (?,?,?,?,?)",
                    (row.id, row.manifest, row.created, row.size, row.added),
                )
                db.executemany(
                    "INSERT INTO image_layers(image, position, diff_id) VALUES (?,?,?)",
                    [(row.id, i, d) for i, (d, _) in enumerate(layers)],
                )
            for tag in tags:
                db.execute(
                    "INSERT OR REPLACE INTO tags(name, image, updated) VALUES (?,?,?)",
                    (tag, row.id, now),
                )

    def image(self, image_id: str) -> ImageRow | None:
        r = self.db.execute(
            "SELECT id, manifest, created, size, added FROM images WHERE id=?", (image_id,)
        ).fetchone()
        return ImageRow(*r) if r else None

    def images(self) -> list[ImageRow]:
        rows = self.db.execute("SELECT id, manifest, created, size, added FROM images")
        return [ImageRow(*r) for r in rows]

    def images_by_prefix(self, hex_prefix: str) -> list[str]:
        like = hex_prefix.replace("%", "").replace("_", "") + "%"
        rows = self.db.execute("SELECT id FROM images WHERE id LIKE ?", ("sha256:" + like,))
        return [r[0] for r in rows]

    def image_layers(self, image_id: str) -> list[tuple[str, int]]:
        rows = self.db.execute(
            "SELECT l.diff_id, l.size FROM image_layers il JOIN layers l USING (diff_id)"
            " WHERE il.image=? ORDER BY il.position",
            (image_id,),
        )
        return [(d, s) for d, s in rows]

    def remove_image(self, image_id: str) -> str | None:
        """Delete the image unless a container uses it: then the ID of such a container,
        and nothing is deleted. One transaction with the check, so that a container
        recorded meanwhile (:meth:`add_container`) either stops it or is refused."""
        with self.transaction() as db:
            user = db.execute("SELECT id FROM containers WHERE image=? LIMIT 1",
                              (image_id,)).fetchone()
            if user is not None:
                return str(user[0])
            db.execute("DELETE FROM tags WHERE image=?", (image_id,))
            db.execute("DELETE FROM repo_digests WHERE image=?", (image_id,))
            db.execute("DELETE FROM image_layers WHERE image=?", (image_id,))
            db.execute("DELETE FROM images WHERE id=?", (image_id,))
        return None

    # ------------------------------------------------------------------ tags

    def tag(self, name: str, image_id: str, now: str) -> bool:
        """Point ``name`` at the image; False when the image is gone (an rmi beside us)."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM images WHERE id=?", (image_id,)).fetchone() is None:
                return False
            db.execute(
                "INSERT OR REPLACE INTO tags(name, image, updated) VALUES (?,?,?)",
                (name, image_id, now),
            )
        return True

    def untag(self, name: str) -> str | None:
        with self.transaction() as db:
            r = db.execute("SELECT image FROM tags WHERE name=?", (name,)).fetchone()
            db.execute("DELETE FROM tags WHERE name=?", (name,))
        return r[0] if r else None

    def tag_target(self, name: str) -> str | None:
        r = self.db.execute("SELECT image FROM tags WHERE name=?", (name,)).fetchone()
        return r[0] if r else None

    def tags(self) -> list[tuple[str, str, str]]:
        """(name, image, updated) for every tag, sorted by name."""
        return list(self.db.execute("SELECT name, image, updated FROM tags ORDER BY name"))

    def tags_of(self, image_id: str) -> list[str]:
        rows = self.db.execute("SELECT name FROM tags WHERE image=? ORDER BY name", (image_id,))
        return [r[0] for r in rows]

    def add_repo_digest(self, name: str, digest: str, image_id: str) -> None:
        """Record where the image was pulled from or pushed to; nothing if it is gone."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO repo_digests(name, digest, image)"
                " SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM images WHERE id=?)",
                (name, digest, image_id, image_id),
            )

    def repo_digests_of(self, image_id: str) -> list[str]:
        rows = self.db.execute(
            "SELECT name, digest FROM repo_digests WHERE image=? ORDER BY name", (image_id,)
        )
        return [f"{n}@{d}" for n, d in rows]

    def repo_digest_target(self, name: str, digest: str) -> str | None:
        r = self.db.execute(
            "SELECT image FROM repo_digests WHERE name=? AND digest=?", (name, digest)
        ).fetchone()
        return r[0] if r else None

    # ------------------------------------------------------------------ layers, snapshots

    def layer_size(self, diff_id: str) -> int | None:
        r = self.db.execute("SELECT size FROM layers WHERE diff_id=?", (diff_id,)).fetchone()
        return r[0] if r else None

    def layers(self) -> list[tuple[str, int]]:
        return list(self.db.execute("SELECT diff_id, size FROM layers"))

    def used_layers(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT DISTINCT diff_id FROM image_layers")}

    def remove_layers(self, diff_ids: Iterable[str]) -> None:
        gone = [(d,) for d in diff_ids]
        with self.transaction() as db:
            db.executemany("DELETE FROM packed_layers WHERE diff_id=?", gone)
            db.executemany("DELETE FROM layers WHERE diff_id=?", gone)

    def add_packed(self, packed: Iterable[tuple[str, str, str, int, bool, str | None]]) -> None:
        """Record packed layers of a known image (as :meth:`add_image` does)."""
        with self.transaction() as db:
            _add_packed(db, packed)

    def packed_layer(self, diff_id: str) -> tuple[str, str, int, bool, str | None] | None:
        """(blob digest, media type, blob size, verified, repository) of the compressed blob
        holding ``diff_id``."""
        r = self.db.execute("SELECT digest, media_type, size, verified, repository"
                            " FROM packed_layers WHERE diff_id=?", (diff_id,)).fetchone()
        return (r[0], r[1], r[2], bool(r[3]), r[4]) if r else None

    def packed_verified(self, diff_id: str, digest: str) -> None:
        """A packed layer decompressed to its DiffID: its blob is now a known location of it
        (in its repository, when it came from one)."""
        with self.transaction() as db:
            row = db.execute("SELECT media_type, size, repository FROM packed_layers"
                             " WHERE diff_id=? AND digest=? AND verified=0",
                             (diff_id, digest)).fetchone()
            if row is None:
                return
            db.execute("UPDATE packed_layers SET verified=1 WHERE diff_id=?", (diff_id,))
            if row[2]:
                db.execute("INSERT OR REPLACE INTO blob_locations(digest, repository, diff_id,"
                           " media_type, size) VALUES (?,?,?,?,?)",
                           (digest, row[2], diff_id, row[0], row[1]))

    def packed_layers(self) -> list[tuple[str, str]]:
        """(diff_id, blob digest) of every packed layer."""
        return list(self.db.execute("SELECT diff_id, digest FROM packed_layers"))

    def correct_layer_size(self, diff_id: str, size: int) -> None:
        """Record a packed layer's size once it is known exactly (a pull records the size its
        compressed blob announces), and the sizes of the images that hold it."""
        with self.transaction() as db:
            changed = db.execute("UPDATE layers SET size=? WHERE diff_id=? AND size!=?",
                                 (size, diff_id, size)).rowcount
            if changed:
                db.execute(
                    "UPDATE images SET size=(SELECT SUM(l.size) FROM image_layers il JOIN layers"
                    " l USING (diff_id) WHERE il.image=images.id) WHERE id IN"
                    " (SELECT image FROM image_layers WHERE diff_id=?)", (diff_id,))

    def add_snapshot(self, chain_id: str, parent: str | None, diff_id: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO snapshots(chain_id, parent, diff_id) VALUES (?,?,?)",
                (chain_id, parent, diff_id),
            )

    def add_snapshots(self, rows: list[tuple[str, str | None, str]]) -> None:
        """Record snapshots (chain_id, parent, diff_id); one transaction, and none when
        every one is recorded already (a container's start: read only)."""
        if not rows:
            return
        known = {r[0] for r in self.db.execute(
            f"SELECT chain_id FROM snapshots WHERE chain_id IN ({','.join('?' * len(rows))})",
            [c for c, _, _ in rows])}
        new = [row for row in rows if row[0] not in known]
        if new:
            with self.transaction() as db:
                db.executemany("INSERT OR IGNORE INTO snapshots(chain_id, parent, diff_id)"
                               " VALUES (?,?,?)", new)

    def snapshots(self) -> list[tuple[str, str | None, str]]:
        return list(self.db.execute("SELECT chain_id, parent, diff_id FROM snapshots"))

    def remove_snapshots(self, chain_ids: Iterable[str]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM snapshots WHERE chain_id=?", [(c,) for c in chain_ids])

    # ------------------------------------------------------------------ build cache

    def cache_get(self, key: str) -> tuple[str | None, int, str | None, str] | None:
        r = self.db.execute(
            "SELECT diff_id, size, chain_id, created FROM build_cache WHERE key=?", (key,)
        ).fetchone()
        return (r[0], r[1], r[2], r[3]) if r else None

    def cache_put(
        self, key: str, diff_id: str | None, size: int, chain_id: str | None, created: str,
        now: str,
    ) -> None:
        with self.transaction() as db:
            if diff_id is not None:
                db.execute("INSERT OR IGNORE INTO layers(diff_id, size) VALUES (?, ?)",
                           (diff_id, size))
            db.execute(
                "INSERT OR REPLACE INTO build_cache(key, diff_id, size, chain_id, created, used)"
                " VALUES (?,?,?,?,?,?)", (key, diff_id, size, chain_id, created, now),
            )

    def cache_roots(self) -> tuple[set[str], set[str]]:
        """(diff_ids, chain_ids) the build cache keeps alive."""
        rows = list(self.db.execute("SELECT diff_id, chain_id FROM build_cache"))
        return ({d for d, _ in rows if d}, {c for _, c in rows if c})

    def cache_records(self) -> list[tuple[str, str | None, int, str, str]]:
        """(key, diff_id, size, created, used) of every build cache record, newest first."""
        return [tuple(r) for r in self.db.execute(  # type: ignore[misc]
            "SELECT key, diff_id, size, created, used FROM build_cache ORDER BY used DESC")]

    def cache_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM build_cache").fetchone()[0])

    def cache_prune(self) -> int:
        with self.transaction() as db:
            n = db.execute("SELECT COUNT(*) FROM build_cache").fetchone()[0]
            db.execute("DELETE FROM build_cache")
        return int(n)

    # ------------------------------------------------------------------ containers

    def add_container(self, container_id: str, name: str, image_id: str, created: str) -> str:
        """Record a container: "" when done, else what stopped it: "name" (taken) or
        "image" (removed since it was looked up). The checks and the insert are one
        transaction: two concurrent runs cannot both get a name, and an ``rmi`` cannot
        remove the image between its check of the containers and its delete."""
        try:
            with self.transaction() as db:
                if db.execute("SELECT 1 FROM images WHERE id=?", (image_id,)).fetchone() is None:
                    return "image"
                db.execute("INSERT INTO containers VALUES (?, ?, ?, ?)",
                           (container_id, name, image_id, created))
        except sqlite3.IntegrityError:
            return "name"
        return ""

    def remove_container(self, container_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def rename_container(self, container_id: str, name: str) -> bool:
        try:
            with self.transaction() as db:
                db.execute("UPDATE containers SET name = ? WHERE id = ?", (name, container_id))
        except sqlite3.IntegrityError:
            return False
        return True

    def containers(self) -> list[tuple[str, str, str, str]]:
        """(id, name, image, created) of every container, newest first."""
        return self.db.execute(
            "SELECT id, name, image, created FROM containers ORDER BY created DESC, id"
        ).fetchall()

    def container_by_name(self, name: str) -> str | None:
        row = self.db.execute("SELECT id FROM containers WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def containers_by_prefix(self, prefix: str) -> list[str]:
        rows = self.db.execute("SELECT id FROM containers WHERE id >= ? AND id < ?",
                               (prefix, prefix + "g")).fetchall()
        return [r[0] for r in rows]

    def containers_using(self, image_id: str) -> list[str]:
        rows = self.db.execute("SELECT id FROM containers WHERE image = ?", (image_id,))
        return [r[0] for r in rows]


def _add_packed(db: sqlite3.Connection,
                packed: Iterable[tuple[str, str, str, int, bool, str | None]]) -> None:
    # A checked blob replaces whatever was recorded for its DiffID; an unchecked one only
    # fills a gap.
    for held in packed:
        db.execute(f"INSERT OR {'REPLACE' if held[4] else 'IGNORE'} INTO packed_layers"
                   "(diff_id, digest, media_type, size, verified, repository)"
                   " VALUES (?,?,?,?,?,?)", (*held[:4], int(held[4]), held[5]))
