"""RUN: the command in a container whose upper dir becomes the step's layer."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from soute.errors import LocatedError, SouteError

if TYPE_CHECKING:
    from soute.build.engine import Progress
    from soute.dockerfile.instructions import InlineFile, Run
    from soute.runtime import Mount
    from soute.store.store import Store


def run_step(
    instr: Run,
    argv: Sequence[str],
    env: Sequence[str],
    cwd: str,
    user: str,
    network: str,
    upper: Path,
    lowers: Sequence[Path],
    store: Store,
    progress: Progress,
    *,
    file: str,
    pipe_file: InlineFile | None = None,
    context: Path | None = None,
    secrets: dict[str, bytes] | None = None,
) -> None:
    """Run one RUN with its output streamed as BuildKit's plain progress shows it."""
    from soute.runtime import Layers, Mount, Process, Spec, run
    from soute.runtime.spec import BUILD_NAMESPACES

    namespaces = set(BUILD_NAMESPACES)
    if network == "none":
        namespaces.add("network")
    work = Path(tempfile.mkdtemp(prefix="work-", dir=store.tmp))
    state = Path(tempfile.mkdtemp(prefix="run-", dir=store.tmp))
    env = list(env)
    try:
        mounts = _run_mounts(instr, store, state, env, context, secrets)
    except SouteError as e:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        raise LocatedError(e.message, file=file, line=instr.line, hint=e.hint) from None
    if pipe_file is not None:
        # A `#!` heredoc runs as a file under /dev/pipes, as BuildKit does.
        pipes = state / "pipes"
        pipes.mkdir()
        script = pipes / pipe_file.name
        script.write_text(pipe_file.data)
        script.chmod(0o755)
        mounts.append(Mount("/dev/pipes", "bind", str(pipes), ("rbind", "ro")))
    from soute.runtime.spec import default_mounts

    spec = Spec(
        process=Process(
            args=list(argv), env=list(env), cwd=cwd, user=user, no_new_privileges=False
        ),
        namespaces=namespaces,
        mounts=[*default_mounts(), *mounts],
    )
    read_fd, write_fd = os.pipe()
    pump = threading.Thread(target=_pump, args=(read_fd, progress), daemon=True)
    pump.start()
    try:
        code = run(
            spec, Layers(lowers, upper, work), stdout=write_fd, stderr=write_fd, state_dir=state
        )
    finally:
        os.close(write_fd)
        pump.join()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    if code != 0:
        shown = " ".join(argv)
        raise LocatedError(
            f'process "{shown}" did not complete successfully: exit code: {code}',
            file=file,
            line=instr.line,
            hint="the command's output is above",
        )


def _pump(fd: int, progress: Progress) -> None:
    """Copy the command's output to the progress view as it comes, line by line."""
    with os.fdopen(fd, "rb") as f:
        for raw in f:
            progress.output(raw.decode("utf-8", "replace").rstrip("\n"))


def _run_mounts(instr: Run, store: Store, state: Path, env: list[str],
                context: Path | None, secrets: dict[str, bytes] | None) -> list[Mount]:
    """The ``--mount``s of a RUN as runtime mounts (secret, cache, tmpfs, bind from the
    context); ``env`` gets the secrets exposed as variables."""
    import hashlib

    from soute.runtime import Mount

    out: list[Mount] = []
    for m in instr.mounts:
        if m.type == "tmpfs":
            opts = ("nosuid", "nodev") + ((f"size={m.size}",) if m.size else ())
            out.append(Mount(m.target, "tmpfs", "tmpfs", opts))
        elif m.type == "secret":
            data = (secrets or {}).get(m.secret_id)
            if data is None:
                if m.required:
                    raise SouteError(f"secret {m.secret_id}: not found",
                                     f"pass it with --secret id={m.secret_id},src=FILE")
                continue  # BuildKit skips a secret nobody provided
            if m.env is not None:
                env.append(f"{m.env}={data.decode('utf-8', 'surrogateescape')}")
            target = m.secret_target
            if target is None:
                continue
            path = state / "secrets" / hashlib.sha256(target.encode()).hexdigest()[:16]
            path.parent.mkdir(exist_ok=True, mode=0o700)
            path.write_bytes(data)
            os.chown(path, m.uid or 0, m.gid or 0)
            os.chmod(path, m.file_mode())
            out.append(Mount(target, "bind", str(path), ("rbind", "ro")))
        elif m.type == "cache":
            # Cache mounts persist between builds; their contents never enter a cache key.
            key = hashlib.sha256(m.cache_id.encode()).hexdigest()
            path = store.root / "cache" / "mounts" / key
            if not path.exists():
                path.mkdir(parents=True)
                os.chown(path, m.uid or 0, m.gid or 0)
                os.chmod(path, m.file_mode())
            out.append(Mount(m.target, "bind", str(path),
                             ("rbind", "ro" if m.readonly else "rw")))
        elif m.type == "bind" and not m.from_:
            if context is None:
                raise SouteError("RUN --mount=type=bind needs a build context",
                                 "build from a directory, not from stdin")
            source = _inside(context, m.source or "/")
            if not m.readonly:
                # Writes to a rw bind mount are thrown away, as in BuildKit.
                copy = state / "bind" / hashlib.sha256(m.target.encode()).hexdigest()[:16]
                copy.parent.mkdir(exist_ok=True)
                if source.is_dir():
                    shutil.copytree(source, copy, symlinks=True)
                else:
                    shutil.copy2(source, copy)
                source = copy
            out.append(Mount(m.target, "bind", str(source),
                             ("rbind", "ro" if m.readonly else "rw")))
        else:
            raise SouteError(
                f"RUN --mount=type={m.type}" + (f",from={m.from_}" if m.from_ else "")
                + " is not supported by soute yet",
                "use secret, cache, tmpfs or a bind of the build context",
            )
    return out


def _inside(root: Path, rel: str) -> Path:
    """``rel`` under ``root``, symlinks resolved without leaving it."""
    resolved = (root / rel.lstrip("/")).resolve()
    base = root.resolve()
    if resolved != base and base not in resolved.parents:
        raise SouteError(f"mount source {rel!r} leads outside the build context")
    if not resolved.exists():
        raise SouteError(f"mount source {rel!r}: not found in the build context")
    return resolved
