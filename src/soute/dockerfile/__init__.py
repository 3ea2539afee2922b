"""Dockerfile front end: text to typed instructions, exactly as BuildKit reads it.

``parse()`` is the entry point; the modules below it are the parts (``parser``: lines to
nodes, ``shell``: word expansion, ``instructions``: typed and validated instructions and
stages, ``ignore``: .dockerignore).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from soute.dockerfile.instructions import Dockerfile

__all__ = ["parse"]


def parse(source: str | bytes | os.PathLike[str], *, file: str | None = None) -> Dockerfile:
    """Parse and check a Dockerfile.

    ``source`` is the text (str or bytes) or a path to the file. ``file`` names it in errors
    (default: the path, or ``Dockerfile``). Raises :class:`soute.errors.LocatedError`.
    """
    from soute.dockerfile.instructions import parse_dockerfile
    from soute.dockerfile.parser import decode

    if isinstance(source, os.PathLike):
        path = os.fspath(source)
        with open(path, "rb") as f:
            text = decode(f.read())
        return parse_dockerfile(text, file=file or path)
    text = decode(source) if isinstance(source, bytes) else source
    return parse_dockerfile(text, file=file or "Dockerfile")
