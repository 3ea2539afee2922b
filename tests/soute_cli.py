"""The soute command as the tests run it: a subprocess on a given store, and a busybox
store made once per test module."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def soute(root: Path, *args: str, input: str | None = None, cwd: Path | None = None,
          env: dict[str, str] | None = None, timeout: float = 900,
          ) -> subprocess.CompletedProcess[str]:
    """``soute --root ROOT ARGS...``, its output captured as text (a hang fails the test
    rather than the whole run)."""
    return subprocess.run(
        [sys.executable, "-m", "soute.cli.main", "--root", str(root), *args],
        input=input, capture_output=True, text=True, cwd=cwd, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def ok(p: subprocess.CompletedProcess[str]) -> str:
    """The standard output of a command that must succeed."""
    assert p.returncode == 0, (p.args, p.stdout, p.stderr)
    return p.stdout


def fake_command(bin_dir: Path, name: str, script: str) -> dict[str, str]:
    """A shell script standing in for command ``name``, in ``bin_dir``; the PATH that finds
    it first (as ``{"PATH": ...}``)."""
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / name
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def threads_of(pid: int) -> list[tuple[int, set[int]]]:
    """The threads of process ``pid`` but its main one: (id, the signals it blocks)."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        if int(tid) == pid:
            continue
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines())
        mask = int(fields["SigBlk"], 16)
        found.append((int(tid), {sig for sig in range(1, 65) if mask >> (sig - 1) & 1}))
    return found


@contextlib.contextmanager
def collecting(root: Path) -> Iterator[None]:
    """Hold the store's exclusive lock, as a garbage collection does, for the block."""
    fd = os.open(root / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # the lock goes with it


def waiting_for_the_store(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """Return once ``proc`` waits for the store's lock (a "->" line of /proc/locks);
    fail if it ends first."""
    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/locks") as locks:
            if any("->" in line and f" {proc.pid} " in line for line in locks):
                return
        assert proc.poll() is None, ("it ended without waiting", proc.communicate())
        assert time.monotonic() < deadline, "it neither waited nor ended"
        time.sleep(0.02)


def busybox_store(factory: pytest.TempPathFactory) -> Path:
    """A new store holding ``busybox`` (``soute bootstrap busybox``)."""
    path = factory.mktemp("store")
    ok(soute(path, "bootstrap", "busybox"))
    return path


def image_file(root: Path, name: str, path: str) -> str | None:
    """The text of ``path`` in image ``name`` (top layer first), None when absent."""
    from soute.store.names import resolve
    from soute.store.store import Store

    with Store(root) as store:
        for snap in reversed(store.snapshots(resolve(store, name).diff_ids)):
            if os.path.lexists(snap / path):
                return (snap / path).read_text() if (snap / path).is_file() else ""
    return None
