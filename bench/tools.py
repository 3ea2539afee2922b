"""soute and its peers behind one interface: import the base, build, run, save, push, pull.

Every builder runs RUN steps in the host's network namespace (``--network host``, soute's
default), so no peer pays for network set-up that soute skips. What a tool cannot do raises
:class:`Unsupported`, and the report shows n/a with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

from .contexts import BASE_IMAGE, REPO
from .services import DOCKER, Dockerd
from .system import Failed, Sample, sh, succeeds, timed

SOUTE = REPO / ".venv" / "bin" / "soute"


class Unsupported(Exception):
    """The tool cannot do this workload: the message says why."""


class Tool(ABC):
    name: str  # the key in results.json and the --peers list
    label: str  # the column heading

    def tag(self, workload: str) -> str:
        return f"bench-{workload}-{self.name}"

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def has_image(self, name: str) -> bool: ...

    @abstractmethod
    def import_base(self, tarball: Path) -> None:
        """Make ``bench-base`` from the base tarball."""

    @abstractmethod
    def build_argv(self, context: Path, tag: str, *, no_cache: bool) -> list[str]: ...

    def env(self) -> dict[str, str] | None:
        return None

    def prepare(self, tarball: Path) -> None:
        if not self.has_image(BASE_IMAGE):
            print(f"bench: importing the base into {self.name}", file=sys.stderr, flush=True)
            self.import_base(tarball)

    def build(self, context: Path, tag: str, *, no_cache: bool = False,
              watch_memory: bool = False) -> Sample:
        return timed(self.build_argv(context, tag, no_cache=no_cache), env=self.env(),
                     cwd=context, watch_memory=watch_memory)

    def ensure_built(self, context: Path, tag: str) -> None:
        """Build (from cache when it can) an image the run, export and registry workloads
        use, outside any timing."""
        self.build(context, tag)

    @abstractmethod
    def prune(self) -> None:
        """Remove dangling images left by cold builds (outside any timing)."""

    # What only some tools do; the reasons the others give.
    no_run = "no run of an image"
    no_detached = "no detached run with published ports"
    no_save = "no image archive"

    def run_true_argv(self, image: str) -> list[str]:
        raise Unsupported(self.no_run)

    def require_detached(self) -> None:
        raise Unsupported(self.no_detached)

    def start_detached(self, image: str, port: int) -> str:
        raise Unsupported(self.no_detached)

    def remove_container(self, container: str) -> None:
        raise Unsupported(self.no_detached)

    def save_argv(self, image: str, compression: str, output: Path) -> list[str]:
        raise Unsupported(self.no_save)


class Soute(Tool):
    name = "soute"
    label = "soute"

    def __init__(self, root: Path) -> None:
        self.root = root

    def cli(self, *args: str | Path, root: Path | None = None) -> list[str]:
        return [str(SOUTE), "--root", str(root or self.root), *map(str, args)]

    def version(self) -> str:
        first = sh(self.cli("version")).splitlines()[0].removeprefix("soute version ")
        commit = sh(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]).strip()
        dirty = sh(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"])
        # The interpreter matters as much as the commit: a plain build of CPython ran soute
        # 20-25% slower than Debian's (PGO, LTO) on the same machine.
        python = sh([SOUTE.parent / "python", "-c", "import sys; print(sys.version.split()[0],"
                     " sys._base_executable)"]).split()
        return (f"{first} (git {commit}{', modified' if dirty.strip() else ''}) on Python "
                f"{python[0]} ({python[1]})")

    def prepare(self, tarball: Path) -> None:
        # Byte-compile soute as scripts/setup does: modules changed since (others edit src/
        # all the time) would otherwise be compiled again by every command, PYTHONDONTWRITE-
        # BYTECODE being set on this machine; 60-100 ms of every cached build and run.
        sh([SOUTE.parent / "python", "-m", "compileall", "-q", "-j", "0", REPO / "src"])
        # And the methods of its dataclasses, as scripts/setup does (soute._dccache).
        sh([SOUTE.parent / "python", "-c", "from soute._dccache import build; build()"])
        # The store may come from an older soute that this one no longer reads: start over.
        if self.root.exists() and not succeeds(self.cli("images")):
            print("bench: soute's store is unreadable, making it again", file=sys.stderr,
                  flush=True)
            shutil.rmtree(self.root)
        super().prepare(tarball)

    def has_image(self, name: str) -> bool:
        return succeeds(self.cli("image", "inspect", name))

    def import_base(self, tarball: Path) -> None:
        sh(self.cli("import", tarball, BASE_IMAGE))

    def build_argv(self, context: Path, tag: str, *, no_cache: bool) -> list[str]:
        return self.cli("build", "-q", *(["--no-cache"] if no_cache else []), "-t", tag,
                        context)

    def prune(self) -> None:
        sh(self.cli("image", "prune", "-f"))

    def image_size(self, image: str) -> int:
        return int(json.loads(sh(self.cli("image", "inspect", image)))[0]["Size"])

    def run_true_argv(self, image: str) -> list[str]:
        return self.cli("run", "--rm", image, "true")

    def require_detached(self) -> None:
        pass

    def start_detached(self, image: str, port: int) -> str:
        return sh(self.cli("run", "-d", "-p", f"127.0.0.1:{port}:80", image)).strip()

    def remove_container(self, container: str) -> None:
        sh(self.cli("rm", "-f", container))

    def save_argv(self, image: str, compression: str, output: Path) -> list[str]:
        # The OCI layout, as buildah's oci-archive: the docker one refuses zstd layers.
        return self.cli("save", "--format", "oci", "--compression", compression, "-o",
                        output, image)

    def has_command(self, command: str) -> bool:
        return succeeds(self.cli(command, "--help"))


class Docker(Tool):
    """The docker engine: with BuildKit (``DOCKER_BUILDKIT=1``) or its legacy builder. The
    legacy one also stands for ``docker run`` and ``docker save``."""

    def __init__(self, dockerd: Dockerd, *, buildkit: bool) -> None:
        self.dockerd = dockerd
        self.buildkit = buildkit
        self.name = "buildkit" if buildkit else "docker"
        self.label = "BuildKit" if buildkit else "docker"

    def env(self) -> dict[str, str]:
        return self.dockerd.env(buildkit=self.buildkit)

    def cli(self, *args: str | Path) -> list[str]:
        return [DOCKER, *map(str, args)]

    def version(self) -> str:
        server = sh(self.cli("version", "--format", "{{.Server.Version}}"), env=self.env())
        return f"docker {server.strip()}" + (" (BuildKit)" if self.buildkit else
                                             " (legacy builder)")

    def has_image(self, name: str) -> bool:
        return succeeds(self.cli("image", "inspect", name), env=self.env())

    def import_base(self, tarball: Path) -> None:
        sh(self.cli("import", tarball, f"{BASE_IMAGE}:latest"), env=self.env())

    def build_argv(self, context: Path, tag: str, *, no_cache: bool) -> list[str]:
        return self.cli("build", "-q", "--network", "host",
                        *(["--no-cache"] if no_cache else []), "-t", tag, context)

    def prune(self) -> None:
        sh(self.cli("image", "prune", "-f"), env=self.env())
        if self.buildkit:
            sh(self.cli("builder", "prune", "-f"), env=self.env())

    def run_true_argv(self, image: str) -> list[str]:
        return self.cli("run", "--rm", image, "true")

    def require_detached(self) -> None:
        pass

    def start_detached(self, image: str, port: int) -> str:
        return sh(self.cli("run", "-d", "-p", f"127.0.0.1:{port}:80", image),
                  env=self.env()).strip()

    def remove_container(self, container: str) -> None:
        sh(self.cli("rm", "-f", container), env=self.env())

    def save_argv(self, image: str, compression: str, output: Path) -> list[str]:
        if compression != "none":
            raise Unsupported("docker save does not compress")
        return self.cli("save", "-o", output, image)


class Buildah(Tool):
    name = "buildah"
    label = "buildah"
    no_run = "buildah runs only working containers (buildah from); podman is its runtime"
    no_detached = no_run

    def __init__(self, base: Path) -> None:
        self.base = base

    def cli(self, *args: str | Path) -> list[str]:
        return ["buildah", "--root", str(self.base / "root"), "--runroot",
                str(self.base / "run"), "--storage-driver", "overlay", *map(str, args)]

    def version(self) -> str:
        return sh(["buildah", "--version"]).strip()

    def has_image(self, name: str) -> bool:
        return succeeds(self.cli("inspect", "--type", "image", name))

    def import_base(self, tarball: Path) -> None:
        # buildah has no import: a scratch container, the tarball added (ADD unpacks it),
        # committed.
        container = sh(self.cli("from", "scratch")).strip()
        try:
            sh(self.cli("add", container, tarball, "/"))
            sh(self.cli("commit", "-q", container, BASE_IMAGE))
        finally:
            sh(self.cli("rm", container))

    def build_argv(self, context: Path, tag: str, *, no_cache: bool) -> list[str]:
        # runc: crun fails on this machine's hybrid cgroups.
        return self.cli("bud", "--runtime", "/usr/sbin/runc", "--layers", "--network",
                        "host", "-q", *(["--no-cache"] if no_cache else []), "-t", tag,
                        context)

    def prune(self) -> None:
        sh(self.cli("rmi", "--prune"))

    def save_argv(self, image: str, compression: str, output: Path) -> list[str]:
        if compression == "none":
            # oci-archive always compresses; docker-archive keeps layers as they are.
            return self.cli("push", "-q", image, f"docker-archive:{output}:{image}:latest")
        return self.cli("push", "-q", "--compression-format", compression, image,
                        f"oci-archive:{output}")


class ChImage(Tool):
    """Charliecloud's unprivileged builder (Debian's ``charliecloud-builders``)."""

    name = "ch-image"
    label = "ch-image"
    no_detached = ("ch-run has no network namespace to publish ports from, and ch-image "
                   "ignores CMD and EXPOSE")
    no_save = "ch-image writes no image archive (ch-convert flattens to a root tarball)"

    def __init__(self, storage: Path) -> None:
        self.storage = storage

    def env(self) -> dict[str, str]:
        return {**os.environ, "USER": os.environ.get("USER", "root")}

    def cli(self, *args: str | Path) -> list[str]:
        # Debian's python: ch-image imports lark from python3-lark, which a python3 first on
        # PATH (pyenv, a venv) may lack.
        return ["/usr/bin/python3", "/usr/bin/ch-image", "-s", str(self.storage),
                *map(str, args)]

    def version(self) -> str:
        return "ch-image " + sh(self.cli("--version"), env=self.env()).strip()

    def has_image(self, name: str) -> bool:
        # Not `list NAME`: that also asks Docker Hub about it, and fails offline.
        return name in sh(self.cli("list"), env=self.env()).split()

    def import_base(self, tarball: Path) -> None:
        sh(self.cli("import", tarball, BASE_IMAGE), env=self.env())

    def build_argv(self, context: Path, tag: str, *, no_cache: bool) -> list[str]:
        # --rebuild, not --no-cache: it runs every step and still writes the build cache,
        # as the others' --no-cache do. --force: fakeroot for apt-get (it cannot setgroups
        # unprivileged otherwise).
        return self.cli("build", "--force", *(["--rebuild"] if no_cache else []), "-t", tag,
                        "-f", context / "Dockerfile", context)

    def prune(self) -> None:
        # Nothing dangles: a build replaces the image of its tag, and the build cache (git)
        # stores each state's files once.
        pass

    def run_true_argv(self, image: str) -> list[str]:
        # ch-run: the image's directory in the storage, in user and mount namespaces only.
        return ["ch-run", "-s", str(self.storage), image, "--", "true"]


def first_http_answer(port: int, timeout: float = 60) -> None:
    """Wait until something answers HTTP on 127.0.0.1:port (a proxy that accepts and then
    closes does not count)."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                if s.recv(5) == b"HTTP/":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise Failed(f"no HTTP answer on port {port} within {timeout:.0f} s")
        time.sleep(0.01)


def http_latency(tool: Tool, image: str, port: int) -> tuple[Sample, str]:
    """``run -d -p`` to the first HTTP answer: the sample and the container to remove."""
    start = time.perf_counter()
    container = tool.start_detached(image, port)
    try:
        first_http_answer(port)
    except Failed:
        tool.remove_container(container)
        raise
    return Sample(time.perf_counter() - start), container

