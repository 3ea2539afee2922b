"""Registry errors as one line: the registry's own code and message when it gave them.

The distribution spec's error body is ``{"errors":[{"code","message","detail"}]}``; docker
shows it as ``code: message`` in lowercase (``manifest unknown: manifest unknown``), and so
do we. Token servers answer in other shapes (``{"details": ...}``); those are read too.
"""

from __future__ import annotations

import json

from soute.errors import SouteError


class RegistryError(SouteError):
    """Something a registry (or the way to it) refused or failed."""

    def __init__(self, message: str, hint: str | None = None, *, status: int = 0,
                 codes: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint)
        self.status = status
        self.codes = codes


class Unreachable(RegistryError):
    """No HTTP answer at all: DNS, refused connection, TLS, timeouts."""


class Unauthorized(RegistryError):
    pass


def describe(status: int, body: bytes) -> tuple[str, tuple[str, ...]]:
    """``(one-line message, error codes)`` for an error response."""
    codes: list[str] = []
    parts: list[str] = []
    try:
        doc = json.loads(body) if body.strip() else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        for err in doc["errors"]:
            if not isinstance(err, dict):
                continue
            code = str(err.get("code") or "UNKNOWN")
            codes.append(code)
            message = str(err.get("message") or "").strip()
            text = code.lower().replace("_", " ")
            parts.append(f"{text}: {message}" if message else text)
    elif isinstance(doc, dict) and (doc.get("details") or doc.get("error")):
        parts.append(str(doc.get("details") or doc.get("error")))
    if not parts:
        text = body.decode(errors="replace").strip().splitlines()
        reason = {401: "unauthorized: authentication required",
                  403: "denied: requested access to the resource is denied",
                  404: "not found", 429: "toomanyrequests: too many requests"}.get(status)
        parts.append(reason or (f"HTTP {status}" + (f": {text[0][:200]}" if text else "")))
    return "; ".join(dict.fromkeys(parts)), tuple(codes)


def from_response(status: int, body: bytes, context: str = "",
                  hint: str | None = None) -> RegistryError:
    message, codes = describe(status, body)
    cls = Unauthorized if status == 401 else RegistryError
    return cls(f"{context}: {message}" if context else message, hint, status=status,
               codes=codes)
