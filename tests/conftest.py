"""Shared test fixtures and paths."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"
BUILDKIT_PARSER = CONFORMANCE / "buildkit" / "frontend" / "dockerfile" / "parser"


@pytest.fixture
def lone_netns() -> Iterator[subprocess.Popen[bytes]]:
    """A process alone in a fresh network namespace."""
    proc = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    try:
        # unshare execs sleep after unsharing: wait until the namespace differs from ours.
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{proc.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare -n did not make a namespace"
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait()
