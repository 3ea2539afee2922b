"""`.dockerignore` files and exclude patterns, with BuildKit's semantics.

Three pieces, each matching what `docker build` does:

* :func:`read_ignore_file` turns the file's text into patterns like
  moby/patternmatcher's ``ignorefile.ReadAll``.
* :func:`find_ignore_file` picks the file: ``<Dockerfile>.dockerignore`` next to the
  Dockerfile wins over ``<context>/.dockerignore`` (buildkit ``frontend/dockerui``).
* :class:`PatternMatcher` decides whether a context path is excluded, like
  patternmatcher's ``MatchesOrParentMatches``.

How patternmatcher matches
--------------------------
patternmatcher does not call Go's ``filepath.Match``; it calls it once only to reject
malformed patterns. It then rewrites each pattern into a Go regexp: ``*`` becomes
``[^/]*``, ``?`` becomes ``[^/]``, ``**`` becomes ``(.*/)?`` (or ``.*`` at the end),
``.+()$`` are escaped, and everything else — ``[`` ``]`` ``^`` ``|`` ``{`` ``}`` and
``\\x`` escapes — goes into the regexp as it is. So a ``[...]`` class is a *Go regexp*
class (``[^a]`` also matches ``/``; ``[!a]`` is ``!`` or ``a``; ``[[:alpha:]]`` is a POSIX
class), ``\\d`` is a digit, a bare ``^`` is an anchor, ``*.md|*.txt`` is an alternation
and ``a{2}*`` a repeat. Patterns without a wildcard, escape or class are compared as plain
strings (or as a prefix or suffix for a trailing or leading ``**``).

We reproduce that in two steps: build the same Go regexp text, then translate it from
Go's RE2 syntax to Python's. Where the two dialects differ (``$``, ``\\z``, POSIX classes,
nested ``[``) the translator emits explicit Python. ``\\p{..}`` Unicode classes have no
Python equivalent and are refused.

One deliberate difference: a pattern whose regexp Go rejects (``[z-a]``,
``[Local-Only]``) passes patternmatcher's ``New`` and only fails when it is first used
for matching. We reject it when the matcher is built, so the error names the pattern.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from soute.errors import SouteError

__all__ = ["PatternMatcher", "find_ignore_file", "read_ignore_file"]

# Go's unicode.IsSpace, which strings.TrimSpace uses. Python's str.strip() also strips
# \x1c-\x1f, which Go keeps.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_BOM = "\ufeff"
# bufio.Scanner's default limit: a line this long (without its newline) is an error.
_MAX_LINE_BYTES = 64 * 1024
_MAX_RUNE = 0x10FFFF


def _go_trim_space(s: str) -> str:
    return s.strip(_GO_SPACE)


def _go_clean(path: str) -> str:
    """Go's ``filepath.Clean`` on Unix (``os.path.normpath`` keeps a leading ``//``)."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def _go_dir(path: str) -> str:
    """Go's ``filepath.Dir``: everything before the last slash, cleaned."""
    return _go_clean(path[: path.rfind("/") + 1])


# --------------------------------------------------------------------------------------
# The ignore file


def read_ignore_file(text: str) -> list[str]:
    """Patterns from the text of a ``.dockerignore`` file, as ``ignorefile.ReadAll``.

    * a UTF-8 BOM at the start is dropped;
    * a line whose *first* character is ``#`` is a comment (``  # x`` is a pattern);
    * lines are trimmed and blank ones skipped;
    * ``!`` is kept in front, the rest is trimmed again, ``filepath.Clean``-ed and loses
      one leading ``/`` (``/`` alone stays ``/``); a lone ``!`` is kept (and rejected
      later by :class:`PatternMatcher`, as BuildKit does).
    """
    lines = text.split("\n")
    if lines[-1] == "":
        # bufio.ScanLines yields no empty token after a final newline.
        lines.pop()
    patterns: list[str] = []
    for number, raw in enumerate(lines, start=1):
        # The scanner's limit counts the raw line, BOM and "\r" included.
        if len(raw.encode("utf-8", "surrogateescape")) >= _MAX_LINE_BYTES:
            raise SouteError(
                f"ignore file line {number} is too long",
                hint=f"BuildKit reads lines of at most {_MAX_LINE_BYTES - 1} bytes",
            )
        line = raw.removesuffix("\r")
        if number == 1:
            line = line.removeprefix(_BOM)
        if line.startswith("#"):
            continue
        pattern = _go_trim_space(line)
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = _go_trim_space(pattern[1:])
        if pattern:
            pattern = _go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


def find_ignore_file(context_dir: Path, dockerfile: Path | None) -> Path | None:
    """The ignore file BuildKit would use for this build, or ``None``.

    ``<dockerfile>.dockerignore`` (the Dockerfile's own name plus ``.dockerignore``, in
    its directory) wins, even when it is empty; otherwise ``<context>/.dockerignore``.
    ``dockerfile=None`` means the default ``<context>/Dockerfile``, so
    ``<context>/Dockerfile.dockerignore`` is looked for first. The name is taken as
    given: when BuildKit falls back to a lowercase ``dockerfile``, it still looks for
    ``Dockerfile.dockerignore``. Only regular files (after symlinks) count.
    """
    if dockerfile is None:
        dockerfile = context_dir / "Dockerfile"
    own = dockerfile.parent / (dockerfile.name + ".dockerignore")
    if own.is_file():
        return own
    shared = context_dir / ".dockerignore"
    if shared.is_file():
        return shared
    return None


# --------------------------------------------------------------------------------------
# Go's filepath.Match syntax check


class _BadPattern(Exception):
    """A pattern Go rejects; the message says why, for the user."""


def _scan_chunk(pattern: str) -> tuple[str, str]:
    """Go's ``scanChunk``: drop leading stars, then cut at the next star outside ``[]``."""
    pattern = pattern.lstrip("*")
    in_range = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif c == "[":
            in_range = True
        elif c == "]":
            in_range = False
        elif c == "*" and not in_range:
            break
        i += 1
    return pattern[:i], pattern[i:]


def _class_char_end(chunk: str, i: int) -> int:
    """Go's ``getEsc``: the index after one (possibly escaped) class character."""
    if i >= len(chunk) or chunk[i] in "-]":
        what = "end of pattern" if i >= len(chunk) else repr(chunk[i])
        raise _BadPattern(f"unexpected {what} in a '[...]' class")
    if chunk[i] == "\\":
        i += 1
        if i >= len(chunk):
            raise _BadPattern("unterminated '[...]' class")
    i += 1
    if i >= len(chunk):
        raise _BadPattern("unterminated '[...]' class")
    return i


def _check_chunk(chunk: str) -> None:
    """The syntax part of Go's ``matchChunk``, which reads a chunk to its end."""
    i = 0
    while i < len(chunk):
        c = chunk[i]
        if c == "[":
            i += 1
            if i < len(chunk) and chunk[i] == "^":
                i += 1
            ranges = 0
            while not (i < len(chunk) and chunk[i] == "]" and ranges > 0):
                i = _class_char_end(chunk, i)
                if chunk[i] == "-":
                    i = _class_char_end(chunk, i + 1)
                ranges += 1
            i += 1
        elif c == "\\":
            if i + 1 >= len(chunk):
                raise _BadPattern("trailing '\\'")
            i += 2
        else:
            i += 1


def _check_glob_syntax(pattern: str) -> None:
    """Raise :class:`_BadPattern` where ``filepath.Match(pattern, ".")`` would fail.

    Current Go checks every chunk; Go 1.19 and older stopped at the first chunk that did
    not match, so they let ``a*[`` through. BuildKit is built with a current Go.
    """
    rest = pattern
    while rest:
        chunk, rest = _scan_chunk(rest)
        _check_chunk(chunk)


# --------------------------------------------------------------------------------------
# patternmatcher's pattern -> Go regexp text


class _Kind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"  # "foo**": strings.HasPrefix
    SUFFIX = "suffix"  # "**foo": strings.HasSuffix
    REGEXP = "regexp"


# patternmatcher means to escape ".+()|{}$", but its bitmap stores bit (c // 8) in a byte,
# which overflows for c >= 64: "|", "{" and "}" reach the regexp raw. So "*.md|*.txt" is
# an alternation and "a{2}*" a repeat in BuildKit, and so they are here.
_GO_QUOTED = frozenset(".+()$")


def _go_regexp_source(pattern: str) -> tuple[_Kind, str]:
    """The match kind and the Go regexp text patternmatcher builds for ``pattern``."""
    chars = pattern
    if chars.startswith(_BOM):
        # text/scanner, which patternmatcher reads the pattern with, skips a leading BOM.
        chars = chars[1:]
    out = ["^"]
    kind = _Kind.EXACT
    i = 0
    first = True
    while i < len(chars):
        c = chars[i]
        i += 1
        if c == "*":
            if i < len(chars) and chars[i] == "*":
                i += 1
                if i < len(chars) and chars[i] == "/":
                    i += 1
                if i >= len(chars):
                    # A trailing "**" matches everything below, like .gitignore.
                    if kind is _Kind.EXACT:
                        kind = _Kind.PREFIX
                    else:
                        out.append(".*")
                        kind = _Kind.REGEXP
                else:
                    out.append("(.*/)?")
                    kind = _Kind.REGEXP
                if first:
                    kind = _Kind.SUFFIX
            else:
                out.append("[^/]*")
                kind = _Kind.REGEXP
        elif c == "?":
            out.append("[^/]")
            kind = _Kind.REGEXP
        elif c in _GO_QUOTED:
            out.append("\\" + c)
        elif c == "\\":
            if i < len(chars):
                out.append("\\" + chars[i])
                i += 1
                kind = _Kind.REGEXP
            else:
                out.append("\\")
        elif c in "[]":
            out.append(c)
            kind = _Kind.REGEXP
        else:
            out.append(c)
        first = False
    if kind is _Kind.REGEXP:
        out.append("$")
    return kind, "".join(out)


# --------------------------------------------------------------------------------------
# Go RE2 syntax -> Python re syntax


class _RegexpError(Exception):
    """Go's regexp.Compile would fail (or we cannot express the regexp in Python)."""


_Ranges = list[tuple[int, int]]

# regexp/syntax perl_groups.go: all ASCII.
_PERL_CLASSES: dict[str, _Ranges] = {
    "d": [(0x30, 0x39)],
    "s": [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
}
_POSIX_CLASSES: dict[str, _Ranges] = {
    "alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
    "alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "ascii": [(0x00, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)],
    "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": [(0x30, 0x39)],
    "graph": [(0x21, 0x7E)],
    "lower": [(0x61, 0x7A)],
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": [(0x41, 0x5A)],
    "word": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "xdigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
}
_C_ESCAPES = {"a": 0x07, "f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B}
_OCTAL = frozenset("01234567")
_PERL_LETTERS = frozenset("dDsSwW")
_HEX = "0123456789abcdefABCDEF"
_REPEAT = re.compile(r"\{(\d+)(?:(,)(\d*))?\}")


def _parse_int(digits: str) -> int | None:
    """Go's ``parseInt`` in a repeat: no leading zeros; -1 for a huge number."""
    if len(digits) > 1 and digits[0] == "0":
        return None
    return -1 if len(digits) > 9 else int(digits)


def _parse_repeat(src: str, pos: int) -> tuple[str, int] | None:
    """A ``{n}``, ``{n,}`` or ``{n,m}`` at ``pos`` as (Python operator, length), or None."""
    m = _REPEAT.match(src, pos)
    if m is None:
        return None
    lo = _parse_int(m[1])
    hi = lo if not m[2] else (None if not m[3] else _parse_int(m[3]))
    if lo is None or (m[3] and hi is None):
        return None
    if lo < 0 or lo > 1000 or (hi is not None and (hi < 0 or hi > 1000 or lo > hi)):
        raise _RegexpError(f"invalid repeat count: {m[0]}")
    return f"{{{lo},{'' if hi is None else hi}}}", len(m[0])


def _merge(ranges: Iterable[tuple[int, int]]) -> _Ranges:
    merged: _Ranges = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _negate(ranges: Iterable[tuple[int, int]]) -> _Ranges:
    out: _Ranges = []
    nxt = 0
    for lo, hi in _merge(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= _MAX_RUNE:
        out.append((nxt, _MAX_RUNE))
    return out


def _class_text(ranges: Iterable[tuple[int, int]]) -> str:
    """A Python class for exactly these code points (a never-matching one when empty)."""

    def char(cp: int) -> str:
        return re.escape(chr(cp)) if 0x21 <= cp <= 0x7E else f"\\U{cp:08x}"

    def body(rs: _Ranges) -> str:
        return "".join(char(lo) if lo == hi else f"{char(lo)}-{char(hi)}" for lo, hi in rs)

    merged = _merge(ranges)
    complement = _negate(merged)
    if not merged:
        return f"[^\\x00-\\U{_MAX_RUNE:08x}]"
    if complement and (len(complement) < len(merged) or merged[0][0] == 0):
        return f"[^{body(complement)}]"  # e.g. [^/] rather than two huge ranges
    return f"[{body(merged)}]"


class _Unit(enum.Enum):
    ATOM = "atom"  # can take a repetition
    ASSERT = "assert"  # ^ $ \b ...: Go lets these repeat; Python needs a group around them
    REPEAT = "repeat"  # a repeated unit: another operator right after it is an error
    BAR = "bar"


class _GoRegexpTranslator:
    """Rewrite the subset of Go RE2 syntax patternmatcher can produce into Python ``re``.

    It follows ``regexp/syntax`` parse.go with the Perl flags ``regexp.Compile`` uses
    (``^``/``$`` anchor the whole text, ``.`` stops at newline, ASCII ``\\b\\d\\s\\w``),
    and fails where Go fails.
    """

    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0
        # One frame per open group; each holds (python text, unit kind).
        self.frames: list[list[tuple[str, _Unit]]] = [[]]

    def translate(self) -> str:
        while self.pos < len(self.src):
            self._step()
        if len(self.frames) > 1:
            raise _RegexpError("missing closing )")
        return "".join(text for text, _ in self.frames[0])

    # -- helpers

    def _emit(self, text: str, unit: _Unit) -> None:
        self.frames[-1].append((text, unit))

    def _literal(self, cp: int) -> None:
        self._emit(re.escape(chr(cp)), _Unit.ATOM)

    def _repeat(self, op: str, length: int) -> None:
        frame = self.frames[-1]
        token = self.src[self.pos : self.pos + length]
        self.pos += length
        if self.pos < len(self.src) and self.src[self.pos] == "?":
            self.pos += 1
            op += "?"  # non-greedy: same yes/no answer, kept for fidelity
        if not frame or frame[-1][1] is _Unit.BAR:
            raise _RegexpError(f"missing argument to repetition operator: {token}")
        text, unit = frame[-1]
        if unit is _Unit.REPEAT:
            raise _RegexpError(f"invalid nested repetition operator: {token}")
        if unit is _Unit.ASSERT or (len(text) > 1 and not text.startswith(("[", "(?:"))):
            text = f"(?:{text})"
        frame[-1] = (text + op, _Unit.REPEAT)

    # -- the main loop

    def _step(self) -> None:
        src, c = self.src, self.src[self.pos]
        if c == "(":
            if src.startswith("(?", self.pos):
                raise _RegexpError("regexp flags and named groups are not supported")
            self.pos += 1
            self.frames.append([])
        elif c == ")":
            if len(self.frames) == 1:
                raise _RegexpError("unexpected )")
            self.pos += 1
            inner = "".join(text for text, _ in self.frames.pop())
            self._emit(f"(?:{inner})", _Unit.ATOM)
        elif c == "|":
            self.pos += 1
            self._emit("|", _Unit.BAR)
        elif c == "^":
            self.pos += 1
            self._emit("\\A", _Unit.ASSERT)
        elif c == "$":
            self.pos += 1
            self._emit("\\Z", _Unit.ASSERT)  # Python's $ would also match before a final \n
        elif c == ".":
            self.pos += 1
            self._emit(".", _Unit.ATOM)
        elif c == "[":
            self._emit(_class_text(self._parse_class()), _Unit.ATOM)
        elif c in "*+?":
            self._repeat(c, 1)
        elif c == "{":
            repeat = _parse_repeat(src, self.pos)
            if repeat is None:  # Go: a "{" that does not start a repeat is a literal
                self.pos += 1
                self._literal(ord("{"))
                return
            op, length = repeat
            self._repeat(op, length)
        elif c == "\\":
            self._escape()
        else:
            self.pos += 1
            self._literal(ord(c))

    def _escape(self) -> None:
        src, nxt = self.src, self.src[self.pos + 1 : self.pos + 2]
        if nxt in ("A", "z", "b", "B"):
            self.pos += 2
            self._emit({"A": "\\A", "z": "\\Z", "b": "\\b", "B": "\\B"}[nxt], _Unit.ASSERT)
        elif nxt == "C":
            raise _RegexpError("invalid escape sequence: \\C")
        elif nxt == "Q":
            # \Q...\E: literal text up to \E or the end (which can swallow our final "$").
            end = src.find("\\E", self.pos + 2)
            stop = len(src) if end < 0 else end
            for ch in src[self.pos + 2 : stop]:
                self._literal(ord(ch))
            self.pos = len(src) if end < 0 else end + 2
        elif nxt in ("p", "P"):
            raise _RegexpError("\\p and \\P Unicode classes are not supported")
        elif nxt in _PERL_LETTERS:
            self.pos += 2
            self._emit(_class_text(self._perl_class(nxt)), _Unit.ATOM)
        else:
            self._literal(self._parse_escape())

    def _perl_class(self, letter: str) -> _Ranges:
        ranges = _PERL_CLASSES[letter.lower()]
        return _negate(ranges) if letter.isupper() else list(ranges)

    def _parse_escape(self) -> int:
        """Go's ``parseEscape`` at ``self.pos`` (a backslash): one code point."""
        src = self.src
        start = self.pos
        self.pos += 1
        if self.pos >= len(src):
            raise _RegexpError("trailing backslash at end of expression")
        c = src[self.pos]
        self.pos += 1
        if c.isascii() and not c.isalnum():
            return ord(c)  # escaped punctuation is itself
        if c in _OCTAL and (c == "0" or src[self.pos : self.pos + 1] in _OCTAL):
            value = int(c)
            for _ in range(2):
                if self.pos < len(src) and src[self.pos] in _OCTAL:
                    value = value * 8 + int(src[self.pos])
                    self.pos += 1
            return value
        if c == "x":
            if src.startswith("{", self.pos):
                end = src.find("}", self.pos + 1)
                digits = src[self.pos + 1 : end] if end >= 0 else ""
                if digits and all(d in _HEX for d in digits) and int(digits, 16) <= _MAX_RUNE:
                    self.pos = end + 1
                    return int(digits, 16)
            else:
                digits = src[self.pos : self.pos + 2]
                if len(digits) == 2 and all(d in _HEX for d in digits):
                    self.pos += 2
                    return int(digits, 16)
        if c in _C_ESCAPES:
            return _C_ESCAPES[c]
        raise _RegexpError(f"invalid escape sequence: {src[start : self.pos]}")

    def _parse_class(self) -> _Ranges:
        """Go's ``parseClass`` at ``self.pos`` (a ``[``): the set of code points."""
        src = self.src
        whole = src[self.pos :]
        self.pos += 1
        negated = src.startswith("^", self.pos)
        if negated:
            self.pos += 1
        ranges: _Ranges = []
        first = True  # "]" and "-" are literal right after "[" or "[^"
        while self.pos >= len(src) or src[self.pos] != "]" or first:
            first = False
            if src.startswith("[:", self.pos) and len(src) - self.pos > 2:
                end = src.find(":]", self.pos + 2)
                if end >= 0:
                    name = src[self.pos + 2 : end]
                    self.pos = end + 2
                    neg = name.startswith("^")
                    group = _POSIX_CLASSES.get(name[1:] if neg else name)
                    if group is None:
                        raise _RegexpError(f"invalid character class range: [:{name}:]")
                    ranges += _negate(group) if neg else group
                    continue
            if src.startswith(("\\p", "\\P"), self.pos):
                raise _RegexpError("\\p and \\P Unicode classes are not supported")
            if src.startswith("\\", self.pos) and src[self.pos + 1 : self.pos + 2] in _PERL_LETTERS:
                ranges += self._perl_class(src[self.pos + 1])
                self.pos += 2
                continue
            start = self.pos
            lo = self._class_char(whole)
            hi = lo
            if src.startswith("-", self.pos) and src[self.pos + 1 : self.pos + 2] not in ("", "]"):
                self.pos += 1
                hi = self._class_char(whole)
                if hi < lo:
                    raise _RegexpError(f"invalid character class range: {src[start : self.pos]}")
            ranges.append((lo, hi))
        self.pos += 1  # the closing "]"
        return _negate(ranges) if negated else _merge(ranges)

    def _class_char(self, whole: str) -> int:
        if self.pos >= len(self.src):
            raise _RegexpError(f"missing closing ]: {whole}")
        if self.src[self.pos] == "\\":
            return self._parse_escape()
        self.pos += 1
        return ord(self.src[self.pos - 1])


def _translate(go_source: str) -> re.Pattern[str]:
    if any("\ud800" <= c <= "\udfff" for c in go_source):
        # Go's regexp parser refuses invalid UTF-8, which is what these stand for.
        raise _RegexpError("invalid UTF-8")
    python = _GoRegexpTranslator(go_source).translate()
    try:
        return re.compile(python, re.ASCII)
    except re.error as err:  # a translator bug, not a user error; say so plainly
        raise _RegexpError(f"cannot translate regexp {go_source!r}: {err}") from err


# --------------------------------------------------------------------------------------
# The matcher


@dataclass(frozen=True, slots=True)
class _Pattern:
    text: str  # after Clean, without the "!"
    exclusion: bool
    kind: _Kind
    literal: str  # EXACT: the text; PREFIX: the prefix; SUFFIX: the suffix
    regexp: re.Pattern[str] | None
    simple: bool  # only literals, "*" and "?": each "/" in the text separates segments

    def match(self, path: str) -> bool:
        if self.kind is _Kind.EXACT:
            return path == self.literal
        if self.kind is _Kind.PREFIX:
            return path.startswith(self.literal)
        if self.kind is _Kind.SUFFIX:
            return path.endswith(self.literal) or (
                self.literal.startswith("/") and path == self.literal[1:]
            )
        assert self.regexp is not None
        return self.regexp.search(path) is not None

    def could_match_below(self, directory: str) -> bool:
        """Whether some path strictly under ``directory`` might match (never a false no)."""
        below = directory + "/"
        if self.kind is _Kind.EXACT:
            return self.literal.startswith(below)
        if self.kind is _Kind.PREFIX:
            return self.literal.startswith(below) or below.startswith(self.literal)
        if not self.simple:
            return True
        # Each "*" and "?" stays inside one path segment, so the pattern only matches
        # paths with as many segments, each matching its own piece.
        pieces = self.text.split("/")
        parts = directory.split("/")
        if len(pieces) <= len(parts):
            return False
        return all(
            _segment_regexp(piece).fullmatch(part) is not None
            for piece, part in zip(pieces, parts, strict=False)
        )


def _segment_regexp(piece: str) -> re.Pattern[str]:
    body = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in piece)
    return re.compile(body)


# Characters that can make a pattern's regexp cross or ignore segment boundaries.
_NOT_SIMPLE = frozenset("[]\\^|{}")


def _compile(raw: str) -> _Pattern | None:
    """One pattern as patternmatcher's ``New`` (then ``compile``) handles it."""
    text = _go_trim_space(raw)
    if not text:
        return None
    text = _go_clean(text)
    exclusion = text.startswith("!")
    if exclusion:
        if len(text) == 1:
            raise SouteError('illegal exclusion pattern: "!"', hint="'!' needs a pattern after it")
        text = text[1:]
    shown = _go_trim_space(raw)
    try:
        _check_glob_syntax(text)
    except _BadPattern as err:
        raise SouteError(f"invalid pattern {shown!r}: syntax error in pattern ({err})") from None
    kind, source = _go_regexp_source(text)
    regexp = None
    literal = text
    if kind is _Kind.PREFIX:
        literal = text[:-2]
    elif kind is _Kind.SUFFIX:
        # Go slices off two bytes; after a BOM (3 bytes) that leaves its last byte.
        literal = "\udcbf" + text[1:] if text.startswith(_BOM) else text[2:]
    elif kind is _Kind.REGEXP:
        try:
            regexp = _translate(source)
        except _RegexpError as err:
            raise SouteError(
                f"invalid pattern {shown!r}: {err}",
                hint="'[...]' classes and '\\' escapes follow Go regexp rules",
            ) from None
    simple = (
        not text.startswith(_BOM) and "**" not in text and not any(c in _NOT_SIMPLE for c in text)
    )
    return _Pattern(text, exclusion, kind, literal, regexp, simple)


def _clean_path(path: str) -> str:
    return _go_clean(path.lstrip("/"))


def _parent_dirs(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``: the ancestors patternmatcher also tries."""
    parent = _go_dir(path)
    if parent == ".":
        return []
    parts = parent.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


class PatternMatcher:
    """Exclude patterns (``.dockerignore`` lines, ``COPY --exclude``) over context paths.

    Each pattern is cleaned (``filepath.Clean``), ``!`` marks an exception, and the last
    pattern that matches a path decides. A pattern also matches a path when it matches
    one of the path's parent directories, so ``docs`` excludes ``docs/a/b``.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        compiled = (_compile(p) for p in patterns)
        self._patterns = [p for p in compiled if p is not None]
        self._exceptions = [p for p in self._patterns if p.exclusion]

    @property
    def patterns(self) -> list[str]:
        """The cleaned patterns, exceptions with their ``!``."""
        return [("!" if p.exclusion else "") + p.text for p in self._patterns]

    @property
    def has_exceptions(self) -> bool:
        return bool(self._exceptions)

    def matches(self, path: str) -> bool:
        """Whether ``path`` (relative to the context, ``/``-separated) is excluded.

        patternmatcher's ``MatchesOrParentMatches``; the path is cleaned first and ``.``
        (the context itself) is never excluded.
        """
        path = _clean_path(path)
        if path == ".":
            return False
        parents: list[str] | None = None
        matched = False
        for pattern in self._patterns:
            # Only a rule that could flip the answer needs looking at.
            if pattern.exclusion != matched:
                continue
            hit = pattern.match(path)
            if not hit:
                if parents is None:
                    parents = _parent_dirs(path)
                hit = any(pattern.match(parent) for parent in parents)
            if hit:
                matched = not pattern.exclusion
        return matched

    def matches_in_walk(
        self, path: str, parent: Sequence[bool] | None = None
    ) -> tuple[bool, tuple[bool, ...]]:
        """``matches`` as BuildKit's context walk (fsutil) computes it, top-down.

        Pass ``None`` for a path at the top of the context; for a path inside a
        directory, pass the second value this returned for that directory. This is
        patternmatcher's ``MatchesUsingParentResults``; it differs from :meth:`matches`
        in rare orderings, e.g. ``a``, ``!a/b``, ``a`` leaves ``a/b`` included here but
        excluded by :meth:`matches`, because the third rule is not re-tried below ``a``.
        """
        path = _clean_path(path)
        if parent is not None and len(parent) != len(self._patterns):
            raise ValueError("parent match info is for another matcher")
        parents: list[str] | None = None
        matched = False
        info: list[bool] = []
        for i, pattern in enumerate(self._patterns):
            hit = parent is not None and parent[i]
            if not hit:
                if pattern.exclusion != matched:
                    info.append(False)
                    continue
                hit = pattern.match(path)
                if not hit and parent is None:
                    if parents is None:
                        parents = _parent_dirs(path)
                    hit = any(pattern.match(p) for p in parents)
            info.append(hit)
            if hit:
                matched = not pattern.exclusion
        return matched, tuple(info)

    def excludes_dir_entirely(self, dir_path: str) -> bool:
        """Whether the directory is excluded and nothing beneath it can come back.

        True means a context walk may skip the whole tree. That holds when the directory
        is excluded and no ``!`` exception can match a path below it: every rule that
        matched the directory also matches everything below it, so only such an
        exception could change the answer there. Like fsutil, a literal exception keeps
        the directory open only when it names something inside it. Unlike fsutil, which
        then walks everything, an exception with ``*`` or ``?`` is checked segment by
        segment; only ``**``, ``[...]``, ``\\``, ``^``, ``|`` or ``{}`` make us assume the
        worst.
        """
        path = _clean_path(dir_path)
        if path == "." or not self.matches(path):
            return False
        return not any(p.could_match_below(path) for p in self._exceptions)

    def __repr__(self) -> str:
        return f"PatternMatcher({self.patterns!r})"
