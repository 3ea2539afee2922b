"""Parser behaviour beyond the corpus: directives, continuations, heredocs, errors, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soute.dockerfile.goquote import go_quote
from soute.dockerfile.parser import ParseError, parse_bytes, parse_text
from soute.errors import SouteError


def test_directives_are_read_only_at_the_top() -> None:
    r = parse_text("# syntax=docker/dockerfile:1\n#ESCAPE = `\n# check=skip=all\nFROM a\n")
    assert r.directives == {"syntax": "docker/dockerfile:1", "escape": "`",
                            "check": "skip=all"}
    assert r.directive_lines == {"syntax": 1, "escape": 2, "check": 3}
    assert r.escape == "`"
    # After a plain comment, a blank line or an instruction, `# escape=` is only a comment.
    for head in ("# hello\n", "\n", "FROM a\n"):
        assert parse_text(head + "# escape=`\nFROM b\n").escape == "\\"


def test_duplicate_directive_is_an_error_at_its_line() -> None:
    with pytest.raises(ParseError) as e:
        parse_text("# escape=\\\n# escape=`\nFROM a\n")
    assert str(e.value).startswith("Dockerfile:2: only one escape parser directive")


def test_invalid_escape_token() -> None:
    with pytest.raises(ParseError) as e:
        parse_text("# escape=x\nFROM a\n", file="app/Dockerfile")
    assert str(e.value).startswith("app/Dockerfile:1: invalid escape token 'x'")
    assert "# escape=`" in str(e.value)


def test_continuations_with_comments_blank_lines_and_trailing_spaces() -> None:
    r = parse_text("RUN a \\  \n# inside\n\n   b \\\n\tc\nCMD d\n")
    run, cmd = r.nodes
    assert run.args == ["a    b \tc"]
    assert (run.start_line, run.end_line) == (1, 5)
    assert (cmd.start_line, cmd.end_line) == (6, 6)
    assert [w.line for w in r.warnings] == [5]  # the empty continuation line is warned about


def test_backtick_escape_continues_lines() -> None:
    r = parse_text("# escape=`\nRUN dir c:\\ `\n  && echo hi\n")
    assert r.nodes[0].args == ["dir c:\\   && echo hi"]


def test_bom_and_crlf() -> None:
    r = parse_bytes(b"\xef\xbb\xbfFROM a\r\nRUN b \\\r\n c\r\n")
    assert [n.dump() for n in r.nodes] == ['from "a"', 'run "b  c"']


def test_heredocs_several_on_one_line_with_fd_and_chomp() -> None:
    r = parse_text('RUN <<-A 3<<"B" cat\n\tone\n\tA\n$two\nB\nCMD x\n')
    run = r.nodes[0]
    a, b = run.heredocs
    assert (a.name, a.file_descriptor, a.chomp, a.expand, a.content) == ("A", 0, True, True,
                                                                         "\tone\n")
    assert a.chomped_content() == "one\n"
    assert (b.name, b.file_descriptor, b.chomp, b.expand, b.content) == ("B", 3, False, False,
                                                                         "$two\n")
    assert (run.start_line, run.end_line) == (1, 5)
    assert r.nodes[1].start_line == 6


def test_heredoc_only_for_run_copy_add_and_not_in_json_form() -> None:
    r = parse_text('CMD <<EOF\nFROM a\nRUN ["cat", "<<EOF"]\n')
    assert [n.cmd for n in r.nodes] == ["CMD", "FROM", "RUN"]
    assert all(not n.heredocs for n in r.nodes)


def test_heredoc_in_onbuild() -> None:
    r = parse_text("ONBUILD COPY <<EOF /f\nhello\nEOF\n")
    assert r.nodes[0].sub is not None and r.nodes[0].sub.name == "copy"
    assert r.nodes[0].heredocs[0].content == "hello\n"


def test_unterminated_heredoc_names_where_it_started() -> None:
    with pytest.raises(ParseError) as e:
        parse_text("FROM a\nRUN <<EOF\necho\n")
    assert str(e.value) == ("Dockerfile:2: unterminated heredoc <<EOF (end it with a line "
                            "holding only 'EOF')")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("FROM a\nENV x\n", 2, "ENV must have two arguments"),
        ("FROM a\nLABEL a=b c\n", 2, 'can\'t find = in "c"'),
        ('FROM a\nCMD ["a", 1]\n', 2, "arrays must be comprised of strings only"),
        ("# only a comment\n\n", 0, "file with no instructions"),
        ("", 0, "file with no instructions"),
    ],
)
def test_errors_name_line_and_message(text: str, line: int, message: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_text(text)
    assert e.value.line == line
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_go_quote() -> None:
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert go_quote("\t\n\x00\x7f") == '"\\t\\n\\x00\\x7f"'
    assert go_quote("é한\u200b\U0001F600") == '"é한\\u200b😀"'
    assert go_quote(b"\xff".decode("utf-8", "surrogateescape")) == '"\\xff"'


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bytes_only_parse_errors(data: bytes) -> None:
    try:
        r = parse_bytes(data)
    except SouteError:
        return
    r.dump()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([
    "RUN", "COPY", "ONBUILD", "ENV", "HEALTHCHECK", " ", "\t", "\\", "`", "\n", "<<", "<<-",
    "EOF", "'", '"', "[", "]", '"x"', ",", "=", "--", "--a=b", "#", "# escape=`", "$", "{", "}",
    "3", "\r", "\xa0", "é",
]), max_size=40).map("".join))
def test_fuzz_structured_only_parse_errors(text: str) -> None:
    try:
        r = parse_text(text)
    except SouteError:
        return
    r.dump()
