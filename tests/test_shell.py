"""Tests of the shell-word lexer against BuildKit's own test vectors and verified behaviour."""

from __future__ import annotations

import itertools
import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soute.dockerfile.shell import (
    MAX_NESTING,
    Expansion,
    ExpansionError,
    Lexer,
    _glob,
    _reverse_pattern,
)
from soute.errors import SouteError

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
SHELL_VECTORS = CONFORMANCE / "buildkit" / "frontend" / "dockerfile" / "shell"

# The environment BuildKit's lex_test.go uses for envVarTest; NULL is set and empty.
ENV_VAR_TEST_ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}


# -- corpus readers (the same reading as lex_test.go) ------------------------------------------


@dataclass(frozen=True)
class EnvVarCase:
    line: int
    source: str
    expected: str  # "error": expansion must fail


@dataclass(frozen=True)
class WordsCase:
    line: int
    source: str
    expected: list[str]  # ["error"]: expansion must fail
    env: dict[str, str]


def _lines(name: str) -> list[str]:
    # Read bytes as they are: the files' backslashes are data, not escapes (bufio.Scanner).
    lines = (SHELL_VECTORS / name).read_text(encoding="utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it starts no new one
    return [line.removesuffix("\r") for line in lines]


def read_env_var_test() -> tuple[list[EnvVarCase], int]:
    """The Unix cases (platforms A and U) of envVarTest, and how many W lines were left out."""
    cases: list[EnvVarCase] = []
    windows = 0
    for number, raw in enumerate(_lines("envVarTest"), start=1):
        if raw.startswith("#"):  # comments only at column 0; checked before trimming
            continue
        line = raw.strip()
        if not line:
            continue
        fields = line.split("|")
        assert len(fields) == 3, f"envVarTest:{number}: {raw!r}"
        platform, source, expected = (field.strip() for field in fields)
        assert platform in ("A", "U", "W"), f"envVarTest:{number}: platform {platform!r}"
        if platform == "W":
            windows += 1
            continue
        cases.append(EnvVarCase(number, source, expected))
    return cases, windows


def read_words_test() -> list[WordsCase]:
    """wordsTest's cases, each with the environment its preceding ENV lines built."""
    cases: list[WordsCase] = []
    env: dict[str, str] = {}
    for number, line in enumerate(_lines("wordsTest"), start=1):
        if line.startswith("#"):
            continue
        if line.startswith("ENV "):
            key, _, value = line[3:].lstrip(" ").partition("=")
            env = {**env, key: value}
            continue
        fields = line.split("|")
        assert len(fields) == 2, f"wordsTest:{number}: {line!r}"
        # Only the left side of the expectation is trimmed: trailing blanks are data.
        expected = fields[1].lstrip(" ").split(",")
        cases.append(WordsCase(number, fields[0].strip(), expected, env))
    return cases


ENV_VAR_CASES, ENV_VAR_WINDOWS = read_env_var_test()
WORDS_CASES = read_words_test()


def run_env_var_case(case: EnvVarCase) -> str | None:
    """None when the case passes, else what went wrong."""
    try:
        got = Lexer("\\").process_word(case.source, ENV_VAR_TEST_ENV)
    except ExpansionError as err:
        return None if case.expected == "error" else f"unexpected error: {err}"
    if case.expected == "error":
        return f"expected an error, got {got!r}"
    return None if got == case.expected else f"expected {case.expected!r}, got {got!r}"


def run_words_case(case: WordsCase) -> str | None:
    try:
        got = Lexer("\\").process_words(case.source, case.env)
    except ExpansionError:
        got = ["error"]
    return None if got == case.expected else f"expected {case.expected!r}, got {got!r}"


# -- the corpora -------------------------------------------------------------------------------


def test_corpora_are_complete() -> None:
    # 230 case lines in envVarTest, 2 of them Windows-only; 24 cases in wordsTest.
    assert len(ENV_VAR_CASES) + ENV_VAR_WINDOWS == 230
    assert ENV_VAR_WINDOWS == 2
    assert len(WORDS_CASES) == 24


@pytest.mark.parametrize("case", ENV_VAR_CASES, ids=lambda c: f"line{c.line}")
def test_env_var_corpus(case: EnvVarCase) -> None:
    problem = run_env_var_case(case)
    assert problem is None, f"envVarTest:{case.line} {case.source!r}: {problem}"


@pytest.mark.parametrize("case", WORDS_CASES, ids=lambda c: f"line{c.line}")
def test_words_corpus(case: WordsCase) -> None:
    problem = run_words_case(case)
    assert problem is None, f"wordsTest:{case.line} {case.source!r}: {problem}"


def test_corpus_counts() -> None:
    """Prints the pass counts (run pytest with -s to see them); all must pass."""
    env_failures = [c.line for c in ENV_VAR_CASES if run_env_var_case(c) is not None]
    words_failures = [c.line for c in WORDS_CASES if run_words_case(c) is not None]
    env_passed = len(ENV_VAR_CASES) - len(env_failures)
    words_passed = len(WORDS_CASES) - len(words_failures)
    print(
        f"\nenvVarTest: {env_passed} passed of {len(ENV_VAR_CASES)}"
        f" ({ENV_VAR_WINDOWS} Windows-only lines not run)"
    )
    print(f"wordsTest: {words_passed} passed of {len(WORDS_CASES)}")
    assert not env_failures, f"envVarTest lines failing: {env_failures}"
    assert not words_failures, f"wordsTest lines failing: {words_failures}"


# -- lex_test.go's unit cases ------------------------------------------------------------------


def expand(word: str, env: dict[str, str], **modes: bool) -> Expansion:
    return Lexer(**modes).process_word_with_matches(word, env)


def error_of(word: str, env: dict[str, str] | None = None, **modes: bool) -> ExpansionError:
    with pytest.raises(ExpansionError) as info:
        Lexer(**modes).process_word(word, env or {})
    return info.value


def test_mandatory_variables() -> None:
    set_env = {"VAR": "plain", "ARG": "x"}
    empty_env = {"VAR": "", "ARG": "x"}
    unset_env = {"ARG": "x"}
    lexer = Lexer()
    not_empty = "${VAR:?message here$ARG}"
    not_unset = "${VAR?message here$ARG}"
    assert lexer.process_word(not_empty, set_env) == "plain"
    assert "message herex" in str(error_of(not_empty, empty_env))
    assert "message herex" in str(error_of(not_empty, unset_env))
    assert lexer.process_word(not_unset, set_env) == "plain"
    assert lexer.process_word(not_unset, empty_env) == ""
    assert "message herex" in str(error_of(not_unset, unset_env))


XY = {"FOO": "xxx", "BAR": ""}

# (word, env, expected result or None for an error, matched, unmatched)
MATCH_CASES: list[tuple[str, dict[str, str], str | None, set[str], set[str]]] = [
    ("x", {"DUMMY": "dummy"}, "x", set(), set()),
    ("x ${UNUSED}", {"DUMMY": "dummy"}, "x ", set(), {"UNUSED"}),
    ("x ${FOO}", {"FOO": "y"}, "x y", {"FOO"}, set()),
    ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", XY, "xxx  ccc", {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", XY, "xxx bbb ccc", {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:-}", XY, "xxx", {"FOO"}, set()),
    ("${FOO:-}", {}, "", set(), {"FOO"}),
    ("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", XY, "aaa bbb ", {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", XY, "aaa  ", {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO?aaa}", XY, "xxx", {"FOO"}, set()),
    ("${BAR?bbb}", XY, "", {"BAR"}, set()),
    ("${BAZ?ccc}", XY, None, set(), set()),
    ("${FOO:?aaa}", XY, "xxx", {"FOO"}, set()),
    ("${BAR:?bbb}", XY, None, set(), set()),
    ("${BAZ:?ccc}", XY, None, set(), set()),
    ("${BAZ:?}", XY, None, set(), set()),
    ("${FOO=aaa}", XY, None, set(), set()),
    ("${FOO=:aaa}", XY, None, set(), set()),
    ("${FOO=}", {}, None, set(), set()),
    # Regular-expression characters are literal; '\}' keeps '}' out of the ${} syntax.
    ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x", {"FOO"}, set()),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx", {"FOO"}, set()),
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y", {"FOO"}, set()),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy", {"FOO", "BAR"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set()),
    ("${FOO#}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy", {"FOO"}, set()),
    ("${FOO##}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y", {"FOO"}, set()),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy.", {"FOO"}, {"ABC"}),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a", {"FOO"}, set()),
    ("${FOO%}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO%%$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set()),
    ("${FOO:#}", {}, None, set(), set()),
    ("${FOO:##}", {}, None, set(), set()),
    ("${FOO:%}", {}, None, set(), set()),
    ("${FOO:%%}", {}, None, set(), set()),
    (
        "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
        {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"},
        "/foo.*/*.txt - /foo..*.txt",
        {"FOO", "NEEDLE"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
        {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"},
        "/tmp/bar.txt - /bar.txt",
        {"FOO", "NEEDLE"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
        {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "REPLACEMENT": "/"},
        "/foo/b/c.txt - /foo/c.txt",
        {"FOO", "NEEDLE", "REPLACEMENT"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/$REPLACEMENT}",
        {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
        "https://google.de",
        {"FOO", "NEEDLE", "REPLACEMENT"},
        set(),
    ),
    # Escaped separators: the pattern loses its backslash, the replacement keeps it.
    ("${FOO//\\//\\/}", {"FOO": "/tmp/foo.txt"}, "\\/tmp\\/foo.txt", {"FOO"}, set()),
    ("${FOO/$BAR/ww}", {"FOO": "xxyy", "BAR": ""}, "wwxxyy", {"FOO", "BAR"}, set()),
    ("${FOO//ww}", {"FOO": "xxyy"}, None, set(), set()),
    ("${FOO//}", {"FOO": "xxyy"}, None, set(), set()),
    ("${FOO///}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO///}", {}, "", set(), {"FOO"}),
]


@pytest.mark.parametrize(("word", "env", "expected", "matched", "unmatched"), MATCH_CASES)
def test_process_with_matches(
    word: str, env: dict[str, str], expected: str | None, matched: set[str], unmatched: set[str]
) -> None:
    if expected is None:
        error_of(word, env)
        return
    got = expand(word, env)
    assert got.result == expected
    assert got.matched == matched
    assert got.unmatched == unmatched


def test_release_file_name_pattern() -> None:
    word = (
        "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz"
    )
    base = {"VERSION": "v1.2.3", "TARGETOS": "linux"}
    arm = {**base, "TARGETARCH": "arm", "TARGETVARIANT": "v7"}
    assert Lexer().process_word(word, arm) == "something-v1.2.3.linux-arm-v7.tar.gz"
    arm64 = {**base, "TARGETARCH": "arm64"}
    assert Lexer().process_word(word, {**arm64, "TARGETVARIANT": ""}) == (
        "something-v1.2.3.linux-arm64.tar.gz"
    )
    assert Lexer().process_word(word, arm64) == "something-v1.2.3.linux-arm64.tar.gz"


@pytest.mark.parametrize(
    ("pattern", "reversed_"),
    [
        ("a\\*c", "c\\*a"),
        ("\\\\\\ab", "b\\a\\\\"),
        ("ab\\", "\\ba"),
        ("👽\\🚀🖖", "🖖\\🚀👽"),
        ("\\\\b", "b\\\\"),
    ],
)
def test_reverse_pattern(pattern: str, reversed_: str) -> None:
    assert _reverse_pattern(pattern) == reversed_


@pytest.mark.parametrize("pattern", ["\\", "\\x", "\\\\\\"])
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(Exception, match="invalid escape"):
        _glob(pattern)


# -- error messages (checked against BuildKit) -------------------------------------------------


@pytest.mark.parametrize(
    ("word", "reason"),
    [
        ("${XXX:?}", "XXX: is not allowed to be unset"),
        ("${XXX?}", "XXX: is not allowed to be unset"),
        ("${NULL:?}", "NULL: is not allowed to be empty"),
        ("${XXX?custom $V}", "XXX: custom x"),
        ("${PWD:=000}", "unsupported modifier (:=) in substitution"),
        ("${FOO=1}", "unsupported modifier (=) in substitution"),
        ("${V:#x}", "unsupported modifier (:#) in substitution"),
        ("${V:x}", "unsupported modifier (:x) in substitution"),
        ("${b:}x}", "unsupported modifier (:}) in substitution"),
        ("${.}", "unsupported modifier (.) in substitution"),
        ("${}", "syntax error: bad substitution"),
        ("${{a}", "syntax error: bad substitution"),
        ("${:-a}", "syntax error: bad substitution"),
        ("${", "syntax error: missing '}'"),
        ("${b:", "syntax error: missing '}'"),
        ("${V:-a", "syntax error: missing '}'"),
        ("${V/a", "syntax error: missing '/' in ${}"),
        ("${V/a/b", "syntax error: missing '}'"),
        ('a"b', "unexpected end of statement while looking for matching double-quote"),
        ("a'b", "unexpected end of statement while looking for matching single-quote"),
        # An error inside a nested word is kept unless the input ran out meanwhile.
        ("x${x:-${y:?boom}}z", "y: boom"),
        ("x${x:-${y:?boom}", "syntax error: missing '}'"),
        ("${V:-'a}", "syntax error: missing '}'"),
        ("${V#\\x}", "invalid pattern (\\x) in substitution: invalid escape '\\x'"),
        # '%' matches backwards, so BuildKit names the reversed pattern.
        ("${V%'a\\'}", "invalid pattern (\\a) in substitution: invalid escape '\\a'"),
    ],
)
def test_error_reasons(word: str, reason: str) -> None:
    err = error_of(word, {"NULL": "", "V": "x"})
    assert err.reason == reason
    assert err.word == word
    assert isinstance(err, SouteError)


def test_expansion_error_pickles() -> None:
    err = error_of("${X:?gone}")
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.reason, copy.word) == (str(err), "X: gone", "${X:?gone}")


def test_unclosed_name_says_missing_brace() -> None:
    # BuildKit says "unsupported modifier (\ufffd)" here, a Go artefact; we name the real problem.
    assert error_of("he${PWD").reason == "syntax error: missing '}'"
    assert "at end of pattern" in error_of("${V#'a\\'}", {"V": "x"}).reason


def test_error_message_quotes_word_like_go() -> None:
    err = error_of('x\ty"\x01é')
    expected = 'failed to process "x\\ty\\"\\x01é": '
    assert (
        str(err) == expected + "unexpected end of statement while looking for matching double-quote"
    )


# -- behaviour beyond the corpus (checked against BuildKit) ------------------------------------


@pytest.mark.parametrize(
    ("word", "env", "expected"),
    [
        ("${V%/*}", {"V": "/a/b/c"}, "/a/b"),
        ("${V%%/*}", {"V": "/a/b/c"}, ""),
        ("${V#*/}", {"V": "/a/b/c"}, "a/b/c"),
        ("${V##*/}", {"V": "/a/b/c"}, "c"),
        ("${V%.*}", {"V": "archive.tar.gz"}, "archive.tar"),
        ("${V%%.*}", {"V": "archive.tar.gz"}, "archive"),
        ("${V/b/${E}x}", {"V": "/a/b/c", "E": ""}, "/a/x/c"),
        ("${V//*/-}", {"V": "/a/b/c"}, "-"),
        ("${V//$E/-}", {"V": "/a/b", "E": ""}, "-/-a-/-b-"),
        # Wildcards do not match newlines (Go regexp's '.').
        ("${V//*/-}", {"V": "a\nb"}, "-\n-"),
        ("${V#*}", {"V": "a\nb"}, "a\nb"),
        ("${V##*}", {"V": "a\nb"}, "\nb"),
        ("${V//?/.}", {"V": "a\nb"}, ".\n."),
        # '//' runs the replacement through Go's template expansion, '/' does not.
        ("${V//b/$R}", {"V": "abc", "R": "<$0>"}, "a<b>c"),
        ("${V//b/$R}", {"V": "abc", "R": "<${0}$$>"}, "a<b$>c"),
        ("${V//b/$R}", {"V": "abc", "R": "<$x$>"}, "a<$>c"),
        ("${V/b/$R}", {"V": "abc", "R": "<$0>"}, "a<$0>c"),
        # Within '#'/'%' words, escapes stay for the pattern; quotes still group.
        ('${V#"#"x}', {"V": "xy"}, "y"),
        ("${V#'*'}", {"V": "*a"}, "*a"),
        # Unicode names and values.
        ("$한국어", {"한국어": "k"}, "k"),
        ("${V%어}", {"V": "한국어"}, "한국"),
        # Special and positional parameters are ordinary lookups.
        ("$1x$@y", {"1": "one"}, "onexy"),
        ("${10}", {"10": "ten"}, "ten"),
        # A byte-order mark at the very start is dropped, as Go's scanner does.
        ("\ufeffab", {}, "ab"),
        ("a\ufeff", {}, "a\ufeff"),
        # Escapes in double quotes only escape ", $ and the escape token.
        ('"a\\tb\\\\c\\"d\\$e"', {}, 'a\\tb\\c"d$e'),
        ("a\\", {}, "a"),
    ],
)
def test_expansions(word: str, env: dict[str, str], expected: str) -> None:
    assert Lexer().process_word(word, env) == expected


def test_backtick_escape() -> None:
    lexer = Lexer("`")
    assert lexer.process_word("a`$V`b\\c", {"V": "x"}) == "a$Vb\\c"
    assert lexer.process_word('"a`"b``"', {}) == 'a"b`'
    # Patterns keep backslash as their escape whatever the escape token is.
    assert lexer.process_word("${V%\\*}", {"V": "a*"}) == "a"


@pytest.mark.parametrize(
    ("word", "env", "words"),
    [
        ("a b\tc\nd", {}, ["a", "b", "c", "d"]),
        ("''", {}, []),
        ("a '' b", {}, ["a", "b"]),
        ("$S", {"S": " a  b "}, ["a", "b"]),
        ('"$S"', {"S": " a  b "}, [" a  b "]),
        ("a\\ b", {}, ["a b"]),
        # Go's white space, not Python's: U+3000 splits, U+001C does not.
        ("a\u3000b\x1cc", {}, ["a", "b\x1cc"]),
        # '<<' keeps the blanks after it inside its word (heredoc marker).
        ("cat << EOF", {}, ["cat", "<< EOF"]),
        ("a < b", {}, ["a", "<", "b"]),
        # BuildKit quirk: a ${name<op>word} form drops what precedes it in the same word.
        ("ab${x:-c}d", {}, ["cd"]),
        ('ab"${x:-c}"d', {}, ["cd"]),
        ("a${X#1} b", {"X": "1"}, ["b"]),
        ("ab ${x:-c}d", {}, ["ab", "cd"]),
        ("ab${X}d", {"X": "1"}, ["ab1d"]),
        ("x${S:+$S}y", {"S": "a b"}, ["a", "by"]),
    ],
)
def test_words(word: str, env: dict[str, str], words: list[str]) -> None:
    assert Lexer().process_words(word, env) == words
    assert Lexer().process_word_with_matches(word, env).words == words


# -- modes -------------------------------------------------------------------------------------


def test_raw_quotes() -> None:
    lexer = Lexer(raw_quotes=True)
    assert lexer.process_word("'a b'\"$V\"", {"V": "x"}) == "'a b'\"x\""
    assert lexer.process_words("a'b c'd e", {}) == ["a'b c'd", "e"]


def test_raw_escapes() -> None:
    lexer = Lexer(raw_escapes=True)
    assert lexer.process_word("a\\ b\\$V", {"V": "x"}) == "a\\ b\\$V"
    assert lexer.process_words("a\\ b c\\", {}) == ["a\\ b", "c\\"]
    # BuildKit quirk: a literal escape in double quotes is then written twice.
    assert lexer.process_word('"a\\tb"', {}) == "a\\\\tb"
    # ${name:-word} words are read without raw escapes even in this mode.
    assert lexer.process_word("${X:-\\$}", {}) == "$"


def test_skip_process_quotes() -> None:
    lexer = Lexer(skip_process_quotes=True)
    assert lexer.process_word("'$V' \"$V\"", {"V": "x"}) == "'x' \"x\""
    assert lexer.process_words("'a b'", {}) == ["'a", "b'"]
    assert lexer.process_word("it's", {}) == "it's"


def test_skip_unset_env() -> None:
    lexer = Lexer(skip_unset_env=True)
    env = {"SET": "s"}
    assert lexer.process_word("$SET $UNSET $1", env) == "s $UNSET $1"
    assert lexer.process_word("${UNSET} ${UNSET:-d} ${SET:-d}", env) == "${UNSET} ${UNSET:-d} s"
    assert lexer.process_word("${UNSET#a*} ${UNSET:?m}", env) == "${UNSET#a*} ${UNSET:?m}"
    # Unsupported modifiers pass through for an unset name ...
    assert lexer.process_word("${UNSET:=x} ${UNSET:x}", env) == "${UNSET:=x} ${UNSET:x}"
    # ... but not '=' without ':', which fails before the name is looked up.
    with pytest.raises(ExpansionError):
        lexer.process_word("${UNSET=x}", env)
    # BuildKit quirk: '//' comes back as '/'.
    assert lexer.process_word("${UNSET//a/b}", env) == "${UNSET/a/b}"
    assert lexer.process_word("${SET//s/t}", env) == "t"


def test_matched_and_unmatched() -> None:
    got = expand("$A ${B:-$C} ${D+x} $1 $@ ${A#$B}", {"A": "a", "D": ""})
    assert got == Expansion(
        "a  x   a", ["a", "x", "a"], frozenset({"A", "D"}), frozenset({"B", "C", "1", "@"})
    )
    # Names inside a word that is not used are still looked up.
    assert expand("${A:+$B}", {"A": "a", "B": "b"}).matched == {"A", "B"}
    assert expand("${A:-$B}", {"A": "a"}).unmatched == {"B"}
    # '$' before a non-name is literal and looks nothing up.
    assert expand("$. $", {}) == Expansion("$. $", ["$.", "$"], frozenset(), frozenset())


def test_lexer_options() -> None:
    assert Lexer("`").escape == "`"
    with pytest.raises(ValueError):
        Lexer("/")


def test_deep_nesting_is_an_expansion_error() -> None:
    deep = "${a:-" * (MAX_NESTING + 1) + "x" + "}" * (MAX_NESTING + 1)
    with pytest.raises(ExpansionError, match="nested"):
        Lexer().process_word(deep, {})
    ok = "${a:-" * MAX_NESTING + "x" + "}" * MAX_NESTING
    assert Lexer().process_word(ok, {}) == "x"


def test_long_patterns_and_values() -> None:
    value = "ab" * 2000
    assert Lexer().process_word("${V#" + "?" * 3000 + "}", {"V": value}) == value[3000:]
    assert Lexer().process_word("${V%%*a*b*a*b}", {"V": value}) == ""
    assert Lexer().process_word("${V//a*a/-}", {"V": value}) == "-b"


# -- fuzzing -----------------------------------------------------------------------------------

ALL_LEXERS = [
    Lexer(escape, raw_quotes=rq, raw_escapes=re_, skip_process_quotes=sq, skip_unset_env=su)
    for escape in ("\\", "`")
    for rq, re_, sq, su in itertools.product((False, True), repeat=4)
]
SYNTAX = st.sampled_from(
    [
        *"${}:-+?=#%/\\`'\"*<\n\t ab1@_",
        *("${", "${a", "$a", ":-", ":?", "##", "%%", "//", "<<", "\\}", "\ufeff", "한"),
    ]
)
WORDS = st.lists(st.one_of(SYNTAX, st.text(max_size=3)), max_size=25).map("".join)
ENVS = st.dictionaries(
    st.sampled_from(["a", "b", "1", "@", "_", "한"]),
    st.lists(st.one_of(SYNTAX, st.text(max_size=2)), max_size=6).map("".join),
    max_size=4,
)


@settings(max_examples=600, deadline=None)
@given(word=WORDS, env=ENVS, lexer=st.sampled_from(ALL_LEXERS))
def test_fuzz_only_expansion_errors(word: str, env: dict[str, str], lexer: Lexer) -> None:
    try:
        expansion = lexer.process_word_with_matches(word, env)
    except ExpansionError as err:
        assert str(err).startswith("failed to process ")
        with pytest.raises(ExpansionError):
            lexer.process_word(word, env)
        with pytest.raises(ExpansionError):
            lexer.process_words(word, env)
        return
    assert isinstance(expansion.result, str)
    assert all(isinstance(w, str) and w for w in expansion.words)
    assert lexer.process_word(word, env) == expansion.result
    assert lexer.process_words(word, env) == expansion.words
    assert expansion.matched <= env.keys()
    assert not expansion.unmatched & env.keys()
