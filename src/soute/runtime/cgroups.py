"""Resource limits, pausing and clean-up of a container through Linux control groups.

A container's cgroup is ``soute/<name>`` below the cgroup of the process that creates it (the
container monitor), so soute needs no daemon and stays inside whatever limits its caller runs
under. Both kernel interfaces are supported, detected from ``/proc/self/mountinfo`` and
``/proc/<pid>/cgroup``, never assumed:

* cgroup v1 (and the *hybrid* layout: v1 controllers plus a cgroup2 mount that holds the
  leftovers): one directory per hierarchy that carries a needed controller (memory, cpu, pids
  and, always, freezer). A controller is taken from v1 when a v1 hierarchy carries it, from
  the cgroup2 mount otherwise.
* cgroup v2 (unified): one directory. Controllers must be enabled in every ancestor's
  ``cgroup.subtree_control``, and the kernel refuses that (EBUSY) in a non-root cgroup that
  holds processes -- which our own cgroup always does (threaded controllers such as cpu and
  pids are exempt, hence the attempt). So we try our own cgroup first (it works
  there when it is the root cgroup, or when no controller is needed), and on EBUSY/EOPNOTSUPP we
  climb one level at a time, so ``soute`` ends up as a *sibling* of our cgroup (under its
  parent, which has children and hence no processes of its own). The limits then no longer
  nest inside the monitor's own cgroup, but they still nest inside every cgroup above it, and
  nothing of anyone else's is moved. Controllers enabled in ancestors are left enabled (other
  containers may rely on them; enabling one without setting a limit changes nothing).

The freezer is used by ``commit`` to pause a container and by :meth:`Cgroup.remove` to stop a
fork race while killing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from soute.errors import SouteError

__all__ = [
    "PARENT",
    "Cgroup",
    "Hierarchy",
    "Layout",
    "Limits",
    "available_controllers",
    "detect_layout",
    "parse_layout",
]

# Every container cgroup lives in this directory, below the creator's cgroup.
PARENT = "soute"

# v1 subsystems the kernel may know; /proc/cgroups adds any newer ones at run time.
_KNOWN_V1 = frozenset(
    {
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
        "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc",
    }
)  # fmt: skip

# Which command-line option a missing controller breaks, for the error message.
_FLAGS = {
    "memory": "--memory/--memory-swap",
    "cpu": "--cpus",
    "pids": "--pids-limit",
    "freezer": "pausing (commit of a running container)",
}

_DEFAULT_PERIOD = 100_000  # microseconds, docker's --cpus period
_TIMEOUT = 5.0


@dataclass(frozen=True)
class Limits:
    """What a container may use; ``None`` leaves the kernel's default (unlimited).

    ``memory`` and ``memory_swap`` are bytes; ``memory_swap`` is memory *plus* swap as with
    docker's ``--memory-swap`` (``-1``: unlimited swap). ``cpu_quota``/``cpu_period`` are
    microseconds (docker's ``--cpus N`` is quota ``N*100000`` over period ``100000``).
    """

    memory: int | None = None
    memory_swap: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    pids: int | None = None

    def __post_init__(self) -> None:
        for label, value in (
            ("memory limit", self.memory),
            ("CPU quota", self.cpu_quota),
            ("CPU period", self.cpu_period),
            ("pids limit", self.pids),
        ):
            if value is not None and value <= 0:
                raise SouteError(f"invalid {label} {value}: it must be positive")
        if self.memory_swap is not None and self.memory_swap != -1:
            if self.memory is None:
                raise SouteError("a memory+swap limit needs a memory limit", "add --memory as well")
            if self.memory_swap < self.memory:
                raise SouteError(
                    f"the memory+swap limit ({self.memory_swap}) is below the memory limit "
                    f"({self.memory})",
                    "--memory-swap counts memory plus swap",
                )

    def controllers(self) -> set[str]:
        """The cgroup controllers these limits need."""
        needed: set[str] = set()
        if self.memory is not None or self.memory_swap is not None:
            needed.add("memory")
        if self.cpu_quota is not None or self.cpu_period is not None:
            needed.add("cpu")
        if self.pids is not None:
            needed.add("pids")
        return needed


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy and the cgroup of the inspected process inside it."""

    version: int  # 1 or 2
    mountpoint: Path
    controllers: frozenset[str]
    cgroup: str  # the process's cgroup relative to the mountpoint; "" at the mount's root

    @property
    def own_dir(self) -> Path:
        return self.mountpoint / self.cgroup if self.cgroup else self.mountpoint


@dataclass(frozen=True)
class Layout:
    """The cgroup hierarchies visible to a process (v1, v2 or both in the hybrid layout)."""

    hierarchies: tuple[Hierarchy, ...] = field(default_factory=tuple)

    @property
    def unified(self) -> Hierarchy | None:
        return next((h for h in self.hierarchies if h.version == 2), None)

    def hierarchy_for(self, controller: str) -> Hierarchy | None:
        """Where ``controller`` lives: a v1 hierarchy carrying it wins over cgroup2."""
        for h in self.hierarchies:
            if h.version == 1 and controller in h.controllers:
                return h
        unified = self.unified
        # v2's freezer is part of the core (cgroup.freeze), not a listed controller.
        if unified is not None and (controller == "freezer" or controller in unified.controllers):
            return unified
        return None

    def controllers(self) -> set[str]:
        names: set[str] = set()
        for h in self.hierarchies:
            names |= h.controllers
        if self.unified is not None:
            names.add("freezer")
        return names


def available_controllers() -> set[str]:
    """The controllers this process can use, whichever cgroup version provides them."""
    return detect_layout().controllers()


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        octal = text[i + 1 : i + 4]
        if text[i] == "\\" and len(octal) == 3 and all(c in "01234567" for c in octal):
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _relative(cgroup_path: str, mount_root: str) -> str | None:
    """``cgroup_path`` relative to a mount of ``mount_root``; None when the mount can't see it."""
    cgroup_path = cgroup_path.removesuffix(" (deleted)")
    if mount_root in ("", "/"):
        return cgroup_path.strip("/")
    root = mount_root.rstrip("/")
    if cgroup_path == root:
        return ""
    if cgroup_path.startswith(root + "/"):
        return cgroup_path[len(root) + 1 :].strip("/")
    return None


def parse_layout(mountinfo: str, proc_cgroup: str, known: Iterable[str] = _KNOWN_V1) -> Layout:
    """The hierarchies from the text of ``/proc/*/mountinfo`` and ``/proc/<pid>/cgroup``.

    v2 controllers are read from the mount's ``cgroup.controllers`` (empty when unreadable).
    """
    known_set = frozenset(known)
    # /proc/<pid>/cgroup: "ID:controller,list:/path"; v2 is "0::/path".
    v1_paths: dict[str, str] = {}
    v2_path: str | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, names, path = parts
        if names == "":
            v2_path = path
        else:
            for name in names.split(","):
                v1_paths[name] = path

    hierarchies: list[Hierarchy] = []
    seen_v1: set[frozenset[str]] = set()
    have_v2 = False
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 4 or len(fields) < 5:
            continue
        fstype, superopts = fields[sep + 1], fields[sep + 3]
        root, mountpoint = _unescape(fields[3]), Path(_unescape(fields[4]))
        if fstype == "cgroup":
            ctrls = frozenset(o for o in superopts.split(",") if o in known_set)
            if not ctrls or ctrls in seen_v1:
                continue  # named hierarchies (name=systemd) carry no controller
            path = v1_paths.get(next(iter(ctrls)))
            rel = None if path is None else _relative(path, root)
            if rel is None:
                continue  # a bind mount of some other part of the tree; another may fit
            seen_v1.add(ctrls)
            hierarchies.append(Hierarchy(1, mountpoint, ctrls, rel))
        elif fstype == "cgroup2" and not have_v2 and v2_path is not None:
            rel = _relative(v2_path, root)
            if rel is None:
                continue
            have_v2 = True
            try:
                listed = (mountpoint / "cgroup.controllers").read_text().split()
            except OSError:
                listed = []
            hierarchies.append(Hierarchy(2, mountpoint, frozenset(listed), rel))
    return Layout(tuple(hierarchies))


def detect_layout(pid: int | None = None) -> Layout:
    """The layout for process ``pid`` (default: this process), seen from our mount namespace."""
    known = set(_KNOWN_V1)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
            if line.strip():
                known.add(line.split()[0])
    who = "self" if pid is None else str(pid)
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        proc_cgroup = Path(f"/proc/{who}/cgroup").read_text()
    except FileNotFoundError as err:
        raise SouteError(f"cannot read the cgroups of process {who}: {err.strerror}") from None
    return parse_layout(mountinfo, proc_cgroup, known)


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, value: str) -> None:
    # One write(2) per value: cgroup files parse each write on its own.
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as err:
        raise SouteError(f"cannot write {value!r} to {path}: {err.strerror}") from err


def _procs(directory: Path) -> list[int]:
    """Processes in ``directory`` and every cgroup below it (a container may nest its own)."""
    found: list[int] = []
    for sub, _, _ in os.walk(directory):
        with contextlib.suppress(FileNotFoundError):
            found += [int(p) for p in _read(Path(sub) / "cgroup.procs").split() if p != "0"]
    return found


def _key_value(path: Path, key: str) -> int | None:
    """The number after ``key`` in a flat-keyed cgroup file (memory.events, oom_control)."""
    try:
        text = _read(path)
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return None


def _unavailable(controller: str) -> SouteError:
    flag = _FLAGS.get(controller)
    what = f": {flag} cannot be applied" if flag else ""
    return SouteError(
        f"the {controller} cgroup controller is not available{what}",
        "enable the controller on the host (cgroup v1: mount it; cgroup v2: delegate it "
        "through cgroup.subtree_control) or drop the option",
    )


class _Busy(Exception):
    """The kernel refused to enable controllers in a cgroup that holds processes."""


def _enable_v2(directory: Path, controllers: set[str], root: Path) -> None:
    """Enable ``controllers`` for the children of ``directory``, ancestors first as needed."""
    if not controllers:
        return
    missing = controllers - set(_read(directory / "cgroup.subtree_control").split())
    if not missing:
        return
    absent = missing - set(_read(directory / "cgroup.controllers").split())
    if absent:
        if directory == root:
            raise _unavailable(sorted(absent)[0])
        _enable_v2(directory.parent, absent, root)
    # One write: the kernel applies all of it or none of it.
    try:
        fd = os.open(directory / "cgroup.subtree_control", os.O_WRONLY)
        try:
            os.write(fd, " ".join(f"+{c}" for c in sorted(missing)).encode())
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise  # a racing remove() deleted it: _make starts again
    except OSError as err:
        if err.errno in (errno.EBUSY, errno.EOPNOTSUPP):
            raise _Busy(str(directory)) from err
        raise SouteError(
            f"cannot enable the {', '.join(sorted(missing))} cgroup controller(s) in "
            f"{directory}: {err.strerror}"
        ) from err


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(exist_ok=True)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise SouteError(
            f"cannot create the cgroup {path}: {err.strerror}",
            "soute needs root and a writable cgroup filesystem to apply limits",
        ) from err


def _copy_cpuset(parent: Path, child: Path) -> None:
    # A v1 cpuset cgroup starts with no CPUs and no memory nodes: nothing could run in it.
    for name in ("cpuset.cpus", "cpuset.mems"):
        if (child / name).exists() and not _read(child / name).strip():
            _write(child / name, _read(parent / name).strip())


def _kill_all(dirs: list[Path], frozen: tuple[int, Path] | None, timeout: float) -> None:
    """SIGKILL everything under ``dirs`` and wait until no process is left."""
    if not any(_procs(d) for d in dirs):
        return
    for d in dirs:
        # cgroup2 (Linux 5.14+) kills a whole subtree atomically, forks included.
        if (d / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(d / "cgroup.kill", "1")
    if frozen is not None:
        # Freezing first stops a fork bomb from outrunning the kill loop.
        with contextlib.suppress(SouteError):
            _freeze(frozen, True, 1.0)
    deadline = time.monotonic() + timeout
    pause = 0.005
    thawed = frozen is None
    while True:
        pids = [p for d in dirs for p in _procs(d)]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not thawed and frozen is not None:
            # v1 frozen tasks only act on the SIGKILL once thawed.
            with contextlib.suppress(SouteError):
                _freeze(frozen, False, 1.0)
            thawed = True
        if time.monotonic() > deadline:
            raise SouteError(
                f"processes {', '.join(map(str, sorted(set(pids))))} survived SIGKILL in {dirs[0]}",
                "they may be stuck in uninterruptible sleep (D state); retry later",
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
    if not thawed and frozen is not None:
        with contextlib.suppress(SouteError):
            _freeze(frozen, False, 1.0)


def _rmdir_tree(directory: Path) -> None:
    """Remove ``directory`` and any cgroup a container made below it, deepest first."""
    if not directory.exists():
        return
    for sub, _, _ in os.walk(directory, topdown=False):
        try:
            os.rmdir(sub)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise SouteError(f"cannot remove the cgroup {sub}: {err.strerror}") from err


def _freeze(where: tuple[int, Path], frozen: bool, timeout: float) -> None:
    version, directory = where
    deadline = time.monotonic() + timeout
    pause = 0.002
    if version == 1:
        state = "FROZEN" if frozen else "THAWED"
        while True:
            # Rewriting FROZEN retries tasks the previous attempt could not catch.
            _write(directory / "freezer.state", state)
            if _read(directory / "freezer.state").strip() == state:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
    else:
        _write(directory / "cgroup.freeze", "1" if frozen else "0")
        while True:
            if _key_value(directory / "cgroup.events", "frozen") == int(frozen):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
    if frozen:
        with contextlib.suppress(SouteError):
            _freeze(where, False, 1.0)
    verb = "freeze" if frozen else "thaw"
    raise SouteError(
        f"could not {verb} the cgroup {directory} within {timeout:g} s",
        "a process may be stuck in uninterruptible sleep (D state)",
    )


class Cgroup:
    """A container's cgroup, one directory per hierarchy used (one only on cgroup v2)."""

    def __init__(self, name: str, dirs: dict[str, tuple[int, Path]]) -> None:
        # controller -> (cgroup version, directory); "freezer" is present when pausing works.
        self.name = name
        self._dirs = dirs

    def __repr__(self) -> str:
        return f"Cgroup({self.name!r}, {sorted({str(p) for _, p in self._dirs.values()})})"

    def to_json(self) -> str:
        """Where it is, for another process (its directories can sit below any cgroup)."""
        import json

        return json.dumps({"name": self.name, "dirs": {c: [v, str(p)] for c, (v, p)
                                                       in self._dirs.items()}})

    @classmethod
    def from_json(cls, text: str) -> Cgroup:
        import json

        data = json.loads(text)
        return cls(data["name"], {c: (int(v), Path(p)) for c, (v, p) in data["dirs"].items()})

    @property
    def directories(self) -> list[Path]:
        """Every directory of this cgroup, one per hierarchy, without duplicates."""
        return sorted({p for _, p in self._dirs.values()})

    @property
    def controllers(self) -> set[str]:
        return set(self._dirs)

    def path(self, controller: str) -> Path:
        """The directory holding ``controller``'s files (for debugging and tests)."""
        try:
            return self._dirs[controller][1]
        except KeyError:
            raise SouteError(f"the cgroup {self.name} has no {controller} controller") from None

    @classmethod
    def create(
        cls,
        name: str,
        limits: Limits,
        *,
        layout: Layout | None = None,
        extra: Iterable[str] = (),
    ) -> Cgroup:
        """Make ``soute/<name>`` below our cgroup and apply ``limits``.

        ``extra`` names further controllers to attach (for callers that write their files
        themselves). A stale cgroup of the same name (its monitor was SIGKILLed) is emptied
        and replaced. ``layout`` defaults to this process's (tests narrow it).
        """
        _check_name(name)
        layout = layout if layout is not None else detect_layout()
        needed = limits.controllers() | set(extra)
        groups: dict[Hierarchy, set[str]] = {}
        for controller in sorted(needed):
            h = layout.hierarchy_for(controller)
            if h is None:
                raise _unavailable(controller)
            groups.setdefault(h, set()).add(controller)
        freezer = layout.hierarchy_for("freezer")
        if freezer is not None:
            groups.setdefault(freezer, set()).add("freezer")

        dirs: dict[str, tuple[int, Path]] = {}
        made: list[Path] = []
        try:
            for h, controllers in groups.items():
                made.append(_make(h, name, controllers))
                for controller in controllers:
                    dirs[controller] = (h.version, made[-1])
            cgroup = cls(name, dirs)
            cgroup._apply(limits)
        except BaseException:
            with contextlib.suppress(SouteError):
                cls(name, dirs).remove()
            for d in made:
                with contextlib.suppress(OSError):
                    os.rmdir(d)
            raise
        return cgroup

    @classmethod
    def open(cls, name: str, pid: int | None = None) -> Cgroup:
        """The existing cgroup ``name``, e.g. for ``commit`` to pause a running container.

        With ``pid`` (a process of the container) its directories come from
        ``/proc/<pid>/cgroup``, so the caller may sit in another cgroup than the monitor;
        without, they are looked up below this process's cgroup (and its ancestors on v2).
        """
        _check_name(name)
        dirs: dict[str, tuple[int, Path]] = {}
        for h in detect_layout(pid).hierarchies:
            found = _find(h, name, pid is not None)
            if found is None:
                continue
            names = set(h.controllers) | ({"freezer"} if h.version == 2 else set())
            for controller in names:
                # A v1 controller wins over the v2 leftovers, as in Layout.hierarchy_for.
                if controller not in dirs or dirs[controller][0] == 2:
                    dirs[controller] = (h.version, found)
        if not dirs:
            raise SouteError(f"no cgroup for container {name}", "is the container running?")
        return cls(name, dirs)

    def _apply(self, limits: Limits) -> None:
        if limits.memory is not None or limits.memory_swap is not None:
            version, d = self._dirs["memory"]
            if version == 1:
                if limits.memory is not None:
                    _write(d / "memory.limit_in_bytes", str(limits.memory))
                # Without swap accounting the file is absent and swap stays unlimited, as docker.
                if limits.memory_swap is not None and (d / "memory.memsw.limit_in_bytes").exists():
                    _write(d / "memory.memsw.limit_in_bytes", str(limits.memory_swap))
            else:
                if limits.memory is not None:
                    _write(d / "memory.max", str(limits.memory))
                if limits.memory_swap is not None and (d / "memory.swap.max").exists():
                    # v2 limits swap alone; docker's value is memory plus swap.
                    swap = (
                        "max"
                        if limits.memory_swap == -1 or limits.memory is None
                        else str(limits.memory_swap - limits.memory)
                    )
                    _write(d / "memory.swap.max", swap)
        if limits.cpu_quota is not None or limits.cpu_period is not None:
            version, d = self._dirs["cpu"]
            period = limits.cpu_period if limits.cpu_period is not None else _DEFAULT_PERIOD
            if version == 1:
                # The period first: the kernel checks the quota against the current period.
                _write(d / "cpu.cfs_period_us", str(period))
                if limits.cpu_quota is not None:
                    _write(d / "cpu.cfs_quota_us", str(limits.cpu_quota))
            else:
                quota = "max" if limits.cpu_quota is None else str(limits.cpu_quota)
                _write(d / "cpu.max", f"{quota} {period}")
        if limits.pids is not None:
            _, d = self._dirs["pids"]
            _write(d / "pids.max", str(limits.pids))

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into this cgroup in every hierarchy."""
        for d in self.directories:
            try:
                fd = os.open(d / "cgroup.procs", os.O_WRONLY)
                try:
                    os.write(fd, str(pid).encode())
                finally:
                    os.close(fd)
            except ProcessLookupError:
                raise SouteError(f"cannot move process {pid} into {d}: it has exited") from None
            except OSError as err:
                raise SouteError(f"cannot move process {pid} into {d}: {err.strerror}") from err

    def pids(self) -> list[int]:
        """The processes in this cgroup (and any cgroup a container nested below it)."""
        return sorted({p for d in self.directories for p in _procs(d)})

    def freeze(self, timeout: float = _TIMEOUT) -> None:
        """Stop every process of the cgroup; returns once all of them are frozen."""
        _freeze(self._freezer(), True, timeout)

    def thaw(self, timeout: float = _TIMEOUT) -> None:
        _freeze(self._freezer(), False, timeout)

    def _freezer(self) -> tuple[int, Path]:
        if "freezer" not in self._dirs:
            raise _unavailable("freezer")
        return self._dirs["freezer"]

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this cgroup."""
        if "memory" not in self._dirs:
            return False
        version, d = self._dirs["memory"]
        # v1's oom_control reports oom_kill since Linux 4.13; older kernels can't tell.
        name = "memory.oom_control" if version == 1 else "memory.events"
        return (_key_value(d / name, "oom_kill") or 0) > 0

    def kill(self, timeout: float = _TIMEOUT) -> None:
        """SIGKILL every process in the cgroup and wait (up to ``timeout`` s) for them to go."""
        _kill_all(self.directories, self._dirs.get("freezer"), timeout)

    def remove(self, timeout: float = _TIMEOUT) -> None:
        """Kill what is left, then delete every directory (and ``soute`` when it is empty)."""
        self.kill(timeout)
        for d in self.directories:
            _rmdir_tree(d)
            # Another container may still use the parent, or be creating in it right now.
            with contextlib.suppress(OSError):
                os.rmdir(d.parent)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name or "\n" in name:
        raise SouteError(f"invalid cgroup name {name!r}")


def _find(h: Hierarchy, name: str, from_pid: bool) -> Path | None:
    """The directory of ``soute/<name>`` in ``h``, if it exists."""
    if from_pid:
        # The container process sits in soute/<name> or a cgroup it nested below it.
        parts = h.cgroup.split("/") if h.cgroup else []
        for i in range(len(parts) - 1, 0, -1):
            if parts[i - 1] == PARENT and parts[i] == name:
                return h.mountpoint.joinpath(*parts[: i + 1])
        return None
    base = h.own_dir
    while True:
        candidate = base / PARENT / name
        if candidate.is_dir():
            return candidate
        # v2 may have put it beside an ancestor (see _make); v1 never climbs.
        if h.version == 1 or base == h.mountpoint:
            return None
        base = base.parent


def _make(h: Hierarchy, name: str, controllers: set[str]) -> Path:
    """Create ``soute/<name>`` in ``h`` (replacing a stale one); return its directory."""
    wanted = controllers - {"freezer"} if h.version == 2 else controllers
    for _ in range(5):
        try:
            if h.version == 1:
                parent = h.own_dir / PARENT
                _mkdir(parent)
                if "cpuset" in controllers:
                    _copy_cpuset(h.own_dir, parent)
            else:
                parent = _v2_parent(h, wanted)
            target = parent / name
            if target.exists():
                # A stale cgroup: its monitor died without cleaning up.
                _kill_all([target], _stale_freezer(h, target), _TIMEOUT)
                _rmdir_tree(target)
            _mkdir(target)
            if h.version == 1 and "cpuset" in controllers:
                _copy_cpuset(parent, target)
            return target
        except FileNotFoundError:
            # A racing remove() deleted the empty parent between our mkdirs: start again.
            continue
    raise SouteError(f"cannot create the cgroup {PARENT}/{name} in {h.mountpoint}")


def _stale_freezer(h: Hierarchy, target: Path) -> tuple[int, Path] | None:
    if h.version == 2:
        return (2, target)
    return (1, target) if "freezer" in h.controllers else None


def _v2_parent(h: Hierarchy, controllers: set[str]) -> Path:
    """The v2 ``soute`` directory, with ``controllers`` enabled for its children.

    Starts at our own cgroup and climbs while the kernel refuses to enable controllers
    because of the no-internal-processes rule (see the module docstring).
    """
    base = h.own_dir
    while True:
        try:
            _enable_v2(base, controllers, h.mountpoint)
            break
        except _Busy as busy:
            if base == h.mountpoint:
                raise SouteError(
                    f"cannot enable the {', '.join(sorted(controllers))} cgroup controller(s): "
                    f"{busy} holds processes",
                    "run soute in a cgroup whose parent can delegate controllers",
                ) from None
            base = base.parent
    parent = base / PARENT
    _mkdir(parent)
    try:
        _enable_v2(parent, controllers, h.mountpoint)
    except _Busy:
        raise SouteError(
            f"cannot enable cgroup controllers in {parent}: something put processes in it",
            f"move them out of {parent}",
        ) from None
    return parent
