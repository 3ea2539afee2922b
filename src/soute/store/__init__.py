"""The local store: content-addressed blobs, snapshots, references and metadata."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


def default_root() -> Path:
    """Where the store lives: ``$SOUTE_ROOT``, else a system or per-user default like docker's."""
    from pathlib import Path

    return Path(default_root_path())


def default_root_path() -> str:
    """:func:`default_root` as an absolute, normalised path string (without pathlib, which
    the fast lane of a cached build does not import)."""
    env = os.environ.get("SOUTE_ROOT")
    if env:
        return os.path.abspath(env)  # children chdir: a relative root would move
    if os.geteuid() == 0:
        return "/var/lib/soute"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(os.path.abspath(data), "soute")
