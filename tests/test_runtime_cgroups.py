"""soute.runtime.cgroups against the real kernel: limits, freezing, OOM and clean-up.

Layout parsing is tested on text; everything else creates real cgroups (root only) and moves
real processes into them. Names carry our pid so concurrent runs don't collide.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from soute.errors import SouteError
from soute.runtime.cgroups import (
    PARENT,
    Cgroup,
    Hierarchy,
    Layout,
    Limits,
    available_controllers,
    detect_layout,
    parse_layout,
)

_counter = itertools.count()


def _name() -> str:
    return f"test-{os.getpid()}-{next(_counter)}"


def _usable() -> bool:
    return os.geteuid() == 0 and bool(detect_layout().hierarchies)


needs_cgroups = pytest.mark.skipif(not _usable(), reason="needs root and a cgroup filesystem")


def _needs(*controllers: str) -> None:
    missing = set(controllers) - available_controllers()
    if missing:
        pytest.skip(f"cgroup controller(s) {', '.join(sorted(missing))} not available")


def _v2_only() -> Layout:
    """This machine's cgroup2 hierarchy alone, so the v2 code runs even on a hybrid host."""
    unified = detect_layout().unified
    if unified is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    return Layout((unified,))


@pytest.fixture
def make() -> Iterator[Callable[..., Cgroup]]:
    made: list[Cgroup] = []

    def create(limits: Limits | None = None, name: str | None = None, **kw: object) -> Cgroup:
        cgroup = Cgroup.create(name or _name(), limits or Limits(), **kw)  # type: ignore[arg-type]
        made.append(cgroup)
        return cgroup

    yield create
    for cgroup in made:
        cgroup.remove()


@pytest.fixture
def spawn() -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Start a Python snippet blocked on stdin: move it into a cgroup, then ``_go`` it."""
    started: list[subprocess.Popen[bytes]] = []

    def start(code: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys\nsys.stdin.read(1)\n" + code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _go(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"x")
    proc.stdin.close()


def _gone(pid: int) -> bool:
    """Dead, or a zombie waiting for a parent that isn't us."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --- layout parsing (no privileges needed) ---------------------------------------------------

_HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""
_HYBRID_CGROUP = """\
9:name=systemd:/
6:freezer:/
4:memory:/docker/abc/inner
1:cpu,cpuacct:/user.slice
0::/
"""


def test_parse_hybrid_layout() -> None:
    layout = parse_layout(_HYBRID_MOUNTINFO, _HYBRID_CGROUP)
    by_mount = {str(h.mountpoint): h for h in layout.hierarchies}
    assert set(by_mount) == {
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/freezer",
        "/sys/fs/cgroup/unified",
    }
    cpu = by_mount["/sys/fs/cgroup/cpu,cpuacct"]
    assert (cpu.version, cpu.controllers) == (1, frozenset({"cpu", "cpuacct"}))
    assert cpu.own_dir == Path("/sys/fs/cgroup/cpu,cpuacct/user.slice")
    # The memory mount shows only /docker/abc: our cgroup is relative to that root.
    assert by_mount["/sys/fs/cgroup/memory"].own_dir == Path("/sys/fs/cgroup/memory/inner")
    assert by_mount["/sys/fs/cgroup/freezer"].own_dir == Path("/sys/fs/cgroup/freezer")
    assert layout.unified is not None and layout.unified.version == 2
    # v1 wins for the controllers it carries; cgroup2 provides the rest (here: none).
    assert layout.hierarchy_for("cpu") is cpu
    assert layout.hierarchy_for("freezer") == by_mount["/sys/fs/cgroup/freezer"]
    assert layout.hierarchy_for("pids") is None


def test_parse_pure_v2_layout() -> None:
    mountinfo = (
        "25 30 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        "26 25 0:24 / /mnt/my\\040dir rw - tmpfs tmpfs rw\n"
    )
    layout = parse_layout(mountinfo, "0::/user.slice/session-1.scope\n")
    (only,) = layout.hierarchies
    assert only.version == 2
    assert only.own_dir == Path("/sys/fs/cgroup/user.slice/session-1.scope")
    assert layout.hierarchy_for("freezer") == only  # cgroup.freeze is core in v2


def test_parse_skips_mounts_that_cannot_see_our_cgroup() -> None:
    mountinfo = "35 31 0:32 /other /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    assert parse_layout(mountinfo, "4:memory:/docker/abc\n").hierarchies == ()


def test_limits_validation() -> None:
    with pytest.raises(SouteError, match="needs a memory limit"):
        Limits(memory_swap=1 << 20)
    with pytest.raises(SouteError, match="below the memory limit"):
        Limits(memory=2 << 20, memory_swap=1 << 20)
    with pytest.raises(SouteError, match="must be positive"):
        Limits(pids=0)
    assert Limits(memory=1 << 20, memory_swap=-1).controllers() == {"memory"}
    assert Limits(cpu_quota=50_000, pids=3).controllers() == {"cpu", "pids"}


def test_invalid_names() -> None:
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(SouteError, match="invalid cgroup name"):
            Cgroup.create(bad, Limits(), layout=Layout())


def test_unavailable_controller() -> None:
    # A layout without the controller: the same error a host without it gives.
    with pytest.raises(SouteError, match=r"memory cgroup controller is not available.*--memory"):
        Cgroup.create(_name(), Limits(memory=1 << 25), layout=Layout())
    with pytest.raises(SouteError, match="nosuch cgroup controller is not available"):
        Cgroup.create(_name(), Limits(), layout=Layout(), extra=["nosuch"])


@needs_cgroups
def test_unavailable_controller_on_this_host() -> None:
    real = detect_layout()
    without_pids = Layout(tuple(h for h in real.hierarchies if "pids" not in h.controllers))
    if without_pids.hierarchy_for("pids") is not None:
        pytest.skip("pids is reachable another way")
    with pytest.raises(SouteError, match=r"pids cgroup controller .*--pids-limit"):
        Cgroup.create(_name(), Limits(pids=3), layout=without_pids)
    with pytest.raises(SouteError, match="no-such-controller"):
        Cgroup.create(_name(), Limits(), extra=["no-such-controller"])


# --- real cgroups --------------------------------------------------------------------------


@needs_cgroups
def test_memory_limit_oom_kills(
    make: Callable[..., Cgroup], spawn: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    _needs("memory")
    limit = 32 << 20
    # memory_swap = memory: no swapping out of the limit where swap is accounted.
    hungry = make(Limits(memory=limit, memory_swap=limit))
    modest = make(Limits(memory=limit, memory_swap=limit))
    big = spawn("b = b'x' * (200 << 20)\nprint('survived')")
    small = spawn("b = b'x' * (4 << 20)\nprint('survived')")
    hungry.add(big.pid)
    modest.add(small.pid)
    assert hungry.pids() == [big.pid]
    _go(big)
    _go(small)
    assert big.wait(timeout=60) == -signal.SIGKILL
    assert small.wait(timeout=60) == 0
    assert small.stdout is not None and small.stdout.read() == b"survived\n"

    version = 1 if (hungry.path("memory") / "memory.limit_in_bytes").exists() else 2
    if version == 1:
        assert int((hungry.path("memory") / "memory.limit_in_bytes").read_text()) == limit
        reports = "oom_kill " in (hungry.path("memory") / "memory.oom_control").read_text()
    else:
        assert int((hungry.path("memory") / "memory.max").read_text()) == limit
        reports = True
    if reports:
        assert hungry.oom_killed()
    assert not modest.oom_killed()


@needs_cgroups
def test_pids_limit(
    make: Callable[..., Cgroup], spawn: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    _needs("pids")
    cgroup = make(Limits(pids=5))
    assert (cgroup.path("pids") / "pids.max").read_text().strip() == "5"
    forker = spawn(
        "import os, time\n"
        "kids, failed = [], 0\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError:\n"  # EAGAIN: 'Resource temporarily unavailable'
        "        failed += 1\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        time.sleep(1)\n"
        "        os._exit(0)\n"
        "    kids.append(pid)\n"
        "print(failed, flush=True)\n"
        "for kid in kids:\n"
        "    os.waitpid(kid, 0)\n"
    )
    cgroup.add(forker.pid)
    _go(forker)
    most = 0
    while forker.poll() is None:
        most = max(most, len(cgroup.pids()))
        time.sleep(0.01)
    assert forker.returncode == 0
    assert forker.stdout is not None
    failed = int(forker.stdout.read())
    assert failed >= 15  # the parent and at most 4 children fit in 5
    assert 1 <= most <= 5


@needs_cgroups
def test_shell_fork_failures_under_pids_limit(make: Callable[..., Cgroup]) -> None:
    _needs("pids")
    cgroup = make(Limits(pids=5))
    shell = subprocess.Popen(
        ["sh", "-c", "read x; i=0; while [ $i -lt 20 ]; do sleep 1 & i=$((i+1)); done; wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    cgroup.add(shell.pid)
    _go(shell)
    most = 0
    while shell.poll() is None:
        most = max(most, len(cgroup.pids()))
        time.sleep(0.01)
    assert shell.stderr is not None
    err = shell.stderr.read().lower()  # EOF once the surviving sleeps are done
    shell.stderr.close()
    # dash reports "Cannot fork" and stops; bash would say "Resource temporarily unavailable".
    assert shell.returncode != 0 or b"fork" in err or b"unavailable" in err
    assert most <= 5


@needs_cgroups
def test_cpu_quota_reads_back(make: Callable[..., Cgroup]) -> None:
    _needs("cpu")
    cgroup = make(Limits(cpu_quota=150_000, cpu_period=100_000))
    d = cgroup.path("cpu")
    if (d / "cpu.cfs_quota_us").exists():
        assert (d / "cpu.cfs_period_us").read_text().strip() == "100000"
        assert (d / "cpu.cfs_quota_us").read_text().strip() == "150000"
    else:
        assert (d / "cpu.max").read_text().split() == ["150000", "100000"]
    # A quota alone takes docker's 100 ms period.
    other = make(Limits(cpu_quota=20_000, cpu_period=50_000))
    d = other.path("cpu")
    if (d / "cpu.cfs_quota_us").exists():
        assert (d / "cpu.cfs_quota_us").read_text().strip() == "20000"
    else:
        assert (d / "cpu.max").read_text().split() == ["20000", "50000"]


def _counter_code(path: Path) -> str:
    return (
        "import time\n"
        f"with open({str(path)!r}, 'a') as out:\n"
        "    while True:\n"
        "        out.write('x')\n"
        "        out.flush()\n"
        "        time.sleep(0.01)\n"
    )


def _check_freeze_thaw(cgroup: Cgroup, counter: Path) -> None:
    deadline = time.monotonic() + 10
    while not counter.exists() or counter.stat().st_size == 0:
        assert time.monotonic() < deadline, "the counter never started"
        time.sleep(0.01)
    cgroup.freeze()
    before = counter.stat().st_size
    time.sleep(0.3)
    assert counter.stat().st_size == before, "the counter advanced while frozen"
    cgroup.thaw()
    deadline = time.monotonic() + 3
    while counter.stat().st_size == before:
        assert time.monotonic() < deadline, "the counter did not resume after thaw"
        time.sleep(0.01)


@needs_cgroups
@pytest.mark.parametrize("which", ["default", "cgroup2"])
def test_freeze_and_thaw(
    which: str,
    make: Callable[..., Cgroup],
    spawn: Callable[[str], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    if which == "default":
        _needs("freezer")
        cgroup = make()
    else:
        layout = _v2_only()
        if not (layout.hierarchies[0].own_dir / "cgroup.freeze").exists() and not any(
            (p / "cgroup.freeze").exists() for p in layout.hierarchies[0].mountpoint.iterdir()
        ):
            pytest.skip("this kernel's cgroup2 has no freezer (Linux < 5.2)")
        cgroup = make(layout=layout)
        assert (cgroup.path("freezer") / "cgroup.freeze").exists()
    counter = tmp_path / "counter"
    proc = spawn(_counter_code(counter))
    cgroup.add(proc.pid)
    _go(proc)
    _check_freeze_thaw(cgroup, counter)
    # Another process (commit) finds the same cgroup by name, or through a member's pid.
    _check_freeze_thaw(Cgroup.open(cgroup.name, proc.pid), counter)
    if which == "default":
        _check_freeze_thaw(Cgroup.open(cgroup.name), counter)


@needs_cgroups
def test_remove_kills_leftovers_and_deletes_directories() -> None:
    cgroup = Cgroup.create(_name(), Limits())
    # A grandchild reparented away from us: only the cgroup still knows about it.
    shell = subprocess.Popen(
        ["sh", "-c", "read x; sleep 300 >/dev/null 2>&1 & echo $!"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        cgroup.add(shell.pid)
        out, _ = shell.communicate(b"x\n", timeout=30)
        orphan = int(out)
        assert orphan in cgroup.pids()
        dirs = cgroup.directories
        assert dirs and all(d.is_dir() for d in dirs)
        cgroup.remove()
        assert _gone(orphan)
        assert not any(d.exists() for d in dirs)
    finally:
        cgroup.remove()  # idempotent


@needs_cgroups
def test_remove_kills_forking_processes_and_nested_cgroups(
    spawn: Callable[[str], subprocess.Popen[bytes]], request: pytest.FixtureRequest
) -> None:
    cgroup = Cgroup.create(_name(), Limits())
    request.addfinalizer(cgroup.remove)
    for d in cgroup.directories:  # as a container with its own cgroup namespace would
        (d / "nested").mkdir()
    forker = spawn(
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(0.05)\n"
        "            os._exit(0)\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    cgroup.add(forker.pid)
    _go(forker)
    time.sleep(0.2)
    dirs = cgroup.directories
    cgroup.remove()
    assert forker.wait(timeout=10) == -signal.SIGKILL
    assert not any(d.exists() for d in dirs)


@needs_cgroups
def test_stale_cgroup_is_replaced(
    make: Callable[..., Cgroup], spawn: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    name = _name()
    stale = Cgroup.create(name, Limits())  # its monitor "died": never removed
    proc = spawn("import time\ntime.sleep(300)")
    stale.add(proc.pid)
    _go(proc)
    fresh = make(name=name)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert fresh.pids() == []
    assert fresh.directories == stale.directories
    assert all(d.is_dir() for d in fresh.directories)


@needs_cgroups
def test_parent_is_shared(make: Callable[..., Cgroup]) -> None:
    first, second = make(), make()
    parents = {d.parent for d in first.directories}
    assert all(p.name == PARENT for p in parents)
    first.remove()
    assert all(p.is_dir() for p in parents), "removed the parent another cgroup uses"
    assert all(d.is_dir() for d in second.directories)


# --- cgroup2 controller delegation (uses hugetlb, the controller a hybrid host leaves to v2) --


def _hugetlb_v2() -> Hierarchy:
    layout = _v2_only()
    unified = layout.hierarchies[0]
    if "hugetlb" not in unified.controllers:
        pytest.skip("hugetlb is not a cgroup2 controller here")
    return unified


@pytest.fixture
def restore_subtree_control() -> Iterator[None]:
    """Undo enabling controllers in cgroup2 directories the test did not create."""
    unified = detect_layout().unified
    saved: dict[Path, set[str]] = {}
    if unified is not None:
        d = unified.own_dir
        while True:
            with contextlib.suppress(OSError):
                saved[d] = set((d / "cgroup.subtree_control").read_text().split())
            if d == unified.mountpoint:
                break
            d = d.parent
    yield
    for d, before in sorted(saved.items(), key=lambda item: -len(item[0].parts)):
        with contextlib.suppress(OSError):
            now = set((d / "cgroup.subtree_control").read_text().split())
            for extra in now - before:
                (d / "cgroup.subtree_control").write_text(f"-{extra}")


@needs_cgroups
def test_v2_enables_controllers_for_the_cgroup(
    make: Callable[..., Cgroup], restore_subtree_control: None
) -> None:
    unified = _hugetlb_v2()
    cgroup = make(layout=Layout((unified,)), extra=["hugetlb"])
    d = cgroup.path("hugetlb")
    assert "hugetlb" in (d.parent / "cgroup.subtree_control").read_text().split()
    assert "hugetlb" in (d / "cgroup.controllers").read_text().split()
    cgroup.remove()


@needs_cgroups
def test_v2_climbs_past_a_cgroup_with_processes(
    make: Callable[..., Cgroup],
    spawn: Callable[[str], subprocess.Popen[bytes]],
    restore_subtree_control: None,
) -> None:
    unified = _hugetlb_v2()
    busy = unified.own_dir / f"soute-busy-{os.getpid()}"
    busy.mkdir()
    try:
        sleeper = spawn("import time\ntime.sleep(300)")
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        # Pretend we live in `busy`: enabling hugetlb there is refused (it holds a process).
        inside = replace(unified, cgroup=str(busy.relative_to(unified.mountpoint)))
        cgroup = make(layout=Layout((inside,)), extra=["hugetlb"])
        d = cgroup.path("hugetlb")
        assert d.parent.name == PARENT
        assert busy not in d.parents, "created below a cgroup that holds processes"
        assert not (busy / PARENT).exists()
        assert "hugetlb" not in (busy / "cgroup.subtree_control").read_text().split()
        cgroup.remove()
    finally:
        for proc_pid in (busy / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc_pid), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while (busy / "cgroup.procs").read_text().split() and time.monotonic() < deadline:
            time.sleep(0.01)
        busy.rmdir()
