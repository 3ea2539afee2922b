"""Image references (``debian:12``, ``127.0.0.1:5000/app@sha256:…``) with docker's grammar and
normalisation (distribution/reference v0.6: ``ParseNormalizedNamed``).

Grammar::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [domain "/"] path
    domain     := host [":" port]      host: DNS-like name, IPv4, or [IPv6]
    path       := component ("/" component)*
    component  := [a-z0-9]+ (([._] | "__" | "-"+) [a-z0-9]+)*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex

Normalisation: the first component is the domain when it contains ``.`` or ``:``, is
``localhost``, or has uppercase letters (path components can't); else the domain is
``docker.io``. ``index.docker.io`` is ``docker.io``, and a one-component path on docker.io gets
``library/``. The path may be at most 255 characters (the domain is not counted, as in v0.6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from soute.errors import SouteError
from soute.image.digest import parse_digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
# Only the shape; parse_digest checks the algorithm and length after.
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_DOMAIN_RE = re.compile(_DOMAIN)
_REMAINDER_RE = re.compile(rf"({_PATH})(?::({_TAG}))?(?:@({_DIGEST}))?")
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")

_FORMAT_HINT = "a reference is [registry[:port]/]name[:tag][@digest], e.g. debian:12"


def is_valid_tag(tag: str) -> bool:
    """Whether ``tag`` is a valid tag: ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``."""
    return re.fullmatch(_TAG, tag) is not None  # compiled on first use (re caches it)


def is_image_id(s: str) -> bool:
    """Whether ``s`` is a bare 64-hex image ID (which is never read as a name)."""
    return _IDENTIFIER_RE.fullmatch(s) is not None


@dataclass(frozen=True)
class Reference:
    """A normalised reference: ``domain`` (``docker.io``, ``127.0.0.1:5000``), ``path``
    (``library/debian``), and an optional ``tag`` and ``digest``."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The fully qualified repository name: ``docker.io/library/debian``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The name as docker shows it: ``debian``, ``user/app``, ``127.0.0.1:5000/x``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        rest = self.path.removeprefix(OFFICIAL_PREFIX)
        # library/a/b keeps its prefix: only single-component official names are shortened.
        return rest if self.path.startswith(OFFICIAL_PREFIX) and "/" not in rest else self.path

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()

    def familiar(self) -> str:
        """The reference as docker shows it: ``debian:12``, ``user/app@sha256:…``."""
        return self.familiar_name + self._suffix()

    def with_default_tag(self) -> Reference:
        """``latest`` added when there is neither a tag nor a digest (``TagNameOnly``)."""
        if self.tag is None and self.digest is None:
            return replace(self, tag=DEFAULT_TAG)
        return self

    def with_tag(self, tag: str) -> Reference:
        if not is_valid_tag(tag):
            raise SouteError(f"invalid tag format: {tag!r}", hint=_TAG_HINT)
        return replace(self, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=parse_digest(digest))

    def repository(self) -> Reference:
        """The name alone, without tag or digest."""
        return Reference(self.domain, self.path)

    def docker_ref(self) -> Reference:
        """What docker resolves and records (``ParseDockerRef``): a digest wins over a tag, and
        a bare name gets ``latest``."""
        if self.digest is not None:
            return replace(self, tag=None)
        return self.with_default_tag()


_TAG_HINT = "a tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"


def split_docker_domain(name: str) -> tuple[str, str]:
    """Split ``name`` (which may carry ``:tag``/``@digest``) into domain and the rest, with
    docker's defaults (``splitDockerDomain``)."""
    first, sep, rest = name.partition("/")
    if not sep:
        # A single component is always a Docker Hub official image (even "localhost").
        return DEFAULT_DOMAIN, OFFICIAL_PREFIX + name
    if first == "localhost":
        domain, remainder = first, rest
    elif first == LEGACY_DEFAULT_DOMAIN:
        domain, remainder = DEFAULT_DOMAIN, rest
    elif "." in first or ":" in first or first.lower() != first:
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def parse_reference(s: str) -> Reference:
    """Parse a reference the way ``docker pull`` and ``docker tag`` do.

    Raises :class:`SouteError` with docker's message: ``invalid reference format``,
    ``invalid reference format: repository name (library/Debian) must be lowercase``, ...
    """
    if is_image_id(s):
        raise SouteError(
            f"invalid repository name ({s}), cannot specify 64-byte hexadecimal strings",
            hint="an image ID is not a name; use a name, or sha256:<id> where an ID is accepted",
        )
    domain, remainder = split_docker_domain(s)
    remote = remainder.partition(":")[0]
    if remote.lower() != remote:
        raise SouteError(
            f"invalid reference format: repository name ({remote}) must be lowercase",
            hint="image names are lowercase; only the registry host and tag may have capitals",
        )
    m = _REMAINDER_RE.fullmatch(remainder)
    if m is None or _DOMAIN_RE.fullmatch(domain) is None:
        raise SouteError("invalid reference format", hint=_FORMAT_HINT)
    path, tag, digest = m.group(1, 2, 3)
    if len(path) > NAME_MAX:
        raise SouteError(
            f"repository name must not be more than {NAME_MAX} characters",
            hint=f"{path[:40]}... has {len(path)}",
        )
    if digest is not None:
        parse_digest(digest)
    return Reference(domain, path, tag, digest)
