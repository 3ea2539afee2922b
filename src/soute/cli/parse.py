"""soute parse: read a Dockerfile as BuildKit does and print it."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def configure_parse(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--file", default="Dockerfile", help="the Dockerfile ('-' reads standard input)"
    )
    parser.add_argument(
        "--format",
        choices=("text", "json", "ast"),
        default="text",
        help="text: checked instructions, one per line; json: BuildKit's parser nodes; "
        "ast: BuildKit's AST dump",
    )


def run_parse(ctx: Any, args: argparse.Namespace) -> int:
    from soute.dockerfile import parse
    from soute.dockerfile.render import to_json, to_text

    if args.file == "-":
        source: bytes = sys.stdin.buffer.read()
        name = "Dockerfile"
    else:
        name = args.file
        source = read_dockerfile(name)
    # ast and json show the parser's nodes as BuildKit's parser holds them; text also checks
    # every instruction (flags, arguments, stages) as a build would.
    if args.format == "text":
        df = parse(source, file=name)
        sys.stdout.write(to_text(df.result))
    else:
        from soute.dockerfile.parser import parse_bytes

        result = parse_bytes(source, file=name)
        sys.stdout.write(result.dump() if args.format == "ast" else to_json(result) + "\n")
    return 0


def read_dockerfile(path: str) -> bytes:
    from soute.errors import SouteError

    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SouteError(
            f"{path}: no such file", "name the Dockerfile with -f, or '-f -' for standard input"
        ) from None
    except IsADirectoryError:
        raise SouteError(f"{path}: is a directory", f"use -f {path}/Dockerfile") from None
    except PermissionError:
        raise SouteError(f"{path}: permission denied", "check the file's mode") from None
