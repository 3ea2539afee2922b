"""The build contexts of the workloads, made once under the work directory and kept.

- ``steps``: ``FROM`` the base, then 20 ``RUN echo stepN > /stepN``.
- ``copy``: 20,000 files of 1-7 KiB in 200 directories plus one 200 MiB file, ``COPY ctx
  /app``. The bytes come from a seeded generator, so every machine builds the same tree.
- ``apache``: ``examples/superapache`` with its ``FROM`` pointed at the base.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

BASE_IMAGE = "bench-base"
REPO = Path(__file__).resolve().parent.parent

COPY_DIRS = 200
COPY_FILES_PER_DIR = 100
COPY_BIG_FILE = 200 * 1024 * 1024
# Bumped whenever the generated tree changes: an older tree is then made again.
COPY_VERSION = "1"


def steps_context(work: Path) -> Path:
    ctx = work / "ctx" / "steps"
    ctx.mkdir(parents=True, exist_ok=True)
    lines = [f"FROM {BASE_IMAGE}"] + [f"RUN echo step{i} > /step{i}" for i in range(1, 21)]
    _write_if_changed(ctx / "Dockerfile", "\n".join(lines) + "\n")
    return ctx


def apache_context(work: Path) -> Path:
    ctx = work / "ctx" / "apache"
    ctx.mkdir(parents=True, exist_ok=True)
    seed = (REPO / "examples" / "superapache" / "Dockerfile").read_text()
    text = re.sub(r"(?m)^FROM\s+\S+", f"FROM {BASE_IMAGE}", seed, count=1)
    _write_if_changed(ctx / "Dockerfile", text)
    return ctx


def copy_context(work: Path) -> Path:
    """The copy context, generated on first use (about 280 MiB)."""
    ctx = work / "ctx" / "copy"
    stamp = ctx / ".generated"
    if stamp.is_file() and stamp.read_text() == COPY_VERSION:
        return ctx
    shutil.rmtree(ctx, ignore_errors=True)
    tree = ctx / "ctx"
    rng = random.Random(20261122)
    for d in range(COPY_DIRS):
        sub = tree / f"d{d:03d}"
        sub.mkdir(parents=True)
        for f in range(COPY_FILES_PER_DIR):
            size = rng.randint(1024, 7 * 1024)
            (sub / f"f{f:03d}.bin").write_bytes(rng.randbytes(size))
    with open(tree / "big.bin", "wb") as out:
        chunk = 4 * 1024 * 1024
        for _ in range(COPY_BIG_FILE // chunk):
            out.write(rng.randbytes(chunk))
    (ctx / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY ctx /app\n")
    stamp.write_text(COPY_VERSION)
    return ctx


def touch_one_file(ctx: Path) -> None:
    """Give one small file of the copy context a new modification time (content unchanged),
    as ``touch`` does."""
    path = ctx / "ctx" / "d100" / "f050.bin"
    os.utime(path)


def _write_if_changed(path: Path, text: str) -> None:
    # Rewriting an unchanged Dockerfile would change its mtime and nothing else; skipping
    # it keeps every tool's context checks honest about "nothing changed".
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
