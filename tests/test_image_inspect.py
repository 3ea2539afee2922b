"""``docker image inspect`` and ``docker history`` shapes, and docker's human formats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from soute.errors import SouteError
from soute.image import gojson
from soute.image.config import ImageConfig
from soute.image.digest import sha256_digest
from soute.image.inspect import (
    MISSING_ID,
    HistoryRow,
    ellipsis,
    history_created_since,
    history_rows,
    human_duration,
    human_duration_ago,
    human_size,
    inspect_dict,
)
from soute.image.manifest import Descriptor
from soute.image.reference import parse_reference
from soute.image.timestamp import Timestamp

D1 = "sha256:31b1bea262a65f3b89522e134cef5e65962a5c1727666859ef2448fd439ccccf"
D2 = "sha256:2151ea3a7d6c42ff920f637b680911b7957df8ecb1b9c9448aa9e354531921f4"
D3 = "sha256:bf1f86c98c9625a38922cbd7f57b12cabe5817a82d950a83f072a744d2c1db66"
MANIFEST = "sha256:" + "5e" * 32
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

CONFIG = (
    '{"architecture":"arm64","config":{"ExposedPorts":{"8080/tcp":{}},'
    f'"Env":["{PATH}","GREETING=a \\u0026\\u0026 b"],"Cmd":["./app"],"WorkingDir":"/app",'
    '"Labels":{"version":"1.0"},"OnBuild":["RUN echo child"]},'
    '"created":"2024-01-02T03:04:05.5Z","history":['
    '{"created":"2023-12-01T00:00:00Z","created_by":"/bin/sh -c #(nop) ADD file:abc in / "},'
    '{"created":"2024-01-02T03:04:00Z","created_by":"WORKDIR /app",'
    '"comment":"buildkit.dockerfile.v0"},'
    '{"created":"2024-01-02T03:04:05.5Z","created_by":"COPY app /app/app # buildkit",'
    '"comment":"buildkit.dockerfile.v0"},'
    '{"created":"2024-01-02T03:04:05.5Z","created_by":"CMD [\\"./app\\"]",'
    '"comment":"buildkit.dockerfile.v0","empty_layer":true}],'
    f'"os":"linux","rootfs":{{"type":"layers","diff_ids":["{D1}","{D2}","{D3}"]}},'
    '"variant":"v8"}'
).encode()
IMAGE_ID = sha256_digest(CONFIG)

# What `docker image inspect` prints for this image on docker 27 (API 1.47) with the
# containerd image store: the CLI indents the Engine API's response, which does not escape &.
EXPECTED_INSPECT = f"""[
    {{
        "Id": "{IMAGE_ID}",
        "RepoTags": [
            "example/app:1.0",
            "127.0.0.1:5000/app:1.0"
        ],
        "RepoDigests": [
            "127.0.0.1:5000/app@{MANIFEST}"
        ],
        "Parent": "",
        "Comment": "buildkit.dockerfile.v0",
        "Created": "2024-01-02T03:04:05.5Z",
        "DockerVersion": "",
        "Author": "",
        "Config": {{
            "Hostname": "",
            "Domainname": "",
            "User": "",
            "AttachStdin": false,
            "AttachStdout": false,
            "AttachStderr": false,
            "ExposedPorts": {{
                "8080/tcp": {{}}
            }},
            "Tty": false,
            "OpenStdin": false,
            "StdinOnce": false,
            "Env": [
                "{PATH}",
                "GREETING=a && b"
            ],
            "Cmd": [
                "./app"
            ],
            "Image": "",
            "Volumes": null,
            "WorkingDir": "/app",
            "Entrypoint": null,
            "OnBuild": [
                "RUN echo child"
            ],
            "Labels": {{
                "version": "1.0"
            }}
        }},
        "Architecture": "arm64",
        "Variant": "v8",
        "Os": "linux",
        "Size": 12345678,
        "GraphDriver": {{
            "Data": null,
            "Name": "overlayfs"
        }},
        "RootFS": {{
            "Type": "layers",
            "Layers": [
                "{D1}",
                "{D2}",
                "{D3}"
            ]
        }},
        "Metadata": {{
            "LastTagTime": "2024-01-03T10:00:00.123456789+01:00"
        }}
    }}
]"""


def test_inspect_matches_docker() -> None:
    cfg = ImageConfig.from_json(CONFIG)
    info = inspect_dict(
        IMAGE_ID,
        [parse_reference("example/app:1.0"), "127.0.0.1:5000/app:1.0"],
        [parse_reference(f"127.0.0.1:5000/app@{MANIFEST}")],
        cfg,
        12345678,
        driver="overlayfs",
        last_tag_time=Timestamp.parse("2024-01-03T10:00:00.123456789+01:00"),
    )
    assert gojson.dumps([info], indent=4, escape_html=False) == EXPECTED_INSPECT


def test_inspect_defaults_and_descriptor() -> None:
    cfg = ImageConfig(architecture="amd64", os="linux")
    desc = Descriptor("application/vnd.oci.image.manifest.v1+json", MANIFEST, 400)
    info = inspect_dict("sha256:" + "0" * 64, [], [], cfg, 0, descriptor=desc)
    assert info["RepoTags"] == [] and info["RepoDigests"] == []
    assert "Created" not in info  # omitempty since API 1.45
    assert info["Comment"] == ""
    assert info["RootFS"] == {"Type": "layers"}  # Layers is omitempty
    assert info["Metadata"] == {"LastTagTime": "0001-01-01T00:00:00Z"}  # Go's zero time
    assert info["GraphDriver"] == {"Data": None, "Name": ""}
    assert info["Descriptor"] == {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": MANIFEST,
        "size": 400,
    }
    assert list(info)[-1] == "Descriptor"
    # An image whose config has no "config" object shows null, as docker does.
    bare = ImageConfig.from_json(
        b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    )
    assert inspect_dict("sha256:" + "0" * 64, [], [], bare, 0)["Config"] is None


CLASSIC = (
    '{"architecture":"amd64","config":{"Hostname":"","Domainname":"","User":"",'
    '"AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,'
    f'"OpenStdin":false,"StdinOnce":false,"Env":["{PATH}"],"Cmd":["bash"],'
    '"Image":"sha256:9e0a","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,'
    '"Labels":{}},"container":"8a4b6c2d","container_config":{"Hostname":"8a4b6c2d",'
    '"Cmd":["/bin/sh","-c","#(nop) ","CMD [\\"bash\\"]"],"Labels":{}},'
    '"created":"2023-12-19T01:20:33.315082924Z","docker_version":"20.10.23",'
    '"history":[{"created":"2023-12-19T01:20:32.911396614Z","created_by":"ADD x /"}],'
    f'"os":"linux","rootfs":{{"type":"layers","diff_ids":["{D1}"]}}}}'
).encode()


def test_inspect_legacy_api_fields() -> None:
    cfg = ImageConfig.from_json(CLASSIC)
    info = inspect_dict("sha256:" + "1" * 64, ["debian:12"], [], cfg, 100, api_version="1.41")
    assert list(info) == [
        "Id",
        "RepoTags",
        "RepoDigests",
        "Parent",
        "Comment",
        "Created",
        "Container",
        "ContainerConfig",
        "DockerVersion",
        "Author",
        "Config",
        "Architecture",
        "Os",
        "Size",
        "VirtualSize",
        "GraphDriver",
        "RootFS",
        "Metadata",
    ]
    assert info["Container"] == "8a4b6c2d" and info["DockerVersion"] == "20.10.23"
    assert info["VirtualSize"] == 100
    cc = info["ContainerConfig"]
    assert cc["Hostname"] == "8a4b6c2d" and cc["Cmd"][2] == "#(nop) "
    assert cc["Labels"] == {} and cc["Env"] is None
    config = info["Config"]
    assert config["Image"] == "sha256:9e0a"
    assert config["Labels"] == {}  # {} in the config stays {}, not null
    assert config["Volumes"] is None and config["Entrypoint"] is None
    assert info["Comment"] == ""
    # API 1.44 drops VirtualSize but still has ContainerConfig; 1.45 drops both.
    v144 = inspect_dict("sha256:" + "1" * 64, [], [], cfg, 100, api_version="1.44")
    assert "VirtualSize" not in v144 and "ContainerConfig" in v144
    v145 = inspect_dict("sha256:" + "1" * 64, [], [], cfg, 100, api_version="1.45")
    assert "ContainerConfig" not in v145 and "Container" not in v145
    with pytest.raises(SouteError, match="invalid API version"):
        inspect_dict("sha256:" + "1" * 64, [], [], cfg, 100, api_version="latest")


def test_inspect_healthcheck_and_flags() -> None:
    cfg = ImageConfig.from_dict(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Healthcheck": {"Test": ["NONE"], "Interval": 0, "x": 1},
                "StopSignal": "SIGTERM",
                "Shell": ["/bin/ash", "-c"],
                "ArgsEscaped": True,
                "Env": [],
            },
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    )
    config = inspect_dict("sha256:" + "2" * 64, [], [], cfg, 0)["Config"]
    assert config["Healthcheck"] == {"Test": ["NONE"]}
    assert config["ArgsEscaped"] is True
    assert config["Env"] == []  # [] in the config shows as [], absent as null
    assert config["Cmd"] is None
    keys = list(config)
    assert keys[-2:] == ["StopSignal", "Shell"]
    assert keys.index("Healthcheck") == keys.index("Cmd") + 1
    assert keys.index("ArgsEscaped") == keys.index("Healthcheck") + 1


# --- docker history --------------------------------------------------------------------------


def test_history_rows() -> None:
    cfg = ImageConfig.from_json(CONFIG)
    rows = history_rows(cfg, [29_000_000, 0, 4096], IMAGE_ID, ["example/app:1.0"])
    assert [(r.id, r.created_by, r.size, r.empty_layer) for r in rows] == [
        (IMAGE_ID, 'CMD ["./app"]', 0, True),
        (MISSING_ID, "COPY app /app/app # buildkit", 4096, False),
        (MISSING_ID, "WORKDIR /app", 0, False),
        (MISSING_ID, "/bin/sh -c #(nop) ADD file:abc in / ", 29_000_000, False),
    ]
    assert rows[0].tags == ("example/app:1.0",) and rows[1].tags == ()
    assert rows[0].short_id == IMAGE_ID[7:19] and rows[1].short_id == "<missing>"
    assert rows[0].comment == "buildkit.dockerfile.v0"
    assert rows[-1].created == Timestamp.parse("2023-12-01T00:00:00Z")


def test_history_rows_edge_cases() -> None:
    cfg = ImageConfig.from_json(CONFIG)
    assert history_rows(ImageConfig(architecture="amd64", os="linux"), [], IMAGE_ID) == []
    cfg.rootfs.diff_ids.pop()
    with pytest.raises(SouteError, match="too many non-empty layers in History section"):
        history_rows(cfg, [1, 2], IMAGE_ID)
    # Layers beyond the history are not listed (as in docker).
    one = ImageConfig.from_json(CONFIG)
    one.history = one.history[:1]
    rows = history_rows(one, [5, 6, 7], IMAGE_ID)
    assert [(r.id, r.size) for r in rows] == [(IMAGE_ID, 5)]


def test_history_row_is_plain_data() -> None:
    row = HistoryRow(MISSING_ID, None, "x", 0, "", True)
    assert row.short_id == MISSING_ID


@pytest.mark.parametrize(
    ("created", "now", "text"),
    [
        # Measured from the whole second, as the Engine API sends Unix seconds.
        ("2024-01-02T03:04:05.9Z", "2024-01-02T03:11:05Z", "7 minutes ago"),
        ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05.2Z", "Less than a second ago"),
        ("2024-01-02T03:04:05Z", "2024-01-02T04:34:05Z", "2 hours ago"),
        ("1970-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "N/A"),  # SOURCE_DATE_EPOCH=0
        ("2000-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "N/A"),
        ("2000-01-01T00:00:01Z", "2024-01-02T00:00:00Z", "24 years ago"),
    ],
)
def test_history_created_since(created: str, now: str, text: str) -> None:
    assert history_created_since(Timestamp.parse(created), Timestamp.parse(now)) == text


def test_history_created_since_unknown() -> None:
    assert history_created_since(None) == "N/A"


# --- human formats ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1, "1B"),
        (999, "999B"),
        (1000, "1kB"),
        (1234, "1.23kB"),
        (1235, "1.24kB"),
        (4096, "4.1kB"),
        (77_800, "77.8kB"),
        (169_000_000, "169MB"),
        (169_499_999, "169MB"),
        (72_820_000, "72.8MB"),
        (1_500_000_000, "1.5GB"),
        (999_700, "1e+03kB"),  # Go's %.3g switches to an exponent here, and so does docker
        (5 * 10**15, "5PB"),
        (10**27, "1e+03YB"),
        (-5, "-5B"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [(1000, "1kB"), (1024, "1.024kB"), (1_048_576, "1.049MB"), (2_746_000, "2.746MB")],
)
def test_human_size_four_digits(size: int, text: str) -> None:
    assert human_size(size, precision=4) == text


S = 1.0
M = 60 * S
H = 60 * M
DAY = 24 * H


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "Less than a second"),
        (0.3, "Less than a second"),
        (1, "1 second"),
        (1.999, "1 second"),
        (2, "2 seconds"),
        (59.9, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (120, "2 minutes"),
        (59 * M + 59, "59 minutes"),
        (60 * M, "About an hour"),
        (89 * M, "About an hour"),
        (91 * M, "2 hours"),
        (23 * H, "23 hours"),
        (47 * H + 29 * M, "47 hours"),
        (47 * H + 31 * M, "2 days"),
        (6 * DAY, "6 days"),
        (13 * DAY + 23 * H, "13 days"),
        (14 * DAY, "2 weeks"),
        (59 * DAY, "8 weeks"),
        (60 * DAY, "2 months"),
        (200 * DAY, "6 months"),
        (729 * DAY, "24 months"),
        (730 * DAY, "2 years"),
        (3 * 365 * DAY + 100 * DAY, "3 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text
    assert human_duration(timedelta(seconds=seconds)) == text


def test_human_duration_ago() -> None:
    then = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert human_duration_ago(then, then + timedelta(minutes=7)) == "7 minutes ago"
    assert human_duration_ago(Timestamp.from_datetime(then), then + timedelta(hours=1)) == (
        "About an hour ago"
    )
    assert human_duration_ago(then, then + timedelta(weeks=2, days=3)) == "2 weeks ago"
    # Default "now" is the current time.
    recent = datetime.now(UTC) - timedelta(seconds=3)
    assert human_duration_ago(recent) in ("3 seconds ago", "4 seconds ago", "5 seconds ago")


@pytest.mark.parametrize(
    ("text", "width", "out"),
    [
        ("short", 45, "short"),
        ("abcdef", 6, "abcdef"),
        ("abcdefg", 6, "abcde…"),
        ("abc", 1, "a"),
        ("abc", 0, ""),
        ("日本語のテキスト", 8, "日本語…"),
        ("日本語", 6, "日本語"),
        ("café au lait", 6, "café …"),
    ],
)
def test_ellipsis(text: str, width: int, out: str) -> None:
    assert ellipsis(text, width) == out
