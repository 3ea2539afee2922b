"""Tests for soute.container.{logs,health,volumes,top}."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from soute.container import health, logs, top, volumes
from soute.container.create import _tmpfs_options
from soute.container.health import HealthConfig, HealthMonitor, HealthState
from soute.container.logs import LogWriter, follow_logs, read_logs
from soute.container.volumes import (
    Volumes,
    VolumeSpec,
    parse_mount_flag,
    parse_tmpfs_flag,
    parse_volume_flag,
)
from soute.errors import SouteError

TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


# --- logs ------------------------------------------------------------------------


def records(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_log_lines_partial_and_flush(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with LogWriter(path) as w:
        w.write("stdout", b"one\ntw")
        w.write("stderr", b"err")
        assert [r["log"] for r in records(path)] == ["one\n"]  # partials are buffered
        w.write("stdout", b"o\nthree")
        w.write("stderr", b"!\n")
        w.flush()
    recs = records(path)
    assert [(r["stream"], r["log"]) for r in recs] == [
        ("stdout", "one\n"),
        ("stdout", "two\n"),
        ("stderr", "err!\n"),
        ("stdout", "three"),
    ]
    assert all(TIME_RE.fullmatch(r["time"]) for r in recs)
    assert list(records(path)[0]) == ["log", "stream", "time"]
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_log_escaping_like_docker(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with LogWriter(path) as w:
        w.write("stdout", b'<a href="x">&\x01\ttab\xe2\x82 caf\xc3\xa9\n')
    raw = path.read_text()
    assert raw.startswith(
        '{"log":"\\u003ca href=\\"x\\"\\u003e\\u0026\\u0001\\ttab\\ufffd\\ufffd café\\n",'
        '"stream":"stdout","time":"'
    )
    # Go substitutes one U+FFFD per invalid byte.
    assert records(path)[0]["log"] == '<a href="x">&\x01\ttab\ufffd\ufffd café\n'


def test_long_lines_split_at_16k(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    exact = b"x" * logs.MAX_RECORD
    with LogWriter(path) as w:
        for i in range(0, 40000, 1000):  # arrives in small pieces
            w.write("stdout", (b"a" * 40000)[i : i + 1000])
        w.write("stdout", b"\n" + exact + b"\n")
    got = [r["log"] for r in records(path)]
    assert [len(x) for x in got] == [16384, 16384, 7233, 16385]
    assert got[2].endswith("\n") and not got[0].endswith("\n")
    assert "".join(got[:3]) == "a" * 40000 + "\n"


def test_read_logs_tail_timestamps_since(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with LogWriter(path) as w:
        for i in range(5000):  # well over one 64 KiB block
            w.write("stderr" if i % 2 else "stdout", f"line {i}\n".encode())
    assert len(list(read_logs(path))) == 5000
    assert list(read_logs(path, tail=3)) == [
        ("stderr", b"line 4997\n"),
        ("stdout", b"line 4998\n"),
        ("stderr", b"line 4999\n"),
    ]
    assert list(read_logs(path, tail=0)) == []
    assert len(list(read_logs(path, tail=10**6))) == 5000
    _, data = next(read_logs(path, tail=1, timestamps=True))
    stamp, rest = data.split(b" ", 1)
    assert TIME_RE.fullmatch(stamp.decode()) and rest == b"line 4999\n"
    assert list(read_logs(path, since="1h", tail=1)) == [("stderr", b"line 4999\n")]
    assert list(read_logs(path, since="2099-01-01T00:00:00Z")) == []
    assert len(list(read_logs(path, since="2000-01-01"))) == 5000
    with pytest.raises(SouteError, match="--since"):
        list(read_logs(path, since="yesterday"))
    assert list(read_logs(tmp_path / "missing.log")) == []


def test_read_logs_skips_torn_last_record(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with LogWriter(path) as w:
        w.write("stdout", b"a\nb\n")
    with open(path, "ab") as f:
        f.write(b'{"log":"half')
    assert list(read_logs(path)) == [("stdout", b"a\n"), ("stdout", b"b\n")]
    assert list(read_logs(path, tail=1)) == [("stdout", b"b\n")]


def test_parse_since() -> None:
    now = 1_700_000_000 * 10**9
    assert logs.parse_since("10m", now) == now - 600 * 10**9
    assert logs.parse_since("1700000000.5", now) == 1_700_000_000_500_000_000
    assert logs.parse_since("2023-11-14T22:13:20.25Z") == 1_700_000_000_250_000_000
    assert logs.parse_since("2023-11-14T23:13:20+01:00") == 1_700_000_000 * 10**9


def test_follow_logs(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    w = LogWriter(path)
    w.write("stdout", b"old 1\nold 2\n")
    running = threading.Event()
    running.set()
    got: list[tuple[str, bytes]] = []
    reader = threading.Thread(
        target=lambda: got.extend(follow_logs(path, is_running=running.is_set, tail=1, poll=0.01))
    )
    reader.start()
    with open(path, "ab") as f:  # a torn record must wait for its end
        line = b'{"log":"torn\\n","stream":"stdout","time":"2026-01-01T00:00:00.000000000Z"}\n'
        f.write(line[:20])
        f.flush()
        time.sleep(0.05)
        assert (("stdout", b"torn\n")) not in got
        f.write(line[20:])
    w.write("stderr", b"new\npart")
    time.sleep(0.05)
    w.close()  # flushes "part"
    running.clear()
    reader.join(5)
    assert not reader.is_alive()
    assert got == [
        ("stdout", b"old 2\n"),
        ("stdout", b"torn\n"),
        ("stderr", b"new\n"),
        ("stderr", b"part"),
    ]


def test_follow_logs_missing_file_and_stopped(tmp_path: Path) -> None:
    assert list(follow_logs(tmp_path / "none", is_running=lambda: False)) == []


# --- health ----------------------------------------------------------------------


def test_parse_and_format_duration() -> None:
    assert health.parse_duration("30s") == 30
    assert health.parse_duration("1m30s") == 90
    assert health.parse_duration("500ms") == 0.5
    assert health.parse_duration("1.5h") == 5400
    assert health.parse_duration("0") == 0
    for bad in ("30", "", "s", "1x", "1m 2s", "--1s"):
        with pytest.raises(SouteError, match="invalid duration"):
            health.parse_duration(bad)
    assert [health.format_duration(s) for s in (30, 90, 0.05, 3600, 1.5, 0)] == [
        "30s",
        "1m30s",
        "50ms",
        "1h0m0s",
        "1.5s",
        "0s",
    ]


def test_health_config_from_image() -> None:
    s = 10**9
    cfg = HealthConfig.from_image(
        {"Test": ["CMD-SHELL", "curl -f http://localhost/"], "Interval": 5 * s, "Retries": 0}
    )
    assert cfg == HealthConfig(["CMD-SHELL", "curl -f http://localhost/"], interval=5)
    assert HealthConfig.from_image({"Test": ["NONE"]}) is None
    assert HealthConfig.from_image({"Test": []}) is None
    assert HealthConfig.from_image(None) is None
    assert cfg is not None
    assert health.argv(cfg, ["/bin/sh", "-c"]) == ["/bin/sh", "-c", "curl -f http://localhost/"]
    assert health.argv(HealthConfig(["CMD", "a", "b"]), ["/bin/sh", "-c"]) == ["a", "b"]


def test_health_overrides() -> None:
    base = HealthConfig(["CMD", "check"], interval=5, retries=2)
    cfg = HealthConfig.with_overrides(base, cmd="true", interval="1m", timeout="0", retries=None)
    assert cfg == HealthConfig(["CMD-SHELL", "true"], interval=60, timeout=30, retries=2)
    tuned = HealthConfig.with_overrides(base, start_period="10s")
    assert tuned is not None and tuned.test == ["CMD", "check"] and tuned.start_period == 10
    assert HealthConfig.with_overrides(None, interval="1s") is None
    assert HealthConfig.with_overrides(base, no_healthcheck=True) is None
    with pytest.raises(SouteError, match="conflicts"):
        HealthConfig.with_overrides(base, cmd="x", no_healthcheck=True)
    with pytest.raises(SouteError, match="invalid duration"):
        HealthConfig.with_overrides(base, interval="5")
    with pytest.raises(SouteError, match="negative"):
        HealthConfig.with_overrides(base, timeout="-1s")


def test_health_state_json_and_ps_status() -> None:
    st = HealthState("healthy", 0, [{"Start": "a", "End": "b", "ExitCode": 0, "Output": "ok"}])
    data = json.loads(json.dumps(st.to_json()))
    assert data == {"Status": "healthy", "FailingStreak": 0, "Log": st.log}
    assert HealthState.from_json(data) == st
    assert HealthState.from_json(json.dumps(data)) == st
    assert health.ps_status(None) == ""
    assert health.ps_status(HealthState()) == " (health: starting)"
    assert health.ps_status(st) == " (healthy)"
    assert health.ps_status(HealthState("unhealthy", 3)) == " (unhealthy)"


def run_monitor(
    config: HealthConfig, results: list[tuple[int, bytes] | float]
) -> tuple[list[HealthState], list[list[str]]]:
    """Run a monitor over scripted probe results (a float: sleep that long); stop after the last."""
    states: list[HealthState] = []
    calls: list[list[str]] = []
    stop = threading.Event()

    def probe(argv: list[str], timeout: float) -> tuple[int, bytes]:
        calls.append(argv)
        result = results[len(calls) - 1]
        if isinstance(result, float):
            time.sleep(result)
            return 0, b"too late"
        return result

    def on_change(state: HealthState) -> None:
        states.append(state)
        if len(states) == len(results):
            stop.set()

    monitor = HealthMonitor(config, probe, on_change)
    t = threading.Thread(target=monitor.run, args=(stop,))
    t.start()
    t.join(10)
    stop.set()
    assert not t.is_alive()
    return states, calls


def test_monitor_healthy_then_unhealthy_after_retries() -> None:
    cfg = HealthConfig(["CMD", "check"], interval=0.02, timeout=1, retries=3)
    states, calls = run_monitor(cfg, [(0, b"ok"), (1, b"no"), (1, b"no"), (2, b"no"), (0, b"")])
    assert calls[0] == ["check"]
    assert [(s.status, s.failing_streak) for s in states] == [
        ("healthy", 0),
        ("healthy", 1),
        ("healthy", 2),
        ("unhealthy", 3),
        ("healthy", 0),
    ]
    assert [e["ExitCode"] for e in states[-1].log] == [0, 1, 1, 2, 0]
    assert states[0].log[0]["Output"] == "ok"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", e["End"]) for e in states[-1].log)


def test_monitor_start_period() -> None:
    # Long start period, short start interval: failures while starting don't count...
    cfg = HealthConfig(
        ["CMD-SHELL", "check"], interval=0.02, start_period=60, start_interval=0.01, retries=1
    )
    states, calls = run_monitor(cfg, [(1, b""), (1, b""), (0, b""), (1, b"")])
    assert calls[0] == ["/bin/sh", "-c", "check"]
    assert [(s.status, s.failing_streak) for s in states] == [
        ("starting", 0),
        ("starting", 0),
        ("healthy", 0),
        # ...but once healthy, a failure counts even inside the start period (as docker).
        ("unhealthy", 1),
    ]


def test_monitor_timeout_and_log_cap() -> None:
    # A generous timeout so a loaded machine can't turn the quick probes into timeouts.
    cfg = HealthConfig(["CMD", "check"], interval=0.01, timeout=0.25, retries=2)
    results: list[tuple[int, bytes] | float] = [(0, b"x" * 10000)] * 5 + [1.0]
    states, _ = run_monitor(cfg, results)
    last = states[-1]
    assert len(last.log) == 5
    assert last.log[-1]["ExitCode"] == -1
    assert last.log[-1]["Output"] == "Health check exceeded timeout (250ms)"
    assert len(states[0].log[0]["Output"]) == health.MAX_OUTPUT_LEN
    assert (last.status, last.failing_streak) == ("healthy", 1)


def test_monitor_probe_exception_is_failure() -> None:
    def boom(argv: list[str], timeout: float) -> tuple[int, bytes]:
        raise OSError("exec failed")

    states: list[HealthState] = []
    stop = threading.Event()
    monitor = HealthMonitor(
        HealthConfig(["CMD", "x"], interval=0.01, retries=1),
        boom,
        lambda s: (states.append(s), stop.set()),
    )
    monitor.run(stop)
    assert states[0].status == "unhealthy" and states[0].log[0]["Output"] == "exec failed"

    def slow(argv: list[str], timeout: float) -> tuple[int, bytes]:
        raise subprocess.TimeoutExpired(argv, timeout)

    states.clear()
    stop.clear()
    HealthMonitor(
        HealthConfig(["CMD", "x"], interval=0.01, timeout=2),
        slow,
        lambda s: (states.append(s), stop.set()),
    ).run(stop)
    assert states[0].log[0]["Output"] == "Health check exceeded timeout (2s)"


# --- volumes ---------------------------------------------------------------------


def test_volumes_lifecycle(tmp_path: Path) -> None:
    store = Volumes(tmp_path)
    assert store.list() == []
    data = store.create("data", labels={"a": "b"})
    assert data.mountpoint == tmp_path / "volumes" / "data" / "_data"
    assert data.mountpoint.is_dir()
    (data.mountpoint / "f").write_text("kept")
    again = store.create("data", labels={"other": "x"})
    assert again.labels == {"a": "b"} and (again.mountpoint / "f").read_text() == "kept"
    anon = store.create(anonymous=True)
    assert re.fullmatch(r"[0-9a-f]{64}", anon.name) and anon.anonymous
    assert anon.labels == {volumes.ANONYMOUS_LABEL: ""}
    assert sorted(v.name for v in store.list()) == sorted(["data", anon.name])
    info = store.get("data").inspect()
    assert info == {
        "CreatedAt": data.created_at,
        "Driver": "local",
        "Labels": {"a": "b"},
        "Mountpoint": str(data.mountpoint),
        "Name": "data",
        "Options": None,
        "Scope": "local",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data.created_at)

    with pytest.raises(SouteError, match=r"^remove data: volume is in use - \[c1, c2\]$"):
        store.remove("data", in_use_by=["c1", "c2"])
    store.remove("data")
    with pytest.raises(SouteError, match=r"^no such volume: data$"):
        store.get("data")
    with pytest.raises(SouteError, match="no such volume"):
        store.remove("data")
    assert [p.name for p in (tmp_path / "volumes").iterdir()] == [anon.name]


def test_volume_names(tmp_path: Path) -> None:
    store = Volumes(tmp_path)
    for bad in ("x", "-x", ".hidden", "a/b", "../up", "a b"):
        with pytest.raises(SouteError, match=r'invalid volume name ".*": names must match'):
            store.create(bad)
    with pytest.raises(SouteError, match="no such volume"):
        store.get("../volumes")
    assert store.create("a.b_c-1").name == "a.b_c-1"


def test_volumes_prune(tmp_path: Path) -> None:
    store = Volumes(tmp_path)
    named = store.create("named")
    used = store.create(anonymous=True)
    unused = store.create(anonymous=True)
    assert store.prune({used.name}) == [unused.name]
    assert sorted(v.name for v in store.list()) == sorted([named.name, used.name])
    assert store.prune({used.name}, all=True) == ["named"]
    assert [v.name for v in store.list()] == [used.name]


def test_volume_create_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Volumes(tmp_path)

    def killed(src: object, dst: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(SouteError, match="create volume v1"):
        store.create("v1")
    monkeypatch.undo()
    assert store.list() == []
    assert list((tmp_path / "volumes").iterdir()) == []  # no half-built directory left
    # A temp dir left by a SIGKILLed create is invisible, and swept once stale.
    stale = tmp_path / "volumes" / ".tmp-dead"
    (stale / "_data").mkdir(parents=True)
    os.utime(stale, (0, 0))
    assert store.list() == []
    store.prune(set())
    assert not stale.exists()


def test_parse_volume_flag() -> None:
    assert parse_volume_flag("/data") == VolumeSpec("volume", None, "/data")
    assert parse_volume_flag("/host/dir:/ctr//dir/:ro") == VolumeSpec(
        "bind", "/host/dir", "/ctr/dir", readonly=True
    )
    assert parse_volume_flag("/h:/c:rw,Z") == VolumeSpec("bind", "/h", "/c")
    assert parse_volume_flag("cache:/var/cache:ro,nocopy") == VolumeSpec(
        "volume", "cache", "/var/cache", readonly=True, nocopy=True
    )
    assert parse_volume_flag("./rel:/c").source == os.path.abspath("rel")
    bads = ("rel", "/", "x:/", "a:rel", ":/c", "/c:ro", "a:/b:c:d", "/a:/b:bogus", "/a:/b:ro,rw")
    for bad in bads:
        with pytest.raises(SouteError, match=re.escape(f"invalid volume specification: '{bad}'")):
            parse_volume_flag(bad)
    with pytest.raises(SouteError, match="invalid mode: nocopy"):
        parse_volume_flag("/h:/c:nocopy")
    with pytest.raises(SouteError, match="invalid volume name"):
        parse_volume_flag("x:/c")


def test_parse_mount_flag() -> None:
    assert parse_mount_flag("type=bind,source=/x,target=/y,readonly") == VolumeSpec(
        "bind", "/x", "/y", readonly=True
    )
    assert parse_mount_flag("type=volume,src=vol,dst=/d,ro=false,volume-nocopy") == VolumeSpec(
        "volume", "vol", "/d", nocopy=True
    )
    assert parse_mount_flag("destination=/anon") == VolumeSpec("volume", None, "/anon")
    assert parse_mount_flag("type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=1777") == VolumeSpec(
        "tmpfs", None, "/t", options={"tmpfs-size": str(64 << 20), "tmpfs-mode": "1777"}
    )
    assert parse_mount_flag('type=bind,"source=/a,b",target=/c').source == "/a,b"
    errors = {
        "type=bind,target=/y,bogus=1": "unexpected key 'bogus'",
        "type=bind,source=/x,target=/y,readonly=maybe": "invalid value for readonly: maybe",
        "type=bind,source=/x": "target is required",
        "type=bind,target=/y": "field Source must not be empty",
        "type=bind,source=rel,target=/y": "'rel' mount path must be absolute",
        "type=volume,target=y": "'y' mount path must be absolute",
        "type=tmpfs,source=/x,target=/y": "Source must not be specified",
        "type=bind,source=/x,target=/y,volume-nocopy": "cannot mix 'volume-\\*' options",
        "type=volume,target=/y,tmpfs-size=1m": "cannot mix 'tmpfs-\\*' options",
        "type=tmpfs,target=/y,tmpfs-size=lots": "invalid size",
        "type=nfs,target=/y": "invalid value for 'type': nfs",
        "type=volume,target=/y,nokey": "invalid field 'nokey' must be a key=value pair",
    }
    for text, message in errors.items():
        with pytest.raises(SouteError, match=message):
            parse_mount_flag(text)


def test_parse_tmpfs_flag() -> None:
    """docker's option names (moby's ParseTmpfsOptions), values checked as tmpfs reads them."""
    assert parse_tmpfs_flag("/x") == ("/x", [])
    assert parse_tmpfs_flag("/x/:") == ("/x", [])
    assert parse_tmpfs_flag("//a/../b:rw,exec,size=1m,size=2M") == (
        "/b", ["rw", "exec", "size=1m", "size=2M"])
    good = ("size=10%", "size=0x10k", "size=0", "nr_inodes=1k", "nr_blocks=100",
            "mode=01777", "uid=1000", "gid=0", "mpol=default", "mpol=bind=0-1:static",
            "ro,noatime,nosuid,rprivate,strictatime,defaults")
    for options in good:
        assert parse_tmpfs_flag(f"/t:{options}") == ("/t", options.split(","))
    bad = {  # option -> what the hint says
        "size=abc": "size is a size in bytes", "size=-1": "size is", "size=1.5m": "size is",
        "size= 1m": "size is", "size=1m:ro": "size is", "nr_inodes=10%": "nr_inodes is",
        "mode=99999": "an octal mode", "mode=": "an octal mode", "uid=abc": "a numeric user",
        "uid=4294967295": "a numeric user", "gid=-1": "a numeric group", "mpol=bogus": "NUMA",
        "size": "size needs a value", "nosuchopt": "tmpfs takes size=", "Size=1m": "tmpfs takes",
        "huge=always": "tmpfs takes", "tmpcopyup": "tmpfs takes", "ro=1": "tmpfs takes",
        "bind": "not a bind mount", "rbind": "not a bind mount", "remount": "tmpfs takes",
    }
    for option, hint in bad.items():
        text = f"/x:mode=755,{option}"
        with pytest.raises(SouteError) as caught:
            parse_tmpfs_flag(text)
        message = str(caught.value)
        assert message.startswith(f'invalid tmpfs option "{option}" in --tmpfs {text} (')
        assert hint in message and "\n" not in message
    with pytest.raises(SouteError, match=r'option "" in --tmpfs /x:size=1m,, \(leave out'):
        parse_tmpfs_flag("/x:size=1m,,")
    with pytest.raises(SouteError, match=r"^invalid mount path: 'rel' mount path must be absolute"):
        parse_tmpfs_flag("rel:size=1m")
    with pytest.raises(SouteError, match="invalid mount path: '' mount path must be absolute"):
        parse_tmpfs_flag(":size=1m")
    with pytest.raises(SouteError, match="destination can't be '/'"):
        parse_tmpfs_flag("/x/..:size=1m")


def test_mount_flag_tmpfs_options() -> None:
    """``--mount type=tmpfs``'s own keys become the mount options docker passes on."""
    spec = parse_mount_flag("type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=700,readonly")
    assert _tmpfs_options(spec.options, spec.readonly) == ["ro", f"size={64 << 20}", "mode=700"]
    assert _tmpfs_options(parse_mount_flag("type=tmpfs,dst=/t,tmpfs-size=0").options,
                          False) == []
    # A mode of 0 is no mode, as docker has it: the kernel's 1777, not 000.
    assert _tmpfs_options(parse_mount_flag("type=tmpfs,dst=/t,tmpfs-mode=0").options,
                          False) == []


# --- top -------------------------------------------------------------------------


def _child_of(pid: int, comm: str) -> int | None:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        name_comm = stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode()
        if int(fields[1]) == pid and name_comm == comm:
            return int(name)
    return None


@pytest.fixture
def pid_ns_container() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A real PID namespace: `sh -c 'sleep 31 & exec sleep 30'` as its init."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", "sleep 31 & exec sleep 30"],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 5
        init = None
        while time.monotonic() < deadline:
            init = _child_of(proc.pid, "sleep")
            if init is not None and _child_of(init, "sleep") is not None:
                break
            if proc.poll() is not None:
                pytest.skip("unshare --pid failed here")
            time.sleep(0.02)
        assert init is not None
        yield init, proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created: unshare and its sleeps
        proc.wait()


def test_container_pids(pid_ns_container: tuple[int, subprocess.Popen[bytes]]) -> None:
    init, proc = pid_ns_container
    inner = _child_of(init, "sleep")
    pids = top.container_pids(init)
    assert pids == sorted([init, inner])  # type: ignore[list-item]
    assert os.getpid() not in pids and proc.pid not in pids


def test_top(pid_ns_container: tuple[int, subprocess.Popen[bytes]]) -> None:
    init, _ = pid_ns_container
    titles, rows = top.top(init)
    assert titles == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    by_pid = {int(r[1]): r for r in rows}
    assert by_pid[init][-1] == "sleep 30"
    assert sorted(by_pid) == top.container_pids(init)
    titles, rows = top.top(init, ["-o", "pid,args"])
    assert titles == ["PID", "COMMAND"]
    assert [init, "sleep 30"] in [[int(r[0]), r[1]] for r in rows]
    titles, rows = top.top(init, ["aux"])
    assert titles[:2] == ["USER", "PID"] and len(rows) == 2
    with pytest.raises(SouteError, match="PID"):
        top.top(init, ["-o", "comm"])
    with pytest.raises(SouteError, match="not running"):
        top.container_pids(2**22 + 1)


def test_parse_ps_keeps_command_spaces() -> None:
    out = "UID PID CMD\nroot 7 sh -c  'a b'\nroot 8 other\n"
    assert top.parse_ps(out, {7}) == (["UID", "PID", "CMD"], [["root", "7", "sh -c  'a b'"]])


def test_host_pid_namespace_falls_back_to_descendants() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert top.container_pids(child.pid) == [child.pid]
    finally:
        child.kill()
        child.wait()


# ---------------------------------------------------------------------------- diff


def _whiteout(path: Path) -> None:
    os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))  # a character device 0/0


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted xattrs need root")
def test_changes_lists_what_docker_lists(tmp_path: Path) -> None:
    """Kinds and order of ``soute diff``, on an upper dir over two layers: added, changed
    and deleted entries, parents listed once before them, directories whose mtime alone
    moved left out, what the image had under a directory removed and made again as
    deleted, lookups that honour the layers' whiteouts and never leave them through a
    symlink."""
    from soute.container.changes import changes, upper_size

    base, top, upper = tmp_path / "base", tmp_path / "top", tmp_path / "upper"
    for d in ("etc", "usr/lib", "var/cache/apt", "opt/y", "root"):
        (base / d).mkdir(parents=True)
    (base / "var" / "cache" / "apt" / "old").write_text("x\n")
    (base / "etc" / "passwd").write_text("root\n")
    (base / "etc" / "gone").write_text("x\n")
    (base / "usr" / "lib" / "old").write_text("x\n")
    (base / "link").symlink_to("/etc")  # must not be followed to the host's /etc
    (top / "usr").mkdir(parents=True)
    _whiteout(top / "usr" / "lib")  # the top layer removed /usr/lib
    (top / "etc").mkdir()
    (top / "etc" / "motd").write_text("hi\n")

    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "passwd").write_text("root\nnew\n")  # changed
    _whiteout(upper / "etc" / "gone")  # deleted
    (upper / "usr" / "lib").mkdir(parents=True)  # new: the image had it removed
    (upper / "var" / "cache" / "apt").mkdir(parents=True)
    os.setxattr(upper / "var" / "cache" / "apt", "trusted.overlay.opaque", b"y")
    (upper / "var" / "cache" / "apt" / "pkg").write_text("p\n")
    (upper / "link").mkdir()
    (upper / "link" / "hosts").write_text("over the host's?\n")
    (upper / "opt" / "x").mkdir(parents=True)
    os.link(upper / "etc" / "passwd", upper / "opt" / "x" / "hard")
    (upper / "root").mkdir()  # copied up, its mtime moved: nothing changed in it
    os.utime(upper / "root", ns=(1, 10**9))

    assert changes(upper, [base, top]) == [
        ("C", "/etc"),  # unchanged itself: listed for what changed in it
        ("D", "/etc/gone"),
        ("C", "/etc/passwd"),
        ("C", "/link"),  # a directory where the image has a symlink
        ("A", "/link/hosts"),  # not the host's /etc/hosts
        ("C", "/opt"),
        ("A", "/opt/x"),
        ("A", "/opt/x/hard"),
        ("C", "/usr"),
        ("A", "/usr/lib"),  # the image's was removed by its top layer
        ("C", "/var"),
        ("C", "/var/cache"),
        ("C", "/var/cache/apt"),  # removed, then made again (opaque):
        ("D", "/var/cache/apt/old"),  # what the image had in it is gone
        ("A", "/var/cache/apt/pkg"),
    ]
    # What ps -s counts: the files' sizes, a hardlinked one once, whiteouts nothing.
    assert upper_size(upper) == len("root\nnew\n") + len("over the host's?\n") + len("p\n")


def test_changes_leave_out_the_runtime_mountpoints(tmp_path: Path) -> None:
    """A running container's empty mountpoint stubs (docker keeps them in its init layer)
    are not listed, nor a directory made only to hold them; a user's file there is."""
    from soute.container.changes import RUNTIME_STUBS, changes

    base, upper = tmp_path / "base", tmp_path / "upper"
    (base / "bin").mkdir(parents=True)
    (upper / "etc").mkdir(parents=True)  # an image without /etc: made for the stubs
    (upper / "etc" / "hosts").write_bytes(b"")
    (upper / "proc").mkdir()
    assert changes(upper, [base], RUNTIME_STUBS) == []
    assert changes(upper, [base]) == [("A", "/etc"), ("A", "/etc/hosts"), ("A", "/proc")]
    (upper / "etc" / "motd").write_text("hi\n")
    (upper / "etc" / "hostname").write_text("written by the container\n")
    assert changes(upper, [base], RUNTIME_STUBS) == [
        ("A", "/etc"), ("A", "/etc/hostname"), ("A", "/etc/motd")]


def test_changes_walk_never_follows_a_symlink_and_keeps_raw_names(tmp_path: Path) -> None:
    """The walk goes by directory handles (a swapped-in symlink is not entered) and names
    that are no valid UTF-8 come back as os.fsdecode gives them."""
    from soute.container.changes import _walk, changes

    base, upper = tmp_path / "base", tmp_path / "upper"
    base.mkdir()
    (upper / "d").mkdir(parents=True)
    (upper / "d" / os.fsdecode(b"caf\xe9")).write_text("x")
    (upper / "host").symlink_to("/etc")
    walked = [("/".join(parts), names) for parts, _, names, _ in _walk(upper)]
    assert walked == [("d", [os.fsdecode(b"caf\xe9")]), ("d/" + os.fsdecode(b"caf\xe9"), []),
                      ("host", [])]
    assert changes(upper, [base]) == [("A", "/d"), ("A", "/d/" + os.fsdecode(b"caf\xe9")),
                                      ("A", "/host")]


@pytest.mark.skipif(os.geteuid() != 0, reason="trusted xattrs need root")
def test_changes_under_a_directory_removed_and_made_again(tmp_path: Path) -> None:
    """Below an opaque directory, a directory made again is a plain one in the upper dir,
    yet the image's entries in it are gone too."""
    from soute.container.changes import changes

    base, upper = tmp_path / "base", tmp_path / "upper"
    (base / "usr" / "bin").mkdir(parents=True)
    (base / "usr" / "sbin").mkdir()
    for name in ("a", "b"):
        (base / "usr" / "sbin" / name).write_text(name)
    (upper / "usr" / "sbin").mkdir(parents=True)
    os.setxattr(upper / "usr", "trusted.overlay.opaque", b"y")
    (upper / "usr" / "sbin" / "newf").write_text("")
    assert changes(upper, [base]) == [
        ("C", "/usr"), ("D", "/usr/bin"), ("C", "/usr/sbin"), ("D", "/usr/sbin/a"),
        ("D", "/usr/sbin/b"), ("A", "/usr/sbin/newf")]


def test_changes_of_a_tree_deeper_than_the_open_file_limit(tmp_path: Path) -> None:
    """A container can nest directories past any descriptor limit: the walk keeps two."""
    deep = tmp_path / "upper"
    path = deep
    for _ in range(300):
        path = path / "d"
    path.mkdir(parents=True)
    program = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from soute.container.changes import changes, upper_size
found = changes({str(deep)!r}, [])
assert len(found) == 300 and found[-1] == ("A", "/d" * 300), found[-1]
assert upper_size({str(deep)!r}) == 0
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent /
                                                             "src")}, check=False)
    assert out.stdout == "ok\n", out.stderr


def test_remove_tree_deeper_than_recursion_and_descriptors_never_follows_links(
        tmp_path: Path) -> None:
    """What `rm` of a container does with its directory: a tree 1,200 levels deep goes
    (no recursion, two descriptors), and a symlink in it to a directory outside is removed,
    not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    tree = tmp_path / "tree"
    tree.mkdir()
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1200):  # deeper than PATH_MAX allows by path: one level at a time
        os.mkdir("d", dir_fd=fd)
        below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    os.close(fd)
    (tree / "d" / "link").symlink_to(outside)
    program = f"""
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from soute.runtime.paths import remove_tree
remove_tree({str(tree)!r})
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent /
                                                             "src")}, check=False)
    assert out.returncode == 0, out.stderr
    assert not tree.exists() and (outside / "keep").read_text() == "k"
