"""soute build: a Dockerfile and a context to an image, as `docker build` with BuildKit."""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from soute.build.engine import BuildOptions
    from soute.build.remote_cache import CacheSpec
    from soute.cli.main import Context
    from soute.store.store import Image, Store


def configure_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("context", metavar="PATH|-", help="the build context ('-': from stdin)")
    p.add_argument("-t", "--tag", action="append", default=[], help="name the image (NAME[:TAG])")
    p.add_argument("-f", "--file", help="the Dockerfile (default: PATH/Dockerfile; '-': stdin)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K[=V]",
                   help="set a build-time variable (K alone takes it from the environment)")
    p.add_argument("--target", help="build only up to this stage")
    p.add_argument("--no-cache", action="store_true", help="do not reuse cached steps")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    p.add_argument("--network", choices=("default", "host", "none"), default="default",
                   help="network for RUN (default: the host's)")
    p.add_argument("--label", action="append", default=[], metavar="K=V",
                   help="set metadata on the image")
    p.add_argument("--progress", choices=("auto", "plain", "tty"), default="auto",
                   help="tty: a live view of the steps; plain: one line per event; auto: tty "
                   "on a terminal (default)")
    p.add_argument("--check", action="store_true",
                   help="check the Dockerfile first (the rules of 'soute lint') and show the "
                   "findings; '# check=error=true' makes them fail the build")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="the platform to build for: only the host's (no emulation)")
    p.add_argument("--iidfile", help="write the image ID to this file")
    p.add_argument("-o", "--output", metavar="DIR|-|type=local,dest=DIR|type=tar,dest=FILE",
                   help="write the result's files instead of keeping an image: to a "
                        "directory, or as a tar ('-': standard output)")
    p.add_argument("--allow", action="append", default=[], metavar="ENTITLEMENT",
                   help="grant an entitlement: security.insecure (RUN --security=insecure "
                        "gets every capability), network.host")
    p.add_argument("--secret", action="append", default=[], metavar="id=ID[,src=FILE|,env=VAR]",
                   help="a secret for RUN --mount=type=secret")
    p.add_argument("--ssh", action="append", default=[], metavar="default|ID[=SOCKET|KEY[,KEY]]",
                   help="an SSH agent for RUN --mount=type=ssh: a socket (default: "
                   "$SSH_AUTH_SOCK) or private key files")
    p.add_argument("--cache-from", action="append", default=[],
                   metavar="type=registry,ref=R",
                   help="reuse the build cache exported to registry ref R (repeatable)")
    p.add_argument("--cache-to", action="append", default=[],
                   metavar="type=registry,ref=R[,mode=min|max]",
                   help="export the build cache to registry ref R (mode=max: every stage)")


def _pairs(values: list[str], what: str, *, from_env: bool) -> dict[str, str]:
    from soute.errors import SouteError

    out: dict[str, str] = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not key:
            raise SouteError(f"invalid {what} {v!r}", f"write {what} KEY=VALUE")
        if not sep:
            if not from_env:
                raise SouteError(f"invalid {what} {v!r}", f"write {what} KEY=VALUE")
            if key not in os.environ:
                continue  # docker skips a bare name that is not in the environment
            value = os.environ[key]
        out[key] = value
    return out


def _entitlements(values: list[str]) -> frozenset[str]:
    """``--allow`` values (repeated or comma-separated, as buildx takes them)."""
    from soute.build.engine import ENTITLEMENTS
    from soute.errors import SouteError

    names = frozenset(n.strip() for v in values for n in v.split(",") if n.strip())
    for name in sorted(names - set(ENTITLEMENTS)):
        raise SouteError(f"invalid entitlement {name!r}", "use " + ", ".join(ENTITLEMENTS))
    return names


def _is_tar(head: bytes) -> bool:
    from soute.layer import detect

    return (len(head) > 262 and head[257:262] == b"ustar") or detect(head[:8]) != "tar"


def run_build(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.store()
    # The shared lock from the start: a context read from stdin is unpacked into tmp/,
    # which a garbage collection empties.
    with store.session():
        return _run_build(ctx, args, store)


def _run_build(ctx: Context, args: argparse.Namespace, store: Store) -> int:
    from soute.build.engine import BuildOptions
    from soute.errors import SouteError
    from soute.store.names import full_tag

    context: Path | None = None
    dockerfile_path: Path | None = None
    cleanup = None
    if args.context == "-":
        # Look at the first block only: a tar context streams on, it is never held in memory.
        stdin = sys.stdin.buffer
        head = b""
        while len(head) < 512 and (chunk := stdin.read(512 - len(head))):
            head += chunk
        if args.file not in (None, "-") or _is_tar(head):
            import io

            from soute.layer import apply_layer, open_decompressed

            tmp = store.new_tree("context-")
            cleanup = tmp
            stream = io.BufferedReader(_Chained(head, stdin))
            apply_layer(open_decompressed(stream), tmp, overlay=False)  # type: ignore[arg-type]
            context = tmp
            name = args.file or "Dockerfile"
            text = _read(tmp / name, name)
        else:
            data = head + stdin.read()
            text = data.decode("utf-8", "surrogateescape")
            name = "Dockerfile"
    else:
        context = Path(args.context)
        if not context.is_dir():
            raise SouteError(f"unable to prepare context: path {args.context!r} not found",
                             "give the directory holding the build's files")
        if args.file == "-":
            text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
            name = "Dockerfile"
        else:
            dockerfile_path = Path(args.file) if args.file else context / "Dockerfile"
            name = str(dockerfile_path)
            text = _read(dockerfile_path, name)
    args.export = _output(args.output) if args.output is not None else None  # before building
    opts = BuildOptions(
        dockerfile=text, dockerfile_name=name, context=context, dockerfile_path=dockerfile_path,
        # As BuildKit: with --output the result is exported, not kept as an image.
        tags=[] if args.export else [full_tag(t) for t in args.tag],
        build_args=_pairs(args.build_arg, "--build-arg", from_env=True),
        target=args.target, no_cache=args.no_cache, network=args.network,
        labels=_pairs(args.label, "--label", from_env=False), quiet=args.quiet,
        secrets=_secrets(args.secret),
        cache_from=_cache_specs(args.cache_from, export=False),
        cache_to=_cache_specs(args.cache_to, export=True),
        allow=_entitlements(args.allow),
    )
    if (ctx.build_request is not None and context is not None and dockerfile_path is not None
            and sys.stdout is not None and sys.stderr is not None
            and not (args.no_cache or args.secret or args.ssh or args.cache_from
                     or args.cache_to or args.export)):
        from soute.build.fastlane import Memo, Tee

        # Gather what the build reads and prints: a fully cached one leaves its memo.
        opts.memo = Memo()
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(out), Tee(err)  # type: ignore[assignment]
        try:
            image, live = _build_and_report(store, opts, args, cleanup)
        finally:
            tee_out, tee_err = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = out, err
        if not live:
            assert isinstance(tee_out, Tee) and isinstance(tee_err, Tee)
            _remember(store, ctx.build_request, opts, image.id, args, tee_out.text(),
                      tee_err.text())
        return 0
    _build_and_report(store, opts, args, cleanup)
    return 0


def _build_and_report(store: Store, opts: BuildOptions, args: argparse.Namespace,
                      cleanup: Path | None) -> tuple[Image, bool]:
    """Build, then print the image ID (or the lines naming it) and the check warnings.
    Returns the image and whether the live view showed the progress."""
    try:
        if args.ssh:
            from soute.build.ssh import SSHAgents, parse_ssh_specs

            # Checked (key files loaded into an agent of the build's own) before any step.
            opts.ssh = SSHAgents(parse_ssh_specs(args.ssh))
        image, summary, live = _build(store, opts, args)
    finally:
        if opts.ssh is not None:
            opts.ssh.close()
        if cleanup is not None:
            import shutil

            shutil.rmtree(cleanup, ignore_errors=True)
    if args.export:
        _export(store, image, *args.export)
        sys.stderr.write(summary)
        return image, live
    if args.iidfile:
        Path(args.iidfile).write_text(image.id)
    if args.quiet:
        print(image.id)
    else:
        from soute.store.names import familiar

        print(f"writing image {image.id} done", file=sys.stderr)
        for tag in opts.tags:
            print(f"naming to {familiar(tag)} done", file=sys.stderr)
    sys.stderr.write(summary)  # the check warnings, last, as docker lists them
    return image, live


def _output(value: str) -> tuple[str, str]:
    """``--output``: (type, dest) from ``DIR``, ``-`` or ``type=local|tar,dest=...``."""
    from soute.errors import SouteError

    if not value:
        raise SouteError("--output needs a destination", "give -o DIR, -o - or -o type=...")
    if "=" not in value:
        return ("tar", "-") if value == "-" else _check_dest("local", value)
    fields = dict(part.partition("=")[::2] for part in value.split(","))
    kind, dest = fields.get("type", "local"), fields.get("dest", "")
    if kind not in ("local", "tar"):
        raise SouteError(f'exporter "{kind}" could not be found',
                         "--output takes type=local (a directory) or type=tar")
    if not dest:
        raise SouteError(f"--output {value}: dest is required",
                         "name the directory (or file, '-' for standard output) with dest=")
    unknown = set(fields) - {"type", "dest"}
    if unknown:
        raise SouteError(f"--output {value}: unknown attribute {sorted(unknown)[0]!r}")
    return _check_dest(kind, dest)


def _check_dest(kind: str, dest: str) -> tuple[str, str]:
    """Refused before the build rather than after it: a destination that cannot be."""
    from soute.errors import SouteError

    if kind == "local" and os.path.exists(dest) and not os.path.isdir(dest):
        raise SouteError(f"--output: {dest} exists and is not a directory",
                         "name a directory, or type=tar,dest=FILE for an archive")
    parent = os.path.dirname(os.path.abspath(dest))
    if dest != "-" and not os.path.isdir(parent):
        raise SouteError(f"--output: {parent} does not exist", "make it first")
    return kind, dest


def _export(store: Store, image: Image, kind: str, dest: str) -> None:
    """Write the image's files to ``dest`` (a directory, or a tar), then drop the image
    itself when nothing else names or uses it, as BuildKit keeps none: its layers stay in
    the build cache."""
    import shutil

    from soute.layer import apply_layer
    from soute.runtime.rootfs import write_merged_tar

    work = store.new_tree("output-")
    try:
        lowers = store.snapshots(image.diff_ids)
        if kind == "tar" and dest == "-":
            sys.stdout.flush()
            write_merged_tar(lowers, work / "merged", sys.stdout.buffer.fileno())
        elif kind == "tar":
            with open(dest, "wb") as out:
                write_merged_tar(lowers, work / "merged", out.fileno())
        else:
            os.makedirs(dest, mode=0o700, exist_ok=True)  # BuildKit makes it private too
            read, write = os.pipe()
            import threading

            failure: list[BaseException] = []

            def produce() -> None:
                try:
                    write_merged_tar(lowers, work / "merged", write)
                except BaseException as e:  # reported by the caller
                    failure.append(e)
                finally:
                    os.close(write)

            thread = threading.Thread(target=produce, daemon=True)
            thread.start()
            with os.fdopen(read, "rb") as stream:
                apply_layer(stream, Path(dest), overlay=False)
            thread.join()
            if failure:
                raise failure[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not image.tags:
            store.forget_image(image.id)  # a container using it keeps it


def _remember(store: Store, request: str, opts: BuildOptions, image_id: str,
              args: argparse.Namespace, stdout: str, stderr: str) -> None:
    """Leave the memo of a fully cached build for the fast lane (soute.build.fastlane)."""
    memo = opts.memo
    assert memo is not None and opts.context is not None and opts.dockerfile_path is not None
    # What the build checks and the context's filter read, whatever the steps did: the
    # two places find_ignore_file looks, and the directories they are in.
    memo.look(os.path.abspath(opts.context), follow=True)
    memo.look(os.path.abspath(opts.dockerfile_path.parent), follow=True)
    own = opts.dockerfile_path.parent / (opts.dockerfile_path.name + ".dockerignore")
    for candidate in (own, opts.context / ".dockerignore"):
        memo.look(os.path.abspath(candidate), follow=True)
    with store.meta.transaction() as db:
        memo.save(db, request, dockerfile=os.path.abspath(opts.dockerfile_path),
                  text=opts.dockerfile, image_id=image_id, tags=list(opts.tags),
                  iidfile=os.path.abspath(args.iidfile) if args.iidfile else None,
                  stdout=stdout, stderr=stderr)


def _build(store: Store, opts: BuildOptions,
           args: argparse.Namespace) -> tuple[Image, str, bool]:
    """Check the platform and the Dockerfile, then build with the view ``--progress`` asks
    for. Returns the image, the check warnings' summary, to print after it (when the build
    fails the summary is printed here, before the error, as docker does), and whether the
    live view showed the progress."""
    from soute.build.engine import Builder
    from soute.build.progress import TtyProgress, open_progress

    _check_platforms(args.platform)
    warnings = _check_dockerfile(opts, every_rule=args.check)
    printer = open_progress(None if opts.quiet else sys.stderr, args.progress)
    summary = "" if opts.quiet else _summary(warnings, color=isinstance(printer, TtyProgress))
    if args.check:
        for w in warnings:  # at the top, as BuildKit lists them under its first step
            printer.say(f"WARN: {w}")
    try:
        image = Builder(store, opts, printer).build()
    except BaseException as e:
        printer.close(e)
        sys.stderr.write(summary)
        raise
    printer.close()
    return image, summary, isinstance(printer, TtyProgress)


def _check_platforms(value: str | None) -> None:
    """``--platform``: soute builds for the host platform only."""
    if not value:
        return
    from soute.dockerfile.stages import host_platform, unsupported_platform
    from soute.errors import SouteError
    from soute.image.platforms import Platform

    host = host_platform()
    for spec in value.split(","):
        why = unsupported_platform(Platform.parse(spec.strip()).normalized(), host)
        if why:
            raise SouteError(f"--platform {spec.strip()}: {why}",
                             f"leave --platform out to build for {host}")


def _cache_specs(values: list[str], *, export: bool) -> list[CacheSpec]:
    if not values:
        return []  # the module stays unimported: most builds share no cache
    from soute.build.remote_cache import parse_cache_spec

    return [parse_cache_spec(v, export=export) for v in values]


def _check_dockerfile(opts: BuildOptions, *, every_rule: bool) -> list[str]:
    """BuildKit's build checks: its rules on every build (all of soute lint's with
    ``--check``), as ``RULE: message (line N)``. The ``check`` directive, or the
    BUILDKIT_DOCKERFILE_CHECK build arg in its place, skips rules; with ``error=true`` any
    finding fails the build before a step runs."""
    from soute.dockerfile.instructions import parse_dockerfile
    from soute.errors import LocatedError
    from soute.lint import parse_check_directive
    from soute.lint.checks import run_checks

    df = parse_dockerfile(opts.dockerfile, file=opts.dockerfile_name)
    directive = opts.build_args.get("BUILDKIT_DOCKERFILE_CHECK")
    config = parse_check_directive(
        directive if directive is not None else df.directives.get("check", "")
    )
    if config.skip_all:
        return []
    findings = [
        f for f in run_checks(df, opts.context)
        if (every_rule or f.rule.buildkit) and not config.skips(f.rule)
    ]  # fmt: skip
    if config.error and findings:
        for f in findings:
            print(f"{opts.dockerfile_name}:{f.line}: {f.rule.name}: {f.message}", file=sys.stderr)
        rules = ", ".join(dict.fromkeys(f.rule.name for f in findings))
        raise LocatedError(
            f"lint violation found for rules: {rules}",
            file=opts.dockerfile_name,
            line=findings[0].line,
            hint="'# check=error=true' makes check findings fail the build: fix them, or skip "
            "their rules with '# check=skip=RULE,...'",
        )
    # BuildKit's LintFormatShort
    return [f"{f.rule.name}: {f.message}" + (f" (line {f.line})" if f.line > 0 else "")
            for f in findings]


def _summary(warnings: list[str], *, color: bool) -> str:
    """docker's list of the check warnings after a build (its header yellow on a terminal)."""
    if not warnings:
        return ""
    n = len(warnings)
    head = f"{n} warning{'' if n == 1 else 's'} found (use soute lint to expand):"
    if color and not os.environ.get("NO_COLOR"):
        head = "\x1b[33m" + head + "\x1b[0m"
    return "\n " + head + "\n" + "".join(f" - {w}\n" for w in warnings)


def _read(path: Path, name: str) -> str:
    from soute.errors import SouteError

    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise SouteError(f"failed to read dockerfile: open {name}: no such file or directory",
                         "name it with -f, or add a Dockerfile to the context") from None
    except OSError as e:
        raise SouteError(f"failed to read dockerfile {name}: {e.strerror}") from None


def _secrets(values: list[str]) -> dict[str, bytes]:
    """docker's ``--secret id=ID[,src=FILE|,env=VAR]``: a bare ``id`` reads the variable of
    that name, or the file of that name when there is no such variable."""
    from soute.errors import SouteError

    out: dict[str, bytes] = {}
    for v in values:
        fields = dict(f.partition("=")[::2] for f in v.split(","))
        sid = fields.get("id")
        if not sid:
            raise SouteError(f"invalid --secret {v!r}", "write --secret id=ID,src=FILE")
        src = fields.get("src") or fields.get("source")
        var = fields.get("env")
        if src is None and var is None:
            var = sid if sid in os.environ else None
            src = None if var else sid
        if var is not None:
            if var not in os.environ:
                raise SouteError(f"--secret {v!r}: variable {var} is not set")
            out[sid] = os.environ[var].encode()
            continue
        try:
            out[sid] = Path(str(src)).read_bytes()
        except OSError as e:
            raise SouteError(f"--secret {v!r}: {src}: {e.strerror}") from None
    return out


class _Chained(io.RawIOBase):
    """Bytes already read, then the rest of a stream."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)
