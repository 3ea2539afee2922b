"""COPY and ADD as build steps: cache key from the sources' content, copy through an overlay.

The copy writes through an overlay mount of the parent snapshots with the step's upper dir,
so the kernel turns replacements into whiteouts exactly as for RUN. The mount lives in a
child process's own mount namespace: nothing stays mounted if the build is killed.

When the destination's top-level directory is in no parent snapshot (``COPY . /app`` onto
a base without ``/app``), the copy writes straight into the upper dir instead, reading the
image through a read-only overlay of the parents: every entry is new, so the upper dir ends
up the same as through the overlay (no copy-up, whiteout or opaque directory is possible),
and a create there costs a plain ``openat`` instead of overlayfs' (about 25 times more).

A ``COPY`` of one source into such a directory also writes its layer while it copies: the
child announces each entry it finishes (:mod:`soute.build.copyevents`) and this process
tars it on the other core (:class:`soute.layer.LayerStream`), instead of walking the
finished tree afterwards. What the announcements cannot follow falls back to that walk.
"""

from __future__ import annotations

import contextlib
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
    from soute.build.copyevents import CopyEvents
    from soute.build.engine import Builder
    from soute.build.git import Resolved
    from soute.dockerfile.stages import StageScope
    from soute.image.config import ImageConfig
    from soute.layer.write import LayerDigest, LayerStream


def copy_step(
    builder: Builder,
    instr: ins.Copy | ins.Add,
    sscope: StageScope,
    config: ImageConfig,
    layers: list[tuple[str, int]],
    key: str,
) -> tuple[str, tuple[str, int] | None]:
    from soute.build import git, remote
    from soute.build.engine import _key

    file = builder.opts.dockerfile_name

    def located(e: SouteError) -> LocatedError:
        return LocatedError(e.message, file=file, line=instr.line, hint=e.hint)

    kinds = [remote.source_kind(s) for s in instr.sources]
    if builder.opts.memo is not None and any(k != "local" for k in kinds):
        builder.opts.memo.spoil("a remote source")  # checked again by every build
    checksum = _pinned_checksum(instr, kinds, file)
    workdir = config.config.working_dir or "/"
    from_ = instr.from_ if isinstance(instr, ins.Copy) else ""
    source_layers, source_key = _source_layers(builder, instr, from_)
    # Downloads are made before the cache lookup, as BuildKit keys them on their content;
    # a --checksum download only when the step is not cached.
    downloads: dict[int, remote.Download] = {}
    sums: list[object] = []
    http_cache = builder.store.root / "cache" / "http"
    # Git sources are keyed on the commit their ref resolves to (git ls-remote).
    resolved = _resolve_git(builder, instr, kinds, checksum, file)
    for i, (path, kind) in enumerate(zip(instr.sources, kinds, strict=True)):
        if kind == "git":
            sums.append(resolved[i].cache_key())
        elif kind == "http" and checksum:
            sums.append(remote.checksum_key(remote.url_file_name(path), checksum))
        elif kind == "http":
            try:
                downloads[i] = remote.fetch(http_cache, path)
            except SouteError as e:  # BuildKit's wording: the key needs the download
                raise LocatedError(f"failed to load cache key: {e.message}", file=file,
                                   line=instr.line, hint=e.hint) from None
            sums.append(downloads[i].cache_key())
        else:
            try:
                sums.append(_checksum(builder, path, source_layers, instr))
            except SouteError as e:
                raise LocatedError(
                    _checksum_error(e),
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
        # A git source's key is its commit, whatever the URL's spelling (as in BuildKit).
        [s if k != "git" else "" for s, k in zip(instr.sources, kinds, strict=True)],
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

    def make(upper: Path, lowers: list[Path]) -> LayerDigest | None:
        sources: list[dict[str, object]] = []
        for i, (path, kind) in enumerate(zip(instr.sources, kinds, strict=True)):
            if kind == "git":
                try:
                    tree = git.checkout(builder.store.root / "cache" / "git", resolved[i])
                except SouteError as e:
                    raise located(e) from None
                # The checkout's root is copied onto dest, never unpacked.
                sources.append({"path": "/", "url": str(tree), "unpack": False})
                continue
            if kind != "http":
                sources.append({"path": path})
                continue
            if i not in downloads:
                try:
                    downloads[i] = remote.fetch(http_cache, path, checksum=checksum)
                except SouteError as e:
                    raise located(e) from None
            got = downloads[i]
            # Remote files are not unpacked unless --unpack=true (BuildKit's AttemptUnpack).
            sources.append({"path": got.name, "url": str(got.directory),
                            "unpack": isinstance(instr, ins.Add) and instr.unpack is True})
        job = {
            "lowers": [str(p) for p in lowers],
            "upper": str(upper),
            "sources": sources,
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
            "direct": _dest_is_new(instr.dest, workdir, lowers),
        }
        # A COPY of one source into a new directory writes its layer while it copies.
        if not (job["direct"] and isinstance(instr, ins.Copy) and len(sources) == 1
                and not contents and not job["parents"]):
            error = _in_child(job)
            if error is not None:
                raise LocatedError(error, file=file, line=instr.line)
            return None
        from soute.layer import LayerStream, Nowhere

        epoch = builder._epoch()

        def stream_into(out: Any) -> LayerDigest | None:
            stream = LayerStream(upper, out, epoch=epoch.seconds if epoch is not None else None)
            try:
                error = _in_child(job, stream)
            except BaseException:
                stream.fail("interrupted")  # its writing thread stops before out goes
                raise
            if error is not None:
                stream.fail("the copy failed")
                raise LocatedError(error, file=file, line=instr.line)
            return stream.finish()  # None: the engine writes it from the finished tree

        expected = builder._stored_result(step_key)
        if expected is not None:
            layer = stream_into(Nowhere())
            if layer is None or layer.diff_id == expected:
                return layer
            return builder._write_layer(upper)  # not the same after all: write it
        with builder.store.blobs.writer() as w:
            layer = stream_into(w)
            if layer is None:
                w.abort()
                return None
            w.commit()
            return layer

    return builder._layer_step(config, layers, step_key, _created_by(instr), make)


def workdir_step(tmp: Path, upper: Path, lowers: list[Path], workdir: str, user: str) -> None:
    """Make WORKDIR's directory in ``upper`` (:func:`soute.build.copy.make_workdir`),
    reading the image through a read-only overlay of ``lowers`` in a child, as a COPY
    into a new directory does."""
    error = _in_child({"lowers": [str(p) for p in lowers], "upper": str(upper),
                       "tmp": str(tmp), "direct": True, "make_workdir": workdir,
                       "user": user})
    if error is not None:
        raise SouteError(error)


def _dest_is_new(dest: str, workdir: str, lowers: Sequence[Path]) -> bool:
    """Whether ``dest``'s top-level directory is in none of the parent snapshots (not even
    as a whiteout): then the copy only creates entries, never replaces or hides one."""
    from soute.build.copy import dest_path

    top = dest_path(dest, workdir).lstrip("/").partition("/")[0]
    if top in ("", ".", ".."):
        return False
    return not any(os.path.lexists(os.path.join(lower, top)) for lower in lowers)


def _pinned_checksum(instr: ins.Copy | ins.Add, kinds: list[str], file: str) -> str:
    """Check the sources as BuildKit's dispatchCopy does; ADD --checksum's digest or ""."""

    def error(message: str, hint: str) -> LocatedError:
        return LocatedError(message, file=file, line=instr.line, hint=hint)

    checksum = instr.checksum if isinstance(instr, ins.Add) else ""
    if checksum:
        if len(instr.sources) != 1:
            raise error("checksum can't be specified for multiple sources",
                        "one ADD --checksum per download")
        if kinds[0] == "local":
            raise error("checksum requires HTTP(S) or Git sources",
                        "--checksum pins a download; drop it for files of the context")
    for kind in kinds:
        if kind == "git" and isinstance(instr, ins.Copy):
            raise error("source can't be a git ref for COPY", "use ADD for git sources")
        if kind == "http" and isinstance(instr, ins.Copy):
            raise error("source can't be a URL for COPY", "use ADD to download a file")
    if checksum and kinds[0] == "http":  # a git source's checksum is a commit SHA prefix
        from soute.image.digest import parse_digest

        try:
            parse_digest(checksum)
        except SouteError as e:
            raise error(e.message, e.hint or "e.g. --checksum=sha256:<64 hex digits>") from None
    return checksum


def _resolve_git(
    builder: Builder, instr: ins.Copy | ins.Add, kinds: list[str], checksum: str, file: str
) -> dict[int, Resolved]:
    """The git sources of ``instr`` (by index) with their commits resolved."""
    from soute.build import git

    resolved: dict[int, Resolved] = {}
    for i, (path, kind) in enumerate(zip(instr.sources, kinds, strict=True)):
        if kind != "git":
            continue
        keep = instr.keep_git_dir if isinstance(instr, ins.Add) else None
        try:
            source = git.with_auth(git.git_source(path, keep_git_dir=keep, checksum=checksum),
                                   builder.opts.secrets)
        except SouteError as e:
            raise LocatedError(e.message, file=file, line=instr.line, hint=e.hint) from None
        try:
            resolved[i] = git.resolve(source)
        except SouteError as e:  # BuildKit's wording: the key needs the commit
            raise LocatedError(f"failed to load cache key: {e.message}", file=file,
                               line=instr.line, hint=e.hint) from None
    return resolved


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
        image = builder.note_image(ref, resolve(builder.store, ref))
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


def _checksum_error(e: SouteError) -> str:
    """BuildKit's message for a source it cannot hash (the not-found one is complete)."""
    if e.message.startswith("failed to compute cache key"):
        return e.message
    return f"failed to calculate checksum: {e.message}"


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


def _in_child(job: dict[str, Any], stream: LayerStream | None = None) -> str | None:
    """Run the copy in a child with its own mount namespace; its error message, or None.

    With ``stream``, the child announces the entries it finishes and they are written to
    ``stream`` here, while it copies."""
    # The scratch dir holds the mountpoints: it is removed by us once the child (and with it
    # its mount namespace) is gone, never while an overlay is mounted on it.
    scratch = Path(tempfile.mkdtemp(prefix="copy-", dir=job["tmp"]))
    try:
        return _fork_copy({**job, "scratch": str(scratch)}, stream)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _fork_copy(job: dict[str, Any], stream: LayerStream | None = None) -> str | None:
    # Everything the child imports is imported here first. A child forked while another
    # stage's thread holds a module's import lock (importing the same module) would wait
    # on that lock forever: only the forking thread goes on in the child.
    import soute.build.context
    import soute.build.copy
    import soute.build.copyevents
    import soute.build.engine
    import soute.runtime._linux
    import soute.runtime.rootfs  # noqa: F401

    read_fd, write_fd = os.pipe()
    events_r, events_w = os.pipe() if stream is not None else (-1, -1)
    if stream is not None:
        from soute.build.copyevents import widen_pipe

        # The tar of a large file keeps this side from reading: meanwhile the writer goes
        # on with the next files instead of waiting on a full pipe.
        widen_pipe(events_w)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; its effects are tested
        # Everything ends in _exit: an exception let out here would run the parent's
        # clean-up code (and its error report) a second time, in this child.
        code = 2
        try:
            code = _copy_child(job, stream is not None, events_w, write_fd)
        finally:
            os._exit(code)
    os.close(write_fd)
    if stream is not None:
        from soute.build.copyevents import follow

        os.close(events_w)
        try:
            follow(events_r, stream)  # until the child ends
        except BaseException:
            # Interrupted: the child ends at its next announcement (a closed pipe).
            os.close(events_r)
            os.close(read_fd)
            os.waitpid(pid, 0)
            raise
        os.close(events_r)
    with os.fdopen(read_fd, "rb") as f:
        message = f.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return message or f"copy failed (status {status})"


def _copy_child(job: dict[str, Any], announce: bool, events_w: int, write_fd: int) -> int:
    """The copy child's work: its exit code; an error's message goes to ``write_fd``."""
    from soute.build.engine import close_inherited_fds

    # Another stage's pipes must not wait for this copy.
    close_inherited_fds(write_fd, *([events_w] if announce else []))
    events = None
    try:
        if announce:
            from soute.build.copyevents import CopyEvents

            events = CopyEvents(events_w)
        _copy_in_namespace(job, events)
        if events is not None:
            events.close()
        return 0
    except SouteError as e:
        code, message = 1, str(e)
    except BaseException as e:
        code, message = 2, (f"internal error: {type(e).__name__}: {e}\n"
                            f"{traceback.format_exc()}")
    # A parent that was interrupted has closed both pipes: nobody is left to tell.
    if events is not None:
        with contextlib.suppress(OSError):
            events.close()
    with contextlib.suppress(OSError):
        os.write(write_fd, message.encode())
    return code


def _copy_in_namespace(job: dict[str, Any], events: CopyEvents | None = None) -> None:
    from soute.build.context import BuildContext, SourceTree
    from soute.build.copy import InlineSource, Source, copy_into
    from soute.runtime import _linux
    from soute.runtime.rootfs import Layers, link_layers, mount_overlay

    _linux.unshare(_linux.CLONE_NEWNS)
    _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
    scratch = Path(job["scratch"])
    target = scratch / "root"
    target.mkdir()
    write = target
    if job.get("direct", False):
        # Every entry is new: write into the upper dir, read the image from the parents.
        _mount_readonly(job["lowers"], scratch, target, links="links")
        write = Path(job["upper"])
    else:
        work = scratch / "work"
        work.mkdir()
        link_layers(Layers(job["lowers"], job["upper"], work), scratch / "links")
        mount_overlay(scratch / "links", str(target))
    if "make_workdir" in job:
        from soute.build.copy import make_workdir

        make_workdir(target, write, job["make_workdir"], job["user"])
        return
    tree: SourceTree
    if job["source_layers"] is not None:
        src_root = scratch / "src"
        src_root.mkdir()
        _mount_readonly(job["source_layers"], scratch, src_root, links="src-links")
        tree = SourceTree(src_root, name="stage")
    elif job["context"] is not None:
        tree = BuildContext(Path(job["context"]),
                            dockerfile=Path(job["dockerfile"]) if job["dockerfile"] else None)
    else:
        (scratch / "empty").mkdir()
        tree = SourceTree(scratch / "empty", name="context")
    sources: list[Source | InlineSource] = []
    for src in job["sources"]:
        if "url" in src:
            sources.append(Source(src["path"], SourceTree(Path(src["url"]), name="url"),
                                  literal=True, unpack=src["unpack"]))
        else:
            sources.append(Source(src["path"], tree))
    sources += [InlineSource(n, d.encode("utf-8", "surrogateescape"))
                for n, d in job["contents"]]
    copy_into(sources, job["dest"], target_root=target, write_root=write,
              workdir=job["workdir"], chown=job["chown"], chmod=job["chmod"],
              parents=job["parents"], excludes=job["excludes"], unpack=job["unpack"],
              events=events)


def _mount_readonly(
    lowers: Sequence[str], scratch: Path, target: Path, *, links: str = "src-links"
) -> None:
    """A read-only overlay of a stage's snapshots (or a bind of its only one); ``links``
    names the scratch directory of their short names."""
    from soute.runtime import _linux

    if not lowers:
        return  # a stage with no layer (FROM scratch, metadata only): an empty tree
    if len(lowers) == 1:
        _linux.mount(lowers[0], str(target), None, _linux.MS_BIND | _linux.MS_REC)
        # A bind is writable until remounted: the snapshot must stay as it is.
        _linux.mount(None, str(target), None,
                     _linux.MS_BIND | _linux.MS_REMOUNT | _linux.MS_RDONLY)
        return
    links_dir = scratch / links
    links_dir.mkdir()
    names = []
    for i, path in enumerate(lowers):
        os.symlink(path, links_dir / str(i))
        names.append(str(i))
    saved = os.getcwd()
    os.chdir(links_dir)
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
