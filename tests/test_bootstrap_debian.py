"""soute bootstrap debian: a real mmdebstrap run from Debian's package registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def soute(root: Path, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(root), *args],
                       capture_output=True, text=True,
                       env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_debian_bootstrap_is_reproducible_and_usable(tmp_path: Path) -> None:
    # One minbase bootstrap per store (about 40 s each): the same epoch gives the same image.
    first = soute(tmp_path / "a", "bootstrap", "debian:bookworm").strip()
    second = soute(tmp_path / "b", "bootstrap", "debian:bookworm", "-t", "base:1").strip()
    assert first == second
    info = json.loads(soute(tmp_path / "a", "inspect", "debian:bookworm"))[0]
    assert info["RepoTags"] == ["debian:bookworm"]
    assert info["Created"] == "2023-11-14T22:13:20Z"
    assert info["Config"]["Cmd"] == ["bash"]
    snapshot = next((tmp_path / "a" / "snapshots").iterdir())
    assert (snapshot / "etc" / "debian_version").read_text().startswith("12.")
    assert (snapshot / "usr" / "bin" / "apt-get").is_file()
    assert "0 problem(s)" in soute(tmp_path / "a", "fsck", "--quick")
