"""RUN --mount=type=ssh and soute build --ssh, as BuildKit and docker buildx forward agents.

The RUNs talk to the agent with OpenSSH's own clients: busybox has no way to reach a unix
socket, so a base image ``sshtools`` holds the host's ssh-add and ssh-keygen with the shared
libraries they load (copied in, nothing bound from the host). Listing goes through
``ssh-add -L``; signing through ``ssh-keygen -Y sign`` with the public key only (the agent
signs), checked on the host with ``ssh-keygen -Y check-novalidate``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from soute_cli import busybox_store, image_file, ok, soute

pytestmark = pytest.mark.skipif(shutil.which("ssh-agent") is None,
                                reason="openssh-client is not installed (scripts/setup)")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox store with ``sshtools``: busybox plus ssh-add, ssh-keygen and their
    libraries, at the paths the host has them."""
    path = busybox_store(tmp_path_factory)
    ctx = tmp_path_factory.mktemp("tools")
    for tool in ("/usr/bin/ssh-add", "/usr/bin/ssh-keygen"):
        ldd = subprocess.run(["ldd", tool], capture_output=True, text=True, check=True).stdout
        for f in [tool, *re.findall(r"(/\S+) \(0x", ldd)]:
            dest = ctx / "tools" / f.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)  # the file, not the link
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY tools/ /\n")
    ok(soute(path, "build", "-t", "sshtools", str(ctx)))
    return path


def _keygen(path: Path, comment: str, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment,
                    "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _keygen(tmp_path_factory.mktemp("key") / "id_test", "test@soute")


class Agent:
    """``ssh-agent -a SOCK`` holding some keys, stopped by :meth:`stop`."""

    def __init__(self, sock: Path, *keys: Path) -> None:
        out = subprocess.run(["ssh-agent", "-a", str(sock)], capture_output=True, text=True,
                             check=True).stdout
        self.pid = int(re.search(r"SSH_AGENT_PID=(\d+)", out).group(1))  # type: ignore[union-attr]
        self.sock = sock
        for k in keys:
            subprocess.run(["ssh-add", "-q", str(k)], check=True, capture_output=True,
                           env={**os.environ, "SSH_AUTH_SOCK": str(sock)})

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)


@pytest.fixture
def agent(tmp_path: Path, key: Path) -> Iterator[Agent]:
    a = Agent(tmp_path / "agent.sock", key)
    yield a
    a.stop()


def top_layer(root: Path, name: str) -> list[str]:
    """Every path in the image's last layer."""
    from soute.store.names import resolve
    from soute.store.store import Store

    with Store(root) as store:
        snap = store.snapshots(resolve(store, name).diff_ids)[-1]
        return sorted(str(p.relative_to(snap)) for p in snap.rglob("*"))


def last_line(p: subprocess.CompletedProcess[str]) -> str:
    return p.stderr.strip().splitlines()[-1]


def pub(key: Path) -> list[str]:
    """A public key's type and blob."""
    return Path(f"{key}.pub").read_text().split()[:2]


def test_default_forwards_ssh_auth_sock(tmp_path: Path, root: Path, key: Path,
                                        agent: Agent) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM sshtools\n"
        "COPY id_test.pub /key.pub\n"
        "RUN --mount=type=ssh "
        'test -S /run/buildkit/ssh_agent.0 && test "$SSH_AUTH_SOCK" = /run/buildkit/ssh_agent.0'
        " && ssh-add -L > /listed && echo data > /data"
        " && ssh-keygen -Y sign -f /key.pub -n file /data"
        " && if ssh-add -D; then echo removed > /refused; else echo refused > /refused; fi"
        " && ssh-add -l > /still\n")
    shutil.copy(f"{key}.pub", tmp_path / "id_test.pub")
    p = soute(root, "build", "--ssh", "default", "-t", "fwd", str(tmp_path),
              env={"SSH_AUTH_SOCK": str(agent.sock)})
    assert p.returncode == 0, p.stderr
    # The agent's identity, with its comment (a forwarded agent is relayed as it answers).
    listed = image_file(root, "fwd", "listed")
    assert listed is not None and listed.split() == [*pub(key), "test@soute"]
    # The agent signed: the signature checks against the public key on the host.
    sig = tmp_path / "data.sig"
    sig.write_text(image_file(root, "fwd", "data.sig") or "")
    subprocess.run(["ssh-keygen", "-Y", "check-novalidate", "-n", "file", "-s", str(sig)],
                   input=b"data\n", check=True, capture_output=True)
    # A forwarded agent is read-only, as BuildKit makes it: removing keys is refused.
    assert image_file(root, "fwd", "refused") == "refused\n"
    assert "test@soute" in (image_file(root, "fwd", "still") or "")
    # The socket and its mountpoint are no part of the layer.
    assert top_layer(root, "fwd") == ["data", "data.sig", "listed", "refused", "still"]
    assert image_file(root, "fwd", "run/buildkit") is None


def test_an_id_names_the_agent(tmp_path: Path, root: Path, key: Path, agent: Agent) -> None:
    # With a mount from= an image too (its trees are mounted in a helper process first).
    text = ("FROM sshtools\n"
            "RUN --mount=type=ssh,id=gh,required ssh-add -L > /listed && echo $SSH_AUTH_SOCK\n"
            "RUN --mount=type=bind,from=busybox,target=/b --mount=type=ssh,id=gh"
            " test -e /b/bin/busybox && ssh-add -L > /listed-too\n")
    p = soute(root, "build", "--ssh", f"gh={agent.sock}", "-t", "withid", "-", input=text)
    assert p.returncode == 0, p.stderr
    assert "/run/buildkit/ssh_agent.0" in p.stderr
    assert (image_file(root, "withid", "listed") or "").split()[:2] == pub(key)
    assert image_file(root, "withid", "listed-too") == image_file(root, "withid", "listed")


def test_key_files_are_served_by_an_agent_of_the_build(tmp_path: Path, root: Path,
                                                       key: Path) -> None:
    other = _keygen(tmp_path / "other", "other@soute")
    shutil.copy(f"{key}.pub", tmp_path / "id_test.pub")
    (tmp_path / "Dockerfile").write_text(
        "FROM sshtools\n"
        "COPY id_test.pub /key.pub\n"
        "RUN --mount=type=ssh,id=keys ssh-add -L > /listed && echo data > /data"
        " && ssh-keygen -Y sign -f /key.pub -n file /data\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    os.chmod(key, 0o644)  # ssh-add would refuse it; BuildKit reads it all the same
    try:
        p = soute(root, "build", "--ssh", f"keys={key},{other}", "-t", "keys", str(tmp_path),
                  env={"TMPDIR": str(tmp), "SSH_AUTH_SOCK": ""})
    finally:
        os.chmod(key, 0o600)
    assert p.returncode == 0, p.stderr
    # Both keys, in order, without comments: BuildKit's keyring keeps none.
    listed = (image_file(root, "keys", "listed") or "").splitlines()
    assert [line.split() for line in listed] == [pub(key), pub(other)]
    sig = tmp_path / "data.sig"
    sig.write_text(image_file(root, "keys", "data.sig") or "")
    subprocess.run(["ssh-keygen", "-Y", "check-novalidate", "-n", "file", "-s", str(sig)],
                   input=b"data\n", check=True, capture_output=True)
    # The build's agent and the RUN's socket are gone with the build.
    assert list(tmp.iterdir()) == []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert str(tmp).encode() not in cmdline.read_bytes(), cmdline
        except OSError:
            continue


def test_required_agent_missing_fails_at_its_line(root: Path, key: Path) -> None:
    text = "FROM busybox\n\nRUN --mount=type=ssh,required=true true\n"
    p = soute(root, "build", "-", input=text)
    assert p.returncode == 1
    assert last_line(p).startswith('Dockerfile:3: no SSH key "" forwarded from the client')
    text = "FROM busybox\nRUN --mount=type=ssh,id=gh,required true\n"
    p = soute(root, "build", "--ssh", f"other={key}", "-", input=text)
    assert p.returncode == 1
    assert last_line(p).startswith("Dockerfile:2: unset ssh forward key gh")


def test_optional_agent_missing_is_skipped(root: Path, key: Path) -> None:
    # BuildKit still sets SSH_AUTH_SOCK: it does so when it writes the step.
    text = ("FROM busybox\n"
            "RUN --mount=type=ssh,id=gh test ! -e /run/buildkit/ssh_agent.0"
            " && echo $SSH_AUTH_SOCK > /env\n")
    for flags in ([], ["--ssh", f"other={key}"]):
        p = soute(root, "build", "--no-cache", *flags, "-t", "optional", "-", input=text)
        assert p.returncode == 0, p.stderr
        assert image_file(root, "optional", "env") == "/run/buildkit/ssh_agent.0\n"
        assert image_file(root, "optional", "run/buildkit") is None


def test_target_mode_and_owner(root: Path, agent: Agent) -> None:
    text = (
        "FROM sshtools\n"
        "RUN --mount=type=ssh,target=/tmp/agent.sock,mode=0640,uid=1000,gid=1001"
        " --mount=type=ssh,id=two"
        " stat -c '%a %u %g %F' /tmp/agent.sock /run/buildkit/ssh_agent.1 > /st"
        " && echo $SSH_AUTH_SOCK > /env\n"
        "USER 1000\n"
        "RUN --mount=type=ssh,uid=1000 ssh-add -l > /tmp/as-user\n"
        "RUN --mount=type=ssh if ssh-add -l; then echo yes; else echo no; fi > /tmp/as-other\n"
        "USER 0\n"
        "ENV SSH_AUTH_SOCK=/mine\n"
        "RUN --mount=type=ssh echo $SSH_AUTH_SOCK > /env-kept\n")
    p = soute(root, "build", "--ssh", f"default={agent.sock}", "--ssh", f"two={agent.sock}",
              "-t", "opts", "-", input=text)
    assert p.returncode == 0, p.stderr
    assert image_file(root, "opts", "st") == "640 1000 1001 socket\n600 0 0 socket\n"
    assert image_file(root, "opts", "env") == "/tmp/agent.sock\n"
    # The socket's owner lets a non-root RUN use it; mode 0600 owned by root does not.
    assert "test@soute" in (image_file(root, "opts", "tmp/as-user") or "")
    assert image_file(root, "opts", "tmp/as-other") == "no\n"
    # An SSH_AUTH_SOCK the image sets is kept.
    assert image_file(root, "opts", "env-kept") == "/mine\n"
    assert image_file(root, "opts", "tmp/agent.sock") is None


def test_the_cache_does_not_depend_on_the_agent(tmp_path: Path, root: Path, key: Path,
                                               agent: Agent) -> None:
    text = "FROM busybox\nRUN --mount=type=ssh ls -l $SSH_AUTH_SOCK && date > /when\n"
    first = soute(root, "build", "--ssh", f"default={agent.sock}", "-t", "cached", "-",
                  input=text)
    assert first.returncode == 0 and "CACHED" not in first.stderr, first.stderr
    image = image_file(root, "cached", "when")
    other = Agent(tmp_path / "elsewhere.sock", key)
    try:
        # Another socket path, key files, or no agent at all (the mount is optional): the
        # step is the same one.
        for flags in (["--ssh", f"default={other.sock}"], ["--ssh", f"default={key}"], []):
            p = soute(root, "build", *flags, "-t", "cached", "-", input=text)
            assert p.returncode == 0 and "#2 CACHED" in p.stderr, p.stderr
            assert image_file(root, "cached", "when") == image
    finally:
        other.stop()


def test_bad_ssh_flags(tmp_path: Path, root: Path, key: Path) -> None:
    text = "FROM busybox\nRUN --mount=type=ssh true\n"

    def error(*flags: str, env: dict[str, str] | None = None) -> str:
        p = soute(root, "build", *flags, "-", input=text, env=env)
        assert p.returncode == 1, p.stderr
        return last_line(p).removeprefix("soute: ")

    assert error("--ssh", f"default={tmp_path}/nope").startswith(
        f'failed to convert agent config for ID: "default": stat {tmp_path}/nope: '
        "no such file or directory")
    assert error("--ssh", "default", env={"SSH_AUTH_SOCK": ""}).startswith(
        "invalid empty ssh agent socket: make sure SSH_AUTH_SOCK is set")
    assert error("--ssh", f"a={key}", "--ssh", f"a={key}").startswith('duplicate agent ID "a"')
    locked = _keygen(tmp_path / "locked", "locked", passphrase="secret")
    assert "failed to parse " in error("--ssh", f"default={locked}")
    assert "passphrase protected" in error("--ssh", f"default={locked}")
    assert error("--ssh", f"default={key}.pub").endswith(
        f"failed to parse {key}.pub: ssh: no key found (give an unencrypted private key file, "
        "or forward an agent holding the key)")
