"""Modules the standard library imports for one rarely made call, put off until it is made.

Only the ``soute`` command's own process uses these (a program importing soute is left
alone): each stand-in is a module object in ``sys.modules`` whose first attribute lookup
imports the real module, which then takes its place.
"""

from __future__ import annotations

import _thread
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Deferred(type(sys)):  # type: ignore[misc]
    """A stand-in for a module not imported yet: the first attribute asked of it imports the
    module, which then takes its place in ``sys.modules`` (and in its package)."""

    def __getattr__(self, name: str) -> Any:
        if name == "__path__":
            # The import system's probe for ``from M import x``: a module, not a package,
            # whatever it turns out to be.
            raise AttributeError(name)
        return getattr(_load(self), name)


_swap = _thread.allocate_lock()  # two threads' first uses: one import, no half-swapped module


def _load(stand_in: Deferred) -> Any:
    """The real module of ``stand_in``, imported now if it was not."""
    name = stand_in.__name__
    with _swap:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        __import__(name)
        return sys.modules[name]


def defer_url_parsing() -> None:
    """``pathlib`` imports ``urllib.parse`` (and with it ``ipaddress``: 3 ms of every
    command) for ``Path.as_uri``; the stand-in hands it a ``quote_from_bytes`` that imports
    the real one when called."""
    if "urllib.parse" in sys.modules or "pathlib" in sys.modules:
        return
    import urllib  # the package alone: an empty __init__

    stand_in = Deferred("urllib.parse")

    def quote_from_bytes(*args: Any, **kwargs: Any) -> Any:
        return _load(stand_in).quote_from_bytes(*args, **kwargs)

    stand_in.quote_from_bytes = quote_from_bytes
    sys.modules["urllib.parse"] = stand_in
    urllib.parse = stand_in  # type: ignore[attr-defined]
