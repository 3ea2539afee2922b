"""The ``soute`` command: docker's command shape over soute's Python API.

Start-up stays light: only the module of the command being run is imported.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# command name -> module under soute.cli that defines configure(parser) and run(ctx, args)
COMMANDS: dict[str, tuple[str, str]] = {
    "parse": ("parse", "Parse a Dockerfile and print its instructions"),
    "version": ("version", "Show the soute version"),
}

# docker's grouped forms: `soute image ls` is `soute images`. Later issues add their commands
# here as they land; a group only lists what exists.
GROUPS: dict[str, dict[str, str]] = {
    "image": {},
    "container": {},
    "builder": {},
    "system": {},
}

USAGE = "usage: soute [--root DIR] [--debug] COMMAND [ARG...]"


@dataclass
class Context:
    root: Path
    debug: bool


def _help() -> str:
    lines = [USAGE, "", "A daemonless container image builder and runtime.", "", "Commands:"]
    lines += [f"  {name:<12}{desc}" for name, (_, desc) in sorted(COMMANDS.items())]
    groups = [g for g, subs in GROUPS.items() if subs]
    if groups:
        lines += ["", "Command groups (docker's forms):"]
        lines += [f"  {g:<12}{', '.join(sorted(GROUPS[g]))}" for g in groups]
    lines += [
        "",
        "Global options:",
        "  --root DIR   store location (env SOUTE_ROOT; default /var/lib/soute as root,",
        "               ~/.local/share/soute otherwise)",
        "  --debug      show tracebacks on errors",
        "  --version    show the version",
    ]
    return "\n".join(lines) + "\n"


class UsageError(Exception):
    pass


def _split_globals(argv: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    opts: dict[str, str | bool] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        if arg in ("-h", "--help"):
            opts["help"] = True
        elif arg in ("-v", "--version"):
            opts["version"] = True
        elif arg in ("-D", "--debug"):
            opts["debug"] = True
        elif arg == "--root":
            if i + 1 >= len(argv):
                raise UsageError("--root needs a directory")
            i += 1
            opts["root"] = argv[i]
        elif arg.startswith("--root="):
            opts["root"] = arg.split("=", 1)[1]
        else:
            raise UsageError(f"unknown global option {arg!r}; see 'soute --help'")
        i += 1
    return opts, argv[i:]


def _resolve(rest: list[str]) -> tuple[str, str, list[str]]:
    """(command, how it was called, its arguments) for top-level and grouped forms."""
    name = rest[0]
    if name in GROUPS:
        subs = GROUPS[name]
        if len(rest) < 2 or rest[1] in ("-h", "--help"):
            listing = ", ".join(sorted(subs)) or "none yet"
            raise UsageError(f"usage: soute {name} COMMAND (commands: {listing})")
        if rest[1] not in subs:
            raise UsageError(
                f"unknown command 'soute {name} {rest[1]}'"
                f" (commands: {', '.join(sorted(subs)) or 'none yet'})"
            )
        return subs[rest[1]], f"{name} {rest[1]}", rest[2:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, [*COMMANDS, *GROUPS], n=1)
        hint = f"; did you mean '{near[0]}'?" if near else "; see 'soute --help'"
        raise UsageError(f"unknown command '{name}'{hint}")
    return name, name, rest[1:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or "-D" in argv or bool(os.environ.get("SOUTE_DEBUG"))
    try:
        opts, rest = _split_globals(argv)
        if opts.get("version"):
            from soute import __version__

            print(f"soute version {__version__}")
            return 0
        if opts.get("help") or not rest:
            sys.stdout.write(_help())
            return 0 if opts.get("help") else 1
        command, called, args = _resolve(rest)
        module = importlib.import_module(f"soute.cli.{COMMANDS[command][0]}")
        parser = argparse.ArgumentParser(prog=f"soute {called}", description=COMMANDS[command][1])
        module.configure(parser)
        ns = parser.parse_args(args)
        root = opts.get("root")
        from soute.store import default_root

        ctx = Context(root=Path(str(root)) if root else default_root(), debug=debug)
        return int(module.run(ctx, ns) or 0)
    except UsageError as e:
        print(f"soute: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("soute: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); nothing more to say.
        sys.stderr.close()
        return 1
    except Exception as e:
        from soute.errors import LocatedError, SouteError

        if debug:
            raise
        if isinstance(e, LocatedError):
            print(str(e), file=sys.stderr)
        elif isinstance(e, SouteError):
            print(f"soute: {e}", file=sys.stderr)
        elif isinstance(e, OSError) and e.filename is not None:
            print(f"soute: {e.filename}: {e.strerror}", file=sys.stderr)
        else:
            print(f"soute: internal error: {type(e).__name__}: {e} (rerun with --debug and "
                  "report it)", file=sys.stderr)
            return 2
        return getattr(e, "exit_code", 1)


if __name__ == "__main__":
    sys.exit(main())
