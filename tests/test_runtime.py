"""The container runtime, for real: namespaces, overlayfs, pivot_root (needs root).

The root filesystem is a tiny busybox image made here from Debian's busybox-static, with a user
``app`` (uid 1000) who belongs to ``staff`` (gid 50).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from soute.errors import SouteError
from soute.runtime import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    GeneratedFile,
    Layers,
    Mount,
    Process,
    Spec,
    default_mounts,
    resolve_user,
    run,
    to_oci_config,
)
from soute.runtime.paths import scoped_path
from soute.runtime.rootfs import INIT_LAYER, make_init_layer, merged_lstat
from soute.runtime.spec import capability_mask

BUSYBOX = Path("/bin/busybox")
RUNC = shutil.which("runc")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the runtime needs root"),
    # busybox-static and runc come from scripts/setup: missing, these tests fail (no skip).
]


def needs_runc(test):  # type: ignore[no-untyped-def]
    """Marks the tests that run runc (installed by scripts/setup)."""
    return test

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:app\napp:x:1000:\n"


def make_busybox_root(path: Path) -> Path:
    (path / "bin").mkdir(parents=True)
    (path / "etc").mkdir()
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", path / "bin" / applet)
    (path / "etc" / "passwd").write_text(PASSWD)
    (path / "etc" / "group").write_text(GROUP)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_root(tmp_path_factory.mktemp("busybox") / "root")


def new_layers(tmp_path: Path, lowers: list[Path]) -> Layers:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir(parents=True)
    work.mkdir()
    return Layers(lowers, upper, work)


@pytest.fixture
def layers(tmp_path: Path, base: Path) -> Layers:
    return new_layers(tmp_path, [base])


def sh(script: str, **process: object) -> Spec:
    return Spec(Process(["sh", "-c", script], **process))  # type: ignore[arg-type]


def capture(spec: Spec, layers: Layers, **kwargs: object) -> tuple[int, str, str]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code = run(spec, layers, stdout=out, stderr=err, **kwargs)  # type: ignore[arg-type]
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(), err.read().decode()


def output(spec: Spec, layers: Layers, **kwargs: object) -> str:
    code, out, err = capture(spec, layers, **kwargs)
    assert code == 0, err
    return out


def tree(path: Path) -> dict[str, tuple[int, str]]:
    """Every entry under ``path``: its mode and (for files) content hash."""
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            digest = ""
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(full.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(full)
            out[str(full.relative_to(path))] = (st.st_mode, digest)
    return out


def upper_entries(layers: Layers) -> list[str]:
    return sorted(tree(layers.upper))


def net_devices(text: str) -> set[str]:
    return {line.split(":")[0].strip() for line in text.splitlines()[2:] if ":" in line}


# ---------------------------------------------------------------------------- exit and streams


def test_exit_codes(layers: Layers) -> None:
    assert run(sh("exit 0"), layers) == 0
    assert run(sh("exit 3"), layers) == 3
    assert run(Spec(Process(["false"])), layers) == 1


def test_killed_by_signal_is_128_plus_n(layers: Layers) -> None:
    def kill(pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    assert run(Spec(Process(["sleep", "30"])), layers, on_start=kill) == 137


def test_output_is_live_on_a_pipe(layers: Layers) -> None:
    read_end, write_end = os.pipe()
    seen: list[tuple[float, bytes]] = []

    def reader() -> None:
        with os.fdopen(read_end, "rb") as f:
            for line in f:
                seen.append((time.monotonic(), line))

    thread = threading.Thread(target=reader)
    thread.start()
    with tempfile.TemporaryFile() as err:
        code = run(sh("echo first; echo oops >&2; sleep 0.4; echo second"), layers,
                   stdout=write_end, stderr=err)
        finished = time.monotonic()
        err.seek(0)
        assert err.read() == b"oops\n"
    os.close(write_end)
    thread.join()
    assert code == 0
    assert [line for _, line in seen] == [b"first\n", b"second\n"]
    assert finished - seen[0][0] > 0.3  # the first line came while the command still ran


def test_stdin_is_dev_null_unless_given(layers: Layers, tmp_path: Path) -> None:
    assert output(Spec(Process(["cat"])), layers) == ""
    given = tmp_path / "in.txt"
    given.write_text("hello\n")
    with given.open("rb") as f:
        assert output(Spec(Process(["cat"])), layers, stdin=f) == "hello\n"


# ---------------------------------------------------------------------------- process


def test_env_gets_default_path_and_home(layers: Layers) -> None:
    env = output(Spec(Process(["env"], env=["FOO=bar", "FOO=baz", "EMPTY="])), layers)
    lines = env.splitlines()
    assert "FOO=baz" in lines and "FOO=bar" not in lines
    assert "EMPTY=" in lines
    assert f"PATH={DEFAULT_PATH}" in lines
    assert "HOME=/root" in lines
    custom = output(Spec(Process(["/bin/env"], env=["PATH=/nowhere", "HOME=/h"])), layers)
    assert "PATH=/nowhere" in custom.splitlines() and "HOME=/h" in custom.splitlines()


def test_cwd_is_used_and_created_when_missing(layers: Layers) -> None:
    assert output(sh("pwd", cwd="/etc"), layers) == "/etc\n"
    assert output(sh("pwd", cwd="/srv/app"), layers) == "/srv/app\n"
    # Created as BuildKit does, so it is part of the step's changes.
    assert (layers.upper / "srv" / "app").is_dir()


@pytest.mark.parametrize(("user", "expected"), [
    ("", "uid=0(root) gid=0(root) groups=0(root)"),
    ("app", "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)"),
    ("1000", "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)"),
    ("app:staff", "uid=1000(app) gid=50(staff) groups=50(staff)"),
    ("1000:50", "uid=1000(app) gid=50(staff) groups=50(staff)"),
    ("4242", "uid=4242 gid=0(root) groups=0(root)"),
    ("4242:4343", "uid=4242 gid=4343 groups=4343"),
])
def test_user(layers: Layers, user: str, expected: str) -> None:
    assert output(Spec(Process(["id"], user=user)), layers) == expected + "\n"


def test_unknown_user_or_group_fails(layers: Layers) -> None:
    with pytest.raises(SouteError, match=r"^unable to find user nobody: no matching entries in "
                                         r"passwd file$"):
        run(Spec(Process(["id"], user="nobody")), layers)
    with pytest.raises(SouteError, match=r"^unable to find group wheel: no matching entries in "
                                         r"group file$"):
        run(Spec(Process(["id"], user="app:wheel")), layers)
    assert upper_entries(layers) == []


def test_resolve_user_rules(base: Path, tmp_path: Path) -> None:
    assert resolve_user(base, "app") == (1000, 1000, (1000, 50), "/home/app")
    assert resolve_user(base, "root:0") == (0, 0, (0,), "/root")
    assert resolve_user(base, "app:1234") == (1000, 1234, (1234,), "/home/app")
    assert resolve_user(base, ":staff") == (0, 50, (50,), "/root")
    with pytest.raises(SouteError, match="must be in range"):
        resolve_user(base, "-1")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_user(empty, "") == (0, 0, (0,), "/")
    assert resolve_user(empty, "55") == (55, 0, (0,), "/")
    with pytest.raises(SouteError, match="unable to find user app"):
        resolve_user(empty, "app")


def test_missing_executable_is_a_soute_error(layers: Layers) -> None:
    with pytest.raises(SouteError) as info:
        run(Spec(Process(["nonexistent", "arg"])), layers)
    assert str(info.value) == 'exec: "nonexistent": executable file not found in $PATH'
    with pytest.raises(SouteError) as info:
        run(Spec(Process(["/nope"])), layers)
    assert str(info.value) == 'exec: "/nope": stat /nope: no such file or directory'
    with pytest.raises(SouteError) as info:
        run(Spec(Process(["/etc/passwd"])), layers)
    assert str(info.value) == 'exec: "/etc/passwd": permission denied'
    assert upper_entries(layers) == []


def test_exec_format_error(tmp_path: Path, base: Path) -> None:
    extra = tmp_path / "extra"
    (extra / "bin").mkdir(parents=True)
    (extra / "bin" / "bad").write_bytes(b"garbage\0")
    (extra / "bin" / "bad").chmod(0o755)
    layers = new_layers(tmp_path, [base, extra])
    with pytest.raises(SouteError, match=r"^exec /bin/bad: exec format error$"):
        run(Spec(Process(["bad"])), layers)


def test_stub_removal_never_follows_a_symlink_the_command_made(tmp_path: Path) -> None:
    """A command that replaced /etc with a symlink to a host directory (possible where the
    image has no /etc, so the runtime made it) must not have the stubs' removal at its end
    delete that directory's empty files."""
    from soute.runtime.rootfs import DirState, StubRecord, remove_stubs

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "hosts").touch()
    upper = tmp_path / "upper"
    upper.mkdir()
    os.symlink(outside, upper / "etc")
    record = StubRecord(created=["etc", "etc/hosts"],
                        parents=[DirState("", 0o40755, 0, 0, 0, 0, True)])
    remove_stubs(upper, [record])
    assert (outside / "hosts").exists()


# ---------------------------------------------------------------------------- isolation


def test_pid_one_hostname_proc_and_dev(layers: Layers) -> None:
    out = output(sh("echo $$; hostname; cat /etc/hostname; ls /proc/self/fd >/dev/null && "
                    "echo proc; echo x > /dev/null && head -c 5 /dev/zero | wc -c; "
                    "readlink /dev/ptmx; ls /dev"), layers)
    lines = out.splitlines()
    assert lines[:6] == ["1", "buildkitsandbox", "buildkitsandbox", "proc", "5", "pts/ptmx"]
    assert set(lines[6:]) == {"fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm",
                              "stderr", "stdin", "stdout", "tty", "urandom", "zero"}
    other = sh("hostname")
    other.hostname = "box"
    assert output(other, layers) == "box\n"


def test_network_none_has_only_loopback(layers: Layers) -> None:
    spec = sh("cat /proc/net/dev; cat /sys/class/net/lo/flags")
    spec.namespaces.add("network")
    out = output(spec, layers)
    assert net_devices(out) == {"lo"}
    assert int(out.splitlines()[-1], 16) & 1  # IFF_UP


def test_host_network_sees_host_interfaces(layers: Layers) -> None:
    out = output(Spec(Process(["cat", "/proc/net/dev"])), layers)
    assert net_devices(out) == net_devices(Path("/proc/net/dev").read_text())


def test_capabilities_and_no_new_privs(layers: Layers) -> None:
    script = "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status"

    def status(**process: object) -> dict[str, str]:
        out = output(sh(script, **process), layers)
        return dict(line.split(":\t") for line in out.splitlines())

    ours = int(next(line.split()[1] for line in Path("/proc/self/status").read_text()
                    .splitlines() if line.startswith("CapBnd:")), 16)
    full = status()
    assert int(full["CapEff"], 16) == ours and full["NoNewPrivs"] == "1"
    docker = status(capabilities=list(DEFAULT_CAPABILITIES), no_new_privileges=False)
    wanted = capability_mask(DEFAULT_CAPABILITIES) & ours
    assert int(docker["CapBnd"], 16) == int(docker["CapEff"], 16) == wanted
    assert docker["NoNewPrivs"] == "0"
    app = status(capabilities=list(DEFAULT_CAPABILITIES), user="app")
    assert int(app["CapEff"], 16) == 0 and int(app["CapBnd"], 16) == wanted


def test_masked_and_read_only_paths(layers: Layers) -> None:
    masked = next(p for p in ("/proc/kcore", "/proc/interrupts", "/proc/timer_list")
                  if os.path.exists(p))
    code, out, err = capture(sh(f"wc -c < {masked}; echo x > /proc/sys/kernel/domainname"),
                             layers)
    assert code != 0
    assert out == "0\n" and "Read-only file system" in err


def test_read_only_rootfs(layers: Layers) -> None:
    spec = sh("touch /x")
    spec.readonly_rootfs = True
    code, _, err = capture(spec, layers)
    assert code == 1 and "Read-only file system" in err
    assert upper_entries(layers) == []


# ---------------------------------------------------------------------------- the overlay


def test_writes_land_in_upper_and_lowers_stay(layers: Layers, base: Path) -> None:
    before = tree(base)
    assert run(sh("echo new > /new; echo more >> /etc/passwd; mkdir -p /d/e; "
                  "chown app /d/e"), layers) == 0
    assert tree(base) == before
    assert upper_entries(layers) == ["d", "d/e", "etc", "etc/passwd", "new"]
    assert (layers.upper / "new").read_text() == "new\n"
    assert (layers.upper / "etc" / "passwd").read_text() == PASSWD + "more\n"
    assert (layers.upper / "d" / "e").stat().st_uid == 1000


def test_deletions_are_whiteouts_and_opaque_dirs(tmp_path: Path, base: Path) -> None:
    extra = tmp_path / "extra"
    (extra / "data").mkdir(parents=True)
    (extra / "data" / "gone").write_text("x")
    (extra / "data" / "kept").write_text("y")
    (extra / "tree" / "sub").mkdir(parents=True)
    layers = new_layers(tmp_path, [base, extra])
    assert run(sh("rm /data/gone; rm -r /tree; mkdir /tree"), layers) == 0
    gone = (layers.upper / "data" / "gone").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(layers.upper / "tree", "trusted.overlay.opaque") == b"y"
    assert upper_entries(layers) == ["data", "data/gone", "tree"]
    assert (extra / "data" / "gone").exists()
    # No redirect or metacopy xattrs (the layer writer refuses them).
    for path in (layers.upper / "data", layers.upper / "tree"):
        assert not [x for x in os.listxattr(path) if x.endswith((".redirect", ".metacopy"))]


def test_etc_files_are_provided_but_never_committed(layers: Layers) -> None:
    out = output(sh("cat /etc/hosts /etc/hostname /etc/resolv.conf"), layers)
    host_resolv = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else ""
    assert out == ("127.0.0.1\tlocalhost buildkitsandbox\n"
                   "::1\tlocalhost ip6-localhost ip6-loopback\n"
                   "buildkitsandbox\n" + host_resolv)
    # The image had neither /etc/hosts nor /proc, /dev, /sys: their mountpoints are gone too.
    assert upper_entries(layers) == []


def test_stubs_leave_the_commands_own_changes(layers: Layers, base: Path) -> None:
    etc_mtime = (base / "etc").stat().st_mtime_ns
    assert run(sh("echo 1 > /etc/added"), layers) == 0
    assert upper_entries(layers) == ["etc", "etc/added"]
    assert (layers.upper / "etc").stat().st_mtime_ns >= etc_mtime
    code, _, err = capture(sh("echo x >> /etc/hosts"), layers)
    assert code != 0 and "Read-only file system" in err


def test_etc_files_over_existing_and_symlinked_ones(tmp_path: Path, base: Path) -> None:
    image = tmp_path / "image"
    (image / "etc").mkdir(parents=True)
    (image / "etc" / "hosts").write_text("image's hosts\n")
    os.symlink("/run/systemd/resolve/stub-resolv.conf", image / "etc" / "resolv.conf")
    layers = new_layers(tmp_path, [base, image])
    before = tree(image)
    custom = sh("cat /etc/hosts /etc/resolv.conf /run/systemd/resolve/stub-resolv.conf")
    custom.files = (GeneratedFile("/etc/hosts", b"mine\n"),
                    GeneratedFile("/etc/resolv.conf", b"nameserver 10.0.0.1\n"))
    assert output(custom, layers) == "mine\n" + "nameserver 10.0.0.1\n" * 2
    assert tree(image) == before
    assert upper_entries(layers) == []


def test_from_scratch_has_an_empty_lower(tmp_path: Path, base: Path) -> None:
    layers = new_layers(tmp_path, [])
    shutil.copytree(base / "bin", layers.upper / "bin", symlinks=True)
    assert output(sh("ls /"), layers).split() == ["bin", "dev", "etc", "proc", "sys"]
    assert upper_entries(layers) == sorted(["bin", *(f"bin/{p}" for p in os.listdir(base / "bin"))])


def test_a_hundred_lowers(tmp_path: Path, base: Path) -> None:
    lowers = [base]
    for i in range(100):
        lower = tmp_path / "layers" / f"lower-with-a-long-directory-name-{i:03d}"
        (lower / "stack").mkdir(parents=True)
        (lower / "stack" / f"f{i}").write_text(str(i))
        (lower / "stack" / "top").write_text(str(i))
        lowers.append(lower)
    layers = new_layers(tmp_path, lowers)
    assert len(":".join(map(str, lowers))) > 4096  # beyond what one mount option page holds
    assert output(sh("ls /stack | wc -l; cat /stack/top"), layers) == "101\n99"


def test_nothing_stays_mounted_or_on_disk(layers: Layers, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert run(sh("true"), layers, state_dir=state) == 0
    with pytest.raises(SouteError):
        run(Spec(Process(["missing"])), layers, state_dir=state)
    assert run(Spec(Process(["sleep", "30"])), layers, state_dir=state,
               on_start=lambda pid: os.kill(pid, signal.SIGKILL)) == 137
    assert Path("/proc/self/mountinfo").read_text() == mounts
    assert list(state.iterdir()) == []


def test_signals_are_forwarded(base: Path, tmp_path: Path) -> None:
    layers = new_layers(tmp_path, [base])
    # A loop of short sleeps: the trap runs within 50 ms whenever TERM comes in.
    script = "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"
    program = (
        "import sys\n"
        "from soute.runtime import Layers, Process, Spec, run\n"
        f"layers = Layers([{str(base)!r}], {str(layers.upper)!r}, {str(layers.work)!r})\n"
        f"sys.exit(run(Spec(Process(['sh', '-c', {script!r}])), layers))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 42
    finally:
        child.kill()


def test_a_second_interrupt_kills(base: Path, tmp_path: Path) -> None:
    layers = new_layers(tmp_path, [base])
    program = (
        "import sys\n"
        "from soute.runtime import Layers, Process, Spec, run\n"
        f"layers = Layers([{str(base)!r}], {str(layers.upper)!r}, {str(layers.work)!r})\n"
        "sys.exit(run(Spec(Process(['sleep', '30.5'])), layers))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", program])
    try:
        assert wait_until(lambda: bool(sleepers("30.5")))
        child.send_signal(signal.SIGINT)  # PID 1 has no handler: ignored, as under docker
        time.sleep(0.2)
        assert child.poll() is None
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 137
    finally:
        child.kill()


def test_container_dies_with_soute(base: Path, tmp_path: Path) -> None:
    layers = new_layers(tmp_path, [base])
    program = (
        "from pathlib import Path\n"
        "from soute.runtime import Layers, Process, Spec, run\n"
        f"layers = Layers([{str(base)!r}], {str(layers.upper)!r}, {str(layers.work)!r})\n"
        "run(Spec(Process(['sh', '-c', 'echo ready; exec sleep 31.25'])), layers,\n"
        f"    state_dir=Path({str(tmp_path)!r}))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        assert wait_until(lambda: bool(sleepers("31.25")))
    finally:
        child.kill()
        child.wait()
    assert wait_until(lambda: not sleepers("31.25"))


def wait_until(condition: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def sleepers(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[:2] == [b"sleep", marker.encode()]:
                found.append(int(entry))
    return found


def test_parallel_runs_from_threads(tmp_path: Path, base: Path) -> None:
    results: dict[int, str] = {}

    def one(i: int) -> None:
        layers = new_layers(tmp_path / str(i), [base])
        results[i] = output(sh(f"echo $$ {i} > /mine; cat /mine"), layers)
        # The fork did not leave this thread's next children in a new PID namespace.
        ns = "/proc/thread-self/ns/"
        assert os.readlink(ns + "pid_for_children") == os.readlink(ns + "pid")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"1 {i}\n" for i in range(8)}


def test_only_a_mount_namespace(layers: Layers) -> None:
    spec = sh("echo $$; hostname")
    spec.namespaces = {"mount"}
    pid, hostname = output(spec, layers).split()
    assert pid != "1" and hostname == os.uname().nodename


def test_bad_layers_fail_cleanly(tmp_path: Path, base: Path) -> None:
    mounts = Path("/proc/self/mountinfo").read_text()
    with pytest.raises(SouteError, match=r"layer directory .* does not exist"):
        run(sh("true"), Layers([tmp_path / "missing"], tmp_path, tmp_path))
    (tmp_path / "work").mkdir()
    with pytest.raises(SouteError, match=r"^mounting the root filesystem \(overlay\): "):
        run(sh("true"), Layers([base], base, tmp_path / "work"))  # upper inside a lower
    assert Path("/proc/self/mountinfo").read_text() == mounts


# ---------------------------------------------------------------------------- init layer


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, 0)


def _image_shape(top: Path, shape: str) -> None:
    """A layer over the busybox root that gives the image ``shape`` at /etc/mtab or /etc."""
    etc = top / "etc"
    etc.mkdir(parents=True)
    if shape == "file":
        (etc / "mtab").write_text("rootfs / rootfs rw 0 0\n")
    elif shape == "symlink":
        os.symlink("/nowhere", etc / "mtab")
    elif shape == "link-to-dir":
        os.symlink("/tmp", etc / "mtab")
    elif shape == "dir":
        (etc / "mtab").mkdir()
    elif shape == "etc-mode":
        os.chown(etc, 0, 50)
        etc.chmod(0o750)
    elif shape in ("etc-file", "etc-symlink"):
        etc.rmdir()
        if shape == "etc-file":
            etc.write_text("not a directory\n")
        else:
            (top / "etc2" / "mtab").mkdir(parents=True)
            os.symlink("etc2", etc)


# shape -> what `readlink /etc/mtab || stat -c %F /etc/mtab; stat -c '%a %u %g' /etc` prints,
# as docker 20.10's init layer makes it (the image's directory alone is kept).
INIT_SHAPES = {
    "none": "/proc/mounts\n755 0 0\n",
    "file": "/proc/mounts\n755 0 0\n",
    "symlink": "/proc/mounts\n755 0 0\n",
    "link-to-dir": "/proc/mounts\n755 0 0\n",
    "dir": "directory\n755 0 0\n",
    "etc-mode": "/proc/mounts\n750 0 50\n",
    "etc-file": "/proc/mounts\n755 0 0\n",
    "etc-symlink": "/proc/mounts\n755 0 0\n",
}


def with_init(layers: Layers, container: Path) -> Layers:
    """The layers with the container's init layer on the image's, as the monitor stacks them."""
    return Layers([*layers.lowers, container / INIT_LAYER], layers.upper, layers.work)


@pytest.mark.parametrize("shape", list(INIT_SHAPES))
def test_init_layer_links_etc_mtab(tmp_path: Path, base: Path, shape: str) -> None:
    top = tmp_path / "top"
    _image_shape(top, shape)
    before = tree(top)
    layers = new_layers(tmp_path, [base, top])
    container = tmp_path / "container"
    container.mkdir()
    make_init_layer(layers.lowers, container / INIT_LAYER)
    assert not [p for p in os.listdir(container) if p != INIT_LAYER]  # nothing left aside
    script = "readlink /etc/mtab || stat -c %F /etc/mtab; stat -c '%a %u %g' /etc"
    assert output(sh(script), with_init(layers, container), state_dir=container) \
        == INIT_SHAPES[shape]
    # In the view, never in the layer (commit) nor in the image.
    assert upper_entries(layers) == []
    assert tree(top) == before
    # A run without it (a build's RUN, as BuildKit's) sees the image's /etc/mtab, if any.
    if shape != "etc-file":  # no /etc/hosts for a RUN there
        code, out, _ = capture(sh("readlink /etc/mtab"), new_layers(tmp_path / "b", [base, top]))
        links = {"symlink": "/nowhere\n", "link-to-dir": "/tmp\n"}
        assert (code, out) == ((0, links[shape]) if shape in links else (1, ""))


def test_init_layer_under_whiteouts_and_opaque_dirs(tmp_path: Path, base: Path) -> None:
    """The image's /etc/mtab as overlayfs shows it: a whiteout or an opaque /etc hides it."""
    lower, top = tmp_path / "lower", tmp_path / "top"
    (lower / "etc" / "mtab").mkdir(parents=True)
    (top / "etc").mkdir(parents=True)
    found = merged_lstat([base, lower, top], "/etc//mtab/")
    assert found is not None and stat.S_ISDIR(found.st_mode)
    _whiteout(top / "etc" / "mtab")
    assert merged_lstat([base, lower, top], "etc/mtab") is None
    (top / "etc" / "mtab").unlink()
    os.setxattr(top / "etc", "trusted.overlay.opaque", b"y")
    assert merged_lstat([base, lower, top], "etc/mtab") is None
    assert merged_lstat([base, lower, top], "etc/passwd") is None
    assert merged_lstat([base, lower], "etc/passwd") is not None
    assert merged_lstat([base, lower], "bin/sh/x") is None  # a symlink is no directory
    assert merged_lstat([], "etc") is None
    layers = new_layers(tmp_path, [base, lower, top])
    (tmp_path / "c").mkdir()
    make_init_layer(layers.lowers, tmp_path / "c" / INIT_LAYER)
    assert output(sh("readlink /etc/mtab"), with_init(layers, tmp_path / "c"),
                  state_dir=tmp_path / "c") == "/proc/mounts\n"


def test_init_layer_changes_go_to_the_container_layer(tmp_path: Path, base: Path) -> None:
    """What the container does to /etc/mtab lands in its layer, as in docker's."""
    layers = new_layers(tmp_path, [base])
    container = tmp_path / "container"
    container.mkdir()
    make_init_layer(layers.lowers, container / INIT_LAYER)
    assert run(sh("rm /etc/mtab && echo 1 > /etc/added"), with_init(layers, container),
               state_dir=container) == 0
    gone = (layers.upper / "etc" / "mtab").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert upper_entries(layers) == ["etc", "etc/added", "etc/mtab"]
    assert os.readlink(container / INIT_LAYER / "etc" / "mtab") == "/proc/mounts"
    # A FROM scratch image gets /etc too.
    scratch = new_layers(tmp_path / "s", [])
    shutil.copytree(base / "bin", scratch.upper / "bin", symlinks=True)
    (tmp_path / "s" / "c").mkdir()
    make_init_layer(scratch.lowers, tmp_path / "s" / "c" / INIT_LAYER)
    assert output(sh("ls /etc; readlink /etc/mtab"), with_init(scratch, tmp_path / "s" / "c"),
                  state_dir=tmp_path / "s" / "c") \
        == "hostname\nhosts\nmtab\nresolv.conf\n/proc/mounts\n"


def test_bad_tmpfs_options_are_named(layers: Layers) -> None:
    spec = sh("true")
    spec.mounts = [*default_mounts(), Mount("/scratch", "tmpfs", "tmpfs", ("nosuid", "size=abc"))]
    with pytest.raises(SouteError, match=r"^mounting /scratch \(tmpfs options size=abc\): "
                                         r"invalid argument$"):
        run(spec, layers)


# ---------------------------------------------------------------------------- OCI runtimes


def test_oci_config(layers: Layers, base: Path, tmp_path: Path) -> None:
    spec = Spec(Process(["id"], user="app", capabilities=list(DEFAULT_CAPABILITIES)))
    spec.namespaces.add("network")
    config = to_oci_config(spec, base, files_dir=tmp_path)
    assert config["ociVersion"] == "1.0.2"
    assert config["root"] == {"path": str(base), "readonly": False}
    assert config["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 50]}
    assert config["process"]["capabilities"]["bounding"] == list(DEFAULT_CAPABILITIES)
    assert config["hostname"] == "buildkitsandbox"
    assert [m["destination"] for m in config["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
        "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]
    assert config["mounts"][-1]["options"] == ["rbind", "ro"]
    assert {n["type"] for n in config["linux"]["namespaces"]} == {
        "pid", "mount", "uts", "ipc", "network"}
    assert "/proc/kcore" in config["linux"]["maskedPaths"]


@needs_runc
def test_runc_runs_the_same_bundle(layers: Layers) -> None:
    script = ("echo $$; hostname; id; env | sort; ls -l /dev | awk '{print $1, $NF}'; pwd; "
              "grep -E '^(Cap|NoNewPrivs)' /proc/self/status; cat /etc/hosts; mount")
    for user in ("", "app"):
        spec = sh(script, user=user, cwd="/home")
        ours = capture(spec, layers)
        theirs = capture(spec, layers, runtime="runc")
        assert (theirs[0], _same_mounts(theirs[1]), theirs[2]) == (
            ours[0], _same_mounts(ours[1]), ours[2])
        assert ours[0] == 0
        # runc's device cgroup is nodev here: no node made in / or /dev can be opened.
        assert "tmpfs on /dev type tmpfs (rw,nosuid,nodev," in ours[1]
        assert re.search(r"^overlay on / type overlay \(rw,nodev,", ours[1], re.M)
    assert run(sh("exit 3"), layers, runtime="runc") == 3
    assert upper_entries(layers) == ["home"]
    with pytest.raises(SouteError) as info:
        run(Spec(Process(["nonexistent"])), layers, runtime="runc")
    assert str(info.value) == 'exec: "nonexistent": executable file not found in $PATH'


def test_device_nodes_open_only_with_all_devices(layers: Layers) -> None:
    """What a container (or a layer of its image) makes is nodev: only the default nodes
    open, unless the spec allows every device (--privileged, RUN --security=insecure)."""
    make = sh("mkdir -p /srv && mknod /srv/k c 1 11 && mknod /dev/k c 1 11")
    assert output(make, layers) == ""
    opens = ("for f in /srv/k /dev/k /dev/null /dev/zero /dev/urandom; do "
             "dd if=$f bs=1 count=0 2>/dev/null; echo $?; done")
    assert output(sh(opens.replace("/dev/k ", "")), layers).split() == ["1", "0", "0", "0"]
    everything = sh(f"mknod /dev/k c 1 11; {opens}", capabilities=None)
    everything.all_devices = True
    assert output(everything, layers).split() == ["0"] * 5
    assert stat.S_ISCHR((layers.upper / "srv" / "k").lstat().st_mode)  # kept in the layer


def _same_mounts(output: str) -> str:
    """``mount``'s lines as runc's and soute's runtimes should agree on them: soute's /dev
    nodes are bind mounted from a tmpfs of their own (/dev itself is nodev); so is the
    /dev/null that masks files of /proc."""
    lines = []
    for line in output.splitlines():
        if re.match(r"(dev)?tmpfs on /dev/(null|zero|full|random|urandom|tty) ", line):
            continue
        line = re.sub(r"^(dev)?tmpfs on (/proc/\S+) type .*", r"\2 masked", line)
        lines.append(line.replace("nodev,", "") if " on /dev " in line or " on /etc/" in line
                     else line)
    return "\n".join(lines)


@needs_runc
def test_sysctls_as_runc_sets_them(layers: Layers) -> None:
    """Written in the container's namespaces before /proc/sys turns read-only, by soute's
    runtime as by runc (config.json's linux.sysctl)."""
    spec = sh("cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shmmax; "
              "echo 1 > /proc/sys/kernel/shmmax || echo read-only")
    spec.namespaces.add("network")
    spec.sysctl = (("net.ipv4.ip_unprivileged_port_start", "80"), ("kernel.shmmax", "4096"))
    ours = capture(spec, layers)
    assert ours[0] == 0 and ours[1].startswith("80\n4096\n") and "read-only" in ours[1]
    assert capture(spec, layers, runtime="runc") == ours
    assert capture(sh("cat /proc/sys/kernel/shmmax"), layers)[1] != "4096\n"  # not the host's
    spec.sysctl = (("net.ipv4.no_such_thing", "1"),)
    with pytest.raises(SouteError, match="no_such_thing: no such file or directory"):
        run(spec, layers)


@needs_runc
def test_runc_writes_land_in_upper(layers: Layers) -> None:
    assert run(sh("echo hi > /hello; rm /bin/vi"), layers, runtime="runc") == 0
    assert upper_entries(layers) == ["bin", "bin/vi", "hello"]
    assert stat.S_ISCHR((layers.upper / "bin" / "vi").lstat().st_mode)


def test_unknown_runtime(layers: Layers) -> None:
    with pytest.raises(SouteError, match="OCI runtime no-such-runtime not found"):
        run(sh("true"), layers, runtime="no-such-runtime")


# ---------------------------------------------------------------------------- paths


def test_scoped_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "real").mkdir()
    os.symlink("/real", root / "abs")
    os.symlink("../../../real", root / "etc" / "rel")
    os.symlink("loop", root / "loop")
    r = str(root)
    assert scoped_path(r, "/abs/x") == f"{r}/real/x"
    assert scoped_path(r, "/etc/rel/y") == f"{r}/real/y"
    assert scoped_path(r, "/../../etc") == f"{r}/etc"
    assert scoped_path(r, "/missing/../etc") == f"{r}/etc"
    assert scoped_path(r, "/") == r
    with pytest.raises(OSError, match="Too many levels"):
        scoped_path(r, "/loop")


def test_remove_tree_goes_deep_and_follows_no_symlink(tmp_path: Path) -> None:
    from soute.runtime.paths import remove_tree

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("kept\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link").symlink_to(outside)
    locked = tree / "locked"
    locked.mkdir()
    (locked / "f").write_text("x")
    locked.chmod(0)
    # Deeper than PATH_MAX: made from inside, a level at a time.
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(30):
        os.mkdir("d" * 200, dir_fd=fd)
        child = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.close(fd)
    remove_tree(tree)
    assert not tree.exists()
    assert (outside / "keep").read_text() == "kept\n"
    remove_tree(tree)  # gone already: nothing to do
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "file")
    assert not (tmp_path / "file").exists()



# ---------------------------------------------------------------------------- isolation


def _dumpable() -> int:
    import ctypes

    return int(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE


def test_a_process_joining_a_container_is_not_dumpable_until_exec() -> None:
    """The child that joins a running container's PID namespace is not dumpable from its
    birth (the container's processes cannot open its descriptors in /proc/PID/fd) and keeps
    none of ours but those it is given; we stay dumpable."""
    import json

    from soute.runtime.executor import _close_all_but, _fork

    kept = os.open("/dev/null", os.O_RDONLY)
    other = os.open("/dev/null", os.O_RDONLY)
    report_r, report_w = os.pipe()
    own = os.open("/proc/self/ns/pid", os.O_RDONLY)
    try:
        pid = _fork(join_pid_namespace=own)
        if pid == 0:  # pragma: no cover - the child
            try:
                dumpable = _dumpable()
                _close_all_but({0, 1, 2, report_w, kept})
                left = [int(n) for n in os.listdir("/proc/self/fd")]
                os.write(report_w, json.dumps([dumpable, left]).encode())
            finally:
                os._exit(0)
        os.close(report_w)
        dumpable, left = json.loads(os.read(report_r, 4096))
        os.waitpid(pid, 0)
        assert dumpable == 0
        assert kept in left and other not in left and report_r not in left
        assert len(set(left) - {0, 1, 2, report_w, kept}) <= 1  # the listing's own
        assert _dumpable() == 1
    finally:
        for fd in (kept, other, report_r, own):
            os.close(fd)


def test_a_container_does_not_share_our_session_keyring(layers: Layers) -> None:
    """A key of the caller's session keyring is out of the container's reach (runc gives
    every container process a session keyring of its own)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    add_key, keyctl = {"x86_64": (248, 250), "aarch64": (217, 219)}[os.uname().machine]
    marker = f"soute-test-key-{os.getpid()}"
    # A session keyring of this test's own (KEYCTL_JOIN_SESSION_KEYRING), then a key in it
    # (KEY_SPEC_SESSION_KEYRING, -3).
    assert libc.syscall(ctypes.c_long(keyctl), ctypes.c_int(1),
                        ctypes.c_char_p(b"soute-test-session")) >= 0
    key = libc.syscall(ctypes.c_long(add_key), ctypes.c_char_p(b"user"),
                       ctypes.c_char_p(marker.encode()), ctypes.c_char_p(b"secret"),
                       ctypes.c_size_t(6), ctypes.c_int(-3))
    assert key >= 0, os.strerror(ctypes.get_errno())
    # Its possessor alone may see or read it (KEYCTL_SETPERM: possessor all, others none);
    # without a session keyring of its own the container would possess it.
    assert libc.syscall(ctypes.c_long(keyctl), ctypes.c_int(5), ctypes.c_int(key),
                        ctypes.c_uint(0x3F000000)) == 0
    assert marker in Path("/proc/keys").read_text()  # we see it
    spec = sh("cat /proc/keys")
    spec.masked_paths = ()
    seen = output(spec, layers)
    assert "_ses" in seen and marker not in seen


def test_nodev_reaches_mounts_below_a_bind_and_a_tmpfs_asked_with_dev(
        layers: Layers, tmp_path: Path) -> None:
    """A node on a mount below a bound directory (the host's /dev under -v /:/host, say),
    or in a tmpfs asked with ``dev``, cannot be opened either."""
    from soute.runtime import _linux

    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    _linux.mount("tmpfs", str(shared / "sub"), "tmpfs", 0, "size=16k")
    try:
        os.mknod(shared / "sub" / "kmsg", stat.S_IFCHR | 0o600, os.makedev(1, 11))
        spec = sh("dd if=/host/sub/kmsg bs=1 count=0 2>/dev/null; echo $?; "
                  "mknod /t/kmsg c 1 11 && dd if=/t/kmsg bs=1 count=0 2>/dev/null; echo $?")
        spec.mounts += [Mount("/host", "bind", str(shared), ("rbind", "ro")),
                        Mount("/t", "tmpfs", "tmpfs", ("dev",))]
        assert output(spec, layers).split() == ["1", "1"]
        spec.all_devices = True
        spec.process.capabilities = None
        assert output(spec, layers).split() == ["0", "0"]
    finally:
        _linux.umount2(str(shared / "sub"), _linux.MNT_DETACH)
