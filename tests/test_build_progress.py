"""soute build's progress: BuildKit's plain lines (unchanged) and its live terminal view.

The live view is driven with a fake clock and a StringIO that says it is a terminal, then
real builds run under a pseudo-terminal; a small screen model replays the escapes the view
writes (cursor up, clear line, clear below) to give the screen a user is left with.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from soute.build.progress import INTERVAL, LOG_LINES, Progress, TtyProgress, open_progress
from soute.errors import SouteError

SGR = re.compile(r"\x1b\[[0-9;]*m")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


class Terminal(io.StringIO):
    """What the view writes, from a stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Screen:
    """A terminal as tall as needed: enough of ECMA-48 for what the view writes."""

    CSI = re.compile(r"\x1b\[(\??)([0-9;]*)([A-Za-z])")

    def __init__(self) -> None:
        self.lines: list[str] = [""]
        self.row = 0
        self.col = 0

    def feed(self, data: str) -> Screen:
        i = 0
        while i < len(data):
            ch = data[i]
            if ch == "\x1b":
                m = self.CSI.match(data, i)
                assert m, f"unexpected escape {data[i:i + 8]!r}"
                self._csi(m.group(1), m.group(2), m.group(3))
                i = m.end()
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row += 1
                self.col = 0  # the pty's onlcr, and StringIO's lines
                while len(self.lines) <= self.row:
                    self.lines.append("")
            else:
                line = self.lines[self.row].ljust(self.col)
                self.lines[self.row] = line[: self.col] + ch + line[self.col + 1 :]
                self.col += 1
            i += 1
        return self

    def _csi(self, private: str, args: str, cmd: str) -> None:
        n = int(args) if args.isdigit() else 0
        if private or cmd == "m":
            return  # cursor shown/hidden, colours
        if cmd == "A":
            self.row = max(0, self.row - max(n, 1))
        elif cmd == "K":
            self.lines[self.row] = self.lines[self.row][: self.col]
        elif cmd == "J":
            self.lines[self.row] = self.lines[self.row][: self.col]
            del self.lines[self.row + 1 :]
        else:
            raise AssertionError(f"unexpected escape CSI {args}{cmd}")

    @property
    def text(self) -> list[str]:
        return [line.rstrip() for line in self.lines if line.strip()]


def view(clock: FakeClock, size: tuple[int, int] = (80, 24)) -> tuple[TtyProgress, Terminal]:
    out = Terminal()
    return TtyProgress(out, clock=clock, size=lambda: size, ticker=False), out


def plain_frame(progress: TtyProgress, *, final: bool = False) -> list[str]:
    return [SGR.sub("", line) for line in progress.frame(final=final)]


# ---------------------------------------------------------------------------- plain


def test_plain_lines_are_buildkits() -> None:
    clock = FakeClock()
    out = io.StringIO()
    p = Progress(out, clock=clock)
    p.step("[stage-0 1/3] FROM busybox")
    p.done()
    p.step("[stage-0 2/3] RUN echo hi")
    clock.tick(0.07)
    p.output("hi")
    clock.tick(0.5)
    p.done()
    p.step("[stage-0 3/3] COPY . /app")
    p.cached()
    p.done()
    p.say("[Warning] One or more build-args [X] were not consumed")
    p.close()
    assert out.getvalue() == (
        "#1 [stage-0 1/3] FROM busybox\n#1 DONE 0.0s\n"
        "#2 [stage-0 2/3] RUN echo hi\n#2 0.070 hi\n#2 DONE 0.6s\n"
        "#3 [stage-0 3/3] COPY . /app\n#3 CACHED\n#3 DONE 0.0s\n"
        "[Warning] One or more build-args [X] were not consumed\n"
    )


def test_quiet_says_nothing() -> None:
    p = open_progress(None, "tty")
    p.step("x")
    p.output("y")
    p.done()
    p.close()
    assert p.out is None


# ---------------------------------------------------------------------------- choosing


def test_auto_is_the_live_view_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    live = open_progress(Terminal(), "auto")
    assert isinstance(live, TtyProgress)
    live.close()
    assert type(open_progress(io.StringIO(), "auto")) is Progress
    assert type(open_progress(Terminal(), "plain")) is Progress
    monkeypatch.setenv("TERM", "dumb")
    assert type(open_progress(Terminal(), "auto")) is Progress
    forced = open_progress(Terminal(), "tty")  # asked for: even on a dumb terminal
    assert isinstance(forced, TtyProgress)
    forced.close()


def test_tty_needs_a_terminal() -> None:
    with pytest.raises(SouteError, match="not a terminal"):
        open_progress(io.StringIO(), "tty")
    with pytest.raises(SouteError, match="invalid progress mode"):
        open_progress(io.StringIO(), "rawjson")


# ---------------------------------------------------------------------------- the live view


def test_frame_shows_each_step_and_the_running_steps_last_lines() -> None:
    clock = FakeClock()
    p, _ = view(clock)
    p.step("[stage-0 1/3] FROM busybox")
    p.done()
    p.step("[stage-0 2/3] COPY . /app")
    p.cached()
    p.done()
    p.step("[stage-0 3/3] RUN make")
    for i in range(1, 11):
        p.output(f"line {i}")
    clock.tick(3.24)
    lines = plain_frame(p)
    assert lines[0] == "[+] Building 3.2s (2/3)"
    assert lines[1].startswith(" => [stage-0 1/3] FROM busybox ") and lines[1].endswith(" 0.0s")
    assert lines[2].startswith(" => CACHED [stage-0 2/3] COPY . /app ")
    assert lines[3].startswith(" => [stage-0 3/3] RUN make ") and lines[3].endswith(" 3.2s")
    assert lines[4:] == [f" => => # line {i}" for i in range(11 - LOG_LINES, 11)]
    assert all(len(line) == 79 for line in lines[1:4])  # the timer sits at the right edge
    # the running step's output is dimmed; finished steps are coloured
    raw = p.frame()
    assert raw[4].startswith("\x1b[2m") and raw[1].startswith("\x1b[34m")
    assert not raw[3].startswith("\x1b[")


def test_redraws_in_place_at_most_ten_times_a_second() -> None:
    clock = FakeClock()
    p, out = view(clock)
    p.step("[stage-0 1/2] FROM busybox")  # the first event draws at once
    assert out.getvalue().count("[+] Building") == 1
    p.done()
    p.step("[stage-0 2/2] RUN make")
    for i in range(50):
        p.output(f"line {i}")
        clock.tick(INTERVAL / 10)  # 50 events in half a second
    frames = out.getvalue().count("[+] Building")
    assert 4 <= frames <= 6
    # each frame starts by climbing back over the previous one, then clears what is left
    chunks = out.getvalue().split("\x1b[?25l")[1:]
    heights = [chunk.count("\n") for chunk in chunks]
    for chunk, previous in zip(chunks[1:], heights, strict=False):
        assert chunk.startswith(f"\x1b[{previous}A\r")
    assert all(chunk.endswith("\x1b[J\x1b[?25h") for chunk in chunks)
    assert "\x1b[K\n" in chunks[0]


def test_final_state_is_printed_once_and_stays() -> None:
    clock = FakeClock()
    p, out = view(clock)
    p.step("[stage-0 1/2] FROM busybox")
    p.done()
    p.step("[stage-0 2/2] RUN make")
    p.output("compiling")
    clock.tick(1.0)
    p.done()
    clock.tick(0.5)
    p.close()
    screen = Screen().feed(out.getvalue()).text
    assert screen[0] == "[+] Building 1.5s (2/2) FINISHED"
    assert screen[1].startswith(" => [stage-0 1/2] FROM busybox")
    assert screen[2].startswith(" => [stage-0 2/2] RUN make") and screen[2].endswith(" 1.0s")
    assert len(screen) == 3  # the output of a step that went well is gone
    before = out.getvalue()
    p.close()  # once only
    p.say("writing image sha256:... done")  # after the end: printed below, frame untouched
    assert out.getvalue() == before + "writing image sha256:... done\n"
    assert Screen().feed(out.getvalue()).text[:3] == screen


def test_a_failing_step_keeps_its_whole_output() -> None:
    clock = FakeClock()
    p, out = view(clock)
    p.step("[stage-0 1/2] FROM busybox")
    p.done()
    p.step("[stage-0 2/2] RUN ./build.sh")
    for i in range(1, 21):
        clock.tick(0.01)
        p.output(f"step {i}")
    p.close(SouteError("exit code: 3"))
    screen = Screen().feed(out.getvalue()).text
    assert screen[0].startswith("[+] Building 0.2s (2/2)") and "FINISHED" not in screen[0]
    assert screen[2].startswith(" => ERROR [stage-0 2/2] RUN ./build.sh")
    assert "\x1b[31m => ERROR" in out.getvalue()
    block = screen[3:]
    assert block[0] == "------" and block[1] == " > [stage-0 2/2] RUN ./build.sh:"
    assert block[2:-1] == [f"{i / 100:.3f} step {i}" for i in range(1, 21)]
    assert block[-1] == "------"


def test_an_interrupted_step_is_canceled() -> None:
    clock = FakeClock()
    p, out = view(clock)
    p.step("[stage-0 1/1] RUN sleep 100")
    p.output("zzz")
    p.close(KeyboardInterrupt())
    screen = Screen().feed(out.getvalue()).text
    assert screen[1].startswith(" => CANCELED [stage-0 1/1] RUN sleep 100")
    assert "------" not in screen


def test_the_frame_fits_the_terminal_and_the_final_state_lists_everything() -> None:
    clock = FakeClock()
    p, out = view(clock, size=(60, 12))
    for i in range(1, 31):
        p.step(f"[stage-0 {i}/31] RUN step {i}")
        clock.tick(INTERVAL)
        p.done()
    p.step("[stage-0 31/31] RUN last")
    for i in range(20):
        p.output(f"out {i}")
    clock.tick(INTERVAL)
    lines = plain_frame(p)
    assert len(lines) == 11  # one less than the terminal: the cursor can climb back
    assert lines[-LOG_LINES - 1].startswith(" => [stage-0 31/31] RUN last")
    assert lines[-1] == " => => # out 19"
    assert all(len(line) < 60 for line in lines)
    p.done()
    p.close()
    screen = Screen().feed(out.getvalue()).text
    assert screen[0].endswith("(31/31) FINISHED") and len(screen) == 32


def test_long_titles_and_odd_output_are_cut_to_the_terminal() -> None:
    clock = FakeClock()
    p, _ = view(clock, size=(40, 24))
    p.step("[stage-0 1/1] RUN " + "x" * 200)
    p.output("\x1b[31mred\x1b[0m\tand a tab")
    p.output("progress 10%\rprogress 100%")
    lines = plain_frame(p)
    assert len(lines[1]) == 39 and lines[1].endswith(" 0.0s")
    assert lines[2:] == [" => => # red    and a tab", " => => # progress 100%"]


def test_messages_go_above_the_frame() -> None:
    clock = FakeClock()
    p, out = view(clock)
    p.step("[stage-0 1/2] FROM debian:bookworm")
    assert p.out is not None
    p.out.write("Unable to find image 'debian:bookworm' locally\n")
    p.out.write("bookworm: Pulling from ")  # whole lines only
    p.out.write("library/debian\n")
    clock.tick(INTERVAL)
    p.say("WARN: JSONArgsRecommended: ... (line 3)")
    clock.tick(INTERVAL)
    p.done()
    p.close()
    screen = Screen().feed(out.getvalue()).text
    assert screen[:3] == [
        "Unable to find image 'debian:bookworm' locally",
        "bookworm: Pulling from library/debian",
        "WARN: JSONArgsRecommended: ... (line 3)",
    ]
    assert screen[3].startswith("[+] Building") and len(screen) == 5


# ---------------------------------------------------------------------------- real builds


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store")
    p = subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(path),
                        "bootstrap", "busybox"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return path


def under_pty(store: Path, *args: str, term: str = "xterm") -> tuple[int, str]:
    """Run soute with a pseudo-terminal (100x30) as its stdin, stdout and stderr."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
            env = {**os.environ, "TERM": term}
            env.pop("NO_COLOR", None)
            os.execve(sys.executable, [sys.executable, "-m", "soute.cli.main", "--root",
                                       str(store), *args], env)
        finally:
            os._exit(127)
    data = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        if not ready:
            os.kill(pid, 9)
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child is gone and the pty closed
            break
        if not chunk:
            break
        data += chunk
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), data.decode("utf-8", "replace")


DOCKERFILE = "FROM busybox\nRUN echo hello from run\nCOPY . /app\nCMD [\"sh\"]\n"


def test_a_build_on_a_terminal_shows_the_live_view(store: Path, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    code, raw = under_pty(store, "build", "-t", "live", str(tmp_path))
    assert code == 0, raw
    assert "\x1b[" in raw and "#1 " not in raw
    screen = Screen().feed(raw).text
    assert re.fullmatch(r"\[\+\] Building \d+\.\ds \(4/4\) FINISHED", screen[0]), screen
    assert [line.split("  ")[0] for line in screen[1:5]] == [
        " => [stage-0 1/4] FROM busybox",
        " => [stage-0 2/4] RUN echo hello from run",
        " => [stage-0 3/4] COPY . /app",
        ' => [stage-0 4/4] CMD ["sh"]',
    ]
    assert screen[5].startswith("writing image sha256:")
    assert screen[6] == "naming to live:latest done"

    code, raw = under_pty(store, "build", "-t", "live", str(tmp_path))
    assert code == 0, raw
    screen = Screen().feed(raw).text
    assert screen[2].startswith(" => CACHED [stage-0 2/4] RUN echo hello from run ")
    assert screen[3].startswith(" => CACHED [stage-0 3/4] COPY . /app ")


def test_plain_progress_on_a_terminal_stays_plain(store: Path, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    code, raw = under_pty(store, "build", "--progress", "plain", "-t", "plain", str(tmp_path))
    assert code == 0, raw
    assert "\x1b[" not in raw
    lines = raw.replace("\r\n", "\n").splitlines()
    assert lines[:3] == ["#1 [stage-0 1/4] FROM busybox", "#1 DONE 0.0s",
                         "#2 [stage-0 2/4] RUN echo hello from run"]
    code, dumb = under_pty(store, "build", "-t", "plain", str(tmp_path), term="dumb")
    assert code == 0 and "\x1b[" not in dumb and "#2 CACHED" in dumb


def test_a_failing_build_on_a_terminal_keeps_the_steps_output(store: Path,
                                                              tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\nRUN echo one; echo two >&2; exit 3\n")
    code, raw = under_pty(store, "build", str(tmp_path))
    assert code == 1
    screen = Screen().feed(raw).text
    assert screen[2].startswith(" => ERROR [stage-0 2/2] RUN echo one; echo two >&2; exit 3")
    assert screen[3:5] == ["------", " > [stage-0 2/2] RUN echo one; echo two >&2; exit 3:"]
    assert [line.split(" ", 1)[1] for line in screen[5:7]] == ["one", "two"]
    assert screen[7] == "------"
    assert screen[-1].endswith("did not complete successfully: exit code: 3 (the command's "
                               "output is above)")
