"""What a container run needs, as typed data, and its OCI runtime-spec form (``config.json``).

One :class:`Spec` drives both executors: ours (:mod:`soute.runtime.executor`) reads it directly,
runc or crun read :func:`to_oci_config` of it. Fields mirror runtime-spec 1.0.2 so what
``soute run`` adds later (capabilities, cgroup limits, a terminal) has a place already.

Users are resolved as BuildKit and runc do (:func:`resolve_user`): the container's own
``/etc/passwd`` and ``/etc/group``, numeric ids need no entry, the primary group is also a
supplementary group.
"""

from __future__ import annotations

import os
import re
import stat
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path

from soute.errors import SouteError
from soute.runtime.paths import scoped_path

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from collections.abc import Sequence
    from typing import Any, NamedTuple

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_HOSTNAME = "buildkitsandbox"  # BuildKit's hostname for RUN
NAMESPACES = frozenset({"pid", "mount", "uts", "ipc", "network", "cgroup"})
# A build RUN: everything private but the network, which is the host's unless --network none.
BUILD_NAMESPACES = frozenset({"pid", "mount", "uts", "ipc"})
# A bind mount option of ours, not the kernel's: an empty source directory is first filled
# with what the image has at the destination (docker's volume copy-up).
COPY_UP = "copy-up"
# A bind mount of a host device node (--device): the one kind the runtime leaves openable
# where every other bind and tmpfs mount is nodev (see Spec.all_devices).
DEVICE = "soute-device"

# Capability names by number (linux/capability.h).
CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
    "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON",
    "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
# docker run's (and containerd's) default set.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
# docker's defaults: kernel interfaces a container has no business reading or changing.
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
    "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
)
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)
# What docker (Google's resolvers) puts in resolv.conf when the host's only point at itself.
FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")

_MAX_ID = 2**31 - 1
_MAX_USER_FILE = 10 << 20  # BuildKit refuses larger passwd/group files
_GO_INT = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True, slots=True)
class Rlimit:
    """A POSIX resource limit, ``type`` as the spec names it (``RLIMIT_NOFILE``)."""

    type: str
    soft: int
    hard: int


@dataclass(slots=True)
class Process:
    """The command to run and the identity it runs with.

    ``user`` is written as in ``USER``: ``name``, ``uid``, ``name:group``, ``uid:gid``...
    ``capabilities`` None keeps every capability (a build RUN as root); a list is the only
    capabilities left (bounding, permitted and effective sets), as ``docker run`` does.
    """

    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    user: str = ""
    group_add: tuple[str, ...] = ()  # ``--group-add``: more groups, names or gids
    terminal: bool = False
    no_new_privileges: bool = True
    capabilities: list[str] | None = None
    rlimits: tuple[Rlimit, ...] = ()

    def validate(self) -> None:
        if not self.args:
            raise SouteError("process args must not be empty")
        if not self.cwd.startswith("/"):
            raise SouteError(f"cwd {self.cwd!r} is not an absolute path")
        for name in self.capabilities or ():
            if name not in CAPABILITIES:
                raise SouteError(f"unknown capability {name!r}")


@dataclass(frozen=True, slots=True)
class Mount:
    """A mount, as in the spec: ``options`` mixes flags (``ro``, ``nosuid``) and fs data.

    A bind mount may also have :data:`COPY_UP` or :data:`DEVICE`, which the runtime
    handles itself.
    """

    destination: str
    type: str
    source: str
    options: tuple[str, ...] = ()

    @property
    def is_bind(self) -> bool:
        return self.type == "bind" or "bind" in self.options or "rbind" in self.options

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {"destination": self.destination, "type": self.type,
                               "source": self.source}
        options = [o for o in self.options if o not in (COPY_UP, DEVICE)]  # ours alone
        if options:
            out["options"] = options
        return out


@dataclass(frozen=True, slots=True)
class GeneratedFile:
    """A file the runtime writes and bind-mounts into the container (``/etc/hosts``...).

    It covers what the image has at ``destination`` and never reaches the layer.
    """

    destination: str
    content: bytes
    readonly: bool = True


@dataclass(frozen=True, slots=True)
class Resources:
    """cgroup limits (``docker run --memory/--cpus/--pids-limit``); runtime-spec units."""

    memory: int | None = None
    memory_swap: int | None = None
    cpu_shares: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    pids_limit: int | None = None

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        memory = {k: v for k, v in (("limit", self.memory), ("swap", self.memory_swap))
                  if v is not None}
        cpu = {k: v for k, v in (("shares", self.cpu_shares), ("quota", self.cpu_quota),
                                 ("period", self.cpu_period)) if v is not None}
        if memory:
            out["memory"] = memory
        if cpu:
            out["cpu"] = cpu
        if self.pids_limit is not None:
            out["pids"] = {"limit": self.pids_limit}
        return out


def default_mounts() -> list[Mount]:
    """/proc, a small /dev, devpts, /dev/shm, /dev/mqueue and a read-only /sys, with the
    options docker and ``runc spec`` give them."""
    nosuid_noexec_nodev = ("nosuid", "noexec", "nodev")
    return [
        Mount("/proc", "proc", "proc", nosuid_noexec_nodev),
        Mount("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
        Mount("/dev/pts", "devpts", "devpts",
              ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
        Mount("/dev/shm", "tmpfs", "shm", (*nosuid_noexec_nodev, "mode=1777", "size=65536k")),
        Mount("/dev/mqueue", "mqueue", "mqueue", nosuid_noexec_nodev),
        Mount("/sys", "sysfs", "sysfs", (*nosuid_noexec_nodev, "ro")),
    ]


@dataclass(slots=True)
class Spec:
    """Everything about one container run but its root filesystem (see ``rootfs.Layers``).

    ``files`` None means the usual three: ``/etc/hosts``, ``/etc/hostname`` and
    ``/etc/resolv.conf`` made from ``hostname`` and the host's resolver configuration
    (:func:`default_files`); give a tuple to choose (an empty one for none).
    """

    process: Process
    hostname: str = BUILD_HOSTNAME
    namespaces: set[str] = field(default_factory=lambda: set(BUILD_NAMESPACES))
    mounts: list[Mount] = field(default_factory=default_mounts)
    files: tuple[GeneratedFile, ...] | None = None
    readonly_rootfs: bool = False
    masked_paths: tuple[str, ...] = DEFAULT_MASKED_PATHS
    readonly_paths: tuple[str, ...] = DEFAULT_READONLY_PATHS
    resources: Resources | None = None
    sysctl: tuple[tuple[str, str], ...] = ()  # written in /proc/sys before the paths are masked
    # Whether every device node may be opened (--privileged, RUN --security=insecure). If
    # not, only /dev's usual ones: what docker's device cgroup allows (see executor).
    all_devices: bool = False

    def validate(self) -> None:
        unknown = self.namespaces - NAMESPACES
        if unknown:
            raise SouteError(f"unsupported namespace: {', '.join(sorted(unknown))}")
        if "mount" not in self.namespaces:
            raise SouteError("a container needs its own mount namespace")
        self.process.validate()
        for m in self.mounts:
            if not m.destination.startswith("/"):
                raise SouteError(f"mount destination {m.destination!r} is not absolute")
            if COPY_UP in m.options and not m.is_bind:
                raise SouteError(f"{COPY_UP} needs a bind mount ({m.destination})")


if TYPE_CHECKING:
    class ExecUser(NamedTuple):
        """A resolved ``USER``: what setuid/setgid/setgroups get, and ``HOME`` when unset."""

        uid: int
        gid: int
        additional_gids: tuple[int, ...]
        home: str = "/"
else:  # the same class without typing (3 ms of a `soute run` to import)
    ExecUser = namedtuple("ExecUser", ("uid", "gid", "additional_gids", "home"),
                          defaults=("/",))
    ExecUser.__doc__ = (
        "A resolved ``USER``: what setuid/setgid/setgroups get, and ``HOME`` when unset.")


# ---------------------------------------------------------------------------- users


def resolve_user(root: Path | str, user: str, group_add: Sequence[str] = ()) -> ExecUser:
    """Resolve ``USER`` against ``<root>/etc/passwd`` and ``<root>/etc/group``.

    BuildKit's rules: ``uid:gid`` (numbers or ``root``) is taken as is; otherwise runc's user
    lookup, where a name must exist in passwd, a number need not (gid 0 then), ``user``
    alone brings the groups listing it as supplementary groups, ``user:group`` sets the
    group and no supplementary ones. The primary gid always leads the supplementary list.
    ``group_add`` (``docker run --group-add``) adds groups, each a name in the group file or
    a gid, after the user's own, as docker does.
    """
    found = _resolve_user(str(root), user)
    if not group_add:
        return found
    extra = _additional_groups(_read_db(str(root), "/etc/group"), group_add)
    gids = (*found.additional_gids, *(g for g in extra if g not in found.additional_gids))
    return ExecUser(found.uid, found.gid, gids, found.home)


def _additional_groups(group: list[list[str]] | None, wanted: Sequence[str]) -> list[int]:
    """runc's GetAdditionalGroups: a name or gid found in the group file, else a number."""
    gids: list[int] = []
    for name in wanted:
        match = next((g for g in group or () if name in (_field(g, 0), _field(g, 2))), None)
        if match is not None:
            gid = _atoi(_field(match, 2))
        elif _GO_INT.fullmatch(name):
            gid = _in_range(int(name))
        else:
            raise SouteError(f"unable to find group {name}: no matching entries in group file")
        if gid not in gids:
            gids.append(gid)
    return gids


def _resolve_user(root: str, user: str) -> ExecUser:
    passwd = _read_db(root, "/etc/passwd")
    fast = _parse_uid_gid(user or "0")
    if fast is not None:
        uid, gid = fast
        return ExecUser(uid, gid, (gid,), _home_of(passwd, uid))
    group = _read_db(root, "/etc/group")
    try:
        uid, gid, sgids, home = _exec_user(user or "0", passwd, group)
    except SouteError:
        if not user:  # the default user needs no passwd entry
            return ExecUser(0, 0, (0,), _home_of(passwd, 0))
        raise
    gids = sgids if gid in sgids else (gid, *sgids)
    return ExecUser(uid, gid, gids, home or _home_of(passwd, uid))


def _parse_uid_gid(user: str) -> tuple[int, int] | None:
    """BuildKit's fast path: both ids given, each a number or ``root``."""
    parts = user.split(":", 1)
    if len(parts) != 2:
        return None
    ids = []
    for part in parts:
        if part == "root":
            ids.append(0)
        elif re.fullmatch(r"[0-9]+", part) and int(part) <= 0xFFFFFFFF:  # re caches it
            ids.append(int(part))
        else:
            return None
    return ids[0], ids[1]


def _exec_user(
    spec: str, passwd: list[list[str]] | None, group: list[list[str]] | None
) -> tuple[int, int, tuple[int, ...], str]:
    parts = spec.split(":")
    user_arg = parts[0]
    group_arg = parts[1] if len(parts) > 1 else ""
    uid_num = int(user_arg) if _GO_INT.fullmatch(user_arg) else None
    gid_num = int(group_arg) if _GO_INT.fullmatch(group_arg) else None

    uid, gid, home, name = 0, 0, "", ""
    for entry in passwd or ():
        entry_uid = _atoi(_field(entry, 2))
        if (entry_uid == 0 if not user_arg
                else entry_uid == uid_num if uid_num is not None
                else _field(entry, 0) == user_arg):
            name, uid, gid, home = entry[0], entry_uid, _atoi(_field(entry, 3)), _field(entry, 5)
            break
    else:
        if user_arg:
            if uid_num is None:
                raise SouteError(f"unable to find user {user_arg}: no matching entries in passwd "
                                 "file")
            uid = _in_range(uid_num)

    sgids: tuple[int, ...] = ()
    if group_arg or name:
        matches = [g for g in group or () if _group_matches(g, group_arg, gid_num, name)]
        if group_arg:
            if matches:
                gid = _atoi(_field(matches[0], 2))
            elif gid_num is None:
                raise SouteError(f"unable to find group {group_arg}: no matching entries in group "
                                 "file")
            else:
                gid = _in_range(gid_num)
        else:
            sgids = tuple(_atoi(_field(g, 2)) for g in matches)
    return uid, gid, sgids, home


def _group_matches(entry: list[str], group_arg: str, gid_num: int | None, user: str) -> bool:
    if not group_arg:
        members = _field(entry, 3)
        return user in members.split(",") if members else False
    if gid_num is not None:
        return _atoi(_field(entry, 2)) == gid_num
    return _field(entry, 0) == group_arg


def _home_of(passwd: list[list[str]] | None, uid: int) -> str:
    for entry in passwd or ():
        if _atoi(_field(entry, 2)) == uid:
            return _field(entry, 5) or "/"
    return "/"


def _read_db(root: str, name: str) -> list[list[str]] | None:
    """The colon-separated lines of a passwd-like file in the container, None if unusable."""
    try:
        path = scoped_path(root, name)
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            data = f.read(_MAX_USER_FILE + 1)
    except OSError:
        return None
    if len(data) > _MAX_USER_FILE:
        raise SouteError(f"{name} exceeds {_MAX_USER_FILE} bytes")
    text = data.decode("utf-8", "surrogateescape")
    return [line.strip().split(":") for line in text.split("\n") if line.strip()]


def _field(entry: list[str], index: int) -> str:
    return entry[index] if index < len(entry) else ""


def _atoi(text: str) -> int:
    # runc ignores malformed numbers in these files (they count as 0).
    return int(text) if _GO_INT.fullmatch(text) else 0


def _in_range(value: int) -> int:
    if not 0 <= value <= _MAX_ID:
        raise SouteError(f"uids and gids must be in range 0-{_MAX_ID}")
    return value


# ---------------------------------------------------------------------------- environment


def process_env(process: Process, home: str = "/") -> list[str]:
    """The environment the command gets: the last value of each name wins, ``PATH``
    defaults to docker's and ``HOME`` to the user's home (what runc does)."""
    env: dict[str, str] = {}
    for item in process.env:
        name, sep, value = item.partition("=")
        env[name] = value if sep else ""
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", home)
    return [f"{k}={v}" for k, v in env.items()]


# ---------------------------------------------------------------------------- /etc files


def default_files(hostname: str, *, host_network: bool) -> tuple[GeneratedFile, ...]:
    """``/etc/hosts`` (BuildKit's), ``/etc/hostname`` and ``/etc/resolv.conf``.

    With the host's network the host's resolv.conf works as is (a local resolver is
    reachable); in a network namespace local nameservers are dropped, docker's fallback
    resolvers replacing them when none is left.
    """
    hosts = (f"127.0.0.1\tlocalhost {hostname}\n"
             "::1\tlocalhost ip6-localhost ip6-loopback\n").encode()
    try:
        resolv = Path("/etc/resolv.conf").read_bytes()
    except OSError:
        resolv = b""
    if not host_network:
        resolv = _isolated_resolv_conf(resolv)
    return (
        GeneratedFile("/etc/hosts", hosts),
        GeneratedFile("/etc/hostname", f"{hostname}\n".encode()),
        GeneratedFile("/etc/resolv.conf", resolv),
    )


def _isolated_resolv_conf(host: bytes) -> bytes:
    kept: list[bytes] = []
    servers = 0
    for line in host.splitlines():
        words = line.split()
        if words[:1] == [b"nameserver"] and len(words) > 1:
            address = words[1]
            if address.startswith(b"127.") or address == b"::1":
                continue
            servers += 1
        kept.append(line)
    if not servers:
        kept += [b"nameserver " + s.encode() for s in FALLBACK_NAMESERVERS]
    return b"\n".join(kept) + b"\n"


def generated_files(spec: Spec) -> tuple[GeneratedFile, ...]:
    if spec.files is not None:
        return spec.files
    return default_files(spec.hostname, host_network="network" not in spec.namespaces)


def file_mounts(files: tuple[GeneratedFile, ...], files_dir: Path) -> list[Mount]:
    """Bind mounts of ``files`` written in ``files_dir`` (see :func:`write_files`)."""
    return [Mount(f.destination, "bind", str(files_dir / _file_name(i, f)),
                  ("rbind", "ro") if f.readonly else ("rbind",))
            for i, f in enumerate(files)]


def write_files(files: tuple[GeneratedFile, ...], files_dir: Path) -> list[Mount]:
    """Write ``files`` in ``files_dir`` and return the mounts that put them in place."""
    files_dir.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        path = files_dir / _file_name(i, f)
        path.write_bytes(f.content)
        path.chmod(0o644)
    return file_mounts(files, files_dir)


def _file_name(index: int, f: GeneratedFile) -> str:
    return f"{index}-{f.destination.rstrip('/').rsplit('/', 1)[-1] or 'file'}"


# ---------------------------------------------------------------------------- config.json


def capability_mask(names: list[str] | tuple[str, ...]) -> int:
    return sum(1 << CAPABILITIES.index(n) for n in set(names))


def capability_names(mask: int) -> list[str]:
    return [name for number, name in enumerate(CAPABILITIES) if mask & (1 << number)]


def to_oci_config(
    spec: Spec,
    rootfs_path: Path | str,
    *,
    files_dir: Path | None = None,
    user: ExecUser | None = None,
    available_caps: int = (1 << len(CAPABILITIES)) - 1,
) -> dict[str, Any]:
    """``spec`` as a runtime-spec 1.0.2 ``config.json`` for runc or crun.

    The user is numeric there, so it is resolved against ``rootfs_path`` (which must then be
    the mounted root) unless given. Generated files are bind mounts from ``files_dir``;
    without it they are left out. ``capabilities`` None in the process means all of
    ``available_caps`` (a mask: pass the runtime's own bounding set, runc fails on others).
    """
    if user is None:
        user = resolve_user(rootfs_path, spec.process.user, spec.process.group_add)
    p = spec.process
    caps = (list(p.capabilities) if p.capabilities is not None
            else capability_names(available_caps))
    process: dict[str, Any] = {
        "terminal": p.terminal,
        "user": {"uid": user.uid, "gid": user.gid,
                 "additionalGids": list(user.additional_gids)},
        "args": list(p.args),
        "env": process_env(p, user.home),
        "cwd": p.cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": p.no_new_privileges,
    }
    if p.rlimits:
        process["rlimits"] = [{"type": r.type, "hard": r.hard, "soft": r.soft}
                              for r in p.rlimits]
    mounts = list(spec.mounts)
    if files_dir is not None:
        mounts += file_mounts(generated_files(spec), files_dir)
    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(rootfs_path), "readonly": spec.readonly_rootfs},
    }
    if "uts" in spec.namespaces:
        config["hostname"] = spec.hostname
    config["mounts"] = [m.to_oci() for m in mounts]
    linux: dict[str, Any] = {
        "namespaces": [{"type": ns} for ns in sorted(spec.namespaces)],
        "maskedPaths": list(spec.masked_paths),
        "readonlyPaths": list(spec.readonly_paths),
    }
    if spec.sysctl:
        linux["sysctl"] = dict(spec.sysctl)
    if spec.resources is not None:
        linux["resources"] = spec.resources.to_oci()
    config["linux"] = linux
    return config
