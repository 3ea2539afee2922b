"""How a build shows its progress: BuildKit's plain lines, or its live terminal view.

The engine talks to one small interface, :class:`Progress`: for each step ``step(title)``,
then ``output(line)`` (from the thread that reads the command's output) while it runs,
``cached()`` when the step is reused, and ``done()`` when it is over; ``say(line)`` for a
message between steps; ``out`` for code that writes whole lines itself (pulls); and
``close(error)`` once the build is over.

Stages built at the same time each get a *lane* (:meth:`Progress.lane`): the same interface,
with a running step of its own, so that steps of several stages run side by side. A thread
that works for a lane binds it (:meth:`Progress.bound`); the plain calls on the
:class:`Progress` then go to that lane, and :meth:`Progress.current` is the object to hand
to another thread (the one that reads a RUN's output). A lane's step ends with ``done()``,
``fail()`` (its output is kept for the error report) or ``cancel()`` (another stage failed).

:class:`Progress` itself is BuildKit's plain output (``#N [stage k/n] ...``, ``#N DONE 0.1s``).
:class:`TtyProgress` is its live view (``--progress tty``): a ``[+] Building 3.2s (4/6)``
header, one ``=> [stage k/n] ...  1.2s`` line per step, the last lines of the running step's
output below it, redrawn in place at most ten times a second; the final state is printed
once, and a failing step's whole output stays on the screen.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TextIO, cast

from soute._threads import start_without_signals
from soute.errors import SouteError

Clock = Callable[[], float]

MODES = ("auto", "plain", "tty")
LOG_LINES = 6  # lines of the running step's output shown (BuildKit's default)
INTERVAL = 0.1  # seconds between redraws, at most

# ANSI escapes (ECMA-48): what the live view needs, nothing more.
_UP = "\x1b[{}A"  # cursor up N lines
_CLEAR_EOL = "\x1b[K"  # clear to the end of the line
_CLEAR_DOWN = "\x1b[J"  # clear to the end of the screen
_HIDE, _SHOW = "\x1b[?25l", "\x1b[?25h"
_RESET = "\x1b[0m"
_BLUE, _RED, _YELLOW, _FAINT = "\x1b[34m", "\x1b[31m", "\x1b[33m", "\x1b[2m"
# What a command may print that would move the cursor or change colours in our frame.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


class _Plain:
    """A running step of the plain view: its number and when it began."""

    __slots__ = ("n", "started")

    def __init__(self, n: int, started: float) -> None:
        self.n = n
        self.started = started


class Progress:
    """BuildKit's plain progress: ``#N [stage k/n] INSTRUCTION``, output, ``#N DONE 0.1s``.

    Steps of stages that run at the same time interleave, each line prefixed by its step's
    number, as in BuildKit's plain output; a step stopped because another one failed ends
    with ``#N CANCELED``.
    """

    def __init__(self, out: TextIO | None, *, clock: Clock = time.monotonic) -> None:
        self.out = out
        self.n = 0  # steps started so far
        self._clock = clock
        self._lock = threading.RLock()  # steps start and lines are written from many threads
        self._local = threading.local()
        self._main: _Lane | None = None

    # -- lanes

    def lane(self) -> _Lane:
        """A new lane: the view of one stage built alongside others."""
        return _Lane(self)

    @contextmanager
    def bound(self, lane: _Lane) -> Iterator[None]:
        """Send this thread's plain calls (``step``, ``output``...) to ``lane``."""
        saved = getattr(self._local, "lane", None)
        self._local.lane = lane
        try:
            yield
        finally:
            self._local.lane = saved

    def current(self) -> Progress:
        """The lane this thread works for (the main one unless :meth:`bound`)."""
        lane: _Lane | None = getattr(self._local, "lane", None)
        if lane is not None:
            return lane
        with self._lock:
            if self._main is None:
                self._main = _Lane(self)
            return self._main

    # -- the interface, for the calling thread's lane

    def step(self, title: str) -> None:
        self.current().step(title)

    def output(self, line: str) -> None:
        self.current().output(line)

    def cached(self) -> None:
        self.current().cached()

    def done(self) -> None:
        self.current().done()

    def say(self, line: str) -> None:
        if self.out is not None:
            with self._lock:
                self.out.write(line + "\n")
                self.out.flush()

    def close(self, error: BaseException | None = None) -> None:
        """The build is over (``error``: why it failed). Plain lines need no ending, but a
        step of the calling thread that an interrupt stopped ends CANCELED, as BuildKit
        shows it (stages in threads cancel their own)."""
        if isinstance(error, KeyboardInterrupt) and self._main is not None:
            self._main.cancel()

    # -- what a lane asks of the view; the live view draws the same events its way

    def _begin(self, title: str) -> object:
        with self._lock:
            self.n += 1
            step = _Plain(self.n, self._clock())
            self.say(f"#{step.n} {title}")
            return step

    def _log(self, step: object, line: str) -> None:
        assert isinstance(step, _Plain)
        self.say(f"#{step.n} {self._clock() - step.started:.3f} {line}")

    def _mark_cached(self, step: object) -> None:
        assert isinstance(step, _Plain)
        self.say(f"#{step.n} CACHED")

    def _end(self, step: object, outcome: str) -> None:
        """``outcome``: done, failed (the error says it, after the build) or canceled."""
        assert isinstance(step, _Plain)
        if outcome == "done":
            self.say(f"#{step.n} DONE {self._clock() - step.started:.1f}s")
        elif outcome == "canceled":
            self.say(f"#{step.n} CANCELED")


class _Lane(Progress):
    """One stage's view of a shared :class:`Progress`: its own running step."""

    def __init__(self, root: Progress) -> None:  # no stream of its own: no super().__init__
        self._root = root
        self._step: object | None = None  # the running step
        self._last: object | None = None  # the latest one: late output still goes there

    @property  # type: ignore[override]
    def out(self) -> TextIO | None:
        return self._root.out

    @property  # type: ignore[override]
    def n(self) -> int:
        return self._root.n

    def lane(self) -> _Lane:
        return self._root.lane()

    def bound(self, lane: _Lane) -> AbstractContextManager[None]:
        return self._root.bound(lane)

    def current(self) -> Progress:
        return self

    def step(self, title: str) -> None:
        self._step = self._last = self._root._begin(title)

    def output(self, line: str) -> None:
        step = self._step if self._step is not None else self._last
        if step is not None:
            self._root._log(step, line)

    def cached(self) -> None:
        if self._step is not None:
            self._root._mark_cached(self._step)

    def done(self) -> None:
        self._finish("done")

    def fail(self) -> None:
        """The running step failed: the view keeps its output for the error report."""
        self._finish("failed")

    def cancel(self) -> None:
        """The running step was stopped because the build is ending (another stage failed,
        or an interrupt)."""
        self._finish("canceled")

    def _finish(self, outcome: str) -> None:
        step, self._step = self._step, None
        if step is not None:
            self._root._end(step, outcome)

    def say(self, line: str) -> None:
        self._root.say(line)

    def close(self, error: BaseException | None = None) -> None:
        """Only the shared view is closed."""


def open_progress(stream: TextIO | None, mode: str = "auto") -> Progress:
    """The view ``--progress MODE`` asks for on ``stream`` (None: quiet).

    ``auto`` is the live view when the stream is a terminal (and ``TERM`` is not ``dumb``),
    plain lines otherwise; ``tty`` insists on a terminal, as BuildKit does.
    """
    if mode not in MODES:
        raise SouteError(f"invalid progress mode {mode!r}", "use auto, plain or tty")
    if stream is None or mode == "plain":
        return Progress(stream)
    terminal = _isatty(stream)
    if mode == "tty" and not terminal:
        raise SouteError(
            "--progress tty: standard error is not a terminal", "use --progress plain or auto"
        )
    if terminal and (mode == "tty" or os.environ.get("TERM", "") != "dumb"):
        return TtyProgress(stream)
    return Progress(stream)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real stream
        return False


# ---------------------------------------------------------------------------- the live view


@dataclass
class _Step:
    title: str
    started: float
    ended: float | None = None
    cached: bool = False
    failed: bool = False
    canceled: bool = False
    # (seconds into the step, line): kept until the step ends, all of it, so that a failing
    # step's output can be shown whole.
    logs: list[tuple[float, str]] = field(default_factory=list)


class _Above(io.TextIOBase):
    """A stream whose whole lines are printed above the live view (pull progress)."""

    def __init__(self, view: TtyProgress) -> None:
        self._view = view
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._view._lock:  # pulls write from several threads
            text = self._partial + s
            *lines, self._partial = text.split("\n")
            for line in lines:
                self._view.say(line)
        return len(s)


class TtyProgress(Progress):
    """BuildKit's live terminal view of the steps, redrawn in place.

    Several steps may run at once (stages built side by side): each shows its last lines of
    output under it.

    ``clock``, ``size`` (columns, lines) and ``ticker`` are for tests: without the ticker
    thread nothing is redrawn between events, so a test drives every frame itself.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        clock: Clock = time.monotonic,
        size: Callable[[], tuple[int, int]] | None = None,
        ticker: bool = True,
        color: bool | None = None,
    ) -> None:
        super().__init__(out, clock=clock)
        self._stream = out
        self.out = cast(TextIO, _Above(self))
        self._size = size or (lambda: _terminal_size(out))
        self._color = (not os.environ.get("NO_COLOR")) if color is None else color
        self._t0 = clock()
        self._steps: list[_Step] = []
        self._running: list[_Step] = []  # in the order they started
        self._drawn = 0  # lines of the frame on the screen, the cursor just below them
        self._last_draw: float | None = None
        self._dirty = False
        self._closed = False
        self._ticker = ticker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the lanes say

    def _begin(self, title: str) -> object:
        with self._lock:
            self.n += 1
            step = _Step(title, self._clock())
            self._steps.append(step)
            self._running.append(step)
            self._changed()
            if self._ticker and self._thread is None:
                self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
                start_without_signals(self._thread)
        return step

    def say(self, line: str) -> None:
        with self._lock:
            self._erase()
            self._stream.write(line + "\n")
            self._stream.flush()
            self._changed()  # the frame comes back below the message

    def _log(self, step: object, line: str) -> None:
        assert isinstance(step, _Step)
        with self._lock:
            if step.ended is not None:
                return
            step.logs.append((self._clock() - step.started, _printable(line)))
            self._changed()

    def _mark_cached(self, step: object) -> None:
        assert isinstance(step, _Step)
        with self._lock:
            step.cached = True
            self._changed()

    def _end(self, step: object, outcome: str) -> None:
        assert isinstance(step, _Step)
        with self._lock:
            if step.ended is not None:
                return
            step.ended = self._clock()
            if outcome == "failed":
                step.failed = True  # its whole output stays, for the error report
            else:
                step.canceled = outcome == "canceled"
                step.logs = []  # a step that went well keeps no output
            if step in self._running:
                self._running.remove(step)
            self._changed()

    def close(self, error: BaseException | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Steps the error stopped: the latest one failed unless a stage said which did;
            # the others (and all of them on an interrupt) were canceled.
            stopped, self._running = self._running, []
            blamed = any(s.failed for s in self._steps)
            for step in reversed(stopped):
                step.ended = self._clock()
                if isinstance(error, KeyboardInterrupt):
                    step.canceled = True
                elif error is not None and not blamed:
                    step.failed = blamed = True
                elif error is not None:
                    step.canceled = True
            if self._steps:
                self._draw(final=True)
                self._drawn = 0  # the final frame stays: later lines go below it
            for step in self._steps:
                if step.failed:
                    # BuildKit's error logs: the failing step's whole output, under its title.
                    lines = ["------", f" > {step.title}:"]
                    lines += [f"{_stamp(t)} {text}" for t, text in step.logs]
                    lines.append("------")
                    self._stream.write("".join(line + "\n" for line in lines))
            self._stream.flush()

    # -- drawing

    def _changed(self) -> None:
        """Redraw now unless the last frame is less than INTERVAL old (the ticker will)."""
        if self._closed or not self._steps:  # no frame before the first step
            return
        now = self._clock()
        if self._last_draw is None or now - self._last_draw >= INTERVAL:
            self._draw()
        else:
            self._dirty = True

    def _tick(self) -> None:
        while not self._stop.wait(INTERVAL):
            with self._lock:
                # a running step's timer moves: redraw even when nothing else changed
                if not self._closed and (self._dirty or self._running):
                    self._draw()

    def _erase(self) -> None:
        """Take the frame off the screen, the cursor where it began."""
        if self._drawn:
            self._stream.write(_UP.format(self._drawn) + "\r" + _CLEAR_DOWN)
            self._drawn = 0

    def _draw(self, *, final: bool = False) -> None:
        lines = self.frame(final=final)
        parts = [_HIDE]
        if self._drawn:
            parts.append(_UP.format(self._drawn))
        parts.append("\r")
        parts += [line + _CLEAR_EOL + "\n" for line in lines]
        parts += [_CLEAR_DOWN, _SHOW]
        self._stream.write("".join(parts))
        self._stream.flush()
        self._drawn = len(lines)
        self._last_draw = self._clock()
        self._dirty = False

    def frame(self, *, final: bool = False) -> list[str]:
        """The lines of the view as it stands, with their colours.

        While the build runs, the frame fits the terminal's height (the oldest steps give way,
        so the cursor can always climb back to its top); the final frame lists every step.
        """
        width, height = self._size()
        width = max(width, 20)
        now = self._clock()
        done = sum(1 for s in self._steps if s.ended is not None)
        header = f"[+] Building {now - self._t0:.1f}s ({done}/{len(self._steps)})"
        if final and self._steps and done == len(self._steps) and not self._failed():
            header += " FINISHED"
        lines = [header[: width - 1]]
        steps = self._steps
        logs: dict[int, list[str]] = {}  # id(step): the lines shown under a running step
        if not final:
            budget = max(height - 1, 1) - 1  # lines under the header
            room = max(0, budget - min(len(steps), 4))
            # The running steps share the room for output (all of it for one step).
            share = room // len(self._running) if self._running else 0
            for step in self._running:
                shown = [text for _, text in step.logs if text.strip()]
                logs[id(step)] = shown[-min(LOG_LINES, share):] if share else []
            kept: list[_Step] = []
            used = 0
            for step in reversed(steps):  # the newest steps first; the oldest give way
                need = 1 + len(logs.get(id(step), ()))
                if used + need > budget:
                    break
                kept.append(step)
                used += need
            steps = kept[::-1]
        for step in steps:
            lines.append(self._step_line(step, width, now))
            for text in logs.get(id(step), ()):
                lines.append(_FAINT + f" => => # {text}"[: width - 1] + _RESET)
        return lines

    def _failed(self) -> bool:
        return any(s.failed or s.canceled for s in self._steps)

    def _step_line(self, step: _Step, width: int, now: float) -> str:
        seconds = (step.ended if step.ended is not None else now) - step.started
        timer = f"{seconds if seconds >= 0.05 else 0.0:.1f}s"
        name = step.title.replace("\t", " ")
        if step.failed:
            name = "ERROR " + name
        elif step.canceled:
            name = "CANCELED " + name
        if step.cached:
            name = "CACHED " + name
        prefix = " => "
        room = width - 1 - len(prefix) - len(timer) - 1
        text = (prefix + name[: max(room, 0)]).ljust(width - 1 - len(timer)) + timer
        if step.ended is None or not self._color:
            return text
        colour = _RED if step.failed else _YELLOW if step.canceled else _BLUE
        return colour + text + _RESET


def _stamp(seconds: float) -> str:
    """BuildKit's time prefix of an output line: 3 decimals under 10s, 2 under 100s."""
    return f"{seconds:.{3 if seconds < 10 else 2 if seconds < 100 else 1}f}"


def _printable(line: str) -> str:
    """One line of a command's output as the frame can show it: what a carriage return
    overwrote is gone (progress bars), escapes and control characters are dropped."""
    line = line.rstrip("\r").rsplit("\r", 1)[-1].replace("\t", "    ")
    return _CONTROL.sub("", line)


def _terminal_size(stream: TextIO) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 80, 24
    return (size.columns or 80), (size.lines or 24)
