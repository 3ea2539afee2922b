"""The targets of issue #7, section 3, and the report: a Markdown table (printed, and written
between markers at the top of ``bench/RESULTS.md``, whose other sections are kept) and
``bench/results.json`` with every sample."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .measure import Case, Outcome

BEGIN = "<!-- scripts/bench: generated section, begin (rewritten by every run) -->"
END = "<!-- scripts/bench: generated section, end -->"
MIB = 2**20

Results = dict[str, tuple[Case, dict[str, Outcome]]]


@dataclass(frozen=True)
class Target:
    text: str
    cases: tuple[str, ...]  # the first of these that was measured
    peer: str | None  # ratio soute/peer at most ``limit``; None: ``kind`` says what
    limit: float
    kind: str = "ratio"  # "ratio" | "mbps" (at least) | "rss" (MiB, at most)


TARGETS = [
    Target("steps cold <= 0.5x BuildKit", ("steps.cold",), "buildkit", 0.5),
    Target("fully cached rebuild (steps) <= 0.8x BuildKit", ("steps.cached",), "buildkit",
           0.8),
    Target("fully cached rebuild (apache) <= 0.8x BuildKit", ("apache.cached",),
           "buildkit", 0.8),
    Target("copy cold <= 0.25x BuildKit", ("copy.cold",), "buildkit", 0.25),
    Target("copy cached <= 0.6x BuildKit", ("copy.cached",), "buildkit", 0.6),
    Target("run latency <= 0.25x docker run", ("run.true",), "docker", 0.25),
    Target("export >= 150 MB/s with gzip", ("export.gzip",), None, 150, "mbps"),
    Target("push <= 1.0x skopeo", ("registry.push",), "skopeo", 1.0),
    Target("pull <= 1.0x skopeo", ("registry.pull",), "skopeo", 1.0),
    Target("peak RSS <= 200 MiB during copy cold", ("copy.cold", "memory.copy-cold"), None,
           200, "rss"),
]


@dataclass(frozen=True)
class Verdict:
    target: Target
    measured: str  # what the table shows: "0.42x", "108 MB/s", "n/a: ..."
    value: float | None
    holds: bool | None  # None: not measured in this run


def ratio(outcomes: dict[str, Outcome], peer: str) -> float | None:
    mine, theirs = outcomes.get("soute"), outcomes.get(peer)
    if mine is None or theirs is None or mine.median is None or theirs.median is None:
        return None
    return mine.median / theirs.median


def rss_peaks(outcome: Outcome) -> list[int]:
    return [s.rss_tree for s in outcome.samples if s.rss_tree is not None]


def judge(results: Results) -> list[Verdict]:
    verdicts = []
    for target in TARGETS:
        found = next((results[k] for k in target.cases if k in results), None)
        if found is None:
            verdicts.append(Verdict(target, "not run", None, None))
            continue
        case, outcomes = found
        soute = outcomes.get("soute")
        if soute is None or soute.median is None:
            why = soute.na if soute is not None and soute.na else "no soute figure"
            verdicts.append(Verdict(target, f"n/a: {why}", None, None))
            continue
        if target.kind == "ratio":
            assert target.peer is not None
            r = ratio(outcomes, target.peer)
            if r is None:
                peer = outcomes.get(target.peer)
                why = peer.na if peer is not None and peer.na else f"no {target.peer} figure"
                verdicts.append(Verdict(target, f"n/a: {why}", None, None))
            else:
                verdicts.append(Verdict(target, f"{r:.2f}x", r, r <= target.limit))
        elif target.kind == "mbps":
            assert case.size is not None
            mbps = case.size / soute.median / 1e6
            verdicts.append(Verdict(target, f"{mbps:.0f} MB/s", mbps, mbps >= target.limit))
        else:
            peaks = rss_peaks(soute)
            if not peaks:
                verdicts.append(Verdict(target, "n/a: not watched", None, None))
                continue
            peak = max(peaks) / MIB
            verdicts.append(Verdict(target, f"{peak:.0f} MiB", peak, peak <= target.limit))
    return verdicts


def _seconds(x: float) -> str:
    if x < 1:
        return f"{x * 1000:.0f} ms"
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def _cell(case: Case, outcomes: dict[str, Outcome], tool: str, runs: int,
          notes: list[str]) -> str:
    outcome = outcomes.get(tool)
    if outcome is None:
        return "–"
    if outcome.median is None:
        reason = outcome.na or "no figure"
        if reason not in notes:
            notes.append(reason)
        return f"n/a [{notes.index(reason) + 1}]"
    median = outcome.median
    text = f"{case.size / median / 1e6:.0f} MB/s" if case.size else _seconds(median)
    if len(outcome.samples) < runs:
        text += f" (n={len(outcome.samples)})"
    if tool != "soute":
        r = ratio(outcomes, tool)
        if r is not None:
            text += f" · **{r:.2f}x**" if r < 1 else f" · {r:.2f}x"
    return text


def table(results: Results, columns: list[tuple[str, str]], runs: int) -> tuple[str, list[str]]:
    """The Markdown table (one row per case, one column per tool) and its n/a notes."""
    notes: list[str] = []
    head = "| case | " + " | ".join(label for _, label in columns) + " |"
    rows = [head, "|" + " --- |" * (len(columns) + 1)]
    for case, outcomes in results.values():
        if case.workload == "memory":
            continue
        cells = [_cell(case, outcomes, name, runs, notes) for name, _ in columns]
        rows.append(f"| {case.title} | " + " | ".join(cells) + " |")
    return "\n".join(rows), notes


def memory_line(results: Results) -> str | None:
    found = next((results[k] for k in ("copy.cold", "memory.copy-cold") if k in results),
                 None)
    if found is None or "soute" not in found[1]:
        return None
    soute = found[1]["soute"]
    peaks = rss_peaks(soute)
    if not peaks:
        return None
    single = [s.rss_max for s in soute.samples if s.rss_max is not None]
    return (f"Peak RSS of soute during copy cold (sum over its process tree, sampled every "
            f"20 ms): median {statistics.median(peaks) / MIB:.0f} MiB, highest "
            f"{max(peaks) / MIB:.0f} MiB over {len(peaks)} runs; largest single process "
            f"{max(single) / MIB:.0f} MiB (getrusage).")


def markdown(meta: dict[str, Any], results: Results, columns: list[tuple[str, str]],
             runs: int) -> str:
    body, notes = table(results, columns, runs)
    verdicts = judge(results)
    machine, versions = meta["machine"], meta["versions"]
    quick = meta["quick"]
    lines = [
        BEGIN,
        f"## Latest run: {meta['date']} (`{meta['command']}`)",
        "",
        f"**Machine**: {machine['os']}, kernel {machine['kernel']}, {machine['cpu']}, "
        f"{machine['cores']} cores, {machine['memory']}, work directory on "
        f"{machine['work_fs']}; load average at the start {machine['load']}. "
        f"Run took {meta['elapsed_minutes']:.1f} min.",
        "",
        "**Versions**: " + "; ".join(f"{k}: {v}" for k, v in versions.items()) + ".",
        "",
        f"Medians of {runs} counted runs per tool after one warm-up run, the tools taking "
        "turns" + (" (`--quick`: cold cases without the warm-up and apache cold run once; "
                   "elsewhere only soute and the peer a target names warm up; and a peer no "
                   "target names is counted once when a run takes over 15 s: the cell then "
                   "says n=1)" if quick else "") +
        ". A peer's cell is its median, then soute's time divided by the peer's (below 1, "
        "in bold: soute is faster). Throughput is the apache image's uncompressed size "
        "divided by the time.",
        "",
        body,
        "",
    ]
    mem = memory_line(results)
    if mem:
        lines += [mem, ""]
    lines += ["### Targets (issue #7, section 3)", "", "| target | measured | holds |",
              "| --- | --- | --- |"]
    for v in verdicts:
        holds = {True: "yes", False: "**no**", None: "–"}[v.holds]
        lines.append(f"| {v.target.text} | {v.measured} | {holds} |")
    if notes:
        lines += ["", "n/a:", ""]
        lines += [f"{i}. {reason}" for i, reason in enumerate(notes, 1)]
    retried = [f"{name}, {case.title}: {len(o.failures)} failed run(s) run again "
               f"({o.failures[0]})"
               for case, outcomes in results.values() for name, o in outcomes.items()
               if o.failures and o.na is None]
    if retried:
        lines += ["", "Failed runs, not counted and run again:", ""]
        lines += [f"- {r}" for r in retried]
    if meta.get("problems"):
        lines += ["", "Workloads that could not run:", ""]
        lines += [f"- {p}" for p in meta["problems"]]
    lines += ["", "How each tool ran: see `bench/README.md`.", END]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, section: str) -> None:
    """Put ``section`` between the markers, or right under the title the first time."""
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + section.rstrip("\n") + tail
    else:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{section}\n{rest.lstrip()}"
    path.write_text(text)


def to_json(meta: dict[str, Any], results: Results) -> dict[str, Any]:
    cases = []
    for case, outcomes in results.values():
        tools: dict[str, Any] = {}
        for name, o in outcomes.items():
            entry: dict[str, Any] = {"na": o.na, "median_s": o.median,
                                     "samples_s": [round(s.seconds, 4) for s in o.samples],
                                     "failed_runs": o.failures}
            if case.size and o.median:
                entry["median_mb_per_s"] = round(case.size / o.median / 1e6, 1)
            peaks = rss_peaks(o)
            if peaks:
                entry["rss_tree_peak_bytes"] = peaks
                entry["rss_single_peak_bytes"] = [s.rss_max for s in o.samples]
            tools[name] = entry
        ratios = {p: round(r, 3) for p in outcomes if p != "soute"
                  if (r := ratio(outcomes, p)) is not None}
        cases.append({"key": case.key, "title": case.title, "size_bytes": case.size,
                      "reference": case.reference, "tools": tools,
                      "ratios_soute_over_peer": ratios})
    targets = [{"target": v.target.text, "measured": v.measured, "value": v.value,
                "holds": v.holds} for v in judge(results)]
    return {**meta, "cases": cases, "targets": targets}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
