"""Moving bytes between a container and the user: pipes or a pseudo-terminal, to the log and
to our own standard streams.

A pump thread per stream copies until EOF. With a terminal, ours is put in raw mode (the
container's line discipline does the editing and ^C), and its size follows ours (SIGWINCH).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from soute._threads import start_thread

Sink = Callable[[bytes], None]


def pump(source: int, sinks: list[Sink], *, close: bool = True) -> threading.Thread:
    """Copy ``source`` to each sink until EOF (or EIO: a pty whose other side is gone)."""

    def run() -> None:
        try:
            while True:
                try:
                    data = os.read(source, 65536)
                except OSError as exc:
                    if exc.errno == errno.EINTR:
                        continue
                    break  # EIO: every slave descriptor is closed
                if not data:
                    break
                for sink in sinks:
                    with contextlib.suppress(OSError, ValueError):
                        sink(data)
        finally:
            if close:
                with contextlib.suppress(OSError):
                    os.close(source)

    return start_thread(run, f"pump-{source}")


def fd_writer(fd: int) -> Sink:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return write


def feed(source: int, target: int, *, close_target: bool = True) -> threading.Thread:
    """Copy our stdin to the container's (a pipe or the pty master): a daemon thread, so a
    user who never types does not keep us alive."""

    def run() -> None:
        try:
            while data := os.read(source, 65536):
                fd_writer(target)(data)
        except OSError:
            pass
        finally:
            if close_target:
                with contextlib.suppress(OSError):
                    os.close(target)

    return start_thread(run, "stdin")


def window_size(fd: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    except OSError:
        return None


def set_window_size(fd: int, size: bytes | None) -> None:
    if size is not None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, size)


@contextmanager
def terminal_session(master: int, user_fd: int = 0) -> Iterator[None]:
    """Our terminal in raw mode with its size copied to the pty ``master``, restored after;
    a no-op when ``user_fd`` is not a terminal."""
    if not os.isatty(user_fd):
        yield
        return
    import tty  # only now: a run without a terminal has no use for it

    set_window_size(master, window_size(user_fd))
    saved = termios.tcgetattr(user_fd)
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: no resize forwarding
        previous = signal.signal(
            signal.SIGWINCH, lambda *_: set_window_size(master, window_size(user_fd)))
    tty.setraw(user_fd)
    try:
        yield
    finally:
        termios.tcsetattr(user_fd, termios.TCSADRAIN, saved)
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)


def open_pty() -> tuple[int, int]:
    """(master, slave), the master close-on-exec so the container only gets the slave."""
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    return master, slave
