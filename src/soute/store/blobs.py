"""Content-addressed blobs: sha256-named files, verified as they are written.

The blob directory is the ``blobs/sha256`` of the store's OCI image layout, so standard tools
read our blobs in place. A blob becomes visible only by an atomic rename of a complete,
fsynced, verified file: a killed writer leaves at most a temporary file behind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from soute.errors import SouteError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs a `soute run` time
    import hashlib  # imported where blobs are hashed: its OpenSSL costs a `soute run` 3 ms
    from typing import BinaryIO

_HEX64 = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 20


class BlobError(SouteError):
    pass


def split_digest(digest: str) -> str:
    """The hex part of a sha256 digest, checked."""
    alg, _, hexpart = digest.partition(":")
    if alg != "sha256" or not _HEX64.fullmatch(hexpart):
        raise BlobError(f"invalid digest {digest!r}", "digests look like sha256:<64 hex digits>")
    return hexpart


class BlobWriter:
    """Streams one blob into place. Use as a context manager; call :meth:`commit` at the end."""

    def __init__(self, store: BlobStore, expected: str | None) -> None:
        self._store = store
        self._expected = expected
        if expected is not None:
            split_digest(expected)
        import hashlib

        self._hash = hashlib.sha256()
        self.size = 0
        self._synced = -1  # the size when sync() last ran
        fd, name = _mkstemp(store.tmp_dir, "blob-")
        self._tmp = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self.digest: str | None = None

    @property
    def path(self) -> Path:
        """The temporary file being written (flushed by :meth:`sync`)."""
        return self._tmp

    @property
    def sha256(self) -> hashlib._Hash:
        """The running sha256 of everything written so far: a writer that hashes its stream
        anyway (the layer writer) reads it instead of hashing the same bytes twice."""
        return self._hash

    def write(self, data: bytes | memoryview) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._file.write(data)

    def copy_from(self, src: BinaryIO) -> None:
        while chunk := src.read(CHUNK):
            self.write(chunk)

    def sync(self) -> None:
        """Write the content to disk now (commit then has nothing left to wait for): lets
        several blobs be synced side by side before they are committed together."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._synced = self.size

    def commit(self) -> str:
        """Verify, fsync and publish the blob; returns its digest."""
        digest = "sha256:" + self._hash.hexdigest()
        if self._expected is not None and digest != self._expected:
            self.abort()
            raise BlobError(
                f"content does not match its digest: expected {self._expected}, got {digest}",
                "the source is corrupt or was changed while being read",
            )
        target = self._store.path(digest)
        if target.exists():
            self._file.close()  # same content is already there (and synced): no fsync
            self._tmp.unlink()
        else:
            if self._synced != self.size:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            os.chmod(self._tmp, 0o644)
            os.rename(self._tmp, target)
            _fsync_dir(target.parent)
        self.digest = digest
        return digest

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.digest is None:
            self.abort()


class WriteBehind:
    """Chunks handed to a thread that writes them to a :class:`BlobWriter` (which hashes
    them): hashing and writing release the GIL, so the producer (a decompressor, say) goes
    on meanwhile on another core. Chunks must not be changed once handed over. Call
    :meth:`close` at the end, also on errors: it raises what the writing failed with."""

    def __init__(self, writer: BlobWriter, depth: int = 8) -> None:
        import queue
        import threading

        self._writer = writer
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="blob-writer", daemon=True)
        self._thread.start()

    def write(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def close(self, *, quiet: bool = False) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None and not quiet:
            raise self._error

    def _drain(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep taking chunks: the producer must never block on a full queue
            try:
                self._writer.write(chunk)
            except BaseException as e:  # handed to the producer by write() or close()
                self._error = e


class BlobStore:
    def __init__(self, directory: Path, tmp_dir: Path) -> None:
        self.dir = directory
        self.tmp_dir = tmp_dir

    def path(self, digest: str) -> Path:
        return self.dir / split_digest(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobError(f"blob {digest} is missing from the store",
                            "run 'soute fsck' to check the store") from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def writer(self, expected: str | None = None) -> BlobWriter:
        return BlobWriter(self, expected)

    def write(self, data: bytes, expected: str | None = None) -> str:
        if expected is not None and self.has(expected):
            return expected
        with self.writer(expected) as w:
            w.write(data)
            return w.commit()

    def digests(self) -> Iterator[str]:
        for entry in os.scandir(self.dir):
            if _HEX64.fullmatch(entry.name):
                yield "sha256:" + entry.name

    def verify(self, digest: str) -> bool:
        import hashlib

        h = hashlib.sha256()
        with self.open(digest) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return "sha256:" + h.hexdigest() == digest

    def remove(self, digest: str) -> int:
        p = self.path(digest)
        try:
            size = p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            return 0
        return size


def _mkstemp(directory: Path, prefix: str) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix=prefix, dir=directory)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half."""
    fd, name = _mkstemp(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(name, mode)
        os.rename(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
