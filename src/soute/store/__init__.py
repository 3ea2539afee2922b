"""The local store: content-addressed blobs, snapshots, references and metadata."""

from __future__ import annotations

import os
from pathlib import Path


def default_root() -> Path:
    """Where the store lives: ``$SOUTE_ROOT``, else a system or per-user default like docker's."""
    env = os.environ.get("SOUTE_ROOT")
    if env:
        return Path(os.path.abspath(env))  # children chdir: a relative root would move
    if os.geteuid() == 0:
        return Path("/var/lib/soute")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "soute"
