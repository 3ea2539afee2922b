"""A container on disk: what it was created with (``config.json``), what it is doing
(``state.json``), its writable layer, its log, and how to find it by name or ID.

    $ROOT/containers/<id>/config.json   ContainerSpec, written once at create
                         state.json    ContainerState, rewritten atomically by whoever owns it
                         upper/ work/  the overlay's writable layer (what ``commit`` keeps)
                         log.json      docker's json-file log
                         lock          flock: one monitor per container, serialised changes

The SQLite ``containers`` table only holds what must be unique or joined (ID, name, image),
so that two ``run --name x`` cannot both win and garbage collection keeps used images.

The monitor records its own pid and that of the container's init with their kernel start
times: a pid that was reused by another process is never mistaken for the container, and a
monitor that died without writing the end (SIGKILL) is noticed by :meth:`Container.state`,
which then tells the truth: exited, code 137.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from soute.errors import SouteError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from collections.abc import Iterator
    from typing import Any

    from soute.store.store import Store


class ContainerError(SouteError):
    """An error of ``soute run`` and friends before the command runs: docker exits 125."""

    exit_code = 125


class NoSuchContainer(ContainerError):
    pass


@dataclass
class MountSpec:
    """A resolved mount: ``kind`` bind, volume (``source`` = volume name) or tmpfs."""

    kind: str
    target: str
    source: str = ""
    readonly: bool = False
    copy_up: bool = False
    options: list[str] = field(default_factory=list)


@dataclass
class PortSpec:
    """A published port: HOST_IP:HOST_PORT to CONTAINER_PORT/PROTO."""

    host_ip: str
    host_port: int
    container_port: int
    proto: str = "tcp"


@dataclass
class ContainerSpec:
    """How the container runs: fixed at ``create``, like docker's Config and HostConfig."""

    id: str
    name: str
    created: str
    image: str  # image ID
    image_name: str  # as the user wrote it, for ps
    path: str
    args: list[str]
    env: list[str]
    workdir: str = "/"
    user: str = ""
    hostname: str = ""
    tty: bool = False
    open_stdin: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    stop_signal: str = "SIGTERM"
    stop_timeout: int | None = None
    network: str = "private"  # private | host | none
    ports: list[PortSpec] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)
    mounts: list[MountSpec] = field(default_factory=list)
    health: dict[str, Any] | None = None  # HealthConfig fields
    auto_remove: bool = False
    init: bool = False
    read_only: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    resources: dict[str, int] = field(default_factory=dict)
    runtime: str = "soute"
    extra_hosts: list[str] = field(default_factory=list)  # HOST:IP, IP may be host-gateway
    dns: list[str] = field(default_factory=list)
    privileged: bool = False
    group_add: list[str] = field(default_factory=list)  # more groups: names or gids
    volumes_from: list[str] = field(default_factory=list)  # as given: CONTAINER[:MODE]
    shm_size: int | None = None  # bytes
    ulimits: list[dict[str, Any]] = field(default_factory=list)  # Rlimit's fields
    restart: dict[str, Any] = field(  # docker's RestartPolicy
        default_factory=lambda: {"Name": "no", "MaximumRetryCount": 0})
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)  # as given, checked at create
    sysctls: dict[str, str] = field(default_factory=dict)
    devices: list[dict[str, str]] = field(default_factory=list)  # HostConfig.Devices' entries
    ipc: str = "private"  # private, shareable, host or none
    uts: str = ""  # "" or host

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ContainerSpec:
        data = json.loads(text)
        data["ports"] = [PortSpec(**p) for p in data.get("ports", [])]
        data["mounts"] = [MountSpec(**m) for m in data.get("mounts", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def command(self) -> list[str]:
        return [self.path, *self.args]


@dataclass
class ContainerState:
    """docker's State: ``status`` is created, running, exited or removing."""

    status: str = "created"
    pid: int = 0
    pid_start: int = 0  # the init's start time in clock ticks (/proc/PID/stat field 22)
    monitor_pid: int = 0
    monitor_start: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    started_at: str = "0001-01-01T00:00:00Z"
    finished_at: str = "0001-01-01T00:00:00Z"
    ports: list[PortSpec] = field(default_factory=list)  # with the host ports allocated
    health: dict[str, Any] | None = None  # HealthState.to_json()
    restart_count: int = 0
    paused: bool = False  # running, but frozen by `soute pause` (not recorded: see state())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ContainerState:
        data = json.loads(text)
        data["ports"] = [PortSpec(**p) for p in data.get("ports", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def shown(self) -> str:
        """docker's State as ps and inspect show it: ``paused`` is a running container's."""
        return "paused" if self.paused else self.status


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    if fields[0] == b"Z":  # a zombie has exited already
        return None
    return int(fields[19])


def alive(pid: int, start: int) -> bool:
    return pid > 0 and process_start_time(pid) == start


class Container:
    """One container's directory; methods never hold the store's lock."""

    def __init__(self, directory: Path, spec: ContainerSpec) -> None:
        self.dir = directory
        self.spec = spec

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def short_id(self) -> str:
        return self.spec.id[:12]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def log_path(self) -> Path:
        return self.dir / "log.json"

    def rename(self, store: Store, name: str) -> None:
        """``soute rename``: the name must be valid and free; config.json follows."""
        if not valid_name(name):
            raise ContainerError(f"Invalid container name ({name}), only "
                                 "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if not store.meta.rename_container(self.id, name):
            raise ContainerError(f'Conflict. The container name "/{name}" is already in use')
        self.spec.name = name
        tmp = self.dir / f".config-{os.getpid()}.tmp"
        tmp.write_text(self.spec.to_json())
        os.replace(tmp, self.dir / "config.json")

    # ------------------------------------------------------------------ state

    def raw_state(self) -> ContainerState:
        try:
            return ContainerState.from_json((self.dir / "state.json").read_text())
        except FileNotFoundError:
            return ContainerState()

    def state(self) -> ContainerState:
        """The state as recorded, corrected when its monitor died without a word."""
        state = self._state()
        state.paused = state.running and self.paused_marker.exists()
        return state

    @property
    def paused_marker(self) -> Path:
        """Written by ``pause``: the container's frozen cgroup, as JSON."""
        return self.dir / "paused"

    def _state(self) -> ContainerState:
        state = self.raw_state()
        if state.status == "restarting" and not alive(state.monitor_pid, state.monitor_start):
            state.status = "exited"  # its monitor went while it waited to run it again
            return state
        if state.status == "running" and not alive(state.monitor_pid, state.monitor_start):
            with self.lock(blocking=False) as got:
                if not got:  # a monitor holds it: it is alive after all (pid namespaces)
                    return state
                state = self.raw_state()
                if state.status == "running":
                    # The container died with its monitor (parent-death signal): SIGKILL.
                    state.status = "exited"
                    state.exit_code = 137
                    state.pid = 0
                    state.error = "the container's monitor was killed"
                    state.finished_at = state.finished_at if state.finished_at[:4] != "0001" \
                        else _now()
                    self.save_state(state)
                    self.remove_cgroup()
        return state

    # A stop or kill by the user: its restart policy no longer applies (docker's
    # HasBeenManuallyStopped), until the next start.
    def request_stop(self) -> None:
        (self.dir / "stopped-by-user").touch()

    def stop_requested(self) -> bool:
        return (self.dir / "stopped-by-user").exists()

    def started_by_user(self) -> None:
        """A start by the user: its restart policy applies again, counting from 0 (unless a
        monitor runs it already: that one's record stays as it is)."""
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "stopped-by-user").unlink()
        with self.lock(blocking=False) as free:
            state = self.raw_state()
            if free and state.restart_count:
                state.restart_count = 0
                self.save_state(state)

    def should_restart(self, code: int, restarts: int) -> bool:
        """Whether its restart policy runs it again after it ended with ``code``."""
        policy = self.spec.restart
        name = policy.get("Name", "no")
        if name == "no" or self.stop_requested():
            return False
        if name == "on-failure":
            limit = int(policy.get("MaximumRetryCount", 0))
            return code != 0 and (limit == 0 or restarts < limit)
        return True  # always, unless-stopped

    def remove_cgroup(self) -> None:
        """The cgroup of a container with limits, left behind when its monitor was killed,
        or the one ``pause`` made for a container without limits."""
        from soute.runtime.cgroups import Cgroup

        made = self.dir / "pause-cgroup"
        if made.exists():
            with contextlib.suppress(SouteError, OSError, ValueError):
                Cgroup.from_json(made.read_text()).remove()
            made.unlink(missing_ok=True)
        self.paused_marker.unlink(missing_ok=True)
        if not self.spec.resources:
            return
        with contextlib.suppress(SouteError):  # none (any more)
            Cgroup.open(self.id).remove()

    def save_state(self, state: ContainerState) -> None:
        tmp = self.dir / f".state-{os.getpid()}.tmp"
        tmp.write_text(state.to_json())
        os.replace(tmp, self.dir / "state.json")

    @contextmanager
    def lock(self, *, blocking: bool = True) -> Iterator[bool]:
        """The container's lock: held by its monitor for as long as it runs."""
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)


def _now() -> str:
    from soute.image.timestamp import Timestamp

    return Timestamp.now().format()


# ---------------------------------------------------------------------------- the collection


class Containers:
    """The containers of a store: create records, find them, remove them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.root / "containers"
        self.root.mkdir(exist_ok=True)

    def new(self, spec: ContainerSpec) -> Container:
        """Write ``spec``'s directory, then claim its name: a name clash leaves nothing."""
        tmp = self.store.tmp / f"container-{spec.id}"
        final = self.root / spec.id
        # The shared lock keeps a garbage collection (which empties tmp/) out meanwhile.
        with self.store.session():
            tmp.mkdir()
            for sub in ("upper", "work"):
                (tmp / sub).mkdir()
            (tmp / "config.json").write_text(spec.to_json())
            (tmp / "state.json").write_text(ContainerState().to_json())
            os.rename(tmp, final)
        refused = self.store.meta.add_container(spec.id, spec.name, spec.image, spec.created)
        if refused == "image":  # an rmi came between the image's lookup and this record
            remove_tree(final)
            raise ContainerError(f"No such image: {spec.image_name or spec.image}",
                                 "it was removed while the container was being created")
        if refused:
            remove_tree(final)
            other = self.store.meta.container_by_name(spec.name) or "?"
            raise ContainerError(
                f'Conflict. The container name "/{spec.name}" is already in use by container '
                f'"{other}"', "remove (or rename) that container to be able to reuse that name")
        return Container(final, spec)

    def get(self, name_or_id: str) -> Container:
        """By name, full ID or unique ID prefix, as docker looks containers up."""
        meta = self.store.meta
        container_id = meta.container_by_name(name_or_id.lstrip("/"))
        if container_id is None and name_or_id and all(
                c in "0123456789abcdef" for c in name_or_id):
            matches = meta.containers_by_prefix(name_or_id)
            if len(matches) > 1:
                raise NoSuchContainer(f"multiple containers match {name_or_id!r}",
                                      "give more characters of the ID")
            container_id = matches[0] if matches else None
        if container_id is None:
            raise NoSuchContainer(f"No such container: {name_or_id}", "see 'soute ps -a'")
        return self.load(container_id)

    def load(self, container_id: str) -> Container:
        directory = self.root / container_id
        try:
            spec = ContainerSpec.from_json((directory / "config.json").read_text())
        except FileNotFoundError:
            raise NoSuchContainer(f"No such container: {container_id}") from None
        return Container(directory, spec)

    def all(self) -> list[Container]:
        out = []
        for container_id, *_ in self.store.meta.containers():
            try:
                out.append(self.load(container_id))
            except NoSuchContainer:
                continue
        return out

    def using_image(self, image_id: str) -> list[Container]:
        return [self.load(c) for c in self.store.meta.containers_using(image_id)]

    def forget(self, container: Container) -> None:
        """Remove the record first, then the files: a kill in between leaves only files,
        which :meth:`sweep` removes."""
        self.forget_id(container.id)

    def forget_id(self, container_id: str) -> None:
        """:meth:`forget` a container by ID, whatever of it exists."""
        self.store.meta.remove_container(container_id)
        path = self.root / container_id
        if path.exists():
            remove_tree(path)

    def sweep(self) -> int:
        """Remove directories without a record (an interrupted create or rm)."""
        known = {c for c, *_ in self.store.meta.containers()}
        removed = 0
        recent = time.time() - 60  # a create renames its directory in just before its record
        for entry in os.scandir(self.root):
            if entry.name not in known and entry.stat().st_mtime < recent:
                remove_tree(Path(entry.path))
                removed += 1
        return removed

    def unique_name(self) -> str:
        for _ in range(100):
            name = generate_name()
            if self.store.meta.container_by_name(name) is None:
                return name
        return generate_name() + "_" + os.urandom(2).hex()


def valid_name(name: str) -> bool:
    import re

    return re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name) is not None


def new_id() -> str:
    return os.urandom(32).hex()  # secrets.token_hex(32), without its import (hmac, OpenSSL)


# Our own word lists (the cargo hold's vocabulary), for names like ``calm_anchor``.
_ADJECTIVES = (
    "agile", "amber", "bold", "brave", "brisk", "calm", "clever", "crisp", "daring", "eager",
    "fair", "fierce", "gentle", "glad", "golden", "hardy", "jolly", "keen", "kind", "lively",
    "lucid", "merry", "nimble", "noble", "plucky", "proud", "quick", "quiet", "rapid", "salty",
    "serene", "sharp", "silent", "sleek", "steady", "stout", "sunny", "swift", "tidy", "vivid",
    "wise", "witty", "zealous",
)
_NOUNS = (
    "anchor", "ballast", "barge", "beacon", "bosun", "brig", "buoy", "cabin", "capstan",
    "cargo", "compass", "corsair", "crate", "cutter", "deck", "dinghy", "dock", "ferry", "fleet",
    "frigate", "galley", "harbor", "helm", "hull", "jetty", "keel", "ketch", "lantern", "mast",
    "mooring", "oar", "pier", "pilot", "quay", "rigging", "rudder", "sail", "schooner", "sextant",
    "skiff", "sloop", "tide", "wharf", "yawl",
)


def generate_name() -> str:
    return f"{_choice(_ADJECTIVES)}_{_choice(_NOUNS)}"


def _choice(words: tuple[str, ...]) -> str:
    """``secrets.choice`` (uniform, from os.urandom) without importing secrets: its hmac
    and OpenSSL cost ``soute run`` about 4 ms."""
    n = len(words)
    bits = n.bit_length()
    while True:  # rejection sampling, as random.SystemRandom's _randbelow does
        value = int.from_bytes(os.urandom((bits + 7) // 8), "big") >> (-bits % 8)
        if value < n:
            return words[value]


def remove_tree(path: Path | str) -> None:
    """rm -rf that never follows symlinks (the runtime's: imported here only when used, as
    `soute ps` needs no runtime)."""
    from soute.runtime.paths import remove_tree as remove

    remove(path)
