"""Media types of OCI and Docker schema2 images, and the mapping between the two families."""

from __future__ import annotations

from soute.errors import SouteError

# OCI (image-spec media-types.md)
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"
OCI_DESCRIPTOR = "application/vnd.oci.descriptor.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

# Docker schema2 (distribution manifest-v2-2.md)
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
# Not in distribution's spec, but containerd and containers/image use it for plain tar layers.
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
# Schema 1 is only recognised, to refuse it with a clear message.
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

# The Accept header a puller sends: every manifest kind we read (registries hide OCI
# manifests from clients that don't list them).
ACCEPT_MANIFESTS = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])

_OCI_TO_DOCKER = {
    OCI_INDEX: DOCKER_MANIFEST_LIST,
    OCI_MANIFEST: DOCKER_MANIFEST,
    OCI_CONFIG: DOCKER_CONFIG,
    OCI_LAYER_GZIP: DOCKER_LAYER_GZIP,
    OCI_LAYER_NONDIST_GZIP: DOCKER_LAYER_FOREIGN_GZIP,
}
_DOCKER_TO_OCI = {v: k for k, v in _OCI_TO_DOCKER.items()} | {
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_FOREIGN: OCI_LAYER_NONDIST,
}

LAYER_TYPES = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_LAYER_NONDIST,
        OCI_LAYER_NONDIST_GZIP,
        OCI_LAYER_NONDIST_ZSTD,
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_FOREIGN,
        DOCKER_LAYER_FOREIGN_GZIP,
    }
)
FOREIGN_LAYER_TYPES = frozenset(
    {
        OCI_LAYER_NONDIST,
        OCI_LAYER_NONDIST_GZIP,
        OCI_LAYER_NONDIST_ZSTD,
        DOCKER_LAYER_FOREIGN,
        DOCKER_LAYER_FOREIGN_GZIP,
    }
)


def is_docker(media_type: str) -> bool:
    return media_type.startswith("application/vnd.docker.")


def layer_compression(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or ``None`` (plain tar) for a layer type; error for others."""
    if media_type not in LAYER_TYPES:
        raise SouteError(f"not a layer media type: {media_type}")
    if media_type.endswith(("+gzip", ".gzip")):
        return "gzip"
    if media_type.endswith("+zstd"):
        return "zstd"
    return None


def to_docker(media_type: str, *, uncompressed_ok: bool = False) -> str:
    """The Docker schema2 media type for an OCI one (Docker types map to themselves).

    Plain tar layers have no type in distribution's schema2 spec; with ``uncompressed_ok`` they
    get containerd's ``…rootfs.diff.tar``. zstd has no Docker type at all.
    """
    if is_docker(media_type):
        return media_type
    if media_type in _OCI_TO_DOCKER:
        return _OCI_TO_DOCKER[media_type]
    if uncompressed_ok and media_type in (OCI_LAYER, OCI_LAYER_NONDIST):
        return DOCKER_LAYER if media_type == OCI_LAYER else DOCKER_LAYER_FOREIGN
    if media_type in (OCI_LAYER, OCI_LAYER_NONDIST):
        raise SouteError(
            f"layer type {media_type} has no Docker schema2 equivalent",
            hint="compress the layer with gzip, or keep OCI media types",
        )
    if media_type in (OCI_LAYER_ZSTD, OCI_LAYER_NONDIST_ZSTD):
        raise SouteError(
            "zstd layers cannot be written with Docker media types",
            hint="recompress the layer with gzip, or keep OCI media types",
        )
    raise SouteError(f"media type {media_type} has no Docker schema2 equivalent")


def to_oci(media_type: str) -> str:
    """The OCI media type for a Docker schema2 one (OCI types map to themselves)."""
    if not is_docker(media_type):
        return media_type
    if media_type in _DOCKER_TO_OCI:
        return _DOCKER_TO_OCI[media_type]
    if media_type in (DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED):
        raise SouteError(
            "Docker schema 1 manifests are not supported",
            hint="push the image again with a current client to get schema 2",
        )
    raise SouteError(f"media type {media_type} has no OCI equivalent")
