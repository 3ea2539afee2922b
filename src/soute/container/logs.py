"""docker's json-file log driver format.

One JSON object per line: ``{"log":"text\\n","stream":"stdout","time":"...Z"}``.
A line longer than 16 KiB becomes several records, all but the last without
a trailing newline, as docker's log copier does.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from soute.errors import SouteError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from typing import BinaryIO

MAX_RECORD = 16 * 1024  # docker's copier buffer: longer lines are split
STREAMS = ("stdout", "stderr")
_NS = 1_000_000_000
_BLOCK = 64 * 1024


def _go_replace(err: UnicodeError) -> tuple[str, int]:
    # Go substitutes U+FFFD for each invalid byte; Python's "replace" may merge several.
    assert isinstance(err, UnicodeDecodeError)
    return "\ufffd" * (err.end - err.start), err.end


codecs.register_error("soute-go-replace", _go_replace)

# docker's jsonlog escaping: HTML-safe, \u00XX for control bytes, U+2028/9 escaped.
_ESCAPES: dict[int, str] = {c: f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update(
    {
        ord("\n"): "\\n",
        ord("\r"): "\\r",
        ord("\t"): "\\t",
        ord('"'): '\\"',
        ord("\\"): "\\\\",
        ord("<"): "\\u003c",
        ord(">"): "\\u003e",
        ord("&"): "\\u0026",
        0x2028: "\\u2028",
        0x2029: "\\u2029",
        0xFFFD: "\\ufffd",
    }
)


def _json_string(data: bytes) -> str:
    return '"' + data.decode("utf-8", "soute-go-replace").translate(_ESCAPES) + '"'


def format_time(ns: int) -> str:
    """docker's RFC3339NanoFixed in UTC: always nine fractional digits."""
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // _NS))
    return f"{base}.{ns % _NS:09d}Z"


# Compiled when first used (re caches it): the monitor writes logs and never parses a time.
_TIME = (
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"([Zz]|[+-]\d{2}:?\d{2})?"
)


def parse_time(text: str, *, local: bool = False) -> int | None:
    """RFC3339 (with up to 9 fractional digits) to Unix nanoseconds; None if malformed.

    Without a zone the time is UTC, or local time when ``local`` (docker's --since).
    """
    m = re.fullmatch(_TIME, text.strip())
    if not m:
        return None
    year, month, day, hh, mm, ss, frac, zone = m.groups()
    try:
        dt = datetime(int(year), int(month), int(day), int(hh or 0), int(mm or 0), int(ss or 0))
    except ValueError:
        return None
    if zone is None:
        dt = dt.astimezone() if local else dt.replace(tzinfo=UTC)
    elif zone in "Zz":
        dt = dt.replace(tzinfo=UTC)
    else:
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        dt = dt.replace(tzinfo=timezone(-offset if zone[0] == "-" else offset))
    seconds = int(dt.timestamp())
    return seconds * _NS + int((frac or "0").ljust(9, "0"))


def parse_since(text: str, now_ns: int | None = None, *, flag: str = "--since") -> int:
    """``docker logs --since`` (or ``--until``): a relative duration ("42m", before now), an
    RFC3339 time or a Unix timestamp."""
    value = text.strip()
    now = time.time_ns() if now_ns is None else now_ns
    if value != "0" and not re.fullmatch(r"\d+(\.\d*)?", value):
        # Here only: the monitor writes logs and needs nothing of the health module.
        from soute.container.health import parse_duration_ns

        try:
            return now - parse_duration_ns(value)
        except SouteError:
            pass
    m = re.fullmatch(r"(\d+)(?:\.(\d{0,9}))?", value)
    if m:
        return int(m.group(1)) * _NS + int((m.group(2) or "0").ljust(9, "0"))
    ns = parse_time(value, local=True)
    if ns is None:
        raise SouteError(
            f'invalid value for {flag}: "{text}"',
            hint="use a duration (10m), an RFC3339 time (2024-01-02T15:04:05Z) or a Unix timestamp",
        )
    return ns


class LogWriter:
    """Appends container output to a json-file log.

    Thread-safe; each record is one ``write(2)`` on an O_APPEND descriptor, so
    concurrent writers and readers never see interleaved records.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd: int | None = os.open(path, flags, 0o640)
        self._pending: dict[str, bytearray] = {s: bytearray() for s in STREAMS}
        self._lock = threading.Lock()

    def _record(self, stream: str, data: bytes) -> bytes:
        stamp = format_time(time.time_ns())
        line = f'{{"log":{_json_string(data)},"stream":"{stream}","time":"{stamp}"}}\n'
        return line.encode("utf-8")

    def _emit(self, out: bytearray) -> None:
        if self._fd is None:
            raise ValueError("LogWriter is closed")
        view = memoryview(out)
        while view:
            view = view[os.write(self._fd, view) :]

    def write(self, stream: str, data: bytes) -> None:
        """Log ``data`` from ``stream``; complete lines are written now, the rest is buffered."""
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}")
        with self._lock:
            buf = self._pending[stream]
            buf += data
            out = bytearray()
            start = 0
            while start < len(buf):
                nl = buf.find(b"\n", start, start + MAX_RECORD + 1)
                if nl >= 0:
                    out += self._record(stream, bytes(buf[start : nl + 1]))
                    start = nl + 1
                elif len(buf) - start > MAX_RECORD:
                    out += self._record(stream, bytes(buf[start : start + MAX_RECORD]))
                    start += MAX_RECORD
                else:
                    break  # partial line: wait for its newline
            del buf[:start]
            if out:
                self._emit(out)

    def flush(self) -> None:
        """Write buffered partial lines as records without a trailing newline."""
        with self._lock:
            out = bytearray()
            for stream in STREAMS:
                buf = self._pending[stream]
                if buf:
                    out += self._record(stream, bytes(buf))
                    buf.clear()
            if out:
                self._emit(out)

    def close(self) -> None:
        if self._fd is None:
            return
        self.flush()
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(line: bytes, timestamps: bool, since_ns: int | None,
            until_ns: int | None = None, details: bool = False) -> tuple[str, bytes] | None:
    """One record line to (stream, bytes); None for malformed or filtered-out records.
    ``details``: docker's ``--details``, the record's attributes (``k=v,...``, none here)
    and a space before the text."""
    try:
        obj = json.loads(line)
        stream = obj["stream"]
        text = obj["log"]
    except (ValueError, KeyError, TypeError):
        return None  # a torn or foreign line: skip it rather than fail the whole read
    if not isinstance(text, str) or not isinstance(stream, str):
        return None
    data = text.encode("utf-8", "replace")
    if details:
        attrs = obj.get("attrs")
        pairs = sorted(attrs.items()) if isinstance(attrs, dict) else []
        data = ",".join(f"{k}={v}" for k, v in pairs).encode() + b" " + data
    if timestamps or since_ns is not None or until_ns is not None:
        ns = parse_time(str(obj.get("time", "")))
        if since_ns is not None and (ns is None or ns < since_ns):
            return None
        if until_ns is not None and (ns is None or ns > until_ns):
            return None
        if timestamps:
            stamp = format_time(ns) if ns is not None else str(obj.get("time", ""))
            data = stamp.encode() + b" " + data
    return stream, data


def _complete_end(f: BinaryIO, size: int) -> int:
    """Offset just past the last newline: a torn last record is left for later."""
    hi = size
    while hi > 0:
        lo = max(0, hi - _BLOCK)
        f.seek(lo)
        idx = f.read(hi - lo).rfind(b"\n")
        if idx >= 0:
            return lo + idx + 1
        hi = lo
    return 0


def _tail_start(f: BinaryIO, end: int, n: int) -> int:
    """Offset where the last ``n`` complete records before ``end`` begin; read backwards."""
    if n <= 0:
        return end
    found = 0
    hi = end - 1  # skip the final record's own newline
    while hi > 0:
        lo = max(0, hi - _BLOCK)
        f.seek(lo)
        chunk = f.read(hi - lo)
        idx = len(chunk)
        while (idx := chunk.rfind(b"\n", 0, idx)) >= 0:
            found += 1
            if found == n:
                return lo + idx + 1
        hi = lo
    return 0


def _start_offset(f: BinaryIO, tail: int | None) -> tuple[int, int]:
    """(start, end) byte range of the records to show first."""
    size = os.fstat(f.fileno()).st_size
    end = _complete_end(f, size)
    start = 0 if tail is None or tail < 0 else _tail_start(f, end, tail)
    f.seek(start)
    return start, end


def read_logs(
    path: Path,
    *,
    tail: int | None = None,
    timestamps: bool = False,
    since: str | None = None,
    until: str | None = None,
    details: bool = False,
) -> Iterator[tuple[str, bytes]]:
    """Yield (stream, bytes) per record, as ``docker logs`` (tail None or negative: all)."""
    since_ns = parse_since(since) if since else None
    until_ns = parse_since(until, flag="--until") if until else None
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; generator holds it across yields
    except FileNotFoundError:
        return
    with f:
        pos, end = _start_offset(f, tail)
        while pos < end:
            line = f.readline()
            if not line:
                break
            pos += len(line)
            if pos > end:  # a record still being written
                break
            record = _decode(line, timestamps, since_ns, until_ns, details)
            if record is not None:
                yield record


def follow_logs(
    path: Path,
    *,
    is_running: Callable[[], bool],
    tail: int | None = None,
    timestamps: bool = False,
    poll: float = 0.1,
    since: str | None = None,
    until: str | None = None,
    details: bool = False,
) -> Iterator[tuple[str, bytes]]:
    """``docker logs -f``: existing records, then new ones until the container stops (or
    ``until`` has passed).

    ``is_running()`` must turn False only once the writer is closed, so that
    everything it wrote is yielded before this returns.
    """
    since_ns = parse_since(since) if since else None
    until_ns = parse_since(until, flag="--until") if until else None
    f: BinaryIO | None = None
    try:
        while True:
            # Sample before reading: whatever was written before it stopped is read below.
            running = is_running()
            if f is None:
                try:
                    f = open(path, "rb")  # noqa: SIM115 - closed in finally
                except FileNotFoundError:
                    if not running:
                        return
                    time.sleep(poll)
                    continue
                _start_offset(f, tail)
            if os.fstat(f.fileno()).st_size < f.tell():
                f.seek(0)  # truncated under us: start over
            while True:
                pos = f.tell()
                line = f.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    f.seek(pos)  # torn record: retry once complete
                    break
                record = _decode(line, timestamps, since_ns, until_ns, details)
                if record is not None:
                    yield record
            if not running or (until_ns is not None and time.time_ns() > until_ns):
                return
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()
