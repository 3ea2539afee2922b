"""The benchmark harness's own set-up (scripts/bench): what it makes before measuring."""

from __future__ import annotations

import tarfile
from pathlib import Path

from bench.services import base_tarball


def test_the_base_is_a_root_filesystem_tarball_even_over_a_directory_left_behind(
        tmp_path: Path) -> None:
    # A harness that named its output without --format got a directory from mmdebstrap.
    (tmp_path / "base.tar" / "etc").mkdir(parents=True)
    tarball = base_tarball(tmp_path)
    assert tarball == tmp_path / "base.tar"
    assert tarball.is_file()
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert {"./etc/debian_version", "./usr/bin/apt-get"} <= names
    assert base_tarball(tmp_path) == tarball  # made once: a second call finds it
    assert not (tmp_path / "base.tar.partial").exists()
