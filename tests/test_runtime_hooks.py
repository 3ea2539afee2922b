"""``on_created`` as a generator (the steps ``soute run`` uses to start slirp4netns while the
container sets itself up) and slirp4netns started that way (needs root).

Same busybox root as ``test_runtime``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Generator
from pathlib import Path

import pytest

import test_runtime_exec
from soute.container.network import Slirp, available
from soute.errors import SouteError
from soute.runtime import Layers, Mount, Process, Spec, default_mounts, run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the runtime needs root")
needs_slirp = pytest.mark.skipif(not available(), reason="slirp4netns is not installed")


# The busybox root and its layers, as the other runtime tests have them.
base = test_runtime_exec.base
layers = test_runtime_exec.layers
run_output = test_runtime_exec.run_output


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    path = tmp_path / "shared"
    path.mkdir()
    return path


def shared_spec(shared: Path, script: str) -> Spec:
    spec = Spec(Process(["sh", "-c", script]),
                mounts=[*default_mounts(), Mount("/shared", "bind", str(shared), ("rbind",))])
    spec.namespaces.add("network")
    return spec




def command_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]


def test_the_steps_come_in_order(layers: Layers, shared: Path) -> None:
    seen: list[str] = []
    closed: list[bool] = []

    def created(pid: int) -> Generator[None, None, None]:
        try:
            # Nothing mounted yet: the root is still the host's.
            assert os.stat(f"/proc/{pid}/root").st_ino == os.stat("/").st_ino
            seen.append("waits")
            yield
            seen.append("meanwhile")
            (shared / "first").write_text("from the middle step\n")
            yield
            # Set up (pivot_root done), not exec'd yet.
            assert os.path.isdir(f"/proc/{pid}/root/shared")
            assert command_of(pid) != b"cat"
            (shared / "last").write_text("from the last step\n")
            seen.append("before exec")
        finally:
            closed.append(True)

    started: list[int] = []
    output = run_output(shared_spec(shared, "cat /shared/first /shared/last"), layers,
                        on_created=created, on_start=started.append)
    assert output == "from the middle step\nfrom the last step\n"
    assert seen == ["waits", "meanwhile", "before exec"]
    assert closed == [True] and len(started) == 1


def test_a_failing_middle_step_stops_the_container(layers: Layers, shared: Path,
                                                   tmp_path: Path) -> None:
    mounts = Path("/proc/self/mountinfo").read_text()
    state = tmp_path / "state"
    state.mkdir()
    pids: list[int] = []

    def created(pid: int) -> Generator[None, None, None]:
        pids.append(pid)
        yield
        raise RuntimeError("slirp4netns could not start")

    with pytest.raises(RuntimeError, match="could not start"):
        run(shared_spec(shared, "touch /shared/ran"), layers, on_created=created,
            state_dir=state)
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # ended and reaped
    assert not (shared / "ran").exists()
    assert Path("/proc/self/mountinfo").read_text() == mounts
    assert list(state.iterdir()) == []
    assert list(layers.upper.iterdir()) == []  # the stubs it made meanwhile are gone too


def test_a_failing_last_step_kills_the_container(layers: Layers, shared: Path,
                                                 tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()

    def created(pid: int) -> Generator[None, None, None]:
        yield
        yield
        raise RuntimeError("tap0 never came up")

    with pytest.raises(RuntimeError, match="tap0 never came up"):
        run(shared_spec(shared, "touch /shared/ran"), layers, on_created=created,
            state_dir=state)
    assert not (shared / "ran").exists()
    assert list(state.iterdir()) == []
    assert list(layers.upper.iterdir()) == []


def test_the_containers_own_failure_skips_the_last_step(layers: Layers, shared: Path) -> None:
    steps: list[str] = []

    def created(pid: int) -> Generator[None, None, None]:
        try:
            yield
            yield
            steps.append("last")
        finally:
            steps.append("closed")

    spec = shared_spec(shared, "")
    spec.process = Process(["no-such-command"])
    with pytest.raises(SouteError, match='exec: "no-such-command": executable file not found'):
        run(spec, layers, on_created=created)
    assert steps == ["closed"]


# ---------------------------------------------------------------------------- slirp4netns


@needs_slirp
def test_slirp_keeps_the_namespace_it_attached_to(lone_netns: subprocess.Popen[bytes]) -> None:
    slirp = Slirp()
    slirp.attach(lone_netns.pid)
    lone_netns.kill()
    lone_netns.wait()  # gone, its pid free: the namespace stays for slirp4netns
    try:
        slirp.spawn()
        slirp.wait_ready()
        assert slirp.process is not None and slirp.process.poll() is None
    finally:
        slirp.stop()
    assert slirp.process.returncode is not None


@needs_slirp
def test_slirp_stopped_without_waiting_is_reaped(lone_netns: subprocess.Popen[bytes]) -> None:
    slirp = Slirp()
    slirp.start(lone_netns.pid)
    assert slirp.process is not None
    pid = slirp.process.pid
    slirp.stop(wait=False)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}"):  # a zombie still has its /proc entry
        assert time.monotonic() < deadline, "slirp4netns was left unreaped"
        time.sleep(0.01)
