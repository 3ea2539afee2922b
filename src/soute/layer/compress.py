"""Layer blob compression: gzip and zstd on write; gzip, zstd, xz, bzip2 or plain tar on read.

gzip goes through ``isal.igzip`` (several times faster) when it can be imported, else zlib.
Output is deterministic for a given backend and level: mtime 0, no file name, no extra
fields. The two backends produce different (equally valid) bytes, so a blob digest is only
reproducible with the same backend; ``backend=`` pins it.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections import deque
from typing import Any, BinaryIO, Literal, cast

from soute.errors import SouteError

Kind = Literal["gzip", "zstd"]
Backend = Literal["auto", "isal", "zlib"]

_CHUNK = 1 << 20
# zstd input is fed in small pieces: one call returns all the output its input makes, and a
# crafted frame can expand about 32768-fold, so this bounds memory per call (~128 MiB).
_ZSTD_FEED = 4096
_HEAD = 6  # enough for every magic number below

_errors: list[type[BaseException]] = [OSError, EOFError, ValueError, zlib.error, lzma.LZMAError]
_igzip: Any
_zstd: Any
try:
    from isal import igzip, isal_zlib
except ImportError:  # pragma: no cover - depends on the environment
    _igzip = None
else:
    _igzip = igzip
    _errors.append(cast("type[BaseException]", isal_zlib.error))  # typed as an instance
try:
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    _zstd = None
else:
    _zstd = zstandard
    _errors.append(zstandard.ZstdError)
_DECODE_ERRORS = tuple(_errors)


def detect(first_bytes: bytes) -> str:
    """The format of a blob from its first bytes: gzip, zstd, xz, bzip2, or tar (anything else).

    Six bytes are enough; fewer may read as ``tar``.
    """
    if first_bytes.startswith(b"\x1f\x8b"):
        return "gzip"
    if first_bytes.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if first_bytes[1:4] == b"\x2a\x4d\x18" and first_bytes[0] & 0xF0 == 0x50:
        return "zstd"  # a skippable frame (magic 0x184D2A5?) may open a zstd stream
    if first_bytes.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if first_bytes.startswith(b"BZh"):
        return "bzip2"
    return "tar"


def compress_stream(
    src: BinaryIO,
    dst: BinaryIO,
    kind: Kind,
    level: int | None = None,
    *,
    backend: Backend = "auto",
) -> None:
    """Compress everything read from ``src`` into ``dst`` (which is left open).

    ``level``: gzip 0–9 on zlib's scale (mapped onto isal's 0–3 when isal is used; default
    isal 2 / zlib 6, docker's default); zstd 1–22 (default 3). ``backend`` chooses the gzip
    implementation: ``auto`` (isal when importable), ``isal`` or ``zlib``.
    """
    if kind == "gzip":
        with _gzip_writer(dst, level, backend) as gz:
            _copy(src, gz)
    elif kind == "zstd":
        zstd = _need_zstd()
        try:
            cctx = zstd.ZstdCompressor(level=3 if level is None else level, write_checksum=True)
            cctx.copy_stream(src, dst, read_size=_CHUNK, write_size=_CHUNK)
        except zstd.ZstdError as err:
            raise SouteError(f"cannot compress with zstd: {err}") from err
    else:
        raise SouteError(f"unsupported layer compression {kind!r}", hint="use gzip or zstd")


def _gzip_writer(dst: BinaryIO, level: int | None, backend: Backend) -> gzip.GzipFile:
    if level is not None and not 0 <= level <= 9:
        raise SouteError(f"gzip compression level {level} is out of range", hint="use 0-9")
    use_isal = backend == "isal" or (backend == "auto" and _igzip is not None)
    if use_isal:
        if _igzip is None:
            raise SouteError("gzip backend isal is not installed", hint="pip install isal")
        isal_level = 2 if level is None else min(3, level // 3)
        writer: gzip.GzipFile = _igzip.GzipFile(  # a gzip.GzipFile subclass
            filename="", mode="wb", compresslevel=isal_level, fileobj=dst, mtime=0
        )
        return writer
    if backend not in ("auto", "zlib"):
        raise SouteError(f"unknown gzip backend {backend!r}", hint="use auto, isal or zlib")
    return gzip.GzipFile(
        filename="", mode="wb", compresslevel=6 if level is None else level, fileobj=dst, mtime=0
    )


def _copy(src: BinaryIO, dst: Any) -> None:
    while chunk := src.read(_CHUNK):
        dst.write(chunk)


def _need_zstd() -> Any:
    if _zstd is None:
        raise SouteError("zstd support needs the zstandard package", hint="pip install zstandard")
    return _zstd


def open_decompressed(f: BinaryIO) -> BinaryIO:
    """A stream of ``f``'s decompressed bytes, whatever its format (see :func:`detect`).

    The first bytes are read to detect the format and then handed out again, so ``f`` may be
    a pipe or a socket. Corrupt or truncated input raises :class:`SouteError` naming the format
    when it is read.
    """
    head = b""
    while len(head) < _HEAD:
        more = f.read(_HEAD - len(head))
        if not more:
            break
        head += more
    kind = detect(head)
    source = io.BufferedReader(_Prefixed(head, f), _CHUNK)
    inner: Any
    if kind == "tar":
        return source
    if kind == "gzip":
        inner = (_igzip or gzip).GzipFile(fileobj=source, mode="rb")
    elif kind == "zstd":
        inner = _ZstdReader(source, _need_zstd())
    elif kind == "xz":
        inner = lzma.LZMAFile(source)  # noqa: SIM115 - handed to the caller, who closes it
    else:
        inner = bz2.BZ2File(source)
    return io.BufferedReader(_Checked(inner, kind), _CHUNK)


class _Prefixed(io.RawIOBase):
    """``head`` then the rest of ``rest``."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n


class _Checked(io.RawIOBase):
    """Turns a decompressor's errors into one SouteError naming the format."""

    def __init__(self, inner: Any, kind: str) -> None:
        self._inner = inner
        self._kind = kind

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return int(self._inner.readinto(buffer))
        except SouteError:
            raise
        except _DECODE_ERRORS as err:
            raise SouteError(f"cannot decompress {self._kind} layer: {err}") from err


class _ZstdReader(io.RawIOBase):
    """zstd frames, one after another, failing on a frame cut short.

    (zstandard's ``stream_reader`` returns end-of-file on a truncated frame.)
    """

    def __init__(self, source: BinaryIO, zstd: Any) -> None:
        self._source = source
        self._dctx = zstd.ZstdDecompressor()
        self._dobj = self._dctx.decompressobj()
        self._in_frame = False  # input fed to the current frame and not finished yet
        self._out: deque[bytes] = deque()
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            if self._eof:
                return 0
            self._feed(self._source.read(_ZSTD_FEED))
        data = self._out.popleft()
        n = min(len(buffer), len(data))
        buffer[:n] = data[:n]
        if n < len(data):
            self._out.appendleft(data[n:])
        return n

    def _feed(self, data: bytes) -> None:
        if not data:
            if self._in_frame:
                raise EOFError("the stream ends inside a zstd frame")
            self._eof = True
            return
        while data:
            self._in_frame = True
            out = self._dobj.decompress(data)
            if out:
                self._out.append(out)
            if not self._dobj.eof:
                return
            data = self._dobj.unused_data
            self._dobj = self._dctx.decompressobj()
            self._in_frame = False


def size_hint(head: bytes, tail: bytes, compressed_size: int) -> int:
    """The uncompressed size a compressed blob announces, from its first bytes (a zstd frame
    header's content size) or its last four (gzip's ISIZE), without decompressing it.

    Exact for gzip blobs of one member (those docker, BuildKit and soute make) below 4 GiB;
    a blob of several gzip members or zstd frames announces only its last or first one, and
    a zstd frame written as a stream usually carries no content size: ``compressed_size``
    then stands in. For display only, until the layer is first decompressed.
    """
    kind = detect(head)
    if kind == "gzip" and len(tail) >= 4:
        return int.from_bytes(tail[-4:], "little")
    if kind == "zstd" and head.startswith(b"\x28\xb5\x2f\xfd") and len(head) >= 5:
        fhd = head[4]
        single = (fhd >> 5) & 1
        at = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
        width = (single, 2, 4, 8)[fhd >> 6]
        if width and len(head) >= at + width:
            value = int.from_bytes(head[at:at + width], "little")
            return value + 256 if width == 2 else value
    return compressed_size


class ReadAhead(io.RawIOBase):
    """``source`` read by a thread of its own, a few chunks ahead of the reader: a
    decompressor and a hash (which release the GIL) then run beside whatever consumes the
    bytes, e.g. a tar being unpacked. Errors of the source reach the reader at that point
    of the stream. Close it, also on errors: the thread stops at its next chunk."""

    def __init__(self, source: BinaryIO, *, depth: int = 8, chunk: int = _CHUNK) -> None:
        import queue
        import threading

        self._source = source
        self._chunk = chunk
        self._full = queue.Full
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)
        self._stop = threading.Event()
        self._data = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(target=self._fill, name="read-ahead", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._source.read(self._chunk)
                if not data:
                    break
                self._put(data)
        except BaseException as e:  # handed to the reader, raised there
            self._put(e)
            return
        self._put(None)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except self._full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:  # its thread is gone: nothing more would come
            raise ValueError("read of a closed ReadAhead")
        while not self._data:
            if self._done:
                return 0
            item = self._queue.get()
            if item is None:
                self._done = True
                return 0
            if isinstance(item, BaseException):
                self._done = True
                raise item
            self._data = memoryview(item)
        n = min(len(buffer), len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            self._thread.join()
        super().close()
