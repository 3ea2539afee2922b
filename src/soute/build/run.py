"""RUN: the command in a container whose upper dir becomes the step's layer."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from soute.errors import LocatedError

if TYPE_CHECKING:
    from soute.build.engine import Progress
    from soute.dockerfile.instructions import InlineFile, Run
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
) -> None:
    """Run one RUN with its output streamed as BuildKit's plain progress shows it."""
    from soute.runtime import Layers, Mount, Process, Spec, run
    from soute.runtime.spec import BUILD_NAMESPACES

    if instr.mounts:
        raise LocatedError(
            "RUN --mount is not supported by this soute build yet",
            file=file,
            line=instr.line,
            hint="copy what the command needs with COPY for now",
        )
    namespaces = set(BUILD_NAMESPACES)
    if network == "none":
        namespaces.add("network")
    work = Path(tempfile.mkdtemp(prefix="work-", dir=store.tmp))
    state = Path(tempfile.mkdtemp(prefix="run-", dir=store.tmp))
    mounts: list[Mount] = []
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
