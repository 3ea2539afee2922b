"""What other commands do to a container: start, stop, kill, wait, remove, commit, export.

None of them talks to the monitor: they signal the container's init (its host pid, checked
against its start time) and wait on the container's lock, which the monitor releases once
the end is written down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from soute.container.record import (
    Container,
    ContainerError,
    Containers,
    ContainerState,
    alive,
)
from soute.errors import SouteError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from collections.abc import Callable, Iterator

    from soute.runtime.cgroups import Cgroup
    from soute.store.store import Image, Store

DEFAULT_STOP_TIMEOUT = 10


def start(store: Store, container: Container) -> None:
    """``soute start``: run it again, detached (a running container is left alone)."""
    from soute.container.monitor import spawn

    if container.state().running:
        return
    container.started_by_user()
    spawn(store, container)


def _settle(container: Container) -> ContainerState:
    """Its state once it is no longer between two runs of its restart policy (a stop was
    requested first: the policy then either started it already or will not)."""
    state = container.state()
    deadline = time.monotonic() + 5
    while state.status == "restarting" and time.monotonic() < deadline:
        time.sleep(0.02)
        state = container.state()
    return state


def kill(container: Container, sig: int = signal.SIGKILL) -> None:
    from soute.container.create import parse_signal

    if sig in (signal.SIGKILL, parse_signal(container.spec.stop_signal)):
        container.request_stop()  # as dockerd's ExitOnNext: its restart policy ends
    was = container.state().status
    state = _settle(container)
    if was == "restarting" and not state.running:
        return  # it waited to run again: it now stays stopped
    if not state.running or not alive(state.pid, state.pid_start):
        raise ContainerError(f"cannot kill container: {container.name}: container "
                             f"{container.short_id} is not running")
    _signal(state.pid, sig)
    if state.paused and sig in (signal.SIGKILL, parse_signal(container.spec.stop_signal)):
        _thaw(container)  # as dockerd: a paused container gets the signal that ends it


def pause(container: Container) -> None:
    """``soute pause``: freeze every process of the container (its cgroup's freezer; one is
    made for a container without limits, and its processes moved in)."""
    from soute.runtime.cgroups import Cgroup, Limits

    state = container.state()
    if not state.running:
        raise ContainerError(f"Container {container.id} is not running")
    if state.paused:
        raise ContainerError(f"Container {container.id} is already paused")
    if container.spec.resources:
        cgroup = Cgroup.open(container.id, pid=state.pid)
    else:
        made = container.dir / "pause-cgroup"
        if made.exists():  # paused before, in this run
            cgroup = Cgroup.from_json(made.read_text())
        else:
            cgroup = Cgroup.create(container.id, Limits())
            made.write_text(cgroup.to_json())
        _move_in(cgroup, state.pid)
    cgroup.freeze()
    _move_in(cgroup, state.pid)  # what forked meanwhile joins the frozen cgroup: frozen too
    container.paused_marker.write_text(cgroup.to_json())


def _move_in(cgroup: Cgroup, init_pid: int) -> None:
    """Every process of the container whose PID 1 is ``init_pid`` into ``cgroup``, again
    until a pass finds none left outside (a fork between two passes)."""
    from soute.container.top import container_pids

    while True:
        inside = set(cgroup.pids())
        outside = [p for p in container_pids(init_pid) if p not in inside]
        if not outside:
            return
        for pid in outside:
            with contextlib.suppress(SouteError):  # it ended meanwhile
                cgroup.add(pid)


def unpause(container: Container) -> None:
    """``soute unpause``: let its processes run again."""
    state = container.state()
    if not state.paused:
        raise ContainerError(f"Container {container.id} is not paused")
    _thaw(container)


def _thaw(container: Container) -> None:
    from soute.runtime.cgroups import Cgroup

    marker = container.paused_marker
    with contextlib.suppress(FileNotFoundError):
        Cgroup.from_json(marker.read_text()).thaw()
    marker.unlink(missing_ok=True)


def wait(container: Container) -> int:
    """Block until the container is not running; its exit code."""
    with container.lock():
        pass
    return container.state().exit_code


def stop(container: Container, timeout: int | None = None, signal_name: str | None = None
         ) -> None:
    """Its stop signal (or ``signal_name``), then SIGKILL after ``timeout`` seconds (the
    container's ``--stop-timeout``, else docker's default 10); a negative one waits for it
    to end, never killing it (docker's)."""
    from soute.container.create import parse_signal

    container.request_stop()  # also for one waiting to restart: it stays stopped
    state = _settle(container)
    if not state.running:
        return
    if timeout is None:
        timeout = container.spec.stop_timeout
    if timeout is None:
        timeout = DEFAULT_STOP_TIMEOUT
    pid, start_time = state.pid, state.pid_start
    if alive(pid, start_time):
        _signal(pid, parse_signal(signal_name or container.spec.stop_signal))
        if state.paused:
            _thaw(container)  # as dockerd: it gets its stop signal, then runs to handle it
        deadline = time.monotonic() + timeout if timeout >= 0 else None
        while alive(pid, start_time) and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.02)
        if alive(pid, start_time):
            _signal(pid, signal.SIGKILL)
    wait(container)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except OSError as exc:  # a signal number the kernel refuses
        raise ContainerError(f"cannot send signal {sig}: {exc.strerror}") from None


def remove(store: Store, container: Container, *, force: bool = False,
           volumes: bool = False, monitor_done: bool = False) -> None:
    """``soute rm``: a running container only with ``force`` (SIGKILL); ``volumes`` also
    removes its anonymous volumes."""
    state = container.state()
    if state.running or state.status == "restarting":
        if not force:
            if state.paused:
                raise ContainerError(
                    f"You cannot remove a paused container {container.id}. Unpause and then "
                    "stop the container before attempting removal or force remove")
            raise ContainerError(
                f"You cannot remove a {state.status} container {container.id}",
                "stop the container before attempting removal or force remove (-f)")
        container.request_stop()
        state = _settle(container)
        if state.running and alive(state.pid, state.pid_start):
            _signal(state.pid, signal.SIGKILL)
            if state.paused:
                _thaw(container)
    with container.lock():
        container.remove_cgroup()
        Containers(store).forget(container)
    if volumes and any(m.kind == "volume" for m in container.spec.mounts):
        from soute.container.volumes import Volumes  # only then: its import costs 2 ms

        known = Volumes(store.root)
        for m in container.spec.mounts:
            if m.kind == "volume":
                try:
                    volume = known.get(m.source)
                except SouteError:
                    continue
                if volume.anonymous and not volumes_in_use(store) & {volume.name}:
                    known.remove(volume.name)


def prune(store: Store, keep: Callable[[Container], bool] | None = None) -> list[str]:
    """``soute container prune``: remove every container that is not running (and that
    ``keep``, docker's ``--filter``, does not spare)."""
    removed = []
    for container in Containers(store).all():
        if keep is not None and keep(container):
            continue
        if container.state().status not in ("running", "restarting"):
            with container.lock(blocking=False) as free:
                if not free:
                    continue
            remove(store, container, volumes=False)
            removed.append(container.id)
    Containers(store).sweep()
    return removed


def export(store: Store, container: Container, output: str) -> None:
    """``soute export``: the container's whole root filesystem (image and changes) as a tar,
    read through an overlay mounted in a private mount namespace of a child process."""
    from soute.container.record import ContainerError as Error
    from soute.runtime.rootfs import INIT_LAYER, write_merged_tar

    if os.path.isdir(output):
        raise Error(f"cannot export {container.name} to {output}: it is a directory",
                    "give a file name with -o")
    # The shared lock: a garbage collection waits for the work dir in tmp/ and the snapshots.
    with store.session():
        lowers = store.snapshots(store.image(container.spec.image).diff_ids)
        init = container.dir / INIT_LAYER
        if init.is_dir():  # docker's export has its init layer's /etc/mtab (commit has not)
            lowers.append(init)
        work = store.tmp / f"export-{container.id[:12]}-{os.getpid()}"
        tmp_out = f"{output}.soute-tmp"
        try:
            with open(tmp_out, "wb") as out:  # here, so a bad path is one clear line
                # The container's upper dir joins the lowers: read-only, its work dir untouched.
                write_merged_tar([*lowers, container.upper], work, out.fileno())
            os.replace(tmp_out, output)
        except OSError as exc:
            raise Error(f"cannot export {container.name} to {output}: {exc.strerror}") from None
        finally:
            import shutil  # here: every `soute run` imports this module

            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(tmp_out)


def volumes_in_use(store: Store) -> set[str]:
    return {m.source for c in Containers(store).all() for m in c.spec.mounts
            if m.kind == "volume"}


@contextlib.contextmanager
def _paused(container: Container) -> Iterator[None]:
    """Stop every process of a running container while its layer is read (docker pauses
    with the freezer; SIGSTOP reaches a namespace's init from outside all the same)."""
    from soute.container.top import container_pids

    state = container.state()
    pids: list[int] = []
    if state.running and alive(state.pid, state.pid_start):
        with contextlib.suppress(SouteError):
            pids = container_pids(state.pid)
    for pid in pids:
        _signal(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            _signal(pid, signal.SIGCONT)


def commit(
    store: Store,
    container: Container,
    *,
    tag: str | None = None,
    changes: tuple[str, ...] = (),
    message: str = "",
    author: str = "",
    pause: bool = True,
) -> Image:
    """``soute commit``: the container's changes as a new layer on its image, with its
    config (command, env, user...) and ``changes`` applied; ``history`` shows the command."""
    from soute.build.changes import apply_changes
    from soute.image.config import History, ImageConfig
    from soute.image.timestamp import Timestamp
    from soute.layer import write_layer
    from soute.store.names import full_tag

    spec = container.spec
    with store.session():
        image = store.image(spec.image)
        config = ImageConfig.from_json(store.blobs.read(image.id))
        cfg = config.config
        cfg.env = list(spec.env)
        cfg.cmd = list(spec.cmd or [])
        cfg.entrypoint = list(spec.entrypoint or [])
        cfg.user = spec.user
        cfg.working_dir = spec.workdir if spec.workdir != "/" or cfg.working_dir else ""
        cfg.labels = dict(spec.labels)
        cfg.exposed_ports = sorted(set(cfg.exposed_ports) | set(spec.exposed))
        if spec.stop_signal != "SIGTERM" or cfg.stop_signal:
            cfg.stop_signal = spec.stop_signal
        apply_changes(config, changes)
        with _paused(container) if pause else contextlib.nullcontext(), \
                store.blobs.writer() as w:
            layer = write_layer(container.upper, w, overlay=True)  # type: ignore[arg-type]
            diff_id = w.commit()
        now = Timestamp.now()
        config.created = now
        if author:
            config.author = author
        config.history.append(History(created=now, created_by=" ".join(spec.command),
                                      author=author, comment=message))
        config.rootfs.diff_ids.append(diff_id)
        layers = [*store.meta.image_layers(image.id), (diff_id, layer.size)]
        return store.add_image(config.to_json(), layers,
                               tags=[full_tag(tag)] if tag else [])
