"""Run one container: a :class:`~soute.runtime.spec.Spec` on :class:`~soute.runtime.rootfs.Layers`.

``runtime="soute"`` is our own executor, in-process and fast (no OCI runtime to start):

    parent (soute)                      child (PID 1 of a new PID namespace)
    -------------------------------     ------------------------------------------------
    write /etc files, layer links       setsid, stdio (a terminal: TIOCSCTTY)
    unshare(PID) just for the fork      new mount/uts/ipc(/net) namespaces, ``lo`` up
    fork                          --->  [on_created: report, wait for the parent's go]
    [on_created(pid) step 1, go]  <-->  make every mount private, mount the overlay
    [its step 2, meanwhile]             volume copy-ups, mountpoint stubs
    read setup reports / errors   <---  mount /proc /dev /sys..., device nodes
    forward SIGINT/SIGTERM...           pivot_root, mask /proc paths, hostname
    [its last step, go]           <-->  user, capabilities, cwd, no_new_privs,
    wait, 128+N for signal N            [on_created: report, wait for the go], execve
    take the stubs out of upper

:func:`exec_in` starts a process in a running container the same way: setns() to its PID
namespace just for the fork, then the child joins its other namespaces (mount last, which
puts it at the container's root) and ends as above.

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
import errno
import fcntl
import functools
import json
import os
import resource
import signal
import stat
import sys
import termios
import threading
from collections.abc import Callable, Generator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from soute.errors import SouteError
from soute.runtime import _linux
from soute.runtime.paths import is_within, remove_tree, scoped_path
from soute.runtime.rootfs import (
    Layers,
    StubRecord,
    link_layers,
    make_stubs,
    mount_overlay,
    mount_overlay_data,
    mountpoints_on_root,
    overlay_in_place,
    remove_stubs,
)
from soute.runtime.spec import (
    COPY_UP,
    DEFAULT_PATH,
    DEVICE,
    NAMESPACES,
    Mount,
    Process,
    Spec,
    capability_mask,
    generated_files,
    process_env,
    resolve_user,
    to_oci_config,
    write_files,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from typing import IO, Any, NoReturn

    Stdio = int | IO[Any] | None

# on_created: given the container's pid; a generator runs in steps (see run()).
CreatedHook = Callable[[int], Generator[None, None, None] | None]
DEVNULL = -3  # subprocess.DEVNULL, without importing subprocess

_NAMESPACE_FLAGS = {
    "mount": _linux.CLONE_NEWNS,
    "uts": _linux.CLONE_NEWUTS,
    "ipc": _linux.CLONE_NEWIPC,
    "network": _linux.CLONE_NEWNET,
    "cgroup": _linux.CLONE_NEWCGROUP,
}  # pid is not here: the fork makes (or joins) it
# /proc/<pid>/ns/ names, and the order exec_in joins them in (pid is joined by the fork).
_NAMESPACE_FILES = {"mount": "mnt", "uts": "uts", "ipc": "ipc", "network": "net",
                    "cgroup": "cgroup", "pid": "pid"}
_JOIN_ORDER = ("ipc", "uts", "network", "cgroup", "mount")
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
_CANCELLING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
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
    on_created: CreatedHook | None = None,
    interrupt: bool = False,
) -> int:
    """Run ``spec`` on ``layers`` and return its exit code (128+N when killed by signal N).

    ``stdin`` None reads ``/dev/null`` (``docker run`` without ``-i``); ``stdout``/``stderr``
    None inherit ours. Others are descriptors or file objects, used directly by the command,
    so its output is live. ``on_start`` gets the pid to signal once the command runs.
    Scratch files go to a fresh directory in ``state_dir`` (default: the system's temp dir).

    With ``spec.process.terminal`` the caller gives the slave side of a pty it opened as
    stdin/stdout/stderr; it becomes the command's controlling terminal.

    ``on_created`` gets the container's pid once its namespaces exist (network included,
    ``lo`` up) and before anything is mounted, which waits for it (cgroups, slirp4netns and
    port forwards go there). A generator runs in three steps: to its first ``yield`` while
    the container waits; on to the next one while the container mounts its root; to its
    end once the container is set up, just before its command is exec'd (the slow parts go
    in the last two, overlapping the container's own setup). The command does not start
    until it ends. If it raises, the container is killed and the exception comes out of
    ``run`` (raised in the middle step, it does so once the container waits again). Both
    need ``runtime="soute"``.

    The signals soute gets (SIGINT, SIGTERM...) are passed on to the command once it runs;
    with ``interrupt``, SIGINT, SIGTERM, SIGHUP and SIGQUIT kill it instead and come out of
    ``run`` as KeyboardInterrupt (a build's RUN: a ^C cancels the build, as with docker).
    Raises :class:`SouteError` when the container cannot start.
    """
    spec.validate()
    runtime_path: str | None = None
    if runtime != "soute":
        if spec.process.terminal:
            raise SouteError("a terminal (-t) needs --runtime soute")
        if on_created is not None:
            raise SouteError("a hook before the command starts needs --runtime soute")
        runtime_path = _which(runtime)
        if runtime_path is None:
            raise SouteError(f"OCI runtime {runtime} not found",
                             hint="install runc or crun, or use --runtime soute")
    elif spec.resources is not None:
        raise SouteError("cgroup limits need an OCI runtime for now", hint="use --runtime runc")

    state = _make_state_dir(state_dir)
    records: list[StubRecord] = []
    try:
        files = generated_files(spec)
        overlay = overlay_in_place(layers)
        ctx = _Context(
            spec=spec, layers=layers, state=state,
            mounts=[*spec.mounts, *write_files(files, state / "files")],
            runtime_path=runtime_path,
            container_id=f"soute-{state.name.rsplit('-', 1)[-1]}",
            overlay=overlay,
        )
        if overlay is None:
            link_layers(layers, state / "layers")
        (state / "rootfs").mkdir()
        main = _init_container if runtime_path is None else _start_runtime
        new_pid_namespace = runtime_path is None and "pid" in spec.namespaces

        def fork() -> int:
            try:
                return _fork(new_pid_namespace=new_pid_namespace)
            except OSError as exc:
                raise SouteError(f"cannot start the container: {exc}",
                                 hint="soute runs containers as root") from None

        try:
            return _supervise(functools.partial(main, ctx), (stdin, stdout, stderr), fork=fork,
                              killer=functools.partial(_killer, ctx), records=records,
                              on_start=on_start, on_created=on_created,
                              interrupt=interrupt)
        finally:
            remove_stubs(layers.upper, records)
    finally:
        _remove_state(state)


def exec_in(
    pid: int,
    process: Process,
    *,
    stdin: Stdio = None,
    stdout: Stdio = None,
    stderr: Stdio = None,
    namespaces: set[str] | None = None,
    on_start: Callable[[int], None] | None = None,
    cgroup_procs: Sequence[str | os.PathLike[str]] = (),
) -> int:
    """Run ``process`` inside the running container whose init has host pid ``pid``
    (``docker exec``), and return its exit code (128+N when killed by signal N).

    It joins the container's namespaces that differ from ours (only those of ``namespaces``,
    spec names as in :attr:`Spec.namespaces`, when given), the PID namespace by forking
    into it and the mount namespace last, which puts it at the container's root. The user
    is resolved in the container; the working directory must exist there. Stdio, terminal,
    ``on_start`` and signals are as for :func:`run`; the process dies with its caller.
    ``cgroup_procs``: ``cgroup.procs`` files the process enters before anything else, so the
    container's limits hold from its first instruction. Raises :class:`SouteError` when it
    cannot start.
    """
    process.validate()
    wanted = NAMESPACES if namespaces is None else frozenset(namespaces)
    unknown = wanted - NAMESPACES
    if unknown:
        raise SouteError(f"unsupported namespace: {', '.join(sorted(unknown))}")
    joined: dict[str, int] = {}
    root_fd = -1
    procs: list[int] = []
    try:
        for path in cgroup_procs:
            try:
                procs.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
            except OSError as exc:
                raise SouteError(f"cannot join cgroup {path}: {_strerror(exc)}") from None
        for name in sorted(wanted):
            fd = _open_namespace(pid, name)
            if fd is not None:
                joined[name] = fd
        if "mount" in joined:  # where "/" must be once in (see _join_namespaces)
            root_fd = _open_proc(pid, "root", os.O_PATH | os.O_DIRECTORY)
        pid_ns = joined.get("pid")

        def fork() -> int:
            try:
                return _fork(join_pid_namespace=pid_ns)
            except OSError as exc:
                if exc.errno == errno.ENOMEM:  # the namespace's init is gone
                    raise SouteError(f"container process {pid} is not running") from None
                raise SouteError(f"cannot exec in the container: {exc}") from None

        setns = {name: fd for name, fd in joined.items() if name != "pid"}  # pid: by fork
        main = functools.partial(_exec_child, process, setns, root_fd, procs)
        return _supervise(main, (stdin, stdout, stderr), fork=fork, killer=_sigkill,
                          records=[], on_start=on_start)
    finally:
        for fd in (*joined.values(), root_fd, *procs):
            if fd >= 0:
                os.close(fd)


def _open_proc(pid: int, name: str, flags: int = os.O_RDONLY) -> int:
    try:
        return os.open(f"/proc/{pid}/{name}", flags | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise SouteError(f"container process {pid} is not running") from None
    except OSError as exc:
        raise SouteError(f"cannot open /proc/{pid}/{name}: {_strerror(exc)}") from None


def _open_namespace(pid: int, name: str) -> int | None:
    """A descriptor of the namespace ``name`` of ``pid``, None when it is ours too."""
    file = _NAMESPACE_FILES[name]
    fd = _open_proc(pid, f"ns/{file}")
    theirs = os.fstat(fd)
    ours = os.stat(f"/proc/self/ns/{file}")
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        os.close(fd)
        return None
    return fd


@dataclass(slots=True)
class _Context:
    """What the container's child process works from."""

    spec: Spec
    layers: Layers
    state: Path
    mounts: list[Mount]
    runtime_path: str | None
    container_id: str
    # overlay_in_place's (directory, data); None: the links of link_layers in state/layers
    overlay: tuple[str, str] | None = None

    @property
    def root(self) -> str:
        return str(self.state / "rootfs")

    def runtime_argv(self, *args: str) -> list[str]:
        assert self.runtime_path is not None
        return [self.runtime_path, "--root", str(self.state / "runtime"), *args]


class _SetupError(Exception):
    """A failure before exec, reported to the parent as its message alone."""


# A child's main: given the report pipe, its stdio descriptors and the pipe on which the
# parent says "go on" after on_created (-1 without one). It never returns.
if TYPE_CHECKING:
    _ChildMain = Callable[[int, list[int | None], int], NoReturn]


# ---------------------------------------------------------------------------- parent side


def _supervise(
    child_main: _ChildMain,
    stdio: tuple[Stdio, Stdio, Stdio],
    *,
    fork: Callable[[], int],
    killer: Callable[[int], Callable[[], None]],
    records: list[StubRecord],
    on_start: Callable[[int], None] | None,
    on_created: CreatedHook | None = None,
    interrupt: bool = False,
) -> int:
    """Fork ``child_main``, relay its reports (stubs into ``records``) and wait for it
    (``interrupt``: see :func:`run`)."""
    fds, opened = _stdio_fds(stdio)
    for stream in (*stdio, sys.stdout, sys.stderr):
        flush = getattr(stream, "flush", None)
        if flush is not None:
            flush()
    report_r, report_w = os.pipe()  # both close-on-exec: EOF tells the parent exec happened
    # The child waits on this one for on_created's first step, then for its last before
    # exec: EOF without an answer means give up.
    resume_r, resume_w = os.pipe() if on_created is not None else (-1, -1)
    error: str | None = None
    status = 0
    steps: Generator[None, None, None] | None = None  # on_created's, when a generator
    failed: Exception | None = None  # raised by its middle step
    # Handlers go in before the fork: a ^C right after it must reach the container too.
    # Without on_created the parent has nothing to wait for before the command runs.
    forwarder = _Forwarder(started=on_created is None and not interrupt)
    try:
        with forwarder:
            pid = fork()
            if pid == 0:  # the child: never returns
                os.close(report_r)
                if resume_w >= 0:
                    os.close(resume_w)
                _child(functools.partial(child_main, report_w, fds, resume_r), report_w)
            escalate = killer(pid)
            try:
                forwarder.attach(pid, escalate)
                os.close(report_w)
                report_w = -1
                if resume_r >= 0:
                    os.close(resume_r)
                    resume_r = -1
                for fd in opened:
                    os.close(fd)
                opened = []

                def created() -> None:
                    nonlocal steps, failed
                    assert on_created is not None
                    steps = on_created(pid)
                    if steps is not None:
                        next(steps, None)
                    os.write(resume_w, b"\n")
                    if steps is not None:
                        try:
                            next(steps, None)
                        except Exception as exc:
                            # Raised once the child waits again: killed now, it could
                            # leave stubs in the upper dir that it has not reported yet.
                            failed = exc

                def ready() -> None:
                    nonlocal resume_w
                    if failed is not None:
                        raise failed
                    if steps is not None:
                        for _ in steps:
                            pass
                    forwarder.started = not interrupt  # the command runs next: signals are its
                    os.write(resume_w, b"\n")
                    os.close(resume_w)
                    resume_w = -1

                error = _read_reports(report_r, records,
                                      created if on_created is not None else None,
                                      ready if on_created is not None else None)
                if failed is not None:  # the child failed too, or died
                    raise failed
                if error is None and on_start is not None:
                    on_start(pid)
                status = _wait(pid)
            except BaseException:
                escalate()
                _wait(pid)
                raise
    finally:
        if steps is not None:
            steps.close()
        for fd in (report_r, report_w, resume_r, resume_w, *opened):
            if fd >= 0:
                os.close(fd)
    if error is not None:
        raise SouteError(error)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


_JOINING = threading.Lock()  # held while this process is made not dumpable for a fork


def _fork(*, new_pid_namespace: bool = False, join_pid_namespace: int | None = None) -> int:
    """fork(), the child as PID 1 of a new PID namespace or in the PID namespace of
    ``join_pid_namespace`` (a descriptor) when asked.

    unshare(CLONE_NEWPID) and setns() only change where this thread's next child goes;
    setns() back to our own namespace right after the fork undoes it, so soute keeps forking
    normally.
    """
    if not new_pid_namespace and join_pid_namespace is None:
        return os.fork()
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    # A child that joins a running container's PID namespace holds our descriptors until
    # it execs: not dumpable from birth, the container's processes cannot open them through
    # /proc/PID/fd nor ptrace it (runc's init is the same). exec makes it dumpable again.
    joining = join_pid_namespace is not None
    pid = -1
    if joining:  # one at a time: a thread's restore must not reach another's fork
        _JOINING.acquire()
    try:
        if joining:
            _linux.prctl(_linux.PR_SET_DUMPABLE, 0)
            _linux.setns(join_pid_namespace, _linux.CLONE_NEWPID)
        else:
            _linux.unshare(_linux.CLONE_NEWPID)
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                _linux.setns(own, _linux.CLONE_NEWPID)
        return pid
    finally:
        os.close(own)
        if joining and pid != 0:  # in the parent, whatever failed
            _linux.prctl(_linux.PR_SET_DUMPABLE, 1)
            _JOINING.release()


def _read_reports(
    fd: int, records: list[StubRecord], created: Callable[[], None] | None,
    ready: Callable[[], None] | None = None,
) -> str | None:
    """Collect the child's reports until exec (or its death) closes the pipe; ``created``
    runs when the child says its namespaces exist, ``ready`` when it is about to exec (it
    waits for each meanwhile)."""
    error: str | None = None
    pending = b""
    while chunk := os.read(fd, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "stubs" in message:
                records.extend(StubRecord.from_json(r) for r in message["stubs"])
            elif "error" in message:
                error = str(message["error"])
            elif "created" in message and created is not None:
                created()
            elif "ready" in message and ready is not None:
                ready()
    return error


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue


def _sigkill(pid: int) -> Callable[[], None]:
    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return kill


def _killer(ctx: _Context, pid: int) -> Callable[[], None]:
    """How to stop the container for good: SIGKILL to our child, or through the runtime
    (killing runc itself would orphan the container)."""
    if ctx.runtime_path is None:
        return _sigkill(pid)

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
    before the container's pid is known are passed on once it is.

    Until ``started`` (the parent still sets the container up: network, ports, cgroup; or
    for good, for a build's RUN), SIGINT, SIGTERM, SIGHUP and SIGQUIT cancel the run
    instead, as KeyboardInterrupt: the setup may wait seconds on a helper (slirp4netns
    getting ready), and a ^C passed to a child that has not run its command yet would only
    end the child, not that wait."""

    def __init__(self, *, started: bool = True) -> None:
        self.started = started
        self.cancelled = False
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
        if not self.started and any(s in _CANCELLING for s in pending):
            self.cancelled = True
            raise KeyboardInterrupt
        for signum in pending:
            self._deliver(signum)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGINT, signal.SIGTERM):
            self.interrupts += 1
        if (not self.started and not self.cancelled and self.pid is not None
                and signum in _CANCELLING):
            self.cancelled = True  # raised once: a second one must not cut the clean-up
            raise KeyboardInterrupt  # _supervise kills the child on the way out
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
    remove_tree(str(state))


def _which(name: str) -> str | None:
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    for directory in os.environ.get("PATH", DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


# ---------------------------------------------------------------------------- child side


def _child(main: Callable[[], object], report: int) -> NoReturn:
    """Run ``main``; whatever happens, leave with os._exit (never back into the caller's
    stack, which is the parent's copy)."""
    try:
        main()
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


def _common_setup(fds: list[int | None], *, terminal: bool = False) -> None:
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: restore them.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, *_FORWARDED):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.setsid()  # the terminal's ^C reaches soute, which forwards it
    try:  # keys of the caller's session (a login's, say) stay out of the container's reach
        _linux.join_new_session_keyring()
    except OSError as exc:
        if exc.errno != errno.ENOSYS:  # a kernel without keys has none to leak
            raise _step("making the process a session keyring", exc) from None
    copies = [os.dup(fd) if fd is not None else None for fd in fds]
    for target, fd in enumerate(copies):
        if fd is not None:
            os.dup2(fd, target)
            os.close(fd)
    if terminal:
        # A session leader's controlling terminal: ^C, ^Z and job control inside work.
        try:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        except OSError as exc:
            raise _step("setting stdin as the controlling terminal", exc) from None
    os.umask(0)


def _wait_for_parent(report: int, resume: int, stage: str) -> None:
    """Tell the parent we reached ``stage`` ("created": the namespaces exist; "ready":
    about to exec), and block until its hook for it is done."""
    _send(report, {stage: True})
    while True:
        try:
            answer = os.read(resume, 1)
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue
    if not answer:  # the parent gave up (or died)
        raise _SetupError("container start cancelled")


def _step(what: str, exc: OSError) -> _SetupError:
    return _SetupError(f"{what}: {_strerror(exc)}")


def _strerror(exc: OSError) -> str:
    text = os.strerror(exc.errno) if exc.errno else str(exc)
    return text[:1].lower() + text[1:]  # Go's wording: "no such file or directory"


def _mount_root(ctx: _Context, report: int) -> set[str]:
    """Private mounts, the overlay at ctx.root, volume copy-ups, the stubs (reported) and
    the cwd. Returns the paths of the stubs ("/etc/hosts")."""
    _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
    flags = 0 if ctx.spec.all_devices else _linux.MS_NODEV
    try:
        if ctx.overlay is not None:
            mount_overlay_data(*ctx.overlay, ctx.root, flags)
        else:
            mount_overlay(ctx.state / "layers", ctx.root, flags)
    except OSError as exc:
        raise _step("mounting the root filesystem (overlay)", exc) from None
    # Before the stubs: a volume is filled from what the image has, not from a stub.
    for m in ctx.mounts:
        if COPY_UP in m.options:
            try:
                _copy_up(ctx.root, m)
            except OSError as exc:
                raise _step(f"copying {m.destination} into its volume ({exc.filename})",
                            exc) from None
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
    return {"/" + path for r in records for path in r.created}


def _init_container(
    ctx: _Context, report: int, fds: list[int | None], resume: int
) -> NoReturn:
    spec, process = ctx.spec, ctx.spec.process
    _common_setup(fds, terminal=process.terminal)
    flags = 0
    for name in spec.namespaces:
        flags |= _NAMESPACE_FLAGS.get(name, 0)
    try:
        _linux.unshare(flags)
        if "network" in spec.namespaces:
            _linux.interface_up("lo")
    except OSError as exc:
        raise _step("creating the container's namespaces", exc) from None
    if resume >= 0:
        _wait_for_parent(report, resume, "created")
    stubs = _mount_root(ctx, report)

    root = ctx.root
    has_dev = False
    nodev = not spec.all_devices
    for m in ctx.mounts:
        try:
            _mount(root, m, stubs, nodev=nodev)
        except OSError as exc:
            what = f"mounting {m.destination}"
            data = _parse_options(m.options)[1]
            if m.type == "tmpfs" and data and exc.errno == errno.EINVAL:
                what += f" (tmpfs options {data})"  # the kernel does not say which one
            raise _step(what, exc) from None
        has_dev = has_dev or (m.destination.rstrip("/") == "/dev" and m.type == "tmpfs")
    if has_dev:
        _populate_dev(root + "/dev", ctx.mounts, bind=nodev)
        if process.terminal:
            _bind_console(root + "/dev")

    try:
        os.chdir(root)
        _linux.pivot_root(".", ".")
        _linux.umount2(".", _linux.MNT_DETACH)  # the old root, stacked on top by pivot_root
        os.chdir("/")
    except OSError as exc:
        raise _step("pivot_root", exc) from None

    for key, value in spec.sysctl:  # runc's order: sysctls, read-only paths, masked ones
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise _step(f"setting sysctl {key}={value}: open {path}", exc) from None
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
    # on_created's last step (slirp4netns's readiness) must end before exec, no sooner.
    _become(process, (lambda: _wait_for_parent(report, resume, "ready")) if resume >= 0
            else None)


def _exec_child(
    process: Process, joined: dict[str, int], root_fd: int, procs: list[int],
    report: int, fds: list[int | None], resume: int,
) -> NoReturn:
    """The process of :func:`exec_in`, already in the container's PID namespace."""
    _close_all_but({0, 1, 2, report, resume, root_fd, *procs, *joined.values(),
                    *(fd for fd in fds if fd is not None)})
    for fd in procs:
        try:
            os.write(fd, b"0")  # "0": the writing process itself
        except OSError as exc:
            raise _step("joining the container's cgroup", exc) from None
    _common_setup(fds, terminal=process.terminal)
    _join_namespaces(joined, root_fd)
    _become(process)


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor not in ``keep``: the caller's (a store's database, a lock, a
    log) never reach the container, not even before exec closes them."""
    low = 0
    for fd in sorted(k for k in keep if k >= 0):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _join_namespaces(joined: dict[str, int], root_fd: int) -> None:
    for name in _JOIN_ORDER:  # mount last: /proc/<pid> is out of reach once in
        fd = joined.get(name)
        if fd is None:
            continue
        try:
            _linux.setns(fd, _NAMESPACE_FLAGS[name])
        except OSError as exc:
            raise _step(f"joining the container's {name} namespace", exc) from None
    if root_fd < 0:
        return
    # setns(mount) puts "/" and the cwd at the namespace's root, which is the container's
    # after pivot_root; should it not be (a chroot'ed init), go where the init's root is.
    here, there = os.stat("/"), os.fstat(root_fd)
    if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
        try:
            os.fchdir(root_fd)
            os.chroot(".")
        except OSError as exc:
            raise _step("entering the container's root", exc) from None
    os.chdir("/")


def _become(process: Process, before_exec: Callable[[], None] | None = None) -> NoReturn:
    """The end of every start: user, limits, capabilities, cwd, then exec (all inside).
    ``before_exec`` runs last of all, right before execve."""
    user = resolve_user("/", process.user, process.group_add)
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
    environ = dict(e.split("=", 1) for e in env)
    if before_exec is not None:
        before_exec()
    try:
        os.execve(path, process.args, environ)
    except OSError as exc:
        raise _SetupError(f"exec {path}: {_strerror(exc)}") from None


def _start_runtime(
    ctx: _Context, report: int, fds: list[int | None], resume: int
) -> NoReturn:
    """Become ``runc run`` on a bundle whose rootfs is mounted in our own mount namespace."""
    spec, process = ctx.spec, ctx.spec.process
    _common_setup(fds)
    try:
        _linux.unshare(_linux.CLONE_NEWNS)
    except OSError as exc:
        raise _step("creating a mount namespace", exc) from None
    _mount_root(ctx, report)
    user = resolve_user(ctx.root, process.user, process.group_add)
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
    if m.is_bind:
        return os.path.isdir(m.source)
    return True


def _copy_up(root: str, m: Mount) -> None:
    """Fill an empty volume directory with what the image has at its destination, as docker
    does for a new volume: contents, owners, modes, times, links, xattrs, and the
    directory's own owner and mode. Nothing is followed: the image's symlinks are copied as
    links, never resolved on the host.

    The volume may be another running container's too, which can swap a directory being
    filled for a symlink: everything is made and changed through descriptors of the
    directories made, opened without following links, never by a path on the host."""
    if not os.path.isdir(m.source) or os.listdir(m.source):
        return
    image_dir = scoped_path(root, m.destination)
    try:
        st = os.lstat(image_dir)
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    top = os.open(m.source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    links: dict[tuple[int, int], int] = {}  # hardlinked inodes: an O_PATH descriptor each
    try:
        _copy_tree(image_dir, top, links)
        _copy_metadata(image_dir, st, f"/proc/self/fd/{top}", follow=True)
    finally:
        for fd in (top, *links.values()):
            os.close(fd)


def _copy_tree(src: str, dst: int, links: dict[tuple[int, int], int]) -> None:
    """Copy directory ``src``'s entries into the directory open as ``dst``."""
    with os.scandir(src) as entries:
        for entry in entries:
            name, source = entry.name, entry.path
            st = entry.stat(follow_symlinks=False)
            mode = st.st_mode
            shared = st.st_nlink > 1 and not stat.S_ISDIR(mode)
            if shared and (st.st_dev, st.st_ino) in links:
                # Through our descriptor of the first copy: that very inode, not a path.
                os.link(f"/proc/self/fd/{links[st.st_dev, st.st_ino]}", name,
                        dst_dir_fd=dst, follow_symlinks=True)
                continue  # one inode: its metadata is set already
            if stat.S_ISDIR(mode):
                os.mkdir(name, 0o700, dir_fd=dst)
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            elif stat.S_ISREG(mode):
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(source), name, dir_fd=dst)
                # A link's own owner and times: by name in our directory, not followed.
                _copy_metadata(source, st, f"/proc/self/fd/{dst}/{name}", follow=False)
                if shared:
                    links[st.st_dev, st.st_ino] = os.open(
                        name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst)
                continue
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dst)
                flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            else:  # a socket means nothing without its server
                continue
            fd = os.open(name, flags, 0o600, dir_fd=dst)
            try:
                if stat.S_IFMT(os.fstat(fd).st_mode) != stat.S_IFMT(mode):
                    continue  # replaced meanwhile by someone else: not ours to change
                if stat.S_ISDIR(mode):
                    _copy_tree(source, fd, links)
                elif stat.S_ISREG(mode):
                    _copy_content(source, fd)
                # Through the descriptor's /proc link: that inode, wherever its name went.
                _copy_metadata(source, st, f"/proc/self/fd/{fd}", follow=True)
                if shared:
                    links[st.st_dev, st.st_ino] = os.open(f"/proc/self/fd/{fd}",
                                                          os.O_PATH | os.O_CLOEXEC)
            finally:
                os.close(fd)


def _copy_content(src: str, fd_out: int) -> None:
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while os.sendfile(fd_out, fd_in, None, 1 << 30):
            pass
    finally:
        os.close(fd_in)


def _copy_metadata(src: str, st: os.stat_result, target: str, *, follow: bool) -> None:
    """Owner, then mode (chown clears set-id bits), xattrs (file capabilities after chown),
    then times last (everything before changes them), set on ``target``."""
    os.chown(target, st.st_uid, st.st_gid, follow_symlinks=follow)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(target, stat.S_IMODE(st.st_mode))
    for name in _xattrs(src):
        if name.startswith("trusted.overlay."):  # overlayfs' own bookkeeping
            continue
        with contextlib.suppress(OSError):  # e.g. user.* on a symlink: not allowed
            os.setxattr(target, name, os.getxattr(src, name, follow_symlinks=False),
                        follow_symlinks=follow)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=follow)


def _xattrs(path: str) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise


def _parse_options(options: tuple[str, ...]) -> tuple[int, str, list[int]]:
    flags = 0
    data: list[str] = []
    propagation: list[int] = []
    for option in options:
        if option in (COPY_UP, DEVICE):  # ours: done before mounting, or by _mount
            continue
        if option in _FLAG_OPTIONS:
            bit, on = _FLAG_OPTIONS[option]
            flags = flags | bit if on else flags & ~bit
        elif option in _PROPAGATION_OPTIONS:
            propagation.append(_PROPAGATION_OPTIONS[option])
        else:
            data.append(option)
    return flags, ",".join(data), propagation


def _mount(root: str, m: Mount, stubs: AbstractSet[str] = frozenset(), *,
           nodev: bool = False) -> None:
    """Mount ``m`` under ``root``. With ``nodev`` every bind (with the mounts below it) and
    tmpfs mount is nodev, whatever its options say, but a :data:`DEVICE` bind: no device
    node made or brought there can be opened."""
    flags, data, propagation = _parse_options(m.options)
    # Not devpts: its ptmx must open for a container to make terminals of its own.
    nodev = (nodev and DEVICE not in m.options
             and (m.type in ("bind", "tmpfs") or bool(flags & _linux.MS_BIND)))
    if nodev:
        flags |= _linux.MS_NODEV
    dest = scoped_path(root, m.destination)
    if m.type == "bind" or flags & _linux.MS_BIND:
        _ensure_mountpoint(dest, os.path.isdir(m.source))
        _linux.mount(m.source, dest, None, _linux.MS_BIND | (flags & _linux.MS_REC))
        rest = flags & ~(_linux.MS_BIND | _linux.MS_REC)
        if rest:  # bind mounts take their flags from a remount
            _linux.mount(None, dest, None, rest | _linux.MS_BIND | _linux.MS_REMOUNT)
        if nodev and flags & _linux.MS_REC:
            # The remount reached the top mount only: a host /dev below a -v /:/host bind
            # would stay openable.
            _linux.set_attr_recursive(dest, _linux.MOUNT_ATTR_NODEV)
    else:
        if (m.type == "tmpfs" and "mode=" not in data and os.path.isdir(dest)
                and os.path.normpath(m.destination) not in stubs):
            # runc's rule: a tmpfs over a directory of the image takes that directory's mode.
            mode = f"mode={os.stat(dest).st_mode & 0o7777:o}"
            data = f"{data},{mode}" if data else mode
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


def _populate_dev(dev: str, mounts: list[Mount], *, bind: bool = False) -> None:
    """The default device nodes in the container's /dev. With ``bind`` (a /dev mounted
    nodev) each is made in a tmpfs of its own that allows devices, then bind mounted into
    /dev: its own mount lets it be opened. Without CAP_MKNOD the host's nodes are bound."""
    stage = f"{dev}/.soute-devices" if bind else ""
    if stage:
        os.mkdir(stage, 0o700)
        _linux.mount("tmpfs", stage, "tmpfs", _linux.MS_NOSUID | _linux.MS_NOEXEC,
                     "mode=700,size=16k")
    try:
        for name, major, minor in _DEVICES:
            path = f"{dev}/{name}"
            if os.path.lexists(path):
                continue
            node = f"{stage}/{name}" if stage else path
            try:
                os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
            except PermissionError:  # no CAP_MKNOD: borrow the host's node
                node = f"/dev/{name}"
            if node != path:
                _ensure_mountpoint(path, False)
                _linux.mount(node, path, None, _linux.MS_BIND)
    finally:
        if stage:  # the binds keep what they show; the stage itself goes
            _linux.umount2(stage, _linux.MNT_DETACH)
            os.rmdir(stage)
    for name, target in _DEV_LINKS:
        if not os.path.lexists(f"{dev}/{name}"):
            os.symlink(target, f"{dev}/{name}")
    has_pts = any(m.destination.rstrip("/") == "/dev/pts" for m in mounts)
    if has_pts and not os.path.lexists(f"{dev}/ptmx"):
        os.symlink("pts/ptmx", f"{dev}/ptmx")


def _bind_console(dev: str) -> None:
    """The terminal as ``/dev/console`` too, as runc does: it lives in the host's devpts,
    so its ``/dev/pts/N`` name means nothing in the container and ttyname() finds it there
    instead. Bound from its path in our copy of the host's mounts (a descriptor's mount
    belongs to the host's namespace: mount(2) refuses it); skipped if that is elsewhere."""
    try:
        path = os.readlink("/proc/self/fd/0")
        here, terminal = os.stat(path), os.fstat(0)
    except OSError:
        return
    if (here.st_dev, here.st_ino) != (terminal.st_dev, terminal.st_ino):
        return
    console = f"{dev}/console"
    try:
        _ensure_mountpoint(console, False)
        _linux.mount(path, console, None, _linux.MS_BIND)
    except OSError as exc:
        raise _step("mounting the terminal at /dev/console", exc) from None


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
