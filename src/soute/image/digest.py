"""Content digests, DiffID chains and the short IDs docker shows.

A digest is kept as its string form, ``algorithm:encoded`` (``sha256:<64 hex>``): that is what
every manifest, config and registry API carries, so there is nothing to gain from a wrapper.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

from soute.errors import SouteError

# The algorithms we can verify and their hex lengths (go-digest registers these three).
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha384": 96, "sha512": 128}

# OCI descriptor grammar (descriptor.md): any algorithm, any encoding. Used to check digests we
# only carry around (and to keep them safe as path components: no '/', no '..').
_OCI_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")

EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


# Below this size, Python's own sha256 (_sha256: 0.6 ms to import) rather than OpenSSL's
# (hashlib: 3.5 ms to import, and faster only on large data): a run hashes only ChainIDs.
_SMALL = 1 << 16


def sha256_digest(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of ``data``."""
    hashlib = sys.modules.get("hashlib")
    if hashlib is None and len(data) < _SMALL:
        try:
            from _sha256 import sha256
        except ImportError:
            try:
                from _sha2 import sha256  # Python 3.12's name for it
            except ImportError:  # an interpreter without either
                sha256 = None
        if sha256 is not None:
            return "sha256:" + sha256(data).hexdigest()
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(s: str) -> bool:
    """Whether ``s`` has the OCI digest shape (any algorithm); see :func:`parse_digest`."""
    return _OCI_DIGEST.fullmatch(s) is not None


def parse_digest(s: str) -> str:
    """Check a digest we are going to verify and return it.

    Accepts sha256, sha384 and sha512 with lowercase hex of the right length, as go-digest's
    ``Parse`` does; raises :class:`SouteError` with go-digest's messages otherwise.
    """
    alg, sep, encoded = s.partition(":")
    if not sep or not encoded:
        raise SouteError(f"invalid checksum digest format: {s!r}", hint="a digest is algorithm:hex")
    length = ALGORITHMS.get(alg)
    if length is None:
        if not is_digest(s):
            raise SouteError(f"invalid checksum digest format: {s!r}")
        raise SouteError(
            f"unsupported digest algorithm: {alg}", hint="supported: sha256, sha384, sha512"
        )
    if len(encoded) != length:
        raise SouteError(
            f"invalid checksum digest length: {s!r}",
            hint=f"a {alg} digest has {length} hex digits",
        )
    if not re.fullmatch(f"[a-f0-9]{{{length}}}", encoded):  # compiled once, by re
        raise SouteError(f"invalid checksum digest format: {s!r}", hint="use lowercase hex")
    return s


def split_digest(digest: str) -> tuple[str, str]:
    """``(algorithm, encoded)`` of a digest of the OCI shape."""
    if not is_digest(digest):
        raise SouteError(f"invalid digest: {digest!r}")
    alg, _, encoded = digest.partition(":")
    return alg, encoded


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The ChainID of each layer stack: ``ChainID(L0) = DiffID(L0)``, then
    ``ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))`` (image-spec config.md)."""
    out: list[str] = []
    for diff_id in diff_ids:
        if out:
            out.append(sha256_digest(f"{out[-1]} {diff_id}".encode()))
        else:
            out.append(diff_id)
    return out


def chain_id(diff_ids: Iterable[str]) -> str | None:
    """The ChainID of the whole stack, or None for no layers."""
    ids = chain_ids(diff_ids)
    return ids[-1] if ids else None


def short_id(digest: str) -> str:
    """The 12 characters docker shows: the encoded part cut short (``TruncateID``)."""
    _, sep, encoded = digest.partition(":")
    return (encoded if sep else digest)[:12]
