"""Platforms (``linux/arm64/v8``): parsing and formatting as containerd's ``platforms`` package
does, the host's, and which images a platform can run, in the order docker prefers them
(containerd's ``platforms.Only``)."""

from __future__ import annotations

import functools
import os
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from soute.errors import SouteError
from soute.image.model import JSONObject, get_str, get_str_list

# containerd's specifierRe and osRe; their text is part of containerd's messages. Compiled when
# first used (re caches them): most commands read platforms but never parse one.
_SPECIFIER = r"^[A-Za-z0-9_.-]+$"
_OS_PART = r"^([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)((?:\+[A-Za-z0-9_.%-]+)*)\))?$"
_BAD_ESCAPE = r"%(?![0-9A-Fa-f]{2})"
# What FormatAll escapes in an OS version or feature (``%`` first, so nothing is escaped twice).
_OS_OPTION_ESCAPES = (("%", "%25"), ("+", "%2B"), ("(", "%28"), (")", "%29"), ("/", "%2F"))
_HINT = "use os/arch[/variant], e.g. linux/arm64/v8"
_KNOWN_OS = frozenset(
    {"aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js"}
    | {"linux", "nacl", "netbsd", "openbsd", "plan9", "solaris", "windows", "zos"}
)
_KNOWN_ARCH = frozenset(
    {"386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le"}
    | {"loong64", "mips", "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc"}
    | {"riscv", "riscv64", "s390", "s390x", "sparc", "sparc64", "wasm"}
)
# uname machine -> (GOARCH, variant)
_MACHINES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "x86": ("386", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "armv5tejl": ("arm", "v5"),
    "ppc64le": ("ppc64le", ""),
    "ppc64": ("ppc64", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "loongarch64": ("loong64", ""),
    "mips64": ("mips64le", ""),  # Debian's mips64el kernels say mips64
}


class PlatformError(SouteError):
    """A platform string containerd's ``platforms.Parse`` refuses.

    ``message`` is ours; :meth:`containerd` gives containerd's own wording, which BuildKit
    repeats in its messages, with the caller's rendering of Go's ``%q`` (this package is pure
    data and leaves Go's quoting to the Dockerfile code).
    """

    def __init__(self, message: str, hint: str | None, template: str, *quoted: str) -> None:
        super().__init__(message, hint)
        self.template = template  # containerd's message, "{}" for each %q
        self.quoted = quoted

    def containerd(self, quote: Callable[[str], str] = repr) -> str:
        """containerd's message: ``"linux/*": wildcards not yet supported: invalid argument``."""
        return self.template.format(*(quote(q) for q in self.quoted))


@dataclass
class Platform(JSONObject):
    """An OCI platform. ``os`` and ``architecture`` use Go's GOOS/GOARCH names."""

    KEYS: ClassVar[tuple[str, ...]] = ("architecture", "os", "os.version", "os.features", "variant")
    WHAT: ClassVar[str] = "platform"

    os: str = ""
    architecture: str = ""
    variant: str = ""
    os_version: str = ""
    os_features: list[str] = field(default_factory=list)

    @classmethod
    def _decode(cls, known: dict[str, Any], where: str) -> Self:
        return cls(
            os=get_str(known, "os", where),
            architecture=get_str(known, "architecture", where),
            variant=get_str(known, "variant", where),
            os_version=get_str(known, "os.version", where),
            os_features=get_str_list(known, "os.features", where),
        )

    def _known(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def parse(cls, spec: str) -> Platform:
        """Parse ``os``, ``arch``, ``os/arch`` or ``os/arch/variant`` as containerd's
        ``platforms.Parse``: the OS may carry a version and features (``windows(10.0.17763)``,
        ``windows(10.0.17763+win32k)``, ``%``-escaped), a lone known OS gets the host's
        architecture, a lone architecture gets ``linux``, and names are normalised (``x86_64`` is
        ``amd64``, ``aarch64`` is ``arm64``, arm64's variant is v8).

        Raises :class:`PlatformError`.
        """
        if "*" in spec:
            raise PlatformError(
                f"invalid platform {spec!r}: wildcards are not supported",
                None,
                "{}: wildcards not yet supported: invalid argument",
                spec,
            )
        parts = spec.split("/", 3)
        m = re.fullmatch(_OS_PART, parts[0])
        if m is None:
            raise PlatformError(
                f"invalid platform {spec!r}",
                _HINT,
                "{} is an invalid OS component of {}: OSAndVersion specifier component must "
                "match {}: invalid argument",
                parts[0],
                spec,
                _OS_PART,
            )
        os_name = _normalize_os(m.group(1))
        raw_version, raw_features = m.group(2) or "", m.group(3)
        os_version = _decode_option(spec, raw_version, "{} has an invalid OS version {}: ")
        os_features = [
            _decode_option(spec, f, "{} has invalid OS features: invalid os feature {}: ")
            for f in (raw_features[1:].split("+") if raw_features else [])
        ]
        for part in parts[1:]:
            if not re.fullmatch(_SPECIFIER, part):
                raise PlatformError(
                    f"invalid platform {spec!r}",
                    _HINT,
                    "{} is an invalid component of {}: platform specifier component must match "
                    "{}: invalid argument",
                    part,
                    spec,
                    _SPECIFIER,
                )
        if len(parts) == 1:
            if os_name in _KNOWN_OS:
                host = cls.host()
                variant = host.variant if host.architecture == "arm" else ""
                if variant == "v7":
                    variant = ""
                return cls(os_name, host.architecture, variant, os_version, os_features)
            arch, variant = normalize_arch(parts[0], "")
            if arch == "arm" and variant == "v7":
                variant = ""
            if arch in _KNOWN_ARCH:
                return cls(cls.host().os, arch, variant)
            raise PlatformError(
                f"invalid platform {spec!r}: unknown operating system or architecture",
                "use os/arch[/variant], e.g. linux/amd64",
                "{}: unknown operating system or architecture: invalid argument",
                spec,
            )
        if len(parts) == 2:
            arch, variant = normalize_arch(parts[1], "")
            if arch == "arm" and variant == "v7":
                variant = ""
            return cls(os_name, arch, variant, os_version, os_features)
        if len(parts) == 3:
            arch, variant = normalize_arch(parts[1], parts[2])
            if arch == "arm64" and not variant:
                variant = "v8"
            return cls(os_name, arch, variant, os_version, os_features)
        raise PlatformError(
            f"invalid platform {spec!r}",
            _HINT,
            "{}: cannot parse platform specifier: invalid argument",
            spec,
        )

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine, as docker's default: ``linux/amd64``,
        ``linux/arm64/v8``, ``linux/arm/v7``..."""
        os_name, arch, variant = _host()
        return cls(os_name, arch, variant)

    def __str__(self) -> str:
        """containerd's ``platforms.Format``: ``linux/arm/v7``, ``unknown`` without an OS."""
        if not self.os:
            return "unknown"
        return _path_join(self.os, self.architecture, self.variant)

    def format_all(self) -> str:
        """containerd's ``platforms.FormatAll``: with the OS version and features,
        ``windows(10.0.17763+win32k)/amd64`` (features sorted, ``%``-escaped as :meth:`parse`
        reads them); the same as ``str()`` when there are none."""
        if not self.os:
            return "unknown"
        version = _encode_option(self.os_version)
        features = "+".join(_encode_option(f) for f in sorted(set(self.os_features)) if f)
        head = self.os
        if version or features:
            head += f"({version}{'+' + features if features else ''})"
        return _path_join(head, self.architecture, self.variant)

    def normalized(self) -> Platform:
        arch, variant = normalize_arch(self.architecture, self.variant)
        return Platform(
            _normalize_os(self.os),
            arch,
            variant,
            self.os_version,
            sorted(set(self.os_features)),
        )

    def preference(self) -> list[Platform]:
        """What this platform runs, best first (containerd's ``platformVector``): amd64/v3
        runs v3, v2, v1 then 386; arm/v7 runs v7, v6, v5; arm64 runs arm64 then arm v8..v5."""
        return [p.normalized() for p in _vector(self.normalized())]

    def rank(self, candidate: Platform) -> int | None:
        """Where ``candidate`` sits in :meth:`preference` (0 is best), None if it can't run."""
        cand = candidate.normalized()
        for i, want in enumerate(self.preference()):
            if _same(want, cand):
                return i
        return None

    def matches(self, candidate: Platform, *, strict: bool = False) -> bool:
        """Whether an image for ``candidate`` runs here; ``strict``: only the same platform."""
        if strict:
            return _same(self.normalized(), candidate.normalized())
        return self.rank(candidate) is not None


def normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    """containerd's normalisation: GOARCH names, and the variant each arch implies."""
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
        return "arm", variant
    return arch, variant


def _normalize_os(name: str) -> str:
    name = name.lower() if name else "linux"
    return "darwin" if name == "macos" else name


def _decode_option(spec: str, raw: str, template: str) -> str:
    """An OS version or feature as written in a platform string, ``%``-escapes decoded (Go's
    ``url.PathUnescape``: a ``%`` not followed by two hex digits is refused)."""
    if "%" not in raw:
        return raw
    if bad := re.search(_BAD_ESCAPE, raw):
        escape = raw[bad.start() : bad.start() + 3]
        raise PlatformError(
            f"invalid platform {spec!r}: bad escape {escape!r} in {raw!r}",
            "write %, +, (, ) and / in an OS version or feature as %25, %2B, %28, %29 and %2F",
            template + "invalid URL escape {}",
            spec,
            raw,
            escape,
        )
    from urllib.parse import unquote  # only for the rare escaped os(version)

    return unquote(raw)


def _encode_option(value: str) -> str:
    for char, escape in _OS_OPTION_ESCAPES:
        value = value.replace(char, escape)
    return value


def _path_join(*elems: str) -> str:
    """Go's ``path.Join``: the non-empty elements joined by ``/``, then cleaned."""
    joined = "/".join(e for e in elems if e)
    if not joined:
        return ""
    cleaned = posixpath.normpath(joined)
    return cleaned[1:] if cleaned.startswith("//") else cleaned  # Go keeps one leading slash


@functools.cache
def _host() -> tuple[str, str, str]:
    machine = os.uname().machine.lower()
    arch, variant = _MACHINES.get(machine, (machine or "amd64", ""))
    return "linux", arch, variant


def _same(want: Platform, cand: Platform) -> bool:
    """Both normalised: same os/arch/variant, and the candidate needs no OS feature we lack."""
    return (
        want.os == cand.os
        and want.architecture == cand.architecture
        and want.variant == cand.variant
        and set(cand.os_features) <= set(want.os_features)
    )


# arm64 variants and the (major, minor) versions they run, newest first.
_ARM64_VERSIONS: dict[str, list[tuple[int, int]]] = {
    **{f"v8.{n}": [(8, m) for m in range(n, -1, -1)] for n in range(1, 10)},
    "v8": [(8, 0)],
    "v8.0": [(8, 0)],
    **{
        f"v9.{n}": [(9, m) for m in range(n, -1, -1)]
        + [(8, m) for m in range(min(n + 5, 9), -1, -1)]
        for n in range(1, 8)
    },
    "v9": [(9, 0)] + [(8, m) for m in range(5, -1, -1)],
    "v9.0": [(9, 0)] + [(8, m) for m in range(5, -1, -1)],
}


def _vector(p: Platform) -> list[Platform]:
    def like(arch: str, variant: str) -> Platform:
        return Platform(p.os, arch, variant, p.os_version, list(p.os_features))

    out = [p]
    if p.architecture == "amd64":
        level = _version(p.variant)
        if level is not None and level > 1:
            out += [like("amd64", f"v{v}") for v in range(level - 1, 0, -1)]
        out.append(like("386", ""))
    elif p.architecture == "arm":
        level = _version(p.variant)
        if level is not None and level > 5:
            out += [like("arm", f"v{v}") for v in range(level - 1, 4, -1)]
    elif p.architecture == "arm64":
        variant = p.variant or "v8"
        versions = _ARM64_VERSIONS.get(variant)
        out = []
        if versions is not None:
            out = [like("arm64", f"v{ma}" if mi == 0 else f"v{ma}.{mi}") for ma, mi in versions]
        arm = "v8" if variant.startswith(("v8", "v9")) else variant
        out += _vector(like("arm", arm))
    return out


def _version(variant: str) -> int | None:
    digits = variant.removeprefix("v")
    return int(digits) if digits.isdigit() else None
