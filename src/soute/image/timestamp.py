"""RFC 3339 times with nanoseconds and their UTC offset, written as Go writes them.

Image configs carry ``created`` times such as ``2024-01-02T03:04:05.123456789Z``.
:class:`datetime.datetime` keeps only microseconds, and the offset is part of the bytes we hash,
so we keep Unix seconds, nanoseconds and the offset ourselves.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

from soute.errors import SouteError

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY = 86400


@dataclass(frozen=True)
class Timestamp:
    """An instant (``seconds`` since the Unix epoch plus ``nanos``) and the UTC ``offset`` in
    seconds it was written with. Equality compares all three, as the bytes differ; order
    compares instants."""

    seconds: int
    nanos: int = 0
    offset: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.nanos < 1_000_000_000:
            raise ValueError(f"nanos out of range: {self.nanos}")

    @classmethod
    def parse(cls, text: str) -> Timestamp:
        """Parse an RFC 3339 time (``T`` or a space, ``Z`` or ``±hh:mm``, any fraction; digits
        past nanoseconds are dropped, as Go does)."""
        m = _RFC3339.fullmatch(text)
        if not m:
            raise SouteError(f"invalid time {text!r}", hint="use RFC 3339: 2024-01-02T03:04:05Z")
        year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
        try:
            ordinal = date(year, month, day).toordinal()
        except ValueError:
            raise SouteError(f"invalid time {text!r}: day out of range") from None
        if hour > 23 or minute > 59 or second > 59:
            raise SouteError(f"invalid time {text!r}: clock out of range")
        nanos = int((m.group(7) or "0")[:9].ljust(9, "0"))
        offset = 0
        if m.group(9):
            oh, om = int(m.group(10)), int(m.group(11))
            if oh > 23 or om > 59:
                raise SouteError(f"invalid time {text!r}: offset out of range")
            offset = (oh * 3600 + om * 60) * (-1 if m.group(9) == "-" else 1)
        local = (ordinal - _EPOCH_ORDINAL) * _DAY + hour * 3600 + minute * 60 + second
        return cls(local - offset, nanos, offset)

    @classmethod
    def from_datetime(cls, dt: datetime) -> Timestamp:
        """From a datetime; a naive one is taken as UTC."""
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        off = dt.utcoffset() or timedelta(0)
        offset = off.days * _DAY + off.seconds
        local = dt.replace(tzinfo=None)
        seconds = (local.toordinal() - _EPOCH_ORDINAL) * _DAY + (
            local.hour * 3600 + local.minute * 60 + local.second
        )
        return cls(seconds - offset, local.microsecond * 1000, offset)

    @classmethod
    def from_unix(cls, seconds: int, nanos: int = 0) -> Timestamp:
        """A UTC time from Unix seconds (SOURCE_DATE_EPOCH, file mtimes)."""
        return cls(seconds, nanos, 0)

    @classmethod
    def now(cls) -> Timestamp:
        """The current time in UTC, to the nanosecond when the clock has it."""
        ns = time.time_ns()
        return cls(ns // 1_000_000_000, ns % 1_000_000_000, 0)

    @property
    def instant(self) -> tuple[int, int]:
        """``(seconds, nanos)``: what to sort and compare instants by."""
        return (self.seconds, self.nanos)

    @property
    def unix_nanos(self) -> int:
        return self.seconds * 1_000_000_000 + self.nanos

    def __lt__(self, other: Timestamp) -> bool:
        return self.instant < other.instant

    def __le__(self, other: Timestamp) -> bool:
        return self.instant <= other.instant

    def __gt__(self, other: Timestamp) -> bool:
        return self.instant > other.instant

    def __ge__(self, other: Timestamp) -> bool:
        return self.instant >= other.instant

    def to_datetime(self) -> datetime:
        """An aware datetime in the written offset (microseconds: nanoseconds are cut)."""
        tz = UTC if self.offset == 0 else timezone(timedelta(seconds=self.offset))
        base = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            seconds=self.seconds, microseconds=self.nanos // 1000
        )
        return base.astimezone(tz)

    def utc(self) -> Timestamp:
        """The same instant written in UTC."""
        return Timestamp(self.seconds, self.nanos, 0)

    def format(self) -> str:
        """RFC 3339 with nanoseconds as Go's ``time.RFC3339Nano`` writes it: trailing zeros of
        the fraction dropped (no fraction at all for whole seconds), ``Z`` for UTC."""
        local = self.seconds + self.offset
        days, secs = divmod(local, _DAY)
        try:
            d = date.fromordinal(_EPOCH_ORDINAL + days)
        except (ValueError, OverflowError):
            raise SouteError(f"time out of range: {self.seconds}s since 1970") from None
        hh, rest = divmod(secs, 3600)
        mm, ss = divmod(rest, 60)
        frac = f".{self.nanos:09d}".rstrip("0") if self.nanos else ""
        if self.offset == 0:
            zone = "Z"
        else:
            sign = "-" if self.offset < 0 else "+"
            oh, om = divmod(abs(self.offset) // 60, 60)
            zone = f"{sign}{oh:02d}:{om:02d}"
        return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{hh:02d}:{mm:02d}:{ss:02d}{frac}{zone}"

    def __str__(self) -> str:
        return self.format()


# Go's zero time.Time, which docker prints for times it never set (``LastTagTime``).
GO_ZERO_TIME = Timestamp.parse("0001-01-01T00:00:00Z")
