"""The container API that the CLI (and Python users) call: run, exec, ps and inspect."""

from __future__ import annotations

import contextlib
import os

from soute.container.create import RunOptions, create
from soute.container.record import Container, ContainerError, ContainerState
from soute.errors import SouteError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from collections.abc import Callable, Sequence
    from typing import Any

    from soute.runtime import Process
    from soute.store.store import Store


def run(store: Store, image: str, opts: RunOptions, *, attach: bool = False
        ) -> Container | int:
    """``soute run``: create, then start. Detached (``opts.detach``): a monitor runs it and
    the container is returned once its command runs. Attached: we are the monitor; returns
    the exit code once it ends (and removes it with ``--rm``)."""
    from soute.container.control import remove
    from soute.container.monitor import Monitor, spawn

    container = create(store, image, opts)
    if opts.detach:
        try:
            spawn(store, container)
        except ContainerError:
            if opts.auto_remove:
                remove(store, container, volumes=True)
            raise
        return container
    with _AfterTheCommand() as guard:
        try:
            code = Monitor(store, container, attach=True).run(ready=guard.ready)
        finally:
            if opts.auto_remove:
                remove(store, container, volumes=True)
    _restart_in_background(store, container, code)
    return code


def _restart_in_background(store: Store, container: Container, code: int) -> None:
    """As with dockerd: an attached run returns the container's status, and its restart
    policy goes on in the background (a detached monitor, from its first restart)."""
    from soute.container.monitor import StartError, spawn

    if not container.should_restart(code, 0):
        return
    state = container.raw_state()
    state.restart_count += 1  # the detached monitor's first run is its first restart
    container.save_state(state)
    with contextlib.suppress(StartError):
        spawn(store, container)


def start_attached(store: Store, container: Container, *, stdin: bool) -> int:
    """``soute start -a`` (``-i``: with our stdin): we are its monitor, as for an attached
    ``run``; its exit code once it ends (removed then if it was made with ``--rm``). A
    container already running is followed until it ends, as docker attaches to it."""
    from soute.container.control import remove, wait
    from soute.container.monitor import Monitor

    if container.state().running:
        from soute.container.logs import follow_logs

        out = {"stdout": os.fdopen(1, "wb", closefd=False),
               "stderr": os.fdopen(2, "wb", closefd=False)}
        for stream, data in follow_logs(container.log_path, tail=0,
                                        is_running=lambda: container.state().running):
            out[stream].write(data)
            out[stream].flush()
        return wait(container)
    container.started_by_user()
    with _AfterTheCommand() as guard:
        try:
            code = Monitor(store, container, attach=True, attach_stdin=stdin).run(
                ready=guard.ready)
        finally:
            if container.spec.auto_remove:
                remove(store, container, volumes=True)
    if not container.spec.auto_remove:
        _restart_in_background(store, container, code)
    return code


class _AfterTheCommand:
    """SIGINT, SIGTERM and SIGHUP around an attached run. While the command runs, the
    runtime passes them on to it; before it runs, they cancel the run as they would have.
    One that comes once the command has run arrives after the container ended, while its
    state is recorded and ``--rm`` removes it: it is dropped, and the run ends with the
    container's status, as docker's CLI does. Cut short, that clean-up left a container
    that looked running, and that ``--rm`` then refused to remove."""

    _SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self) -> None:
        self.ran = False
        self._saved: dict[int, Any] = {}

    def ready(self, error: SouteError | None) -> None:
        self.ran = self.ran or error is None

    def __enter__(self) -> _AfterTheCommand:
        import signal

        for name in self._SIGNALS:
            signum = getattr(signal, name)
            try:
                self._saved[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals are the caller's business
                break
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for signum, handler in self._saved.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.ran:
            return
        import signal

        previous = self._saved[signum]
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # the default: die of it, as before
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def exec_command(container: Container, argv: list[str], *, interactive: bool = False,
                 tty: bool = False, user: str | None = None, workdir: str | None = None,
                 env: list[str] | None = None, detach: bool = False) -> int:
    """``soute exec``: ``argv`` in the running container, attached to our streams
    (``detach``: returns 0 once it runs)."""
    from soute.container.attach import fd_writer, feed, open_pty, pump, terminal_session
    from soute.container.monitor import StartError, cgroup_procs, exec_process
    from soute.runtime import exec_in

    state = container.state()
    if not state.running:
        raise ContainerError(f"container {container.short_id} is not running",
                             f"start it with 'soute start {container.name}'")
    if state.paused:
        raise ContainerError(f"Container {container.name} is paused, unpause the container "
                             "before exec")
    process = exec_process(container, argv, user=user, workdir=workdir, env=env, tty=tty)
    join = cgroup_procs(container, state.pid)
    try:
        if detach:
            return _exec_detached(state.pid, process, join)
        if not tty:
            return _exec_through_pipes(state.pid, process, join, interactive)
        master, slave = open_pty()
        output = pump(master, [fd_writer(1)])
        if interactive:
            feed(0, os.dup(master))
        with terminal_session(master):
            try:
                code = exec_in(state.pid, process, stdin=slave, stdout=slave, stderr=slave,
                               cgroup_procs=join)
            finally:
                os.close(slave)
                output.join(timeout=5)
        return code
    except StartError:
        raise
    except SouteError as exc:
        # docker exec's status for any command that could not start is 126 (run's: 127 for
        # one not found).
        raise StartError(str(exc), 126) from None


def _exec_through_pipes(pid: int, process: Process, join: Sequence[str | os.PathLike[str]],
                        interactive: bool) -> int:
    """The command's stdio are pipes that threads of ours copy, as docker's daemon does:
    our own files (a terminal, a file given as stdin) never become the container's, which
    could reopen them through /proc/self/fd and keep them."""
    from soute.container.attach import fd_writer, feed, pump
    from soute.runtime import exec_in

    ends: list[int] = []  # the command's ends, closed here once it has them
    stdin = None
    if interactive:
        stdin, ours = os.pipe()
        ends.append(stdin)
        feed(0, ours)
    pumps = []
    outputs = []
    for target in (1, 2):
        read_end, write_end = os.pipe()
        ends.append(write_end)
        outputs.append(write_end)
        pumps.append(pump(read_end, [fd_writer(target)]))
    try:
        return exec_in(pid, process, stdin=stdin, stdout=outputs[0], stderr=outputs[1],
                       cgroup_procs=join)
    finally:
        for fd in ends:
            os.close(fd)
        for thread in pumps:  # what the command wrote reaches our streams first
            thread.join(timeout=5)


_STARTED = b"\0"  # what the detached exec's process says once its command runs


def _exec_detached(pid: int, process: Process, join: Sequence[str | os.PathLike[str]]
                   ) -> int:
    """``exec -d``: a process of its own session runs the command; we wait only until it
    started, so a start error is ours to report (docker: one line, status 1)."""
    from soute.container.monitor import StartError
    from soute.runtime import exec_in

    read_end, write_end = os.pipe()  # close-on-exec: the command never holds it
    child = os.fork()
    if child == 0:  # pragma: no cover - the detached exec's own process
        code = 1
        try:
            os.close(read_end)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # our caller's pipes would wait for the command's end
                os.dup2(null, fd)

            def started(_pid: int) -> None:
                nonlocal write_end
                with contextlib.suppress(OSError):  # a caller gone meanwhile: run it anyway
                    os.write(write_end, _STARTED)
                os.close(write_end)  # EOF: the caller returns while we wait on it
                write_end = -1

            code = exec_in(pid, process, stdin=null, stdout=null, stderr=null,
                           cgroup_procs=join, on_start=started)
        except BaseException as exc:  # everything must end in _exit
            if write_end >= 0:
                with contextlib.suppress(BaseException):
                    os.write(write_end, str(exc).encode() or b"exec failed")
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        answer = f.read()
    if answer == _STARTED:
        return 0
    os.waitpid(child, 0)  # it ends once it has said why
    raise StartError(answer.decode(errors="replace") or "exec failed: its process died", 1)


# ---------------------------------------------------------------------------- ps


def status_text(state: ContainerState, now: Any = None) -> str:
    """docker ps's STATUS: ``Up 3 minutes (healthy)``, ``Exited (0) 2 seconds ago``,
    ``Created``."""
    from soute.container.health import HealthState, ps_status
    from soute.image.inspect import human_duration
    from soute.image.timestamp import Timestamp

    now = now or Timestamp.now()
    if state.running:
        started = Timestamp.parse(state.started_at)
        up = human_duration((now.unix_nanos - started.unix_nanos) / 1e9)
        if state.paused:
            return f"Up {up} (Paused)"
        health = HealthState.from_json(state.health) if state.health else None
        return f"Up {up}{ps_status(health)}"
    if state.status in ("exited", "restarting"):
        finished = Timestamp.parse(state.finished_at)
        ago = human_duration((now.unix_nanos - finished.unix_nanos) / 1e9)
        return f"{state.status.capitalize()} ({state.exit_code}) {ago} ago"
    return state.status.capitalize()


def ps_records(containers: list[Container], *, show_all: bool, no_trunc: bool = False,
               filters: list[str] | None = None,
               size_of: Callable[[Container], str] | None = None,
               limit: int = -1) -> list[dict[str, str]]:
    """``soute ps``'s rows, newest first, as docker's ``--format`` fields name them.
    ``filters``: docker's ``-f KEY=VALUE`` (the same key twice: either; different keys: all);
    ``size_of``: the SIZE column (``ps -s``), else it stays empty; ``limit``: at most so
    many rows (``-n``), when not negative."""
    from soute.container.ports import PortBinding, format_ports
    from soute.image.inspect import ellipsis, human_duration_ago
    from soute.image.timestamp import Timestamp

    wanted = _parse_filters(filters or [])
    now = Timestamp.now()
    records = []
    for c in containers:
        if len(records) == limit:
            break
        state = c.state()
        # As docker: only a status filter also lists the containers that are not running
        # (one waiting to restart counts as running).
        if (not state.running and state.status != "restarting" and not show_all
                and "status" not in wanted):
            continue
        if not all(any(_matches(c, state, key, value) for value in values)
                   for key, values in wanted.items()):
            continue
        # docker's list: the arguments that hold a space are put in single quotes.
        command = " ".join([c.spec.path, *(f"'{a}'" if " " in a else a for a in c.spec.args)])
        created = Timestamp.parse(c.spec.created)
        records.append({
            "ID": c.id if no_trunc else c.short_id,
            "Image": c.spec.image_name,
            "Command": f'"{command if no_trunc else ellipsis(command, 20)}"',
            "CreatedAt": created.to_datetime().strftime("%Y-%m-%d %H:%M:%S +0000 UTC"),
            "RunningFor": human_duration_ago(created, now),
            "Ports": format_ports([PortBinding(p.host_ip, p.host_port, p.container_port,
                                               p.proto) for p in state.ports])
            if state.running else "",
            "State": state.shown,
            "Status": status_text(state, now),
            "Names": c.name,
            "Labels": ",".join(f"{k}={v}" for k, v in sorted(c.spec.labels.items())),
            "Size": size_of(c) if size_of is not None else "",
        })
    return records


_FILTERS = ("id", "name", "status", "ancestor", "label", "exited", "health")


def _parse_filters(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in _FILTERS:
            raise SouteError(f"invalid filter {item!r}",
                                 f"use KEY=VALUE with KEY one of {', '.join(_FILTERS)}")
        if key == "status" and value not in _STATES:
            raise SouteError(f"invalid filter {item!r}", "use status=" + "|".join(_STATES))
        if key == "name":
            import re  # only for ps filters: `run` goes without it

            try:
                re.compile(value)
            except re.error as e:
                raise SouteError(f"invalid filter {item!r}: {e}",
                                 "name= is a regular expression") from None
        out.setdefault(key, []).append(value)
    return out


_STATES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def _matches(c: Container, state: ContainerState, key: str, value: str) -> bool:
    if key == "id":
        return c.id.startswith(value)
    if key == "name":  # a regular expression, on the name with or without docker's '/'
        import re

        return any(re.search(value, n) for n in (c.name, "/" + c.name))
    if key == "status":
        return state.shown == value
    if key == "exited":
        return state.status == "exited" and str(state.exit_code) == value
    if key == "ancestor":
        return value in (c.spec.image_name, c.spec.image, c.spec.image[7:19])
    if key == "health":
        health = (state.health or {}).get("Status", "none") if state.running else "none"
        return health == value
    name, sep, wanted = value.partition("=")  # label
    return name in c.spec.labels and (not sep or c.spec.labels[name] == wanted)


# ---------------------------------------------------------------------------- inspect


def inspect_dict(c: Container) -> dict[str, Any]:
    """docker's container inspect shape, for the fields soute has."""
    state = c.state()
    spec = c.spec
    ports: dict[str, Any] = {}
    for port in spec.exposed:
        ports[port if "/" in port else f"{port}/tcp"] = None
    for p in state.ports if state.running else []:
        key = f"{p.container_port}/{p.proto}"
        ports.setdefault(key, None)
        ports[key] = (ports[key] or []) + [{"HostIp": p.host_ip, "HostPort": str(p.host_port)}]
    health = state.health
    mounts = []
    for m in spec.mounts:
        entry: dict[str, Any] = {"Type": m.kind, "Source": m.source, "Destination": m.target,
                                 "RW": not m.readonly}
        if m.kind == "volume":
            from soute.container.volumes import Volumes

            entry["Name"] = m.source
            with contextlib.suppress(ContainerError, Exception):
                entry["Source"] = str(Volumes(c.dir.parent.parent).get(m.source).mountpoint)
        mounts.append(entry)
    return {
        "Id": spec.id,
        "Created": spec.created,
        "Path": spec.path,
        "Args": spec.args,
        "State": {
            "Status": state.shown,
            "Running": state.running,
            "Paused": state.paused,
            "Restarting": state.status == "restarting",
            "OOMKilled": state.oom_killed,
            "Dead": False,
            "Pid": state.pid if state.running else 0,
            "ExitCode": state.exit_code,
            "Error": state.error,
            "StartedAt": state.started_at,
            "FinishedAt": state.finished_at,
            **({"Health": health} if health else {}),
        },
        "Image": spec.image,
        "LogPath": str(c.log_path),
        "Name": "/" + spec.name,
        "RestartCount": state.restart_count,
        "Driver": "overlay",
        "HostConfig": {
            "AutoRemove": spec.auto_remove,
            "NetworkMode": spec.network,
            "PortBindings": {f"{p.container_port}/{p.proto}": [
                {"HostIp": p.host_ip if p.host_ip != "0.0.0.0" else "",
                 "HostPort": str(p.host_port) if p.host_port else ""}] for p in spec.ports},
            "PublishAllPorts": False,
            "ReadonlyRootfs": spec.read_only,
            "Init": spec.init,
            "CapAdd": spec.cap_add or None,
            "CapDrop": spec.cap_drop or None,
            "Dns": spec.dns,
            "DnsOptions": spec.dns_options,
            "DnsSearch": spec.dns_search,
            "ExtraHosts": spec.extra_hosts or None,
            "GroupAdd": spec.group_add or None,
            "VolumesFrom": spec.volumes_from or None,
            "Privileged": spec.privileged,
            "SecurityOpt": spec.security_opt or None,
            "Devices": spec.devices,
            "IpcMode": spec.ipc,
            "UTSMode": spec.uts,
            **({"Sysctls": dict(sorted(spec.sysctls.items()))} if spec.sysctls else {}),
            "RestartPolicy": spec.restart,
            "ShmSize": spec.shm_size or 64 << 20,
            "Runtime": spec.runtime,
        },
        "Mounts": mounts,
        "Config": {
            "Hostname": spec.hostname,
            "User": spec.user,
            "Tty": spec.tty,
            "OpenStdin": spec.open_stdin,
            "ExposedPorts": {p: {} for p in spec.exposed} or None,
            "Env": spec.env,
            "Cmd": spec.cmd,
            "Image": spec.image_name,
            "WorkingDir": spec.workdir,
            "Entrypoint": spec.entrypoint,
            "Labels": dict(sorted(spec.labels.items())),  # a Go map: sorted keys
            "StopSignal": spec.stop_signal,
            **({"StopTimeout": spec.stop_timeout} if spec.stop_timeout is not None else {}),
        },
        # No bridge (docs/differences.md): docker's fields for an address, all empty.
        "NetworkSettings": {
            "Bridge": "", "SandboxID": "", "HairpinMode": False, "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0, "Ports": ports, "SandboxKey": "",
            "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None, "EndpointID": "",
            "Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "",
        },
    }
