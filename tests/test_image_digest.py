"""Digests, ChainIDs, short IDs, Go-style JSON and RFC 3339 timestamps."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from soute.errors import SouteError
from soute.image import gojson
from soute.image.digest import (
    EMPTY_JSON_DIGEST,
    chain_id,
    chain_ids,
    is_digest,
    parse_digest,
    sha256_digest,
    short_id,
    split_digest,
)
from soute.image.timestamp import GO_ZERO_TIME, Timestamp

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def test_known_digests() -> None:
    assert sha256_digest(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    # The OCI empty descriptor's digest (image-spec manifest.md).
    assert sha256_digest(b"{}") == EMPTY_JSON_DIGEST
    assert EMPTY_JSON_DIGEST == (
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )


def test_chain_ids() -> None:
    assert chain_ids([]) == []
    assert chain_id([]) is None
    assert chain_ids([A]) == [A]
    ab = "sha256:" + hashlib.sha256(f"{A} {B}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {C}".encode()).hexdigest()
    assert chain_ids([A, B, C]) == [A, ab, abc]
    assert chain_id([A, B, C]) == abc
    # Order matters: a different stack is a different chain.
    assert chain_id([B, A, C]) != abc
    # Pinned (from coreutils sha256sum), so a change in the separator or encoding is caught.
    assert ab == "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"


def test_short_id() -> None:
    assert short_id(EMPTY_JSON_DIGEST) == "44136fa355b3"
    assert short_id("44136fa355b3678a1146ad16f7e8649e") == "44136fa355b3"
    assert short_id("sha512:" + "f" * 128) == "f" * 12
    assert short_id("abc") == "abc"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (A, None),
        ("sha512:" + "0" * 128, None),
        ("sha384:" + "0" * 96, None),
        ("sha256:" + "a" * 63, "invalid checksum digest length"),
        ("sha256:" + "A" * 64, "invalid checksum digest format"),
        ("sha256:" + "g" * 64, "invalid checksum digest format"),
        ("sha256:", "invalid checksum digest format"),
        ("sha256", "invalid checksum digest format"),
        ("blake3:" + "a" * 64, "unsupported digest algorithm"),
        ("Bad!:abc", "invalid checksum digest format"),
    ],
)
def test_parse_digest(text: str, error: str | None) -> None:
    if error is None:
        assert parse_digest(text) == text
    else:
        with pytest.raises(SouteError, match=error):
            parse_digest(text)


def test_oci_digest_shape() -> None:
    assert is_digest("blake3:" + "a" * 64)
    assert is_digest("sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564=")
    for bad in ("sha256:../../etc", "sha256/x:aa", "..:aa", "sha256:", ":aa", "SHA256:aa"):
        assert not is_digest(bad), bad
    assert split_digest(A) == ("sha256", "a" * 64)
    with pytest.raises(SouteError):
        split_digest("nope")


# --- Go-style JSON ---------------------------------------------------------------------------


def test_go_string_escapes() -> None:
    doc = {"cmd": "a && b > c < d", "u": "é ✓", "ls": "\u2028\u2029", "c": "\x00\n\t\b\f\x7f"}
    assert gojson.dumps(doc) == (
        '{"cmd":"a \\u0026\\u0026 b \\u003e c \\u003c d","u":"é ✓",'
        '"ls":"\\u2028\\u2029","c":"\\u0000\\n\\t\\b\\f\x7f"}'
    )
    # The Engine API does not escape HTML; it still escapes the line separators.
    assert gojson.dumps({"cmd": "a && b", "ls": "\u2028"}, escape_html=False) == (
        '{"cmd":"a && b","ls":"\\u2028"}'
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (100.0, "100"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (-0.0, "-0"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (2.5e-10, "2.5e-10"),
        (123456789.125, "123456789.125"),
        (3, "3"),
        (True, "true"),
        (None, "null"),
    ],
)
def test_go_numbers(value: object, text: str) -> None:
    assert gojson.dumps(value) == text


def test_marshal_indent_shape() -> None:
    doc = {"schemaVersion": 2, "layers": [], "annotations": {}, "config": {"size": 2}, "x": [1, 2]}
    assert gojson.dumps(doc, indent=2) == (
        "{\n"
        '  "schemaVersion": 2,\n'
        '  "layers": [],\n'
        '  "annotations": {},\n'
        '  "config": {\n'
        '    "size": 2\n'
        "  },\n"
        '  "x": [\n'
        "    1,\n"
        "    2\n"
        "  ]\n"
        "}"
    )


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
        max_leaves=20,
    )
)
def test_go_json_reads_back(value: object) -> None:
    # Whatever we write is JSON that decodes to the same value, compact or indented.
    assert json.loads(gojson.dumps(value)) == value
    assert json.loads(gojson.dumps(value, indent=2)) == value


def test_loads_errors() -> None:
    with pytest.raises(SouteError, match="invalid image config"):
        gojson.loads(b"{", "image config")
    with pytest.raises(SouteError, match="invalid manifest"):
        gojson.loads(b'{"a":"\xff"}', "manifest")


# --- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("2024-01-02T03:04:05.123456789Z", "2024-01-02T03:04:05.123456789Z"),
        ("2024-01-02T03:04:05.120Z", "2024-01-02T03:04:05.12Z"),
        ("2024-01-02T03:04:05.000000000Z", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
        ("2024-01-02t03:04:05z", "2024-01-02T03:04:05Z"),
        ("2024-01-02 03:04:05+00:00", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05.5+01:30", "2024-01-02T03:04:05.5+01:30"),
        ("2023-12-31T23:59:59.000000001-05:00", "2023-12-31T23:59:59.000000001-05:00"),
        ("2024-01-02T03:04:05.1234567891234Z", "2024-01-02T03:04:05.123456789Z"),
        ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"),
    ],
)
def test_timestamp_format(text: str, written: str) -> None:
    assert Timestamp.parse(text).format() == written


@pytest.mark.parametrize(
    "text",
    [
        "2023-02-29T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-01-02T24:00:00Z",
        "2024-01-02T03:60:00Z",
        "2024-01-02T03:04:60Z",
        "2024-01-02T03:04:05",
        "2024-01-02",
        "2024-1-02T03:04:05Z",
        "2024-01-02T03:04:05.Z",
        "2024-01-02T03:04:05+0100",
        " 2024-01-02T03:04:05Z",
    ],
)
def test_timestamp_invalid(text: str) -> None:
    with pytest.raises(SouteError, match="invalid time"):
        Timestamp.parse(text)


def test_timestamp_instants() -> None:
    assert Timestamp.parse("1970-01-01T00:00:00Z").seconds == 0
    assert Timestamp.parse("2000-01-01T00:00:00Z").seconds == 946684800
    t = Timestamp.parse("2024-01-02T03:04:05.5+01:30")
    assert t.instant == (Timestamp.parse("2024-01-02T01:34:05.5Z").seconds, 500_000_000)
    assert t.utc().format() == "2024-01-02T01:34:05.5Z"
    assert t != t.utc()  # different bytes...
    assert not t < t.utc() and not t > t.utc()  # ...same instant
    assert Timestamp.parse("2024-01-01T00:00:00.1Z") < Timestamp.parse("2024-01-01T00:00:00.2Z")
    assert GO_ZERO_TIME.format() == "0001-01-01T00:00:00Z"
    assert GO_ZERO_TIME.seconds == -62135596800


def test_timestamp_datetimes() -> None:
    dt = datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=-7)))
    t = Timestamp.from_datetime(dt)
    assert t.format() == "2024-01-02T03:04:05.123456-07:00"
    assert t.to_datetime() == dt
    assert Timestamp.from_datetime(datetime(2024, 1, 2)).format() == "2024-01-02T00:00:00Z"
    assert Timestamp.parse("2024-01-02T03:04:05.123456789Z").to_datetime() == datetime(
        2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC
    )
    now = Timestamp.now()
    assert abs(now.to_datetime() - datetime.now(UTC)) < timedelta(seconds=5)


@given(
    st.integers(min_value=-62135596800, max_value=253402300799),
    st.integers(min_value=0, max_value=999_999_999),
    st.integers(min_value=-23 * 60, max_value=23 * 60).map(lambda m: m * 60),
)
def test_timestamp_round_trip(seconds: int, nanos: int, offset: int) -> None:
    t = Timestamp(seconds, nanos, offset)
    try:
        text = t.format()
    except SouteError:
        return  # the local date falls outside years 1-9999
    assert Timestamp.parse(text) == t
