"""``soute push``: an image of the store to a registry (distribution-spec "Push").

For each layer, in parallel (threads; compression, hashing and sockets release the GIL):

1. compressed forms already known (:mod:`.locations`): ``HEAD`` them in the target
   repository (present: nothing to do, not even compressing), then try a cross-repository
   mount from another repository of the same registry (``POST ?mount=&from=``);
2. otherwise compress the layer (gzip through isal by default, or zstd; deterministic, so the
   same layer gives the same blob every time) into a temporary file in the store's ``tmp/``,
   ``HEAD`` its digest, and upload it if missing.

Layers are compressed to a spool file rather than streamed because the digest must be known
before the upload ends (``PUT ?digest=``) and a dropped connection must be resumable: blobs up
to :data:`MONOLITHIC_MAX` go in one ``PUT``; larger ones in ``PATCH`` chunks of
:data:`CHUNK_SIZE`. When a connection drops, ``GET`` on the upload's URL says how much the
registry kept (``Range``), and the upload goes on from there; if the registry lost the session
the blob starts again in a new one.

Then the config, then the manifest: OCI by default, falling back to Docker schema2 when the
registry refuses OCI (``MANIFEST_INVALID``, ``TAG_INVALID``, ``UNSUPPORTED``, 415), as
containers/image does; ``--format`` pins one. zstd has no Docker form (and docker 20.10
cannot read it), so zstd with Docker format is refused.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, TextIO

from soute.errors import SouteError
from soute.image import mediatypes as mt
from soute.image.digest import sha256_digest, short_id
from soute.image.manifest import Descriptor, Manifest
from soute.image.reference import Reference, parse_reference
from soute.registry import locations
from soute.registry.auth import repository_scope
from soute.registry.client import CONNECTION_ERRORS, Registry, Response
from soute.registry.config import RegistrySettings
from soute.registry.errors import RegistryError, Unauthorized
from soute.registry.locations import Location
from soute.registry.progress import Progress
from soute.store.store import Image, Store

Compression = Literal["gzip", "zstd"]
Format = Literal["oci", "docker"]

MONOLITHIC_MAX = 8 << 20  # blobs up to this size go in one PUT
CHUNK_SIZE = 32 << 20  # PATCH chunk size for larger ones
WORKERS = 4  # layers pushed at once (docker pushes 5)
RESTARTS = 5  # failures of one blob's upload before giving up
_OCI_REFUSED = frozenset({"MANIFEST_INVALID", "TAG_INVALID", "UNSUPPORTED"})
_LAYER_TYPE = {"gzip": mt.OCI_LAYER_GZIP, "zstd": mt.OCI_LAYER_ZSTD}


@dataclass(frozen=True)
class PushResult:
    reference: str  # NAME:TAG, fully qualified
    digest: str  # of the manifest pushed
    size: int
    media_type: str


def push(store: Store, name: str, *, all_tags: bool = False,
         compression: Compression = "gzip", format: Format | None = None,
         out: TextIO | None = sys.stdout, err: TextIO | None = sys.stderr,
         settings: RegistrySettings | None = None) -> list[PushResult]:
    """Push ``name`` (``NAME[:TAG]``; every local tag of NAME with ``all_tags``).

    ``format``: None is OCI with the Docker schema2 fallback; ``oci`` or ``docker`` force one.
    Lines like docker's go to ``out`` (``TAG: digest: ... size: N``) and ``err`` (layers).
    """
    if compression not in _LAYER_TYPE:
        raise SouteError(f"unknown layer compression {compression!r}", "use gzip or zstd")
    if format not in (None, "oci", "docker"):
        raise SouteError(f"unknown manifest format {format!r}", "use oci or docker")
    if format == "docker" and compression == "zstd":
        raise SouteError("Docker schema2 manifests cannot hold zstd layers",
                         "use --compression gzip, or --format oci")
    ref = parse_reference(name)
    if ref.digest is not None:
        raise SouteError(f"cannot push {name}: a digest names content, not a tag to push",
                         "push NAME[:TAG]")
    tags = _tags_to_push(store, ref, all_tags)
    printer = Progress(out)
    printer.line(f"The push refers to repository [{ref.name}]")
    results: list[PushResult] = []
    with store.session(), Registry(ref.domain, settings=settings) as registry:
        pusher = _Pusher(store, registry, ref, compression, format, Progress(err))
        for full in tags:
            image_id = store.meta.tag_target(full)
            if image_id is None:  # untagged meanwhile
                raise SouteError(f"An image does not exist locally with the tag: {full}")
            result = pusher.image(store.image(image_id), parse_reference(full))
            printer.line(f"{parse_reference(full).tag}: digest: {result.digest} "
                         f"size: {result.size}")
            results.append(result)
    return results


def _tags_to_push(store: Store, ref: Reference, all_tags: bool) -> list[str]:
    if all_tags:
        if ref.tag is not None:
            raise SouteError("tag can't be used with --all-tags/-a", "give NAME alone")
        prefix = ref.name + ":"
        tags = [n for n, _, _ in store.meta.tags() if n.startswith(prefix)]
        if not tags:
            raise SouteError(f"An image does not exist locally with the tag: {ref.name}",
                             "see 'soute images'")
        return tags
    full = str(ref.with_default_tag())
    if store.meta.tag_target(full) is None:
        raise SouteError(f"An image does not exist locally with the tag: {ref.familiar_name}",
                         "tag the image with 'soute tag IMAGE NAME[:TAG]' first")
    return [full]


class ArtifactPusher:
    """Layers of the store, small documents and a manifest naming them, to one repository:
    what a build cache export sends (:mod:`soute.build.remote_cache`). Layers go as
    :func:`push` sends them (known blobs HEADed or mounted, otherwise compressed and
    uploaded); the manifest is always OCI."""

    def __init__(self, store: Store, registry: Registry, ref: Reference, *,
                 compression: Compression = "gzip", err: TextIO | None = None) -> None:
        self._pusher = _Pusher(store, registry, ref, compression, "oci", Progress(err))

    def layers(self, diff_ids: list[str]) -> dict[str, Descriptor]:
        return self._pusher.layers(diff_ids)

    def document(self, data: bytes, media_type: str) -> Descriptor:
        """Upload ``data`` as a blob unless the repository has it."""
        digest = sha256_digest(data)
        if not self._pusher._exists(digest):
            self._pusher._upload(_Blob(data=data), digest, len(data))
        return Descriptor(media_type, digest, len(data))

    def manifest(self, manifest: Manifest, tag: str) -> tuple[str, int]:
        """PUT ``manifest`` under ``tag``: its digest and size."""
        digest, size, _ = self._pusher._put(manifest, tag)
        return digest, size


class _Pusher:
    def __init__(self, store: Store, registry: Registry, ref: Reference,
                 compression: Compression, format: Format | None, progress: Progress) -> None:
        self.store = store
        self.registry = registry
        self.path = ref.path
        self.repository = ref.name  # HOST/PATH as the locations table records it
        self.compression = compression
        self.format = format
        self.progress = progress
        self.push_scope = (repository_scope(ref.path, "pull,push"),)
        self._done: dict[str, Descriptor] = {}  # diff_id or config digest -> pushed blob
        self.cancelled = threading.Event()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ an image

    def image(self, image: Image, ref: Reference) -> PushResult:
        # One request first: a denied repository is one line, before any progress.
        config_there = image.id in self._done or self._exists(image.id, self.repository)
        configs: list[Descriptor] = []
        layers = self.layers(image.diff_ids,
                             meanwhile=lambda: configs.append(self._config(image, config_there)))
        config = configs[0]
        locations.record(self.store, [
            Location(config.digest, self.repository, image.id, config.media_type, config.size)])
        manifest = Manifest(config=config, layers=[layers[d] for d in image.diff_ids],
                            annotations=self._annotations(image))
        digest, size, media_type = self._put_manifest(manifest, ref.tag or "latest")
        self.store.meta.add_repo_digest(ref.name, digest, image.id)
        return PushResult(str(ref), digest, size, media_type)

    def layers(self, diff_ids: list[str], *,
               meanwhile: Callable[[], object] | None = None) -> dict[str, Descriptor]:
        """Push the store's layers ``diff_ids``, several at once; ``meanwhile`` runs in this
        thread while they go. Returns the blob pushed for each diff_id."""
        todo = list(dict.fromkeys(diff_ids))
        workers = max(1, min(WORKERS, len(todo)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="push") as pool:
            for diff_id in reversed(todo):  # docker lists the top layer first
                if diff_id not in self._done:
                    self.progress.item(short_id(diff_id), "Preparing")
            # The store's SQLite connection stays in this thread: look up and record here.
            known = {d: locations.known(self.store, d, self.compression) for d in todo}
            futures = {d: pool.submit(self._layer_once, d, known[d]) for d in todo}
            try:
                if meanwhile is not None:
                    meanwhile()
                layers = {d: f.result() for d, f in futures.items()}
            except BaseException:
                # One failed (or ^C): the others stop before their next request or chunk.
                self.cancelled.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        locations.record(self.store, [
            Location(desc.digest, self.repository, key, desc.media_type, desc.size)
            for key, desc in layers.items()])
        return layers

    def _annotations(self, image: Image) -> dict[str, str]:
        try:
            doc = json.loads(self.store.blobs.read(image.manifest))
        except (ValueError, SouteError):
            return {}
        found = doc.get("annotations") if isinstance(doc, dict) else None
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    def _put_manifest(self, manifest: Manifest, tag: str) -> tuple[str, int, str]:
        if self.format == "docker":
            manifest = manifest.to_docker()
        try:
            return self._put(manifest, tag)
        except RegistryError as e:
            refused = e.status == 415 or (e.status == 400 and bool(_OCI_REFUSED & set(e.codes)))
            if self.format is not None or manifest.is_docker or not refused \
                    or self.compression != "gzip":
                raise
        return self._put(manifest.to_docker(), tag)

    def _put(self, manifest: Manifest, tag: str) -> tuple[str, int, str]:
        data = manifest.to_json()
        digest = sha256_digest(data)
        resp = self.registry.request(
            "PUT", f"/v2/{self.path}/manifests/{urllib.parse.quote(tag)}",
            scopes=self.push_scope, headers={"Content-Type": manifest.media_type},
            body=data, ok=(200, 201, 202), context=f"manifest for {self.repository}:{tag}")
        said = resp.header("Docker-Content-Digest")
        if said and said.startswith("sha256:") and said != digest:
            raise RegistryError(f"the registry stored manifest {said}, not the {digest} sent")
        return digest, len(data), manifest.media_type

    # ------------------------------------------------------------------ blobs

    def _config(self, image: Image, there: bool) -> Descriptor:
        with self._lock:
            if image.id in self._done:
                return self._done[image.id]
        data = self.store.blobs.read(image.id)
        if sha256_digest(data) != image.id:
            raise SouteError(f"blob {image.id} in the store is damaged",
                             "run 'soute fsck', then pull or load the image again")
        desc = Descriptor(mt.OCI_CONFIG, image.id, len(data))
        if not there and \
                not self._mount_any(locations.known(self.store, image.id, "config")):
            self._upload(_Blob(data=data), image.id, len(data))
        with self._lock:
            self._done[image.id] = desc
        return desc

    def _layer_once(self, diff_id: str, known: list[Location]) -> Descriptor:
        with self._lock:
            if diff_id in self._done:
                return self._done[diff_id]
        desc = self._layer(diff_id, known)
        with self._lock:
            self._done[diff_id] = desc
        return desc

    def _layer(self, diff_id: str, known: list[Location]) -> Descriptor:
        if self.cancelled.is_set():
            raise SouteError("cancelled")
        short = short_id(diff_id)
        seen: set[str] = set()
        for loc in known:  # made before (deterministically) or pulled: present already?
            if loc.digest not in seen:
                seen.add(loc.digest)
                if self._exists(loc.digest):
                    self.progress.item(short, "Layer already exists")
                    return Descriptor(mt.to_oci(loc.media_type), loc.digest, loc.size)
        mounted = self._mount_any(known)
        if mounted is not None:
            self.progress.item(short, f"Mounted from {mounted.path}")
            return Descriptor(mt.to_oci(mounted.media_type), mounted.digest, mounted.size)
        with ExitStack() as cleanup:
            from soute.store.archive import _compress_layers

            blob = _compress_layers(self.store, [diff_id], self.compression, cleanup)[diff_id]
            if blob.digest in seen or not self._exists(blob.digest):
                self.progress.item(short, "Pushing")
                self._upload(_Blob(path=blob.path), blob.digest, blob.size)
                self.progress.item(short, "Pushed")
            else:
                self.progress.item(short, "Layer already exists")
            return Descriptor(_LAYER_TYPE[self.compression], blob.digest, blob.size)

    def _exists(self, digest: str, context: str = "") -> bool:
        resp = self.registry.request("HEAD", f"/v2/{self.path}/blobs/{digest}",
                                     scopes=self.push_scope, ok=(200, 404),
                                     context=context or f"blob {short_id(digest)}")
        return resp.status == 200

    def _mount_any(self, known: list[Location]) -> Location | None:
        for loc in known:
            if loc.domain != self.registry.domain or loc.path == self.path:
                continue
            if self._mount(loc):
                return loc
        return None

    def _mount(self, loc: Location) -> bool:
        query = urllib.parse.urlencode({"mount": loc.digest, "from": loc.path})
        try:
            resp = self.registry.request(
                "POST", f"/v2/{self.path}/blobs/uploads/?{query}",
                scopes=(*self.push_scope, repository_scope(loc.path, "pull")),
                ok=(201, 202), context=f"mount of {short_id(loc.digest)}")
        except Unauthorized:
            return False  # no pull right on the source: upload it instead
        if resp.status == 201:
            return True
        # 202: the registry opened an upload instead (the blob is gone there); close it.
        location = resp.header("Location")
        if location:
            with suppress(RegistryError):
                self.registry.request("DELETE", location, scopes=self.push_scope,
                                      ok=(200, 202, 204, 404))
        return False

    # ------------------------------------------------------------------ uploads

    def _upload(self, source: _Blob, digest: str, size: int) -> None:
        failures = 0
        while True:
            try:
                self._upload_session(source, digest, size)
                return
            except _Restart as e:
                if self._exists(digest):
                    return  # it got there: only the answer was lost
                failures += 1
                if failures >= RESTARTS:
                    raise RegistryError(f"upload of blob {short_id(digest)} failed "
                                        f"{failures} times: {e}") from None

    def _start(self) -> tuple[str, int]:
        resp = self.registry.request("POST", f"/v2/{self.path}/blobs/uploads/",
                                     scopes=self.push_scope, ok=(202,),
                                     context=f"upload to {self.repository}")
        location = resp.header("Location")
        if not location:
            raise RegistryError("the registry started an upload without a Location")
        min_chunk = resp.header("OCI-Chunk-Min-Length")
        chunk = max(CHUNK_SIZE, int(min_chunk) if min_chunk and min_chunk.isdigit() else 0)
        return location, chunk

    def _upload_session(self, source: _Blob, digest: str, size: int) -> None:
        location, chunk = self._start()
        if size <= MONOLITHIC_MAX:
            try:
                self._finish(location, digest, source.window(0, size), size)
            except (*CONNECTION_ERRORS, _Retryable) as e:
                raise _Restart(str(e) or type(e).__name__) from None
            return
        offset = 0
        drops = 0
        while offset < size:
            if self.cancelled.is_set():
                raise SouteError("cancelled")
            n = min(chunk, size - offset)
            try:
                resp = self.registry.request(
                    "PATCH", location, scopes=self.push_scope,
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Range": f"{offset}-{offset + n - 1}",
                             "Content-Length": str(n)},
                    body=source.window(offset, n), ok=(202,), retry=False,
                    context=f"upload of blob {short_id(digest)}")
                location = resp.header("Location") or location
                offset = _range_end(resp, offset + n)
            except (*CONNECTION_ERRORS, RegistryError) as e:
                if isinstance(e, RegistryError) and e.status < 500 and e.status not in (0, 416):
                    raise
                drops += 1
                if drops >= RESTARTS:
                    raise _Restart(str(e) or type(e).__name__) from None
                # Where did the registry get to? Go on from there, in the same session.
                location, offset = self._status(location, e)
        try:
            self._finish(location, digest, None, 0)
        except (*CONNECTION_ERRORS, _Retryable) as e:
            raise _Restart(str(e) or type(e).__name__) from None

    def _status(self, location: str, cause: BaseException) -> tuple[str, int]:
        try:
            resp = self.registry.request("GET", location, scopes=self.push_scope, ok=(204,))
        except (*CONNECTION_ERRORS, RegistryError):
            raise _Restart(f"the upload was lost ({cause or type(cause).__name__})") from None
        return resp.header("Location") or location, _range_end(resp, None)

    def _finish(self, location: str, digest: str, source: Callable[[], BinaryIO] | None,
                size: int) -> None:
        url = location + ("&" if "?" in location else "?") + urllib.parse.urlencode(
            {"digest": digest})
        try:
            resp = self.registry.request(
                "PUT", url, scopes=self.push_scope,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(size)},
                body=source, ok=(201, 204), retry=False,
                context=f"upload of blob {short_id(digest)}")
        except RegistryError as e:
            if e.status >= 500 or "DIGEST_INVALID" in e.codes or "BLOB_UPLOAD_UNKNOWN" in \
                    e.codes or "BLOB_UPLOAD_INVALID" in e.codes:
                raise _Retryable(str(e)) from None
            raise
        said = resp.header("Docker-Content-Digest")
        if said and said != digest:
            raise RegistryError(f"the registry stored blob {said}, not the {digest} sent")


class _Restart(Exception):
    """This upload session is lost: start the blob again in a new one."""


class _Retryable(Exception):
    pass


def _range_end(resp: Response, default: int | None) -> int:
    """The next offset an upload's ``Range: 0-N`` answer asks for."""
    value = (resp.header("Range") or "").removeprefix("bytes=")
    start, sep, end = value.partition("-")
    if sep and start == "0" and end.isdigit():
        # distribution says 0-0 both for nothing and for one byte: take nothing, the
        # registry refuses or fixes an overlapping chunk and the digest check catches it.
        return int(end) + 1 if int(end) > 0 else 0
    if default is None:
        raise _Restart(f"the registry gave no usable upload Range ({value!r})")
    return default


class _Blob:
    """Bytes to upload, opened afresh for each attempt: a spooled file or a small document."""

    def __init__(self, path: Path | None = None, data: bytes | None = None) -> None:
        self._path = path
        self._data = data

    def window(self, start: int, length: int) -> Callable[[], BinaryIO]:
        def open_window() -> BinaryIO:
            if self._data is not None:
                return io.BytesIO(self._data[start:start + length])
            assert self._path is not None
            return _Window(open(self._path, "rb"), start, length)  # type: ignore[return-value]

        return open_window


class _Window:
    """``length`` bytes of a file from ``start``; closes the file on exit."""

    def __init__(self, f: BinaryIO, start: int, length: int) -> None:
        self._f = f
        f.seek(start)
        self._left = length

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        if not data:
            raise SouteError("a spooled layer shrank while it was being pushed")
        self._left -= len(data)
        return data

    def __enter__(self) -> _Window:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()
