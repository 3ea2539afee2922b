"""The variables a build sees, stage by stage, as BuildKit's dockerfile2llb scopes them.

:class:`BuildScope` holds what is global to one build: the ``--build-arg`` values, the
predefined platform ARGs, the global ARGs declared before the first FROM, and the stage
graph (FROM bases, ``COPY --from`` and ``RUN --mount from=``). :class:`StageScope` walks one
stage: it expands each instruction with the variables in scope (only where BuildKit expands)
and then records what the instruction declares::

    build = BuildScope(parse_dockerfile(text), {"VERSION": "1.2"})
    done: dict[int, StageScope] = {}
    for stage in build.plan():
        base = build.resolve_base(stage)  # .stage: an earlier stage, else pull .name
        if base.stage is not None:
            scope = build.stage_scope(stage, base=done[base.stage.index])
        else:
            scope = build.stage_scope(stage, image_env=config.env, image_onbuild=config.onbuild)
        for instr in scope.walk():  # expanded, in order; scope.env is what a RUN gets
            ...
        done[stage.index] = scope

Rules kept from BuildKit, some of them surprising:

- Global ARGs are visible only in FROM lines (base name and ``--platform``); a bare
  ``ARG NAME`` inside a stage brings the global value in.
- A stage ARG applies from its line on and is inherited by stages built ``FROM`` it.
- ENV and ARG share one environment where the last writer wins (``ENV X=1`` then ``ARG X=2``
  gives RUN ``X=2``, while the image config keeps ``X=1``); a stage built FROM another
  re-applies the image config's ENV on top, so there ENV wins again.
- Within one instruction every variable keeps the value it had before it
  (``ENV a=1 b=$a`` uses the old ``a``), except ARG, which BuildKit resolves name by name
  (``ARG a=1 b=$a`` gives ``b=1``).
- ``--build-arg`` values override ARG defaults and are used verbatim (never expanded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from soute.dockerfile.goquote import go_quote
from soute.dockerfile.instructions import (
    Add,
    Arg,
    ArgDef,
    Copy,
    Dockerfile,
    Env,
    Expose,
    Instruction,
    InstructionError,
    InvalidValue,
    KeyValue,
    Label,
    Onbuild,
    Run,
    SourceContent,
    Stage,
    Stopsignal,
    User,
    Volume,
    Workdir,
    _did_you_mean,
    go_atoi,
    parse_mount,
    parse_ports,
    parse_signal,
    parse_trigger,
)
from soute.dockerfile.shell import ExpansionError, Lexer
from soute.errors import LocatedError
from soute.image.platforms import Platform, PlatformError

__all__ = [
    "DEFAULT_PATH",
    "PREDEFINED_ARGS",
    "PROXY_ARGS",
    "BaseRef",
    "BuildScope",
    "Dependency",
    "StageScope",
    "host_platform",
    "unsupported_platform",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROXY_ARGS = (
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
    "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
)  # fmt: skip
PREDEFINED_ARGS = (
    "BUILDPLATFORM", "BUILDOS", "BUILDOSVERSION", "BUILDARCH", "BUILDVARIANT",
    "TARGETPLATFORM", "TARGETOS", "TARGETOSVERSION", "TARGETARCH", "TARGETVARIANT",
    "TARGETSTAGE",
)  # fmt: skip
# ARGs BuildKit declares but keeps out of the environment of RUN.
_NON_ENV_ARGS = frozenset(("BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"))

InstrT = TypeVar("InstrT", bound=Instruction)

# ---------------------------------------------------------------------------- platforms


def host_platform() -> Platform:
    """BuildKit's default build platform: the host's, normalised (arm64 has no variant)."""
    return Platform.host().normalized()


def unsupported_platform(platform: Platform, host: Platform) -> str | None:
    """Why soute cannot build for ``platform`` on ``host``, or None when it can.

    soute builds for the host platform only: no emulation, and no base images or
    ``TARGETPLATFORM`` of another platform even where the host could run it (linux/386).
    """
    if host.matches(platform, strict=True):
        return None
    if platform.os != host.os:
        return f"building for {platform} needs a {platform.os} host: soute builds for {host}"
    if host.matches(platform) or platform.architecture == host.architecture:
        return (
            f"building for {platform} is not supported (yet): soute builds for the host "
            f"platform, {host}"
        )
    return f"building for {platform} needs emulation, which soute does not do (yet)"


# ---------------------------------------------------------------------------- the build


@dataclass(frozen=True)
class BaseRef:
    """What a stage's FROM names once its variables are expanded."""

    name: str  # image reference, "scratch", or the name of an earlier stage
    platform: Platform | None  # from --platform; None means the target platform
    stage: Stage | None  # the earlier stage it builds on, if any


@dataclass(frozen=True)
class Dependency:
    """A command reading from another stage of the file."""

    instr: Instruction
    stage: Stage
    ref: str  # the reference as written (--from / from=)
    target: str = ""  # for a mount: its target as written


def _mount_target(spec: str) -> str:
    """A mount's target as written, for BuildKit's message about it."""
    try:
        return parse_mount(spec, lambda w: w).target
    except InvalidValue:
        return ""


def _env_set(env: dict[str, str], key: str, value: str) -> None:
    """BuildKit's EnvList.AddOrReplace: a re-set name moves to the end."""
    env.pop(key, None)
    env[key] = value


class BuildScope:
    """Everything global to one build of one Dockerfile."""

    def __init__(
        self,
        dockerfile: Dockerfile,
        build_args: Mapping[str, str] | None = None,
        *,
        target: str | None = None,
        target_platform: Platform | None = None,
        build_platform: Platform | None = None,
    ) -> None:
        self.dockerfile = dockerfile
        self.build_args: dict[str, str] = dict(build_args or {})
        self.target_name = target
        self.build_platform = build_platform or host_platform()
        self.target_platform = target_platform or self.build_platform
        self.lexer = Lexer(dockerfile.escape)
        self._consumed: set[str] = set()
        self.predefined = self._predefined(target or dockerfile.stages[-1].name)
        self.global_args = self._meta_args()

    @property
    def target(self) -> Stage:
        """The stage to build (raises BuildKit's error when the name matches none)."""
        return self.dockerfile.target(self.target_name)

    # -- global ARGs

    def _predefined(self, target_name: str) -> dict[str, str]:
        bp, tp = self.build_platform, self.target_platform
        values = {
            "BUILDPLATFORM": str(bp),
            "BUILDOS": bp.os,
            "BUILDOSVERSION": bp.os_version,
            "BUILDARCH": bp.architecture,
            "BUILDVARIANT": bp.variant,
            "TARGETPLATFORM": tp.format_all(),
            "TARGETOS": tp.os,
            "TARGETOSVERSION": tp.os_version,
            "TARGETARCH": tp.architecture,
            "TARGETVARIANT": tp.variant,
            "TARGETSTAGE": target_name or "default",
        }
        return {k: self.build_args.get(k, v) for k, v in values.items()}

    def _meta_args(self) -> dict[str, str]:
        """The ARGs before the first FROM, resolved in order over the predefined ones."""
        args = dict(self.predefined)
        for instr in self.dockerfile.meta_args:
            for a in instr.args:
                self._consumed.add(a.key)
                if a.key in self.build_args:
                    value: str | None = self.build_args[a.key]
                elif a.value is not None:
                    value = self._expand(instr, a.value, args)
                else:
                    value = None
                if value is not None:
                    _env_set(args, a.key, value)
        return args

    def _expand(self, instr: Instruction, word: str, env: Mapping[str, str]) -> str:
        try:
            return self.lexer.process_word(word, env)
        except ExpansionError as e:
            raise self.error(instr, e.message, e.hint) from None

    def error(self, instr: Instruction, message: str, hint: str | None = None) -> LocatedError:
        return InstructionError(message, file=self.dockerfile.file, line=instr.line, hint=hint)

    @property
    def source_date_epoch(self) -> str | None:
        """SOURCE_DATE_EPOCH from --build-arg, else a non-empty global ARG default."""
        if "SOURCE_DATE_EPOCH" in self.build_args:
            return self.build_args["SOURCE_DATE_EPOCH"]
        return self.global_args.get("SOURCE_DATE_EPOCH") or None

    @property
    def sandbox_hostname(self) -> str:
        """The hostname RUN sees: BUILDKIT_SANDBOX_HOSTNAME if set and non-empty."""
        return self.build_args.get("BUILDKIT_SANDBOX_HOSTNAME") or "buildkitsandbox"

    @property
    def cache_mount_namespace(self) -> str:
        """BUILDKIT_CACHE_MOUNT_NS: cache mounts are keyed ``<namespace>/<cache id>``."""
        return self.build_args.get("BUILDKIT_CACHE_MOUNT_NS", "")

    def proxy_env(self) -> list[str]:
        """Proxy build args as RUN receives them without an ARG (both cases of each name)."""
        found: dict[str, str] = {}
        for key in sorted(self.build_args):  # any case; later spellings win, as BuildKit
            if key.lower() in ("http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"):
                found[key.lower()] = self.build_args[key]
        out = []
        for name in ("http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"):
            if found.get(name):
                out += [f"{name.upper()}={found[name]}", f"{name}={found[name]}"]
        return out

    # -- stages

    def resolve_base(self, stage: Stage) -> BaseRef:
        """The FROM line with the global ARGs expanded, and the stage it names if any."""
        instr = stage.from_
        try:
            name = self.lexer.process_word_with_matches(instr.base, self.global_args).result
        except ExpansionError as e:
            raise self.error(instr, e.message, e.hint) from None
        if not name:
            raise self.error(
                instr,
                f"base name ({instr.base}) should not be blank",
                "declare the ARG with a default before the first FROM, or pass --build-arg",
            )
        platform = None
        if instr.platform:
            platform = self._platform(instr, instr.platform)
        # An earlier stage, matched on the exact expanded text (stage names are lower case).
        base = None
        for earlier in self.dockerfile.stages[: stage.index]:
            if earlier.name and earlier.name == name:
                base = earlier
        return BaseRef(name, platform, base)

    def _platform(self, instr: Instruction, spec: str) -> Platform:
        try:
            match = self.lexer.process_word_with_matches(spec, self.global_args)
        except ExpansionError as e:
            # BuildKit names the (empty) partial result here, not the expression
            raise self.error(
                instr, f"failed to process arguments for platform : {e.message}"
            ) from None
        suggestion = ""
        for name in sorted(match.unmatched):
            if suggestion := _did_you_mean(name, self.global_args):
                break
        if not match.result:
            raise self.error(instr, f"empty platform value from expression {spec}{suggestion}")
        try:
            return Platform.parse(match.result)
        except PlatformError as e:
            raise self.error(
                instr, f"failed to parse platform {spec}: {e.containerd(go_quote)}{suggestion}",
                "e.g. linux/amd64, linux/arm64 or $BUILDPLATFORM",
            ) from None  # fmt: skip

    def stage_ref(self, instr: Copy) -> Stage | str:
        """What ``COPY --from`` names: a stage of this file, or an image or context name."""
        value = instr.from_
        try:
            literal = self.lexer.process_word_with_matches(value, {}).result == value
        except ExpansionError as e:
            raise self.error(instr, e.message, e.hint) from None
        if not literal:
            raise self.error(
                instr,
                "variable expansion is not supported for --from, define a new stage with FROM "
                "using ARG from global scope as a workaround",
                "ARG X=... then FROM ${X} AS src, and COPY --from=src",
            )
        index = go_atoi(value)
        if index is None:
            return self.dockerfile.find_stage(value) or value
        if not 0 <= index < len(self.dockerfile.stages):
            raise self.error(
                instr,
                f"invalid stage index {index}",
                f"stages are numbered 0 to {len(self.dockerfile.stages) - 1}",
            )
        return self.dockerfile.stages[index]

    def mount_ref(self, mount_from: str) -> Stage | str:
        """What ``RUN --mount from=`` names (no indexes there; "" reads as scratch)."""
        name = mount_from or "scratch"
        return self.dockerfile.find_stage(name) or name

    def commands(self, stage: Stage, image_onbuild: Sequence[str] = ()) -> tuple[Instruction, ...]:
        """The stage's instructions as BuildKit runs them, ONBUILD triggers first.

        The triggers are ``image_onbuild`` (the base image config's OnBuild) and the ONBUILD
        lines of the earlier stage it is built FROM; they run at the line of the FROM.
        """
        base = self.resolve_base(stage).stage
        expressions = list(image_onbuild)
        if base is not None:
            expressions += [c.expression for c in base.commands if isinstance(c, Onbuild)]
        file, line = self.dockerfile.file, stage.from_.line
        triggers = tuple(parse_trigger(e, file=file, line=line) for e in expressions)
        return triggers + stage.commands

    def dependencies(self, stage: Stage) -> list[Dependency]:
        """The stages this stage's commands read from (COPY --from, RUN --mount from=)."""
        deps: list[Dependency] = []
        for instr in self.commands(stage):
            if isinstance(instr, Copy) and instr.from_:
                ref = self.stage_ref(instr)
                if isinstance(ref, Stage):
                    deps.append(Dependency(instr, ref, instr.from_))
            elif isinstance(instr, Run):
                for spec, mount in zip(instr.mount_specs, instr.mounts, strict=True):
                    ref = self.mount_ref(mount.from_)
                    if isinstance(ref, Stage):
                        deps.append(Dependency(instr, ref, mount.from_, _mount_target(spec)))
        return deps

    def plan(self) -> list[Stage]:
        """The stages the target needs, in the order they are built.

        In BuildKit's order: every FROM is expanded, the target is looked up, every stage's
        references are resolved and checked for cycles, then a stage may only read from
        stages above it.
        """
        stages = self.dockerfile.stages
        refs = [self.resolve_base(s) for s in stages]
        bases = [r.stage for r in refs]
        target = self.target
        deps = {s.index: self.dependencies(s) for s in stages}
        self._check_cycles(deps)
        needed: set[int] = set()
        todo = [target]
        while todo:
            stage = todo.pop()
            if stage.index in needed:
                continue
            needed.add(stage.index)
            if (base := bases[stage.index]) is not None:
                todo.append(base)
            todo.extend(d.stage for d in deps[stage.index])
        order = [s for s in stages if s.index in needed]
        for stage in order:
            platform = refs[stage.index].platform
            why = platform and unsupported_platform(platform, self.build_platform)
            if why:
                raise self.error(
                    stage.from_, why, "remove --platform, or use --platform=$BUILDPLATFORM"
                )
        for stage in order:
            for d in deps[stage.index]:
                if d.stage.index < stage.index:
                    continue
                if isinstance(d.instr, Copy):
                    raise self.error(
                        d.instr,
                        f"cannot copy from stage {go_quote(d.ref)}, it needs to be defined "
                        f"before current stage {go_quote(stage.display_name)}",
                        "move that stage above this one",
                    )
                raise self.error(
                    d.instr,
                    f"cannot mount from stage {go_quote(d.ref)} to {go_quote(d.target)}, "
                    "stage needs to be defined before current command",
                    "move that stage above this one",
                )
        return order

    def _check_cycles(self, deps: Mapping[int, list[Dependency]]) -> None:
        visited: set[int] = set()

        def visit(index: int, path: list[int], via: list[Instruction]) -> list[Instruction]:
            if index in visited:
                return []
            visited.add(index)
            for d in deps[index]:
                if d.stage.index in path or d.stage.index == index:
                    return [*via, d.instr]
                found = visit(d.stage.index, [*path, index], [*via, d.instr])
                if found:
                    return found
            return []

        for stage in self.dockerfile.stages:
            cycle = visit(stage.index, [], [])
            if cycle:
                raise self.error(
                    cycle[0],
                    f"circular dependency detected on stage: {stage.display_name}",
                    "stages cannot read from each other in a loop",
                )

    def stage_scope(
        self,
        stage: Stage,
        *,
        base: StageScope | None = None,
        image_env: Sequence[str] | Mapping[str, str] = (),
        image_onbuild: Sequence[str] = (),
        os: str = "linux",
    ) -> StageScope:
        """A fresh scope for ``stage``.

        ``base`` is the walked scope of the stage it is built FROM, if it is one; otherwise
        ``image_env`` is the base image's config Env (``KEY=value`` strings or a mapping) and
        ``image_onbuild`` its OnBuild triggers.
        """
        return StageScope(
            self, stage, base=base, image_env=image_env, image_onbuild=image_onbuild, os=os
        )

    # -- build args nobody read

    def unused_build_args(self) -> list[str]:
        """``--build-arg`` names that no ARG declared so far (sorted), built-ins excepted."""
        return sorted(
            k
            for k in self.build_args
            if k not in self._consumed
            and k not in PROXY_ARGS
            and k not in PREDEFINED_ARGS
            and k != "SOURCE_DATE_EPOCH"
            and not k.startswith("BUILDKIT_")
        )

    def unused_build_args_warning(self) -> str | None:
        """Docker's warning for them, or None: call after walking the stages that ran."""
        unused = self.unused_build_args()
        if not unused:
            return None
        return f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed"


class StageScope:
    """The variables one stage's instructions see, updated as the stage is walked.

    ``env`` is the build environment (what RUN gets and what words expand with), in BuildKit's
    order: a name that is set again moves to the end. ``image_env`` is the image config's Env
    (ENV only; a name set again keeps its place). ``args`` lists the ARGs declared so far,
    inherited ones first, with their values (the ``|N a=b`` prefix of RUN history entries).
    """

    def __init__(
        self,
        build: BuildScope,
        stage: Stage,
        *,
        base: StageScope | None = None,
        image_env: Sequence[str] | Mapping[str, str] = (),
        image_onbuild: Sequence[str] = (),
        os: str = "linux",
    ) -> None:
        self.build = build
        self.stage = stage
        self.os = os
        self.commands = build.commands(stage, image_onbuild)
        self.env: dict[str, str]
        self.image_env: dict[str, str]
        self.args: list[ArgDef]
        if base is not None:
            self.env = dict(base.env)
            self.image_env = dict(base.image_env)
            self.args = list(base.args)
        else:
            self.env = {}
            self.args = []
            pairs = image_env.items() if isinstance(image_env, Mapping) else map(_split, image_env)
            self.image_env = dict(pairs)
            if "PATH" not in self.image_env and os != "windows":
                self.image_env["PATH"] = DEFAULT_PATH
        # BuildKit re-applies the config's Env on top of what it inherits.
        for key, value in self.image_env.items():
            _env_set(self.env, key, value)

    # -- expansion

    def _word(self, instr: Instruction, env: Mapping[str, str]) -> Callable[[str], str]:
        def expand(word: str) -> str:
            try:
                return self.build.lexer.process_word(word, env)
            except ExpansionError as e:
                raise self.build.error(instr, e.message, e.hint) from None

        return expand

    def expand(self, instr: InstrT) -> InstrT:
        """``instr`` with its words expanded as BuildKit expands them, before it runs.

        Only ADD, COPY, ENV, LABEL, ARG, EXPOSE, USER, VOLUME, WORKDIR, STOPSIGNAL and RUN's
        ``--mount`` values are expanded (FROM: :meth:`BuildScope.resolve_base`); the checks
        BuildKit makes right after expanding (mounts in full, ports, signal, empty volume)
        are made here too. The scope is not changed.
        """
        word = self._word(instr, self.env)
        try:
            return self._expanded(instr, word)
        except InvalidValue as e:
            raise self.build.error(instr, e.message, e.hint) from None

    def _expanded(self, instr: InstrT, word: Callable[[str], str]) -> InstrT:
        replace = dataclasses.replace
        if isinstance(instr, Env | Label):
            pairs = tuple(KeyValue(word(p.key), word(p.value), p.legacy) for p in instr.pairs)
            return replace(instr, pairs=pairs)
        if isinstance(instr, Add | Copy):
            changes: dict[str, object] = {"chown": word(instr.chown), "chmod": word(instr.chmod)}
            if isinstance(instr, Add):
                changes["checksum"] = word(instr.checksum)
            changes["sources"] = tuple(word(s) for s in instr.sources)
            changes["dest"] = word(instr.dest)
            changes["contents"] = tuple(self._content(instr, c) for c in instr.contents)
            return replace(instr, **changes)
        if isinstance(instr, Workdir):
            return replace(instr, path=word(instr.path))
        if isinstance(instr, User):
            return replace(instr, user=word(instr.user))
        if isinstance(instr, Volume):
            volumes = tuple(word(v) for v in instr.volumes)
            if "" in volumes:
                raise InvalidValue("VOLUME specified can not be an empty string")
            return replace(instr, volumes=volumes)
        if isinstance(instr, Stopsignal):
            signal = word(instr.signal)
            parse_signal(signal)
            return replace(instr, signal=signal)
        if isinstance(instr, Run):
            mounts = tuple(parse_mount(spec, word) for spec in instr.mount_specs)
            for m in mounts:
                if m.type == "ssh" and m.source:
                    raise InvalidValue("ssh does not support source", "name the agent with id=")
            return replace(instr, mounts=mounts)
        if isinstance(instr, Expose):
            ports = tuple(p for raw in instr.ports for p in self._words(instr, raw))
            return replace(instr, ports=ports, port_specs=tuple(parse_ports(ports)))
        if isinstance(instr, Arg):
            return replace(instr, args=tuple(self._resolve_args(instr, dict(self.env))))
        return instr

    def _words(self, instr: Instruction, raw: str) -> list[str]:
        try:
            return self.build.lexer.process_words(raw, self.env)
        except ExpansionError as e:
            raise self.build.error(instr, e.message, e.hint) from None

    def _content(self, instr: Instruction, content: SourceContent) -> SourceContent:
        """A heredoc source's body, expanded only when its delimiter was unquoted; quotes
        stay as written and the escape is always backslash (BuildKit's ExpandRaw)."""
        if not content.expand:
            return content
        raw = Lexer("\\", skip_process_quotes=True)
        try:
            data = raw.process_word(content.data, self.env)
        except ExpansionError as e:
            raise self.build.error(instr, e.message, e.hint) from None
        return dataclasses.replace(content, data=data)

    def _resolve_args(self, instr: Arg, env: dict[str, str]) -> list[ArgDef]:
        """Each ARG's value (dispatchArg), one name after the other, updating ``env``."""
        build_args = self.build.build_args
        out = []
        for a in instr.args:
            value = a.value
            if value is None and a.key not in build_args:
                value = self.build.global_args.get(a.key)  # a global ARG brought in
            elif a.key in build_args:
                value = build_args[a.key]
            elif value is not None:
                value = self._word(instr, env)(value)
            if value is not None and a.key not in _NON_ENV_ARGS:
                _env_set(env, a.key, value)
            out.append(dataclasses.replace(a, value=value))
        return out

    # -- effects

    def apply(self, instr: Instruction) -> None:
        """Record what an (already expanded) instruction declares."""
        if isinstance(instr, Env):
            for p in instr.pairs:
                _env_set(self.env, p.key, p.value)
                self.image_env[p.key] = p.value
        elif isinstance(instr, Arg):
            for a in instr.args:
                self.build._consumed.add(a.key)
                if a.value is not None and a.key not in _NON_ENV_ARGS:
                    _env_set(self.env, a.key, a.value)
                self.args.append(a)

    def step(self, instr: InstrT) -> InstrT:
        """Expand ``instr`` with the variables in scope, then apply it."""
        expanded = self.expand(instr)
        self.apply(expanded)
        return expanded

    def walk(self) -> Iterator[Instruction]:
        """The stage's instructions (triggers first), expanded in turn; ``env`` follows."""
        for instr in self.commands:
            yield self.step(instr)

    # -- what the build records

    def run_history(self, argv: Sequence[str]) -> str:
        """A RUN's ``created_by`` body: ``|2 a=1 b=2 /bin/sh -c ...`` (declared ARGs first)."""
        seen: dict[str, str] = {}
        for a in self.args:
            value = self.env.get(a.key, a.value or "")
            seen[a.key] = value  # a name declared again keeps its place, takes the new value
        prefix = [f"|{len(seen)}", *(f"{k}={v}" for k, v in seen.items())] if seen else []
        return " ".join([*prefix, *argv])


def _split(entry: str) -> tuple[str, str]:
    key, _, value = entry.partition("=")
    return key, value
