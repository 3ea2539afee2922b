"""buildah's conformance corpus (../shared/conformance/buildah): every case built by docker's
BuildKit and by soute from the same local base image, then compared: the config fields of
``conformance_support.CONFIG_KEYS`` and the flattened filesystems (paths, types, modes,
owners, sizes, contents, link targets, device numbers, xattrs; no mtimes).

- dockerd (Debian's docker.io 20.10) runs for the session under a temporary directory, as in
  test_peers.py; builds use ``DOCKER_BUILDKIT=1 docker build --network host``. BuildKit
  resolves ``FROM`` names in dockerd's own image store first, so it works offline as long
  as the base is loaded there; only a ``# syntax=`` directive would pull (a frontend image),
  so docker gets the Dockerfile with that line turned into a comment (line numbers kept).
- The base: ``soute bootstrap busybox`` (Debian's busybox-static), saved and loaded into
  dockerd, so both sides have the very same image (same ID), tagged with every name the
  corpus uses (mirror.gcr.io/busybox, mirror.gcr.io/alpine, quay.io/libpod/centos:7).
- Each image is read back as a docker-format save (``docker save``; soute's ``save``) whose
  layers are applied in order into one tree.
- Cases that must fail: both builders fail, soute's error names the line of CASES.tsv; docker
  20.10 prints no line, so its failing step (when it names one) is matched to the line.
- buildah's "withoutDocker" cases are compared with docker all the same: docker is the
  reference soute follows, whatever buildah does.
- Docker 20.10 has no heredocs: the two heredoc cases are checked against BuildKit's
  documented behaviour (EXPECTED below). Cases soute cannot build yet are
  ``xfail(strict=True)`` with the reason (SOUTE_GAPS); cases the machine cannot build
  offline (OFFLINE) must fail on both sides, at the line that needs the network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conformance_support import (
    BASE_NAMES,
    Case,
    diff_configs,
    diff_trees,
    docker_dockerfile,
    failure_line,
    flatten,
    load_cases,
    prepare_context,
    walk,
)
from dockerd import DOCKER, running_dockerd, short_workdir, tool_env
from soute.store.archive import save
from soute.store.importer import bootstrap_busybox
from soute.store.names import full_tag, resolve
from soute.store.store import Store

CASES = load_cases()

# Soute features the case needs that are not there yet: the test must fail until they land.
SOUTE_GAPS: dict[str, str] = {
    # .dockerignore exceptions: docker 20.10's fsutil walker skips an excluded directory
    # unless an exception starts with "dir/", and sends that directory even when empty.
    # Current BuildKit (fsutil filter.go) walks into it when an exception has a wildcard and
    # sends it only when something below is kept: soute follows current BuildKit, so these
    # differ from the docker 20.10 we have as a reference.
    "dockerignore-exceptions-skip": "docker 20.10's older .dockerignore walk (see above)",
    "dockerignore-exceptions-weirdness-1": "docker 20.10's older .dockerignore walk",
    "copy-integration1": "docker 20.10's older .dockerignore walk",
    "dockerignore-allowlist-subsubdir-nofile": "docker 20.10 sends an empty parent dir",
    "dockerignore-allowlist-subsubdir-nosubdir": "docker 20.10 sends an empty parent dir",
    # Deliberate (the build issue; docs/differences.md): an unknown --chown name is an error.
    # The busybox base standing in for centos:7 has no "adm" group: BuildKit gives root.
    "copy with --chown": "deliberate: unknown --chown names are an error in soute",
}

# Cases that need images or hosts this machine does not have: both builders must fail at
# this line.
OFFLINE: dict[str, tuple[int, str]] = {
    "add": (2, "ADD https://github.com/... needs the internet"),
    "header-builtin": (2, "FROM quay.io/libpod/busybox@sha256:... (TARGETARCH is set) and "
                          "quay.io/fedora/python-311 can only be pulled"),
}

# Where docker 20.10 (BuildKit 0.8) is not what BuildKit does today; soute follows today's
# BuildKit. (does docker 20.10 build it?, why)
DOCKER_2010: dict[str, tuple[bool, str]] = {
    **{name: (True, "BuildKit 0.8 copies an empty folder1 when .dockerignore keeps nothing "
                    "below it ('**' then '!folder1/file'); later BuildKit fails at line 2, as "
                    "CASES.tsv says")
       for name in ("dockerignore-allowlist-subdir-nofile-dir",
                    "dockerignore-allowlist-subdir-nofile-file")},
}

# Empty directories docker 20.10 leaves in a RUN layer: runc's mount points (/dev, /proc,
# /sys, /etc for hosts and resolv.conf) on a scratch rootfs, and those of RUN --mount
# targets. Later BuildKit removes them (MountStubsCleaner, recursive for Dockerfiles).
IGNORE_DOCKER: dict[str, tuple[str, ...]] = {
    **{name: ("/dev", "/etc", "/proc", "/sys") for name in ("mount-targets-new",
                                                           "mount-targets-old")},
    "mount-targets-mount": ("/dev", "/etc", "/proc", "/sys", "/tmp", "/subdirectory",
                            "/subdirectory/other", "/subdirectory/target"),
    "multistage-copyback": ("/base",),
}

# Docker 20.10's Dockerfile frontend has no heredocs: what BuildKit documents instead.
# RUN <<EOF runs the body with the shell (quoted or not, the shell expands it);
# COPY/ADD <<EOF expand $VAR with the ARG/ENV in scope and keep quotes; <<"EOF" does not.
ROBOTS = "(robots content)\nLong file with random text\nRandom line\nHelloWorld\n"
HUMANS = "(humans content)\n"


def _quoting() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    values = {1: ("argvA", "valueA"), 2: ("argvA", "valueA"), 3: ("argvA", "valueA2"),
              4: ("argvA2", "valueA2")}
    for q in ("unquoted", "quoted"):
        for n, (a, v) in values.items():
            for var, val in (("argA", a), ("varA", v), ("varB", "valueB")):
                out[f"/run-{var}={val}.{q}{n}.txt"] = ("-rw-r--r--", "")
    bodies = {
        1: ("varB=valueB\ntouch /argA=$argA\ntouch /varA=$varA\ntouch /varB=$varB\n",
            "varB=valueB\ntouch /argA=argvA\ntouch /varA=valueA\ntouch /varB=\n"),
        2: ('varB=valueB\nargA="$argA"\nvarA="$varA"\nvarB="$varB"\n',
            'varB=valueB\nargA="argvA"\nvarA="valueA"\nvarB=""\n'),
        3: ('varA=valueA2\nvarB=valueB\nargA="$argA"\nvarA="$varA"\nvarB="$varB"\n',
            'varA=valueA2\nvarB=valueB\nargA="argvA"\nvarA="valueA"\nvarB=""\n'),
        4: ('argA=argvA2\nvarA=valueA2\nvarB=valueB\nargA="$argA"\nvarA="$varA"\n'
            'varB="$varB"\n',
            'argA=argvA2\nvarA=valueA2\nvarB=valueB\nargA="argvA"\nvarA="valueA"\n'
            'varB=""\n'),
    }
    # copy-quoted1 reads "argA=$argA" where the others read "touch /argA=$argA".
    bodies_quoted = dict(bodies)
    bodies_quoted[1] = ("varB=valueB\nargA=$argA\nvarA=$varA\nvarB=$varB\n", "")
    for op in ("copy", "add"):
        for n in range(1, 5):
            out[f"/{op}-unquoted{n}.txt"] = ("-rw-r--r--", bodies[n][1])
            out[f"/{op}-quoted{n}.txt"] = ("-rw-r--r--", bodies_quoted[n][0])
    return out


EXPECTED: dict[str, dict[str, tuple[str, str]]] = {
    "heredoc-copy": {
        "/test": ("drwxr-xr-x", ""), "/test2": ("drwxr-xr-x", ""),
        "/test/robots.txt": ("-rw-r--r--", ROBOTS), "/test/humans.txt": ("-rw-r--r--", HUMANS),
        "/test/file": ("-r--r--r--", "<context>"),
        "/test2/image_file": ("-rw-r--r--", "helloworld\n"),
        "/test2/robots.txt": ("-rw-r--r--", ROBOTS), "/test2/humans.txt": ("-rw-r--r--", HUMANS),
    },
    "heredoc-quoting": _quoting(),
}

Proc = subprocess.CompletedProcess[str]

# Stand-ins for alpine and centos:7: busybox plus the few files the cases read
# (/etc/os-release, /etc/nsswitch.conf; centos: a /bin/bash that is busybox's sh, because the
# centos cases SHELL ["/bin/bash", ...], and /usr/bin/script from util-linux).
ALPINE_NAME = BASE_NAMES[1]
ALPINE = """FROM mirror.gcr.io/busybox
RUN printf 'NAME=stand-in\\n' > /etc/os-release && printf 'hosts: files dns\\n' > /etc/nsswitch.conf
"""
CENTOS_NAME = BASE_NAMES[2]
CENTOS = """FROM mirror.gcr.io/alpine
RUN printf '#!/bin/sh\\nexec /bin/sh "$@"\\n' > /bin/bash && chmod 755 /bin/bash && \\
    printf '#!/bin/sh\\n' > /usr/bin/script && chmod 755 /usr/bin/script
"""


@pytest.fixture(scope="session")
def work() -> Iterator[Path]:
    with short_workdir("soute-conf-") as path:
        yield path


@pytest.fixture(scope="session")
def env(work: Path) -> dict[str, str]:
    return tool_env(work, buildkit=True)


@pytest.fixture(scope="session")
def store_root(work: Path) -> Path:
    if shutil.which("busybox") is None:
        pytest.fail("busybox is not installed: apt-get install busybox-static")
    root = work / "store"
    with Store(root) as store:
        image = bootstrap_busybox(store, tags=[BASE_NAMES[0]])
        with open(work / "busybox.tar", "wb") as f:
            save(store, [(image, [BASE_NAMES[0]])], f, format="docker", compression="none")
    # Built once by soute and loaded into docker: the very same images on both sides.
    for name, text, archive in ((ALPINE_NAME, ALPINE, "alpine"), (CENTOS_NAME, CENTOS, "centos")):
        (work / archive).mkdir()
        (work / archive / "Dockerfile").write_text(text)
        built = soute_build(root, name, work / archive / "Dockerfile", work / archive, {})
        assert built.returncode == 0, built.stderr
        soute_save(root, name, work / f"{archive}.tar")
    return root


@pytest.fixture(scope="session")
def docker(work: Path, env: dict[str, str], store_root: Path) -> Iterator[Callable[..., Proc]]:
    with running_dockerd(work / "dockerd", env) as sock:

        def client(*args: str | Path, cwd: Path | None = None) -> Proc:
            return subprocess.run([DOCKER, "-H", sock, *map(str, args)], capture_output=True,
                                  text=True, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                  timeout=300)

        for archive in ("busybox.tar", "alpine.tar", "centos.tar"):
            loaded = client("load", "-i", work / archive)
            assert loaded.returncode == 0, loaded.stderr
        yield client


def soute_build(root: Path, tag: str, dockerfile: Path, context: Path,
                build_args: dict[str, str]) -> Proc:
    args = [f"--build-arg={k}={v}" for k, v in build_args.items()]
    return subprocess.run(
        [sys.executable, "-m", "soute.cli.main", "--root", str(root), "build", "-t", tag,
         "-f", str(dockerfile), *args, str(context)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def soute_save(root: Path, tag: str, out: Path) -> None:
    with Store(root) as store, open(out, "wb") as f:
        image = resolve(store, tag)
        save(store, [(image, [full_tag(tag)])], f, format="docker", compression="none")


def docker_step_line(output: str, dockerfile: str) -> int | None:
    """The line of the step docker 20.10 reports as failed (it prints no line number)."""
    steps = [s.strip() for s in re.findall(r"^ > \[[^\]]*\] (.*):$", output, re.M)]
    # The step title shows the arguments expanded; the executor's message shows RUN's
    # command as written.
    ran = re.findall(r"failed running \[/bin/(?:ba)?sh -x?c (.*)\]: exit code", output)
    for number, line in enumerate(dockerfile.splitlines(), 1):
        line = line.strip()
        if line in steps or any(line == f"RUN {cmd}" for cmd in ran):
            return number
    return None


def case_params() -> list[object]:
    out: list[object] = []
    for case in CASES:
        marks = []
        if case.name in SOUTE_GAPS:
            marks.append(pytest.mark.xfail(strict=True, reason=SOUTE_GAPS[case.name]))
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


@pytest.mark.parametrize("case", case_params())
def test_case(case: Case, docker: Callable[..., Proc], store_root: Path,
              tmp_path: Path) -> None:
    context = prepare_context(case, tmp_path / "context")
    dockerfile = context / case.dockerfile
    text = dockerfile.read_text()
    tag = f"conformance/{case.id.lower()}:latest"
    tag = re.sub(r"[^a-z0-9/:._-]", "-", tag)

    ours = soute_build(store_root, tag, dockerfile, context, case.build_args)

    if case.name in EXPECTED:
        assert ours.returncode == 0, ours.stderr
        check_expected(case, store_root, tag, context, tmp_path)
        return

    (tmp_path / "df").mkdir()
    docker_file = tmp_path / "df" / Path(case.dockerfile).name
    docker_file.write_text(docker_dockerfile(text))
    network = ["--network", "host"] if re.search(r"(?im)^\s*RUN\b", text) else []
    args = [f"--build-arg={k}={v}" for k, v in case.build_args.items()]
    theirs = docker("build", *network, "-t", tag, "-f", docker_file, *args, context)

    if case.name in DOCKER_2010:
        want_docker, reason = DOCKER_2010[case.name]
        assert (theirs.returncode == 0) == want_docker, (
            f"docker 20.10 no longer does what DOCKER_2010 says ({reason}):\n"
            f"{theirs.stderr[-2000:]}")
        if case.fail_at is None:
            assert ours.returncode == 0, f"soute failed:\n{ours.stderr[-3000:]}"
        else:
            assert ours.returncode != 0, f"soute built what must fail at line {case.fail_at}"
            assert failure_line(ours.stderr) == case.fail_at, ours.stderr
        return

    must_fail = case.fail_at if case.fail_at is not None else OFFLINE.get(case.name, (None,))[0]
    if must_fail is None and theirs.returncode != 0:
        # docker is the reference: a RUN that fails there (the stand-in bases are not the
        # real alpine/centos; buildah-only volumes) must fail with soute at the same line.
        must_fail = docker_step_line(theirs.stderr, text)
        assert must_fail is not None, f"docker failed:\n{theirs.stderr[-3000:]}"
    if must_fail is not None:
        assert theirs.returncode != 0, f"docker built what must fail:\n{theirs.stderr[-2000:]}"
        assert ours.returncode != 0, (f"soute built what must fail at line {must_fail}; "
                                      f"docker:\n{theirs.stderr[-1500:]}")
        assert failure_line(ours.stderr) == must_fail, ours.stderr
        return

    assert ours.returncode == 0, f"soute failed, docker built it:\n{ours.stderr[-3000:]}"
    saved = docker("save", "-o", tmp_path / "docker.tar", tag)
    assert saved.returncode == 0, saved.stderr
    want = flatten(tmp_path / "docker.tar", tmp_path / "docker")
    soute_save(store_root, tag, tmp_path / "soute.tar")
    got = flatten(tmp_path / "soute.tar", tmp_path / "soute")
    theirs_tree = walk(want.tree)
    for path in IGNORE_DOCKER.get(case.name, ()):
        entry = theirs_tree.pop(path, None)
        assert entry is not None and entry[0].startswith("d"), (path, entry)
    problems = diff_configs(want.config, got.config) + diff_trees(theirs_tree, walk(got.tree))
    assert not problems, "\n".join(problems)


def check_expected(case: Case, root: Path, tag: str, context: Path, tmp_path: Path) -> None:
    """The case's image is the base plus exactly EXPECTED[case] (modes, root-owned, contents)."""
    soute_save(root, tag, tmp_path / "soute.tar")
    got = walk(flatten(tmp_path / "soute.tar", tmp_path / "soute").tree)
    base_tar = root.parent / "busybox.tar"
    base = walk(flatten(base_tar, tmp_path / "base").tree)
    problems = []
    for path, entry in got.items():
        if path in EXPECTED[case.name]:
            continue
        if path not in base:
            problems.append(f"unexpected {path}")
        elif entry != base[path] and not entry[0].startswith("d"):
            problems.append(f"{path} changed: base {base[path]} soute {entry}")
    for path, (mode, content) in EXPECTED[case.name].items():
        if path not in got:
            problems.append(f"missing {path}")
            continue
        entry = got[path]
        if entry[0] != mode or entry[2:4] != (0, 0):
            problems.append(f"{path}: want {mode} 0:0, got {entry[0]} {entry[2]}:{entry[3]}")
        if mode.startswith("-"):
            if content == "<context>":
                content = (context / Path(path).name).read_text()
            data = (tmp_path / "soute" / path.lstrip("/")).read_text()
            if data != content:
                problems.append(f"{path}: want {content!r}, got {data!r}")
    assert not problems, "\n".join(problems)
