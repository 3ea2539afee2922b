"""What ``docker image inspect`` and ``docker history`` show, and docker's human formats.

``inspect_dict`` follows the Engine API's image inspect response (moby ``api/types``), keys in
its struct order, as docker 26-28 (API 1.45-1.47) prints it by default; older API versions add
the fields they had (``VirtualSize`` below 1.44, ``Container``/``ContainerConfig`` below 1.45).
``Config`` is the image's config decoded into docker's ``container.Config`` and encoded again,
which is why it lists ``Hostname``, ``AttachStdin``... with their zero values and ``null`` for
empty lists. ``GraphDriver`` is always there, as in those versions; the store says what to put in
it (docker's containerd store prints ``{"Data": null, "Name": "overlayfs"}``).

To print it as ``docker image inspect`` does: ``gojson.dumps([d], indent=4, escape_html=False)``
(the Engine API does not escape ``&``/``<``/``>``; the CLI indents with four spaces).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from soute.errors import SouteError
from soute.image.config import ContainerConfig, ImageConfig
from soute.image.digest import short_id
from soute.image.manifest import Descriptor
from soute.image.model import set_map, sorted_map
from soute.image.reference import Reference
from soute.image.timestamp import GO_ZERO_TIME, Timestamp

DEFAULT_API_VERSION = "1.47"
MISSING_ID = "<missing>"
# docker history shows "N/A" for times at or before this (2000-01-01T00:00:00Z).
_HISTORY_EPOCH = 946684800


def _api(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        raise SouteError(f"invalid API version {version!r}", hint="e.g. 1.47") from None


def _list_or_null(cfg: ContainerConfig, key: str, value: list[str]) -> list[str] | None:
    # Go decodes [] as an empty slice (printed []) and absent/null as nil (printed null).
    if value or isinstance(cfg.read_value(key), list):
        return list(value)
    return None


def _map_or_null(cfg: ContainerConfig, key: str, value: dict[str, Any]) -> dict[str, Any] | None:
    if value or isinstance(cfg.read_value(key), dict):
        return value
    return None


def docker_container_config(cfg: ContainerConfig) -> dict[str, Any]:
    """``cfg`` as docker's ``container.Config`` marshals it (keys in struct order)."""
    x = cfg.extra
    out: dict[str, Any] = {
        "Hostname": x.get("Hostname") or "",
        "Domainname": x.get("Domainname") or "",
        "User": cfg.user,
        "AttachStdin": bool(x.get("AttachStdin")),
        "AttachStdout": bool(x.get("AttachStdout")),
        "AttachStderr": bool(x.get("AttachStderr")),
    }
    if cfg.exposed_ports:
        out["ExposedPorts"] = set_map(cfg.exposed_ports)
    out["Tty"] = bool(x.get("Tty"))
    out["OpenStdin"] = bool(x.get("OpenStdin"))
    out["StdinOnce"] = bool(x.get("StdinOnce"))
    out["Env"] = _list_or_null(cfg, "Env", cfg.env)
    out["Cmd"] = _list_or_null(cfg, "Cmd", cfg.cmd)
    if cfg.healthcheck is not None:
        out["Healthcheck"] = replace(cfg.healthcheck, extra={}).to_dict()
    if cfg.args_escaped:
        out["ArgsEscaped"] = True
    out["Image"] = x.get("Image") or ""
    out["Volumes"] = _map_or_null(cfg, "Volumes", set_map(cfg.volumes))
    out["WorkingDir"] = cfg.working_dir
    out["Entrypoint"] = _list_or_null(cfg, "Entrypoint", cfg.entrypoint)
    if x.get("NetworkDisabled"):
        out["NetworkDisabled"] = True
    if x.get("MacAddress"):
        out["MacAddress"] = x["MacAddress"]
    out["OnBuild"] = _list_or_null(cfg, "OnBuild", cfg.on_build)
    out["Labels"] = _map_or_null(cfg, "Labels", sorted_map(cfg.labels))
    if cfg.stop_signal:
        out["StopSignal"] = cfg.stop_signal
    if x.get("StopTimeout") is not None:
        out["StopTimeout"] = x["StopTimeout"]
    if cfg.shell:
        out["Shell"] = list(cfg.shell)
    return out


def _name(ref: str | Reference) -> str:
    return ref.familiar() if isinstance(ref, Reference) else ref


def inspect_dict(
    image_id: str,
    repo_tags: Sequence[str | Reference],
    repo_digests: Sequence[str | Reference],
    config: ImageConfig,
    size: int,
    *,
    parent: str = "",
    driver: str = "",
    driver_data: Mapping[str, str] | None = None,
    last_tag_time: Timestamp | None = None,
    descriptor: Descriptor | None = None,
    api_version: str = DEFAULT_API_VERSION,
) -> dict[str, Any]:
    """One element of ``docker image inspect``'s output.

    ``image_id`` is the config digest (``sha256:…``); references are written in docker's
    familiar form; ``size`` is the sum of the uncompressed layer sizes; ``driver`` and
    ``driver_data`` fill ``GraphDriver``; ``descriptor`` (the manifest's) adds the
    ``Descriptor`` key docker's containerd store prints.
    """
    api = _api(api_version)
    history = config.history
    comment = config.extra.get("comment")
    if not isinstance(comment, str) or not comment:
        comment = history[-1].comment if history else ""
    cfg_present = config.read_keys is None or config.read_value("config") is not None

    out: dict[str, Any] = {
        "Id": image_id,
        "RepoTags": [_name(r) for r in repo_tags],
        "RepoDigests": [_name(r) for r in repo_digests],
        "Parent": parent,
        "Comment": comment,
    }
    if config.created is not None:
        out["Created"] = config.created.format()
    elif api < (1, 45):
        out["Created"] = ""
    if api < (1, 45):
        out["Container"] = str(config.extra.get("container") or "")
        raw_cc = config.extra.get("container_config")
        cc = ContainerConfig.from_dict(raw_cc) if isinstance(raw_cc, dict) else ContainerConfig()
        out["ContainerConfig"] = docker_container_config(cc)
    out["DockerVersion"] = str(config.extra.get("docker_version") or "")
    out["Author"] = config.author
    out["Config"] = docker_container_config(config.config) if cfg_present else None
    out["Architecture"] = config.architecture
    if config.variant:
        out["Variant"] = config.variant
    out["Os"] = config.os
    if config.os_version:
        out["OsVersion"] = config.os_version
    out["Size"] = size
    if api < (1, 44):
        out["VirtualSize"] = size
    out["GraphDriver"] = {"Data": dict(driver_data) if driver_data else None, "Name": driver}
    rootfs: dict[str, Any] = {"Type": config.rootfs.type}
    if config.rootfs.diff_ids:
        rootfs["Layers"] = list(config.rootfs.diff_ids)
    out["RootFS"] = rootfs
    out["Metadata"] = {"LastTagTime": (last_tag_time or GO_ZERO_TIME).format()}
    if descriptor is not None:
        out["Descriptor"] = descriptor.to_dict()
    return out


@dataclass(frozen=True)
class HistoryRow:
    """One line of ``docker history``: ``id`` is the image ID on the top row and
    ``<missing>`` below; ``size`` is 0 for entries that made no layer."""

    id: str
    created: Timestamp | None
    created_by: str
    size: int
    comment: str
    empty_layer: bool
    tags: tuple[str, ...] = ()

    @property
    def short_id(self) -> str:
        return self.id if self.id == MISSING_ID else short_id(self.id)


def history_rows(
    config: ImageConfig,
    layer_sizes: Sequence[int],
    image_id: str,
    tags: Sequence[str | Reference] = (),
) -> list[HistoryRow]:
    """The rows of ``docker history``, top first. History entries that made a layer are paired
    with the layers in order (``layer_sizes`` runs parallel to the diff_ids); layers beyond the
    history are not shown, as in docker."""
    rows: list[HistoryRow] = []
    layer = 0
    for h in config.history:
        size = 0
        if not h.empty_layer:
            if layer >= len(config.rootfs.diff_ids) or layer >= len(layer_sizes):
                raise SouteError(
                    "too many non-empty layers in History section",
                    hint="the image config lists more layer-making steps than layers",
                )
            size = layer_sizes[layer]
            layer += 1
        rows.append(HistoryRow(MISSING_ID, h.created, h.created_by, size, h.comment, h.empty_layer))
    rows.reverse()
    if rows:
        top = rows[0]
        rows[0] = replace(top, id=image_id, tags=tuple(_name(t) for t in tags))
    return rows


def history_created_since(created: Timestamp | None, now: Timestamp | None = None) -> str:
    """``docker history``'s CREATED column: ``N/A`` up to 2000-01-01, else "… ago" measured
    from the whole second (the Engine API sends Unix seconds)."""
    if created is None or created.seconds <= _HISTORY_EPOCH:
        return "N/A"
    return human_duration_ago(Timestamp.from_unix(created.seconds), now)


def human_size(size: float, precision: int = 3, *, binary: bool = False) -> str:
    """go-units ``HumanSizeWithPrecision``: SI units, ``precision`` significant digits (3 as in
    ``docker images``/``history``: ``169MB``, ``1.23kB``, ``0B``; 4 is ``HumanSize``).
    ``binary``: powers of 1024 (``BytesSize`` with precision 4: ``1.465MiB``)."""
    units = (("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB") if binary
             else ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"))
    base = 1024.0 if binary else 1000.0
    value = float(size)
    i = 0
    while value >= base and i < len(units) - 1:
        value /= base
        i += 1
    return f"{value:.{precision}g}{units[i]}"


def _nanos(d: timedelta | float | int) -> int:
    if isinstance(d, timedelta):
        return ((d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds) * 1000
    return round(d * 1_000_000_000)


def human_duration(d: timedelta | float) -> str:
    """go-units ``HumanDuration`` of a duration (a timedelta, or seconds)."""
    return _human_duration(_nanos(d))


def _human_duration(ns: int) -> str:
    seconds = int(_go_units(ns, 1_000_000_000))
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = int(_go_units(ns, 60_000_000_000))
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(_go_units(ns, 3_600_000_000_000) + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(_go_units(ns, 3_600_000_000_000)) // 24 // 365} years"


def _go_units(ns: int, unit: int) -> float:
    # time.Duration.Seconds()/Minutes()/Hours(): whole units plus the remainder as a fraction,
    # with Go's truncating division.
    whole = abs(ns) // unit * (1 if ns >= 0 else -1)
    rest = ns - whole * unit
    return float(whole) + rest / unit


def _as_timestamp(t: Timestamp | datetime) -> Timestamp:
    return t if isinstance(t, Timestamp) else Timestamp.from_datetime(t)


def human_duration_ago(then: Timestamp | datetime, now: Timestamp | datetime | None = None) -> str:
    """``"7 minutes ago"``, ``"About an hour ago"``, ``"2 weeks ago"``: how long before ``now``
    (default: the current time) ``then`` was."""
    end = Timestamp.now() if now is None else _as_timestamp(now)
    return _human_duration(end.unix_nanos - _as_timestamp(then).unix_nanos) + " ago"


def ellipsis(s: str, width: int) -> str:
    """docker's ``Ellipsis``: cut ``s`` to ``width`` display columns (East Asian wide
    characters take two) with ``…`` as the last one."""
    if width <= 0:
        return ""
    if width == 1:
        return s[:1]
    widths = [2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in s]
    if sum(widths) <= width:
        return s
    used = 0
    for i, w in enumerate(widths):
        if used + w > width - 1:
            return s[:i] + "…"
        used += w
    return s
