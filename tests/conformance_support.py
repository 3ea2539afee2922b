"""Helpers of tests/test_conformance_buildah.py: the buildah corpus's cases, their contexts,
and images reduced to what the comparison looks at (config fields and a flattened tree).

Both builders' images are read the same way: a docker-format save (``docker save`` for
docker, :func:`soute.store.archive.save` for soute) whose layers are applied in order into
one directory with :func:`soute.layer.apply_layer` (``overlay=False``: whiteouts delete).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soute.layer import apply_layer

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "buildah"

# The config fields the issue compares.
CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes",
               "Labels", "Healthcheck", "StopSignal", "OnBuild", "Shell")

# The names the corpus's FROM lines use; one local busybox image stands behind all of them.
BASE_NAMES = ("mirror.gcr.io/busybox:latest", "mirror.gcr.io/alpine:latest",
              "quay.io/libpod/centos:7")


@dataclass(frozen=True)
class Case:
    name: str
    context: str  # relative to CORPUS; "" is the corpus directory itself
    dockerfile: str  # relative to the context
    fail_at: int | None  # the line where the build must fail
    without_docker: bool  # buildah-only in buildah's suite
    build_args: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.name.replace(" ", "-")


def load_cases() -> list[Case]:
    lines = (CORPUS / "CASES.tsv").read_text().splitlines()
    cases = []
    for line in lines[1:]:
        name, context, dockerfile, fail_at, without, args = (line.split("\t") + [""] * 6)[:6]
        cases.append(Case(
            name=name, context=context, dockerfile=dockerfile or "Dockerfile",
            fail_at=int(fail_at) if fail_at else None, without_docker=without == "true",
            # Go's map literal: map[string]string{"K": "V", ...}
            build_args=dict(re.findall(r'"([^"]*)":\s*"([^"]*)"', args))))
    return cases


def prepare_context(case: Case, dest: Path) -> Path:
    """A writable copy of the case's context (the corpus is read-only), with the two
    code files the corpus left out replaced by stand-ins. Modes are kept."""
    src = CORPUS / case.context if case.context else CORPUS
    shutil.copytree(src, dest, symlinks=True)
    if case.context == "mount-targets":
        # RUN ["/true"] runs in a scratch image: a static binary that exits 0. busybox-static
        # run as "true" is the true applet.
        shutil.copy2(shutil.which("busybox") or "/bin/busybox", dest / "true")
        os.chmod(dest / "true", 0o755)
    if case.context == "tar-g":
        (dest / "content.sh").write_text("#!/bin/sh\necho content\n")
        os.chmod(dest / "content.sh", 0o755)
    return dest


def docker_dockerfile(text: str) -> str:
    """The Dockerfile as docker 20.10 can read it offline: a ``# syntax=`` directive would
    make BuildKit pull that frontend image, so it becomes a plain comment (same line count)."""
    return re.sub(r"(?im)^#\s*syntax\s*=.*$", "# (syntax directive removed)", text, count=1)


@dataclass
class Flat:
    config: dict[str, Any]
    tree: Path


def flatten(archive: Path, dest: Path) -> Flat:
    """A docker-format save of one image: its config and its layers applied into ``dest``."""
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert len(manifest) == 1, manifest
        config = json.load(tar.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        for layer in manifest[0]["Layers"]:
            stream = tar.extractfile(layer)
            assert stream is not None
            apply_layer(stream, dest, overlay=False)  # type: ignore[arg-type]
    return Flat(config=config, tree=dest)


def config_view(config: dict[str, Any]) -> dict[str, Any]:
    cfg = config.get("config") or {}
    out = {}
    for key in CONFIG_KEYS:
        value = cfg.get(key)
        if value in ({}, "", None):
            value = None  # docker omits what soute may write empty, and the reverse
        out[key] = value
    return out


Entry = tuple[Any, ...]


def walk(root: Path) -> dict[str, Entry]:
    """Every path below ``root``: type, permission bits, owner, size, content digest, link
    target, device numbers, xattrs. mtimes are left out on purpose."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = "/" + str(path.relative_to(root))
            st = path.lstat()
            kind = stat.S_IFMT(st.st_mode)
            digest = target = rdev = None
            size = 0
            if stat.S_ISREG(kind):
                size = st.st_size
                digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            elif stat.S_ISLNK(kind):
                target = os.readlink(path)
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            try:
                names = os.listxattr(path, follow_symlinks=False)
            except OSError:
                names = []
            xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                                  for n in names))
            out[rel] = (stat.filemode(st.st_mode), oct(stat.S_IMODE(st.st_mode)),
                        st.st_uid, st.st_gid, size, digest, target, rdev, xattrs)
    return out


def diff_trees(want: dict[str, Entry], got: dict[str, Entry]) -> list[str]:
    lines = []
    for path in sorted(set(want) | set(got)):
        a, b = want.get(path), got.get(path)
        if a != b:
            lines.append(f"{path}: docker {a} soute {b}")
    return lines


def diff_configs(want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    a, b = config_view(want), config_view(got)
    return [f"{k}: docker {a[k]!r} soute {b[k]!r}" for k in CONFIG_KEYS if a[k] != b[k]]


def failure_line(stderr: str) -> int | None:
    """The line of soute's one-line error (``Dockerfile:3: ...``)."""
    for line in reversed(stderr.strip().splitlines()):
        m = re.match(r"^\S*?:(\d+):", line)
        if m:
            return int(m.group(1))
    return None
