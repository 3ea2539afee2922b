"""Ways to show parsed Dockerfile nodes: BuildKit's AST dump, JSON, and a readable listing."""

from __future__ import annotations

import json
from typing import Any

from soute.dockerfile.parser import Node, ParseResult


def node_record(node: Node) -> dict[str, Any]:
    """What BuildKit's parser node holds, flattened as the ``dockerfile`` package does.

    For ONBUILD, ``sub_cmd``, ``json`` and ``value`` describe the nested instruction; its
    flags are kept (after any flags of ONBUILD itself), where that package drops them.
    """
    inner = node.sub if node.sub is not None else node
    flags = node.flags + node.sub.flags if node.sub is not None else node.flags
    return {
        "cmd": node.cmd,
        "sub_cmd": node.sub.cmd if node.sub is not None else None,
        "json": inner.json,
        "original": node.original,
        "start_line": node.start_line,
        "end_line": node.end_line,
        "flags": list(flags),
        # A nested ONBUILD is held as one empty node whose child is the instruction.
        "value": [""] if inner.sub is not None else list(inner.args),
        "heredocs": [
            {"name": h.name, "file_descriptor": h.file_descriptor, "content": h.content}
            for h in node.heredocs
        ],
    }


def to_json(result: ParseResult) -> str:
    return json.dumps([node_record(n) for n in result.nodes], indent=2, ensure_ascii=False)


def _body(node: Node) -> str:
    if node.sub is not None:
        return _instruction(node.sub)
    if node.json:
        return json.dumps(node.args, ensure_ascii=False)
    if node.name in ("env", "label") and len(node.args) % 3 == 0:
        pairs = [node.args[i : i + 3] for i in range(0, len(node.args), 3)]
        return " ".join(f"{k}={v}" if sep else f"{k} {v}" for k, v, sep in pairs)
    return " ".join(node.args)


def _instruction(node: Node) -> str:
    parts = [node.cmd.upper(), *node.flags]
    body = _body(node)
    if body:
        parts.append(body)
    return " ".join(parts)


def to_text(result: ParseResult) -> str:
    """One line per instruction with its line range; heredoc bodies indented below."""
    out = []
    width = len(str(result.nodes[-1].end_line)) if result.nodes else 1
    for node in result.nodes:
        where = (
            f"{node.start_line}"
            if node.start_line == node.end_line
            else f"{node.start_line}-{node.end_line}"
        )
        out.append(f"{where:>{2 * width + 1}}  {_instruction(node)}")
        for doc in node.heredocs:
            out.extend(f"{'':>{2 * width + 1}}  | {line}" for line in doc.content.splitlines())
            out.append(f"{'':>{2 * width + 1}}  | {doc.name}")
    return "\n".join(out) + "\n"
