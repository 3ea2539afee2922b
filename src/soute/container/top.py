"""``docker top``: the host's ``ps`` output, filtered to the container's processes."""

from __future__ import annotations

import os
import subprocess

from soute.errors import SouteError


def _pid_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:  # gone, a kernel thread, or not ours to read
        return None


def _host_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _descendants(root: int) -> list[int]:
    """``root`` and its descendants, from each process's PPID in /proc/<p>/stat."""
    children: dict[int, list[int]] = {}
    for pid in _host_pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields start after the last ")".
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def container_pids(init_pid: int) -> list[int]:
    """Host pids of every process in ``init_pid``'s PID namespace, sorted.

    A container sharing the host's PID namespace (``--pid=host``) falls back to
    ``init_pid`` and its descendants, since the namespace would match everything.
    """
    ns = _pid_ns(init_pid)
    if ns is None:
        raise SouteError(f"process {init_pid} is not running", hint="is the container running?")
    if ns == _pid_ns("self"):
        return sorted(_descendants(init_pid))
    return sorted(pid for pid in _host_pids() if _pid_ns(pid) == ns)


def parse_ps(output: str, pids: set[int]) -> tuple[list[str], list[list[str]]]:
    """Split ``ps`` output into (titles, rows for ``pids``); the last column keeps its spaces."""
    lines = output.splitlines()
    if not lines:
        raise SouteError("ps printed nothing")
    titles = lines[0].split()
    if "PID" not in titles:
        raise SouteError(
            "couldn't find PID field in ps output", hint="ps arguments must include the PID column"
        )
    pid_col = titles.index("PID")
    rows: list[list[str]] = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) <= pid_col:
            continue
        try:
            pid = int(fields[pid_col])
        except ValueError:
            continue
        if pid in pids:
            rows.append(fields)
    return titles, rows


def top(init_pid: int, ps_args: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """``docker top``: (titles, rows) of ``ps -ef`` (or ``ps`` + ps_args) for the container."""
    args = list(ps_args) if ps_args else ["-ef"]
    try:
        proc = subprocess.run(["ps", *args], capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise SouteError("ps is not installed on this host", hint="install procps") from exc
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SouteError(
            f"error running ps {' '.join(args)}: {msg[0] if msg else f'exit {proc.returncode}'}"
        )
    # Ask for the pids after ps ran: anything ps listed that is gone by now is gone anyway.
    pids = set(container_pids(init_pid))
    return parse_ps(proc.stdout.decode("utf-8", "replace"), pids)
