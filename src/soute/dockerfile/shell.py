"""Shell-word expansion of Dockerfile instruction arguments, as BuildKit does it.

Behaviour follows BuildKit's ``frontend/dockerfile/shell`` lexer: quotes, the escape token,
``$name`` / ``${name}`` and the ``${name<op>word}`` forms, special and positional parameters
(looked up like any name, so normally empty) and word splitting. BuildKit's quirks are kept on
purpose so that a Dockerfile expands here exactly as it does under ``docker build``; each one is
marked "BuildKit quirk". Deliberate differences, all on inputs BuildKit rejects anyway or could
not handle sensibly:

- ``${name`` cut off after the name says "missing '}'" (BuildKit: "unsupported modifier (U+FFFD)").
- A pattern ending in a lone backslash says ``invalid escape '\\' at end of pattern``.
- Nesting deeper than ``MAX_NESTING`` ``${...}`` levels is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache

from soute.dockerfile.goquote import go_quote
from soute.errors import SouteError

__all__ = ["MAX_NESTING", "Expansion", "ExpansionError", "Lexer"]

#: How many ``${...}`` operator words may nest inside each other.
MAX_NESTING = 64

# Characters that name a special parameter after ``$`` (POSIX 2.5.2); they expand like names.
_SPECIAL_PARAMS = frozenset("@*#?-$!0")
# Go's unicode.IsSpace: the set that word splitting uses (narrower than Python's str.isspace).
_WS_RUN = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
# After ``<<`` BuildKit keeps this whitespace inside the heredoc word.
_HEREDOC_SPACE = frozenset(" \t\r")
_BOM = "\ufeff"
_MISSING_BRACE = "syntax error: missing '}'"


class ExpansionError(SouteError):
    """A word could not be expanded; ``reason`` is BuildKit's wording of why."""

    def __init__(self, reason: str, word: str) -> None:
        self.reason = reason
        self.word = word
        super().__init__(f"failed to process {go_quote(word)}: {reason}")

    def __reduce__(self) -> tuple[type[ExpansionError], tuple[str, str]]:
        return (type(self), (self.reason, self.word))  # args hold the message, not these


@dataclass(frozen=True)
class Expansion:
    """The outcome of expanding one word."""

    result: str
    words: list[str]
    matched: frozenset[str]
    unmatched: frozenset[str]


class Lexer:
    """Expands variables in, and splits, Dockerfile words.

    ``escape`` is the Dockerfile's escape token (backslash or backtick). The flags match
    BuildKit's: ``raw_quotes`` keeps quote characters in the output, ``raw_escapes`` keeps escape
    tokens, ``skip_process_quotes`` treats quotes as ordinary characters and ``skip_unset_env``
    leaves references to unset variables as written. Instances hold no per-call state, so they
    may be shared.
    """

    __slots__ = ("_escape", "raw_escapes", "raw_quotes", "skip_process_quotes", "skip_unset_env")

    def __init__(
        self,
        escape: str = "\\",
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_process_quotes: bool = False,
        skip_unset_env: bool = False,
    ) -> None:
        if escape not in ("\\", "`"):
            raise ValueError(f"escape token must be '\\' or '`', not {escape!r}")
        self._escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_process_quotes = skip_process_quotes
        self.skip_unset_env = skip_unset_env

    @property
    def escape(self) -> str:
        return self._escape

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        """``word`` with every variable reference expanded and quotes removed."""
        if (
            not word.startswith(_BOM)
            and _specials(self._plain_chars("", False)).search(word) is None
        ):
            return word  # hot path: nothing to expand
        return self._run(word, env, False).result

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """``word`` expanded and split into words at unquoted, unescaped whitespace."""
        return self._run(word, env, True).words

    def process_word_with_matches(self, word: str, env: Mapping[str, str]) -> Expansion:
        """The expansion of ``word``, its words, and which names were (not) found in ``env``."""
        scan = self._run(word, env, True)
        return Expansion(
            scan.result, scan.words, frozenset(scan.matched), frozenset(scan.unmatched)
        )

    def _plain_chars(self, stop: str, heredoc: bool) -> str:
        """The characters that interrupt a run of ordinary text."""
        quotes = "" if self.skip_process_quotes else "'\""
        return "$" + self._escape + quotes + stop + ("<" if heredoc else "")

    def _run(self, word: str, env: Mapping[str, str], want_words: bool) -> _Scan:
        scan = _Scan(self, word, env, want_words)
        try:
            scan.result = scan.until("", scan.raw_escapes, top=True)
        except _Fail as err:
            raise ExpansionError(err.reason, word) from None
        except RecursionError:  # only reachable when the caller's stack is already deep
            raise ExpansionError("expression nested too deeply", word) from None
        return scan


class _Fail(Exception):
    """An expansion failure inside the scanner; ``Lexer`` turns it into ExpansionError."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_name_char(ch: str) -> bool:
    # Go's unicode.IsLetter / IsDigit are the L* and Nd categories, as isalpha / isdecimal.
    return ch.isalpha() or ch.isdecimal() or ch == "_"


@cache
def _specials(chars: str) -> re.Pattern[str]:
    # A handful of distinct sets exist (escape x quote mode x stop x heredoc), each compiled once.
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


class _Scan:
    """The state of one expansion: the input, a cursor, the names seen and the words so far."""

    __slots__ = (
        "buf",
        "depth",
        "end",
        "env",
        "esc",
        "lexer",
        "matched",
        "pos",
        "raw_escapes",
        "result",
        "text",
        "unmatched",
        "want_words",
        "words",
    )

    def __init__(self, lexer: Lexer, text: str, env: Mapping[str, str], want_words: bool) -> None:
        self.lexer = lexer
        self.text = text
        self.end = len(text)
        # BuildKit quirk: Go's text/scanner drops a byte-order mark at the start of the input.
        self.pos = 1 if text.startswith(_BOM) else 0
        self.env = env
        self.esc = lexer.escape
        self.raw_escapes = lexer.raw_escapes
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()
        self.want_words = want_words
        self.words: list[str] = []
        # Pieces of the word being built. BuildKit shares this buffer with every nested
        # ``${name<op>word}``, which empties it: text before such an expansion is lost from the
        # words (BuildKit quirk, kept so process_words agrees with BuildKit).
        self.buf: list[str] = []
        self.depth = 0
        self.result = ""

    # -- words ---------------------------------------------------------------------------

    def _flush(self) -> None:
        word = "".join(self.buf)
        self.buf.clear()
        if word:
            self.words.append(word)

    def _add_split(self, text: str) -> None:
        """Adds text that is subject to word splitting."""
        parts = _WS_RUN.split(text)
        self.buf.append(parts[0])
        for part in parts[1:]:
            self._flush()
            self.buf.append(part)

    # -- scanning ------------------------------------------------------------------------

    def until(self, stop: str, raw_escapes: bool, *, top: bool = False) -> str:
        """Expands from the cursor up to ``stop`` (consumed), or to the end if ``stop`` is ""."""
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            return self._until(stop, top and self.want_words)
        finally:
            self.raw_escapes = saved

    def _until(self, stop: str, track: bool) -> str:
        text, end = self.text, self.end
        specials = _specials(self.lexer._plain_chars(stop, track))
        out: list[str] = []
        pos = self.pos
        while True:
            m = specials.search(text, pos)
            nxt = end if m is None else m.start()
            if nxt > pos:
                chunk = text[pos:nxt]
                out.append(chunk)
                if track:
                    self._add_split(chunk)
            if m is None:
                self.pos = end
                break
            ch = text[nxt]
            self.pos = nxt
            if ch == stop:
                self.pos = nxt + 1
                return "".join(out)
            if ch == "$":
                piece = self._dollar()
                out.append(piece)
                if track:
                    self._add_split(piece)
            elif ch == "'" or ch == '"':
                piece = self._single_quote() if ch == "'" else self._double_quote()
                out.append(piece)
                if track:
                    self.buf.append(piece)  # quoted text never splits
            elif ch == "<":  # only a special character when splitting words
                piece = self._heredoc_start()
                out.append(piece)
                self.buf.append(piece)
            else:  # the escape token
                if self.raw_escapes:
                    out.append(ch)
                    if track:
                        self.buf.append(ch)
                if nxt + 1 >= end:  # a trailing escape is dropped
                    self.pos = end
                    break
                escaped = text[nxt + 1]
                out.append(escaped)
                if track:
                    self.buf.append(escaped)
                self.pos = nxt + 2
            pos = self.pos
        if stop:
            raise _Fail(f"unexpected end of statement while looking for matching {stop}")
        if track:
            self._flush()
        return "".join(out)

    def _nested(self, stop: str, raw_escapes: bool, eof_reason: str = _MISSING_BRACE) -> str:
        """The word of a ``${name<op>word}``, up to ``stop``."""
        if self.depth >= MAX_NESTING:
            raise _Fail(f"syntax error: more than {MAX_NESTING} nested substitutions")
        self.depth += 1
        self.buf.clear()  # BuildKit quirk: see __init__
        try:
            return self.until(stop, raw_escapes)
        except _Fail:
            # Whatever went wrong, running out of input is reported as the unclosed brace.
            if self.pos >= self.end:
                raise _Fail(eof_reason) from None
            raise
        finally:
            self.depth -= 1

    def _single_quote(self) -> str:
        text, start = self.text, self.pos
        close = text.find("'", start + 1)
        if close < 0:
            self.pos = self.end
            raise _Fail("unexpected end of statement while looking for matching single-quote")
        self.pos = close + 1
        return text[start : close + 1] if self.lexer.raw_quotes else text[start + 1 : close]

    def _double_quote(self) -> str:
        text, end, esc = self.text, self.end, self.esc
        raw_quotes = self.lexer.raw_quotes
        specials = _specials('"$' + esc)
        out: list[str] = ['"'] if raw_quotes else []
        pos = self.pos + 1
        while True:
            m = specials.search(text, pos)
            if m is None:
                self.pos = end
                raise _Fail("unexpected end of statement while looking for matching double-quote")
            nxt = m.start()
            if nxt > pos:
                out.append(text[pos:nxt])
            ch = text[nxt]
            if ch == '"':
                self.pos = nxt + 1
                if raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                self.pos = nxt
                out.append(self._dollar())
                pos = self.pos
                continue
            # The escape token only escapes ", $ and itself here; otherwise it is literal.
            if self.raw_escapes:
                out.append(ch)  # BuildKit quirk: a literal escape is then written twice
            if nxt + 1 >= end:
                self.pos = end
                raise _Fail("unexpected end of statement while looking for matching double-quote")
            following = text[nxt + 1]
            if following in ('"', "$", esc):
                out.append(following)
                pos = nxt + 2
            else:
                out.append(ch)
                pos = nxt + 1

    def _heredoc_start(self) -> str:
        """``<`` alone, or ``<<`` with the blanks after it (kept in the same word)."""
        text, end, pos = self.text, self.end, self.pos
        if pos + 1 >= end or text[pos + 1] != "<":
            self.pos = pos + 1
            return "<"
        stop = pos + 2
        while stop < end and text[stop] in _HEREDOC_SPACE:
            stop += 1
        self.pos = stop
        return text[pos:stop]

    def _name(self) -> str:
        """Reads a variable name: digits, one special-parameter character, or [letter_][\\w]*."""
        text, end, pos = self.text, self.end, self.pos
        if pos >= end:
            return ""
        first = text[pos]
        stop = pos
        if first.isdecimal():
            stop += 1
            while stop < end and text[stop].isdecimal():
                stop += 1
        elif first in _SPECIAL_PARAMS:
            stop += 1
        else:
            while stop < end and _is_name_char(text[stop]):
                stop += 1
        self.pos = stop
        return text[pos:stop]

    def _lookup(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None:
            self.unmatched.add(name)
        else:
            self.matched.add(name)
        return value

    def _dollar(self) -> str:
        """Expands the reference that starts with the ``$`` at the cursor."""
        text, end = self.text, self.end
        skip_unset = self.lexer.skip_unset_env
        pos = self.pos + 1
        self.pos = pos
        if pos >= end or text[pos] != "{":
            name = self._name()
            if not name:
                return "$"
            value = self._lookup(name)
            if value is None:
                return "$" + name if skip_unset else ""
            return value

        pos += 1
        self.pos = pos
        if pos >= end:
            raise _Fail(_MISSING_BRACE)
        if text[pos] in "{}:":
            raise _Fail("syntax error: bad substitution")
        name = self._name()
        pos = self.pos
        if pos >= end:
            raise _Fail(_MISSING_BRACE)
        op = text[pos]
        self.pos = pos + 1

        if op == "}":
            value = self._lookup(name)
            if value is None:
                return "${" + name + "}" if skip_unset else ""
            return value
        if op == "/":
            return self._replace(name)

        modifier = op
        null_is_unset = op == ":"
        if null_is_unset:
            if self.pos >= end:
                raise _Fail(_MISSING_BRACE)
            op = text[self.pos]
            modifier += op
            self.pos += 1
            # Whatever follows ':' is read as the word; an unknown one fails after it.
        elif op not in "+-?#%":
            raise _Fail(f"unsupported modifier ({modifier}) in substitution")
        is_pattern = op in "#%"
        if null_is_unset and is_pattern:
            raise _Fail(f"unsupported modifier ({modifier}) in substitution")

        word = self._nested("}", is_pattern)
        value = self._lookup(name)
        if value is None and skip_unset:
            return "${" + name + modifier + word + "}"
        empty = value is None or (null_is_unset and not value)
        if op == "-":
            return word if empty else value or ""
        if op == "+":
            return "" if empty else word
        if op == "?":
            if value is None:
                raise _Fail(f"{name}: {word or 'is not allowed to be unset'}")
            if empty:
                raise _Fail(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if is_pattern:
            longest = word.startswith(op)  # '##' / '%%'
            pattern = word[1:] if longest else word
            if op == "#":
                return _trim_prefix(pattern, value or "", longest)
            return _trim_suffix(pattern, value or "", longest)
        raise _Fail(f"unsupported modifier ({modifier}) in substitution")

    def _replace(self, name: str) -> str:
        """``${name/pattern/replacement}`` and ``${name//pattern/replacement}``."""
        replace_all = self.pos < self.end and self.text[self.pos] == "/"
        if replace_all:
            self.pos += 1
        pattern = self._nested("/", True, "syntax error: missing '/' in ${}")
        replacement = self._nested("}", True)
        value = self._lookup(name)
        if value is None and self.lexer.skip_unset_env:
            # BuildKit quirk: the form is rebuilt with a single '/' even for '//'.
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        tokens = _glob(pattern)
        value = value or ""
        starts = _match_table(tokens, value, True)
        if not replace_all:
            first = _next_start(starts, 0)
            if first < 0:
                return value
            return value[:first] + replacement + value[starts[first] :]
        return _replace_all(value, starts, replacement)


# -- glob patterns ---------------------------------------------------------------------------
# A pattern is literal text with '*' (any run of characters), '?' (one character) and
# backslash escapes of '*', '?' and '\'; '\}' and '\/' stand for '}' and '/'. BuildKit turns it
# into a Go regular expression, so, as there, neither wildcard matches a newline, and the
# match chosen is the one a backtracking matcher finds first (leftmost, then earliest choices
# longest for '##'/'%%'/'/', shortest for '#'/'%').

_ANY = 1  # '?'
_STAR = 2  # '*'
_Token = str | int


@lru_cache(maxsize=512)
def _glob(pattern: str) -> tuple[_Token, ...]:
    """The tokens of ``pattern``; literal runs are merged into one string."""
    tokens: list[_Token] = []
    literal: list[str] = []
    n = len(pattern)
    # BuildKit quirk: Go's text/scanner drops a byte-order mark at the start of the pattern.
    i = 1 if pattern.startswith(_BOM) else 0
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*" or ch == "?":
            if literal:
                tokens.append("".join(literal))
                literal.clear()
            tokens.append(_STAR if ch == "*" else _ANY)
            continue
        if ch == "\\":
            if i < n and pattern[i] in "}/":
                continue  # the escape of a ${} delimiter is not part of the pattern
            if i >= n:
                raise _Fail(
                    f"invalid pattern ({pattern}) in substitution: "
                    "invalid escape '\\' at end of pattern"
                )
            ch = pattern[i]
            i += 1
            if ch not in "*?\\":
                raise _Fail(f"invalid pattern ({pattern}) in substitution: invalid escape '\\{ch}'")
        literal.append(ch)
    if literal:
        tokens.append("".join(literal))
    return tuple(tokens)


def _match_table(tokens: tuple[_Token, ...], value: str, greedy: bool) -> list[int]:
    """For each start position in ``value``, where the preferred match ends (-1: none).

    Dynamic programming from the last token back: ``ends[p]`` is where the rest of the pattern
    first matches from ``p`` in backtracking order. O(len(tokens) * len(value)), no recursion.
    """
    n = len(value)
    ends = list(range(n + 1))  # the empty rest of a pattern matches at once
    for tok in reversed(tokens):
        cur = [-1] * (n + 1)
        if tok == _ANY:
            for p in range(n):
                if value[p] != "\n":
                    cur[p] = ends[p + 1]
        elif tok == _STAR:
            # A star from p may stop anywhere in [p, first newline at or after p]: take the
            # largest (greedy) or smallest stop after which the rest matches.
            best = -1
            for p in range(n, -1, -1):
                ok = ends[p] >= 0
                if p == n or value[p] == "\n":
                    best = p if ok else -1  # a star here cannot go past p
                elif ok and (best < 0 or not greedy):
                    best = p  # scanning down: the first stop found is the largest
                cur[p] = ends[best] if best >= 0 else -1
        else:
            size = len(tok)
            p = value.find(tok)
            while p >= 0:
                cur[p] = ends[p + size]
                p = value.find(tok, p + 1)
        ends = cur
    return ends


def _next_start(starts: list[int], pos: int) -> int:
    for p in range(pos, len(starts)):
        if starts[p] >= 0:
            return p
    return -1


def _trim_prefix(pattern: str, value: str, longest: bool) -> str:
    end = _match_table(_glob(pattern), value, longest)[0]
    return value if end < 0 else value[end:]


def _trim_suffix(pattern: str, value: str, longest: bool) -> str:
    # Match the reversed pattern against the reversed value, as BuildKit does; errors
    # therefore name the reversed pattern.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], longest)[::-1]


def _reverse_pattern(pattern: str) -> str:
    """``pattern`` backwards, each backslash staying in front of the character it escapes."""
    units: list[str] = []
    i, last = 0, len(pattern) - 1
    while i <= last:
        step = 2 if pattern[i] == "\\" and i != last else 1
        units.append(pattern[i : i + step])
        i += step
    units.reverse()
    return "".join(units)


def _replace_all(value: str, starts: list[int], replacement: str) -> str:
    """Go's Regexp.ReplaceAllString over precomputed match ends."""
    out: list[str] = []
    last_end = 0
    search = 0
    n = len(value)
    while search <= n:
        start = _next_start(starts, search)
        if start < 0:
            break
        stop = starts[start]
        out.append(value[last_end:start])
        # No replacement for an empty match right after the previous match.
        if stop > last_end or start == 0:
            out.append(_expand_template(replacement, value[start:stop]))
        last_end = stop
        search = search + 1 if search + 1 > stop else stop
    out.append(value[last_end:])
    return "".join(out)


def _expand_template(template: str, match: str) -> str:
    """Go's regexp template expansion for a pattern without groups.

    BuildKit quirk: the replacement of ``//`` (not of ``/``) goes through it, so ``$$`` becomes
    ``$``, ``$0``/``${0}`` the matched text, any other ``$name``/``${name}`` nothing, and a ``$``
    that starts no name stays.
    """
    if "$" not in template:
        return template
    out: list[str] = []
    rest = template
    while rest:
        i = rest.find("$")
        if i < 0:
            break
        out.append(rest[:i])
        rest = rest[i + 1 :]
        if rest.startswith("$"):
            out.append("$")
            rest = rest[1:]
            continue
        brace = rest.startswith("{")
        j = 1 if brace else 0
        while j < len(rest) and _is_name_char(rest[j]):
            j += 1
        name = rest[1 if brace else 0 : j]
        if not name or (brace and (j >= len(rest) or rest[j] != "}")):
            out.append("$")
            continue
        rest = rest[j + 1 if brace else j :]
        if name == "0":
            out.append(match)
    out.append(rest)
    return "".join(out)


# -- Go string quoting -------------------------------------------------------------------------
