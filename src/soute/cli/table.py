"""docker's table output: Go's tabwriter with minimum width 10 and padding 3."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from soute.errors import SouteError


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


_FIELD = re.compile(r"\{\{\s*(?:json\s+)?\.([A-Za-z]*)\s*\}\}")


def render_template(template: str, records: Sequence[dict[str, str]],
                    titles: dict[str, str] | None = None) -> str:
    """docker's ``--format``: a Go template (``{{.Field}}``, ``{{json .}}``, functions,
    pipes...), ``\\t``, and the ``table`` prefix (headers, aligned). ``titles``: the
    command's own column titles (``ID`` is ``IMAGE ID`` for ``images``)."""
    from soute.image.gojson import dumps

    text = template.replace("\\t", "\t").replace("\\n", "\n")
    table = text.startswith("table")
    if table:
        text = text[5:].lstrip()
    for name in _FIELD.findall(text):
        if name and records and name not in records[0]:
            raise SouteError(f"template: can't evaluate field {name}",
                             f"fields: {', '.join(records[0])}")

    def fill(record: dict[str, str]) -> str:
        def field(match: re.Match[str]) -> str:
            name = match[1]
            if not name:
                return dumps(record)
            value = record.get(name, "")
            return dumps(value) if match[0].replace(" ", "").startswith("{{json") else value
        return _FIELD.sub(field, text)

    def title(name: str) -> str:
        return (titles or {}).get(name) or _header(name)

    if "{{" in _FIELD.sub("", text):  # more than fields: the whole template language
        from soute.cli.gotemplate import TemplateError, check, render

        try:
            check(text)
        except TemplateError as e:
            raise SouteError(f"template: cannot parse {template!r}: {e.message}") from None
        fill = lambda record: render(text, record)  # noqa: E731
        # docker's header: the template run on a row whose every field is its title (the
        # fields the template names, when there is no row to take them from).
        names = records[0] if records else re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)", text)
        header = render(text, {k: title(k) for k in names}, strict=False) if table else ""
    else:
        header = _FIELD.sub(lambda m: title(m[1]), text)
    if not table:
        return "".join(fill(r) + "\n" for r in records)
    if "\t" not in text:
        return "\n".join([header, *(fill(r) for r in records)]) + "\n"
    return format_table(header.split("\t"), [fill(r).split("\t") for r in records])


def _header(name: str) -> str:
    """docker's column titles: ``ID`` → ``CONTAINER ID``, ``RunningFor`` → ``CREATED``..."""
    special = {"ID": "CONTAINER ID", "RunningFor": "CREATED", "CreatedAt": "CREATED AT",
               "Names": "NAMES"}
    return special.get(name, re.sub(r"(?<!^)(?=[A-Z])", " ", name).upper())
