"""soute build end to end: real builds into a real store, compared with BuildKit's rules."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from soute_cli import busybox_store, collecting, ok, soute, waiting_for_the_store


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with a busybox base, shared by the tests of this file."""
    return busybox_store(tmp_path_factory)


def inspect(root: Path, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads(ok(soute(root, "inspect", name)))[0]  # type: ignore[no-any-return]


def config_history(root: Path, name: str) -> list[dict]:  # type: ignore[type-arg]
    from soute.store.names import resolve
    from soute.store.store import Store

    with Store(root) as store:
        image = resolve(store, name)
        return json.loads(store.blobs.read(image.id))["history"]  # type: ignore[no-any-return]


METADATA = """\
FROM busybox
ARG V=1
ENV A=$V B="x y"
LABEL k=v other="a b"
MAINTAINER someone <me@example.org>
EXPOSE 80 53/udp
VOLUME /data
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s --timeout=3s CMD wget -q localhost
SHELL ["/bin/sh", "-ec"]
CMD python app.py
ENTRYPOINT ["/init"]
USER nobody
ONBUILD RUN echo child
"""


def test_metadata_instructions_make_the_config(root: Path) -> None:
    ok(soute(root, "build", "-t", "meta", "-", input=METADATA))
    info = inspect(root, "meta")
    cfg = info["Config"]
    assert cfg["Env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=1", "B=x y"]
    assert cfg["Labels"] == {"k": "v", "other": "a b"}
    assert cfg["ExposedPorts"] == {"53/udp": {}, "80/tcp": {}}
    assert cfg["Volumes"] == {"/data": {}}
    assert cfg["StopSignal"] == "SIGQUIT"
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q localhost"],
                                  "Interval": 5_000_000_000, "Timeout": 3_000_000_000}
    assert cfg["Shell"] == ["/bin/sh", "-ec"]
    # ENTRYPOINT after CMD in the same stage keeps that CMD; CMD's shell form uses SHELL.
    assert cfg["Cmd"] == ["/bin/sh", "-ec", "python app.py"]
    assert cfg["Entrypoint"] == ["/init"]
    assert cfg["User"] == "nobody"
    assert cfg["OnBuild"] == ["RUN echo child"]
    assert info["Author"] == "someone <me@example.org>"


def test_history_is_written_as_buildkit_writes_it(root: Path) -> None:
    ok(soute(root, "build", "-t", "meta", "-", input=METADATA))
    new = [h for h in config_history(root, "meta") if h.get("comment") ==
           "buildkit.dockerfile.v0"]
    assert [h["created_by"] for h in new] == [
        "ARG V=1",
        'ENV A=1 B=x y',
        "LABEL k=v other=a b",
        "MAINTAINER someone <me@example.org>",
        "EXPOSE [53/udp 80/tcp]",
        "VOLUME [/data]",
        "STOPSIGNAL SIGQUIT",
        "HEALTHCHECK {Test:[CMD-SHELL wget -q localhost] Interval:5s Timeout:3s "
        "StartPeriod:0s StartInterval:0s Retries:0}",
        "SHELL [/bin/sh -ec]",
        'CMD ["/bin/sh" "-ec" "python app.py"]',
        'ENTRYPOINT ["/init"]',
        "USER nobody",
    ]
    assert all(h["empty_layer"] for h in new)


def test_entrypoint_resets_an_inherited_cmd(root: Path) -> None:
    ok(soute(root, "build", "-t", "withcmd", "-", input='FROM busybox\nCMD ["a"]\n'))
    ok(soute(root, "build", "-t", "child", "-",
             input='FROM withcmd\nENTRYPOINT ["b"]\n'))
    cfg = inspect(root, "child")["Config"]
    assert cfg["Entrypoint"] == ["b"] and cfg["Cmd"] is None


def test_workdir_makes_a_layer_only_when_needed(root: Path) -> None:
    ok(soute(root, "build", "-t", "wd", "-",
             input="FROM busybox\nWORKDIR /app\nWORKDIR sub\nWORKDIR /tmp\n"))
    info = inspect(root, "wd")
    assert info["Config"]["WorkingDir"] == "/tmp"
    history = config_history(root, "wd")[-3:]
    assert [h["created_by"] for h in history] == ["WORKDIR /app", "WORKDIR /app/sub",
                                                  "WORKDIR /tmp"]
    # /tmp exists in busybox: no change on disk, so no layer (as docker records it).
    assert [h.get("empty_layer", False) for h in history] == [False, False, True]
    assert len(info["RootFS"]["Layers"]) == 3


def test_cached_rebuild_gives_the_same_image(root: Path) -> None:
    text = "FROM busybox\nWORKDIR /srv\nENV X=1\nCMD [\"sh\"]\n"
    first = ok(soute(root, "build", "-q", "-", input=text)).strip()
    p = soute(root, "build", "-", input=text)
    assert "CACHED" in p.stderr
    again = ok(soute(root, "build", "-q", "-", input=text)).strip()
    assert first == again
    fresh = ok(soute(root, "build", "-q", "--no-cache", "-", input=text)).strip()
    assert fresh != first  # a new layer, made at a new time


def test_source_date_epoch_makes_builds_reproducible(tmp_path: Path, root: Path) -> None:
    text = "FROM busybox\nWORKDIR /srv\nLABEL a=b\n"
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    first = ok(soute(root, "build", "-q", "--no-cache", "-", input=text, env=env)).strip()
    second = ok(soute(root, "build", "-q", "--no-cache", "-", input=text, env=env)).strip()
    assert first == second
    assert inspect(root, first)["Created"] == "2023-11-14T22:13:20Z"


def test_build_args_and_target(root: Path) -> None:
    text = ("ARG BASE=busybox\nFROM $BASE AS one\nARG GREETING=hi\nLABEL g=$GREETING\n"
            "FROM one AS two\nLABEL stage=two\n")
    ok(soute(root, "build", "-t", "args", "--build-arg", "GREETING=hello", "--target", "one",
             "-", input=text))
    labels = inspect(root, "args")["Config"]["Labels"]
    assert labels == {"g": "hello"}
    ok(soute(root, "build", "-t", "args2", "-", input=text))
    assert inspect(root, "args2")["Config"]["Labels"] == {"g": "hi", "stage": "two"}


def test_unused_build_arg_warns(root: Path) -> None:
    p = soute(root, "build", "--build-arg", "NOPE=1", "-", input="FROM busybox\n")
    assert p.returncode == 0
    assert "[Warning] One or more build-args [NOPE] were not consumed" in p.stderr


def test_labels_and_iidfile(tmp_path: Path, root: Path) -> None:
    iid = tmp_path / "iid"
    ok(soute(root, "build", "--label", "team=cargo", "--iidfile", str(iid), "-t", "lab", "-",
             input="FROM busybox\n"))
    assert inspect(root, "lab")["Id"] == iid.read_text()
    assert inspect(root, "lab")["Config"]["Labels"] == {"team": "cargo"}


def test_context_directory_and_dockerfile_flag(tmp_path: Path, root: Path) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "other.Dockerfile").write_text("FROM busybox\nLABEL from=file\n")
    ok(soute(root, "build", "-t", "ctx", "-f", str(tmp_path / "other.Dockerfile"),
             str(tmp_path / "ctx")))
    assert inspect(root, "ctx")["Config"]["Labels"] == {"from": "file"}


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("FROM nowhere:1\n", "Dockerfile:1:", "No such image: nowhere:1"),
        ("FROM busybox\nRUNN x\n", "Dockerfile:2:", "unknown instruction: RUNN"),
        ("FROM busybox\nCOPY --chwon=1 a b\n", "Dockerfile:2:", "unknown flag: --chwon"),
        ("FROM busybox AS a\nFROM a AS b\n", "", None),
    ],
)
def test_bad_dockerfiles_fail_at_their_line(root: Path, text: str, where: str,
                                            message: str | None) -> None:
    p = soute(root, "build", "-", input=text)
    if message is None:
        assert p.returncode == 0, p.stderr
        return
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(where) and message in last
    assert "Traceback" not in p.stderr


def test_unknown_target_and_missing_context(tmp_path: Path, root: Path) -> None:
    p = soute(root, "build", "--target", "nope", "-", input="FROM busybox AS a\n")
    assert p.returncode == 1 and "nope" in p.stderr and "Traceback" not in p.stderr
    p = soute(root, "build", str(tmp_path / "missing"))
    assert p.returncode == 1 and "not found" in p.stderr


def test_builder_prune_frees_the_cache(tmp_path: Path) -> None:
    store = tmp_path / "s"
    ok(soute(store, "bootstrap", "busybox"))
    ok(soute(store, "build", "-", input="FROM busybox\nWORKDIR /x\n"))
    ok(soute(store, "image", "prune", "-a", "-f"))
    blobs = store / "oci" / "blobs" / "sha256"
    assert len(list(blobs.iterdir())) == 1  # the cached WORKDIR layer outlives the image
    out = ok(soute(store, "builder", "prune", "-f"))
    assert "Deleted build cache objects: 1" in out
    assert list(blobs.iterdir()) == []


def test_a_context_read_from_stdin_is_unpacked_outside_a_garbage_collection(
    tmp_path: Path,
) -> None:
    """``build -`` with a tar unpacks the context into tmp/, which a garbage collection
    empties: the build takes the store's shared lock before, not only once it builds."""
    import io
    import tarfile

    store = tmp_path / "s"
    ok(soute(store, "bootstrap", "busybox"))
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM busybox\nCOPY f /f\n"), ("f", b"kept\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "context.tar").write_bytes(context.getvalue())
    with collecting(store), open(tmp_path / "context.tar", "rb") as stdin:
        proc = subprocess.Popen(
            [sys.executable, "-m", "soute.cli.main", "--root", str(store), "build", "-q",
             "-t", "from-stdin", "-"], stdin=stdin, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        waiting_for_the_store(proc)
        assert os.listdir(store / "tmp") == []  # nothing unpacked yet
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    out = ok(soute(store, "run", "--rm", "from-stdin", "cat", "/f"))
    assert out == "kept\n"


def test_a_no_cache_rebuilds_duplicate_layer_waits_for_a_prune(tmp_path: Path) -> None:
    """The second --no-cache build makes the same layer again: its copy is set aside (not
    deleted during the build), fsck says so, and a prune frees it."""
    store = tmp_path / "s"
    ok(soute(store, "bootstrap", "busybox"))
    text = "FROM busybox\nRUN echo same > /same\n"
    env = {"SOURCE_DATE_EPOCH": "1700000000"}  # the same layer, whatever the second
    ok(soute(store, "build", "-q", "--no-cache", "-", input=text, env=env))
    assert not (store / "trash").exists() or not any((store / "trash").iterdir())
    ok(soute(store, "build", "-q", "--no-cache", "-", input=text, env=env))
    assert len(list((store / "trash").iterdir())) == 1
    fsck = ok(soute(store, "fsck"))
    assert "1 tree(s) set aside: duplicate layers" in fsck and " 0 problem(s)" in fsck
    ok(soute(store, "image", "prune", "-f"))
    assert not (store / "trash").exists()
    assert "duplicate" not in ok(soute(store, "fsck"))


def _written_by(store: Path, *args: str) -> tuple[str, int]:
    """``soute build ARGS``: its output, and the bytes its processes wrote to files
    (``ru_oublock``: pages dirtied, counted when written, even if deleted before they
    reach the disk)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock
    out = ok(soute(store, "build", "-q", *args))
    return out.strip(), (resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock - before) * 512


def test_a_no_cache_rebuild_writes_no_layer_the_store_holds(root: Path, tmp_path: Path) -> None:
    """A --no-cache rebuild of a COPY into a new directory that makes the same layer again
    writes its tree but not the layer's 24 MiB tar a second time; a layer that came out
    different is written."""
    dest = "/app"
    size = 24 << 20
    ctx = tmp_path / "ctx"
    (ctx / "d").mkdir(parents=True)
    (ctx / "d" / "big").write_bytes(os.urandom(size))
    (ctx / "d" / "small").write_text("small\n")
    (ctx / "Dockerfile").write_text(f"FROM busybox\nCOPY d {dest}\n")
    first, wrote = _written_by(root, "--no-cache", str(ctx))
    assert wrote >= 2 * size  # the tree and the tar: the count sees both
    again, wrote = _written_by(root, "--no-cache", str(ctx))
    assert inspect(root, again)["RootFS"] == inspect(root, first)["RootFS"]
    assert wrote < 1.5 * size
    os.utime(ctx / "d" / "big", (1_000_000_000, 1_000_000_000))  # same key, other layer
    changed, wrote = _written_by(root, "--no-cache", str(ctx))
    assert wrote >= 2 * size
    layers = inspect(root, changed)["RootFS"]["Layers"]
    assert layers[:-1] == inspect(root, first)["RootFS"]["Layers"][:-1]
    assert layers[-1] != inspect(root, first)["RootFS"]["Layers"][-1]
    out = ok(soute(root, "run", "--rm", changed, "stat", "-c", "%s %Y", f"{dest}/big"))
    assert out == f"{size} 1000000000\n"
    assert " 0 problem(s)" in ok(soute(root, "fsck"))


def test_run_makes_layers_from_the_commands_changes(root: Path) -> None:
    text = ("FROM busybox\nARG WHO=world\nRUN echo hello $WHO > /hello && rm /etc/group\n"
            "RUN [\"sh\", \"-c\", \"cat /hello > /copy\"]\n")
    p = soute(root, "build", "-t", "ran", "-", input=text)
    assert p.returncode == 0, p.stderr
    history = config_history(root, "ran")[-3:]
    assert [h["created_by"] for h in history] == [
        "ARG WHO=world",
        "RUN |1 WHO=world /bin/sh -c echo hello $WHO > /hello && rm /etc/group # buildkit",
        "RUN |1 WHO=world sh -c cat /hello > /copy # buildkit",
    ]
    from soute.store.names import resolve
    from soute.store.store import Store

    with Store(root) as store:
        image = resolve(store, "ran")
        top = store.snapshots(image.diff_ids)
        assert (top[-2] / "hello").read_text() == "hello world\n"
        # The deletion is an overlay whiteout in the layer's snapshot, not a missing file.
        assert os.stat(top[-2] / "etc" / "group").st_rdev == 0
        assert (top[-1] / "copy").read_text() == "hello world\n"
        # What the runtime provided is not part of the layers.
        assert not (top[-2] / "etc" / "hosts").exists()


def test_run_output_streams_and_failure_names_the_line(root: Path) -> None:
    p = soute(root, "build", "--no-cache", "-",
              input="FROM busybox\nRUN echo visible-output\nRUN exit 7\n")
    assert p.returncode == 1
    assert "visible-output" in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("Dockerfile:3: process \"/bin/sh -c exit 7\" did not complete "
                           "successfully: exit code: 7")


def test_workdir_makes_its_directories_for_user_and_leaves_existing_ones_alone(
        root: Path) -> None:
    # As BuildKit: the missing directories (parents too) belong to USER (a name unknown to
    # the image gives root), /tmp keeps its mode, and a symlink resolves inside the image.
    name = f"soute-wd-{os.getpid()}"
    text = (f"FROM busybox\nRUN mkdir -p /run && ln -s /run /lnk\nWORKDIR /tmp/a/b\n"
            "USER nobody\nWORKDIR /home/n/deep\nUSER 1501:1502\nWORKDIR /srv/x\n"
            f"USER ghost\nWORKDIR /opt/ghost\nUSER root\nWORKDIR /lnk/{name}\n"
            "RUN stat -c '%a %u:%g %n' /tmp /tmp/a /tmp/a/b /home /home/n /home/n/deep /srv "
            f"/srv/x /opt/ghost /run/{name}\n")
    p = soute(root, "build", "--progress", "plain", "-", input=text)
    assert p.returncode == 0, p.stderr
    seen = [line.split(maxsplit=2)[2] for line in p.stderr.splitlines()
            if line.startswith("#") and " 0." in line and line.split()[2].isdigit()]
    assert seen == ["1777 0:0 /tmp", "755 0:0 /tmp/a", "755 0:0 /tmp/a/b",
                    "755 0:0 /home", "755 65534:65534 /home/n",
                    "755 65534:65534 /home/n/deep", "755 1501:1502 /srv", "755 1501:1502 /srv/x",
                    "755 0:0 /opt/ghost", f"755 0:0 /run/{name}"]
    assert not Path("/run", name).exists()  # made in the image, not through the link


def test_run_sees_env_workdir_user_and_network_none(root: Path) -> None:
    text = ("FROM busybox\nENV GREETING=hi\nWORKDIR /w\nUSER nobody\n"
            "RUN echo \"$GREETING $(pwd) $(id -u) $(hostname)\" && cat /proc/net/dev\n")
    p = soute(root, "build", "--no-cache", "--network", "none", "-", input=text)
    assert p.returncode == 0, p.stderr
    assert "hi /w 65534 buildkitsandbox" in p.stderr
    devices = [line.split(":")[0].split()[-1] for line in p.stderr.splitlines()
               if line.rstrip().endswith(("0", "0 0")) and ":" in line]
    assert "lo" in " ".join(devices)
    assert "eth0" not in p.stderr


def _cap_eff(stderr: str) -> list[int]:
    return [int(line.split()[-1], 16) for line in stderr.splitlines() if "CapEff:" in line]


def test_run_has_dockers_default_capabilities_unless_insecure_is_allowed(root: Path) -> None:
    text = ("FROM busybox\nRUN echo first-step; grep CapEff /proc/self/status; "
            "mount -t tmpfs none /mnt && echo mounted || echo mount-refused\n")
    p = soute(root, "build", "--no-cache", "--progress", "plain", "-", input=text)
    assert p.returncode == 0, p.stderr
    assert _cap_eff(p.stderr) == [0xA80425FB]  # docker run's 14, as BuildKit's RUN
    said = [line.split(maxsplit=2)[-1] for line in p.stderr.splitlines() if " 0." in line]
    assert "mount-refused" in said and "mounted" not in said
    insecure = text + "RUN --security=insecure grep CapEff /proc/self/status\n"
    p = soute(root, "build", "--no-cache", "--progress", "plain", "-", input=insecure)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "Dockerfile:3: RUN --security=insecure needs the security.insecure entitlement "
        "(allow it with 'soute build --allow security.insecure')"]  # before anything ran
    p = soute(root, "build", "--no-cache", "--progress", "plain",
              "--allow", "security.insecure", "-", input=insecure)
    assert p.returncode == 0, p.stderr
    default, everything = _cap_eff(p.stderr)
    assert default == 0xA80425FB and everything & (1 << 21)  # CAP_SYS_ADMIN
    p = soute(root, "build", "--allow", "security.unknown", "-", input=insecure)
    assert p.returncode != 0 and "invalid entitlement 'security.unknown'" in p.stderr


def test_run_opens_only_the_usual_devices_unless_insecure(root: Path) -> None:
    """A node a RUN makes (kept in its layer) cannot be opened, as BuildKit's device cgroup
    has it; with --security=insecure it can."""
    opens = ("mknod /kmsg c 1 11; dd if=/kmsg bs=1 count=0 2>/dev/null && echo kmsg-opened; "
             "dd if=/dev/null bs=1 count=0 2>/dev/null && echo null-opened")
    text = f"FROM busybox\nRUN {opens}\nRUN --security=insecure {opens}\n"
    p = soute(root, "build", "--no-cache", "--progress", "plain", "--allow",
              "security.insecure", "-", input=text)
    assert p.returncode == 0, p.stderr
    said = [line.split()[-1] for line in p.stderr.splitlines()
            if re.fullmatch(r"#\d+ \d+\.\d+ \w+-opened", line)]
    assert said == ["null-opened", "kmsg-opened", "null-opened"], p.stderr


def test_proxy_build_args_reach_run_without_arg_and_stay_out_of_cache_and_history(
        root: Path) -> None:
    text = ('FROM busybox\nRUN echo "[$HTTP_PROXY][$http_proxy][$no_proxy][$NO_PROXY]'
            '[$https_proxy]" > /proxies\n')
    args = ["--build-arg", "HTTP_PROXY=http://p:1", "--build-arg", "no_proxy=localhost"]
    ok(soute(root, "build", "-t", "proxied", *args, "-", input=text))
    p = soute(root, "run", "--rm", "proxied", "cat", "/proxies")
    assert p.stdout == "[http://p:1][http://p:1][localhost][localhost][]\n", p.stderr
    assert "p:1" not in json.dumps(config_history(root, "proxied"))
    assert "p:1" not in json.dumps(inspect(root, "proxied")["Config"])
    # Another proxy is no reason to run the step again (BuildKit keeps ProxyEnv out of
    # the key), and no build arg is reported unused.
    p = soute(root, "build", "--progress", "plain", "-t", "proxied2",
              "--build-arg", "HTTP_PROXY=http://other:2", "-", input=text)
    assert p.returncode == 0 and "CACHED" in p.stderr and "Warning" not in p.stderr, p.stderr


def test_an_image_built_on_a_base_without_path_gets_the_default_path(
        tmp_path: Path, root: Path) -> None:
    import tarfile

    (tmp_path / "hello").write_text("hi\n")
    with tarfile.open(tmp_path / "rootfs.tar", "w") as tar:
        tar.add(tmp_path / "hello", arcname="hello")
    ok(soute(root, "import", str(tmp_path / "rootfs.tar"), "bare:1"))
    assert inspect(root, "bare:1")["Config"]["Env"] is None  # as docker import makes it
    ok(soute(root, "build", "-t", "bare-child", "-", input="FROM bare:1\nENV A=1\n"))
    path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert inspect(root, "bare-child")["Config"]["Env"] == [path, "A=1"]  # as BuildKit


def test_inspect_shows_what_it_found_then_names_each_missing_one(root: Path) -> None:
    p = soute(root, "inspect", "-f", "{{.Os}}", "busybox", "no-such-a", "busybox", "no-such-b")
    assert (p.stdout, p.returncode) == ("linux\nlinux\n", 1)  # as docker
    assert [line.split(" (")[0] for line in p.stderr.splitlines()] == [
        "soute: No such object: no-such-a", "soute: No such object: no-such-b"]
    p = soute(root, "inspect", "no-such-a")
    assert (p.stdout, p.returncode) == ("[]\n", 1)
    p = soute(root, "image", "inspect", "-f", "{{.Os}}", "busybox", "no-such-a")
    assert (p.stdout, p.stderr, p.returncode) == ("linux\n", "soute: No such image: no-such-a\n",
                                                  1)
    p = soute(root, "inspect", "-f", "{{.Os}} {{.Nope}}", "busybox")  # a typo is an error
    assert (p.stdout, p.returncode) == ("\n", 1)  # nothing to show: docker's empty line
    assert 'map has no entry for key "Nope"' in p.stderr


def test_a_mistake_on_a_late_line_stops_the_build_before_anything_runs(root: Path) -> None:
    # As BuildKit, which turns the whole Dockerfile into its graph first.
    for text, line in (
            ('FROM busybox\nRUN echo running-now\nENV A=1\nLABEL "a=b"=c\n', 4),
            ('FROM busybox AS one\nRUN echo running-now\nFROM one\nENV B=${A:?needs A}\n', 4)):
        p = soute(root, "build", "--no-cache", "--progress", "plain", "-", input=text)
        assert p.returncode == 1 and "running-now" not in p.stderr, p.stderr
        assert p.stderr.startswith(f"Dockerfile:{line}: ") and len(p.stderr.splitlines()) == 1


def test_run_cache_follows_args(root: Path) -> None:
    text = "FROM busybox\nARG X=1\nRUN echo $X > /x\n"
    first = ok(soute(root, "build", "-q", "-", input=text)).strip()
    assert ok(soute(root, "build", "-q", "-", input=text)).strip() == first
    other = ok(soute(root, "build", "-q", "--build-arg", "X=2", "-", input=text)).strip()
    assert other != first


def _snapshot_file(root: Path, name: str, path: str) -> Path | None:
    from soute.store.names import resolve
    from soute.store.store import Store

    with Store(root) as store:
        for snap in reversed(store.snapshots(resolve(store, name).diff_ids)):
            if (snap / path).exists():
                return snap / path
    return None


def test_copy_from_context_with_dockerignore_and_cache(tmp_path: Path, root: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "app" / "sub").mkdir(parents=True)
    (ctx / "app" / "a.txt").write_text("hello\n")
    (ctx / "app" / "sub" / "b").write_text("b\n")
    (ctx / "app" / "secret.key").write_text("no\n")
    (ctx / ".dockerignore").write_text("**/*.key\n")
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nCOPY app /srv/\nCOPY --chmod=700 app/a.txt /opt/run\n"
        "RUN test ! -e /srv/secret.key && cat /srv/a.txt /srv/sub/b && ls -l /opt/run\n")
    p = soute(root, "build", "-t", "copied", str(ctx))
    assert p.returncode == 0, p.stderr
    assert "hello" in p.stderr and "-rwx------" in p.stderr
    history = config_history(root, "copied")[-3:]
    assert [h["created_by"] for h in history[:2]] == [
        "COPY app /srv/ # buildkit", "COPY --chmod=700 app/a.txt /opt/run # buildkit"]
    first = inspect(root, "copied")["Id"]
    # Only mtimes changed: the content hash is the same, every step is reused.
    os.utime(ctx / "app" / "a.txt", (1, 1))
    p = soute(root, "build", "-t", "copied", str(ctx))
    assert p.stderr.count("CACHED") == 3 and inspect(root, "copied")["Id"] == first
    # An edited file is caught through the stat cache.
    (ctx / "app" / "sub" / "b").write_text("changed\n")
    p = soute(root, "build", "-t", "copied", str(ctx))
    assert p.returncode == 0 and "CACHED" not in p.stderr and "changed" in p.stderr


def test_copy_from_a_stage_and_heredoc(root: Path) -> None:
    text = ("FROM busybox AS build\nRUN echo built > /artifact\n"
            "FROM scratch\nCOPY --from=build /artifact /out/artifact\n"
            "COPY <<EOF /etc/note\nnote $HOME\nEOF\n")
    p = soute(root, "build", "-t", "staged", "-", input=text)
    assert p.returncode == 0, p.stderr
    artifact = _snapshot_file(root, "staged", "out/artifact")
    assert artifact is not None and artifact.read_text() == "built\n"
    note = _snapshot_file(root, "staged", "etc/note")
    assert note is not None and note.read_text() == "note \n"
    assert len(inspect(root, "staged")["RootFS"]["Layers"]) == 2


def test_copy_missing_source_fails_at_its_line(tmp_path: Path, root: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\n\nCOPY nothere /x\n")
    p = soute(root, "build", str(tmp_path))
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{tmp_path / 'Dockerfile'}:3:") and "nothere" in last


def test_run_mounts_secret_cache_tmpfs_and_context_bind(tmp_path: Path, root: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "data.txt").write_text("from the context\n")
    (tmp_path / "token").write_text("s3cret")
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN --mount=type=secret,id=token cat /run/secrets/token > /seen-secret\n"
        "RUN --mount=type=secret,id=token,env=TOKEN echo $TOKEN > /seen-env\n"
        "RUN --mount=type=cache,target=/cache sh -c 'echo x >> /cache/log; wc -l < /cache/log'\n"
        "RUN --mount=type=tmpfs,target=/scratch touch /scratch/f && ls /scratch\n"
        "RUN --mount=type=bind,source=data.txt,target=/mnt/data cat /mnt/data\n"
        "RUN --mount=type=bind,target=/ctx,rw touch /ctx/new && ls /ctx\n")
    p = soute(root, "build", "--no-cache", "-t", "mounted", "--secret",
              f"id=token,src={tmp_path / 'token'}", str(ctx))
    assert p.returncode == 0, p.stderr
    assert "from the context" in p.stderr
    assert (_snapshot_file(root, "mounted", "seen-secret").read_text() == "s3cret")  # type: ignore[union-attr]
    assert _snapshot_file(root, "mounted", "seen-env").read_text() == "s3cret\n"  # type: ignore[union-attr]
    # Nothing a mount provided stays in the image; writes to a rw bind are thrown away.
    for path in ("run/secrets/token", "scratch/f", "cache/log", "mnt/data", "ctx/new"):
        assert _snapshot_file(root, "mounted", path) is None, path
    assert not (ctx / "new").exists()
    # The cache directory persists between builds.
    again = soute(root, "build", "--no-cache", "--secret", f"id=token,src={tmp_path / 'token'}",
                  str(ctx))
    assert again.returncode == 0 and "#4 " in again.stderr
    counts = [line.split()[-1] for line in again.stderr.splitlines()
              if line.startswith("#4 ") and line.split()[-1].isdigit()]
    assert counts and int(counts[-1]) >= 2


def test_required_secret_missing_fails_at_its_line(root: Path) -> None:
    p = soute(root, "build", "-", input="FROM busybox\n\nRUN --mount=type=secret,id=k,required "
              "true\n")
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("Dockerfile:3: secret k: not found")


def test_copy_from_a_stage_without_layers_is_a_clean_error(root: Path) -> None:
    text = "FROM scratch AS empty\nLABEL a=b\nFROM busybox\nCOPY --from=empty /x /x\n"
    p = soute(root, "build", "-", input=text)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("Dockerfile:4:") and "not found" in last


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_context_as_a_tar_on_stdin(tmp_path: Path, root: Path, mode: str) -> None:
    import io
    import tarfile

    files = {"Dockerfile": b"FROM busybox\nCOPY hello.txt /hello.txt\n", "hello.txt": b"hi\n"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    p = subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", str(root), "build",
                        "-t", "fromtar", "-"], input=buf.getvalue(), capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    hello = _snapshot_file(root, "fromtar", "hello.txt")
    assert hello is not None and hello.read_text() == "hi\n"


def test_builder_prune_empties_cache_mounts(tmp_path: Path) -> None:
    store = tmp_path / "s"
    ok(soute(store, "bootstrap", "busybox"))
    text = "FROM busybox\nRUN --mount=type=cache,target=/c echo kept > /c/f && cat /c/f\n"
    ok(soute(store, "build", "-", input=text))
    mounts = store / "cache" / "mounts"
    assert any(mounts.iterdir())
    out = ok(soute(store, "builder", "prune", "-f"))
    assert "Deleted build cache objects: 2" in out  # the step and its cache mount
    assert not mounts.exists()


def test_copy_chown_unknown_user_names_the_line(root: Path, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY --chown=nosuchuser a.txt /a\n")
    p = soute(root, "build", "--no-cache", str(tmp_path))
    assert p.returncode == 1
    assert "Dockerfile:2: --chown: unknown user 'nosuchuser'" in p.stderr


def test_copy_layers_are_the_tar_of_their_snapshot(tmp_path: Path, root: Path) -> None:
    """A COPY into a new directory writes its layer while the copy runs; one the layer
    writer cannot follow (a hardlink group, a second source) is written afterwards. Either
    way each layer is the tar of the snapshot it records, byte for byte."""
    import io

    from soute.image.digest import chain_ids
    from soute.layer import write_layer
    from soute.store.names import resolve
    from soute.store.store import Store

    ctx = tmp_path / "ctx"
    (ctx / "app" / "sub").mkdir(parents=True)
    for i in range(50):
        (ctx / "app" / f"f{i:02d}").write_bytes(os.urandom(i * 97))
    (ctx / "app" / "sub" / "b").write_text("b\n")
    (ctx / "hard").mkdir()
    (ctx / "hard" / "one").write_text("1\n")
    os.link(ctx / "hard" / "one", ctx / "hard" / "two")
    (ctx / "Dockerfile").write_text(
        "FROM busybox AS base\nCOPY app /srv/app\n"
        "FROM busybox\nCOPY --chown=1:2 app /deep/er/\nCOPY hard /hard\n"
        "COPY app/f01 app/f02 /two/\nCOPY --from=base /srv /fromstage\n"
        "RUN test -f /deep/er/sub/b && test /hard/one -ef /hard/two\n")
    p = soute(root, "build", "-t", "streamed", str(ctx))
    assert p.returncode == 0, p.stderr
    with Store(root) as store:
        diff_ids = resolve(store, "streamed").diff_ids
        chains = chain_ids(diff_ids)
        for diff_id, chain in zip(diff_ids[-5:], chains[-5:], strict=True):
            layer = write_layer(store.snapshot_path(chain), io.BytesIO())
            assert layer.diff_id == diff_id
            assert store.layer_size(diff_id) == layer.size
