"""soute analyze: an image's layers, its wasted bytes, an efficiency score and what to fix."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soute.lint.analyze import Analysis, Check

EPILOG = """\
Wasted bytes are the content of files that a later layer hides: written again (shadowed) or
deleted (whiteout, opaque directory). They stay in the layer that added them, so they are
stored, pulled and pushed for nothing. Efficiency is 1 - wasted / (sum of the layer sizes).
Suggestions name the 'soute lint' rule that catches their cause in the Dockerfile.

With --ci the exit status is 1 when the efficiency is below --lowest-efficiency (default 0.9)
or the wasted bytes exceed --highest-wasted-bytes (default: no limit; 1000, 20MB, 20MiB),
and the failed threshold is named; 0 otherwise.
"""


def configure_analyze(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument(
        "--format", choices=("text", "json"), default="text",
        help="text: a report (layers, waste, score, suggestions); json: one object",
    )  # fmt: skip
    parser.add_argument(
        "--top", type=int, default=10, metavar="N",
        help="show the N largest wasted files and directories (default 10; 0: all)",
    )  # fmt: skip
    parser.add_argument("--ci", action="store_true",
                        help="check the thresholds below; exit 1 when one is passed")
    parser.add_argument("--lowest-efficiency", metavar="R",
                        help="the lowest efficiency --ci accepts (0 to 1, or N%%; default 0.9)")
    parser.add_argument("--highest-wasted-bytes", metavar="N",
                        help="the most wasted bytes --ci accepts (1000, 20MB, 20MiB; "
                             "default: no limit)")


def run_analyze(ctx: Any, args: argparse.Namespace) -> int:
    from soute.errors import SouteError
    from soute.lint.analyze import (
        DEFAULT_LOWEST_EFFICIENCY,
        analyze_image,
        ci_checks,
        parse_ratio,
        parse_size,
    )
    from soute.store.names import resolve

    # Thresholds first: a typo should not cost the time of reading every layer.
    lowest, highest = DEFAULT_LOWEST_EFFICIENCY, None
    for opt, value in (("--lowest-efficiency", args.lowest_efficiency),
                       ("--highest-wasted-bytes", args.highest_wasted_bytes)):
        if value is not None and not args.ci:
            raise SouteError(f"{opt} is a --ci threshold", f"add --ci: soute analyze --ci {opt}")
    try:
        if args.lowest_efficiency is not None:
            lowest = parse_ratio(args.lowest_efficiency)
    except SouteError as e:
        raise SouteError(f"--lowest-efficiency: {e}") from None
    try:
        if args.highest_wasted_bytes is not None:
            highest = parse_size(args.highest_wasted_bytes)
    except SouteError as e:
        raise SouteError(f"--highest-wasted-bytes: {e}") from None
    if args.top < 0:
        raise SouteError("--top: must be 0 or more")

    store = ctx.store()
    analysis = analyze_image(store, resolve(store, args.image))
    checks = ci_checks(analysis, lowest, highest) if args.ci else []
    if args.format == "json":
        doc = analysis.as_dict(top=args.top)
        if args.ci:
            doc["ci"] = {"passed": all(c.passed for c in checks),
                         "checks": [c.as_dict() for c in checks]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        for c in checks:
            if not c.passed:  # stdout stays one JSON document; CI logs still say why
                print(f"soute analyze: FAIL {c.name}: {c.message}", file=sys.stderr)
    else:
        sys.stdout.write(text_report(analysis, args.top, checks, args.image))
    return 0 if all(c.passed for c in checks) else 1


def text_report(a: Analysis, top: int, checks: list[Check], name: str) -> str:
    from soute.cli.table import format_table
    from soute.image.inspect import ellipsis, human_size

    out: list[str] = []
    short = a.image.removeprefix("sha256:")[:12]
    out.append(f"Image: {name} ({short}), {len(a.layers)} layers, "
               f"{human_size(a.total_size)}\n\n")
    out.append(format_table(
        ["LAYER", "SIZE", "ADDED", "CHANGED", "REMOVED", "WASTED", "CREATED BY"],
        [[str(layer.index), human_size(layer.size), str(layer.added), str(layer.changed),
          str(layer.removed), human_size(layer.wasted),
          ellipsis(layer.instruction, 60) or "<no history>"] for layer in a.layers],
    ))

    files = a.wasted_files
    noun = "file" if len(files) == 1 else "files"
    out.append(f"\nWasted: {human_size(a.wasted)} ({a.wasted} bytes) in {len(files)} {noun}\n")
    if files:
        shown = files[:top] if top > 0 else files
        out.append(format_table(
            ["SIZE", "HOW", "ADDED BY", "HIDDEN BY", "PATH"],
            [[human_size(w.size), w.how, str(w.added_by), str(w.hidden_by), w.path]
             for w in shown],
        ))
        if len(shown) < len(files):
            groups = a.groups()
            shown_groups = groups[:top] if top > 0 else groups
            out.append(f"... {len(files) - len(shown)} more; by directory:\n")
            out.append(format_table(
                ["SIZE", "FILES", "ADDED BY", "HIDDEN BY", "DIRECTORY"],
                [[human_size(g.size), str(g.files), str(g.added_by), str(g.hidden_by), g.path]
                 for g in shown_groups],
            ))

    if a.records:
        size = sum(w.size for w in a.records)
        out.append(f"\nPackage records rewritten (not waste: every install does it): "
                   f"{human_size(size)} in {len(a.records)} files\n")
    out.append(f"\nEfficiency: {a.efficiency:.2%} (1 - wasted / total layer bytes)\n")
    if a.suggestions:
        out.append("\nSuggestions:\n")
        from soute.lint.rules import find_rule

        for s in a.suggestions:
            rule = find_rule(s.rule) if s.rule else None
            label = f"{rule.id} {rule.name}: " if rule else ""
            out.append(f"- {label}{s.message} (fix: {s.fix})\n")
    if checks:
        out.append("\nCI:\n")
        for c in checks:
            out.append(f"- {'PASS' if c.passed else 'FAIL'} {c.name}: {c.message}\n")
        out.append("Result: " + ("PASS" if all(c.passed for c in checks) else "FAIL") + "\n")
    return "".join(out)
