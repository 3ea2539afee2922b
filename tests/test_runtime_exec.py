"""The runtime's terminal, ``exec_in``, the ``on_created`` hook and volume copy-up (needs root).

Same busybox root as ``test_runtime``: user ``app`` (uid 1000) in ``staff`` (gid 50).
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from soute.errors import SouteError
from soute.runtime import (
    COPY_UP,
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    ExecUser,
    Layers,
    Mount,
    Process,
    Spec,
    default_mounts,
    exec_in,
    run,
    to_oci_config,
)
from soute.runtime.spec import capability_mask
from test_runtime import make_busybox_root, new_layers, sleepers, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the runtime needs root")

NAMESPACE_FILES = ("ipc", "mnt", "net", "pid", "uts", "cgroup")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_root(tmp_path_factory.mktemp("busybox") / "root")


@pytest.fixture
def layers(tmp_path: Path, base: Path) -> Layers:
    return new_layers(tmp_path, [base])


def run_output(spec: Spec, layers: Layers, **kwargs: object) -> str:
    with tempfile.TemporaryFile() as out:
        code = run(spec, layers, stdout=out, **kwargs)  # type: ignore[arg-type]
        out.seek(0)
        text = out.read().decode()
    assert code == 0, text
    return text


def exec_output(pid: int, process: Process, **kwargs: object) -> str:
    code, out = exec_capture(pid, process, **kwargs)
    assert code == 0, out
    return out


def exec_capture(pid: int, process: Process, **kwargs: object) -> tuple[int, str]:
    with tempfile.TemporaryFile() as out:
        code = exec_in(pid, process, stdout=out, stderr=out, **kwargs)  # type: ignore[arg-type]
        out.seek(0)
        return code, out.read().decode()


# ---------------------------------------------------------------------------- terminal


@dataclass
class Pty:
    """A pty as ``soute run -t`` opens it: the slave goes to the container, we read the
    master (from a thread: the container may block on a full pty)."""

    rows: int = 33
    cols: int = 101
    master: int = -1
    slave: int = -1
    data: bytearray = field(default_factory=bytearray)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __enter__(self) -> Pty:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", self.rows, self.cols,
                                                                  0, 0))
        self.reader = threading.Thread(target=self._read)
        self.reader.start()
        return self

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: every slave descriptor is closed
                chunk = b""
            with self.changed:
                self.data += chunk
                self.changed.notify_all()
            if not chunk:
                return

    def wait_for(self, text: bytes) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: text in self.data, timeout=20)

    def output(self) -> str:
        """Everything, once the container is done (closing our slave ends the reading)."""
        os.close(self.slave)
        self.slave = -1
        self.reader.join(timeout=20)
        return self.data.decode()

    def __exit__(self, *exc: object) -> None:
        if self.slave >= 0:
            os.close(self.slave)
        self.reader.join(timeout=20)
        os.close(self.master)


def test_terminal_is_the_controlling_tty_with_its_size(layers: Layers) -> None:
    # Field 7 of /proc/self/stat is the controlling tty (0 for none).
    spec = Spec(Process(["sh", "-c", "tty; stty size; cut -d' ' -f7 /proc/self/stat"],
                        terminal=True))
    with Pty() as pty:
        rdev = os.fstat(pty.slave).st_rdev
        assert run(spec, layers, stdin=pty.slave, stdout=pty.slave, stderr=pty.slave) == 0
        lines = pty.output().splitlines()
    # The pty is in the host's devpts; runc's way, it is also the container's /dev/console,
    # which is the name ttyname() finds.
    assert lines[:2] == ["/dev/console", "33 101"]
    assert int(lines[2]) == tty_nr(rdev)


def tty_nr(rdev: int) -> int:
    """A device number as /proc/<pid>/stat encodes it."""
    major, minor = os.major(rdev), os.minor(rdev)
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def test_terminal_interrupt_reaches_the_foreground(layers: Layers) -> None:
    # ^C on the pty: SIGINT to the whole foreground group, the shell (its trap) and sleep.
    spec = Spec(Process(["sh", "-c", "trap 'echo trapped' INT; echo ready; sleep 30; "
                         "echo after $?"], terminal=True))
    with Pty() as pty:
        def interrupt(pid: int) -> None:
            def press() -> None:
                assert pty.wait_for(b"ready")
                # ^C before sleep runs would only reach the shell: wait for its child.
                children = Path(f"/proc/{pid}/task/{pid}/children")
                deadline = time.monotonic() + 10
                while not children.read_text().strip() and time.monotonic() < deadline:
                    time.sleep(0.01)
                os.write(pty.master, b"\x03")
            threading.Thread(target=press).start()

        assert run(spec, layers, stdin=pty.slave, stdout=pty.slave, stderr=pty.slave,
                   on_start=interrupt) == 0
        assert pty.output().splitlines()[1:] == ["^Ctrapped", "after 130"]


def test_terminal_needs_our_runtime(layers: Layers) -> None:
    with pytest.raises(SouteError, match="needs --runtime soute"):
        run(Spec(Process(["tty"], terminal=True)), layers, runtime="runc")


# ---------------------------------------------------------------------------- on_created


def test_on_created_runs_before_the_command(layers: Layers, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    spec = Spec(Process(["cat", "/shared/marker"]),
                mounts=[*default_mounts(), Mount("/shared", "bind", str(shared), ("rbind",))])
    spec.namespaces.add("network")
    seen: list[int] = []

    def created(pid: int) -> None:
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        # Still our forked child: nothing of the container's command has run yet.
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] != b"cat"
        (shared / "marker").write_text(f"written by the hook for {pid}\n")
        seen.append(pid)

    started: list[int] = []
    assert run_output(spec, layers, on_created=created, on_start=started.append) == (
        f"written by the hook for {seen[0]}\n")
    assert seen == started


def test_on_created_failure_kills_the_container(layers: Layers, tmp_path: Path) -> None:
    mounts = Path("/proc/self/mountinfo").read_text()
    state = tmp_path / "state"
    state.mkdir()
    pids: list[int] = []

    def created(pid: int) -> None:
        pids.append(pid)
        raise RuntimeError("slirp4netns failed")

    with pytest.raises(RuntimeError, match="slirp4netns failed"):
        run(Spec(Process(["sh", "-c", "touch /ran"])), layers, on_created=created,
            state_dir=state)
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # killed and reaped
    assert Path("/proc/self/mountinfo").read_text() == mounts
    assert list(state.iterdir()) == []
    assert list(layers.upper.iterdir()) == []


def test_on_created_needs_our_runtime(layers: Layers) -> None:
    with pytest.raises(SouteError, match="needs --runtime soute"):
        run(Spec(Process(["true"])), layers, runtime="runc", on_created=lambda pid: None)


# ---------------------------------------------------------------------------- exec_in


@dataclass
class Container:
    pid: int
    spec: Spec
    layers: Layers


@pytest.fixture
def container(layers: Layers) -> Iterator[Container]:
    """A container (own network, cgroup, uts...) whose PID 1 sleeps, with /tmp/x written."""
    spec = Spec(Process(["sh", "-c", "mkdir /tmp; echo $$ > /tmp/x; exec sleep 30"]),
                hostname="boxy")
    spec.namespaces |= {"network", "cgroup"}
    pids: list[int] = []
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(run(spec, layers,
                                                               on_start=pids.append)))
    thread.start()
    try:
        marker = layers.upper / "tmp" / "x"
        assert wait_until(lambda: marker.exists() and marker.read_text() == "1\n")
        yield Container(pids[0], spec, layers)
    finally:
        if pids:
            os.kill(pids[0], signal.SIGKILL)
        thread.join(timeout=30)
    assert codes == [137]


def test_exec_joins_every_namespace(container: Container) -> None:
    script = ("hostname; cat /tmp/x; echo $$; ps -o pid,args; "
              f"for n in {' '.join(NAMESPACE_FILES)}; do readlink /proc/self/ns/$n; done")
    lines = exec_output(container.pid, Process(["sh", "-c", script])).splitlines()
    assert lines[:2] == ["boxy", "1"]  # the container's uts, and its files (mount ns)
    assert 1 < int(lines[2]) < 100  # a pid of the container's namespace
    assert lines[3].split() == ["PID", "COMMAND"]
    assert lines[4].split() == ["1", "sleep", "30"]
    theirs = [os.readlink(f"/proc/{container.pid}/ns/{n}") for n in NAMESPACE_FILES]
    assert lines[-len(NAMESPACE_FILES):] == theirs
    ours = [os.readlink(f"/proc/self/ns/{n}") for n in NAMESPACE_FILES]
    assert not set(theirs) & set(ours)


def test_exec_sees_the_containers_root(container: Container) -> None:
    assert exec_output(container.pid, Process(["sh", "-c", "pwd; ls /"])).split() == [
        "/", "bin", "dev", "etc", "proc", "sys", "tmp"]
    # Its writes land in the container's upper directory.
    assert exec_output(container.pid, Process(["sh", "-c", "echo hi > /tmp/from-exec"])) == ""
    assert (container.layers.upper / "tmp" / "from-exec").read_text() == "hi\n"


def test_exec_user_env_and_cwd(container: Container) -> None:
    process = Process(["sh", "-c", "id; pwd; env"], user="app", env=["FOO=bar"], cwd="/etc")
    lines = exec_output(container.pid, process).splitlines()
    assert lines[:2] == ["uid=1000(app) gid=1000(app) groups=50(staff),1000(app)", "/etc"]
    assert {"FOO=bar", "HOME=/home/app", f"PATH={DEFAULT_PATH}"} <= set(lines[2:])


def test_exec_capabilities_and_no_new_privs(container: Container) -> None:
    script = "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status"
    out = exec_output(container.pid, Process(["sh", "-c", script],
                                             capabilities=list(DEFAULT_CAPABILITIES)))
    status = dict(line.split(":\t") for line in out.splitlines())
    ours = int(next(line.split()[1] for line in Path("/proc/self/status").read_text()
                    .splitlines() if line.startswith("CapBnd:")), 16)
    wanted = capability_mask(DEFAULT_CAPABILITIES) & ours
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == wanted
    assert status["NoNewPrivs"] == "1"


def test_exec_exit_codes(container: Container) -> None:
    assert exec_in(container.pid, Process(["sh", "-c", "exit 7"])) == 7
    assert exec_in(container.pid, Process(["sh", "-c", "kill -TERM $$"])) == 143
    killed: list[int] = []

    def kill(pid: int) -> None:
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)

    assert exec_in(container.pid, Process(["sleep", "30"]), on_start=kill) == 137
    assert killed and killed[0] != container.pid  # on_start gets the host pid


def test_exec_setup_errors(container: Container) -> None:
    with pytest.raises(SouteError) as info:
        exec_in(container.pid, Process(["nonexistent"]))
    assert str(info.value) == 'exec: "nonexistent": executable file not found in $PATH'
    with pytest.raises(SouteError) as info:
        exec_in(container.pid, Process(["true"], cwd="/x"))
    assert str(info.value) == ('chdir to cwd ("/x") set in config.json failed: '
                               "no such file or directory")
    assert not (container.layers.upper / "x").exists()  # not created, unlike at run
    with pytest.raises(SouteError, match=r"^unable to find user nobody"):
        exec_in(container.pid, Process(["id"], user="nobody"))
    with pytest.raises(SouteError, match="unsupported namespace: user"):
        exec_in(container.pid, Process(["true"]), namespaces={"user"})


def test_exec_in_a_gone_container(layers: Layers) -> None:
    pids: list[int] = []
    assert run(Spec(Process(["true"])), layers, on_start=pids.append) == 0
    with pytest.raises(SouteError, match=f"container process {pids[0]} is not running"):
        exec_in(pids[0], Process(["true"]))


def test_exec_only_some_namespaces(container: Container) -> None:
    started: list[int] = []
    out = exec_output(container.pid, Process(["sh", "-c", "hostname; cat /tmp/x; echo $$"]),
                      namespaces={"mount"}, on_start=started.append)
    # Our uts and pid namespaces (its pid is the host's), their files.
    assert out.split() == [os.uname().nodename, "1", str(started[0])]


def test_exec_with_a_terminal(container: Container) -> None:
    # The pty is the controlling terminal; it is not the container's /dev/console, so here
    # `tty` cannot name it (it prints "not a tty"), but sizes and job control work.
    process = Process(["sh", "-c", "stty size; cut -d' ' -f7 /proc/self/stat; tty"],
                      terminal=True)
    with Pty(rows=24, cols=80) as pty:
        rdev = os.fstat(pty.slave).st_rdev
        code = exec_in(container.pid, process, stdin=pty.slave, stdout=pty.slave,
                       stderr=pty.slave)
        lines = pty.output().splitlines()
    assert code == 1  # from tty
    assert lines == ["24 80", str(tty_nr(rdev)), "not a tty"]


def test_exec_dies_with_its_caller(container: Container) -> None:
    program = (
        "from soute.runtime import Process, exec_in\n"
        f"exec_in({container.pid}, Process(['sh', '-c', 'echo ready; exec sleep 32.5']))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        assert wait_until(lambda: bool(sleepers("32.5")))
    finally:
        child.kill()
        child.wait()
    assert wait_until(lambda: not sleepers("32.5"))


def test_exec_signals_are_forwarded(container: Container) -> None:
    script = "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"
    program = (
        "import sys\n"
        "from soute.runtime import Process, exec_in\n"
        f"sys.exit(exec_in({container.pid}, Process(['sh', '-c', {script!r}])))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 42
    finally:
        child.kill()


# ---------------------------------------------------------------------------- copy-up


@pytest.fixture
def image(tmp_path: Path, base: Path) -> Layers:
    """An image with /data: a.txt (640, app:staff), a subdirectory, an escaping symlink and
    a hard link, all with old times."""
    image = tmp_path / "image"
    data = image / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("from the image\n")
    os.chown(data / "a.txt", 1000, 50)
    (data / "a.txt").chmod(0o640)
    os.link(data / "a.txt", data / "hard")
    (data / "sub" / "b").write_text("b\n")
    os.symlink("/../../../../etc/passwd", data / "escape")
    os.chown(data, 1000, 1000)
    data.chmod(0o750)
    for path in (data / "a.txt", data / "sub" / "b", data / "sub"):
        os.utime(path, ns=(1_000_000_000, 1_234_567_890_123_456_789))
    return new_layers(tmp_path, [base, image])


def volume_spec(script: str, volume: Path, *options: str) -> Spec:
    return Spec(Process(["sh", "-c", script]),
                mounts=[*default_mounts(), Mount("/data", "bind", str(volume),
                                                 ("rbind", *options))])


def test_copy_up_fills_an_empty_volume(image: Layers, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    spec = volume_spec("cat /data/a.txt; ls /data; echo new > /data/new", volume, COPY_UP)
    assert run_output(spec, image) == "from the image\na.txt\nescape\nhard\nsub\n"
    assert sorted(os.listdir(volume)) == ["a.txt", "escape", "hard", "new", "sub"]
    a = (volume / "a.txt").lstat()
    assert (stat.S_IMODE(a.st_mode), a.st_uid, a.st_gid) == (0o640, 1000, 50)
    assert a.st_mtime_ns == 1_234_567_890_123_456_789 and a.st_nlink == 2
    assert (volume / "hard").lstat().st_ino == a.st_ino
    assert os.readlink(volume / "escape") == "/../../../../etc/passwd"  # a link, not followed
    assert (volume / "sub" / "b").read_text() == "b\n"
    assert (volume / "sub").stat().st_mtime_ns == 1_234_567_890_123_456_789
    top = volume.stat()  # the volume takes the image directory's owner and mode
    assert (stat.S_IMODE(top.st_mode), top.st_uid, top.st_gid) == (0o750, 1000, 1000)
    assert (volume / "new").read_text() == "new\n"
    assert not (image.upper / "data").exists()  # the writes went to the volume


def test_copy_up_shows_the_copy(image: Layers, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    out = run_output(volume_spec("cat /data/a.txt; ls -ln /data/a.txt", volume, COPY_UP),
                     image)
    first, listing = out.splitlines()
    assert first == "from the image"
    assert listing.split()[:4] == ["-rw-r-----", "2", "1000", "50"]


def test_copy_up_leaves_a_used_volume_alone(image: Layers, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "mine").write_text("mine\n")
    assert run_output(volume_spec("ls /data", volume, COPY_UP), image) == "mine\n"
    assert os.listdir(volume) == ["mine"]


def test_no_copy_up_without_the_option(image: Layers, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    assert run_output(volume_spec("ls /data", volume), image) == ""
    assert os.listdir(volume) == []


def test_copy_up_of_a_path_the_image_lacks(layers: Layers, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o700)
    before = volume.stat()
    assert run_output(volume_spec("ls -a /data", volume, COPY_UP), layers) == ".\n..\n"
    assert os.listdir(volume) == []
    after = volume.stat()  # nothing to copy: not even the mountpoint stub's mode and times
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert list(layers.upper.iterdir()) == []  # the mountpoint stub is gone too


def test_copy_up_with_runc(image: Layers, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    spec = volume_spec("cat /data/a.txt", volume, COPY_UP)
    assert run_output(spec, image, runtime="runc") == "from the image\n"
    assert (volume / "a.txt").lstat().st_uid == 1000


def test_copy_up_is_not_a_kernel_option(tmp_path: Path) -> None:
    spec = volume_spec("true", tmp_path, COPY_UP, "ro")
    config = to_oci_config(spec, tmp_path, user=ExecUser(0, 0, (0,)))
    assert config["mounts"][-1] == {"destination": "/data", "type": "bind",
                                    "source": str(tmp_path), "options": ["rbind", "ro"]}
    bad = Spec(Process(["true"]), mounts=[Mount("/t", "tmpfs", "tmpfs", (COPY_UP,))])
    with pytest.raises(SouteError, match="copy-up needs a bind mount"):
        bad.validate()


def test_copy_up_never_writes_through_a_swapped_directory(
        image: Layers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another container sharing the volume swaps a directory the copy just made for a
    symlink to the host: nothing is written there, the start fails instead."""
    volume, outside = tmp_path / "volume", tmp_path / "outside"
    volume.mkdir()
    outside.mkdir()
    real_mkdir = os.mkdir

    def mkdir_then_swap(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)
        if os.path.basename(path) == "sub":  # what the other container does meanwhile
            os.rename(path, f"{path}.old", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.symlink(str(outside), path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", mkdir_then_swap)
    with pytest.raises(SouteError, match="copying /data into its volume"):
        run_output(volume_spec("true", volume, COPY_UP), image)
    assert os.listdir(outside) == []
