"""Go's text/template over JSON-shaped data, as ``docker inspect --format`` uses it.

What people write on a command line: fields (``.Config.Env``), variables (``$``,
``{{range $k, $v := .Labels}}``), parentheses (``{{(index .RepoTags 0)}}``,
``{{(index $v 0).HostPort}}``), ``{{range}}``, ``{{if}}``/``{{else if}}``/``{{else}}``,
``{{with}}``, pipelines (``.Name | upper``), literals, ``{{-``/``-}}`` trimming, comments, and
the functions of Go and docker: ``json``, ``index``, ``len``, ``join``, ``split``, ``lower``,
``upper``, ``title``, ``pad``, ``truncate``, ``printf``, ``print``, ``println``, ``eq``, ``ne``,
``lt``, ``le``, ``gt``, ``ge``, ``not``, ``and``, ``or``.

docker runs templates on Go structs, whose types the JSON lost: a null slice prints ``[]``
and a null map ``map[]`` (by the field's name), the values of ``ExposedPorts`` and
``Volumes`` (empty structs) print ``{}``, and ``LastTagTime`` prints as Go's ``time.Time``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from soute.errors import SouteError

_ACTION = re.compile(r"\{\{(-\s)?((?:\"(?:[^\"\\]|\\.)*\"|`[^`]*`|.)*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)'
    r"|(?P<var>\$[A-Za-z0-9_]*)|(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)"
    r"|(?P<op>:=|[()|,=])|(?P<ident>[A-Za-z_][A-Za-z0-9_]*))")
_MISSING = object()  # a map key that is not there: Go prints <no value>
_STRICT = " strict"  # in the root scope: no template variable can be named so

# Fields of docker's inspect structs that are slices or maps: null prints as their zero value.
_SLICES = frozenset({
    "Entrypoint", "Cmd", "OnBuild", "Shell", "Env", "RepoTags", "RepoDigests", "Layers",
    "Mounts", "Binds", "Dns", "DnsOptions", "DnsSearch", "ExtraHosts", "CapAdd", "CapDrop",
    "Links", "Devices", "SecurityOpt", "Args", "ExecIDs", "GroupAdd", "VolumesFrom",
    "DeviceRequests", "DeviceCgroupRules", "MaskedPaths", "ReadonlyPaths"})
_MAPS = frozenset({
    "Labels", "ExposedPorts", "Volumes", "Data", "Ports", "PortBindings", "Tmpfs", "Sysctls",
    "StorageOpt", "Networks", "Annotations"})
_EMPTY_STRUCT_MAPS = frozenset({"ExposedPorts", "Volumes"})
# The fields of docker's image inspect structs (types.ImageInspect and container.Config) that
# its JSON leaves out when empty: a template reads their zero value, not an error.
_STRUCT_FIELDS = {
    "": frozenset({"Id", "RepoTags", "RepoDigests", "Parent", "Comment", "Created",
                   "DockerVersion", "Author", "Config", "Architecture", "Variant", "Os",
                   "OsVersion", "Size", "GraphDriver", "RootFS", "Metadata"}),
    "Config": frozenset({"Hostname", "Domainname", "User", "AttachStdin", "AttachStdout",
                         "AttachStderr", "ExposedPorts", "Tty", "OpenStdin", "StdinOnce",
                         "Env", "Cmd", "Healthcheck", "ArgsEscaped", "Image", "Volumes",
                         "WorkingDir", "Entrypoint", "NetworkDisabled", "MacAddress",
                         "OnBuild", "Labels", "StopSignal", "StopTimeout", "Shell"}),
}
_NIL_POINTERS = frozenset({"Healthcheck", "StopTimeout"})  # print <nil>
_BOOLS = frozenset({"AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin",
                    "StdinOnce", "ArgsEscaped", "NetworkDisabled"})


def _zero(name: str) -> Any:
    """The zero value docker's struct has for a field its JSON left out."""
    if name in _NIL_POINTERS:
        return None
    if name in _BOOLS:
        return False
    if name == "Size":
        return 0
    return _typed(name, None) if name in _SLICES or name in _MAPS else ""


class TemplateError(SouteError):
    pass


class _NilSlice(list):  # type: ignore[type-arg]
    """A null slice: empty, printed ``[]``, JSON ``null``."""


class _NilMap(dict):  # type: ignore[type-arg]
    """A null map: empty, printed ``map[]``, JSON ``null``."""


class _Struct(dict):  # type: ignore[type-arg]
    """An empty struct value: printed ``{}``."""


def check(template: str) -> None:
    """Parse ``template`` only: its syntax errors before there is anything to render."""
    _parse(_lex(template), template, top=True)


def render(template: str, data: Any, *, strict: bool = True) -> str:
    """``template`` applied to ``data``. ``strict``: ``data`` has every field of the docker
    struct it stands for, so a field it lacks is an error, as in docker (maps excepted); else
    it prints ``<no value>``."""
    nodes, rest = _parse(_lex(template), template, top=True)
    assert not rest
    out: list[str] = []
    _run(nodes, data, [{"$": data, _STRICT: strict}], out)
    return "".join(out)


def print_inspected(items: list[Any], errors: list[SouteError], template: str | None,
                    partial: Sequence[bool] = ()) -> int:
    """What docker's ``inspect`` prints: the items found (JSON, or ``template`` applied to
    each: an item it fails on is an error too), then one line per error; exit code 1 if
    any. With a template and nothing to show, an empty line (docker's Flush). ``partial``
    marks items that lack some of docker's fields (see :func:`render`'s ``strict``)."""
    import sys

    if template:
        shown = []
        for i, item in enumerate(items):
            try:
                strict = not (i < len(partial) and partial[i])
                shown.append(render(template, item, strict=strict) + "\n")
            except TemplateError as e:
                errors.append(e)
        sys.stdout.write("".join(shown) or "\n")
    else:
        from soute.image.gojson import dumps

        print(dumps(items, indent=4, escape_html=False))
    sys.stdout.flush()
    for e in errors:
        print(f"soute: {e}", file=sys.stderr)
    return 1 if errors else 0


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
    if "{{" in text:
        raise TemplateError(f"template: unclosed action in {template!r}")
    if text:
        pieces.append(("text", text))
    return pieces


Node = tuple[Any, ...]
Pieces = list[tuple[str, str]]


def _parse(pieces: Pieces, template: str, *, top: bool = False) -> tuple[list[Node], Pieces]:
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
        if text.startswith("/*"):
            continue  # a comment
        if word in ("range", "if", "with"):
            node, pieces = _block(word, text[len(word):], pieces, template)
            if not pieces or pieces[0][1] != "end":
                raise TemplateError(f"template: unexpected EOF in {template!r}",
                                    f"close {{{{{word}}}}} with {{{{end}}}}")
            pieces = pieces[1:]
            nodes.append(node)
        else:
            nodes.append(("pipe", *_action(text, template)))
    return nodes, pieces


def _block(word: str, head: str, pieces: Pieces, template: str) -> tuple[Node, Pieces]:
    """A range/if/with block up to its ``end`` (left in the rest); ``{{else if X}}`` is an
    if block inside the else branch, closed by the same ``end``."""
    decl, pipe = _action(head, template)
    body, pieces = _parse(pieces, template)
    alt: list[Node] = []
    if pieces and pieces[0][1].split(None, 1)[0] == "else":
        chained = pieces[0][1][4:].strip()
        inner = chained.split(None, 1)[0] if chained else ""
        if inner in ("if", "with"):
            node, pieces = _block(inner, chained[len(inner):], pieces[1:], template)
            alt = [node]
        else:
            alt, pieces = _parse(pieces[1:], template)
    return (word, decl, pipe, body, alt), pieces


class _Tokens:
    def __init__(self, text: str, template: str) -> None:
        self.items: list[tuple[str, str, bool]] = []  # (kind, text, follows without a space)
        self.template = template
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise TemplateError(f"template: cannot parse {text[pos:]!r} in {template!r}")
            kind = m.lastgroup or ""
            self.items.append((kind, m[kind], m.start(kind) == pos))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str, bool] | None:
        return self.items[self.i] if self.i < len(self.items) else None

    def take(self) -> tuple[str, str, bool]:
        item = self.items[self.i]
        self.i += 1
        return item

    def error(self, what: str) -> TemplateError:
        return TemplateError(f"template: {what} in {self.template!r}")


def _action(text: str, template: str) -> tuple[Any, list[list[Any]]]:
    """An action's declaration (``$a, $b :=``, or None) and pipeline."""
    tokens = _Tokens(text, template)
    decl = None
    items = tokens.items
    for i, (kind, value, _) in enumerate(items):
        if kind == "op" and value in (":=", "="):
            names = [v for k, v, _ in items[:i] if k == "var"]
            if not names or len(names) > 2 or any(
                    k not in ("var", "op") or (k == "op" and v != ",") for k, v, _ in items[:i]):
                raise tokens.error("bad variable declaration")
            decl = (names, value)
            tokens.i = i + 1
            break
    pipe = _pipeline(tokens)
    if tokens.peek() is not None:
        raise tokens.error(f"unexpected {tokens.peek()[1]!r}")  # type: ignore[index]
    return decl, pipe


def _pipeline(tokens: _Tokens) -> list[list[Any]]:
    commands: list[list[Any]] = [[]]
    while (item := tokens.peek()) is not None and item[1] != ")":
        if item[0] == "op" and item[1] == "|":
            tokens.take()
            if not commands[-1]:
                raise tokens.error("missing command")
            commands.append([])
            continue
        commands[-1].append(_operand(tokens))
    if not commands[-1]:
        raise tokens.error("missing value")
    return commands


def _operand(tokens: _Tokens) -> Any:
    kind, text, _ = tokens.take()
    if kind == "str":
        term: Any = ("lit", json.loads(text) if text[0] == '"' else text[1:-1])
    elif kind == "num":
        term = ("lit", float(text) if "." in text else int(text))
    elif kind == "var":
        term = ("var", text)
    elif kind == "field":
        term = ("field", ("dot",), [p for p in text.split(".") if p])
    elif kind == "ident":
        if text in ("true", "false"):
            term = ("lit", text == "true")
        elif text == "nil":
            term = ("lit", None)
        elif text in FUNCTIONS:
            term = ("func", text)
        else:
            raise tokens.error(f'function "{text}" not defined')
    elif text == "(":
        term = ("paren", _pipeline(tokens))
        if tokens.peek() is None or tokens.take()[1] != ")":
            raise tokens.error("unclosed left paren")
    else:
        raise tokens.error(f"unexpected {text!r}")
    # A field chain right after a term: $v.Name, (index .X 0).HostPort
    nxt = tokens.peek()
    if nxt is not None and nxt[0] == "field" and nxt[2] and nxt[1] != "." \
            and term[0] in ("var", "paren"):
        tokens.take()
        term = ("field", term, [p for p in nxt[1].split(".") if p])
    return term


# ---------------------------------------------------------------------------- running

Scopes = list[dict[str, Any]]


def _run(nodes: list[Node], dot: Any, scopes: Scopes, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "pipe":
            _, decl, pipe = node
            value = _eval(pipe, dot, scopes)
            if decl is None:
                out.append(go_print(value))
            else:
                _bind(scopes, decl, [value])
        else:
            _, decl, pipe, body, alt = node
            value = _eval(pipe, dot, scopes)
            if kind == "range":
                if isinstance(value, dict):
                    pairs = [(k, value[k]) for k in sorted(value)]
                elif isinstance(value, list):
                    pairs = list(enumerate(value))
                elif value is None or value is _MISSING:
                    pairs = []
                elif isinstance(value, int) and not isinstance(value, bool):
                    pairs = [(i, i) for i in range(value)]
                else:
                    raise TemplateError(f"template: range can't iterate over {go_print(value)}")
                if not pairs:
                    _run(alt, dot, scopes, out)
                for key, item in pairs:
                    scope: dict[str, Any] = {}
                    if decl is not None:
                        names = decl[0]
                        scope.update(zip(names, [item] if len(names) == 1 else [key, item],
                                         strict=True))
                    _run(body, item, [*scopes, scope], out)
            elif _truth(value):
                scope = {}
                if decl is not None:
                    scope[decl[0][0]] = value
                _run(body, value if kind == "with" else dot, [*scopes, scope], out)
            else:
                _run(alt, dot, scopes, out)


def _bind(scopes: Scopes, decl: Any, values: list[Any]) -> None:
    names, op = decl
    for name, value in zip(names, values, strict=False):
        if op == ":=":
            scopes[-1][name] = value
            continue
        for scope in reversed(scopes):
            if name in scope:
                scope[name] = value
                break
        else:
            raise TemplateError(f"template: undefined variable: {name}")


def _eval(pipe: list[list[Any]], dot: Any, scopes: Scopes) -> Any:
    value: Any = _MISSING
    for i, command in enumerate(pipe):
        args = [_value(op, dot, scopes) for op in command[1:]]
        if i > 0:
            args.append(value)
        head = command[0]
        if head[0] == "func":
            try:
                value = FUNCTIONS[head[1]](*args)
            except (TypeError, AttributeError, ValueError) as e:  # e.g. split of a number
                raise TemplateError(f"template: wrong arguments for {head[1]}: {e}") from None
        elif args:
            shown = go_print(_value(head, dot, scopes))
            raise TemplateError(f"template: can't give arguments to {shown}")
        else:
            value = _value(head, dot, scopes)
    return value


def _value(op: Any, dot: Any, scopes: Scopes) -> Any:
    kind = op[0]
    if kind == "lit":
        return op[1]
    if kind == "func":
        return FUNCTIONS[op[1]]()
    if kind == "dot":
        return dot
    if kind == "var":
        for scope in reversed(scopes):
            if op[1] in scope:
                return scope[op[1]]
        raise TemplateError(f"template: undefined variable: {op[1]}")
    if kind == "paren":
        return _eval(op[1], dot, scopes)
    value = _value(op[1], dot, scopes)  # a field chain on a term
    is_map = False  # docker's maps (Labels...) lack keys quietly; its structs do not
    parent: str | None = "" if op[1][0] == "dot" and value is dot is scopes[0]["$"] else None
    for name in op[2]:
        if isinstance(value, dict):
            got = value.get(name, _MISSING)
            if (got is _MISSING and not is_map and not isinstance(value, _NilMap)
                    and scopes[0][_STRICT]):
                known = _STRUCT_FIELDS.get(parent) if parent is not None else None
                if known is None or name in known:
                    got = _zero(name) if known is not None else got
                else:
                    # docker's inspect falls back to the raw JSON with missingkey=error.
                    raise TemplateError(f'template: executing "" at <.{name}>: map has no '
                                        f'entry for key "{name}"')
            value = got if got is None and name in _NIL_POINTERS else _typed(name, got)
            is_map = name in _MAPS
            parent = name if parent == "" and name == "Config" else None
        elif value is None or value is _MISSING:
            return _MISSING
        else:
            raise TemplateError(f"template: can't evaluate field {name} in type "
                                f"{_go_type(value)}")
    return value


def _typed(name: str, value: Any) -> Any:
    """A field's value with the Go type its name tells (see the module's docstring)."""
    if value is None:
        if name in _SLICES:
            return _NilSlice()
        if name in _MAPS:
            return _NilMap()
    elif name in _EMPTY_STRUCT_MAPS and isinstance(value, dict):
        return {k: _Struct() if v == {} else v for k, v in value.items()}
    elif name == "LastTagTime" and isinstance(value, str):
        return _GoTime(value)
    return value


class _GoTime(str):
    """An RFC 3339 time that prints as Go's ``time.Time`` does."""

    def go(self) -> str:
        m = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", self)
        if m is None:
            return str(self)
        frac = (m[3] or "").rstrip("0").rstrip(".")
        zone = "+0000 UTC" if m[4] == "Z" else m[4].replace(":", "") + " " + m[4].replace(":", "")
        return f"{m[1]} {m[2]}{frac} {zone}"


def _truth(value: Any) -> bool:
    return value is not _MISSING and bool(value)


def _go_type(value: Any) -> str:
    return {str: "string", bool: "bool", int: "int", float: "float64",
            list: "[]interface {}"}.get(type(value), "interface {}")


def go_print(value: Any) -> str:
    """Go's ``%v`` of a value."""
    if value is _MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _GoTime):
        return value.go()
    if isinstance(value, str):
        return value
    if isinstance(value, float):  # rare here: inspect's numbers are integers
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, _Struct):
        return "{}"
    if isinstance(value, list):
        return "[" + " ".join(go_print(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_print(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def _json(value: Any) -> str:
    from soute.image.gojson import dumps

    if value is _MISSING or isinstance(value, (_NilSlice, _NilMap)):
        return "null"
    return dumps(value, escape_html=False)  # docker's json function: SetEscapeHTML(false)


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
    """Go's ``printf`` for the verbs people use: %v %s %d %q %t %x %f, flags, width and
    precision."""
    it = iter(args)

    def one(m: re.Match[str]) -> str:
        if m[0] == "%%":
            return "%"
        flags, width, precision, verb = m[1], m[2] or "", m[3], m[4]
        spec = "%" + flags + width + ("." + precision if precision is not None else "")
        v = next(it, _MISSING)
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if verb == "d" and isinstance(v, int) and not isinstance(v, bool):
            return (spec + "d") % v
        if verb == "f" and number:
            return (spec + "f") % v
        if verb == "x" and isinstance(v, int) and not isinstance(v, bool):
            return (spec + "x") % v
        text = go_print(v)
        if verb == "x":
            text = text.encode().hex()
        elif verb == "q":
            text = json.dumps(text, ensure_ascii=False)
        return (spec + "s") % text

    return re.sub(r"%%|%([-+# 0]*)(\d+)?(?:\.(\d+))?([vsdqxft])", one, fmt)


def _sprint(*args: Any) -> str:
    """Go's ``fmt.Sprint``: a space between two operands when neither is a string."""
    out = ""
    for i, v in enumerate(args):
        if i and not isinstance(v, str) and not isinstance(args[i - 1], str):
            out += " "
        out += go_print(v)
    return out


def _len(value: Any) -> int:
    if isinstance(value, (str, list, dict)):
        return len(value)
    raise TemplateError(f"template: len of type {_go_type(value)}")


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        if isinstance(a, str) != isinstance(b, str) or isinstance(a, (list, dict)) \
                or isinstance(b, (list, dict)):
            raise TemplateError("template: incompatible types for comparison")
        return op(a, b)
    return compare


def _title(text: Any) -> str:
    """Go's ``strings.Title``: the first letter of each word up, the rest as it is."""
    return re.sub(r"(?<![\w'])(\w)", lambda m: m[1].upper(), go_print(text))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "json": _json,
    "index": _index,
    "join": lambda items, sep: sep.join(go_print(i) for i in (items or [])),
    "split": lambda s, sep: s.split(sep),
    "len": _len,
    "lower": lambda s: go_print(s).lower(),
    "upper": lambda s: go_print(s).upper(),
    "title": _title,
    "pad": lambda s, before, after: s if s == "" else " " * before + s + " " * after,
    "truncate": lambda s, n: s if len(s) < n else s[:n],
    "printf": _printf,
    "print": _sprint,
    "println": lambda *a: " ".join(go_print(v) for v in a) + "\n",
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": _compare(lambda a, b: a < b),
    "le": _compare(lambda a, b: a <= b),
    "gt": _compare(lambda a, b: a > b),
    "ge": _compare(lambda a, b: a >= b),
    "not": lambda a: not _truth(a),
    "and": lambda *a: next((v for v in a if not _truth(v)), a[-1]),
    "or": lambda *a: next((v for v in a if _truth(v)), a[-1]),
}
