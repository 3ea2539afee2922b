"""``soute pull``: an image from a registry into the store (distribution-spec "Pull").

1. The manifest, by tag or digest, with every manifest type we read in ``Accept`` (registry
   2.8 hides OCI manifests from clients that do not list them). Indexes and manifest lists
   are resolved for the platform (the host's by default), as docker pulls. Every manifest's
   bytes are checked against the digest that named it.
2. The config, checked against its digest: its ``diff_ids`` tell which layers the store has
   already (not downloaded again, whatever their compression in this registry).
3. The missing layers, several at once, each streamed from the socket through its digest
   into an uncommitted blob file in the store's ``tmp/``. A compressed layer is kept as the
   registry sent it ("packed", as containerd's content store keeps it): it is decompressed,
   and its DiffID checked, when it is first used (:meth:`Store.open_layer`). A plain tar
   layer is its own DiffID. A connection that drops is resumed where it stopped with
   ``Range``.
4. Only when every layer matched its blob digest are the layers committed and the image, its
   tag and its repo digest (``NAME@sha256:...``, the digest of what the tag named: the index
   for multi-platform images, as docker records) recorded. Until then nothing is visible: a
   failed pull leaves the store as it was.

Docker Hub references (``docker.io/...``) go to the mirrors of :mod:`.config` first.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, TextIO

from soute.errors import SouteError
from soute.image import mediatypes as mt
from soute.image.digest import ALGORITHMS, parse_digest, short_id
from soute.image.manifest import Descriptor, Index, Manifest, parse_manifest
from soute.image.platforms import Platform
from soute.image.reference import Reference, parse_reference
from soute.registry import locations
from soute.registry.auth import repository_scope
from soute.registry.client import CONNECTION_ERRORS, MAX_DOCUMENT, Registry, Response
from soute.registry.config import HUB_DOMAIN, RegistrySettings
from soute.registry.errors import RegistryError, Unauthorized, Unreachable
from soute.registry.locations import Location
from soute.registry.progress import Progress
from soute.store.blobs import BlobWriter, WriteBehind
from soute.store.names import resolve
from soute.store.store import Image, ImageNotFound, PackedLayer, Store

WORKERS = 3  # layers downloaded at once (docker's default)
RESUMES = 5  # dropped connections survived per layer
MAX_INDEX_DEPTH = 4
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PullResult:
    image: Image
    reference: str  # what was pulled, fully qualified: NAME:TAG or NAME@DIGEST
    digest: str  # of the manifest (or index) the reference named
    downloaded: bool  # False when the store had the image already


def ensure_image(store: Store, name: str, *, platform: str | None = None,
                 out: TextIO | None = sys.stderr,
                 settings: RegistrySettings | None = None) -> Image:
    """The image ``name`` names in the store, pulled first when the store lacks it (as
    ``docker run`` and ``FROM`` do). Progress goes to ``out``."""
    try:
        return resolve(store, name)
    except ImageNotFound:
        if name.startswith("sha256:"):
            raise  # an image ID: nothing a registry could give
    if out is not None:
        out.write(f"Unable to find image '{name}' locally\n")
    try:
        return pull(store, name, platform=platform, out=out, err=out, settings=settings).image
    except SouteError as e:
        raise ImageNotFound(
            f"No such image: {name} (pulling it failed: {e.message})",
            "make it with soute bootstrap, soute import or soute load, or pull it from a "
            "registry you can reach") from None


def pull(store: Store, name: str, *, platform: str | None = None,
         out: TextIO | None = sys.stdout, err: TextIO | None = sys.stderr,
         settings: RegistrySettings | None = None) -> PullResult:
    """Pull ``name`` (``NAME[:TAG]`` or ``NAME@DIGEST``) for ``platform`` (``os/arch``;
    default the host's). Raises :class:`SouteError` with one line; the store is then
    unchanged."""
    ref = parse_reference(name).docker_ref()
    want = Platform.parse(platform) if platform else None
    settings = settings or RegistrySettings.load()
    endpoints: list[tuple[str | None, str]] = []
    if ref.domain == HUB_DOMAIN:
        endpoints += settings.hub_mirrors()
    endpoints.append((None, ref.domain))
    printer = Progress(out)
    errors: list[RegistryError] = []
    with store.session():
        for i, (scheme, domain) in enumerate(endpoints):
            with Registry(domain, settings=settings, scheme=scheme) as registry:
                puller = _Puller(store, registry, ref, want, printer, Progress(err))
                try:
                    top = puller.resolve()
                except RegistryError as e:
                    if i + 1 < len(endpoints):  # a mirror that lacks it or is down
                        errors.append(e)
                        continue
                    # A mirror's "not found" says more than the hub being unreachable here.
                    if isinstance(e, Unreachable) and errors:
                        raise errors[0] from None
                    raise
                return puller.fetch(top)
    raise AssertionError("unreachable")


def fetch_manifest(registry: Registry, ref: Reference) -> tuple[bytes, str, str]:
    """The manifest (or index) ``ref`` names, as it came: ``(bytes, media type, digest)``,
    checked against the digest that named it or the one the registry gave."""
    return _quiet(registry, ref)._manifest(ref.digest or ref.tag or "latest", ref.digest)


def fetch_document(registry: Registry, ref: Reference, desc: Descriptor) -> bytes:
    """A small blob of ``ref``'s repository (a config), checked against ``desc``."""
    return _quiet(registry, ref)._config(desc)


def fetch_layer(store: Store, registry: Registry, ref: Reference, desc: Descriptor,
                diff_id: str) -> None:
    """Download the layer blob ``desc`` of ``ref``'s repository into the store as the
    uncompressed layer ``diff_id``. Both digests are checked before the layer is stored;
    on any error nothing is."""
    if desc.media_type not in mt.LAYER_TYPES:
        raise RegistryError(f"{ref}: blob {short_id(desc.digest)} has media type "
                            f"{desc.media_type}, not a layer")
    if store.has_layer(diff_id):
        return
    puller = _quiet(registry, ref, store)
    with store.blobs.writer() as writer:
        puller._layer(_Download(desc, diff_id, writer))
        writer.commit()
    locations.record(store, [Location(desc.digest, puller.repository, diff_id,
                                      desc.media_type, desc.size)])


def _quiet(registry: Registry, ref: Reference, store: Store | None = None) -> _Puller:
    # Manifests and documents never touch the store.
    return _Puller(store, registry, ref, None, Progress(None), Progress(None))  # type: ignore[arg-type]


@dataclass
class _Resolved:
    digest: str  # what the reference names
    manifest: Manifest
    manifest_digest: str


@dataclass
class _Download:
    desc: Descriptor
    diff_id: str
    writer: BlobWriter | None = None
    packed: bool = False  # kept compressed (see the module's docstring)
    size_hint: int = 0  # the uncompressed size a packed blob announces
    # Packed, but its DiffID checked now: another blob of the store claims the same DiffID,
    # unchecked, and at most one of them can hold it.
    check: bool = False

    @property
    def can_pack(self) -> bool:
        # The store names blobs by sha256; a plain tar needs no unpacking.
        return self.desc.digest.startswith("sha256:") and \
            mt.layer_compression(self.desc.media_type) is not None


def list_tags(name: str, *, settings: RegistrySettings | None = None) -> list[str]:
    """The tags of repository ``name`` (``/v2/NAME/tags/list``, every page), sorted."""
    given = parse_reference(name)
    if given.tag or given.digest:
        raise SouteError("tag can't be used with --all-tags/-a", "give the repository only")
    ref = given.docker_ref()
    scopes = (repository_scope(ref.path, "pull"),)
    tags: set[str] = set()
    path: str | None = f"/v2/{ref.path}/tags/list?n=1000"
    with Registry(ref.domain, settings=settings or RegistrySettings.load()) as registry:
        pages = 0
        while path is not None and pages < 1000:  # a registry that links back loops no more
            pages += 1
            try:
                resp = registry.request("GET", path, scopes=scopes, context=str(ref))
            except Unauthorized as e:
                raise RegistryError(f"pull access denied for {ref.familiar_name}, repository "
                                    "does not exist or may require 'soute login': "
                                    f"{e.message}", status=e.status, codes=e.codes) from None
            doc = resp.json()
            tags.update(t for t in (doc.get("tags") or []) if isinstance(t, str))
            path = _next_page(resp.header("Link"))
    return sorted(tags)


def _next_page(link: str | None) -> str | None:
    """The path of a ``Link: </v2/...?last=x>; rel="next"`` header (distribution's paging)."""
    if not link or 'rel="next"' not in link:
        return None
    start, end = link.find("<"), link.find(">")
    if start < 0 or end < start:
        return None
    target = urllib.parse.urlsplit(link[start + 1:end])
    return target.path + (f"?{target.query}" if target.query else "")


class _Puller:
    def __init__(self, store: Store, registry: Registry, ref: Reference,
                 platform: Platform | None, printer: Progress, progress: Progress) -> None:
        self.store = store
        self.registry = registry
        self.ref = ref
        self.platform = platform
        self.printer = printer
        self.progress = progress
        self.path = ref.path
        self.scopes = (repository_scope(ref.path, "pull"),)
        self.repository = f"{registry.domain}/{ref.path}"
        self.cancelled = threading.Event()

    # ------------------------------------------------------------------ manifests

    def resolve(self) -> _Resolved:
        target = self.ref.digest or self.ref.tag or "latest"
        data, media_type, digest = self._manifest(target, self.ref.digest)
        top = digest
        doc = _parse(data, media_type, str(self.ref))
        depth = 0
        while isinstance(doc, Index):
            depth += 1
            if depth > MAX_INDEX_DEPTH:
                raise RegistryError(f"{self.ref}: indexes nest too deep")
            child = doc.select(self.platform)
            data, media_type, digest = self._manifest(child.digest, child.digest)
            doc = _parse(data, media_type, f"{self.ref} ({child.digest})")
        if not doc.is_image:
            raise SouteError(f"{self.ref} is not a container image (its config is "
                             f"{doc.config.media_type})", "it is an artifact; nothing to run")
        return _Resolved(top, doc, digest)

    def _manifest(self, target: str, expected: str | None) -> tuple[bytes, str, str]:
        resp = self._get(f"/v2/{self.path}/manifests/{urllib.parse.quote(target)}",
                         {"Accept": mt.ACCEPT_MANIFESTS}, what="manifest")
        data = resp.read_document()
        media_type = (resp.header("Content-Type") or "").split(";")[0].strip()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if expected is not None:
            if _digest_of(data, expected) != expected:
                raise RegistryError(f"manifest {expected} from {self.registry.domain} does "
                                    "not match its digest", "the registry sent damaged content")
            digest = expected
        else:
            said = resp.header("Docker-Content-Digest")
            if said and said.startswith("sha256:") and said != digest:
                raise RegistryError(f"manifest for {self.ref} does not match the digest the "
                                    f"registry gave ({said})")
        return data, media_type, digest

    def _get(self, path: str, headers: dict[str, str], *, what: str,
             stream: bool = False) -> Response:
        try:
            return self.registry.request("GET", path, scopes=self.scopes, headers=headers,
                                         ok=(200, 206), stream=stream)
        except Unauthorized as e:
            raise RegistryError(f"pull access denied for {self.ref.familiar_name}, repository "
                                f"does not exist or may require 'soute login': {e.message}",
                                status=e.status, codes=e.codes) from None
        except RegistryError as e:
            if e.status == 404 and what == "manifest":
                raise RegistryError(f"manifest for {self.ref} not found: {e.message}",
                                    status=404, codes=e.codes) from None
            if e.status in (0, 404):
                raise
            raise RegistryError(f"{what} {self.ref}: {e.message}", status=e.status,
                                codes=e.codes) from None

    # ------------------------------------------------------------------ the image

    def fetch(self, top: _Resolved) -> PullResult:
        ref = self.ref
        self.printer.line(f"{ref.tag or ref.digest}: Pulling from {ref.path}")
        manifest = top.manifest
        config = self._config(manifest.config)
        diff_ids = _diff_ids(config, manifest.config.digest)
        if len(diff_ids) != len(manifest.layers):
            raise RegistryError(f"{ref}: the manifest lists {len(manifest.layers)} layers but "
                                f"the config has {len(diff_ids)}")
        if self.platform is not None:
            self._check_platform(config)

        downloads: dict[str, _Download] = {}
        found: list[Location] = []
        for desc, diff_id in zip(manifest.layers, diff_ids, strict=True):
            if desc.media_type not in mt.LAYER_TYPES:
                raise RegistryError(f"{ref}: layer {short_id(desc.digest)} has media type "
                                    f"{desc.media_type}, not a layer")
            here = Location(desc.digest, self.repository, diff_id, desc.media_type, desc.size)
            if diff_id in downloads:
                continue
            recorded = held = self.store.packed_layer(diff_id)
            if held is not None and not self.store.blobs.has(held.digest):
                held = None  # its blob is lost: this pull replaces it
            if self.store.blobs.has(diff_id) or (held is not None and (
                    held.verified or held.digest == desc.digest)):
                self.progress.item(short_id(desc.digest), "Already exists")
                # That this registry's blob holds the layer is known only if some check saw
                # it: an image config's word is not enough for a later push to rely on.
                if (held is not None and held.verified and held.digest == desc.digest) \
                        or locations.vouched(self.store, desc.digest, diff_id):
                    found.append(here)
                continue
            download = downloads[diff_id] = _Download(desc, diff_id)
            download.packed = download.can_pack
            download.check = download.packed and recorded is not None
            if not download.packed or download.check:
                found.append(here)  # its DiffID is checked below
            self.progress.item(short_id(desc.digest), "Pulling fs layer")

        with ExitStack() as cleanup:
            if downloads:
                workers = max(1, min(WORKERS, len(downloads)))
                for d in downloads.values():
                    d.writer = cleanup.enter_context(
                        self.store.blobs.writer(d.desc.digest if d.packed else None))
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pull") as pool:
                    futures = [pool.submit(self._layer, d) for d in downloads.values()]
                    try:
                        for f in futures:
                            f.result()
                    except BaseException:
                        # One failed (or ^C): the others stop at their next read.
                        self.cancelled.set()
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
            # Everything is verified: publish the layers, then the image.
            for d in downloads.values():
                assert d.writer is not None
                d.writer.commit()
                self.progress.item(short_id(d.desc.digest), "Pull complete")
        packed = [PackedLayer(d.diff_id, d.desc.digest, mt.to_oci(d.desc.media_type),
                              d.desc.size, d.check, self.repository)
                  for d in downloads.values() if d.packed]
        hints = {d.diff_id: d.size_hint for d in downloads.values() if d.packed}
        sizes = [(d, hints[d] if d in hints else self.store.layer_size(d)) for d in diff_ids]
        full = str(ref)
        before = self.store.meta.tag_target(full) if ref.tag else \
            self.store.meta.repo_digest_target(ref.name, top.digest)
        image = self.store.add_image(config, sizes, tags=[full] if ref.tag else [],
                                     manifest_annotations=manifest.annotations or None,
                                     packed=packed)
        self.store.meta.add_repo_digest(ref.name, top.digest, image.id)
        locations.record(self.store, [*found, Location(
            manifest.config.digest, self.repository, manifest.config.digest,
            manifest.config.media_type, manifest.config.size)])
        fresh = before != image.id or bool(downloads)
        self.printer.line(f"Digest: {top.digest}")
        self.printer.line(f"Status: {'Downloaded newer image' if fresh else 'Image is up to date'}"
                          f" for {ref.familiar()}")
        self.printer.line(full)
        return PullResult(self.store.image(image.id), full, top.digest, fresh)

    def _check_platform(self, config: bytes) -> None:
        assert self.platform is not None
        doc = json.loads(config)
        have = Platform(os=str(doc.get("os") or ""), architecture=str(
            doc.get("architecture") or ""), variant=str(doc.get("variant") or ""))
        if not self.platform.matches(have):
            raise SouteError(f"image with reference {self.ref} was found but does not match "
                             f"the specified platform: wanted {self.platform}, actual: {have}")

    def _config(self, desc: Descriptor) -> bytes:
        if desc.size > MAX_DOCUMENT:
            raise RegistryError(f"{self.ref}: its config is larger than "
                                f"{MAX_DOCUMENT >> 20} MiB")
        resp = self._get(f"/v2/{self.path}/blobs/{desc.digest}", {}, what="config")
        data = resp.read_document()
        if len(data) != desc.size or _digest_of(data, desc.digest) != desc.digest:
            raise RegistryError(f"config {short_id(desc.digest)} of {self.ref} does not match "
                                "its digest", "the registry sent damaged content")
        return data

    def _packed(self, download: _Download) -> None:
        """Download a compressed layer into its blob as it comes (the writer checks its
        digest at commit); note the size it announces."""
        from soute.layer.compress import size_hint

        desc = download.desc
        source = _BlobStream(self, desc, hashed=False)  # the blob writer hashes it
        writer = download.writer
        assert writer is not None
        behind = WriteBehind(writer)
        head = tail = b""
        try:
            while chunk := source.chunk():
                if len(head) < 32:
                    head += chunk[:32]
                tail = (tail + chunk)[-8:] if len(chunk) < 8 else chunk[-8:]
                behind.write(chunk)
        except BaseException:
            behind.close(quiet=True)
            raise
        behind.close()
        if source.offset != desc.size or "sha256:" + writer.sha256.hexdigest() != desc.digest:
            raise RegistryError(f"layer {short_id(desc.digest)} of {self.ref} does not match "
                                f"its digest {desc.digest}", "the registry sent damaged "
                                "content; nothing was stored")
        download.size_hint = size_hint(head, tail, desc.size)
        writer.sync()  # beside the other layers' downloads, not one after another at commit
        if download.check:
            self._check_diff_id(download)
        self.progress.item(short_id(desc.digest), "Download complete")

    def _check_diff_id(self, download: _Download) -> None:
        """Decompress a downloaded packed blob (not committed yet) to check its DiffID."""
        from soute.layer import open_decompressed

        assert download.writer is not None
        short = short_id(download.desc.digest)
        digest = hashlib.sha256()
        try:
            with open(download.writer.path, "rb") as raw, open_decompressed(raw) as layer:
                while chunk := layer.read(_CHUNK):
                    if self.cancelled.is_set():
                        raise _Cancelled("cancelled")
                    digest.update(chunk)
        except SouteError as e:
            if isinstance(e, RegistryError):
                raise
            raise RegistryError(f"layer {short} of {self.ref} cannot be read: {e.message}") \
                from None
        got = "sha256:" + digest.hexdigest()
        if got != download.diff_id:
            raise RegistryError(f"layer {short} of {self.ref} does not match the image config: "
                                f"its content is {got}, the config expects {download.diff_id}")

    def _layer(self, download: _Download) -> None:
        if download.packed:
            self._packed(download)
            return
        from soute.layer import open_decompressed

        desc = download.desc
        short = short_id(desc.digest)
        source = _BlobStream(self, desc)
        writer = download.writer
        assert writer is not None
        problem = None
        # The blob writer hashes the content (its hash is the DiffID, checked below) and
        # writes it in a thread of its own while this one decompresses the next chunks.
        behind = WriteBehind(writer)
        try:
            raw = io.BufferedReader(source, _CHUNK)
            with open_decompressed(raw) as layer:  # type: ignore[arg-type]
                while chunk := layer.read(_CHUNK):
                    behind.write(chunk)
        except RegistryError:
            behind.close(quiet=True)
            raise
        except SouteError as e:
            problem = e.message  # reported below, unless the digest explains it
        except BaseException:
            behind.close(quiet=True)
            raise
        behind.close()
        source.drain()
        if source.offset != desc.size or source.digest() != desc.digest:
            raise RegistryError(f"layer {short} of {self.ref} does not match its digest "
                                f"{desc.digest}", "the registry sent damaged content; nothing "
                                "was stored")
        if problem is not None:
            raise RegistryError(f"layer {short} of {self.ref} cannot be read: {problem}")
        got = "sha256:" + writer.sha256.hexdigest()
        if got != download.diff_id:
            raise RegistryError(f"layer {short} of {self.ref} does not match the image config: "
                                f"its content is {got}, the config expects {download.diff_id}")
        writer.sync()  # beside the other layers' downloads, not one after another at commit
        self.progress.item(short, "Download complete")


class _BlobStream(io.RawIOBase):
    """A blob's bytes from the registry, hashed on the way; a dropped connection is resumed
    with ``Range`` where it stopped (a registry ignoring Range: the known part is skipped)."""

    def __init__(self, puller: _Puller, desc: Descriptor, *, hashed: bool = True) -> None:
        self._puller = puller
        self._desc = desc
        alg = desc.digest.partition(":")[0]
        if alg not in ALGORITHMS:
            raise RegistryError(f"layer {desc.digest}: unsupported digest algorithm {alg}")
        self._hash = hashlib.new(alg) if hashed else None
        self._resp: Response | None = None
        self.offset = 0
        self._drops = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.chunk(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def chunk(self, limit: int = _CHUNK) -> bytes:
        """The next bytes, at most ``limit`` (empty at the end)."""
        while True:
            if self._puller.cancelled.is_set():
                raise _Cancelled("cancelled")
            if self.offset > self._desc.size:
                raise RegistryError(f"layer {short_id(self._desc.digest)}: the registry sent "
                                    f"more than its {self._desc.size} bytes")
            if self._resp is None:
                if self.offset == self._desc.size and self.offset > 0:
                    return b""
                self._open()
            assert self._resp is not None
            try:
                data = self._resp.read(min(limit, _CHUNK))
            except CONNECTION_ERRORS as e:
                self._dropped(e)
                continue
            if not data:
                self._resp.close()
                self._resp = None
                if self.offset < self._desc.size:
                    self._dropped(None)  # cut short: resume
                    continue
                return b""
            if self._hash is not None:
                self._hash.update(data)
            self.offset += len(data)
            return data

    def _open(self) -> None:
        headers = {"Range": f"bytes={self.offset}-"} if self.offset else {}
        try:
            resp = self._puller._get(f"/v2/{self._puller.path}/blobs/{self._desc.digest}",
                                     headers, what="layer", stream=True)
        except Unreachable as e:
            if self.offset == 0:
                raise
            self._dropped(e)
            return
        if self.offset and resp.status == 200:
            skip = self.offset  # no Range support: read past what we have
            while skip:
                chunk = resp.read(min(skip, _CHUNK))
                if not chunk:
                    break
                skip -= len(chunk)
        elif resp.status == 206:
            got = (resp.header("Content-Range") or "").removeprefix("bytes ")
            if not got.startswith(f"{self.offset}-"):
                resp.close()
                raise RegistryError(f"layer {short_id(self._desc.digest)}: the registry "
                                    f"resumed at {got!r}, not at byte {self.offset}")
        self._resp = resp

    def _dropped(self, error: BaseException | None) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        self._drops += 1
        if self._drops > RESUMES:
            reason = f": {error}" if error else ""
            raise RegistryError(f"layer {short_id(self._desc.digest)}: the download broke off "
                                f"{self._drops} times{reason}")
        time.sleep(min(0.2 * 2 ** (self._drops - 1), 3.0))

    def drain(self) -> None:
        """Read what the decompressor left (trailing bytes count in the digest)."""
        buffer = bytearray(_CHUNK)
        while self.offset < self._desc.size and self.readinto(buffer):
            pass
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    def digest(self) -> str:
        assert self._hash is not None
        return f"{self._desc.digest.partition(':')[0]}:{self._hash.hexdigest()}"


class _Cancelled(RegistryError):
    """Another layer failed: this one stops (its error is not the one reported)."""


def _parse(data: bytes, media_type: str, where: str) -> Manifest | Index:
    try:
        return parse_manifest(data, media_type)
    except SouteError as e:
        raise SouteError(f"{where}: {e.message}", e.hint) from None


def _digest_of(data: bytes, like: str) -> str:
    alg = parse_digest(like).partition(":")[0]
    return f"{alg}:{hashlib.new(alg, data).hexdigest()}"


def _diff_ids(config: bytes, digest: str) -> list[str]:
    try:
        doc = json.loads(config)
    except ValueError:
        raise RegistryError(f"config {short_id(digest)} is not JSON") from None
    rootfs = doc.get("rootfs") if isinstance(doc, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" \
            or not isinstance(ids, list | None):
        raise RegistryError(f"config {short_id(digest)} has no rootfs of type layers")
    for d in ids or []:
        if not (isinstance(d, str) and d.startswith("sha256:") and len(d) == 71):
            raise RegistryError(f"config {short_id(digest)} has an invalid DiffID {d!r}")
    return list(ids or [])

