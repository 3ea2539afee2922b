"""soute run and the container lifecycle, end to end through the CLI, on a busybox image.

Every test drives real containers: namespaces, overlayfs, the detached monitor, the port
proxy. Containers are removed in teardown so a failure never leaves one running.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import termios
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from soute_cli import (
    busybox_store,
    collecting,
    fake_command,
    ok,
    soute,
    threads_of,
    waiting_for_the_store,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = busybox_store(tmp_path_factory)
    context = tmp_path_factory.mktemp("ctx")
    (context / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN mkdir -p /data /www && echo seeded > /data/seed.txt && echo page > /www/index.html"
        " && echo app:x:1000:1000:app:/home/app:/bin/sh >> /etc/passwd"
        " && printf 'app:x:1000:\\nstaff2:x:50:app\\n' >> /etc/group && mkdir -p /home/app\n"
        "VOLUME /data\n"
        "EXPOSE 8080\n"
        'STOPSIGNAL SIGUSR1\n'
        'CMD ["sh", "-c", "trap \'echo got USR1; exit 0\' USR1; echo ready; '
        'while true; do sleep 0.1; done"]\n')
    ok(soute(path, "build", "-q", "-t", "box", str(context)))
    yield path
    for cid in ok(soute(path, "ps", "-a", "-q")).split():
        soute(path, "rm", "-f", "-v", cid)


def wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def state(root: Path, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads(ok(soute(root, "container", "inspect", name)))[0]["State"]  # type: ignore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- foreground


def test_run_prints_output_and_returns_the_exit_code(root: Path) -> None:
    p = soute(root, "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (p.returncode, p.stdout, p.stderr) == (3, "out\n", "err\n")


def test_a_signal_death_is_128_plus_the_signal_and_init_reaps(root: Path) -> None:
    # PID 1 cannot SIGKILL itself (the kernel protects a namespace's init): with --init,
    # tini is PID 1 and passes the shell's death on as 128+9.
    p = soute(root, "run", "--rm", "--init", "busybox", "sh", "-c", "echo $$; kill -9 $$")
    assert p.returncode == 137 and p.stdout.strip() != "1"  # sh was not PID 1


def test_rm_leaves_nothing(root: Path) -> None:
    before = ok(soute(root, "ps", "-a", "-q"))
    ok(soute(root, "run", "--rm", "busybox", "true"))
    assert ok(soute(root, "ps", "-a", "-q")) == before


def test_env_workdir_user_and_hostname(root: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\nFROM_FILE=yes\nB=file\n")
    out = ok(soute(root, "run", "--rm", "-e", "A=1", "--env-file", str(env_file), "-e", "B=flag",
                   "-w", "/tmp/new", "-u", "app", "-h", "boxhost", "box", "sh", "-c",
                   'echo $A $B $FROM_FILE $HOME; pwd; id; hostname'))
    assert out.splitlines() == [
        "1 flag yes /home/app", "/tmp/new",
        "uid=1000(app) gid=1000(app) groups=50(staff2),1000(app)", "boxhost"]


def test_hostname_is_the_short_id_and_env_has_docker_defaults(root: Path) -> None:
    ok(soute(root, "run", "--name", "hn", "busybox", "sh", "-c", "hostname; env | sort"))
    full_id = json.loads(ok(soute(root, "inspect", "hn")))[0]["Id"]
    out = ok(soute(root, "logs", "hn")).splitlines()
    assert out[0] == full_id[:12]
    assert f"HOSTNAME={full_id[:12]}" in out
    assert "HOME=/root" in out
    assert any(line.startswith("PATH=/usr/local/sbin") for line in out)
    ok(soute(root, "rm", "hn"))


def test_entrypoint_flag_drops_the_image_cmd(root: Path) -> None:
    assert ok(soute(root, "run", "--rm", "--entrypoint", "echo", "box")) == "\n"
    assert ok(soute(root, "run", "--rm", "--entrypoint", "echo", "box", "a", "b")) == "a b\n"


def test_stdin_with_i(root: Path) -> None:
    p = soute(root, "run", "--rm", "-i", "busybox", "tr", "a-z", "A-Z", input="hello\n")
    assert p.stdout == "HELLO\n"
    # Without -i the container reads /dev/null.
    assert ok(soute(root, "run", "--rm", "busybox", "cat", input="ignored\n")) == ""


# A masked path this kernel has (/proc/kcore is missing on some virtual machines).
MASKED = next(p for p in ("/proc/timer_list", "/proc/keys", "/proc/kcore") if os.path.exists(p))


def test_isolation_defaults(root: Path) -> None:
    out = ok(soute(root, "run", "--rm", "busybox", "sh", "-c",
                   "echo $$; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
                   f"cat {MASKED} 2>&1 | wc -c; ls /dev; grep ' /proc/sys ' /proc/mounts"))
    lines = out.splitlines()
    assert lines[0] == "1"  # PID 1 of its own PID namespace
    assert lines[1] == "CapEff:\t00000000a80425fb"  # docker's default capability set
    assert lines[2] == "NoNewPrivs:\t1"
    assert lines[3] == "0"  # masked
    devices = set(" ".join(lines[4:-1]).split())
    assert {"null", "zero", "random", "urandom", "tty", "pts", "shm"} <= devices
    assert " ro," in lines[-1]


def test_network_modes(root: Path) -> None:
    private = ok(soute(root, "run", "--rm", "busybox", "cat", "/proc/net/dev"))
    assert "lo:" in private
    none = ok(soute(root, "run", "--rm", "--network", "none", "busybox", "cat", "/proc/net/dev"))
    assert [line.split(":")[0].strip() for line in none.splitlines()[2:]] == ["lo"]
    host = ok(soute(root, "run", "--rm", "--network", "host", "busybox", "cat", "/proc/net/dev"))
    assert host.count(":") >= private.count(":")
    assert Path("/proc/net/dev").read_text().count(":") == host.count(":")


class Screen:
    """What a terminal shows of the program on the other side of ``fd``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.output = b""

    def read_until(self, marker: bytes, within: float = 20) -> None:
        deadline = time.monotonic() + within
        while marker not in self.output and time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.5)[0]:
                try:
                    self.output += os.read(self.fd, 4096)
                except OSError:
                    break
        assert marker in self.output, self.output


def test_terminal_with_t(root: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: soute under a terminal (40 rows, 100 columns), as a user types
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        os.execv(sys.executable, [sys.executable, "-m", "soute.cli.main", "--root", str(root),
                                  "run", "--rm", "-i", "-t", "busybox", "sh"])
    screen = Screen(fd)

    try:
        os.write(fd, b"tty; echo $TERM; stty size\n")
        screen.read_until(b"40 100")
        os.write(fd, b"exit 5\n")
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # an interactive shell ignores SIGTERM
        raise
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    # The host's pty is the container's console, as runc does it (docker shows /dev/pts/0).
    assert b"/dev/console\r\n" in screen.output and b"xterm" in screen.output
    assert os.waitstatus_to_exitcode(status) == 5


# ---------------------------------------------------------------------------- detached


def test_detached_lifecycle_with_stop_signal(root: Path) -> None:
    cid = ok(soute(root, "run", "-d", "--name", "life", "box")).strip()
    assert len(cid) == 64
    wait_for(lambda: "ready" in ok(soute(root, "logs", "life")))
    ps = ok(soute(root, "ps"))
    assert cid[:12] in ps and "Up " in ps and "life" in ps
    assert ok(soute(root, "ps", "-q")).split().count(cid[:12]) == 1
    top = ok(soute(root, "top", "life")).splitlines()
    assert top[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert any("trap" in row for row in top[1:])
    assert ok(soute(root, "exec", "life", "cat", "/data/seed.txt")) == "seeded\n"
    assert ok(soute(root, "exec", "-u", "app", "-w", "/www", "-e", "X=y", "life", "sh", "-c",
                    "id -u; pwd; echo $X")) == "1000\n/www\ny\n"
    assert soute(root, "exec", "life", "sh", "-c", "exit 7").returncode == 7
    missing = soute(root, "exec", "life", "nosuch")
    assert missing.returncode == 126 and "executable file not found" in missing.stderr
    # STOPSIGNAL SIGUSR1: the trap runs and the container exits 0 well before the timeout.
    ok(soute(root, "stop", "-t", "30", "life"))
    assert "got USR1" in ok(soute(root, "logs", "life"))
    st = state(root, "life")
    assert (st["Status"], st["ExitCode"], st["Running"]) == ("exited", 0, False)
    assert "Exited (0)" in ok(soute(root, "ps", "-a"))
    ok(soute(root, "start", "life"))
    assert state(root, "life")["Running"]
    ok(soute(root, "rm", "-f", "life"))
    assert "life" not in ok(soute(root, "ps", "-a"))


def test_stop_kills_after_the_timeout(root: Path) -> None:
    ok(soute(root, "run", "-d", "--name", "stubborn", "busybox", "sleep", "300"))
    ok(soute(root, "stop", "-t", "1", "stubborn"))  # sleep as PID 1 ignores SIGTERM
    assert state(root, "stubborn")["ExitCode"] == 137
    ok(soute(root, "rm", "stubborn"))


def test_crash_shows_its_exit_code_and_wait_returns_it(root: Path) -> None:
    ok(soute(root, "run", "-d", "--name", "crash", "busybox", "sh", "-c", "sleep 0.3; exit 42"))
    assert ok(soute(root, "wait", "crash")) == "42\n"
    assert "Exited (42)" in ok(soute(root, "ps", "-a"))
    ok(soute(root, "rm", "crash"))


def test_rm_refuses_a_running_container_and_kill_signals(root: Path) -> None:
    ok(soute(root, "run", "-d", "--name", "busy", "box"))
    p = soute(root, "rm", "busy")
    assert p.returncode != 0 and "running container" in p.stderr
    ok(soute(root, "kill", "-s", "USR1", "busy"))
    assert ok(soute(root, "wait", "busy")) == "0\n"
    ok(soute(root, "rm", "busy"))


def test_a_killed_monitor_never_lies(root: Path) -> None:
    ok(soute(root, "run", "-d", "--name", "orphan", "busybox", "sleep", "300"))
    st = json.loads((root / "containers" / state_id(root, "orphan") / "state.json").read_text())
    os.kill(st["monitor_pid"], signal.SIGKILL)
    # The container dies with its monitor; ps then tells the truth.
    wait_for(lambda: not os.path.exists(f"/proc/{st['pid']}"))
    wait_for(lambda: "Exited (137)" in ok(soute(root, "ps", "-a")))
    assert "0 problem(s)" in ok(soute(root, "fsck", "--quick"))
    ok(soute(root, "rm", "orphan"))


def state_id(root: Path, name: str) -> str:
    return str(json.loads(ok(soute(root, "inspect", name)))[0]["Id"])


def test_interactive_detached_stays_up(root: Path) -> None:
    ok(soute(root, "run", "-d", "-i", "--name", "dsh", "busybox", "sh"))
    time.sleep(0.5)
    assert state(root, "dsh")["Running"]  # stdin stays open: sh waits on it
    ok(soute(root, "rm", "-f", "dsh"))


# ---------------------------------------------------------------------------- ports


def http_get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
        return str(r.read().decode())


def test_publish_and_publish_all(root: Path) -> None:
    port = free_port()
    ok(soute(root, "run", "-d", "--name", "web1", "-p", f"127.0.0.1:{port}:8080", "box",
             "httpd", "-f", "-p", "8080", "-h", "/www"))
    try:
        wait_for(lambda: _answers(port))
        assert http_get(port) == "page\n"
        assert ok(soute(root, "port", "web1")) == f"8080/tcp -> 127.0.0.1:{port}\n"
        assert f"127.0.0.1:{port}->8080/tcp" in ok(soute(root, "ps"))
        taken = soute(root, "run", "-d", "-p", f"127.0.0.1:{port}:80", "busybox", "sleep", "9")
        assert taken.returncode == 125
        assert "port is already allocated" in taken.stderr
        assert len(taken.stderr.strip().splitlines()) == 1
    finally:
        ok(soute(root, "rm", "-f", "web1"))
    with socket.socket() as s:  # the port is free again (connections may be in TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    ok(soute(root, "run", "-d", "--name", "web2", "-P", "box", "httpd", "-f", "-p", "8080", "-h",
             "/www"))
    try:
        host = ok(soute(root, "port", "web2", "8080")).strip()
        assert host.startswith("0.0.0.0:")
        published = int(host.rsplit(":", 1)[1])
        wait_for(lambda: _answers(published))
        assert http_get(published) == "page\n"
    finally:
        ok(soute(root, "rm", "-f", "web2"))


def _answers(port: int) -> bool:
    try:
        http_get(port)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------- volumes


def test_bind_mounts_read_write_and_read_only(root: Path, tmp_path: Path) -> None:
    ok(soute(root, "run", "--rm", "-v", f"{tmp_path}:/work", "busybox", "sh", "-c",
             "echo hi > /work/out.txt"))
    assert (tmp_path / "out.txt").read_text() == "hi\n"
    p = soute(root, "run", "--rm", "-v", f"{tmp_path}:/work:ro", "busybox", "touch", "/work/x")
    assert p.returncode != 0 and "Read-only file system" in p.stderr
    missing = tmp_path / "missing"
    p = soute(root, "run", "--rm", "--mount", f"type=bind,source={missing},target=/m", "busybox",
              "true")
    assert p.returncode == 125 and "bind source path does not exist" in p.stderr
    assert not missing.exists()


def test_named_volume_persists_and_image_volume_is_seeded(root: Path) -> None:
    ok(soute(root, "run", "--rm", "-v", "keep:/data", "box", "sh", "-c",
             "cat /data/seed.txt; echo more > /data/more.txt"))
    out = ok(soute(root, "run", "--rm", "-v", "keep:/data", "box", "ls", "/data"))
    assert out.split() == ["more.txt", "seed.txt"]  # seeded from the image, then kept
    assert "keep" in ok(soute(root, "volume", "ls", "-q")).split()
    info = json.loads(ok(soute(root, "volume", "inspect", "keep")))[0]
    assert Path(info["Mountpoint"], "more.txt").read_text() == "more\n"
    ok(soute(root, "run", "--name", "uses", "-v", "keep:/data", "box", "true"))
    p = soute(root, "volume", "rm", "keep")
    assert p.returncode != 0 and "volume is in use" in p.stderr
    ok(soute(root, "rm", "uses"))
    ok(soute(root, "volume", "rm", "keep"))
    # The image's VOLUME gets an anonymous volume with the image's content.
    assert ok(soute(root, "run", "--rm", "box", "cat", "/data/seed.txt")) == "seeded\n"
    # A relative one (a mistaken mix of forms, which BuildKit records as it is) goes under
    # the root, as docker puts it.
    ok(soute(root, "build", "-q", "-t", "odd-volumes", "-",
             input='FROM box\nVOLUME rel ["/v2", "/v3"]\n'))
    mounted = ok(soute(root, "run", "--rm", "odd-volumes", "cut", "-d", " ", "-f", "2",
                       "/proc/mounts")).split()
    assert {"/rel", "/[/v2,", "/v3]", "/data"} <= set(mounted)


# ---------------------------------------------------------------------------- commit, export


def test_commit_makes_an_image_with_the_change_and_the_command(root: Path, tmp_path: Path
                                                               ) -> None:
    ok(soute(root, "run", "--name", "changer", "busybox", "sh", "-c",
             "echo made > /made.txt; rm /bin/vi"))
    image_id = ok(soute(root, "commit", "-m", "add made.txt", "-c", 'CMD ["cat", "/made.txt"]',
                        "changer", "committed:1")).strip()
    assert image_id.startswith("sha256:")
    assert ok(soute(root, "run", "--rm", "committed:1")) == "made\n"
    assert soute(root, "run", "--rm", "committed:1", "ls", "/bin/vi").returncode != 0
    history = ok(soute(root, "history", "--no-trunc", "committed:1")).splitlines()
    assert "sh -c echo made > /made.txt; rm /bin/vi" in history[1]
    assert "add made.txt" in history[1]
    out = tmp_path / "fs.tar"
    ok(soute(root, "export", "-o", str(out), "changer"))
    names = subprocess.run(["tar", "-tf", str(out)], capture_output=True, text=True).stdout
    assert "made.txt" in names and "bin/sh" in names and "bin/vi\n" not in names
    # the init layer is exported, as docker does
    assert "etc/mtab" in names.split() and ".dockerenv" in names.split()
    ok(soute(root, "rm", "changer"))
    ok(soute(root, "rmi", "committed:1"))


def test_rmi_refuses_an_image_a_container_uses(root: Path) -> None:
    ok(soute(root, "tag", "busybox", "inuse:1"))
    ok(soute(root, "run", "--name", "user", "inuse:1", "true"))
    ok(soute(root, "rmi", "busybox"))  # another tag remains: untag only
    ok(soute(root, "tag", "inuse:1", "busybox"))
    assert ok(soute(root, "rmi", "inuse:1")) == "Untagged: inuse:1\n"  # busybox remains
    ok(soute(root, "tag", "busybox", "inuse:1"))
    image_id = json.loads(ok(soute(root, "inspect", "--type", "image", "busybox")))[0]["Id"]
    p = soute(root, "rmi", image_id)
    assert p.returncode != 0 and "being used by stopped container" in p.stderr
    ok(soute(root, "rm", "user"))
    ok(soute(root, "tag", "busybox", "inuse:1"))
    ok(soute(root, "rmi", "inuse:1"))


def test_rmi_racing_run_leaves_no_container_without_its_image(root: Path, tmp_path: Path
                                                             ) -> None:
    """An rmi while a run creates its container: one of them wins, the other says why in
    one line; a container never outlives its image, and a run never starts on freed
    layers. Each round starts rmi at another moment of run's start, 1 ms apart (from 4 ms
    before it to 11 ms after): run makes its container some 5 ms after rmi would start."""
    import tarfile

    from soute.store.names import resolve
    from soute.store.store import Store

    with Store(root) as store:
        snapshot = store.snapshots(resolve(store, "busybox").diff_ids)[-1]
    for i in range(16):
        tar = tmp_path / f"race{i}.tar"
        with tarfile.open(tar, "w") as t:
            t.add(snapshot / "bin" / "busybox", "bin/busybox")
            link = tarfile.TarInfo("bin/true")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(link)
            mark = tarfile.TarInfo("round")
            data = str(i).encode()
            mark.size = len(data)
            t.addfile(mark, io.BytesIO(data))
        image = f"race:{i}"
        ok(soute(root, "import", str(tar), image))
        cli = [sys.executable, "-m", "soute.cli.main", "--root", str(root)]
        run_argv = [*cli, "run", "-d", "--name", f"race{i}", image, "true"]
        rmi_argv = [*cli, "rmi", image]
        lead = 0.001 * (i - 4)
        first = subprocess.Popen(rmi_argv if lead < 0 else run_argv,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(abs(lead))
        second = subprocess.Popen(run_argv if lead < 0 else rmi_argv,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        run, rmi = (second, first) if lead < 0 else (first, second)
        run_out, run_err = run.communicate(timeout=60)
        rmi_out, rmi_err = rmi.communicate(timeout=60)
        try:
            if rmi.returncode == 0:  # the image went first: no container was made
                assert run.returncode != 0, (i, run_out, rmi_out)
                assert "No such image" in run_err and "Traceback" not in run_err, (i, run_err)
                assert soute(root, "inspect", "--type", "container", f"race{i}").returncode
            else:  # the container came first and keeps its image
                assert run.returncode == 0, (i, run_err, rmi_err)
                assert "conflict" in rmi_err and len(rmi_err.splitlines()) == 1, (i, rmi_err)
                ok(soute(root, "inspect", "--type", "image", image))
        finally:
            soute(root, "rm", "-f", f"race{i}")
            soute(root, "rmi", image)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("args", "message"), [
    (["no-such-image"], "No such image"),
    (["-u", "nobody-here", "busybox", "true"], "unable to find user nobody-here"),
    (["--network", "nope", "busybox"], "invalid choice"),
    (["-p", "80:abc", "busybox", "true"], "invalid publish spec"),
])
def test_bad_input_is_one_line_and_125(root: Path, args: list[str], message: str) -> None:
    before = ok(soute(root, "ps", "-a", "-q"))
    p = soute(root, "run", "--rm", *args)
    assert p.returncode in (125, 2) if "invalid choice" in message else p.returncode == 125
    assert message in p.stderr
    assert "Traceback" not in p.stderr
    assert ok(soute(root, "ps", "-a", "-q")) == before


def test_not_found_command_is_127(root: Path) -> None:
    p = soute(root, "run", "--rm", "busybox", "no-such-command")
    assert p.returncode == 127
    assert 'exec: "no-such-command": executable file not found in $PATH' in p.stderr


def test_sigkill_of_the_foreground_cli_leaves_the_truth(root: Path) -> None:
    cli = subprocess.Popen([sys.executable, "-m", "soute.cli.main", "--root", str(root), "run",
                            "--name", "fg", "busybox", "sleep", "300"])
    try:
        wait_for(lambda: soute(root, "inspect", "fg").returncode == 0
                 and state(root, "fg")["Running"])
        pid = state(root, "fg")["Pid"]
        cli.kill()
        cli.wait()
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"))  # it died with its monitor
        st = state(root, "fg")
        assert (st["Status"], st["ExitCode"]) == ("exited", 137)
        assert "0 problem(s)" in ok(soute(root, "fsck", "--quick"))
    finally:
        cli.kill()
        soute(root, "rm", "-f", "fg")


def test_restart_rename_and_prune(root: Path) -> None:
    ok(soute(root, "run", "-d", "--name", "again", "box"))
    first = state(root, "again")["Pid"]
    ok(soute(root, "restart", "-t", "5", "again"))
    st = state(root, "again")
    assert st["Running"] and st["Pid"] != first
    ok(soute(root, "rename", "again", "renamed"))
    assert state(root, "renamed")["Running"]
    assert soute(root, "inspect", "again").returncode != 0
    ok(soute(root, "run", "--name", "done1", "busybox", "true"))
    pruned = ok(soute(root, "container", "prune", "-f"))
    assert state_id_gone(root, "done1") and "Deleted Containers" in pruned
    assert state(root, "renamed")["Running"]  # a running container is kept
    ok(soute(root, "rm", "-f", "-v", "renamed"))
    ok(soute(root, "volume", "prune", "-f"))
    assert ok(soute(root, "volume", "ls", "-q")) == ""


def state_id_gone(root: Path, name: str) -> bool:
    return soute(root, "inspect", "--type", "container", name).returncode != 0


def test_system_prune_filters_spare_containers_too(root: Path) -> None:
    ok(soute(root, "create", "--name", "pr-marked", "-l", "prunable=yes", "busybox", "true"))
    ok(soute(root, "create", "--name", "pr-kept", "busybox", "true"))
    try:
        ok(soute(root, "system", "prune", "-f", "--filter", "until=1h"))  # both too young
        names = ok(soute(root, "ps", "-a", "--format", "{{.Names}}")).split()
        assert {"pr-marked", "pr-kept"} <= set(names)
        out = ok(soute(root, "system", "prune", "-f", "--filter", "label=prunable=yes"))
        names = ok(soute(root, "ps", "-a", "--format", "{{.Names}}")).split()
        assert "pr-marked" not in names and "pr-kept" in names
        assert "Deleted Containers:" in out
    finally:
        soute(root, "rm", "-f", "pr-marked", "pr-kept")


def test_system_prune_and_df_know_containers(root: Path) -> None:
    ok(soute(root, "tag", "busybox", "kept-by-container:1"))
    ok(soute(root, "run", "--name", "stopped1", "kept-by-container:1", "sh", "-c",
             "head -c 100000 /dev/zero > /blob"))
    ok(soute(root, "rmi", "-f", "kept-by-container:1"))  # untags; the container keeps it
    df = ok(soute(root, "system", "df"))
    containers_row = next(line for line in df.splitlines() if line.startswith("Containers"))
    assert containers_row.split()[1:3] == ["1", "0"]
    ok(soute(root, "image", "prune", "-f"))  # the dangling image is the container's
    assert state(root, "stopped1")["Status"] == "exited"
    assert ok(soute(root, "start", "stopped1")) == "stopped1\n"
    ok(soute(root, "wait", "stopped1"))
    out = ok(soute(root, "system", "prune", "-f"))
    assert "Deleted Containers:" in out
    assert soute(root, "inspect", "--type", "container", "stopped1").returncode != 0


def test_logs_follow_tail_and_timestamps(root: Path) -> None:
    ok(soute(root, "run", "-d", "--name", "talker", "busybox", "sh", "-c",
             "for i in 1 2 3; do echo line$i; sleep 0.3; done; echo oops >&2"))
    follow = subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(root), "logs",
                             "-f", "talker"], capture_output=True, text=True, timeout=30)
    assert follow.stdout == "line1\nline2\nline3\n" and follow.stderr == "oops\n"
    assert ok(soute(root, "logs", "--tail", "2", "talker")) == "line3\n"
    stamped = ok(soute(root, "logs", "-t", "talker")).splitlines()
    assert stamped[0].endswith("Z line1") and stamped[0].startswith("20")
    # --since and --until take the records' own times (0.3 s apart here), bounds included.
    second = stamped[1].split()[0]
    assert ok(soute(root, "logs", "--since", second, "talker")) == "line2\nline3\n"
    assert ok(soute(root, "logs", "--until", second, "talker")) == "line1\nline2\n"
    assert ok(soute(root, "logs", "--since", "1h", "--until", "1h", "talker")) == ""
    assert ok(soute(root, "logs", "-f", "--since", second, "talker")) == "line2\nline3\n"
    p = soute(root, "logs", "--until", "yesterday", "talker")
    assert p.returncode == 1 and 'invalid value for --until: "yesterday"' in p.stderr
    ok(soute(root, "rm", "talker"))


def test_cgroup_limits(root: Path) -> None:
    p = soute(root, "run", "--name", "hog", "-m", "16m", "busybox", "sh", "-c",
              'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo survived')
    assert p.returncode == 137 and "survived" not in p.stdout
    st = state(root, "hog")
    assert st["OOMKilled"] and st["ExitCode"] == 137
    ok(soute(root, "rm", "hog"))
    p = soute(root, "run", "--rm", "--pids-limit", "8", "busybox", "sh", "-c",
              "for i in $(seq 20); do sleep 1 & done; wait")
    assert "can't fork" in p.stderr
    assert ok(soute(root, "run", "--rm", "-m", "64m", "busybox", "echo", "fits")) == "fits\n"
    p = soute(root, "run", "--rm", "-m", "1k", "busybox", "true")
    assert p.returncode == 125 and "minimum memory limit" in p.stderr


def test_commit_of_a_running_container_pauses_it(root: Path) -> None:
    ok(soute(root, "run", "-d", "--name", "live", "busybox", "sh", "-c",
             "echo state > /state.txt; while true; do sleep 0.05; done"))
    try:
        wait_for(lambda: ok(soute(root, "exec", "live", "cat", "/state.txt")) == "state\n")
        ok(soute(root, "commit", "live", "live-snap:1"))
        status = [line for line in ok(soute(root, "exec", "live", "cat", "/proc/1/status"))
                  .splitlines() if line.startswith("State:")]
        assert "S (sleeping)" in status[0] or "R (running)" in status[0]  # resumed
        assert ok(soute(root, "run", "--rm", "live-snap:1", "cat", "/state.txt")) == "state\n"
    finally:
        ok(soute(root, "rm", "-f", "live"))
    ok(soute(root, "rmi", "live-snap:1"))


def test_exec_joins_the_container_cgroup(root: Path) -> None:
    ok(soute(root, "run", "-d", "--name", "limited", "-m", "32m", "busybox", "sleep", "60"))
    try:
        init = ok(soute(root, "exec", "limited", "cat", "/proc/1/cgroup"))
        mine = ok(soute(root, "exec", "limited", "cat", "/proc/self/cgroup"))
        memory = [line for line in init.splitlines() if ":memory:" in line or line[:3] == "0::"]
        assert memory and all(line in mine.splitlines() for line in memory)
    finally:
        ok(soute(root, "rm", "-f", "limited"))


def test_ps_filters_and_format(root: Path) -> None:
    ok(soute(root, "run", "--name", "ok0", "-l", "team=a", "busybox", "true"))
    soute(root, "run", "--name", "bad3", "busybox", "sh", "-c", "exit 3")
    ok(soute(root, "run", "-d", "--name", "up1", "box"))
    try:
        names = ok(soute(root, "ps", "-a", "--format", "{{.Names}}")).split()
        assert names[:3] == ["up1", "bad3", "ok0"]  # newest first
        assert ok(soute(root, "ps", "-a", "-f", "status=exited", "-f", "exited=3",
                        "--format", "{{.Names}}")) == "bad3\n"
        assert ok(soute(root, "ps", "-a", "-f", "name=bad3", "--format",
                        "{{.Command}}")) == "\"sh -c 'exit 3'\"\n"  # docker quotes it so
        assert ok(soute(root, "ps", "-a", "-f", "label=team=a", "--format",
                        "{{.Names}} {{.State}}")) == "ok0 exited\n"
        assert ok(soute(root, "ps", "-f", "name=up", "--format", "{{.Names}}")) == "up1\n"
        # As docker: a filter does not list stopped containers (but status= does), and
        # name= is a regular expression (the usual "is it running?" check).
        assert ok(soute(root, "ps", "-q", "-f", "name=^ok0$")) == ""
        assert ok(soute(root, "ps", "-a", "-q", "-f", "name=^ok0$")) != ""
        assert ok(soute(root, "ps", "-f", "name=^/?(up1|bad3)$", "--format",
                        "{{.Names}}")) == "up1\n"
        assert ok(soute(root, "ps", "-f", "status=exited", "-f", "name=^bad",
                        "--format", "{{.Names}}")) == "bad3\n"
        for bad in ("status=bogus", "name=(unclosed"):
            p = soute(root, "ps", "-f", bad)
            assert p.returncode == 1 and "invalid filter" in p.stderr, p.stderr
        table = ok(soute(root, "ps", "--format", "table {{.Names}}\t{{.Status}}")).splitlines()
        assert table[0].split() == ["NAMES", "STATUS"] and table[1].startswith("up1 ")
        record = json.loads(ok(soute(root, "ps", "--format", "json")).splitlines()[0])
        assert record["Names"] == "up1" and record["State"] == "running"
        p = soute(root, "ps", "-f", "colour=red")
        assert p.returncode == 1 and "invalid filter" in p.stderr
        p = soute(root, "ps", "--format", "{{.Nope}}")
        assert p.returncode == 1 and "can't evaluate field Nope" in p.stderr
    finally:
        for name in ("ok0", "bad3", "up1"):
            soute(root, "rm", "-f", name)


def test_ps_size_and_diff(root: Path) -> None:
    """``ps -s``: what a container wrote, then with its image; ``diff``: what it changed.
    (Both are compared with docker's in test_run_differential.py.)"""
    ok(soute(root, "run", "--name", "sized", "busybox", "sh", "-c",
             "head -c 1048576 /dev/zero > /root/mib && rm /etc/group"))
    try:
        table = ok(soute(root, "ps", "-a", "-s", "-f", "name=^sized$")).splitlines()
        assert table[0].split()[-1] == "SIZE"
        image = json.loads(ok(soute(root, "image", "inspect", "busybox")))[0]["Size"]
        size = ok(soute(root, "ps", "-a", "-f", "name=^sized$", "--format", "{{.Size}}"))
        assert size.startswith("1.05MB (virtual ") and table[1].endswith(size.strip())
        whole = size.strip()[:-1].partition(" (virtual ")[2]
        assert abs(_bytes(whole) - (image + 1048576)) < 0.01 * image, (whole, image)
        assert ok(soute(root, "diff", "sized")) == "C /etc\nD /etc/group\nC /root\nA /root/mib\n"
        assert ok(soute(root, "container", "diff", "sized")) == ok(soute(root, "diff", "sized"))
        p = soute(root, "diff", "no-such-container")
        assert p.returncode == 1 and "no-such-container" in p.stderr
    finally:
        soute(root, "rm", "-f", "sized")


def test_group_add_holds_for_exec_and_shows_in_inspect(root: Path) -> None:
    """--group-add (compared with docker's for run in test_run_differential.py): exec'd
    processes get the groups too, as in docker, and inspect shows them."""
    ok(soute(root, "run", "-d", "--name", "grouped", "--group-add", "nogroup", "--group-add",
             "4242", "busybox", "sleep", "60"))
    try:
        assert ok(soute(root, "exec", "grouped", "id", "-G")).split() == ["0", "4242", "65534"]
        assert ok(soute(root, "exec", "-u", "1000", "grouped", "id", "-G")).split() == [
            "0", "4242", "65534"]
        assert ok(soute(root, "inspect", "-f", "{{json .HostConfig.GroupAdd}}",
                        "grouped")) == '["nogroup","4242"]\n'
    finally:
        soute(root, "rm", "-f", "grouped")
    p = soute(root, "run", "--rm", "--group-add", "nosuchgroup", "busybox", "true")
    assert p.returncode == 125 and "unable to find group nosuchgroup" in p.stderr, p.stderr


def test_stats_of_a_container_with_limits_and_children(root: Path) -> None:
    """``stats``: the processes of the container, its --memory as the limit; without
    --no-stream it refreshes the screen every second until stopped."""
    ok(soute(root, "run", "-d", "--name", "busy", "--memory", "64m", "busybox", "sh", "-c",
             "sleep 100 & sleep 100 & wait"))
    try:
        line = ok(soute(root, "stats", "--no-stream", "--format",
                        "{{.Name}} {{.MemUsage}} {{.PIDs}}", "busy"))
        name, usage, _, limit, pids = line.split()
        assert (name, limit, pids) == ("busy", "64MiB", "3"), line
        assert usage.endswith(("KiB", "MiB")) and float(usage[:-3]) > 0, usage
        stream = _run_for(root, 3.5, "stats", "busy")
        tables = stream.split("\033[2J\033[H")
        assert tables[0] == "" and len(tables) >= 3, stream  # a clear screen before each
        assert all(t.startswith("CONTAINER ID") and "busy" in t for t in tables[1:])
    finally:
        soute(root, "rm", "-f", "busy")


def _run_for(root: Path, seconds: float, *args: str) -> str:
    """What ``soute ARGS`` printed in ``seconds``, then interrupted."""
    cli = subprocess.Popen([sys.executable, "-m", "soute.cli.main", "--root", str(root), *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=10)
    assert "Traceback" not in err, err
    return out


def test_volumes_from_keeps_a_shared_volume_until_its_last_user_goes(root: Path) -> None:
    ok(soute(root, "create", "--name", "vf-src", "-v", "/data", "busybox"))
    volume = json.loads(ok(soute(root, "inspect", "vf-src")))[0]["Mounts"][0]["Name"]
    try:
        ok(soute(root, "run", "--name", "vf-dst", "--volumes-from", "vf-src", "busybox", "sh",
                 "-c", "echo kept > /data/f"))
        ok(soute(root, "rm", "-v", "vf-src"))  # vf-dst still uses it
        assert ok(soute(root, "run", "--rm", "--volumes-from", "vf-dst", "busybox", "cat",
                        "/data/f")) == "kept\n"
        ok(soute(root, "rm", "-v", "vf-dst"))
        assert volume not in ok(soute(root, "volume", "ls", "-q")).split()
    finally:
        soute(root, "rm", "-f", "-v", "vf-src", "vf-dst")


@pytest.mark.parametrize("limits", [[], ["--memory", "64m"]], ids=["no-cgroup", "with-limits"])
def test_pause_freezes_every_process_until_unpause(root: Path, limits: list[str]) -> None:
    """(ps, inspect, exec, stop and rm of a paused container are compared with docker's in
    test_run_differential.py.) A paused container's processes, children included, do
    nothing until unpause; its cgroup (made by pause without limits) goes with it."""
    ok(soute(root, "run", "-d", "--name", "frozen", *limits, "busybox", "sh", "-c",
             "(while true; do echo child; sleep 0.05; done) & "
             "while true; do echo init; sleep 0.05; done"))
    cid = ok(soute(root, "inspect", "-f", "{{.Id}}", "frozen")).strip()
    try:
        wait_for(lambda: "child" in ok(soute(root, "logs", "frozen")))
        ok(soute(root, "pause", "frozen"))
        before = ok(soute(root, "logs", "frozen"))
        time.sleep(0.5)
        assert ok(soute(root, "logs", "frozen")) == before
        ok(soute(root, "unpause", "frozen"))
        wait_for(lambda: ok(soute(root, "logs", "frozen")).count("child") >
                 before.count("child"))
        assert state(root, "frozen")["Status"] == "running"
    finally:
        soute(root, "rm", "-f", "frozen")
    leftovers = subprocess.run(["find", "/sys/fs/cgroup", "-maxdepth", "6", "-name", cid],
                               capture_output=True, text=True, check=False).stdout.split()
    assert leftovers == []


def _bytes(human: str) -> float:
    """docker's human sizes back to bytes (1000-based)."""
    units = {"kB": 1e3, "MB": 1e6, "GB": 1e9, "B": 1}
    for unit, factor in units.items():
        if human.endswith(unit):
            return float(human[: -len(unit)]) * factor
    raise AssertionError(human)


def test_capabilities_read_only_and_stop_signal_flags(root: Path) -> None:
    out = ok(soute(root, "run", "--rm", "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE",
                   "busybox", "grep", "CapEff", "/proc/self/status"))
    assert out == "CapEff:\t0000000000000400\n"  # only CAP_NET_BIND_SERVICE (bit 10)
    p = soute(root, "run", "--rm", "--cap-drop", "CHOWN", "busybox", "chown", "1:1", "/tmp")
    assert p.returncode != 0 and "Operation not permitted" in p.stderr
    p = soute(root, "run", "--rm", "--cap-add", "NOPE", "busybox", "true")
    assert p.returncode == 125 and "unknown capability" in p.stderr
    p = soute(root, "run", "--rm", "--read-only", "busybox", "touch", "/x")
    assert p.returncode != 0 and "Read-only file system" in p.stderr
    # The tmpfs and volumes of a read-only container stay writable.
    ok(soute(root, "run", "--rm", "--read-only", "--tmpfs", "/scratch", "busybox", "touch",
             "/scratch/x"))
    ok(soute(root, "run", "-d", "--name", "sig", "--stop-signal", "SIGHUP", "busybox", "sh",
             "-c", "trap 'echo hup; exit 0' HUP; while true; do sleep 0.05; done"))
    ok(soute(root, "stop", "-t", "20", "sig"))
    assert ok(soute(root, "logs", "sig")) == "hup\n" and state(root, "sig")["ExitCode"] == 0
    ok(soute(root, "rm", "sig"))


def test_signals_reach_a_foreground_container(root: Path) -> None:
    cli = subprocess.Popen([sys.executable, "-m", "soute.cli.main", "--root", str(root), "run",
                            "--rm", "busybox", "sh", "-c",
                            "trap 'echo term; exit 3' TERM; echo up; "
                            "while true; do sleep 0.05; done"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert cli.stdout is not None and cli.stdout.readline() == "up\n"
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=20) == 3
        assert cli.stdout.read() == "term\n"
    finally:
        cli.kill()
        cli.wait()


def test_interrupting_a_start_that_waits_for_its_network_ends_it(root: Path,
                                                                    tmp_path: Path) -> None:
    # A slirp4netns that never says tap0 is up: the start would wait 10 s for it.
    spawned = tmp_path / "spawned"
    env = {**os.environ, **fake_command(
        tmp_path / "bin", "slirp4netns",
        f"echo $$ > {spawned}.tmp && mv {spawned}.tmp {spawned}\nexec sleep 60\n")}
    cli = subprocess.Popen([sys.executable, "-m", "soute.cli.main", "--root", str(root), "run",
                            "--rm", "--name", "cancelled", "busybox", "true"],
                           env=env, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if spawned.exists() or cli.poll() is not None:
                break
            time.sleep(0.05)
        assert spawned.exists(), cli.communicate(timeout=20)
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=5)  # before: it ended only when the 10 s were up
    finally:
        cli.kill()
        cli.wait()
    assert (cli.returncode, err) == (130, "soute: interrupted\n")
    assert "cancelled" not in ok(soute(root, "ps", "-a", "--format", "{{.Names}}"))
    helper = Path(f"/proc/{spawned.read_text().strip()}/stat")
    for _ in range(100):  # stopped, not left running (nor a zombie once its reaper ran)
        if not helper.exists() or helper.read_text().split(") ")[1][0] == "Z":
            break
        time.sleep(0.05)
    assert not helper.exists() or helper.read_text().split(") ")[1][0] == "Z"


def test_terminal_resize_follows_ours(root: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
        os.execv(sys.executable, [sys.executable, "-m", "soute.cli.main", "--root", str(root),
                                  "run", "--rm", "-i", "-t", "busybox", "sh"])
    screen = Screen(fd)

    try:
        os.write(fd, b"stty size\n")
        screen.read_until(b"30 90")
        # The kernel gives a signal sent to soute to any thread not blocking it. The resize
        # handler runs only in the main thread, so a pump that took the signal would leave
        # it waiting until the container ends (seen under load): none may take it.
        helpers = threads_of(pid)
        assert len(helpers) >= 2, helpers  # a pump for the terminal, one feeding our input
        for sig in (signal.SIGWINCH, signal.SIGTERM, signal.SIGINT):
            assert [tid for tid, blocked in helpers if sig not in blocked] == [], sig
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))  # SIGWINCH
        # soute passes the new size on when its signal handler runs: ask until it has.
        for _ in range(40):
            os.write(fd, b"stty size\n")
            with contextlib.suppress(AssertionError):
                screen.read_until(b"50 132", within=0.5)
                break
        screen.read_until(b"50 132", within=1)
        os.write(fd, b"exit\n")
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # an interactive shell ignores SIGTERM
        raise
    finally:
        os.waitpid(pid, 0)
        os.close(fd)


def test_container_inspect_shows_what_it_found_then_each_missing_name(root: Path) -> None:
    ok(soute(root, "create", "--name", "looked-at", "busybox", "true"))
    try:
        p = soute(root, "container", "inspect", "-f",
                  "{{.Name}} [{{.NetworkSettings.IPAddress}}] {{.NotKnownHere}}",
                  "looked-at", "no-such-container")
        # Fields soute does not record print <no value> rather than failing the template.
        assert (p.stdout, p.returncode) == ("/looked-at [] <no value>\n", 1)
        assert "no-such-container" in p.stderr and len(p.stderr.splitlines()) == 1
    finally:
        ok(soute(root, "rm", "looked-at"))


def test_start_attached_gives_the_output_input_and_exit_code(root: Path) -> None:
    ok(soute(root, "create", "--name", "sa1", "busybox", "sh", "-c",
             "echo out; echo err >&2; exit 7"))
    ok(soute(root, "create", "-i", "--rm", "--name", "sa2", "busybox", "sh", "-c",
             "read x; echo got $x"))
    try:
        p = soute(root, "start", "-a", "sa1")
        assert (p.returncode, p.stdout, p.stderr) == (7, "out\n", "err\n")
        p = soute(root, "start", "-a", "sa1", "sa2")
        assert p.returncode == 1 and "cannot start and attach multiple" in p.stderr
        p = soute(root, "start", "-ai", "sa2", input="hello\n")
        assert (p.returncode, p.stdout) == (0, "got hello\n"), p.stderr
        assert soute(root, "inspect", "sa2").returncode == 1  # made with --rm: removed
    finally:
        soute(root, "rm", "-f", "sa1", "sa2")


def test_add_host_dns_shm_size_cidfile_and_privileged(root: Path, tmp_path: Path) -> None:
    cid = tmp_path / "cid"
    out = ok(soute(root, "run", "--rm", "--cidfile", str(cid), "--add-host", "db:10.1.2.3",
                   "--add-host", "gw=host-gateway", "--dns", "9.9.9.9", "--shm-size", "96m",
                   "busybox", "sh", "-c", "cat /etc/hosts /etc/resolv.conf; df -k /dev/shm; "
                   "grep CapEff /proc/self/status"))
    assert "10.1.2.3\tdb\n10.0.2.2\tgw\n" in out  # before the container's own line
    assert "nameserver 9.9.9.9\n" in out and "10.0.2.3" not in out
    assert " 98304 " in out  # /dev/shm: 96 MiB in KiB
    assert "CapEff:\t00000000a80425fb" in out
    assert len(cid.read_text()) == 64 and f"\t{cid.read_text()[:12]}\n" in out  # hostname
    p = soute(root, "run", "--rm", "--cidfile", str(cid), "busybox", "true")
    assert p.returncode == 125 and "container ID file found" in p.stderr  # as docker
    ok(soute(root, "create", "--name", "hosted", "--privileged", "--add-host", "db:10.1.2.3",
             "--dns", "9.9.9.9", "busybox", "true"))
    try:
        host_config = json.loads(ok(soute(root, "inspect", "hosted")))[0]["HostConfig"]
        assert (host_config["Privileged"], host_config["ExtraHosts"], host_config["Dns"],
                host_config["ShmSize"]) == (True, ["db:10.1.2.3"], ["9.9.9.9"], 64 << 20)
    finally:
        ok(soute(root, "rm", "hosted"))
    out = ok(soute(root, "run", "--rm", "--privileged", "busybox", "sh", "-c",
                   "grep CapEff /proc/self/status; mkdir /m && mount -t tmpfs x /m "
                   "&& echo mounted"))
    assert "CapEff:\t00000000a80425fb" not in out and "mounted" in out
    out = ok(soute(root, "run", "--rm", "--ulimit", "nofile=1024:2048", "--ulimit", "core=-1",
                   "busybox", "sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c"))
    assert out.split() == ["1024", "2048", "unlimited"]
    for args, message in ((["--ulimit", "nofile=3:2"], "must be less than or equal"),
                          (["--ulimit", "colour=1"], "invalid ulimit argument"),
                          (["--pull", "never", "no-such-image:9"], "No such image"),
                          (["--add-host", "nocolon"], "bad format for add-host"),
                          (["--add-host", "h:300.1.1.1"], "invalid IP address"),
                          (["--dns", "x"], "is not an ip address"),
                          (["--shm-size", "lots"], "invalid --shm-size")):
        image = [] if args[-1].startswith("no-such") else ["busybox"]
        p = soute(root, "run", "--rm", *args, *image, "true")
        assert p.returncode == 125 and message in p.stderr and len(p.stderr.splitlines()) == 1


def test_it_with_piped_input_is_refused_as_docker_does(root: Path) -> None:
    before = ok(soute(root, "ps", "-a", "-q"))
    for args in (["run", "--rm", "-it", "busybox", "cat"], ["exec", "-it", "any", "cat"]):
        p = soute(root, *args, input="piped\n")
        assert (p.returncode, p.stdout) == (1, ""), (args, p.stderr)
        assert p.stderr.startswith("soute: the input device is not a TTY (")
        assert len(p.stderr.splitlines()) == 1
    assert ok(soute(root, "ps", "-a", "-q")) == before  # no container was made
    p = soute(root, "run", "--rm", "-i", "busybox", "cat", input="piped\n")
    assert (p.returncode, p.stdout) == (0, "piped\n")


def test_more_bad_input_is_one_line(root: Path, tmp_path: Path) -> None:
    cases = [
        (["run", "--rm", "--cpus", "nan", "busybox", "true"], 125, "invalid --cpus"),
        (["run", "--rm", "--stop-signal", "SIGRTMIN+99", "busybox", "true"], 125,
         "invalid signal"),
        (["run", "--rm", "--pids-limit", "x", "busybox", "true"], 125, "invalid int value"),
        (["run", "--rm", "-p", "80:80", "--runtime", "runc", "busybox", "true"], 125,
         "need soute's own runtime"),
        (["run", "--rm", "--device", "/dev/fuse", "--runtime", "runc", "busybox", "true"], 125,
         "need soute's own runtime"),
        (["ps", "--format", "{{.ID"], 1, "cannot parse"),
        (["rename", "nosuch", "x"], 1, "No such container"),  # 125 is run's and create's
    ]
    bad = tmp_path / "env"
    bad.write_bytes(b"A=\xff\n")
    cases.append((["run", "--rm", "--env-file", str(bad), "busybox", "true"], 125,
                  "not UTF-8"))
    cases += [(["logs", "nosuch"], 1, "No such container"), (["top", "nosuch"], 1, "No such"),
              (["port", "nosuch"], 1, "No such container"),
              (["commit", "nosuch"], 1, "No such container")]  # docker's status: 1
    for args, code, message in cases:
        p = soute(root, *args)
        assert (p.returncode, len(p.stderr.strip().splitlines())) == (code, 1), (args, p.stderr)
        assert message in p.stderr, (args, p.stderr)
    ok(soute(root, "create", "--name", "named", "busybox", "true"))
    try:
        p = soute(root, "rename", "named", "bad name")
        assert p.returncode == 1 and "Invalid container name" in p.stderr
        p = soute(root, "export", "-o", str(tmp_path), "named")
        assert p.returncode == 1 and "is a directory" in p.stderr
        p = soute(root, "export", "-o", str(tmp_path / "no" / "x.tar"), "named")
        assert p.returncode == 1 and "No such file or directory" in p.stderr
        assert not (tmp_path / "no").exists() and not list(tmp_path.glob("*.soute-tmp"))
    finally:
        ok(soute(root, "rm", "named"))


def test_a_killed_monitor_leaves_no_cgroup(root: Path) -> None:
    from soute.runtime.cgroups import Cgroup

    ok(soute(root, "run", "-d", "--name", "capped", "-m", "32m", "busybox", "sleep", "300"))
    cid = state_id(root, "capped")
    st = json.loads((root / "containers" / cid / "state.json").read_text())
    directories = Cgroup.open(cid, pid=st["pid"]).directories
    assert directories and all(d.is_dir() for d in directories)
    os.kill(st["monitor_pid"], signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{st['pid']}"))
    assert state(root, "capped")["ExitCode"] == 137  # noticed: the cgroup goes too
    assert not any(d.exists() for d in directories)
    ok(soute(root, "rm", "capped"))


def test_exec_detached_reports_a_start_error_and_returns_at_once(root: Path) -> None:
    """docker 20.10: ``exec -d`` of a command that cannot start prints the error (one line)
    and exits 1; one that starts returns 0 at once, the command running on."""
    ok(soute(root, "run", "-d", "--name", "execd", "busybox", "sleep", "300"))
    try:
        for args, message in [(["nosuchcommand"], "executable file not found"),
                              (["/etc/passwd"], "permission denied"),
                              (["-u", "nosuchuser", "execd", "true"], "unable to find user")]:
            argv = args if args[0] == "-u" else ["execd", *args]
            p = soute(root, "exec", "-d", *argv)
            assert (p.returncode, p.stdout, len(p.stderr.splitlines())) == (1, "", 1), p.stderr
            assert message in p.stderr
        began = time.monotonic()
        p = soute(root, "exec", "-d", "execd", "sh", "-c", "echo ran > /ran; sleep 30")
        assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
        assert time.monotonic() - began < 10
        wait_for(lambda: soute(root, "exec", "execd", "cat", "/ran").stdout == "ran\n")
    finally:
        ok(soute(root, "rm", "-f", "execd"))


def test_wait_on_a_created_container_returns_at_once(root: Path) -> None:
    """docker 20.10's ``wait`` waits for "not running": a created container already is, so
    it prints 0 at once (it does not wait for a start)."""
    ok(soute(root, "create", "--name", "never", "busybox", "sh", "-c", "exit 5"))
    try:
        p = soute(root, "wait", "never", timeout=10)
        assert (p.returncode, p.stdout) == (0, "0\n"), p.stderr
    finally:
        ok(soute(root, "rm", "never"))


def test_stop_with_a_negative_timeout_never_kills(root: Path) -> None:
    """docker 20.10: ``stop -t -1`` (or ``--stop-timeout -1``) waits for the container to end
    after its stop signal, however long; ``-t 0`` kills at once."""
    script = "trap 'sleep 2; exit 3' TERM; while true; do sleep 0.1; done"
    ok(soute(root, "run", "-d", "--name", "patient", "busybox", "sh", "-c", script))
    ok(soute(root, "run", "-d", "--name", "patient2", "--stop-timeout", "-1", "busybox",
             "sh", "-c", script))
    try:
        for args in (["-t", "-1", "patient"], ["patient2"]):
            began = time.monotonic()
            ok(soute(root, "stop", *args))
            assert time.monotonic() - began >= 1.5
            assert state(root, args[-1])["ExitCode"] == 3
        ok(soute(root, "start", "patient"))
        ok(soute(root, "stop", "-t", "0", "patient"))
        assert state(root, "patient")["ExitCode"] == 137
    finally:
        soute(root, "rm", "-f", "patient", "patient2")


def test_a_container_is_made_outside_a_garbage_collection(root: Path) -> None:
    """A create writes the container's directory in tmp/ before moving it in place, and a
    garbage collection (a prune, an rmi) empties tmp/: the create waits for the store's
    shared lock first, as a build does. Found with a run beside an image prune: the run
    failed on its container's missing upper dir."""
    (root / "containers").mkdir(exist_ok=True)  # as the first container would make it
    before = set(os.listdir(root / "containers"))
    with collecting(root):
        proc = subprocess.Popen(
            [sys.executable, "-m", "soute.cli.main", "--root", str(root), "create",
             "--name", "made-after-gc", "busybox", "true"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waiting_for_the_store(proc)
        assert set(os.listdir(root / "containers")) == before
        assert not [e for e in os.listdir(root / "tmp") if e.startswith("container-")]
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    ok(soute(root, "rm", "made-after-gc"))


def test_ctrl_c_while_a_run_ends_still_records_and_removes_it(root: Path) -> None:
    """A ^C once the command has run comes after the container ended, while soute records
    its state and ``--rm`` removes it (20,000 files here take a while): it is dropped, and
    the run ends with the container's status. It used to cut that clean-up short, leaving a
    container that looked running and that --rm then refused to remove."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "soute.cli.main", "--root", str(root), "run", "--rm",
         "--name", "ends-slowly", "busybox", "sh", "-c",
         "mkdir /d && cd /d && seq 20000 | xargs touch && echo done"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "done\n"

        def recorded_exited() -> bool:  # its state is saved: the removal comes next
            for entry in (root / "containers").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    if json.loads((entry / "config.json").read_text()).get("name") == \
                            "ends-slowly":
                        return json.loads((entry / "state.json").read_text()).get(
                            "status") == "exited"
            return proc.poll() is not None

        wait_for(recorded_exited)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and err == "", err
    assert soute(root, "inspect", "--type", "container", "ends-slowly").returncode != 0
    assert "0 problem(s)" in ok(soute(root, "fsck", "--quick"))


def test_a_create_cut_right_after_its_record_leaves_no_container(root: Path) -> None:
    """A ^C may land once the new container's record is committed, before the create
    goes on: the create takes back what it made (a ^C delivered right then, here)."""
    from soute.container.create import RunOptions, create
    from soute.store.store import Store

    with Store(root) as store:
        before = {c for c, *_ in store.meta.containers()}
        committed = store.meta.add_container

        def interrupted_after(*args: object) -> bool:
            committed(*args)  # type: ignore[arg-type]
            raise KeyboardInterrupt

        store.meta.add_container = interrupted_after  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            create(store, "busybox", RunOptions(args=["true"], name="cut-short"))
        del store.meta.add_container
        assert {c for c, *_ in store.meta.containers()} == before
        assert not [p for p in (root / "containers").iterdir() if p.name not in before]


# ---------------------------------------------------------------------------- cp


def test_cp_between_the_host_and_a_running_or_stopped_container(root: Path,
                                                                tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "tree" / "sub").mkdir(parents=True)
    (host / "tree" / "sub" / "deep.txt").write_text("deep\n")
    (host / "file.txt").write_text("from the host\n")
    ok(soute(root, "run", "-d", "--name", "cp-run", "box"))
    ok(soute(root, "create", "--name", "cp-stopped", "box", "true"))
    try:
        for name in ("cp-run", "cp-stopped"):
            out = tmp_path / name
            out.mkdir()
            # Into the container: a file into a directory, a directory to a new name.
            ok(soute(root, "cp", str(host / "file.txt"), f"{name}:/data/"))
            ok(soute(root, "cp", str(host / "tree"), f"{name}:/copied"))
            # Out again: a file to a new name, a directory into one, its content only (/.),
            # a symlink as a link (/bin/sh is busybox's), or what it points at with -L.
            ok(soute(root, "cp", f"{name}:/data/file.txt", str(out / "back.txt")))
            ok(soute(root, "cp", f"{name}:/copied", str(out)))
            (out / "content").mkdir()
            ok(soute(root, "cp", f"{name}:/data/.", str(out / "content")))
            ok(soute(root, "cp", f"{name}:/bin/sh", str(out / "sh")))
            ok(soute(root, "cp", "-L", f"{name}:/bin/sh", str(out / "sh-file")))
            assert (out / "back.txt").read_text() == "from the host\n"
            assert (out / "copied" / "sub" / "deep.txt").read_text() == "deep\n"
            assert sorted(os.listdir(out / "content")) == ["file.txt", "seed.txt"]
            assert (out / "sh").is_symlink() and (out / "sh-file").is_file()
            tar = subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(root),
                                  "cp", f"{name}:/data/seed.txt", "-"],
                                 capture_output=True, check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
                assert archive.getnames() == ["seed.txt"]
            # ... and back in from standard input, into a directory.
            subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(root), "cp",
                            "-", f"{name}:/copied"], input=tar, capture_output=True, check=True)
            back = subprocess.run([sys.executable, "-m", "soute.cli.main", "--root",
                                   str(root), "cp", f"{name}:/copied/seed.txt", "-"],
                                  capture_output=True, check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(back)) as archive:
                member = archive.extractfile("seed.txt")
                assert member is not None and member.read() == b"seeded\n"
            for args, message in (
                    ([f"{name}:/nope", str(out)], "Could not find the file /nope"),
                    ([str(host / "nope"), f"{name}:/"], "no such file or directory"),
                    ([f"{name}:/copied", str(out / "back.txt")], "cannot copy a directory"),
                    ([str(host / "file.txt"), f"{name}:/missing/dir/"], "does not exist"),
                    ([str(host), str(out)], "not supported")):
                p = soute(root, "cp", *args)
                assert p.returncode == 1 and message in p.stderr, (args, p.stderr)
                assert len(p.stderr.splitlines()) == 1
        # What went into the stopped container is there when it runs.
        out = ok(soute(root, "start", "-a", "cp-stopped"))
        assert out == ""
        assert ok(soute(root, "cp", "cp-stopped:/copied/sub/deep.txt", "-")) != ""
        # The running one sees the copy at once, and its volume /data got the file.
        assert ok(soute(root, "exec", "cp-run", "cat", "/data/file.txt")) == "from the host\n"
    finally:
        soute(root, "rm", "-f", "-v", "cp-run", "cp-stopped")


def test_cp_out_never_writes_through_a_symlink_the_container_made(tmp_path: Path) -> None:
    from soute.container.copy import CopyError, place

    outside = tmp_path / "outside"
    outside.mkdir()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, kind, target in (("x", tarfile.DIRTYPE, ""),
                                   ("x/a", tarfile.SYMTYPE, str(outside)),
                                   ("x/a/pwned", tarfile.REGTYPE, "")):
            member = tarfile.TarInfo(name)
            member.type, member.linkname = kind, target
            tar.addfile(member, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    archive.seek(0)
    with pytest.raises(CopyError, match="through a symlink"):
        place(archive, "/x", str(tmp_path / "dest"), owner=None, host=True)
    assert os.readlink(tmp_path / "dest" / "a") == str(outside)  # the link, as docker's
    assert list(outside.iterdir()) == []


def _archive(*members: tuple[str, bytes, str, bytes]) -> io.BytesIO:
    """A tar of (name, type, linkname, data) members, as a container's side would send it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, target, data in members:
            member = tarfile.TarInfo(name)
            member.type, member.linkname, member.size = kind, target, len(data)
            tar.addfile(member, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    out.seek(0)
    return out


def test_cp_out_replaces_what_is_in_the_way_and_keeps_hardlinks(tmp_path: Path) -> None:
    from soute.container.copy import CopyError, place

    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    victim.chmod(0o600)
    host = tmp_path / "host"
    host.mkdir()
    os.symlink(victim, host / "x")  # left by an earlier copy from the same container
    place(_archive(("x", tarfile.REGTYPE, "", b"payload")), "/x", str(host),
          owner=None, host=True)
    assert victim.read_text() == "mine\n" and (host / "x").read_bytes() == b"payload"
    # A directory copied to a new name keeps its hardlinks (named after the new name).
    data = _archive(("data", tarfile.DIRTYPE, "", b""), ("data/a", tarfile.REGTYPE, "", b"1"),
                    ("data/b", tarfile.LNKTYPE, "data/a", b""))
    place(data, "/data", str(host / "renamed"), owner=None, host=True)
    assert os.path.samefile(host / "renamed" / "a", host / "renamed" / "b")
    # A hardlink to what is a symlink there (to a file outside) is refused.
    os.symlink(victim, host / "s")
    evil = _archive(("s2", tarfile.DIRTYPE, "", b""), ("s2/l", tarfile.LNKTYPE, "s2", b""))
    with pytest.raises(CopyError, match="hardlink"):
        place(evil, "/s2", str(host), owner=None, host=True)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    # The user's own symlink to a directory is a fine destination, and so is /. as source.
    os.symlink(host / "renamed", tmp_path / "link")
    place(_archive((".", tarfile.DIRTYPE, "", b""), ("./c", tarfile.REGTYPE, "", b"3")),
          "/data/.", str(tmp_path / "link"), owner=None, host=True)
    assert (host / "renamed" / "c").read_bytes() == b"3"


def test_cp_out_hostile_archives_are_tamed(tmp_path: Path) -> None:
    """What a container's archive cannot do on the host: have a directory copied through a
    symlink found at DEST/NAME, make a device node, or leave a setuid file owned by the
    host user (kept with -a, whose owners are the container's)."""
    from soute.container.copy import CopyError, place

    outside = tmp_path / "outside"
    outside.mkdir()
    host = tmp_path / "host"
    host.mkdir()
    os.symlink(outside, host / "data")  # left by an earlier copy from the same container
    place(_archive(("data", tarfile.DIRTYPE, "", b""), ("data/k", tarfile.REGTYPE, "", b"key")),
          "/data", str(host), owner=(os.getuid(), os.getgid()), host=True)
    assert not (host / "data").is_symlink() and (host / "data" / "k").read_bytes() == b"key"
    assert list(outside.iterdir()) == []
    with pytest.raises(CopyError, match="refused devices/disk: a device node"):
        place(_archive(("d", tarfile.DIRTYPE, "", b""), ("d/disk", tarfile.BLKTYPE, "", b"")),
              "/d", str(tmp_path / "devices"), owner=(os.getuid(), os.getgid()), host=True)
    assert not (tmp_path / "devices" / "disk").exists()

    def setuid_file(name: str) -> io.BytesIO:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            member = tarfile.TarInfo(name)
            member.mode, member.size = 0o6755, 1
            tar.addfile(member, io.BytesIO(b"x"))
        out.seek(0)
        return out

    place(setuid_file("sh"), "/sh", str(tmp_path / "sh"), owner=(os.getuid(), os.getgid()),
          host=True)
    assert stat.S_IMODE((tmp_path / "sh").stat().st_mode) == 0o755
    place(setuid_file("sh"), "/sh", str(tmp_path / "sh-a"), owner=None, host=True)
    assert stat.S_IMODE((tmp_path / "sh-a").stat().st_mode) == 0o6755


def test_cp_L_names_the_copy_after_src(root: Path, tmp_path: Path) -> None:
    """-L copies what the link points at under the link's own name (docker's rebase): the
    container does not get to choose the name that the copy takes on the host."""
    ok(soute(root, "run", "--name", "cp-link", "busybox", "sh", "-c",
             "mkdir /q /app && echo evil > /q/.profile && ln -s /q/.profile /app/report.txt"
             " && mkdir /q/.ssh && echo k > /q/.ssh/keys && ln -s /q/.ssh /app/data"))
    try:
        out = tmp_path / "out"
        out.mkdir()
        ok(soute(root, "cp", "-L", "cp-link:/app/report.txt", str(out)))
        ok(soute(root, "cp", "-L", "cp-link:/app/data", str(out)))
        assert sorted(os.listdir(out)) == ["data", "report.txt"]
        assert (out / "report.txt").read_text() == "evil\n"
        assert (out / "data" / "keys").read_text() == "k\n"
    finally:
        soute(root, "rm", "-f", "cp-link")


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_cp_in_replaces_a_fifo_or_device_node_without_opening_it(
    root: Path, tmp_path: Path, running: bool
) -> None:
    """A FIFO or device node the container put where the copy goes is replaced, as docker
    replaces what is in the way: not written through (a block device would be the host's
    disk), nor waited on (a FIFO without a reader blocks an open for ever)."""
    name = f"cp-node-{'run' if running else 'stopped'}"
    script = "mkfifo /etc/app.conf && mknod /etc/dev.conf c 1 3"
    if running:
        ok(soute(root, "run", "-d", "--name", name, "busybox", "sh", "-c",
                 script + " && touch /ready && sleep 600"))
        wait_for(lambda: soute(root, "exec", name, "test", "-e", "/ready").returncode == 0)
    else:
        ok(soute(root, "run", "--name", name, "busybox", "sh", "-c", script))
    try:
        conf = tmp_path / "conf"
        conf.write_text("setting=1\n")
        for target in ("/etc/app.conf", "/etc/dev.conf"):
            # In a session of its own: a copy stuck on the FIFO is killed with its child.
            cp = subprocess.Popen([sys.executable, "-m", "soute.cli.main", "--root", str(root),
                                   "cp", str(conf), f"{name}:{target}"], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  start_new_session=True)
            try:
                _, err = cp.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(cp.pid, signal.SIGKILL)
                cp.communicate()
                raise AssertionError(f"cp to {target} hung") from None
            assert cp.returncode == 0, err
            tar = subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(root),
                                  "cp", f"{name}:{target}", "-"],
                                 capture_output=True, check=True, timeout=60).stdout
            with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
                member = archive.extractfile(os.path.basename(target))
                assert member is not None and member.read() == b"setting=1\n"
    finally:
        soute(root, "rm", "-f", name)


def test_cp_child_runs_nothing_of_the_container() -> None:
    # No name lookups (glibc would load the container's NSS modules), no imports from files.
    code = ("import sys, tarfile; from soute.container.copy import _nothing_from_the_container;"
            "_nothing_from_the_container(); assert tarfile.pwd is None and tarfile.grp is None;"
            "\ntry:\n    import xml.dom.minidom\nexcept ImportError:\n    print('refused')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out == "refused\n"


# ---------------------------------------------------------------------------- restart


def test_restart_policies_run_it_again_until_stopped(root: Path) -> None:
    def inspected(name: str) -> tuple[str, int, int]:
        info = json.loads(ok(soute(root, "inspect", name)))[0]
        return info["State"]["Status"], info["State"]["ExitCode"], info["RestartCount"]

    try:
        # on-failure:2 — the first run and two restarts, then it stays exited.
        ok(soute(root, "run", "-d", "--name", "rs-fail", "--restart", "on-failure:2",
                 "busybox", "sh", "-c", "echo run; exit 3"))
        wait_for(lambda: inspected("rs-fail") == ("exited", 3, 2))
        time.sleep(0.5)
        assert inspected("rs-fail") == ("exited", 3, 2)
        assert ok(soute(root, "logs", "rs-fail")) == "run\n" * 3
        # always — listed by ps while it comes and goes; a stop ends it for good.
        ok(soute(root, "run", "-d", "--name", "rs-always", "--restart", "always",
                 "busybox", "sh", "-c", "echo up; sleep 0.2"))
        wait_for(lambda: inspected("rs-always")[2] >= 2)
        assert "rs-always" in ok(soute(root, "ps", "--format", "{{.Names}}")).split()
        # Running or waiting to run again, it is not a stopped container to prune or rm.
        ok(soute(root, "container", "prune", "-f"))
        p = soute(root, "rm", "rs-always")
        assert p.returncode == 1 and "You cannot remove a" in p.stderr
        ok(soute(root, "stop", "-t", "1", "rs-always"))
        stopped = inspected("rs-always")
        time.sleep(1)
        assert inspected("rs-always") == stopped and stopped[0] == "exited"
        ok(soute(root, "start", "rs-always"))  # counting again from 0
        assert inspected("rs-always")[2] <= 1
        wait_for(lambda: inspected("rs-always")[2] >= 1)
        soute(root, "kill", "rs-always")  # as docker's kill: the policy ends (running or not)
        killed = inspected("rs-always")
        time.sleep(1)
        assert inspected("rs-always") == killed and killed[0] == "exited"
        ok(soute(root, "start", "rs-always"))
        wait_for(lambda: inspected("rs-always")[2] >= 1)
        started = time.monotonic()
        ok(soute(root, "rm", "-f", "rs-always"))  # at once, whatever the policy was doing
        assert time.monotonic() - started < 8
        assert soute(root, "inspect", "rs-always").returncode == 1
        # An attached run returns the status; the policy goes on in the background.
        p = soute(root, "run", "--name", "rs-attached", "--restart", "on-failure:1",
                  "busybox", "sh", "-c", "echo once; exit 2")
        assert (p.returncode, p.stdout) == (2, "once\n")
        wait_for(lambda: inspected("rs-attached") == ("exited", 2, 1))
        assert ok(soute(root, "logs", "rs-attached")) == "once\n" * 2
        for args, message in ((["--restart", "sometimes"], "invalid restart policy"),
                              (["--restart", "always:3"], "maximum retry count cannot"),
                              (["--restart", "always", "--rm"], "conflicting options")):
            p = soute(root, "run", *args, "busybox", "true")
            assert p.returncode == 125 and message in p.stderr, p.stderr
    finally:
        soute(root, "rm", "-f", "rs-fail", "rs-always", "rs-attached")
