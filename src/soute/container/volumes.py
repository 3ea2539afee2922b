"""Named and anonymous volumes (docker's "local" driver), and the -v / --mount flags.

Layout: ``ROOT/volumes/<name>/_data`` (the mountpoint) and
``ROOT/volumes/<name>/meta.json``. Volumes are built under a dot-named temp
directory and renamed into place, so a kill never leaves half a volume; names
cannot start with a dot, so temp directories never look like volumes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import posixpath
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soute.errors import SouteError

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
ANONYMOUS_LABEL = "com.docker.volume.anonymous"  # what docker 23+ sets on anonymous volumes
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".rm-"
_STALE_TMP = 3600.0  # a temp dir this old belongs to a create that died


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise SouteError(
            f'invalid volume name "{name}": names must match [a-zA-Z0-9][a-zA-Z0-9_.-]+'
        )
    return name


@dataclass
class Volume:
    name: str
    mountpoint: Path
    created_at: str
    labels: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False

    def inspect(self) -> dict[str, Any]:
        """``docker volume inspect`` shape."""
        return {
            "CreatedAt": self.created_at,
            "Driver": "local",
            "Labels": dict(self.labels) or None,
            "Mountpoint": str(self.mountpoint),
            "Name": self.name,
            "Options": None,
            "Scope": "local",
        }


class Volumes:
    """The volume store under ``root/volumes``."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "volumes"

    def _path(self, name: str) -> Path:
        return self.dir / name

    def _load(self, name: str) -> Volume | None:
        path = self._path(name)
        if not NAME_RE.fullmatch(name) or not (path / "_data").is_dir():
            return None
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            # A directory put there by hand: still a volume, just without metadata.
            meta = {"CreatedAt": _created_at(path.stat().st_mtime)}
        return Volume(
            name=name,
            mountpoint=path / "_data",
            created_at=str(meta.get("CreatedAt", "")),
            labels={str(k): str(v) for k, v in (meta.get("Labels") or {}).items()},
            anonymous=bool(meta.get("Anonymous", False)),
        )

    def create(
        self,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        anonymous: bool = False,
    ) -> Volume:
        """Create a volume (random 64-hex name when None); an existing name is returned as is."""
        if name is None:
            name = os.urandom(32).hex()
        validate_name(name)
        existing = self._load(name)
        if existing is not None:
            return existing  # docker volume create is idempotent
        self.dir.mkdir(parents=True, exist_ok=True)
        all_labels = dict(labels or {})
        if anonymous:
            all_labels.setdefault(ANONYMOUS_LABEL, "")
        meta = {"CreatedAt": _created_at(time.time()), "Labels": all_labels, "Anonymous": anonymous}
        tmp = self.dir / f"{_TMP_PREFIX}{os.urandom(8).hex()}"
        try:
            tmp.mkdir(mode=0o755)
            (tmp / "_data").mkdir(mode=0o755)
            with open(tmp / "meta.json", "w") as f:
                json.dump(meta, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            target = self._path(name)
            if target.exists():
                raise FileExistsError(target)  # rename would replace an empty directory
            os.rename(tmp, target)
        except FileExistsError:
            pass  # lost a race with another create of the same name
        except OSError as exc:
            raise SouteError(f"create volume {name}: {exc.strerror or exc}") from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        volume = self._load(name)
        if volume is None:
            raise SouteError(f"create volume {name}: {self._path(name)} is not a volume")
        return volume

    def get(self, name: str) -> Volume:
        volume = self._load(name)
        if volume is None:
            raise SouteError(f"no such volume: {name}")
        return volume

    def list(self) -> list[Volume]:
        try:
            names = sorted(p.name for p in self.dir.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []
        return [v for n in names if (v := self._load(n)) is not None]

    def remove(self, name: str, in_use_by: list[str] | tuple[str, ...] = ()) -> None:
        """Remove a volume; refuse (in docker's words) while containers use it."""
        self.get(name)
        if in_use_by:
            raise SouteError(f"remove {name}: volume is in use - [{', '.join(in_use_by)}]")
        # Rename first so the volume disappears at once even if deleting the data is slow.
        trash = self.dir / f"{_TRASH_PREFIX}{os.urandom(8).hex()}"
        try:
            os.rename(self._path(name), trash)
        except FileNotFoundError as exc:
            raise SouteError(f"no such volume: {name}") from exc
        shutil.rmtree(trash, ignore_errors=True)  # leftovers are swept by prune()

    def prune(self, in_use: set[str], all: bool = False) -> list[str]:
        """Remove unused anonymous volumes (``all``: unused named ones too); return their names."""
        removed: list[str] = []
        for volume in self.list():
            if volume.name in in_use or not (all or volume.anonymous):
                continue
            with contextlib.suppress(SouteError):  # removed concurrently: fine
                self.remove(volume.name)
                removed.append(volume.name)
        self._sweep()
        return removed

    def _sweep(self) -> None:
        """Delete what interrupted creates and removes left behind."""
        try:
            entries = list(self.dir.iterdir())
        except FileNotFoundError:
            return
        now = time.time()
        for p in entries:
            if p.name.startswith(_TRASH_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(_TMP_PREFIX):
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > _STALE_TMP:
                        shutil.rmtree(p, ignore_errors=True)


def _created_at(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# --- -v and --mount -------------------------------------------------------------


@dataclass
class VolumeSpec:
    """One mount request: kind "bind" | "volume" | "tmpfs".

    ``source`` is the host path (bind), the volume name (None: anonymous) or None (tmpfs).
    ``options`` holds extras: tmpfs-size (bytes), tmpfs-mode (octal), bind-propagation.
    """

    kind: str
    source: str | None
    target: str
    readonly: bool = False
    nocopy: bool = False
    options: dict[str, str] = field(default_factory=dict)


def _clean(path: str) -> str:
    """Like Go's filepath.Clean for absolute paths ("//a/b/../c/" -> "/a/c")."""
    return "/" + "/".join(p for p in posixpath.normpath(path).split("/") if p)


def _host_path(source: str) -> str | None:
    """An absolute host path for a bind source, or None if it names a volume.

    Relative paths starting with "." are resolved against the working directory,
    as docker's CLI does since 23.0.
    """
    if source.startswith("/"):
        return _clean(source)
    if source == "." or source.startswith(("./", "../")) or source == "..":
        return _clean(os.path.abspath(source))
    return None


def _volume_source(source: str, spec: str) -> str:
    if "/" in source:
        raise SouteError(
            f"invalid volume specification: '{spec}'",
            hint=f"{source!r} is neither an absolute path nor a volume name",
        )
    return validate_name(source)


_V_MODES = {"ro", "rw", "z", "Z", "nocopy"}


def parse_volume_flag(text: str) -> VolumeSpec:
    """``-v`` / ``--volume``: ``[SOURCE:]TARGET[:OPTS]``."""

    def bad(hint: str) -> SouteError:
        return SouteError(f"invalid volume specification: '{text}'", hint=hint)

    parts = text.split(":")
    if any(not p for p in parts) or len(parts) > 3:
        raise bad("expected [SOURCE:]TARGET[:OPTIONS]")
    source: str | None = None
    modes: list[str] = []
    if len(parts) == 1:
        (target,) = parts
    elif len(parts) == 2:
        source, target = parts
        if all(m in _V_MODES for m in target.split(",")):
            raise bad("a volume without a source takes no options")  # "/foo:ro", as docker
    else:
        source, target, opts = parts
        modes = opts.split(",")
    if not target.startswith("/"):
        raise bad(f"the container path {target!r} must be absolute")
    target = _clean(target)
    if target == "/":
        raise bad("the container path can't be '/'")

    for mode in modes:
        if mode not in _V_MODES:
            raise bad(f"invalid mode: {mode}")
    if ("ro" in modes and "rw" in modes) or len(set(modes)) != len(modes):
        raise bad(f"invalid mode: {','.join(modes)}")

    if source is None:
        return VolumeSpec("volume", None, target)
    host = _host_path(source)
    if host is not None:
        if "nocopy" in modes:
            raise bad("invalid mode: nocopy (only for volumes)")
        return VolumeSpec("bind", host, target, readonly="ro" in modes)
    return VolumeSpec(
        "volume",
        _volume_source(source, text),
        target,
        readonly="ro" in modes,
        nocopy="nocopy" in modes,
    )


# --tmpfs takes what docker's daemon takes (moby's mount.ParseTmpfsOptions): mount flags,
# and these options with a value, checked here as the kernel reads them (mm/shmem.c), so a
# bad one is named before anything is created rather than an "invalid argument" at start.
_TMPFS_FLAGS = frozenset({
    "defaults", "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync",
    "async", "dirsync", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime",
    "relatime", "norelatime", "strictatime", "nostrictatime", "private", "rprivate", "shared",
    "rshared", "slave", "rslave", "unbindable", "runbindable"})
_MEMPARSE = r"(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)[kKmMgGtTpPeE]?"  # the kernel's memparse
_TMPFS_VALUES: dict[str, tuple[re.Pattern[str], str]] = {
    "size": (re.compile(_MEMPARSE + "%?"),
             "a size in bytes with an optional k, m or g suffix, or a percentage of the "
             "memory: size=64m, size=10%"),
    "nr_blocks": (re.compile(_MEMPARSE), "a number of pages, with an optional k, m or g suffix"),
    "nr_inodes": (re.compile(_MEMPARSE), "a number of inodes, with an optional k, m or g "
                                         "suffix"),
    "mode": (re.compile("[0-7]{1,11}"), "an octal mode: mode=1777"),
    "uid": (re.compile("[0-9]{1,10}"), "a numeric user ID"),
    "gid": (re.compile("[0-9]{1,10}"), "a numeric group ID"),
    "mpol": (re.compile(r"(?:default|prefer|bind|interleave|weighted_interleave|local)"
                        r"(?:=[0-9,-]+)?(?::(?:static|relative))?"),
             "a NUMA policy: default, prefer, bind, interleave or local"),
}


def parse_tmpfs_flag(text: str) -> tuple[str, list[str]]:
    """``--tmpfs PATH[:OPTIONS]``: the cleaned target and its options, checked."""
    target, _, options = text.partition(":")
    if not target.startswith("/"):
        raise SouteError(f"invalid mount path: '{target}' mount path must be absolute",
                         hint=f"--tmpfs {text}: give an absolute path in the container")
    target = _clean(target)
    if target == "/":
        raise SouteError("invalid specification: destination can't be '/'",
                         hint=f"--tmpfs {text}: mount the tmpfs below /")
    items = options.split(",") if options else []
    for item in items:
        problem = _tmpfs_option_problem(item)
        if problem is not None:
            raise SouteError(f'invalid tmpfs option "{item}" in --tmpfs {text}', hint=problem)
    return target, items


def _tmpfs_option_problem(item: str) -> str | None:
    """What is wrong with one ``--tmpfs`` option, None when it is right."""
    key, eq, value = item.partition("=")
    if not item:
        return "leave out the empty option between the commas"
    if not eq and key in _TMPFS_FLAGS:
        return None
    if key in ("bind", "rbind"):
        return "a tmpfs is not a bind mount: use -v or --mount type=bind for that"
    known = _TMPFS_VALUES.get(key)
    if known is None:
        return ("tmpfs takes size=, mode=, uid=, gid=, nr_inodes=, nr_blocks=, mpol= and "
                "mount flags such as ro, exec or noatime")
    pattern, meaning = known
    if not eq:
        return f"{key} needs a value: {meaning}"
    if not pattern.fullmatch(value) or _too_big(key, value):
        return f"{key} is {meaning}"
    return None


def _too_big(key: str, value: str) -> bool:
    """The kernel's 32-bit limits (uid and gid -1 mean no ID, which it refuses)."""
    if key == "mode":
        return int(value, 8) >= 1 << 32
    if key in ("uid", "gid"):
        return int(value) >= (1 << 32) - 1
    return False


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_PROPAGATIONS = {"shared", "slave", "private", "rshared", "rslave", "rprivate"}
_SIZE = re.compile(r"(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?")


def _parse_bool(key: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SouteError(f"invalid value for {key}: {value}", hint="use true or false")


def parse_size(text: str) -> int:
    """docker's RAMInBytes: "64m", "1g", "512k", "1024" -> bytes (binary multiples)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise SouteError(f"invalid size: {text!r}", hint="e.g. 64m, 1g or a number of bytes")
    unit = (m.group(2) or "").lower()
    scale = 1024 ** ("kmgtp".index(unit) + 1) if unit else 1
    return int(float(m.group(1)) * scale)


def parse_mount_flag(text: str) -> VolumeSpec:
    """``--mount type=bind|volume|tmpfs,source=...,target=...[,readonly][,...]``."""
    try:
        fields = next(csv.reader([text]))
    except (csv.Error, StopIteration) as exc:
        raise SouteError(f"invalid --mount value: {text!r}") from exc
    kind = "volume"
    source: str | None = None
    target: str | None = None
    readonly = False
    nocopy = False
    options: dict[str, str] = {}
    used: set[str] = set()  # option families used, checked against the type below
    for item in fields:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq:
            if key in ("readonly", "ro", "volume-nocopy"):
                value = "true"
            else:
                raise SouteError(f"invalid field '{item}' must be a key=value pair")
        if key == "type":
            if value not in ("bind", "volume", "tmpfs"):
                raise SouteError(
                    f"invalid value for 'type': {value}", hint="use bind, volume or tmpfs"
                )
            kind = value
        elif key in ("source", "src"):
            source = value
        elif key in ("target", "dst", "destination"):
            target = value
        elif key in ("readonly", "ro"):
            readonly = _parse_bool(key, value)
        elif key == "volume-nocopy":
            nocopy = _parse_bool(key, value)
            used.add("volume")
        elif key == "bind-propagation":
            if value not in _PROPAGATIONS:
                raise SouteError(
                    f"invalid value for {key}: {value}",
                    hint="use " + ", ".join(sorted(_PROPAGATIONS)),
                )
            options[key] = value
            used.add("bind")
        elif key == "tmpfs-size":
            size = parse_size(value)
            options[key] = str(size)
            used.add("tmpfs")
        elif key == "tmpfs-mode":
            try:
                mode = int(value, 8)
            except ValueError:
                mode = -1
            if not 0 <= mode <= 0o7777:
                raise SouteError(
                    f"invalid value for {key}: {value}", hint="an octal mode, e.g. 1777"
                )
            options[key] = f"{mode:o}"
            used.add("tmpfs")
        elif key == "consistency":
            pass  # macOS-only in docker: accepted and ignored
        else:
            raise SouteError(f"unexpected key '{key}' in '{item}'")

    mixed = sorted(used - {kind})
    if mixed:
        raise SouteError(f"cannot mix '{mixed[0]}-*' options with mount type '{kind}'")
    if not target:
        raise SouteError("target is required", hint=f"in --mount {text}")
    if not target.startswith("/"):
        raise SouteError(
            f'invalid mount config for type "{kind}": invalid mount path: '
            f"'{target}' mount path must be absolute"
        )
    target = _clean(target)
    if target == "/":
        raise SouteError(f"invalid mount config for type \"{kind}\": destination can't be '/'")

    if kind == "bind":
        if not source:
            raise SouteError('invalid mount config for type "bind": field Source must not be empty')
        host = _host_path(source)
        if host is None:
            raise SouteError(
                f'invalid mount config for type "bind": invalid mount path: '
                f"'{source}' mount path must be absolute"
            )
        return VolumeSpec("bind", host, target, readonly=readonly, options=options)
    if kind == "tmpfs":
        if source:
            raise SouteError(
                'invalid mount config for type "tmpfs": field Source must not be specified'
            )
        return VolumeSpec("tmpfs", None, target, readonly=readonly, options=options)
    name = validate_name(source) if source else None
    return VolumeSpec("volume", name, target, readonly=readonly, nocopy=nocopy, options=options)
