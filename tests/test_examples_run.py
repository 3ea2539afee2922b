"""The seed examples, built and run end to end with soute (the issue's acceptance points).

One store for the module: ``bootstrap debian:bookworm`` (mmdebstrap from Debian's mirror),
then ``soute build`` of examples/superapache, examples/lutim and examples/sqlite, whose RUN
steps use apt-get against Debian's mirror. Every container is removed with ``rm -f`` at the
end of its test, pass or fail, so that no server is left running.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO

EXAMPLES = ("superapache", "lutim", "sqlite")
APACHE_PORT = 18080  # the port the issue names; another free one if it is taken here


def soute(root: Path, *args: str, cwd: Path | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soute.cli.main", "--root", str(root), *args],
        capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL, timeout=timeout,
        env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, f"{' '.join(p.args[5:])} failed ({p.returncode}):\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with debian:bookworm and the three examples built from the repository."""
    path = tmp_path_factory.mktemp("examples-store")
    ok(soute(path, "bootstrap", "debian:bookworm", timeout=600))
    for name in EXAMPLES:
        ok(soute(path, "build", "-t", name, f"examples/{name}", cwd=REPO, timeout=600))
    return path


@pytest.fixture
def containers(root: Path) -> Iterator[list[str]]:
    """The names of the containers a test starts: all removed (``rm -f``) afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        soute(root, "rm", "-f", name)


# ---------------------------------------------------------------------------- helpers


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` (on every address) now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        try:
            s.bind(("0.0.0.0", port))
            s.listen()
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def http_get(port: int, *, within: float) -> tuple[int, str]:
    """Poll ``GET http://127.0.0.1:PORT/`` until it answers (any HTTP status), for at most
    ``within`` seconds; returns the status and body, or fails with the last error."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy
    deadline = time.monotonic() + within
    while True:
        try:
            with opener.open(f"http://127.0.0.1:{port}/", timeout=5) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (OSError, urllib.error.URLError) as e:
            if time.monotonic() > deadline:
                pytest.fail(f"nothing answered on 127.0.0.1:{port} in {within} s: {e}")
            time.sleep(0.5)


def wait_http_ok(root: Path, name: str, port: int, within: float) -> str:
    """The body of the first 200 answer on ``port``, polled for ``within`` seconds."""
    deadline = time.monotonic() + within
    status, body = http_get(port, within=within)
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
        status, body = http_get(port, within=max(deadline - time.monotonic(), 0.5))
    assert status == 200, (f"HTTP {status} from {name}:\n{body[:2000]}\n"
                           f"logs:\n{soute(root, 'logs', name).stdout[-3000:]}")
    return body


def top_rows(root: Path, name: str) -> list[dict[str, str]]:
    """``soute top NAME`` as a list of rows keyed by the header's columns."""
    header, *lines = ok(soute(root, "top", name)).splitlines()
    columns = header.split()
    assert columns[:2] == ["UID", "PID"] and columns[-1] == "CMD", header
    return [dict(zip(columns, line.split(maxsplit=len(columns) - 1), strict=True))
            for line in lines if line.strip()]


def ps_line(root: Path, name: str, *options: str) -> str | None:
    """The ``soute ps`` line of container ``name`` (its last column), if it is listed."""
    for line in ok(soute(root, "ps", *options)).splitlines()[1:]:
        if line.split()[-1] == name:
            return line
    return None


# ---------------------------------------------------------------------------- superapache


def test_superapache_serves_the_default_page(root: Path, containers: list[str]) -> None:
    port = APACHE_PORT if port_is_free(APACHE_PORT) else free_port()
    containers.append("web")
    container_id = ok(soute(root, "run", "-d", "--name", "web", "-p", f"{port}:80",
                            "superapache")).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", container_id), container_id

    body = wait_http_ok(root, "web", port, within=20)
    assert "Apache2 Debian Default Page" in body

    # apache2ctl stays as the parent, apache2 runs as root and its workers as www-data.
    rows = top_rows(root, "web")
    apache = [row for row in rows if "apache2" in row["CMD"]]
    assert apache, rows
    assert any(row["UID"] == "www-data" for row in apache), rows

    line = ps_line(root, "web")
    assert line is not None
    assert f"0.0.0.0:{port}->80/tcp" in line and " Up " in line, line
    assert line.startswith(container_id[:12]), line

    ok(soute(root, "stop", "web", timeout=60))
    assert ps_line(root, "web") is None  # no longer running
    line = ps_line(root, "web", "-a")
    assert line is not None and "Exited (" in line, line
    assert "->80/tcp" not in line, line  # a stopped container publishes nothing

    assert ok(soute(root, "rm", "web")).strip() == "web"
    assert ps_line(root, "web", "-a") is None
    assert port_is_free(port), f"port {port} is still taken after rm"


# ---------------------------------------------------------------------------- lutim


def test_lutim_publishes_its_port_and_runs_unprivileged(root: Path,
                                                        containers: list[str]) -> None:
    containers.append("lu")
    ok(soute(root, "run", "-d", "-P", "--name", "lu", "lutim"))

    mapping = ok(soute(root, "port", "lu"))
    found = re.fullmatch(r"8181/tcp -> 0\.0\.0\.0:(\d+)\n", mapping)
    assert found, mapping
    port = int(found.group(1))
    assert ok(soute(root, "port", "lu", "8181")) == f"0.0.0.0:{port}\n"
    assert ok(soute(root, "port", "lu", "8181/tcp")) == f"0.0.0.0:{port}\n"

    wait_http_ok(root, "lu", port, within=30)

    # The seeds' lesson: startup runs as root, then gosu makes hypnotoad lutim (UID 991);
    # no process stays behind as root. top names UIDs the host's way, as docker's does.
    try:
        lutim = pwd.getpwuid(991).pw_name
    except KeyError:
        lutim = "991"
    rows = top_rows(root, "lu")
    assert rows
    assert not [row for row in rows if row["UID"] in ("root", "0")], rows
    assert {row["UID"] for row in rows} == {lutim}, rows
    assert any("lutim" in row["CMD"] for row in rows), rows

    line = ps_line(root, "lu")
    assert line is not None and f"0.0.0.0:{port}->8181/tcp" in line, line

    ok(soute(root, "rm", "-f", "lu", timeout=60))
    assert ps_line(root, "lu", "-a") is None
    assert port_is_free(port), f"port {port} is still taken after rm -f"


# ---------------------------------------------------------------------------- sqlite


def test_sqlite_works_on_a_host_directory(root: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "db"
    workdir.mkdir()
    volume = f"{workdir}:/workdir"
    ok(soute(root, "run", "--rm", "-v", volume, "sqlite",
             "CREATE TABLE t(a); INSERT INTO t VALUES (42);"))
    assert (workdir / "local.db").is_file()
    assert (workdir / "local.db").read_bytes().startswith(b"SQLite format 3\0")

    out = ok(soute(root, "run", "--rm", "-v", volume, "sqlite", "SELECT a FROM t;"))
    assert re.search(r"\b42\b", out), out
    assert "│ a  │" in out  # -box output

    # --rm leaves nothing behind.
    assert ok(soute(root, "ps", "-a", "-q")) == ""


def test_sqlite_default_command_is_the_version(root: Path) -> None:
    # ENTRYPOINT ["sqlite3","-box","local.db"] + CMD ["--version"].
    out = ok(soute(root, "run", "--rm", "sqlite"))
    assert re.fullmatch(r"3\.\d+\.\d+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [0-9a-f]+\S*\n", out), out
    assert ok(soute(root, "ps", "-a", "-q")) == ""


def test_superalpine_one_layer_versus_two(root: Path, tmp_path: Path) -> None:
    """The seeds' size lesson, measured by analyze: removing the tools in a later layer
    (superalpine1) leaves their bytes in the image as waste; in the same layer
    (superalpine2) nothing is wasted."""
    import json
    import shutil

    # The rootfs tarball the examples ADD: the Debian base, exported from a container.
    ok(soute(root, "create", "--name", "rootfs-src", "debian:bookworm", "true"))
    try:
        ok(soute(root, "export", "-o", str(tmp_path / "rootfs.tar"), "rootfs-src"))
    finally:
        soute(root, "rm", "rootfs-src")
    subprocess.run(["xz", "-0", "-T2", str(tmp_path / "rootfs.tar")], check=True)
    sizes, waste = {}, {}
    for name in ("superalpine1", "superalpine2"):
        context = tmp_path / name
        context.mkdir()
        shutil.copy(REPO / "examples" / name / "Dockerfile", context)
        shutil.copy(tmp_path / "rootfs.tar.xz", context)
        ok(soute(root, "build", "-q", "-t", name, str(context), timeout=600))
        report = json.loads(ok(soute(root, "analyze", "--format", "json", name)))
        sizes[name], waste[name] = report["size"], report["wasted"]["total"]
    difference = sizes["superalpine1"] - sizes["superalpine2"]
    assert difference > 50_000_000  # wget and git with their dependencies
    assert waste["superalpine2"] == 0
    # What the first image carries more is waste: the removed packages' files (tar headers
    # and the purge layer's own package records aside).
    assert waste["superalpine1"] >= 0.97 * difference
    assert soute(root, "analyze", "--ci", "superalpine1").returncode == 1
    assert soute(root, "analyze", "--ci", "superalpine2").returncode == 0
