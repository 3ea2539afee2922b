"""The build cache shared through a real registry: ``--cache-to`` on one store,
``--cache-from`` on another, empty one, which must reuse the layers instead of running the
steps (issue 6, part 5)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_fixtures import (
    RunningRegistry,
    registry_get,
    registry_put,
    running_registry,
    sha256,
)
from soute.build.remote_cache import CONFIG_TYPE, parse_cache_spec
from soute.errors import SouteError
from soute_cli import soute

EPOCH = "1700000000"  # busybox bootstraps identically on every store under it

# Several RUNs; /rand differs on every run, so an equal /rand proves the RUN did not run.
SINGLE = """\
FROM busybox
COPY app.txt /app/
RUN echo one > /one
RUN head -c 32 /dev/urandom | od -An -tx1 > /rand
RUN true
ENV K=v
RUN cat /app/app.txt /one > /both
CMD ["sh"]
"""

MULTI = """\
FROM busybox AS builder
RUN head -c 32 /dev/urandom | od -An -tx1 > /built
RUN echo tool > /tool

FROM busybox
COPY --from=builder /built /built
RUN head -c 32 /dev/urandom | od -An -tx1 > /final
"""


def ok(p: subprocess.CompletedProcess[str]) -> str:
    """A build's progress (stderr), which these tests read."""
    assert p.returncode == 0, p.stderr
    return p.stderr


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def new_store(base: Path, name: str) -> Path:
    """An empty store with only the busybox base, the same image on every store."""
    root = base / name
    env = {"SOURCE_DATE_EPOCH": EPOCH}
    out = subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(root),
                          "bootstrap", "busybox"], capture_output=True, text=True,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return root


def context(base: Path, name: str) -> Path:
    """A build context; each store gets its own copy at its own path."""
    ctx = base / name
    ctx.mkdir(parents=True)
    (ctx / "app.txt").write_text("hello\n")
    (ctx / "Dockerfile").write_text(SINGLE)
    return ctx


def image_id(root: Path, name: str) -> str:
    out = soute(root, "inspect", name)
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)[0]["Id"])


def cat(root: Path, image: str, path: str) -> str:
    out = soute(root, "run", "--rm", "--network", "none", image, "cat", path)
    assert out.returncode == 0, out.stderr
    return out.stdout


def steps(progress: str) -> dict[str, list[str]]:
    """The progress lines of each step, by its title (``RUN echo one > /one``)."""
    titles: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for line in progress.splitlines():
        m = re.match(r"#(\d+) (.*)", line)
        if not m:
            continue
        n, text = m.groups()
        if n not in titles:
            title = re.sub(r"^\[[^]]*\] ", "", text)
            titles[n] = title
            out[title] = []
        else:
            out[titles[n]].append(text)
    return out


def run_steps(progress: str) -> dict[str, bool]:
    """For each RUN/COPY step: whether it was CACHED."""
    return {t: "CACHED" in lines for t, lines in steps(progress).items()
            if t.startswith(("RUN ", "COPY "))}


def cache_config(registry: RunningRegistry, repo: str, tag: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    manifest = json.loads(registry_get(f"{registry.url}/v2/{repo}/manifests/{tag}",
                                       accept="application/vnd.oci.image.manifest.v1+json"))
    config = registry_get(f"{registry.url}/v2/{repo}/blobs/{manifest['config']['digest']}")
    return manifest, json.loads(config)


def blob_file(registry: RunningRegistry, digest: str) -> Path:
    hexpart = digest.removeprefix("sha256:")
    return (registry.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart
            / "data")


def upload_blob(registry: RunningRegistry, repo: str, data: bytes) -> None:
    """A monolithic upload (POST, then PUT with the digest)."""
    post = urllib.request.Request(f"{registry.url}/v2/{repo}/blobs/uploads/", method="POST",
                                  data=b"")
    with urllib.request.urlopen(post, timeout=30) as resp:
        location = urllib.parse.urljoin(registry.url, resp.headers["Location"])
    sep = "&" if "?" in location else "?"
    put = urllib.request.Request(f"{location}{sep}digest={sha256(data)}", method="PUT",
                                 data=data,
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(put, timeout=30) as resp:
        assert resp.status == 201


# ---------------------------------------------------------------------------- one stage


def test_a_second_store_downloads_the_layers_instead_of_running_the_steps(
        registry: RunningRegistry, tmp_path: Path) -> None:
    a, b = new_store(tmp_path, "a"), new_store(tmp_path, "b")
    assert image_id(a, "busybox") == image_id(b, "busybox")
    ref = f"{registry.host}/cache/single:v1"

    made = ok(soute(a, "build", "-t", "app", "--cache-to", f"type=registry,ref={ref}",
                    str(context(tmp_path, "ctx-a"))))
    assert not any(run_steps(made).values())
    assert "exporting cache to registry" in made

    manifest, config = cache_config(registry, "cache/single", "v1")
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    assert all(m["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
               for m in manifest["layers"])
    # COPY, three RUNs with layers, RUN true without one.
    assert len(config["records"]) == 5 and len(config["layers"]) == 4
    assert sum("layer" not in r for r in config["records"]) == 1

    # B: its context at another path, its store empty but for busybox.
    reused = ok(soute(b, "build", "-t", "app", "--cache-from", f"type=registry,ref={ref}",
                      str(context(tmp_path, "ctx-b"))))
    assert "importing cache manifest from" in reused
    assert run_steps(reused) and all(run_steps(reused).values()), reused
    assert "WARNING" not in reused
    # Nothing ran: the random bytes are A's, and so is every byte of the image (history
    # times come from the records).
    assert cat(b, "app", "/rand") == cat(a, "app", "/rand")
    assert cat(b, "app", "/both") == "hello\none\n"
    assert image_id(b, "app") == image_id(a, "app")

    # The downloaded results are now B's own cache: no registry needed any more.
    again = ok(soute(b, "build", "-t", "app2", str(context(tmp_path, "ctx-b2"))))
    assert all(run_steps(again).values())
    assert image_id(b, "app2") == image_id(a, "app")

    # B exporting what it reused writes the same cache, byte for byte.
    ref2 = f"{registry.host}/cache/single:from-b"
    ok(soute(b, "build", "-t", "app", "--cache-from", ref, "--cache-to",
             f"type=registry,ref={ref2}", str(context(tmp_path, "ctx-b3"))))
    again_manifest, _ = cache_config(registry, "cache/single", "from-b")
    assert again_manifest == manifest


def test_a_changed_step_runs_and_the_rest_of_the_cache_still_serves(
        registry: RunningRegistry, tmp_path: Path) -> None:
    a, b = new_store(tmp_path, "a"), new_store(tmp_path, "b")
    ref = f"{registry.host}/cache/changed"
    ok(soute(a, "build", "-t", "app", "--cache-to", f"type=registry,ref={ref}",
             str(context(tmp_path, "ctx-a"))))
    ctx = context(tmp_path, "ctx-b")
    (ctx / "app.txt").write_text("changed\n")
    out = ok(soute(b, "build", "-t", "app", "--cache-from", f"type=registry,ref={ref}",
                   str(ctx)))
    # The COPY's content changed: it and every step after it run.
    assert not any(run_steps(out).values()), out
    assert cat(b, "app", "/both") == "changed\none\n"


# ---------------------------------------------------------------------------- stages


def test_mode_min_exports_the_final_stage_and_mode_max_every_stage(
        registry: RunningRegistry, tmp_path: Path) -> None:
    a = new_store(tmp_path, "a")
    small, full = f"{registry.host}/cache/multi:min", f"{registry.host}/cache/multi:max"
    ok(soute(a, "build", "-t", "app", "--cache-to", f"type=registry,ref={small}",
             "--cache-to", f"type=registry,ref={full},mode=max", "-", input=MULTI))
    _, min_config = cache_config(registry, "cache/multi", "min")
    _, max_config = cache_config(registry, "cache/multi", "max")
    assert len(min_config["records"]) == 2  # COPY --from, RUN of the final stage
    assert len(max_config["records"]) == 4  # and the builder's two RUNs

    # --target builder from a max export: the builder's steps are reused.
    c = new_store(tmp_path, "c")
    out = ok(soute(c, "build", "-t", "b", "--target", "builder", "--cache-from", full, "-",
                   input=MULTI))
    assert all(run_steps(out).values()) and len(run_steps(out)) == 2, out
    ok(soute(a, "build", "-t", "a-builder", "--target", "builder", "-", input=MULTI))
    assert cat(c, "b", "/built") == cat(a, "a-builder", "/built")

    # From a min export the builder stage is not there: it runs.
    d = new_store(tmp_path, "d")
    out = ok(soute(d, "build", "-t", "b", "--target", "builder", "--cache-from", small, "-",
                   input=MULTI))
    assert not any(run_steps(out).values()), out
    assert cat(d, "b", "/built") != cat(a, "a-builder", "/built")

    # The whole build from the max export: nothing runs, the same image.
    e = new_store(tmp_path, "e")
    out = ok(soute(e, "build", "-t", "app", "--cache-from", full, "-", input=MULTI))
    assert all(run_steps(out).values()) and len(run_steps(out)) == 4, out
    assert image_id(e, "app") == image_id(a, "app")

    # From the min export: soute builds stages in order, so the builder runs (its key is
    # what the final stage's steps are keyed on); the final stage is then reused as is.
    f = new_store(tmp_path, "f")
    out = ok(soute(f, "build", "-t", "app", "--cache-from", small, "-", input=MULTI))
    cached = run_steps(out)
    assert [cached[t] for t in cached] == [False, False, True, True], out
    assert image_id(f, "app") == image_id(a, "app")
    assert cat(f, "app", "/final") == cat(a, "app", "/final")


# ---------------------------------------------------------------------------- failures


def test_a_missing_or_unreachable_cache_only_warns(
        registry: RunningRegistry, tmp_path: Path) -> None:
    b = new_store(tmp_path, "b")
    missing = f"{registry.host}/cache/none:nothing"
    out = ok(soute(b, "build", "-t", "app", "--cache-from", f"type=registry,ref={missing}",
                   "--cache-from", "type=registry,ref=127.0.0.1:1/cache/x",
                   str(context(tmp_path, "ctx"))))
    warnings = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2, out
    assert warnings[0].startswith(f"WARNING: importing cache manifest from {missing} failed: "
                                  "manifest for"), warnings
    assert warnings[0].endswith("not found: manifest unknown: manifest unknown"), warnings
    assert warnings[1] == ("WARNING: importing cache manifest from 127.0.0.1:1/cache/x:latest "
                           "failed: cannot reach registry 127.0.0.1:1: connection refused")
    assert not any(run_steps(out).values())

    # A BuildKit cache is recognised, and not used: its keys are not soute's.
    config = json.dumps({"layers": [], "records": []}).encode()
    upload_blob(registry, "cache/buildkit", config)
    registry_put(f"{registry.url}/v2/cache/buildkit/manifests/latest", json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.buildkit.cacheconfig.v0",
                   "digest": sha256(config), "size": len(config)},
        "layers": []}).encode(), "application/vnd.oci.image.manifest.v1+json")
    out = ok(soute(b, "build", "-t", "app", "--cache-from", f"{registry.host}/cache/buildkit",
                   str(context(tmp_path, "ctx3"))))
    assert (f"failed: {registry.host}/cache/buildkit:latest is a BuildKit cache: its keys are "
            "BuildKit's, which soute's are not" in out), out

    # An image is not a cache.
    ok(soute(b, "tag", "app", f"{registry.host}/cache/image:v1"))
    pushed = soute(b, "push", f"{registry.host}/cache/image:v1")
    assert pushed.returncode == 0, pushed.stderr
    out = ok(soute(b, "build", "-t", "app", "--no-cache", "--cache-from",
                   f"{registry.host}/cache/image:v1", str(context(tmp_path, "ctx2"))))
    assert (f"failed: {registry.host}/cache/image:v1 is an image, not a soute build cache"
            in out), out


def test_a_corrupted_cache_layer_is_refused_and_its_step_runs(
        registry: RunningRegistry, tmp_path: Path) -> None:
    a, b = new_store(tmp_path, "a"), new_store(tmp_path, "b")
    ref = f"{registry.host}/cache/corrupt:v1"
    ok(soute(a, "build", "-t", "app", "--cache-to", f"type=registry,ref={ref}",
             str(context(tmp_path, "ctx-a"))))
    _, config = cache_config(registry, "cache/corrupt", "v1")
    # The layer of the /rand step: the third record (COPY, RUN echo, RUN head).
    layer = config["layers"][config["records"][2]["layer"]]
    path = blob_file(registry, layer["blob"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the registry serves it as it is on disk
    path.write_bytes(bytes(data))

    out = ok(soute(b, "build", "-t", "app", "--cache-from", ref,
                   str(context(tmp_path, "ctx-b"))))
    short = layer["blob"].removeprefix("sha256:")[:12]
    assert f"WARNING: cache layer {short} from {ref} refused: " in out, out
    assert "does not match its digest" in out
    cached = run_steps(out)
    assert cached == {"COPY app.txt /app/": True, "RUN echo one > /one": True,
                      "RUN head -c 32 /dev/urandom | od -An -tx1 > /rand": False,
                      "RUN true": True, "RUN cat /app/app.txt /one > /both": True}, out
    assert cat(b, "app", "/rand") != cat(a, "app", "/rand")
    # Nothing of the bad blob reached the store.
    assert not (b / "oci/blobs/sha256" / layer["diffID"].removeprefix("sha256:")).exists()
    assert sha256(bytes(data)) != layer["blob"]


def test_a_failed_export_fails_the_build_unless_errors_are_ignored(tmp_path: Path) -> None:
    b = new_store(tmp_path, "b")
    out = soute(b, "build", "-t", "app", "--cache-to", "type=registry,ref=127.0.0.1:1/c",
                "-", input="FROM busybox\nRUN echo x > /x\n")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith(
        "soute: exporting cache to 127.0.0.1:1/c:latest failed: cannot reach registry "
        "127.0.0.1:1: connection refused"), out.stderr
    out = soute(b, "build", "-t", "app", "--cache-to",
                "type=registry,ref=127.0.0.1:1/c,ignore-error=true", "-",
                input="FROM busybox\nRUN echo x > /x\n")
    assert out.returncode == 0, out.stderr
    assert "WARNING: exporting cache to 127.0.0.1:1/c:latest failed" in out.stderr


# ---------------------------------------------------------------------------- options


@pytest.mark.parametrize(("value", "export", "ref", "mode"), [
    ("type=registry,ref=r.example/c", True, "r.example/c:latest", "min"),
    ("type=registry,ref=r.example/c:t,mode=max", True, "r.example/c:t", "max"),
    ("r.example/c:t", False, "r.example/c:t", "min"),
    ('"type=registry","ref=r.example/c",image-manifest=true', True, "r.example/c:latest",
     "min"),
])
def test_cache_options_are_read_as_buildx_reads_them(value: str, export: bool, ref: str,
                                                      mode: str) -> None:
    spec = parse_cache_spec(value, export=export)
    assert (str(spec.ref), spec.mode) == (ref, mode)


@pytest.mark.parametrize(("value", "message"), [
    ("type=local,dest=/tmp/x", "--cache-to type 'local' is not supported by soute"),
    ("ref=r.example/c", "invalid --cache-to 'ref=r.example/c': type required"),
    ("type=registry", "invalid --cache-to 'type=registry': ref required"),
    ("type=registry,ref=r.example/c,mode=mid", "invalid --cache-to mode 'mid'"),
    ("type=registry,ref=r.example/c,mod=max", "unknown option 'mod'"),
    ("type=registry,ref=r.example/c@sha256:" + "0" * 64, "a digest names content"),
])
def test_bad_cache_options_are_one_line(value: str, message: str) -> None:
    with pytest.raises(SouteError, match=re.escape(message)):
        parse_cache_spec(value, export=True)


def test_a_bad_cache_option_ends_the_build_before_it_starts(tmp_path: Path) -> None:
    out = soute(tmp_path / "s", "build", "--cache-from", "type=gha", "-", input="FROM busybox\n")
    assert out.returncode == 1
    assert out.stderr == ("soute: --cache-from type 'gha' is not supported by soute "
                          "(use type=registry,ref=REGISTRY/REPO[:TAG])\n")
