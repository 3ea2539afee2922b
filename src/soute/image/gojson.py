"""JSON written the way Go's ``encoding/json`` writes it, so digests match what docker and
BuildKit produce for the same document.

What Go does and ``json.dumps`` does not:

- ``<``, ``>``, ``&``, U+2028 and U+2029 inside strings are escaped as ``\\u003c`` and so on
  (``"RUN a \\u0026\\u0026 b"`` in every docker image config);
- other non-ASCII text is written as UTF-8, not ``\\uXXXX``;
- floats use ``strconv`` formatting (``1e+21``, ``1e-7``, ``100``, never ``100.0``);
- ``MarshalIndent`` puts ``": "`` after keys and no space after commas at line ends.

Key order is the caller's: dicts are written in insertion order (Go writes struct fields in
declaration order and map keys sorted; the typed classes build their dicts that way).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from json.encoder import encode_basestring

from soute.errors import SouteError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from typing import Any

# Go escapes U+2028/U+2029 always, and <, >, & unless told not to (SetEscapeHTML(false): the
# Engine API's responses, hence ``docker inspect`` output).
_GO_ESCAPES = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029"})
_GO_HTML_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def go_string(s: str, *, escape_html: bool = True) -> str:
    """A JSON string literal as Go writes it."""
    return encode_basestring(s).translate(_GO_HTML_ESCAPES if escape_html else _GO_ESCAPES)


def go_float(f: float) -> str:
    """A float as ``encoding/json`` writes it (shortest digits, Go's exponent rules)."""
    if math.isnan(f) or math.isinf(f):
        raise SouteError(f"cannot write {f!r} as JSON")
    r = repr(f)  # shortest round-trip digits, like strconv's -1 precision
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        mantissa, _, exp = r.partition("e")
        mantissa = mantissa.removesuffix(".0")
        sign = exp[0]
        digits = exp[1:].lstrip("0") or "0"
        if sign == "+" and len(digits) < 2:
            digits = digits.rjust(2, "0")
        return f"{mantissa}e{sign}{digits}"
    from decimal import Decimal  # rare (floats only appear in unknown keys): import when needed

    text = format(Decimal(r), "f")
    return text.removesuffix(".0") if "." in text else text


def dumps(obj: Any, *, indent: int | None = None, escape_html: bool = True) -> str:
    """Encode ``obj`` like ``json.Marshal`` (or ``json.MarshalIndent(obj, "", " " * indent)``);
    ``escape_html=False`` as an encoder with ``SetEscapeHTML(false)``."""
    parts: list[str] = []
    table = _GO_HTML_ESCAPES if escape_html else _GO_ESCAPES
    _encode(obj, parts, indent, 0, lambda s: encode_basestring(s).translate(table))
    return "".join(parts)


def dumpb(obj: Any, *, indent: int | None = None) -> bytes:
    """:func:`dumps` as UTF-8 bytes: the blob to hash and store."""
    return dumps(obj, indent=indent).encode()


def loads(data: bytes | str, what: str = "JSON document") -> Any:
    """Decode JSON strictly as UTF-8 text; errors name ``what``."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        return json.loads(text)
    except (UnicodeDecodeError, ValueError) as err:
        raise SouteError(f"invalid {what}: {err}") from None


def _encode(
    obj: Any, out: list[str], indent: int | None, level: int, string: Callable[[str], str]
) -> None:
    if isinstance(obj, str):
        out.append(string(obj))
    elif obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, int):
        out.append(str(int(obj)))
    elif isinstance(obj, float):
        out.append(go_float(obj))
    elif isinstance(obj, dict):
        if not obj:
            out.append("{}")
            return
        out.append("{")
        inner = _newline(indent, level + 1)
        for i, (key, value) in enumerate(obj.items()):
            if not isinstance(key, str):
                raise SouteError(f"cannot write JSON object key {key!r}")
            if i:
                out.append(",")
            out.append(inner)
            out.append(string(key))
            out.append(": " if indent is not None else ":")
            _encode(value, out, indent, level + 1, string)
        out.append(_newline(indent, level))
        out.append("}")
    elif isinstance(obj, list | tuple):
        if not obj:
            out.append("[]")
            return
        out.append("[")
        inner = _newline(indent, level + 1)
        for i, value in enumerate(obj):
            if i:
                out.append(",")
            out.append(inner)
            _encode(value, out, indent, level + 1, string)
        out.append(_newline(indent, level))
        out.append("]")
    else:
        raise SouteError(f"cannot write {type(obj).__name__} as JSON")


def _newline(indent: int | None, level: int) -> str:
    return "" if indent is None else "\n" + " " * (indent * level)
