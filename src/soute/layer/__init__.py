"""Layer changesets (OCI ``layer.md``): write a tree as a tar, apply a tar to a tree, compress.

The lowest layer of soute: it imports nothing from soute but :mod:`soute.errors`.

- :func:`write_layer` streams a deterministic PAX tar of a tree (a full tree or an overlayfs
  upper dir) and returns its :class:`LayerDigest` (DiffID and size).
- :class:`LayerStream` writes the same tar while the tree is still being made, told which
  entries are final (a COPY into a new directory), and falls back when told wrong.
- :class:`Nowhere` is an output for either that keeps nothing: the DiffID alone.
- :func:`apply_layer` applies a layer tar onto a full tree, or unpacks it as an overlayfs
  lower dir, refusing entries that would write outside the destination.
- :func:`compress_stream`, :func:`open_decompressed` and :func:`detect` handle the gzip and
  zstd blobs registries store (xz and bzip2 are read too).

Submodules are imported on first use, so ``import soute.layer`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soute.layer.apply import apply_layer
    from soute.layer.compress import compress_stream, detect, open_decompressed
    from soute.layer.write import LayerDigest, LayerStream, Nowhere, write_layer

__all__ = [
    "LayerDigest",
    "LayerStream",
    "Nowhere",
    "apply_layer",
    "compress_stream",
    "detect",
    "open_decompressed",
    "write_layer",
]

_HOME = {
    "LayerDigest": "write",
    "LayerStream": "write",
    "Nowhere": "write",
    "write_layer": "write",
    "apply_layer": "apply",
    "compress_stream": "compress",
    "detect": "compress",
    "open_decompressed": "compress",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
