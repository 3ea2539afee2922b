"""The ``soute`` command: docker's command shape over soute's Python API.

Start-up stays light: only the module of the command being run is imported.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing, argparse and pathlib cost the fast lane of a cached build 10 ms
    import argparse
    from pathlib import Path
    from typing import NoReturn

    from soute.store.store import Store

# command -> (module under soute.cli, function stem, description). The module defines
# configure_<stem>(parser) and run_<stem>(ctx, args). Names with a space exist only in a group.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "build": ("build", "build", "Build an image from a Dockerfile"),
    "lint": ("lint", "lint", "Check a Dockerfile for good practices"),
    "analyze": ("analyze", "analyze", "Show where an image's bytes go and how many are wasted"),
    "parse": ("parse", "parse", "Parse a Dockerfile and print its instructions"),
    "version": ("version", "version", "Show the soute version"),
    "images": ("images", "images", "List images"),
    "tag": ("images", "tag", "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE"),
    "rmi": ("images", "rmi", "Remove one or more images"),
    "history": ("images", "history", "Show the history of an image"),
    "inspect": ("images", "inspect", "Display detailed information on containers or images"),
    "import": ("images", "import", "Import a root filesystem tarball as an image"),
    "bootstrap": ("images", "bootstrap", "Make a base image: debian:SUITE or busybox"),
    "save": ("archive", "save", "Save one or more images to a tar archive"),
    "load": ("archive", "load", "Load an image from a tar archive or standard input"),
    "login": ("registry", "login", "Log in to a registry"),
    "logout": ("registry", "logout", "Log out from a registry"),
    "push": ("registry", "push", "Upload an image to a registry"),
    "pull": ("registry", "pull", "Download an image from a registry"),
    "fsck": ("system", "fsck", "Check every blob, image, tag and snapshot of the store"),
    "image prune": ("system", "image_prune", "Remove unused images"),
    "system df": ("system", "df", "Show disk usage"),
    "info": ("system", "info", "Display system-wide information"),
    "builder prune": ("system", "builder_prune", "Remove the build cache"),
    "system prune": ("system", "system_prune", "Remove unused data"),
    "run": ("containers", "run", "Create and run a new container from an image"),
    "create": ("containers", "create", "Create a new container"),
    "start": ("containers", "start", "Start one or more stopped containers"),
    "stop": ("containers", "stop", "Stop one or more running containers"),
    "restart": ("containers", "restart", "Restart one or more containers"),
    "kill": ("containers", "kill", "Kill one or more running containers"),
    "wait": ("containers", "wait", "Block until containers stop, then print their exit codes"),
    "rm": ("containers", "rm", "Remove one or more containers"),
    "rename": ("containers", "rename", "Rename a container"),
    "ps": ("containers", "ps", "List containers"),
    "logs": ("containers", "logs", "Fetch the logs of a container"),
    "top": ("containers", "top", "Display the running processes of a container"),
    "port": ("containers", "port", "List port mappings of a container"),
    "exec": ("containers", "exec", "Execute a command in a running container"),
    "commit": ("containers", "commit", "Create a new image from a container's changes"),
    "export": ("containers", "export", "Export a container's filesystem as a tar archive"),
    "pause": ("containers", "pause", "Pause all processes within one or more containers"),
    "unpause": ("containers", "unpause", "Unpause all processes within one or more containers"),
    "stats": ("containers", "stats", "Display a live stream of container(s) resource usage "
              "statistics"),
    "diff": ("containers", "diff", "Inspect changes to files or directories on a container's "
             "filesystem"),
    "cp": ("containers", "cp", "Copy files between a container and the host"),
    "container inspect": ("containers", "inspect", "Display detailed information on containers"),
    "image inspect": ("images", "image_inspect", "Display detailed information on images"),
    "container prune": ("containers", "prune", "Remove all stopped containers"),
    "volume create": ("volumes", "create", "Create a volume"),
    "volume ls": ("volumes", "ls", "List volumes"),
    "volume inspect": ("volumes", "inspect", "Display detailed information on volumes"),
    "volume rm": ("volumes", "rm", "Remove one or more volumes"),
    "volume prune": ("volumes", "prune", "Remove unused anonymous volumes"),
}

# docker's grouped forms: `soute image ls` is `soute images`. Later issues add their commands
# here as they land; a group only lists what exists.
GROUPS: dict[str, dict[str, str]] = {
    "image": {
        "build": "build", "ls": "images", "list": "images", "rm": "rmi", "remove": "rmi",
        "history": "history", "analyze": "analyze",
        "inspect": "image inspect", "tag": "tag", "save": "save", "load": "load",
        "import": "import",
        "prune": "image prune", "push": "push", "pull": "pull",
    },
    "container": {
        "run": "run", "create": "create", "start": "start", "stop": "stop",
        "restart": "restart", "kill": "kill", "wait": "wait", "rm": "rm", "remove": "rm",
        "rename": "rename", "ls": "ps", "list": "ps", "ps": "ps", "logs": "logs", "top": "top",
        "port": "port", "exec": "exec", "commit": "commit", "export": "export", "cp": "cp",
        "diff": "diff", "stats": "stats", "pause": "pause", "unpause": "unpause",
        "inspect": "container inspect",
        "prune": "container prune",
    },
    "volume": {"create": "volume create", "ls": "volume ls", "list": "volume ls",
               "inspect": "volume inspect", "rm": "volume rm", "remove": "volume rm",
               "prune": "volume prune"},
    "builder": {"build": "build", "prune": "builder prune"},
    "system": {"df": "system df", "prune": "system prune", "info": "info"},
}

USAGE = "usage: soute [--root DIR] [--debug] COMMAND [ARG...]"


class Context:
    """What every command gets: the store's location, opened on demand."""

    def __init__(self, root: Path, debug: bool, *, build_request: str | None = None) -> None:
        self.root = root
        self.debug = debug
        self.build_request = build_request  # `soute build`: the key of its memo (fastlane)
        self._store: Store | None = None

    def store(self) -> Store:
        """The store, opened on first use (commands that need none never touch it)."""
        if self._store is None:
            from soute.store.store import Store

            self._store = Store(self.root)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _help() -> str:
    lines = [USAGE, "", "A daemonless container image builder and runtime.", "", "Commands:"]
    lines += [f"  {name:<12}{desc}" for name, (_, _, desc) in sorted(COMMANDS.items())
              if " " not in name]
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
    exit_code = 1


def _parser(prog: str, description: str, *, own_process: bool) -> argparse.ArgumentParser:
    """argparse with one-line errors: docker's ``run``/``create`` exit 125 on them."""
    import argparse

    if own_process:  # (a program that calls main() keeps its argparse as it was)
        # argparse passes its words through gettext, which searches the disk for a catalogue
        # on every call (3 ms a command, for catalogues Python does not ship).
        argparse._ = str  # type: ignore[attr-defined]
        argparse.ngettext = (  # type: ignore[attr-defined]
            lambda one, many, n: one if n == 1 else many)

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:  # type: ignore[override]
            error = UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")
            if self.prog in ("soute run", "soute create", "soute container run",
                             "soute container create"):
                error.exit_code = 125
            raise error

    return Parser(prog=prog, description=description)


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
    if name not in COMMANDS or " " in name:
        import difflib

        near = difflib.get_close_matches(name, [c for c in COMMANDS if " " not in c] + [*GROUPS],
                                         n=1)
        hint = f"; did you mean '{near[0]}'?" if near else "; see 'soute --help'"
        raise UsageError(f"unknown command '{name}'{hint}")
    return name, name, rest[1:]


def main(argv: list[str] | None = None) -> int:
    """The ``soute`` command; ``argv`` None: this process's arguments (the process is the
    command and ends after it)."""
    if argv is None:
        # Start-up allocates a lot and frees little: with the default threshold (700) the
        # collector runs some 30 times before a container starts (3 ms). Long-lived monitors
        # still collect, less often.
        gc.set_threshold(50_000, 20, 20)
        from soute._lazy import defer_url_parsing

        defer_url_parsing()
    code = _main(sys.argv[1:] if argv is None else argv, own_process=argv is None)
    if argv is None:
        # Nothing is left to free but what the interpreter's teardown would search for
        # reference cycles one object at a time: about 10 ms of every command.
        gc.freeze()
    return code


def _root(opts: dict[str, str | bool]) -> str:
    root = opts.get("root")
    if root:
        return os.path.abspath(str(root))  # the runtime's children chdir: keep it absolute
    from soute.store import default_root_path

    return default_root_path()


_STATUS_125 = {("containers", "run"), ("containers", "create")}


def _main(argv: list[str], *, own_process: bool = False) -> int:
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
        root = _root(opts)
        request = None  # `soute build`: the key of its memo (soute.build.fastlane)
        if command == "build" and "-h" not in args and "--help" not in args:
            from soute.build import fastlane

            request = fastlane.request(root, argv)
            if own_process:
                # A fully cached build answered from its memo, before the builder's imports.
                code = fastlane.try_build(root, request)
                if code is not None:
                    return code
        if own_process:
            # Dataclasses defined from here on skip compiling their methods' source (see
            # soute._dccache); a program importing soute is left alone.
            from soute._dccache import install

            install()
        module_name, stem, description = COMMANDS[command]
        module = importlib.import_module(f"soute.cli.{module_name}")
        # A command may read its usual command lines itself (fast_<stem>: None when not
        # one of them), without argparse's import and set-up.
        fast = getattr(module, f"fast_{stem}", None)
        ns = fast(args) if fast is not None else None
        if ns is None:
            parser = _parser(f"soute {called}", description, own_process=own_process)
            getattr(module, f"configure_{stem}")(parser)
            ns = parser.parse_args(args)
        from pathlib import Path

        from soute.errors import SouteError

        ctx = Context(Path(root), debug, build_request=request)
        try:
            return int(getattr(module, f"run_{stem}")(ctx, ns) or 0)
        except SouteError as e:
            # 125 is docker run's and create's status for their own errors; docker's other
            # commands say 1 (No such container, not running...).
            if e.exit_code == 125 and (module_name, stem) not in _STATUS_125:
                e.exit_code = 1
            raise
        finally:
            ctx.close()
    except UsageError as e:
        print(f"soute: {e}", file=sys.stderr)
        return e.exit_code
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
