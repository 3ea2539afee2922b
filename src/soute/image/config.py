"""The image configuration (image-spec config.md with Docker's extensions): the JSON whose digest
is the image ID.

Serialisation (:meth:`ImageConfig.to_json`) is what BuildKit and dockerd write: compact
``json.Marshal`` output whose top-level keys are sorted (both re-marshal the config through a
``map[string]json.RawMessage``) while nested objects keep Go's struct order (``config``:
``User, ExposedPorts, Env, Entrypoint, Cmd, Volumes, WorkingDir, Labels, StopSignal,
Healthcheck, OnBuild, Shell``; history entries: ``created, created_by, author, comment,
empty_layer``), map keys sorted, empty values left out, and Go's string escapes
(``\\u0026\\u0026``). ``created`` times are RFC 3339 with nanoseconds, trailing zeros dropped.

A config that was read and is written again comes out byte for byte as it was read, unknown
keys and ``null``/``""`` values included, apart from the keys that were changed (see
:mod:`soute.image.model`). ``ArgsEscaped`` (Windows only, deprecated) is read and kept as read,
but never written by us.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from soute.errors import SouteError
from soute.image import gojson
from soute.image.digest import is_digest, sha256_digest
from soute.image.model import (
    JSONObject,
    get_bool,
    get_int,
    get_obj,
    get_obj_list,
    get_set,
    get_str,
    get_str_list,
    get_str_map,
    invalid,
    set_map,
    sorted_map,
)
from soute.image.timestamp import Timestamp

TYPE_CHECKING = False
if TYPE_CHECKING:  # imported where used: reading a config (every `soute run`) needs none
    from typing import Any, ClassVar, Self  # (nor typing: 3 ms)

    from soute.image.platforms import Platform

# BuildKit's comment on history entries it adds for layers the config did not account for.
EXPORTER_COMMENT = "buildkit.exporter.image.v0"
DEFAULT_SHELL = ("/bin/sh", "-c")


def _get_time(d: dict[str, Any], key: str, where: str) -> Timestamp | None:
    if key not in d:
        return None
    value = get_str(d, key, where)
    try:
        return Timestamp.parse(value)
    except SouteError as err:
        raise invalid(where, f"{key}: {err.message}") from None


@dataclass
class Healthcheck(JSONObject):
    """``HEALTHCHECK``: ``test`` is ``[]`` (inherit), ``["NONE"]``, ``["CMD", args...]`` or
    ``["CMD-SHELL", command]``; durations are integer nanoseconds, 0 meaning the default."""

    if TYPE_CHECKING:  # (dataclasses tell a ClassVar only with typing imported)
        KEYS: ClassVar[tuple[str, ...]]
        WHAT: ClassVar[str]
    KEYS = (
        "Test",
        "Interval",
        "Timeout",
        "StartPeriod",
        "StartInterval",
        "Retries",
    )
    WHAT = "healthcheck"

    test: list[str] = field(default_factory=list)
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    @classmethod
    def _decode(cls, known: dict[str, Any], where: str) -> Self:
        return cls(
            test=get_str_list(known, "Test", where),
            interval=get_int(known, "Interval", where),
            timeout=get_int(known, "Timeout", where),
            start_period=get_int(known, "StartPeriod", where),
            start_interval=get_int(known, "StartInterval", where),
            retries=get_int(known, "Retries", where),
        )

    def _known(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.test:
            out["Test"] = list(self.test)
        for key, value in (
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("StartInterval", self.start_interval),
            ("Retries", self.retries),
        ):
            if value:
                out[key] = value
        return out


@dataclass
class ContainerConfig(JSONObject):
    """The ``config`` object: how a container of the image runs.

    ``exposed_ports`` and ``volumes`` are the keys of Go's ``map[string]struct{}``
    (``"80/tcp"``, ``"/data"``); they are written sorted, as Go writes maps.
    """

    if TYPE_CHECKING:  # (dataclasses tell a ClassVar only with typing imported)
        KEYS: ClassVar[tuple[str, ...]]
        WHAT: ClassVar[str]
    KEYS = (
        "User",
        "ExposedPorts",
        "Env",
        "Entrypoint",
        "Cmd",
        "Volumes",
        "WorkingDir",
        "Labels",
        "StopSignal",
        "ArgsEscaped",
        "Healthcheck",
        "OnBuild",
        "Shell",
    )
    WHAT = "container config"

    user: str = ""
    exposed_ports: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    healthcheck: Healthcheck | None = None
    on_build: list[str] = field(default_factory=list)
    shell: list[str] = field(default_factory=list)
    # Read only: never written by us (kept as read when unchanged).
    args_escaped: bool = False

    @classmethod
    def _decode(cls, known: dict[str, Any], where: str) -> Self:
        return cls(
            user=get_str(known, "User", where),
            exposed_ports=get_set(known, "ExposedPorts", where),
            env=get_str_list(known, "Env", where),
            entrypoint=get_str_list(known, "Entrypoint", where),
            cmd=get_str_list(known, "Cmd", where),
            volumes=get_set(known, "Volumes", where),
            working_dir=get_str(known, "WorkingDir", where),
            labels=get_str_map(known, "Labels", where),
            stop_signal=get_str(known, "StopSignal", where),
            healthcheck=get_obj(known, "Healthcheck", where, Healthcheck.from_dict),
            on_build=get_str_list(known, "OnBuild", where),
            shell=get_str_list(known, "Shell", where),
            args_escaped=get_bool(known, "ArgsEscaped", where),
        )

    def _known(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = set_map(self.exposed_ports)
        for key, value in (
            ("Env", self.env),
            ("Entrypoint", self.entrypoint),
            ("Cmd", self.cmd),
        ):
            if value:
                out[key] = list(value)
        if self.volumes:
            out["Volumes"] = set_map(self.volumes)
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.labels:
            out["Labels"] = sorted_map(self.labels)
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.healthcheck is not None:
            out["Healthcheck"] = self.healthcheck.to_dict()
        if self.on_build:
            out["OnBuild"] = list(self.on_build)
        if self.shell:
            out["Shell"] = list(self.shell)
        return out

    def env_dict(self) -> dict[str, str]:
        """``Env`` as a mapping (a later entry wins; an entry without ``=`` is an empty value)."""
        out: dict[str, str] = {}
        for entry in self.env:
            key, _, value = entry.partition("=")
            out[key] = value
        return out

    def set_env(self, key: str, value: str) -> None:
        """Set one variable in place, keeping the order of the others (as ``ENV`` does)."""
        entry = f"{key}={value}"
        for i, existing in enumerate(self.env):
            if existing.partition("=")[0] == key:
                self.env[i] = entry
                return
        self.env.append(entry)


@dataclass
class RootFS(JSONObject):
    """``rootfs``: the DiffIDs (digests of the uncompressed layer tars), base layer first."""

    if TYPE_CHECKING:  # (dataclasses tell a ClassVar only with typing imported)
        KEYS: ClassVar[tuple[str, ...]]
        WHAT: ClassVar[str]
    KEYS = ("type", "diff_ids")
    WHAT = "rootfs"

    diff_ids: list[str] = field(default_factory=list)
    type: str = "layers"

    @classmethod
    def _decode(cls, known: dict[str, Any], where: str) -> Self:
        kind = get_str(known, "type", where)
        if kind != "layers":
            raise invalid(where, f'type must be "layers", not {kind!r}')
        diff_ids = get_str_list(known, "diff_ids", where)
        for d in diff_ids:
            if not is_digest(d):
                raise invalid(where, f"diff_id {d!r} is not a digest")
        return cls(diff_ids=diff_ids, type=kind)

    def _known(self) -> dict[str, Any]:
        # Written even when empty: the spec wants an array where Go would write null.
        return {"type": self.type, "diff_ids": list(self.diff_ids)}


@dataclass
class History(JSONObject):
    """One ``history`` entry; ``empty_layer`` entries made no layer."""

    if TYPE_CHECKING:  # (dataclasses tell a ClassVar only with typing imported)
        KEYS: ClassVar[tuple[str, ...]]
        WHAT: ClassVar[str]
    KEYS = ("created", "created_by", "author", "comment", "empty_layer")
    WHAT = "history entry"

    created: Timestamp | None = None
    created_by: str = ""
    author: str = ""
    comment: str = ""
    empty_layer: bool = False

    @classmethod
    def _decode(cls, known: dict[str, Any], where: str) -> Self:
        return cls(
            created=_get_time(known, "created", where),
            created_by=get_str(known, "created_by", where),
            author=get_str(known, "author", where),
            comment=get_str(known, "comment", where),
            empty_layer=get_bool(known, "empty_layer", where),
        )

    def _known(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.created is not None:
            out["created"] = self.created.format()
        if self.created_by:
            out["created_by"] = self.created_by
        if self.author:
            out["author"] = self.author
        if self.comment:
            out["comment"] = self.comment
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@dataclass(kw_only=True)
class ImageConfig(JSONObject):
    """An image configuration. Unknown top-level keys (``container_config``, ``docker_version``,
    ``moby.buildkit.buildinfo.v1``...) are kept in ``extra``."""

    if TYPE_CHECKING:  # (dataclasses tell a ClassVar only with typing imported)
        KEYS: ClassVar[tuple[str, ...]]
        SORT_KEYS: ClassVar[bool]
        WHAT: ClassVar[str]
    KEYS = (
        "architecture",
        "author",
        "config",
        "created",
        "history",
        "os",
        "os.features",
        "os.version",
        "rootfs",
        "variant",
    )
    SORT_KEYS = True
    WHAT = "image config"

    architecture: str = ""
    os: str = ""
    config: ContainerConfig = field(default_factory=ContainerConfig)
    rootfs: RootFS = field(default_factory=RootFS)
    history: list[History] = field(default_factory=list)
    created: Timestamp | None = None
    author: str = ""
    variant: str = ""
    os_version: str = ""
    os_features: list[str] = field(default_factory=list)

    @classmethod
    def _decode(cls, known: dict[str, Any], where: str) -> Self:
        rootfs = get_obj(known, "rootfs", where, RootFS.from_dict)
        if rootfs is None:
            raise invalid(where, "rootfs is missing")
        return cls(
            architecture=get_str(known, "architecture", where),
            os=get_str(known, "os", where),
            config=get_obj(known, "config", where, ContainerConfig.from_dict) or ContainerConfig(),
            rootfs=rootfs,
            history=get_obj_list(known, "history", where, History.from_dict),
            created=_get_time(known, "created", where),
            author=get_str(known, "author", where),
            variant=get_str(known, "variant", where),
            os_version=get_str(known, "os.version", where),
            os_features=get_str_list(known, "os.features", where),
        )

    def _known(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture}
        if self.author:
            out["author"] = self.author
        out["config"] = self.config.to_dict()
        if self.created is not None:
            out["created"] = self.created.format()
        if self.history:
            out["history"] = [h.to_dict() for h in self.history]
        out["os"] = self.os
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.os_version:
            out["os.version"] = self.os_version
        out["rootfs"] = self.rootfs.to_dict()
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_json(cls, data: bytes | str) -> ImageConfig:
        """Read a config blob. Raises SouteError for malformed JSON, values of the wrong type,
        a missing ``rootfs`` or one whose type is not ``layers``; see :meth:`validate` for the
        rest."""
        return cls.from_dict(gojson.loads(data, cls.WHAT))

    def to_json(self) -> bytes:
        """The config blob as BuildKit writes it (compact, sorted top-level keys)."""
        return gojson.dumpb(self.to_dict())

    def digest(self) -> str:
        """The digest of :meth:`to_json`: the image ID of a config we write."""
        return sha256_digest(self.to_json())

    @property
    def platform(self) -> Platform:
        from soute.image.platforms import Platform

        return Platform(
            self.os, self.architecture, self.variant, self.os_version, list(self.os_features)
        )

    def set_platform(self, platform: Platform) -> None:
        self.os = platform.os
        self.architecture = platform.architecture
        self.variant = platform.variant
        self.os_version = platform.os_version
        self.os_features = list(platform.os_features)

    def layer_history(self) -> list[History]:
        """The history entries that made a layer, in layer order."""
        return [h for h in self.history if not h.empty_layer]

    def validate(self) -> None:
        """Check what the spec requires beyond the shape :meth:`from_json` checks: ``os`` and
        ``architecture`` set, and (when there is a history) one non-empty history entry per
        layer, the pairing ``docker history`` and ``umoci stat`` rely on."""
        if not self.os or not self.architecture:
            raise SouteError(
                "invalid image config: os and architecture are required",
                hint=f"this one has os={self.os!r} architecture={self.architecture!r}",
            )
        if self.rootfs.type != "layers":
            raise SouteError(f"invalid image config: rootfs type {self.rootfs.type!r}")
        if self.history:
            made = len(self.layer_history())
            layers = len(self.rootfs.diff_ids)
            if made != layers:
                raise SouteError(
                    f"invalid image config: {made} history entries make a layer "
                    f"but there are {layers} layers",
                    hint="normalise_history() repairs this as BuildKit does",
                )


def normalise_history(
    config: ImageConfig,
    *,
    layer_created: Sequence[Timestamp | None] | None = None,
    layer_descriptions: Sequence[str] | None = None,
) -> list[History]:
    """Make ``config.history`` pair with ``config.rootfs.diff_ids`` the way BuildKit's image
    exporter does, and return it (``config`` is changed in place):

    - more layer-making entries than layers: the surplus ones (from the top) become
      ``empty_layer``;
    - fewer: an entry is added for each layer without one, ``created_by`` from
      ``layer_descriptions`` (else ``"created by soute"``), comment ``buildkit.exporter.image.v0``;
    - entries without ``created`` take their layer's time from ``layer_created``, then the
      remaining gaps take the time of the first new entry that has one, or of the entry before.

    ``layer_created`` and ``layer_descriptions`` run parallel to the diff_ids.
    """
    layers = len(config.rootfs.diff_ids)
    created = list(layer_created or [])
    created += [None] * (layers - len(created))
    described = list(layer_descriptions or [])
    described += [""] * (layers - len(described))

    history = list(config.history)
    made = sum(not h.empty_layer for h in history)
    if made > layers:
        seen = 0
        for h in history:
            if seen >= layers:
                h.empty_layer = True
            if not h.empty_layer:
                seen += 1
        made = layers
    for i in range(made, layers):
        history.append(
            History(
                created=created[i],
                created_by=described[i] or "created by soute",
                comment=EXPORTER_COMMENT,
            )
        )

    index = 0
    for h in history:
        if not h.empty_layer:
            if h.created is None:
                h.created = created[index]
            index += 1

    # The time for entries still without one: the first time after a gap, else the last one.
    fill: Timestamp | None = None
    gap = False
    for h in history:
        if h.created is not None:
            fill = h.created
            if gap:
                break
        else:
            gap = True
    gap = False
    for h in history:
        if h.created is not None:
            if gap:
                fill = h.created
        else:
            gap = True
            h.created = fill

    config.history = history
    return history
