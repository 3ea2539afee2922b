"""Metadata instructions applied to an image config: what CMD, ENV, LABEL... do to an image.

The build applies them step by step; ``soute import -c`` and ``soute commit -c`` apply
docker's ``--change`` lines the same way, as docker's commit does (expanded with the image's
own Env, ENTRYPOINT resetting a CMD that was not set by the same changes).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from soute.dockerfile import instructions as ins
from soute.errors import LocatedError, SouteError
from soute.image.config import ContainerConfig, Healthcheck, ImageConfig

# docker's list for `commit --change` and `import --change`.
CHANGE_INSTRUCTIONS = frozenset(
    (
        "CMD",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "HEALTHCHECK",
        "LABEL",
        "ONBUILD",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    )
)


@dataclass
class ConfigState:
    """What one build stage (or one set of changes) has done so far that later steps read."""

    cmd_set: bool = False


def apply_instruction(cfg: ContainerConfig, instr: ins.Instruction, state: ConfigState) -> bool:
    """Apply an expanded metadata instruction; False when ``instr`` is not one."""
    shell = cfg.shell or list(ins.DEFAULT_SHELL)
    if isinstance(instr, ins.Cmd):
        cfg.cmd = instr.argv(shell) or []
        state.cmd_set = True
    elif isinstance(instr, ins.Entrypoint):
        cfg.entrypoint = instr.argv(shell) or []
        if not state.cmd_set:
            cfg.cmd = []  # a new entrypoint drops an inherited CMD
    elif isinstance(instr, ins.Env):
        for kv in instr.pairs:
            cfg.set_env(kv.key, kv.value)
    elif isinstance(instr, ins.Label):
        for kv in instr.pairs:
            cfg.labels[kv.key] = kv.value
    elif isinstance(instr, ins.Expose):
        for port in instr.port_specs or instr.ports:
            if port not in cfg.exposed_ports:
                cfg.exposed_ports.append(port)
    elif isinstance(instr, ins.Volume):
        for v in instr.volumes:
            if v not in cfg.volumes:
                cfg.volumes.append(v)
    elif isinstance(instr, ins.User):
        cfg.user = instr.user
    elif isinstance(instr, ins.Workdir):
        cfg.working_dir = posixpath.normpath(posixpath.join("/", cfg.working_dir, instr.path))
    elif isinstance(instr, ins.Stopsignal):
        cfg.stop_signal = instr.signal
    elif isinstance(instr, ins.Onbuild):
        cfg.on_build.append(instr.expression)
    elif isinstance(instr, ins.Shell):
        cfg.shell = list(instr.shell)
    elif isinstance(instr, ins.Healthcheck):
        h = instr.health
        cfg.healthcheck = Healthcheck(
            test=list(h.test),
            interval=h.interval,
            timeout=h.timeout,
            start_period=h.start_period,
            start_interval=h.start_interval,
            retries=h.retries,
        )
    else:
        return False
    return True


def apply_changes(config: ImageConfig, changes: Sequence[str]) -> None:
    """docker's ``--change`` lines (``'CMD ["sh"]'``, ``'ENV A=1'``) applied to ``config``."""
    from soute.dockerfile.instructions import parse_dockerfile
    from soute.dockerfile.stages import BuildScope

    state = ConfigState()
    allowed = "use one of " + ", ".join(sorted(CHANGE_INSTRUCTIONS))
    for change in changes:
        try:
            # Parsed as the line after a FROM: its errors are the change's, not a line's.
            df = parse_dockerfile("FROM scratch\n" + change, file="--change")
            commands = df.stages[0].commands
            if len(commands) != 1:
                raise SouteError(f"--change {change!r}: give exactly one instruction")
            instr = commands[0]
            if instr.NAME not in CHANGE_INSTRUCTIONS:
                raise SouteError(f"{instr.NAME.lower()} is not a valid change command",
                                 allowed)
            scope = BuildScope(df).stage_scope(df.stages[0], image_env=config.config.env)
            apply_instruction(config.config, scope.expand(instr), state)
        except LocatedError as e:
            word = change.split(maxsplit=1)[0].lower() if change.split() else ""
            if e.message.startswith("unknown instruction"):
                raise SouteError(f"{word} is not a valid change command", allowed) from None
            raise SouteError(f"--change {change!r}: {e.message}", e.hint) from None
