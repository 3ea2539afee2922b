"""Descriptors, image manifests and indexes, OCI and Docker schema2, and conversion between them.

Serialisation: :meth:`Manifest.to_json` and :meth:`Index.to_json` write what BuildKit writes,
``json.MarshalIndent(m, "", "  ")`` of the image-spec structs (fields in struct order, map keys
sorted, Go's string escapes), so the same manifest gets the same digest. Always hash the bytes
you store or push: a manifest that was read keeps its digest only as the bytes it came in.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from soute.errors import SouteError
from soute.image import gojson
from soute.image import mediatypes as mt
from soute.image.digest import EMPTY_JSON, EMPTY_JSON_DIGEST, is_digest, sha256_digest
from soute.image.model import (
    JSONObject,
    get_int,
    get_obj,
    get_obj_list,
    get_str,
    get_str_list,
    get_str_map,
    invalid,
    sorted_map,
)
from soute.image.platforms import Platform


@dataclass
class Descriptor(JSONObject):
    """A reference to content: its media type, digest and size, plus optional extras."""

    KEYS: ClassVar[tuple[str, ...]] = (
        "mediaType",
        "digest",
        "size",
        "urls",
        "annotations",
        "data",
        "platform",
        "artifactType",
    )
    WHAT: ClassVar[str] = "descriptor"

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: list[str] = field(default_factory=list)
    data: bytes | None = None
    artifact_type: str = ""

    @classmethod
    def _decode(cls, known: dict[str, Any], where: str) -> Self:
        digest = get_str(known, "digest", where)
        if not is_digest(digest):
            raise invalid(where, f"digest {digest!r} is not algorithm:encoded")
        size = get_int(known, "size", where, default=-1)
        if size < 0:
            raise invalid(where, "size is missing or negative")
        data = None
        if "data" in known:
            try:
                data = base64.b64decode(get_str(known, "data", where), validate=True)
            except binascii.Error:
                raise invalid(where, "data is not base64") from None
        return cls(
            media_type=get_str(known, "mediaType", where),
            digest=digest,
            size=size,
            annotations=get_str_map(known, "annotations", where),
            platform=get_obj(known, "platform", where, Platform.from_dict),
            urls=get_str_list(known, "urls", where),
            data=data,
            artifact_type=get_str(known, "artifactType", where),
        )

    def _known(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = sorted_map(self.annotations)
        if self.data:
            out["data"] = base64.b64encode(self.data).decode()
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def of(cls, media_type: str, blob: bytes, **kwargs: Any) -> Descriptor:
        """The descriptor of ``blob`` (sha256)."""
        return cls(media_type, sha256_digest(blob), len(blob), **kwargs)

    @classmethod
    def empty(cls) -> Descriptor:
        """The OCI empty descriptor: ``{}`` inline, for configs of artifacts."""
        return cls(mt.OCI_EMPTY, EMPTY_JSON_DIGEST, len(EMPTY_JSON), data=EMPTY_JSON)


def _with_type(d: Descriptor, media_type: str) -> Descriptor:
    out = Descriptor.from_dict(d.to_dict())
    out.media_type = media_type
    return out


@dataclass
class Manifest(JSONObject):
    """An image manifest, OCI (``application/vnd.oci.image.manifest.v1+json``) or Docker
    schema2 (``application/vnd.docker.distribution.manifest.v2+json``)."""

    KEYS: ClassVar[tuple[str, ...]] = (
        "schemaVersion",
        "mediaType",
        "artifactType",
        "config",
        "layers",
        "subject",
        "annotations",
    )
    WHAT: ClassVar[str] = "image manifest"
    # Always written: AWS ECR refuses OCI manifests without it.
    ALWAYS: ClassVar[frozenset[str]] = frozenset({"mediaType"})

    config: Descriptor
    layers: list[Descriptor] = field(default_factory=list)
    media_type: str = mt.OCI_MANIFEST
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str = ""
    schema_version: int = 2

    @classmethod
    def _decode(cls, known: dict[str, Any], where: str) -> Self:
        _check_schema(known, where)
        media_type = get_str(known, "mediaType", where) or mt.OCI_MANIFEST
        if media_type not in mt.MANIFEST_TYPES:
            raise invalid(where, f"media type {media_type} is not an image manifest")
        config = get_obj(known, "config", where, Descriptor.from_dict)
        if config is None:
            raise invalid(where, "config is missing")
        return cls(
            config=config,
            layers=get_obj_list(known, "layers", where, Descriptor.from_dict),
            media_type=media_type,
            annotations=get_str_map(known, "annotations", where),
            subject=get_obj(known, "subject", where, Descriptor.from_dict),
            artifact_type=get_str(known, "artifactType", where),
            schema_version=get_int(known, "schemaVersion", where),
        )

    def _known(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": self.schema_version, "mediaType": self.media_type}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["config"] = self.config.to_dict()
        out["layers"] = [layer.to_dict() for layer in self.layers]
        if self.subject is not None:
            out["subject"] = self.subject.to_dict()
        if self.annotations:
            out["annotations"] = sorted_map(self.annotations)
        return out

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        return cls.from_dict(gojson.loads(data, cls.WHAT))

    def to_json(self, *, indent: int | None = 2) -> bytes:
        """The bytes to store and push (2-space indent like BuildKit; ``indent=None``: compact)."""
        return gojson.dumpb(self.to_dict(), indent=indent)

    @property
    def is_docker(self) -> bool:
        return self.media_type == mt.DOCKER_MANIFEST

    @property
    def is_image(self) -> bool:
        """Whether this is a container image (not an artifact): its config is an image config."""
        return self.config.media_type in mt.CONFIG_TYPES

    def to_docker(self, *, uncompressed_ok: bool = False) -> Manifest:
        """The Docker schema2 form, for registries and engines that refuse OCI types.

        Media types are mapped (:func:`soute.image.mediatypes.to_docker`); schema2 has no
        annotations, so they are dropped. Artifacts, ``subject``, and zstd (or, unless
        ``uncompressed_ok``, plain tar) layers have no Docker form: SouteError.
        """
        if self.is_docker:
            return self
        if not self.is_image:
            raise SouteError(
                f"cannot convert an artifact (config {self.config.media_type}) to Docker schema2"
            )
        if self.subject is not None or self.artifact_type:
            raise SouteError(
                "cannot convert a manifest with a subject or artifactType to Docker schema2"
            )
        return Manifest(
            config=_docker_descriptor(self.config, mt.DOCKER_CONFIG),
            layers=[
                _docker_descriptor(
                    layer, mt.to_docker(layer.media_type, uncompressed_ok=uncompressed_ok)
                )
                for layer in self.layers
            ],
            media_type=mt.DOCKER_MANIFEST,
        )

    def to_oci(self) -> Manifest:
        """The OCI form of a Docker schema2 manifest (media types mapped, nothing lost)."""
        if not self.is_docker:
            return self
        return Manifest(
            config=_with_type(self.config, mt.to_oci(self.config.media_type)),
            layers=[_with_type(layer, mt.to_oci(layer.media_type)) for layer in self.layers],
            media_type=mt.OCI_MANIFEST,
        )


def _docker_descriptor(d: Descriptor, media_type: str) -> Descriptor:
    # distribution's schema2 descriptors carry urls (foreign layers) but no annotations.
    return Descriptor(media_type, d.digest, d.size, urls=list(d.urls))


@dataclass
class Index(JSONObject):
    """An image index (OCI) or manifest list (Docker)."""

    KEYS: ClassVar[tuple[str, ...]] = (
        "schemaVersion",
        "mediaType",
        "artifactType",
        "manifests",
        "subject",
        "annotations",
    )
    WHAT: ClassVar[str] = "image index"
    ALWAYS: ClassVar[frozenset[str]] = frozenset({"mediaType"})

    manifests: list[Descriptor] = field(default_factory=list)
    media_type: str = mt.OCI_INDEX
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str = ""
    schema_version: int = 2

    @classmethod
    def _decode(cls, known: dict[str, Any], where: str) -> Self:
        _check_schema(known, where)
        media_type = get_str(known, "mediaType", where) or mt.OCI_INDEX
        if media_type not in mt.INDEX_TYPES:
            raise invalid(where, f"media type {media_type} is not an index")
        return cls(
            manifests=get_obj_list(known, "manifests", where, Descriptor.from_dict),
            media_type=media_type,
            annotations=get_str_map(known, "annotations", where),
            subject=get_obj(known, "subject", where, Descriptor.from_dict),
            artifact_type=get_str(known, "artifactType", where),
            schema_version=get_int(known, "schemaVersion", where),
        )

    def _known(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": self.schema_version, "mediaType": self.media_type}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["manifests"] = [m.to_dict() for m in self.manifests]
        if self.subject is not None:
            out["subject"] = self.subject.to_dict()
        if self.annotations:
            out["annotations"] = sorted_map(self.annotations)
        return out

    @classmethod
    def from_json(cls, data: bytes | str) -> Index:
        return cls.from_dict(gojson.loads(data, cls.WHAT))

    def to_json(self, *, indent: int | None = 2) -> bytes:
        return gojson.dumpb(self.to_dict(), indent=indent)

    @property
    def is_docker(self) -> bool:
        return self.media_type == mt.DOCKER_MANIFEST_LIST

    def candidates(self, platform: Platform | None = None) -> list[Descriptor]:
        """The manifests that run on ``platform`` (default: the host), best first, as docker's
        pull orders them: by the platform's preference, ties in index order, entries without a
        platform last. Entries that are not manifests or indexes are skipped."""
        want = platform if platform is not None else Platform.host()
        ranked: list[tuple[tuple[int, int], int, Descriptor]] = []
        for i, desc in enumerate(self.manifests):
            if desc.media_type not in mt.MANIFEST_TYPES | mt.INDEX_TYPES:
                continue
            if desc.platform is None:
                ranked.append(((1 << 30, 0), i, desc))
                continue
            rank = want.rank(desc.platform)
            if rank is not None:
                # Same rank: the entry needing more OS features first (containerd's Less).
                ranked.append(((rank, -len(desc.platform.os_features)), i, desc))
        ranked.sort(key=lambda r: (r[0], r[1]))
        return [desc for _, _, desc in ranked]

    def select(self, platform: Platform | None = None) -> Descriptor:
        """The manifest docker would pull for ``platform`` (default: the host)."""
        found = self.candidates(platform)
        if not found:
            want = platform if platform is not None else Platform.host()
            have = ", ".join(sorted({str(d.platform) for d in self.manifests if d.platform}))
            raise SouteError(
                f"no matching manifest for {want} in the manifest list entries",
                hint=f"the image has {have}" if have else "the index lists no platforms",
            )
        return found[0]

    def to_docker(self) -> Index:
        """The Docker manifest list form: child types mapped (the children must be converted
        too), annotations dropped (manifest lists have none)."""
        if self.is_docker:
            return self
        if self.subject is not None or self.artifact_type:
            raise SouteError(
                "cannot convert an index with a subject or artifactType to a Docker manifest list"
            )
        children = []
        for m in self.manifests:
            d = Descriptor(mt.to_docker(m.media_type), m.digest, m.size, urls=list(m.urls))
            d.platform = Platform.from_dict(m.platform.to_dict()) if m.platform else None
            children.append(d)
        return Index(manifests=children, media_type=mt.DOCKER_MANIFEST_LIST)

    def to_oci(self) -> Index:
        if not self.is_docker:
            return self
        return Index(
            manifests=[_with_type(m, mt.to_oci(m.media_type)) for m in self.manifests],
            media_type=mt.OCI_INDEX,
        )


def _check_schema(known: dict[str, Any], where: str) -> None:
    version = get_int(known, "schemaVersion", where)
    if version == 1:
        raise SouteError(
            "Docker schema 1 manifests are not supported",
            hint="push the image again with a current client to get schema 2",
        )
    if version != 2:
        raise invalid(where, f"schemaVersion must be 2, not {version}")


def parse_manifest(data: bytes | str, media_type: str | None = None) -> Manifest | Index:
    """Read a manifest or index whose kind is given by ``media_type`` (a Content-Type, its
    parameters ignored), else by its ``mediaType``, else by its shape."""
    doc = gojson.loads(data, "manifest")
    if not isinstance(doc, dict):
        raise invalid("manifest", "must be a JSON object")
    kind = (media_type or "").split(";")[0].strip()
    if kind in ("", "application/json", "application/octet-stream", "text/plain"):
        declared = doc.get("mediaType")
        kind = declared if isinstance(declared, str) else ""
    if kind in (mt.DOCKER_MANIFEST_V1, mt.DOCKER_MANIFEST_V1_SIGNED):
        mt.to_oci(kind)  # raises the schema 1 error
    reader: Callable[[Any], Manifest | Index]
    if kind in mt.INDEX_TYPES or (not kind and "manifests" in doc):
        reader = Index.from_dict
    elif kind in mt.MANIFEST_TYPES or (not kind and "config" in doc):
        reader = Manifest.from_dict
    else:
        raise SouteError(f"unsupported manifest media type {kind or '(none)'}")
    return reader(doc)
