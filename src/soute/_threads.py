"""Helper threads that leave every signal to the main thread.

soute's signal handlers (passing SIGINT, SIGTERM... on to a container or a RUN, copying our
terminal's size on SIGWINCH, ^C) are Python handlers, which run only in the main thread; that
thread spends a container's or a RUN's life in ``waitpid``. The kernel hands a signal sent to the
process to any thread that does not block it: to a pump blocked in ``read``, say. The main
thread then never wakes for it, and the handler waits until the container ends. A helper
thread started here blocks them, so the kernel picks the main thread, whose ``waitpid`` is
interrupted, the handler runs, and the wait goes on (PEP 475).

A process forked from such a thread inherits the mask too: the runtime's children clear it
before they exec (``runtime.executor._common_setup``); anything else forked there must. So
a build's stage threads, which fork copies, git and ssh, are not started here.
"""

from __future__ import annotations

import signal
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# Faults stay deliverable: blocked, a fault in the thread itself would kill the process
# without a handler's say (and SIGKILL and SIGSTOP cannot be blocked anyway).
_BLOCKED = signal.valid_signals() - {
    signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP,
    signal.SIGKILL, signal.SIGSTOP,
}


def start_thread(target: Callable[..., object], name: str, args: tuple[object, ...] = ()
                 ) -> threading.Thread:
    """Start a daemon thread that takes no signal (nor do the threads it starts)."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    start_without_signals(thread)
    return thread


def start_without_signals(thread: threading.Thread) -> None:
    """``thread.start()``, the thread taking no signal (nor the threads it starts)."""
    # A thread starts with its creator's mask: block, start, restore. A signal arriving
    # meanwhile waits, and goes to the main thread once restored here.
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)
