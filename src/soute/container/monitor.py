"""The monitor: the one process that runs a container and writes down what happens to it.

``soute run`` (foreground) is the monitor itself, its streams attached to the user's.
``soute run -d`` and ``soute start`` start a detached monitor (``python -m
soute.container.monitor ROOT ID FD``, in a session of its own) and wait on FD for one line:
the container runs, or why it could not start. The monitor then lives as long as the
container, and:

- holds the container's lock, so a second ``start`` fails and ``rm`` waits for the end;
- sends the container's output to ``log.json`` (docker's json-file format);
- brings up its network (loopback, slirp4netns for the way out) and forwards the published
  ports from the host, before the command starts;
- runs the health check;
- records the state: running with pids and ports, then exited with the code.

The container dies with its monitor (its init has SIGKILL as parent-death signal): a killed
monitor can never leave a container nobody knows about. The next reader of the state sees
the monitor gone and records exit code 137.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from pathlib import Path

from soute.container.record import (
    Container,
    ContainerError,
    Containers,
    ContainerSpec,
    ContainerState,
    PortSpec,
    process_start_time,
)
from soute.errors import SouteError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from typing import Any

    from soute.runtime import Spec
    from soute.store.store import Store

Ready = Callable[[SouteError | None], None]
INIT_PATH = "/sbin/docker-init"  # where docker puts its init too: scripts look there
_TINI = ("/usr/bin/tini-static", "/usr/bin/tini")


def _device_nodes(host: str, inside: str) -> list[tuple[str, str]]:
    """``--device``'s (host path, container path) pairs: the node, or each node under the
    directory, as docker maps them."""
    import stat

    if not os.path.isdir(host):
        return [(host, inside)]
    found = []
    for top, dirs, files in os.walk(host):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            with contextlib.suppress(OSError):
                mode = os.lstat(path).st_mode
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    found.append((path, os.path.join(inside, os.path.relpath(path, host))))
    return found


# What docker (20.10 on) sets in a container's own network namespace, unless --sysctl does:
# a process that is not root may bind ports below 1024 and send pings.
_NETNS_SYSCTLS = {"net.ipv4.ip_unprivileged_port_start": "0",
                  "net.ipv4.ping_group_range": "0 2147483647"}


def exit_code_of(error: SouteError) -> int:
    """docker run's status for a command that could not start: 127 not found, 126 not
    executable, 125 anything else."""
    text = str(error)
    if "executable file not found" in text or "no such file or directory" in text:
        return 127
    if "permission denied" in text:
        return 126
    return getattr(error, "exit_code", 125) if isinstance(error, ContainerError) else 125


class StartError(ContainerError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


class Monitor:
    def __init__(self, store: Store, container: Container, *, attach: bool = False,
                 attach_stdin: bool = True) -> None:
        self.store = store
        self.container = container
        self.attach = attach
        # `start -a` without -i: our output streams only, stdin stays the container's own.
        self.attach_stdin = attach and attach_stdin
        self.restarting = False  # a run of its restart policy (keep_restarting)
        self._state_lock = threading.Lock()
        self._log_lock = threading.Lock()
        self.state = ContainerState()
        self._master: int | None = None

    # ------------------------------------------------------------------ state

    def _update(self, **changes: Any) -> None:
        with self._state_lock:
            self.state = replace(self.state, **changes)
            self.container.save_state(self.state)

    # ------------------------------------------------------------------ run

    def run(self, ready: Ready | None = None) -> int:
        """Run the container to its end; returns its exit code. ``ready`` hears once: None
        when the command runs, or the error that stopped it (also raised)."""
        told = False

        def tell(error: SouteError | None) -> None:
            nonlocal told
            if not told and ready is not None:
                told = True
                ready(error)

        with self.container.lock(blocking=False) as locked:
            if not locked:
                error: SouteError = ContainerError(
                    f"container {self.container.short_id} is already running")
                tell(error)
                raise error
            if self.restarting and self.container.stop_requested():
                # A stop came between the restart policy's decision and this run.
                self._update(status="exited")
                return self.state.exit_code
            try:
                return self._run_locked(tell)
            except SouteError as exc:
                tell(exc)
                raise
            except BaseException as exc:
                tell(ContainerError(f"the monitor failed: {type(exc).__name__}: {exc}"))
                raise

    def _run_locked(self, tell: Ready) -> int:
        from soute.container.attach import terminal_session
        from soute.container.logs import LogWriter
        from soute.image.timestamp import Timestamp
        from soute.runtime import Layers, run
        from soute.runtime.rootfs import INIT_LAYER

        container, spec = self.container, self.container.spec
        previous = container.state()
        if previous.running:
            raise ContainerError(f"container {container.short_id} is already running")
        self.state = replace(previous, status="created", error="", pid=0, pid_start=0,
                             oom_killed=False, health=None, monitor_pid=os.getpid(),
                             monitor_start=process_start_time(os.getpid()) or 0)
        lowers = self.store.snapshots(self.store.image(spec.image).diff_ids)
        self._fix_upper_mode(lowers)
        init = container.dir / INIT_LAYER  # /etc/mtab and the like (rootfs.make_init_layer)
        if init.is_dir():  # (containers made before it existed have none)
            lowers = [*lowers, init]
        layers = Layers(lowers, container.upper, container.work)

        proxy = None
        if spec.ports:  # the proxy's module (sockets, threads, futures) only when it is used
            from soute.container.ports import PortBinding, PortProxy

            proxy = PortProxy([PortBinding(p.host_ip, p.host_port, p.container_port, p.proto)
                               for p in spec.ports])
        slirp = None
        cgroup: Any = None
        health_stop = threading.Event()
        log = LogWriter(container.log_path)
        pumps: list[threading.Thread] = []
        close_after_start: list[int] = []
        stdin_keep: list[int] = []
        try:
            try:
                bound = proxy.bind() if proxy is not None else []
            except SouteError as exc:
                raise ContainerError(str(exc)) from None
            ports = [PortSpec(b.host_ip, b.host_port, b.container_port, b.proto) for b in bound]
            slirp = self._slirp()
            run_spec = self._spec(slirp is not None)
            stdio = self._stdio(log, pumps, close_after_start, stdin_keep)

            def created(pid: int) -> Generator[None, None, None]:
                # In steps (see runtime.run): the container waits for the first...
                nonlocal cgroup
                if spec.resources:
                    cgroup = self._cgroup(pid)
                if slirp is not None:
                    slirp.attach(pid)
                if proxy is not None:
                    proxy.start(f"/proc/{pid}/ns/net")
                yield
                # ...sets up its root during the second (slirp4netns starts meanwhile)...
                if slirp is not None:
                    slirp.spawn()
                yield
                # ...and runs its command once tap0 is up.
                if slirp is not None:
                    slirp.wait_ready()

            def started(pid: int) -> None:
                for fd in close_after_start:  # the container has its copies now
                    with contextlib.suppress(OSError):
                        os.close(fd)
                close_after_start.clear()
                self._update(status="running", pid=pid,
                             pid_start=process_start_time(pid) or 0,
                             started_at=Timestamp.now().format(), exit_code=0,
                             finished_at="0001-01-01T00:00:00Z", ports=ports)
                self._start_health(pid, health_stop)
                tell(None)

            session = (terminal_session(self._master) if self._master is not None
                       else contextlib.nullcontext())
            hook = created if slirp is not None or spec.ports or spec.resources else None
            try:
                with session:
                    code = run(run_spec, layers,
                               stdin=stdio[0], stdout=stdio[1], stderr=stdio[2],
                               runtime=spec.runtime, state_dir=container.dir,
                               on_created=hook,
                               on_start=started)
            except SouteError as exc:
                code = exit_code_of(exc)
                message = str(exc)
                self._update(status="created" if code in (126, 127) else "exited",
                             exit_code=code, error=message, pid=0,
                             finished_at=Timestamp.now().format())
                raise StartError(message, code) from None
            self._update(status="exited", exit_code=code, pid=0, pid_start=0,
                         oom_killed=cgroup is not None and cgroup.oom_killed(),
                         finished_at=Timestamp.now().format())
            return code
        finally:
            health_stop.set()
            if cgroup is not None:
                with contextlib.suppress(SouteError):
                    cgroup.remove()
            if container.paused_marker.exists() or (container.dir / "pause-cgroup").exists():
                container.remove_cgroup()  # it ended paused, or was paused once
            for fd in close_after_start + stdin_keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
            for thread in pumps:
                thread.join(timeout=5)
            with self._log_lock:
                log.close()
            if proxy is not None:
                proxy.close()
            if slirp is not None:
                slirp.stop(wait=False)  # it goes on its own: no need to wait ~30 ms

    def _fix_upper_mode(self, lowers: list[Path]) -> None:
        # overlayfs shows the upper dir's own mode as the root's: give it the image's.
        upper = self.container.upper
        if lowers and not any(os.scandir(upper)):
            top = os.stat(lowers[-1])
            os.chmod(upper, top.st_mode & 0o7777)
            os.chown(upper, top.st_uid, top.st_gid)

    def _cgroup(self, pid: int) -> Any:
        """The container's cgroup with its limits, the init moved in before it execs."""
        from soute.runtime.cgroups import Cgroup, Limits

        r = self.container.spec.resources
        memory = r.get("memory")
        # docker's default: as much swap as memory (a total of twice the memory).
        limits = Limits(memory=memory, memory_swap=2 * memory if memory else None,
                        cpu_quota=r.get("cpu_quota"), cpu_period=r.get("cpu_period"),
                        pids=r.get("pids"))
        cgroup = Cgroup.create(self.container.id, limits)
        try:
            cgroup.add(pid)
        except BaseException:
            cgroup.remove()
            raise
        return cgroup

    def _slirp(self) -> Any:
        if self.container.spec.network != "private" or self.container.spec.runtime != "soute":
            return None
        from soute.container.network import Slirp, available

        return Slirp() if available() else None

    # ------------------------------------------------------------------ the runtime spec

    def _spec(self, slirp: bool) -> Spec:
        from soute.container.create import runtime_env, security_options
        from soute.container.network import resolv_conf_for_slirp, resolv_conf_with
        from soute.runtime import (
            BUILD_NAMESPACES,
            DEVICE,
            GeneratedFile,
            Mount,
            Process,
            Rlimit,
            Spec,
            default_files,
            default_mounts,
        )

        spec = self.container.spec
        args = spec.command
        mounts = default_mounts()
        if spec.ipc == "host":  # the host's /dev/shm, as the host's IPC namespace
            mounts = [Mount("/dev/shm", "bind", "/dev/shm", ("rbind",))
                      if m.destination == "/dev/shm" else m for m in mounts]
        elif spec.ipc == "none":
            mounts = [m for m in mounts if m.destination != "/dev/shm"]
        elif spec.shm_size:  # --shm-size, in bytes as docker passes it
            mounts = [Mount(m.destination, m.type, m.source,
                            (*(o for o in m.options if not o.startswith("size=")),
                             f"size={spec.shm_size}"))
                      if m.destination == "/dev/shm" else m for m in mounts]
        if spec.init:
            tini = next((p for p in _TINI if os.path.exists(p)), None)
            if tini is None:
                raise ContainerError("--init needs tini", "apt-get install tini")
            mounts.append(Mount(INIT_PATH, "bind", tini, ("rbind", "ro")))
            args = [INIT_PATH, "--", *args]
        volumes = None
        for m in spec.mounts:
            ro = ("ro",) if m.readonly else ()
            if m.kind == "bind":
                mounts.append(Mount(m.target, "bind", m.source, ("rbind", *ro)))
            elif m.kind == "volume":
                if volumes is None:
                    from soute.container.volumes import Volumes

                    volumes = Volumes(self.store.root)
                source = str(volumes.get(m.source).mountpoint)
                copy = ("copy-up",) if m.copy_up else ()
                mounts.append(Mount(m.target, "bind", source, ("rbind", *ro, *copy)))
            else:
                mounts.append(Mount(m.target, "tmpfs", "tmpfs",
                                    ("nosuid", "nodev", "noexec", *m.options)))
        for device in spec.devices:
            # Its own bind mount, not nodev: the one node that opens besides /dev's usual.
            mounts += [Mount(inside, "bind", host, ("bind", DEVICE))
                       for host, inside in _device_nodes(device["PathOnHost"],
                                                         device["PathInContainer"])]
        host_network = spec.network == "host"
        files = []
        for f in default_files(spec.hostname, host_network=host_network):
            if f.destination == "/etc/resolv.conf":
                content = resolv_conf_for_slirp() if slirp else f.content
                if spec.dns or spec.dns_search or spec.dns_options:
                    content = resolv_conf_with(content, servers=spec.dns,
                                               search=spec.dns_search, options=spec.dns_options)
                f = GeneratedFile(f.destination, content, readonly=False)
            elif f.destination == "/etc/hosts":
                f = GeneratedFile(f.destination, hosts_file(spec.hostname, spec.network,
                                                            slirp, spec.extra_hosts),
                                  readonly=False)
            else:
                f = GeneratedFile(f.destination, f.content, readonly=False)
            files.append(f)
        namespaces = set(BUILD_NAMESPACES)
        if not host_network:
            namespaces.add("network")
        if spec.ipc == "host":
            namespaces.discard("ipc")
        if spec.uts == "host":
            namespaces.discard("uts")
        security = security_options(spec.security_opt)
        unmasked = spec.privileged or security.unconfined_paths
        return Spec(
            process=Process(args=args, env=runtime_env(spec), cwd=spec.workdir, user=spec.user,
                            group_add=tuple(spec.group_add), terminal=spec.tty,
                            no_new_privileges=security.no_new_privileges is not False,
                            capabilities=None if spec.privileged else capabilities_of(spec),
                            rlimits=tuple(Rlimit(**u) for u in spec.ulimits)),
            hostname=spec.hostname,
            namespaces=namespaces,
            mounts=mounts,
            files=tuple(files),
            readonly_rootfs=spec.read_only,
            # --privileged, systempaths=unconfined: nothing of /proc and /sys hidden or
            # read-only, as docker's.
            **({"masked_paths": (), "readonly_paths": ()} if unmasked else {}),
            sysctl=tuple(({} if host_network else _NETNS_SYSCTLS | spec.sysctls).items()),
            all_devices=spec.privileged,
        )

    # ------------------------------------------------------------------ streams

    def _stdio(
        self, log: Any, pumps: list[threading.Thread], close_after_start: list[int],
        stdin_keep: list[int],
    ) -> tuple[int | None, int | None, int | None]:
        """The container's stdin, stdout and stderr; starts the pumps to the log (and to
        ours when attached)."""
        from soute.container.attach import fd_writer, feed, open_pty, pump

        spec = self.container.spec

        def to_log(stream: str) -> Callable[[bytes], None]:
            def write(data: bytes) -> None:
                with self._log_lock:
                    log.write(stream, data)
            return write

        if spec.tty:
            master, slave = open_pty()
            close_after_start.append(slave)
            sinks = [to_log("stdout")]
            if self.attach:
                self._master = master  # our terminal drives its size (and goes raw)
                sinks.append(fd_writer(1))
                if spec.open_stdin and self.attach_stdin:
                    feed(0, os.dup(master))
            pumps.append(pump(master, sinks))
            return slave, slave, slave
        stdin: int | None = None
        if spec.open_stdin:
            read_end, write_end = os.pipe()
            close_after_start.append(read_end)
            stdin = read_end
            if self.attach_stdin:
                # Ours copied into a pipe, as docker's daemon does: the container never
                # gets our own stdin (a file it could reopen read-write, a terminal).
                feed(0, write_end)
            else:  # -d -i: an open stdin that never ends, as docker keeps it
                stdin_keep.append(write_end)
        outputs: list[int] = []
        for stream, ours in (("stdout", 1), ("stderr", 2)):
            read_end, write_end = os.pipe()
            os.set_inheritable(read_end, False)
            close_after_start.append(write_end)
            sinks = [to_log(stream)] + ([fd_writer(ours)] if self.attach else [])
            pumps.append(pump(read_end, sinks))
            outputs.append(write_end)
        return stdin, outputs[0], outputs[1]

    # ------------------------------------------------------------------ health

    def _start_health(self, pid: int, stop: threading.Event) -> None:
        spec = self.container.spec
        if not spec.health:
            return
        from soute._threads import start_thread
        from soute.container.health import HealthConfig, HealthMonitor, HealthState

        config = HealthConfig(**spec.health)
        self._update(health=HealthState().to_json())

        def on_change(state: HealthState) -> None:
            self._update(health=state.to_json())

        def probe(argv: list[str], timeout: float) -> tuple[int, bytes]:
            return exec_probe(self.container, pid, argv, timeout)

        monitor = HealthMonitor(config, probe, on_change)
        start_thread(monitor.run, "health", (stop,))


def exec_probe(container: Container, pid: int, argv: list[str], timeout: float
               ) -> tuple[int, bytes]:
    """Run ``argv`` in the running container, killed after ``timeout``: (code, output)."""
    from soute.container.attach import pump
    from soute.runtime import exec_in

    read_end, write_end = os.pipe()
    chunks: list[bytes] = []
    reader = pump(read_end, [chunks.append])
    child: list[int] = []
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        for p in child:
            _kill(p)

    timer = threading.Timer(timeout, expire)
    timer.start()
    try:
        code = exec_in(pid, exec_process(container, argv), stdout=write_end, stderr=write_end,
                       on_start=child.append, cgroup_procs=cgroup_procs(container, pid))
    except SouteError as exc:
        code, chunks = 126, [str(exc).encode()]
    finally:
        timer.cancel()
        os.close(write_end)
        reader.join(timeout=5)
    if timed_out.is_set():
        return -1, f"Health check exceeded timeout ({timeout:g}s)".encode()
    return code, b"".join(chunks)


def cgroup_procs(container: Container, init_pid: int) -> list[Path]:
    """The ``cgroup.procs`` files an exec'd process enters: the container's limits hold for
    it too."""
    if not container.spec.resources:
        return []
    from soute.runtime.cgroups import Cgroup

    try:
        cgroup = Cgroup.open(container.id, pid=init_pid)
    except SouteError:
        return []
    return [d / "cgroup.procs" for d in cgroup.directories]


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def hosts_file(hostname: str, network: str, slirp: bool, extra: Sequence[str] = ()) -> bytes:
    """``/etc/hosts`` as docker run writes it: the host's with ``--network host``, else the
    standard names; then ``--add-host``'s (``HOST:IP``), and the hostname on the container's
    address when it has one. ``host-gateway`` is the host as seen from inside."""
    from soute.container.network import SLIRP_GATEWAY, SLIRP_GUEST_IP

    added = []
    for entry in extra:
        host, _, ip = entry.partition(":")
        if ip == "host-gateway":
            ip = "127.0.0.1" if network == "host" else SLIRP_GATEWAY
        added.append(f"{ip}\t{host}")
    if network == "host":
        try:
            text = Path("/etc/hosts").read_text(errors="surrogateescape")
            if added and text and not text.endswith("\n"):
                text += "\n"  # a last line without its newline must not join ours
            return (text + "".join(f"{line}\n" for line in added)).encode(
                errors="surrogateescape")
        except OSError:
            pass
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             "fe00::0\tip6-localnet", "ff00::0\tip6-mcastprefix", "ff02::1\tip6-allnodes",
             "ff02::2\tip6-allrouters", *added]
    if slirp:
        lines.append(f"{SLIRP_GUEST_IP}\t{hostname}")
    return ("\n".join(lines) + "\n").encode()


def capabilities_of(spec: ContainerSpec) -> list[str]:
    """docker's default set, then ``--cap-drop`` and ``--cap-add`` (``ALL`` included)."""
    from soute.runtime import DEFAULT_CAPABILITIES
    from soute.runtime.spec import CAPABILITIES

    caps = set(DEFAULT_CAPABILITIES)
    if "ALL" in spec.cap_drop:
        caps.clear()
    if "ALL" in spec.cap_add:
        caps = set(CAPABILITIES)
    caps = (caps | {c for c in spec.cap_add if c != "ALL"}) - set(spec.cap_drop)
    return sorted(caps, key=CAPABILITIES.index)


def exec_process(container: Container, argv: list[str], *, user: str | None = None,
                 workdir: str | None = None, env: list[str] | None = None,
                 tty: bool = False) -> Any:
    """The process ``exec`` runs: the container's env, user and capabilities."""
    from soute.container.create import runtime_env, security_options
    from soute.runtime import Process

    spec = container.spec
    merged = runtime_env(spec)
    if tty and not any(e.startswith("TERM=") for e in merged):
        merged.append("TERM=xterm")
    if env:
        from soute.container.create import user_env

        merged += user_env(env)
    return Process(args=argv, env=merged, cwd=workdir or spec.workdir,
                   user=spec.user if user is None else user,
                   group_add=tuple(spec.group_add), terminal=tty,
                   no_new_privileges=security_options(spec.security_opt).no_new_privileges
                   is not False, capabilities=capabilities_of(spec))


# ---------------------------------------------------------------------------- detached


def keep_restarting(monitor: Monitor, code: int) -> None:
    """Run the container again while its restart policy says so, as dockerd does: after
    100 ms, twice as long each time up to a minute, back to 100 ms once a run lasted 10 s.
    A stop or kill by the user, or a start by another monitor, ends it."""
    import time

    container = monitor.container
    delay, restarts = 0.1, container.state().restart_count
    ran_for = 0.0
    monitor.restarting = True
    while container.should_restart(code, restarts):
        delay = 0.1 if ran_for >= 10 else delay
        restarts += 1
        # The record is ours only while no other monitor holds the lock (a start).
        with container.lock(blocking=False) as ours:
            if not ours:
                return
            monitor._update(status="restarting", restart_count=restarts)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not container.stop_requested():
            time.sleep(0.05)
        if container.stop_requested():
            with container.lock(blocking=False) as ours:
                if ours:
                    monitor._update(status="exited")
            return
        began = time.monotonic()
        code = monitor.run()  # a SouteError (it cannot start any more) ends the loop
        ran_for = time.monotonic() - began
        delay = min(delay * 2, 60.0)


def spawn(store: Store, container: Container) -> None:
    """Start a detached monitor for ``container`` and wait until its command runs."""
    import subprocess

    read_end, write_end = os.pipe()
    log = open(container.dir / "monitor.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        subprocess.Popen(
            [sys.executable, "-m", "soute.container.monitor", str(store.root), container.id,
             str(write_end)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            pass_fds=(write_end,), start_new_session=True, close_fds=True,
        )
    finally:
        os.close(write_end)
        log.close()
    with os.fdopen(read_end, "rb") as f:
        answer = f.read()
    if not answer:
        raise ContainerError(f"the monitor of {container.short_id} failed to start",
                             f"see {container.dir / 'monitor.log'}")
    message = json.loads(answer)
    if "error" in message:
        raise StartError(message["error"], int(message.get("code", 125)))


def _main(argv: list[str]) -> int:
    from soute.store.store import Store

    root, container_id, fd_text = argv
    ready_fd = int(fd_text)

    def ready(error: SouteError | None) -> None:
        if error is None:
            message: dict[str, object] = {"ok": True}
        else:
            message = {"error": str(error), "code": getattr(error, "exit_code", 125)}
        with contextlib.suppress(OSError):
            os.write(ready_fd, (json.dumps(message) + "\n").encode())
            os.close(ready_fd)

    # A hang-up of the terminal that ran `soute run -d` must not stop us.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with Store(Path(root)) as store:
        containers = Containers(store)
        try:
            container = containers.load(container_id)
        except SouteError as exc:
            ready(exc)
            return 125
        monitor = Monitor(store, container)
        with contextlib.suppress(SouteError):  # told through ready(), and in the state
            code = monitor.run(ready)
            keep_restarting(monitor, code)
        if container.spec.auto_remove:
            from soute.container.control import remove

            remove(store, container, volumes=True, monitor_done=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
