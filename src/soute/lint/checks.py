"""The checks: each reads the parsed Dockerfile (and, for startup scripts and .dockerignore,
the build context) and yields findings. :func:`run_checks` runs them all, in file order."""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from soute.dockerfile.goquote import go_quote
from soute.dockerfile.instructions import (
    Add,
    Arg,
    Cmd,
    Copy,
    Dockerfile,
    Entrypoint,
    Env,
    Expose,
    From,
    Healthcheck,
    Instruction,
    InvalidValue,
    Label,
    Maintainer,
    Run,
    Shell,
    Stage,
    Stopsignal,
    User,
    Volume,
    Workdir,
    parse_ports,
    parse_signal,
)
from soute.dockerfile.shell import ExpansionError, Lexer
from soute.lint.rules import BY_NAME, Rule
from soute.lint.shellwords import Command, split_commands, unwrap


@dataclass(frozen=True)
class Finding:
    rule: Rule
    line: int
    message: str
    fix: str = ""

    def as_dict(self, level: str) -> dict[str, object]:
        return {
            "rule": self.rule.id, "name": self.rule.name, "line": self.line, "level": level,
            "message": self.message, "fix": self.fix or self.rule.fix, "url": self.rule.url,
        }  # fmt: skip


def _r(name: str) -> Rule:
    return BY_NAME[name.lower()]


@dataclass
class Context:
    df: Dockerfile
    context_dir: Path | None  # the build context, for startup scripts and .dockerignore
    findings: list[Finding] = field(default_factory=list)

    def add(self, name: str, line: int, message: str, fix: str = "") -> None:
        self.findings.append(Finding(_r(name), line, message, fix))


CHECKS: list[Callable[[Context], None]] = []


def check(fn: Callable[[Context], None]) -> Callable[[Context], None]:
    CHECKS.append(fn)
    return fn


def run_checks(df: Dockerfile, context_dir: Path | None = None) -> list[Finding]:
    ctx = Context(df, context_dir)
    for fn in CHECKS:
        fn(ctx)
    seen: set[tuple[str, int, str]] = set()
    out = []
    for f in sorted(ctx.findings, key=lambda f: (f.line, f.rule.id)):
        key = (f.rule.id, f.line, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


# ---------------------------------------------------------------------------- helpers

_LEXER = Lexer()
PATH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_SHELLS = frozenset(("sh", "bash", "dash", "ash", "zsh", "ksh", "busybox"))


def run_script(run: Run) -> str:
    """The shell text a RUN runs (heredoc bodies included)."""
    if not run.shell_form:
        argv = list(run.command)
        if len(argv) >= 3 and posixpath.basename(argv[0]) in _SHELLS and argv[1] == "-c":
            return argv[2]
        return " ".join(argv)
    text = " ".join(run.command)
    for f in run.files:
        text += "\n" + f.content
    return text


def run_commands(run: Run) -> list[Command]:
    return [unwrap(c) for c in split_commands(run_script(run))]


def stage_chain(df: Dockerfile, stage: Stage) -> list[Stage]:
    """``stage`` and the stages it is built FROM, base first."""
    chain = [stage]
    seen = {stage.index}
    while True:
        parent = df.find_stage(chain[0].from_.base)
        if parent is None or parent.index >= chain[0].index or parent.index in seen:
            return chain
        seen.add(parent.index)
        chain.insert(0, parent)


def final_chain(df: Dockerfile) -> list[Stage]:
    return stage_chain(df, df.stages[-1])


def _apt(cmd: Command) -> tuple[str, list[str], list[str]] | None:
    """(subcommand, options, arguments) of an apt-get/apt/aptitude command line."""
    if cmd.name not in ("apt-get", "apt", "aptitude"):
        return None
    sub, opts, args = "", [], []
    words = cmd.words[1:]
    i = 0
    while i < len(words):
        w = words[i]
        if w.startswith("-"):
            opts.append(w)
            if w in ("-o", "-c", "-t", "--option", "--config-file", "--target-release"):
                if i + 1 < len(words):
                    opts.append(words[i + 1])
                i += 1
        elif not sub:
            sub = w
        else:
            args.append(w)
        i += 1
    return sub, opts, args


def _has_yes(opts: list[str]) -> bool:
    for o in opts:
        if o in ("--yes", "--assume-yes", "--force-yes", "-qq", "-q=2", "--quiet=2"):
            return True
        if re.fullmatch(r"-[a-zA-Z]*y[a-zA-Z]*", o) or re.fullmatch(r"-[a-xz]*q[a-xz]*q.*", o):
            return True
        if o.lower() in ("apt::get::assume-yes=true", "apt::get::assume-yes=1"):
            return True
    return False


def _words_expand(word: str, env: dict[str, str]) -> str | None:
    try:
        return _LEXER.process_word(word, env)
    except ExpansionError:
        return None


def _meta_env(df: Dockerfile) -> dict[str, str]:
    env: dict[str, str] = {}
    for arg in df.meta_args:
        for a in arg.args:
            if a.value is not None:
                v = _words_expand(a.value, env)
                env[a.key] = v if v is not None else a.value
    return env


# ---------------------------------------------------------------------------- apt

_INSTALL_SUBS = ("install", "upgrade", "dist-upgrade", "full-upgrade", "remove", "purge",
                 "autoremove", "build-dep", "reinstall")  # fmt: skip
# What needs the package lists that an update fetches.
_READS_LISTS = ("install", "upgrade", "dist-upgrade", "full-upgrade", "build-dep", "reinstall")


@check
def check_apt(ctx: Context) -> None:
    final = {s.index for s in final_chain(ctx.df)}
    for stage in ctx.df.stages:
        noninteractive = False
        for stage_ in stage_chain(ctx.df, stage):
            for instr in stage_.commands:
                if isinstance(instr, Env | Arg) and _sets_noninteractive(instr):
                    noninteractive = True
        for instr in stage.commands:
            if isinstance(instr, Env | Arg) and _sets_noninteractive(instr):
                noninteractive = True
            if not isinstance(instr, Run):
                continue
            cmds = run_commands(instr)
            uses_lists = installs = False
            updates = ""  # the tool that ran `update`
            cleaned = _apt_cache_mounted(instr)
            local_noninteractive = noninteractive
            for cmd in cmds:
                if any(a.startswith("DEBIAN_FRONTEND=noninteractive") for a in cmd.assignments):
                    local_noninteractive = True
                if cmd.name == "export" and any(
                    w.startswith("DEBIAN_FRONTEND=noninteractive") for w in cmd.words
                ):
                    local_noninteractive = True
                if cmd.name == "rm" and any(
                    w.rstrip("/*").rstrip("/") in ("/var/lib/apt/lists", "/var/lib/apt")
                    for w in cmd.words[1:]
                ):
                    cleaned = True
                apt = _apt(cmd)
                if apt is None:
                    continue
                sub, opts, _ = apt
                if sub in ("update", "install"):
                    uses_lists = True
                updates = updates or (cmd.name if sub == "update" else "")
                installs = installs or sub in _READS_LISTS
                needs_yes = sub in _INSTALL_SUBS and sub != "autoremove"
                needs_yes = needs_yes and (cmd.name != "aptitude" or sub == "install")
                if needs_yes and not _has_yes(opts):
                    ctx.add(
                        "AptGetMissingYes", instr.line,
                        f"'{cmd.name} {sub}' without -y: the build has no one to answer",
                        f"{cmd.name} {sub} -y ...",
                    )  # fmt: skip
                if sub == "install" and cmd.name != "aptitude":
                    no_rec = "--no-install-recommends" in opts or any(
                        o.lower().startswith("apt::install-recommends=") for o in opts
                    )
                    if not no_rec:
                        ctx.add(
                            "AptGetNoInstallRecommends", instr.line,
                            f"'{cmd.name} install' without --no-install-recommends",
                        )  # fmt: skip
                    if not local_noninteractive:
                        ctx.add(
                            "AptNoninteractive", instr.line,
                            f"'{cmd.name} install' without DEBIAN_FRONTEND=noninteractive",
                        )  # fmt: skip
                if sub in ("upgrade", "dist-upgrade", "full-upgrade"):
                    ctx.add("AptGetUpgrade", instr.line, f"'{cmd.name} {sub}' in the image")
            if updates and not installs:
                # Removing the lists here (SOU003's fix) would break the install that follows.
                ctx.add("AptUpdateAlone", instr.line,
                        f"'{updates} update' without an install in the same RUN")
            elif uses_lists and not cleaned and stage.index in final:
                ctx.add(
                    "AptListsNotRemoved", instr.line,
                    "the apt lists stay in this RUN's layer (/var/lib/apt/lists not removed)",
                )  # fmt: skip


def _sets_noninteractive(instr: Env | Arg) -> bool:
    if isinstance(instr, Env):
        return any(p.key == "DEBIAN_FRONTEND" and p.value == "noninteractive" for p in instr.pairs)
    return any(a.key == "DEBIAN_FRONTEND" and a.value == "noninteractive" for a in instr.args)


def _apt_cache_mounted(run: Run) -> bool:
    for spec in run.mount_specs:
        fields = dict(f.partition("=")[::2] for f in spec.split(","))
        target = fields.get("target") or fields.get("dst") or fields.get("destination") or ""
        kind = fields.get("type", "bind")
        if kind in ("cache", "tmpfs") and target.rstrip("/") in (
            "/var/lib/apt/lists",
            "/var/lib/apt",
        ):
            return True
    return False


# ---------------------------------------------------------------------------- layers


@check
def check_consecutive_run(ctx: Context) -> None:
    for stage in ctx.df.stages:
        group: list[Run] = []
        for instr in (*stage.commands, None):
            if (
                isinstance(instr, Run)
                and instr.shell_form
                and not instr.files
                and (not group or _run_flags(group[0]) == _run_flags(instr))
            ):
                group.append(instr)
                continue
            if len(group) > 1:
                lines = ", ".join(str(r.line) for r in group)
                ctx.add(
                    "ConsecutiveRun", group[1].line,
                    f"{len(group)} RUNs in a row (lines {lines}) could be one",
                    f"join the commands of lines {lines} with '&& \\' into one RUN",
                )  # fmt: skip
            group = [instr] if isinstance(instr, Run) and instr.shell_form and not instr.files \
                else []  # fmt: skip


def _run_flags(run: Run) -> tuple[object, ...]:
    return (run.mount_specs, run.network, run.security)


_INSTALL = {
    ("apt-get", "install"), ("apt", "install"), ("aptitude", "install"), ("apk", "add"),
    ("yum", "install"), ("dnf", "install"), ("microdnf", "install"), ("zypper", "install"),
    ("pip", "install"), ("pip3", "install"), ("npm", "install"), ("gem", "install"),
}  # fmt: skip
_REMOVE = {
    ("apt-get", "purge"), ("apt-get", "remove"), ("apt", "purge"), ("apt", "remove"),
    ("aptitude", "purge"), ("aptitude", "remove"), ("apk", "del"), ("yum", "remove"),
    ("yum", "erase"), ("dnf", "remove"), ("microdnf", "remove"), ("zypper", "remove"),
    ("pip", "uninstall"), ("pip3", "uninstall"), ("npm", "uninstall"), ("gem", "uninstall"),
    ("dpkg", "--purge"), ("dpkg", "-P"), ("dpkg", "-r"),
}  # fmt: skip


def _sub_and_args(cmd: Command) -> tuple[str, list[str]]:
    if cmd.name == "dpkg":
        rest = cmd.words[1:]
        return (rest[0], [w for w in rest[1:] if not w.startswith("-")]) if rest else ("", [])
    apt = _apt(cmd)
    if apt is not None:
        return apt[0], apt[2]
    rest = [w for w in cmd.words[1:] if not w.startswith("-")]
    return (rest[0], rest[1:]) if rest else ("", [])


def _pkg_name(word: str) -> str:
    return re.split(r"[=<>~@]", word, maxsplit=1)[0].removesuffix(":amd64")


@check
def check_removed_later(ctx: Context) -> None:
    for stage in ctx.df.stages:
        packages: dict[str, int] = {}  # name -> line of the RUN that installed it
        files: dict[str, int] = {}  # absolute path -> line of the instruction that made it
        workdir = "/"
        for instr in stage.commands:
            if isinstance(instr, Workdir):
                workdir = posixpath.join(workdir, instr.path)
            elif isinstance(instr, Copy | Add) and not any("$" in s for s in instr.sources):
                dest = posixpath.join(workdir, instr.dest)
                names = [*instr.sources, *(c.path for c in instr.contents)]
                for src in names:
                    if instr.dest.endswith("/") or len(names) > 1:
                        files[posixpath.join(dest, posixpath.basename(src.rstrip("/")))] = \
                            instr.line  # fmt: skip
                    else:
                        files[posixpath.normpath(dest)] = instr.line
            elif isinstance(instr, Run):
                cwd = workdir
                made: dict[str, int] = {}
                installed: dict[str, int] = {}
                for cmd in run_commands(instr):
                    if cmd.name == "cd" and len(cmd.words) > 1:
                        cwd = posixpath.join(cwd, cmd.words[1])
                        continue
                    sub, args = _sub_and_args(cmd)
                    if (cmd.name, sub) in _INSTALL:
                        for a in args:
                            installed[_pkg_name(a)] = instr.line
                    elif (cmd.name, sub) in _REMOVE:
                        for a in args:
                            name = _pkg_name(a)
                            if name in packages:
                                ctx.add(
                                    "RemovedInLaterLayer", instr.line,
                                    f"package {name} installed by the RUN at line "
                                    f"{packages[name]} is removed in a later layer",
                                    f"install and remove {name} in the same RUN",
                                )  # fmt: skip
                    elif cmd.name == "rm":
                        for a in cmd.words[1:]:
                            if a.startswith("-"):
                                continue
                            target = posixpath.normpath(posixpath.join(cwd, a))
                            for path, line in files.items():
                                if _covers(target, path):
                                    ctx.add(
                                        "RemovedInLaterLayer", instr.line,
                                        f"{path}, added at line {line}, is removed in a later "
                                        "layer",
                                        f"remove {path} in the instruction that creates it "
                                        "(or build it in another stage)",
                                    )  # fmt: skip
                    for path in _created_paths(cmd, cwd):
                        made[path] = instr.line
                packages.update(installed)
                files.update(made)


def _covers(target: str, path: str) -> bool:
    if any(c in target for c in "*?["):
        return fnmatch.fnmatchcase(path, target) or fnmatch.fnmatchcase(path, target + "/*")
    return path == target or path.startswith(target.rstrip("/") + "/")


def _created_paths(cmd: Command, cwd: str) -> list[str]:
    words = cmd.words[1:]
    out = []
    if cmd.name == "git" and words[:1] == ["clone"]:
        args = [w for w in words[1:] if not w.startswith("-")]
        if args:
            dest = args[1] if len(args) > 1 else posixpath.basename(args[0]).removesuffix(".git")
            out.append(dest)
    elif cmd.name in ("wget", "curl"):
        flag = "-O" if cmd.name == "wget" else "-o"
        for i, w in enumerate(words):
            if w == flag and i + 1 < len(words):
                out.append(words[i + 1])
            elif w.startswith("--output-document=") or w.startswith("--output="):
                out.append(w.split("=", 1)[1])
        urls = [w for w in words if "://" in w]
        if not out and urls and (cmd.name == "wget" or "-O" in words):
            out.append(posixpath.basename(urls[0].split("?")[0]))
    elif cmd.name in ("mkdir", "touch"):
        out += [w for w in words if not w.startswith("-")]
    return [posixpath.normpath(posixpath.join(cwd, p)) for p in out if p and p != "-"]


# ---------------------------------------------------------------------------- instructions


@check
def check_instructions(ctx: Context) -> None:
    for instr in ctx.df.instructions:
        if isinstance(instr, Maintainer):
            ctx.add(
                "MaintainerDeprecated", instr.line,
                "Maintainer instruction is deprecated in favor of using label",
                f'LABEL org.opencontainers.image.authors="{instr.maintainer}"',
            )  # fmt: skip
        elif isinstance(instr, Add):
            _check_add(ctx, instr)
        elif isinstance(instr, Run):
            cmds = run_commands(instr)
            if any(c.name == "cd" for c in cmds):
                ctx.add("CdInRun", instr.line, "cd in RUN: the directory only lasts for this RUN")
            for c in split_commands(run_script(instr)):
                if c.name in ("su", "sudo"):
                    ctx.add(
                        "SuSudo", instr.line, f"{c.name} in RUN",
                        "use USER for the instructions that should not run as root",
                    )  # fmt: skip
                    break
        elif isinstance(instr, Expose):
            _check_expose(ctx, instr)
        elif isinstance(instr, Stopsignal) and "$" not in instr.signal:
            try:
                parse_signal(instr.signal)
            except InvalidValue as e:
                ctx.add("StopsignalInvalid", instr.line, e.message)
        elif isinstance(instr, Env | Label) and any(p.legacy for p in instr.pairs):
            key = instr.pairs[0].key
            ctx.add(
                "LegacyKeyValueFormat", instr.line,
                f'"{instr.NAME} key=value" should be used instead of legacy '
                f'"{instr.NAME} key value" format',
                f"{instr.NAME} {key}=...",
            )  # fmt: skip
        if isinstance(instr, Env | Arg):
            keys = [p.key for p in instr.pairs] if isinstance(instr, Env) else \
                [a.key for a in instr.args]  # fmt: skip
            for key in keys:
                if _SECRET.search(key) and not _SECRET_OK.search(key):
                    ctx.add(
                        "SecretsUsedInArgOrEnv", instr.line,
                        "Do not use ARG or ENV instructions for sensitive data "
                        f"({instr.NAME} {go_quote(key)})",
                    )  # fmt: skip


_SECRET = re.compile(
    r"(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|secret|token)"
    r"(?:_|$)"
)
_SECRET_OK = re.compile(r"(?i)(?:_|^)(?:public|file|version)(?:_|$)")
_ARCHIVE = re.compile(
    r"\.(tar|tar\.gz|tgz|tar\.bz2|tbz2?|tar\.xz|txz|tar\.zst|tzst|gz|bz2|xz)$", re.IGNORECASE
)


def _check_add(ctx: Context, add: Add) -> None:
    if add.checksum or add.keep_git_dir is not None or add.unpack is not None:
        return
    for src in add.sources:
        if "://" in src or src.startswith("git@") or "$" in src or _ARCHIVE.search(src):
            return
    ctx.add(
        "CopyInsteadOfAdd", add.line, "ADD of local files that are not archives: COPY does it",
        "COPY " + " ".join((*add.sources, add.dest)),
    )  # fmt: skip


def _check_expose(ctx: Context, expose: Expose) -> None:
    for port in expose.ports:
        if "$" in port:
            continue
        try:
            parse_ports([port])
        except InvalidValue as e:
            ctx.add("ExposeInvalidPort", expose.line, e.message)
            continue
        if ":" in port:
            ctx.add(
                "ExposeInvalidFormat", expose.line,
                f"EXPOSE instruction should not define an IP address or host-port mapping, "
                f"found '{port}'",
                "EXPOSE " + port.rsplit(":", 1)[-1],
            )  # fmt: skip
        proto = port.partition("/")[2]
        if proto and proto != proto.lower():
            ctx.add(
                "ExposeProtoCasing", expose.line,
                f"Defined protocol '{port}' in EXPOSE instruction should be lowercase",
                "EXPOSE " + port.lower(),
            )  # fmt: skip


# ---------------------------------------------------------------------------- FROM and stages


@check
def check_from(ctx: Context) -> None:
    df = ctx.df
    meta = _meta_env(df)
    declared = {a.key for arg in df.meta_args for a in arg.args}
    stage_names: set[str] = set()
    for stage in df.stages:
        f = stage.from_
        words = f.original.split()
        keyword = words[0] if words else "FROM"
        if len(words) >= 4 and words[-2].lower() == "as":
            as_word, name = words[-2], words[-1]
            if name != name.lower():
                ctx.add(
                    "StageNameCasing",
                    f.line,
                    f"Stage name '{name}' should be lowercase",
                    f"AS {name.lower()}",
                )
            if keyword in (keyword.lower(), keyword.upper()) and (
                (keyword == keyword.lower()) != (as_word == as_word.lower())
                or as_word not in (as_word.lower(), as_word.upper())
            ):
                ctx.add(
                    "FromAsCasing", f.line,
                    f"'{as_word}' and '{keyword}' keywords' casing do not match",
                    f"{keyword} ... {'as' if keyword == keyword.lower() else 'AS'} {name}",
                )  # fmt: skip
        if f.name:
            if f.name in ("scratch", "context"):
                ctx.add(
                    "ReservedStageName",
                    f.line,
                    "Stage name should not use the same name as reserved stage "
                    f"{go_quote(f.name)}",
                )
            if f.name in stage_names:
                ctx.add(
                    "DuplicateStageName", f.line,
                    f"Duplicate stage name {go_quote(f.name)}, stage names should be unique",
                )  # fmt: skip
            stage_names.add(f.name)
        env = dict(_PLATFORM_ARGS)
        env.update(meta)
        try:
            exp = _LEXER.process_word_with_matches(f.base, env)
        except ExpansionError:
            continue
        for var in sorted(exp.unmatched):
            if var not in declared:
                ctx.add(
                    "UndefinedArgInFrom",
                    f.line,
                    f"FROM argument '{var}' is not declared",
                    f"ARG {var}=... before the first FROM",
                )
        if f.platform:
            _check_platform(ctx, f, env)
        base = exp.result
        if (exp.matched or exp.unmatched) and (not base or not _valid_ref(base)):
            ctx.add(
                "InvalidDefaultArgInFrom", f.line,
                f"Default value for ARG {f.base} results in empty or invalid base image name",
            )  # fmt: skip
            continue
        if (
            not base
            or base.lower() == "scratch"
            or any(s.name == base.lower() for s in df.stages[: stage.index])
        ):
            continue
        if "@" in base:
            continue
        last = base.rsplit("/", 1)[-1]
        tag = last.partition(":")[2]
        if not tag:
            ctx.add(
                "UnpinnedBaseImage",
                f.line,
                f"FROM {base} has no tag (it means latest)",
                f"FROM {base}:VERSION",
            )
        elif tag == "latest":
            ctx.add(
                "UnpinnedBaseImage",
                f.line,
                f"FROM {base} uses the tag latest",
                f"FROM {base.rsplit(':', 1)[0]}:VERSION",
            )


_PLATFORM_ARGS = {
    k: v for k, v in (
        ("TARGETPLATFORM", "linux/amd64"), ("TARGETOS", "linux"), ("TARGETARCH", "amd64"),
        ("TARGETVARIANT", ""), ("BUILDPLATFORM", "linux/amd64"), ("BUILDOS", "linux"),
        ("BUILDARCH", "amd64"), ("BUILDVARIANT", ""), ("TARGETSTAGE", ""),
        ("TARGETOSVERSION", ""), ("BUILDOSVERSION", ""),
    )
}  # fmt: skip
_REF = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|"
    r"-+)[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@[a-z0-9]+:[a-f0-9]{32,})?$"
)


def _valid_ref(ref: str) -> bool:
    return bool(_REF.match(ref))


def _check_platform(ctx: Context, f: From, env: dict[str, str]) -> None:
    try:
        exp = _LEXER.process_word_with_matches(f.platform, env)
    except ExpansionError:
        return
    if exp.matched == {"TARGETPLATFORM"} and not exp.unmatched and f.platform.strip("${}") \
            == "TARGETPLATFORM":  # fmt: skip
        ctx.add(
            "RedundantTargetPlatform", f.line,
            f'Setting platform to predefined {f.platform} in FROM is redundant as this is the '
            "default behavior",
            "remove --platform",
        )  # fmt: skip
    if not exp.matched and not exp.unmatched:
        osname, _, rest = exp.result.partition("/")
        arch = rest.partition("/")[0]
        if (osname and osname in f.name) or (arch and arch in f.name):
            return
        ctx.add(
            "FromPlatformFlagConstDisallowed",
            f.line,
            f'FROM --platform flag should not use constant value "{exp.result}"',
        )


@check
def check_casing(ctx: Context) -> None:
    lower = upper = 0
    for instr in ctx.df.instructions:
        k = instr.keyword
        if k == k.lower():
            lower += 1
        elif k == k.upper():
            upper += 1
    majority_lower = lower > upper
    for instr in ctx.df.instructions:
        k = instr.keyword
        if majority_lower and k != k.lower():
            want = "lowercase"
        elif not majority_lower and k != k.upper():
            want = "uppercase"
        else:
            continue
        ctx.add(
            "ConsistentInstructionCasing",
            instr.line,
            f"Command '{k}' should match the case of the command majority ({want})",
            k.lower() if majority_lower else k.upper(),
        )


@check
def check_empty_continuation(ctx: Context) -> None:
    for w in ctx.df.result.warnings:
        if w.message.startswith("Empty continuation"):
            ctx.add("NoEmptyContinuation", w.line, w.message)


@check
def check_stage_rules(ctx: Context) -> None:
    for stage in ctx.df.stages:
        last: dict[str, Instruction] = {}
        absolute_workdir = any(
            isinstance(i, Workdir) for s in stage_chain(ctx.df, stage)[:-1] for i in s.commands
        )
        for instr in stage.commands:
            if isinstance(instr, Cmd | Entrypoint | Healthcheck):
                if instr.NAME in last:
                    ctx.add(
                        "MultipleInstructionsDisallowed", last[instr.NAME].line,
                        f"Multiple {instr.NAME} instructions should not be used in the same "
                        "stage because only the last one will be used",
                    )  # fmt: skip
                last[instr.NAME] = instr
            if isinstance(instr, Workdir):
                if not absolute_workdir and not instr.path.startswith(("/", "$")):
                    ctx.add(
                        "WorkdirRelativePath", instr.line,
                        f"Relative workdir {go_quote(instr.path)} can have unexpected results "
                        "if the base image changes",
                        f"WORKDIR /{instr.path}",
                    )  # fmt: skip
                absolute_workdir = True
        shell_set = any(
            isinstance(i, Shell) for s in stage_chain(ctx.df, stage) for i in s.commands
        )
        for instr in stage.commands:
            shell_form = isinstance(instr, Cmd | Entrypoint) and instr.shell_form
            if shell_form and instr.command and not shell_set:
                ctx.add(
                    "JSONArgsRecommended", instr.line,
                    f"JSON arguments recommended for {instr.NAME} to prevent unintended "
                    "behavior related to OS signals",
                    f'{instr.NAME} {_json_form(instr.command)}',
                )  # fmt: skip


def _json_form(command: tuple[str, ...]) -> str:
    import json

    try:
        words = [c.words for c in split_commands(" ".join(command))]
    except Exception:  # pragma: no cover - the splitter never raises on text
        words = []
    if len(words) == 1:
        return json.dumps(words[0])
    return json.dumps(["/bin/sh", "-c", " ".join(command)])


# ---------------------------------------------------------------------------- variables

_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
_KNOWN_VARS = frozenset(
    (
        "PATH", "HOME", "HOSTNAME", "TERM", "SOURCE_DATE_EPOCH", *_PLATFORM_ARGS, *_PROXIES,
        *(p.lower() for p in _PROXIES),
    )
)  # fmt: skip


@check
def check_undefined_var(ctx: Context) -> None:
    df = ctx.df
    defined_by_stage: dict[int, set[str]] = {}
    for stage in df.stages:
        parent = df.find_stage(stage.from_.base)
        known = set(defined_by_stage.get(parent.index, ())) if parent is not None and \
            parent.index < stage.index else set()  # fmt: skip
        for instr in stage.commands:
            for word in _expanded_words(instr):
                env = {k: "x" for k in known | _KNOWN_VARS}
                try:
                    exp = _LEXER.process_word_with_matches(word, env)
                except ExpansionError:
                    continue
                for var in sorted(exp.unmatched):
                    if var.startswith("BUILDKIT_"):
                        continue
                    ctx.add(
                        "UndefinedVar",
                        instr.line,
                        f"Usage of undefined variable '${var}'",
                        f"ARG {var} (or ENV {var}=...) before line {instr.line}",
                    )
            if isinstance(instr, Env):
                known |= {p.key for p in instr.pairs}
            elif isinstance(instr, Arg):
                known |= {a.key for a in instr.args}
        defined_by_stage[stage.index] = known


def _expanded_words(instr: Instruction) -> list[str]:
    if isinstance(instr, Env | Label):
        return [p.value for p in instr.pairs]
    if isinstance(instr, Arg):
        return [a.value for a in instr.args if a.value is not None]
    if isinstance(instr, Copy | Add):
        return [*instr.sources, instr.dest, instr.chown, instr.chmod]
    if isinstance(instr, Workdir):
        return [instr.path]
    if isinstance(instr, User):
        return [instr.user]
    if isinstance(instr, Expose):
        return list(instr.ports)
    if isinstance(instr, Volume):
        return list(instr.volumes)
    if isinstance(instr, Stopsignal):
        return [instr.signal]
    return []


# ---------------------------------------------------------------------------- run time

_PRIVILEGE_DROPPERS = frozenset(
    ("gosu", "su-exec", "setpriv", "chpst", "setuidgid", "s6-setuidgid")
)


@dataclass
class StartupScript:
    instr: Cmd | Entrypoint
    path: Path  # in the build context
    image_path: str
    text: str


def find_startup_script(ctx: Context) -> StartupScript | None:
    """The shell script from the context that the final stage's ENTRYPOINT/CMD starts."""
    chain = final_chain(ctx.df)
    entry: Entrypoint | None = None
    cmd: Cmd | None = None
    for stage in chain:
        for instr in stage.commands:
            if isinstance(instr, Entrypoint):
                entry, cmd = instr, None
            elif isinstance(instr, Cmd):
                cmd = instr
    instr = entry if entry is not None and entry.command else cmd
    if instr is None or instr.shell_form or not instr.command or ctx.context_dir is None:
        return None
    argv = list(instr.command)
    prog = argv[0]
    if posixpath.basename(prog) in _SHELLS and len(argv) > 1 and not argv[1].startswith("-"):
        prog = argv[1]
    candidates = [prog] if "/" in prog else [posixpath.join(d, prog) for d in PATH_DIRS]
    for stage in reversed(chain):
        workdir = "/"
        copies: list[tuple[str, str]] = []
        for i in stage.commands:
            if isinstance(i, Workdir):
                workdir = posixpath.join(workdir, i.path)
            elif isinstance(i, Copy | Add) and not (isinstance(i, Copy) and i.from_):
                dest = posixpath.join(workdir, i.dest)
                for src in i.sources:
                    if "://" in src or "$" in src or any(c in src for c in "*?["):
                        continue
                    if i.dest.endswith("/") or len(i.sources) > 1:
                        copies.append((src, posixpath.join(dest, posixpath.basename(src))))
                    else:
                        copies.append((src, posixpath.normpath(dest)))
        for src, dest in reversed(copies):
            if dest in candidates:
                path = ctx.context_dir / src.lstrip("/")
                try:
                    text = path.read_text(encoding="utf-8", errors="replace")
                except OSError:
                    return None
                first = text.split("\n", 1)[0]
                shebang = first[2:].split() if first.startswith("#!") else []
                if not shebang:
                    return None
                interp = posixpath.basename(shebang[0])
                if interp == "env" and len(shebang) > 1:
                    interp = shebang[1]
                if interp not in _SHELLS:
                    return None
                return StartupScript(instr, path, dest, text)
    return None


@check
def check_runtime(ctx: Context) -> None:
    script = find_startup_script(ctx)
    drops = False
    if script is not None:
        cmds = split_commands(script.text)
        name = script.path.name
        for c in cmds:
            if c.name in ("su", "sudo") or unwrap(c).name in ("su",):
                ctx.add(
                    "SuSudo", script.instr.line,
                    f"{name}:{c.line}: {c.name} starts the service: it stays behind as its "
                    "root parent",
                    f"{name}:{c.line}: exec gosu USER COMMAND...",
                )  # fmt: skip
                break
        last = _last_command(script.text)
        if last is not None:
            if last.name == "exec":
                inner = unwrap(last)
                if inner.name in _PRIVILEGE_DROPPERS:
                    drops = True
            else:
                ctx.add(
                    "StartupScriptNoExec", script.instr.line,
                    f"{name}:{last.line}: '{' '.join(last.words)[:60]}' runs without exec: "
                    f"the shell stays PID 1 and the service gets no SIGTERM",
                    f"{name}:{last.line}: exec {' '.join(last.words)[:60]}",
                )  # fmt: skip
    chain = final_chain(ctx.df)
    user = ""
    for stage in chain:
        for instr in stage.commands:
            if isinstance(instr, User):
                user = instr
    final = ctx.df.stages[-1]
    if isinstance(user, User):
        if user.user.split(":")[0] in ("root", "0"):
            ctx.add(
                "NoUser",
                user.line,
                "the last USER is root: the service runs as root",
                "USER NAME (a user without privileges)",
            )
    elif not drops:
        ctx.add(
            "NoUser", final.from_.line,
            "no USER in the final stage: the container runs as root",
        )  # fmt: skip


def _last_command(text: str) -> Command | None:
    """The script's last top-level command, None when the script ends in a compound command
    or with exit (then the last command is not simple to find)."""
    lines = [ln for ln in text.rstrip().split("\n") if ln.strip() and
             not ln.strip().startswith("#")]  # fmt: skip
    if not lines:
        return None
    tail = lines[-1].strip()
    if tail in ("fi", "done", "esac", "}", ")") or tail.startswith(("exit", "wait")):
        return None
    cmds = split_commands(text)
    if not cmds:
        return None
    last = cmds[-1]
    if last.op_after == "&" or not last.words:
        return None
    return last


# ---------------------------------------------------------------------------- .dockerignore


@check
def check_ignored_copy(ctx: Context) -> None:
    if ctx.context_dir is None:
        return
    sources = [
        (instr, src, clean)
        for instr in ctx.df.instructions
        if isinstance(instr, Copy | Add) and not (isinstance(instr, Copy) and instr.from_)
        for src in instr.sources
        if not ("://" in src or "$" in src or any(c in src for c in "*?["))
        and (clean := posixpath.normpath(src.lstrip("/"))) not in (".", "")
    ]
    if not sources:
        return  # nothing .dockerignore could leave out: no need to read it (or import ignore)
    from soute.dockerfile.ignore import PatternMatcher, find_ignore_file, read_ignore_file

    try:
        path = find_ignore_file(ctx.context_dir, None)
        if path is None:
            return
        matcher = PatternMatcher(read_ignore_file(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, Exception):
        return
    for instr, src, clean in sources:
        if matcher.matches(clean):
            ctx.add(
                "CopyIgnoredFile", instr.line,
                f"Attempting to {'Add' if isinstance(instr, Add) else 'Copy'} file "
                f"{go_quote(posixpath.normpath(src))} that is excluded by .dockerignore",
            )  # fmt: skip


def iter_rules_fired(findings: list[Finding]) -> Iterator[str]:
    yield from sorted({f.rule.id for f in findings})
