"""``save``/``load`` of image archives, without peers: round trips, hand-made archives in the
formats docker, skopeo and OCI tools write, refusals, pipes, and a load killed half-way."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from soute.errors import SouteError
from soute.image.platforms import Platform
from soute.store.archive import LoadedImage, load, save
from soute.store.store import Image, Store

HOST = Platform.host()
MTIME = 1_600_000_000


# ---------------------------------------------------------------------------- helpers


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = MTIME
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def config_bytes(diff_ids: list[str], **extra: object) -> bytes:
    config = {
        "architecture": HOST.architecture,
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["A=<&>"]},
        "created": "2024-01-02T03:04:05.123456789Z",
        "history": [{"created_by": f"step {i}"} for i in range(len(diff_ids))],
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        **extra,
    }
    # Indented, non-ASCII, a trailing newline: nothing we would write, so the bytes must survive.
    return json.dumps(config, indent=3, ensure_ascii=False).encode() + b"\n"


def make_image(store: Store, layers: list[dict[str, bytes]], tags: Sequence[str] = (),
               **extra: object) -> Image:
    stored = [store.add_layer_from(io.BytesIO(layer_tar(files))) for files in layers]
    return store.add_image(config_bytes([d for d, _ in stored], **extra), stored, tags=tags)


@dataclass(frozen=True)
class Symlink:
    target: str


def make_tar(members: Sequence[tuple[str, bytes | Symlink | None]]) -> bytes:
    """A tar of ``members`` in the order given (None: a directory)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if content is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif isinstance(content, Symlink):
                info.type = tarfile.SYMTYPE
                info.linkname = content.target
                tf.addfile(info)
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def save_bytes(store: Store, images: list[tuple[Image, list[str]]], **kwargs: object) -> bytes:
    out = io.BytesIO()
    save(store, images, out, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def members_of(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}  # type: ignore[union-attr]


def assert_untouched(store: Store) -> None:
    """Nothing visible changed: no image, no blob, no temporary file, fsck clean."""
    assert store.images() == []
    assert list(store.blobs.digests()) == []
    assert list(store.tmp.iterdir()) == []
    report = store.fsck()
    assert report.problems == [] and report.notes == []


class WriteOnly:
    """A pipe-like sink: no seek, no tell."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


class ReadOnly:
    """A pipe-like source that returns short reads."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._f.read(min(size, 3000) if size >= 0 else 3000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "src") as s:
        yield s


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "dest") as s:
        yield s


@pytest.fixture
def two_images(store: Store) -> tuple[Image, Image]:
    app = make_image(store, [{"etc/os": b"base\n", "bin/x": b"x" * 5000},
                             {"app/run": b"#!/bin/sh\necho hi\n"},
                             {"app/data": bytes(range(256)) * 64}],
                     tags=["docker.io/library/app:1", "quay.io/team/app:2"])
    other = make_image(store, [{"etc/os": b"base\n", "bin/x": b"x" * 5000}])
    return app, other


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(("fmt", "compression"), [
    ("docker", "none"), ("docker", "gzip"), ("oci", "none"), ("oci", "gzip"), ("oci", "zstd")])
def test_round_trip(store: Store, dest: Store, two_images: tuple[Image, Image], fmt: str,
                    compression: str) -> None:
    app, other = two_images
    archive = save_bytes(store, [(app, list(app.tags)), (other, [])], format=fmt,
                         compression=compression)
    loaded = load(dest, io.BytesIO(archive))

    assert [x.image.id for x in loaded] == [app.id, other.id]
    assert loaded[0].tags == ("docker.io/library/app:1", "quay.io/team/app:2")
    assert loaded[1].tags == ()
    for original, got in zip((app, other), loaded, strict=True):
        assert dest.blobs.read(got.image.id) == store.blobs.read(original.id)  # same bytes
        assert got.image.layers == original.layers
        if compression == "none":  # the manifest went in as stored
            assert got.image.manifest == original.manifest
    assert set(dest.image(app.id).tags) == set(app.tags)
    report = dest.fsck()
    assert report.problems == [] and report.notes == []


def test_save_is_deterministic_and_well_formed(store: Store,
                                               two_images: tuple[Image, Image]) -> None:
    app, other = two_images
    images = [(app, ["docker.io/library/app:1", "quay.io/team/app:2"]), (other, [])]
    archive = save_bytes(store, images)
    assert archive == save_bytes(store, images)
    assert len(archive) % tarfile.RECORDSIZE == 0

    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        infos = tf.getmembers()
    names = [m.name for m in infos]
    assert names == sorted(names)
    assert names[:2] == ["blobs", "blobs/sha256"] and infos[0].isdir()
    for m in infos:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")

    files = members_of(archive)
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert sha(data) == "sha256:" + name.rsplit("/", 1)[1]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}

    app_manifest = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": app.manifest, "size": store.blobs.size(app.manifest)}
    index = json.loads(files["index.json"])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert index["manifests"][:2] == [
        {**app_manifest, "annotations": {"io.containerd.image.name": "docker.io/library/app:1",
                                         "org.opencontainers.image.ref.name": "1"}},
        {**app_manifest, "annotations": {"io.containerd.image.name": "quay.io/team/app:2",
                                         "org.opencontainers.image.ref.name": "2"}},
    ]
    assert "annotations" not in index["manifests"][2]  # saved by ID: no name

    hexes = [d.removeprefix("sha256:") for d in app.diff_ids]
    assert json.loads(files["manifest.json"]) == [
        {"Config": "blobs/sha256/" + app.id[7:], "RepoTags": ["app:1", "quay.io/team/app:2"],
         "Layers": ["blobs/sha256/" + h for h in hexes]},
        {"Config": "blobs/sha256/" + other.id[7:], "RepoTags": [],
         "Layers": ["blobs/sha256/" + other.diff_ids[0][7:]]},
    ]
    assert json.loads(files["repositories"]) == {"app": {"1": hexes[-1]},
                                                 "quay.io/team/app": {"2": hexes[-1]}}


def test_oci_format_names_and_no_docker_files(store: Store,
                                              two_images: tuple[Image, Image]) -> None:
    app, _ = two_images
    files = members_of(save_bytes(store, [(app, ["docker.io/library/app:1"])], format="oci"))
    assert "manifest.json" not in files and "repositories" not in files
    [entry] = json.loads(files["index.json"])["manifests"]
    assert entry["annotations"] == {"io.containerd.image.name": "docker.io/library/app:1",
                                    "org.opencontainers.image.ref.name": "app:1"}


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_layers_in_the_manifest(store: Store, two_images: tuple[Image, Image],
                                           compression: str) -> None:
    app, _ = two_images
    files = members_of(save_bytes(store, [(app, [])], format="oci", compression=compression))
    [entry] = json.loads(files["index.json"])["manifests"]
    manifest = json.loads(files["blobs/sha256/" + entry["digest"][7:]])
    assert manifest["config"]["digest"] == app.id
    for desc, diff_id in zip(manifest["layers"], app.diff_ids, strict=True):
        assert desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+" + compression
        blob = files["blobs/sha256/" + desc["digest"][7:]]
        assert (sha(blob), len(blob)) == (desc["digest"], desc["size"])
        plain = (gzip.decompress(blob) if compression == "gzip"
                 else zstandard.ZstdDecompressor().decompressobj().decompress(blob))
        assert sha(plain) == diff_id
    assert json.loads(files["blobs/sha256/" + app.id[7:]])["rootfs"]["diff_ids"] == app.diff_ids


def test_docker_format_refuses_zstd_and_bad_arguments(store: Store,
                                                      two_images: tuple[Image, Image]) -> None:
    app, _ = two_images
    with pytest.raises(SouteError, match="zstd"):
        save(store, [(app, [])], WriteOnly(), format="docker",  # type: ignore[arg-type]
             compression="zstd")
    with pytest.raises(SouteError, match="unknown archive format"):
        save(store, [(app, [])], WriteOnly(), format="tar")  # type: ignore[arg-type]
    with pytest.raises(SouteError, match="no images"):
        save(store, [], WriteOnly())  # type: ignore[arg-type]


def test_save_to_a_pipe_and_load_from_a_pipe(store: Store, dest: Store,
                                             two_images: tuple[Image, Image]) -> None:
    app, _ = two_images
    read_fd, write_fd = os.pipe()
    received: list[bytes] = []

    def drain() -> None:
        with os.fdopen(read_fd, "rb") as f:
            received.append(f.read())

    reader = threading.Thread(target=drain)
    reader.start()
    with os.fdopen(write_fd, "wb") as out:
        save(store, [(app, ["docker.io/library/app:1"])], out, compression="gzip")
    reader.join()

    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as f:
            f.write(received[0])

    writer = threading.Thread(target=feed)
    writer.start()
    with os.fdopen(read_fd, "rb") as f:
        [loaded] = load(dest, f)
    writer.join()
    assert loaded.image.id == app.id and loaded.tags == ("docker.io/library/app:1",)


def test_save_needs_no_seek_and_load_takes_short_reads(store: Store, dest: Store,
                                                       two_images: tuple[Image, Image]) -> None:
    app, _ = two_images
    out = WriteOnly()
    save(store, [(app, ["docker.io/library/app:1"])], out,  # type: ignore[arg-type]
         format="oci", compression="zstd")
    [loaded] = load(dest, ReadOnly(b"".join(out.parts)))  # type: ignore[arg-type]
    assert loaded.image.id == app.id


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
def test_load_a_compressed_archive(store: Store, dest: Store, two_images: tuple[Image, Image],
                                   kind: str) -> None:
    app, _ = two_images
    archive = save_bytes(store, [(app, ["docker.io/library/app:1"])])
    packers: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.compress, "xz": lzma.compress, "zstd": zstandard.ZstdCompressor().compress}
    packed = packers[kind](archive)
    [loaded] = load(dest, io.BytesIO(packed))
    assert loaded.image.id == app.id


def test_load_twice_and_reuse_of_stored_layers(store: Store, dest: Store,
                                               two_images: tuple[Image, Image]) -> None:
    app, _ = two_images
    archive = save_bytes(store, [(app, ["docker.io/library/app:1"])])
    [first] = load(dest, io.BytesIO(archive))
    blobs = sorted(dest.blobs.digests())
    [second] = load(dest, io.BytesIO(archive))
    assert second.image.id == first.image.id == app.id
    assert sorted(dest.blobs.digests()) == blobs
    assert list(dest.tmp.iterdir()) == []

    # docker load reuses layers it has: an archive may leave them out.
    files = members_of(archive)
    left_out = {"blobs/sha256/" + d[7:] for d in app.diff_ids[:2]}
    kept = [(n, d) for n, d in files.items() if n not in left_out]
    [again] = load(dest, io.BytesIO(make_tar(kept)))
    assert again.image.id == app.id


# ---------------------------------------------------------------------------- other writers


def _legacy_layer_dirs(diff_ids: list[str]) -> list[str]:
    return [hashlib.sha256(f"v1 {d}".encode()).hexdigest() for d in diff_ids]


def test_load_legacy_docker_save(dest: Store) -> None:
    """docker <25: ``<v1id>/layer.tar``, ``<id>.json``, ``repositories``, and manifest.json
    after the layers (docker's tar is sorted)."""
    layers = [layer_tar({"etc/a": b"a"}), layer_tar({"etc/b": b"b" * 3000})]
    diff_ids = [sha(x) for x in layers]
    config = config_bytes(diff_ids, container_config={"Cmd": None}, docker_version="20.10.24")
    v1 = _legacy_layer_dirs(diff_ids)
    members: list[tuple[str, bytes | Symlink | None]] = [(sha(config)[7:] + ".json", config)]
    for v1id, layer in zip(v1, layers, strict=True):
        members += [(v1id, None), (f"{v1id}/VERSION", b"1.0"),
                    (f"{v1id}/json", b'{"id":"' + v1id.encode() + b'"}'),
                    (f"{v1id}/layer.tar", layer)]
    manifest = [{"Config": sha(config)[7:] + ".json", "RepoTags": ["legacy:1",
                 "127.0.0.1:5000/research/tiny:v1"], "Layers": [f"{v}/layer.tar" for v in v1]}]
    members += [("manifest.json", json.dumps(manifest).encode()),
                ("repositories", json.dumps({"legacy": {"1": v1[-1]}}).encode())]
    [loaded] = load(dest, io.BytesIO(make_tar(members)))
    assert loaded.image.id == sha(config)
    assert dest.blobs.read(loaded.image.id) == config
    assert loaded.image.diff_ids == diff_ids
    assert loaded.tags == ("docker.io/library/legacy:1", "127.0.0.1:5000/research/tiny:v1")
    assert dest.fsck().problems == []


@pytest.mark.parametrize("via_symlink", [False, True])
@pytest.mark.parametrize("compressed", [False, True])
def test_load_skopeo_docker_archive(dest: Store, via_symlink: bool, compressed: bool) -> None:
    """skopeo: ``<diffid>.tar`` at the top, ``<v1id>/layer.tar`` symlinks to them, full names
    in RepoTags, manifest.json last. Layers may also be compressed."""
    plain = [layer_tar({"a": b"1"}), layer_tar({"b": b"2" * 700})]
    diff_ids = [sha(x) for x in plain]
    blobs = [gzip.compress(x, mtime=0) for x in plain] if compressed else plain
    config = config_bytes(diff_ids)
    v1 = _legacy_layer_dirs(diff_ids)
    members: list[tuple[str, bytes | Symlink | None]] = []
    for v1id, blob in zip(v1, blobs, strict=True):
        members += [(sha(blob)[7:] + ".tar", blob),
                    (f"{v1id}/layer.tar", Symlink(f"../{sha(blob)[7:]}.tar")),
                    (f"{v1id}/VERSION", b"1.0"), (f"{v1id}/json", b"{}")]
    members.insert(1, (sha(config)[7:] + ".json", config))
    paths = [f"{v}/layer.tar" for v in v1] if via_symlink else [
        sha(b)[7:] + ".tar" for b in blobs]
    manifest = [{"Config": sha(config)[7:] + ".json", "RepoTags": ["docker.io/foo/bar:v1"],
                 "Layers": paths, "Parent": "", "LayerSources": None}]
    members += [("manifest.json", json.dumps(manifest).encode()), ("repositories", b"{}")]
    [loaded] = load(dest, io.BytesIO(make_tar(members)))
    assert loaded.image.id == sha(config)
    assert loaded.image.diff_ids == diff_ids
    assert loaded.tags == ("docker.io/foo/bar:v1",)
    for diff_id, layer in zip(diff_ids, plain, strict=True):
        assert dest.blobs.read(diff_id) == layer  # stored uncompressed


def _oci_blob(members: list[tuple[str, bytes | Symlink | None]], data: bytes) -> dict[str, object]:
    members.append(("blobs/sha256/" + sha(data)[7:], data))
    return {"digest": sha(data), "size": len(data)}


def test_load_oci_archive_with_nested_index(dest: Store) -> None:
    """An oci-archive holding an index per platform: the host's manifest is loaded; other
    platforms (whose blobs are not even there) and artifacts are skipped."""
    other = Platform("linux", "s390x" if HOST.architecture != "s390x" else "ppc64le")
    members: list[tuple[str, bytes | Symlink | None]] = [
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("blobs", None),
        ("blobs/sha256", None)]
    plain = layer_tar({"usr/bin/tool": b"\x7fELF" + bytes(2000)})
    layer = _oci_blob(members, zstandard.ZstdCompressor().compress(plain))
    config = config_bytes([sha(plain)])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_oci_blob(members, config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", **layer}],
        "annotations": {"org.opencontainers.image.base.name": "scratch"},
    }).encode()
    mine = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            **_oci_blob(members, manifest), "platform": HOST.to_dict()}
    theirs = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
              "digest": "sha256:" + "1" * 64, "size": 500, "platform": other.to_dict()}
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [theirs, mine]}).encode()
    artifact = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example", "config": {
            "mediaType": "application/vnd.oci.empty.v1+json", **_oci_blob(members, b"{}")},
        "layers": []}).encode()
    top = [
        {"mediaType": "application/vnd.oci.image.index.v1+json", **_oci_blob(members, index),
         "annotations": {"org.opencontainers.image.ref.name": "research/tiny:v1"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         **_oci_blob(members, artifact), "annotations": {
             "org.opencontainers.image.ref.name": "research/sbom:v1"}},
        {**theirs, "annotations": {"org.opencontainers.image.ref.name": "other:1"}},
    ]
    members.append(("index.json", json.dumps({"schemaVersion": 2, "manifests": top}).encode()))
    [loaded] = load(dest, io.BytesIO(make_tar(members)))
    assert loaded.image.id == sha(config)
    assert loaded.tags == ("docker.io/research/tiny:v1",)
    assert dest.blobs.read(sha(plain)) == plain
    stored = json.loads(dest.blobs.read(loaded.image.manifest))
    assert stored["annotations"] == {"org.opencontainers.image.base.name": "scratch"}


def test_load_docker25_style_names(dest: Store) -> None:
    """docker 25 puts the bare tag in ref.name and the full name in containerd's annotation;
    with no manifest.json (containerd's export of it) the OCI path must use the latter."""
    members: list[tuple[str, bytes | Symlink | None]] = [
        ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')]
    plain = layer_tar({"x": b"y"})
    config = config_bytes([sha(plain)])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_oci_blob(members, config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    **_oci_blob(members, plain)}]}).encode()
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            **_oci_blob(members, manifest)}
    names = [{**desc, "annotations": {"io.containerd.image.name": n,
                                      "org.opencontainers.image.ref.name": n.rsplit(":", 1)[1]}}
             for n in ("docker.io/library/debian:bookworm", "docker.io/library/debian:12")]
    members.append(("index.json", json.dumps({"schemaVersion": 2, "manifests": names}).encode()))
    [loaded] = load(dest, io.BytesIO(make_tar(members)))
    assert loaded.tags == ("docker.io/library/debian:bookworm", "docker.io/library/debian:12")


# ---------------------------------------------------------------------------- refusals


def _member_offset(archive: bytes, name: str) -> int:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        return tf.getmember(name).offset_data


@pytest.mark.parametrize(("fmt", "compression"),
                         [("docker", "none"), ("docker", "gzip"), ("oci", "none")])
def test_corrupt_layer_is_refused_and_nothing_is_stored(
        store: Store, dest: Store, two_images: tuple[Image, Image], fmt: str,
        compression: str) -> None:
    app, _ = two_images
    archive = bytearray(save_bytes(store, [(app, ["docker.io/library/app:1"])], format=fmt,
                                   compression=compression))
    files = members_of(bytes(archive))
    [entry] = json.loads(files["index.json"])["manifests"]
    manifest = json.loads(files["blobs/sha256/" + entry["digest"][7:]])
    name = "blobs/sha256/" + manifest["layers"][2]["digest"][7:]  # the last layer
    at = _member_offset(bytes(archive), name) + len(files[name]) // 2
    archive[at] ^= 0x55
    with pytest.raises(SouteError, match=r"layer 3 \(blobs/sha256/[0-9a-f]+\) "
                                         r"(does not match the image config|cannot be read)"):
        load(dest, io.BytesIO(bytes(archive)))
    assert_untouched(dest)


def test_truncated_archives_are_refused(store: Store, dest: Store,
                                        two_images: tuple[Image, Image]) -> None:
    app, _ = two_images
    archive = save_bytes(store, [(app, ["docker.io/library/app:1"])])
    layer = "blobs/sha256/" + app.diff_ids[2][7:]
    with pytest.raises(SouteError, match="the archive is truncated or corrupt"):
        load(dest, io.BytesIO(archive[:_member_offset(archive, layer) + 1000]))
    with pytest.raises(SouteError, match="the archive is truncated or corrupt"):
        packed = gzip.compress(archive)
        load(dest, io.BytesIO(packed[:len(packed) // 2]))
    # Cut between members, before index.json and manifest.json.
    with pytest.raises(SouteError, match=r"no manifest\.json or index\.json"):
        load(dest, io.BytesIO(archive[:_member_offset(archive, "index.json") - 512]))
    assert_untouched(dest)


def test_missing_and_mismatched_content_is_refused(store: Store, dest: Store,
                                                   two_images: tuple[Image, Image]) -> None:
    app, _ = two_images
    files = members_of(save_bytes(store, [(app, ["docker.io/library/app:1"])]))
    layer = "blobs/sha256/" + app.diff_ids[1][7:]

    without = [(n, d) for n, d in files.items() if n != layer]
    with pytest.raises(SouteError, match=rf"layer 2 \({layer}\) is missing from the archive"):
        load(dest, io.BytesIO(make_tar(without)))

    # A well-formed layer, but not the one the config names.
    swapped = {**files, layer: layer_tar({"evil": b"1"})}
    with pytest.raises(SouteError, match=r"layer 2 .* does not match the image config"):
        load(dest, io.BytesIO(make_tar(list(swapped.items()))))

    # Through the OCI path (no manifest.json): the manifest blob must match its digest.
    oci = {n: d for n, d in files.items() if n != "manifest.json"}
    [entry] = json.loads(oci["index.json"])["manifests"]
    oci["blobs/sha256/" + entry["digest"][7:]] += b" "
    with pytest.raises(SouteError, match="does not match its digest"):
        load(dest, io.BytesIO(make_tar(list(oci.items()))))
    assert_untouched(dest)


def test_not_an_archive(dest: Store) -> None:
    with pytest.raises(SouteError, match="not a tar file"):
        load(dest, io.BytesIO(b"hello, this is not a tar archive\n" * 40))
    with pytest.raises(SouteError, match="not a tar file"):
        load(dest, io.BytesIO(b""))
    with pytest.raises(SouteError, match=r"not a docker or OCI image archive: it has no "
                                         r"manifest\.json or index\.json"):
        load(dest, io.BytesIO(layer_tar({"etc/passwd": b"root:x:0:0::/:/bin/sh\n"})))
    with pytest.raises(SouteError, match=r"manifest\.json in the archive is not valid JSON"):
        load(dest, io.BytesIO(make_tar([("manifest.json", b"[{")])))
    with pytest.raises(SouteError, match=r"image config cfg\.json is missing"):
        load(dest, io.BytesIO(make_tar([("manifest.json", json.dumps(
            [{"Config": "cfg.json", "RepoTags": None, "Layers": []}]).encode())])))
    assert_untouched(dest)


def test_save_refuses_a_damaged_store(store: Store, two_images: tuple[Image, Image]) -> None:
    app, _ = two_images
    path = store.blobs.path(app.diff_ids[0])
    data = bytearray(path.read_bytes())
    data[700] ^= 1
    path.write_bytes(bytes(data))
    for compression in ("none", "gzip"):
        with pytest.raises(SouteError, match="damaged"):
            save(store, [(app, [])], WriteOnly(), compression=compression)  # type: ignore[arg-type]
    assert list(store.tmp.iterdir()) == []


# ---------------------------------------------------------------------------- big layers


BIG = 200 << 20


class RandomStream:
    def __init__(self, size: int) -> None:
        self._left = size
        self._rnd = random.Random(7)

    def read(self, size: int = -1) -> bytes:
        n = self._left if size < 0 else min(size, self._left)
        self._left -= n
        return self._rnd.randbytes(n)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A store with a one-layer image of 200 MiB, and its docker-format archive."""
    work = tmp_path_factory.mktemp("big")
    layer = work / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("blob")
        info.size = BIG
        tf.addfile(info, RandomStream(BIG))
    with Store(work / "store") as store, open(layer, "rb") as f:
        stored = store.add_layer_from(f)
        image = store.add_image(config_bytes([stored[0]]), [stored],
                                tags=["docker.io/library/big:1"])
        with open(work / "big.tar", "wb") as out:
            save(store, [(image, list(image.tags))], out)
    layer.unlink()
    return work / "store", work / "big.tar", image.id


def _python(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                            stdout=subprocess.PIPE)


def test_a_200_mib_layer_streams(big: tuple[Path, Path, str], tmp_path: Path) -> None:
    """Saving with gzip and loading it again stay far below the layer's size in memory."""
    root, _, image_id = big
    # VmHWM: this process's own peak. ru_maxrss would start from the RSS of the pytest
    # process that forked it (Linux keeps it across exec), which earlier tests grow.
    code = f"""
from pathlib import Path
from soute.store.archive import load, save
from soute.store.store import Store
with Store(Path({str(root)!r})) as src, open({str(tmp_path / 'z.tar')!r}, 'wb') as out:
    save(src, [(src.image({image_id!r}), [])], out, compression='gzip')
with Store(Path({str(tmp_path / 'dest')!r})) as dest, open({str(tmp_path / 'z.tar')!r}, 'rb') as f:
    [got] = load(dest, f)
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print(got.image.id, peak)
"""
    proc = _python(code)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    got, max_rss_kib = out.split()
    assert got == image_id
    assert int(max_rss_kib) < 120 * 1024, f"peak RSS {int(max_rss_kib) // 1024} MiB"


def test_a_load_killed_half_way_leaves_no_damage(big: tuple[Path, Path, str],
                                                 tmp_path: Path) -> None:
    _, archive, image_id = big
    root = tmp_path / "killed"
    Store(root).close()
    code = f"""
from pathlib import Path
from soute.store.archive import load
from soute.store.store import Store
with Store(Path({str(root)!r})) as s, open({str(archive)!r}, 'rb') as f:
    load(s, f)
"""
    proc = _python(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.stat().st_size > 32 << 20 for p in (root / "tmp").iterdir()):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the load finished before it could be killed"

    with Store(root) as store:
        report = store.fsck()
        assert report.problems == []
        assert any("temporary file" in note for note in report.notes)
        assert store.images() == [] and list(store.blobs.digests()) == []
        with open(archive, "rb") as f:
            [loaded] = load(store, f)
        assert isinstance(loaded, LoadedImage) and loaded.image.id == image_id
        store.collect_garbage()
        report = store.fsck()
        assert report.problems == [] and report.notes == []
        assert store.image(image_id).tags == ("docker.io/library/big:1",)
