"""Registry authentication: challenges, Basic, and Bearer tokens cached per scope.

A registry says how to authenticate in the ``WWW-Authenticate`` header of a 401:

- ``Basic realm="..."``: send ``Authorization: Basic base64(user:password)`` from then on;
- ``Bearer realm="URL",service="S",scope="repository:NAME:pull,push"``: get a token from the
  realm (distribution's ``token.md``): ``GET realm?service=S&scope=...[&account=USER]`` with
  Basic credentials or none (an anonymous token), or, holding an identity (refresh) token,
  ``POST realm`` with ``grant_type=refresh_token`` (``oauth.md``). The answer holds ``token``
  or ``access_token`` and ``expires_in`` (60 s when absent or smaller).

Tokens are cached per set of scopes until shortly before they expire; a push asks for
``pull,push`` on its repository (plus ``pull`` on a mount's source), a pull for ``pull``.
Thread-safe: layer transfers run in parallel and share one :class:`Authenticator`.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from soute.registry.credentials import Credential
from soute.registry.errors import RegistryError, Unauthorized, describe

CLIENT_ID = "soute"
_MIN_EXPIRY = 60  # seconds; token.md: a smaller or missing expires_in means 60
_MARGIN = 10  # renew this long before expiry, so a token does not die in flight

# (method, url, headers, body) -> (status, headers (lowercase names), body)
Fetch = Callable[[str, str, dict[str, str], bytes | None],
                 tuple[int, dict[str, str], bytes]]


@dataclass
class Challenge:
    scheme: str  # lowercase: basic, bearer
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 7235): ``Scheme k=v, k="q\\"v", ...``;
    several challenges may share one value."""
    out: list[Challenge] = []
    for value in values:
        pos, n = 0, len(value)
        current: Challenge | None = None
        while pos < n:
            while pos < n and value[pos] in " \t,":
                pos += 1
            start = pos
            while pos < n and value[pos] not in " \t,=":
                pos += 1
            token = value[start:pos]
            if not token:
                break
            rest = pos
            while rest < n and value[rest] in " \t":
                rest += 1
            if rest < n and value[rest] == "=" and current is not None:
                pos = rest + 1
                while pos < n and value[pos] in " \t":
                    pos += 1
                if pos < n and value[pos] == '"':
                    pos += 1
                    chars: list[str] = []
                    while pos < n and value[pos] != '"':
                        if value[pos] == "\\" and pos + 1 < n:
                            pos += 1
                        chars.append(value[pos])
                        pos += 1
                    pos += 1  # the closing quote
                    param = "".join(chars)
                else:
                    start = pos
                    while pos < n and value[pos] not in " \t,":
                        pos += 1
                    param = value[start:pos]
                current.params[token.lower()] = param
            else:
                current = Challenge(token.lower())
                out.append(current)
                pos = rest
    return out


def repository_scope(path: str, actions: str) -> str:
    return f"repository:{path}:{actions}"


class Authenticator:
    """What to send in ``Authorization`` to one registry."""

    def __init__(self, credential: Credential, fetch: Fetch) -> None:
        self.credential = credential
        self._fetch = fetch
        self._lock = threading.Lock()
        self.scheme: str | None = None
        self.realm = ""
        self.service = ""
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self.refresh_token: str | None = None  # given by the token server at login

    # ------------------------------------------------------------------ challenges

    def challenged(self, values: list[str]) -> bool:
        """Take in a 401's challenge; False when we have nothing new to try for it."""
        challenges = parse_challenges(values)
        by_scheme = {c.scheme: c for c in challenges}
        with self._lock:
            bearer = by_scheme.get("bearer")
            if bearer is not None and bearer.params.get("realm"):
                known = self.scheme == "bearer" and self.realm == bearer.params["realm"]
                self.scheme = "bearer"
                self.realm = bearer.params["realm"]
                self.service = bearer.params.get("service", "")
                return not known
            if "basic" in by_scheme:
                known = self.scheme == "basic"
                self.scheme = "basic"
                return not known and bool(self.credential.username)
        return False

    def forget(self, scopes: tuple[str, ...]) -> None:
        """Drop a cached token the registry refused (revoked, or the clock is off)."""
        with self._lock:
            self._tokens.pop(_key(scopes), None)

    # ------------------------------------------------------------------ the header

    def header(self, scopes: tuple[str, ...]) -> str | None:
        cred = self.credential
        if self.scheme == "basic":
            if not cred.username:
                return None
            pair = f"{cred.username}:{cred.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        if self.scheme == "bearer":
            if cred.registry_token:
                return "Bearer " + cred.registry_token
            return "Bearer " + self.token(scopes)
        return None

    def token(self, scopes: tuple[str, ...], *, offline: bool = False) -> str:
        key = _key(scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached[1] > time.monotonic() and not offline:
                return cached[0]
            token, expires_in = self._request_token(key, offline)
            self._tokens[key] = (token, time.monotonic() + max(expires_in - _MARGIN, 1))
            return token

    def _request_token(self, scopes: tuple[str, ...], offline: bool) -> tuple[str, int]:
        cred = self.credential
        headers = {"User-Agent": "soute", "Accept": "application/json"}
        if cred.identity_token and not offline:
            form = {"grant_type": "refresh_token", "refresh_token": cred.identity_token,
                    "client_id": CLIENT_ID, "access_type": "offline"}
            if self.service:
                form["service"] = self.service
            if scopes:
                form["scope"] = " ".join(scopes)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            status, _, body = self._fetch("POST", self.realm, headers,
                                          urllib.parse.urlencode(form).encode())
        else:
            query: list[tuple[str, str]] = []
            if self.service:
                query.append(("service", self.service))
            query += [("scope", s) for s in scopes]
            if cred.username:
                query.append(("account", cred.username))
                pair = f"{cred.username}:{cred.password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
            if offline:  # login: ask for a refresh token to keep instead of the password
                query += [("client_id", CLIENT_ID), ("offline_token", "true")]
            sep = "&" if "?" in self.realm else "?"
            url = self.realm + (sep + urllib.parse.urlencode(query) if query else "")
            status, _, body = self._fetch("GET", url, headers, None)
        if status in (401, 403):
            message, codes = describe(status, body)
            if status == 401 and message == "unauthorized: authentication required" \
                    and cred.username:
                message = "unauthorized: incorrect username or password"
            elif not message.startswith(("unauthorized", "denied")):
                message = f"{'unauthorized' if status == 401 else 'denied'}: {message}"
            raise Unauthorized(message, status=status, codes=codes)
        if status != 200:
            message, codes = describe(status, body)
            raise RegistryError(f"token server {_host(self.realm)}: {message}",
                                status=status, codes=codes)
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
            doc = {}
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server {_host(self.realm)} gave no token")
        if offline and isinstance(doc.get("refresh_token"), str):
            self.refresh_token = doc["refresh_token"]
        expires = doc.get("expires_in")
        expires_in = expires if isinstance(expires, int) and expires > _MIN_EXPIRY \
            else _MIN_EXPIRY
        return token, expires_in


def _key(scopes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(scopes)))


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url
