"""Registry credentials in docker's ``config.json``, and its credential helpers.

The file is ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``; its shape (docker
cli ``configfile``)::

    {"auths": {"HOST[:PORT]": {"auth": base64("user:password"), "identitytoken": "..."}},
     "credsStore": "NAME", "credHelpers": {"HOST[:PORT]": "NAME"}}

Lookup order is docker's: ``credHelpers[host]``, then ``credsStore``, then ``auths``. A helper
is the program ``docker-credential-NAME`` spoken to on stdin/stdout (``get``: the server on
stdin, ``{"ServerURL","Username","Secret"}`` out; ``store``: that JSON in; ``erase``: the
server in); a ``Username`` of ``<token>`` means the secret is an identity (refresh) token.
``DOCKER_AUTH_CONFIG`` (JSON of the same shape) is read before the file, as docker does.

The file is written atomically with mode 0600 and keeps every key it does not know. Secrets
are never printed: :class:`Credential`'s repr hides them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soute.errors import SouteError
from soute.registry.config import HUB_ALIASES, HUB_AUTH_KEY, strip_scheme

TOKEN_USER = "<token>"  # the helpers' marker for an identity token
_HELPER_TIMEOUT = 60


@dataclass(frozen=True)
class Credential:
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # an OAuth2 refresh token
    registry_token: str = field(default="", repr=False)  # a bearer token to send as is

    def __bool__(self) -> bool:
        return bool(self.username or self.password or self.identity_token or self.registry_token)


def auth_key(domain: str) -> str:
    """The key docker files a registry's credentials under: ``https://index.docker.io/v1/``
    for Docker Hub, else ``host[:port]``."""
    _, host = strip_scheme(domain)
    return HUB_AUTH_KEY if host in HUB_ALIASES else host


def config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def load_config(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise SouteError(f"{path}: {e.strerror}", "check the docker config file") from None
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise SouteError(f"{path}: not valid JSON: {e}", "fix or remove the file") from None
    if not isinstance(doc, dict):
        raise SouteError(f"{path}: must hold a JSON object", "fix or remove the file")
    return doc


def save_config(doc: dict[str, Any], path: Path | None = None) -> None:
    """Replace the config file atomically, readable by its owner only (it holds secrets)."""
    path = path or config_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".config.json.", dir=path.parent)
    except OSError as e:
        raise SouteError(f"{path.parent}: {e.strerror}", "check DOCKER_CONFIG") from None
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(doc, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _helper_for(doc: dict[str, Any], key: str) -> str | None:
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for server, name in helpers.items():
            if isinstance(name, str) and name and auth_key(server) == key:
                return name
    store = doc.get("credsStore")
    return store if isinstance(store, str) and store else None


def _auth_entry(doc: dict[str, Any], key: str) -> dict[str, Any] | None:
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return None
    if isinstance(auths.get(key), dict):
        return auths[key]
    for server, entry in auths.items():  # legacy keys: https://host/v1/ and the like
        if isinstance(entry, dict) and auth_key(server) == key:
            return entry
    return None


def _decode_entry(entry: dict[str, Any], where: str) -> Credential:
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise SouteError(f"{where}: the stored auth is not valid base64",
                             "log in again") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise SouteError(f"{where}: the stored auth is not user:password", "log in again")
        password = password.rstrip("\x00")
    return Credential(username, password, str(entry.get("identitytoken") or ""),
                      str(entry.get("registrytoken") or ""))


def lookup(domain: str) -> Credential:
    """The credentials for ``domain``, or an empty (anonymous) :class:`Credential`."""
    key = auth_key(domain)
    env = os.environ.get("DOCKER_AUTH_CONFIG")
    if env:
        try:
            doc = json.loads(env)
        except ValueError:
            raise SouteError("DOCKER_AUTH_CONFIG is not valid JSON") from None
        if isinstance(doc, dict):
            entry = _auth_entry(doc, key)
            if entry is not None:
                return _decode_entry(entry, "DOCKER_AUTH_CONFIG")
    path = config_path()
    doc = load_config(path)
    helper = _helper_for(doc, key)
    if helper is not None:
        return helper_get(helper, key)
    entry = _auth_entry(doc, key)
    return _decode_entry(entry, str(path)) if entry is not None else Credential()


def store(domain: str, credential: Credential) -> Path:
    """Remember ``credential`` for ``domain`` (in its helper when one is configured)."""
    key = auth_key(domain)
    path = config_path()
    doc = load_config(path)
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        auths = doc["auths"] = {}
    for server in [s for s in auths if s != key and auth_key(s) == key]:
        del auths[server]  # a legacy key for the same registry would shadow nothing but confuse
    helper = _helper_for(doc, key)
    if helper is not None:
        if credential.identity_token:
            user, secret = TOKEN_USER, credential.identity_token
        else:
            user, secret = credential.username, credential.password
        _run_helper(helper, "store", json.dumps({"ServerURL": key, "Username": user,
                                                 "Secret": secret}))
        auths[key] = {}  # docker's marker that a helper holds it
    else:
        # With an identity token docker keeps only "user:" beside it, not the password.
        secret = "" if credential.identity_token else credential.password
        entry: dict[str, str] = {
            "auth": base64.b64encode(f"{credential.username}:{secret}".encode()).decode()}
        if credential.identity_token:
            entry["identitytoken"] = credential.identity_token
        auths[key] = entry
    save_config(doc, path)
    return path


def erase(domain: str) -> bool:
    """Forget the credentials of ``domain``; False when there were none."""
    key = auth_key(domain)
    path = config_path()
    doc = load_config(path)
    auths = doc.get("auths")
    known = [s for s in auths if auth_key(s) == key] if isinstance(auths, dict) else []
    helper = _helper_for(doc, key)
    erased = helper is not None and _run_helper(helper, "erase", key, missing_ok=True) \
        is not None
    if not known:
        return erased
    assert isinstance(auths, dict)
    for server in known:
        del auths[server]
    save_config(doc, path)
    return True


def using_helper(domain: str) -> bool:
    return _helper_for(load_config(), auth_key(domain)) is not None


def helper_get(name: str, key: str) -> Credential:
    out = _run_helper(name, "get", key, missing_ok=True)
    if out is None:
        return Credential()
    try:
        doc = json.loads(out)
    except ValueError:
        raise SouteError(f"docker-credential-{name} get: its answer is not JSON") from None
    user = str(doc.get("Username") or "")
    secret = str(doc.get("Secret") or "")
    if user == TOKEN_USER:
        return Credential(identity_token=secret)
    return Credential(user, secret)


def _run_helper(name: str, verb: str, data: str, *, missing_ok: bool = False) -> str | None:
    program = f"docker-credential-{name}"
    try:
        p = subprocess.run([program, verb], input=data.encode(), capture_output=True,
                           timeout=_HELPER_TIMEOUT, check=False)
    except FileNotFoundError:
        raise SouteError(f"{program}: not found", "install the credential helper, or remove "
                         "credsStore/credHelpers from the docker config") from None
    except subprocess.TimeoutExpired:
        raise SouteError(f"{program} {verb}: no answer in {_HELPER_TIMEOUT}s") from None
    out = p.stdout.decode(errors="replace").strip()
    if p.returncode != 0:
        if missing_ok and "credentials not found" in out:
            return None
        # The helper's own words, which never hold the secret (it was on stdin).
        said = (out or p.stderr.decode(errors="replace").strip()).splitlines()
        raise SouteError(f"{program} {verb}: {said[0] if said else f'exit {p.returncode}'}")
    return out
