"""Run one container: a :class:`~soute.runtime.spec.Spec` on :class:`~soute.runtime.rootfs.Layers`.

``runtime="soute"`` is our own executor, in-process and fast (no OCI runtime to start):

    parent (soute)                      child (PID 1 of a new PID namespace)
    -------------------------------     ------------------------------------------------
    write /etc files, layer links       setsid, stdio, new mount/uts/ipc(/net) namespaces
    unshare(PID) just for the fork      make every mount private, ``lo`` up
    fork                          --->  mount the overlay, create mountpoint stubs
    forward SIGINT/SIGTERM...           mount /proc /dev /sys..., device nodes
    read setup reports / errors   <---  pivot_root, mask /proc paths, hostname
    wait, 128+N for signal N            user, capabilities, cwd, no_new_privs, execve
    take the stubs out of upper

Everything is mounted in the child's mount namespace: nothing stays mounted on the host, even
if soute is killed (the child also gets SIGKILL then, as its parent-death signal).

Any other ``runtime`` names an OCI runtime (``runc``, ``crun``) run on the same spec: a helper
child mounts the overlay in a private mount namespace, writes ``config.json`` next to it and
becomes ``<runtime> run --bundle``.

Setup errors in a child (unknown user, missing executable...) come back through a
close-on-exec pipe and are raised as :class:`SouteError` in the parent, worded as runc words
them (``exec: "x": executable file not found in $PATH``).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

from soute.errors import SouteError
from soute.runtime import _linux
from soute.runtime.paths import is_within, scoped_path
from soute.runtime.rootfs import (
    Layers,
    StubRecord,
    link_layers,
    make_stubs,
    mount_overlay,
    mountpoints_on_root,
    remove_stubs,
)
from soute.runtime.spec import (
    DEFAULT_PATH,
    Mount,
    Spec,
    capability_mask,
    generated_files,
    process_env,
    resolve_user,
    to_oci_config,
    write_files,
)

Stdio = int | IO[Any] | None
DEVNULL = -3  # subprocess.DEVNULL, without importing subprocess

_NAMESPACE_FLAGS = {
    "mount": _linux.CLONE_NEWNS,
    "uts": _linux.CLONE_NEWUTS,
    "ipc": _linux.CLONE_NEWIPC,
    "network": _linux.CLONE_NEWNET,
    "cgroup": _linux.CLONE_NEWCGROUP,
}
# Mount options that are flags (set or cleared); the rest is filesystem data.
_FLAG_OPTIONS: dict[str, tuple[int, bool]] = {
    "defaults": (0, True),
    "ro": (_linux.MS_RDONLY, True), "rw": (_linux.MS_RDONLY, False),
    "nosuid": (_linux.MS_NOSUID, True), "suid": (_linux.MS_NOSUID, False),
    "nodev": (_linux.MS_NODEV, True), "dev": (_linux.MS_NODEV, False),
    "noexec": (_linux.MS_NOEXEC, True), "exec": (_linux.MS_NOEXEC, False),
    "sync": (_linux.MS_SYNCHRONOUS, True), "async": (_linux.MS_SYNCHRONOUS, False),
    "dirsync": (_linux.MS_DIRSYNC, True),
    "mand": (_linux.MS_MANDLOCK, True), "nomand": (_linux.MS_MANDLOCK, False),
    "noatime": (_linux.MS_NOATIME, True), "atime": (_linux.MS_NOATIME, False),
    "nodiratime": (_linux.MS_NODIRATIME, True), "diratime": (_linux.MS_NODIRATIME, False),
    "relatime": (_linux.MS_RELATIME, True), "norelatime": (_linux.MS_RELATIME, False),
    "strictatime": (_linux.MS_STRICTATIME, True),
    "nostrictatime": (_linux.MS_STRICTATIME, False),
    "bind": (_linux.MS_BIND, True), "rbind": (_linux.MS_BIND | _linux.MS_REC, True),
    "remount": (_linux.MS_REMOUNT, True),
}
_PROPAGATION_OPTIONS = {
    "private": _linux.MS_PRIVATE, "rprivate": _linux.MS_PRIVATE | _linux.MS_REC,
    "slave": _linux.MS_SLAVE, "rslave": _linux.MS_SLAVE | _linux.MS_REC,
    "shared": _linux.MS_SHARED, "rshared": _linux.MS_SHARED | _linux.MS_REC,
    "unbindable": _linux.MS_UNBINDABLE, "runbindable": _linux.MS_UNBINDABLE | _linux.MS_REC,
}
# The devices every container gets (runtime-spec "default devices"), all 0666 root:root.
_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
            ("urandom", 1, 9), ("tty", 5, 0))
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2)
# statvfs f_flag bits that are also per-mount flags (a read-only remount must keep them).
_KEPT_MOUNT_FLAGS = (_linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC | _linux.MS_NOATIME
                     | _linux.MS_NODIRATIME)
_SETUP_FAILED = 125


def run(
    spec: Spec,
    layers: Layers,
    *,
    stdin: Stdio = None,
    stdout: Stdio = None,
    stderr: Stdio = None,
    runtime: str = "soute",
    state_dir: Path | None = None,
    on_start: Callable[[int], None] | None = None,
) -> int:
    """Run ``spec`` on ``layers`` and return its exit code (128+N when killed by signal N).

    ``stdin`` None reads ``/dev/null`` (``docker run`` without ``-i``); ``stdout``/``stderr``
    None inherit ours. Others are descriptors or file objects, used directly by the command,
    so its output is live. ``on_start`` gets the pid to signal once the command runs.
    Scratch files go to a fresh directory in ``state_dir`` (default: the system's temp dir).
    Raises :class:`SouteError` when the container cannot start.
    """
    spec.validate()
    if spec.process.terminal:
        raise SouteError("a terminal (-t) is not supported yet")
    runtime_path: str | None = None
    if runtime != "soute":
        runtime_path = _which(runtime)
        if runtime_path is None:
            raise SouteError(f"OCI runtime {runtime} not found",
                             hint="install runc or crun, or use --runtime soute")
    elif spec.resources is not None:
        raise SouteError("cgroup limits need an OCI runtime for now", hint="use --runtime runc")

    state = _make_state_dir(state_dir)
    try:
        files = generated_files(spec)
        ctx = _Context(
            spec=spec, layers=layers, state=state,
            mounts=[*spec.mounts, *write_files(files, state / "files")],
            runtime_path=runtime_path,
            container_id=f"soute-{state.name.rsplit('-', 1)[-1]}",
        )
        link_layers(layers, state / "layers")
        (state / "rootfs").mkdir()
        if runtime_path is None:
            return _supervise(ctx, _init_container, (stdin, stdout, stderr), on_start)
        return _supervise(ctx, _start_runtime, (stdin, stdout, stderr), on_start)
    finally:
        _remove_state(state)


@dataclass(slots=True)
class _Context:
    spec: Spec
    layers: Layers
    state: Path
    mounts: list[Mount]
    runtime_path: str | None
    container_id: str

    @property
    def root(self) -> str:
        return str(self.state / "rootfs")

    def runtime_argv(self, *args: str) -> list[str]:
        assert self.runtime_path is not None
        return [self.runtime_path, "--root", str(self.state / "runtime"), *args]


class _SetupError(Exception):
    """A failure before exec, reported to the parent as its message alone."""


# ---------------------------------------------------------------------------- parent side


def _supervise(
    ctx: _Context,
    child_main: Callable[[_Context, int, list[int | None]], NoReturn],
    stdio: tuple[Stdio, Stdio, Stdio],
    on_start: Callable[[int], None] | None,
) -> int:
    fds, opened = _stdio_fds(stdio)
    for stream in (*stdio, sys.stdout, sys.stderr):
        flush = getattr(stream, "flush", None)
        if flush is not None:
            flush()
    report_r, report_w = os.pipe()  # both close-on-exec: EOF tells the parent exec happened
    records: list[StubRecord] = []
    error: str | None = None
    status = 0
    # Handlers go in before the fork: a ^C right after it must reach the container too.
    forwarder = _Forwarder()
    try:
        with forwarder:
            try:
                pid = _fork(
                    new_pid_namespace=ctx.runtime_path is None and "pid" in ctx.spec.namespaces)
            except OSError as exc:
                raise SouteError(f"cannot start the container: {exc}",
                                 hint="soute runs containers as root") from None
            if pid == 0:  # the child: never returns
                os.close(report_r)
                _child(ctx, child_main, report_w, fds)
            escalate = _killer(ctx, pid)
            try:
                forwarder.attach(pid, escalate)
                os.close(report_w)
                report_w = -1
                for fd in opened:
                    os.close(fd)
                opened = []
                error = _read_reports(report_r, records)
                if error is None and on_start is not None:
                    on_start(pid)
                status = _wait(pid)
            except BaseException:
                escalate()
                _wait(pid)
                raise
    finally:
        for fd in (report_r, report_w, *opened):
            if fd >= 0:
                os.close(fd)
        remove_stubs(ctx.layers.upper, records)
    if error is not None:
        raise SouteError(error)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _fork(*, new_pid_namespace: bool) -> int:
    """fork(), the child as PID 1 of a new PID namespace when asked.

    unshare(CLONE_NEWPID) only changes where this thread's next child goes; setns() back to
    our own namespace right after the fork undoes it, so soute keeps forking normally.
    """
    if not new_pid_namespace:
        return os.fork()
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _linux.unshare(_linux.CLONE_NEWPID)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                _linux.setns(own, _linux.CLONE_NEWPID)
        return pid
    finally:
        os.close(own)


def _read_reports(fd: int, records: list[StubRecord]) -> str | None:
    """Collect the child's reports until exec (or its death) closes the pipe."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    error: str | None = None
    for line in b"".join(chunks).splitlines():
        message = json.loads(line)
        if "stubs" in message:
            records.extend(StubRecord.from_json(r) for r in message["stubs"])
        elif "error" in message:
            error = str(message["error"])
    return error


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue


def _killer(ctx: _Context, pid: int) -> Callable[[], None]:
    """How to stop the container for good: SIGKILL to our child, or through the runtime
    (killing runc itself would orphan the container)."""
    if ctx.runtime_path is None:
        def kill() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return kill

    def kill_via_runtime() -> None:
        import subprocess  # only for OCI runtimes: keeps soute's own path light to import

        done = subprocess.run(ctx.runtime_argv("kill", ctx.container_id, "KILL"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if done.returncode != 0:  # not created yet (or gone): stop the runtime itself
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return kill_via_runtime


class _Forwarder:
    """Pass our SIGINT/SIGTERM/... on to the container; a second SIGINT or SIGTERM kills it
    (PID 1 ignores signals it has no handler for, as under docker). Signals that arrive
    before the container's pid is known are passed on once it is."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.escalate: Callable[[], None] | None = None
        self.interrupts = 0
        self.pending: list[int] = []
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> _Forwarder:
        for sig in _FORWARDED:
            try:
                self.saved[sig] = signal.signal(sig, self._forward)
            except ValueError:  # not the main thread: signals are the caller's business
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def attach(self, pid: int, escalate: Callable[[], None]) -> None:
        self.pid, self.escalate = pid, escalate
        pending, self.pending = self.pending, []
        for signum in pending:
            self._deliver(signum)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGINT, signal.SIGTERM):
            self.interrupts += 1
        if self.pid is None:
            self.pending.append(signum)
        else:
            self._deliver(signum)

    def _deliver(self, signum: int) -> None:
        if self.interrupts > 1 and signum in (signal.SIGINT, signal.SIGTERM):
            assert self.escalate is not None
            self.escalate()
            return
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)


def _stdio_fds(stdio: tuple[Stdio, Stdio, Stdio]) -> tuple[list[int | None], list[int]]:
    """Descriptors for the child's 0, 1 and 2 (None: keep ours), and those we opened."""
    fds: list[int | None] = []
    opened: list[int] = []
    for index, value in enumerate(stdio):
        if value is None and index > 0:
            fds.append(None)
        elif value is None or value == DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            opened.append(fd)
            fds.append(fd)
        elif isinstance(value, int):
            if value < 0:
                raise SouteError(f"unsupported stdio value {value}")
            fds.append(value)
        else:
            fds.append(value.fileno())
    return fds, opened


def _make_state_dir(parent: Path | None) -> Path:
    top = parent if parent is not None else Path(os.environ.get("TMPDIR") or "/tmp")
    while True:
        path = top / f"soute-run-{os.urandom(8).hex()}"
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue


def _remove_state(state: Path) -> None:
    try:
        (state / "rootfs").rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return  # still a mountpoint somewhere? never recurse into a root filesystem
    _remove_tree(str(state))


def _remove_tree(path: str) -> None:
    """rm -rf of our own scratch directory (never follows symlinks)."""
    with contextlib.suppress(OSError), os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _which(name: str) -> str | None:
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    for directory in os.environ.get("PATH", DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


# ---------------------------------------------------------------------------- child side


def _child(
    ctx: _Context,
    child_main: Callable[[_Context, int, list[int | None]], NoReturn],
    report: int,
    fds: list[int | None],
) -> NoReturn:
    """Run ``child_main``; whatever happens, leave with os._exit (never back into the
    caller's stack, which is the parent's copy)."""
    try:
        child_main(ctx, report, fds)
    except BaseException as exc:  # everything must reach the parent
        if isinstance(exc, _SetupError | SouteError):
            message = str(exc)
        else:
            message = f"container setup failed: {type(exc).__name__}: {exc}"
        with contextlib.suppress(BaseException):
            _send(report, {"error": message})
    finally:
        os._exit(_SETUP_FAILED)


def _send(fd: int, message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _common_setup(fds: list[int | None]) -> None:
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: restore them.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, *_FORWARDED):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.setsid()  # the terminal's ^C reaches soute, which forwards it
    copies = [os.dup(fd) if fd is not None else None for fd in fds]
    for target, fd in enumerate(copies):
        if fd is not None:
            os.dup2(fd, target)
            os.close(fd)
    os.umask(0)


def _step(what: str, exc: OSError) -> _SetupError:
    return _SetupError(f"{what}: {_strerror(exc)}")


def _strerror(exc: OSError) -> str:
    text = os.strerror(exc.errno) if exc.errno else str(exc)
    return text[:1].lower() + text[1:]  # Go's wording: "no such file or directory"


def _mount_root(ctx: _Context, report: int) -> None:
    """Private mounts, the overlay at ctx.root, its stubs (reported) and the cwd."""
    _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
    try:
        mount_overlay(ctx.state / "layers", ctx.root)
    except OSError as exc:
        raise _step("mounting the root filesystem (overlay)", exc) from None
    destinations = [(m.destination, _mounts_directory(m)) for m in ctx.mounts]
    records: list[StubRecord] = []
    try:
        make_stubs(ctx.root, str(ctx.layers.upper), mountpoints_on_root(destinations), records)
    except OSError as exc:
        raise _step(f"creating mountpoint {exc.filename}", exc) from None
    finally:
        _send(report, {"stubs": [r.to_json() for r in records]})
    # The working directory is created when missing, as BuildKit, docker and runc do.
    cwd = scoped_path(ctx.root, ctx.spec.process.cwd)
    if not os.path.lexists(cwd):
        try:
            os.makedirs(cwd, 0o755)
        except OSError as exc:
            raise _step(f"creating working directory {ctx.spec.process.cwd}", exc) from None


def _init_container(ctx: _Context, report: int, fds: list[int | None]) -> NoReturn:
    spec, process = ctx.spec, ctx.spec.process
    _common_setup(fds)
    flags = 0
    for name in spec.namespaces:
        flags |= _NAMESPACE_FLAGS.get(name, 0)
    try:
        _linux.unshare(flags)
        if "network" in spec.namespaces:
            _linux.interface_up("lo")
    except OSError as exc:
        raise _step("creating the container's namespaces", exc) from None
    _mount_root(ctx, report)

    root = ctx.root
    has_dev = False
    for m in ctx.mounts:
        try:
            _mount(root, m)
        except OSError as exc:
            raise _step(f"mounting {m.destination}", exc) from None
        has_dev = has_dev or (m.destination.rstrip("/") == "/dev" and m.type == "tmpfs")
    if has_dev:
        _populate_dev(root + "/dev", ctx.mounts)

    try:
        os.chdir(root)
        _linux.pivot_root(".", ".")
        _linux.umount2(".", _linux.MNT_DETACH)  # the old root, stacked on top by pivot_root
        os.chdir("/")
    except OSError as exc:
        raise _step("pivot_root", exc) from None

    for path in spec.readonly_paths:  # runc's order: read-only first, then masked
        _read_only(path)
    for path in spec.masked_paths:
        _mask(path)
    if spec.readonly_rootfs:
        _linux.mount(None, "/", None,
                     _linux.MS_BIND | _linux.MS_REMOUNT | _linux.MS_RDONLY | _mount_flags("/"))
    if "uts" in spec.namespaces:
        try:
            _linux.sethostname(spec.hostname)
        except OSError as exc:
            raise _step(f"setting hostname {spec.hostname!r}", exc) from None

    user = resolve_user("/", process.user)
    env = process_env(process, user.home)
    for limit in process.rlimits:
        try:
            resource.setrlimit(getattr(resource, limit.type), (limit.soft, limit.hard))
        except (AttributeError, ValueError, OSError) as exc:
            raise _SetupError(f"setting {limit.type}: {exc}") from None
    _switch_user(user.uid, user.gid, user.additional_gids, process.capabilities)
    try:
        os.chdir(process.cwd)
    except OSError as exc:
        raise _SetupError(f'chdir to cwd ("{process.cwd}") set in config.json failed: '
                          f"{_strerror(exc)}") from None
    path = look_path(process.args[0], _env_path(env))
    if process.no_new_privileges:
        _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    # Dies with soute: a killed build leaves no RUN behind (set after setuid, which clears it).
    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.umask(0o022)
    _linux.cloexec_from(3)
    try:
        os.execve(path, process.args, dict(e.split("=", 1) for e in env))
    except OSError as exc:
        raise _SetupError(f"exec {path}: {_strerror(exc)}") from None


def _start_runtime(ctx: _Context, report: int, fds: list[int | None]) -> NoReturn:
    """Become ``runc run`` on a bundle whose rootfs is mounted in our own mount namespace."""
    spec, process = ctx.spec, ctx.spec.process
    _common_setup(fds)
    try:
        _linux.unshare(_linux.CLONE_NEWNS)
    except OSError as exc:
        raise _step("creating a mount namespace", exc) from None
    _mount_root(ctx, report)
    user = resolve_user(ctx.root, process.user)
    env = process_env(process, user.home)
    # The runtime would fail the same way, less clearly (and with status 1).
    look_path(process.args[0], _env_path(env), root=ctx.root,
              elsewhere=tuple(m.destination for m in ctx.mounts))
    config = to_oci_config(spec, "rootfs", files_dir=ctx.state / "files", user=user,
                           available_caps=_linux.bounding_set())
    (ctx.state / "config.json").write_text(json.dumps(config, indent=1))
    _linux.cloexec_from(3)
    argv = ctx.runtime_argv("run", "--bundle", str(ctx.state), ctx.container_id)
    os.execv(argv[0], argv)


def _mounts_directory(m: Mount) -> bool:
    if m.type == "bind" or "bind" in m.options or "rbind" in m.options:
        return os.path.isdir(m.source)
    return True


def _parse_options(options: tuple[str, ...]) -> tuple[int, str, list[int]]:
    flags = 0
    data: list[str] = []
    propagation: list[int] = []
    for option in options:
        if option in _FLAG_OPTIONS:
            bit, on = _FLAG_OPTIONS[option]
            flags = flags | bit if on else flags & ~bit
        elif option in _PROPAGATION_OPTIONS:
            propagation.append(_PROPAGATION_OPTIONS[option])
        else:
            data.append(option)
    return flags, ",".join(data), propagation


def _mount(root: str, m: Mount) -> None:
    flags, data, propagation = _parse_options(m.options)
    dest = scoped_path(root, m.destination)
    if m.type == "bind" or flags & _linux.MS_BIND:
        _ensure_mountpoint(dest, os.path.isdir(m.source))
        _linux.mount(m.source, dest, None, _linux.MS_BIND | (flags & _linux.MS_REC))
        rest = flags & ~(_linux.MS_BIND | _linux.MS_REC)
        if rest:  # bind mounts take their flags from a remount
            _linux.mount(None, dest, None, rest | _linux.MS_BIND | _linux.MS_REMOUNT)
    else:
        _ensure_mountpoint(dest, True)
        _linux.mount(m.source, dest, m.type, flags, data or None)
    for kind in propagation:
        _linux.mount(None, dest, None, kind)


def _ensure_mountpoint(path: str, is_dir: bool) -> None:
    if os.path.lexists(path):
        return
    if is_dir:
        os.makedirs(path, 0o755)
    else:
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _populate_dev(dev: str, mounts: list[Mount]) -> None:
    for name, major, minor in _DEVICES:
        path = f"{dev}/{name}"
        if os.path.lexists(path):
            continue
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        except PermissionError:  # no CAP_MKNOD: borrow the host's node
            _ensure_mountpoint(path, False)
            _linux.mount(f"/dev/{name}", path, None, _linux.MS_BIND)
    for name, target in _DEV_LINKS:
        if not os.path.lexists(f"{dev}/{name}"):
            os.symlink(target, f"{dev}/{name}")
    has_pts = any(m.destination.rstrip("/") == "/dev/pts" for m in mounts)
    if has_pts and not os.path.lexists(f"{dev}/ptmx"):
        os.symlink("pts/ptmx", f"{dev}/ptmx")


def _mask(path: str) -> None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            _linux.mount("tmpfs", path, "tmpfs", _linux.MS_RDONLY)
        else:
            _linux.mount("/dev/null", path, None, _linux.MS_BIND)
    except OSError as exc:
        raise _step(f"masking {path}", exc) from None


def _read_only(path: str) -> None:
    if not os.path.lexists(path):
        return
    try:
        _linux.mount(path, path, None, _linux.MS_BIND | _linux.MS_REC)
        _linux.mount(None, path, None, _linux.MS_BIND | _linux.MS_REMOUNT | _linux.MS_RDONLY
                     | _mount_flags(path))
    except OSError as exc:
        raise _step(f"making {path} read-only", exc) from None


def _mount_flags(path: str) -> int:
    return os.statvfs(path).f_flag & _KEPT_MOUNT_FLAGS


def _switch_user(uid: int, gid: int, groups: tuple[int, ...], caps: list[str] | None) -> None:
    keep = capability_mask(caps) if caps is not None else None
    if keep is not None:  # the bounding set needs CAP_SETPCAP, which setuid may take away
        for number in range(_linux.last_cap() + 1):
            if not keep & (1 << number):
                _linux.prctl(_linux.PR_CAPBSET_DROP, number)
    try:
        os.setgroups(list(groups))
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        raise _step(f"switching to user {uid}:{gid}", exc) from None
    if keep is not None:
        # setuid to non-root already emptied the sets; root keeps exactly ``keep``.
        effective = keep if uid == 0 else 0
        _linux.capset(effective, effective, 0)
        with contextlib.suppress(OSError):  # kernels before 4.3 have no ambient set
            _linux.prctl(_linux.PR_CAP_AMBIENT, _linux.PR_CAP_AMBIENT_CLEAR_ALL)


def _env_path(env: list[str]) -> str:
    for item in env:
        if item.startswith("PATH="):
            return item[5:]
    return ""


def look_path(
    file: str, path_env: str, *, root: str = "/", elsewhere: tuple[str, ...] = ()
) -> str:
    """Find the executable as runc (Go's ``exec.LookPath``) does, inside ``root``.

    Only the mode bits count, not who may run it. Candidates below one of ``elsewhere``
    (mount destinations not mounted here) are taken on trust.
    """
    if "/" in file:
        problem = _not_executable(root, file, elsewhere)
        if problem is None:
            return file
        raise _SetupError(f'exec: "{file}": {problem}')
    for directory in path_env.split(":"):
        candidate = os.path.join(directory or ".", file)
        if _not_executable(root, candidate, elsewhere) is None:
            return candidate
    raise _SetupError(f'exec: "{file}": executable file not found in $PATH')


def _not_executable(root: str, path: str, elsewhere: tuple[str, ...]) -> str | None:
    if path.startswith("/") and any(is_within(os.path.normpath(path), d) for d in elsewhere):
        return None
    real = path if root == "/" else scoped_path(root, path)
    try:
        st = os.stat(real)
    except OSError as exc:
        return f"stat {path}: {_strerror(exc)}"
    if not stat.S_ISDIR(st.st_mode) and st.st_mode & 0o111:
        return None
    return "permission denied"
