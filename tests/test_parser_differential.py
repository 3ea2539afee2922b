"""Differential tests: our parser against BuildKit's own Go parser.

The PyPI package ``dockerfile`` wraps BuildKit's parser (v0.12.5 in release 3.4.0). Generated
Dockerfiles must give the same nodes from ``soute parse --format json`` as from the package.
The generator stays clear of the few places where BuildKit's parser changed after v0.12.5
(each is named where it is avoided); the conformance corpus covers today's behaviour there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import dockerfile
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from soute.dockerfile.parser import ParseError, parse_text
from soute.dockerfile.render import node_record

KNOWN = [
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
]  # fmt: skip
HEREDOC_CAPABLE = ("RUN", "COPY", "ADD")


def reference(text: str) -> list[dict[str, Any]] | None:
    """BuildKit's nodes for ``text`` in our JSON shape, or None when it refuses the file."""
    try:
        cmds = dockerfile.parse_string(text)
    except dockerfile.GoParseError:
        return None
    except UnicodeDecodeError:
        # BuildKit reads flags byte by byte and counts bytes 0x85 and 0xA0 as spaces, so it can
        # cut a UTF-8 character in two; the package then fails to decode what Go returned.
        return SPLIT_UTF8
    out = []
    for c in cmds:
        docs = [{"name": h.name, "file_descriptor": h.file_descriptor, "content": h.content}
                for h in c.heredocs]
        original = c.original or ""  # the package gives None for an empty string
        # The package appends each heredoc's body and terminator to `original`; BuildKit's
        # node holds only the instruction line.
        if docs:
            tail = "\n" + "".join(d["content"] + d["name"] + "\n" for d in docs)
            assert original.endswith(tail)
            original = original[: -len(tail)]
        out.append({
            "cmd": c.cmd or "", "sub_cmd": c.sub_cmd, "json": c.json, "original": original,
            "start_line": c.start_line, "end_line": c.end_line, "flags": list(c.flags),
            "value": list(c.value), "heredocs": docs,
        })
    return out


def ours(text: str) -> list[dict[str, Any]] | None:
    try:
        result = parse_text(text)
    except ParseError:
        return None
    return [node_record(n) for n in result.nodes]


def normalise(
    records: list[dict[str, Any]] | None, *, ours: bool = False
) -> list[dict[str, Any]] | None:
    if records is None:
        return None
    for r in records:
        if r["cmd"].lower() == "onbuild":
            r.pop("flags")  # the package drops the flags of the nested instruction
        if ours and (r["sub_cmd"] or r["cmd"]).lower() in ("env", "label"):
            # BuildKit added the `=`/`""` separator node after v0.12.5.
            del r["value"][2::3]
    return records


SPLIT_UTF8: list[dict[str, Any]] = []


def assert_same(text: str) -> None:
    expected = reference(text)
    if expected is SPLIT_UTF8:
        # We cut it the same way: the halves survive as surrogate escapes.
        assert any("\udc80" <= ch <= "\udcff" for ch in json.dumps(ours(text),
                                                                    ensure_ascii=False)), text
        return
    assert normalise(ours(text), ours=True) == normalise(expected), text


# ------------------------------------------------------------------- generated Dockerfiles

# Characters that exercise quoting, escapes, expansion, JSON and comments.
piece_chars = st.sampled_from(
    [*"abcxyz019_-./:@", " ", "  ", "\t", '"', "'", "\\", "$", "{", "}", "=", "#",
     "[", "]", ",", "`", "é", "ü", "\u00a0", "*", "<"]
)
text_piece = st.lists(piece_chars, max_size=14).map("".join)
plain_word = st.text(alphabet="abcdefxyz0123456789_./-", min_size=1, max_size=8)


@st.composite
def json_body(draw: st.DrawFn) -> str:
    items = draw(st.lists(st.one_of(text_piece, plain_word), max_size=4))
    spacing = draw(st.sampled_from(["", " ", "  "]))
    body = "[" + spacing + ("," + spacing).join(json.dumps(i, ensure_ascii=False) for i in items)
    body += spacing + "]"
    # Breaking it on purpose: BuildKit falls back to the shell form, or refuses non-strings.
    # (No trailing text after a valid array: v0.12.5 read only the first JSON value there.)
    return draw(st.sampled_from([body, body[:-1], body.replace('"', "'", 1), "[1, " + body[1:],
                                 "[null]", "[ ]"]))


@st.composite
def flags(draw: st.DrawFn) -> str:
    out = []
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(["from", "chown", "mount", "link", "chmod", "x"]))
        value = draw(st.one_of(plain_word, text_piece.filter(lambda s: "`" not in s)))
        quote = draw(st.sampled_from(["", '"', "'"]))
        out.append(f"--{name}={quote}{value}{quote}" if value else f"--{name}")
    return " ".join(out)


@st.composite
def heredoc_line(draw: st.DrawFn, cmd: str) -> tuple[str, str]:
    docs = []
    bodies = []
    for i in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(["EOF", "END", "E0F", "X"])) + str(i)
        chomp = draw(st.booleans())
        quote = draw(st.sampled_from(["", '"', "'"]))
        fd = draw(st.sampled_from(["", "", "3"]))
        docs.append(f"{fd}<<{'-' if chomp else ''}{quote}{name}{quote}")
        lines = draw(st.lists(text_piece.filter(lambda s: "\n" not in s), max_size=3))
        indent = "\t" if chomp and draw(st.booleans()) else ""
        bodies.append("".join(indent + ln + "\n" for ln in lines) + indent + name + "\n")
    tail = draw(st.sampled_from(["", " cat", " /dst", " python3"]))
    return f"{cmd} {' '.join(docs)}{tail}", "".join(bodies)


@st.composite
def instruction(draw: st.DrawFn, escape: str) -> str:
    cmd = draw(st.sampled_from([*KNOWN, "FOO", "RUNN"]))
    cmd = draw(st.sampled_from([cmd, cmd.lower(), cmd.capitalize()]))
    if cmd.upper() in HEREDOC_CAPABLE and draw(st.integers(0, 4)) == 0:
        line, body = draw(heredoc_line(cmd))
        return line + "\n" + body
    if cmd.upper() == "ONBUILD" and draw(st.booleans()):
        # A nested instruction; no heredoc in it (v0.12.5 did not read ONBUILD heredocs).
        inner = draw(instruction(escape)).split("\n")[0]
        if "<<" in inner:
            inner = inner.replace("<<", "")
        return f"{cmd} {inner}"
    parts = [cmd]
    f = draw(flags())
    body = draw(st.one_of(json_body(), text_piece, st.lists(
        st.builds(lambda k, v, sep: f"{k}{sep}{v}", plain_word, text_piece,
                  st.sampled_from(["=", " "])), max_size=3).map(" ".join)))
    # v0.12.5 always took `\` as the flag escape; an open quote in a flag reads on into the body.
    if f and not (escape == "`" and ("\\" in f + body or "`" in f + body)):
        parts.append(f)
    parts.append(body)
    line = " ".join(p for p in parts if p)
    # Split the line with continuations, sometimes with comments or blank lines between.
    if draw(st.booleans()) and " " in line:
        cut = draw(st.integers(1, len(line) - 1))
        middle = draw(st.sampled_from(["", "# a comment\n", "\n", "  \n", "   # indented\n"]))
        pad = draw(st.sampled_from(["", " ", "\t"]))
        line = line[:cut] + escape + pad + "\n" + middle + line[cut:]
    return line


@st.composite
def dockerfiles(draw: st.DrawFn) -> str:
    head = []
    escape = "\\"
    if draw(st.booleans()):
        escape = draw(st.sampled_from(["\\", "`"]))
        head.append(draw(st.sampled_from(["# escape=", "#escape = ", "# ESCAPE="])) + escape)
    if draw(st.booleans()):
        head.append("# syntax=docker/dockerfile:1")
    lines = list(head)
    for _ in range(draw(st.integers(0, 6))):
        lines.append(draw(st.one_of(
            instruction(escape),
            instruction(escape),
            st.sampled_from(["", "# comment", "   ", "\t# x"]),
        )))
    text = "\n".join(lines)
    return text + draw(st.sampled_from(["", "\n", "\r\n"]))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dockerfiles())
@example("FROM a\nRUN echo \\\n\n  hi\n")
@example("# escape=`\nFROM a\nCOPY --chown=1 a `\n b\n")
@example("RUN <<EOF\nx\nEOF\n")
@example("ENV a b c\nLABEL \"k\"=v x=\"y z\"\n")
@example("CMD [\"a\", 1]\n")
@example('HEALTHCHECK --interval=1s CMD ["x"]\nHEALTHCHECK NONE\n')
def test_generated_dockerfiles_match_buildkit(text: str) -> None:
    assert_same(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=80))
def test_arbitrary_text_matches_buildkit(text: str) -> None:
    assert_same(text)


@pytest.mark.parametrize(
    "text",
    [
        "FROM x AS y\nONBUILD RUN --mount=type=cache,target=/c make\n",
        'RUN <<-A 3<<"B" cat\n\tx\n\tA\ny\nB\n',
        "FOO bar\nRUN\n",
        "copy [\"a b\", \"c\"] \n",
        "RUN a \\  \n  b\n",
    ],
)
def test_cli_json_matches_buildkit(text: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "soute.cli.main", "parse", "-f", "-", "--format", "json"],
        input=text.encode(),
        capture_output=True,
        check=True,
    ).stdout
    assert normalise(json.loads(out), ours=True) == normalise(reference(text))
