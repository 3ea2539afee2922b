"""The store: blobs, images, tags, snapshots, behind one object that several processes share.

Layout of ``root``::

    oci/                  an OCI image layout, kept in step with the tags (standard tools read it)
      blobs/sha256/<hex>  every blob: configs, manifests, uncompressed layer tars, and the
                          compressed blobs of pulled layers ("packed": see open_layer)
      index.json          one descriptor per image, tags in org.opencontainers.image.ref.name
    snapshots/<hex>/      a layer unpacked as an overlayfs lower dir, named by ChainID
    meta.db               SQLite: images, tags, layers, snapshots
    tmp/                  temporary files, on the same filesystem so renames are atomic;
                          marked as a top of directory hierarchies (see _spread_trees)
    lock                  flock: shared for writers, exclusive for garbage collection

Nothing becomes visible before it is complete: blobs and snapshot directories by rename,
tables by transaction, index.json by an atomic replace.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from soute.errors import SouteError
from soute.image.digest import chain_ids
from soute.store.blobs import BlobStore, split_digest, write_atomic
from soute.store.meta import ImageRow, Meta

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs a `soute run` time
    from typing import BinaryIO

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


# A file made in a block group that ext4 walks slowly takes 0.4-1 ms, elsewhere 15-80 us.
_SLOW_CREATE_NS = 250_000
_PLACEMENTS = 4


class StoreError(SouteError):
    pass


class ImageNotFound(StoreError):
    pass


@dataclass(frozen=True)
class Image:
    """An image in the store."""

    id: str  # config digest
    manifest: str  # manifest digest
    created: str | None
    size: int
    tags: tuple[str, ...]  # fully qualified names
    layers: tuple[tuple[str, int], ...]  # (diff_id, size), base first

    @property
    def diff_ids(self) -> list[str]:
        return [d for d, _ in self.layers]


class PackedLayer:
    """A layer the store holds only as the compressed blob a registry sent."""

    __slots__ = ("diff_id", "digest", "media_type", "repository", "size", "verified")

    def __init__(self, diff_id: str, digest: str, media_type: str, size: int,
                 verified: bool = False, repository: str | None = None) -> None:
        self.diff_id = diff_id
        self.digest = digest  # of the compressed blob
        self.media_type = media_type
        self.size = size  # of the compressed blob
        # Whether it was seen to decompress to diff_id: until then the DiffID is only what
        # an image config claims.
        self.verified = verified
        self.repository = repository  # HOST/PATH it was pulled from


def now_rfc3339() -> str:
    from datetime import UTC, datetime  # here: a `soute run` that records nothing needs none

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.layout = self.root / "oci"
        self.tmp = self.root / "tmp"
        self.snapshot_dir = self.root / "snapshots"
        try:
            for d in (self.layout / "blobs" / "sha256", self.tmp, self.snapshot_dir):
                d.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise StoreError(f"{self.root}: permission denied",
                             "choose another store with --root or SOUTE_ROOT") from None
        _spread_trees(self.tmp)
        self.blobs = BlobStore(self.layout / "blobs" / "sha256", self.tmp)
        self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._lock_depth = 0
        self._depth_guard = threading.Lock()  # sessions nest, and come from several threads
        self.meta = Meta(self.root / "meta.db")
        if not (self.layout / "oci-layout").exists():
            write_atomic(self.layout / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        if not (self.layout / "index.json").exists():
            self._write_index()

    def close(self) -> None:
        self.meta.close()
        os.close(self._lock_fd)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ locking

    @contextmanager
    def session(self) -> Iterator[None]:
        """Hold the shared lock: garbage collection waits until we are done."""
        with self._depth_guard:
            if self._lock_depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            self._lock_depth += 1
        try:
            yield
        finally:
            with self._depth_guard:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        if self._lock_depth:
            raise StoreError("internal: exclusive lock taken inside a session")
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ images

    def add_image(
        self,
        config: bytes,
        layers: Sequence[tuple[str, int]],
        *,
        tags: Sequence[str] = (),
        manifest_annotations: dict[str, str] | None = None,
        packed: Sequence[PackedLayer] = (),
    ) -> Image:
        """Record an image whose layers are already stored: as uncompressed tars, or as the
        compressed blobs ``packed`` (committed already) describes.

        Writes the config and an OCI manifest (naming each layer's blob as stored), then the
        image row and its ``tags`` (fully qualified names) in one transaction, then the OCI
        index.
        """
        with self.session():
            new_packed = {p.diff_id: p for p in packed}
            descriptors: list[dict[str, object]] = []
            # The sizes as the store knows them: a caller's may be a packed layer's size hint
            # read before the layer was first decompressed (a build FROM a pulled image).
            known: list[tuple[str, int]] = []
            for diff_id, size in layers:
                if self.blobs.has(diff_id):
                    size = self.blobs.size(diff_id)
                    if self.meta.layer_size(diff_id) not in (None, size):
                        # A packed layer's hint, its tar now stored by a load or a build.
                        self.meta.correct_layer_size(diff_id, size)
                    descriptors.append({"mediaType": OCI_LAYER_TAR, "digest": diff_id,
                                        "size": size})
                    known.append((diff_id, size))
                    continue
                held = new_packed.get(diff_id) or self.packed_layer(diff_id)
                if held is None or not self.blobs.has(held.digest):
                    raise StoreError(f"layer {diff_id} is not in the store")
                descriptors.append({"mediaType": held.media_type, "digest": held.digest,
                                    "size": held.size})
                recorded = self.meta.layer_size(diff_id)
                known.append((diff_id, size if recorded is None else recorded))
            layers = known
            config_digest = self.blobs.write(config)
            packed_rows = [(p.diff_id, p.digest, p.media_type, p.size, p.verified, p.repository)
                           for p in new_packed.values()]
            if self.meta.image(config_digest) is not None:
                # Known already (same config, so same layers): only the tags are new, and
                # blobs of its layers (one lost, say, pulled again).
                if packed_rows:
                    self.meta.add_packed(packed_rows)
                now = now_rfc3339()
                # A tag fails only if an rmi beside us removed the image: it is added again.
                if all([self.meta.tag(tag, config_digest, now) for tag in tags]):
                    self._write_index()
                    return self.image(config_digest)
            manifest: dict[str, object] = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest,
                           "size": len(config)},
                "layers": descriptors,
            }
            if manifest_annotations:
                manifest["annotations"] = manifest_annotations
            manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
            manifest_digest = self.blobs.write(manifest_bytes)
            created = json.loads(config).get("created")
            now = now_rfc3339()
            row = ImageRow(config_digest, manifest_digest, created,
                           sum(s for _, s in layers), now)
            self.meta.add_image(row, layers, tags, now, packed_rows)
            self._write_index()
            return self.image(config_digest)

    def image(self, image_id: str) -> Image:
        row = self.meta.image(image_id)
        if row is None:
            raise ImageNotFound(f"No such image: {image_id}")
        return Image(row.id, row.manifest, row.created, row.size,
                     tuple(self.meta.tags_of(row.id)), tuple(self.meta.image_layers(row.id)))

    def images(self) -> list[Image]:
        return [self.image(r.id) for r in self.meta.images()]

    def config(self, image: Image) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.blobs.read(image.id))
        return data

    def tag(self, image_id: str, name: str) -> None:
        with self.session():
            if not self.meta.tag(name, image_id, now_rfc3339()):
                raise ImageNotFound(f"No such image: {image_id}")
            self._write_index()

    def untag(self, name: str) -> str | None:
        with self.session():
            image = self.meta.untag(name)
            self._write_index()
            return image

    def forget_image(self, image_id: str) -> str | None:
        """Drop the image and its tags; its blobs go at the next garbage collection. When a
        container uses it, nothing is dropped and that container's ID is returned."""
        with self.session():
            user = self.meta.remove_image(image_id)
            if user is None:
                self._write_index()
            return user

    # ------------------------------------------------------------------ layers

    def add_layer_from(self, stream: object, expected: str | None = None) -> tuple[str, int]:
        """Store an uncompressed layer tar read from ``stream``; returns (diff_id, size)."""
        with self.session(), self.blobs.writer(expected) as w:
            w.copy_from(stream)  # type: ignore[arg-type]
            return w.commit(), w.size

    def has_layer(self, diff_id: str) -> bool:
        """Whether the store holds the layer, as an uncompressed tar or packed."""
        if self.blobs.has(diff_id):
            return True
        packed = self.packed_layer(diff_id)
        return packed is not None and self.blobs.has(packed.digest)

    def layer_size(self, diff_id: str) -> int:
        """The size of a layer's uncompressed tar (a packed layer's as its blob announces it,
        until it is first decompressed)."""
        if self.blobs.has(diff_id):
            return self.blobs.size(diff_id)
        size = self.meta.layer_size(diff_id)
        if size is None or self.packed_layer(diff_id) is None:
            raise StoreError(f"layer {diff_id} is not in the store")
        return size

    def packed_layer(self, diff_id: str) -> PackedLayer | None:
        """The compressed blob holding ``diff_id``, when a pull stored it so."""
        row = self.meta.packed_layer(diff_id)
        return PackedLayer(diff_id, *row) if row is not None else None

    @contextmanager
    def open_layer(self, diff_id: str) -> Iterator[BinaryIO]:
        """The uncompressed tar of a layer, to read to its end.

        A pull keeps the compressed blobs the registry sent, as they are, and records each
        under the DiffID the image's config names (as containerd's content store does):
        decompressing them is most of a pull's work, and a layer may never be used here.
        Such a packed layer is decompressed as it is read, and its DiffID checked when the
        reading ends: a mismatch raises :class:`StoreError` (whatever was made from it must
        then be thrown away), a match records its exact size.
        """
        if self.blobs.has(diff_id):
            with self.blobs.open(diff_id) as f:
                yield f
            return
        packed = self.packed_layer(diff_id)
        if packed is None or not self.blobs.has(packed.digest):
            raise StoreError(f"layer {diff_id} is not in the store",
                             "run 'soute fsck'; pull or load the image again")
        import io

        from soute.layer import open_decompressed
        from soute.layer.compress import ReadAhead

        with self.blobs.open(packed.digest) as raw:
            try:
                checked = _CheckedLayer(open_decompressed(raw))
            except SouteError as e:
                raise _damaged(packed, e.message) from None
            # Decompressed and hashed in a thread of its own, beside the reader: for a layer
            # being unpacked, a third of the time.
            ahead = ReadAhead(checked)
            # Held here: dropped by the caller, the reader would close `ahead` with it.
            reader = io.BufferedReader(ahead, 1 << 20)  # type: ignore[misc]
            try:
                yield reader
                if ahead.closed:
                    raise StoreError(f"internal: layer {diff_id} was closed before its end, "
                                     "its DiffID unchecked")
                try:
                    while ahead.read(1 << 20):  # what the reader left (a tar's padding)
                        pass
                except SouteError as e:
                    raise _damaged(packed, e.message) from None
            finally:
                ahead.close()  # the thread is done: its hash is whole
            got, size = checked.finish()
        if got != diff_id:
            raise _damaged(packed, f"it gives {got}")
        self.meta.correct_layer_size(diff_id, size)
        if not packed.verified:
            self.meta.packed_verified(diff_id, packed.digest)

    # ------------------------------------------------------------------ snapshots

    def snapshot_path(self, chain_id: str) -> Path:
        return self.snapshot_dir / split_digest(chain_id)

    def snapshots(self, diff_ids: Sequence[str]) -> list[Path]:
        """The unpacked layers of an image, base first, unpacking those not there yet."""
        paths: list[Path] = []
        rows: list[tuple[str, str | None, str]] = []
        with self.session():
            try:
                self._unpack(diff_ids, paths, rows)
            finally:
                self.meta.add_snapshots(rows)  # those made before a failure too
        return paths

    def _unpack(self, diff_ids: Sequence[str], paths: list[Path],
                rows: list[tuple[str, str | None, str]]) -> None:
        chains = chain_ids(diff_ids)
        missing = [(d, c) for d, c in zip(diff_ids, chains, strict=True)
                   if not self.snapshot_path(c).is_dir()]
        failed = self._unpack_layers(missing)
        parent: str | None = None
        first_failure: BaseException | None = None
        for diff_id, chain_id in zip(diff_ids, chains, strict=True):
            if chain_id in failed:
                first_failure = first_failure or failed[chain_id]
            else:  # a layer above a failed one may be made all the same: it is kept
                rows.append((chain_id, parent, diff_id))
                paths.append(self.snapshot_path(chain_id))
            parent = chain_id
        if first_failure is not None:
            raise first_failure

    def _unpack_layers(self, layers: Sequence[tuple[str, str]]) -> dict[str, BaseException]:
        """Unpack each (DiffID, chain ID) into its snapshot; what failed, by chain ID.

        Each layer unpacks on its own, so several go side by side in threads: creating
        files and writing them is kernel work, which the other core takes meanwhile. The
        first ``run`` of the apache example's image (two layers) after a ``load``: median
        2.42 s one after the other, 2.11 s side by side (five fresh stores each)."""
        failed: dict[str, BaseException] = {}
        if not layers:
            return failed
        # Imported only now (a run rarely unpacks), and here rather than in the threads.
        from soute.layer import apply_layer  # noqa: F401

        todo = list(reversed(layers))  # base first: a build's FROM needs them all anyway
        lock = threading.Lock()
        stop = threading.Event()  # set when this thread is interrupted: no new layer starts

        def work(own_thread: bool) -> None:
            try:
                while not stop.is_set():
                    with lock:
                        if not todo:
                            return
                        diff_id, chain_id = todo.pop()
                    try:
                        self._unpack_layer(diff_id, chain_id)
                    except Exception as e:  # raised by the caller, in layer order
                        with lock:
                            failed[chain_id] = e
            finally:
                if own_thread:
                    self.meta.release()  # the connection a packed layer's check opened

        workers = [threading.Thread(target=work, args=(True,), name="unpack", daemon=True)
                   for _ in range(min(len(layers), os.cpu_count() or 1, 4) - 1)]
        for worker in workers:
            worker.start()
        try:
            work(False)
            for worker in workers:
                worker.join()
        except BaseException:
            stop.set()  # interrupted: the others end with their current layer
            raise
        return failed

    def _unpack_layer(self, diff_id: str, chain_id: str) -> None:
        from soute.layer import apply_layer

        path = self.snapshot_path(chain_id)
        work = self.new_tree("snap-")
        try:
            with self.open_layer(diff_id) as f:
                apply_layer(f, work, overlay=True)
            os.chmod(work, 0o755)
            try:
                os.rename(work, path)
            except OSError:
                if not path.is_dir():
                    raise
                _rmtree(work)  # another process unpacked it first
        except BaseException:
            _rmtree(work, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ OCI layout

    def _write_index(self) -> None:
        """Rewrite oci/index.json from the tables: one entry per tag, one per untagged image."""
        from soute.store.names import layout_ref_name

        manifests: list[dict[str, object]] = []
        tagged: set[str] = set()
        for name, image_id, _ in self.meta.tags():
            row = self.meta.image(image_id)
            if row is None:
                continue
            tagged.add(image_id)
            manifests.append(self._descriptor(row.manifest, {
                REF_NAME: layout_ref_name(name), CONTAINERD_NAME: name}))
        for row in self.meta.images():
            if row.id not in tagged:
                manifests.append(self._descriptor(row.manifest, None))
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        lock = os.open(self.layout / ".index.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            write_atomic(self.layout / "index.json",
                         json.dumps(index, separators=(",", ":")).encode())
        finally:
            os.close(lock)

    def _descriptor(self, digest: str, annotations: dict[str, str] | None) -> dict[str, object]:
        d: dict[str, object] = {"mediaType": OCI_MANIFEST, "digest": digest,
                                "size": self.blobs.size(digest)}
        if annotations:
            d["annotations"] = annotations
        return d

    def new_tree(self, prefix: str, *, slow_ns: int = _SLOW_CREATE_NS) -> Path:
        """A new empty directory in tmp/ to make a tree of files in (an upper dir, a
        snapshot), where the filesystem makes files at its usual speed.

        On ext4 without a journal a file made in a block group where many inodes were freed
        minutes ago costs up to 50 times more (see _spread_trees). tmp/ lets ext4 choose a
        group for each directory made in it. When a probe file takes more than ``slow_ns``
        to make, another directory is made: the slow one stays until then, so ext4 counts
        one more directory in its group and, as it favours the groups holding the fewest,
        places the next one elsewhere. The last try is kept whatever it takes.
        """
        import tempfile

        rejected: list[str] = []
        try:
            for _ in range(_PLACEMENTS - 1):
                path = tempfile.mkdtemp(prefix=prefix, dir=self.tmp)
                if _makes_files_in(path) < slow_ns:
                    return Path(path)
                rejected.append(path)
            return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))
        finally:
            for path in rejected:  # only now: each keeps ext4 from choosing its group again
                with contextlib.suppress(OSError):
                    os.rmdir(path)

    # ------------------------------------------------------------------ garbage, checks

    def discard(self, tree: Path) -> None:
        """Set aside a directory tree nothing uses, for the next garbage collection.

        For the upper dir of a ``--no-cache`` rebuild whose layer the store already has:
        removing a tree of 20,000 files costs seconds (as much as making it), which the
        build need not wait for. BuildKit and buildah keep such a rebuild's copy until a
        prune as well. ``trash/`` is outside ``tmp/``: it is garbage, not a half-made file.
        """
        trash = self.root / "trash"
        try:
            trash.mkdir(exist_ok=True)
            os.rename(tree, trash / tree.name)
        except OSError:
            _rmtree(tree, ignore_errors=True)

    def collect_garbage(self) -> GarbageReport:
        """Free blobs, layers and snapshots no image uses, and leftovers of killed writers."""
        report = GarbageReport()
        with self.exclusive():
            live_blobs, live_chains = self.meta.cache_roots()
            # Containers keep their image (rmi refuses, or only untags with -f).
            for row in self.meta.images():
                live_blobs |= {row.id, row.manifest}
                diff_ids = [d for d, _ in self.meta.image_layers(row.id)]
                live_blobs |= set(diff_ids)
                live_chains |= set(chain_ids(diff_ids))
                # The blobs its manifest names: two pulls of a layer from registries that
                # compressed it differently, side by side, each name their own packed blob
                # while packed_layers records one.
                live_blobs |= self._manifest_layers(row.manifest)
            live_blobs |= {blob for diff_id, blob in self.meta.packed_layers()
                           if diff_id in live_blobs}
            for digest in list(self.blobs.digests()):
                if digest not in live_blobs:
                    report.bytes += self.blobs.remove(digest)
                    report.blobs += 1
            self.meta.remove_layers(d for d, _ in self.meta.layers() if d not in live_blobs)
            dead = []
            trash = self.root / "trash"
            trash.mkdir(exist_ok=True)
            for entry in os.scandir(self.snapshot_dir):
                if "sha256:" + entry.name not in live_chains:
                    # Out of snapshots/ in one rename, then removed: an interrupted removal
                    # never leaves a half-emptied snapshot that a later run would use.
                    gone = trash / f"snapshot-{entry.name}-{os.getpid()}"
                    try:
                        os.rename(entry.path, gone)
                    except OSError:
                        continue  # left for the next collection
                    _rmtree(gone, ignore_errors=True)
                    dead.append("sha256:" + entry.name)
                    report.snapshots += 1
            self.meta.remove_snapshots(
                [c for c, _, _ in self.meta.snapshots() if c not in live_chains] + dead)
            _rmtree(self.root / "trash", ignore_errors=True)  # see discard()
            # No writer holds the shared lock now, so whatever is in tmp/ was abandoned.
            for entry in os.scandir(self.tmp):
                if entry.is_dir(follow_symlinks=False):
                    _rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            self._write_index()
        return report

    def _manifest_layers(self, manifest: str) -> set[str]:
        """The layer blobs an image's manifest names (none when it cannot be read)."""
        try:
            doc = json.loads(self.blobs.read(manifest))
            return {str(layer["digest"]) for layer in doc.get("layers") or []}
        except (SouteError, OSError, ValueError, TypeError, KeyError, AttributeError):
            return set()

    def fsck(self, *, verify_blobs: bool = True) -> FsckReport:
        """Check every blob digest, image, tag, snapshot and the OCI index; change nothing but
        what the check of a packed layer learns (its exact size, that it was checked)."""
        report = FsckReport()
        with self.session():
            if verify_blobs:
                for digest in self.blobs.digests():
                    report.blobs += 1
                    if not self.blobs.verify(digest):
                        report.problems.append(f"blob {digest}: content does not match digest")
                for diff_id, digest in self.meta.packed_layers():
                    if self.blobs.has(diff_id) or not self.blobs.has(digest):
                        continue  # checked above, or reported missing with its image
                    try:  # the DiffID a pull could not check before the layer's first use
                        with self.open_layer(diff_id):
                            pass  # it reads the rest itself, and checks
                    except SouteError as e:
                        report.problems.append(e.message)
            for row in self.meta.images():
                report.images += 1
                self._check_image(row, report)
            for name, image_id, _ in self.meta.tags():
                if self.meta.image(image_id) is None:
                    report.problems.append(f"tag {name}: points to missing image {image_id}")
            known = {c for c, _, _ in self.meta.snapshots()}
            for entry in os.scandir(self.snapshot_dir):
                report.snapshots += 1
                if "sha256:" + entry.name not in known:
                    report.notes.append(f"snapshot {entry.name[:12]}: not recorded "
                                        "(left by an interrupted command; prune frees it)")
            for chain_id in known:
                if not self.snapshot_path(chain_id).is_dir():
                    report.notes.append(f"snapshot {chain_id[7:19]}: recorded but missing "
                                        "(it is unpacked again when needed)")
            with contextlib.suppress(FileNotFoundError):
                discarded = sum(1 for _ in os.scandir(self.root / "trash"))
                if discarded:
                    report.notes.append(f"{discarded} tree(s) set aside: duplicate layers of "
                                        "--no-cache rebuilds, or removals a ^C cut short "
                                        "(prune frees them)")
            leftovers = list(os.scandir(self.tmp))
            if leftovers:
                report.notes.append(f"{len(leftovers)} temporary file(s) left by interrupted "
                                    "commands (prune frees them)")
            self._check_index(report)
        return report

    def _check_image(self, row: ImageRow, report: FsckReport) -> None:
        where = f"image {row.id[7:19]}"
        for digest in (row.id, row.manifest):
            if not self.blobs.has(digest):
                report.problems.append(f"{where}: blob {digest} is missing")
                return
        try:
            manifest = json.loads(self.blobs.read(row.manifest))
            config = json.loads(self.blobs.read(row.id))
        except ValueError as e:
            report.problems.append(f"{where}: unreadable manifest or config: {e}")
            return
        if manifest.get("config", {}).get("digest") != row.id:
            report.problems.append(f"{where}: manifest names another config")
        layers = self.meta.image_layers(row.id)
        in_manifest = [(l_.get("digest"), l_.get("size")) for l_ in manifest.get("layers", [])]

        def named(entry: tuple[object, object], layer: tuple[str, int]) -> bool:
            # Its tar, or a packed blob: the one recorded, or another that an earlier pull
            # took for the same DiffID before a checked one replaced it.
            return entry == layer or (self.packed_layer(layer[0]) is not None
                                      and isinstance(entry[0], str) and self.blobs.has(entry[0]))

        if len(in_manifest) != len(layers) or not all(map(named, in_manifest, layers)):
            report.problems.append(f"{where}: manifest layers differ from the recorded ones")
        diff_ids = config.get("rootfs", {}).get("diff_ids") or []
        if diff_ids != [d for d, _ in layers]:
            report.problems.append(f"{where}: config diff_ids differ from its layers")
        for diff_id, size in layers:
            if self.blobs.has(diff_id):
                if self.blobs.size(diff_id) != size:
                    report.problems.append(f"{where}: layer {diff_id} has the wrong size")
                continue
            packed = self.packed_layer(diff_id)
            if packed is None:
                report.problems.append(f"{where}: layer {diff_id} is missing")
            elif not self.blobs.has(packed.digest):
                report.problems.append(f"{where}: layer {diff_id} is missing (its packed blob "
                                       f"{packed.digest})")
            elif self.blobs.size(packed.digest) != packed.size:
                report.problems.append(f"{where}: layer {diff_id}'s packed blob has the wrong "
                                       "size")

    def _check_index(self, report: FsckReport) -> None:
        try:
            index = json.loads((self.layout / "index.json").read_text())
        except (OSError, ValueError) as e:
            report.problems.append(f"oci/index.json: unreadable: {e}")
            return
        listed = {(m.get("annotations") or {}).get(CONTAINERD_NAME): m.get("digest")
                  for m in index.get("manifests", [])}
        for name, image_id, _ in self.meta.tags():
            row = self.meta.image(image_id)
            if row is not None and listed.get(name) != row.manifest:
                report.problems.append(f"oci/index.json: {name} missing or stale")


def _makes_files_in(directory: str) -> int:
    """Nanoseconds the filesystem takes to make a file in ``directory`` (left empty)."""
    probe = os.path.join(directory, ".probe")
    start = time.perf_counter_ns()
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    took = time.perf_counter_ns() - start
    os.close(fd)
    os.unlink(probe)
    return took


_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000  # chattr +T


def _spread_trees(directory: Path) -> None:
    """Have ext4 place each tree made in ``directory`` in a block group of its own choice.

    Snapshots, upper dirs and containers are all made in tmp/. By default ext4 puts a new
    directory in its parent's group, and its files in the first group there with a free
    inode. Without a journal (this project's benchmark machine), ext4 also skips every inode
    freed in the last 60 to 360 s, and each new file's allocation walks past all of them
    again: after another program deleted 20,000 files nearby, a COPY of 20,000 files took
    6 s instead of 1.8 s. With the top-of-hierarchy flag, ext4 (Orlov) spreads the trees
    made in tmp/ across the disk, as it does for the directories at the root. Other
    filesystems ignore the flag or refuse it; either is fine.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        flags = int.from_bytes(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(4)), sys.byteorder)
        if not flags & _FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, (flags | _FS_TOPDIR_FL).to_bytes(4, sys.byteorder))
    except OSError:
        pass  # not ext4 (tmpfs, overlayfs, xfs...), or not the directory's owner
    finally:
        os.close(fd)


def _rmtree(path: str | Path, ignore_errors: bool = False) -> None:
    import shutil  # here: with bz2 and lzma, 2.4 ms of a `soute run` that removes nothing

    shutil.rmtree(path, ignore_errors=ignore_errors)


def _damaged(packed: PackedLayer, problem: str) -> StoreError:
    return StoreError(f"layer {packed.diff_id} does not match its packed blob "
                      f"{packed.digest}: {problem}",
                      "remove the image and pull it again (soute fsck lists what else uses it)")


class _CheckedLayer:
    """A decompressed layer stream, hashed and counted as it is read (by a ReadAhead)."""

    def __init__(self, inner: BinaryIO) -> None:
        import hashlib

        self._inner = inner
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def finish(self) -> tuple[str, int]:
        """(DiffID, size) of what was read: the whole stream, once it was read to its end."""
        return "sha256:" + self._hash.hexdigest(), self.size


@dataclass
class GarbageReport:
    """What a garbage collection freed."""

    blobs: int = 0
    snapshots: int = 0
    bytes: int = 0


@dataclass
class FsckReport:
    """What fsck checked and found."""

    blobs: int = 0
    images: int = 0
    snapshots: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
