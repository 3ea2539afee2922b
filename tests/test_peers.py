"""Our archives and store layout against the real tools: dockerd, podman, skopeo, umoci and
oci-image-tool (all Debian packages; CI installs them, so a missing one fails, never skips).

dockerd runs for the session under a temporary directory, with its own socket, data and exec
roots, no bridge and no iptables; containers run with ``--network none``. podman uses a
temporary ``--root``/``--runroot``/``--tmpdir`` and the vfs driver. Needs root.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockerd import DOCKER, running_dockerd, short_workdir, tool_env
from soute.layer import apply_layer
from soute.store.archive import LoadedImage, load, save
from soute.store.importer import bootstrap_busybox
from soute.store.store import Image, Store
from test_layer_support import snapshot

BASE = "docker.io/library/soute-base:peer"
BUILT = "docker.io/library/soute-built:peer"

Run = Callable[..., str]


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: apt-get install {package}")
    return path


def run(*args: str | Path, env: dict[str, str] | None = None, input: bytes | None = None,
        check: bool = True) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, input=input,
                            env=env, stdin=None if input is not None else subprocess.DEVNULL)
    assert result.returncode == 0 or not check, (
        f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
        f"{result.stderr.decode(errors='replace')}")
    return result.stdout.decode()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def work() -> Iterator[Path]:
    with short_workdir("soute-peers-") as path:
        yield path


@pytest.fixture(scope="session")
def env(work: Path) -> dict[str, str]:
    return tool_env(work, buildkit=False)


@pytest.fixture(scope="session")
def ours(work: Path) -> Iterator[tuple[Store, Image]]:
    need("busybox", "busybox-static")
    with Store(work / "store") as store:
        yield store, bootstrap_busybox(store, tags=[BASE])


@pytest.fixture(scope="session")
def archives(work: Path, ours: tuple[Store, Image]) -> dict[str, Path]:
    """Our saves of the base image: ``docker-none``, ``docker-gzip``, ``oci-none``,
    ``oci-gzip``, ``oci-zstd``."""
    store, image = ours
    out: dict[str, Path] = {}
    for fmt, compression in [("docker", "none"), ("docker", "gzip"), ("oci", "none"),
                             ("oci", "gzip"), ("oci", "zstd")]:
        path = work / f"ours-{fmt}-{compression}.tar"
        with open(path, "wb") as f:
            save(store, [(image, [BASE])], f, format=fmt,  # type: ignore[arg-type]
                 compression=compression)  # type: ignore[arg-type]
        out[f"{fmt}-{compression}"] = path
    return out


@pytest.fixture(scope="session")
def docker(work: Path, env: dict[str, str]) -> Iterator[Run]:
    with running_dockerd(work / "dockerd", env) as sock:

        def client(*args: str | Path, input: bytes | None = None, check: bool = True) -> str:
            return run(DOCKER, "-H", sock, *args, env=env, input=input, check=check)

        yield client


@pytest.fixture(scope="session")
def podman(work: Path, env: dict[str, str]) -> Run:
    tool = need("podman", "podman")
    base = work / "podman"

    def client(*args: str | Path) -> str:
        return run(tool, "--root", base / "root", "--runroot", base / "run", "--tmpdir",
                   base / "tmp", "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                   "--events-backend", "none", *args, env=env)

    return client


@pytest.fixture(scope="session")
def skopeo(env: dict[str, str]) -> Run:
    tool = need("skopeo", "skopeo")

    def client(*args: str | Path) -> str:
        return run(tool, "--insecure-policy", *args, env=env)

    return client


@pytest.fixture(scope="session")
def built(work: Path, docker: Run,
          archives: dict[str, Path]) -> Iterator[tuple[Store, LoadedImage, str]]:
    """An image docker built on our base (a whiteout, a new file, config changes), saved by
    ``docker save`` into a pipe that our load reads; with docker's ``inspect`` of it."""
    docker("load", "-i", archives["docker-none"])
    dockerfile = (b"FROM soute-base:peer\n"
                  b"RUN mkdir -p /data && echo hello > /data/hello && rm /etc/group\n"
                  b"ENV GREETING=hi\nCMD [\"cat\", \"/data/hello\"]\n")
    docker("build", "--network", "none", "-q", "-t", "soute-built:peer", "-", input=dockerfile)
    inspect = docker("image", "inspect", "soute-built:peer")
    saver = subprocess.Popen([DOCKER, "-H", f"unix://{work / 'dockerd' / 'docker.sock'}",
                              "save", "soute-built:peer"], stdout=subprocess.PIPE)
    assert saver.stdout is not None
    with Store(work / "loaded") as store:
        with saver.stdout:
            [loaded] = load(store, saver.stdout)  # type: ignore[arg-type]
        assert saver.wait() == 0
        yield store, loaded, inspect


# ---------------------------------------------------------------------------- docker


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_docker_loads_and_runs_our_save(docker: Run, archives: dict[str, Path],
                                        ours: tuple[Store, Image], compression: str) -> None:
    _, image = ours
    # Without the image (or a child) docker loads the layers afresh instead of reusing them.
    docker("rmi", "-f", "soute-built:peer", "soute-base:peer", check=False)
    assert "Loaded image: soute-base:peer" in docker("load", "-i",
                                                     archives[f"docker-{compression}"])
    assert docker("image", "inspect", "-f", "{{.Id}}", "soute-base:peer").strip() == image.id
    assert docker("run", "--rm", "--network", "none", "soute-base:peer", "echo", "hi") == "hi\n"


def test_we_load_docker_save(built: tuple[Store, LoadedImage, str]) -> None:
    store, loaded, inspect = built
    [info] = json.loads(inspect)
    assert loaded.image.id == info["Id"]  # the config bytes were kept
    assert loaded.image.diff_ids == info["RootFS"]["Layers"]
    assert loaded.tags == (BUILT,)
    config = json.loads(store.blobs.read(loaded.image.id))
    assert "GREETING=hi" in config["config"]["Env"]
    report = store.fsck()
    assert report.problems == [] and report.notes == []


# ---------------------------------------------------------------------------- podman


@pytest.mark.parametrize("name", ["oci-zstd", "docker-none", "docker-gzip", "oci-none",
                                  "oci-gzip"])
def test_podman_loads_our_saves(podman: Run, archives: dict[str, Path],
                                ours: tuple[Store, Image], name: str) -> None:
    _, image = ours
    assert f"Loaded image: {BASE}" in podman("load", "-i", archives[name])
    try:
        assert podman("image", "inspect", "--format", "{{.Id}}", BASE).strip() == image.id[7:]
    finally:
        podman("rmi", "-f", BASE)  # so that the next archive's layers are loaded afresh


def test_we_load_podman_saves(podman: Run, work: Path, archives: dict[str, Path],
                              ours: tuple[Store, Image]) -> None:
    _, image = ours
    podman("load", "-i", archives["oci-none"])
    try:
        for fmt in ("oci-archive", "docker-archive"):  # podman gzips the oci-archive's layers
            path = work / f"podman-{fmt}.tar"
            podman("save", "--format", fmt, "-o", path, BASE)
            with Store(work / f"from-podman-{fmt}") as store, open(path, "rb") as f:
                [loaded] = load(store, f)
                assert (loaded.image.id, loaded.tags) == (image.id, (BASE,))
                assert store.fsck().problems == []
    finally:
        podman("rmi", "-f", BASE)


# ---------------------------------------------------------------------------- skopeo


def _config_of(skopeo: Run, ref: str) -> str:
    """The digest of the config bytes ``ref`` holds (its image ID)."""
    return sha(skopeo("inspect", "--config", "--raw", ref).encode())


def test_skopeo_reads_our_saves(skopeo: Run, work: Path, archives: dict[str, Path],
                                ours: tuple[Store, Image]) -> None:
    _, image = ours
    # To oci: from OCI sources (from docker-archive, skopeo converts to OCI by rewriting the
    # config); to dir: (which keeps the manifest type) from docker-archive.
    copies = [(f"oci-archive:{archives['oci-zstd']}:soute-base:peer", "oci"),
              (f"oci-archive:{archives['oci-gzip']}", "oci"),
              (f"oci-archive:{archives['docker-none']}:peer", "oci"),  # the hybrid is a layout
              (f"docker-archive:{archives['docker-gzip']}", "dir"),
              (f"docker-archive:{archives['docker-none']}:soute-base:peer", "dir")]
    for i, (source, kind) in enumerate(copies):
        dest = f"{kind}:{work / f'skopeo-{i}'}" + (":t" if kind == "oci" else "")
        skopeo("copy", "-q", source, dest)
        assert _config_of(skopeo, dest) == image.id, source


@pytest.mark.parametrize(("target", "options", "tag"), [
    ("docker-archive", [], "docker.io/foo/bar:v1"),
    ("oci-archive", ["--dest-compress-format", "gzip", "--dest-compress"], "research/tiny:v1"),
    ("oci-archive", ["--dest-compress-format", "zstd", "--dest-compress"], "research/tiny:v2"),
])
def test_we_load_skopeo_archives(skopeo: Run, work: Path, archives: dict[str, Path],
                                 ours: tuple[Store, Image], target: str, options: list[str],
                                 tag: str) -> None:
    _, image = ours
    slug = tag.replace("/", "_").replace(":", "_")
    path = work / f"skopeo-{slug}.tar"
    skopeo("copy", "-q", *options, f"oci-archive:{archives['oci-none']}",
           f"{target}:{path}:{tag}")
    if options:  # the layers really are compressed
        with tarfile.open(path) as tf:
            sizes = [m.size for m in tf if m.name.startswith("blobs/")]
        assert max(sizes) < image.size * 0.8
    with Store(work / f"loaded-{slug}") as store, open(path, "rb") as f:
        [loaded] = load(store, f)
        assert loaded.image.id == image.id
        assert loaded.image.diff_ids == image.diff_ids
        assert loaded.tags == ((tag if "." in tag.split("/")[0] else f"docker.io/{tag}"),)
        assert store.fsck().problems == []


# ---------------------------------------------------------------------------- umoci, validators


def test_umoci_unpacks_the_store_layout(work: Path, ours: tuple[Store, Image],
                                        built: tuple[Store, LoadedImage, str]) -> None:
    need("umoci", "umoci")
    store, image = ours
    bundle = work / "umoci-base"
    run("umoci", "unpack", "--image", f"{store.layout}:soute-base:peer", bundle)
    [ours_tree] = store.snapshots(image.diff_ids)
    assert snapshot(bundle / "rootfs") == snapshot(ours_tree)

    # docker's two layers, with a whiteout, as our load stored them.
    loaded_store, loaded, _ = built
    bundle = work / "umoci-built"
    run("umoci", "unpack", "--image", f"{loaded_store.layout}:soute-built:peer", bundle)
    merged = work / "merged"
    merged.mkdir()
    for diff_id in loaded.image.diff_ids:
        with loaded_store.blobs.open(diff_id) as f:
            apply_layer(f, merged, overlay=False)
    rootfs = bundle / "rootfs"
    assert (rootfs / "data" / "hello").read_text() == "hello\n"
    assert not (rootfs / "etc" / "group").exists()
    assert snapshot(rootfs) == snapshot(merged)


def test_oci_image_tool_validates_layouts(work: Path, ours: tuple[Store, Image],
                                          archives: dict[str, Path]) -> None:
    tool = need("oci-image-tool", "oci-image-tool")
    store, _ = ours
    assert "Validation succeeded" in run(tool, "validate", "--type", "image", "--ref",
                                         "name=soute-base:peer", store.layout)
    # Our saves, unpacked (it validates directories, not tars); it reports zstd falsely.
    for name, ref in [("oci-gzip", "soute-base:peer"), ("docker-none", "peer")]:
        layout = work / f"validate-{name}"
        layout.mkdir()
        with tarfile.open(archives[name]) as tf:
            # Extraction filters came with Python 3.11.4; Debian 12's is 3.11.2.
            tf.extractall(layout, **({"filter": "data"} if hasattr(tarfile, "data_filter")
                                     else {}))
        assert "Validation succeeded" in run(tool, "validate", "--type", "image", "--ref",
                                             f"name={ref}", layout)
