"""``soute run`` against ``docker run``: the ENTRYPOINT/CMD table and the process basics.

Small images FROM busybox are built by soute, saved with ``soute save`` and loaded into a
private dockerd (see ``dockerd.py``: own socket and data roots, no bridge, no iptables);
then each case runs with both, and stdout and the exit code must be identical. Both run
with ``--network none`` (the only network that private dockerd has). dockerd is started
once for the module; if it cannot start, the tests fail (docker.io comes with
scripts/setup), they never skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dockerd import DOCKER, running_dockerd, short_workdir, tool_env

# Image name -> Dockerfile body after the FROM line. Each command prints its argv.
IMAGES: dict[str, str] = {
    # docker's documented table ("Understand how CMD and ENTRYPOINT interact").
    "cmd-exec": 'CMD ["/bin/echo", "C1", "C2"]',
    "cmd-shell": "CMD echo C1 C2",
    "ep-exec-cmd-exec": 'ENTRYPOINT ["/bin/echo", "E"]\nCMD ["C1", "C2"]',
    "ep-exec": 'ENTRYPOINT ["/bin/echo", "E"]',  # resets the CMD inherited from busybox
    "ep-shell-cmd-exec": 'ENTRYPOINT echo E\nCMD ["C1", "C2"]',  # the CMD is ignored
    "ep-shell": "ENTRYPOINT echo E",
    "ep-exec-cmd-shell": 'ENTRYPOINT ["/bin/echo", "E"]\nCMD echo C',
    "neither": "ENTRYPOINT []",  # no ENTRYPOINT, and the inherited CMD reset: no command
    "cmd-empty": "CMD []",
    "inherited": 'LABEL only="metadata"',  # busybox's CMD ["sh"]
    # Around the table.
    "ep-shell-args": 'ENTRYPOINT echo E "$0" "$@"',  # sh -c's $0 and $@ are the CMD/args
    "shell-instr": 'SHELL ["/bin/echo", "S"]\nCMD hi there',  # SHELL makes the shell form
    "cmd-exec-literal": 'ENV FOO=bar\nCMD ["echo", "$FOO"]',  # no expansion in exec form
    "cmd-shell-expand": "ENV FOO=bar\nCMD echo $FOO",
    "ep-relative": 'ENTRYPOINT ["echo", "E"]',  # looked up in PATH
}

# Images FROM another image of this set: (parent, body).
CHILDREN: dict[str, tuple[str, str]] = {
    "child-cmd": ("ep-exec-cmd-exec", 'CMD ["P"]'),  # keeps the parent's ENTRYPOINT
    "child-ep": ("ep-exec-cmd-exec", 'ENTRYPOINT ["/bin/echo", "F"]'),  # drops its CMD
}

# Run variant -> (options before the image, arguments after it).
VARIANTS: dict[str, tuple[list[str], list[str]]] = {
    "no-args": ([], []),
    "args": ([], ["X", "Y"]),
    "echo-args": ([], ["echo", "X", "Y"]),
    "entrypoint": (["--entrypoint", "/bin/echo"], []),
    "entrypoint-args": (["--entrypoint", "/bin/echo"], ["Z"]),
    "empty-entrypoint": (["--entrypoint", ""], []),
    "empty-entrypoint-args": (["--entrypoint", ""], ["echo", "Z"]),
}

# What docker's documentation says these print: a check that the comparison is with a
# working docker.
DOCUMENTED: dict[tuple[str, str], str] = {
    ("cmd-exec", "no-args"): "C1 C2\n",
    ("cmd-exec", "echo-args"): "X Y\n",
    ("cmd-shell", "no-args"): "C1 C2\n",
    ("ep-exec-cmd-exec", "no-args"): "E C1 C2\n",
    ("ep-exec-cmd-exec", "args"): "E X Y\n",
    ("ep-exec-cmd-exec", "entrypoint"): "\n",
    ("ep-exec-cmd-exec", "entrypoint-args"): "Z\n",
    ("ep-exec", "no-args"): "E\n",
    ("ep-shell-cmd-exec", "no-args"): "E\n",
    ("ep-shell-cmd-exec", "args"): "E\n",
    ("ep-exec-cmd-shell", "no-args"): "E /bin/sh -c echo C\n",
    ("child-cmd", "no-args"): "E P\n",
    ("child-ep", "no-args"): "F\n",
}

ENV_IMAGE = "with-env"
ENV_BODY = "ENV FOO=bar HOME=/custom\nENV PATH=/opt/bin:$PATH"
USER_IMAGE = "with-user"
USER_BODY = "USER nobody\nWORKDIR /srv/app"
VOLUME_IMAGE = "with-volume"
VOLUME_BODY = ("RUN mkdir /data && echo seeded > /data/f && chown 65534:65534 /data\n"
               "VOLUME /data")


@dataclass(frozen=True)
class Result:
    stdout: str
    returncode: int
    stderr: str


@dataclass(frozen=True)
class Peers:
    """Both runtimes, with the same images."""

    store: Path
    sock: str
    env: dict[str, str]

    def soute(self, *args: str, input: str | None = None) -> Result:
        p = subprocess.run(
            [sys.executable, "-m", "soute.cli.main", "--root", str(self.store), *args],
            input=input, capture_output=True, text=True, timeout=120,
            stdin=None if input is not None else subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": self.env["TMPDIR"]})
        return Result(p.stdout, p.returncode, p.stderr)

    def docker(self, *args: str, input: str | None = None) -> Result:
        # On this machine dockerd now and then does not find a file of the container's root
        # filesystem that is there (a command in PATH, a user in /etc/passwd: about 1 run in
        # 50, with images docker imported itself too): a run that the daemon refused is
        # tried again, so that docker's answer is the real one. soute's never is.
        for _ in range(4):
            p = subprocess.run([DOCKER, "-H", self.sock, *args], input=input,
                               capture_output=True, text=True, timeout=120, env=self.env,
                               stdin=None if input is not None else subprocess.DEVNULL)
            if "Error response from daemon" not in p.stderr:
                break
        return Result(p.stdout, p.returncode, p.stderr)

    def both(self, options: list[str], image: str, args: list[str],
             input: str | None = None) -> tuple[Result, Result]:
        """``run --rm --network none OPTIONS IMAGE ARGS`` with docker, then with soute."""
        run = ["run", "--rm", "--network", "none", *options, image, *args]
        return self.docker(*run, input=input), self.soute(*run, input=input)


def ok(result: Result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def same(docker: Result, soute: Result) -> None:
    assert (soute.stdout, soute.returncode) == (docker.stdout, docker.returncode), (
        f"docker stderr: {docker.stderr!r}\nsoute stderr: {soute.stderr!r}")


@pytest.fixture(scope="module")
def peers() -> Iterator[Peers]:
    with short_workdir("soute-diff-") as work:
        env = tool_env(work, buildkit=False)
        store = work / "store"
        with running_dockerd(work / "dockerd", env) as sock:
            peers = Peers(store, sock, env)
            ok(peers.soute("bootstrap", "busybox"))
            built = {**{name: ("busybox", body) for name, body in IMAGES.items()},
                     **CHILDREN, ENV_IMAGE: ("busybox", ENV_BODY),
                     USER_IMAGE: ("busybox", USER_BODY),
                     VOLUME_IMAGE: ("busybox", VOLUME_BODY)}
            for name, (parent, body) in built.items():
                ok(peers.soute("build", "-q", "-t", name, "-", input=f"FROM {parent}\n{body}\n"))
            archive = work / "images.tar"
            ok(peers.soute("save", "-o", str(archive), "busybox", *built))
            loaded = ok(peers.docker("load", "-i", str(archive)))
            for name in ("busybox", *built):
                assert f"Loaded image: {name}:latest" in loaded
            yield peers


# ------------------------------------------------------------------ ENTRYPOINT and CMD


@pytest.mark.parametrize(("image", "variant"), [
    pytest.param(image, variant, id=f"{image}:{variant}")
    for image in [*IMAGES, *CHILDREN] for variant in VARIANTS])
def test_entrypoint_and_cmd(peers: Peers, image: str, variant: str) -> None:
    options, args = VARIANTS[variant]
    docker, soute = peers.both(options, image, args)
    if (image, variant) in DOCUMENTED:  # docker's answer is the documented one
        assert (docker.stdout, docker.returncode) == (DOCUMENTED[image, variant], 0)
    same(docker, soute)


def test_no_command_fails_like_docker(peers: Peers) -> None:
    docker, soute = peers.both([], "neither", [])
    assert docker.returncode == 125 and "no command specified" in docker.stderr.lower()
    same(docker, soute)
    assert "no command specified" in soute.stderr.lower()


# ------------------------------------------------------------------ environment


def env_lines(result: Result) -> list[str]:
    """``env``'s output without the HOSTNAME (the container ID: different by nature)."""
    return [line for line in result.stdout.splitlines() if not line.startswith("HOSTNAME=")]


ENV_CASES: dict[str, tuple[list[str], str, list[str]]] = {
    "plain": ([], "busybox", ["env"]),
    "image-env": ([], ENV_IMAGE, ["env"]),
    "e-flag": (["-e", "A=1"], "busybox", ["env"]),
    "e-flag-image-env": (["-e", "A=1", "-e", "FOO=over"], ENV_IMAGE, ["env"]),
    "e-order": (["-e", "B=2", "-e", "A=1", "-e", "C=3", "-e", "B=4"], "busybox", ["env"]),
    "e-empty-and-equals": (["-e", "A=", "-e", "B=x=y"], "busybox", ["env"]),
    "e-path": (["-e", "PATH=/usr/bin"], "busybox", ["env"]),
    "e-home": (["-e", "HOME=/elsewhere"], "busybox", ["env"]),
    "e-from-host": (["-e", "SOUTE_DIFF_FROM_HOST"], "busybox", ["env"]),
    "e-unset-from-host": (["-e", "SOUTE_DIFF_NOT_SET"], "busybox", ["env"]),
    "user-nobody": (["-u", "nobody"], "busybox", ["env"]),
    "user-uid": (["-u", "1000"], "busybox", ["env"]),
    "user-nobody-image-home": (["-u", "nobody"], ENV_IMAGE, ["env"]),
    "image-user": ([], USER_IMAGE, ["env"]),
    "shell-expansion": (["-e", "A=1"], "busybox", ["sh", "-c", 'echo "$A" "${#HOSTNAME}"']),
}


@pytest.mark.parametrize("case", list(ENV_CASES))
def test_environment(peers: Peers, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    options, image, args = ENV_CASES[case]
    # -e NAME takes the value from the client's environment (docker's and soute's).
    monkeypatch.setitem(peers.env, "SOUTE_DIFF_FROM_HOST", "host value")
    monkeypatch.setenv("SOUTE_DIFF_FROM_HOST", "host value")
    peers.env.pop("SOUTE_DIFF_NOT_SET", None)
    monkeypatch.delenv("SOUTE_DIFF_NOT_SET", raising=False)
    docker, soute = peers.both(options, image, args)
    assert docker.returncode == 0, docker.stderr
    # The same variables with the same values, whatever the order...
    assert (sorted(env_lines(soute)), soute.returncode) == (sorted(env_lines(docker)), 0), (
        f"docker stderr: {docker.stderr!r}\nsoute stderr: {soute.stderr!r}")
    # ... and in the same order, where docker keeps one: docker 20.10 does not always keep
    # the order of an empty `-e A=`, of a name given twice, or of `-e` names beside one that
    # replaces an image variable (each seen in CI; it changes from run to run), so only the
    # values count there.
    names = [o.partition("=")[0] for o in options[1::2]] if options[:1] == ["-e"] else []
    from_image = {"FOO", "HOME", "PATH"} if image == ENV_IMAGE else set()  # its ENV_BODY's
    if len(set(names)) == len(names) and not any(o.endswith("=") for o in options) \
            and not from_image & set(names):
        assert env_lines(soute) == env_lines(docker)


def test_env_file(peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\nX=1\n\nSPACED= a b \nFROM_HOST\nNOT_SET\nX=2\n")
    monkeypatch.setitem(peers.env, "FROM_HOST", "host value")
    monkeypatch.setenv("FROM_HOST", "host value")
    docker, soute = peers.both(["--env-file", str(env_file)], "busybox", ["env"])
    assert "SPACED= a b " in docker.stdout.splitlines()
    assert (env_lines(soute), soute.returncode) == (env_lines(docker), 0), soute.stderr


def test_hostname_is_the_short_id(peers: Peers) -> None:
    """Both set HOSTNAME to the 12-hex-digit container ID, equal to ``hostname``."""
    for result in peers.both([], "busybox", ["sh", "-c", 'echo "$HOSTNAME"; hostname']):
        env_name, name = ok(result).split()
        assert env_name == name and len(name) == 12
        int(name, 16)


# ------------------------------------------------------------------ working directory, user


BASICS: dict[str, tuple[list[str], str, list[str]]] = {
    "workdir-tmp": (["-w", "/tmp"], "busybox", ["pwd"]),
    "workdir-created": (["-w", "/not/there/yet"], "busybox",
                        ["sh", "-c", "pwd; stat -c '%a %U %G' ."]),
    "workdir-image": ([], USER_IMAGE, ["pwd"]),
    "workdir-over-image": (["-w", "/tmp"], USER_IMAGE, ["pwd"]),
    "workdir-relative-path": (["-w", "/etc"], "busybox", ["cat", "passwd"]),
    "workdir-relative-command": (["-w", "/bin"], "busybox", ["./echo", "dot"]),
    "user-uid-gid": (["-u", "1000:1000"], "busybox", ["id"]),
    "user-uid": (["-u", "1000"], "busybox", ["id"]),
    "user-nobody": (["-u", "nobody"], "busybox", ["id"]),
    "user-nobody-gid": (["-u", "nobody:1000"], "busybox", ["id"]),
    "user-name-group": (["-u", "nobody:nogroup"], "busybox", ["id"]),
    "user-root": (["-u", "root"], "busybox", ["id"]),
    "user-zero": (["-u", "0:0"], "busybox", ["id"]),
    "user-image": ([], USER_IMAGE, ["id"]),
    "user-over-image": (["-u", "root"], USER_IMAGE, ["id"]),
    "user-unknown": (["-u", "nosuchuser"], "busybox", ["id"]),
    "user-unknown-group": (["-u", "0:nosuchgroup"], "busybox", ["id"]),
    "group-add-name": (["--group-add", "nogroup"], "busybox", ["id"]),
    "group-add-gid": (["--group-add", "4242", "-u", "nobody"], "busybox", ["id"]),
    "group-add-several": (["--group-add", "nogroup", "--group-add", "12", "-u", "1000:1000"],
                          "busybox", ["id"]),
    "group-add-own-group": (["--group-add", "root"], "busybox", ["id"]),
    "group-add-unknown": (["--group-add", "nosuchgroup"], "busybox", ["id"]),
    "hostname-flag": (["-h", "myhost"], "busybox", ["hostname"]),
    "pid-one": ([], "busybox", ["sh", "-c", "echo $$"]),
    "exit-code": ([], "busybox", ["sh", "-c", "exit 3"]),
    "false": ([], "busybox", ["false"]),
    "not-found": ([], "busybox", ["no-such-command"]),
    "not-in-path": (["-e", "PATH=/bin"], "busybox", ["env"]),  # busybox's env is /usr/bin
    "not-found-absolute": ([], "busybox", ["/no/such/command"]),
    "not-executable": ([], "busybox", ["/etc/passwd"]),
    "a-directory": ([], "busybox", ["/etc"]),
    "stdout-and-stderr": ([], "busybox", ["sh", "-c", "echo out; echo err >&2; echo out2"]),
    "no-stdin": ([], "busybox", ["cat"]),  # without -i, stdin is empty
    "tty": (["-t"], "busybox", ["echo", "hi"]),  # \r\n
    "entrypoint-not-split": (["--entrypoint", "echo hi"], "busybox", []),
    "workdir-not-absolute": (["-w", "tmp"], "busybox", ["pwd"]),
    "child-killed": ([], "busybox", ["sh", "-c", 'sh -c "kill -9 \\$\\$"; echo $?']),
    "init": (["--init"], "busybox", ["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline"]),
    # What the process finds around it.
    "dev": ([], "busybox", ["ls", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"]),
    # Not ``ls -l``: its time of day is the nodes' creation minute, which differs between
    # two runs a minute boundary apart.
    "dev-nodes": ([], "busybox", ["stat", "-c", "%N %F %A %U:%G %t,%T", "/dev/null",
                                 "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
                                 "/dev/tty", "/dev/console", "/dev/ptmx"]),
    "modes": ([], "busybox", ["stat", "-c", "%n %a %U", "/", "/tmp", "/root", "/dev",
                             "/dev/shm", "/proc", "/sys", "/etc/hostname", "/etc/hosts",
                             "/etc/resolv.conf"]),
    "umask": ([], "busybox", ["sh", "-c", "umask"]),
    "capabilities": ([], "busybox", ["grep", "Cap", "/proc/self/status"]),
    "cap-drop-all": (["--cap-drop", "ALL"], "busybox", ["grep", "Cap", "/proc/self/status"]),
    "cap-add": (["--cap-add", "NET_ADMIN"], "busybox", ["grep", "Cap", "/proc/self/status"]),
    "user-capabilities": (["-u", "nobody"], "busybox", ["grep", "Cap", "/proc/self/status"]),
    "no-new-privileges-off": ([], "busybox", ["grep", "NoNewPrivs", "/proc/self/status"]),
    "proc-masked": ([], "busybox", ["sh", "-c", "cat /proc/kcore | wc -c; ls /proc/acpi"]),
    "sys-read-only": ([], "busybox", ["sh", "-c", "touch /sys/x; echo $?"]),
    "hostname-file": (["-h", "myhost"], "busybox", ["cat", "/etc/hostname"]),
    "read-only-root": (["--read-only"], "busybox", ["touch", "/x"]),
    "read-only-tmp": (["--read-only"], "busybox", ["touch", "/tmp/x"]),
    "nobody-writes-tmp": (["-u", "nobody"], "busybox", ["sh", "-c", "touch /tmp/x && echo ok"]),
    "etc-mtab": ([], "busybox", ["readlink", "/etc/mtab"]),
    "dockerenv": ([], "busybox", ["stat", "-c", "%F %s %a %U", "/.dockerenv"]),
    "etc-hosts": ([], "busybox", ["cat", "/etc/hosts"]),
    # Volumes: the image's VOLUME, named volumes seeded from the image, tmpfs.
    "image-volume": ([], VOLUME_IMAGE, ["sh", "-c", 'cat /data/f; stat -c "%u %g %a" /data']),
    "named-volume-seeded": (["-v", "soute-diff-seeded:/data"], VOLUME_IMAGE,
                            ["sh", "-c", 'cat /data/f; stat -c "%u %g %a" /data']),
    "tmpfs-new-dir": (["--tmpfs", "/newdir"], "busybox",
                      ["sh", "-c", 'stat -c "%a %U" /newdir; grep newdir /proc/mounts']),
    "tmpfs-options": (["--tmpfs", "/newdir:mode=1770,size=1m"], "busybox",
                      ["sh", "-c", 'stat -c "%a %U" /newdir; grep newdir /proc/mounts']),
    "mount-tmpfs": (["--mount", "type=tmpfs,target=/newdir"], "busybox",
                    ["sh", "-c", 'stat -c "%a %U" /newdir; grep newdir /proc/mounts']),
    "tmpfs-over-image-dir": (["--tmpfs", "/data"], VOLUME_IMAGE,
                             ["sh", "-c", 'ls -A /data; stat -c "%a %U" /data']),
}

# The cases where soute is known to differ from docker (reported as bugs): strict xfails,
# so that a fix shows up as XPASS and the mark goes.
DIFFERENCES: dict[str, str] = {
    "no-new-privileges-off": "deliberate (issue #5, docs/differences.md): soute sets "
                             "no_new_privs on every process; docker only with --security-opt "
                             "no-new-privileges",
}


def case_params(cases: dict[str, tuple[list[str], str, list[str]]]) -> list[Any]:
    """One ``pytest.param`` per case, named after it; the known differences xfail."""
    return [pytest.param(*value, id=name,
                         marks=[pytest.mark.xfail(strict=True, reason=DIFFERENCES[name])]
                         if name in DIFFERENCES else [])
            for name, value in cases.items()]


@pytest.mark.parametrize(("options", "image", "args"), case_params(BASICS))
def test_basics(peers: Peers, options: list[str], image: str, args: list[str]) -> None:
    same(*peers.both(options, image, args))


def test_interactive_stdin(peers: Peers) -> None:
    docker, soute = peers.both(["-i"], "busybox", ["sh", "-c", "cat; echo done"],
                               input="line one\nline two\n")
    assert docker.stdout == "line one\nline two\ndone\n"
    same(docker, soute)


def test_interactive_stdin_to_shell(peers: Peers) -> None:
    same(*peers.both(["-i"], "busybox", [], input="echo from stdin $((6 * 7))\nexit 4\n"))


# ------------------------------------------------------------------ inspect --format

INSPECT_TEMPLATES = [
    "{{.Id}}", "{{json .Config.Env}}", "{{.Config.Cmd}}", "{{range .RepoTags}}{{.}};{{end}}",
    '{{index .Config.Labels "only"}}|{{index .Config.Labels "nope"}}', "{{.Config.Labels.only}}",
    "{{.Os}}/{{.Architecture}}", "{{len .RootFS.Layers}}", "{{json .Config.Labels}}",
    "{{if .Config.Entrypoint}}E{{else}}no entrypoint{{end}}", '{{printf "%.19s|%-8s|" .Id .Os}}',
    '{{upper .Os}} {{join .Config.Cmd ","}}', "{{- range .Config.Env}}\n{{.}}{{end -}}",
    '{{if eq .Os "linux"}}L{{end}} {{with .Config}}{{.Cmd}}{{end}} {{.Config.Cmd | json}}',
    "{{.Config.Entrypoint}} {{.Config.Volumes}} {{.Config.OnBuild}} {{json .Config.Volumes}}",
    "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}} {{$.Id}} {{(index .RepoTags 0)}}",
    '{{print 1 2 "x"}} {{title "hELLO wORLD"}} {{if gt (len .RootFS.Layers) 0}}L{{end}}',
    "{{.Config.Labels.nope}}", "{{.Id}} {{.Nope}}", "{{.Config.Nope}}",
    # Fields docker's JSON leaves out when empty: the struct's zero values, no error.
    "{{.Config.Healthcheck}}|{{.Config.StopSignal}}|{{.Variant}}|{{.Config.ExposedPorts}}",
]


@pytest.mark.parametrize("template", INSPECT_TEMPLATES)
def test_inspect_format(peers: Peers, template: str) -> None:
    """``inspect -f`` gives what docker's Go templates give, on the same image."""
    docker = peers.docker("inspect", "-f", template, "inherited")
    soute = peers.soute("inspect", "-f", template, "inherited")
    same(docker, soute)


def test_container_inspect_format(peers: Peers) -> None:
    """``container inspect -f`` on a created container, as docker prints it."""
    template = ("{{.State.Status}} {{.Name}} {{.Config.Image}} {{json .Config.Env}} "
                "{{.Config.Cmd}} {{.HostConfig.AutoRemove}} {{.State.Running}} "
                "[{{.NetworkSettings.IPAddress}}]")
    create = ["create", "--name", "inspect-me", "-e", "A=1", "--network", "none", "inherited",
              "echo", "hi"]
    ok(peers.docker(*create))
    ok(peers.soute(*create))
    try:
        same(peers.docker("container", "inspect", "-f", template, "inspect-me"),
             peers.soute("container", "inspect", "-f", template, "inspect-me"))
    finally:
        peers.docker("rm", "inspect-me")
        peers.soute("rm", "inspect-me")


# ------------------------------------------------------------------ exec -d, wait, stop -t


def detached(peers: Peers, tool: str, *args: str) -> str:
    """``run -d --network none ARGS`` with ``tool``; the container's ID."""
    run = peers.docker if tool == "docker" else peers.soute
    return ok(run("run", "-d", "--network", "none", *args)).strip()


def test_exec_detached_start_errors(peers: Peers) -> None:
    """``exec -d`` of a command that cannot start: one line on stderr and status 1 (docker
    20.10's "Error response from daemon: OCI runtime exec failed: ..."); one that starts:
    status 0 at once."""
    ids = {tool: detached(peers, tool, "busybox", "sleep", "300") for tool in ("docker", "soute")}
    try:
        for args in (["nosuchcommand"], ["/etc/passwd"], ["/no/such"]):
            docker = peers.docker("exec", "-d", ids["docker"], *args)
            soute = peers.soute("exec", "-d", ids["soute"], *args)
            assert docker.returncode == 1 and docker.stderr.count("\n") == 1
            same(docker, soute)
            assert soute.stderr.count("\n") == 1, soute.stderr
            assert args[0] in soute.stderr
        import time

        for tool, run in (("docker", peers.docker), ("soute", peers.soute)):
            began = time.monotonic()
            assert ok(run("exec", "-d", ids[tool], "sh", "-c", "sleep 30")) == ""
            assert time.monotonic() - began < 10, tool  # not the command's 30 s
    finally:
        peers.docker("rm", "-f", ids["docker"])
        peers.soute("rm", "-f", ids["soute"])


def test_wait_on_a_created_container(peers: Peers) -> None:
    """``wait`` on a container never started returns at once with 0 in docker 20.10."""
    create = ["create", "--network", "none", "busybox", "sh", "-c", "exit 5"]
    ids = {"docker": ok(peers.docker(*create)).strip(), "soute": ok(peers.soute(*create)).strip()}
    try:
        same(peers.docker("wait", ids["docker"]), peers.soute("wait", ids["soute"]))
    finally:
        peers.docker("rm", ids["docker"])
        peers.soute("rm", ids["soute"])


@pytest.mark.parametrize("timeout", ["-1", "0"])
def test_stop_timeout(peers: Peers, timeout: str) -> None:
    """``stop -t -1`` waits for the container however long it takes (its TERM trap exits 3
    after 2 s); ``-t 0`` kills at once (137)."""
    import time

    script = "trap 'sleep 2; exit 3' TERM; echo up; while true; do sleep 0.1; done"
    results = {}
    for tool, run in (("docker", peers.docker), ("soute", peers.soute)):
        cid = detached(peers, tool, "busybox", "sh", "-c", script)
        try:
            for _ in range(100):  # the trap is set once it says "up"
                if "up" in run("logs", cid).stdout:
                    break
                time.sleep(0.05)
            stopped = run("stop", "-t", timeout, cid)
            results[tool] = (stopped.stdout.replace(cid, "ID"), stopped.returncode,
                             run("inspect", "-f", "{{.State.ExitCode}}", cid).stdout)
        finally:
            run("rm", "-f", cid)
    assert results["docker"] == ("ID\n", 0, "3\n" if timeout == "-1" else "137\n")
    assert results["soute"] == results["docker"]


# ------------------------------------------------------------------ the init layer, tmpfs options

# Images whose /etc/mtab or /etc docker's init layer replaces (or keeps: a directory).
MTAB_IMAGES: dict[str, str] = {
    "mtab-file": "FROM busybox\nRUN echo rootfs > /etc/mtab\n",
    "mtab-symlink": "FROM busybox\nRUN ln -s /nowhere /etc/mtab\n",
    "mtab-dir": "FROM busybox\nRUN mkdir /etc/mtab\n",
    "no-etc": "FROM scratch\nCOPY --from=busybox /bin /bin\n",
}


@pytest.fixture(scope="module")
def mtab_images(peers: Peers) -> list[str]:
    for name, dockerfile in MTAB_IMAGES.items():
        ok(peers.soute("build", "-q", "-t", name, "-", input=dockerfile))
    archive = peers.store.parent / "mtab-images.tar"
    ok(peers.soute("save", "-o", str(archive), *MTAB_IMAGES))
    ok(peers.docker("load", "-i", str(archive)))
    return list(MTAB_IMAGES)


@pytest.mark.parametrize("image", list(MTAB_IMAGES))
def test_etc_mtab_over_the_image(peers: Peers, mtab_images: list[str], image: str) -> None:
    script = "readlink /etc/mtab || stat -c %F /etc/mtab; stat -c '%a %U' /etc"
    docker, soute = peers.both([], image, ["/bin/sh", "-c", script])
    assert docker.returncode == 0, docker.stderr
    same(docker, soute)


def _top_layer(archive: Path) -> list[str]:
    """The names in the last layer of a ``save`` archive (docker's or soute's)."""
    import json
    import tarfile

    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        member = outer.extractfile(manifest[0]["Layers"][-1])
        assert member is not None
        with tarfile.open(fileobj=member, mode="r:*") as layer:
            return sorted(name.rstrip("/") for name in layer.getnames())


def test_commit_leaves_the_init_layer_out(peers: Peers, tmp_path: Path) -> None:
    """A committed container's layer has what it changed, not /etc/mtab."""
    layers = {}
    for tool in ("docker", "soute"):
        call = getattr(peers, tool)
        name = f"soute-diff-commit-{tool}"
        ok(call("run", "--name", name, "--network", "none", "busybox", "touch", "/etc/added"))
        try:
            ok(call("commit", name, name))
            ok(call("save", "-o", str(tmp_path / f"{tool}.tar"), name))
        finally:
            call("rm", "-f", name)
            call("rmi", name)
        layers[tool] = _top_layer(tmp_path / f"{tool}.tar")
    assert layers["docker"] == ["etc", "etc/added"]
    assert layers["soute"] == layers["docker"]


# Container -> (run options, shell script): what `diff` then lists must be docker's.
DIFF_CASES: dict[str, tuple[list[str], str]] = {
    "nothing": ([], "true"),
    "added-file": ([], "touch /tmp/new"),
    "added-tree": ([], "mkdir -p /a/b/c && touch /a/b/c/f /a/top"),
    "modified": ([], "echo x >> /etc/passwd && chmod 700 /home"),
    "deleted": ([], "rm /bin/ls && rm -rf /usr/sbin && rm /etc/group"),
    "deleted-then-made": ([], "rm -rf /var/spool && mkdir /var/spool && touch /var/spool/z"),
    "tree-made-again": ([], "rm -rf /usr && mkdir -p /usr/sbin && touch /usr/sbin/newf"),
    "renamed": ([], "mv /etc/passwd /etc/passwd.old"),
    "symlink": ([], "ln -s /etc/passwd /root/link && rm /root/link && ln -s x /tmp/l"),
    "init-layer-files": ([], "echo 1.2.3.4 x >> /etc/hosts && echo x > /etc/hostname"),
    "workdir": (["-w", "/made/by/workdir"], "touch f"),
    "volume": (["-v", "/vol"], "touch /vol/inside /outside"),
}


@pytest.mark.parametrize(("case", "running"), [
    pytest.param(case, running, id=f"{'running' if running else 'stopped'}-{case}",
                 marks=[pytest.mark.xfail(strict=True, reason=(
                     "deliberate (docs/differences.md): soute removes the mountpoints it "
                     "made when a container stops"))] if (case, running) == ("volume", False)
                 else [])
    for running in (False, True) for case in DIFF_CASES])
def test_diff(peers: Peers, case: str, running: bool) -> None:
    """``diff``: the container's changes, with the same kinds and paths. docker 20.10
    lists them in Go's random map order (a directory before what it holds): soute in the
    walk's order, so only the sets are compared, and the order checked for soute."""
    options, script = DIFF_CASES[case]
    if running:
        options, script = ["-d", *options], script + " && echo done && sleep 60"
    listed = {}
    for tool in ("docker", "soute"):
        call = getattr(peers, tool)
        name = f"soute-diff-{case}-{tool}"
        ok(call("run", "--name", name, "--network", "none", *options, "busybox", "sh", "-c",
                script))
        try:
            if running:
                deadline = time.monotonic() + 30
                while "done" not in ok(call("logs", name)) and time.monotonic() < deadline:
                    time.sleep(0.05)
            listed[tool] = call("diff", name)
        finally:
            call("rm", "-f", "-v", name)
    docker, soute = listed["docker"], listed["soute"]
    assert sorted(soute.stdout.splitlines()) == sorted(docker.stdout.splitlines())
    assert soute.returncode == docker.returncode == 0
    paths = [line[2:] for line in soute.stdout.splitlines()]
    assert paths == sorted(paths, key=lambda p: p.split("/"))  # a directory first


def test_volumes_from(peers: Peers, tmp_path: Path) -> None:
    """``--volumes-from``: another container's volumes and binds (not its tmpfs), shared,
    read-only with ``:ro``; -v wins over it for the same path; unknown names and modes."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "b").write_text("from the host\n")
    script = ("cat /data/f /bound/b; ls /scratch 2>&1; touch /data/g 2>&1; echo $?; "
              "cat /other/f 2>&1; grep -c ' /data ' /proc/mounts")
    out = {}
    for tool in ("docker", "soute"):
        call = getattr(peers, tool)
        src, dst = f"soute-diff-vf-src-{tool}", f"soute-diff-vf-dst-{tool}"
        ok(call("create", "--name", src, "--network", "none", "-v", "/data", "-v",
                f"{shared}:/bound", "--tmpfs", "/scratch", "busybox"))
        try:
            ok(call("run", "--name", dst, "--network", "none", "--volumes-from", src,
                    "busybox", "sh", "-c", "echo hi > /data/f"))
            results = [call("run", "--rm", "--network", "none", "--volumes-from", f"{src}:ro",
                            "busybox", "sh", "-c", script),
                       call("run", "--rm", "--network", "none", "--volumes-from", dst,
                            "-v", f"{shared}:/data", "busybox", "ls", "/data"),
                       call("inspect", "-f", "{{.HostConfig.VolumesFrom}}", dst)]
            bad = [call("run", "--rm", "--volumes-from", f"{src}:bogus", "busybox", "true"),
                   call("run", "--rm", "--volumes-from", "soute-diff-vf-none", "busybox")]
        finally:
            call("rm", "-f", "-v", dst)
            call("rm", "-f", "-v", src)
        out[tool] = ([(r.stdout.replace(f"-{tool}", "-TOOL"), r.returncode) for r in results],
                     [r.returncode for r in bad])
    assert out["soute"] == out["docker"]
    assert out["docker"][0][0][0].startswith("hi\nfrom the host\n")


def test_logs_details(peers: Peers) -> None:
    """``logs --details``: each line after its extra attributes and a space (docker has
    none without --log-opt; soute records none), after the time with -t."""
    import re

    out = {}
    for tool in ("docker", "soute"):
        call = getattr(peers, tool)
        name = f"soute-diff-details-{tool}"
        ok(call("run", "--name", name, "--network", "none", "busybox", "sh", "-c",
                "echo one; echo two >&2; echo three"))
        try:
            plain = call("logs", "--details", name)
            stamped = call("logs", "--details", "-t", name)
        finally:
            call("rm", "-f", name)
        out[tool] = (plain.stdout, plain.stderr, plain.returncode,
                     re.sub(r"^\S+Z ", "TIME ", stamped.stdout, flags=re.M))
    assert out["docker"][:2] == (" one\n three\n", " two\n")
    assert out["soute"] == out["docker"]


def test_pause_and_unpause(peers: Peers) -> None:
    """``pause``/``unpause`` and what they do to ps, inspect, exec, stop, kill and rm: the
    same outputs, exit codes and messages as docker's."""
    import re

    steps = [
        ["pause", "C"], ["pause", "C"], ["ps", "-f", "name=C", "--format", "{{.State}}"],
        ["inspect", "-f", "{{.State.Status}} {{.State.Paused}} {{.State.Running}}", "C"],
        ["exec", "C", "true"], ["ps", "-f", "status=paused", "--format", "{{.Names}}"],
        ["ps", "-f", "status=running", "--format", "{{.Names}}"],
        ["unpause", "C"], ["unpause", "C"], ["exec", "C", "echo", "ran"],
        ["pause", "C"], ["stop", "-t", "5", "C"],
        ["inspect", "-f", "{{.State.Status}} {{.State.Paused}} {{.State.ExitCode}}", "C"],
        ["logs", "C"], ["pause", "C"],
        ["start", "C"], ["pause", "C"], ["kill", "C"],
        ["inspect", "-f", "{{.State.Status}} {{.State.Paused}} {{.State.ExitCode}}", "C"],
        ["start", "C"], ["pause", "C"], ["rm", "C"], ["rm", "-f", "C"],
        ["pause", "soute-diff-nosuch"],
    ]
    seen = {}
    for tool in ("docker", "soute"):
        call = getattr(peers, tool)
        name = f"soute-diff-pause-{tool}"
        created = ok(call("run", "-d", "--name", name, "--network", "none", "busybox", "sh",
                          "-c", "trap 'echo term; exit 3' TERM; while true; do sleep 0.1; done"))
        results = []
        try:
            for step in steps:
                r = call(*[name if a == "C" else a.replace("name=C", f"name={name}")
                           for a in step])
                # The message, without the tool's prefix and with the names made alike.
                said = r.stderr.replace(created.strip(), "ID").replace(name, "C").strip()
                said = re.sub(r"^(Error response from daemon|soute): ", "", said)
                results.append((step, r.returncode, r.stdout.replace(name, "C"),
                                said.partition("\n")[0].split(" (")[0]))
        finally:
            call("rm", "-f", name)
        seen[tool] = results
    for docker, soute in zip(seen["docker"], seen["soute"], strict=True):
        assert soute == docker
    assert seen["docker"][2][2] == "paused\n" and seen["docker"][13][2] == "term\n"


def test_system_df(peers: Peers) -> None:
    """``system df``: docker's rows and fields; ``-v``: its sections, titles and columns,
    a container's writable layer and volumes counted by the sizes of their files."""
    import json
    import re

    seen = {}
    for tool in ("docker", "soute"):
        call = getattr(peers, tool)
        name = f"soute-diff-df-{tool}"
        ok(call("run", "--name", name, "--network", "none", "-v", "/vol", "busybox", "sh",
                "-c", "head -c 2000000 /dev/zero > /big; echo hi > /vol/f"))
        try:
            summary = [json.loads(line) for line in ok(call(
                "system", "df", "--format", "{{json .}}")).splitlines()]
            verbose = ok(call("system", "df", "-v")).splitlines()
        finally:
            call("rm", "-f", "-v", name)
        ours = next(line for line in verbose if name in line)
        seen[tool] = {
            "fields": [list(r) for r in summary],
            "types": [r["Type"] for r in summary],
            "containers": [r["Size"] for r in summary if r["Type"] == "Containers"],
            "titles": [re.split(r"\s{2,}", line) for line in verbose
                       if line.endswith(":") or line.isupper() or "usage" in line],
            "row": re.split(r"\s{2,}", ours)[3:5],  # LOCAL VOLUMES, SIZE
        }
    assert seen["soute"]["fields"] == seen["docker"]["fields"]
    assert seen["soute"]["types"] == seen["docker"]["types"]
    assert seen["soute"]["containers"] == seen["docker"]["containers"] == ["2MB"]
    assert seen["soute"]["titles"] == seen["docker"]["titles"]
    assert seen["soute"]["row"] == seen["docker"]["row"] == ["1", "2MB"]


def test_info(peers: Peers) -> None:
    """``info``: the machine's facts under docker's names, as docker reports them."""
    template = ("{{.OSType}}|{{.Architecture}}|{{.NCPU}}|{{.MemTotal}}|{{.KernelVersion}}|"
                "{{.OperatingSystem}}|{{.CgroupVersion}}|{{.CgroupDriver}}|{{.LoggingDriver}}|"
                "{{json .DriverStatus}}")
    docker, soute = (ok(call("info", "--format", template)) for call in (peers.docker,
                                                                        peers.soute))
    fields = soute.strip().split("|")
    assert fields[:-1] == docker.strip().split("|")[:-1]
    assert fields[-1].startswith('[["Backing Filesystem",')
    text = ok(peers.soute("info"))
    for line in ("Storage Driver: overlay", "OSType: linux", f"CPUs: {fields[2]}"):
        assert line in text.splitlines(), text


def test_stats(peers: Peers) -> None:
    """``stats --no-stream``: docker's columns, formats and fields; a stopped container's
    zeros; a busy loop's CPU. (The figures themselves come from elsewhere: docker reads
    cgroups, soute /proc.)"""
    import json
    import re

    seen: dict[str, dict[str, Any]] = {}
    for tool in ("docker", "soute"):
        call = getattr(peers, tool)
        up, down = f"soute-diff-stats-up-{tool}", f"soute-diff-stats-down-{tool}"
        ok(call("run", "-d", "--name", up, "--network", "none", "busybox", "sh", "-c",
                "while true; do :; done"))
        try:
            ok(call("run", "--name", down, "--network", "none", "busybox", "true"))
            table = ok(call("stats", "--no-stream", up, down)).splitlines()
            record = json.loads(ok(call("stats", "--no-stream", "--format", "{{json .}}", up)))
            missing = call("stats", "--no-stream", "soute-diff-nosuch")
        finally:
            call("rm", "-f", up, down)
        rows = {line.split()[1]: re.split(r"\s{2,}", line) for line in table[1:]}
        seen[tool] = {"header": re.split(r"\s{2,}", table[0]), "down": rows[down][2:],
                      "up": rows[up][2:], "record": record,
                      "missing": (missing.returncode, missing.stderr)}
    docker, soute = seen["docker"], seen["soute"]
    assert soute["header"] == docker["header"]
    assert soute["down"] == docker["down"] == ["0.00%", "0B / 0B", "0.00%", "0B / 0B",
                                               "0B / 0B", "0"]
    for tool in (docker, soute):
        cpu, usage, _, net, _, pids = tool["up"]
        assert float(cpu.rstrip("%")) > 50 and net == "0B / 0B" and pids == "1", tool["up"]
        assert re.fullmatch(r"[0-9.]+[KMG]?i?B / [0-9.]+GiB", usage), usage
    assert list(soute["record"]) == list(docker["record"])  # the same fields, in order
    assert soute["record"]["Container"] == "soute-diff-stats-up-soute"
    assert soute["missing"][0] == docker["missing"][0] == 1
    assert "No such container: soute-diff-nosuch" in soute["missing"][1]


@pytest.mark.parametrize("option", ["/x:size=abc", "/x:nosuchopt", "relative:size=1m",
                                    "/x:mode=99999", "/x:huge=always"])
def test_bad_tmpfs_options(peers: Peers, option: str) -> None:
    """docker answers 125 (the daemon's or the kernel's error); soute too, with a line that
    names the option, and before a container exists."""
    docker = peers.docker("run", "--rm", "--network", "none", "--tmpfs", option, "busybox")
    before = ok(peers.soute("ps", "-aq"))
    soute = peers.soute("run", "--network", "none", "--tmpfs", option, "busybox")
    assert (docker.returncode, soute.returncode) == (125, 125), soute.stderr
    assert len(soute.stderr.splitlines()) == 1
    named = option.partition(":")[2] if option.startswith("/") else option.partition(":")[0]
    assert named in soute.stderr
    assert ok(peers.soute("ps", "-aq")) == before


def test_mount_tmpfs_options(peers: Peers) -> None:
    same(*peers.both(["--mount", "type=tmpfs,target=/newdir,tmpfs-size=1m,tmpfs-mode=700"],
                     "busybox", ["sh", "-c", 'stat -c "%a %U" /newdir; grep newdir /proc/mounts']))


def test_exec_start_error_status(peers: Peers) -> None:
    """An attached ``exec`` of a command that cannot start: docker exec's 126, whatever the
    reason (``run`` says 127 for a command not found)."""
    ids = {tool: detached(peers, tool, "busybox", "sleep", "300") for tool in ("docker", "soute")}
    try:
        for args in (["nosuchcommand"], ["/etc/passwd"]):
            docker = peers.docker("exec", ids["docker"], *args)
            soute = peers.soute("exec", ids["soute"], *args)
            assert soute.returncode == docker.returncode == 126, (docker, soute)
    finally:
        peers.docker("rm", "-f", ids["docker"])
        peers.soute("rm", "-f", ids["soute"])


def test_exec_in_a_container_that_is_not_running(peers: Peers) -> None:
    """``exec`` in a created (never started) container: refused with docker's status."""
    create = ["create", "--network", "none", "busybox", "sleep", "300"]
    ids = {"docker": ok(peers.docker(*create)).strip(), "soute": ok(peers.soute(*create)).strip()}
    try:
        for detach in ([], ["-d"]):
            docker = peers.docker("exec", *detach, ids["docker"], "true")
            soute = peers.soute("exec", *detach, ids["soute"], "true")
            assert docker.returncode != 0 and soute.returncode == docker.returncode, (
                docker, soute)
            assert "is not running" in soute.stderr
    finally:
        peers.docker("rm", ids["docker"])
        peers.soute("rm", ids["soute"])


# ------------------------------------------------------------------ resolver, security, sysctls


@pytest.mark.parametrize("options", [
    [],
    ["--dns", "192.0.2.1"],
    ["--dns-search", "a.example", "--dns-search", "b.example"],
    ["--dns-option", "ndots:2", "--dns-opt", "timeout:1"],
    ["--dns-search", "."],
    ["--dns", "192.0.2.1", "--dns-search", "x.example", "--dns-option", "debug"],
], ids=lambda o: " ".join(o) or "none")
def test_resolv_conf_options(peers: Peers, options: list[str]) -> None:
    """docker's order (search, nameservers, options); each option replaces its part."""
    same(*peers.both(options, "busybox", ["cat", "/etc/resolv.conf"]))


NNP_AND_SECCOMP = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status"


@pytest.mark.parametrize("option", [
    "no-new-privileges", "no-new-privileges=true", "no-new-privileges:false",
    "no-new-privileges=1", "no-new-privileges=F",
])
def test_security_opt_no_new_privileges(peers: Peers, option: str) -> None:
    docker, soute = peers.both(["--security-opt", option], "busybox",
                               ["sh", "-c", "grep NoNewPrivs: /proc/self/status"])
    assert docker.stdout.strip() in ("NoNewPrivs:\t0", "NoNewPrivs:\t1")
    same(docker, soute)


def test_security_opt_seccomp_unconfined(peers: Peers) -> None:
    """With seccomp=unconfined docker's processes have no filter either (soute never has
    one: docs/differences.md), and no_new_privs can be dropped as in docker."""
    options = ["--security-opt", "seccomp=unconfined", "--security-opt", "no-new-privileges=false",
               "--security-opt", "apparmor=unconfined", "--security-opt", "label=disable"]
    docker, soute = peers.both(options, "busybox", ["sh", "-c", NNP_AND_SECCOMP])
    assert docker.stdout == "NoNewPrivs:\t0\nSeccomp:\t0\n"
    same(docker, soute)


def test_security_opt_applies_to_exec(peers: Peers) -> None:
    """An ``exec``'d process has the container's no_new_privs setting."""
    for option, want in (("no-new-privileges=false", "0"), ("no-new-privileges", "1")):
        ids = {tool: detached(peers, tool, "--security-opt", option, "busybox", "sleep", "300")
               for tool in ("docker", "soute")}
        try:
            script = ["sh", "-c", "grep NoNewPrivs: /proc/self/status"]
            docker = peers.docker("exec", ids["docker"], *script)
            assert docker.stdout == f"NoNewPrivs:\t{want}\n"
            same(docker, peers.soute("exec", ids["soute"], *script))
        finally:
            peers.docker("rm", "-f", ids["docker"])
            peers.soute("rm", "-f", ids["soute"])


def test_security_opt_systempaths_unconfined(peers: Peers) -> None:
    script = ("ls /sys/firmware | wc -l; cat /proc/timer_list | head -1 | wc -l; "
              "grep ' /proc/sys ' /proc/mounts | cut -d' ' -f4 | cut -c1-2")
    for options in ([], ["--security-opt", "systempaths=unconfined"]):
        docker, soute = peers.both(options, "busybox", ["sh", "-c", script])
        same(docker, soute)
    assert docker.stdout.split()[0] != "0"  # something of /sys/firmware is seen now


@pytest.mark.parametrize(("option", "message"), [
    ("foo", 'Invalid --security-opt: "foo"'),
    ("disable", 'Invalid --security-opt: "disable"'),
    ("seccomp", 'Invalid --security-opt: "seccomp"'),
    ("label", 'Invalid --security-opt: "label"'),
    ("seccomp=", "opening seccomp profile () failed: open : no such file or directory"),
    ("systempaths=", 'invalid --security-opt 2: "systempaths="'),
    ("foo=bar", 'invalid --security-opt 2: "foo=bar"'),
    ("x:y:z", 'invalid --security-opt 2: "x:y:z"'),
    ("no-new-privileges=maybe", 'invalid --security-opt 2: "no-new-privileges=maybe"'),
    ("no-new-privileges:", 'invalid --security-opt 2: "no-new-privileges:"'),
    ("systempaths=bad", 'invalid --security-opt 2: "systempaths=bad"'),
    ("seccomp=/nonexistent/profile.json", "opening seccomp profile (/nonexistent/profile.json)"
                                          " failed: open /nonexistent/profile.json: no such file"
                                          " or directory"),
])
def test_security_opt_refused(peers: Peers, option: str, message: str) -> None:
    before = ok(peers.soute("ps", "-aq"))
    docker, soute = peers.both(["--security-opt", option], "busybox", ["true"])
    assert message in docker.stderr
    assert (docker.returncode, soute.returncode) == (125, 125), soute.stderr
    assert message in soute.stderr and len(soute.stderr.splitlines()) == 1, soute.stderr
    assert ok(peers.soute("ps", "-aq")) == before


def test_security_opt_seccomp_profile_is_refused(peers: Peers, tmp_path: Path) -> None:
    """A profile would be applied by docker; soute has no seccomp, so it says so instead of
    running the container without the filter asked for."""
    profile = tmp_path / "profile.json"
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    docker, soute = peers.both(["--security-opt", f"seccomp={profile}"], "busybox",
                               ["sh", "-c", NNP_AND_SECCOMP])
    assert "Seccomp:\t2" in docker.stdout
    assert soute.returncode == 125
    assert "seccomp profiles are not supported" in soute.stderr


SYSCTLS = ("cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/net/ipv4/ping_group_range"
           " /proc/sys/kernel/shmmax /proc/sys/fs/mqueue/msg_max /proc/sys/net/core/somaxconn")


@pytest.mark.parametrize("options", [
    [],
    ["--sysctl", "net.ipv4.ip_unprivileged_port_start=500"],
    ["--sysctl", "net.ipv4.ping_group_range=1 1", "--sysctl", "kernel.shmmax=1000000",
     "--sysctl", "fs.mqueue.msg_max=20", "--sysctl", "net.core.somaxconn=1000"],
], ids=lambda o: " ".join(o) or "defaults")
def test_sysctls(peers: Peers, options: list[str]) -> None:
    """``--sysctl`` values, and docker's own in a network namespace of the container's
    (unprivileged ports from 0, ping for every group) when not given."""
    same(*peers.both(options, "busybox", ["sh", "-c", SYSCTLS]))


def test_a_user_binds_a_low_port(peers: Peers) -> None:
    """As in docker, a process that is not root may listen on port 80 (busybox's nc then
    times out, where the bind would fail)."""
    docker, soute = peers.both(["-u", "nobody"], "busybox",
                               ["sh", "-c", "nc -l -p 80 -w 1 2>&1; echo $?"])
    assert "timed out" in docker.stdout
    same(docker, soute)


@pytest.mark.parametrize(("option", "status", "message"), [
    ("vm.swappiness=10", 125, "sysctl 'vm.swappiness=10' is not "),
    ("kernel.hostname=x", 125, "sysctl 'kernel.hostname=x' is not "),
    ("net.ipv4.ip_forward", 125, "sysctl 'net.ipv4.ip_forward' is not "),
    ("net.ipv4.no_such_thing=1", 127, "no_such_thing: no such file or directory"),
])
def test_sysctl_refused(peers: Peers, option: str, status: int, message: str) -> None:
    """docker 20.10 says "not whitelisted", today's docker "not allowed", as soute."""
    docker, soute = peers.both(["--sysctl", option], "busybox", ["true"])
    assert message in docker.stderr
    assert (docker.returncode, soute.returncode) == (status, status), soute.stderr
    assert message in soute.stderr.lower() and len(soute.stderr.splitlines()) == 1, soute.stderr


def test_sysctl_net_with_host_network_refused(peers: Peers) -> None:
    run = ["run", "--rm", "--network", "host", "--sysctl", "net.ipv4.ip_forward=1", "busybox",
           "true"]
    docker, soute = peers.docker(*run), peers.soute(*run)
    message = 'sysctl "net.ipv4.ip_forward" not allowed in host network namespace'
    assert message in docker.stderr
    assert soute.returncode == 125 and message in soute.stderr, soute.stderr


def test_label_file_and_inspect(peers: Peers, tmp_path: Path) -> None:
    """``--label-file`` (comments, blank lines and lines without "=" skipped, ``-l`` last),
    and how inspect shows the options of this section."""
    labels = tmp_path / "labels"
    labels.write_text("# a comment\n\nteam=cargo\n  stage=test\nflag\nteam=hold\n")
    create = ["create", "--network", "none", "--label-file", str(labels), "-l", "stage=prod",
              "--dns-search", "a.example", "--dns-option", "ndots:1",
              "--security-opt", "no-new-privileges:false", "--security-opt", "label=disable",
              "--sysctl", "net.core.somaxconn=1000", "--device", "/dev/fuse:/dev/f:rw",
              "busybox"]
    plain = ["create", "--network", "none", "busybox"]
    fields = ("{{json .Config.Labels}} {{json .HostConfig.SecurityOpt}} "
              "{{json .HostConfig.Devices}} {{json .HostConfig.Sysctls}}")
    # Apart: docker's Go struct names these DNS..., so its template falls back to the raw
    # JSON (map keys sorted, a missing key an error), which soute does not mimic.
    dns = "{{json .HostConfig.Dns}} {{json .HostConfig.DnsSearch}} {{json .HostConfig.DnsOptions}}"
    for args, want in ((create, '{"stage":"prod","team":"hold"}'), (plain, "{}")):
        ids = {"docker": ok(peers.docker(*args)).strip(), "soute": ok(peers.soute(*args)).strip()}
        try:
            docker = peers.docker("inspect", "-f", fields, ids["docker"])
            soute = peers.soute("inspect", "-f", fields, ids["soute"])
            assert docker.stdout.startswith(want)
            same(docker, soute)
            same(peers.docker("inspect", "-f", dns, ids["docker"]),
                 peers.soute("inspect", "-f", dns, ids["soute"]))
        finally:
            peers.docker("rm", ids["docker"])
            peers.soute("rm", ids["soute"])


DEVICE_OPENS = ("mknod /tmp/k c 1 11; dd if=/tmp/k bs=1 count=0 2>/dev/null; echo $?; "
                "mknod /dev/k c 1 11; dd if=/dev/k bs=1 count=0 2>/dev/null; echo $?; "
                "dd if=/dev/null bs=1 count=0 2>/dev/null; echo $?; "
                "dd if=/dev/ptmx bs=1 count=0 2>/dev/null; echo $?")


def test_device_nodes_made_in_a_container_cannot_be_opened(peers: Peers) -> None:
    """A container may mknod (docker keeps CAP_MKNOD) but not open what it made, on its root
    or in /dev (docker's device cgroup; soute's mounts are nodev); /dev/null works. With
    --privileged soute opens it (this machine's docker cannot run --privileged)."""
    docker, soute = peers.both([], "busybox", ["sh", "-c", DEVICE_OPENS])
    assert docker.stdout.split() == ["1", "1", "0", "0"]  # ptmx: terminals of its own
    same(docker, soute)
    privileged = peers.soute("run", "--rm", "--privileged", "busybox", "sh", "-c", DEVICE_OPENS)
    assert ok(privileged).split() == ["0", "0", "0", "0"]


@pytest.mark.parametrize("device", ["/dev/fuse", "/dev/fuse:/dev/other", "/dev/fuse:rw",
                                    "/dev/net:/dev/network:rwm"])
def test_device_option(peers: Peers, device: str) -> None:
    """``--device`` puts the host's node (or each node of a directory) in the container,
    where it opens, unlike a node the container makes."""
    inside = device.split(":")[1] if device.count(":") and device.split(":")[1][0] == "/" \
        else device.split(":")[0]
    script = (f"find {inside} -type c | sort; for f in $(find {inside} -type c); do "
              "stat -c '%a %u %g %t %T' $f; dd if=$f bs=1 count=0 2>/dev/null; echo $?; done")
    docker, soute = peers.both(["--device", device], "busybox", ["sh", "-c", script])
    assert docker.returncode == 0 and docker.stdout.endswith("\n0\n"), docker
    same(docker, soute)


@pytest.mark.parametrize(("device", "message"), [
    ("/dev/fuse:rwx", "rwx is not an absolute path"),
    ("/dev/fuse:/dev/f:x", "bad mode specified: x"),
    ("/dev/fuse:/dev/f:r:w", "bad format for path: /dev/fuse:/dev/f:r:w"),
    ("relative", "relative is not an absolute path"),
    ("/dev/no-such-device", 'adding custom device "/dev/no-such-device": no such file or '
                            "directory"),
])
def test_device_option_refused(peers: Peers, device: str, message: str) -> None:
    """docker refuses a missing device when it starts the container (127), soute already
    when it makes it (125)."""
    docker, soute = peers.both(["--device", device], "busybox", ["true"])
    assert docker.returncode in (125, 127) and message in docker.stderr
    assert soute.returncode == 125 and message in soute.stderr, soute.stderr
    assert len(soute.stderr.splitlines()) == 1


def test_device_permissions_soute_cannot_keep(peers: Peers) -> None:
    """Without a device cgroup a node cannot be made read-only: refused, not ignored."""
    soute = peers.soute("run", "--rm", "--device", "/dev/fuse:/dev/fuse:r", "busybox", "true")
    assert soute.returncode == 125 and "permissions r" in soute.stderr


HOST_NAMESPACES = ("grep ' /dev/shm ' /proc/mounts | cut -d' ' -f1-3; "
                   "[ $(readlink /proc/self/ns/ipc) = {ipc} ] && echo host-ipc; "
                   "[ $(readlink /proc/self/ns/uts) = {uts} ] && echo host-uts; "
                   "[ $(hostname) = {hostname} ] && echo host-name; true")


@pytest.mark.parametrize("options", [
    [], ["--ipc", "host"], ["--ipc", "none"], ["--ipc", "shareable"], ["--ipc", "private"],
    ["--uts", "host"], ["--ipc", "host", "--shm-size", "1m"], ["--ipc", "none", "--shm-size", "1m"],
], ids=lambda o: " ".join(o) or "default")
def test_ipc_and_uts_modes(peers: Peers, options: list[str]) -> None:
    """--ipc host shares the host's IPC namespace and /dev/shm, none has no /dev/shm;
    --uts host the host's hostname."""
    script = HOST_NAMESPACES.format(ipc=os.readlink("/proc/self/ns/ipc"),
                                    uts=os.readlink("/proc/self/ns/uts"),
                                    hostname=os.uname().nodename)
    same(*peers.both(options, "busybox", ["sh", "-c", script]))


@pytest.mark.parametrize(("options", "message"), [
    (["--ipc", "bogus"], "Invalid IPC mode: bogus"),
    (["--uts", "bogus"], "--uts: invalid UTS mode"),
    (["--uts", "host", "-h", "named"], "conflicting options: hostname and the UTS mode"),
    (["--ipc", "host", "--sysctl", "kernel.shmmax=100000"],
     'sysctl "kernel.shmmax" is not allowed in the hosts ipc namespace'),
])
def test_ipc_and_uts_refused(peers: Peers, options: list[str], message: str) -> None:
    docker, soute = peers.both(options, "busybox", ["true"])
    assert docker.returncode == 125 and message in docker.stderr
    assert soute.returncode == 125 and message in soute.stderr, soute.stderr



def _argv(peers: Peers, tool: str, *args: str) -> list[str]:
    prefix = ([DOCKER, "-H", peers.sock] if tool == "docker" else
              [sys.executable, "-m", "soute.cli.main", "--root", str(peers.store)])
    return [*prefix, *args]


def test_our_files_never_become_the_containers(peers: Peers, tmp_path: Path) -> None:
    """``run -i`` and ``exec`` (no -t) give the container pipes, as docker's daemon does: a
    file given as our stdin or stdout cannot be reopened, read-write, through /proc/self/fd."""
    given = tmp_path / "given"
    script = ("cat >/dev/null; for n in 0 1; do readlink /proc/self/fd/$n | cut -d: -f1; done; "
              "echo replaced > /proc/self/fd/0")
    ids = {tool: detached(peers, tool, "busybox", "sleep", "300") for tool in ("docker", "soute")}
    try:
        for tool in ("docker", "soute"):
            for args in (["run", "--rm", "-i", "--network", "none", "busybox"],
                         ["exec", "-i", ids[tool]]):
                given.write_text("original\n")
                out = tmp_path / "out"
                with given.open("rb") as stdin, out.open("wb") as stdout:
                    subprocess.run(_argv(peers, tool, *args, "sh", "-c", script), stdin=stdin,
                                   stdout=stdout, env=peers.env, timeout=120, check=True)
                assert given.read_text() == "original\n", (tool, args)
                assert out.read_text() == "pipe\npipe\n", (tool, args)
    finally:
        peers.docker("rm", "-f", ids["docker"])
        peers.soute("rm", "-f", ids["soute"])
