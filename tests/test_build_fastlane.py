"""The fast lane of a fully cached build (soute.build.fastlane): the same answer as the
normal path, and the normal path whenever anything the build read has moved.

Which path a build took shows in what it imported: the fast lane never imports the builder
(``python -X importtime`` lists every module a process imports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soute.build.fastlane import RACY_NS
from soute_cli import busybox_store, ok, soute

DOCKERFILE = """\
FROM base:1
ARG V
ENV GREETING=hello
COPY file.txt /file.txt
COPY dir /dir
RUN echo "v=$V" > /v && cat /file.txt > /copy
"""

CASES = ("same", "edit", "add", "ignore", "retag_base", "prune", "rmi", "retag_out",
         "build_arg", "dockerfile", "unrelated", "no_cache", "self_tag", "closed", "iid")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = busybox_store(tmp_path_factory)
    ok(soute(path, "tag", "busybox", "base:1"))
    return path


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One context per test, all made first: a memo trusts only entries older than the
    build by RACY_NS, so the tests wait for that once."""
    top = tmp_path_factory.mktemp("contexts")
    made = {}
    for name in CASES:
        ctx = top / name
        (ctx / "dir" / "sub").mkdir(parents=True)
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        (ctx / "file.txt").write_text(f"content of {name}\n")
        (ctx / "dir" / "a").write_text("a\n")
        (ctx / "dir" / "sub" / "b").write_text("b\n")
        (ctx / "other.txt").write_text("not copied\n")
        made[name] = ctx
    time.sleep(RACY_NS / 1e9 + 0.2)
    return made


def build(store: Path, ctx: Path, *args: str, env: dict[str, str] | None = None,
          ) -> tuple[subprocess.CompletedProcess[str], bool]:
    """``soute build`` of ``ctx`` tagged out:1; returns the process (import lines left out
    of its stderr) and whether it took the fast lane."""
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "soute.cli.main", "--root", str(store),
         "build", "-t", "out:1", *args, str(ctx)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )
    lines = p.stderr.splitlines(keepends=True)
    engine = any(line.rstrip().endswith("| soute.build.engine") for line in lines)
    p.stderr = "".join(line for line in lines if not line.startswith("import time:"))
    assert p.returncode == 0, (p.args, p.stdout, p.stderr)
    return p, not engine


def ready(store: Path, ctx: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Build ``ctx`` until its memo is written (a cold build, then a cached one); then the
    fast lane answers. Returns the image ID."""
    build(store, ctx, *args, env=env)
    cached, fast = build(store, ctx, *args, env=env)
    assert not fast and "CACHED" in cached.stderr
    again, fast = build(store, ctx, *args, env=env)
    assert fast, again.stderr
    return image_id(store)


def image_id(store: Path) -> str:
    return str(json.loads(ok(soute(store, "inspect", "out:1")))[0]["Id"])


def test_fast_lane_answers_as_the_build_did(store: Path, contexts: dict[str, Path],
                                            tmp_path: Path) -> None:
    ctx = contexts["same"]
    iid = tmp_path / "iid"
    build(store, ctx, "--iidfile", str(iid))
    cached, fast = build(store, ctx, "--iidfile", str(iid))
    assert not fast
    iid.unlink()
    again, fast = build(store, ctx, "--iidfile", str(iid))
    assert fast
    assert (again.stdout, again.stderr) == (cached.stdout, cached.stderr)
    assert "#6 CACHED" in again.stderr and "naming to out:1 done" in again.stderr
    assert iid.read_text() == image_id(store)
    quiet, fast = build(store, ctx, "-q")
    assert not fast  # another command line: its own memo
    quiet_again, fast = build(store, ctx, "-q")
    assert fast and quiet_again.stdout == quiet.stdout == image_id(store) + "\n"


def test_a_copied_file_edited_keeps_its_size_and_mtime(store: Path,
                                                       contexts: dict[str, Path]) -> None:
    ctx = contexts["edit"]
    before = ready(store, ctx)
    f = ctx / "file.txt"
    st = f.stat()
    f.write_text(f.read_text().upper())  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only ctime moves
    p, fast = build(store, ctx)
    assert not fast and "#6 CACHED" not in p.stderr
    assert image_id(store) != before
    assert ok(soute(store, "run", "--rm", "out:1", "cat", "/copy")) == "CONTENT OF EDIT\n"


def test_a_file_added_to_a_copied_directory(store: Path, contexts: dict[str, Path]) -> None:
    ctx = contexts["add"]
    before = ready(store, ctx)
    (ctx / "dir" / "sub" / "new").write_text("new\n")
    _, fast = build(store, ctx)
    assert not fast and image_id(store) != before
    assert ok(soute(store, "run", "--rm", "out:1", "cat", "/dir/sub/new")) == "new\n"


def test_a_new_dockerignore(store: Path, contexts: dict[str, Path]) -> None:
    ctx = contexts["ignore"]
    before = ready(store, ctx)
    (ctx / ".dockerignore").write_text("dir/a\n")
    _, fast = build(store, ctx)
    assert not fast and image_id(store) != before
    listing = ok(soute(store, "run", "--rm", "out:1", "ls", "/dir"))
    assert listing.split() == ["sub"]


def test_the_base_tag_moved(store: Path, contexts: dict[str, Path], tmp_path: Path) -> None:
    ctx = contexts["retag_base"]
    dockerfile = tmp_path / "Dockerfile.base"
    dockerfile.write_text(DOCKERFILE.replace("base:1", "base:2"))
    time.sleep(RACY_NS / 1e9 + 0.2)  # the Dockerfile is read, not witnessed: no wait needed
    ok(soute(store, "tag", "busybox", "base:2"))
    before = ready(store, ctx, "-f", str(dockerfile))
    other = tmp_path / "other"
    other.mkdir()
    (other / "Dockerfile").write_text("FROM busybox\nRUN echo other > /other\n")
    ok(soute(store, "build", "-t", "base:2", str(other)))
    _, fast = build(store, ctx, "-f", str(dockerfile))
    assert not fast and image_id(store) != before
    assert ok(soute(store, "run", "--rm", "out:1", "cat", "/other")) == "other\n"


def test_builder_prune_runs_the_steps_again(store: Path, contexts: dict[str, Path]) -> None:
    ctx = contexts["prune"]
    ready(store, ctx)
    ok(soute(store, "builder", "prune", "-f"))
    p, fast = build(store, ctx)
    assert not fast and "CACHED" not in p.stderr


def test_rmi_of_the_image_builds_it_again(store: Path, contexts: dict[str, Path]) -> None:
    ctx = contexts["rmi"]
    before = ready(store, ctx)
    ok(soute(store, "rmi", "out:1"))
    _, fast = build(store, ctx)
    assert not fast and image_id(store) == before  # from the cache, still there


def test_the_output_tag_moved(store: Path, contexts: dict[str, Path]) -> None:
    ctx = contexts["retag_out"]
    before = ready(store, ctx)
    ok(soute(store, "tag", "busybox", "out:1"))
    _, fast = build(store, ctx)
    assert not fast and image_id(store) == before


def test_a_build_arg_from_the_environment(store: Path, contexts: dict[str, Path]) -> None:
    ctx = contexts["build_arg"]
    before = ready(store, ctx, "--build-arg", "V", env={"V": "one"})
    _, fast = build(store, ctx, "--build-arg", "V", env={"V": "two"})
    assert not fast and image_id(store) != before
    assert ok(soute(store, "run", "--rm", "out:1", "cat", "/v")) == "v=two\n"


def test_the_dockerfile_edited(store: Path, contexts: dict[str, Path]) -> None:
    ctx = contexts["dockerfile"]
    before = ready(store, ctx)
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace("hello", "bye"))
    _, fast = build(store, ctx)
    assert not fast and image_id(store) != before


def test_a_file_no_step_reads_changes_nothing(store: Path, contexts: dict[str, Path]) -> None:
    ctx = contexts["unrelated"]
    before = ready(store, ctx)
    with open(ctx / "other.txt", "a") as f:  # in place: the directory does not change
        f.write("more\n")
    _, fast = build(store, ctx)
    assert fast and image_id(store) == before


def test_no_cache_never_takes_it(store: Path, contexts: dict[str, Path]) -> None:
    ctx = contexts["no_cache"]
    ready(store, ctx)
    p, fast = build(store, ctx, "--no-cache")
    assert not fast and "CACHED" not in p.stderr
    _, fast = build(store, ctx, "--no-cache")
    assert not fast


def test_a_build_tagged_as_its_base(store: Path, contexts: dict[str, Path]) -> None:
    """``FROM self:1`` built with ``-t self:1``: each build starts from the last one's image,
    so no memo can hold."""
    ctx = contexts["self_tag"]
    (ctx / "Dockerfile.self").write_text("FROM self:1\nRUN echo x >> /count\n")
    ok(soute(store, "tag", "busybox", "self:1"))
    ok(soute(store, "build", "-f", str(ctx / "Dockerfile.self"), "-t", "other:1", str(ctx)))
    time.sleep(RACY_NS / 1e9 + 0.2)
    args = ["-f", str(ctx / "Dockerfile.self"), "-t", "self:1", str(ctx)]
    ok(soute(store, "build", *args))  # cached on busybox; self:1 moves to its result
    for lines in (2, 3):
        p = soute(store, "build", *args)
        assert p.returncode == 0 and "CACHED" not in p.stderr, p.stderr
        count = ok(soute(store, "run", "--rm", "self:1", "cat", "/count"))
        assert count == "x\n" * lines


def test_closed_standard_output(store: Path, contexts: dict[str, Path]) -> None:
    ctx = contexts["closed"]
    ready(store, ctx)
    for _ in range(2):
        p = subprocess.run(  # standard output closed, as `>&-` does
            [sys.executable, "-m", "soute.cli.main", "--root", str(store), "build", "-q", "-t",
             "out:1", str(ctx)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            timeout=600, preexec_fn=lambda: os.close(1))
        assert "internal error" not in p.stderr and p.returncode in (0, 1), p.stderr


def test_an_iidfile_that_cannot_be_written(store: Path, contexts: dict[str, Path],
                                           tmp_path: Path) -> None:
    ctx = contexts["iid"]
    iid = tmp_path / "gone" / "iid"
    iid.parent.mkdir()
    ready(store, ctx, "--iidfile", str(iid))
    iid.unlink()
    iid.parent.rmdir()
    p = subprocess.run(
        [sys.executable, "-m", "soute.cli.main", "--root", str(store), "build", "-t", "out:1",
         "--iidfile", str(iid), str(ctx)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 1 and "#6 CACHED" in p.stderr  # the progress, then the error
    assert p.stderr.rstrip().endswith(f"soute: {iid}: No such file or directory")
