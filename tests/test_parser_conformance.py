"""BuildKit's own parser vectors: every case must give its AST dump byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import BUILDKIT_PARSER
from soute.dockerfile.parser import ParseError, parse_bytes

CASES = sorted(p.parent for p in (BUILDKIT_PARSER / "testfiles").glob("*/Dockerfile"))
NEGATIVE = sorted(p.parent for p in (BUILDKIT_PARSER / "testfiles-negative").glob("*/Dockerfile"))


def test_corpus_is_complete() -> None:
    # The corpus README promises 33 positive and 4 negative cases; a missing checkout of
    # ../shared must fail loudly rather than pass on zero cases.
    assert len(CASES) == 33
    assert len(NEGATIVE) == 4


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_dump_matches_buildkit(case: Path) -> None:
    result = parse_bytes((case / "Dockerfile").read_bytes())
    assert result.dump() == (case / "result").read_text(encoding="utf-8")


@pytest.mark.parametrize("case", NEGATIVE, ids=lambda p: p.name)
def test_negative_cases_fail(case: Path) -> None:
    with pytest.raises(ParseError):
        parse_bytes((case / "Dockerfile").read_bytes())


def test_line_ranges() -> None:
    result = parse_bytes((BUILDKIT_PARSER / "testfile-line" / "Dockerfile").read_bytes())
    assert [(n.start_line, n.end_line) for n in result.nodes] == [(5, 5), (11, 12), (17, 31)]


def test_conformance_counts(capsys: pytest.CaptureFixture[str]) -> None:
    passed = 0
    for case in CASES:
        result = parse_bytes((case / "Dockerfile").read_bytes())
        passed += result.dump() == (case / "result").read_text(encoding="utf-8")
    refused = 0
    for case in NEGATIVE:
        try:
            parse_bytes((case / "Dockerfile").read_bytes())
        except ParseError:
            refused += 1
    with capsys.disabled():
        print(f"\nBuildKit parser corpus: {passed}/{len(CASES)} dumps identical, "
              f"{refused}/{len(NEGATIVE)} negative cases refused")
    assert (passed, refused) == (len(CASES), len(NEGATIVE))
