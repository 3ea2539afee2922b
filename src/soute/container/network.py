"""Outbound networking for a container through slirp4netns (user-mode TCP/IP, no bridge).

slirp4netns puts a tap0 device in the container's network namespace (10.0.2.100/24, gateway
10.0.2.2, DNS forwarder 10.0.2.3) and turns its traffic into ordinary sockets on the host.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO

from soute.errors import SouteError

__all__ = [
    "SLIRP_DNS",
    "SLIRP_GATEWAY",
    "SLIRP_GUEST_IP",
    "Slirp",
    "available",
    "resolv_conf_for_slirp",
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
    return shutil.which(binary) is not None


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
        self.process: subprocess.Popen[bytes] | None = None
        self._exit_w: int | None = None
        self._log: IO[bytes] | None = None

    def available(self) -> bool:
        """Whether this instance's slirp4netns binary is on PATH."""
        return available(self.binary)

    def command(self, pid: int, ready_fd: int, exit_fd: int) -> list[str]:
        """The slirp4netns command line for the network namespace of ``pid``."""
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
        return [*argv, str(pid), "tap0"]

    def start(self, pid: int) -> None:
        """Starts slirp4netns for ``pid``'s network namespace; returns once tap0 is configured."""
        if self.process is not None:
            raise RuntimeError("Slirp.start() is called once")
        binary = shutil.which(self.binary)
        if binary is None:
            raise SouteError(
                f"{self.binary} not found: it is needed for the container's network",
                "install slirp4netns, or run with --network none",
            )
        if pid <= 0 or not os.path.exists(f"/proc/{pid}/ns/net"):
            raise SouteError(f"cannot set up the network of process {pid}: no such process")
        # ready: slirp4netns writes "1" once tap0 is up; exit: it quits when we close our end
        # (so also when this process dies).
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
        # A file, not a pipe: a pipe nobody reads would block slirp4netns once full.
        self._log = _temporary_file()
        try:
            self.process = subprocess.Popen(
                self.command(pid, ready_w, exit_r),
                executable=binary,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                pass_fds=(ready_w, exit_r),  # and nothing else: close_fds stays on
                start_new_session=True,  # a ^C at the terminal is for the container, not it
            )
        except OSError as err:
            for fd in (ready_r, ready_w, exit_r, exit_w):
                os.close(fd)
            self._close_log()
            raise SouteError(f"cannot run {self.binary}: {err.strerror}") from None
        os.close(ready_w)  # only the child's copy left: EOF on ready_r means it died
        os.close(exit_r)
        self._exit_w = exit_w
        try:
            self._wait_ready(ready_r, pid)
        except BaseException:
            # Not ready means broken: no point in a graceful exit.
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.stop()
            raise
        finally:
            os.close(ready_r)

    def _wait_ready(self, ready_r: int, pid: int) -> None:
        deadline = time.monotonic() + self.ready_timeout
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
            with contextlib.suppress(subprocess.TimeoutExpired):
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
        about 30 ms, most of it the kernel removing tap0, killed or not."""
        if self._exit_w is not None:
            os.close(self._exit_w)
            self._exit_w = None
        if self.process is not None and self.process.returncode is None and not wait:
            import threading

            threading.Thread(target=self.process.wait, name="slirp-reaper", daemon=True).start()
        elif self.process is not None and self.process.returncode is None:
            try:
                self.process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
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
    """The container's resolv.conf: slirp4netns's DNS forwarder plus the host's search/options.

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
