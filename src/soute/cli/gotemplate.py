"""Go's text/template over JSON-shaped data, as ``docker inspect --format`` uses it.

Enough of the language for what people write on a command line: fields (``.Config.Env``),
``{{range}}``, ``{{if}}``/``{{else}}``, ``{{with}}``, pipelines (``.Name | upper``), string,
number and boolean literals, ``{{-``/``-}}`` trimming, and the functions docker adds or
people reach for: ``json``, ``index``, ``join``, ``split``, ``len``, ``lower``, ``upper``,
``title``, ``printf``, ``print``, ``println``, ``eq``, ``ne``, ``not``, ``and``, ``or``.
Values print as Go's ``%v`` does (``[a b]``, ``map[k:v]``, ``<no value>`` for a missing key).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from soute.errors import SouteError

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|`[^`]*`|\||\(|\)|[^\s|()]+)')
_MISSING = object()  # a map key that is not there: Go prints <no value>


class TemplateError(SouteError):
    pass


def render(template: str, data: Any) -> str:
    """``template`` applied to ``data``."""
    nodes, rest = _parse(_lex(template), template, top=True)
    assert not rest
    out: list[str] = []
    _run(nodes, data, out)
    return "".join(out)


# ---------------------------------------------------------------------------- parsing

def _lex(template: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", s) pieces, trim markers applied."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m[1]:
            text = text.rstrip()
        if pieces and pieces[-1][0] == "trim":
            pieces.pop()
            text = text.lstrip()
        if text:
            pieces.append(("text", text))
        pieces.append(("action", m[2].strip()))
        if m[3]:
            pieces.append(("trim", ""))
        pos = m.end()
    text = template[pos:]
    if pieces and pieces[-1][0] == "trim":
        pieces.pop()
        text = text.lstrip()
    if text:
        pieces.append(("text", text))
    return pieces


Node = tuple[Any, ...]


def _parse(pieces: list[tuple[str, str]], template: str, *, top: bool = False,
           ) -> tuple[list[Node], list[tuple[str, str]]]:
    """Nodes up to an ``else``/``end`` (left at the head of the rest) or the end."""
    nodes: list[Node] = []
    while pieces:
        kind, text = pieces[0]
        if kind == "text":
            nodes.append(("text", text))
            pieces = pieces[1:]
            continue
        word = text.split(None, 1)[0] if text else ""
        if word in ("end", "else"):  # closes the block being parsed
            if top:
                raise TemplateError(f"template: unexpected {{{{{word}}}}} in {template!r}")
            return nodes, pieces
        pieces = pieces[1:]
        if word in ("range", "if", "with"):
            node, pieces = _block(word, text[len(word):], pieces, template)
            if not pieces or pieces[0][1] != "end":
                raise TemplateError(f"template: unexpected EOF in {template!r}",
                                    f"close {{{{{word}}}}} with {{{{end}}}}")
            pieces = pieces[1:]
            nodes.append(node)
        elif text.startswith("/*"):
            continue  # a comment
        else:
            nodes.append(("pipe", _pipeline(text, template)))
    return nodes, pieces


def _block(word: str, pipe: str, pieces: list[tuple[str, str]], template: str,
           ) -> tuple[Node, list[tuple[str, str]]]:
    """A range/if/with block up to its ``end`` (left in the rest); ``{{else if X}}`` is an
    if block inside the else branch, closed by the same ``end``."""
    body, pieces = _parse(pieces, template)
    alt: list[Node] = []
    if pieces and pieces[0][1].split(None, 1)[0] == "else":
        chained = pieces[0][1][4:].strip()
        if chained.split(None, 1)[0:1] in (["if"], ["with"]):
            inner = chained.split(None, 1)[0]
            node, pieces = _block(inner, chained[len(inner):], pieces[1:], template)
            alt = [node]
        else:
            alt, pieces = _parse(pieces[1:], template)
    return (word, _pipeline(pipe, template), body, alt), pieces


def _pipeline(text: str, template: str) -> list[list[Any]]:
    tokens = _TOKEN.findall(text)
    if not tokens:
        raise TemplateError(f"template: missing value in {template!r}")
    commands: list[list[Any]] = [[]]
    for tok in tokens:
        if tok == "|":
            commands.append([])
        elif tok in ("(", ")"):
            raise TemplateError(f"template: parentheses are not supported in {template!r}",
                                "write a pipeline: {{.A | json}}")
        else:
            commands[-1].append(_operand(tok, template))
    if any(not c for c in commands):
        raise TemplateError(f"template: missing command in {template!r}")
    return commands


def _operand(tok: str, template: str) -> Any:
    if tok.startswith('"'):
        return ("lit", json.loads(tok))
    if tok.startswith("`"):
        return ("lit", tok[1:-1])
    if tok in ("true", "false"):
        return ("lit", tok == "true")
    if tok == "nil":
        return ("lit", None)
    if re.fullmatch(r"-?\d+", tok):
        return ("lit", int(tok))
    if re.fullmatch(r"-?\d+\.\d*", tok):
        return ("lit", float(tok))
    if tok == "." or re.fullmatch(r"(\.[A-Za-z_][A-Za-z0-9_]*)+", tok):
        return ("field", [p for p in tok.split(".") if p])
    if tok in FUNCTIONS:
        return ("func", tok)
    raise TemplateError(f'template: function "{tok}" not defined', f"in {template!r}")


# ---------------------------------------------------------------------------- running

def _run(nodes: list[Node], dot: Any, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "pipe":
            out.append(go_print(_eval(node[1], dot)))
        else:
            value = _eval(node[1], dot)
            _, _, body, alt = node
            if kind == "range":
                items = ([value[k] for k in sorted(value)] if isinstance(value, dict)
                         else value if isinstance(value, list) else None)
                if value not in (None, _MISSING) and items is None:
                    raise TemplateError(f"template: range can't iterate over {go_print(value)}")
                if items:
                    for item in items:
                        _run(body, item, out)
                else:
                    _run(alt, dot, out)
            elif _truth(value):
                _run(body, value if kind == "with" else dot, out)
            else:
                _run(alt, dot, out)


def _eval(pipe: list[list[Any]], dot: Any) -> Any:
    value: Any = _MISSING
    for i, command in enumerate(pipe):
        args = [_value(op, dot) for op in command[1:]]
        if i > 0:
            args.append(value)
        head = command[0]
        if head[0] == "func":
            value = FUNCTIONS[head[1]](*args)
        elif args:
            raise TemplateError("template: can't give arguments to a non-function")
        else:
            value = _value(head, dot)
    return value


def _value(op: Any, dot: Any) -> Any:
    kind, arg = op
    if kind == "lit":
        return arg
    if kind == "func":
        return FUNCTIONS[arg]()
    value = dot
    for name in arg:
        if isinstance(value, dict):
            value = value.get(name, _MISSING)
        elif value is None or value is _MISSING:
            return _MISSING
        else:
            raise TemplateError(f"template: can't evaluate field {name} in type "
                                f"{_go_type(value)}")
    return value


def _truth(value: Any) -> bool:
    return value is not _MISSING and bool(value)


def _go_type(value: Any) -> str:
    return {str: "string", bool: "bool", int: "int", float: "float64",
            list: "[]interface {}"}.get(type(value), "interface {}")


def go_print(value: Any) -> str:
    """Go's ``%v`` of a JSON value."""
    if value is _MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float):  # rare here: inspect's numbers are integers
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, list):
        return "[" + " ".join(go_print(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_print(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def _json(value: Any) -> str:
    from soute.image.gojson import dumps

    return dumps(None if value is _MISSING else value)


def _index(value: Any, *keys: Any) -> Any:
    """Go's ``index``: a key missing from a map (or a null map) gives the zero value, which
    for docker's maps of strings is ""."""
    for key in keys:
        if value is None or value is _MISSING:
            return ""
        if isinstance(value, dict):
            value = value.get(key, "")
        elif isinstance(value, (list, str)) and isinstance(key, int):
            if not 0 <= key < len(value):
                raise TemplateError(f"template: index out of range: {key}")
            value = value[key]
        else:
            raise TemplateError(f"template: can't index item of type {_go_type(value)}")
    return value


def _printf(fmt: str, *args: Any) -> str:
    """Go's ``printf`` for the verbs people use: %v %s %d %q %x %f, flags, width and
    precision."""
    it = iter(args)

    def one(m: re.Match[str]) -> str:
        if m[0] == "%%":
            return "%"
        flags, width, precision, verb = m[1], m[2] or "", m[3], m[4]
        spec = "%" + flags + width + ("." + precision if precision is not None else "")
        v = next(it, _MISSING)
        if verb == "d" and isinstance(v, int) and not isinstance(v, bool):
            return (spec + "d") % v
        if verb == "f" and isinstance(v, (int, float)) and not isinstance(v, bool):
            return (spec + "f") % v
        if verb == "x" and isinstance(v, int) and not isinstance(v, bool):
            return (spec + "x") % v
        text = go_print(v)
        if verb == "x":
            text = text.encode().hex()
        elif verb == "q":
            text = json.dumps(text, ensure_ascii=False)
        return (spec + "s") % text

    return re.sub(r"%%|%([-+# 0]*)(\d+)?(?:\.(\d+))?([vsdqxf])", one, fmt)


def _len(value: Any) -> int:
    if isinstance(value, (str, list, dict)):
        return len(value)
    raise TemplateError(f"template: len of type {_go_type(value)}")


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "json": _json,
    "index": _index,
    "join": lambda items, sep: sep.join(go_print(i) for i in (items or [])),
    "split": lambda s, sep: s.split(sep),
    "len": _len,
    "lower": lambda s: go_print(s).lower(),
    "upper": lambda s: go_print(s).upper(),
    "title": lambda s: go_print(s).title(),
    "printf": _printf,
    "print": lambda *a: "".join(go_print(v) for v in a),
    "println": lambda *a: " ".join(go_print(v) for v in a) + "\n",
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truth(a),
    "and": lambda *a: next((v for v in a if not _truth(v)), a[-1]),
    "or": lambda *a: next((v for v in a if _truth(v)), a[-1]),
}
