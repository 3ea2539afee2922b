"""Registry settings: plain-HTTP and unverified-TLS registries, Docker Hub mirrors, CA files.

Read from the environment, then from a JSON file whose keys are those of docker's
``daemon.json`` (so a docker set-up can be copied)::

    {"insecure-registries": ["registry.lan:5000", "10.0.0.0/8"],
     "registry-mirrors": ["https://mirror.lan:5000"]}

- ``SOUTE_REGISTRIES_CONFIG``: that file (default ``/etc/soute/registries.json``; a missing
  file is no settings).
- ``SOUTE_INSECURE_REGISTRIES``: a comma list added to ``insecure-registries``: ``host``,
  ``host:port`` or an IP network. Such a registry is tried over HTTPS without certificate
  checks, then over plain HTTP, as docker's ``--insecure-registry``.
- ``SOUTE_REGISTRY_MIRROR``: a comma list of mirrors of Docker Hub, tried in order before it
  (``FROM debian`` then resolves through a local registry holding ``library/debian``).
- ``SOUTE_CERTS_D``: the directory of per-registry CA files (default
  ``/etc/docker/certs.d``): ``HOST[:PORT]/*.crt`` are trusted CAs besides the system's, and
  ``client.cert`` with ``client.key`` a client certificate, as docker reads them.

Loopback registries (``localhost``, ``127.0.0.0/8``, ``::1``) may answer in plain HTTP, as
docker allows; if they speak TLS their certificate is still checked.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from soute.errors import SouteError

CONFIG_ENV = "SOUTE_REGISTRIES_CONFIG"
DEFAULT_CONFIG = Path("/etc/soute/registries.json")
INSECURE_ENV = "SOUTE_INSECURE_REGISTRIES"
MIRROR_ENV = "SOUTE_REGISTRY_MIRROR"
CERTS_D_ENV = "SOUTE_CERTS_D"
DEFAULT_CERTS_D = Path("/etc/docker/certs.d")

# Docker Hub: what references call it, and where its API really is.
HUB_DOMAIN = "docker.io"
HUB_API_HOST = "registry-1.docker.io"
HUB_AUTH_KEY = "https://index.docker.io/v1/"
HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def split_host_port(domain: str) -> tuple[str, int | None]:
    """``host`` and ``port`` of ``host[:port]`` (IPv6 in brackets: ``[::1]:5000``)."""
    if domain.startswith("["):
        host, _, rest = domain[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = domain.rpartition(":") if domain.count(":") == 1 else (domain, "", "")
    if port and not port.isdigit():
        raise SouteError(f"invalid registry address {domain!r}", "use HOST[:PORT]")
    return host, int(port) if port else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def strip_scheme(server: str) -> tuple[str | None, str]:
    """``(scheme, host[:port])`` of a server as users write it: ``https://h:5000/v2/`` or
    ``h:5000``."""
    scheme = None
    for prefix in ("https://", "http://"):
        if server.startswith(prefix):
            scheme, server = prefix[:-3], server[len(prefix):]
            break
    return scheme, server.split("/", 1)[0]


@dataclass(frozen=True)
class RegistrySettings:
    insecure: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()  # as written: [scheme://]host[:port]
    certs_d: Path = DEFAULT_CERTS_D

    @classmethod
    def load(cls) -> RegistrySettings:
        path = Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
        doc: dict[str, object] = {}
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = b""
        except OSError as e:
            raise SouteError(f"{path}: {e.strerror}", "check the registries settings") from None
        if raw.strip():
            try:
                loaded = json.loads(raw)
            except ValueError as e:
                raise SouteError(f"{path}: not valid JSON: {e}") from None
            if not isinstance(loaded, dict):
                raise SouteError(f"{path}: must hold a JSON object")
            doc = loaded
        insecure = _strings(doc.get("insecure-registries"), path, "insecure-registries")
        mirrors = _strings(doc.get("registry-mirrors"), path, "registry-mirrors")
        insecure += _env_list(INSECURE_ENV)
        mirrors = _env_list(MIRROR_ENV) + mirrors
        certs_d = Path(os.environ.get(CERTS_D_ENV) or DEFAULT_CERTS_D)
        return cls(tuple(dict.fromkeys(insecure)), tuple(dict.fromkeys(mirrors)), certs_d)

    def is_insecure(self, domain: str) -> bool:
        """Whether ``domain`` was listed as insecure (by name, name:port, or IP network)."""
        host, _ = split_host_port(domain)
        for entry in self.insecure:
            if entry.startswith(("http://", "https://")):
                _, entry = strip_scheme(entry)
            if entry in (domain, host):
                return True
            if "/" in entry:
                try:
                    if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                        return True
                except ValueError:
                    continue
        return False

    def allows_http(self, domain: str) -> bool:
        return is_loopback(split_host_port(domain)[0]) or self.is_insecure(domain)

    def hub_mirrors(self) -> list[tuple[str | None, str]]:
        """The mirrors of Docker Hub as ``(scheme or None, host[:port])``."""
        return [strip_scheme(m) for m in self.mirrors]

    def cert_dir(self, domain: str) -> Path | None:
        path = self.certs_d / domain
        return path if path.is_dir() else None


def _strings(value: object, path: Path, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SouteError(f"{path}: {key} must be a list of strings")
    return list(value)


def _env_list(name: str) -> list[str]:
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]
