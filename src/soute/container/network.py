"""Outbound networking for a container through slirp4netns (user-mode TCP/IP, no bridge).

slirp4netns puts a tap0 device in the container's network namespace (10.0.2.100/24, gateway
10.0.2.2, DNS forwarder 10.0.2.3) and turns its traffic into ordinary sockets on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from soute.errors import SouteError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from typing import IO

__all__ = [
    "SLIRP_DNS",
    "SLIRP_GATEWAY",
    "SLIRP_GUEST_IP",
    "Slirp",
    "available",
    "resolv_conf_for_slirp",
    "resolv_conf_with",
]

SLIRP_GATEWAY = "10.0.2.2"
SLIRP_DNS = "10.0.2.3"
SLIRP_GUEST_IP = "10.0.2.100"
SLIRP_MTU = 65520  # big frames cut per-packet overhead, the usual choice with slirp4netns
_BINARY = "slirp4netns"
_STOP_TIMEOUT = 5.0
_STDERR_LIMIT = 2000


def available(binary: str = _BINARY) -> bool:
    """Whether slirp4netns is on PATH."""
    return _which(binary) is not None


def _which(name: str) -> str | None:
    """``shutil.which`` for an executable file (shutil is not imported on ``soute run``'s
    path)."""
    candidates = [name] if "/" in name else [
        os.path.join(d or ".", name) for d in os.environ.get("PATH", os.defpath).split(":")]
    for candidate in candidates:
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


class _Process:
    """What Slirp needs of ``subprocess.Popen`` (whose import costs ``soute run`` ~2 ms),
    for a child of ours made by ``os.posix_spawn``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code (-N: killed by signal N) once it exited, reaping it; else None."""
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Waits for its end; raises TimeoutError after ``timeout`` seconds."""
        if timeout is None:
            while (code := self.returncode) is None:
                self._reap(0)
            return code
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while (code := self.poll()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"process {self.pid} still runs after {timeout:g}s")
            time.sleep(min(delay, left))
            delay = min(2 * delay, 0.05)
        return code

    def kill(self) -> None:
        if self.returncode is None:  # once reaped, its pid may be someone else's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _reap(self, options: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, options)
        except ChildProcessError:  # reaped by someone else: its status is lost
            self.returncode = 0
            return
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)


class Slirp:
    """One slirp4netns process serving one container's network namespace."""

    def __init__(
        self,
        *,
        binary: str = _BINARY,
        mtu: int = SLIRP_MTU,
        sandbox: bool = True,
        seccomp: bool = False,
        ready_timeout: float = 10.0,
    ) -> None:
        self.binary = binary
        self.mtu = mtu
        # The sandbox (own mount namespace, capabilities dropped) limits what a compromised
        # slirp4netns can reach; seccomp is off by default: slirp4netns calls it experimental.
        self.sandbox = sandbox
        self.seccomp = seccomp
        self.ready_timeout = ready_timeout
        self.process: _Process | None = None
        self._pid = 0
        self._netns: int | None = None
        self._path: str | None = None
        self._deadline = 0.0
        self._ready_r: int | None = None
        self._exit_w: int | None = None
        self._log: IO[bytes] | None = None

    def available(self) -> bool:
        """Whether this instance's slirp4netns binary is on PATH."""
        return available(self.binary)

    def command(self, netns: str, ready_fd: int, exit_fd: int) -> list[str]:
        """The slirp4netns command line for the network namespace at path ``netns``."""
        argv = [
            self.binary,
            "--configure",
            f"--mtu={self.mtu}",
            # The container must not reach services bound to the host's 127.0.0.1 via 10.0.2.2.
            "--disable-host-loopback",
            f"--ready-fd={ready_fd}",
            f"--exit-fd={exit_fd}",
        ]
        if self.sandbox:
            argv.append("--enable-sandbox")
        if self.seccomp:
            argv.append("--enable-seccomp")
        return [*argv, "--netns-type=path", netns, "tap0"]

    def start(self, pid: int) -> None:
        """Starts slirp4netns for ``pid``'s network namespace; returns once tap0 is configured."""
        self.attach(pid)
        self.spawn()
        self.wait_ready()

    def attach(self, pid: int) -> None:
        """Takes hold of ``pid``'s network namespace for :meth:`spawn`: it stays, and is the
        one slirp4netns configures, even should ``pid`` exit or its pid be reused meanwhile."""
        if self._netns is not None or self.process is not None:
            raise RuntimeError("Slirp.start() or attach() is called once")
        self._path = _which(self.binary)
        if self._path is None:
            raise SouteError(
                f"{self.binary} not found: it is needed for the container's network",
                "install slirp4netns, or run with --network none",
            )
        try:
            self._netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise SouteError(
                f"cannot set up the network of process {pid}: no such process") from None
        self._pid = pid

    def spawn(self) -> None:
        """Starts slirp4netns on the namespace of :meth:`attach` without waiting for it: tap0
        is up once :meth:`wait_ready` returns (a few ms, which the caller may put to use)."""
        if self._netns is None or self._path is None or self.process is not None:
            raise RuntimeError("Slirp.spawn() comes once, after attach()")
        # ready: slirp4netns writes "1" once tap0 is up; exit: it quits when we close our end
        # (so also when this process dies).
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
        # A file, not a pipe: a pipe nobody reads would block slirp4netns once full.
        self._log = _temporary_file()
        # Its fds 3, 4 and 5 in the child, copied from above 5: no dup2 clobbers another.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 6)
                for fd in (self._log.fileno(), ready_w, exit_r, self._netns)]
        log, child_ready, child_exit, child_netns = high
        try:
            self.process = _Process(os.posix_spawn(
                self._path, self.command("/proc/self/fd/5", 3, 4), os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, log, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                    (os.POSIX_SPAWN_DUP2, child_ready, 3),
                    (os.POSIX_SPAWN_DUP2, child_exit, 4),
                    (os.POSIX_SPAWN_DUP2, child_netns, 5),
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    # Nothing else of ours: the rest is close-on-exec but for these.
                    *((os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds(6)),
                ],
                setsid=True,  # a ^C at the terminal is for the container, not it
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # ignored by Python, kept by exec
            ))
        except OSError as err:
            for fd in (ready_r, ready_w, exit_r, exit_w, self._netns):
                os.close(fd)
            self._netns = None
            self._close_log()
            raise SouteError(f"cannot run {self.binary}: {err.strerror}") from None
        finally:
            for fd in high:
                os.close(fd)
        os.close(ready_w)  # only the child's copy left: EOF on ready_r means it died
        os.close(exit_r)
        os.close(self._netns)  # it has its own
        self._netns = None
        self._exit_w = exit_w
        self._ready_r = ready_r
        self._deadline = time.monotonic() + self.ready_timeout

    def wait_ready(self) -> None:
        """Returns once slirp4netns (started by :meth:`spawn`) has configured tap0; raises
        :class:`SouteError` (and stops it) if it fails or takes over ``ready_timeout``."""
        ready_r = self._ready_r
        if ready_r is None:
            raise RuntimeError("Slirp.wait_ready() comes once, after spawn()")
        self._ready_r = None
        try:
            self._wait_ready(ready_r, self._pid)
        except BaseException:
            # Not ready means broken: no point in a graceful exit.
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.stop()
            raise
        finally:
            os.close(ready_r)

    def _wait_ready(self, ready_r: int, pid: int) -> None:
        # Mostly it is ready by now (the container's setup took as long): no select then.
        os.set_blocking(ready_r, False)
        with contextlib.suppress(BlockingIOError):
            if os.read(ready_r, 1) == b"1":
                return
        import select

        deadline = self._deadline
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SouteError(
                    f"{self.binary} did not set up the network of process {pid} "
                    f"within {self.ready_timeout:g}s{self._stderr_suffix()}"
                )
            readable, _, _ = select.select([ready_r], [], [], left)
            if not readable:
                continue
            data = os.read(ready_r, 1)
            if data == b"1":
                return
            if data:
                continue
            assert self.process is not None
            # EOF: the child exited (or closed the fd) without saying it was ready.
            with contextlib.suppress(TimeoutError):
                self.process.wait(1)
            status = self.process.returncode
            how = f"exited with status {status}" if status is not None else "failed"
            raise SouteError(
                f"{self.binary} {how} setting up the network of process {pid}"
                f"{self._stderr_suffix()}"
            )

    def _stderr_suffix(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        text = self._log.read(_STDERR_LIMIT).decode(errors="replace").strip()
        return ": " + " | ".join(text.splitlines()) if text else ""

    def stop(self, *, wait: bool = True) -> None:
        """Makes slirp4netns exit (it watches the exit fd) and waits for it. Without
        ``wait`` a thread of ours reaps it (init does, should we exit first): its exit takes
        10-30 ms, most of it the kernel removing tap0, killed or not."""
        if self._ready_r is not None and self.process is not None:
            # Spawned, never waited for: the start was broken off (^C while the container
            # set up its root). It may not be watching its exit fd yet: no grace.
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        for fd in (self._ready_r, self._netns):  # never waited for; slirp4netns has its own
            if fd is not None:
                os.close(fd)
        self._ready_r = self._netns = None
        if self._exit_w is not None:
            os.close(self._exit_w)
            self._exit_w = None
        if self.process is not None and self.process.returncode is None and not wait:
            # A bare thread: threading.Thread.start() waits for it to run, ~0.2 ms.
            import _thread

            _thread.start_new_thread(self.process.wait, ())
        elif self.process is not None and self.process.returncode is None:
            try:
                self.process.wait(_STOP_TIMEOUT)
            except TimeoutError:
                self.process.kill()
                self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Slirp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _inheritable_fds(lowest: int) -> list[int]:
    """Our descriptors from ``lowest`` up that an exec would pass on."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= lowest:
            with contextlib.suppress(OSError):  # the listing's own, now closed
                if os.get_inheritable(fd):
                    found.append(fd)
    return found


def _temporary_file() -> IO[bytes]:
    """``tempfile.TemporaryFile()`` (an unnamed file in $TMPDIR or /tmp) without importing
    tempfile, which costs ``soute run`` about 2 ms."""
    try:
        fd = os.open(os.environ.get("TMPDIR") or "/tmp",
                     os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
    except (OSError, AttributeError):  # no O_TMPFILE there: tempfile finds a way
        import tempfile

        return tempfile.TemporaryFile()
    return os.fdopen(fd, "w+b")


def resolv_conf_for_slirp(host_resolv: str | Path = "/etc/resolv.conf") -> bytes:
    """The container's resolv.conf: slirp4netns's DNS forwarder plus the host's
    search/options (``--dns`` and its kin: :func:`resolv_conf_with`).

    The host's nameservers are dropped: from inside they may be unreachable (a 127.0.0.53 stub is
    the host's loopback, which the container cannot reach); slirp4netns forwards to them anyway.
    """
    try:
        text = Path(host_resolv).read_text(errors="replace")
    except OSError:
        text = ""
    kept = [
        line.strip()
        for line in text.splitlines()
        if line.split(maxsplit=1)[:1] in (["search"], ["domain"], ["options"])
    ]
    return "".join(f"{line}\n" for line in [f"nameserver {SLIRP_DNS}", *kept]).encode()


def resolv_conf_with(
    base: bytes,
    *,
    servers: Sequence[str] = (),
    search: Sequence[str] = (),
    options: Sequence[str] = (),
    host_resolv: str | Path = "/etc/resolv.conf",
) -> bytes:
    """The resolv.conf docker writes when ``--dns``, ``--dns-search`` or ``--dns-option`` is
    given: a search line, nameservers, an options line, in that order. Each option replaces
    its part; what is not given comes from ``base`` (the file the container would get
    without them) for nameservers, from the host's file for search domains and options (the
    last such line, as docker reads it). ``--dns-search .`` leaves the search line out."""
    try:
        host = Path(host_resolv).read_text(errors="replace")
    except OSError:
        host = ""
    if not servers:
        servers = [w[1] for w in (line.split() for line in base.decode(errors="replace")
                                  .splitlines()) if w[:1] == ["nameserver"] and len(w) > 1]
    if not search:
        search = _last_line_words(host, "search")
    if not options:
        options = _last_line_words(host, "options")
    lines = []
    if search and " ".join(search).strip() != ".":
        lines.append("search " + " ".join(search))
    lines += [f"nameserver {server}" for server in servers]
    if options and " ".join(options).strip():
        lines.append("options " + " ".join(options))
    return "".join(f"{line}\n" for line in lines).encode()


def _last_line_words(text: str, keyword: str) -> list[str]:
    found: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == [keyword]:
            found = words[1:]
    return found
