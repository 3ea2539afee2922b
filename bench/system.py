"""Running commands: checked, timed (with the peak memory of a process tree), and the
machine's description."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Longest any one command may take before it counts as failed (apache cold runs apt).
TIMEOUT = 900.0


class Failed(Exception):
    """A command failed; the message is what the report shows as the reason for n/a."""


@dataclass(frozen=True)
class Sample:
    """One timed run: wall-clock seconds and, when watched, the peak memory."""

    seconds: float
    rss_tree: int | None = None  # bytes: the highest sum over the process tree, sampled
    rss_max: int | None = None  # bytes: the largest single process (getrusage)


def sh(argv: Sequence[str | os.PathLike[str]], *, env: dict[str, str] | None = None,
       cwd: Path | None = None, timeout: float = TIMEOUT, check: bool = True) -> str:
    """Run a command for its output; raise :class:`Failed` with its last error line."""
    args = [str(a) for a in argv]
    try:
        p = subprocess.run(args, env=env, cwd=cwd, capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise Failed(f"{_name(args)}: timed out after {timeout:.0f} s") from e
    except FileNotFoundError as e:
        raise Failed(f"{args[0]} is not installed") from e
    if check and p.returncode != 0:
        raise Failed(f"{_name(args)}: exit {p.returncode}: {_last_line(p.stderr, p.stdout)}")
    return p.stdout.decode(errors="replace")


def succeeds(argv: Sequence[str | os.PathLike[str]], *,
             env: dict[str, str] | None = None) -> bool:
    try:
        sh(argv, env=env, timeout=120)
    except Failed:
        return False
    return True


def timed(argv: Sequence[str | os.PathLike[str]], *, env: dict[str, str] | None = None,
          cwd: Path | None = None, watch_memory: bool = False,
          timeout: float = TIMEOUT) -> Sample:
    """Run a command and time it, from the fork to its exit. Its output goes to a
    temporary file (read only on failure). With ``watch_memory``, a thread samples the
    resident memory of its whole process tree every 20 ms."""
    args = [str(a) for a in argv]
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        except FileNotFoundError as e:
            raise Failed(f"{args[0]} is not installed") from e
        watcher = _TreeWatcher(proc.pid) if watch_memory else None
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            # wait4, not Popen.wait: it also gives the child's resource usage.
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        rss_tree = watcher.stop() if watcher is not None else None
        if proc.returncode != 0:
            out.seek(0)
            text = out.read()
            if proc.returncode == -signal.SIGKILL and seconds >= timeout:
                raise Failed(f"{_name(args)}: timed out after {timeout:.0f} s")
            raise Failed(f"{_name(args)}: exit {proc.returncode}: {_last_line(text)}")
    rss_max = usage.ru_maxrss * 1024 if watch_memory else None
    return Sample(seconds, rss_tree, rss_max)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


class _TreeWatcher:
    """Samples the resident set of a process and all its descendants, keeps the peak."""

    INTERVAL = 0.02

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.INTERVAL)


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (found through
    ``/proc/PID/task/TID/children``), 0 once it is gone."""
    total = 0
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pending.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
    return total


def _name(args: list[str]) -> str:
    # "docker build", "soute save": the program and its subcommand, not the options.
    words = [Path(args[0]).name]
    words += [a for a in args[1:] if not a.startswith("-") and "/" not in a][:1]
    return " ".join(words)


def _last_line(*outputs: bytes) -> str:
    for output in outputs:
        lines = [ln.strip() for ln in output.decode(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        if lines:
            return lines[-1][:300]
    return "no output"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    os_name = "Linux"
    release = Path("/etc/os-release")
    if release.is_file():
        for line in release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {
        "os": os_name,
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024 / 1024:.0f} GiB",
        "python": platform.python_version(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "work_fs": _filesystem(Path("/var/tmp")),
    }


def _filesystem(path: Path) -> str:
    best, kind = "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1]
        if str(path).startswith(mount) and len(mount) > len(best):
            best, kind = mount, fields[2]
    return kind


def ensure_packages(packages: Sequence[str]) -> None:
    """Install the Debian packages that are missing (the harness installs what it needs)."""
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    print(f"bench: installing {' '.join(missing)}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh(["apt-get", "update", "-qq"], env=env)
    sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def _installed(package: str) -> bool:
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True)
    return p.returncode == 0 and b"install ok installed" in p.stdout
