"""The guide runs: every ``sh`` block of docs/guide.en.md, in order, on a fresh store, with a
real registry standing in for ``localhost:5000``. The French guide must hold the same
commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from registry_fixtures import running_registry

GUIDES = {lang: REPO / "docs" / f"guide.{lang}.md" for lang in ("en", "fr")}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


def blocks(path: Path) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", path.read_text(), re.S | re.M)


def test_both_guides_hold_the_same_commands() -> None:
    english, french = blocks(GUIDES["en"]), blocks(GUIDES["fr"])
    assert len(english) >= 9
    assert english == french


def test_every_command_of_the_guide_runs(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "soute").write_text(f'#!/bin/sh\nexec {sys.executable} -m soute.cli.main "$@"\n')
    (bin_dir / "soute").chmod(0o755)
    store = tmp_path / "store"
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "SOUTE_ROOT": str(store), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(sys.path), "DOCKER_CONFIG": str(tmp_path / "docker")}
    with running_registry(tmp_path / "registry") as registry:
        port = registry.host.rsplit(":", 1)[1]
        parts = []
        for number, block in enumerate(blocks(GUIDES["en"]), 1):
            parts.append(f"echo '### block {number}' >&2\n"
                         + block.replace("localhost:5000", f"localhost:{port}"))
        script = "set -euo pipefail\n" + "\n".join(parts)
        try:
            done = subprocess.run(["bash", "-c", script], cwd=work, env=env, text=True,
                                  capture_output=True, timeout=900)
        finally:
            names = subprocess.run([sys.executable, "-m", "soute.cli.main", "--root",
                                    str(store), "ps", "-a", "-q"], capture_output=True,
                                   text=True, env=env).stdout.split()
            for name in names:
                subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(store),
                                "rm", "-f", name], capture_output=True, env=env)
    last_block = [line for line in done.stderr.splitlines() if line.startswith("### block")]
    assert done.returncode == 0, (last_block[-1:], done.stdout[-3000:], done.stderr[-3000:])
    out = done.stdout
    assert re.search(r"^12\.[0-9]+$", out, re.M)  # /etc/debian_version
    assert "hello from " in out
    assert "made by hand" in out and "add hello.txt" in out  # commit, then history
    assert "hello, soute" in out  # the web server answered on its published port
    assert "8080/tcp -> 0.0.0.0:18081" in out
    assert "www-data" in out  # top: no process runs as root
    assert "Dockerfile:3 SOU036" in out and "Dockerfile:4 SOU003" in out  # lint: first file
    assert "SOU006" in out and "20MB" in out  # analyze finds the removed file
    assert "Result: PASS" in out  # analyze --ci of the good image
    assert "digest: sha256:" in out and "Downloaded newer image" in out  # push, then pull
    assert not (store / "containers").exists() or not any((store / "containers").iterdir())
