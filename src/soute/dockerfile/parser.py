"""Dockerfile text to a list of instruction nodes, as BuildKit's parser reads it.

The node layout, quirks included, follows BuildKit's parser (frontend/dockerfile/parser) so
that ``dump()`` reproduces its AST dump byte for byte. Typed instructions are built from these
nodes by :mod:`soute.dockerfile.instructions`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from soute.dockerfile.goquote import go_quote
from soute.errors import LocatedError

# Go's unicode.IsSpace: Python's str.isspace() also counts \x1c-\x1f, which Go does not.
GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
# unicode.IsSpace applied to single bytes (BuildKit's flag and HEALTHCHECK scanners read bytes).
_GO_SPACE_BYTES = frozenset(b"\t\n\v\f\r \x85\xa0")

_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_HEREDOC = re.compile(r"\A([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")
_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)
_DIRECTIVE = re.compile(r"\A([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_BOM = "\ufeff"

DIRECTIVE_NAMES = ("syntax", "escape", "check")

INSTRUCTIONS = (
    "add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck",
    "label", "maintainer", "onbuild", "run", "shell", "stopsignal", "user", "volume", "workdir",
)  # fmt: skip
_HEREDOC_INSTRUCTIONS = frozenset(("add", "copy", "run"))


class ParseError(LocatedError):
    """A Dockerfile that BuildKit's parser would refuse."""


@dataclass
class Heredoc:
    name: str
    file_descriptor: int = 0
    expand: bool = True
    chomp: bool = False
    content: str = ""

    def chomped_content(self) -> str:
        """The content as the build sees it: ``<<-`` strips leading tabs."""
        return _LEADING_TABS.sub("", self.content) if self.chomp else self.content


@dataclass
class Node:
    """One instruction.

    ``args`` is BuildKit's ``Next`` chain flattened; ``sub`` is the instruction nested in
    ONBUILD, which BuildKit keeps as the child of an otherwise empty ``Next`` node.
    """

    cmd: str
    args: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    json: bool = False
    original: str = ""
    start_line: int = 0
    end_line: int = 0
    heredocs: list[Heredoc] = field(default_factory=list)
    sub: Node | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The instruction's name, lower-cased as BuildKit dispatches on it."""
        return self.cmd.lower()

    def dump(self) -> str:
        """BuildKit's ``Node.Dump`` for this instruction, without the outer parentheses."""
        out = [self.cmd.lower()]
        if self.flags:
            out.append(" [" + " ".join(go_quote(f) for f in self.flags) + "]")
        if self.sub is not None:
            out.append(" (" + self.sub.dump() + ")")
        else:
            out.extend(" " + go_quote(a) for a in self.args)
        return go_trim_space("".join(out))


@dataclass
class ParseWarning:
    message: str
    line: int


@dataclass
class ParseResult:
    nodes: list[Node]
    escape: str
    directives: dict[str, str]
    directive_lines: dict[str, int]
    warnings: list[ParseWarning]

    def dump(self) -> str:
        """BuildKit's AST dump of the whole file, as in the corpus ``result`` files."""
        return "".join(f"({n.dump()})\n" for n in self.nodes)


# ---------------------------------------------------------------------------- helpers


def go_trim_space(s: str) -> str:
    """strings.TrimSpace."""
    start, end = 0, len(s)
    while start < end and s[start] in GO_SPACE:
        start += 1
    while end > start and s[end - 1] in GO_SPACE:
        end -= 1
    return s[start:end]


def _trim_left_space(s: str) -> str:
    i = 0
    while i < len(s) and s[i] in GO_SPACE:
        i += 1
    return s[i:]


def decode(data: bytes) -> str:
    """Dockerfile bytes to text; bytes that are not UTF-8 survive as surrogate escapes."""
    return data.decode("utf-8", "surrogateescape")


def _bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _scan_lines(text: str) -> Iterator[str]:
    """bufio.Scanner with line endings kept."""
    start = 0
    n = len(text)
    while start < n:
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start : end + 1]
        start = end + 1


def _trim_newline(s: str) -> str:
    return s.rstrip("\r\n")


def _is_comment(line: str) -> bool:
    return _trim_left_space(line).startswith("#")


# ---------------------------------------------------------------------------- directives


class _Directives:
    """Parser directives: only recognised before the first non-directive line."""

    def __init__(self) -> None:
        self.done = False
        self.seen: dict[str, str] = {}
        self.lines: dict[str, int] = {}
        self.escape = "\\"
        self._continuation = self._continuation_re("\\")

    @staticmethod
    def _continuation_re(token: str) -> re.Pattern[str]:
        t = re.escape(token)
        # The token at the end of a line continues it, unless the token itself is escaped.
        return re.compile(rf"([^{t}]){t}[ \t]*\Z|\A{t}[ \t]*\Z", re.DOTALL)

    def feed(self, line: str, lineno: int) -> bool:
        """Read ``line`` as a possible directive; True when it was one."""
        if self.done:
            return False
        if not line.startswith("#"):
            self.done = True
            return False
        m = _DIRECTIVE.match(_trim_left_space(line[1:]))
        if not m or m.group(1).lower() not in DIRECTIVE_NAMES:
            self.done = True
            return False
        key, value = m.group(1).lower(), m.group(2)
        if key in self.seen:
            raise ParseError(
                f"only one {key} parser directive can be used",
                line=lineno,
                hint=f"remove the second '# {key}=' line",
            )
        self.seen[key] = value
        self.lines[key] = lineno
        if key == "escape":
            if value not in ("`", "\\"):
                raise ParseError(
                    f"invalid escape token '{value}' does not match ` or \\",
                    line=lineno,
                    hint="use '# escape=\\' or '# escape=`'",
                )
            self.escape = value
            self._continuation = self._continuation_re(value)
        return True

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        """Strip a trailing escape token; the bool is True when the instruction ends here."""
        m = self._continuation.search(line)
        if m is None:
            return line, True
        return line[: m.start()] + (m.group(1) or ""), False


# ---------------------------------------------------------------------------- line parsers


def _split_words(rest: str, escape: str) -> list[str]:
    """BuildKit's parseWords: split on spaces, quotes and escapes kept in the words."""
    words: list[str] = []
    buf: list[str] = []
    blank_ok = False
    quote = ""
    in_word = False
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        if not in_word and not quote:
            if ch in GO_SPACE:
                i += 1
                continue
            in_word = True
        if quote:
            if ch == quote:
                quote = ""
            if ch == escape and quote != "'":
                if i + 1 == n:
                    quote = ""
                    i += 1
                    continue
                buf.append(ch)
                i += 1
                ch = rest[i]
            buf.append(ch)
            i += 1
            continue
        if ch in GO_SPACE:
            in_word = False
            if blank_ok or buf:
                words.append("".join(buf))
            buf = []
            blank_ok = False
            i += 1
            continue
        if ch in "'\"":
            quote = ch
            blank_ok = True
        if ch == escape:
            if i + 1 == n:
                i += 1
                continue
            buf.append(ch)
            i += 1
            ch = rest[i]
        buf.append(ch)
        i += 1
    if (in_word or quote) and (blank_ok or buf):
        words.append("".join(buf))
    return words


def _extract_flags(line: str, escape: str) -> tuple[str, list[str]]:
    """BuildKit's extractBuilderFlags: leading ``--flags`` and the rest of the line.

    BuildKit scans this part byte by byte, so a non-ASCII byte becomes the rune of the same
    value (and bytes 0x85 and 0xA0 count as spaces); we read it the same way.
    """
    data = _bytes(line)
    esc = ord(escape)
    words: list[str] = []
    buf = bytearray()
    blank_ok = False
    quote = 0
    phase = 0  # 0: between words, 1: in a word, 2: in a quote
    pos, n = 0, len(data)

    def word() -> str:
        return buf.decode("latin-1")

    while pos <= n:
        ch = data[pos] if pos < n else -1
        if phase == 0:
            if pos == n:
                break
            if ch in _GO_SPACE_BYTES:
                pos += 1
                continue
            if ch != 0x2D or pos + 1 == n or data[pos + 1] != 0x2D:
                return decode(data[pos:]), words
            phase = 1
        if pos == n:
            w = word()
            if w != "--" and (blank_ok or w):
                words.append(w)
            break
        if phase == 1:
            if ch in _GO_SPACE_BYTES:
                w = word()
                phase = 0
                if w == "--":
                    return decode(data[pos:]), words
                if blank_ok or w:
                    words.append(w)
                buf.clear()
                blank_ok = False
                pos += 1
                continue
            if ch in (0x22, 0x27):
                quote = ch
                blank_ok = True
                phase = 2
                pos += 1
                continue
            if ch == esc:
                if pos + 1 == n:
                    pos += 1
                    continue
                pos += 1
                ch = data[pos]
            buf.append(ch)
            pos += 1
            continue
        # in a quote
        if ch == quote:
            phase = 1
            pos += 1
            continue
        if ch == esc:
            if pos + 1 == n:
                phase = 1
                pos += 1
                continue
            pos += 1
            ch = data[pos]
        buf.append(ch)
        pos += 1
    return "", words


def _split_command(line: str, escape: str) -> tuple[str, list[str], str]:
    parts = _WHITESPACE.split(go_trim_space(line), maxsplit=1)
    if len(parts) == 2:
        rest, flags = _extract_flags(parts[1], escape)
        return parts[0], flags, go_trim_space(rest)
    return parts[0], [], ""


class _NotJSON(Exception):
    pass


def _reject_constant(name: str) -> float:
    raise _NotJSON(name)  # Go's encoding/json knows no NaN or Infinity


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotJSON(text)  # Go fails to fit it in a float64 and so rejects the array
    return value


def _parse_json(rest: str) -> list[str] | None:
    """The JSON array form, or None when ``rest`` is not a JSON array (shell form then)."""
    rest = _trim_left_space(rest)
    if not rest.startswith("["):
        return None
    try:
        items = json.loads(
            rest, parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_float
        )
    except (ValueError, _NotJSON, RecursionError):
        return None
    if not isinstance(items, list):
        return None
    if not all(isinstance(i, str) for i in items):
        raise _NotStrings
    # Go decodes lone surrogates and stray bytes to U+FFFD.
    return [re.sub("[\ud800-\udfff]", "\ufffd", i) for i in items]


class _NotStrings(Exception):
    pass


def _maybe_json(rest: str) -> tuple[list[str], bool]:
    if rest == "":
        return [], False
    items = _parse_json(rest)
    if items is not None:
        return items, True
    return [rest], False


def _maybe_json_list(rest: str) -> tuple[list[str], bool]:
    items = _parse_json(rest)
    if items is not None:
        return items, True
    return _whitespace_list(rest), False


def _whitespace_list(rest: str) -> list[str]:
    return _WHITESPACE.split(rest) if rest else []


def _name_val(rest: str, key: str, escape: str) -> list[str]:
    words = _split_words(rest, escape)
    if not words:
        return []
    if "=" not in words[0]:
        parts = _WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _LineError(
                f"{key} must have two arguments", f"write '{key} name=value' or '{key} name value'"
            )
        return [parts[0], parts[1], ""]
    out: list[str] = []
    for w in words:
        if "=" not in w:
            raise _LineError(
                f"Syntax error - can't find = in {go_quote(w)}. Must be of the form: name=value",
                "quote values that contain spaces",
            )
        k, v = w.split("=", 1)
        out += [k, v, "="]
    return out


def _health(rest: str) -> tuple[list[str], bool]:
    data = _bytes(rest)
    sep = 0
    while sep < len(data) and data[sep] not in _GO_SPACE_BYTES:
        sep += 1
    nxt = sep
    while nxt < len(data) and data[nxt] in _GO_SPACE_BYTES:
        nxt += 1
    if sep == 0:
        return [], False
    cmd, is_json = _maybe_json(decode(data[nxt:]))
    return [decode(data[:sep]), *cmd], is_json


class _LineError(Exception):
    """An error inside one instruction; the caller adds the location."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def _node_from_line(line: str, escape: str, comments: list[str]) -> Node:
    cmd, flags, rest = _split_command(line, escape)
    node = Node(cmd=cmd, flags=flags, original=line, comments=comments)
    name = cmd.lower()
    try:
        if name in ("cmd", "entrypoint", "run", "shell"):
            node.args, node.json = _maybe_json(rest)
        elif name in ("add", "copy", "volume"):
            node.args, node.json = _maybe_json_list(rest)
        elif name in ("env", "label"):
            node.args = _name_val(rest, "LABEL" if name == "label" else "ENV", escape)
        elif name == "arg":
            node.args = _split_words(rest, escape)
        elif name in ("expose", "from"):
            node.args = _whitespace_list(rest)
        elif name in ("maintainer", "stopsignal", "user", "workdir"):
            node.args = [rest] if rest else []
        elif name == "healthcheck":
            node.args, node.json = _health(rest)
        elif name == "onbuild":
            if rest:
                node.sub = _node_from_line(rest, escape, [])
        else:
            node.args = [""]  # BuildKit keeps an unknown instruction with one empty argument
    except _NotStrings:
        raise _LineError(
            "when using JSON array syntax, arrays must be comprised of strings only",
            'quote every element, e.g. ["sh", "-c", "echo 1"]',
        ) from None
    return node


def _can_contain_heredoc(node: Node) -> bool:
    target = node.sub if node.name == "onbuild" and node.sub is not None else node
    return target.name in _HEREDOC_INSTRUCTIONS and not target.json


# ---------------------------------------------------------------------------- heredocs


def parse_heredoc(word: str) -> Heredoc | None:
    """A heredoc opener such as ``<<EOF``, ``<<-"EOF"`` or ``3<<EOF``, else None."""
    from soute.dockerfile.shell import Lexer

    m = _HEREDOC.match(word)
    if m is None or not m.group(3):
        return None
    fd = min(int(m.group(1)), 2**64 - 1) if m.group(1) else 0
    rest = m.group(3)
    words = Lexer(skip_unset_env=True).process_words(rest, {})
    if len(words) != 1:
        return None
    raw = Lexer(raw_quotes=True, skip_unset_env=True).process_words(rest, {})
    if len(raw) != 1:
        raise _LineError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    # A quote anywhere in the delimiter turns expansion off.
    quotes = words[0].count("'") + words[0].count('"')
    raw_quotes = raw[0].count("'") + raw[0].count('"')
    return Heredoc(
        name=words[0], file_descriptor=fd, expand=quotes == raw_quotes, chomp=m[2] == "-"
    )


def must_parse_heredoc(word: str) -> Heredoc | None:
    """The word as a heredoc opener, any lexing error read as "not a heredoc"."""
    from soute.dockerfile.shell import ExpansionError

    try:
        return parse_heredoc(word)
    except (ExpansionError, _LineError):
        return None


def _heredocs_from_line(line: str) -> list[Heredoc]:
    from soute.dockerfile.shell import ExpansionError, Lexer

    try:
        words = Lexer(raw_quotes=True, raw_escapes=True, skip_unset_env=True).process_words(
            line, {}
        )
    except ExpansionError:
        words = []
    docs = []
    for w in words:
        try:
            doc = parse_heredoc(w)
        except ExpansionError as e:
            raise _LineError(e.message) from None
        if doc is not None:
            docs.append(doc)
    return docs


# ---------------------------------------------------------------------------- parse


def parse_text(text: str, *, file: str = "Dockerfile") -> ParseResult:
    """Parse Dockerfile text the way BuildKit's parser does.

    Raises :class:`ParseError` (naming ``file`` and the line) where BuildKit's parser fails.
    """
    directives = _Directives()
    nodes: list[Node] = []
    warnings: list[ParseWarning] = []
    comments: list[str] = []
    lines = _scan_lines(text)
    current = 0
    if text.startswith(_BOM):
        text = text[1:]
        lines = _scan_lines(text)

    def fail(message: str, line: int, hint: str | None = None) -> ParseError:
        return ParseError(message, file=file, line=line, hint=hint)

    for raw in lines:
        if _is_comment(raw):
            comment = go_trim_space(raw[1:])
            comments = [*comments, comment] if comment else []
        token = _trim_left_space(_trim_newline(raw))
        try:
            if directives.feed(token, current + 1):
                comments = comments[:-1]
        except ParseError as e:
            raise e.located(file) from None
        token = "" if _is_comment(token) else token
        current += 1
        start = current
        token, end_of_line = directives.trim_continuation(token)
        if end_of_line and not token:
            continue
        buf = [token]
        empty_continuation = False
        while not end_of_line:
            nxt = next(lines, None)
            if nxt is None:
                break
            current += 1
            if _is_comment(nxt):
                continue
            piece = _trim_newline(nxt)
            if not _trim_left_space(piece):
                empty_continuation = True
                continue
            piece, end_of_line = directives.trim_continuation(piece)
            buf.append(piece)
        line = "".join(buf)
        if empty_continuation:
            warnings.append(ParseWarning(f"Empty continuation line found in: {line}", current))
        try:
            node = _node_from_line(line, directives.escape, comments)
            if _can_contain_heredoc(node) and "<<" in line:
                for doc in _heredocs_from_line(line):
                    content: list[str] = []
                    for body in lines:
                        current += 1
                        end = _trim_newline(body)
                        if doc.chomp:
                            end = end.lstrip("\t")
                        if end == doc.name:
                            break
                        content.append(body)
                    else:
                        raise fail(
                            f"unterminated heredoc <<{doc.name}",
                            start,
                            f"end it with a line holding only '{doc.name}'",
                        )
                    doc.content = "".join(content)
                    node.heredocs.append(doc)
        except _LineError as e:
            raise fail(e.message, start, e.hint) from None
        node.start_line, node.end_line = start, current
        if node.sub is not None:
            node.sub.start_line, node.sub.end_line = start, current
        nodes.append(node)
        comments = []

    if not nodes:
        raise fail("file with no instructions", 0, "add a FROM line")
    return ParseResult(
        nodes=nodes,
        escape=directives.escape,
        directives=dict(directives.seen),
        directive_lines=dict(directives.lines),
        warnings=warnings,
    )


def parse_bytes(data: bytes, *, file: str = "Dockerfile") -> ParseResult:
    return parse_text(decode(data), file=file)
