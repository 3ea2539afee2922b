"""Platforms: parsing, normalisation, what runs where, and picking a manifest from an index."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from soute.errors import SouteError
from soute.image import mediatypes as mt
from soute.image import platforms
from soute.image.manifest import Descriptor, Index
from soute.image.platforms import Platform, PlatformError, normalize_arch


def P(spec: str) -> Platform:
    return Platform.parse(spec)


@pytest.mark.parametrize(
    ("spec", "os", "arch", "variant"),
    [
        ("linux/arm64/v8", "linux", "arm64", "v8"),
        ("linux/arm64", "linux", "arm64", ""),
        ("linux/aarch64", "linux", "arm64", ""),
        ("linux/aarch64/8", "linux", "arm64", "v8"),
        ("linux/arm64/v9.0", "linux", "arm64", "v9"),
        ("linux/x86_64", "linux", "amd64", ""),
        ("linux/amd64/v3", "linux", "amd64", "v3"),
        ("linux/amd64/v1", "linux", "amd64", ""),
        ("linux/arm", "linux", "arm", ""),
        ("linux/arm/7", "linux", "arm", "v7"),
        ("linux/arm/v6", "linux", "arm", "v6"),
        ("linux/armhf", "linux", "arm", ""),
        ("linux/armel", "linux", "arm", "v6"),
        ("linux/i386", "linux", "386", ""),
        ("LINUX/AMD64", "linux", "amd64", ""),
        ("windows/amd64", "windows", "amd64", ""),
        ("macos/arm64", "darwin", "arm64", ""),
        ("amd64", "linux", "amd64", ""),
        ("aarch64", "linux", "arm64", ""),
        ("s390x", "linux", "s390x", ""),
    ],
)
def test_parse(spec: str, os: str, arch: str, variant: str) -> None:
    p = Platform.parse(spec)
    assert (p.os, p.architecture, p.variant) == (os, arch, variant)


def test_parse_os_alone_takes_host_arch() -> None:
    host = Platform.host()
    assert P("linux").architecture == host.architecture
    assert P("freebsd").os == "freebsd"


@pytest.mark.parametrize(
    "spec", ["", "linux/amd64/v8/x", "linux/*", "nosuch", "linux//amd64", "linux/am d64", "/"]
)
def test_parse_invalid(spec: str) -> None:
    with pytest.raises(SouteError, match="invalid platform"):
        Platform.parse(spec)


def test_str() -> None:
    assert str(P("linux/arm64/v8")) == "linux/arm64/v8"
    assert str(P("linux/amd64")) == "linux/amd64"
    assert str(Platform()) == "unknown"


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", "linux/amd64"),
        ("aarch64", "linux/arm64/v8"),
        ("armv7l", "linux/arm/v7"),
        ("armv6l", "linux/arm/v6"),
        ("i686", "linux/386"),
        ("ppc64le", "linux/ppc64le"),
        ("riscv64", "linux/riscv64"),
        ("loongarch64", "linux/loong64"),
    ],
)
def test_host(monkeypatch: pytest.MonkeyPatch, machine: str, expected: str) -> None:
    class Uname:
        pass

    uname = Uname()
    uname.machine = machine  # type: ignore[attr-defined]
    monkeypatch.setattr(platforms.os, "uname", lambda: uname)
    platforms._host.cache_clear()
    try:
        assert str(Platform.host()) == expected
    finally:
        platforms._host.cache_clear()


@pytest.mark.parametrize(
    ("arch", "variant", "expected"),
    [
        ("x86-64", "", ("amd64", "")),
        ("AMD64", "V2", ("amd64", "v2")),
        ("aarch64", "v8.0", ("arm64", "")),
        ("arm64", "9", ("arm64", "v9")),
        ("arm", "", ("arm", "v7")),
        ("arm", "5", ("arm", "v5")),
        ("riscv64", "", ("riscv64", "")),
    ],
)
def test_normalize_arch(arch: str, variant: str, expected: tuple[str, str]) -> None:
    assert normalize_arch(arch, variant) == expected


# --- containerd's os(version+features) syntax, FormatAll, and its messages --------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("windows(10.0.17763)/amd64", Platform("windows", "amd64", "", "10.0.17763")),
        (
            "windows(10.0.17763+win32k)/amd64",
            Platform("windows", "amd64", "", "10.0.17763", ["win32k"]),
        ),
        ("windows(+b+a)/amd64", Platform("windows", "amd64", "", "", ["b", "a"])),  # as written
        ("windows()/amd64", Platform("windows", "amd64")),
        ("Linux(5.1)/ARM64/8", Platform("linux", "arm64", "v8", "5.1")),
        # %-escapes in the version and the features
        ("windows(10.0%2B1+f%28x%29)/amd64", Platform("windows", "amd64", "", "10.0+1", ["f(x)"])),
        ("linux(a%2Fb%25)/amd64", Platform("linux", "amd64", "", "a/b%")),
    ],
)
def test_parse_os_version_and_features(spec: str, expected: Platform) -> None:
    assert Platform.parse(spec) == expected


def test_parse_lone_os_keeps_version() -> None:
    p = Platform.parse("windows(10.0.17763+win32k)")
    assert (p.os, p.architecture) == ("windows", Platform.host().architecture)
    assert (p.os_version, p.os_features) == ("10.0.17763", ["win32k"])


@pytest.mark.parametrize(
    ("machine", "arch", "variant"),
    [
        ("x86_64", "amd64", ""),
        ("aarch64", "arm64", ""),  # only arm takes the host's variant
        ("armv7l", "arm", ""),  # v7 is arm's default: left out, as containerd does
        ("armv6l", "arm", "v6"),
        ("armv8l", "arm", "v8"),
    ],
)
def test_parse_lone_os_on_each_host(
    monkeypatch: pytest.MonkeyPatch, machine: str, arch: str, variant: str
) -> None:
    uname = os.uname_result(("Linux", "host", "6.1", "#1", machine))
    monkeypatch.setattr(platforms.os, "uname", lambda: uname)
    platforms._host.cache_clear()
    try:
        assert Platform.parse("linux") == Platform("linux", arch, variant)
        assert Platform.parse("s390x") == Platform("linux", "s390x")  # a lone arch: no host
    finally:
        platforms._host.cache_clear()


@pytest.mark.parametrize(
    ("platform", "formatted"),
    [
        (Platform("linux", "arm", "v7"), "linux/arm/v7"),
        (Platform("windows", "amd64", "", "10.0.17763"), "windows(10.0.17763)/amd64"),
        (
            Platform("windows", "amd64", "", "10.0.17763", ["win32k", "a", "win32k", ""]),
            "windows(10.0.17763+a+win32k)/amd64",  # sorted, duplicates and empties dropped
        ),
        (Platform("windows", "amd64", "", "", ["win32k"]), "windows(+win32k)/amd64"),
        (Platform("linux", "amd64", "", "", [""]), "linux/amd64"),
        (Platform("linux", "amd64", "", "1+2(3)/4%"), "linux(1%2B2%283%29%2F4%25)/amd64"),
        (Platform("", "amd64", "", "1"), "unknown"),
    ],
)
def test_format_all(platform: Platform, formatted: str) -> None:
    assert platform.format_all() == formatted


@pytest.mark.parametrize(
    "spec",
    [
        "windows(10.0.17763+win32k)/amd64",
        "linux(1%2B2%283%29%2F4%25+f%2Bg)/arm64/v8",
        "windows(+a+b)/amd64",
        "linux/arm/v6",
    ],
)
def test_format_all_round_trip(spec: str) -> None:
    p = Platform.parse(spec)
    assert Platform.parse(p.format_all()) == p


def test_format_is_go_path_join() -> None:
    # containerd joins with path.Join, which cleans the result
    assert str(Platform("linux", "..", "amd64")) == "amd64"
    assert str(Platform.parse("linux/amd64/..")) == "linux"
    assert Platform.parse("linux/./amd64").format_all() == "linux/amd64"
    assert str(Platform("linux", "amd64", "")) == "linux/amd64"


@pytest.mark.parametrize(
    ("spec", "containerd"),
    [
        ("linux/*", '"linux/*": wildcards not yet supported: invalid argument'),
        ("plan10", '"plan10": unknown operating system or architecture: invalid argument'),
        (
            "linux/amd64/v8/x",
            '"linux/amd64/v8/x": cannot parse platform specifier: invalid argument',
        ),
        (
            "linux/a/b/c/d",
            '"c/d" is an invalid component of "linux/a/b/c/d": platform specifier component '
            'must match "^[A-Za-z0-9_.-]+$": invalid argument',
        ),
        (
            "lin.ux/amd64",
            '"lin.ux" is an invalid OS component of "lin.ux/amd64": OSAndVersion specifier '
            r'component must match "^([A-Za-z0-9_-]+)(?:\\(([A-Za-z0-9_.%-]*)((?:\\+[A-Za-z0-9_'
            r'.%-]+)*)\\))?$": invalid argument',
        ),
        (
            "windows(%zz)/amd64",
            '"windows(%zz)/amd64" has an invalid OS version "%zz": invalid URL escape "%zz"',
        ),
        (
            "windows(1%4)/amd64",
            '"windows(1%4)/amd64" has an invalid OS version "1%4": invalid URL escape "%4"',
        ),
        (
            "windows(1+a%g1)/amd64",
            '"windows(1+a%g1)/amd64" has invalid OS features: invalid os feature "a%g1": '
            'invalid URL escape "%g1"',
        ),
    ],
)
def test_parse_errors_in_containerd_words(spec: str, containerd: str) -> None:
    with pytest.raises(PlatformError, match="invalid platform") as info:
        Platform.parse(spec)
    # Go's %q, rendered here by a stand-in good enough for these strings
    quote = lambda s: '"' + s.replace("\\", "\\\\") + '"'  # noqa: E731
    assert info.value.containerd(quote) == containerd


@given(st.text(alphabet=st.sampled_from(list("linuxwdo amd64rv78/()+%2Fz.*_-")), max_size=30))
def test_parse_any_text(spec: str) -> None:
    try:
        p = Platform.parse(spec)
    except PlatformError as e:
        assert e.message.startswith("invalid platform") and e.containerd()
    else:
        assert p.os and p.architecture
        assert str(p) and p.format_all()


@pytest.mark.parametrize(
    ("spec", "order"),
    [
        ("linux/amd64", ["linux/amd64", "linux/386"]),
        ("linux/amd64/v3", ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]),
        (
            "linux/arm64/v8",
            ["linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"],
        ),
        ("linux/arm/v7", ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
        ("linux/arm/v5", ["linux/arm/v5"]),
        (
            "linux/arm64/v8.2",
            [
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        ("linux/s390x", ["linux/s390x"]),
    ],
)
def test_preference(spec: str, order: list[str]) -> None:
    assert [str(p) for p in P(spec).preference()] == order


def test_preference_arm64_v9_runs_v8_5() -> None:
    order = [str(p) for p in P("linux/arm64/v9").preference()]
    assert order[:3] == ["linux/arm64/v9", "linux/arm64/v8.5", "linux/arm64/v8.4"]
    assert "linux/arm64/v8.6" not in order
    assert order[-5:] == [
        "linux/arm64",
        "linux/arm/v8",
        "linux/arm/v7",
        "linux/arm/v6",
        "linux/arm/v5",
    ]


@pytest.mark.parametrize(
    ("host", "image", "runs"),
    [
        ("linux/arm64", "linux/arm64/v8", True),
        ("linux/arm64/v8", "linux/arm64", True),
        ("linux/arm64", "linux/arm/v7", True),
        ("linux/arm64", "linux/arm64/v8.2", False),
        ("linux/arm64", "linux/amd64", False),
        ("linux/amd64", "linux/amd64/v2", False),
        ("linux/amd64", "linux/386", True),
        ("linux/amd64", "windows/amd64", False),
        ("linux/amd64/v2", "linux/amd64", True),
        ("linux/amd64/v2", "linux/amd64/v1", True),
        ("linux/amd64/v2", "linux/amd64/v3", False),
        ("linux/arm/v6", "linux/arm/v7", False),
        ("linux/arm/v6", "linux/arm/v5", True),
        ("linux/arm/v6", "linux/arm", False),  # plain arm means v7
        ("linux/arm/v7", "linux/arm", True),
        ("linux/386", "linux/amd64", False),
    ],
)
def test_matches(host: str, image: str, runs: bool) -> None:
    assert P(host).matches(P(image)) is runs


def test_matches_strict_and_features() -> None:
    assert P("linux/arm64/v8").matches(P("linux/arm64"), strict=True)
    assert not P("linux/amd64").matches(P("linux/386"), strict=True)
    win = Platform("windows", "amd64", os_features=["win32k"])
    assert win.matches(Platform("windows", "amd64"))
    assert not Platform("windows", "amd64").matches(win)  # it needs a feature we lack


def test_platform_json_round_trip() -> None:
    # Docker manifest lists carry a deprecated "features" list: kept as it came.
    raw = {"architecture": "arm", "os": "linux", "variant": "v7", "features": ["sse4"]}
    p = Platform.from_dict(raw)
    assert p.extra == {"features": ["sse4"]}
    assert p.to_dict() == raw
    assert list(p.to_dict()) == ["architecture", "os", "variant", "features"]
    assert Platform("windows", "amd64", "", "10.0.17763.1", ["win32k"]).to_dict() == {
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.17763.1",
        "os.features": ["win32k"],
    }
    with pytest.raises(SouteError, match="invalid platform: architecture must be a string"):
        Platform.from_dict({"architecture": 5, "os": "linux"})


# --- Index.select ---------------------------------------------------------------------------


def entry(spec: str | None, n: int, media_type: str = mt.OCI_MANIFEST) -> Descriptor:
    platform = None
    if spec is not None:
        os, arch, *variant = spec.split("/")
        platform = Platform(os, arch, variant[0] if variant else "")
    return Descriptor(media_type, "sha256:" + f"{n:02d}" * 32, 500 + n, platform=platform)


MULTI = Index(
    manifests=[
        entry("linux/amd64", 1),
        entry("linux/arm/v6", 2),
        entry("linux/arm/v7", 3),
        entry("linux/arm64/v8", 4),
        entry("linux/386", 5),
        entry("unknown/unknown", 6),  # a BuildKit attestation manifest
        entry("linux/ppc64le", 7),
    ]
)


@pytest.mark.parametrize(
    ("host", "picked"),
    [
        ("linux/amd64", 1),
        ("linux/amd64/v3", 1),
        ("linux/arm64", 4),
        ("linux/arm64/v8", 4),
        ("linux/arm/v7", 3),
        ("linux/arm/v8", 3),
        ("linux/arm/v6", 2),
        ("linux/386", 5),
        ("linux/ppc64le", 7),
    ],
)
def test_select(host: str, picked: int) -> None:
    assert MULTI.select(P(host)).size == 500 + picked


def test_select_none() -> None:
    with pytest.raises(SouteError, match="no matching manifest for linux/s390x") as info:
        MULTI.select(P("linux/s390x"))
    assert "linux/amd64" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("entries", "host", "picked"),
    [
        # The better match wins over index order...
        ([entry("linux/386", 1), entry("linux/amd64", 2)], "linux/amd64", 2),
        # ...a compatible one is used when it is all there is...
        ([entry("linux/386", 1)], "linux/amd64", 1),
        ([entry("linux/arm/v5", 1), entry("linux/arm/v7", 2)], "linux/arm64", 2),
        ([entry("linux/amd64/v2", 1), entry("linux/amd64", 2)], "linux/amd64/v3", 1),
        # ...ties keep index order...
        ([entry("linux/amd64", 1), entry("linux/amd64", 2)], "linux/amd64", 1),
        # ...entries without a platform come last but do match...
        ([entry(None, 1), entry("linux/amd64", 2)], "linux/amd64", 2),
        ([entry(None, 1), entry("linux/arm64", 2)], "linux/amd64", 1),
        # ...a nested index is a candidate, other media types are not.
        ([entry("linux/amd64", 1, mt.OCI_LAYER_GZIP)], "linux/amd64", None),
        ([entry("linux/amd64", 1, mt.OCI_INDEX)], "linux/amd64", 1),
        ([entry("linux/amd64", 1, mt.DOCKER_MANIFEST)], "linux/amd64", 1),
    ],
)
def test_select_order(entries: list[Descriptor], host: str, picked: int | None) -> None:
    index = Index(manifests=entries)
    if picked is None:
        with pytest.raises(SouteError):
            index.select(P(host))
    else:
        assert index.select(P(host)).size == 500 + picked


def test_select_more_os_features_first() -> None:
    plain = Descriptor(
        mt.OCI_MANIFEST, "sha256:" + "1" * 64, 1, platform=Platform("windows", "amd64")
    )
    featured = Descriptor(
        mt.OCI_MANIFEST,
        "sha256:" + "2" * 64,
        2,
        platform=Platform("windows", "amd64", os_features=["win32k"]),
    )
    want = Platform("windows", "amd64", os_features=["win32k"])
    assert Index(manifests=[plain, featured]).select(want).size == 2
    assert Index(manifests=[plain, featured]).candidates(Platform("windows", "amd64")) == [plain]


def test_select_defaults_to_host() -> None:
    host = Platform.host()
    index = Index(manifests=[Descriptor(mt.OCI_MANIFEST, "sha256:" + "3" * 64, 3, platform=host)])
    assert index.select().size == 3
