"""Compiled code of the methods ``dataclasses`` generates, kept between runs as a .pyc is.

CPython 3.11 writes the source of each dataclass's ``__init__``, ``__repr__``, ``__eq__``...
and compiles it with ``exec`` when the class is defined: about 0.35 ms of the 0.5 ms a class
costs. A cached rebuild defines 70 of them (35 ms of its 135), ``soute run`` 30.

:func:`install` gives the ``dataclasses`` module an ``exec`` of its own that looks the
source up in a table of code objects compiled ahead of time; a source not in the table is
compiled as before. The table is keyed by the exact source text and stored under the
interpreter's bytecode magic number, so it can be incomplete but never wrong. It is made
by :func:`build`, which ``scripts/setup`` runs after ``compileall``
(``python -c 'from soute._dccache import build; build()'``); without it nothing changes.
"""

from __future__ import annotations

import builtins
import marshal
import os
import sys
import zlib

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from types import CodeType
    from typing import Any

_PATH = os.path.join(os.path.dirname(__file__), "__pycache__",
                     f"dataclass-methods.{sys.implementation.cache_tag}.bin")


def _magic() -> bytes:
    # importlib.util costs milliseconds to import; its bootstrap half is always loaded.
    return sys.modules["_frozen_importlib_external"].MAGIC_NUMBER  # type: ignore[no-any-return]


def _defer_inspect() -> None:
    """``dataclasses`` imports ``inspect`` (with ast, dis and tokenize: about 4 ms of every
    command) for one call, made only for a class without a docstring."""
    if "inspect" not in sys.modules and "dataclasses" not in sys.modules:
        from soute._lazy import Deferred

        sys.modules["inspect"] = Deferred("inspect")


def install(path: str = _PATH) -> bool:
    """Use the table at ``path`` for the dataclasses defined from now on; False if there is
    none (or it is for another interpreter, or unreadable)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        magic = _magic()
        if data[: len(magic)] != magic:
            return False
        size = int.from_bytes(data[len(magic) : len(magic) + 4], "little")
        start = len(magic) + 4
        index = marshal.loads(data[start : start + size])
    except (OSError, EOFError, ValueError, TypeError):
        return False
    if not isinstance(index, dict):
        return False
    base = start + size
    _defer_inspect()
    import dataclasses

    def exec_(source: Any, globals: Any = None, locals: Any = None, /) -> None:
        code = None
        if isinstance(source, str):
            # Only the entries asked for are unmarshalled: the whole table costs more to
            # load than compiling what one command needs.
            for offset, length in index.get(zlib.crc32(source.encode()), ()):
                try:
                    text, found = marshal.loads(data[base + offset : base + offset + length])
                except (EOFError, ValueError, TypeError):
                    break
                if text == source:
                    code = found
                    break
        builtins.exec(source if code is None else code, globals, locals)

    # Module globals shadow builtins: only dataclasses' own calls of exec() come here.
    dataclasses.exec = exec_  # type: ignore[attr-defined]
    return True


def build(path: str = _PATH) -> int:
    """Import every soute module, record the sources dataclasses compiles, write the table
    to ``path`` (atomically); the number of entries."""
    import dataclasses
    import pkgutil

    import soute

    sources: set[str] = set()

    def record(source: Any, globals: Any = None, locals: Any = None, /) -> None:
        if isinstance(source, str):
            sources.add(source)
        builtins.exec(source, globals, locals)

    dataclasses.exec = record  # type: ignore[attr-defined]
    for module in pkgutil.walk_packages(soute.__path__, "soute."):
        if module.name in sys.modules or module.name == "soute._dccache":
            continue
        try:
            __import__(module.name)
        except Exception:  # an optional dependency missing: skip the module
            continue
    index: dict[int, list[tuple[int, int]]] = {}
    blobs = bytearray()
    for source in sorted(sources):
        # The file name dataclasses compiles with (exec's default): identical tracebacks.
        code: CodeType = compile(source, "<string>", "exec")
        entry = marshal.dumps((source, code))
        index.setdefault(zlib.crc32(source.encode()), []).append((len(blobs), len(entry)))
        blobs += entry
    head = marshal.dumps({k: tuple(v) for k, v in index.items()})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(_magic() + len(head).to_bytes(4, "little") + head + blobs)
    os.replace(tmp, path)
    return len(sources)
