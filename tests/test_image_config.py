"""Image configs: reading, writing as BuildKit and dockerd do, editing, validation, history."""

from __future__ import annotations

import json

import pytest

from soute.errors import SouteError
from soute.image.config import (
    EXPORTER_COMMENT,
    ContainerConfig,
    Healthcheck,
    History,
    ImageConfig,
    RootFS,
    normalise_history,
)
from soute.image.digest import sha256_digest
from soute.image.platforms import Platform
from soute.image.timestamp import Timestamp

D1 = "sha256:31b1bea262a65f3b89522e134cef5e65962a5c1727666859ef2448fd439ccccf"
D2 = "sha256:2151ea3a7d6c42ff920f637b680911b7957df8ecb1b9c9448aa9e354531921f4"
D3 = "sha256:bf1f86c98c9625a38922cbd7f57b12cabe5817a82d950a83f072a744d2c1db66"
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILDINFO = "eyJmcm9udGVuZCI6ImRvY2tlcmZpbGUudjAifQ=="

# Written by hand in the shape BuildKit's exporter gives (top-level keys sorted, nested objects
# in Go struct order, Go's \u0026/\u003e escapes, nanosecond times).
BUILDKIT_CONFIG = (
    '{"architecture":"amd64",'
    '"config":{"ExposedPorts":{"80/tcp":{}},'
    f'"Env":["{PATH}","APP_HOME=/srv/app"],'
    '"Entrypoint":["/usr/local/bin/entry.sh"],"Cmd":["serve","--port","80"],'
    '"WorkingDir":"/srv/app",'
    '"Labels":{"maintainer":"ops@example.com",'
    '"org.opencontainers.image.source":"https://example.com/app"},'
    '"StopSignal":"SIGQUIT",'
    '"Healthcheck":{"Test":["CMD-SHELL","curl -f http://localhost/ || exit 1"],'
    '"Interval":30000000000,"Timeout":5000000000,"StartPeriod":10000000000,"Retries":3},'
    '"Shell":["/bin/bash","-o","pipefail","-c"]},'
    '"created":"2024-01-02T03:04:05.123456789Z",'
    '"history":['
    '{"created":"2023-12-19T01:20:32.911396614Z",'
    '"created_by":"/bin/sh -c #(nop) ADD file:5d6b639e8b6bcc011fd7e6d1ad1d9d0c in / "},'
    '{"created":"2023-12-19T01:20:33.315082924Z",'
    '"created_by":"/bin/sh -c #(nop)  CMD [\\"bash\\"]","empty_layer":true},'
    '{"created":"2024-01-02T03:04:01.5Z",'
    '"created_by":"RUN /bin/bash -o pipefail -c apt-get update \\u0026\\u0026 '
    'apt-get install -y curl \\u003e/dev/null # buildkit",'
    '"comment":"buildkit.dockerfile.v0"},'
    '{"created":"2024-01-02T03:04:01.5Z","created_by":"ENV APP_HOME=/srv/app",'
    '"comment":"buildkit.dockerfile.v0","empty_layer":true},'
    '{"created":"2024-01-02T03:04:05.123456789Z","created_by":"COPY . /srv/app # buildkit",'
    '"comment":"buildkit.dockerfile.v0"},'
    '{"created":"2024-01-02T03:04:05.123456789Z",'
    '"created_by":"CMD [\\"serve\\", \\"--port\\", \\"80\\"]",'
    '"comment":"buildkit.dockerfile.v0","empty_layer":true}],'
    f'"moby.buildkit.buildinfo.v1":"{BUILDINFO}",'
    '"os":"linux",'
    f'"rootfs":{{"type":"layers","diff_ids":["{D1}","{D2}","{D3}"]}}}}'
).encode()

# The classic builder's shape (dockerd <= 22 without BuildKit, older Hub images): container.Config
# written in full, with nulls and empty strings, plus container_config and docker_version.
CLASSIC_CONFIG = (
    '{"architecture":"amd64",'
    '"config":{"Hostname":"","Domainname":"","User":"","AttachStdin":false,'
    '"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,'
    f'"StdinOnce":false,"Env":["{PATH}"],"Cmd":["bash"],'
    '"Image":"sha256:9e0a9d7d8c6bf1ab7d8b3e0d5c7f9a0e1b2c3d4e5f60718293a4b5c6d7e8f901",'
    '"Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":{}},'
    '"container":"8a4b6c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b",'
    '"container_config":{"Hostname":"8a4b6c2d1e0f","Domainname":"","User":"",'
    '"AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,'
    f'"OpenStdin":false,"StdinOnce":false,"Env":["{PATH}"],'
    '"Cmd":["/bin/sh","-c","#(nop) ","CMD [\\"bash\\"]"],'
    '"Image":"sha256:9e0a9d7d8c6bf1ab7d8b3e0d5c7f9a0e1b2c3d4e5f60718293a4b5c6d7e8f901",'
    '"Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":{}},'
    '"created":"2023-12-19T01:20:33.315082924Z","docker_version":"20.10.23",'
    '"history":[{"created":"2023-12-19T01:20:32.911396614Z",'
    '"created_by":"/bin/sh -c #(nop) ADD file:5d6b639e8b6bcc011fd7e6d1ad1d9d0c in / "},'
    '{"created":"2023-12-19T01:20:33.315082924Z",'
    '"created_by":"/bin/sh -c #(nop)  CMD [\\"bash\\"]","empty_layer":true}],'
    f'"os":"linux","rootfs":{{"type":"layers","diff_ids":["{D1}"]}}}}'
).encode()


def test_buildkit_config_reads() -> None:
    cfg = ImageConfig.from_json(BUILDKIT_CONFIG)
    assert cfg.platform == Platform("linux", "amd64")
    assert cfg.created == Timestamp.parse("2024-01-02T03:04:05.123456789Z")
    assert cfg.created is not None and cfg.created.nanos == 123456789
    c = cfg.config
    assert c.exposed_ports == ["80/tcp"]
    assert c.env_dict() == {"PATH": PATH[5:], "APP_HOME": "/srv/app"}
    assert c.entrypoint == ["/usr/local/bin/entry.sh"] and c.cmd == ["serve", "--port", "80"]
    assert c.stop_signal == "SIGQUIT" and c.working_dir == "/srv/app"
    assert c.healthcheck == Healthcheck(
        test=["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
        interval=30_000_000_000,
        timeout=5_000_000_000,
        start_period=10_000_000_000,
        retries=3,
    )
    assert c.shell == ["/bin/bash", "-o", "pipefail", "-c"]
    assert len(cfg.history) == 6 and len(cfg.layer_history()) == 3
    assert "&& apt-get install -y curl >/dev/null" in cfg.history[2].created_by
    assert cfg.rootfs.diff_ids == [D1, D2, D3]
    assert cfg.extra == {"moby.buildkit.buildinfo.v1": BUILDINFO}
    cfg.validate()


def test_buildkit_config_round_trips_byte_for_byte() -> None:
    cfg = ImageConfig.from_json(BUILDKIT_CONFIG)
    assert cfg.to_json() == BUILDKIT_CONFIG
    assert cfg.digest() == sha256_digest(BUILDKIT_CONFIG)


def test_classic_config_round_trips_byte_for_byte() -> None:
    cfg = ImageConfig.from_json(CLASSIC_CONFIG)
    assert cfg.config.volumes == [] and cfg.config.labels == {}
    assert cfg.config.extra["Image"].startswith("sha256:9e0a")
    assert cfg.extra["docker_version"] == "20.10.23"
    assert cfg.to_json() == CLASSIC_CONFIG


def test_built_in_code_gives_buildkits_bytes() -> None:
    # The same config assembled field by field serialises exactly as BuildKit wrote it.
    t = Timestamp.parse
    cfg = ImageConfig(
        architecture="amd64",
        os="linux",
        created=t("2024-01-02T03:04:05.123456789Z"),
        config=ContainerConfig(
            # Given in another order: maps and sets are written sorted, as Go does.
            labels={
                "org.opencontainers.image.source": "https://example.com/app",
                "maintainer": "ops@example.com",
            },
            exposed_ports=["80/tcp"],
            env=[PATH, "APP_HOME=/srv/app"],
            entrypoint=["/usr/local/bin/entry.sh"],
            cmd=["serve", "--port", "80"],
            working_dir="/srv/app",
            stop_signal="SIGQUIT",
            healthcheck=Healthcheck(
                ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
                30_000_000_000,
                5_000_000_000,
                10_000_000_000,
                0,
                3,
            ),
            shell=["/bin/bash", "-o", "pipefail", "-c"],
        ),
        rootfs=RootFS([D1, D2, D3]),
        history=[
            History(
                t("2023-12-19T01:20:32.911396614Z"),
                "/bin/sh -c #(nop) ADD file:5d6b639e8b6bcc011fd7e6d1ad1d9d0c in / ",
            ),
            History(
                t("2023-12-19T01:20:33.315082924Z"),
                '/bin/sh -c #(nop)  CMD ["bash"]',
                empty_layer=True,
            ),
            History(
                t("2024-01-02T03:04:01.5Z"),
                "RUN /bin/bash -o pipefail -c apt-get update && apt-get install -y curl"
                " >/dev/null # buildkit",
                comment="buildkit.dockerfile.v0",
            ),
            History(
                t("2024-01-02T03:04:01.5Z"),
                "ENV APP_HOME=/srv/app",
                comment="buildkit.dockerfile.v0",
                empty_layer=True,
            ),
            History(
                t("2024-01-02T03:04:05.123456789Z"),
                "COPY . /srv/app # buildkit",
                comment="buildkit.dockerfile.v0",
            ),
            History(
                t("2024-01-02T03:04:05.123456789Z"),
                'CMD ["serve", "--port", "80"]',
                comment="buildkit.dockerfile.v0",
                empty_layer=True,
            ),
        ],
        extra={"moby.buildkit.buildinfo.v1": BUILDINFO},
    )
    assert cfg.to_json() == BUILDKIT_CONFIG
    assert cfg == ImageConfig.from_json(BUILDKIT_CONFIG)


def test_minimal_fresh_config() -> None:
    cfg = ImageConfig(architecture="arm64", os="linux", variant="v8")
    # config and rootfs are always written (BuildKit writes "config":{} too).
    assert cfg.to_json() == (
        b'{"architecture":"arm64","config":{},"os":"linux",'
        b'"rootfs":{"type":"layers","diff_ids":[]},"variant":"v8"}'
    )


def test_edit_changes_only_what_was_edited() -> None:
    cfg = ImageConfig.from_json(CLASSIC_CONFIG)
    cfg.config.set_env("LANG", "C.UTF-8")
    expected = CLASSIC_CONFIG.replace(
        f'"Env":["{PATH}"],"Cmd":["bash"]'.encode(),
        f'"Env":["{PATH}","LANG=C.UTF-8"],"Cmd":["bash"]'.encode(),
    )
    assert expected != CLASSIC_CONFIG
    assert cfg.to_json() == expected
    # Emptying a field drops it where Go's omitempty would: it does not come back as null.
    cfg.config.cmd = []
    assert b'"Cmd"' not in cfg.to_json().split(b'"container"')[0]


def test_new_keys_go_where_go_writes_them() -> None:
    cfg = ImageConfig.from_json(BUILDKIT_CONFIG)
    cfg.config.user = "app"
    cfg.config.volumes = ["/data"]
    cfg.author = "ops"
    cfg.variant = "v2"
    doc = json.loads(cfg.to_json())
    assert list(doc) == [
        "architecture",
        "author",
        "config",
        "created",
        "history",
        "moby.buildkit.buildinfo.v1",
        "os",
        "rootfs",
        "variant",
    ]
    assert list(doc["config"])[:2] == ["User", "ExposedPorts"]
    keys = list(doc["config"])
    assert keys.index("Volumes") == keys.index("Cmd") + 1
    assert doc["config"]["Volumes"] == {"/data": {}}


def test_nulls_read_as_absent() -> None:
    raw = {
        "architecture": "amd64",
        "os": "linux",
        "author": None,
        "created": None,
        "config": {"Env": None, "Cmd": None, "Healthcheck": None, "Labels": None},
        "rootfs": {"type": "layers", "diff_ids": None},
        "history": None,
    }
    cfg = ImageConfig.from_dict(raw)
    assert cfg.created is None and cfg.history == [] and cfg.config.env == []
    assert cfg.config.healthcheck is None and cfg.rootfs.diff_ids == []
    # Read back as it was: the nulls are kept.
    assert cfg.to_dict() == raw
    # BuildKit can write "created":null; a config without "config" stays without it.
    bare = ImageConfig.from_dict({"architecture": "amd64", "os": "linux", "rootfs": raw["rootfs"]})
    assert "config" not in bare.to_dict()


def test_args_escaped_is_read_but_not_written() -> None:
    raw = {"Cmd": ["a b"], "ArgsEscaped": True}
    cc = ContainerConfig.from_dict(raw)
    assert cc.args_escaped is True
    assert cc.to_dict() == raw  # kept as read...
    fresh = ContainerConfig(cmd=["a b"], args_escaped=True)
    assert fresh.to_dict() == {"Cmd": ["a b"]}  # ...never written by us


def test_created_keeps_its_offset() -> None:
    text = b'{"architecture":"amd64","created":"2024-05-06T07:08:09.5+02:00","os":"linux",'
    text += b'"rootfs":{"type":"layers","diff_ids":[]}}'
    cfg = ImageConfig.from_json(text)
    assert cfg.created is not None and cfg.created.offset == 7200
    assert cfg.to_json() == text
    cfg.created = Timestamp.parse("2024-05-06T05:08:09.5Z")
    assert b'"created":"2024-05-06T05:08:09.5Z"' in cfg.to_json()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"os": "linux"}, "rootfs is missing"),
        ({"rootfs": {"type": "layer", "diff_ids": []}}, 'type must be "layers"'),
        ({"rootfs": {"diff_ids": []}}, 'type must be "layers"'),
        ({"rootfs": {"type": "layers", "diff_ids": ["nope"]}}, "is not a digest"),
        ({"rootfs": {"type": "layers"}, "config": {"Env": "A=1"}}, "Env must be an array"),
        ({"rootfs": {"type": "layers"}, "config": {"Labels": {"a": 1}}}, "Labels must be"),
        ({"rootfs": {"type": "layers"}, "config": {"User": 0}}, "User must be a string"),
        ({"rootfs": {"type": "layers"}, "config": []}, "config: must be a JSON object"),
        (
            {"rootfs": {"type": "layers"}, "config": {"Healthcheck": {"Interval": 1.5}}},
            "Interval must be an integer",
        ),
        ({"rootfs": {"type": "layers"}, "created": "yesterday"}, "created: invalid time"),
        ({"rootfs": {"type": "layers"}, "history": [{"empty_layer": "yes"}]}, "empty_layer"),
        ({"rootfs": {"type": "layers"}, "history": {}}, "history must be an array"),
        ({"rootfs": {"type": "layers"}, "architecture": ["amd64"]}, "architecture must be"),
    ],
)
def test_config_errors(doc: dict[str, object], message: str) -> None:
    with pytest.raises(SouteError, match=message) as info:
        ImageConfig.from_dict(doc)
    assert info.value.message.startswith("invalid image config")


def test_config_errors_on_bad_json() -> None:
    with pytest.raises(SouteError, match="invalid image config"):
        ImageConfig.from_json(b"[1, 2")
    with pytest.raises(SouteError, match="must be a JSON object"):
        ImageConfig.from_json(b"[]")


def test_validate() -> None:
    cfg = ImageConfig.from_json(BUILDKIT_CONFIG)
    cfg.validate()
    cfg.rootfs.diff_ids.pop()
    with pytest.raises(SouteError, match="3 history entries make a layer but there are 2") as e:
        cfg.validate()
    assert "normalise_history" in (e.value.hint or "")
    with pytest.raises(SouteError, match="os and architecture are required"):
        ImageConfig(os="linux").validate()
    # No history at all is allowed.
    ImageConfig(architecture="amd64", os="linux", rootfs=RootFS([D1])).validate()


def test_normalise_history_adds_entries_for_layers() -> None:
    t1 = Timestamp.parse("2024-03-01T00:00:00Z")
    t3 = Timestamp.parse("2024-03-03T00:00:00Z")
    cfg = ImageConfig(
        architecture="amd64",
        os="linux",
        rootfs=RootFS([D1, D2, D3]),
        history=[
            History(None, "ADD base", empty_layer=False),
            History(None, "ENV A=1", empty_layer=True),
        ],
    )
    out = normalise_history(
        cfg, layer_created=[t1, None, t3], layer_descriptions=["", "RUN make", ""]
    )
    assert out is cfg.history
    assert [(h.created_by, h.comment) for h in out] == [
        ("ADD base", ""),
        ("ENV A=1", ""),
        ("RUN make", EXPORTER_COMMENT),
        ("created by soute", EXPORTER_COMMENT),
    ]
    # The first layer gets its layer's time; the gaps take the time after them, or the last one.
    assert [h.created for h in out] == [t1, t3, t3, t3]
    cfg.validate()


def test_normalise_history_marks_surplus_entries_empty() -> None:
    cfg = ImageConfig(
        architecture="amd64",
        os="linux",
        rootfs=RootFS([D1]),
        history=[History(None, "one"), History(None, "two"), History(None, "three")],
    )
    normalise_history(cfg)
    assert [h.empty_layer for h in cfg.history] == [False, True, True]
    assert all(h.created is None for h in cfg.history)  # no time anywhere to take
    cfg.validate()


def test_normalise_history_fills_times_forward() -> None:
    a = Timestamp.parse("2024-01-01T00:00:00Z")
    b = Timestamp.parse("2024-01-02T00:00:00Z")
    cfg = ImageConfig(
        architecture="amd64",
        os="linux",
        rootfs=RootFS([D1]),
        history=[
            History(a, "FROM base", empty_layer=True),
            History(None, "ENV x", empty_layer=True),
            History(b, "RUN y"),
            History(None, "CMD z", empty_layer=True),
        ],
    )
    normalise_history(cfg)
    assert [h.created for h in cfg.history] == [a, b, b, b]


def test_env_helpers() -> None:
    cc = ContainerConfig(env=["A=1", "B=2=3", "C"])
    assert cc.env_dict() == {"A": "1", "B": "2=3", "C": ""}
    cc.set_env("A", "9")
    cc.set_env("D", "4")
    assert cc.env == ["A=9", "B=2=3", "C", "D=4"]


def test_set_platform() -> None:
    cfg = ImageConfig(architecture="amd64", os="linux")
    cfg.set_platform(Platform.parse("linux/arm64/v8"))
    assert (cfg.architecture, cfg.variant) == ("arm64", "v8")
    assert str(cfg.platform) == "linux/arm64/v8"
