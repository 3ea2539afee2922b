"""RUN: the command in a container whose upper dir becomes the step's layer.

``RUN --mount`` with ``from=`` (a stage or an image) shows that tree through an overlay of
its snapshots, as BuildKit mounts the stage's state: a throw-away upper dir for a bind (so
``rw`` writes are discarded), a persistent one for a cache mount (BuildKit's cache ref on
top of the ``from`` ref). Those overlays are mounted in a child process's own mount
namespace, which the container inherits: nothing stays mounted if the build is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from soute._threads import start_without_signals
from soute.errors import LocatedError, SouteError

if TYPE_CHECKING:
    from soute.build.engine import Progress
    from soute.build.ssh import AgentSocket, SSHAgents
    from soute.dockerfile.instructions import InlineFile, Run
    from soute.dockerfile.instructions import Mount as MountSpec
    from soute.runtime import Mount, Spec
    from soute.store.store import Store


@dataclass(frozen=True)
class MountSource:
    """The tree a ``RUN --mount`` with ``from=`` reads: a stage's or an image's snapshots."""

    name: str  # from= as written, for messages
    lowers: tuple[str, ...]  # snapshot directories, base first (none: scratch)
    key: str  # the stage's cache key or the image ID: what the step's cache key chains


@dataclass(frozen=True)
class _FromMount:
    """A mount of a :class:`MountSource`, made in the child's mount namespace."""

    target: str
    source: MountSource
    subpath: str  # inside the tree, cleaned, "/" for its root
    readonly: bool
    cache: str | None  # a cache mount's persistent directory (upper, work); None: a bind
    mkdir: tuple[int, int, int] | None = None  # (mode, uid, gid): a cache's /cache dir


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
    sources: Sequence[MountSource | None] = (),
    ssh: SSHAgents | None = None,
) -> None:
    """Run one RUN with its output streamed as BuildKit's plain progress shows it.

    ``sources`` gives, mount by mount, the tree a ``from=`` names (None: no ``from=``);
    ``ssh`` the agents ``--ssh`` names, for ssh mounts.
    """
    from soute.runtime import Layers, Mount, Process, Spec, run
    from soute.runtime.spec import BUILD_NAMESPACES

    namespaces = set(BUILD_NAMESPACES)
    if network == "none":
        namespaces.add("network")
    work = Path(tempfile.mkdtemp(prefix="work-", dir=store.tmp))
    state = Path(tempfile.mkdtemp(prefix="run-", dir=store.tmp))
    env = list(env)
    agents: list[AgentSocket] = []  # this RUN's ssh agent sockets, closed when it ends
    try:
        mounts = _run_mounts(instr, store, state, env, cwd, context, secrets, sources)
        mounts += _ssh_mounts(instr, ssh, env, agents)
    except SouteError as e:
        for agent in agents:
            agent.close()
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
    from soute.runtime.spec import DEFAULT_CAPABILITIES, default_mounts

    # BuildKit's RUN gets docker run's default capabilities; --security=insecure (an
    # entitlement the build must allow) all of them, /proc and /sys unmasked, any device.
    insecure = instr.security == "insecure"

    def spec(resolved: list[Mount]) -> Spec:
        return Spec(
            process=Process(
                args=list(argv), env=list(env), cwd=cwd, user=user, no_new_privileges=False,
                capabilities=None if insecure else list(DEFAULT_CAPABILITIES),
            ),
            namespaces=namespaces,
            mounts=[*default_mounts(), *resolved],
            **({"masked_paths": (), "readonly_paths": ()} if insecure else {}),
            all_devices=insecure,
        )

    read_fd, write_fd = os.pipe()
    pump = threading.Thread(target=_pump, args=(read_fd, progress), daemon=True)
    layers = Layers(lowers, upper, work)
    try:
        if any(isinstance(m, _FromMount) for m in mounts):
            # Forked before the pump thread starts: the child is a copy of one thread only.
            helper = _start_with_trees(
                lambda resolved: run(spec(resolved), layers, stdout=write_fd, stderr=write_fd,
                                     state_dir=state, interrupt=True),
                mounts, state, read_fd, keep=(write_fd,),
            )
            start_without_signals(pump)
            for agent in agents:  # after the fork too: the child needs no relay of its own
                agent.start()
            code = _wait_helper(*helper)
        else:
            start_without_signals(pump)
            for agent in agents:
                agent.start()
            plain = [m for m in mounts if not isinstance(m, _FromMount)]
            code = run(spec(plain), layers, stdout=write_fd, stderr=write_fd, state_dir=state,
                       interrupt=True)
    except SouteError as e:
        if isinstance(e, LocatedError):
            raise
        raise LocatedError(e.message, file=file, line=instr.line, hint=e.hint) from None
    finally:
        os.close(write_fd)
        if pump.ident is not None:
            pump.join()
        else:  # never started: the pump would have closed it
            os.close(read_fd)
        for agent in agents:
            agent.close()
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


def mount_target(m: MountSpec, cwd: str) -> str:
    """Where a bind, cache or tmpfs mount goes: a relative target is below WORKDIR, as
    BuildKit joins it; ``/`` is refused."""
    from soute.build.contenthash import go_clean, go_join

    target = m.target
    if not go_clean(target).startswith("/"):
        target = go_join("/", cwd, target)
    if target == "/":
        raise SouteError(f'invalid mount target "{target}"', "mount somewhere below /")
    return target


def _run_mounts(instr: Run, store: Store, state: Path, env: list[str], cwd: str,
                context: Path | None, secrets: dict[str, bytes] | None,
                sources: Sequence[MountSource | None]) -> list[Mount | _FromMount]:
    """The ``--mount``s of a RUN as runtime mounts (secret, cache, tmpfs, bind from the
    context) or mounts of a stage or image's tree (``from=``); ``env`` gets the secrets
    exposed as variables."""
    import hashlib

    from soute.build.contenthash import go_join
    from soute.runtime import Mount

    out: list[Mount | _FromMount] = []
    for i, m in enumerate(instr.mounts):
        source = sources[i] if i < len(sources) else None
        if m.type == "secret":
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
            continue
        if m.type == "ssh":
            continue  # after every other mount: see _ssh_mounts
        target = mount_target(m, cwd)
        if m.type == "tmpfs":
            opts = ("nosuid", "nodev") + ((f"size={m.size}",) if m.size else ())
            out.append(Mount(target, "tmpfs", "tmpfs", opts))
        elif m.type == "cache" and source is not None:
            # A cache on top of a stage: its changes persist, keyed by id and that tree.
            key = hashlib.sha256(f"{m.cache_id}:{source.key}".encode()).hexdigest()
            path = store.root / "cache" / "mounts" / ("from-" + key)
            for sub in ("upper", "work"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            subpath = go_join("/", m.source)
            mkdir = None
            if subpath == "/" and (m.uid is not None or m.gid is not None or m.mode is not None):
                # BuildKit makes /cache in the tree with the owner and mode asked for.
                subpath, mkdir = "/cache", (m.file_mode(), m.uid or 0, m.gid or 0)
            out.append(_FromMount(target, source, subpath, m.readonly, str(path), mkdir))
        elif m.type == "cache":
            # Cache mounts persist between builds; their contents never enter a cache key.
            key = hashlib.sha256(m.cache_id.encode()).hexdigest()
            path = store.root / "cache" / "mounts" / key
            if not path.exists():
                try:
                    path.mkdir(parents=True)
                except FileExistsError:
                    pass  # a RUN beside this one (another stage, another build) made it
                else:
                    os.chown(path, m.uid or 0, m.gid or 0)
                    os.chmod(path, m.file_mode())
            out.append(Mount(target, "bind", str(path),
                             ("rbind", "ro" if m.readonly else "rw")))
        elif m.type == "bind" and source is not None:
            out.append(_FromMount(target, source, go_join("/", m.source), m.readonly, None))
        elif m.type == "bind":
            if context is None:
                raise SouteError("RUN --mount=type=bind needs a build context",
                                 "build from a directory, not from stdin")
            path = _inside(context, m.source or "/")
            if not m.readonly:
                # Writes to a rw bind mount are thrown away, as in BuildKit.
                copy = state / "bind" / hashlib.sha256(target.encode()).hexdigest()[:16]
                copy.parent.mkdir(exist_ok=True)
                if path.is_dir():
                    shutil.copytree(path, copy, symlinks=True)
                else:
                    shutil.copy2(path, copy)
                path = copy
            out.append(Mount(target, "bind", str(path),
                             ("rbind", "ro" if m.readonly else "rw")))
        else:  # pragma: no cover - the parser knows no other type
            raise SouteError(f"RUN --mount=type={m.type} is not supported by soute")
    return out


def _ssh_mounts(instr: Run, ssh: SSHAgents | None, env: list[str],
                agents: list[AgentSocket]) -> list[Mount]:
    """The ssh mounts of a RUN, after its other mounts as BuildKit orders them: each a
    socket of its own (appended to ``agents``, not yet started) bound at its target,
    ``/run/buildkit/ssh_agent.N`` by default (N counts the RUN's ssh mounts). The first
    one's target is ``SSH_AUTH_SOCK`` unless the environment has one, even when that mount
    is skipped (BuildKit sets it when it writes the step, before knowing)."""
    from soute.runtime import Mount

    specs = [m for m in instr.mounts if m.type == "ssh"]
    out: list[Mount] = []
    for n, m in enumerate(specs):
        target = m.target or f"/run/buildkit/ssh_agent.{n}"
        if n == 0 and not any(e.startswith("SSH_AUTH_SOCK=") for e in env):
            env.append(f"SSH_AUTH_SOCK={target}")
        if ssh is None or m.ssh_id not in ssh:
            if not m.required:
                continue  # BuildKit skips an optional agent nobody forwarded
            if not ssh:  # BuildKit's words when the client forwards no agent at all
                message = f'no SSH key "{m.id}" forwarded from the client'
            else:
                message = f"unset ssh forward key {m.ssh_id}"
            raise SouteError(message, f"pass it with --ssh {m.ssh_id}[=SOCKET|KEYFILE]")
        agent = ssh.serve(m.ssh_id, m.uid or 0, m.gid or 0, m.file_mode() & 0o777)
        agents.append(agent)
        out.append(Mount(target, "bind", agent.path, ("rbind",)))
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


# ---------------------------------------------------------------------------- from= trees


def _start_with_trees(start: Callable[[list[Mount]], int], mounts: list[Mount | _FromMount],
                      state: Path, output_fd: int, keep: Sequence[int] = ()) -> tuple[int, int]:
    """Fork a child that mounts the ``from=`` trees in its own mount namespace and runs the
    container there (``start(resolved_mounts)`` gives its exit code): (pid, report fd).
    ``keep``: the descriptors ``start`` uses; the child closes the others it inherits."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; its effects are tested
        from soute.build.engine import close_inherited_fds

        # Only the parent's pump reads the output; other stages' pipes are theirs.
        close_inherited_fds(write_fd, *keep)
        report: dict[str, object]
        try:
            report = {"code": start(_mount_trees(mounts, state))}
        except SouteError as e:
            report = {"error": e.message, "hint": e.hint}
        except BaseException as e:
            report = {"error": f"internal error: {type(e).__name__}: {e}\n"
                               f"{traceback.format_exc()}"}
        try:
            os.write(write_fd, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    return pid, read_fd


def _wait_helper(pid: int, report_fd: int) -> int:
    """The exit code the child of :func:`_start_with_trees` reports, or its error."""
    try:
        with os.fdopen(report_fd, "rb") as f:
            data = f.read()
    except BaseException:  # a ^C that reached us alone: the RUN dies with the child
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    os.waitpid(pid, 0)
    try:
        report = json.loads(data)
    except ValueError:
        raise SouteError("the RUN's mount helper died", "run again with --debug") from None
    if "error" in report:
        raise SouteError(str(report["error"]), report.get("hint"))
    return int(report["code"])


def _mount_trees(mounts: list[Mount | _FromMount], state: Path) -> list[Mount]:
    """In a new mount namespace: every ``from=`` tree as an overlay, then the runtime mount
    of its subpath (read-only unless ``rw``)."""
    from soute.runtime import Mount, _linux
    from soute.runtime.paths import scoped_path

    _linux.unshare(_linux.CLONE_NEWNS)
    _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
    out: list[Mount] = []
    caches: dict[str, Path] = {}  # a cache mounted twice in one RUN is one overlay
    for i, m in enumerate(mounts):
        if not isinstance(m, _FromMount):
            out.append(m)
            continue
        if m.cache is not None and m.cache in caches:
            root = caches[m.cache]
        else:
            root = _mount_tree(m, state / "from" / str(i))
            if m.cache is not None:
                caches[m.cache] = root
        host = scoped_path(str(root), m.subpath)
        if m.mkdir is not None and not os.path.lexists(host):
            mode, uid, gid = m.mkdir
            os.mkdir(host, mode)
            os.chown(host, uid, gid)
            os.chmod(host, mode)
        if not os.path.lexists(host):
            raise SouteError(
                f"failed to compute cache key: failed to calculate checksum of ref "
                f'{m.source.name}: "{m.subpath}": not found',
                f"check the mount's source path in {m.source.name}",
            )
        out.append(Mount(m.target, "bind", host, ("rbind", "ro" if m.readonly else "rw")))
    return out


def _mount_tree(m: _FromMount, base: Path) -> Path:
    """The overlay of ``m``'s tree at ``base/root``: its upper dir is a throw-away one, or
    the cache's own (locked for this RUN: the lock dies with the process)."""
    import fcntl

    from soute.runtime.rootfs import Layers, link_layers, mount_overlay

    root = base / "root"
    root.mkdir(parents=True)
    if m.cache is None:
        upper, work = base / "upper", base / "work"
        upper.mkdir()
        work.mkdir()
    else:
        upper, work = Path(m.cache) / "upper", Path(m.cache) / "work"
        lock = os.open(Path(m.cache) / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time on a cache's upper dir
    link_layers(Layers(list(m.source.lowers), upper, work), base / "links")
    try:
        mount_overlay(base / "links", str(root))
    except OSError as e:
        raise SouteError(f"cannot mount {m.source.name}: {e.strerror}") from None
    return root
