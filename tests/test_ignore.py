"""`.dockerignore` reading, file choice and pattern matching, against BuildKit's behaviour.

The expectations come from moby/patternmatcher's own test tables and from running its Go
code on the odd cases (marked "Go:"), where its regexp translation shows through.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soute.dockerfile.ignore import PatternMatcher, find_ignore_file, read_ignore_file
from soute.errors import SouteError

# (pattern, path, excluded?) for a matcher with that one pattern.
SINGLE: list[tuple[str, str, bool]] = [
    # "**" in all its places
    ("**", "file", True),
    ("**", "dir/file", True),
    ("**/", "file", True),
    ("**/**", "dir/file", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/dir2/file", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def/ghi", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**file", "file", True),
    ("**file", "dir/dir/file", True),
    ("**file", "dir/myfile", True),  # a leading "**" is a plain suffix test
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("**/foo/bar", "foo/bar", True),
    ("**/.foo", "bar.foo", False),
    ("a/*.txt**", "a/file.txt", True),
    # single-segment wildcards
    ("*", "fileutils.go", True),
    ("*.go", "fileutils.go", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a?b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("*x", "xxx", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc?def", "abcdef", False),
    # literals that look like regexp
    ("abc.def", "abcZdef", False),
    ("abc.def", "abc.def", True),
    ("a(b)c/def", "a(b)c/def", True),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    # classes and escapes
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    ("ab[^c]", "abc", False),
    ("[a-ζ]*", "α", True),
    ("*[a-ζ]", "A", False),
    ("[\\]a]", "]", True),
    ("[x\\-]", "-", True),
    ("[\\-x]", "a", False),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    ("a\\\\", "a\\", True),
    # a pattern excludes everything below what it matches
    ("docs", "docs/a/b", True),
    ("a*", "ab/c", True),
    ("docs/", "docs/README.md", True),
    ("/docs", "docs", False),  # New keeps the "/" (ReadAll would have removed it)
    # Go: the regexp shows through
    ("*.md|*.txt", "notes.md.bak", True),  # "|" is not escaped: an alternation
    ("*.md|*.txt", "a/b.txt", True),
    ("*.md|*.txt", "x", False),
    ("a|b", "a|b", True),  # no wildcard: a plain string compare
    ("a{2}*", "aa", True),  # "{2}" is a repeat
    ("a{2}*", "a{2}", False),
    ("a{,2}*", "a{,2}", True),  # ...unless Go does not read it as one
    ("[!a]x", "!x", True),  # "!" does not negate a class
    ("[!a]x", "bx", False),
    ("x[^a]y", "x/y", True),  # a negated class crosses "/"
    ("[[:digit:]]*", "7up", True),  # POSIX class
    ("\\d*", "7up", True),  # Perl class
    ("\\d*", "dup", False),
    ("a^b*", "a^bc", False),  # "^" is an anchor
    ("^abc*", "abcd", True),
    ("a^b", "a^b", True),  # ...but not without a wildcard
    ("[*]", "]", True),  # becomes "[[^/]*]": a class, a star, a "]"
    ("[*]", "*", False),
    ("\\Qab", "ab$x", True),  # \Q quotes our trailing "$" and the end anchor with it
    ("\\Qab", "ab", False),
    ("\ufeffa*", "abc", True),  # Go's text/scanner drops a leading BOM
]

# (patterns, path, excluded?)
MULTI: list[tuple[list[str], str, bool]] = [
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["docs", "!docs/README.md"], "docs/other.md", True),
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["*", "!src", "src/*.tmp"], "src/a.tmp", True),
    (["*", "!src", "src/*.tmp"], "src/a.py", False),
    (["*", "!src", "src/*.tmp"], "README", True),
    (["*", "!src", "src/*.tmp", "!src/keep.tmp"], "src/keep.tmp", False),
    ([], "anything", False),
    (["", "  ", "*.go"], "a.go", True),
    (["  !docs/README.md  ", "docs"], "docs/README.md", True),
]

# Patterns BuildKit refuses: by filepath.Match's syntax, at New, or when Go compiles the
# regexp (which BuildKit only does when the pattern is first used).
BAD: list[str] = [
    "[",
    "[^",
    "[^bc",
    "a[",
    "\\",
    "a*\\",
    "[]a]",
    "[-]",
    "[x-]",
    "[-x]",
    "[a-b-c]",
    "!",
    "a*[",  # current Go checks every chunk, not only up to the first mismatch
    "[z-a]",
    "[Local-Only]/",  # moby/moby#52203: "l-O" is a backwards range
    "[[:foo:]]x",
    "\\e*",
    "\\1*",
    "a{1001}*",
    "\\pL*",  # a Go Unicode class; Python has none, so we refuse it too
]


@pytest.mark.parametrize(("pattern", "path", "expected"), SINGLE)
def test_single_pattern(pattern: str, path: str, expected: bool) -> None:
    assert PatternMatcher([pattern]).matches(path) is expected


@pytest.mark.parametrize(("patterns", "path", "expected"), MULTI)
def test_several_patterns(patterns: list[str], path: str, expected: bool) -> None:
    assert PatternMatcher(patterns).matches(path) is expected


@pytest.mark.parametrize("pattern", BAD)
def test_bad_pattern_is_refused_when_built(pattern: str) -> None:
    with pytest.raises(SouteError) as err:
        PatternMatcher(["ok", pattern])
    assert repr(pattern.strip()) in str(err.value) or pattern == "!"


def test_context_root_is_never_excluded() -> None:
    pm = PatternMatcher(["*", "**"])
    assert not pm.matches(".")
    assert not pm.matches("")
    assert pm.matches("./a/../b")  # paths are cleaned first


def test_patterns_are_cleaned() -> None:
    pm = PatternMatcher(["docs/", " ./a//b/../c ", "!x/./y", ""])
    assert pm.patterns == ["docs", "a/c", "!x/y"]
    assert pm.has_exceptions
    assert not PatternMatcher(["a"]).has_exceptions


# --- the walk-time variant


def _walk(pm: PatternMatcher, path: str) -> bool:
    info = None
    parts = path.split("/")
    result = False
    for depth in range(len(parts)):
        result, info = pm.matches_in_walk("/".join(parts[: depth + 1]), info)
    return result


def test_walk_agrees_on_ordinary_patterns() -> None:
    for patterns, path, expected in MULTI:
        assert _walk(PatternMatcher(patterns), path) is expected


def test_walk_differs_where_buildkit_does() -> None:
    # Go: MatchesOrParentMatches says excluded, the walk (MatchesUsingParentResults)
    # says included, because the last "a" is skipped at "a" and never re-tried below it.
    pm = PatternMatcher(["a", "!a/b", "a"])
    assert pm.matches("a/b")
    assert not _walk(pm, "a/b")
    assert _walk(pm, "a/c")


def test_walk_rejects_foreign_parent_info() -> None:
    with pytest.raises(ValueError):
        PatternMatcher(["a", "b"]).matches_in_walk("a/x", (True,))


# --- skipping whole directories


@pytest.mark.parametrize(
    ("patterns", "directory", "expected"),
    [
        (["node_modules"], "node_modules", True),
        (["node_modules"], "src", False),  # not excluded at all
        (["*"], ".", False),
        (["*", "!src/main.py"], "src", False),  # an exception names something inside
        (["*", "!src/main.py"], "node_modules", True),
        (["*", "!src"], "src", False),  # re-included itself: not excluded
        (["*", "!*.md"], "node_modules", True),  # "*.md" never has a "/"
        (["*", "!*/*.md"], "node_modules", False),
        (["*", "!*/*.md"], "node_modules/sub", True),  # only one level deep
        (["*", "!node_modules/a*/x"], "node_modules/b", True),
        (["*", "!node_modules/a*/x"], "node_modules/ab", False),
        (["*", "!**/*.md"], "node_modules", False),  # "**" could be anything
        (["*", "![ab]/x"], "c", False),  # classes: assume the worst
        (["*", "!x|y/*"], "z", False),  # an alternation too
        (["*", "!src**"], "src2", False),  # a prefix pattern
        (["*", "!src**"], "lib", True),
        (["a", "!a/b", "a"], "a", False),
    ],
)
def test_excludes_dir_entirely(patterns: list[str], directory: str, expected: bool) -> None:
    assert PatternMatcher(patterns).excludes_dir_entirely(directory) is expected


# --- reading the file


def test_read_ignore_file_like_readall() -> None:
    lines = ["test1", "/test2", "/a/file/here", "", "lastfile", "# this is a comment"]
    text = "\n".join([*lines, "! /inverted/abs/path", "!", "! "])
    assert read_ignore_file(text) == [
        "test1",
        "test2",
        "a/file/here",
        "lastfile",
        "!inverted/abs/path",
        "!",
        "!",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("\n\n", []),
        ("\ufeffa\n", ["a"]),  # BOM dropped on the first line only
        ("a\n\ufeffb", ["a", "\ufeffb"]),
        ("\ufeff# comment\nb", ["b"]),
        ("  # not a comment", ["# not a comment"]),  # "#" must be the first character
        ("a\r\nb\r\n", ["a", "b"]),
        ("\u00a0a\u3000", ["a"]),  # Go's Unicode trim
        ("\x1ca", ["\x1ca"]),  # ...which, unlike Python's, keeps \x1c
        ("/", ["/"]),
        ("!/", ["!/"]),
        ("a/./b/../c/", ["a/c"]),
        ("../a", ["../a"]),
        ("//a//b", ["a/b"]),
        ("!  ./x", ["!x"]),
        ("a\rb", ["a\rb"]),  # only a final \r goes
    ],
)
def test_read_ignore_file_details(text: str, expected: list[str]) -> None:
    assert read_ignore_file(text) == expected


def test_read_ignore_file_line_limit() -> None:
    assert read_ignore_file("a" * 65535 + "\n") == ["a" * 65535]
    with pytest.raises(SouteError, match="too long"):
        read_ignore_file("ok\n" + "a" * 65536)
    with pytest.raises(SouteError, match="line 1"):
        read_ignore_file("\ufeff" + "a" * 65533)  # the BOM's 3 bytes count


def test_read_then_match() -> None:
    pm = PatternMatcher(read_ignore_file("# build\n*\n!src\nsrc/**/*.pyc\n"))
    assert pm.matches("README.md")
    assert not pm.matches("src/app.py")
    assert pm.matches("src/pkg/mod.pyc")


def test_lone_exclamation_mark_from_file_is_refused() -> None:
    with pytest.raises(SouteError, match="illegal exclusion"):
        PatternMatcher(read_ignore_file("a\n!\n"))


# --- which file


def test_find_ignore_file_precedence(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    assert find_ignore_file(ctx, None) is None
    (ctx / ".dockerignore").write_text("a\n")
    assert find_ignore_file(ctx, None) == ctx / ".dockerignore"
    # The default Dockerfile's own ignore file wins, even when empty.
    (ctx / "Dockerfile.dockerignore").write_text("")
    assert find_ignore_file(ctx, None) == ctx / "Dockerfile.dockerignore"
    assert find_ignore_file(ctx, ctx / "Dockerfile") == ctx / "Dockerfile.dockerignore"


def test_find_ignore_file_for_named_dockerfile(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    build = tmp_path / "build"
    ctx.mkdir()
    build.mkdir()
    (ctx / ".dockerignore").write_text("a\n")
    (ctx / "Dockerfile.dockerignore").write_text("b\n")
    dockerfile = build / "app.Dockerfile"
    # Only the file next to *this* Dockerfile counts.
    assert find_ignore_file(ctx, dockerfile) == ctx / ".dockerignore"
    (build / "app.Dockerfile.dockerignore").write_text("c\n")
    assert find_ignore_file(ctx, dockerfile) == build / "app.Dockerfile.dockerignore"


def test_find_ignore_file_wants_regular_files(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").mkdir()
    (tmp_path / "Dockerfile.dockerignore").mkdir()
    assert find_ignore_file(tmp_path, None) is None
    real = tmp_path / "real"
    real.write_text("x\n")
    (tmp_path / "app.dockerignore").symlink_to(real)
    assert find_ignore_file(tmp_path, tmp_path / "app") == tmp_path / "app.dockerignore"


# --- properties

_ANY_TOKEN = st.sampled_from(
    ["a", "b", "/", "*", "**", "?", "[", "]", "^", "!", "-", "\\", ".", "$", "(", ")", "+",
     "{", "}", "|", ":", "d", "p", "Q", "E", "x", "0", "7", "é", " ", "\t", "\ufeff", "\x00",
     "[:alpha:]", "[:^x:]", "\\d", "\\Q", "\\x4", "z-a", "\udcff"]
)  # fmt: skip
_ANY_PATTERN = st.lists(_ANY_TOKEN, max_size=8).map("".join)
_ANY_PATH = st.text(alphabet=st.sampled_from("ab/.*[]!\\é \n\udcff"), max_size=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ANY_PATTERN, max_size=4), st.lists(_ANY_PATH, max_size=4))
def test_random_input_only_raises_soute_error(patterns: list[str], paths: list[str]) -> None:
    try:
        read_ignore_file("\n".join(patterns))
        pm = PatternMatcher(patterns)
    except SouteError:
        return
    for path in paths:
        pm.matches(path)
        pm.matches_in_walk(path)
        pm.excludes_dir_entirely(path)


_GLOB_TOKEN = st.sampled_from(["a", "b", "ab", "/", "*", "**", "?", "[ab]", "[^a]", "|", "x"])
_GLOB = st.lists(_GLOB_TOKEN, min_size=1, max_size=5).map("".join)
_RULE = st.tuples(st.booleans(), _GLOB).map(lambda r: ("!" if r[0] else "") + r[1])
_SEGMENT = st.sampled_from(["a", "b", "ab", "ba", "x", "a|b"])
_REL_PATH = st.lists(_SEGMENT, min_size=1, max_size=4).map("/".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_RULE, max_size=5), _REL_PATH, _REL_PATH)
def test_skipped_directory_hides_nothing(rules: list[str], directory: str, rest: str) -> None:
    try:
        pm = PatternMatcher(rules)
    except SouteError:
        return
    if pm.excludes_dir_entirely(directory):
        below = f"{directory}/{rest}"
        assert pm.matches(below)
        assert _walk(pm, below)


@settings(max_examples=300, deadline=None)
@given(st.lists(_RULE, max_size=5), _REL_PATH)
def test_last_matching_rule_wins(rules: list[str], path: str) -> None:
    try:
        pm = PatternMatcher(rules)
    except SouteError:
        return
    verdict = False
    for rule in rules:
        body = rule.removeprefix("!")
        # A one-rule matcher says whether the rule matches the path or one of its parents.
        if PatternMatcher([body]).matches(path):
            verdict = not rule.startswith("!")
    assert pm.matches(path) is verdict
