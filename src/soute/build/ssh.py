"""SSH agents for ``RUN --mount=type=ssh``, forwarded as BuildKit's sshforward does.

``soute build --ssh ID[=SOCKET|KEY[,KEY...]]`` names the agents a build may use; an id alone
(``default``) is ``$SSH_AUTH_SOCK``. A RUN that mounts one gets a socket of its own, made for
that RUN in a private directory and bind-mounted at the mount's target (a mount: never part of
the layer), with the owner and mode the mount asks for. A thread of the build accepts on it
and relays each connection, one message at a time, to the agent behind the id:

- a socket: the user's agent, read-only as BuildKit's ``readOnlyAgent`` makes it (listing
  identities and signing pass; adding, removing, locking and extensions are refused);
- key files: an ``ssh-agent`` the build starts, loads with ``ssh-add`` and stops at its end.
  BuildKit holds such keys in an in-process keyring; soute leaves key formats and signatures
  to OpenSSH rather than carry its own cryptography. The identities are listed without
  comments, as that keyring lists them.

Nothing here enters a cache key: a step is keyed on its mounts as written, never on the
socket's path or the keys behind it, as in BuildKit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from soute._threads import start_without_signals
from soute.errors import SouteError

DEFAULT_ID = "default"

# Agent protocol message numbers (draft-miller-ssh-agent).
_FAILURE = 5
_REQUEST_IDENTITIES = 11
_IDENTITIES_ANSWER = 12
_SIGN_REQUEST = 13
_ADD_IDENTITY = 17
_REMOVE_IDENTITY = 18
_REMOVE_ALL_IDENTITIES = 19
_LOCK = 22
_UNLOCK = 23
_ADD_ID_CONSTRAINED = 25

_READ_ONLY = frozenset({_REQUEST_IDENTITIES, _SIGN_REQUEST})
# What Go's agent keyring serves for key files: no smartcards, no extensions.
_KEYRING = _READ_ONLY | {_ADD_IDENTITY, _REMOVE_IDENTITY, _REMOVE_ALL_IDENTITIES, _LOCK,
                         _UNLOCK, _ADD_ID_CONSTRAINED}
_MAX_MESSAGE = 256 * 1024  # OpenSSH's own limit on an agent message
_MAX_KEY_FILE = 100 * 1024  # what BuildKit reads of a key file


@dataclass(frozen=True)
class AgentSpec:
    """One ``--ssh``: an id and its socket or key files (none: ``$SSH_AUTH_SOCK``)."""

    id: str
    paths: tuple[str, ...] = ()


def parse_ssh_specs(values: Sequence[str]) -> list[AgentSpec]:
    """docker's ``--ssh ID[=PATH[,PATH...]]``; an empty id is ``default``."""
    out: list[AgentSpec] = []
    for value in values:
        sid, sep, rest = value.partition("=")
        sid = sid or DEFAULT_ID
        if any(s.id == sid for s in out):
            raise SouteError(f'duplicate agent ID "{sid}"', "give each --ssh its own id")
        out.append(AgentSpec(sid, tuple(rest.split(",")) if sep else ()))
    return out


@dataclass(frozen=True)
class _Upstream:
    """Where the connections of an id go, and which requests may pass."""

    path: str  # the agent's socket
    allowed: frozenset[int]
    blank_comments: bool  # list identities without comments (BuildKit's keyring)

    def dial(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(2)  # BuildKit's dial timeout
            s.connect(self.path)
            s.settimeout(None)
        except OSError:
            s.close()
            raise
        return s


class SSHAgents:
    """The agents a build's ``--ssh`` flags name, checked when the build starts as BuildKit
    checks them (key files loaded into an agent of the build's own). :meth:`close` stops
    what was started; use it as a context manager."""

    def __init__(self, specs: Sequence[AgentSpec],
                 environ: Mapping[str, str] | None = None) -> None:
        self._upstreams: dict[str, _Upstream] = {}
        self._owned: list[_KeyAgent] = []
        env = os.environ if environ is None else environ
        try:
            for spec in specs:
                self._upstreams[spec.id] = self._open(spec, env)
        except BaseException:
            self.close()
            raise

    def __contains__(self, sid: object) -> bool:
        return sid in self._upstreams

    def __bool__(self) -> bool:
        return bool(self._upstreams)

    def serve(self, sid: str, uid: int = 0, gid: int = 0, mode: int = 0o600) -> AgentSocket:
        """A new socket relaying to agent ``sid`` (started with :meth:`AgentSocket.start`)."""
        return AgentSocket(self._upstreams[sid], uid, gid, mode)

    def close(self) -> None:
        for agent in self._owned:
            agent.close()
        self._owned.clear()

    def __enter__(self) -> SSHAgents:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _open(self, spec: AgentSpec, environ: Mapping[str, str]) -> _Upstream:
        paths = list(spec.paths)
        if not paths or paths == [""]:
            sock = environ.get("SSH_AUTH_SOCK", "")
            if not sock:
                raise SouteError(
                    "invalid empty ssh agent socket: make sure SSH_AUTH_SOCK is set",
                    f"start an agent (eval $(ssh-agent) && ssh-add), or give --ssh "
                    f"{spec.id}=KEYFILE",
                )
            paths = [sock]
        prefix = f'failed to convert agent config for ID: "{spec.id}": '
        socket_path: str | None = None
        keys: list[tuple[str, bytes]] = []
        for p in paths:
            if socket_path is not None:
                raise SouteError(prefix + "only single socket allowed",
                                 "give one agent socket, or key files, per --ssh")
            try:
                st = os.stat(p)
            except OSError as e:
                raise SouteError(prefix + f"stat {p}: {_strerror(e)}") from None
            if stat.S_ISSOCK(st.st_mode):
                socket_path = os.path.abspath(p)
                continue
            try:
                with open(p, "rb") as f:
                    keys.append((p, f.read(_MAX_KEY_FILE)))
            except OSError as e:
                raise SouteError(prefix + f"failed to read {p}: {_strerror(e)}") from None
        if socket_path is not None:
            if keys:
                raise SouteError(prefix + "invalid combination of keys and sockets",
                                 "give one agent socket, or key files, per --ssh")
            return _Upstream(socket_path, _READ_ONLY, blank_comments=False)
        agent = _KeyAgent(prefix)
        self._owned.append(agent)
        for name, data in keys:
            agent.add(name, data)
        return _Upstream(agent.path, _KEYRING, blank_comments=True)


class _KeyAgent:
    """An ``ssh-agent`` of the build's own for the key files of one ``--ssh``.

    It runs in ssh-agent's command mode with ``cat`` reading a pipe of ours as its command:
    the agent exits when ``cat`` does, so even if soute is killed it outlives the build by
    ten seconds at most (its parent check). :meth:`close` stops it at once.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._dir = tempfile.mkdtemp(prefix="soute-ssh-agent-")
        self.path = os.path.join(self._dir, "agent.sock")
        self._pid: int | None = None
        try:
            self._proc = subprocess.Popen(
                ["ssh-agent", "-a", self.path, "--",
                 "/bin/sh", "-c", 'echo "$SSH_AGENT_PID"; exec cat >/dev/null'],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise SouteError("--ssh with key files needs ssh-agent, which is not installed",
                             "install openssh-client, or forward a running agent's socket"
                             ) from None
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        self._proc.stdout.close()
        if not line.isdigit():
            err = self._proc.stderr.read() if self._proc.stderr is not None else b""
            self.close()
            raise SouteError("cannot start ssh-agent: "
                             + (err.decode(errors="replace").strip() or "no agent pid"))
        self._pid = int(line)

    def add(self, name: str, data: bytes) -> None:
        """Load one key (given on stdin: ssh-add's checks of file permissions are not
        BuildKit's). A new session has no terminal, so an encrypted key fails rather than
        prompting, as with BuildKit."""
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "SSH_ASKPASS")}
        env.update(SSH_AUTH_SOCK=self.path, SSH_ASKPASS_REQUIRE="never")
        try:
            p = subprocess.run(["ssh-add", "-q", "-"], input=data, env=env,
                               capture_output=True, start_new_session=True, timeout=30)
        except FileNotFoundError:
            raise SouteError("--ssh with key files needs ssh-add, which is not installed",
                             "install openssh-client") from None
        if p.returncode == 0:
            return
        err = p.stderr.decode(errors="replace").strip()
        if "passphrase" in err:
            why = "ssh: this private key is passphrase protected"
        elif b"-----BEGIN " not in data:  # Go's words for a file without a PEM block
            why = "ssh: no key found"
        else:
            why = err.splitlines()[-1].partition('": ')[2] if err else "not a private key"
        raise SouteError(self._prefix + f"failed to parse {name}: {why}",
                         "give an unencrypted private key file, or forward an agent holding "
                         "the key")

    def close(self) -> None:
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGTERM)
            self._pid = None
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class AgentSocket:
    """One RUN's agent socket: it listens in a private directory (mode 0711, as BuildKit
    makes it) and, once started, relays its connections to an agent until :meth:`close`."""

    def __init__(self, upstream: _Upstream, uid: int, gid: int, mode: int) -> None:
        self._upstream = upstream
        self._dir = tempfile.mkdtemp(prefix=".soute-ssh-sock")
        self.path = os.path.join(self._dir, "ssh_auth_sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self._closed = False
        try:
            os.chmod(self._dir, 0o711)
            self._listener.bind(self.path)
            self._listener.listen(16)
            os.chown(self.path, uid, gid)
            os.chmod(self.path, mode)
        except OSError as e:
            self.close()
            raise SouteError(f"cannot make the ssh agent socket: {_strerror(e)}") from None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept, name="ssh-agent", daemon=True)
        start_without_signals(self._thread)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            _relay(conn, self._upstream)
        except OSError:
            pass  # a connection that fails ends alone, as in BuildKit
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()


def _relay(client: socket.socket, upstream: _Upstream) -> None:
    """Serve one connection: each request the upstream may see goes to it and its reply
    back; others are answered with a failure here."""
    try:
        agent = upstream.dial()
    except OSError:
        return  # BuildKit closes the connection when the agent cannot be reached
    with agent:
        while (msg := _read_message(client)) is not None:
            if not msg or msg[0] not in upstream.allowed:
                client.sendall(_frame(bytes([_FAILURE])))
                continue
            agent.sendall(_frame(msg))
            reply = _read_message(agent)
            if reply is None:
                return
            if upstream.blank_comments and reply[:1] == bytes([_IDENTITIES_ANSWER]):
                reply = _blank_comments(reply)
            client.sendall(_frame(reply))


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def _read_message(sock: socket.socket) -> bytes | None:
    """One length-prefixed message; None at the end of the stream or past the size limit."""
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > _MAX_MESSAGE:
        return None
    return _read_exactly(sock, size)


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _blank_comments(reply: bytes) -> bytes:
    """An identities answer with every comment emptied (malformed: left as it is)."""
    try:
        (count,) = struct.unpack_from(">I", reply, 1)
        pos, out = 5, [reply[:5]]
        for _ in range(count):
            (size,) = struct.unpack_from(">I", reply, pos)
            blob = reply[pos:pos + 4 + size]
            pos += 4 + size
            (size,) = struct.unpack_from(">I", reply, pos)
            pos += 4 + size
            if pos > len(reply):
                return reply
            out.append(blob + b"\0\0\0\0")
    except struct.error:
        return reply
    return b"".join(out)


def _strerror(e: OSError) -> str:
    text = os.strerror(e.errno) if e.errno else str(e)
    return text[:1].lower() + text[1:]  # Go's wording: "no such file or directory"
