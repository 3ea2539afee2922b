"""ADD's remote sources: which sources BuildKit reads as URLs or git, and HTTP downloads made
as BuildKit's http source makes them.

- A source is **git** when BuildKit's ``dfgitutil.ParseGitRef`` accepts it: ``git@host:path``
  (scp style), ``ssh://`` and ``git://`` URLs, and ``http(s)://`` URLs whose path ends in
  ``.git`` (what happens to them is in :mod:`soute.build.git`). It is **http** when it
  starts with ``http://`` or ``https://`` and is not git. Anything else is a path in the
  context.
- A download is one file named after the URL path's last element (``__unnamed__`` when
  there is none; the Content-Disposition header is not used, as the Dockerfile frontend
  names the file itself), mode 0600, owned by root, its mtime the Last-Modified header (the
  Unix epoch without one). It is never unpacked unless ``--unpack=true``.
- ``--checksum`` pins its sha256 digest. The step's cache key holds the file name, the
  content digest and Last-Modified, so an unchanged download is a cache hit; with
  ``--checksum`` the key is known before any download, so a cached step needs no network.
- Downloads are kept in ``$SOUTE_ROOT/cache/http`` with their ETag: the next build asks
  with ``If-None-Match`` and a 304 reuses the file.
- Proxies come from ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` (or lower case), as Go's
  ``http.ProxyFromEnvironment`` reads them: upper case first, loopback hosts never proxied.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from soute.errors import SouteError

if TYPE_CHECKING:
    import urllib.request

UNNAMED = "__unnamed__"
_PROTO = re.compile(r"^[a-zA-Z0-9]+://")
_SCP = re.compile(r"^([a-zA-Z0-9-_]+)@([a-zA-Z0-9-.]+):(.*?)(?:\?(.*?))?(?:#(.*))?$")
_GIT_PROTOS = ("http", "https", "ssh", "git")
_BAD_ESCAPE = re.compile(r"%(?![0-9a-fA-F]{2})")
_BAD_QUERY = re.compile(r"%(?![0-9a-fA-F]{2})|;")
_CHUNK = 1 << 20
_SPACES = " \t\n\v\f\r\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"  # Go's unicode.IsSpace


def source_kind(src: str) -> Literal["http", "git", "local"]:
    """What BuildKit's Dockerfile frontend makes of a COPY/ADD source."""
    if _is_git(src):
        return "git"
    if src.startswith(("http://", "https://")):
        return "http"
    return "local"


def _is_git(src: str) -> bool:
    if src.startswith(("./", "../", "github.com/")):
        return False  # github.com/x/y is git only as a build context
    proto = _PROTO.match(src)
    if proto is None:
        scp = _SCP.match(src)
        # A query Go's url.ParseQuery refuses makes it no scp-style URL at all.
        return scp is not None and not _BAD_QUERY.search(scp.group(4) or "")
    scheme = proto.group(0)[:-3].lower()
    if scheme not in _GIT_PROTOS:
        return False
    try:  # what Go's url.Parse refuses is no git URL (then no URL at all)
        parts = urllib.parse.urlsplit(src)
        _ = parts.port
        path = urllib.parse.unquote(parts.path, errors="strict")
    except (ValueError, UnicodeDecodeError):
        return False
    if _BAD_ESCAPE.search(parts.path):
        return False
    return path.endswith(".git") if scheme in ("http", "https") else True


def url_file_name(url: str) -> str:
    """The name BuildKit gives a downloaded file: the URL path's last element (Go's
    ``path.Base`` of the unescaped path), or ``__unnamed__``."""
    try:
        raw = urllib.parse.urlsplit(url).path
    except ValueError:
        return UNNAMED
    if re.search(r"%(?![0-9a-fA-F]{2})", raw) or any(ord(c) < 0x20 or c == "\x7f" for c in url):
        return UNNAMED  # Go's url.Parse refuses it
    path = urllib.parse.unquote(raw, errors="surrogateescape")
    stripped = path.rstrip("/")
    if not stripped:
        return UNNAMED  # "", "/", "//": path.Base gives "." or "/"
    base = stripped.rsplit("/", 1)[-1]
    return UNNAMED if base == "." else base


def safe_file_name(name: str) -> str:
    """BuildKit's ``pathutil.SafeFileName``: the name the file is written under (spaces
    around it trimmed; ``download`` for a name that is empty, a dot or has control
    characters)."""
    name = name.strip(_SPACES)
    if name.rstrip("/"):
        name = name.rstrip("/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in name):
        return "download"
    return name


# ---------------------------------------------------------------------------- downloads


@dataclass(frozen=True)
class Download:
    """A downloaded file: ``directory`` holds it alone, under ``safe_file_name(name)``."""

    url: str
    name: str  # the name ADD copies (url_file_name)
    directory: Path
    digest: str  # sha256:<hex> of the content
    last_modified: str  # the header as sent ("" without one): part of the cache key

    def cache_key(self) -> list[str]:
        return ["http", self.name, self.digest, self.last_modified]


def checksum_key(name: str, checksum: str) -> list[str]:
    """The cache key of a download pinned by ``--checksum`` (known before downloading)."""
    return ["http", name, checksum]


def fetch(cache_root: Path, url: str, *, checksum: str = "") -> Download:
    """Download ``url`` (or reuse the copy kept from an earlier build) as ADD does.

    With ``checksum`` the content must have that digest. Raises :class:`SouteError`.
    """
    # Here, not at the top: urllib.request (http.client, ssl, email) costs every COPY 30 ms.
    import urllib.error
    import urllib.request

    from soute import __version__

    name = url_file_name(url)
    slot = cache_root / hashlib.sha256(f"{url}\0{name}".encode()).hexdigest()
    meta = _read_meta(slot)
    if meta is not None and checksum and meta["digest"] == checksum:
        return _download(url, name, slot, meta)  # content-addressed: no need to ask again
    request = urllib.request.Request(url, headers={"User-Agent": f"soute/{__version__}"})
    if meta is not None and meta.get("etag") and not checksum:
        request.add_header("If-None-Match", meta["etag"])
    try:
        response = _opener(url).open(request, timeout=300)
    except urllib.error.HTTPError as e:
        if e.code == 304 and meta is not None:
            e.close()
            return _download(url, name, slot, meta)
        e.close()
        raise SouteError(f"invalid response status {e.code}", f"GET {url} answered {e.code}"
                         ) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SouteError(f'Get "{url}": {_reason(e)}',
                         "check the URL, the network, HTTP_PROXY, HTTPS_PROXY and NO_PROXY"
                         ) from None
    with response:
        slot.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".dl-", dir=slot.parent))
        try:
            directory = scratch / "file"
            directory.mkdir()
            target = directory / safe_file_name(name)
            digest = hashlib.sha256()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            os.chmod(target, 0o600)
            last_modified = response.headers.get("Last-Modified") or ""
            mtime = _http_time(last_modified)
            os.utime(target, (mtime, mtime))
            got = "sha256:" + digest.hexdigest()
            if checksum and got != checksum:
                raise SouteError(f"digest mismatch for {url}: {got} (expected: {checksum})",
                                 "the file is not the one --checksum pins: its sha256 "
                                 "digest differs")
            etag = (response.headers.get("ETag") or "").removeprefix("W/")
            new_meta = {"digest": got, "last_modified": last_modified, "etag": etag}
            (scratch / "meta.json").write_text(json.dumps(new_meta))
            _replace(scratch, slot)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return _download(url, name, slot, new_meta)


def _reason(e: BaseException) -> str:
    """Why a request failed, worded as Go words it ("connection refused")."""
    reason = getattr(e, "reason", e)
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[:1].lower() + reason.strerror[1:]
    return str(reason)


def _download(url: str, name: str, slot: Path, meta: dict[str, str]) -> Download:
    return Download(url, name, slot / "file", meta["digest"], meta["last_modified"])


def _read_meta(slot: Path) -> dict[str, str] | None:
    try:
        meta = json.loads((slot / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not (slot / "file").is_dir():
        return None
    return meta


def _replace(new: Path, slot: Path) -> None:
    """Put a finished download in place of the slot's old one (never half-written)."""
    old = None
    if slot.exists():
        old = slot.with_name(slot.name + f".old-{os.getpid()}")
        os.rename(slot, old)
    try:
        os.rename(new, slot)
    except OSError:
        if old is not None and not slot.exists():
            os.rename(old, slot)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _http_time(text: str) -> float:
    """Go's ``http.ParseTime`` (RFC 1123, RFC 850, asctime); the epoch when absent or bad."""
    import email.utils

    if not text:
        return 0.0
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return 0.0
    return parsed.timestamp()


# ---------------------------------------------------------------------------- proxies


def _opener(url: str) -> urllib.request.OpenerDirector:
    import urllib.request

    proxy = proxy_for(url)
    scheme = urllib.parse.urlsplit(url).scheme
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({scheme: proxy} if proxy else {}))


def proxy_for(url: str, env: Mapping[str, str] | None = None) -> str | None:
    """The proxy Go's ``http.ProxyFromEnvironment`` picks for ``url`` (None: direct)."""
    environ = os.environ if env is None else env

    def get(*names: str) -> str:
        return next((environ[n] for n in names if environ.get(n)), "")

    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        proxy = get("HTTPS_PROXY", "https_proxy")
    elif scheme == "http":
        proxy = get("HTTP_PROXY", "http_proxy")
    else:
        return None
    if not proxy:
        return None
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return None
    return proxy if _use_proxy(host, port, get("NO_PROXY", "no_proxy")) else None


def _use_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Go's ``httpproxy`` rules: loopback never, then NO_PROXY's entries (``*``, IPs,
    CIDRs, ``domain`` and ``.domain``, each with an optional ``:port``)."""
    if host == "localhost":
        return False
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.is_loopback:
        return False
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return False
        try:
            network = ipaddress.ip_network(entry, strict=False) if "/" in entry else None
        except ValueError:
            network = None
        if network is not None:
            if ip is not None and ip in network:
                return False
            continue
        name, entry_port = entry, 0
        match = re.fullmatch(r"(.*):(\d+)", entry)
        if match and not entry.endswith("]"):
            name, entry_port = match.group(1), int(match.group(2))
        name = name.strip("[]")
        if entry_port and entry_port != port:
            continue
        try:
            if ip is not None and ipaddress.ip_address(name) == ip:
                return False
        except ValueError:
            pass
        if name.startswith("*."):
            name = name[1:]
        if name.startswith("."):
            if host.endswith(name):
                return False  # ".example.com": subdomains only
        elif host == name or host.endswith("." + name):
            return False
    return True
