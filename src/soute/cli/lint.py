"""soute lint: check a Dockerfile for good practices."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EPILOG = """\
Each finding is printed as FILE:LINE ID NAME: MESSAGE (fix: ...). Rules are named by id
(SOU001) or name (AptListsNotRemoved); BuildKit's checks keep BuildKit's names, and a
'# check=skip=RULE,...;error=true' directive in the Dockerfile is honoured as BuildKit does
(skip=all skips every rule; error=true reports the findings as errors).

Exit status: 0 when no finding is left after --ignore and check=skip; 1 when any is (as
hadolint and 'docker build --check' do), or when the Dockerfile cannot be read or parsed.
"""


def configure_lint(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "-f", "--file", default="Dockerfile", help="the Dockerfile ('-' reads standard input)"
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text",
        help="text: one finding per line; json: an object with the file and its findings",
    )  # fmt: skip
    parser.add_argument(
        "--ignore", action="append", default=[], metavar="RULE",
        help="leave out a rule (id or name); may be repeated",
    )  # fmt: skip
    parser.add_argument(
        "--context", metavar="DIR",
        help="the build context, where startup scripts and .dockerignore are read "
        "(default: the Dockerfile's directory; none with -f -)",
    )  # fmt: skip
    parser.add_argument("--rules", action="store_true", help="list the rules and exit")


def run_lint(ctx: Any, args: argparse.Namespace) -> int:
    from soute.cli.parse import read_dockerfile
    from soute.dockerfile import parse
    from soute.errors import SouteError
    from soute.lint import lint
    from soute.lint.rules import RULES, find_rule

    if getattr(args, "rules", False):
        for r in RULES:
            sys.stdout.write(f"{r.id}  {r.name:<32} {r.level:<8} {r.summary}\n")
        return 0
    for key in args.ignore:
        if find_rule(key) is None:
            raise SouteError(f"--ignore {key}: no such rule", "see 'soute lint --rules'")
    if args.file == "-":
        source: bytes = sys.stdin.buffer.read()
        name = "Dockerfile"
        context = Path(args.context) if args.context else None
    else:
        name = args.file
        source = read_dockerfile(name)
        context = Path(args.context) if args.context else Path(name).resolve().parent
    df = parse(source, file=name)
    report = lint(df, context_dir=context, ignore=args.ignore)
    if args.format == "json":
        doc = {
            "file": name,
            "findings": [f.as_dict(report.level(f)) for f in report.findings],
            "skipped": report.skipped,
            "error": report.config.error,
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        for f in report.findings:
            sys.stdout.write(
                f"{name}:{f.line} {f.rule.id} {f.rule.name}: {f.message} "
                f"(fix: {f.fix or f.rule.fix})\n"
            )
    return 1 if report.failed else 0
