"""login, push and pull against Debian's docker-registry (distribution 2.8), started here on
127.0.0.1 in three set-ups: (a) no auth over HTTP, (b) htpasswd Basic auth over TLS with a
test CA, (c) token auth with the token server of ``registry_fixtures``. Round trips go through
skopeo and a private dockerd; misbehaving proxies cut, corrupt and refuse.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dockerd import DOCKER, running_dockerd, short_workdir, tool_env
from registry_fixtures import (
    CertAuthority,
    Proxy,
    RunningRegistry,
    TokenServer,
    add_layer,
    free_port,
    global_ipv4,
    htpasswd_file,
    make_ca,
    registry_get,
    registry_put,
    run,
    running_registry,
    self_signed,
    sha256,
    soute_cli,
    store_state,
    which_or_fail,
    write_helper,
)
from soute.image import mediatypes as mt
from soute.registry import push as push_module
from soute.store.importer import bootstrap_busybox
from soute.store.store import Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="soute run and dockerd need root")

HELLO = b"hello from soute\n"
BIG = os.urandom(3 << 20)  # incompressible: a layer big enough for chunked uploads
ALICE = ("alice", "wonderland")

Docker = Callable[..., str]


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    with short_workdir("soute-reg-") as path:
        yield path


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No docker config, registries settings or CA files but the test's own."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("SOUTE_REGISTRIES_CONFIG", str(tmp_path / "no-registries.json"))
    monkeypatch.setenv("SOUTE_CERTS_D", str(tmp_path / "certs.d"))
    for name in ("SOUTE_INSECURE_REGISTRIES", "SOUTE_REGISTRY_MIRROR", "DOCKER_AUTH_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def plain(work: Path) -> Iterator[RunningRegistry]:
    with running_registry(work / "reg-plain") as reg:
        yield reg


@pytest.fixture(scope="module")
def ca(work: Path) -> CertAuthority:
    return make_ca(work / "ca")


@pytest.fixture(scope="module")
def basic(work: Path, ca: CertAuthority) -> Iterator[RunningRegistry]:
    users = htpasswd_file(work / "htpasswd", dict([ALICE]))
    with running_registry(work / "reg-basic", htpasswd=users, tls=ca) as reg:
        yield reg


def _policy(user: str | None, repository: str) -> set[str]:
    if repository.startswith("locked/"):
        return set()
    if user == "alice":
        return {"pull", "push"}
    return {"pull"} if repository.startswith("public/") else set()


@pytest.fixture(scope="module")
def token(work: Path) -> Iterator[tuple[RunningRegistry, TokenServer]]:
    cert, key = self_signed(work / "token")
    with TokenServer(cert, key, dict([ALICE]), _policy) as server, \
            running_registry(work / "reg-token", token=(server.realm, cert)) as reg:
        yield reg, server


@pytest.fixture(scope="module")
def source(work: Path) -> Path:
    """A store with busybox (``base``) and ``app``: busybox plus a layer with /hello.txt and a
    3 MiB random file, running ``cat /hello.txt``."""
    root = work / "source"
    with Store(root) as store:
        base = bootstrap_busybox(store, tags=["docker.io/library/base:latest"])
        add_layer(store, base, {"hello.txt": HELLO, "big.bin": BIG}, cmd=["cat", "/hello.txt"],
                  tags=["docker.io/library/app:latest"])
    return root


@pytest.fixture(scope="module")
def docker(work: Path) -> Iterator[Docker]:
    env = tool_env(work, buildkit=False)
    with running_dockerd(work / "dockerd", env) as sock:

        def client(*args: str | Path, input: bytes | None = None) -> str:
            return run(DOCKER, "-H", sock, *args, input=input, env=env)

        yield client


def image_id(root: Path, name: str) -> str:
    return str(json.loads(soute_cli(root, "inspect", name).ok())[0]["Id"])


def soute_run(root: Path, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(root), "run",
                        "--rm", "--network", "none", *args], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, (p.stdout, p.stderr)
    return p.stdout


def skopeo(*args: str) -> str:
    tool = which_or_fail("skopeo", "skopeo")
    return run(tool, "--insecure-policy", *args)


def push_as(root: Path, name: str, *options: str, source_name: str = "app") -> str:
    soute_cli(root, "tag", source_name, name).ok()
    result = soute_cli(root, "push", *options, name)
    assert result.code == 0, (result.out, result.err)
    return result.err + result.out


# ---------------------------------------------------------------------------- (a) plain HTTP


def test_push_then_skopeo_and_docker_pull(plain: RunningRegistry, source: Path,
                                          docker: Docker) -> None:
    name = f"{plain.host}/it/app:v1"
    soute_cli(source, "tag", "app", name).ok()
    result = soute_cli(source, "push", name)
    assert result.code == 0, result.err
    assert result.out.startswith(f"The push refers to repository [{plain.host}/it/app]\n")
    last = result.out.strip().splitlines()[-1]
    assert last.startswith("v1: digest: sha256:") and " size: " in last
    assert result.err.count(": Pushed") == 2  # the two layers
    manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{name}"))
    assert manifest["mediaType"] == mt.OCI_MANIFEST
    assert manifest["config"]["digest"] == image_id(source, "app")
    assert {layer["mediaType"] for layer in manifest["layers"]} == {mt.OCI_LAYER_GZIP}
    assert last.split()[2] == sha256(registry_get(
        f"{plain.url}/v2/it/app/manifests/v1", accept=mt.OCI_MANIFEST))
    # The push recorded the repo digest, as docker does.
    inspect = json.loads(soute_cli(source, "inspect", name).ok())
    assert f"{plain.host}/it/app@{last.split()[2]}" in inspect[0]["RepoDigests"]

    docker("pull", "-q", name)
    assert docker("run", "--rm", "--network", "none", name) == HELLO.decode()

    # Docker schema2 on request: the same blobs, Docker's media types.
    name2 = f"{plain.host}/it/app-docker:v1"
    out = push_as(source, name2, "--format", "docker")
    assert "Layer already exists" not in out  # another repository: mounted, not re-sent
    assert "Mounted from it/app" in out
    manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{name2}"))
    assert manifest["mediaType"] == mt.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == mt.DOCKER_CONFIG
    docker("pull", "-q", name2)
    assert docker("run", "--rm", "--network", "none", name2) == HELLO.decode()


def test_images_lists_a_pull_by_digest_under_its_repository(plain: RunningRegistry,
                                                           source: Path, tmp_path: Path) -> None:
    name = f"{plain.host}/it/listed:v1"
    soute_cli(source, "tag", "app", name).ok()
    digest = soute_cli(source, "push", name).ok().strip().splitlines()[-1].split()[2]
    store = tmp_path / "store"
    soute_cli(store, "pull", f"{plain.host}/it/listed@{digest}").ok()
    short = image_id(source, "app")[7:19]
    rows = [line.split()[:3] for line in soute_cli(store, "images").ok().splitlines()]
    assert rows == [["REPOSITORY", "TAG", "IMAGE"], [f"{plain.host}/it/listed", "<none>", short]]
    assert soute_cli(store, "images", "-q", "-f", "dangling=true").ok() == ""  # it has a name
    rows = [line.split()[:4] for line in soute_cli(store, "images", "--digests").ok().splitlines()]
    assert rows[1] == [f"{plain.host}/it/listed", "<none>", digest, short]
    soute_cli(store, "pull", name).ok()  # now tagged too: one row, with the digest
    soute_cli(store, "tag", name, f"{plain.host}/it/listed:v2").ok()
    out = soute_cli(store, "images", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}").ok()
    assert out.splitlines() == [f"{plain.host}/it/listed {tag} {digest}" for tag in ("v1", "v2")]
    soute_cli(store, "rmi", f"{plain.host}/it/listed:v2").ok()
    assert soute_cli(store, "images", "-f", "dangling=true", "-q").ok() == ""
    out = soute_cli(store, "rmi", name).ok()  # the digest goes with the image, as docker says
    assert out.splitlines() == [f"Untagged: {name}", f"Untagged: {plain.host}/it/listed@{digest}",
                                f"Deleted: {image_id(source, 'app')}"]


def test_pull_all_tags_and_the_default_tag_notice(plain: RunningRegistry, source: Path,
                                                  tmp_path: Path) -> None:
    repo = f"{plain.host}/it/many"
    for tag in ("a", "b", "latest"):
        soute_cli(source, "tag", "app", f"{repo}:{tag}").ok()
    soute_cli(source, "push", "-a", repo).ok()
    store = tmp_path / "store"
    out = soute_cli(store, "pull", repo).ok()
    assert out.startswith("Using default tag: latest\n")  # as docker says it
    out = soute_cli(store, "pull", "-a", repo).ok()
    assert "Using default tag" not in out
    tags = soute_cli(store, "images", "--format", "{{.Tag}}", repo).ok().split()
    assert sorted(tags) == ["a", "b", "latest"]
    # run --pull always asks the registry even for an image the store has (as docker).
    p = soute_cli(store, "run", "--rm", "--pull", "always", "--network", "none", f"{repo}:a")
    assert p.code == 0 and "a: Pulling from it/many" in p.err, p.err
    p = soute_cli(store, "pull", "-a", f"{repo}:a")
    assert p.code == 1 and "tag can't be used with --all-tags/-a" in p.err
    p = soute_cli(store, "pull", "-a", f"{plain.host}/it/nothing-here")
    assert p.code == 1 and len(p.err.splitlines()) == 1, p.err


def test_docker_push_then_soute_pull_and_run(plain: RunningRegistry, source: Path,
                                             docker: Docker, tmp_path: Path) -> None:
    from soute.store.archive import save

    archive = tmp_path / "base.tar"
    with Store(source) as store, open(archive, "wb") as f:
        base = store.image(store.meta.tag_target("docker.io/library/base:latest") or "")
        save(store, [(base, ["docker.io/library/soute-reg-base:latest"])], f)
    docker("load", "-i", archive)
    name = f"{plain.host}/it/from-docker:v1"
    docker("build", "--network", "none", "-q", "-t", name, "-",
           input=b"FROM soute-reg-base\nRUN echo from-docker > /msg\nCMD [\"cat\", \"/msg\"]\n")
    docker("push", name)

    root = tmp_path / "store"
    result = soute_cli(root, "pull", name)
    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert lines[0] == "v1: Pulling from it/from-docker"
    assert lines[-2] == f"Status: Downloaded newer image for {name}"
    assert lines[-1] == name
    assert "Pull complete" in result.err
    assert image_id(root, name) == docker("image", "inspect", "-f", "{{.Id}}", name).strip()
    assert soute_run(root, name) == "from-docker\n"
    again = soute_cli(root, "pull", name)
    assert f"Status: Image is up to date for {name}" in again.ok()
    assert "Pull complete" not in again.err
    assert "0 problem(s)" in soute_cli(root, "fsck").ok()


def test_skopeo_zstd_push_then_pull_skips_layers_we_have(plain: RunningRegistry, source: Path,
                                                         tmp_path: Path) -> None:
    from soute.store.archive import save

    archive = tmp_path / "app.tar"
    with Store(source) as store, open(archive, "wb") as f:
        app = store.image(store.meta.tag_target("docker.io/library/app:latest") or "")
        save(store, [(app, ["docker.io/library/app:latest"])], f, format="oci")
    name = f"{plain.host}/it/zstd:v1"
    skopeo("copy", "-q", "--dest-tls-verify=false", "--dest-compress-format", "zstd",
           "--dest-compress", f"oci-archive:{archive}:app:latest", f"docker://{name}")
    manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{name}"))
    assert {layer["mediaType"] for layer in manifest["layers"]} == {mt.OCI_LAYER_ZSTD}

    # A store that has the base already downloads only the top layer.
    root = tmp_path / "store"
    with Store(root) as store:
        bootstrap_busybox(store)
    result = soute_cli(root, "pull", name)
    assert result.code == 0, result.err
    assert result.err.count("Already exists") == 1
    assert result.err.count("Pull complete") == 1
    assert image_id(root, name) == app.id
    assert soute_run(root, name) == HELLO.decode()


def test_zstd_push_all_tags_and_plain_layers(plain: RunningRegistry, source: Path,
                                            tmp_path: Path) -> None:
    app = image_id(source, "app")
    for tag in ("v1", "v2"):
        soute_cli(source, "tag", "app", f"{plain.host}/it/zstd-all:{tag}").ok()
    result = soute_cli(source, "push", "--all-tags", "--compression", "zstd",
                       f"{plain.host}/it/zstd-all")
    assert result.code == 0, result.err
    assert [line.split(":")[0] for line in result.out.splitlines()[1:]] == ["v1", "v2"]
    for tag in ("v1", "v2"):
        raw = skopeo("inspect", "--raw", "--tls-verify=false",
                     f"docker://{plain.host}/it/zstd-all:{tag}")
        assert {layer["mediaType"] for layer in json.loads(raw)["layers"]} == \
            {mt.OCI_LAYER_ZSTD}
    # Plain tar layers (skopeo would substitute the compressed blobs it saw): the store's own
    # manifest and blobs, uploaded as they are.
    with Store(source) as store:
        image = store.image(app)
        for digest in [image.id, *image.diff_ids]:
            upload_blob(f"{plain.url}/v2/it/plain", store.blobs.read(digest))
        registry_put(f"{plain.url}/v2/it/plain/manifests/v1", store.blobs.read(image.manifest),
                     mt.OCI_MANIFEST)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{plain.host}/it/plain:v1")
    assert {layer["mediaType"] for layer in json.loads(raw)["layers"]} == {mt.OCI_LAYER}
    for repo in ("zstd-all:v2", "plain:v1"):
        root = tmp_path / repo.replace(":", "-")
        soute_cli(root, "pull", f"{plain.host}/it/{repo}").ok()
        assert image_id(root, f"{plain.host}/it/{repo}") == app
    error = soute_cli(source, "push", "-a", f"{plain.host}/it/zstd-all:v1").one_line_error()
    assert "tag can't be used with --all-tags" in error


def upload_blob(api: str, data: bytes) -> None:
    with urllib.request.urlopen(urllib.request.Request(f"{api}/blobs/uploads/",
                                                       method="POST")) as resp:
        location = resp.headers["Location"]
    registry_put(f"{location}&digest={sha256(data)}", data, "application/octet-stream")


def test_index_picks_the_platform(plain: RunningRegistry, source: Path, tmp_path: Path) -> None:
    push_as(source, f"{plain.host}/it/multi:amd64")
    api = f"{plain.url}/v2/it/multi"
    amd64 = registry_get(f"{api}/manifests/amd64", accept=mt.OCI_MANIFEST)
    manifest = json.loads(amd64)
    config = json.loads(registry_get(f"{api}/blobs/{manifest['config']['digest']}"))
    config["architecture"], config["variant"] = "arm64", "v8"
    arm_config = json.dumps(config).encode()
    upload_blob(api, arm_config)
    manifest["config"] = {"mediaType": mt.OCI_CONFIG, "digest": sha256(arm_config),
                          "size": len(arm_config)}
    arm64 = json.dumps(manifest).encode()
    registry_put(f"{api}/manifests/{sha256(arm64)}", arm64, mt.OCI_MANIFEST)
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": sha256(arm64), "size": len(arm64),
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        {"mediaType": mt.OCI_MANIFEST, "digest": sha256(amd64), "size": len(amd64),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    registry_put(f"{api}/manifests/v1", index, mt.OCI_INDEX)

    root = tmp_path / "store"
    name = f"{plain.host}/it/multi:v1"
    result = soute_cli(root, "pull", name)
    assert f"Digest: {sha256(index)}" in result.ok()  # the tag names the index
    assert image_id(root, name) == image_id(source, "app")
    arm = soute_cli(root, "pull", "--platform", "linux/arm64", name)
    assert arm.code == 0, arm.err
    assert image_id(root, name) == sha256(arm_config)
    assert "Already exists" in arm.err  # same layers
    # By digest: the index, resolved again for this host.
    by_digest = soute_cli(root, "pull", f"{plain.host}/it/multi@{sha256(index)}")
    assert by_digest.out.strip().splitlines()[-1] == f"{plain.host}/it/multi@{sha256(index)}"
    error = soute_cli(root, "pull", "--platform", "linux/s390x", name).one_line_error()
    assert "no matching manifest for linux/s390x" in error


def test_push_mounts_blobs_from_another_repository(plain: RunningRegistry, source: Path,
                                                   tmp_path: Path) -> None:
    with Proxy(plain.host) as proxy:
        push_as(source, f"{proxy.host}/mount/a:v1")
        proxy.log.clear()
        out = push_as(source, f"{proxy.host}/mount/b:v1")
        assert out.count("Mounted from mount/a") == 2
        assert [s for s in proxy.log if s.method in ("PATCH", "PUT") and "/blobs/" in s.path] \
            == []
        assert len(proxy.requests("POST", "mount=")) == 3  # two layers and the config

        # Locations learnt by a pull serve too: pulled from a, pushed to c.
        root = tmp_path / "store"
        soute_cli(root, "pull", f"{proxy.host}/mount/a:v1").ok()
        proxy.log.clear()
        out = push_as(root, f"{proxy.host}/mount/c:v1", source_name=f"{proxy.host}/mount/a:v1")
        assert out.count("Mounted from mount/a") == 2
        assert not proxy.requests("PATCH")
        # Pushing again: HEAD finds everything, nothing is compressed or sent.
        proxy.log.clear()
        out = push_as(root, f"{proxy.host}/mount/c:v1", source_name=f"{proxy.host}/mount/a:v1")
        assert out.count("Layer already exists") == 2
        assert not proxy.requests("POST") and not proxy.requests("PATCH")


def test_dropped_upload_resumes(plain: RunningRegistry, source: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(push_module, "MONOLITHIC_MAX", 256 << 10)
    monkeypatch.setattr(push_module, "CHUNK_SIZE", 1 << 20)
    with Proxy(plain.host, cut_patch_over=64 << 10) as proxy:
        push_as(source, f"{proxy.host}/resume/chunked:v1")
        assert proxy.cut_patch_over is None  # the cut happened
        cut = next(i for i, s in enumerate(proxy.log) if s.method == "PATCH"
                   and s.length > 64 << 10)
        # After the cut: the upload's status asked, and the upload carried on.
        after = proxy.log[cut + 1:]
        assert any(s.method == "GET" and "/blobs/uploads/" in s.path for s in after)
        assert any(s.method == "PUT" and "digest=" in s.path for s in after)
    # A monolithic PUT cut short starts again.
    monkeypatch.setattr(push_module, "MONOLITHIC_MAX", 8 << 20)
    with Proxy(plain.host, cut_put_over=64 << 10) as proxy:
        push_as(source, f"{proxy.host}/resume/whole:v1")
        assert proxy.cut_put_over is None
    for repo in ("chunked", "whole"):
        root = tmp_path / repo
        soute_cli(root, "pull", f"{plain.host}/resume/{repo}:v1").ok()
        assert image_id(root, f"{plain.host}/resume/{repo}:v1") == image_id(source, "app")
        assert "0 problem(s)" in soute_cli(root, "fsck").ok()


def test_dropped_download_resumes_with_range(plain: RunningRegistry, source: Path,
                                             tmp_path: Path) -> None:
    push_as(source, f"{plain.host}/it/download:v1")
    with Proxy(plain.host, cut_download_over=1 << 20) as proxy:
        root = tmp_path / "store"
        soute_cli(root, "pull", f"{proxy.host}/it/download:v1").ok()
        assert proxy.cut_download_over is None
        assert any("Range" in s.headers for s in proxy.requests("GET", "/blobs/sha256:"))
        assert image_id(root, f"{proxy.host}/it/download:v1") == image_id(source, "app")
        assert "0 problem(s)" in soute_cli(root, "fsck").ok()


def test_redirected_download_drops_credentials(plain: RunningRegistry, source: Path,
                                               tmp_path: Path) -> None:
    push_as(source, f"{plain.host}/it/redirect:v1")
    with Proxy(plain.host, basic=("bob", "builder")) as proxy:
        # Blob downloads go to "another host": the same proxy, named localhost.
        proxy.redirect_blobs = proxy.host.replace("127.0.0.1", "localhost")
        root = tmp_path / "store"
        soute_cli(root, "login", "-u", "bob", "--password-stdin", proxy.host,
                  stdin="builder\n").ok()
        soute_cli(root, "pull", f"{proxy.host}/it/redirect:v1").ok()
        assert len(proxy.redirected_auth) == 3  # config and two layers
        assert proxy.redirected_auth == [None, None, None]
        assert image_id(root, f"{proxy.host}/it/redirect:v1") == image_id(source, "app")


def test_corrupt_blob_is_refused_and_the_store_untouched(plain: RunningRegistry, source: Path,
                                                         tmp_path: Path) -> None:
    push_as(source, f"{plain.host}/it/corrupt:v1")
    root = tmp_path / "store"
    with Store(root) as store:
        bootstrap_busybox(store, tags=["docker.io/library/busybox:latest"])
    before = store_state(root)
    with Proxy(plain.host, corrupt_blobs=True) as proxy:
        error = soute_cli(root, "pull", f"{proxy.host}/it/corrupt:v1").final_error()
    assert "does not match its digest" in error
    assert store_state(root) == before
    fsck = soute_cli(root, "fsck").ok()
    assert "0 problem(s)" in fsck


def test_registry_refusing_oci_gets_docker_schema2(plain: RunningRegistry, source: Path) -> None:
    with Proxy(plain.host, refuse_oci=True) as proxy:
        out = push_as(source, f"{proxy.host}/it/fallback:v1")
        assert out.strip().splitlines()[-1].startswith("v1: digest: ")
        puts = proxy.requests("PUT", "/manifests/")
        assert [p.headers["Content-Type"] for p in puts] == [mt.OCI_MANIFEST, mt.DOCKER_MANIFEST]
        soute_cli(source, "tag", "app", f"{proxy.host}/it/fallback:v2").ok()
        error = soute_cli(source, "push", "--format", "oci",
                          f"{proxy.host}/it/fallback:v2").final_error()
        assert "manifest invalid" in error
    manifest = json.loads(registry_get(f"{plain.url}/v2/it/fallback/manifests/v1",
                                       accept=mt.DOCKER_MANIFEST))
    assert manifest["mediaType"] == mt.DOCKER_MANIFEST


def test_busy_registry_is_retried(plain: RunningRegistry, source: Path) -> None:
    with Proxy(plain.host, fail_first=3) as proxy:
        push_as(source, f"{proxy.host}/it/retried:v1")
        assert proxy.fail_first == 0


def test_bad_input_is_one_line(plain: RunningRegistry, source: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    cases = [
        (("pull", "Not A Ref"), "invalid reference format"),
        (("pull", f"{plain.host}/it/app:nope"), "not found: manifest unknown"),
        (("pull", f"{plain.host}/it/never-pushed"), "not found"),
        (("pull", f"127.0.0.1:{free_port()}/x:v1"), "connection refused"),
        (("pull", "--platform", "linux/*", f"{plain.host}/it/app:v1"), "invalid platform"),
        (("push", f"{plain.host}/it/not-local:v1"), "does not exist locally"),
        (("push", f"{plain.host}/it/app@sha256:{'0' * 64}"), "cannot push"),
        (("push", "--format", "docker", "--compression", "zstd", f"{plain.host}/x:v1"),
         "zstd"),
    ]
    for args, expected in cases:
        assert expected in soute_cli(root, *args).one_line_error(), args
    push = soute_cli(source, "push", f"127.0.0.1:{free_port()}/x:latest")
    assert push.code == 1 and "does not exist locally" in push.err
    soute_cli(source, "tag", "app", f"127.0.0.1:{free_port()}/x:latest").ok()
    assert store_state(root) == ([], [])


def test_mirror_serves_docker_hub_names(plain: RunningRegistry, source: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from soute.registry.pull import ensure_image

    push_as(source, f"{plain.host}/library/soute-mirrored:v1")
    monkeypatch.setenv("SOUTE_REGISTRY_MIRROR", plain.host)
    with Store(tmp_path / "store") as store:
        out = io.StringIO()
        image = ensure_image(store, "soute-mirrored:v1", out=out)
        assert "Unable to find image 'soute-mirrored:v1' locally" in out.getvalue()
        assert image.tags == ("docker.io/library/soute-mirrored:v1",)
        out = io.StringIO()
        assert ensure_image(store, "soute-mirrored:v1", out=out).id == image.id
        assert out.getvalue() == ""
    # Missing from the mirror: its "not found", not Docker Hub being out of reach.
    error = soute_cli(tmp_path / "store", "pull", "soute-not-mirrored").one_line_error()
    assert "manifest unknown" in error


def test_plain_http_only_where_allowed(work: Path, source: Path, tmp_path: Path,
                                      isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ip = global_ipv4()
    assert ip is not None, "the machine needs an address besides loopback for this test"
    with running_registry(work / "reg-lan", ip=ip) as lan:
        soute_cli(source, "tag", "app", f"{lan.host}/it/app:v1").ok()
        error = soute_cli(source, "push", f"{lan.host}/it/app:v1").final_error()
        assert "answers in plain HTTP" in error and "SOUTE_INSECURE_REGISTRIES" in error
        # Listed as insecure (here by network, in the settings file): HTTP is allowed.
        settings = isolated / "registries.json"
        settings.write_text(json.dumps({"insecure-registries": [f"{ip}/32"]}))
        monkeypatch.setenv("SOUTE_REGISTRIES_CONFIG", str(settings))
        push_as(source, f"{lan.host}/it/app:v1")
        monkeypatch.delenv("SOUTE_REGISTRIES_CONFIG")
        monkeypatch.setenv("SOUTE_INSECURE_REGISTRIES", f"other:5000,{lan.host}")
        soute_cli(tmp_path / "store", "pull", f"{lan.host}/it/app:v1").ok()


# ---------------------------------------------------------------------------- (b) Basic + TLS


def _trust(isolated: Path, reg: RunningRegistry, ca: CertAuthority) -> None:
    directory = isolated / "certs.d" / reg.host
    directory.mkdir(parents=True)
    (directory / "ca.crt").write_bytes(ca.ca_cert.read_bytes())


def test_basic_auth_over_tls(basic: RunningRegistry, ca: CertAuthority, source: Path,
                             isolated: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    config = isolated / "docker" / "config.json"
    login = ("login", "-u", ALICE[0], "--password-stdin", basic.host)
    # The test CA is not trusted yet.
    error = soute_cli(root, *login, stdin=ALICE[1]).one_line_error()
    assert "certificate" in error and "certs.d" in error
    # An insecure registry is spoken to over TLS without checking its certificate.
    monkeypatch.setenv("SOUTE_INSECURE_REGISTRIES", basic.host)
    soute_cli(root, *login, stdin=ALICE[1]).ok()
    soute_cli(root, "logout", basic.host).ok()
    monkeypatch.delenv("SOUTE_INSECURE_REGISTRIES")
    _trust(isolated, basic, ca)
    error = soute_cli(root, *login, stdin="not-the-password\n").one_line_error()
    assert error.startswith("soute: unauthorized:")
    assert json.loads(config.read_text())["auths"] == {}

    result = soute_cli(root, *login, stdin=ALICE[1] + "\n")
    assert result.out == "Login Succeeded\n"
    assert ALICE[1] not in result.out + result.err
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    auth = json.loads(config.read_text())["auths"][basic.host]["auth"]
    assert base64.b64decode(auth).decode() == f"{ALICE[0]}:{ALICE[1]}"

    name = f"{basic.host}/it/app:v1"
    push_as(source, name)
    soute_cli(root, "pull", name).ok()
    assert soute_run(root, name) == HELLO.decode()

    assert soute_cli(root, "logout", basic.host).ok() == \
        f"Removing login credentials for {basic.host}\n"
    assert basic.host not in json.loads(config.read_text())["auths"]
    assert soute_cli(root, "logout", basic.host).ok() == f"Not logged in to {basic.host}\n"
    error = soute_cli(root, "pull", name).one_line_error()
    assert "unauthorized" in error


def test_credential_helper(basic: RunningRegistry, ca: CertAuthority, source: Path, isolated: Path,
                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _trust(isolated, basic, ca)
    state = tmp_path / "helper-state.json"
    write_helper(tmp_path / "bin", "soutetest", state)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    config = isolated / "docker" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"credsStore": "soutetest", "keep": "me"}))
    root = tmp_path / "store"
    result = soute_cli(root, "login", "-u", ALICE[0], "--password-stdin", basic.host,
                       stdin=ALICE[1])
    assert result.out == "Login Succeeded\n" and "unencrypted" not in result.err
    doc = json.loads(config.read_text())
    assert doc["auths"] == {basic.host: {}} and doc["keep"] == "me"
    assert json.loads(state.read_text()) == {basic.host: list(ALICE)}
    push_as(source, f"{basic.host}/it/helper:v1")
    soute_cli(root, "logout", basic.host).ok()
    assert json.loads(state.read_text()) == {}


# ---------------------------------------------------------------------------- (c) tokens


def test_token_auth(token: tuple[RunningRegistry, TokenServer], source: Path, isolated: Path,
                    tmp_path: Path) -> None:
    reg, server = token
    root = tmp_path / "store"
    config = isolated / "docker" / "config.json"
    login = ("login", "-u", ALICE[0], "--password-stdin", reg.host)
    error = soute_cli(root, *login, stdin="wrong").one_line_error()
    assert error == "soute: unauthorized: incorrect username or password"
    soute_cli(root, *login, stdin=ALICE[1]).ok()
    # As docker: a refresh token is kept, not the password.
    entry = json.loads(config.read_text())["auths"][reg.host]
    assert entry["identitytoken"].startswith("refresh-alice-")
    assert base64.b64decode(entry["auth"]).decode() == "alice:"

    server.requests.clear()
    push_as(source, f"{reg.host}/public/app:v1")
    push_as(source, f"{reg.host}/private/app:v1")
    assert {(r.method, r.grant, r.user) for r in server.requests} == {
        ("POST", "refresh_token", "alice")}
    # Tokens are reused per scope: one for each repository, and one more for the mounts.
    assert len(server.requests) <= 3, server.requests
    soute_cli(source, "tag", "app", f"{reg.host}/locked/app:v1").ok()
    error = soute_cli(source, "push", f"{reg.host}/locked/app:v1").one_line_error()
    assert "denied: requested access to the resource is denied" in error

    soute_cli(root, "logout", reg.host).ok()
    server.requests.clear()
    soute_cli(root, "pull", f"{reg.host}/public/app:v1").ok()  # an anonymous token will do
    assert {r.grant for r in server.requests} == {"anonymous"}
    error = soute_cli(root, "pull", f"{reg.host}/private/app:v1").one_line_error()
    assert "pull access denied for" in error and "denied" in error
    assert soute_run(root, f"{reg.host}/public/app:v1") == HELLO.decode()


def test_run_and_build_pull_what_the_store_lacks(plain: RunningRegistry, source: Path,
                                                 tmp_path: Path) -> None:
    name = f"{plain.host}/it/auto:v1"
    push_as(source, name)
    empty = tmp_path / "fresh"
    p = subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(empty), "run",
                        "--rm", "--network", "none", name], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == HELLO.decode()
    assert f"Unable to find image '{name}' locally" in p.stderr
    other = tmp_path / "fresh2"
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {name}\nRUN cp /hello.txt /copy.txt\n")
    soute_cli(other, "build", "-q", "-t", "built", str(context)).ok()
    assert soute_run(other, "built", "cat", "/copy.txt") == HELLO.decode()
    missing = soute_cli(empty, "run", "--rm", f"{plain.host}/it/nothing:v1")
    assert missing.code == 125 and "No such image" in missing.err
    assert len(missing.err.strip().splitlines()) <= 2  # "Unable to find..." and the error


# ---------------------------------------------------------------------------- packed layers


def _blob_files(root: Path) -> set[str]:
    return {"sha256:" + p.name for p in (root / "oci" / "blobs" / "sha256").iterdir()}


def _pushed_and_pulled(plain: RunningRegistry, source: Path, tmp_path: Path,
                       repository: str) -> tuple[str, Path]:
    """``app`` pushed as REPOSITORY:v1, then pulled into a new store: (name, store root)."""
    name = f"{plain.host}/{repository}:v1"
    push_as(source, name)
    root = tmp_path / "store"
    soute_cli(root, "pull", name).ok()
    return name, root


def _registry_manifest(reg: RunningRegistry, path: str, tag: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(registry_get(f"{reg.url}/v2/{path}/manifests/{tag}",
                                                  accept=mt.OCI_MANIFEST))
    return doc


def test_pull_keeps_the_registry_blobs_and_unpacks_them_when_first_used(
        plain: RunningRegistry, source: Path, tmp_path: Path) -> None:
    name = f"{plain.host}/it/packed:v1"
    push_as(source, name)
    compressed = {layer["digest"] for layer in _registry_manifest(plain, "it/packed",
                                                                  "v1")["layers"]}
    with Store(source) as store:
        app = store.image(image_id(source, "app"))
    root = tmp_path / "store"
    soute_cli(root, "pull", name).ok()
    # The registry's blobs as they came; nothing decompressed or unpacked yet.
    assert compressed <= _blob_files(root)
    assert not set(app.diff_ids) & _blob_files(root)
    assert not list((root / "snapshots").iterdir())
    # Sizes are the uncompressed ones docker shows, from what the gzip blobs announce.
    assert json.loads(soute_cli(root, "inspect", name).ok())[0]["Size"] == app.size

    def sizes(store: Path, image: str) -> list[str]:
        out = soute_cli(store, "history", "--format", "json", image).ok()
        return [json.loads(line)["Size"] for line in out.splitlines()]

    assert sizes(root, name) == sizes(source, "app")
    # The store's OCI layout names the compressed blobs: other tools read it meanwhile.
    from soute.store.names import layout_ref_name

    skopeo("copy", "-q", f"oci:{root / 'oci'}:{layout_ref_name(name)}",
           f"dir:{tmp_path / 'copy'}")
    assert compressed <= {"sha256:" + p.name for p in (tmp_path / "copy").iterdir()}
    # First use: decompressed into snapshots, each DiffID checked.
    assert soute_run(root, name) == HELLO.decode()
    assert len(list((root / "snapshots").iterdir())) == 2
    assert not set(app.diff_ids) & _blob_files(root)  # no uncompressed copy kept
    assert "0 problem(s)" in soute_cli(root, "fsck").ok()
    # Garbage collection keeps the packed blobs of a kept image, and frees them with it.
    soute_cli(root, "image", "prune", "-f").ok()
    assert compressed <= _blob_files(root)
    soute_cli(root, "rmi", name).ok()
    assert not compressed & _blob_files(root)


def test_save_and_push_of_a_pulled_image(plain: RunningRegistry, source: Path, tmp_path: Path,
                                        docker: Docker) -> None:
    name = f"{plain.host}/it/packed-save:v1"
    push_as(source, name)
    compressed = [layer["digest"] for layer in _registry_manifest(plain, "it/packed-save",
                                                                  "v1")["layers"]]
    root = tmp_path / "store"
    soute_cli(root, "pull", name).ok()
    # gzip: the registry's blobs go in as they are, nothing decompressed.
    archive = tmp_path / "app.tar"
    soute_cli(root, "save", "--compression", "gzip", "-o", str(archive), name).ok()
    members = run("tar", "tf", archive).split()
    assert {f"blobs/sha256/{d.partition(':')[2]}" for d in compressed} <= set(members)
    docker("load", "-i", archive)
    assert docker("run", "--rm", "--network", "none", name) == HELLO.decode()
    # Uncompressed: decompressed from the packed blobs (and checked) on the way, and only
    # there: the store keeps each layer once, compressed.
    diff_ids = json.loads(soute_cli(root, "inspect", "-f", "{{json .RootFS.Layers}}",
                                    name).ok())
    plain_archive = tmp_path / "plain.tar"
    soute_cli(root, "save", "--format", "oci", "-o", str(plain_archive), name).ok()
    stored = root / "oci" / "blobs" / "sha256"
    assert [d for d in diff_ids if (stored / d.partition(":")[2]).exists()] == []
    assert not list((root / "tmp").iterdir())
    other = tmp_path / "other"
    soute_cli(other, "load", "-i", str(plain_archive)).ok()
    assert soute_run(other, name) == HELLO.decode()
    # zstd: decompressed and compressed again for the registry.
    zname = f"{plain.host}/it/packed-zstd:v1"
    soute_cli(root, "tag", name, zname).ok()
    pushed = soute_cli(root, "push", "--compression", "zstd", zname)
    assert pushed.code == 0, pushed.err
    layers = _registry_manifest(plain, "it/packed-zstd", "v1")["layers"]
    assert {layer["mediaType"] for layer in layers} == {mt.OCI_LAYER_ZSTD}
    third = tmp_path / "third"
    soute_cli(third, "pull", zname).ok()
    assert soute_run(third, zname) == HELLO.decode()
    assert "0 problem(s)" in soute_cli(root, "fsck").ok()


def test_a_layer_unlike_its_diff_id_is_refused_when_first_used(
        plain: RunningRegistry, source: Path, tmp_path: Path) -> None:
    """A pull checks blob digests; a DiffID only when the layer is first decompressed (docker
    checks it during the pull: docs/differences.md)."""
    push_as(source, f"{plain.host}/it/lying:v1")
    api = f"{plain.url}/v2/it/lying"
    manifest = _registry_manifest(plain, "it/lying", "v1")
    config = json.loads(registry_get(f"{api}/blobs/{manifest['config']['digest']}"))
    config["rootfs"]["diff_ids"][-1] = "sha256:" + "0" * 64
    lying = json.dumps(config).encode()
    upload_blob(api, lying)
    manifest["config"] = {"mediaType": mt.OCI_CONFIG, "digest": sha256(lying),
                          "size": len(lying)}
    registry_put(f"{api}/manifests/v2", json.dumps(manifest).encode(), mt.OCI_MANIFEST)

    root = tmp_path / "store"
    name = f"{plain.host}/it/lying:v2"
    soute_cli(root, "pull", name).ok()
    p = subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(root), "run",
                        "--rm", "--network", "none", name], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    [line] = p.stderr.strip().splitlines()
    assert "does not match its packed blob" in line and "pull it again" in line
    # Only the base layer (whose DiffID held) was unpacked; nothing half-made is left.
    assert len(list((root / "snapshots").iterdir())) == 1
    assert not list((root / "tmp").iterdir())
    fsck = soute_cli(root, "fsck")
    assert "does not match its packed blob" in fsck.out + fsck.err


def test_sizes_of_layers_whose_blobs_announce_none(plain: RunningRegistry, source: Path,
                                                   tmp_path: Path) -> None:
    """soute's zstd frames carry no content size: a pulled layer's size is a guess until it is
    decompressed. An image built on it, or its tars loaded meanwhile, get the real sizes."""
    name = f"{plain.host}/it/packed-sizes:v1"
    push_as(source, name, "--compression", "zstd")
    with Store(source) as store:
        app = store.image(image_id(source, "app"))
    root = tmp_path / "store"
    soute_cli(root, "pull", name).ok()
    context = tmp_path / "context"
    context.mkdir()
    (context / "f").write_text("f\n")
    (context / "Dockerfile").write_text(f"FROM {name}\nCOPY f /f\n")
    soute_cli(root, "build", "-q", "-t", "built", str(context)).ok()
    with Store(root) as store:
        for image in store.images():
            assert image.size == sum(size for _, size in image.layers)
        assert store.image(app.id).size == app.size
    # The same layers loaded as tars before the pulled ones were ever used.
    other = tmp_path / "other"
    soute_cli(other, "pull", name).ok()
    archive = tmp_path / "app.tar"
    soute_cli(source, "save", "-o", str(archive), "app").ok()
    soute_cli(other, "load", "-i", str(archive)).ok()
    assert "0 problem(s)" in soute_cli(other, "fsck").ok()
    assert json.loads(soute_cli(other, "inspect", name).ok())[0]["Size"] == app.size


def test_garbage_collection_keeps_every_blob_a_manifest_names(
        plain: RunningRegistry, source: Path, tmp_path: Path) -> None:
    """Two pulls side by side of images sharing a layer that their registries compressed
    differently: each manifest names its own blob, packed_layers records the first."""
    import gzip

    from soute.store.names import layout_ref_name
    from soute.store.store import PackedLayer

    name, root = _pushed_and_pulled(plain, source, tmp_path, "it/packed-twice")
    second = f"{plain.host}/it/packed-twice:v2"
    with Store(root) as store:
        image = store.image(image_id(root, name))
        top = image.diff_ids[-1]
        with store.open_layer(top) as f:
            blob = gzip.compress(f.read(), compresslevel=1, mtime=1)
        digest = store.blobs.write(blob)
        config = json.loads(store.blobs.read(image.id))
        config["author"] = "the other pull"
        store.add_image(json.dumps(config).encode(), image.layers, tags=[second],
                        packed=[PackedLayer(top, digest, mt.OCI_LAYER_GZIP, len(blob))])
    soute_cli(root, "image", "prune", "-f").ok()
    assert digest in _blob_files(root)
    skopeo("copy", "-q", f"oci:{root / 'oci'}:{layout_ref_name(second)}",
           f"dir:{tmp_path / 'copy'}")


def test_save_gzip_of_a_blob_its_registry_calls_gzip_wrongly(
        plain: RunningRegistry, source: Path, tmp_path: Path) -> None:
    import tarfile

    push_as(source, f"{plain.host}/it/mislabelled:zstd", "--compression", "zstd")
    manifest = _registry_manifest(plain, "it/mislabelled", "zstd")
    for layer in manifest["layers"]:
        layer["mediaType"] = mt.OCI_LAYER_GZIP
    registry_put(f"{plain.url}/v2/it/mislabelled/manifests/gzip", json.dumps(manifest).encode(),
                 mt.OCI_MANIFEST)
    root = tmp_path / "store"
    name = f"{plain.host}/it/mislabelled:gzip"
    soute_cli(root, "pull", name).ok()
    archive = tmp_path / "app.tar"
    soute_cli(root, "save", "--compression", "gzip", "-o", str(archive), name).ok()
    with tarfile.open(archive) as t:
        [entry] = json.load(t.extractfile("manifest.json"))  # type: ignore[arg-type]
        for member in entry["Layers"]:
            assert t.extractfile(member).read(2) == b"\x1f\x8b"  # type: ignore[union-attr]


def test_an_image_lying_about_a_layer_does_not_poison_the_genuine_one(
        plain: RunningRegistry, source: Path, tmp_path: Path) -> None:
    """An image whose config claims another image's layer for a blob that holds something
    else: pulled (its DiffIDs are checked at first use), it must not stand in for that layer
    when the genuine image is pulled, run or pushed."""
    push_as(source, f"{plain.host}/it/genuine:v1")
    api = f"{plain.url}/v2/it/genuine"
    genuine = _registry_manifest(plain, "it/genuine", "v1")
    config = json.loads(registry_get(f"{api}/blobs/{genuine['config']['digest']}"))
    base_blob, top_blob = genuine["layers"]
    # The lie: the top layer's blob presented as the base layer.
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][:1]
    config["history"] = config["history"][:1]
    lying = json.dumps(config).encode()
    upload_blob(api, lying)
    manifest = {**genuine, "layers": [top_blob], "config": {
        "mediaType": mt.OCI_CONFIG, "digest": sha256(lying), "size": len(lying)}}
    registry_put(f"{api}/manifests/lie", json.dumps(manifest).encode(), mt.OCI_MANIFEST)

    root = tmp_path / "store"
    soute_cli(root, "pull", f"{plain.host}/it/genuine:lie").ok()
    pulled = soute_cli(root, "pull", f"{plain.host}/it/genuine:v1")
    assert pulled.code == 0, pulled.err
    assert pulled.err.count("Pull complete") == 2  # the base layer too, checked this time
    assert soute_run(root, f"{plain.host}/it/genuine:v1") == HELLO.decode()
    # Pushed elsewhere in the registry, the base layer is its own blob, not the lie's.
    copy = f"{plain.host}/it/genuine-copy:v1"
    soute_cli(root, "tag", f"{plain.host}/it/genuine:v1", copy).ok()
    soute_cli(root, "push", copy).ok()
    assert _registry_manifest(plain, "it/genuine-copy", "v1")["layers"][0]["digest"] == \
        base_blob["digest"]
    assert "0 problem(s)" in soute_cli(root, "fsck").ok()


def test_load_of_an_archive_without_a_layer_the_store_holds_packed(
        plain: RunningRegistry, source: Path, tmp_path: Path) -> None:
    import tarfile

    _, root = _pushed_and_pulled(plain, source, tmp_path, "it/packed-load")
    full = tmp_path / "full.tar"
    soute_cli(source, "save", "-o", str(full), "app").ok()
    with Store(source) as store:
        base = store.image(image_id(source, "app")).diff_ids[0]
    partial = tmp_path / "partial.tar"
    with tarfile.open(full) as src, tarfile.open(partial, "w") as dst:
        for member in src.getmembers():
            if base.partition(":")[2] not in member.name:  # the base layer left out
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    soute_cli(root, "load", "-i", str(partial)).ok()
    assert soute_run(root, "app") == HELLO.decode()
    assert "0 problem(s)" in soute_cli(root, "fsck").ok()


def test_a_lost_packed_blob_is_replaced_by_the_next_pull(
        plain: RunningRegistry, source: Path, tmp_path: Path) -> None:
    name, root = _pushed_and_pulled(plain, source, tmp_path, "it/packed-lost")
    with Store(root) as store:
        top = store.image(image_id(root, name)).diff_ids[-1]
        packed = store.packed_layer(top)
        assert packed is not None and not packed.verified
        store.blobs.path(packed.digest).unlink()
    assert "is missing" in soute_cli(root, "fsck").out
    again = soute_cli(root, "pull", name)
    assert again.code == 0, again.err
    assert again.err.count("Pull complete") == 1  # the lost one, checked as it came
    with Store(root) as store:
        replaced = store.packed_layer(top)
        assert replaced is not None and replaced.verified
    assert soute_run(root, name) == HELLO.decode()
    assert "0 problem(s)" in soute_cli(root, "fsck").ok()
