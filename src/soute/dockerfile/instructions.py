"""Typed, validated Dockerfile instructions, read from parser nodes as BuildKit reads them.

``parse_dockerfile()`` is the entry point: text to a :class:`Dockerfile` holding the parser's
result, one typed instruction per node, the stages and the global (meta) ARGs. Messages are
BuildKit's own (``frontend/dockerfile/instructions``), raised as :class:`InstructionError`
naming the file and line, with a hint where one helps.

What BuildKit checks only when it dispatches an instruction (RUN mounts in full, expansion,
EXPOSE ports, STOPSIGNAL values) is in :mod:`soute.dockerfile.stages`, which walks a stage
with the variables in scope; the helpers it needs (``parse_mount``, ``parse_ports`` ...) are
here so that both layers share one reading of each value.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import FrozenInstanceError, dataclass
from typing import Any, ClassVar, Literal, TypeAlias, TypedDict

from soute.dockerfile.goquote import go_quote
from soute.dockerfile.parser import (
    INSTRUCTIONS,
    Heredoc,
    Node,
    ParseResult,
    go_trim_space,
    must_parse_heredoc,
    parse_text,
)
from soute.errors import LocatedError, SouteError

__all__ = [
    "DEFAULT_SHELL",
    "WINDOWS_SHELL",
    "Add",
    "Arg",
    "ArgDef",
    "Cmd",
    "Copy",
    "Device",
    "Dockerfile",
    "Entrypoint",
    "Env",
    "Expose",
    "From",
    "HealthConfig",
    "Healthcheck",
    "InlineFile",
    "Instruction",
    "InstructionError",
    "InvalidValue",
    "KeyValue",
    "Label",
    "Maintainer",
    "Mount",
    "Onbuild",
    "Run",
    "RunScript",
    "Shell",
    "SourceContent",
    "Stage",
    "Stopsignal",
    "User",
    "Volume",
    "Workdir",
    "format_go_duration",
    "parse_dockerfile",
    "parse_go_duration",
    "parse_instruction",
    "parse_mount",
    "parse_ports",
    "parse_signal",
    "parse_trigger",
]

DEFAULT_SHELL = ("/bin/sh", "-c")
WINDOWS_SHELL = ("cmd", "/S", "/C")


class InstructionError(LocatedError):
    """An instruction BuildKit refuses, at its line."""


class InvalidValue(SouteError):
    """A value BuildKit refuses; the caller knows the instruction and adds the location."""


# ---------------------------------------------------------------------------- Go semantics
# Small re-readings of the Go library functions whose exact behaviour decides what BuildKit
# accepts; Python's nearest equivalents differ at the edges (signs, spaces, underscores).


def go_upper(s: str) -> str:
    """strings.ToUpper: one rune in, one rune out (Python's ``upper`` turns ß into SS)."""
    return "".join(u if len(u := c.upper()) == 1 else c for c in s)


def go_lower(s: str) -> str:
    """strings.ToLower: one rune in, one rune out (Go maps U+0130 to plain i)."""
    return "".join(lo if len(lo := c.lower()) == 1 else "i" if c == "\u0130" else c for c in s)


def _equal_fold(a: str, b: str) -> bool:
    """strings.EqualFold, rune by rune (so the long s matches s, as in Go)."""
    if len(a) != len(b):
        return False
    pairs = zip(a, b, strict=True)
    return all(x == y or x.lower() == y.lower() or x.upper() == y.upper() for x, y in pairs)


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _suggest(value: str, options: Iterable[str], *, case_sensitive: bool) -> str | None:
    """BuildKit's suggest.Search: the closest option under edit distance 3, if any.

    BuildKit walks a Go map, so ties go to whichever comes first; we walk sorted options so the
    answer is stable.
    """
    val = value if case_sensitive else value.lower()
    best, best_dist = None, 3
    for opt in sorted(options):
        cand = opt if case_sensitive else opt.lower()
        if cand == val:
            return None  # an exact match means the error was about something else
        dist = _levenshtein(val, cand)
        if dist < best_dist:
            best, best_dist = cand, dist
    if best is None or case_sensitive:
        return best
    if value == value.lower():
        return best.lower()
    if value == value.upper():
        return best.upper()
    return best


def _did_you_mean(value: str, options: Iterable[str], *, case_sensitive: bool = True) -> str:
    """BuildKit's " (did you mean x?)" suffix, or nothing."""
    match = _suggest(value, options, case_sensitive=case_sensitive)
    return f" (did you mean {match}?)" if match else ""


_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_FALSE = frozenset(("0", "f", "F", "FALSE", "false", "False"))


def go_parse_bool(s: str) -> bool | None:
    """strconv.ParseBool, None when Go refuses the text."""
    return True if s in _TRUE else False if s in _FALSE else None


def go_parse_uint(s: str, base: int, bits: int) -> int | None:
    """strconv.ParseUint with an explicit base: digits only, no sign, prefix or underscore."""
    digits = "01234567"[:base] if base <= 8 else "0123456789"[:base]
    if not s or any(c not in digits for c in s):
        return None
    value = int(s, base)
    return value if value < 1 << bits else None


def go_atoi(s: str) -> int | None:
    """strconv.Atoi on a 64-bit host, None when Go refuses the text."""
    body = s[1:] if s[:1] in ("+", "-") else s
    if not body or any(c not in "0123456789" for c in body):
        return None
    value = int(s)
    return value if -(1 << 63) <= value < 1 << 63 else None


_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def _time_quote(s: str) -> str:
    """The quoting time.ParseDuration uses in its messages: bytes beyond ASCII as \\xNN."""
    out = ['"']
    for ch in s:
        if ord(ch) < 0x20 or ord(ch) >= 0x80:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogateescape"))
        else:
            out.append("\\" + ch if ch in '"\\' else ch)
    out.append('"')
    return "".join(out)


def parse_go_duration(text: str) -> int:
    """Go's time.ParseDuration, in nanoseconds (``1m30s``, ``500ms``, ``-1.5h``, ``0``).

    Raises :class:`InvalidValue` with Go's message.
    """
    invalid = InvalidValue("time: invalid duration " + _time_quote(text))
    s = text
    neg = False
    if s[:1] in ("-", "+"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    total = 0
    limit = 1 << 63
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            raise invalid
        i = 0
        while i < len(s) and "0" <= s[i] <= "9":
            i += 1
        whole_digits, s = s[:i], s[i:]
        whole = int(whole_digits) if whole_digits else 0
        if whole > limit:
            raise invalid
        frac, scale, frac_digits = 0, 1, ""
        if s[:1] == ".":
            s = s[1:]
            i = 0
            while i < len(s) and "0" <= s[i] <= "9":
                i += 1
            frac_digits, s = s[:i], s[i:]
            for d in frac_digits:  # Go stops adding precision once it would overflow
                nxt = frac * 10 + int(d)
                if frac > (limit - 1) // 10 or nxt > limit:
                    break
                frac, scale = nxt, scale * 10
        if not whole_digits and not frac_digits:
            raise invalid
        i = 0
        while i < len(s) and s[i] != "." and not ("0" <= s[i] <= "9"):
            i += 1
        if i == 0:
            raise InvalidValue("time: missing unit in duration " + _time_quote(text))
        unit_name, s = s[:i], s[i:]
        unit = _DURATION_UNITS.get(unit_name)
        if unit is None:
            raise InvalidValue(
                f"time: unknown unit {_time_quote(unit_name)} in duration {_time_quote(text)}"
            )
        if whole > limit // unit:
            raise invalid
        value = whole * unit
        if frac:
            value += int(float(frac) * (float(unit) / float(scale)))
            if value > limit:
                raise invalid
        total += value
        if total > limit:
            raise invalid
    if neg:
        return -total
    if total > limit - 1:
        raise invalid
    return total


def _format_fraction(value: int, precision: int) -> tuple[str, int]:
    digits = f"{value % 10**precision:0{precision}d}".rstrip("0")
    return ("." + digits if digits else ""), value // 10**precision


def format_go_duration(ns: int) -> str:
    """Go's Duration.String(): ``1m30s``, ``500ms``, ``1h0m0s``, ``0s``."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1_000_000_000:
        for unit, size in (("ns", 1), ("\u00b5s", 1_000), ("ms", 1_000_000)):
            if u < size * 1000:
                frac, whole = _format_fraction(u, len(str(size)) - 1) if size > 1 else ("", u)
                return f"{sign}{whole}{frac}{unit}"
    frac, secs = _format_fraction(u, 9)
    out = f"{secs % 60}{frac}s"
    mins = secs // 60
    if mins:
        out = f"{mins % 60}m{out}"
        if mins // 60:
            out = f"{mins // 60}h{out}"
    return sign + out


_SIZE_NUMBER = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    r"|0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+)"
)
_BINARY_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def _ram_in_bytes(text: str) -> int | None:
    """docker/go-units RAMInBytes (``64m``, ``1.5GiB``, ``512``), None when it refuses."""
    sep = max(text.rfind(c) for c in "0123456789. ")
    if sep < 0:
        return None
    num = text[: sep + 1] if text[sep] != " " else text[:sep]
    sfx = text[sep + 1 :]
    if not _SIZE_NUMBER.fullmatch(num):
        return None
    size = float.fromhex(num) if "x" in num.lower() else float(num)
    if size < 0 or size == float("inf"):
        return None
    if sfx:
        sfx = sfx.lower()
        if len(sfx) > 3:
            return None
        if sfx[0] == "b":
            return int(size) if len(sfx) == 1 else None
        mul = _BINARY_UNITS.get(sfx[0])
        if mul is None or (len(sfx) == 2 and sfx[1] != "b") or (len(sfx) == 3 and sfx[1:] != "ib"):
            return None
        size *= mul
    return min(int(size), (1 << 63) - 1)


def _csv_fields(line: str) -> list[str]:
    """One CSV record (tonistiigi/go-csvvalue): commas split, double quotes group, ``""``
    escapes a quote. Raises InvalidValue with encoding/csv's message (bare message: the
    caller adds what was being parsed)."""
    if line.endswith("\r\n"):
        line = line[:-2]
    elif line.endswith("\n"):
        line = line[:-1]
    if not line:
        raise InvalidValue("EOF")
    data = line.encode("utf-8", "surrogateescape")

    def fail(pos: int, what: str) -> InvalidValue:
        return InvalidValue(f"parse error on line 1, column {pos + 1}: {what}")

    fields: list[bytes] = []
    pos = 0
    n = len(data)
    while True:
        if pos >= n or data[pos] != 0x22:
            end = data.find(b",", pos)
            chunk = data[pos:] if end < 0 else data[pos:end]
            if (q := chunk.find(b'"')) >= 0:
                raise fail(pos + q, 'bare " in non-quoted-field')
            fields.append(chunk)
            if end < 0:
                break
            pos = end + 1
            continue
        pos += 1
        buf = bytearray()
        while True:
            q = data.find(b'"', pos)
            if q < 0:
                raise fail(pos, 'extraneous or missing " in quoted-field')
            buf += data[pos:q]
            pos = q + 1
            if pos < n and data[pos] == 0x22:
                buf += b'"'
                pos += 1
                continue
            if pos < n and data[pos] == 0x2C:
                fields.append(bytes(buf))
                pos += 1
                break
            if pos >= n:
                fields.append(bytes(buf))
                return [f.decode("utf-8", "surrogateescape") for f in fields]
            raise fail(pos - 1, 'extraneous or missing " in quoted-field')
    return [f.decode("utf-8", "surrogateescape") for f in fields]


def go_path_clean(p: str) -> str:
    """path.Clean (posixpath.normpath keeps a leading ``//``; Go does not)."""
    if not p:
        return "."
    cleaned = posixpath.normpath(p)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def go_path_base(p: str) -> str:
    """path.Base."""
    if not p:
        return "."
    p = p.rstrip("/")
    return p.rsplit("/", 1)[-1] if p else "/"


# ---------------------------------------------------------------------------- flags

FlagKind: TypeAlias = Literal["bool", "string", "strings"]


@dataclass
class _Flags:
    """Parsed ``--name=value`` flags of one instruction (BuildKit's BFlags)."""

    values: dict[str, str]  # bool ("true"/"false") and string flags, defaults included
    lists: dict[str, list[str]]
    used: list[str]

    def true(self, name: str) -> bool:
        return self.values[name] == "true"

    def given(self, name: str) -> bool | None:
        """A bool flag's value, None when it was not given."""
        return self.true(name) if name in self.used else None


def _parse_flags(
    raw: Sequence[str], spec: Mapping[str, tuple[FlagKind, str]], instruction: str
) -> _Flags:
    flags = _Flags(
        values={k: d for k, (kind, d) in spec.items() if kind != "strings"},
        lists={k: [] for k, (kind, _) in spec.items() if kind == "strings"},
        used=[],
    )
    for arg in raw:
        if arg == "--":
            break  # POSIX: the rest are operands
        if not arg.startswith("--"):
            raise InvalidValue(f"arg should start with -- : {arg}")
        flag_name, has_value, value = arg.partition("=")
        name = flag_name[2:]
        if name not in spec:
            taken = ", ".join("--" + n for n in sorted(spec))
            hint = f"{instruction} takes {taken}" if taken else f"{instruction} takes no flags"
            raise InvalidValue(f"unknown flag: {flag_name}{_did_you_mean(name, spec)}", hint)
        kind = spec[name][0]
        if name in flags.used and kind != "strings":
            raise InvalidValue(f"duplicate flag specified: {flag_name}", "give each flag once")
        if name not in flags.used:
            flags.used.append(name)
        if kind == "bool":
            if has_value and not value:
                raise InvalidValue(f"missing a value on flag: {flag_name}", f"{flag_name}=true")
            if value.lower() not in ("true", "false", ""):
                raise InvalidValue(
                    f"expecting boolean value for flag {flag_name}, not: {value}",
                    f"use {flag_name}, {flag_name}=true or {flag_name}=false",
                )
            flags.values[name] = "false" if value.lower() == "false" else "true"
        elif not has_value:
            raise InvalidValue(
                f"missing a value on flag: {flag_name}", f"write {flag_name}=<value>"
            )
        elif kind == "string":
            flags.values[name] = value
        else:
            flags.lists[name].append(value)
    return flags


_NO_FLAGS: dict[str, tuple[FlagKind, str]] = {}
_FLAGS: dict[str, dict[str, tuple[FlagKind, str]]] = {
    "from": {"platform": ("string", "")},
    "add": {
        "chown": ("string", ""),
        "chmod": ("string", ""),
        "link": ("bool", "false"),
        "keep-git-dir": ("bool", "false"),
        "checksum": ("string", ""),
        "unpack": ("bool", "false"),
        "exclude": ("strings", ""),
    },
    "copy": {
        "chown": ("string", ""),
        "from": ("string", ""),
        "chmod": ("string", ""),
        "link": ("bool", "false"),
        "exclude": ("strings", ""),
        "parents": ("bool", "false"),
    },
    "run": {
        "device": ("strings", ""),
        "mount": ("strings", ""),
        "network": ("string", "default"),
        "security": ("string", "sandbox"),
    },
    "healthcheck": {
        "interval": ("string", ""),
        "timeout": ("string", ""),
        "start-period": ("string", ""),
        "start-interval": ("string", ""),
        "retries": ("string", ""),
    },
}

# ---------------------------------------------------------------------------- RUN --mount

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")
NETWORK_MODES = ("default", "none", "host")
SECURITY_MODES = ("sandbox", "insecure")
_MOUNT_KEYS = (
    "type", "from", "source", "target", "readonly", "id", "sharing", "required", "size", "mode",
    "uid", "gid", "src", "dst", "destination", "ro", "rw", "readwrite", "env",
)  # fmt: skip


@dataclass(frozen=True)
class Mount:
    """One ``RUN --mount`` as BuildKit parses it.

    What BuildKit only decides when it runs the RUN (cache and secret ids, a secret's path,
    the ssh agent id, file modes) is given by the properties below.
    """

    type: str = "bind"
    from_: str = ""  # stage, image or context name; "" is the build context (scratch for cache)
    source: str = ""
    target: str = ""
    readonly: bool = True
    size: int = 0  # tmpfs size limit in bytes, 0 = unlimited
    id: str = ""
    sharing: str = ""  # "" reads as shared
    required: bool = False
    env: str | None = None  # secret exposed as this environment variable
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def cache_id(self) -> str:
        """The cache key: ``id``, else the cleaned target."""
        return self.id or go_path_clean(self.target)

    @property
    def effective_sharing(self) -> str:
        return self.sharing or "shared"

    @property
    def secret_id(self) -> str:
        """A secret's id: ``source``, else ``id``, else the target's base name."""
        return self.source or self.id or go_path_base(self.target)

    @property
    def secret_target(self) -> str | None:
        """Where a secret file appears; None for an env-only secret without a target."""
        if self.env is not None:
            return self.target or None
        return self.target or "/run/secrets/" + go_path_base(self.secret_id)

    @property
    def ssh_id(self) -> str:
        return self.id or "default"

    def file_mode(self) -> int:
        """Mode of the secret file, ssh socket or cache directory root."""
        if self.mode is not None:
            return self.mode
        return {"secret": 0o400, "ssh": 0o600}.get(self.type, 0o755)


def _mount_bool(key: str, value: str) -> bool:
    b = go_parse_bool(value)
    if b is None:
        raise InvalidValue(f"invalid value for {key}: {value}", "use true or false")
    return b


def parse_mount(spec: str, expand: Callable[[str], str] | None = None) -> Mount:
    """A ``--mount`` value (CSV of ``key=value``), as BuildKit reads it.

    Without ``expand`` this is BuildKit's parse-time pass: only the CSV syntax and ``from`` are
    looked at, everything else waits for the variables. With ``expand`` (called on every value)
    this is the full check made when the RUN is dispatched. Raises :class:`InvalidValue`.
    """
    try:
        fields = _csv_fields(spec)
    except InvalidValue as e:
        raise InvalidValue(
            f"failed to parse csv mounts: {e.message}", 'quote a value holding commas: "a,b"'
        ) from None
    m: dict[str, Any] = {"type": "bind"}
    ro_auto = True
    for fld in fields:
        key, has_value, value = fld.partition("=")
        key = go_lower(key)
        mtype = m["type"]
        if not has_value:
            if expand is None:
                continue  # decided once variables are known
            if key in ("readonly", "ro"):
                m["readonly"], ro_auto = True, False
            elif key in ("readwrite", "rw"):
                m["readonly"], ro_auto = False, False
            elif key == "required":
                if mtype not in ("secret", "ssh"):
                    raise InvalidValue(f"unexpected key '{key}' for mount type '{mtype}'")
                m["required"] = True
            else:
                raise InvalidValue(f"invalid field '{fld}' must be a key=value pair")
            continue
        if expand is not None:
            value = expand(value)
        elif key == "from":
            dollar = value.find("$")
            if dollar != -1 and dollar != len(value) - 1:
                raise InvalidValue(
                    f"'{key}' doesn't support variable expansion, define alias stage instead",
                    "add a stage `FROM ${VAR} AS alias` and mount from=alias",
                )
        else:
            continue
        _set_mount_field(m, key, value, fld)
        if key in ("readonly", "ro", "readwrite", "rw"):
            ro_auto = False
    mtype = str(m["type"])
    if mtype not in ("secret", "ssh", "cache"):
        for name in ("mode", "uid", "gid"):
            if m.get(name) is not None:
                raise InvalidValue(f"{name} not allowed for {go_quote(mtype)} type mounts")
    if ro_auto:
        m["readonly"] = mtype not in ("cache", "tmpfs")
    if mtype == "secret":
        if m.get("from_"):
            raise InvalidValue("secret mount should not have a from")
        if m.get("sharing"):
            raise InvalidValue("secret mount should not define sharing")
        if not m.get("source") and not m.get("target") and not m.get("id"):
            raise InvalidValue("invalid secret mount. one of source, target required")
        if m.get("source") and m.get("id"):
            raise InvalidValue("both source and id can't be set")
    if m.get("sharing") and mtype != "cache":
        raise InvalidValue(f"invalid cache sharing set for {mtype} mount")
    return Mount(**m)


def _set_mount_field(m: dict[str, Any], key: str, value: str, fld: str) -> None:
    mtype = m["type"]
    if key == "type":
        v = go_lower(value)
        if v not in MOUNT_TYPES:
            raise InvalidValue(
                f"unsupported mount type {go_quote(value)}{_did_you_mean(value, MOUNT_TYPES)}",
                "types: " + ", ".join(MOUNT_TYPES),
            )
        m["type"] = v
    elif key == "from":
        m["from_"] = value
    elif key in ("source", "src"):
        m["source"] = value
    elif key in ("target", "dst", "destination"):
        m["target"] = value
    elif key in ("readonly", "ro"):
        m["readonly"] = _mount_bool(key, value)
    elif key in ("readwrite", "rw"):
        m["readonly"] = not _mount_bool(key, value)
    elif key == "required":
        if mtype not in ("secret", "ssh"):
            raise InvalidValue(f"unexpected key '{key}' for mount type '{mtype}'")
        m["required"] = _mount_bool(key, value)
    elif key == "size":
        if mtype != "tmpfs":
            raise InvalidValue(f"unexpected key '{key}' for mount type '{mtype}'")
        size = _ram_in_bytes(value)
        if size is None:
            raise InvalidValue(f"invalid value for {key}: {value}", "e.g. size=64m")
        m["size"] = size
    elif key == "id":
        m["id"] = value
    elif key == "sharing":
        v = go_lower(value)
        if v not in SHARING_MODES:
            raise InvalidValue(
                f"unsupported sharing value {go_quote(value)}{_did_you_mean(value, SHARING_MODES)}",
                "sharing: " + ", ".join(SHARING_MODES),
            )
        m["sharing"] = v
    elif key in ("mode", "uid", "gid"):
        number = go_parse_uint(value, 8 if key == "mode" else 10, 32)
        if number is None:
            raise InvalidValue(
                f"invalid value {value} for {key}",
                "an octal mode such as 0755" if key == "mode" else "a number",
            )
        m[key] = number
    elif key == "env":
        m["env"] = value
    else:
        raise InvalidValue(
            f"unexpected key '{key}' in '{fld}'{_did_you_mean(key, _MOUNT_KEYS)}",
            "keys: " + ", ".join(sorted(set(_MOUNT_KEYS))),
        )


@dataclass(frozen=True)
class Device:
    """``RUN --device`` (a CDI device; BuildKit builds it only in its labs channel)."""

    name: str
    required: bool = False


def _parse_device(spec: str) -> Device:
    try:
        fields = _csv_fields(spec)
    except InvalidValue as e:
        raise InvalidValue(f"failed to parse csv devices: {e.message}") from None
    name, required = "", False
    for fld in fields:
        key, has_value, value = fld.partition("=")
        key = go_lower(key)
        if not has_value:
            if key == "required":
                required = True
            elif not name:
                name = fld
            else:
                raise InvalidValue(f"invalid field '{fld}' must be a key=value pair")
        elif key == "name":
            if name:
                raise InvalidValue(f"device name already set to {name}")
            name = value
        elif key == "required":
            b = go_parse_bool(value)
            if b is None:
                raise InvalidValue(f"invalid value for {key}: {value}")
            required = b
        elif not name:
            name = fld
        else:
            raise InvalidValue(
                f"unexpected key '{key}' in '{fld}'{_did_you_mean(key, ('name', 'required'))}"
            )
    return Device(name=name, required=required)


# ---------------------------------------------------------------------------- dispatch-time values


def parse_signal(signal: str) -> int:
    """STOPSIGNAL's value as moby/sys/signal reads it on Linux: a number or a name."""
    number = go_atoi(signal)
    if number is not None:
        if number == 0:
            raise InvalidValue(f"invalid signal: {signal}", "e.g. SIGTERM or 15")
        return number
    name = go_upper(signal)
    name = name[3:] if name.startswith("SIG") else name
    value = _SIGNALS.get(name)
    if value is None:
        raise InvalidValue(f"invalid signal: {signal}", "e.g. SIGTERM or 15")
    return value


_SIGNALS: dict[str, int] = {
    "ABRT": 6, "ALRM": 14, "BUS": 7, "CHLD": 17, "CLD": 17, "CONT": 18, "FPE": 8, "HUP": 1,
    "ILL": 4, "INT": 2, "IO": 29, "IOT": 6, "KILL": 9, "PIPE": 13, "POLL": 29, "PROF": 27,
    "PWR": 30, "QUIT": 3, "SEGV": 11, "STKFLT": 16, "STOP": 19, "SYS": 31, "TERM": 15,
    "TRAP": 5, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "USR1": 10, "USR2": 12,
    "VTALRM": 26, "WINCH": 28, "XCPU": 24, "XFSZ": 25, "RTMIN": 34, "RTMAX": 64,
}  # fmt: skip
_SIGNALS.update({f"RTMIN+{i}": 34 + i for i in range(1, 16)})
_SIGNALS.update({f"RTMAX-{i}": 64 - i for i in range(1, 15)})


def _port_number(raw: str) -> int:
    if not raw:
        raise InvalidValue("value is empty")
    if go_atoi(raw) is None:
        # strconv's reason, without its "parsing ..." wrapper
        body = raw[1:] if raw[:1] in "+-" else raw
        syntax_ok = body and all(c in "0123456789" for c in body)
        raise InvalidValue("value out of range" if syntax_ok else "invalid syntax")
    port = int(raw)
    if not 0 <= port <= 65535:
        raise InvalidValue("value out of range (0\u201365535)")
    return port


def _port_range(ports: str) -> tuple[int, int]:
    if not ports:
        raise InvalidValue("empty string specified for ports")
    start, has_end, end = ports.partition("-")
    try:
        first = _port_number(start)
    except InvalidValue as e:
        raise InvalidValue(f"invalid start port '{start}': {e.message}") from None
    if not has_end or start == end:
        return first, first
    try:
        last = _port_number(end)
    except InvalidValue as e:
        raise InvalidValue(f"invalid end port '{end}': {e.message}") from None
    if last < first:
        raise InvalidValue("invalid port range: " + ports)
    return first, last


def _is_ip(text: str) -> bool:
    import ipaddress  # only reached for the rare EXPOSE ip:host:port form

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_ports(ports: Sequence[str]) -> list[str]:
    """EXPOSE's expanded words to ``port/proto`` entries, as BuildKit's dispatch reads them."""
    out: list[str] = []
    for raw in ports:
        parts = raw.split(":")
        ip = ":".join(parts[:-2])
        host_port = parts[-2] if len(parts) > 1 else ""
        container = parts[-1]
        port, _, proto = container.partition("/")
        if not port:
            raise InvalidValue(f"invalid port: {go_quote(raw)}: no port specified")
        if go_lower(proto) not in ("", "tcp", "udp", "sctp"):
            raise InvalidValue(
                f"invalid port: {go_quote(raw)}: invalid proto: {proto}", "tcp, udp or sctp"
            )
        proto = proto or "tcp"
        if ip.startswith("["):
            if not ip.endswith("]") or "]" in ip[1:-1]:
                raise InvalidValue(f"invalid IP address {ip}: address {ip}: missing port")
            ip = ip[1:-1]
        if ip and ("%" in ip or not _is_ip(ip)):  # Go's ParseIP takes no zone
            raise InvalidValue("invalid IP address: " + ip)
        try:
            start, end = _port_range(port)
        except InvalidValue:
            raise InvalidValue("invalid containerPort: " + port) from None
        if host_port:
            try:
                hstart, hend = _port_range(host_port)
            except InvalidValue:
                raise InvalidValue("invalid hostPort: " + host_port) from None
            if end - start != hend - hstart and end != start:
                raise InvalidValue(
                    f"invalid ranges specified for container and host Ports: {port} and {host_port}"
                )
        out.extend(f"{p}/{go_lower(proto)}" for p in range(start, end + 1))
    return out


# ---------------------------------------------------------------------------- instructions


class _SetOnce:
    """Fields are set once, by ``__init__``; changed copies come from dataclasses.replace.

    Frozen dataclasses would do the same, but cost twice as much to define: with the 25 classes
    here that was some 25 ms on every start-up that reads a Dockerfile.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        if name in self.__dict__:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


@dataclass(kw_only=True)
class Instruction(_SetOnce):
    """What every instruction has: where it is and how it was written."""

    NAME: ClassVar[str] = ""
    # Which of this instruction's fields BuildKit expands with the variables in scope.
    keyword: str  # the instruction word as written ("run", "Run", ...)
    line: int
    end_line: int
    original: str  # the instruction's text (continuations joined, heredoc bodies left out)
    comments: tuple[str, ...] = ()  # the comment lines right above it

    def __str__(self) -> str:
        return self.original


@dataclass(frozen=True)
class KeyValue:
    """One ENV or LABEL pair; ``legacy`` marks the ``ENV key value`` form."""

    key: str
    value: str
    legacy: bool = False

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


@dataclass(frozen=True)
class ArgDef:
    """One ARG name with its default (None: declared without ``=``)."""

    key: str
    value: str | None = None
    doc_comment: str = ""

    def __str__(self) -> str:
        return self.key if self.value is None else f"{self.key}={self.value}"


@dataclass(frozen=True)
class SourceContent:
    """A COPY/ADD heredoc source: a file named ``path`` holding ``data``."""

    path: str
    data: str  # already chomped for <<-
    expand: bool  # variables in ``data`` are expanded (unquoted delimiter)


@dataclass(frozen=True)
class InlineFile:
    """A heredoc attached to RUN (BuildKit's ShellInlineFile)."""

    name: str
    data: str  # as written; ``content`` is what the build uses
    chomp: bool = False

    @property
    def content(self) -> str:
        return Heredoc(self.name, chomp=self.chomp, content=self.data).chomped_content()


@dataclass(frozen=True)
class RunScript:
    """How BuildKit runs a RUN: ``args`` (before the shell is prepended) and, for a lone
    ``#!`` heredoc, the executable file to mount read-only under ``/dev/pipes/``."""

    args: tuple[str, ...]
    pipe_file: InlineFile | None = None
    pipe_dir: str = "/dev/pipes/"
    pipe_mode: int = 0o755


@dataclass(kw_only=True)
class _CommandLine(Instruction):
    """RUN/CMD/ENTRYPOINT body: exec form as given, or the shell form's single string."""

    command: tuple[str, ...] | None
    shell_form: bool  # BuildKit's PrependShell: wrap in SHELL (default /bin/sh -c)

    def argv(self, shell: Sequence[str] = DEFAULT_SHELL) -> list[str] | None:
        """The command as it lands in the image config or runs; None for ``ENTRYPOINT []``."""
        if self.shell_form:
            return [*shell, " ".join(self.command or ())]
        return None if self.command is None else list(self.command)


@dataclass(kw_only=True)
class From(Instruction):
    NAME: ClassVar[str] = "FROM"
    base: str  # image, stage or context, variables not yet expanded
    name: str = ""  # the stage name after AS, lower-cased
    platform: str = ""  # --platform, variables not yet expanded
    doc_comment: str = ""


@dataclass(kw_only=True)
class Run(_CommandLine):
    NAME: ClassVar[str] = "RUN"
    command: tuple[str, ...]
    files: tuple[InlineFile, ...] = ()
    mount_specs: tuple[str, ...] = ()  # raw --mount values
    mounts: tuple[Mount, ...] = ()  # parse-time view; the scope's expand() fills them in full
    network: str = "default"
    security: str = "sandbox"
    devices: tuple[Device, ...] = ()
    flags_used: tuple[str, ...] = ()

    def argv(self, shell: Sequence[str] = DEFAULT_SHELL, *, os: str = "linux") -> list[str]:
        """The process BuildKit starts: heredocs folded in (:meth:`script`), then the shell."""
        args = self.script(os).args
        return [*shell, " ".join(args)] if self.shell_form else list(args)

    @property
    def mount_sources(self) -> tuple[str, ...]:
        """The ``from=`` of each mount as written ("" = build context / scratch)."""
        return tuple(m.from_ for m in self.mounts)

    def script(self, os: str = "linux") -> RunScript:
        """The command BuildKit runs, heredocs folded in (dockerfile2llb dispatchRun)."""
        if not self.files:
            return RunScript(args=self.command)
        if len(self.command) != 1 or not self.shell_form:
            raise InvalidValue(f"parsing produced an invalid run command: {list(self.command)}")
        if must_parse_heredoc(self.command[0]) is not None:
            first = self.files[0]
            data = first.content
            if os != "windows" and data.startswith("#!"):
                return RunScript(
                    args=(posixpath.join("/dev/pipes/", first.name),),
                    pipe_file=InlineFile(first.name, data),
                )
            return RunScript(args=(data,))
        # several heredocs, or one inside a longer line: hand the shell the whole text
        text = self.command[0] + "".join(f"\n{f.data}{f.name}" for f in self.files)
        return RunScript(args=(text,))


@dataclass(kw_only=True)
class Cmd(_CommandLine):
    NAME: ClassVar[str] = "CMD"
    command: tuple[str, ...]


@dataclass(kw_only=True)
class Entrypoint(_CommandLine):
    NAME: ClassVar[str] = "ENTRYPOINT"
    # None for an empty command (``ENTRYPOINT []`` clears the entrypoint)


@dataclass(kw_only=True)
class Env(Instruction):
    NAME: ClassVar[str] = "ENV"
    pairs: tuple[KeyValue, ...]


@dataclass(kw_only=True)
class Label(Instruction):
    NAME: ClassVar[str] = "LABEL"
    pairs: tuple[KeyValue, ...]


@dataclass(kw_only=True)
class Maintainer(Instruction):
    NAME: ClassVar[str] = "MAINTAINER"
    maintainer: str


@dataclass(kw_only=True)
class Expose(Instruction):
    NAME: ClassVar[str] = "EXPOSE"
    ports: tuple[str, ...]  # sorted as text before expansion, as BuildKit does
    port_specs: tuple[str, ...] = ()  # "80/tcp"..., filled by the scope's expand()


@dataclass(kw_only=True)
class _Transfer(Instruction):
    sources: tuple[str, ...]  # paths, URLs or git refs
    contents: tuple[SourceContent, ...] = ()  # heredoc sources
    dest: str
    chown: str = ""
    chmod: str = ""
    link: bool = False
    excludes: tuple[str, ...] = ()


@dataclass(kw_only=True)
class Add(_Transfer):
    NAME: ClassVar[str] = "ADD"
    keep_git_dir: bool | None = None  # None: not given
    checksum: str = ""
    unpack: bool | None = None  # None: not given (archives unpack, URL downloads do not)


@dataclass(kw_only=True)
class Copy(_Transfer):
    NAME: ClassVar[str] = "COPY"
    from_: str = ""  # --from: stage name, stage index, image or context
    parents: bool = False


@dataclass(kw_only=True)
class Volume(Instruction):
    NAME: ClassVar[str] = "VOLUME"
    volumes: tuple[str, ...]


@dataclass(kw_only=True)
class User(Instruction):
    NAME: ClassVar[str] = "USER"
    user: str


@dataclass(kw_only=True)
class Workdir(Instruction):
    NAME: ClassVar[str] = "WORKDIR"
    path: str


@dataclass(kw_only=True)
class Arg(Instruction):
    NAME: ClassVar[str] = "ARG"
    args: tuple[ArgDef, ...]


@dataclass(kw_only=True)
class Onbuild(Instruction):
    NAME: ClassVar[str] = "ONBUILD"
    expression: str  # the trigger's text as stored in the image config (heredocs appended)
    trigger: str = ""  # the trigger's instruction word, upper-cased


@dataclass(frozen=True)
class HealthConfig:
    """The image config's Healthcheck; durations in nanoseconds, 0 = runtime default."""

    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    def describe(self) -> str:
        """Go's ``%+v`` of the config, as BuildKit writes it into the history."""
        return (
            f"{{Test:[{' '.join(self.test)}] Interval:{format_go_duration(self.interval)} "
            f"Timeout:{format_go_duration(self.timeout)} "
            f"StartPeriod:{format_go_duration(self.start_period)} "
            f"StartInterval:{format_go_duration(self.start_interval)} Retries:{self.retries}}}"
        )


@dataclass(kw_only=True)
class Healthcheck(Instruction):
    NAME: ClassVar[str] = "HEALTHCHECK"
    health: HealthConfig


@dataclass(kw_only=True)
class Stopsignal(Instruction):
    NAME: ClassVar[str] = "STOPSIGNAL"
    signal: str


@dataclass(kw_only=True)
class Shell(Instruction):
    NAME: ClassVar[str] = "SHELL"
    shell: tuple[str, ...]


AnyInstruction: TypeAlias = (
    From | Run | Cmd | Entrypoint | Env | Label | Maintainer | Expose | Add | Copy | Volume
    | User | Workdir | Arg | Onbuild | Healthcheck | Stopsignal | Shell
)  # fmt: skip

# ---------------------------------------------------------------------------- node -> instruction

_USAGE = {
    "add": "ADD [--chown=<user>:<group>] [--chmod=<perms>] <src>... <dest>",
    "arg": "ARG <name>[=<default value>] ...",
    "cmd": 'CMD ["executable","param1"] or CMD command param1',
    "copy": "COPY [--from=<stage>] [--chown=<user>:<group>] [--chmod=<perms>] <src>... <dest>",
    "entrypoint": 'ENTRYPOINT ["executable","param1"] or ENTRYPOINT command param1',
    "env": "ENV <key>=<value> ...",
    "expose": "EXPOSE <port>[/<protocol>] ...",
    "from": "FROM [--platform=<platform>] <image> [AS <name>]",
    "healthcheck": "HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE",
    "label": "LABEL <key>=<value> ...",
    "maintainer": "MAINTAINER <name>",
    "onbuild": "ONBUILD <INSTRUCTION>",
    "shell": 'SHELL ["executable", "parameters"]',
    "stopsignal": "STOPSIGNAL <signal>",
    "user": "USER <user>[:<group>]",
    "volume": "VOLUME <path> ...",
    "workdir": "WORKDIR <path>",
}


def _usage(name: str) -> str:
    return "usage: " + _USAGE[name]


def _at_least_one(name: str) -> InvalidValue:
    return InvalidValue(f"{name.upper()} requires at least one argument", _usage(name))


def _exactly_one(name: str) -> InvalidValue:
    return InvalidValue(f"{name.upper()} requires exactly one argument", _usage(name))


def _no_destination(name: str) -> InvalidValue:
    return InvalidValue(
        f"{name.upper()} requires at least two arguments, but only one was provided. "
        "Destination could not be determined",
        _usage(name),
    )


def _doc_comment(comments: Sequence[str], name: str) -> str:
    if not name:
        return ""
    for line in comments:
        if line.startswith(name + " "):
            return line[len(name) + 1 :]
    return ""


def _node_args(node: Node) -> list[str]:
    """BuildKit's nodeArgs: the Next chain, with ONBUILD's nested instruction flattened in."""
    if node.sub is not None:
        return [node.sub.cmd, *_node_args(node.sub)]
    return list(node.args)


class _Base(TypedDict):
    """The fields every instruction takes from its node."""

    keyword: str
    line: int
    end_line: int
    original: str
    comments: tuple[str, ...]


def _base(node: Node) -> _Base:
    return {
        "keyword": node.cmd,
        "line": node.start_line,
        "end_line": node.end_line,
        "original": go_trim_space(node.original),
        "comments": tuple(node.comments),
    }


def _kv_pairs(args: list[str], name: str) -> tuple[KeyValue, ...]:
    if not args:
        raise _at_least_one(name)
    if len(args) % 3:
        raise InvalidValue(f"Bad input to {name.upper()}, too many arguments", _usage(name))
    pairs = []
    for i in range(0, len(args), 3):
        key, value, sep = args[i : i + 3]
        if not key:
            raise InvalidValue(f"{name.upper()} names can not be blank", _usage(name))
        pairs.append(KeyValue(key, value, legacy=sep == ""))
    return tuple(pairs)


def _flags(node: Node, name: str) -> _Flags:
    return _parse_flags(node.flags, _FLAGS.get(name, _NO_FLAGS), name.upper())


def _shell_command(node: Node, args: list[str]) -> tuple[str, ...]:
    """handleJSONArgs: exec form as is, shell form joined into one string."""
    if not args:
        return ()
    return tuple(args) if node.json else (" ".join(args),)


def _parse_from(node: Node, args: list[str], b: _Base) -> From:
    name = ""
    if len(args) == 3 and _equal_fold(args[1], "as"):
        name = go_lower(args[2])
        if not re.fullmatch(r"[a-z][a-z0-9\-_.]*", name):
            raise InvalidValue(
                f"invalid name for build stage: {go_quote(args[2])}, "
                "name can't start with a number or contain symbols",
                "stage names match [a-z][a-z0-9-_.]*",
            )
    elif len(args) != 1:
        raise InvalidValue("FROM requires either one or three arguments", _usage("from"))
    flags = _flags(node, "from")
    return From(
        **b,
        base=args[0],
        name=name,
        platform=flags.values["platform"],
        doc_comment=_doc_comment(node.comments, name),
    )


def _parse_run(node: Node, args: list[str], b: _Base) -> Run:
    flags = _flags(node, "run")
    devices = tuple(_parse_device(d) for d in flags.lists["device"])
    mounts = tuple(parse_mount(m) for m in flags.lists["mount"])
    network = flags.values["network"]
    if network not in NETWORK_MODES:
        raise InvalidValue(
            f"invalid network mode {go_quote(network)}", "use " + ", ".join(NETWORK_MODES)
        )
    security = flags.values["security"]
    if security not in SECURITY_MODES:
        raise InvalidValue(
            f"security {go_quote(security)} is not valid", "use " + ", ".join(SECURITY_MODES)
        )
    return Run(
        **b,
        command=_shell_command(node, args),
        shell_form=not node.json,
        files=tuple(InlineFile(h.name, h.content, h.chomp) for h in node.heredocs),
        mount_specs=tuple(flags.lists["mount"]),
        mounts=mounts,
        network=network,
        security=security,
        devices=devices,
        flags_used=tuple(flags.used),
    )


def _sources_and_dest(
    node: Node, args: list[str], name: str
) -> tuple[tuple[str, ...], tuple[SourceContent, ...], str]:
    *srcs, dest = args
    if must_parse_heredoc(dest) is not None:
        raise InvalidValue(
            f"{name.upper()} cannot accept a heredoc as a destination",
            "heredocs can only be sources",
        )
    bodies = {h.name: h.content for h in node.heredocs}
    paths: list[str] = []
    contents: list[SourceContent] = []
    for src in srcs:
        doc = must_parse_heredoc(src)
        if doc is None:
            paths.append(src)
            continue
        # A heredoc word with no body (e.g. in the JSON form) gives an empty file, as BuildKit.
        doc.content = bodies.get(doc.name, "")
        contents.append(SourceContent(doc.name, doc.chomped_content(), doc.expand))
    return tuple(paths), tuple(contents), dest


def _parse_add(node: Node, args: list[str], b: _Base) -> Add:
    if len(args) < 2:
        raise _no_destination("add")
    flags = _flags(node, "add")
    sources, contents, dest = _sources_and_dest(node, args, "add")
    return Add(
        **b,
        sources=sources,
        contents=contents,
        dest=dest,
        chown=flags.values["chown"],
        chmod=flags.values["chmod"],
        link=flags.true("link"),
        keep_git_dir=flags.given("keep-git-dir"),
        checksum=flags.values["checksum"],
        unpack=flags.given("unpack"),
        excludes=tuple(flags.lists["exclude"]),
    )


def _parse_copy(node: Node, args: list[str], b: _Base) -> Copy:
    if len(args) < 2:
        raise _no_destination("copy")
    flags = _flags(node, "copy")
    sources, contents, dest = _sources_and_dest(node, args, "copy")
    return Copy(
        **b,
        sources=sources,
        contents=contents,
        dest=dest,
        chown=flags.values["chown"],
        chmod=flags.values["chmod"],
        link=flags.true("link"),
        excludes=tuple(flags.lists["exclude"]),
        from_=flags.values["from"],
        parents=flags.true("parents"),
    )


def _duration_flag(flags: _Flags, name: str) -> int:
    text = flags.values[name]
    if not text:
        return 0
    try:
        d = parse_go_duration(text)
    except InvalidValue as e:
        raise InvalidValue(e.message, f"--{name} takes a duration such as 30s or 1m30s") from None
    if d != 0 and d < 1_000_000:
        raise InvalidValue(
            f"Interval {go_quote(name)} cannot be less than 1ms", "use 0 or at least 1ms"
        )
    return d


def _parse_healthcheck(node: Node, args: list[str], b: _Base) -> Healthcheck:
    if not args:
        raise _at_least_one("healthcheck")
    kind = go_upper(args[0])
    rest = args[1:]
    if kind == "NONE":
        if rest:
            raise InvalidValue("HEALTHCHECK NONE takes no arguments", "write HEALTHCHECK NONE")
        return Healthcheck(**b, health=HealthConfig(test=(kind,)))
    flags = _flags(node, "healthcheck")
    if kind != "CMD":
        raise InvalidValue(
            f"Unknown type {go_quote(kind)} in HEALTHCHECK (try CMD)", _usage("healthcheck")
        )
    command = _shell_command(node, rest)
    if not command:
        raise InvalidValue("Missing command after HEALTHCHECK CMD", _usage("healthcheck"))
    test = ("CMD" if node.json else "CMD-SHELL", *command)
    interval = _duration_flag(flags, "interval")
    timeout = _duration_flag(flags, "timeout")
    start_period = _duration_flag(flags, "start-period")
    start_interval = _duration_flag(flags, "start-interval")
    retries = 0
    if text := flags.values["retries"]:
        number = go_atoi(text)
        if number is None or not -(1 << 31) <= number < 1 << 31:
            body = text[1:] if text[:1] in "+-" else text
            why = "value out of range" if body.isascii() and body.isdigit() else "invalid syntax"
            raise InvalidValue(f"strconv.ParseInt: parsing {go_quote(text)}: {why}")
        if number < 0:
            raise InvalidValue(f"--retries cannot be negative ({number})")
        retries = number
    health = HealthConfig(test, interval, timeout, start_period, start_interval, retries)
    return Healthcheck(**b, health=health)


def _parse_onbuild(node: Node, args: list[str], b: _Base) -> Onbuild:
    if not args:
        raise _at_least_one("onbuild")
    _flags(node, "onbuild")
    trigger = go_upper(go_trim_space(args[0]))
    if trigger == "ONBUILD":
        raise InvalidValue(
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", "give one trigger per ONBUILD"
        )
    if trigger in ("MAINTAINER", "FROM"):
        raise InvalidValue(f"{trigger} isn't allowed as an ONBUILD trigger")
    # Go's \s is [\t\n\f\r ]: spelled out, since Python's also takes \v.
    expression = re.sub(r"(?i)\A[\t\n\f\r ]*ONBUILD[\t\n\f\r ]*", "", node.original, count=1)
    expression += "".join(f"\n{h.content}{h.name}" for h in node.heredocs)
    return Onbuild(**b, expression=expression, trigger=trigger)


def _parse_arg(node: Node, args: list[str], b: _Base) -> Arg:
    if not args:
        raise _at_least_one("arg")
    defs = []
    for word in args:  # ARG takes no flags, and BuildKit never even looks at them
        key, has_value, value = word.partition("=")
        if has_value and not key:
            raise InvalidValue("ARG names can not be blank", _usage("arg"))
        defs.append(ArgDef(key, value if has_value else None, _doc_comment(node.comments, key)))
    return Arg(**b, args=tuple(defs))


def _parse_shell(node: Node, args: list[str], b: _Base) -> Shell:
    _flags(node, "shell")
    shell = _shell_command(node, args)
    if not shell:
        raise _at_least_one("shell")
    if not node.json:
        raise InvalidValue("SHELL requires the arguments to be in JSON form", _usage("shell"))
    return Shell(**b, shell=shell)


def _one_arg(node: Node, args: list[str], name: str) -> str:
    if len(args) != 1:
        raise _exactly_one(name)
    _flags(node, name)
    return args[0]


def _parse_env(node: Node, args: list[str], b: _Base) -> Env:
    _flags(node, "env")
    return Env(**b, pairs=_kv_pairs(args, "env"))


def _parse_label(node: Node, args: list[str], b: _Base) -> Label:
    _flags(node, "label")
    return Label(**b, pairs=_kv_pairs(args, "label"))


def _parse_maintainer(node: Node, args: list[str], b: _Base) -> Maintainer:
    return Maintainer(**b, maintainer=_one_arg(node, args, "maintainer"))


def _parse_workdir(node: Node, args: list[str], b: _Base) -> Workdir:
    return Workdir(**b, path=_one_arg(node, args, "workdir"))


def _parse_user(node: Node, args: list[str], b: _Base) -> User:
    return User(**b, user=_one_arg(node, args, "user"))


def _parse_stopsignal(node: Node, args: list[str], b: _Base) -> Stopsignal:
    if len(args) != 1:
        raise _exactly_one("stopsignal")
    return Stopsignal(**b, signal=args[0])  # BuildKit never parses STOPSIGNAL's flags


def _parse_cmd(node: Node, args: list[str], b: _Base) -> Cmd:
    _flags(node, "cmd")
    return Cmd(**b, command=_shell_command(node, args), shell_form=not node.json)


def _parse_entrypoint(node: Node, args: list[str], b: _Base) -> Entrypoint:
    _flags(node, "entrypoint")
    command = _shell_command(node, args) or None
    return Entrypoint(**b, command=command, shell_form=not node.json)


def _parse_expose(node: Node, args: list[str], b: _Base) -> Expose:
    if not args:
        raise _at_least_one("expose")
    _flags(node, "expose")
    return Expose(**b, ports=tuple(sorted(args, key=_go_string_key)))


def _parse_volume(node: Node, args: list[str], b: _Base) -> Volume:
    if not args:
        raise _at_least_one("volume")
    _flags(node, "volume")
    volumes = tuple(go_trim_space(v) for v in args)
    if "" in volumes:
        raise InvalidValue("VOLUME specified can not be an empty string", _usage("volume"))
    return Volume(**b, volumes=volumes)


def _go_string_key(s: str) -> bytes:
    """Go compares strings by their UTF-8 bytes."""
    return s.encode("utf-8", "surrogateescape")


def _unknown_instruction(cmd: str) -> InvalidValue:
    names = [n.upper() for n in INSTRUCTIONS]
    suffix = _did_you_mean(cmd, names, case_sensitive=False)
    if suffix:
        return InvalidValue(f"unknown instruction: {cmd}{suffix}")
    # BuildKit stops at edit distance 2; a looser match still helps a reader.
    import difflib  # only on this error path

    close = difflib.get_close_matches(go_upper(cmd), names, n=1)
    hint = f"did you mean {close[0]}?" if close else "instructions: " + ", ".join(names)
    return InvalidValue(f"unknown instruction: {cmd}", hint)


# Each parser checks in BuildKit's order (argument count, flags, then values), since the
# first problem found is the one reported.
_PARSERS: dict[str, Callable[[Node, list[str], _Base], Instruction]] = {
    "add": _parse_add,
    "arg": _parse_arg,
    "cmd": _parse_cmd,
    "copy": _parse_copy,
    "entrypoint": _parse_entrypoint,
    "env": _parse_env,
    "expose": _parse_expose,
    "from": _parse_from,
    "healthcheck": _parse_healthcheck,
    "label": _parse_label,
    "maintainer": _parse_maintainer,
    "onbuild": _parse_onbuild,
    "run": _parse_run,
    "shell": _parse_shell,
    "stopsignal": _parse_stopsignal,
    "user": _parse_user,
    "volume": _parse_volume,
    "workdir": _parse_workdir,
}


def parse_instruction(node: Node, *, file: str = "Dockerfile") -> Instruction:
    """One parser node as a typed instruction; raises :class:`InstructionError`."""
    try:
        parse = _PARSERS.get(node.name)
        if parse is None:
            raise _unknown_instruction(node.cmd)
        return parse(node, _node_args(node), _base(node))
    except InvalidValue as e:
        raise InstructionError(e.message, file=file, line=node.start_line, hint=e.hint) from None


def parse_trigger(expression: str, *, file: str = "Dockerfile", line: int = 0) -> Instruction:
    """An ONBUILD trigger read back from a base image, at the line of the FROM that runs it.

    As BuildKit: one instruction only, and not FROM (nor anything that is not a command).
    """
    try:
        result = parse_text(expression, file=file)
    except LocatedError as e:  # its lines count from the trigger's text: point at the FROM
        raise InstructionError(e.message, file=file, line=line, hint=e.hint) from None
    if len(result.nodes) != 1:
        raise InstructionError(
            "onbuild trigger should be a single expression", file=file, line=line
        )
    node = result.nodes[0]
    node.start_line = node.end_line = line
    if node.sub is not None:
        node.sub.start_line = node.sub.end_line = line
    instr = parse_instruction(node, file=file)
    if isinstance(instr, From):
        raise InstructionError(
            "*instructions.Stage is not a command type", file=file, line=line,
            hint="a base image's ONBUILD trigger cannot be FROM",
        )  # fmt: skip
    return instr


# ---------------------------------------------------------------------------- stages


@dataclass
class Stage(_SetOnce):
    """A FROM and the instructions up to the next FROM."""

    index: int
    from_: From
    commands: tuple[Instruction, ...]

    @property
    def name(self) -> str:
        """The AS name (lower-cased), "" when unnamed."""
        return self.from_.name

    @property
    def display_name(self) -> str:
        """BuildKit's name for progress and errors: the AS name, else ``stage-N``."""
        return self.from_.name or f"stage-{self.index}"


@dataclass
class Dockerfile(_SetOnce):
    """A parsed and checked Dockerfile."""

    result: ParseResult
    file: str
    instructions: tuple[Instruction, ...]  # every instruction, in file order
    stages: tuple[Stage, ...]
    meta_args: tuple[Arg, ...]  # the ARGs before the first FROM

    @property
    def directives(self) -> dict[str, str]:
        return self.result.directives

    @property
    def escape(self) -> str:
        return self.result.escape

    def find_stage(self, name: str) -> Stage | None:
        """The stage named ``name`` (any case); with duplicates, the last, as BuildKit."""
        wanted = go_lower(name)
        found = None
        for stage in self.stages:
            if stage.name and stage.name == wanted:
                found = stage
        return found

    def target(self, name: str | None = None) -> Stage:
        """The stage to build: ``name``, or the last stage."""
        if not name:
            return self.stages[-1]
        stage = self.find_stage(name)
        if stage is None:
            names = [s.name for s in self.stages if s.name]
            raise LocatedError(
                f"target stage {go_quote(name)} could not be found{_did_you_mean(name, names)}",
                file=self.file,
                hint="stages: " + (", ".join(names) or "(none named)"),
            )
        return stage


def parse_dockerfile(text: str, *, file: str = "Dockerfile") -> Dockerfile:
    """Parse and check Dockerfile text; raises :class:`soute.errors.LocatedError`.

    As BuildKit's instructions.Parse: ARGs before the first FROM are global (meta) ARGs, any
    other instruction there is an error, and errors come in file order.
    """
    result = parse_text(text, file=file)
    instructions: list[Instruction] = []
    stages: list[tuple[From, list[Instruction]]] = []
    meta: list[Arg] = []
    for node in result.nodes:
        instr = parse_instruction(node, file=file)
        instructions.append(instr)
        if isinstance(instr, From):
            stages.append((instr, []))
        elif stages:
            stages[-1][1].append(instr)
        elif isinstance(instr, Arg):
            meta.append(instr)
        else:
            raise InstructionError(
                "no build stage in current context",
                file=file,
                line=instr.line,
                hint="only ARG may come before the first FROM",
            )
    if not stages:
        raise LocatedError(
            "dockerfile contains no stages to build", file=file, hint="add a FROM line"
        )
    return Dockerfile(
        result=result,
        file=file,
        instructions=tuple(instructions),
        stages=tuple(Stage(i, f, tuple(c)) for i, (f, c) in enumerate(stages)),
        meta_args=tuple(meta),
    )
