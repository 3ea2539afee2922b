"""Descriptors, manifests and indexes: reading, writing as BuildKit does, OCI <-> schema2."""

from __future__ import annotations

import json

import pytest

from soute.errors import SouteError
from soute.image import mediatypes as mt
from soute.image.digest import sha256_digest
from soute.image.manifest import Descriptor, Index, Manifest, parse_manifest
from soute.image.platforms import Platform

CFG = "sha256:" + "c0" * 32
L1 = "sha256:" + "a1" * 32
L2 = "sha256:" + "b2" * 32
L3 = "sha256:" + "d3" * 32

# As BuildKit writes an OCI manifest: json.MarshalIndent(m, "", "  ").
BUILDKIT_OCI_MANIFEST = f"""{{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {{
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "{CFG}",
    "size": 2871
  }},
  "layers": [
    {{
      "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
      "digest": "{L1}",
      "size": 29150000
    }},
    {{
      "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
      "digest": "{L2}",
      "size": 1337
    }}
  ],
  "annotations": {{
    "org.opencontainers.image.created": "2024-01-02T03:04:05Z",
    "org.opencontainers.image.title": "app \\u0026 tools"
  }}
}}""".encode()

# As distribution's schema2 package writes one (three-space indent, size before digest).
DISTRIBUTION_SCHEMA2 = f"""{{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {{
      "mediaType": "application/vnd.docker.container.image.v1+json",
      "size": 2871,
      "digest": "{CFG}"
   }},
   "layers": [
      {{
         "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "size": 29150000,
         "digest": "{L1}"
      }},
      {{
         "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
         "size": 1337,
         "digest": "{L2}",
         "urls": [
            "https://example.com/layer.tar.gz"
         ]
      }}
   ]
}}""".encode()


def test_empty_descriptor_is_the_spec_one() -> None:
    d = Descriptor.empty()
    assert json.dumps(d.to_dict(), separators=(",", ":")) == (
        '{"mediaType":"application/vnd.oci.empty.v1+json",'
        '"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",'
        '"size":2,"data":"e30="}'
    )
    assert sha256_digest(d.data or b"") == d.digest
    assert Descriptor.from_dict(d.to_dict()) == d


def test_descriptor_of_blob() -> None:
    d = Descriptor.of(mt.OCI_CONFIG, b"{}", annotations={"b": "2", "a": "1"})
    assert d.size == 2 and d.digest == sha256_digest(b"{}")
    assert list(d.to_dict()) == ["mediaType", "digest", "size", "annotations"]
    assert list(d.to_dict()["annotations"]) == ["a", "b"]  # Go writes map keys sorted


def test_buildkit_manifest_round_trips_byte_for_byte() -> None:
    m = Manifest.from_json(BUILDKIT_OCI_MANIFEST)
    assert m.media_type == mt.OCI_MANIFEST and not m.is_docker and m.is_image
    assert [layer.size for layer in m.layers] == [29150000, 1337]
    assert m.annotations["org.opencontainers.image.title"] == "app & tools"
    assert m.to_json() == BUILDKIT_OCI_MANIFEST
    # Built from scratch, the same manifest gives the same bytes, hence the same digest.
    fresh = Manifest(
        config=Descriptor(mt.OCI_CONFIG, CFG, 2871),
        layers=[
            Descriptor(mt.OCI_LAYER_GZIP, L1, 29150000),
            Descriptor(mt.OCI_LAYER_GZIP, L2, 1337),
        ],
        annotations={
            "org.opencontainers.image.title": "app & tools",
            "org.opencontainers.image.created": "2024-01-02T03:04:05Z",
        },
    )
    assert fresh.to_json() == BUILDKIT_OCI_MANIFEST
    assert fresh == m


def test_distribution_manifest_keeps_its_key_order() -> None:
    m = Manifest.from_json(DISTRIBUTION_SCHEMA2)
    assert m.is_docker
    assert m.layers[1].urls == ["https://example.com/layer.tar.gz"]
    assert m.to_json(indent=3) == DISTRIBUTION_SCHEMA2


def test_schema2_to_oci_and_back() -> None:
    docker = Manifest.from_json(DISTRIBUTION_SCHEMA2)
    oci = docker.to_oci()
    assert oci.media_type == mt.OCI_MANIFEST
    assert oci.config.media_type == mt.OCI_CONFIG
    assert [layer.media_type for layer in oci.layers] == [
        mt.OCI_LAYER_GZIP,
        mt.OCI_LAYER_NONDIST_GZIP,
    ]
    assert [(layer.digest, layer.size) for layer in oci.layers] == [(L1, 29150000), (L2, 1337)]
    assert oci.layers[1].urls == ["https://example.com/layer.tar.gz"]
    assert json.loads(oci.to_json())["mediaType"] == mt.OCI_MANIFEST
    back = oci.to_docker()
    assert back.media_type == mt.DOCKER_MANIFEST
    assert json.loads(back.to_json()) == {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": CFG, "size": 2871},
        "layers": [
            {"mediaType": mt.DOCKER_LAYER_GZIP, "digest": L1, "size": 29150000},
            {
                "mediaType": mt.DOCKER_LAYER_FOREIGN_GZIP,
                "digest": L2,
                "size": 1337,
                "urls": ["https://example.com/layer.tar.gz"],
            },
        ],
    }
    # Conversions of a manifest already in the family are no-ops.
    assert oci.to_oci() is oci and docker.to_docker() is docker


def test_oci_to_docker_drops_annotations() -> None:
    docker = Manifest.from_json(BUILDKIT_OCI_MANIFEST).to_docker()
    doc = json.loads(docker.to_json())
    assert "annotations" not in doc
    assert doc["config"]["mediaType"] == mt.DOCKER_CONFIG
    assert {layer["mediaType"] for layer in doc["layers"]} == {mt.DOCKER_LAYER_GZIP}


def _oci_with(layer_type: str) -> Manifest:
    return Manifest(
        config=Descriptor(mt.OCI_CONFIG, CFG, 10), layers=[Descriptor(layer_type, L1, 10)]
    )


@pytest.mark.parametrize(
    ("layer_type", "message"),
    [
        (mt.OCI_LAYER_ZSTD, "zstd layers cannot be written with Docker media types"),
        (mt.OCI_LAYER_NONDIST_ZSTD, "zstd layers cannot be written with Docker media types"),
        (mt.OCI_LAYER, "has no Docker schema2 equivalent"),
        ("application/x-unknown", "has no Docker schema2 equivalent"),
    ],
)
def test_oci_to_docker_refuses(layer_type: str, message: str) -> None:
    with pytest.raises(SouteError, match=message) as info:
        _oci_with(layer_type).to_docker()
    if layer_type != "application/x-unknown":
        assert info.value.hint


def test_uncompressed_layers_with_containerd_type() -> None:
    docker = _oci_with(mt.OCI_LAYER).to_docker(uncompressed_ok=True)
    assert docker.layers[0].media_type == mt.DOCKER_LAYER
    assert docker.to_oci().layers[0].media_type == mt.OCI_LAYER


def test_artifacts_have_no_docker_form() -> None:
    artifact = Manifest(
        config=Descriptor.empty(),
        layers=[Descriptor("application/vnd.example.sbom", L1, 10)],
        artifact_type="application/vnd.example.sbom",
    )
    assert not artifact.is_image
    with pytest.raises(SouteError, match="artifact"):
        artifact.to_docker()
    signed = _oci_with(mt.OCI_LAYER_GZIP)
    signed.subject = Descriptor(mt.OCI_MANIFEST, L3, 100)
    with pytest.raises(SouteError, match="subject"):
        signed.to_docker()


def test_manifest_fields_and_unknowns() -> None:
    raw = {
        "schemaVersion": 2,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": CFG, "size": 3, "x-extra": 1},
        "layers": [],
        "subject": {"mediaType": mt.OCI_MANIFEST, "digest": L3, "size": 9},
        "artifactType": "application/vnd.example",
        "custom": {"kept": True},
    }
    m = Manifest.from_dict(raw)
    assert m.media_type == mt.OCI_MANIFEST  # absent means OCI
    assert m.config.extra == {"x-extra": 1}
    assert m.subject is not None and m.subject.digest == L3
    out = json.loads(m.to_json())
    assert out["custom"] == {"kept": True}
    assert out["config"]["x-extra"] == 1
    # mediaType is always written (ECR refuses manifests without it), in Go's struct order.
    assert list(out) == [
        "schemaVersion",
        "mediaType",
        "config",
        "layers",
        "subject",
        "artifactType",
        "custom",
    ]
    fresh = json.loads(Manifest(config=Descriptor(mt.OCI_CONFIG, CFG, 3)).to_json())
    assert fresh == {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": CFG, "size": 3},
        "layers": [],
    }


def test_edit_after_read_changes_only_the_edit() -> None:
    m = Manifest.from_json(BUILDKIT_OCI_MANIFEST)
    m.layers.append(Descriptor(mt.OCI_LAYER_GZIP, L3, 42))
    out = m.to_json().decode()
    assert out.count('"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"') == 3
    del m.annotations["org.opencontainers.image.title"]
    doc = json.loads(m.to_json())
    assert doc["annotations"] == {"org.opencontainers.image.created": "2024-01-02T03:04:05Z"}
    m.annotations.clear()
    assert "annotations" not in json.loads(m.to_json())


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"schemaVersion": 2, "layers": []}, "config is missing"),
        ({"schemaVersion": 3, "config": {}}, "schemaVersion must be 2"),
        ({"schemaVersion": 1, "name": "x", "fsLayers": []}, "schema 1 manifests are not supported"),
        (
            {"schemaVersion": 2, "config": {"mediaType": "x", "digest": "md5", "size": 1}},
            "is not algorithm:encoded",
        ),
        (
            {"schemaVersion": 2, "config": {"mediaType": "x", "digest": CFG}},
            "size is missing or negative",
        ),
        (
            {"schemaVersion": 2, "config": {"mediaType": "x", "digest": CFG, "size": -1}},
            "size is missing or negative",
        ),
        (
            {"schemaVersion": 2, "config": {"mediaType": "x", "digest": CFG, "size": "1"}},
            "size must be an integer",
        ),
        (
            {
                "schemaVersion": 2,
                "config": {"mediaType": "x", "digest": CFG, "size": 1, "data": "!!"},
            },
            "data is not base64",
        ),
        ({"schemaVersion": 2, "config": [], "layers": []}, "must be a JSON object"),
        ({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "config": {}}, "is not an image manifest"),
        (
            {
                "schemaVersion": 2,
                "config": {"mediaType": "x", "digest": CFG, "size": 1},
                "layers": {},
            },
            "layers must be an array",
        ),
    ],
)
def test_manifest_errors(doc: dict[str, object], message: str) -> None:
    with pytest.raises(SouteError, match=message):
        Manifest.from_dict(doc)


def test_nulls_are_absent() -> None:
    m = Manifest.from_dict(
        {
            "schemaVersion": 2,
            "mediaType": None,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": CFG, "size": 1, "urls": None},
            "layers": None,
            "annotations": None,
        }
    )
    assert m.layers == [] and m.annotations == {} and m.media_type == mt.OCI_MANIFEST
    assert m.config.urls == []


# --- indexes ---------------------------------------------------------------------------------

DOCKER_LIST = {
    "schemaVersion": 2,
    "mediaType": mt.DOCKER_MANIFEST_LIST,
    "manifests": [
        {
            "mediaType": mt.DOCKER_MANIFEST,
            "size": 528,
            "digest": L1,
            "platform": {"architecture": "amd64", "os": "linux"},
        },
        {
            "mediaType": mt.DOCKER_MANIFEST,
            "size": 529,
            "digest": L2,
            "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
        },
    ],
}


def test_manifest_list_to_oci_index_and_back() -> None:
    lst = Index.from_dict(DOCKER_LIST)
    assert lst.is_docker
    assert lst.to_dict() == DOCKER_LIST
    oci = lst.to_oci()
    assert oci.media_type == mt.OCI_INDEX
    assert [m.media_type for m in oci.manifests] == [mt.OCI_MANIFEST, mt.OCI_MANIFEST]
    assert str(oci.manifests[1].platform) == "linux/arm/v7"
    assert oci.select(Platform.parse("linux/arm/v7")).digest == L2
    oci.annotations["org.opencontainers.image.ref.name"] = "v1"
    back = oci.to_docker()
    doc = json.loads(back.to_json())
    assert doc["mediaType"] == mt.DOCKER_MANIFEST_LIST and "annotations" not in doc
    assert [m["mediaType"] for m in doc["manifests"]] == [mt.DOCKER_MANIFEST] * 2
    assert doc["manifests"][1]["platform"] == {
        "architecture": "arm",
        "os": "linux",
        "variant": "v7",
    }


def test_index_written_like_buildkit() -> None:
    index = Index(
        manifests=[
            Descriptor(mt.OCI_MANIFEST, L1, 481, platform=Platform("linux", "arm64", "v8")),
        ]
    )
    assert (
        index.to_json()
        == (
            "{\n"
            '  "schemaVersion": 2,\n'
            '  "mediaType": "application/vnd.oci.image.index.v1+json",\n'
            '  "manifests": [\n'
            "    {\n"
            '      "mediaType": "application/vnd.oci.image.manifest.v1+json",\n'
            f'      "digest": "{L1}",\n'
            '      "size": 481,\n'
            '      "platform": {\n'
            '        "architecture": "arm64",\n'
            '        "os": "linux",\n'
            '        "variant": "v8"\n'
            "      }\n"
            "    }\n"
            "  ]\n"
            "}"
        ).encode()
    )
    assert Index().to_json(indent=None) == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    )


@pytest.mark.parametrize(
    ("content_type", "doc", "kind"),
    [
        (mt.OCI_INDEX, {"schemaVersion": 2, "manifests": []}, Index),
        (f"{mt.DOCKER_MANIFEST_LIST}; charset=utf-8", DOCKER_LIST, Index),
        (None, DOCKER_LIST, Index),
        (None, {"schemaVersion": 2, "manifests": []}, Index),
        (
            None,
            {"schemaVersion": 2, "config": {"mediaType": mt.OCI_CONFIG, "digest": CFG, "size": 1}},
            Manifest,
        ),
        ("application/json", json.loads(BUILDKIT_OCI_MANIFEST), Manifest),
        (mt.DOCKER_MANIFEST, json.loads(DISTRIBUTION_SCHEMA2), Manifest),
    ],
)
def test_parse_manifest(content_type: str | None, doc: dict[str, object], kind: type) -> None:
    assert isinstance(parse_manifest(json.dumps(doc).encode(), content_type), kind)


@pytest.mark.parametrize(
    ("content_type", "doc", "message"),
    [
        (mt.DOCKER_MANIFEST_V1_SIGNED, {"schemaVersion": 1}, "schema 1"),
        (None, {"schemaVersion": 1, "mediaType": mt.DOCKER_MANIFEST_V1}, "schema 1"),
        ("application/vnd.example+json", {"schemaVersion": 2}, "unsupported manifest media type"),
        (None, {"hello": 1}, "unsupported manifest media type"),
        (None, [], "must be a JSON object"),
    ],
)
def test_parse_manifest_errors(content_type: str | None, doc: object, message: str) -> None:
    with pytest.raises(SouteError, match=message):
        parse_manifest(json.dumps(doc), content_type)


@pytest.mark.parametrize(
    ("media_type", "compression"),
    [
        (mt.OCI_LAYER, None),
        (mt.OCI_LAYER_GZIP, "gzip"),
        (mt.OCI_LAYER_ZSTD, "zstd"),
        (mt.DOCKER_LAYER_GZIP, "gzip"),
        (mt.DOCKER_LAYER_FOREIGN_GZIP, "gzip"),
        (mt.OCI_LAYER_NONDIST, None),
    ],
)
def test_layer_compression(media_type: str, compression: str | None) -> None:
    assert mt.layer_compression(media_type) == compression


def test_layer_compression_refuses_non_layers() -> None:
    with pytest.raises(SouteError):
        mt.layer_compression(mt.OCI_CONFIG)
