"""``soute create``: an image and ``run``'s options become a container record.

Everything is decided and checked here, before anything runs, so that bad input fails with
docker's exit status 125 and leaves nothing behind: the command (ENTRYPOINT and CMD as
docker combines them), the environment, volumes, published ports, the health check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from soute.container.record import (
    Container,
    ContainerError,
    Containers,
    ContainerSpec,
    MountSpec,
    PortSpec,
    new_id,
    valid_name,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from collections.abc import Sequence

    from soute.image.config import ContainerConfig
    from soute.store.store import Store

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NETWORKS = ("private", "host", "none")


@dataclass
class RunOptions:
    """``docker run``'s options, as typed data (the CLI fills it; so can Python users)."""

    args: list[str] = field(default_factory=list)
    name: str | None = None
    detach: bool = False
    interactive: bool = False
    tty: bool = False
    auto_remove: bool = False
    env: list[str] = field(default_factory=list)  # KEY=VALUE or KEY (taken from ours)
    env_files: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)  # -v
    mounts: list[str] = field(default_factory=list)  # --mount
    tmpfs: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    publish_all: bool = False
    expose: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    entrypoint: str | None = None
    network: str = "private"
    hostname: str | None = None
    read_only: bool = False
    init: bool = False
    labels: list[str] = field(default_factory=list)
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    stop_signal: str | None = None
    stop_timeout: int | None = None
    memory: str | None = None
    cpus: str | None = None
    pids_limit: int | None = None
    health_cmd: str | None = None
    health_interval: str | None = None
    health_timeout: str | None = None
    health_start_period: str | None = None
    health_retries: int | None = None
    no_healthcheck: bool = False
    runtime: str = "soute"
    add_hosts: list[str] = field(default_factory=list)  # HOST:IP (or HOST=IP)
    dns: list[str] = field(default_factory=list)
    privileged: bool = False
    shm_size: str | None = None
    cidfile: str | None = None
    ulimits: list[str] = field(default_factory=list)  # NAME=SOFT[:HARD]
    pull: str = "missing"  # missing, always or never
    group_add: list[str] = field(default_factory=list)  # names or gids
    volumes_from: list[str] = field(default_factory=list)  # CONTAINER[:ro|rw]
    restart: str = "no"  # no, always, unless-stopped, on-failure[:N]
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    label_files: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)  # as docker's --security-opt
    sysctls: list[str] = field(default_factory=list)  # KEY=VALUE
    devices: list[str] = field(default_factory=list)  # HOST[:CONTAINER][:PERMISSIONS]
    ipc: str = ""  # private (""), shareable, host or none
    uts: str = ""  # "" (its own) or host


def command_of(config: ContainerConfig, opts: RunOptions) -> tuple[list[str], list[str]]:
    """(entrypoint, cmd) as docker combines them: ``--entrypoint`` replaces the image's and
    drops its CMD; arguments after the image replace CMD."""
    if opts.entrypoint is not None:
        entrypoint = [opts.entrypoint] if opts.entrypoint else []
        return entrypoint, list(opts.args)
    return list(config.entrypoint), list(opts.args) if opts.args else list(config.cmd)


def container_env(config: ContainerConfig, opts: RunOptions) -> list[str]:
    """The container's ``Config.Env`` as docker merges it: ``--env-file`` and ``-e`` first, in
    their order (a later value of a name replacing the earlier one in place), then the
    image's variables they do not set."""
    user: dict[str, str] = {}
    for path in opts.env_files:
        for entry in _read_env_file(path):
            _set_user_env(user, entry)
    for entry in opts.env:
        _set_user_env(user, entry)
    env = dict(user)
    for entry in config.env:
        key, _, value = entry.partition("=")
        if key not in user:
            env.setdefault(key, value)
    return [f"{k}={v}" for k, v in env.items()]


def runtime_env(spec: ContainerSpec) -> list[str]:
    """What the process gets, in docker's order: PATH, HOSTNAME (and TERM with -t) first,
    replaced in place by ``Config.Env`` values of the same name, then the rest of it."""
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": spec.hostname}
    if spec.tty:
        env["TERM"] = "xterm"
    for entry in spec.env:
        key, _, value = entry.partition("=")
        env[key] = value
    return [f"{k}={v}" for k, v in env.items()]


def user_env(entries: list[str]) -> list[str]:
    """``-e`` values as docker takes them: ``KEY=VALUE``, or ``KEY`` with our value of KEY
    (left out when we have none)."""
    env: dict[str, str] = {}
    for entry in entries:
        _set_user_env(env, entry)
    return [f"{k}={v}" for k, v in env.items()]


def _set_user_env(env: dict[str, str], entry: str) -> None:
    key, sep, value = entry.partition("=")
    if not key:
        raise ContainerError(f"invalid environment variable: {entry!r}", "use KEY=VALUE")
    if sep:
        env[key] = value
    elif key in os.environ:  # `-e KEY` passes our value on, or nothing when unset
        env[key] = os.environ[key]


def _read_env_file(path: str, option: str = "--env-file") -> list[str]:
    """The KEY=VALUE (or KEY) lines of an ``--env-file`` or ``--label-file``, as docker reads
    them: blank lines and ``#`` comments skipped, leading blanks dropped."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ContainerError(f"{path}: {exc.strerror}", f"give an existing {option}") from None
    except UnicodeDecodeError:
        raise ContainerError(f"{path}: not UTF-8 text", f"an {option} holds KEY=VALUE lines"
                             ) from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        if any(c.isspace() for c in line.partition("=")[0]):
            raise ContainerError(f"{path}:{number}: variable {line.partition('=')[0]!r} "
                                 "contains whitespaces")
        out.append(line)
    return out


def _labels(items: list[str], files: Sequence[str] = ()) -> dict[str, str]:
    """``--label-file`` lines, then ``-l``: a later value of a key wins, as in docker."""
    out = {}
    # A file's line without "=" is dropped (docker's parseKeyValueFile), not one of -l.
    in_files = [line for f in files for line in _read_env_file(f, "--label-file") if "=" in line]
    for item in [*in_files, *items]:
        key, _, value = item.partition("=")
        out[key] = value
    return out


# --security-opt: soute has no seccomp, AppArmor or SELinux; their options are taken as a
# docker host without them takes them (a seccomp profile excepted: it would be ignored).
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


@dataclass(frozen=True)
class SecurityOptions:
    """What ``--security-opt`` changes here."""

    no_new_privileges: bool | None = None  # None: soute's default (on; docs/differences.md)
    unconfined_paths: bool = False  # systempaths=unconfined: /proc and /sys unmasked


def security_options(items: list[str]) -> SecurityOptions:
    """Check ``--security-opt`` values as docker 20.10's client, then its daemon, do, with
    their messages, and say what they change."""
    nnp: bool | None = None
    unconfined = False
    for opt in items:
        key, sep, value = opt.partition("=")
        if not sep and opt != "no-new-privileges":
            key, sep, value = opt.partition(":")
            if not sep:
                raise ContainerError(f"Invalid --security-opt: {_quoted(opt)}",
                                     "use KEY=VALUE, e.g. no-new-privileges=true")
        if key == "seccomp" and value != "unconfined":
            try:
                with open(value, "rb"):
                    pass
            except OSError as exc:
                raise ContainerError(f"opening seccomp profile ({value}) failed: open {value}: "
                                     f"{(exc.strerror or str(exc)).lower()}") from None
            raise ContainerError("seccomp profiles are not supported on this daemon, you "
                                 "cannot specify a custom seccomp profile",
                                 "soute applies no seccomp filter: leave the option out, "
                                 "or use seccomp=unconfined")
        if opt == "no-new-privileges":
            nnp = True
        elif key == "no-new-privileges" and value in _TRUE + _FALSE:
            nnp = value in _TRUE
        elif key == "systempaths" and value == "unconfined":
            unconfined = True
        elif key not in ("label", "apparmor", "seccomp"):
            raise ContainerError(f"invalid --security-opt 2: {_quoted(opt)}",
                                 "label=..., apparmor=..., seccomp=unconfined, "
                                 "no-new-privileges=true|false or systempaths=unconfined")
    return SecurityOptions(nnp, unconfined)


def _device(text: str) -> dict[str, str]:
    """``--device HOST[:CONTAINER][:PERMISSIONS]`` as docker's client reads it, as
    HostConfig.Devices holds it; the host's path must be a device node or a directory."""
    import stat

    def valid_mode(mode: str) -> bool:
        return 0 < len(mode) <= 3 and all(mode.count(c) == 1 for c in mode) and \
            set(mode) <= set("rwm")

    parts = text.split(":")
    if len(parts) > 3 or not parts[0]:
        raise ContainerError(f"bad format for path: {text}", "--device HOST[:CONTAINER][:rwm]")
    host, inside, mode = parts[0], parts[0], "rwm"
    if len(parts) == 2 and valid_mode(parts[1]):
        mode = parts[1]
    elif len(parts) >= 2:
        inside = parts[1]
    if len(parts) == 3:
        mode = parts[2]
        if not valid_mode(mode):
            raise ContainerError(f"bad mode specified: {mode}", "permissions of r, w and m")
    if not inside.startswith("/"):
        raise ContainerError(f"{inside} is not an absolute path",
                             "--device HOST[:CONTAINER][:rwm]")
    if not {"r", "w"} <= set(mode):
        # A read-only mount does not stop writes to a device node: only a device cgroup
        # could, which soute does not have (docs/differences.md).
        raise ContainerError(f"cannot keep a device to the permissions {mode}: soute gives "
                             "a container read and write access to its --device nodes",
                             "leave the permissions out, or give rw or rwm")
    try:
        st = os.stat(host)
    except OSError as exc:
        raise ContainerError(f"error gathering device information while adding custom device "
                             f"{_quoted(host)}: {(exc.strerror or str(exc)).lower()}") from None
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ContainerError(f"error gathering device information while adding custom device "
                             f"{_quoted(host)}: not a device node")
    return {"PathOnHost": host, "PathInContainer": os.path.normpath(inside),
            "CgroupPermissions": mode}


def _ipc_mode(text: str) -> str:
    """docker's --ipc modes this runtime has: its own namespace (private, shareable: no
    other container can join it here), the host's, or its own without /dev/shm (none)."""
    mode = text or "private"
    if mode.startswith("container:"):
        raise ContainerError("--ipc container:NAME is not supported",
                             "use --ipc private, shareable, host or none")
    if mode not in ("private", "shareable", "host", "none"):
        raise ContainerError(f"Invalid IPC mode: {text}", "private, shareable, host or none")
    return mode


def _quoted(text: str) -> str:
    """As Go's %q prints a string (docker's messages quote so)."""
    import json

    return json.dumps(text, ensure_ascii=False)


# docker's client lets these through --sysctl: the ones of the IPC and network namespaces.
_IPC_SYSCTLS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                          "kernel.shmall", "kernel.shmmax", "kernel.shmmni",
                          "kernel.shm_rmid_forced"})


def _sysctls(items: list[str], network: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not (key in _IPC_SYSCTLS or key.startswith(("net.", "fs.mqueue."))):
            raise ContainerError(f"invalid argument {_quoted(item)} for \"--sysctl\" flag: "
                                 f"sysctl '{item}' is not allowed",
                                 "only the IPC and network namespaces' (kernel.shm*, "
                                 "kernel.msg*, kernel.sem, fs.mqueue.*, net.*) can be set")
        if key.startswith("net.") and network == "host":
            raise ContainerError(f'sysctl "{key}" not allowed in host network namespace',
                                 "leave out --network host, or the sysctl")
        out[key] = value
    return out


def _mounts(store: Store, config: ContainerConfig, opts: RunOptions) -> list[MountSpec]:
    if not (opts.volumes or opts.mounts or opts.tmpfs or config.volumes or opts.volumes_from):
        return []  # without importing the volumes module (about 2 ms of every run)
    from soute.container.volumes import (
        Volumes,
        parse_mount_flag,
        parse_tmpfs_flag,
        parse_volume_flag,
    )

    specs = [parse_volume_flag(v) for v in opts.volumes]
    from_mount_flag = [parse_mount_flag(m) for m in opts.mounts]
    tmpfs = [MountSpec("tmpfs", target, options=options)
             for target, options in map(parse_tmpfs_flag, opts.tmpfs)]
    volumes = Volumes(store.root)
    mounts: list[MountSpec] = []
    for spec, strict in [(s, False) for s in specs] + [(s, True) for s in from_mount_flag]:
        if spec.kind == "bind":
            source = os.path.abspath(spec.source or "")
            if not os.path.exists(source):
                if strict:  # --mount never creates; -v makes the directory, as docker does
                    raise ContainerError(
                        f'invalid mount config for type "bind": bind source path does not '
                        f"exist: {source}", "create it first, or use -v which creates it")
                os.makedirs(source, exist_ok=True)
            mounts.append(MountSpec("bind", spec.target, source, spec.readonly))
        elif spec.kind == "volume":
            volume = volumes.create(spec.source, anonymous=spec.source is None)
            mounts.append(MountSpec("volume", spec.target, volume.name, spec.readonly,
                                    copy_up=not spec.nocopy))
        else:
            mounts.append(MountSpec("tmpfs", spec.target, readonly=spec.readonly,
                                    options=_tmpfs_options(spec.options, spec.readonly)))
    mounts += tmpfs
    taken = {os.path.normpath(m.target) for m in mounts}
    # --volumes-from: what -v, --mount and --tmpfs do not cover, before the image's VOLUMEs.
    for shared in _volumes_from(store, opts.volumes_from):
        if os.path.normpath(shared.target) not in taken:
            mounts.append(shared)
            taken.add(os.path.normpath(shared.target))
    for volume_path in sorted(config.volumes):  # each VOLUME of the image: an anonymous one
        # docker places a relative one (`VOLUME a`, or a broken JSON form) under /.
        target = os.path.normpath(os.path.join("/", volume_path))
        if target not in taken:
            volume = volumes.create(None, anonymous=True)
            mounts.append(MountSpec("volume", target, volume.name, copy_up=True))
    return mounts


def _volumes_from(store: Store, refs: list[str]) -> list[MountSpec]:
    """docker's ``--volumes-from CONTAINER[:ro|:rw]``: the volumes and bind mounts of
    another container (not its tmpfs), read-only with ``ro``, else as they are there."""
    from soute.container.record import Containers

    found: list[MountSpec] = []
    for ref in refs:
        name, _, mode = ref.partition(":")
        modes = set(mode.split(",")) if mode else set()
        if not modes <= {"ro", "rw", "z", "Z"} or {"ro", "rw"} <= modes:
            raise ContainerError(f"invalid mode: {mode}", "use CONTAINER, CONTAINER:ro or "
                                 "CONTAINER:rw")
        source = Containers(store).get(name)
        found += [MountSpec(m.kind, m.target, m.source, m.readonly or "ro" in modes)
                  for m in source.spec.mounts if m.kind in ("volume", "bind")]
    return found


def _tmpfs_options(options: dict[str, str], readonly: bool) -> list[str]:
    """``--mount type=tmpfs``'s ``tmpfs-size`` (bytes) and ``tmpfs-mode`` (octal) as mount
    options, as docker passes them on."""
    out = ["ro"] if readonly else []
    if options.get("tmpfs-size", "0") != "0":  # 0: no limit, as docker leaves it out
        out.append(f"size={options['tmpfs-size']}")
    mode = options.get("tmpfs-mode", "0")
    try:
        unset = int(mode, 8) == 0
    except ValueError:
        unset = False  # refused where the mount is parsed
    if not unset:  # 0: the kernel's 1777, as docker leaves it out
        out.append(f"mode={mode}")
    return out


def _ports(config: ContainerConfig, opts: RunOptions) -> tuple[list[PortSpec], list[str]]:
    exposed = list(config.exposed_ports)
    for item in opts.expose:
        port = item if "/" in item else f"{item}/tcp"
        if port not in exposed:
            exposed.append(port)
    if opts.network != "private":
        return [], exposed  # docker ignores -p with the host's network, and none has none
    if not opts.publish and not opts.publish_all:
        return [], exposed  # without importing the port proxy's module (about 12 ms)
    from soute.container.ports import exposed_ports, parse_publish

    ports = [PortSpec(b.host_ip, b.host_port, b.container_port, b.proto)
             for text in opts.publish for b in parse_publish(text)]
    if opts.publish_all:
        published = {(p.container_port, p.proto) for p in ports}
        for port, proto in exposed_ports(exposed):
            if (port, proto) not in published:
                ports.append(PortSpec("0.0.0.0", 0, port, proto))
    return ports, exposed


def _resources(opts: RunOptions) -> dict[str, int]:
    out: dict[str, int] = {}
    if opts.memory:
        out["memory"] = parse_bytes(opts.memory)
    if opts.cpus:
        try:
            cpus = float(opts.cpus)
        except ValueError:
            cpus = -1
        available = os.cpu_count() or 1
        if not 0.01 <= cpus <= available:  # NaN fails too
            raise ContainerError(f"invalid --cpus {opts.cpus!r}: the range of CPUs is from 0.01 "
                                 f"to {available:.2f}", "give a number of CPUs, e.g. 1.5")
        out["cpu_quota"], out["cpu_period"] = int(cpus * 100_000), 100_000
    if opts.pids_limit is not None and opts.pids_limit > 0:
        out["pids"] = opts.pids_limit
    return out


def _extra_host(text: str) -> str:
    """``--add-host HOST:IP`` (or ``HOST=IP``) as docker checks it: ``HOST:IP``, with
    ``host-gateway`` kept for the monitor to turn into the host's address."""
    import ipaddress

    host, sep, ip = text.partition("=") if "=" in text else text.partition(":")
    ip = ip.strip("[]")
    if not sep or not host:
        raise ContainerError(f"bad format for add-host: {text!r}", "write --add-host HOST:IP")
    if ip != "host-gateway":
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ContainerError(f"invalid IP address in add-host: {ip!r}",
                                 "give an IPv4 or IPv6 address, or host-gateway") from None
    return f"{host}:{ip}"


def _restart_policy(text: str) -> dict[str, object]:
    """``--restart``: no, always, unless-stopped, on-failure[:MAX] (docker's RestartPolicy)."""
    name, sep, count = text.partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise ContainerError(f"invalid restart policy {text!r}",
                             "use no, always, unless-stopped or on-failure[:MAX]")
    if sep and name != "on-failure":
        raise ContainerError(f"maximum retry count cannot be used with restart policy "
                             f"'{name}'")
    try:
        retries = int(count) if sep else 0
    except ValueError:
        raise ContainerError(f"maximum retry count must be an integer: {count!r}") from None
    if retries < 0:
        raise ContainerError(f"invalid restart policy: maximum retry count cannot be "
                             f"negative: {retries}")
    return {"Name": name, "MaximumRetryCount": retries}


_ULIMITS = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
            "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")


def _ulimit(text: str) -> dict[str, object]:
    """``--ulimit NAME=SOFT[:HARD]`` as docker reads it (-1: unlimited) for the runtime."""
    import resource

    name, sep, values = text.partition("=")
    if not sep or name not in _ULIMITS:
        raise ContainerError(f"invalid ulimit argument: {text!r}",
                             "NAME=SOFT[:HARD] with NAME one of " + ", ".join(_ULIMITS))
    soft_text, _, hard_text = values.partition(":")
    try:
        soft, hard = int(soft_text), int(hard_text or soft_text)
    except ValueError:
        raise ContainerError(f"invalid ulimit argument: {text!r}", "give numbers") from None
    soft, hard = (resource.RLIM_INFINITY if v == -1 else v for v in (soft, hard))
    if soft < -1 or hard < -1 or (hard != resource.RLIM_INFINITY and soft > hard) or (
            soft == resource.RLIM_INFINITY and hard != resource.RLIM_INFINITY):
        raise ContainerError(f"ulimit soft limit must be less than or equal to hard limit: "
                             f"{text}")
    return {"type": f"RLIMIT_{name.upper()}", "soft": soft, "hard": hard}


def _dns_server(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ContainerError(f"{text} is not an ip address", "give --dns an IP") from None


def _shm_size(text: str) -> int:
    from soute.container.volumes import parse_size
    from soute.errors import SouteError

    try:
        size = parse_size(text)
    except SouteError as e:
        raise ContainerError(f"invalid --shm-size {text!r}: {e.message}") from None
    if size <= 0:
        raise ContainerError(f"invalid --shm-size {text!r}", "give a size above 0, e.g. 256m")
    return size


def parse_bytes(text: str) -> int:
    """docker's memory sizes: ``512m``, ``1g``, ``1048576``, ``100k`` (powers of 1024)."""
    import re

    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([bkmgt]?)b?", text.strip().lower())
    if match is None:
        raise ContainerError(f"invalid size: {text!r}", "use a number with b, k, m or g")
    value = float(match[1]) * (1 << (10 * "bkmgt".index(match[2] or "b")))
    if value < 6 * (1 << 20):
        raise ContainerError(f"minimum memory limit allowed is 6MB, not {text}")
    return int(value)


def _health(config: ContainerConfig, opts: RunOptions) -> dict[str, object] | None:
    image = config.healthcheck.to_dict() if config.healthcheck is not None else None
    overridden = any(v is not None for v in (
        opts.health_cmd, opts.health_interval, opts.health_timeout, opts.health_start_period,
        opts.health_retries)) or opts.no_healthcheck
    if not image and not overridden:
        return None  # no check: the health module (and its fractions, decimal) stays out
    from soute.container.health import HealthConfig

    health = HealthConfig.from_image(image)
    if overridden:
        health = HealthConfig.with_overrides(
            health, opts.health_cmd, opts.health_interval, opts.health_timeout,
            opts.health_start_period, opts.health_retries, opts.no_healthcheck)
    if health is None or not health.test:
        return None
    from dataclasses import asdict

    return asdict(health)


def create(store: Store, image_name: str, opts: RunOptions) -> Container:
    """Check ``opts`` against the image and record the container (status created)."""
    # The shared lock keeps a garbage collection from freeing the image's files between its
    # lookup and the container's record; once recorded, rmi refuses to remove the image.
    with store.session():
        return _create(store, image_name, opts)


def _create(store: Store, image_name: str, opts: RunOptions) -> Container:
    from soute.image.config import ImageConfig
    from soute.image.timestamp import Timestamp
    from soute.store.names import resolve
    from soute.store.store import ImageNotFound

    if opts.network not in NETWORKS:
        raise ContainerError(f"network {opts.network} not found",
                             "use --network private, host or none")
    if opts.cidfile and os.path.exists(opts.cidfile):
        raise ContainerError(f"container ID file found, make sure the other container isn't "
                             f"running or delete {opts.cidfile}")
    limits = [_ulimit(u) for u in opts.ulimits]  # checked before any pull
    security_options(opts.security_opt)
    sysctls = _sysctls(opts.sysctls, opts.network)
    devices = [_device(d) for d in opts.devices]
    restart = _restart_policy(opts.restart)
    if restart["Name"] != "no" and opts.auto_remove:
        raise ContainerError("conflicting options: --restart and --rm",
                             "a container that restarts is not removed when it ends")
    if opts.pull == "always" and not image_name.startswith("sha256:"):
        import sys

        from soute.registry.pull import pull

        image = pull(store, image_name, out=sys.stderr, err=sys.stderr).image
    else:
        try:
            image = resolve(store, image_name)
        except ImageNotFound:  # pulled when missing, as docker run does (the import is heavy)
            if opts.pull == "never":
                raise
            from soute.registry.pull import ensure_image

            image = ensure_image(store, image_name)
    config = ImageConfig.from_json(store.blobs.read(image.id)).config
    entrypoint, cmd = command_of(config, opts)
    command = entrypoint + cmd
    if not command:
        raise ContainerError("no command specified",
                             "give a command after the image, or --entrypoint")
    containers = Containers(store)
    container_id = new_id()
    ipc = _ipc_mode(opts.ipc)
    if opts.uts not in ("", "host"):
        raise ContainerError("--uts: invalid UTS mode", "--uts host, or leave it out")
    if opts.uts and opts.hostname:
        raise ContainerError("conflicting options: hostname and the UTS mode",
                             "--uts host keeps the host's name: leave out -h")
    if ipc == "host":
        shared = sorted(k for k in sysctls if not k.startswith("net."))
        if shared:
            raise ContainerError(f'sysctl "{shared[0]}" is not allowed in the hosts ipc '
                                 "namespace", "leave out --ipc host, or the sysctl")
    if opts.network == "host" or opts.uts == "host":
        hostname = opts.hostname or os.uname().nodename
    else:
        hostname = opts.hostname or container_id[:12]
    name = opts.name if opts.name else containers.unique_name()
    if not valid_name(name):
        raise ContainerError(f'Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] '
                             "are allowed")
    ports, exposed = _ports(config, opts)
    health = _health(config, opts)
    resources = _resources(opts)
    signal_name = opts.stop_signal or config.stop_signal or "SIGTERM"
    parse_signal(signal_name)
    mounts = _mounts(store, config, opts)
    spec = ContainerSpec(
        id=container_id,
        name=name,
        created=Timestamp.now().format(),
        image=image.id,
        image_name=image_name,
        path=command[0],
        args=command[1:],
        env=container_env(config, opts),
        workdir=opts.workdir or config.working_dir or "/",
        user=opts.user if opts.user is not None else config.user,
        hostname=hostname,
        tty=opts.tty,
        open_stdin=opts.interactive,
        labels={**config.labels, **_labels(opts.labels, opts.label_files)},
        entrypoint=entrypoint or None,
        cmd=cmd or None,
        stop_signal=signal_name,
        stop_timeout=opts.stop_timeout,
        network=opts.network,
        ports=ports,
        exposed=exposed,
        mounts=mounts,
        health=health,
        auto_remove=opts.auto_remove,
        init=opts.init,
        read_only=opts.read_only,
        cap_add=[_cap(c) for c in opts.cap_add],
        cap_drop=[_cap(c) for c in opts.cap_drop],
        resources=resources,
        runtime=opts.runtime,
        extra_hosts=[_extra_host(h) for h in opts.add_hosts],
        dns=[_dns_server(d) for d in opts.dns],
        privileged=opts.privileged,
        group_add=list(opts.group_add),
        volumes_from=list(opts.volumes_from),
        shm_size=_shm_size(opts.shm_size) if opts.shm_size else None,
        ulimits=limits,
        restart=restart,
        dns_search=list(opts.dns_search),
        dns_options=list(opts.dns_options),
        security_opt=list(opts.security_opt),
        sysctls=sysctls,
        devices=devices,
        ipc=ipc,
        uts=opts.uts,
    )
    if spec.runtime != "soute" and (spec.ports or spec.resources or spec.devices):
        raise ContainerError("-p/-P, --memory/--cpus/--pids-limit and --device need soute's "
                             "own runtime", "leave out --runtime")
    if not spec.workdir.startswith("/"):
        raise ContainerError(f"the working directory '{spec.workdir}' is invalid",
                             "it needs to be an absolute path")
    try:
        container = containers.new(spec)
    except BaseException:
        containers.forget_id(spec.id)  # a ^C may come once the record is in, before the return
        raise
    try:
        from soute.runtime.rootfs import INIT_LAYER, make_init_layer

        make_init_layer(store.snapshots(image.diff_ids), container.dir / INIT_LAYER)
    except BaseException as exc:
        containers.forget(container)
        if isinstance(exc, OSError):
            raise ContainerError(f"cannot create the container's init layer: {exc}") from None
        raise
    if opts.cidfile:
        try:  # O_EXCL: another run started meanwhile with the same file loses, as in docker
            fd = os.open(opts.cidfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(container.id)
        except OSError as exc:
            containers.forget(container)
            raise ContainerError(f"failed to write the container ID file: {exc.strerror}: "
                                 f"{opts.cidfile}") from None
    return container


def _cap(name: str) -> str:
    from soute.runtime.spec import CAPABILITIES

    upper = name.upper()
    if upper == "ALL":
        return upper
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in CAPABILITIES:
        raise ContainerError(f"unknown capability: {name!r}", "see capabilities(7)")
    return full


def parse_signal(text: str) -> int:
    """``SIGTERM``, ``TERM``, ``15`` or ``SIGRTMIN+3`` as a number."""
    import signal

    upper = text.upper()
    if upper.isdigit():
        number = int(upper)
        if 0 < number < signal.NSIG:
            return number
    else:
        name = upper if upper.startswith("SIG") else "SIG" + upper
        number = 0
        if name.startswith("SIGRTMIN+") and name[9:].isdigit():
            number = int(signal.SIGRTMIN) + int(name[9:])
        elif name.startswith("SIGRTMAX-") and name[9:].isdigit():
            number = int(signal.SIGRTMAX) - int(name[9:])
        if int(signal.SIGRTMIN) <= number <= int(signal.SIGRTMAX):
            return number
        member = getattr(signal.Signals, name, None)
        if member is not None:
            return int(member)
    raise ContainerError(f"invalid signal: {text}", "use a name like SIGTERM or a number")
