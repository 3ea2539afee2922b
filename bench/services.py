"""What the peers need running or made once: the base tarball, a private dockerd and a local
registry. All of it lives under the work directory, so a rerun finds it again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .system import Failed, sh, succeeds

DOCKER = "/usr/bin/docker"  # Debian's client (another one may come first on PATH)
DOCKERD = "/usr/sbin/dockerd"
REGISTRY = "/usr/bin/docker-registry"

# dockerd gets a bridge of its own, so `docker run -p` works as usual (through docker-proxy;
# no iptables rules are written) without touching a docker0 that other daemons may use.
BRIDGE = "sbench0"
BRIDGE_ADDRESS = "172.31.213.1/24"


def base_tarball(work: Path) -> Path:
    """The Debian bookworm minbase every builder starts from, made once with mmdebstrap."""
    tarball = work / "base.tar"
    if not tarball.is_file():
        print("bench: making the base tarball (mmdebstrap --variant=minbase bookworm)",
              file=sys.stderr, flush=True)
        partial = work / "base.tar.partial"
        # mmdebstrap picks its output's format by the name's extension: without --format,
        # "base.tar.partial" became a directory (so did base.tar on a fresh machine).
        for stale in (partial, tarball):
            if stale.is_dir():
                shutil.rmtree(stale)
        sh(["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet", "bookworm", partial])
        partial.rename(tarball)
    return tarball


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path,
             timeout: float = 60) -> None:
    """Poll ``check()`` until it is true; fail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise Failed(f"{what} did not start: {tail.strip().splitlines()[-1:]}")
        time.sleep(0.1)


class Dockerd:
    """A dockerd with its data root under the work directory (kept between runs, so the
    peers' base image and build caches are too)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.host = f"unix://{base / 'docker.sock'}"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self, *, buildkit: bool) -> dict[str, str]:
        config = self.base / "client"
        config.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(config),
                "DOCKER_BUILDKIT": "1" if buildkit else "0"}

    def start(self) -> None:
        if not Path(DOCKERD).is_file() or not Path(DOCKER).is_file():
            raise Failed("docker.io is not installed")
        self.base.mkdir(parents=True, exist_ok=True)
        _stop_stale(self.base / "pid", str(self.base / "data"))
        _ensure_bridge()
        log = self.base / "log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [DOCKERD, "--iptables=false", f"--bridge={BRIDGE}",
                 "--data-root", str(self.base / "data"), "--exec-root",
                 str(self.base / "exec"), "--pidfile", str(self.base / "pid"),
                 "-H", self.host],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        env = self.env(buildkit=True)
        wait_for(lambda: succeeds([DOCKER, "info"], env=env), "dockerd", self.proc, log)

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc, 60)
            self.proc = None


class Registry:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1, plain HTTP. The port stays
    the same across restarts, so a tag naming it stays valid."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start_empty(self) -> None:
        """(Re)start it with empty storage: every push then uploads every blob."""
        self.stop()
        if not Path(REGISTRY).is_file():
            raise Failed("docker-registry is not installed")
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.base / "storage")},
                        "delete": {"enabled": True}},
            "http": {"addr": self.address, "secret": "soute-bench"},
        }
        (self.base / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        log = self.base / "log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([REGISTRY, "serve", str(self.base / "config.yml")],
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._answers, "docker-registry", self.proc, log, timeout=30)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc, 10)
            self.proc = None


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _ensure_bridge() -> None:
    if succeeds(["ip", "link", "show", BRIDGE]):
        return
    sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
    sh(["ip", "addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE])
    sh(["ip", "link", "set", BRIDGE, "up"])


def _stop_stale(pidfile: Path, marker: str) -> None:
    """A dockerd left by an interrupted run of the harness holds the pid file: stop it (only
    if its command line names our data root)."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ValueError):
        return
    if marker not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
