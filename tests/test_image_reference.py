"""Image references: docker's grammar and normalisation (distribution/reference), our tables."""

from __future__ import annotations

import pytest

from soute.errors import SouteError
from soute.image.reference import Reference, is_valid_tag, parse_reference, split_docker_domain

D64 = "sha256:" + "ab" * 32
HEX64 = "0123456789abcdef" * 4

# input, domain, path, tag, digest
VALID = [
    ("debian", "docker.io", "library/debian", None, None),
    ("debian:12", "docker.io", "library/debian", "12", None),
    ("debian:Bookworm-Slim_1.0", "docker.io", "library/debian", "Bookworm-Slim_1.0", None),
    ("library/debian", "docker.io", "library/debian", None, None),
    ("docker.io/debian", "docker.io", "library/debian", None, None),
    ("docker.io/library/debian", "docker.io", "library/debian", None, None),
    ("index.docker.io/debian", "docker.io", "library/debian", None, None),
    ("index.docker.io/someone/tool:v2", "docker.io", "someone/tool", "v2", None),
    ("docker.io/library/a/b", "docker.io", "library/a/b", None, None),
    ("someone/tool", "docker.io", "someone/tool", None, None),
    ("some_one/t-o--o__l.x", "docker.io", "some_one/t-o--o__l.x", None, None),
    ("localhost/app", "localhost", "app", None, None),
    ("localhost:5000/app:dev", "localhost:5000", "app", "dev", None),
    ("127.0.0.1:5000/research/tiny:v1", "127.0.0.1:5000", "research/tiny", "v1", None),
    ("10.1.2.3/app", "10.1.2.3", "app", None, None),
    ("registry.example.com/team/app", "registry.example.com", "team/app", None, None),
    ("my-registry:8443/a/b/c", "my-registry:8443", "a/b/c", None, None),
    ("xn--bcher-kva.example/app", "xn--bcher-kva.example", "app", None, None),
    ("[::1]:5000/app", "[::1]:5000", "app", None, None),
    ("[2001:db8::5]/app:t", "[2001:db8::5]", "app", "t", None),
    # An uppercase first component can only be a host.
    ("MyHost/app", "MyHost", "app", None, None),
    # A single component is always a Docker Hub name, even one that looks like a host.
    ("localhost", "docker.io", "library/localhost", None, None),
    ("10.0.0.1", "docker.io", "library/10.0.0.1", None, None),
    ("10.0.0.1:5000", "docker.io", "library/10.0.0.1", "5000", None),
    ("example.com:tag", "docker.io", "library/example.com", "tag", None),
    # A non-hex 64-character name is fine; only 64 hex digits are refused.
    ("z" * 64, "docker.io", "library/" + "z" * 64, None, None),
    ("docker.io/" + HEX64, "docker.io", "library/" + HEX64, None, None),
    (f"app@{D64}", "docker.io", "library/app", None, D64),
    (f"app:1.0@{D64}", "docker.io", "library/app", "1.0", D64),
    (f"ghcr.io/o/app:1@{D64}", "ghcr.io", "o/app", "1", D64),
    ("app@sha512:" + "0f" * 64, "docker.io", "library/app", None, "sha512:" + "0f" * 64),
    # 255 characters of path after the host is the limit (the host does not count).
    ("example.com/" + "a" * 255, "example.com", "a" * 255, None, None),
    ("a:" + "t" * 128, "docker.io", "library/a", "t" * 128, None),
]


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest"), VALID)
def test_parse_valid(
    text: str, domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert ref == Reference(domain, path, tag, digest)


# input, the start of the message
INVALID = [
    ("", "invalid reference format"),
    (":tag", "invalid reference format"),
    ("@" + D64, "invalid reference format"),
    ("/app", "invalid reference format"),
    ("app/", "invalid reference format"),
    ("a//b", "invalid reference format"),
    ("-app", "invalid reference format"),
    ("app-", "invalid reference format"),
    ("a..b", "invalid reference format"),
    ("a._b", "invalid reference format"),
    ("a___b", "invalid reference format"),
    ("_a/b", "invalid reference format"),
    ("app:", "invalid reference format"),
    ("app:.tag", "invalid reference format"),
    ("app:-tag", "invalid reference format"),
    ("app:" + "t" * 129, "invalid reference format"),
    ("app:t@g", "invalid reference format"),
    ("app with space", "invalid reference format"),
    ("https://example.com/app", "invalid reference format"),
    ("-host.example.com/app", "invalid reference format"),
    ("[fe80::1%eth0]:5000/app", "invalid reference format"),
    ("[::1]", "invalid reference format"),
    ("[::1]:5000", "invalid reference format"),
    ("fc00::1:5000/app", "invalid reference format"),
    # A host that is not a host name (here with "_"). Docker's Parse falls back to reading the
    # whole string as a path with an empty domain; we refuse it, on purpose.
    ("my_host.example/app", "invalid reference format"),
    ("app@sha256:abc", "invalid reference format"),  # fewer than 32 hex digits
    ("Debian", "invalid reference format: repository name (library/Debian) must be lowercase"),
    ("library/Debian:12", "invalid reference format: repository name (library/Debian)"),
    ("localhost:5000/Team/app", "invalid reference format: repository name (Team/app)"),
    ("docker.io/User/app", "invalid reference format: repository name (User/app)"),
    (HEX64, f"invalid repository name ({HEX64}), cannot specify 64-byte hexadecimal strings"),
    ("a/" + "b" * 254, "repository name must not be more than 255 characters"),
    ("app@sha256:" + "a" * 34, "invalid checksum digest length"),
    ("app@sha256:" + "A" * 64, "invalid checksum digest format"),
    ("app@md5:" + "a" * 32, "unsupported digest algorithm"),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_parse_invalid(text: str, message: str) -> None:
    with pytest.raises(SouteError) as info:
        parse_reference(text)
    assert info.value.message.startswith(message)
    if message == "invalid reference format":
        assert info.value.message == message
        assert info.value.hint  # the one-line error carries a hint


# input, name, familiar name, str, familiar()
FORMS = [
    ("debian", "docker.io/library/debian", "debian", "docker.io/library/debian", "debian"),
    (
        "debian:12",
        "docker.io/library/debian",
        "debian",
        "docker.io/library/debian:12",
        "debian:12",
    ),
    ("user/app", "docker.io/user/app", "user/app", "docker.io/user/app", "user/app"),
    (
        "docker.io/library/a/b:1",
        "docker.io/library/a/b",
        "library/a/b",
        "docker.io/library/a/b:1",
        "library/a/b:1",
    ),
    (
        "127.0.0.1:5000/x",
        "127.0.0.1:5000/x",
        "127.0.0.1:5000/x",
        "127.0.0.1:5000/x",
        "127.0.0.1:5000/x",
    ),
    ("localhost/x:y", "localhost/x", "localhost/x", "localhost/x:y", "localhost/x:y"),
    (
        f"index.docker.io/library/redis:7@{D64}",
        "docker.io/library/redis",
        "redis",
        f"docker.io/library/redis:7@{D64}",
        f"redis:7@{D64}",
    ),
]


@pytest.mark.parametrize(("text", "name", "familiar_name", "full", "familiar"), FORMS)
def test_forms(text: str, name: str, familiar_name: str, full: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert ref.name == name
    assert ref.familiar_name == familiar_name
    assert str(ref) == full
    assert ref.familiar() == familiar
    # Both written forms read back to the same reference.
    assert parse_reference(full) == ref
    assert parse_reference(familiar) == ref


def test_default_tag_and_docker_ref() -> None:
    assert str(parse_reference("busybox").with_default_tag()) == "docker.io/library/busybox:latest"
    assert parse_reference("busybox:1").with_default_tag().tag == "1"
    pinned = parse_reference(f"busybox@{D64}")
    assert pinned.with_default_tag() == pinned  # a digest needs no tag
    both = parse_reference(f"gcr.io/x/busybox:latest@{D64}")
    assert str(both.docker_ref()) == f"gcr.io/x/busybox@{D64}"
    assert str(parse_reference("library/busybox").docker_ref()) == (
        "docker.io/library/busybox:latest"
    )
    assert str(both.repository()) == "gcr.io/x/busybox"


def test_with_tag_and_digest() -> None:
    ref = parse_reference("app")
    assert ref.with_tag("v1").familiar() == "app:v1"
    with pytest.raises(SouteError, match="invalid tag format"):
        ref.with_tag("-v1")
    assert ref.with_digest(D64).digest == D64
    with pytest.raises(SouteError):
        ref.with_digest("sha256:xyz")


@pytest.mark.parametrize(
    ("tag", "ok"),
    [
        ("latest", True),
        ("1.0.0-rc.1", True),
        ("_private", True),
        ("UPPER", True),
        ("a" * 128, True),
        ("a" * 129, False),
        (".hidden", False),
        ("-dash", False),
        ("", False),
        ("tag:x", False),
        ("tag/x", False),
        ("tag\n", False),
        ("tagé", False),  # \w in Go's RE2 is ASCII only
    ],
)
def test_is_valid_tag(tag: str, ok: bool) -> None:
    assert is_valid_tag(tag) is ok


@pytest.mark.parametrize(
    ("name", "domain", "rest"),
    [
        ("foo", "docker.io", "library/foo"),
        ("test_com/foo", "docker.io", "test_com/foo"),
        ("test.com/foo", "test.com", "foo"),
        ("test-com:8080/foo", "test-com:8080", "foo"),
        ("docker.io/foo", "docker.io", "library/foo"),
        ("index.docker.io/a/b", "docker.io", "a/b"),
        ("Upper/foo", "Upper", "foo"),
    ],
)
def test_split_docker_domain(name: str, domain: str, rest: str) -> None:
    assert split_docker_domain(name) == (domain, rest)


def test_trailing_newline_is_not_accepted() -> None:
    # Python's "$" would match before a final newline; the grammar must not.
    with pytest.raises(SouteError):
        parse_reference("debian:12\n")
