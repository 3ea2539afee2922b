"""What a copy child tells the layer writer while it copies: which entries are final.

A ``COPY`` into a directory that no parent layer has writes only new entries, in archive
order (each directory's names in byte order, depth first). The child announces each one
as it finishes it, and the parent writes the layer tar from them on the other core
(:class:`soute.layer.LayerStream`) instead of walking the finished tree afterwards.

Frames: a kind byte (``D`` directory, ``E`` entry, ``X`` stop), then for ``D`` the mode,
uid, gid and mtime the directory will end with, then the path's length and bytes.

The child's regular files are written by a second process, the writer, forked from it once
the copy's mounts are in place: creating 20,000 small files is mostly kernel work, which a
second core shares, and a thread would share the GIL instead. The walk hands each file to
the writer as a ``W`` frame in the same stream as its announcements, and the writer relays
the announcements to the parent once it has written the files before them, so the order is
kept with no bookkeeping. While the writer is behind (on a large file, say), the walk writes
the next files itself, then announces them: the order holds all the same. ``S`` asks the
writer for a sign that all before it is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import sys
import termios
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from soute.layer.write import LayerStream

_HEAD = struct.Struct("<cI")  # kind, path length
_DIR = struct.Struct("<IIIq")  # mode, uid, gid, mtime_ns
_WRITE = struct.Struct("<IIIIqq")  # target length, uid, gid, mode, atime_ns, mtime_ns
_FAILED = struct.Struct("<iII")  # errno, filename length, message length
_FLUSH = 1 << 15
_WRITER_FLUSH = 1 << 13  # the writer starts on the first files soon
_PIPE_SIZE = 1 << 20
# Past this many bytes of frames queued for the writer (a few hundred files), the walk
# writes files itself: both cores create files while the writer copies a large one.
_BACKLOG = 1 << 16

# write(source, target, uid, gid, mode, (atime_ns, mtime_ns)): a regular file and its info.
WriteFile = Callable[[bytes, bytes, int, int, int, tuple[int, int]], None]


class CopyEvents:
    """The child's side: announcements, buffered, written to ``fd``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._flush_at = _FLUSH
        self.on = True  # False once stopped: nothing more is announced
        self.started = False  # a source's walk began (a second one stops the stream)
        self._writer = 0  # the writer's pid, once started
        self._replies: BinaryIO | None = None  # the writer's answers to S

    def write_file(
        self, source: bytes, target: bytes, uid: int, gid: int, mode: int,
        times: tuple[int, int], write: WriteFile,
    ) -> bool:
        """Hand the write of a regular file to the writer process (started on first use,
        running ``write``); False when the caller must write it itself."""
        if self._fd < 0:
            return False
        try:
            fields = _WRITE.pack(len(target), uid, gid, mode, *times)
        except struct.error:  # a time past 2262
            return False
        if not self._writer:
            self._start_writer(write)
        elif self._backlog() > _BACKLOG:
            return False  # the writer has enough to do (a large file?): the walk writes this one
        self._buffer += _HEAD.pack(b"W", len(source)) + fields + source + target
        self._maybe_flush()
        return True

    def settle(self) -> None:
        """Wait until the writer wrote every file handed to it; its first failure is raised
        here (an OSError naming the file)."""
        if self._replies is None:
            return
        self._buffer += _HEAD.pack(b"S", 0)
        self.flush()
        replies = self._replies
        reply = replies.read(1)
        if reply == b".":
            return
        if reply != b"!":
            raise OSError(0, "the copy's writer process ended early")
        code, name_len, text_len = _FAILED.unpack(replies.read(_FAILED.size))
        name = replies.read(name_len)
        text = replies.read(text_len).decode("utf-8", "replace")
        raise OSError(code, text, name) if name else OSError(code, text)

    def end_writer(self, *, abort: bool = False) -> None:
        """Let the writer finish (or, with ``abort``, stop it at once) and wait for it."""
        if not self._writer:
            return
        if abort:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._writer, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._replies is not None:
            self._replies.close()
            self._replies = None
        os.waitpid(self._writer, 0)
        self._writer = 0

    def _backlog(self) -> int:
        """Bytes of frames the writer has not read yet."""
        try:
            queued = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return 0
        return len(self._buffer) + int.from_bytes(queued, sys.byteorder)

    def _start_writer(self, write: WriteFile) -> None:
        self.flush()  # what is announced so far goes to the parent straight away
        jobs_r, jobs_w = os.pipe()
        replies_r, replies_w = os.pipe()
        widen_pipe(jobs_w)  # the walk runs ahead of the writer instead of waiting on it
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the writer; its effects are tested
            code = 1
            try:  # everything ends in _exit, never in the copy child's code
                os.close(jobs_w)
                os.close(replies_r)
                _relay(jobs_r, self._fd, replies_w, write)
                code = 0
            finally:
                os._exit(code)
        os.close(jobs_r)
        os.close(replies_w)
        os.close(self._fd)  # the writer holds the parent's pipe now
        self._fd = jobs_w
        self._replies = os.fdopen(replies_r, "rb")
        self._writer = pid
        self._flush_at = _WRITER_FLUSH

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
        if self._writer:
            self.end_writer()
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
        if len(self._buffer) >= self._flush_at:
            self.flush()


def widen_pipe(fd: int) -> None:
    """Let the pipe hold ``_PIPE_SIZE`` bytes; a smaller pipe only makes its writer wait more."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


def _frames(fd: int) -> Iterator[list[tuple[bytes, bytes]]]:
    """The whole frames read from ``fd``, (kind, frame) with the head, one list per read."""
    pending = b""
    while chunk := os.read(fd, 1 << 16):
        pending += chunk
        found = []
        at = 0
        while len(pending) - at >= _HEAD.size:
            kind, length = _HEAD.unpack_from(pending, at)
            end = at + _HEAD.size + length
            if kind == b"D":
                end += _DIR.size
            elif kind == b"W":
                if len(pending) - at < _HEAD.size + _WRITE.size:
                    break
                end += _WRITE.size + _WRITE.unpack_from(pending, at + _HEAD.size)[0]
            if end > len(pending):
                break
            found.append((kind, pending[at:end]))
            at = end
        pending = pending[at:]
        yield found


def _failed(error: OSError) -> bytes:
    name = os.fsencode(error.filename) if error.filename is not None else b""
    text = (error.strerror or str(error)).encode("utf-8", "replace")
    return b"!" + _FAILED.pack(error.errno or 0, len(name), len(text)) + name + text


def _relay(jobs: int, out: int, replies: int, write: WriteFile) -> None:
    """The writer: write the files of ``W`` frames in order, pass the announcements after
    them on to ``out``, answer ``S``. After a failed write nothing more is written or
    announced (an ``X`` tells the parent), and the failure is the next answer."""
    failure: OSError | None = None
    forward = bytearray()

    def send() -> None:
        nonlocal forward
        data = memoryview(forward)
        while data:
            data = data[os.write(out, data):]
        forward = bytearray()

    for frames in _frames(jobs):
        for kind, frame in frames:
            if kind == b"W":
                if failure is None:
                    source_len = _HEAD.unpack_from(frame)[1]
                    target_len, uid, gid, mode, atime, mtime = _WRITE.unpack_from(
                        frame, _HEAD.size)
                    source = frame[_HEAD.size + _WRITE.size:][:source_len]
                    try:
                        write(source, frame[len(frame) - target_len:], uid, gid, mode,
                              (atime, mtime))
                    except OSError as e:
                        failure = e
                        forward += _HEAD.pack(b"X", 0)
            elif kind == b"S":
                send()
                os.write(replies, b"." if failure is None else _failed(failure))
            elif failure is None:
                forward += frame
        send()  # the parent tars what is final while the next files are written


def follow(fd: int, stream: LayerStream) -> None:
    """The parent's side: feed the announcements read from ``fd`` to ``stream`` until the
    child closes it (always read to the end, so that the child never blocks)."""
    for frames in _frames(fd):
        if stream.failure is not None:
            continue
        for kind, frame in frames:
            try:
                if kind == b"D":
                    stream.directory(frame[_HEAD.size + _DIR.size:],
                                     *_DIR.unpack_from(frame, _HEAD.size))
                elif kind == b"E":
                    stream.entry(frame[_HEAD.size:])
                else:
                    stream.fail("the copy stopped announcing")
            except Exception as e:  # the layer is then written from the finished tree
                stream.fail(f"internal error: {e!r}")
            if stream.failure is not None:
                break
