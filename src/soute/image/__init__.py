"""OCI and Docker image formats as plain data: references, digests, platforms, manifests,
indexes, configs, and what ``docker image inspect``/``history`` show.

No filesystem here (that is :mod:`soute.store`). Names are imported lazily from the modules:
``reference``, ``digest``, ``platforms``, ``manifest``, ``config``, ``inspect``, ``timestamp``,
``mediatypes``, ``gojson``.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from typing import Any

    from soute.image.config import (
        ContainerConfig,
        Healthcheck,
        History,
        ImageConfig,
        RootFS,
        normalise_history,
    )
    from soute.image.digest import chain_ids, parse_digest, sha256_digest, short_id
    from soute.image.inspect import (
        HistoryRow,
        history_rows,
        human_duration,
        human_duration_ago,
        human_size,
        inspect_dict,
    )
    from soute.image.manifest import Descriptor, Index, Manifest, parse_manifest
    from soute.image.platforms import Platform
    from soute.image.reference import Reference, is_valid_tag, parse_reference
    from soute.image.timestamp import Timestamp

_EXPORTS = {
    "ContainerConfig": "config",
    "Healthcheck": "config",
    "History": "config",
    "ImageConfig": "config",
    "RootFS": "config",
    "normalise_history": "config",
    "chain_ids": "digest",
    "parse_digest": "digest",
    "sha256_digest": "digest",
    "short_id": "digest",
    "HistoryRow": "inspect",
    "history_rows": "inspect",
    "human_duration": "inspect",
    "human_duration_ago": "inspect",
    "human_size": "inspect",
    "inspect_dict": "inspect",
    "Descriptor": "manifest",
    "Index": "manifest",
    "Manifest": "manifest",
    "parse_manifest": "manifest",
    "Platform": "platforms",
    "Reference": "reference",
    "is_valid_tag": "reference",
    "parse_reference": "reference",
    "Timestamp": "timestamp",
}

__all__ = [
    "ContainerConfig",
    "Descriptor",
    "Healthcheck",
    "History",
    "HistoryRow",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "Reference",
    "RootFS",
    "Timestamp",
    "chain_ids",
    "history_rows",
    "human_duration",
    "human_duration_ago",
    "human_size",
    "inspect_dict",
    "is_valid_tag",
    "normalise_history",
    "parse_digest",
    "parse_manifest",
    "parse_reference",
    "sha256_digest",
    "short_id",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"soute.image.{module}"), name)
