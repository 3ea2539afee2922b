"""COPY and ADD as build steps: cache key from the sources' content, copy through an overlay.

The copy writes through an overlay mount of the parent snapshots with the step's upper dir,
so the kernel turns replacements into whiteouts exactly as for RUN. The mount lives in a
child process's own mount namespace: nothing stays mounted if the build is killed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soute.dockerfile import instructions as ins
from soute.errors import LocatedError, SouteError

if TYPE_CHECKING:
    from soute.build.engine import Builder
    from soute.dockerfile.stages import StageScope
    from soute.image.config import ImageConfig


def copy_step(
    builder: Builder,
    instr: ins.Copy | ins.Add,
    sscope: StageScope,
    config: ImageConfig,
    layers: list[tuple[str, int]],
    key: str,
) -> tuple[str, tuple[str, int] | None]:
    from soute.build.engine import _key

    file = builder.opts.dockerfile_name
    if isinstance(instr, ins.Add) and any(
        "://" in s or s.startswith("git@") for s in instr.sources
    ):
        raise LocatedError(
            "ADD of URLs and git repositories is not supported by soute yet",
            file=file,
            line=instr.line,
            hint="download it in a RUN, or into the context first",
        )
    workdir = config.config.working_dir or "/"
    from_ = instr.from_ if isinstance(instr, ins.Copy) else ""
    source_layers, source_key = _source_layers(builder, instr, from_)
    try:
        sums = [_checksum(builder, p, source_layers, instr) for p in instr.sources]
    except SouteError as e:
        raise LocatedError(
            f"failed to calculate checksum: {e.message}",
            file=file,
            line=instr.line,
            hint=e.hint or "check the path in the context",
        ) from None
    contents = [(c.path, c.data) for c in instr.contents]
    unpack = isinstance(instr, ins.Add) and instr.unpack is not False
    step_key = _key(
        key,
        instr.NAME,
        source_key,
        list(instr.sources),
        sums,
        contents,
        instr.dest,
        instr.chown,
        instr.chmod,
        workdir,
        getattr(instr, "parents", False),
        list(instr.excludes),
        unpack,
    )

    def make(upper: Path, lowers: list[Path]) -> None:
        job = {
            "lowers": [str(p) for p in lowers],
            "upper": str(upper),
            "sources": list(instr.sources),
            "contents": [[n, d] for n, d in contents],
            "context": str(builder.opts.context) if builder.opts.context else None,
            "dockerfile": str(builder.opts.dockerfile_path or ""),
            "source_layers": [str(p) for p in source_layers] if source_layers is not None else None,
            "dest": instr.dest,
            "workdir": workdir,
            "chown": instr.chown or None,
            "chmod": instr.chmod or None,
            "parents": getattr(instr, "parents", False),
            "excludes": list(instr.excludes),
            "unpack": unpack,
            "tmp": str(builder.store.tmp),
        }
        error = _in_child(job)
        if error is not None:
            raise LocatedError(error, file=file, line=instr.line)

    return builder._layer_step(config, layers, step_key, _created_by(instr), make)


def _source_layers(
    builder: Builder, instr: ins.Copy | ins.Add, from_: str
) -> tuple[list[Path] | None, str]:
    """The snapshots a ``--from`` reads (None: the build context) and what keys them."""
    if not from_:
        return None, "context"
    from soute.dockerfile.instructions import Stage

    ref = builder.scope.stage_ref(instr)  # type: ignore[arg-type]
    if isinstance(ref, Stage):
        result = builder.results[ref.index]
        return builder.store.snapshots([d for d, _ in result.layers]), result.key
    from soute.store.names import resolve

    try:
        image = resolve(builder.store, ref)
    except SouteError as e:
        raise LocatedError(
            e.message,
            file=builder.opts.dockerfile_name,
            line=instr.line,
            hint="COPY --from names a stage of this file or an image in the store",
        ) from None
    return builder.store.snapshots(image.diff_ids), image.id


def _checksum(
    builder: Builder, path: str, source_layers: list[Path] | None, instr: ins.Copy | ins.Add
) -> str:
    if source_layers is not None:
        return ""  # the source stage or image's key already names its content
    if builder.opts.context is None:
        raise SouteError(f'"{path}": not found', "this build has no context (built from stdin)")
    from soute.build.copy import Source, source_checksum

    tree = builder.context()
    return source_checksum(
        Source(path, tree), parents=getattr(instr, "parents", False), excludes=list(instr.excludes)
    )


def _created_by(instr: ins.Copy | ins.Add) -> str:
    """``COPY [--parents] [--chown=u:g] [--chmod=m] src... dest`` as BuildKit records it."""
    parts = [instr.NAME]
    if getattr(instr, "parents", False):
        parts.append("--parents")
    if instr.chown:
        parts.append(f"--chown={instr.chown}")
    if instr.chmod:
        parts.append(f"--chmod={instr.chmod}")
    parts += [*instr.sources, *(f"<<{c.path}" for c in instr.contents), instr.dest]
    return " ".join(parts)


# ---------------------------------------------------------------------------- the copy


def _in_child(job: dict[str, Any]) -> str | None:
    """Run the copy in a child with its own mount namespace; its error message, or None."""
    # The scratch dir holds the mountpoints: it is removed by us once the child (and with it
    # its mount namespace) is gone, never while an overlay is mounted on it.
    scratch = Path(tempfile.mkdtemp(prefix="copy-", dir=job["tmp"]))
    try:
        return _fork_copy({**job, "scratch": str(scratch)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _fork_copy(job: dict[str, Any]) -> str | None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; its effects are tested
        os.close(read_fd)
        code = 0
        try:
            _copy_in_namespace(job)
        except SouteError as e:
            os.write(write_fd, str(e).encode())
            code = 1
        except BaseException as e:
            os.write(write_fd, f"internal error: {type(e).__name__}: {e}\n"
                     f"{traceback.format_exc()}".encode())
            code = 2
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        message = f.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return message or f"copy failed (status {status})"


def _copy_in_namespace(job: dict[str, Any]) -> None:
    from soute.build.context import BuildContext, SourceTree
    from soute.build.copy import InlineSource, Source, copy_into
    from soute.runtime import _linux
    from soute.runtime.rootfs import Layers, link_layers, mount_overlay

    _linux.unshare(_linux.CLONE_NEWNS)
    _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
    scratch = Path(job["scratch"])
    work = scratch / "work"
    work.mkdir()
    target = scratch / "root"
    target.mkdir()
    link_layers(Layers(job["lowers"], job["upper"], work), scratch / "links")
    mount_overlay(scratch / "links", str(target))
    tree: SourceTree
    if job["source_layers"] is not None:
        src_root = scratch / "src"
        src_root.mkdir()
        _mount_readonly(job["source_layers"], scratch, src_root)
        tree = SourceTree(src_root, name="stage")
    elif job["context"] is not None:
        tree = BuildContext(Path(job["context"]),
                            dockerfile=Path(job["dockerfile"]) if job["dockerfile"] else None)
    else:
        (scratch / "empty").mkdir()
        tree = SourceTree(scratch / "empty", name="context")
    sources: list[Source | InlineSource] = [Source(p, tree) for p in job["sources"]]
    sources += [InlineSource(n, d.encode("utf-8", "surrogateescape"))
                for n, d in job["contents"]]
    copy_into(sources, job["dest"], target_root=target, write_root=target,
              workdir=job["workdir"], chown=job["chown"], chmod=job["chmod"],
              parents=job["parents"], excludes=job["excludes"], unpack=job["unpack"])


def _mount_readonly(lowers: Sequence[str], scratch: Path, target: Path) -> None:
    """A read-only overlay of a stage's snapshots (or a bind of its only one)."""
    from soute.runtime import _linux

    if not lowers:
        return  # a stage with no layer (FROM scratch, metadata only): an empty tree
    if len(lowers) == 1:
        _linux.mount(lowers[0], str(target), None, _linux.MS_BIND | _linux.MS_REC)
        return
    links = scratch / "src-links"
    links.mkdir()
    names = []
    for i, path in enumerate(lowers):
        os.symlink(path, links / str(i))
        names.append(str(i))
    saved = os.getcwd()
    os.chdir(links)
    try:
        # Without an upper dir overlayfs is read-only; the top layer comes first.
        _linux.mount(
            "overlay",
            str(target),
            "overlay",
            _linux.MS_RDONLY,
            "lowerdir=" + ":".join(reversed(names)),
        )
    finally:
        os.chdir(saved)
