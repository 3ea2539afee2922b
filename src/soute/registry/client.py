"""One registry over HTTP(S): connections kept alive, auth, retries, redirects, errors.

:class:`Registry` talks to one registry (``docker.io`` means ``registry-1.docker.io``). It
first pings ``GET /v2/``, which picks the scheme and learns how to authenticate:

- HTTPS, with the system CAs plus ``certs.d/HOST[:PORT]/*.crt`` (see :mod:`.config`);
- plain HTTP only for loopback registries and those listed as insecure, and only when they do
  not speak TLS (insecure ones also skip the certificate check, as docker's
  ``--insecure-registry``).

Requests carry ``Authorization`` for the scopes they need (:mod:`.auth`); a 401 with a new
challenge is retried once. 429 and 5xx answers and connections reset before an answer are
retried with exponential backoff (``Retry-After`` honoured, up to 10 s); refused connections
and unknown hosts are not. Redirects are followed for GET and HEAD (registries send blob
downloads to their storage), without ``Authorization`` when the host changes.

Connections are ``http.client`` ones, a small pool per host, so parallel layer transfers each
use their own and sequential requests reuse them.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, BinaryIO

from soute.registry.auth import Authenticator, parse_challenges
from soute.registry.config import (
    HUB_ALIASES,
    HUB_API_HOST,
    INSECURE_ENV,
    RegistrySettings,
    split_host_port,
)
from soute.registry.credentials import Credential, lookup
from soute.registry.errors import RegistryError, Unauthorized, Unreachable, from_response

USER_AGENT = "soute/0.1"
TIMEOUT = 60.0  # seconds without progress before a connection counts as dead
RETRIES = 5
BACKOFF = 0.25  # first delay; doubled each time, at most 4 s
MAX_DOCUMENT = 32 << 20  # bodies read into memory: manifests, configs, errors
_BLOCK = 1 << 20
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# A connection that died before the answer: safe to retry when the body can be sent again.
_RESET = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
          http.client.RemoteDisconnected, http.client.BadStatusLine, http.client.IncompleteRead)
# What a dropped connection looks like to callers that resume transfers themselves.
CONNECTION_ERRORS = (*_RESET, ssl.SSLError, TimeoutError)

# A request body: bytes, or a callable opening a fresh stream (so it can be sent again) with
# the Content-Length given in the headers.
Body = bytes | Callable[[], BinaryIO] | None


@dataclass
class Response:
    """An answer; ``read`` its body (or ``close`` it) so the connection can be reused."""

    status: int
    headers: Message
    url: str
    _raw: http.client.HTTPResponse
    _release: Callable[[bool], None]
    _done: bool = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def header_all(self, name: str) -> list[str]:
        return self.headers.get_all(name) or []

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read() if n < 0 else self._raw.read(n)
        if self._raw.isclosed() and not self._done:
            self._finish(reuse=True)
        return data

    def read_document(self, limit: int = MAX_DOCUMENT) -> bytes:
        length = self.header("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            self.close()
            raise RegistryError(f"{self.url}: the answer is larger than {limit >> 20} MiB")
        data = self._raw.read(limit + 1)
        if len(data) > limit:
            self.close()
            raise RegistryError(f"{self.url}: the answer is larger than {limit >> 20} MiB")
        if not self._done:
            self._finish(reuse=True)
        return data

    def json(self) -> Any:
        data = self.read_document()
        try:
            return json.loads(data)
        except ValueError:
            raise RegistryError(f"{self.url}: the answer is not JSON") from None

    def close(self) -> None:
        if not self._done:
            self._finish(reuse=False)

    def _finish(self, reuse: bool) -> None:
        self._done = True
        # Reusable only once the whole body was read (http.client then drops its file).
        self._release(reuse and self._raw.isclosed())


class _Pool:
    """Idle connections per (scheme, host, port), shared by threads."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._contexts: dict[tuple[str, bool], ssl.SSLContext] = {}

    def context(self, domain: str, verify: bool) -> ssl.SSLContext:
        with self._lock:
            ctx = self._contexts.get((domain, verify))
            if ctx is None:
                ctx = _ssl_context(self.settings.cert_dir(domain), verify)
                self._contexts[(domain, verify)] = ctx
            return ctx

    def take(self, scheme: str, host: str, port: int, domain: str,
             verify: bool) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was used before (it may have gone stale)."""
        key = (scheme, host, port)
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        if scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=TIMEOUT, context=self.context(domain, verify),
                blocksize=_BLOCK), False
        return http.client.HTTPConnection(host, port, timeout=TIMEOUT, blocksize=_BLOCK), False

    def give(self, scheme: str, host: str, port: int, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault((scheme, host, port), [])
            if len(idle) < 8:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            for conns in self._idle.values():
                for conn in conns:
                    conn.close()
            self._idle.clear()


def _ssl_context(cert_dir: Path | None, verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_dir is not None:
        try:
            for ca in sorted(cert_dir.glob("*.crt")):
                ctx.load_verify_locations(cafile=str(ca))
            cert, key = cert_dir / "client.cert", cert_dir / "client.key"
            if cert.is_file() and key.is_file():
                ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as e:
            raise RegistryError(f"{cert_dir}: cannot load the certificates: {e}",
                                "check the files in the registry's certs.d directory") from None
    return ctx


class Registry:
    """A client of one registry. Thread-safe; :meth:`close` it when done."""

    def __init__(self, domain: str, *, settings: RegistrySettings | None = None,
                 credential: Credential | None = None, scheme: str | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.domain = domain
        self.api_domain = HUB_API_HOST if domain in HUB_ALIASES else domain
        self.settings = settings or RegistrySettings.load()
        self.credential = lookup(domain) if credential is None else credential
        self.auth = Authenticator(self.credential, self._fetch_token)
        self._pool = _Pool(self.settings)
        self._scheme = scheme  # None: chosen by the ping
        self._verify = not self.settings.is_insecure(self.api_domain)
        self._ping_lock = threading.Lock()
        self._pinged = False
        self._warned: set[str] = set()
        self._warn = warn or (lambda text: print(f"WARNING: {text}", file=sys.stderr))

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ addresses

    @property
    def base(self) -> str:
        self.ping()
        return f"{self._scheme}://{self.api_domain}"

    def url(self, path: str) -> str:
        """An absolute URL for an API path or for a Location the registry gave."""
        return urllib.parse.urljoin(self.base + "/", path)

    # ------------------------------------------------------------------ ping

    def ping(self) -> None:
        """``GET /v2/``: choose HTTPS or HTTP and learn the auth challenge, once."""
        with self._ping_lock:
            if self._pinged:
                return
            schemes = [self._scheme] if self._scheme else ["https"]
            if self._scheme is None and self.settings.allows_http(self.api_domain):
                schemes.append("http")
            error: Exception | None = None
            for scheme in schemes:
                try:
                    resp = self._attempt("GET", f"{scheme}://{self.api_domain}/v2/",
                                         {"User-Agent": USER_AGENT}, None)
                except ssl.SSLCertVerificationError as e:
                    raise Unreachable(
                        f"cannot reach registry {self.domain}: TLS certificate not trusted: "
                        f"{e.verify_message}",
                        f"put its CA in {self.settings.certs_d / self.api_domain}/ca.crt") \
                        from None
                except (ssl.SSLError, *_RESET) as e:
                    error = e  # perhaps plain HTTP: try the next scheme
                    continue
                except OSError as e:
                    raise _unreachable(self.domain, e) from None
                if resp.status in _RETRY_STATUS:  # busy: the scheme is right, ask again
                    resp.read_document()
                    resp = self._roundtrip("GET", f"{scheme}://{self.api_domain}/v2/",
                                           {"User-Agent": USER_AGENT}, None, retry=True)
                body = resp.read_document()
                self._scheme = scheme
                if resp.status == 401:
                    self.auth.challenged(resp.header_all("WWW-Authenticate"))
                elif resp.status != 200:
                    raise from_response(resp.status, body, f"{self.domain} is not a registry "
                                        f"(GET /v2/ answered {resp.status})")
                self._pinged = True
                return
            assert error is not None
            if isinstance(error, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(error):
                raise Unreachable(
                    f"cannot reach registry {self.domain}: it answers in plain HTTP, and "
                    "only loopback or insecure registries may",
                    f"list it in ${INSECURE_ENV} if that is intended")
            raise _unreachable(self.domain, error)

    def check_login(self) -> str | None:
        """Verify our credentials (``GET /v2/`` with them); returns a refresh token when the
        token server gave one for keeping instead of the password."""
        self.ping()
        if self.auth.scheme == "bearer":
            self.auth.token((), offline=True)
        resp = self.request("GET", "/v2/", ok=(200,))
        resp.read_document()
        return self.auth.refresh_token

    # ------------------------------------------------------------------ requests

    def request(self, method: str, path: str, *, scopes: Iterable[str] = (),
                headers: Mapping[str, str] | None = None, body: Body = None,
                ok: Iterable[int] = (200,), stream: bool = False,
                retry: bool = True, context: str = "") -> Response:
        """Send a request with auth, retries and (GET/HEAD) redirects.

        Answers outside ``ok`` raise :class:`RegistryError` (``context`` names what was
        asked); a 404 is returned when in ``ok``. ``stream``: the body is left to read.
        ``retry=False``: connection failures are raised to the caller (resumable uploads).
        """
        ok = frozenset(ok)
        scope_t = tuple(scopes)
        url = self.url(path)
        tried_auth = False
        while True:
            hdrs = {"User-Agent": USER_AGENT, **(headers or {})}
            auth = self.auth.header(scope_t)
            if auth:
                hdrs["Authorization"] = auth
            resp = self._roundtrip(method, url, hdrs, body, retry=retry)
            for warning in resp.header_all("Warning"):
                self._note_warning(warning)
            if resp.status == 401 and not tried_auth:
                challenges = resp.header_all("WWW-Authenticate")
                refusal = b"" if method == "HEAD" else resp.read_document()
                resp.close()
                tried_auth = True
                if auth and any(c.params.get("error") == "insufficient_scope"
                                for c in parse_challenges(challenges)):
                    raise Unauthorized(
                        f"{context + ': ' if context else ''}denied: requested access to the "
                        "resource is denied", "check the account's rights on the repository",
                        status=401, codes=("DENIED",))
                new = self.auth.challenged(challenges)
                if auth and auth.startswith("Bearer "):
                    self.auth.forget(scope_t)  # expired or revoked: a fresh token, once
                    continue
                if new:
                    continue
                raise from_response(401, refusal, context)
            if resp.status in ok:
                if not stream and method != "HEAD":
                    data = resp.read_document()
                    return _Buffered(resp, data)
                if method == "HEAD":
                    resp.read()
                return resp
            data = b"" if method == "HEAD" else resp.read_document()
            resp.close()
            raise from_response(resp.status, data, context)

    def _roundtrip(self, method: str, url: str, headers: dict[str, str], body: Body, *,
                   retry: bool) -> Response:
        """One request with retries on 429/5xx and resets, redirects for GET/HEAD."""
        attempt = 0
        redirects = 0
        while True:
            try:
                resp = self._attempt(method, url, headers, body, retry=retry)
            except ssl.SSLCertVerificationError as e:
                raise Unreachable(f"{_netloc(url)}: TLS certificate not trusted: "
                                  f"{e.verify_message}") from None
            except (*_RESET, ssl.SSLError) as e:
                if not retry:
                    raise
                if attempt >= RETRIES:
                    raise _unreachable(_netloc(url), e) from None
                attempt += 1
                time.sleep(_delay(attempt, None))
                continue
            except OSError as e:
                if not retry and isinstance(e, TimeoutError):
                    raise
                raise _unreachable(_netloc(url), e) from None
            if resp.status in _RETRY_STATUS and attempt < RETRIES and retry:
                attempt += 1
                delay = _delay(attempt, resp.header("Retry-After"))
                resp.read_document()
                time.sleep(delay)
                continue
            if resp.status in _REDIRECTS and method in ("GET", "HEAD"):
                location = resp.header("Location")
                resp.close()
                redirects += 1
                if not location or redirects > 10:
                    raise RegistryError(f"{url}: bad or endless redirect")
                target = urllib.parse.urljoin(url, location)
                if _netloc(target) != _netloc(url):
                    headers = {k: v for k, v in headers.items() if k != "Authorization"}
                url = target
                continue
            return resp

    def _attempt(self, method: str, url: str, headers: dict[str, str],
                 body: Body, *, retry: bool = True) -> Response:
        """Send once. A pooled connection that turns out stale is replaced, once (unless
        ``retry`` is off: a resent upload chunk could be appended twice)."""
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme
        domain = parts.netloc
        host, port = split_host_port(domain)
        port = port or (443 if scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        verify = self._verify or domain != self.api_domain
        for _ in range(2):
            conn, reused = self._pool.take(scheme, host, port, domain, verify)
            try:
                raw = _send(conn, method, target, domain, headers, body)
            except _RESET:
                conn.close()
                if reused and retry:
                    continue  # the server closed it while idle: a fresh one
                raise
            except BaseException:
                conn.close()
                raise

            def release(reuse: bool, conn: http.client.HTTPConnection = conn) -> None:
                if reuse:
                    self._pool.give(scheme, host, port, conn)
                else:
                    conn.close()

            resp = Response(raw.status, raw.headers, url, raw, release)
            if method == "HEAD":
                resp.read()
            return resp
        raise AssertionError("unreachable")

    def _fetch_token(self, method: str, url: str, headers: dict[str, str],
                     body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        resp = self._roundtrip(method, url, headers, body, retry=True)
        data = resp.read_document()
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, data

    def _note_warning(self, value: str) -> None:
        # Warning: 299 - "text"
        text = value.split('"', 1)[1].rsplit('"', 1)[0] if value.count('"') >= 2 else value
        if text not in self._warned:
            self._warned.add(text)
            self._warn(text)


class _Buffered(Response):
    """A response whose body was read already."""

    def __init__(self, resp: Response, data: bytes) -> None:
        super().__init__(resp.status, resp.headers, resp.url, resp._raw, resp._release, True)
        self._data = data
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk = self._data[self._pos:end]
        self._pos += len(chunk)
        return chunk

    def read_document(self, limit: int = MAX_DOCUMENT) -> bytes:
        return self.read()


def _send(conn: http.client.HTTPConnection, method: str, target: str, domain: str,
          headers: dict[str, str], body: Body) -> http.client.HTTPResponse:
    conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", domain)
    for name, value in headers.items():
        conn.putheader(name, value)
    if isinstance(body, bytes):
        if "Content-Length" not in headers:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
    elif body is None:
        if method in ("POST", "PUT", "PATCH") and "Content-Length" not in headers:
            conn.putheader("Content-Length", "0")
        conn.endheaders()
    else:
        conn.endheaders()
        with body() as stream:
            while chunk := stream.read(_BLOCK):
                conn.send(chunk)
    return conn.getresponse()


def _delay(attempt: int, retry_after: str | None) -> float:
    if retry_after and retry_after.strip().isdigit():
        return min(float(retry_after), 10.0)
    return min(BACKOFF * 2 ** (attempt - 1), 4.0)


def _netloc(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def _unreachable(where: str, error: BaseException) -> Unreachable:
    if isinstance(error, socket.gaierror):
        reason = "no such host"
    elif isinstance(error, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(error, TimeoutError | socket.timeout):
        reason = "timed out"
    elif isinstance(error, ssl.SSLError):
        reason = f"TLS failed: {error.reason or error}"
    elif isinstance(error, http.client.HTTPException | ConnectionError):
        reason = "the connection was closed"
    else:
        reason = getattr(error, "strerror", None) or str(error)
    return Unreachable(f"cannot reach registry {where}: {reason}",
                       "check the name, that the registry runs, and the network")
