"""A private dockerd for the tests that compare with docker: started, waited for, stopped."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Debian's docker client (another one may be first on PATH).
DOCKER = "/usr/bin/docker"


@contextmanager
def running_dockerd(base: Path, env: dict[str, str]) -> Iterator[str]:
    """Start dockerd with its state under ``base`` (keep it short: socket paths are limited
    to 108 bytes) and no network set-up; yields the ``-H`` address once it answers."""
    dockerd = shutil.which("dockerd")
    if dockerd is None or not Path(DOCKER).is_file():
        pytest.fail("dockerd/docker are not installed: apt-get install docker.io")
    base.mkdir()
    sock = f"unix://{base / 'docker.sock'}"
    with open(base / "log", "wb") as log:
        daemon = subprocess.Popen(
            [dockerd, "--iptables=false", "--bridge=none", "--data-root", str(base / "data"),
             "--exec-root", str(base / "exec"), "--pidfile", str(base / "pid"), "-H", sock],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([DOCKER, "-H", sock, "info"], capture_output=True,
                             env=env).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail("dockerd did not start:\n" + (base / "log").read_text()[-3000:])
            time.sleep(0.2)
        yield sock
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


@contextmanager
def short_workdir(prefix: str) -> Iterator[Path]:
    """A scratch directory with a short path (dockerd's and containerd's unix sockets live
    below it; their paths are limited to 108 bytes), with a ``tmp/`` for the tools."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    (path / "tmp").mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def tool_env(work: Path, *, buildkit: bool) -> dict[str, str]:
    """The environment for docker and friends: their temporary files and client config under
    ``work``, and docker's builder chosen."""
    import os

    return {**os.environ, "TMPDIR": str(work / "tmp"), "DOCKER_CONFIG": str(work / "dcfg"),
            "DOCKER_BUILDKIT": "1" if buildkit else "0"}
