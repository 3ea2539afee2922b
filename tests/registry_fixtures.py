"""Real registries for the registry tests, and the small servers that stand in front of them.

- :func:`running_registry`: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1 and
  a free port, its YAML config and filesystem storage in a temporary directory; optionally
  htpasswd Basic auth, TLS (a test CA made with ``openssl``) or token auth.
- :class:`TokenServer`: the token server of distribution's ``token.md``, in a thread of the
  test process. It issues real JWTs (RS256, signed by ``openssl dgst``, the certificate in
  ``x5c``) that the registry itself verifies against its ``rootcertbundle``: nothing about
  Bearer auth is faked. It also hands out refresh tokens (``offline_token=true``) and takes
  OAuth2 POSTs (``grant_type=refresh_token|password``).
- :class:`Proxy`: an HTTP proxy in front of a registry that counts requests and misbehaves on
  demand: cuts an upload or a download in the middle, corrupts blobs, refuses OCI manifests,
  redirects blob downloads, asks for Basic auth.
- :func:`soute_cli`: the soute command run in this process (so tests can shrink upload
  chunk sizes), its output captured.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REGISTRY_BIN = "/usr/bin/docker-registry"
SERVICE = "soute-test"
ISSUER = "soute-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str | Path, input: bytes | None = None,
        env: dict[str, str] | None = None) -> str:
    p = subprocess.run([str(a) for a in args], capture_output=True, input=input, env=env,
                       stdin=None if input is not None else subprocess.DEVNULL)
    assert p.returncode == 0, (args, p.stdout.decode(errors="replace"),
                               p.stderr.decode(errors="replace"))
    return p.stdout.decode()


# ---------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CertAuthority:
    ca_cert: Path
    cert: Path  # a server (or token signing) certificate
    key: Path


def make_ca(directory: Path, *, name: str = "127.0.0.1") -> CertAuthority:
    """A CA and a server certificate for 127.0.0.1 and localhost, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=soute test CA", "-keyout", ca_key, "-out", ca_cert,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", key, "-out", csr)
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
        "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", cert)
    return CertAuthority(ca_cert, cert, key)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key: the token signer (the registry's root)."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "token.key", directory / "token.crt"
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=soute test token signer", "-keyout", key, "-out", cert)
    return cert, key


# ---------------------------------------------------------------------------- registry


@dataclass
class RunningRegistry:
    host: str  # 127.0.0.1:PORT
    scheme: str
    storage: Path
    log: Path

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"


@contextlib.contextmanager
def running_registry(base: Path, *, htpasswd: Path | None = None, tls: CertAuthority | None = None,
                     token: tuple[str, Path] | None = None,
                     ip: str = "127.0.0.1") -> Iterator[RunningRegistry]:
    """docker-registry on ``ip``; ``token``: (realm URL, root certificate bundle)."""
    if not Path(REGISTRY_BIN).is_file():
        pytest.fail("docker-registry is not installed: apt-get install docker-registry")
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(base / "storage")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"{ip}:{port}", "secret": "soute-test-secret"},
    }
    if tls is not None:
        config["http"]["tls"] = {"certificate": str(tls.cert), "key": str(tls.key)}
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "basic-realm", "path": str(htpasswd)}}
    if token is not None:
        config["auth"] = {"token": {"realm": token[0], "service": SERVICE, "issuer": ISSUER,
                                    "rootcertbundle": str(token[1])}}
    (base / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    log = base / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(base / "config.yml")],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    scheme = "https" if tls is not None else "http"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("docker-registry did not start:\n" + log.read_text()[-3000:])
            try:
                with socket.create_connection((ip, port), timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        yield RunningRegistry(f"{ip}:{port}", scheme, base / "storage", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def global_ipv4() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    return None


def htpasswd_file(path: Path, users: dict[str, str]) -> Path:
    lines = [run("htpasswd", "-Bbn", user, password).strip() for user, password in
             users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------- token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@dataclass
class TokenRequest:
    method: str
    user: str | None
    grant: str  # basic, anonymous, refresh_token, password
    scopes: list[str]
    offline: bool


class TokenServer:
    """Issues registry tokens. ``users``: name -> password; ``policy(user, repository)``
    gives the actions a user may have on a repository."""

    def __init__(self, cert: Path, key: Path, users: dict[str, str],
                 policy: Callable[[str | None, str], set[str]]) -> None:
        self.cert = cert
        self.key = key
        self.users = users
        self.policy = policy
        self.requests: list[TokenRequest] = []
        self.refresh: dict[str, str] = {}  # refresh token -> user
        der = ssl.PEM_cert_to_DER_cert(cert.read_text())
        self._x5c = base64.b64encode(der).decode()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = (_b64url(json.dumps(header).encode()) + "." +
                         _b64url(json.dumps(claims).encode()))
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), capture_output=True,
                                   check=True).stdout
        return signing_input + "." + _b64url(signature)

    def token_for(self, user: str | None, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            granted = sorted(set(actions.split(",")) & self.policy(user, name))
            access.append({"type": "repository", "name": name, "actions": granted})
        now = int(time.time())
        return self.sign({"iss": ISSUER, "sub": user or "", "aud": SERVICE, "exp": now + 300,
                          "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
                          "access": access})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(_Quiet):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user = None
                grant = "anonymous"
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    if server.users.get(name) != password:
                        self.reply(401, b'{"details":"incorrect username or password"}',
                                   {"Content-Type": "application/json"})
                        return
                    user, grant = name, "basic"
                offline = query.get("offline_token") == ["true"]
                self.issue(user, grant, query.get("scope", []), offline)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                grant = (form.get("grant_type") or [""])[0]
                user = None
                if grant == "refresh_token":
                    user = server.refresh.get((form.get("refresh_token") or [""])[0])
                elif grant == "password":
                    name = (form.get("username") or [""])[0]
                    if server.users.get(name) == (form.get("password") or [""])[0]:
                        user = name
                if user is None or not form.get("client_id"):
                    self.reply(401, b'{"error":"invalid_grant"}',
                               {"Content-Type": "application/json"})
                    return
                scopes = " ".join(form.get("scope", [])).split()
                self.issue(user, grant, scopes, form.get("access_type") == ["offline"])

            def issue(self, user: str | None, grant: str, scopes: list[str],
                      offline: bool) -> None:
                server.requests.append(TokenRequest(self.command, user, grant, scopes, offline))
                token = server.token_for(user, scopes)
                doc: dict[str, Any] = {"token": token, "access_token": token,
                                       "expires_in": 300}
                if offline and user is not None:
                    refresh = f"refresh-{user}-{secrets.token_hex(4)}"
                    server.refresh[refresh] = user
                    doc["refresh_token"] = refresh
                self.reply(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

        return Handler


# ---------------------------------------------------------------------------- proxy


@dataclass
class Seen:
    method: str
    path: str
    length: int
    headers: dict[str, str]


@dataclass
class Proxy:
    """Forwards to ``upstream`` (a plain-HTTP registry), misbehaving as told."""

    upstream: str  # host:port
    log: list[Seen] = field(default_factory=list)
    cut_patch_over: int | None = None  # cut the first PATCH with more bytes than this
    cut_put_over: int | None = None  # same for the first blob PUT with a body
    cut_download_over: int | None = None  # cut the first blob download bigger than this
    corrupt_blobs: bool = False  # flip a byte in every layer-sized blob download
    refuse_oci: bool = False  # 400 MANIFEST_INVALID for OCI manifest PUTs
    redirect_blobs: str | None = None  # redirect blob GETs to this host:port (this proxy)
    basic: tuple[str, str] | None = None  # demand these Basic credentials on /v2/
    fail_first: int = 0  # answer 503 to this many requests first
    redirected_auth: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self, method: str, contains: str = "") -> list[Seen]:
        return [s for s in self.log if s.method == method and contains in s.path]

    def _take(self, attribute: str, size: int) -> bool:
        """Whether a one-shot misbehaviour applies to a body of ``size`` (and use it up)."""
        with self._lock:
            limit = getattr(self, attribute)
            if limit is not None and size > limit:
                setattr(self, attribute, None)
                return True
            return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(_Quiet):
            def do_GET(self) -> None:
                self.forward()

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

            def forward(self) -> None:
                method, path = self.command, self.path
                length = int(self.headers.get("Content-Length") or 0)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "content-length")}
                proxy.log.append(Seen(method, path, length, dict(headers)))
                redirected = path.startswith("/_redirected/")
                if redirected:
                    proxy.redirected_auth.append(self.headers.get("Authorization"))
                    path = path.removeprefix("/_redirected")
                elif proxy.basic is not None and path.startswith("/v2/"):
                    want = "Basic " + base64.b64encode(":".join(proxy.basic).encode()).decode()
                    if self.headers.get("Authorization") != want:
                        self.rfile.read(length)
                        self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":'
                                   b'"authentication required"}]}',
                                   {"WWW-Authenticate": 'Basic realm="proxy"',
                                    "Content-Type": "application/json"})
                        return
                headers.pop("Authorization", None)  # the registry behind has no auth
                with proxy._lock:
                    fail = proxy.fail_first > 0
                    proxy.fail_first -= 1 if fail else 0
                if fail:
                    self.rfile.read(length)
                    self.reply(503, b'{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}',
                               {"Content-Type": "application/json", "Retry-After": "0"})
                    return
                is_upload = "/blobs/uploads/" in path
                if is_upload and length and (
                        (method == "PATCH" and proxy._take("cut_patch_over", length))
                        or (method == "PUT" and proxy._take("cut_put_over", length))):
                    self.cut_upload(method, path, headers, length)
                    return
                body = self.rfile.read(length) if length else b""
                if proxy.refuse_oci and method == "PUT" and "/manifests/" in path and \
                        self.headers.get("Content-Type", "").startswith("application/vnd.oci"):
                    self.reply(400, b'{"errors":[{"code":"MANIFEST_INVALID","message":'
                               b'"manifest invalid","detail":"OCI manifests are refused"}]}',
                               {"Content-Type": "application/json"})
                    return
                is_blob_get = method == "GET" and "/blobs/sha256:" in path
                if is_blob_get and proxy.redirect_blobs and not redirected:
                    self.reply(307, b"", {"Location":
                                          f"http://{proxy.redirect_blobs}/_redirected{path}"})
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream.split(":"), timeout=30)
                try:
                    upstream.request(method, path, body=body or None,
                                     headers={**headers, "Content-Length": str(len(body))})
                    resp = upstream.getresponse()
                    data = resp.read()
                finally:
                    upstream.close()
                if is_blob_get and resp.status in (200, 206) and len(data) > 4096:
                    if proxy.corrupt_blobs:
                        data = bytearray(data)
                        data[len(data) // 2] ^= 0xFF
                        data = bytes(data)
                    if resp.status == 200 and proxy._take("cut_download_over", len(data)):
                        self.send_response(200)
                        for k, v in resp.getheaders():
                            if k.lower() not in ("connection", "transfer-encoding"):
                                self.send_header(k, v)
                        self.end_headers()
                        self.wfile.write(data[:len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                out = {k: v for k, v in resp.getheaders()
                       if k.lower() not in ("connection", "transfer-encoding", "content-length")}
                self.reply(resp.status, data, out)

            def cut_upload(self, method: str, path: str, headers: dict[str, str],
                           length: int) -> None:
                """Send the registry half the body, then drop both connections: what a
                network failure in the middle of an upload looks like."""
                half = self.rfile.read(length // 2)
                upstream = http.client.HTTPConnection(*proxy.upstream.split(":"), timeout=30)
                upstream.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for k, v in {**headers, "Content-Length": str(length)}.items():
                    upstream.putheader(k, v)
                upstream.endheaders()
                upstream.send(half)
                time.sleep(0.3)  # let the registry take what it got
                upstream.close()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        return Handler


# ---------------------------------------------------------------------------- helpers


@dataclass
class CLIResult:
    code: int
    out: str
    err: str

    def ok(self) -> str:
        assert self.code == 0, (self.out, self.err)
        return self.out

    def final_error(self) -> str:
        """The one error line after whatever progress came before it."""
        assert self.code == 1, (self.code, self.out, self.err)
        assert "Traceback" not in self.err
        errors = [line for line in self.err.splitlines() if line.startswith("soute:")]
        assert len(errors) == 1 and self.err.strip().splitlines()[-1] == errors[0], self.err
        return errors[0]

    def one_line_error(self) -> str:
        assert self.code == 1, (self.code, self.out, self.err)
        assert "Traceback" not in self.err
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        return lines[0]


def soute_cli(root: Path, *args: str, stdin: str = "") -> CLIResult:
    """``soute --root ROOT ARGS`` in this process (module settings such as chunk sizes can
    be changed by the test), standard streams captured."""
    import sys

    from soute.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--root", str(root), *args])
    finally:
        sys.stdin = saved
    return CLIResult(code, out.getvalue(), err.getvalue())


def registry_get(url: str, *, accept: str = "", context: ssl.SSLContext | None = None) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, context=context, timeout=30) as resp:
        data: bytes = resp.read()
        return data


def registry_put(url: str, data: bytes, content_type: str) -> None:
    req = urllib.request.Request(url, data=data, method="PUT",
                                 headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 201, resp.status


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def store_state(root: Path) -> tuple[list[str], list[str]]:
    """The blob files and the image rows of a store: what must not change on failure."""
    import sqlite3

    blobs = sorted(os.listdir(root / "oci" / "blobs" / "sha256"))
    db = sqlite3.connect(root / "meta.db")
    try:
        images = sorted(r[0] for r in db.execute("SELECT id FROM images"))
    finally:
        db.close()
    return blobs, images


def write_helper(bin_dir: Path, name: str, state: Path) -> Path:
    """A ``docker-credential-NAME`` keeping its secrets in the JSON file ``state``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / f"docker-credential-{name}"
    path.write_text(f"""#!/usr/bin/env python3
import json, sys
state = {str(state)!r}
try:
    creds = json.load(open(state))
except FileNotFoundError:
    creds = {{}}
verb = sys.argv[1]
data = sys.stdin.read()
if verb == "store":
    doc = json.loads(data)
    creds[doc["ServerURL"]] = [doc["Username"], doc["Secret"]]
elif verb == "get":
    if data.strip() not in creds:
        print("credentials not found in native keychain")
        sys.exit(1)
    user, secret = creds[data.strip()]
    print(json.dumps({{"ServerURL": data.strip(), "Username": user, "Secret": secret}}))
elif verb == "erase":
    if creds.pop(data.strip(), None) is None:
        print("credentials not found in native keychain")
        sys.exit(1)
json.dump(creds, open(state, "w"))
""")
    path.chmod(0o755)
    return path


def which_or_fail(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: apt-get install {package}")
    return path


def add_layer(store: Any, base: Any, files: dict[str, bytes], *, cmd: list[str],
              tags: list[str]) -> Any:
    """A new image: ``base`` plus one layer holding ``files``, with ``cmd``."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(files[name]))
    buf.seek(0)
    diff_id, size = store.add_layer_from(buf)
    config = json.loads(store.blobs.read(base.id))
    config["rootfs"]["diff_ids"].append(diff_id)
    config.setdefault("history", []).append({"created": "2024-01-01T00:00:00Z",
                                             "created_by": f"test layer {sorted(files)}"})
    config["config"]["Cmd"] = cmd
    return store.add_image(json.dumps(config).encode(), [*base.layers, (diff_id, size)],
                           tags=tags)
