"""Compression of layer blobs and detection on read."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import zlib
from pathlib import Path

import pytest
import zstandard

from soute.errors import SouteError
from soute.layer import apply_layer, compress_stream, detect, open_decompressed, write_layer
from test_layer_support import Spec, build_tree, snapshot

PAYLOAD = os.urandom(200_000) + b"compressible " * 200_000


def _compress(data: bytes, kind: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    compress_stream(io.BytesIO(data), out, kind, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def _read(blob: bytes) -> bytes:
    return open_decompressed(io.BytesIO(blob)).read()


class Trickle(io.RawIOBase):
    """A non-seekable stream handing out a few bytes per read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), 3, len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_detect() -> None:
    assert detect(gzip.compress(b"x")[:6]) == "gzip"
    assert detect(zstandard.ZstdCompressor().compress(b"x")[:6]) == "zstd"
    assert detect(b"\x50\x2a\x4d\x18\x04\x00") == "zstd"  # skippable frame first
    assert detect(lzma.compress(b"x")[:6]) == "xz"
    assert detect(bz2.compress(b"x")[:6]) == "bzip2"
    assert detect(b"etc/\x00\x00") == "tar"
    assert detect(b"") == "tar"


@pytest.mark.parametrize("backend", ["auto", "isal", "zlib"])
def test_gzip_round_trip_and_reproducible(backend: str) -> None:
    blob = _compress(PAYLOAD, "gzip", backend=backend)
    assert detect(blob) == "gzip"
    assert _read(blob) == PAYLOAD
    assert gzip.decompress(blob) == PAYLOAD  # plain zlib reads it too
    assert _compress(PAYLOAD, "gzip", backend=backend) == blob
    assert blob[3] == 0  # no FNAME, FEXTRA, FCOMMENT
    assert blob[4:8] == b"\x00\x00\x00\x00"  # mtime 0


def test_isal_and_zlib_agree_on_content() -> None:
    isal_blob = _compress(PAYLOAD, "gzip", backend="isal")
    zlib_blob = _compress(PAYLOAD, "gzip", backend="zlib")
    assert isal_blob != zlib_blob  # different encoders...
    assert _read(isal_blob) == _read(zlib_blob) == PAYLOAD  # ...same bytes inside


def test_gzip_to_a_named_file_has_no_file_name(tmp_path: Path) -> None:
    target = tmp_path / "layer.tar.gz"
    with open(target, "wb") as out:
        compress_stream(io.BytesIO(b"data"), out, "gzip", backend="zlib")
    assert target.read_bytes()[3] == 0


@pytest.mark.parametrize("level", [0, 1, 9])
def test_gzip_levels(level: int) -> None:
    for backend in ("isal", "zlib"):
        assert _read(_compress(PAYLOAD, "gzip", level=level, backend=backend)) == PAYLOAD


def test_bad_arguments() -> None:
    with pytest.raises(SouteError, match="out of range"):
        _compress(b"x", "gzip", level=10)
    with pytest.raises(SouteError, match="unsupported layer compression"):
        _compress(b"x", "lz4")


def test_zstd_round_trip_and_reproducible() -> None:
    blob = _compress(PAYLOAD, "zstd")
    assert detect(blob) == "zstd"
    assert _read(blob) == PAYLOAD
    assert _compress(PAYLOAD, "zstd") == blob
    assert _read(_compress(PAYLOAD, "zstd", level=19)) == PAYLOAD


def test_zstd_several_frames_and_skippable_frames() -> None:
    c = zstandard.ZstdCompressor()
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip"
    blob = skippable + c.compress(b"one") + c.compress(b"") + c.compress(b"two")
    assert _read(blob) == b"onetwo"


@pytest.mark.parametrize(
    ("kind", "blob"),
    [("xz", lzma.compress(PAYLOAD)), ("bzip2", bz2.compress(PAYLOAD)), ("tar", PAYLOAD)],
)
def test_other_formats(kind: str, blob: bytes) -> None:
    assert detect(blob[:6]) == kind
    assert _read(blob) == PAYLOAD


def test_non_seekable_input() -> None:
    for kind in ("gzip", "zstd"):
        stream = Trickle(_compress(PAYLOAD[:5000], kind))
        assert open_decompressed(stream).read() == PAYLOAD[:5000]  # type: ignore[arg-type]
    assert open_decompressed(Trickle(b"ab")).read() == b"ab"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "blob"),
    [
        ("gzip", gzip.compress(PAYLOAD, mtime=0)[:-100]),
        ("gzip", gzip.compress(PAYLOAD, mtime=0)[:20] + b"\xff" * 4000),
        ("zstd", zstandard.ZstdCompressor().compress(PAYLOAD)[:-100]),
        ("zstd", zstandard.ZstdCompressor().compress(PAYLOAD)[:20] + b"\xff" * 4000),
        ("xz", lzma.compress(PAYLOAD)[:-100]),
        ("bzip2", bz2.compress(PAYLOAD)[:50] + b"\x00" * 400),
    ],
)
def test_corrupt_streams_name_their_format(kind: str, blob: bytes) -> None:
    with pytest.raises(SouteError, match=f"cannot decompress {kind} layer"):
        _read(blob)


def test_zlib_error_is_wrapped() -> None:
    # A valid gzip header followed by an invalid deflate block.
    blob = gzip.compress(b"x", mtime=0)[:10] + b"\xff\xff\xff\xff" + b"\x00" * 8
    with pytest.raises(SouteError, match="gzip"):
        _read(blob)
    assert issubclass(zlib.error, Exception)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_layer_through_compression(tmp_path: Path, kind: str) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    build_tree(
        src,
        [
            Spec("dir", b"d"),
            Spec("file", b"d/f", content=PAYLOAD[:100_000]),
            Spec("symlink", b"l", target=b"d/f"),
        ],
    )
    tar = io.BytesIO()
    digest = write_layer(src, tar, overlay=False)
    blob = _compress(tar.getvalue(), kind)
    stream = open_decompressed(Trickle(blob))  # type: ignore[arg-type]

    class Hashing(io.RawIOBase):
        """What a puller does: check the DiffID while the layer is applied."""

        def __init__(self) -> None:
            self.hash = hashlib.sha256()

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            data = stream.read(len(buffer))
            buffer[: len(data)] = data
            self.hash.update(data)
            return len(data)

    hashing = Hashing()
    apply_layer(hashing, dest, overlay=False)  # type: ignore[arg-type]
    assert "sha256:" + hashing.hash.hexdigest() == digest.diff_id
    assert snapshot(dest) == snapshot(src)


def test_size_hint_reads_what_a_blob_announces() -> None:
    from soute.layer.compress import size_hint

    def hint(blob: bytes) -> int:
        return size_hint(blob[:32], blob[-8:], len(blob))

    for size in (0, 1, 300, 70_000, len(PAYLOAD)):
        assert hint(_compress(PAYLOAD[:size], "gzip")) == size, size
        # A zstd frame header that carries the content size (one-shot compressors write it).
        assert hint(zstandard.ZstdCompressor().compress(PAYLOAD[:size])) == size, size
    assert hint(gzip.compress(PAYLOAD)) == len(PAYLOAD)  # zlib's gzip as well
    # A zstd stream written without its size announces nothing: the blob's own size stands in.
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as w:
        w.write(PAYLOAD)
    blob = out.getvalue()
    assert hint(blob) == len(blob)
    assert hint(b"plain tar bytes") == len(b"plain tar bytes")


def test_read_ahead_gives_the_same_bytes_and_the_source_errors() -> None:
    from soute.layer.compress import ReadAhead

    blob = _compress(PAYLOAD, "gzip")
    with ReadAhead(open_decompressed(io.BytesIO(blob)), chunk=4096, depth=2) as ahead:
        got = io.BufferedReader(ahead).read()
    assert got == PAYLOAD
    # A truncated blob: the decompressor's error reaches the reader, after the good bytes.
    with ReadAhead(open_decompressed(io.BytesIO(blob[: len(blob) // 2]))) as ahead, \
            pytest.raises(SouteError, match="cannot decompress gzip"):
        while ahead.read(1 << 16):
            pass
    # Closed early (the reader gave up): the thread stops though nobody reads its chunks.
    ahead = ReadAhead(io.BytesIO(PAYLOAD * 20), chunk=1024, depth=1)
    ahead.read(10)
    ahead.close()
    assert not ahead._thread.is_alive()


def test_read_ahead_closed_refuses_reads_instead_of_waiting() -> None:
    from soute.layer.compress import ReadAhead

    ahead = ReadAhead(io.BytesIO(PAYLOAD), chunk=1024, depth=1)
    ahead.close()
    with pytest.raises(ValueError, match="closed"):
        ahead.read(10)
