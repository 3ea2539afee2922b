"""``soute stats``: what running containers use, read from ``/proc``.

docker reads a container's cgroup; a soute container has one only when it has limits, so
the figures are its processes' (those in its PID namespace), summed:

* CPU %: their user and system time (with that of the children they reaped) over the whole
  machine's between two readings, times the number of CPUs, as docker computes it;
* memory: their proportional set size (``Pss`` of ``smaps_rollup``, shared pages split
  between the processes that map them), against ``--memory`` or the machine's memory;
* network: the bytes of the container's own interfaces, loopback left out (nothing for
  ``--network host`` or ``none``);
* block I/O: the bytes they read from and wrote to storage (``/proc/PID/io``);
* PIDs: their threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from soute.container.top import container_pids
from soute.errors import SouteError


@dataclass(frozen=True)
class Reading:
    """One reading of a container's processes."""

    cpu_ticks: int  # user + system of the processes and the children they reaped
    system_ticks: int  # the whole machine's, every CPU
    memory: int  # bytes
    net_rx: int
    net_tx: int
    block_read: int
    block_write: int
    pids: int  # threads


ZERO = Reading(0, 0, 0, 0, 0, 0, 0, 0)


def read(init_pid: int, *, own_network: bool) -> Reading:
    """The container whose PID 1 is ``init_pid``, now; ZERO when it has gone."""
    try:
        pids = container_pids(init_pid)
    except SouteError:
        return ZERO
    cpu = memory = block_read = block_write = threads = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                # After the command's name (in parentheses, and it may hold any byte).
                fields = f.read().rpartition(b")")[2].split()
            memory += _pss(pid)
            io = _keyed(f"/proc/{pid}/io")
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
        # utime, stime, cutime, cstime are fields 14-17 of stat, num_threads 20.
        cpu += sum(int(v) for v in fields[11:15])
        threads += int(fields[17])
        block_read += io.get("read_bytes", 0)
        block_write += io.get("write_bytes", 0)
    rx = tx = 0
    if own_network and pids:
        rx, tx = _network(init_pid)
    return Reading(cpu, _system_ticks(), memory, rx, tx, block_read, block_write, threads)


def cpu_percent(before: Reading, after: Reading) -> float:
    """docker's CPU %: the container's share of the machine's time, times its CPUs."""
    system = after.system_ticks - before.system_ticks
    used = after.cpu_ticks - before.cpu_ticks
    if system <= 0 or used <= 0:
        return 0.0
    return used / system * (os.cpu_count() or 1) * 100.0


def memory_limit(limit: int | None) -> int:
    """``--memory``, or the machine's memory."""
    if limit:
        return limit
    return _keyed("/proc/meminfo").get("MemTotal", 0) * 1024


def _pss(pid: int) -> int:
    try:
        return _keyed(f"/proc/{pid}/smaps_rollup").get("Pss", 0) * 1024
    except OSError:  # a kernel without smaps_rollup: the resident set (or the process ended)
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _keyed(path: str) -> dict[str, int]:
    """``Key: number ...`` lines (meminfo, smaps_rollup, io): the first number of each."""
    out: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            key, sep, rest = line.partition(":")
            if sep:
                value = rest.split()
                if value and value[0].isdigit():
                    out[key.strip()] = int(value[0])
    return out


def _system_ticks() -> int:
    with open("/proc/stat") as f:
        first = f.readline().split()  # "cpu  user nice system idle iowait irq softirq..."
    return sum(int(v) for v in first[1:9])


def _network(pid: int) -> tuple[int, int]:
    """Received and sent bytes of the interfaces in ``pid``'s network namespace, but lo."""
    rx = tx = 0
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return 0, 0
    for line in lines:
        name, _, counters = line.partition(":")
        values = counters.split()
        if name.strip() != "lo" and len(values) >= 9:
            rx += int(values[0])
            tx += int(values[8])
    return rx, tx
