"""``build -o``: the result's files instead of an image, against docker 20.10's BuildKit.

A private dockerd (``dockerd.py``) gets soute's busybox; the same Dockerfile is built by both
with ``--output`` to a directory, to a tar file and to standard output. The files, their
types, modes, link targets and (in the tar) owners must be the same; and neither keeps an
image, even with ``-t``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockerd import DOCKER, running_dockerd, short_workdir, tool_env

DOCKERFILE = """\
FROM busybox AS build
RUN mkdir -p /app/sub && echo hi > /app/hello && chown 1000:1000 /app/hello \\
 && chmod 640 /app/hello && ln -s hello /app/link && echo deep > /app/sub/f && rm /bin/ls
FROM scratch AS export
COPY --from=build /app /
"""


def soute(root: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(root), *args],
                          capture_output=True, cwd=cwd, timeout=300, check=False)


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[Path, Path, list[str], dict[str, str]]]:
    """(soute's store, the build context, docker's argv prefix, docker's environment)."""
    with short_workdir("soute-out-") as work:
        env = tool_env(work, buildkit=True)
        store, ctx = work / "store", work / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        assert soute(store, "bootstrap", "busybox").returncode == 0
        with running_dockerd(work / "dockerd", env) as sock:
            saved = soute(store, "save", "busybox")
            loaded = subprocess.run([DOCKER, "-H", sock, "load"], input=saved.stdout,
                                    capture_output=True, env=env, check=False)
            assert loaded.returncode == 0, loaded.stderr
            yield store, ctx, [DOCKER, "-H", sock], env


def both(peers: tuple[Path, Path, list[str], dict[str, str]], out: Path,
         *args: str) -> dict[str, subprocess.CompletedProcess[bytes]]:
    """``build -q --network none ARGS CONTEXT`` by each, ``{}`` in ARGS naming ``out/TOOL``."""
    store, ctx, docker, env = peers
    done = {}
    for tool in ("docker", "soute"):
        argv = ["build", "-q", "--network", "none",
                *(a.replace("{}", str(out / tool)) for a in args), str(ctx)]
        done[tool] = (subprocess.run([*docker, *argv], capture_output=True, env=env,
                                     timeout=300, check=False)
                      if tool == "docker" else soute(store, *argv))
        assert done[tool].returncode == 0, done[tool].stderr
    return done


def tree(top: Path) -> list[tuple[str, str, int, str]]:
    """(path, type, permissions, link target) of everything below ``top``."""
    found = []
    for directory, dirs, files in os.walk(top):
        for name in sorted(dirs + files):
            path = Path(directory) / name
            st = path.lstat()
            kind = "l" if stat.S_ISLNK(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else "f"
            found.append((str(path.relative_to(top)), kind, stat.S_IMODE(st.st_mode),
                          os.readlink(path) if kind == "l" else ""))
    return sorted(found)


def listing(data: bytes) -> list[tuple[str, str, int, int, int, str]]:
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return sorted((m.name, m.type.decode(), m.mode, m.uid, m.gid, m.linkname)
                      for m in tar.getmembers())


def test_output_to_a_directory(peers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    both(peers, tmp_path, "-o", "{}")
    both(peers, tmp_path / "target", "--target", "build", "-o", "type=local,dest={}")
    assert tree(tmp_path / "soute") == tree(tmp_path / "docker")
    assert ("hello", "f", 0o640, "") in tree(tmp_path / "soute")
    assert stat.S_IMODE((tmp_path / "soute").stat().st_mode) == 0o700  # made private
    assert tree(tmp_path / "target" / "soute") == tree(tmp_path / "target" / "docker")
    assert not (tmp_path / "target" / "soute" / "bin" / "ls").exists()


def test_output_as_a_tar(peers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    both(peers, tmp_path, "-o", "type=tar,dest={}")
    files = {t: listing((tmp_path / t).read_bytes()) for t in ("docker", "soute")}
    assert files["soute"] == files["docker"]
    assert ("hello", "0", 0o640, 1000, 1000, "") in files["soute"]
    piped = both(peers, tmp_path, "-o", "-")
    assert listing(piped["soute"].stdout) == listing(piped["docker"].stdout) == files["docker"]


def test_output_keeps_no_image_and_refuses_unknown_exporters(peers,  # type: ignore[no-untyped-def]
                                                            tmp_path: Path) -> None:
    store, ctx, docker, env = peers
    both(peers, tmp_path, "-t", "soute-out-tagged", "-o", "{}")
    for listed in (soute(store, "images", "--format", "{{.Repository}}").stdout,
                   subprocess.run([*docker, "images", "--format", "{{.Repository}}"],
                                  capture_output=True, env=env, check=False).stdout):
        assert listed.split() == [b"busybox"]
    bad = soute(store, "build", "-o", "type=bogus", str(ctx))
    assert bad.returncode == 1 and b'exporter "bogus" could not be found' in bad.stderr
    assert len(bad.stderr.splitlines()) == 1
    # A destination that cannot be is refused before the build, which leaves no image.
    (tmp_path / "a-file").write_text("")
    for output in (str(tmp_path / "a-file"), f"type=tar,dest={tmp_path}/none/x.tar", ""):
        bad = soute(store, "build", "--no-cache", "-o", output, str(ctx))
        assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1, bad.stderr
        assert b"--output" in bad.stderr and b"#" not in bad.stderr  # no step ran
    assert soute(store, "images", "-q").stdout.split() == [
        soute(store, "images", "-q", "busybox").stdout.strip()]
