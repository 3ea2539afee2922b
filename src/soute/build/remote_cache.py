"""The build cache shared through a registry: ``--cache-to`` and ``--cache-from``.

``soute build --cache-to type=registry,ref=R[,mode=min|max]`` sends the cache records of a
successful build, and the layers they name, to the repository of ``R`` as one manifest
(tagged with ``R``'s tag, ``latest`` by default). Another store that builds the same
Dockerfile with ``--cache-from type=registry,ref=R`` reads that manifest first; on a local
cache miss for a step whose key is recorded there, it downloads the layer (both digests
checked) and uses it as a hit: the step prints ``CACHED``, its RUN never runs, and its
history time is the record's, so both stores make the same image.

What travels is exactly what the local ``build_cache`` table holds: the step's cache key
(which chains its parent's key with the step's command, env, args and source content
digests, so it never names anything local to a store), the DiffID of the layer it made
(none for steps that changed nothing) and its history time.

The format (soute's own, modelled on BuildKit's ``application/vnd.buildkit.cacheconfig.v0``
but not that format: soute's keys are not BuildKit's, so neither could use the other's):

- an OCI image manifest (``application/vnd.oci.image.manifest.v1+json``) whose ``layers``
  are the layer blobs, compressed as ``soute push`` compresses them (gzip by default), and
  whose ``config`` is a JSON document of media type :data:`CONFIG_TYPE`::

    {"layers": [{"blob": "sha256:<compressed digest>", "diffID": "sha256:<tar digest>"}],
     "records": [{"createdAt": "2024-05-01T10:00:00.123456789Z", "key": "sha256:...",
                  "layer": 0},
                 {"createdAt": "...", "key": "sha256:..."}],
     "version": 1}

  ``layer`` indexes ``layers`` and is absent for a step that made no layer; every ``blob``
  is one of the manifest's layers (which give its media type and size). The document is
  compact JSON with sorted keys, records in build order, so the same build exports the same
  bytes.
- ``mode=min`` (the default) exports the steps of the final stage (and of the stages it is
  built ``FROM``); ``mode=max`` the steps of every stage the build ran.

Failures to import only warn (``importing cache manifest from R failed: ...``) and the build
goes on without that cache; a layer that cannot be downloaded or does not match its digests
is refused with a warning and the step runs. A failed export fails the build, as BuildKit's,
unless ``ignore-error=true``. ``--no-cache`` ignores imported records as it ignores local
ones. Only ``type=registry`` exists: BuildKit's ``inline`` (records inside the image config)
and its other stores are refused.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from soute.errors import SouteError

if TYPE_CHECKING:
    from soute.dockerfile.instructions import Stage
    from soute.dockerfile.stages import BuildScope
    from soute.image.manifest import Descriptor, Manifest
    from soute.image.reference import Reference
    from soute.registry.config import RegistrySettings
    from soute.store.store import Store

CONFIG_TYPE = "application/vnd.soute.buildcache.config.v1+json"
BUILDKIT_CONFIG_TYPE = "application/vnd.buildkit.cacheconfig.v0"
FORMAT_VERSION = 1
MAX_CONFIG = 8 << 20  # a cache config is read into memory
_TYPES = ("registry",)
# BuildKit attributes that say how to write what soute always writes one way.
_IGNORED = frozenset({"image-manifest", "oci-mediatypes"})


class _Progress(Protocol):
    def step(self, title: str) -> None: ...
    def say(self, line: str) -> None: ...
    def output(self, line: str) -> None: ...
    def done(self) -> None: ...


# ---------------------------------------------------------------------------- options


@dataclass(frozen=True)
class CacheSpec:
    """One ``--cache-from`` or ``--cache-to``."""

    ref: Reference
    mode: str = "min"  # export: min or max
    ignore_error: bool = False  # export: a failure only warns
    compression: str = "gzip"  # export: gzip or zstd

    @property
    def tag(self) -> str:
        return self.ref.tag or "latest"


def parse_cache_spec(value: str, *, export: bool) -> CacheSpec:
    """docker buildx's ``type=registry,ref=R[,mode=max]`` (CSV fields); a value without
    ``=`` is a registry ref."""
    from soute.image.reference import parse_reference

    flag = "--cache-to" if export else "--cache-from"
    fields: dict[str, str] = {}
    if "=" not in value:
        fields = {"type": "registry", "ref": value}
    else:
        for item in next(csv.reader([value]), []):
            key, sep, val = item.partition("=")
            key = key.strip().lower()
            if not sep or not key:
                raise SouteError(f"invalid {flag} {value!r}: {item!r} is not KEY=VALUE",
                                 f"write {flag} type=registry,ref=REGISTRY/REPO[:TAG]")
            fields[key] = val.strip()
    kind = fields.pop("type", "")
    if not kind:
        raise SouteError(f"invalid {flag} {value!r}: type required",
                         f"write {flag} type=registry,ref=REGISTRY/REPO[:TAG]")
    if kind == "inline":
        raise SouteError(f"{flag} type 'inline' is not supported by soute",
                         "soute keeps its cache in a manifest of its own: use "
                         "type=registry,ref=REGISTRY/REPO[:TAG]")
    if kind not in _TYPES:
        raise SouteError(f"{flag} type {kind!r} is not supported by soute",
                         "use type=registry,ref=REGISTRY/REPO[:TAG]")
    ref_text = fields.pop("ref", "")
    if not ref_text:
        raise SouteError(f"invalid {flag} {value!r}: ref required",
                         f"write {flag} type=registry,ref=REGISTRY/REPO[:TAG]")
    ref = parse_reference(ref_text).docker_ref()
    mode = fields.pop("mode", "") or "min"
    ignore = fields.pop("ignore-error", "") or "false"
    compression = fields.pop("compression", "") or "gzip"
    for key in _IGNORED:
        fields.pop(key, None)
    if fields:
        raise SouteError(f"invalid {flag} {value!r}: unknown option {sorted(fields)[0]!r}",
                         "the options are type, ref, mode, compression and ignore-error")
    if export:
        if ref.digest is not None:
            raise SouteError(f"invalid --cache-to ref {ref_text!r}: a digest names content, "
                             "not a tag to write", "give REGISTRY/REPO[:TAG]")
        if mode not in ("min", "max"):
            raise SouteError(f"invalid --cache-to mode {mode!r}", "use mode=min or mode=max")
        if ignore.lower() not in ("true", "false", "1", "0"):
            raise SouteError(f"invalid --cache-to ignore-error {ignore!r}", "use true or false")
        if compression not in ("gzip", "zstd"):
            raise SouteError(f"invalid --cache-to compression {compression!r}",
                             "use gzip or zstd")
    return CacheSpec(ref, mode, ignore.lower() in ("true", "1"), compression)


# ---------------------------------------------------------------------------- the format


@dataclass(frozen=True)
class CacheRecord:
    """A step's result: its layer (None: it changed nothing) and its history time."""

    key: str
    diff_id: str | None
    created: str
    blob: Descriptor | None = None  # imported: the compressed layer in the registry


def encode_config(records: Sequence[CacheRecord], blobs: dict[str, Descriptor]) -> bytes:
    """The cache config for ``records``; ``blobs``: the pushed blob of each DiffID."""
    layers: list[dict[str, str]] = []
    index: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for rec in records:
        entry: dict[str, Any] = {"key": rec.key, "createdAt": rec.created}
        if rec.diff_id is not None:
            if rec.diff_id not in index:
                index[rec.diff_id] = len(layers)
                layers.append({"blob": blobs[rec.diff_id].digest, "diffID": rec.diff_id})
            entry["layer"] = index[rec.diff_id]
        out.append(entry)
    doc = {"version": FORMAT_VERSION, "layers": layers, "records": out}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_config(data: bytes, manifest: Manifest) -> dict[str, CacheRecord]:
    """The records of a cache config, each with its blob from ``manifest``; SouteError
    when anything in it is malformed or inconsistent."""
    from soute.image.digest import is_digest
    from soute.image.timestamp import Timestamp

    def bad(why: str) -> SouteError:
        return SouteError(f"invalid cache config: {why}")

    try:
        doc = json.loads(data)
    except ValueError:
        raise bad("not JSON") from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("version") != FORMAT_VERSION:
        raise bad(f"version {doc.get('version')!r}, this soute reads {FORMAT_VERSION}")
    in_manifest = {d.digest: d for d in manifest.layers}
    layers: list[tuple[str, Descriptor]] = []
    for item in _list(doc, "layers", bad):
        blob, diff_id = item.get("blob"), item.get("diffID")
        if not (isinstance(diff_id, str) and diff_id.startswith("sha256:")
                and is_digest(diff_id)):
            raise bad(f"layer diffID {diff_id!r}")
        if not isinstance(blob, str) or blob not in in_manifest:
            raise bad(f"layer blob {blob!r} is not in the manifest")
        layers.append((diff_id, in_manifest[blob]))
    records: dict[str, CacheRecord] = {}
    for item in _list(doc, "records", bad):
        key, created, layer = item.get("key"), item.get("createdAt"), item.get("layer")
        if not (isinstance(key, str) and is_digest(key)):
            raise bad(f"record key {key!r}")
        if not isinstance(created, str):
            raise bad(f"record createdAt {created!r}")
        Timestamp.parse(created)  # raises on a bad time
        if layer is None:
            records.setdefault(key, CacheRecord(key, None, created))
            continue
        if not isinstance(layer, int) or isinstance(layer, bool) or \
                not 0 <= layer < len(layers):
            raise bad(f"record layer {layer!r}")
        diff_id, desc = layers[layer]
        records.setdefault(key, CacheRecord(key, diff_id, created, desc))
    return records


def _list(doc: dict[str, Any], name: str, bad: Any) -> list[dict[str, Any]]:
    items = doc.get(name) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise bad(f"{name} is not a list of objects")
    return items


def _check_manifest(data: bytes, media_type: str, ref: Reference) -> Manifest:
    """The cache manifest, or a SouteError saying what ``ref`` is instead."""
    from soute.image import mediatypes as mt
    from soute.image.manifest import Manifest, parse_manifest

    doc = parse_manifest(data, media_type)
    if not isinstance(doc, Manifest):
        if any(d.media_type == BUILDKIT_CONFIG_TYPE for d in doc.manifests):
            raise SouteError(f"{ref} is a BuildKit cache: its keys are BuildKit's, which "
                             "soute's are not")
        raise SouteError(f"{ref} is an image index, not a soute build cache")
    if doc.config.media_type == CONFIG_TYPE:
        return doc
    if doc.config.media_type == BUILDKIT_CONFIG_TYPE:
        raise SouteError(f"{ref} is a BuildKit cache: its keys are BuildKit's, which soute's "
                         "are not")
    if doc.config.media_type in mt.CONFIG_TYPES:
        raise SouteError(f"{ref} is an image, not a soute build cache (inline caches are not "
                         "supported)")
    raise SouteError(f"{ref} is not a soute build cache (its config is "
                     f"{doc.config.media_type})")


# ---------------------------------------------------------------------------- the cache


@dataclass
class _Import:
    spec: CacheSpec
    record: CacheRecord


@dataclass
class RemoteCache:
    """The imports and exports of one build. The engine calls :meth:`load` first,
    :meth:`lookup` on each local cache miss, :meth:`record` for each step's result (hit or
    not), and :meth:`export` once the image is made."""

    store: Store
    imports: Sequence[CacheSpec]
    exports: Sequence[CacheSpec]
    progress: _Progress
    settings: RegistrySettings | None = None
    stage: int = 0  # the stage being built: its records belong to it
    _found: dict[str, list[_Import]] = field(default_factory=dict)
    _built: dict[str, CacheRecord] = field(default_factory=dict)
    _stages: dict[str, set[int]] = field(default_factory=dict)

    # ------------------------------------------------------------------ import

    def load(self) -> None:
        """Read every ``--cache-from`` manifest; one that cannot be read only warns."""
        for spec in self.imports:
            self.progress.step(f"importing cache manifest from {spec.ref}")
            try:
                records = self._fetch(spec)
            except SouteError as e:
                self._warn(f"importing cache manifest from {spec.ref} failed: {e.message}")
            else:
                for key, rec in records.items():
                    self._found.setdefault(key, []).append(_Import(spec, rec))
            self.progress.done()

    def _fetch(self, spec: CacheSpec) -> dict[str, CacheRecord]:
        from soute.registry.client import Registry
        from soute.registry.pull import fetch_document, fetch_manifest

        with Registry(spec.ref.domain, settings=self.settings) as registry:
            data, media_type, _ = fetch_manifest(registry, spec.ref)
            manifest = _check_manifest(data, media_type, spec.ref)
            config = manifest.config
            if config.size > MAX_CONFIG:
                raise SouteError(f"its cache config is larger than {MAX_CONFIG >> 20} MiB")
            body = fetch_document(registry, spec.ref, config)
        return decode_config(body, manifest)

    def lookup(self, key: str, parents: Sequence[str]
               ) -> tuple[str | None, int, str | None, str] | None:
        """A hit for ``key`` from the imported caches (its layer downloaded into the store
        and recorded in the local cache), as ``cache_get`` gives one; None for a miss.
        ``parents``: the DiffIDs under the step's layer."""
        from soute.image.digest import chain_ids, short_id
        from soute.registry.client import Registry
        from soute.registry.pull import fetch_layer
        from soute.store.store import now_rfc3339

        for found in list(self._found.get(key, ())):
            spec, rec = found.spec, found.record
            if rec.diff_id is None:
                self.store.meta.cache_put(key, None, 0, None, rec.created, now_rfc3339())
                return None, 0, None, rec.created
            assert rec.blob is not None
            if not self.store.has_layer(rec.diff_id):
                self.progress.output(f"importing cache layer {rec.blob.digest} "
                                     f"({rec.blob.size} bytes) from {spec.ref}")
                try:
                    with Registry(spec.ref.domain, settings=self.settings) as registry:
                        fetch_layer(self.store, registry, spec.ref, rec.blob, rec.diff_id)
                except SouteError as e:
                    # Never again in this build: the next cache may have it, else the step runs.
                    self._found[key].remove(found)
                    self._warn(f"cache layer {short_id(rec.blob.digest)} from {spec.ref} "
                               f"refused: {e.message}")
                    continue
            size = self.store.layer_size(rec.diff_id)
            chain = chain_ids([*parents, rec.diff_id])[-1]
            self.store.meta.cache_put(key, rec.diff_id, size, chain, rec.created,
                                      now_rfc3339())
            return rec.diff_id, size, chain, rec.created
        return None

    # ------------------------------------------------------------------ export

    def record(self, key: str, diff_id: str | None, created: str) -> None:
        """A step of this build had this result (made, or reused from a cache)."""
        self._built.setdefault(key, CacheRecord(key, diff_id, created))
        self._stages.setdefault(key, set()).add(self.stage)

    def export(self, scope: BuildScope, final: Stage) -> None:
        """Send this build's records to every ``--cache-to``."""
        if not self.exports:
            return
        stages: set[int] = set()  # mode=min: the final stage and those it is FROM
        stage: Stage | None = final
        while stage is not None:
            stages.add(stage.index)
            stage = scope.resolve_base(stage).stage
        for spec in self.exports:
            records = [r for k, r in self._built.items()
                       if spec.mode == "max" or self._stages[k] & stages]
            self.progress.step("exporting cache to registry")
            if not records:  # as BuildKit: nothing is written, not even an empty manifest
                self.progress.output("skipping cache export for empty result")
                self.progress.done()
                continue
            try:
                self._push(spec, records)
            except SouteError as e:
                message = f"exporting cache to {spec.ref} failed: {e.message}"
                if not spec.ignore_error:
                    raise SouteError(message, e.hint) from None
                self._warn(message)
            self.progress.done()

    def _push(self, spec: CacheSpec, records: list[CacheRecord]) -> None:
        from soute.image.manifest import Manifest
        from soute.registry.client import Registry
        from soute.registry.push import ArtifactPusher

        diff_ids = list(dict.fromkeys(r.diff_id for r in records if r.diff_id is not None))
        self.progress.output(f"preparing build cache for export: {len(records)} records, "
                             f"{len(diff_ids)} layers")
        with Registry(spec.ref.domain, settings=self.settings) as registry:
            pusher = ArtifactPusher(self.store, registry, spec.ref,
                                    compression=spec.compression)  # type: ignore[arg-type]
            blobs = pusher.layers(diff_ids)
            for d in diff_ids:
                self.progress.output(f"writing layer {blobs[d].digest}")
            config = pusher.document(encode_config(records, blobs), CONFIG_TYPE)
            self.progress.output(f"writing config {config.digest}")
            manifest = Manifest(config=config, layers=[blobs[d] for d in diff_ids])
            digest, _ = pusher.manifest(manifest, spec.tag)
            self.progress.output(f"writing cache manifest {digest}")

    def _warn(self, text: str) -> None:
        self.progress.say(f"WARNING: {text}")
