"""Where registry blobs are known to be: the store's ``blob_locations`` table.

Layers are stored uncompressed, so the compressed blob a registry holds for a layer cannot be
recomputed byte for byte unless we made it. Each pull and push records ``(compressed digest,
HOST/PATH, diff_id, media type, size)``; a later push then

- finds a layer already in the target repository with one HEAD, without compressing it;
- mounts it from another repository of the same registry (``POST ?mount=&from=``) instead of
  uploading it.

Rows are hints: a registry may have deleted the blob since, so each is checked (HEAD, or the
mount's 201) before it is trusted. They are never a reason to keep a blob in the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from soute.image import mediatypes as mt
from soute.store.store import Store


@dataclass(frozen=True)
class Location:
    digest: str
    repository: str  # HOST/PATH
    diff_id: str
    media_type: str
    size: int

    @property
    def domain(self) -> str:
        return self.repository.split("/", 1)[0]

    @property
    def path(self) -> str:
        return self.repository.split("/", 1)[1]


def record(store: Store, locations: list[Location]) -> None:
    if not locations:
        return
    with store.meta.transaction() as db:
        db.executemany(
            "INSERT OR REPLACE INTO blob_locations(digest, repository, diff_id, media_type, size)"
            " VALUES (?,?,?,?,?)",
            [(loc.digest, loc.repository, loc.diff_id, loc.media_type, loc.size)
             for loc in locations])


def forget(store: Store, digest: str, repository: str) -> None:
    with store.meta.transaction() as db:
        db.execute("DELETE FROM blob_locations WHERE digest=? AND repository=?",
                   (digest, repository))


def vouched(store: Store, digest: str, diff_id: str) -> bool:
    """Whether blob ``digest`` is known to hold ``diff_id`` (in whatever repository)."""
    return store.meta.db.execute("SELECT 1 FROM blob_locations WHERE digest=? AND diff_id=?"
                                 " LIMIT 1", (digest, diff_id)).fetchone() is not None


def known(store: Store, diff_id: str, compression: str | None) -> list[Location]:
    """The blobs known to hold ``diff_id`` compressed with ``compression`` (``gzip``,
    ``zstd``, None for plain tar, ``config`` for configs)."""
    rows = store.meta.db.execute(
        "SELECT digest, repository, diff_id, media_type, size FROM blob_locations"
        " WHERE diff_id=? ORDER BY repository", (diff_id,)).fetchall()
    out = []
    for row in rows:
        loc = Location(*row)
        if compression == "config":
            if loc.media_type in mt.CONFIG_TYPES:
                out.append(loc)
        elif loc.media_type in mt.LAYER_TYPES and \
                mt.layer_compression(loc.media_type) == compression:
            out.append(loc)
    if compression != "config" and not store.blobs.has(diff_id):
        # A layer held packed goes as its own blob (when so compressed) whatever it holds:
        # where it came from, it can be found or mounted instead of uploaded.
        packed = store.packed_layer(diff_id)
        if packed is not None and packed.repository and packed.media_type in mt.LAYER_TYPES \
                and mt.layer_compression(packed.media_type) == compression:
            held = Location(packed.digest, packed.repository, diff_id, packed.media_type,
                            packed.size)
            if held not in out:
                out.append(held)
    return out
