"""RUN --mount with from=: a stage or an image mounted as BuildKit mounts it (read-only unless
rw, rw writes thrown away, cache mounts on top of the tree), its place in the cache key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from soute_cli import busybox_store, image_file, ok, soute


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_store(tmp_path_factory)


def last_line(p: subprocess.CompletedProcess[str]) -> str:
    return p.stderr.strip().splitlines()[-1]


SRC = """\
FROM busybox AS src
RUN mkdir -p /data/sub && echo hello > /data/sub/f && ln -s /data/sub /data/link && \\
    echo top > /top && chown 12:34 /data/sub/f && chmod 640 /data/sub/f
"""


def test_bind_from_a_stage(root: Path) -> None:
    text = SRC + """\
FROM busybox
WORKDIR /w
RUN --mount=type=bind,from=src,source=/data/link,target=rel ls -ln /w/rel > /listing && \\
    cat /w/rel/f > /seen
RUN --mount=type=bind,from=src,source=top,target=/t cat /t > /file
RUN --mount=type=bind,from=src,target=/s (touch /s/x 2>/dev/null && echo rw || echo ro) > /ro
RUN --mount=type=bind,from=src,target=/s,rw echo new > /s/top && rm /s/data/sub/f && cat /s/top
RUN --mount=type=bind,from=src,target=/s cat /s/top /s/data/sub/f > /after
"""
    p = soute(root, "build", "-t", "bindfrom", "-", input=text)
    assert p.returncode == 0, p.stderr
    assert "#7 " in p.stderr and "new" in p.stderr  # the rw mount took the write...
    # ...but the next RUN sees the stage as it was: rw changes are thrown away.
    assert image_file(root, "bindfrom", "after") == "top\nhello\n"
    # The source's owner and mode show through; a symlink source is followed in the stage;
    # a relative target is below WORKDIR.
    listing = image_file(root, "bindfrom", "listing")
    assert listing is not None and "-rw-r-----" in listing and " 12 " in listing
    assert image_file(root, "bindfrom", "seen") == "hello\n"
    assert image_file(root, "bindfrom", "file") == "top\n"
    assert image_file(root, "bindfrom", "ro") == "ro\n"  # read-only without rw
    # The mountpoints are not left in the image.
    for stub in ("w/rel", "t", "s"):
        assert image_file(root, "bindfrom", stub) is None, stub


def test_bind_from_an_image_and_scratch(root: Path) -> None:
    ok(soute(root, "tag", "busybox", "mounted/tool:1"))
    text = """\
FROM busybox
RUN --mount=type=bind,from=mounted/tool:1,target=/img ls /img/bin/busybox > /img-seen
RUN --mount=type=bind,from=scratch,target=/empty ls -A /empty > /empty-list
"""
    ok(soute(root, "build", "-t", "bindimage", "-", input=text))
    assert image_file(root, "bindimage", "img-seen") == "/img/bin/busybox\n"
    assert image_file(root, "bindimage", "empty-list") == ""


def test_cache_mount_from_a_stage_starts_from_it_and_persists(root: Path) -> None:
    text = SRC + """\
FROM busybox
RUN --mount=type=cache,from=src,source=/data,target=/c \\
    sh -c 'cat /c/sub/f; echo run >> /c/log; wc -l < /c/log' > /count
"""
    ok(soute(root, "build", "--no-cache", "-t", "cachefrom", "-", input=text))
    assert image_file(root, "cachefrom", "count") == "hello\n1\n"
    ok(soute(root, "build", "--no-cache", "-t", "cachefrom", "-", input=text))
    assert image_file(root, "cachefrom", "count") == "hello\n2\n"
    assert image_file(root, "cachefrom", "c") is None


def test_one_cache_mounted_twice_in_a_run(root: Path) -> None:
    text = SRC + """\
FROM busybox
RUN --mount=type=cache,id=twice,from=src,source=/data,target=/a \\
    --mount=type=cache,id=twice,from=src,source=/data/sub,target=/b \\
    sh -c 'echo x > /a/new; ls /b; ls /a/new' > /seen
"""
    ok(soute(root, "build", "--no-cache", "-t", "twice", "-", input=text))
    assert image_file(root, "twice", "seen") == "f\n/a/new\n"


def test_mounted_stage_content_keys_the_run(root: Path) -> None:
    text = """\
FROM busybox AS src
RUN echo {v} > /v
FROM busybox
RUN --mount=type=bind,from=src,target=/s cat /s/v > /got
"""
    ok(soute(root, "build", "-t", "keyed", "-", input=text.format(v="one")))
    assert image_file(root, "keyed", "got") == "one\n"
    again = soute(root, "build", "-t", "keyed", "-", input=text.format(v="one"))
    assert again.returncode == 0 and again.stderr.count("CACHED") == 2
    ok(soute(root, "build", "-t", "keyed", "-", input=text.format(v="two")))
    assert image_file(root, "keyed", "got") == "two\n"


def test_context_bind_content_keys_the_run(tmp_path: Path, root: Path) -> None:
    (tmp_path / "data.txt").write_text("first\n")
    (tmp_path / "other.txt").write_text("x\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\nRUN --mount=type=bind,source=data.txt,target=/d cat /d > /got\n")
    ok(soute(root, "build", "-t", "ctxkey", str(tmp_path)))
    (tmp_path / "other.txt").write_text("y\n")  # not mounted: the step stays cached
    again = soute(root, "build", "-t", "ctxkey", str(tmp_path))
    assert again.returncode == 0 and "CACHED" in again.stderr
    (tmp_path / "data.txt").write_text("second\n")
    p = soute(root, "build", "-t", "ctxkey", str(tmp_path))
    assert p.returncode == 0 and "CACHED" not in p.stderr, p.stderr
    assert image_file(root, "ctxkey", "got") == "second\n"


@pytest.mark.parametrize(("text", "where", "words"), [
    (SRC + "FROM busybox\n\nRUN --mount=type=bind,from=src,source=/nothere,target=/m true\n",
     "Dockerfile:6:", ['"/nothere": not found']),
    ("FROM busybox\nRUN --mount=type=bind,from=no/such:image,target=/m true\n",
     "Dockerfile:2:", ["no/such:image"]),
    ("FROM busybox AS a\nRUN --mount=type=bind,from=later,target=/m true\n"
     "FROM busybox AS later\nFROM a\n",
     "Dockerfile:2:", ['cannot mount from stage "later"']),
    ("FROM busybox\nWORKDIR /\nRUN --mount=type=tmpfs,target=. true\n",
     "Dockerfile:3:", ['invalid mount target "/"']),
])
def test_mount_errors_name_the_line(root: Path, text: str, where: str, words: list[str]) -> None:
    p = soute(root, "build", "-", input=text)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    line = last_line(p)
    assert line.startswith(where), line
    for word in words:
        assert word in line, line
