"""docker's table output: Go's tabwriter with minimum width 10 and padding 3."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cols = len(headers)
    widths = [0] * cols
    for row in [headers, *rows]:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell) + 3, 10)
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append(("".join(cells) + row[-1]).rstrip() if cols else "")
    return "\n".join(lines) + "\n"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    sys.stdout.write(format_table(headers, rows))
