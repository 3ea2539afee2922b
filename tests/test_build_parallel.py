"""Stages that do not depend on each other are built at the same time (issue 4, section 5).

Real builds into a busybox store. Concurrency is proven from inside the RUNs (the times they
record, files they wait for), never from how long the build took; a build with
SOUTE_BUILD_JOBS=1 is the sequential reference it must match.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soute.build.progress import Progress
from soute_cli import busybox_store, ok, soute, threads_of
from test_build_progress import FakeClock, Screen, plain_frame, view

JOBS = {"SOUTE_BUILD_JOBS": "2"}  # whatever the machine's CPUs, two stages at once
STEP = re.compile(r"#(\d+) (.*)")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_store(tmp_path_factory)


def read_file(root: Path, image_id: str, path: str) -> str:
    """A file of a stored image, from its topmost snapshot holding it."""
    from soute.store.store import Store

    with Store(root) as store:
        image = store.image(image_id)
        for snapshot in reversed(store.snapshots(image.diff_ids)):
            if (snapshot / path).is_file():
                return (snapshot / path).read_text()
    raise AssertionError(f"{path} not in {image_id}")


def build(root: Path, tmp_path: Path, dockerfile: str, *args: str,
          env: dict[str, str] | None = None, name: str = "iid",
          ) -> tuple[subprocess.CompletedProcess[str], str | None]:
    """``soute build --progress plain`` of ``dockerfile``: the process and the image ID."""
    iid = tmp_path / name
    iid.unlink(missing_ok=True)
    p = soute(root, "build", "--progress", "plain", "--iidfile", str(iid), *args, "-",
              input=dockerfile, env={**JOBS, **(env or {})}, timeout=300)
    return p, iid.read_text() if iid.exists() else None


def steps(stderr: str) -> dict[int, list[str]]:
    """The plain progress by step: ``#N`` -> its lines, in order (the prefix taken off)."""
    out: dict[int, list[str]] = {}
    for line in stderr.splitlines():
        m = STEP.fullmatch(line)
        if m:
            out.setdefault(int(m.group(1)), []).append(m.group(2))
    return out


def titled(stderr: str, text: str) -> list[int]:
    """The numbers of the steps whose title holds ``text``."""
    return [n for n, lines in steps(stderr).items() if text in lines[0]]


def leftovers(marker: str) -> list[str]:
    """Command lines of processes that still hold ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline and str(os.getpid()) != entry.name:
                found.append(cmdline)
    return found


def assert_store_clean(root: Path) -> None:
    """fsck finds nothing, and nothing was left half-made in the store's tmp/."""
    out = ok(soute(root, "fsck"))
    assert out.strip().endswith(" 0 problem(s)"), out
    assert "temporary" not in out, (out, list((root / "tmp").iterdir()))


def cache_dir(root: Path, cache_id: str) -> Path:
    """The host directory of ``RUN --mount=type=cache,id=ID`` (how run.py names it)."""
    return root / "cache" / "mounts" / hashlib.sha256(cache_id.encode()).hexdigest()


# ---------------------------------------------------------------------------- concurrency

TIMED = """\
FROM busybox AS a
RUN cut -d' ' -f1 /proc/uptime > /start; sleep 2; cut -d' ' -f1 /proc/uptime > /end; echo a
FROM busybox AS b
RUN cut -d' ' -f1 /proc/uptime > /start; sleep 2; cut -d' ' -f1 /proc/uptime > /end; echo b
FROM busybox
COPY --from=a /start /a.start
COPY --from=a /end /a.end
COPY --from=b /start /b.start
COPY --from=b /end /b.end
"""


def test_independent_stages_run_at_the_same_time(root: Path, tmp_path: Path) -> None:
    p, iid = build(root, tmp_path, TIMED, "--no-cache")
    assert p.returncode == 0 and iid, p.stderr
    a = [float(read_file(root, iid, f"a.{e}")) for e in ("start", "end")]
    b = [float(read_file(root, iid, f"b.{e}")) for e in ("start", "end")]
    assert a[1] - a[0] >= 1.9 and b[1] - b[0] >= 1.9  # each slept its 2 seconds...
    assert a[0] < b[1] and b[0] < a[1], (a, b)  # ...while the other one was running


def test_one_job_builds_the_stages_one_after_the_other(root: Path, tmp_path: Path) -> None:
    p, iid = build(root, tmp_path, TIMED, "--no-cache", env={"SOUTE_BUILD_JOBS": "1"})
    assert p.returncode == 0 and iid, p.stderr
    a = [float(read_file(root, iid, f"a.{e}")) for e in ("start", "end")]
    b = [float(read_file(root, iid, f"b.{e}")) for e in ("start", "end")]
    assert a[1] <= b[0], (a, b)  # in the file's order, as before
    # and the plain progress is the sequential one: each step over before the next
    numbers = [int(STEP.fullmatch(line).group(1))  # type: ignore[union-attr]
               for line in p.stderr.splitlines() if STEP.fullmatch(line)]
    assert numbers == sorted(numbers)


def test_bad_job_counts_are_refused(root: Path) -> None:
    p = soute(root, "build", "-", input="FROM busybox\n", env={"SOUTE_BUILD_JOBS": "zero"})
    assert p.returncode == 1 and "invalid SOUTE_BUILD_JOBS 'zero'" in p.stderr


# ---------------------------------------------------------------------------- same result

GRAPH = """\
ARG BASE=busybox
FROM ${BASE} AS tools
WORKDIR /src
RUN echo tool > tool.txt && mkdir -p /out && cp tool.txt /out/
FROM busybox AS left
ARG WHO=left
RUN echo "$WHO" > /who && sleep 1
COPY --from=tools /out/tool.txt /from-tools
FROM tools AS right
RUN --mount=from=left,target=/l cat /l/who > /seen-left
RUN echo right > /who && sleep 1
FROM busybox AS other
WORKDIR /src
RUN echo other > /who
FROM busybox
ENV FINAL=1
COPY --from=left /who /left
COPY --from=right /who /right
COPY --from=right /seen-left /seen-left
COPY --from=other /who /other
COPY --from=tools /out /out
LABEL done=yes
"""


def test_the_image_is_the_one_a_sequential_build_makes(root: Path, tmp_path: Path) -> None:
    epoch = {"SOURCE_DATE_EPOCH": "1700000000"}
    p1, sequential = build(root, tmp_path, GRAPH, "--no-cache",
                           env={**epoch, "SOUTE_BUILD_JOBS": "1"}, name="seq")
    assert p1.returncode == 0 and sequential, p1.stderr
    p2, parallel = build(root, tmp_path, GRAPH, "--no-cache", env=epoch, name="par")
    assert p2.returncode == 0 and parallel, p2.stderr
    assert parallel == sequential  # config, history, layers: the same image
    assert read_file(root, parallel, "seen-left") == "left\n"
    # The same cache keys: a sequential build after it runs nothing.
    p3, again = build(root, tmp_path, GRAPH, env={**epoch, "SOUTE_BUILD_JOBS": "1"})
    assert p3.returncode == 0 and again == sequential, p3.stderr
    assert all(lines[1] == "CACHED" for lines in steps(p3.stderr).values()
               if " RUN " in lines[0] or " COPY " in lines[0]), p3.stderr


def test_a_stage_read_twice_is_built_once(root: Path, tmp_path: Path) -> None:
    dockerfile = """\
FROM busybox AS src
RUN echo built-once > /artifact
FROM busybox AS x
COPY --from=src /artifact /x
FROM busybox AS y
COPY --from=src /artifact /y
RUN --mount=from=src,target=/s cat /s/artifact
FROM busybox
COPY --from=x /x /x
COPY --from=y /y /y
COPY --from=src /artifact /again
"""
    p, iid = build(root, tmp_path, dockerfile, "--no-cache")
    assert p.returncode == 0 and iid, p.stderr
    assert len(titled(p.stderr, "[src 2/2] RUN echo built-once")) == 1, p.stderr
    assert len(titled(p.stderr, "[src 1/2] FROM busybox")) == 1
    assert read_file(root, iid, "again") == "built-once\n"


def test_a_stage_an_onbuild_trigger_reads_is_waited_for(root: Path, tmp_path: Path) -> None:
    """The plan cannot see that a base image's ONBUILD trigger reads a stage: the stage
    building on it waits for that one, and the image is a sequential build's."""
    ok(soute(root, "build", "-q", "-t", "par-onbuild", "-",
             input="FROM busybox\nONBUILD COPY --from=builder /built /from-trigger\n"))
    dockerfile = """\
FROM busybox AS builder
RUN sleep 1; echo made > /built
FROM par-onbuild AS user
RUN cat /from-trigger > /seen
FROM busybox
COPY --from=user /seen /seen
COPY --from=builder /built /built
"""
    epoch = {"SOURCE_DATE_EPOCH": "1700000002"}
    p1, sequential = build(root, tmp_path, dockerfile, "--no-cache",
                           env={**epoch, "SOUTE_BUILD_JOBS": "1"}, name="seq")
    assert p1.returncode == 0 and sequential, p1.stderr
    p2, parallel = build(root, tmp_path, dockerfile, "--no-cache", env=epoch, name="par")
    assert p2.returncode == 0 and parallel == sequential, p2.stderr
    assert read_file(root, parallel, "seen") == "made\n"


def test_equal_steps_of_two_stages_run_once(root: Path, tmp_path: Path) -> None:
    """Two stages reaching the same step at the same time: one runs it, the other reuses it
    (BuildKit merges equal vertices)."""
    cache = cache_dir(root, "par-twice")
    dockerfile = """\
FROM busybox AS a
RUN --mount=type=cache,target=/c,id=par-twice echo x >> /c/runs; sleep 1
FROM busybox AS b
RUN --mount=type=cache,target=/c,id=par-twice echo x >> /c/runs; sleep 1
FROM busybox
COPY --from=a /etc/passwd /a
COPY --from=b /etc/passwd /b
"""
    p, iid = build(root, tmp_path, dockerfile)
    assert p.returncode == 0 and iid, p.stderr
    assert (cache / "runs").read_text() == "x\n"
    runs = titled(p.stderr, "RUN --mount=type=cache")
    assert sorted(steps(p.stderr)[n][1] == "CACHED" for n in runs) == [False, True]


def test_locked_cache_mounts_are_taken_in_turn(root: Path, tmp_path: Path) -> None:
    """``sharing=locked``: stages side by side take turns on the cache (apt's caches);
    with the default (shared) they use it together."""
    seen = {}
    for sharing in ("locked", "shared"):
        run = (f"RUN --mount=type=cache,target=/c,id=par-{sharing},sharing={sharing} "
               "touch /c/busy-$X; sleep 1; ls /c > /c/seen-$X; rm /c/busy-$X")
        dockerfile = "\n".join([
            "FROM busybox AS a", "ENV X=a", run, "FROM busybox AS b", "ENV X=b", run,
            "FROM busybox", "COPY --from=a /etc/passwd /a", "COPY --from=b /etc/passwd /b", ""])
        p, iid = build(root, tmp_path, dockerfile, "--no-cache")
        assert p.returncode == 0 and iid, p.stderr
        cache = cache_dir(root, f"par-{sharing}")
        seen[sharing] = {x: (cache / f"seen-{x}").read_text().split() for x in "ab"}
    # Each RUN saw only its own busy file: the other one was not running meanwhile.
    assert [n for n in seen["locked"]["a"] + seen["locked"]["b"] if n.startswith("busy")] == [
        "busy-a", "busy-b"], seen
    assert "busy-b" in seen["shared"]["a"] or "busy-a" in seen["shared"]["b"], seen


# ---------------------------------------------------------------------------- failures

FAILING = """\
FROM busybox AS slow
RUN --mount=type=cache,target=/c,id=pc touch /c/slow; sleep 30; touch /c/end; echo par-marker-slow
FROM busybox AS bad
RUN --mount=type=cache,target=/c,id=pc until [ -e /c/slow ]; do sleep .1; done; echo failing; exit 3
FROM busybox
COPY --from=slow /etc/passwd /slow
COPY --from=bad /etc/passwd /bad
"""


def test_the_first_failure_cancels_the_other_stages(root: Path, tmp_path: Path) -> None:
    cache = cache_dir(root, "pc")
    p, iid = build(root, tmp_path, FAILING, "--no-cache")
    assert p.returncode == 1 and iid is None
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith('Dockerfile:4: process "/bin/sh -c until [ -e /c/slow ]; do sleep '
                           '.1; done; echo failing; exit 3" did not complete successfully: '
                           'exit code: 3'), p.stderr
    # The other stage's RUN had started, and was killed: it never finished, nothing is left.
    assert (cache / "slow").is_file() and not (cache / "end").exists()
    assert leftovers("par-marker-slow") == []
    slow = titled(p.stderr, "[slow 2/2] RUN")
    assert len(slow) == 1 and steps(p.stderr)[slow[0]][-1] == "CANCELED", p.stderr
    bad = titled(p.stderr, "[bad 2/2] RUN")
    assert steps(p.stderr)[bad[0]][1:] == [steps(p.stderr)[bad[0]][1]]  # its output only
    assert steps(p.stderr)[bad[0]][1].endswith(" failing")
    assert_store_clean(root)


def _plain_build(root: Path) -> list[str]:
    return [sys.executable, "-m", "soute.cli.main", "--root", str(root), "build",
            "--no-cache", "--progress", "plain", "-"]


def _interrupted(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    """Send ``proc`` a SIGINT (to it alone) and return its standard error once it ends."""
    try:
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=timeout)[1]
    finally:
        proc.kill()
        proc.wait()


def _two_sleeping_stages(root: Path, cache_id: str, command: list[str], *,
                         stages: tuple[str, ...] = ("a", "b"), mounts: str = ""
                         ) -> subprocess.Popen[str]:
    """``command`` (a soute build reading its Dockerfile on stdin) building two stages whose
    RUNs sleep 30 s at once (or the one of ``stages=("a",)``; ``mounts``: more --mount
    flags), returned once they run."""
    cache = cache_dir(root, cache_id)
    for name in stages:
        (cache / name).unlink(missing_ok=True)
    run = f"RUN --mount=type=cache,target=/c,id={cache_id} {mounts} touch /c/{{}}; " \
          f"sleep 30; echo par-marker-{cache_id}"
    dockerfile = (f"FROM busybox AS a\n{run.format('a')}\nFROM busybox AS b\n"
                  f"{run.format('b')}\nFROM busybox\nCOPY --from=a /etc/passwd /a\n"
                  "COPY --from=b /etc/passwd /b\n") if len(stages) > 1 else \
        f"FROM busybox\n{run.format('a')}\n"
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **JOBS})
    assert proc.stdin is not None
    proc.stdin.write(dockerfile)
    proc.stdin.close()
    proc.stdin = None
    deadline = time.monotonic() + 60
    while not all((cache / name).exists() for name in stages):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


def test_ctrl_c_cancels_the_stages_the_same_way(root: Path, tmp_path: Path) -> None:
    proc = _two_sleeping_stages(root, "par-int", _plain_build(root))
    err = _interrupted(proc, timeout=60)
    assert proc.returncode == 130 and err.endswith("soute: interrupted\n"), err
    assert sorted(lines[-1] for lines in steps(err).values() if " RUN " in lines[0]) == [
        "CANCELED", "CANCELED"]
    assert leftovers("par-marker-par-int") == []
    assert_store_clean(root)


def test_ctrl_c_taken_by_a_stage_thread_still_cancels(root: Path, tmp_path: Path) -> None:
    """The kernel may hand a signal sent to soute to any of its threads; Python runs the
    handler in the main thread only, which waits while the stages run in threads."""
    go = tmp_path / "go"
    # soute in a process of its own, beside a thread that takes a SIGINT itself on "go".
    program = (
        "import os, signal, sys, threading, time\n"
        "from soute.cli.main import main\n"
        "def poke():\n"
        f"    while not os.path.exists({str(go)!r}):\n"
        "        time.sleep(0.02)\n"
        "    signal.pthread_kill(threading.get_ident(), signal.SIGINT)\n"
        "threading.Thread(target=poke, daemon=True).start()\n"
        f"sys.argv = ['soute', '--root', {str(root)!r}, 'build', '--no-cache', '-q', '-']\n"
        "sys.exit(main())\n"
    )
    proc = _two_sleeping_stages(root, "par-int2", [sys.executable, "-c", program])
    go.touch()
    try:
        _, err = proc.communicate(timeout=20)  # before: only once the RUNs' 30 s were over
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and err.endswith("soute: interrupted\n"), err
    assert leftovers("par-marker-par-int2") == []
    assert_store_clean(root)


def test_one_ctrl_c_cancels_a_sequential_run_step(root: Path) -> None:
    # The main thread waits for the RUN and acts on ^C: a helper thread that took the
    # signal instead would leave it unseen until the RUN ends.
    proc = _two_sleeping_stages(root, "sig-mask", _plain_build(root), stages=("a",))
    helpers = threads_of(proc.pid)
    err = _interrupted(proc)
    assert helpers, "the RUN's output has a pump thread"
    for sig in (signal.SIGINT, signal.SIGTERM):
        assert [tid for tid, blocked in helpers if sig not in blocked] == [], sig
    # One ^C cancels the build, as with docker build (PID 1 of the RUN would ignore it).
    assert proc.returncode == 130 and err.endswith("soute: interrupted\n"), err
    assert steps(err)[2][-1] == "CANCELED", err
    assert leftovers("par-marker-sig-mask") == []
    assert_store_clean(root)


def test_a_ctrl_c_sent_to_soute_alone_ends_a_run_with_a_from_mount(root: Path) -> None:
    # Such a RUN runs in a helper process (its mounts' namespace): it must not outlive us.
    proc = _two_sleeping_stages(root, "sig-from", _plain_build(root), stages=("a",),
                                mounts="--mount=from=busybox,target=/b")
    err = _interrupted(proc)
    assert proc.returncode == 130 and err.endswith("soute: interrupted\n"), err
    deadline = time.monotonic() + 10  # the RUN dies with the helper (parent-death signal)
    while leftovers("par-marker-sig-from") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers("par-marker-sig-from") == []
    assert_store_clean(root)


# ---------------------------------------------------------------------------- progress


def test_plain_progress_of_stages_side_by_side_stays_parseable(root: Path,
                                                               tmp_path: Path) -> None:
    dockerfile = """\
FROM busybox AS a
RUN for i in 1 2 3 4 5; do echo from-a $i; sleep 0.2; done
FROM busybox AS b
RUN for i in 1 2 3 4 5; do echo from-b $i; sleep 0.2; done
FROM busybox
COPY --from=a /etc/passwd /a
COPY --from=b /etc/passwd /b
"""
    p, iid = build(root, tmp_path, dockerfile, "--no-cache")
    assert p.returncode == 0 and iid, p.stderr
    order: list[int] = []
    for line in p.stderr.splitlines():
        m = STEP.fullmatch(line)
        if m is None:  # only the lines after the steps are not #N lines
            assert line.startswith(("writing image ", "naming to ")), line
            continue
        order.append(int(m.group(1)))
    by_step = steps(p.stderr)
    assert sorted(by_step) == list(range(1, len(by_step) + 1))
    for title, *rest in by_step.values():
        assert re.fullmatch(r"\[(a|b|stage-2) \d/\d\] .+", title), title
        assert re.fullmatch(r"DONE \d+\.\ds", rest[-1]), (title, rest)
        for out in rest[:-1]:  # a step's output is its own stage's
            assert re.fullmatch(r"\d+\.\d{3} from-([ab]) \d", out), (title, rest)
            assert out.split()[1][-1] == title[1], (title, rest)
    # The two RUNs were under way together: their lines interleave.
    a, b = titled(p.stderr, "[a 2/2] RUN")[0], titled(p.stderr, "[b 2/2] RUN")[0]
    first, second = sorted((a, b))
    assert order.index(second) < len(order) - 1 - order[::-1].index(first)


def test_plain_lanes_interleave_with_their_numbers() -> None:
    clock = FakeClock()
    out = io.StringIO()
    p = Progress(out, clock=clock)
    a, b = p.lane(), p.lane()
    a.step("[a 2/2] RUN make")
    b.step("[b 2/2] RUN make")
    clock.tick(0.25)
    b.output("b says")
    a.output("a says")
    with p.bound(b):
        p.cached()  # the plain calls go to the lane the thread works for
        assert p.current() is b
    a.done()
    b.cancel()
    assert out.getvalue() == (
        "#1 [a 2/2] RUN make\n#2 [b 2/2] RUN make\n#2 0.250 b says\n#1 0.250 a says\n"
        "#2 CACHED\n#1 DONE 0.2s\n#2 CANCELED\n")


def test_the_live_view_shows_stages_side_by_side() -> None:
    clock = FakeClock()
    p, out = view(clock, size=(80, 24))
    a, b = p.lane(), p.lane()
    a.step("[a 1/2] FROM busybox")
    a.done()
    a.step("[a 2/2] RUN make a")
    b.step("[b 2/2] RUN make b")
    for i in range(1, 9):
        a.output(f"a line {i}")
        b.output(f"b line {i}")
    clock.tick(1.0)
    lines = plain_frame(p)
    assert lines[0] == "[+] Building 1.0s (1/3)"
    assert lines[2].startswith(" => [a 2/2] RUN make a ")
    # each running step shows its last lines, under it
    assert lines[3:9] == [f" => => # a line {i}" for i in range(3, 9)]
    assert lines[9].startswith(" => [b 2/2] RUN make b ")
    assert lines[10:16] == [f" => => # b line {i}" for i in range(3, 9)]
    b.fail()  # b's command failed: a is canceled, b's output is the error report
    a.cancel()
    p.close(RuntimeError("exit code: 3"))
    screen = Screen().feed(out.getvalue()).text
    assert screen[0].startswith("[+] Building 1.0s (3/3)") and "FINISHED" not in screen[0]
    assert screen[2].startswith(" => CANCELED [a 2/2] RUN make a")
    assert screen[3].startswith(" => ERROR [b 2/2] RUN make b")
    assert screen[4:6] == ["------", " > [b 2/2] RUN make b:"]
    assert [line.split(" ", 1)[1] for line in screen[6:14]] == [f"b line {i}"
                                                                 for i in range(1, 9)]
    assert screen[14:] == ["------"]


def test_the_live_view_shares_a_small_terminal() -> None:
    clock = FakeClock()
    p, _ = view(clock, size=(60, 10))
    lanes = [p.lane() for _ in range(3)]
    for i, lane in enumerate(lanes):
        lane.step(f"[s{i} 2/2] RUN work")
        for k in range(10):
            lane.output(f"s{i} out {k}")
    lines = plain_frame(p)
    assert len(lines) <= 9  # one less than the terminal: the cursor can climb back
    assert lines[-1].endswith("s2 out 9") or lines[-1].startswith(" => [s2 2/2]")


def test_the_store_serves_threads(tmp_path: Path) -> None:
    """Stages in threads share one Store: each thread its own SQLite connection, sessions
    counted across them."""
    import threading

    from soute.store.store import Store

    errors: list[BaseException] = []
    with Store(tmp_path / "store") as store, store.session():

        def work(n: int) -> None:
            try:
                for i in range(50):
                    with store.session():
                        key = f"sha256:{n}-{i}"
                        store.meta.cache_put(key, None, 0, None, "t", "t")
                        assert store.meta.cache_get(key) == (None, 0, None, "t")
                store.meta.release()
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store._lock_depth == 1
        assert len(store.meta.db.execute("SELECT key FROM build_cache").fetchall()) == 200


def test_ctrl_c_during_a_copy_says_interrupted_only(root: Path, tmp_path: Path) -> None:
    """A ^C while COPY writes its files: the parent closes the copy's pipes, and the copy
    child, finding them closed, ends quietly. It used to let that error escape into the
    parent's code it was forked from, which printed an internal error from the child."""
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    with open(ctx / "app" / "0big", "wb") as f:  # first in archive order; sparse here only
        f.truncate(768 << 20)
    for i in range(2000):
        (ctx / "app" / f"f{i:04d}").write_text(str(i))
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY app /app\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "soute.cli.main", "--root", str(root), "build", "--no-cache",
         "-q", str(ctx)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    # The copy has begun once the large file is in the step's upper dir.
    while not list((root / "tmp").glob("upper-*/app/0big")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    err = _interrupted(proc, timeout=60)
    assert proc.returncode == 130 and err == "soute: interrupted\n", err
    assert_store_clean(root)
