"""What a copy child tells the layer writer while it copies: which entries are final.

A ``COPY`` into a directory that no parent layer has writes only new entries, in archive
order (each directory's names in byte order, depth first). The child announces each one
as it finishes it, and the parent writes the layer tar from them on the other core
(:class:`soute.layer.LayerStream`) instead of walking the finished tree afterwards.

Frames: a kind byte (``D`` directory, ``E`` entry, ``X`` stop), then for ``D`` the mode,
uid, gid and mtime the directory will end with, then the path's length and bytes.
"""

from __future__ import annotations

import contextlib
import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from soute.layer.write import LayerStream

_HEAD = struct.Struct("<cI")  # kind, path length
_DIR = struct.Struct("<IIIq")  # mode, uid, gid, mtime_ns
_FLUSH = 1 << 15


class CopyEvents:
    """The child's side: announcements, buffered, written to ``fd``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self.on = True  # False once stopped: nothing more is announced
        self.started = False  # a source's walk began (a second one stops the stream)

    def directory(self, rel: str, perm: int, uid: int, gid: int, mtime_ns: int) -> None:
        if self.on:
            path = os.fsencode(rel)
            try:
                fields = _DIR.pack(perm, uid, gid, mtime_ns)
            except struct.error:  # a time past 2262, an id past 32 bits: write_layer's job
                self.stop()
                return
            self._buffer += _HEAD.pack(b"D", len(path)) + fields + path
            self._maybe_flush()

    def entry(self, rel: str) -> None:
        if self.on:
            path = os.fsencode(rel)
            self._buffer += _HEAD.pack(b"E", len(path)) + path
            self._maybe_flush()

    def stop(self) -> None:
        """The copy does something the stream cannot follow (it then writes the layer from
        the finished tree)."""
        if self.on:
            self.on = False
            self._buffer += _HEAD.pack(b"X", 0)
            self.flush()

    def close(self) -> None:
        """Flush and close: the reader sees the end before the child reports anything else
        (a report longer than a pipe holds would otherwise wait on a reader still here)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):  # the reader is gone (interrupted)
                self.flush()
            os.close(self._fd)
            self._fd = -1

    def flush(self) -> None:
        if self._fd < 0:
            return
        data = memoryview(self._buffer)
        while data:
            data = data[os.write(self._fd, data):]
        self._buffer = bytearray()

    def _maybe_flush(self) -> None:
        if len(self._buffer) >= _FLUSH:
            self.flush()


def follow(fd: int, stream: LayerStream) -> None:
    """The parent's side: feed the announcements read from ``fd`` to ``stream`` until the
    child closes it (always read to the end, so that the child never blocks)."""
    pending = b""
    while chunk := os.read(fd, 1 << 16):
        pending += chunk
        at = 0
        while len(pending) - at >= _HEAD.size:
            kind, length = _HEAD.unpack_from(pending, at)
            extra = _DIR.size if kind == b"D" else 0
            end = at + _HEAD.size + extra + length
            if end > len(pending):
                break
            path = pending[at + _HEAD.size + extra:end]
            if stream.failure is None:
                try:
                    if kind == b"D":
                        stream.directory(path, *_DIR.unpack_from(pending, at + _HEAD.size))
                    elif kind == b"E":
                        stream.entry(path)
                    else:
                        stream.fail("the copy stopped announcing")
                except Exception as e:  # the layer is then written from the finished tree
                    stream.fail(f"internal error: {e!r}")
            at = end
        pending = pending[at:]
