"""soute lint: good-practice checks on a Dockerfile.

``lint(df, ...)`` runs every rule of :mod:`soute.lint.rules` (the checks are in
:mod:`soute.lint.checks`) and applies the ``# check=skip=...;error=true`` directive with
BuildKit's meaning, plus the caller's ignore list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from soute.errors import SouteError
from soute.lint.rules import RULES, Rule, find_rule

if TYPE_CHECKING:
    from soute.dockerfile.instructions import Dockerfile
    from soute.lint.checks import Finding

__all__ = ["RULES", "CheckConfig", "LintReport", "lint", "parse_check_directive"]


@dataclass
class CheckConfig:
    """The ``# check=`` directive: ``skip=all`` or ``skip=A,B``; ``error=true``."""

    skip_all: bool = False
    skip: frozenset[str] = frozenset()  # rule names or ids, as written
    error: bool = False

    def skips(self, rule: Rule) -> bool:
        if self.skip_all:
            return True
        return any(find_rule(s) is rule for s in self.skip)


def parse_check_directive(text: str) -> CheckConfig:
    """BuildKit's reading of the check directive (linter.ParseLintOptions)."""
    text = text.strip()
    cfg = CheckConfig()
    if not text:
        return cfg
    for part in text.split(";", 2):
        key, eq, value = part.partition("=")
        if not eq:
            raise SouteError(f'invalid check option "{part}"', "write check=skip=RULE;error=true")
        key, value = key.strip(), value.strip()
        if key == "skip":
            if value == "all":
                cfg.skip_all = True
            else:
                cfg.skip = frozenset(v.strip() for v in value.split(","))
        elif key == "experimental":
            pass  # no experimental rules here
        elif key == "error":
            b = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True,
                 "0": False, "f": False, "F": False, "false": False, "FALSE": False,
                 "False": False}.get(value)  # fmt: skip
            if b is None:
                raise SouteError(
                    f'failed to parse check option "{part}"', "error=true or error=false"
                )
            cfg.error = b
        else:
            raise SouteError(f'invalid check option "{key}"', "keys: skip, error, experimental")
    return cfg


@dataclass
class LintReport:
    file: str
    findings: list[Finding]
    config: CheckConfig
    skipped: int = 0  # findings left out by the directive or the ignore list
    unknown_ignores: list[str] = field(default_factory=list)

    def level(self, finding: Finding) -> str:
        return "error" if self.config.error else finding.rule.level

    @property
    def failed(self) -> bool:
        return bool(self.findings)


def lint(
    df: Dockerfile, *, context_dir: Path | None = None, ignore: Iterable[str] = ()
) -> LintReport:
    from soute.lint.checks import run_checks

    cfg = parse_check_directive(df.directives.get("check", ""))
    ignored: set[str] = set()
    unknown: list[str] = []
    for key in ignore:
        rule = find_rule(key)
        if rule is None:
            unknown.append(key)
        else:
            ignored.add(rule.id)
    kept, skipped = [], 0
    for f in run_checks(df, context_dir):
        if f.rule.id in ignored or cfg.skips(f.rule):
            skipped += 1
        else:
            kept.append(f)
    return LintReport(df.file, kept, cfg, skipped, unknown)
