"""Cases, trials and the loop that runs them: tools alternate, one warm-up, medians."""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from .system import Failed, Sample

# Under --quick, a peer that no target compares with and whose counted run took longer than
# this is counted once: the slow peers of the copy workload would otherwise take most of the
# quick run, for ratios far from any target.
QUICK_SLOW_SECONDS = 15.0
# A failed run is tried again this many times before the tool is n/a for the case: docker's
# legacy builder here fails now and then with "stat /bin/sh: no such file or directory".
RETRIES = 2


def _nothing() -> None:
    pass


@dataclass
class Trial:
    """One tool's part of a case: ``run`` is timed; ``before`` and ``after`` are not."""

    run: Callable[[], Sample]
    before: Callable[[], None] = _nothing
    after: Callable[[], None] = _nothing


@dataclass
class Case:
    workload: str  # "copy"
    name: str  # "cold"
    title: str  # "copy, cold (--no-cache)"
    trials: dict[str, Trial]
    na: dict[str, str] = field(default_factory=dict)  # tool -> why it cannot take part
    reference: str | None = None  # the peer a target compares soute with
    cold: bool = False  # no warm-up under --quick (its runs are alike anyway)
    once_quick: bool = False  # a single run under --quick (apache cold: apt dominates)
    size: int | None = None  # bytes each run processes: the report then shows MB/s

    @property
    def key(self) -> str:
        return f"{self.workload}.{self.name}"


@dataclass
class Outcome:
    samples: list[Sample] = field(default_factory=list)
    na: str | None = None
    failures: list[str] = field(default_factory=list)  # runs that failed and were retried

    @property
    def median(self) -> float | None:
        if self.na is not None or not self.samples:
            return None
        return statistics.median(s.seconds for s in self.samples)


def run_case(case: Case, *, runs: int, quick: bool) -> dict[str, Outcome]:
    """Run every trial (a warm-up, then ``runs`` counted times), the tools taking turns:
    the order rotates each round, so none always runs right after the same other. A failure
    makes that tool n/a for the case, with the reason.

    Under ``quick``: cold cases have no warm-up, ``once_quick`` cases one run; elsewhere
    only soute and the case's reference peer warm up, and another peer whose counted run
    took longer than QUICK_SLOW_SECONDS is counted once."""
    # What earlier cases (and their prunes) left dirty goes to disk now, not during this
    # case's runs: a few seconds of writeback behind it slowed every tool's small writes and
    # syncs by tens of milliseconds, more for whichever tool ran first.
    os.sync()
    keys = {"soute", case.reference}
    warmups = {name: int(not quick or (not case.cold and not case.once_quick and name in keys))
               for name in case.trials}
    wanted = {name: 1 if quick and case.once_quick else runs for name in case.trials}
    outcomes = {name: Outcome() for name in case.trials}
    for name, reason in case.na.items():
        outcomes[name] = Outcome(na=reason)
    attempts = dict.fromkeys(case.trials, 0)
    order = list(case.trials)
    round_ = 0
    while True:
        pending = [n for n in order if outcomes[n].na is None
                   and attempts[n] < warmups[n] + wanted[n]]
        if not pending:
            return outcomes
        shift = round_ % len(order)
        round_ += 1
        for name in order[shift:] + order[:shift]:
            if name not in pending:
                continue
            outcome = outcomes[name]
            warm = attempts[name] < warmups[name]
            attempts[name] += 1
            label = "warm-up" if warm else f"{len(outcome.samples) + 1}/{wanted[name]}"
            trial = case.trials[name]
            try:
                trial.before()
                # What the previous run left dirty is written back now, not during this one.
                os.sync()
                sample = trial.run()
                trial.after()
            except Failed as e:
                _log(case, name, label, str(e))
                outcome.failures.append(str(e))
                if len(outcome.failures) > RETRIES:
                    outcome.na = str(e)
                else:
                    attempts[name] -= 1  # try that run again
                continue
            _log(case, name, label, _show(sample, case.size))
            if warm:
                continue
            outcome.samples.append(sample)
            if quick and name not in keys and sample.seconds > QUICK_SLOW_SECONDS:
                wanted[name] = len(outcome.samples)


def _show(sample: Sample, size: int | None) -> str:
    text = f"{sample.seconds:.3f} s"
    if size:
        text += f" ({size / sample.seconds / 1e6:.0f} MB/s)"
    if sample.rss_tree is not None:
        text += f", peak RSS {sample.rss_tree / 2**20:.0f} MiB"
    return text


def _log(case: Case, tool: str, run: str, text: str) -> None:
    print(f"  {case.title:<34} {tool:<9} {run:>7}  {text}", file=sys.stderr, flush=True)
