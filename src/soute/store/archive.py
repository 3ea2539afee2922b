"""``docker save`` and ``docker load``: images to and from tar archives.

Writing (:func:`save`):

- ``docker`` format: the hybrid that docker 25+ writes (``image/tarexport/save.go``), which
  docker 20.10, docker 25+, podman and skopeo (``docker-archive:`` and ``oci-archive:``) all
  load. It is an OCI image layout (``oci-layout``, ``index.json`` with one entry per tag
  annotated ``io.containerd.image.name`` = full name and ``org.opencontainers.image.ref.name``
  = tag, ``blobs/sha256/…``) plus docker's ``manifest.json`` (``Config`` and ``Layers`` are
  paths into ``blobs/``, ``RepoTags`` familiar names) and the legacy ``repositories`` file.
  docker 25 also writes ``LayerSources`` and v1 layer configs into ``blobs/``; no loader needs
  them for ordinary (not foreign) layers, so they are left out.
- ``oci`` format: an oci-archive, the tar of a pure OCI image layout. ``ref.name`` is
  ``NAME:TAG`` as users type it (what ``skopeo copy oci-archive:F:NAME:TAG`` looks up), and
  ``io.containerd.image.name`` carries the full name.

Layers are stored uncompressed; with ``compression`` they are gzip- (deterministic: mtime 0,
no name) or zstd-compressed into the archive, and the archive's manifests then name the
compressed blobs with ``+gzip``/``+zstd`` media types; config DiffIDs never change, so the
image ID does not either. ``docker`` + ``zstd`` is refused: docker 20.10 cannot load it.

The tar is written in one pass to a stream that need not seek (a pipe): members sorted by
name, mtime 0, uid/gid 0, no user names, PAX format, so the same images give the same bytes.
Compressed layers are made first, in parallel, into the store's ``tmp/`` (a tar header needs
the size), and removed after.

Reading (:func:`load`) takes any of: ``docker save`` output (legacy ``<v1id>/layer.tar``
layout or the docker 25 hybrid), skopeo's docker-archive (``<diffid>.tar`` plus symlinks), an
oci-archive (nested indexes resolved for this host's platform), and our own saves, from a file
or a pipe, whole-archive gzip/xz/zstd/bzip2 detected. The tar is read once, front to back:
JSON members are kept in memory, every other member is decompressed (plain, gzip or zstd) into
an uncommitted blob writer in ``tmp/`` while its digests are computed. Then ``manifest.json``
(else ``index.json``) says what is what; each layer must hash to its config DiffID; verified
layers are committed and the images added last. A killed load leaves only files in ``tmp/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import resource
import tarfile
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal

from soute.errors import SouteError
from soute.image import mediatypes as mt
from soute.image.manifest import Descriptor, Index, Manifest
from soute.image.platforms import Platform
from soute.image.reference import parse_reference
from soute.store.blobs import BlobWriter
from soute.store.names import full_tag
from soute.store.store import CONTAINERD_NAME, REF_NAME, Image, Store

Format = Literal["docker", "oci"]
Compression = Literal["none", "gzip", "zstd"]

_CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
# Members kept in memory when read: manifests, indexes, configs (the spec caps manifests at 4 MB;
# configs with long histories stay well below this).
_JSON_LIMIT = 16 << 20
_JSON_BUDGET = 256 << 20
_JSON_NAMES = frozenset({"manifest.json", "index.json", "repositories", "oci-layout", "json",
                         "VERSION"})
_MAX_LINKS = 40
_MAX_INDEX_DEPTH = 8
_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
_HEX = frozenset("0123456789abcdef")

_LOAD_HINT = ("give the output of 'docker save', 'podman save' or "
              "'skopeo copy ... docker-archive:FILE' / 'oci-archive:FILE'")
_CORRUPT_HINT = "the archive is damaged; make it again"


@dataclass(frozen=True)
class LoadedImage:
    """An image :func:`load` added, with the tags the archive gave it (full names)."""

    image: Image
    tags: tuple[str, ...]


# ============================================================================ save


@dataclass(frozen=True)
class _Blob:
    """A file to copy into the archive; ``check``: the digest to verify on the way."""

    digest: str
    size: int
    path: Path
    check: str | None


@dataclass
class _SaveImage:
    image: Image
    tags: list[str] = field(default_factory=list)


def save(
    store: Store,
    images: list[tuple[Image, list[str]]],
    out: BinaryIO,
    *,
    format: Format = "docker",
    compression: Compression = "none",
) -> None:
    """Write ``images`` as one archive to ``out`` (see the module docstring).

    Each image comes with the full tag names to record for it (what the user named; an image
    named by ID gets none, as with ``docker save``). Nothing but the archive is written to
    ``out``, sequentially.
    """
    if format not in ("docker", "oci"):
        raise SouteError(f"unknown archive format {format!r}", hint="use docker or oci")
    if compression not in ("none", "gzip", "zstd"):
        raise SouteError(f"unknown layer compression {compression!r}",
                         hint="use none, gzip or zstd")
    if format == "docker" and compression == "zstd":
        raise SouteError("docker-format archives cannot hold zstd layers: docker 20.10 "
                         "cannot load them",
                         hint="use --compression gzip, or --format oci for zstd")
    if not images:
        raise SouteError("no images to save", hint="name at least one image")

    plan: dict[str, _SaveImage] = {}
    for image, tags in images:
        entry = plan.setdefault(image.id, _SaveImage(image))
        for tag in tags:
            if tag not in entry.tags:
                entry.tags.append(tag)

    with store.session(), ExitStack() as cleanup:
        diff_ids = list(dict.fromkeys(d for e in plan.values() for d in e.image.diff_ids))
        if compression == "none":
            layers = {d: _uncompressed(store, d, cleanup) for d in diff_ids}
        else:
            layers = _compress_layers(store, diff_ids, compression, cleanup)
        layer_type = {"none": mt.OCI_LAYER, "gzip": mt.OCI_LAYER_GZIP,
                      "zstd": mt.OCI_LAYER_ZSTD}[compression]

        members: dict[str, bytes | _Blob] = {}
        index: list[dict[str, Any]] = []
        docker_manifest: list[dict[str, Any]] = []
        repositories: dict[str, dict[str, str]] = {}
        for entry in plan.values():
            image = entry.image
            config = store.blobs.read(image.id)
            if _sha256(config) != image.id:
                raise _corrupt_store(image.id)
            members[_blob_path(image.id)] = config
            stored = store.blobs.read(image.manifest)
            if _sha256(stored) != image.manifest:
                raise _corrupt_store(image.manifest)
            manifest = _archive_manifest(stored, image, layers, layer_type)
            manifest_digest = _sha256(manifest)
            members[_blob_path(manifest_digest)] = manifest
            for diff_id in image.diff_ids:
                blob = layers[diff_id]
                members[_blob_path(blob.digest)] = blob

            descriptor = {"mediaType": mt.OCI_MANIFEST, "digest": manifest_digest,
                          "size": len(manifest)}
            repo_tags: list[str] = []
            for full in entry.tags:
                ref = parse_reference(full)
                if ref.tag is None:
                    raise SouteError(f"cannot record {full!r} in an archive: it has no tag")
                ref_name = ref.tag if format == "docker" else ref.familiar()
                index.append({**descriptor, "annotations": {CONTAINERD_NAME: str(ref),
                                                            REF_NAME: ref_name}})
                repo_tags.append(ref.familiar())
                if image.layers:
                    top = image.diff_ids[-1].partition(":")[2]
                    repositories.setdefault(ref.familiar_name, {})[ref.tag] = top
            if not entry.tags:
                index.append(descriptor)
            docker_manifest.append({
                "Config": _blob_path(image.id),
                "RepoTags": repo_tags,
                "Layers": [_blob_path(layers[d].digest) for d in image.diff_ids],
            })

        members["oci-layout"] = _LAYOUT
        members["index.json"] = _json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                       "manifests": index})
        if format == "docker":
            # json.Encoder in docker ends these two with a newline.
            members["manifest.json"] = _json(docker_manifest) + b"\n"
            if repositories:
                members["repositories"] = _json(repositories) + b"\n"

        writer = _TarWriter(out)
        writer.directory("blobs")
        writer.directory("blobs/sha256")
        for name in sorted(members):
            member = members[name]
            if isinstance(member, bytes):
                writer.data(name, member)
            else:
                writer.file(name, member)
        writer.close()


def _archive_manifest(
    stored: bytes, image: Image, layers: dict[str, _Blob], layer_type: str
) -> bytes:
    """The manifest to put in the archive: the store's own bytes when it names the blobs that
    go in (so the manifest digest is kept), else a copy naming them."""
    doc = json.loads(stored)
    if [(entry.get("mediaType"), entry.get("digest"), entry.get("size"))
            for entry in doc.get("layers") or []] == \
            [(layer_type, layers[d].digest, layers[d].size) for d in image.diff_ids]:
        return stored
    doc["layers"] = [{"mediaType": layer_type, "digest": layers[d].digest,
                      "size": layers[d].size} for d in image.diff_ids]
    return _json(doc)


def _uncompressed(store: Store, diff_id: str, cleanup: ExitStack) -> _Blob:
    """A layer's tar: its file in the store, or its packed blob decompressed (and checked)
    into ``tmp/``, removed when ``cleanup`` closes: a pulled layer stays stored once,
    compressed, as the pull left it."""
    if store.blobs.has(diff_id):
        path = store.blobs.path(diff_id)
    else:
        fd, name = tempfile.mkstemp(prefix="save-", dir=store.tmp)
        path = Path(name)
        cleanup.callback(path.unlink, missing_ok=True)
        with os.fdopen(fd, "wb") as out, store.open_layer(diff_id) as src:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
    return _Blob(diff_id, path.stat().st_size, path, diff_id)


def _compress_layers(
    store: Store, diff_ids: list[str], kind: Literal["gzip", "zstd"], cleanup: ExitStack
) -> dict[str, _Blob]:
    """Compress each layer into ``tmp/``, several at once (isal, zstd and sha256 release the
    GIL); the files are removed when ``cleanup`` closes."""
    from soute.layer import compress_stream

    made: list[Path] = []
    lock = threading.Lock()

    def remove_all() -> None:
        with lock:
            for path in made:
                path.unlink(missing_ok=True)

    cleanup.callback(remove_all)

    def compress(diff_id: str) -> _Blob:
        packed = store.packed_layer(diff_id)
        if packed is not None and store.blobs.has(diff_id) and not packed.verified:
            packed = None  # its tar, stored since, is sure to be the layer; the blob is not
        if packed is not None and mt.layer_compression(packed.media_type) == kind \
                and store.blobs.has(packed.digest) \
                and _compressed_as(store, packed.digest) == kind:
            # As the registry sent it (containerd, too, pushes a pulled layer's blob as is).
            return _Blob(packed.digest, packed.size, store.blobs.path(packed.digest),
                         packed.digest)
        fd, name = tempfile.mkstemp(prefix="save-", dir=store.tmp)
        path = Path(name)
        with lock:
            made.append(path)
        with os.fdopen(fd, "wb") as raw, store.open_layer(diff_id) as src:
            reader = _HashingReader(src)
            writer = _HashingWriter(raw)
            compress_stream(reader, writer, kind)  # type: ignore[arg-type]
        if reader.digest() != diff_id:
            raise _corrupt_store(diff_id)
        return _Blob(writer.digest(), writer.size, path, None)

    workers = max(1, min(len(diff_ids), os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compress") as pool:
        futures = [pool.submit(compress, d) for d in diff_ids]
        blobs = [f.result() for f in futures]
    return dict(zip(diff_ids, blobs, strict=True))


def _compressed_as(store: Store, digest: str) -> str:
    """What a stored blob's bytes are (a registry may call zstd bytes gzip)."""
    from soute.layer import detect

    with store.blobs.open(digest) as f:
        return detect(f.read(8))


class _TarWriter:
    """A PAX tar written strictly forward: headers from :class:`tarfile.TarInfo`, data copied
    in large chunks (tarfile's own stream mode copies 16 KiB at a time)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._written = 0

    def _write(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self._written += len(data)

    def _header(self, name: str, kind: bytes, size: int, mode: int) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = size
        info.mode = mode
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _pad(self, size: int) -> None:
        if size % _BLOCK:
            self._write(bytes(_BLOCK - size % _BLOCK))

    def directory(self, name: str) -> None:
        self._header(name, tarfile.DIRTYPE, 0, 0o755)

    def data(self, name: str, data: bytes) -> None:
        self._header(name, tarfile.REGTYPE, len(data), 0o644)
        self._write(data)
        self._pad(len(data))

    def file(self, name: str, blob: _Blob) -> None:
        self._header(name, tarfile.REGTYPE, blob.size, 0o644)
        hasher = hashlib.sha256() if blob.check else None
        left = blob.size
        with open(blob.path, "rb") as f:
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break
                if hasher is not None:
                    hasher.update(chunk)
                self._write(chunk)
                left -= len(chunk)
        # The header is out already: a blob that changed size or content can only fail here.
        if left or (hasher is not None and "sha256:" + hasher.hexdigest() != blob.check):
            raise _corrupt_store(blob.check or blob.digest)
        self._pad(blob.size)

    def close(self) -> None:
        self._write(bytes(2 * _BLOCK))
        if self._written % _RECORD:
            self._write(bytes(_RECORD - self._written % _RECORD))
        self._out.flush()


def _corrupt_store(digest: str) -> SouteError:
    return SouteError(f"blob {digest} in the store is damaged or missing",
                      hint="run 'soute fsck', then pull or load the image again")


# ============================================================================ load


@dataclass
class _Layer:
    """A member read into an uncommitted blob writer, as an uncompressed layer."""

    name: str
    diff_id: str  # sha256 of the uncompressed content
    size: int  # uncompressed
    raw_digest: str  # sha256 of the member as it is in the archive
    raw_size: int
    writer: BlobWriter | None  # None: the store had this content already
    error: str | None = None  # why it could not be decompressed


@dataclass
class _Planned:
    config: bytes
    layers: list[tuple[str, _Layer | None]]  # (diff_id, spooled layer or None if in store)
    tags: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)


def load(store: Store, stream: BinaryIO) -> list[LoadedImage]:
    """Add the images of a docker or OCI archive read from ``stream`` (see the module
    docstring); returns them in archive order with their tags.

    Raises :class:`SouteError` for anything that is not a complete, consistent archive; the
    store is then unchanged (but for files in ``tmp/``, removed here or by ``prune``).
    """
    _raise_fd_limit()
    with store.session(), ExitStack() as cleanup:
        reader = _ArchiveReader(store, cleanup)
        reader.read(stream)
        if "manifest.json" in reader.files:
            planned = reader.plan_docker()
        elif "index.json" in reader.files:
            planned = reader.plan_oci()
        else:
            raise SouteError("not a docker or OCI image archive: it has no manifest.json or "
                             "index.json", hint=_LOAD_HINT)

        # Everything is verified: publish the layers, then the images.
        committed: set[int] = set()
        for plan in planned.values():
            for _, layer in plan.layers:
                if layer is not None and layer.writer is not None and id(layer) not in committed:
                    layer.writer.commit()
                    committed.add(id(layer))
        loaded: list[LoadedImage] = []
        for plan in planned.values():
            sizes = [(d, layer.size if layer else store.layer_size(d)) for d, layer in plan.layers]
            image = store.add_image(plan.config, sizes, tags=plan.tags,
                                    manifest_annotations=plan.annotations or None)
            loaded.append(LoadedImage(image, tuple(plan.tags)))
        return loaded


class _Broken(SouteError):
    """The archive stream itself cannot be read (as opposed to one member in it)."""


class _Source(io.RawIOBase):
    """The decompressed archive, its read errors turned into :class:`_Broken`."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._inner.readinto(buffer)  # type: ignore[attr-defined,no-any-return]
        except SouteError as err:
            raise _Broken(f"the archive is truncated or corrupt: {err.message}",
                          hint=_CORRUPT_HINT) from err
        except OSError as err:
            raise _Broken(f"cannot read the archive: {err}") from err


class _ArchiveReader:
    def __init__(self, store: Store, cleanup: ExitStack) -> None:
        self.store = store
        self.cleanup = cleanup
        self.files: dict[str, bytes | _Layer] = {}
        self.links: dict[str, str] = {}  # symlink or hardlink -> archive path it names
        self._json_bytes = 0

    # ------------------------------------------------------------------ reading the tar

    def read(self, stream: BinaryIO) -> None:
        from soute.layer import open_decompressed

        try:
            source = _Forward(io.BufferedReader(_Source(open_decompressed(stream)), _CHUNK))
        except SouteError as err:
            raise SouteError(f"cannot read the archive: {err.message}") from err
        try:
            # Closed by the with below; an error opening it means "not a tar" and is told apart.
            # Not tarfile's stream mode ("r|"), whose buffering copies every byte several
            # times: a reader that only seeks forward is enough for iterating in order.
            tar = tarfile.TarFile(fileobj=source, mode="r")  # type: ignore[arg-type]
        except tarfile.TarError as err:
            raise SouteError(f"not a docker or OCI image archive: not a tar file ({err})",
                             hint=_LOAD_HINT) from None
        try:
            with tar:
                for member in tar:
                    name = _clean(member.name)
                    if not name:
                        continue
                    if member.isreg():
                        data = tar.extractfile(member)
                        assert data is not None  # a regular file always has data
                        self.files[name] = self._member(name, data, member.size)
                        self.links.pop(name, None)
                    elif member.issym() or member.islnk():
                        # A symlink is relative to its directory, a hardlink to the root.
                        here = posixpath.dirname(name) if member.issym() else ""
                        self.links[name] = _clean(posixpath.join(here, member.linkname))
                        self.files.pop(name, None)
                # Read what follows the end of the tar (padding) so a writer feeding a pipe
                # does not fail on a closed one; its content was not needed and is not checked.
                with suppress(SouteError):
                    while source.read(_CHUNK):
                        pass
        except tarfile.TarError as err:
            raise SouteError(f"the archive is truncated or corrupt: {err}",
                             hint=_CORRUPT_HINT) from None

    def _member(self, name: str, data: IO[bytes], size: int) -> bytes | _Layer:
        head = _read_exactly(data, min(size, _BLOCK))
        base = posixpath.basename(name)
        looks_json = head.lstrip()[:1] in (b"{", b"[")
        if size <= _JSON_LIMIT and (looks_json or base in _JSON_NAMES or base.endswith(".json")):
            self._json_bytes += size
            if self._json_bytes > _JSON_BUDGET:
                raise SouteError("the archive holds more than 256 MiB of JSON documents",
                                 hint="it is not an image archive, or a hostile one")
            return head + _read_exactly(data, size - len(head))
        return self._spool(name, head, data)

    def _spool(self, name: str, head: bytes, data: IO[bytes]) -> _Layer:
        """Read a member into a blob writer as an uncompressed layer, learning its digests."""
        from soute.layer import detect, open_decompressed

        kind = detect(head)
        claim = _claimed_digest(name)
        blobs = self.store.blobs
        if kind == "tar" and claim is not None and blobs.has(claim):
            # Named by the digest of content we hold already: no need to store it again (a
            # member lying about its name cannot hurt, the store's blob is the real content).
            size = blobs.size(claim)
            return _Layer(name, claim, size, claim, size, None)
        writer = self.cleanup.enter_context(blobs.writer())
        raw = _HashingReader(_Prefixed(head, data))
        if kind == "tar":
            while chunk := raw.read(_CHUNK):
                writer.write(chunk)
            digest = raw.digest()
            return _Layer(name, digest, raw.size, digest, raw.size, writer)
        plain = hashlib.sha256()
        error = None
        try:
            with open_decompressed(raw) as layer:  # type: ignore[arg-type]
                while chunk := layer.read(_CHUNK):
                    plain.update(chunk)
                    writer.write(chunk)
        except (_Broken, tarfile.TarError):
            raise
        except SouteError as err:
            error = err.message
            writer.abort()
        while raw.read(_CHUNK):  # the rest of the member, for its digest
            pass
        return _Layer(name, "sha256:" + plain.hexdigest(), writer.size, raw.digest(),
                      raw.size, None if error else writer, error)

    # ------------------------------------------------------------------ looking things up

    def resolve(self, path: str) -> str:
        """``path`` with the archive's symlinks and hardlinks followed (the archive is the
        root: ``..`` stops there)."""
        todo = [p for p in _clean(path).split("/") if p]
        done: list[str] = []
        hops = 0
        while todo:
            done.append(todo.pop(0))
            target = self.links.get("/".join(done))
            if target is not None:
                hops += 1
                if hops > _MAX_LINKS:
                    raise SouteError(f"{path}: too many levels of links in the archive",
                                     hint=_CORRUPT_HINT)
                todo = [p for p in target.split("/") if p] + todo
                done = []
        return "/".join(done)

    def lookup(self, path: str) -> bytes | _Layer | None:
        return self.files.get(self.resolve(path))

    def document(self, path: str, what: str) -> bytes:
        entry = self.lookup(path)
        if entry is None:
            raise SouteError(f"{what} {path} is missing from the archive", hint=_CORRUPT_HINT)
        if not isinstance(entry, bytes):
            raise SouteError(f"{what} {path} in the archive is not a JSON document of at most "
                             "16 MiB", hint=_CORRUPT_HINT)
        return entry

    def layer(self, path: str, position: int, diff_id: str) -> _Layer | None:
        """The spooled layer at ``path``, checked against the config's ``diff_id``; None when
        the archive lacks it but the store has it (docker load reuses layers it has)."""
        entry = self.lookup(path)
        if entry is None:
            if self.store.has_layer(diff_id):
                return None
            raise SouteError(f"layer {position} ({path}) is missing from the archive",
                             hint=_CORRUPT_HINT)
        if isinstance(entry, bytes):  # a tiny layer that looked like JSON
            entry = self._spool(path, entry[:_BLOCK], io.BytesIO(entry[_BLOCK:]))
            self.files[self.resolve(path)] = entry
        if entry.error is not None:
            raise SouteError(f"layer {position} ({path}) cannot be read: {entry.error}",
                             hint=_CORRUPT_HINT)
        if entry.diff_id != diff_id:
            raise SouteError(
                f"layer {position} ({path}) does not match the image config: its content is "
                f"{entry.diff_id}, the config expects {diff_id}", hint=_CORRUPT_HINT)
        return entry

    # ------------------------------------------------------------------ docker archives

    def plan_docker(self) -> dict[str, _Planned]:
        try:
            items = json.loads(self.document("manifest.json", "manifest"))
        except ValueError as err:
            raise SouteError(f"manifest.json in the archive is not valid JSON: {err}",
                             hint=_CORRUPT_HINT) from None
        if not isinstance(items, list):
            raise SouteError("manifest.json in the archive must be a list of images",
                             hint=_CORRUPT_HINT)
        planned: dict[str, _Planned] = {}
        for n, item in enumerate(items, 1):
            where = f"manifest.json entry {n}"
            if not isinstance(item, dict):
                raise SouteError(f"{where} is not an object", hint=_CORRUPT_HINT)
            config_path = item.get("Config")
            layer_paths = item.get("Layers") or []
            repo_tags = item.get("RepoTags") or []
            if not isinstance(config_path, str) or not _str_list(layer_paths) \
                    or not _str_list(repo_tags):
                raise SouteError(f"{where} needs Config (a path), Layers and RepoTags (lists of "
                                 "strings)", hint=_CORRUPT_HINT)
            config = self.document(config_path, "image config")
            diff_ids = _diff_ids(config, f"image config {config_path}")
            if len(layer_paths) != len(diff_ids):
                raise SouteError(f"{where} lists {len(layer_paths)} layers but its config has "
                                 f"{len(diff_ids)}", hint=_CORRUPT_HINT)
            layers = [(d, self.layer(p, i, d))
                      for i, (p, d) in enumerate(zip(layer_paths, diff_ids, strict=True), 1)]
            tags = []
            for tag in repo_tags:
                try:
                    tags.append(full_tag(tag))
                except SouteError as err:
                    raise SouteError(f"{where}: invalid tag {tag!r}: {err.message}",
                                     hint=_CORRUPT_HINT) from None
            _merge(planned, config, layers, tags, {})
        return planned

    # ------------------------------------------------------------------ OCI layouts

    def blob(self, desc: Descriptor, what: str) -> bytes:
        path = _descriptor_path(desc)
        data = self.document(path, what)
        if len(data) != desc.size or _sha256(data) != desc.digest:
            raise SouteError(f"{what} {desc.digest} in the archive does not match its digest "
                             "or size", hint=_CORRUPT_HINT)
        return data

    def plan_oci(self) -> dict[str, _Planned]:
        index = _parse(Index.from_json, self.document("index.json", "index"), "index.json")
        planned: dict[str, _Planned] = {}
        skipped = 0
        for top in index.manifests:
            desc = self._pick(top, 0)
            if desc is None:
                skipped += 1
                continue
            manifest = _parse(Manifest.from_json, self.blob(desc, "manifest"),
                              f"manifest {desc.digest}")
            if not manifest.is_image:
                continue  # an artifact: nothing to run
            config = self.blob(manifest.config, "image config")
            diff_ids = _diff_ids(config, f"image config {manifest.config.digest}")
            if len(manifest.layers) != len(diff_ids):
                raise SouteError(f"manifest {desc.digest} lists {len(manifest.layers)} layers "
                                 f"but its config has {len(diff_ids)}", hint=_CORRUPT_HINT)
            layers = []
            for i, (ld, diff_id) in enumerate(zip(manifest.layers, diff_ids, strict=True), 1):
                if ld.media_type not in mt.LAYER_TYPES:
                    raise SouteError(f"layer {i} of manifest {desc.digest} has media type "
                                     f"{ld.media_type}, not a layer", hint=_CORRUPT_HINT)
                path = _descriptor_path(ld)
                layer = self.layer(path, i, diff_id)
                if layer is not None and (layer.raw_digest, layer.raw_size) != (ld.digest,
                                                                                 ld.size):
                    raise SouteError(f"layer {i} ({path}) does not match its digest or size in "
                                     "the manifest", hint=_CORRUPT_HINT)
                layers.append((diff_id, layer))
            _merge(planned, config, layers, _oci_tags(top.annotations), manifest.annotations)
        if not planned and skipped:
            raise SouteError(f"the archive holds no image for {Platform.host()}",
                             hint="load it on a machine of the image's platform")
        return planned

    def _pick(self, desc: Descriptor, depth: int) -> Descriptor | None:
        """The image manifest ``desc`` leads to on this host: indexes resolved to the host's
        platform (as docker pull picks), other platforms and unknown types skipped."""
        if desc.media_type in mt.INDEX_TYPES:
            if depth >= _MAX_INDEX_DEPTH:
                raise SouteError("the archive's indexes nest too deep", hint=_CORRUPT_HINT)
            child = _parse(Index.from_json, self.blob(desc, "index"), f"index {desc.digest}")
            return self._pick(child.select(), depth + 1)
        if desc.media_type in mt.MANIFEST_TYPES:
            if desc.platform is not None and Platform.host().rank(desc.platform) is None:
                return None
            return desc
        return None


def _merge(
    planned: dict[str, _Planned],
    config: bytes,
    layers: list[tuple[str, _Layer | None]],
    tags: list[str],
    annotations: dict[str, str],
) -> None:
    image_id = _sha256(config)
    plan = planned.setdefault(image_id, _Planned(config, layers, annotations=annotations))
    for tag in tags:
        if tag not in plan.tags:
            plan.tags.append(tag)


def _oci_tags(annotations: dict[str, str]) -> list[str]:
    """The name an index entry gives: containerd's full name, else ``ref.name`` when it is a
    reference (skopeo's ``NAME:TAG``, umoci's ``NAME``); docker 25's bare tag comes with
    containerd's name."""
    for key in (CONTAINERD_NAME, REF_NAME):
        value = annotations.get(key)
        if value:
            try:
                return [full_tag(value)]
            except SouteError:
                continue
    return []


def _diff_ids(config: bytes, where: str) -> list[str]:
    try:
        doc = json.loads(config)
    except ValueError as err:
        raise SouteError(f"{where} is not valid JSON: {err}", hint=_CORRUPT_HINT) from None
    rootfs = doc.get("rootfs") if isinstance(doc, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" \
            or not isinstance(diff_ids, list | None):
        raise SouteError(f"{where} has no rootfs of type layers", hint=_CORRUPT_HINT)
    for d in diff_ids or []:
        if not _is_sha256(d):
            raise SouteError(f"{where} has an invalid DiffID {d!r}", hint=_CORRUPT_HINT)
    return list(diff_ids or [])


def _parse(read: Any, data: bytes, where: str) -> Any:
    try:
        return read(data)
    except SouteError as err:
        raise SouteError(f"{where} in the archive is invalid: {err.message}",
                         hint=_CORRUPT_HINT) from None


def _descriptor_path(desc: Descriptor) -> str:
    alg, _, encoded = desc.digest.partition(":")
    if alg != "sha256":
        raise SouteError(f"digest algorithm {alg} is not supported", hint="use sha256 digests")
    return f"blobs/{alg}/{encoded}"


# ============================================================================ helpers


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.partition(":")[2]


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _clean(name: str) -> str:
    """An archive path relative to the archive's root, ``.``/``..``/``//`` folded away."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _is_sha256(value: object) -> bool:
    return (isinstance(value, str) and value.startswith("sha256:") and len(value) == 71
            and set(value[7:]) <= _HEX)


def _claimed_digest(name: str) -> str | None:
    """``sha256:<hex>`` when a member's file name is a digest (``blobs/sha256/<hex>``,
    skopeo's ``<hex>.tar``)."""
    digest = "sha256:" + posixpath.basename(name).removesuffix(".tar")
    return digest if _is_sha256(digest) else None


def _read_exactly(f: IO[bytes], n: int) -> bytes:
    parts = []
    while n > 0:
        chunk = f.read(min(n, _CHUNK))
        if not chunk:
            raise tarfile.ReadError("unexpected end of data")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _raise_fd_limit() -> None:
    """Each spooled layer holds a file open until the end: lift the soft limit as Go does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft != resource.RLIM_INFINITY and soft < want:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class _Prefixed:
    """``head``, then the rest of ``rest``."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if 0 <= size < len(self._head):
            data, self._head = self._head[:size], self._head[size:]
            return data
        data, self._head = self._head, b""
        return data


class _Forward:
    """A stream that can seek forward (by reading) but never back: what
    :class:`tarfile.TarFile` needs to read members one after another from a pipe."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._pos + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._pos:
            raise tarfile.ReadError("the archive must be read in order")
        while self._pos < target:
            if not self.read(min(_CHUNK, target - self._pos)):
                break  # tarfile reports the missing data when it reads
        return self._pos


class _HashingReader:
    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._inner.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class _HashingWriter:
    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._inner.write(data)

    def flush(self) -> None:
        self._inner.flush()

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

