"""HEALTHCHECK semantics as docker documents them.

The image config carries ``Healthcheck`` (durations in nanoseconds, 0 meaning
"use the default"); ``docker run --health-*`` flags override it; a monitor
thread probes the container and keeps a ``State.Health``-shaped record.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from soute.errors import SouteError

# docker's defaults (daemon/health.go).
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_START_PERIOD = 0.0
DEFAULT_START_INTERVAL = 5.0
DEFAULT_RETRIES = 3
MAX_LOG_ENTRIES = 5
MAX_OUTPUT_LEN = 4096

STARTING = "starting"
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"

_NS = 1_000_000_000
_UNITS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign, as Go accepts
    "\u03bcs": 1_000,  # Greek mu, as Go accepts
    "ms": 1_000_000,
    "s": _NS,
    "m": 60 * _NS,
    "h": 3600 * _NS,
}
_COMPONENT = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_duration_ns(text: str) -> int:
    """Parse a Go duration string ("30s", "1m30s", "500ms", "1.5h") to nanoseconds."""
    s = text.strip()
    sign = 1
    if s.startswith(("+", "-")):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    pos = 0
    total = Fraction(0)
    while pos < len(s):
        m = _COMPONENT.match(s, pos)
        if not m:
            break
        total += Fraction(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        hint = "use a number with a unit, e.g. 30s, 1m30s or 500ms"
        if re.fullmatch(r"\d+(\.\d*)?", s):
            hint = "missing unit; " + hint
        raise SouteError(f'invalid duration "{text}"', hint=hint)
    return sign * int(total)


def parse_duration(text: str) -> float:
    """Parse a Go duration string to seconds (raises SouteError on bad input)."""
    return parse_duration_ns(text) / _NS


def format_duration(seconds: float) -> str:
    """Seconds rendered like Go's ``time.Duration.String()`` ("30s", "1m30s", "50ms")."""
    ns = round(seconds * _NS)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def frac(value: int, scale: int) -> str:
        whole, rest = divmod(value, scale)
        digits = str(rest).rjust(len(str(scale)) - 1, "0").rstrip("0")
        return f"{whole}.{digits}" if digits else str(whole)

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{frac(ns, 1_000)}\u00b5s"
    if ns < _NS:
        return f"{sign}{frac(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3600 * _NS)
    minutes, rest = divmod(rest, 60 * _NS)
    out = frac(rest, _NS) + "s"
    if hours or minutes:
        out = f"{minutes}m{out}"
    if hours:
        out = f"{hours}h{out}"
    return sign + out


def _rfc3339nano(ns: int) -> str:
    """Wall time as Go marshals a time.Time: RFC3339Nano, trailing zeros trimmed."""
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // _NS))
    digits = f"{ns % _NS:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def _seconds_or_default(value: Any, default: float) -> float:
    """Image-config durations are nanoseconds; 0 or absent means default."""
    if not value:
        return default
    return int(value) / _NS


@dataclass
class HealthConfig:
    """A resolved health check; ``test`` keeps docker's form: ["CMD-SHELL", cmd] or ["CMD", ...]."""

    test: list[str]
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    start_period: float = DEFAULT_START_PERIOD
    start_interval: float = DEFAULT_START_INTERVAL
    retries: int = DEFAULT_RETRIES

    @staticmethod
    def from_image(healthcheck: dict[str, Any] | None) -> HealthConfig | None:
        """The image config's ``Healthcheck``; None when absent, empty or ["NONE"]."""
        if not healthcheck:
            return None
        test = list(healthcheck.get("Test") or [])
        # An empty Test means "inherit"; in a final image there is nothing left to inherit.
        if not test or test[0] == "NONE":
            return None
        if test[0] not in ("CMD", "CMD-SHELL"):
            raise SouteError(
                f"unsupported health check test {test[0]!r}",
                hint="Healthcheck.Test must start with CMD, CMD-SHELL or NONE",
            )
        return HealthConfig(
            test=test,
            interval=_seconds_or_default(healthcheck.get("Interval"), DEFAULT_INTERVAL),
            timeout=_seconds_or_default(healthcheck.get("Timeout"), DEFAULT_TIMEOUT),
            start_period=_seconds_or_default(healthcheck.get("StartPeriod"), DEFAULT_START_PERIOD),
            start_interval=_seconds_or_default(
                healthcheck.get("StartInterval"), DEFAULT_START_INTERVAL
            ),
            retries=int(healthcheck.get("Retries") or DEFAULT_RETRIES),
        )

    @staticmethod
    def with_overrides(
        base: HealthConfig | None,
        cmd: str | None = None,
        interval: str | float | None = None,
        timeout: str | float | None = None,
        start_period: str | float | None = None,
        retries: int | None = None,
        no_healthcheck: bool = False,
        start_interval: str | float | None = None,
    ) -> HealthConfig | None:
        """Apply ``docker run`` flags to the image's check (``base``, possibly None).

        Durations are docker duration strings (or seconds); 0 means "default", as
        in docker. Options without ``--health-cmd`` tune the image's own test.
        """
        flags = {
            "--health-cmd": cmd,
            "--health-interval": interval,
            "--health-timeout": timeout,
            "--health-start-period": start_period,
            "--health-start-interval": start_interval,
            "--health-retries": retries,
        }
        if no_healthcheck:
            if any(v is not None for v in flags.values()):
                raise SouteError("--no-healthcheck conflicts with --health-* options")
            return None
        if cmd is not None and not cmd.strip():
            raise SouteError("--health-cmd must not be empty")
        if retries is not None and retries < 0:
            raise SouteError("--health-retries cannot be negative")

        def dur(flag: str, value: str | float | None, current: float, default: float) -> float:
            if value is None:
                return current
            secs = parse_duration(value) if isinstance(value, str) else float(value)
            if secs < 0:
                raise SouteError(f"{flag} cannot be negative")
            if 0 < secs < 0.001:
                raise SouteError(f"{flag} cannot be less than 1ms")
            return secs or default

        test = ["CMD-SHELL", cmd] if cmd is not None else (base.test if base else None)
        if test is None:
            return None  # tuning flags, but nothing to run
        cur = base or HealthConfig(test=test)
        return HealthConfig(
            test=list(test),
            interval=dur("--health-interval", interval, cur.interval, DEFAULT_INTERVAL),
            timeout=dur("--health-timeout", timeout, cur.timeout, DEFAULT_TIMEOUT),
            start_period=dur(
                "--health-start-period", start_period, cur.start_period, DEFAULT_START_PERIOD
            ),
            start_interval=dur(
                "--health-start-interval",
                start_interval,
                cur.start_interval,
                DEFAULT_START_INTERVAL,
            ),
            retries=cur.retries if retries is None else (retries or DEFAULT_RETRIES),
        )


def argv(config: HealthConfig, shell: list[str]) -> list[str]:
    """The probe's command line: CMD-SHELL runs through ``shell`` (e.g. ["/bin/sh", "-c"])."""
    kind, *rest = config.test
    if kind == "CMD-SHELL":
        return [*shell, " ".join(rest)]
    if kind == "CMD":
        if not rest:
            raise SouteError("health check CMD has no command")
        return rest
    raise SouteError(f"unsupported health check test {kind!r}")


@dataclass
class HealthState:
    """``State.Health`` of ``docker inspect``."""

    status: str = STARTING
    failing_streak: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict in docker's inspect shape."""
        return {
            "Status": self.status,
            "FailingStreak": self.failing_streak,
            "Log": [dict(entry) for entry in self.log],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> HealthState:
        """Inverse of ``to_json`` (also accepts the JSON text)."""
        if isinstance(data, str):
            data = json.loads(data)
        assert isinstance(data, dict)
        return cls(
            status=str(data.get("Status") or STARTING),
            failing_streak=int(data.get("FailingStreak") or 0),
            log=[dict(entry) for entry in data.get("Log") or []],
        )

    def copy(self) -> HealthState:
        return HealthState(self.status, self.failing_streak, [dict(e) for e in self.log])


def ps_status(state: HealthState | None) -> str:
    """The suffix ``docker ps`` prints after "Up 3 seconds"."""
    if state is None:
        return ""
    if state.status == STARTING:
        return " (health: starting)"
    return f" ({state.status})"


Probe = Callable[[list[str], float], tuple[int, bytes]]


class HealthMonitor:
    """Runs the probe on docker's schedule and keeps a ``HealthState``.

    ``probe(argv, timeout)`` returns (exit code, output); it should honour the
    timeout itself (raising TimeoutError/TimeoutExpired is fine). The monitor
    also stops waiting after ``timeout`` so a stuck probe cannot stall it; such
    a probe is abandoned on its (daemon) thread.
    """

    def __init__(
        self,
        config: HealthConfig,
        probe: Probe,
        on_change: Callable[[HealthState], None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        shell: list[str] | None = None,
    ) -> None:
        self.config = config
        self.state = HealthState()
        self._probe = probe
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._argv = argv(config, shell or ["/bin/sh", "-c"])
        self._lock = threading.Lock()

    def _in_start_period(self, started: float, at: float) -> bool:
        return at - started < self.config.start_period

    def _next_interval(self, started: float) -> float:
        # docker probes every start_interval while still "starting" in the start period.
        if self._in_start_period(started, self._clock()) and self.state.status == STARTING:
            return self.config.start_interval
        return self.config.interval

    def _wait(self, stop: threading.Event, seconds: float) -> bool:
        """Sleep; True when asked to stop."""
        if self._sleep is None:
            return stop.wait(seconds)
        self._sleep(seconds)
        return stop.is_set()

    def _run_probe(self) -> tuple[int, bytes]:
        timeout = self.config.timeout
        timed_out = (-1, f"Health check exceeded timeout ({format_duration(timeout)})".encode())
        box: list[tuple[int, bytes]] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                box.append(self._probe(self._argv, timeout))
            except BaseException as exc:  # reported as the probe's result, like docker
                errors.append(exc)

        worker = threading.Thread(target=target, name="health-probe", daemon=True)
        worker.start()
        worker.join(timeout)
        if box:
            return box[0]
        if errors:
            exc = errors[0]
            if isinstance(exc, TimeoutError | subprocess.TimeoutExpired):
                return timed_out
            return -1, str(exc).encode()
        return timed_out

    def probe_once(self, started: float, stop: threading.Event | None = None) -> HealthState | None:
        """Run one probe and fold its result into the state (returns a copy).

        None when ``stop`` was set meanwhile: docker drops a probe cancelled by
        the container stopping.
        """
        start_ns = time.time_ns()
        probe_at = self._clock()
        code, output = self._run_probe()
        end_ns = time.time_ns()
        if stop is not None and stop.is_set():
            return None
        text = output[:MAX_OUTPUT_LEN].decode("utf-8", "replace")
        with self._lock:
            st = self.state
            st.log.append(
                {
                    "Start": _rfc3339nano(start_ns),
                    "End": _rfc3339nano(end_ns),
                    "ExitCode": code,
                    "Output": text,
                }
            )
            del st.log[:-MAX_LOG_ENTRIES]
            if code == 0:
                st.status = HEALTHY
                st.failing_streak = 0
            # Failures while still "starting" inside the start period don't count.
            elif not (st.status == STARTING and self._in_start_period(started, probe_at)):
                st.failing_streak += 1
                if st.failing_streak >= (self.config.retries or DEFAULT_RETRIES):
                    st.status = UNHEALTHY
            return st.copy()

    def run(self, stop: threading.Event) -> None:
        """Probe until ``stop`` is set; the container is taken to start now."""
        started = self._clock()
        while not self._wait(stop, self._next_interval(started)):
            snapshot = self.probe_once(started, stop)
            if snapshot is None:
                return
            self._on_change(snapshot)
