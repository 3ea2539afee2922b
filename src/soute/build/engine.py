"""The build: a Dockerfile's stages to an image in the store, one layer per filesystem change.

Each stage starts from its base (an image in the store, an earlier stage, or scratch) and walks
its instructions through the Dockerfile scope (ARG/ENV expansion). Metadata instructions change
the config; RUN, COPY, ADD and WORKDIR make layers. A layer is the upper dir of an overlay over
the parent snapshots: it is written once as a tar (its DiffID) and then renamed into place as
the next snapshot, so nothing is copied or unpacked again.

A step is reused when its cache key is known: the key chains the parent's key with what the
step depends on (the command, the env and args it sees, the content of its sources).

Stages that do not depend on each other are built at the same time, as BuildKit's solver
does: each in a thread of its own once the stages it reads (FROM, ``COPY --from``,
``RUN --mount from=``) are built, at most ``SOUTE_BUILD_JOBS`` (default: the number of CPUs)
at once. A stage that nothing can run beside is built in the calling thread, exactly as a
sequential build does. Nothing a stage computes depends on the others' timing, so cache keys,
history and image IDs are those of a sequential build. The first failure (or an interrupt)
cancels the other stages: their running commands are killed, and what they had not stored
completely is thrown away.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from soute.build.changes import ConfigState, apply_instruction
from soute.build.progress import Progress
from soute.dockerfile import instructions as ins
from soute.errors import LocatedError, SouteError

if TYPE_CHECKING:
    from soute.build.context import BuildContext
    from soute.build.fastlane import Memo
    from soute.build.remote_cache import CacheSpec, RemoteCache
    from soute.build.run import MountSource
    from soute.build.ssh import SSHAgents
    from soute.dockerfile.instructions import Dockerfile, Stage
    from soute.dockerfile.stages import BuildScope, StageScope
    from soute.image.config import ImageConfig
    from soute.image.timestamp import Timestamp
    from soute.layer.write import LayerDigest
    from soute.store.store import Image, Store

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HISTORY_COMMENT = "buildkit.dockerfile.v0"
INSECURE = "security.insecure"  # the entitlement RUN --security=insecure needs
ENTITLEMENTS = (INSECURE, "network.host")  # what --allow knows (host networking needs none)


@dataclass
class BuildOptions:
    dockerfile: str  # the Dockerfile's text
    dockerfile_name: str = "Dockerfile"  # how errors name it
    context: Path | None = None  # None: empty context (docker build - < Dockerfile)
    dockerfile_path: Path | None = None  # for <Dockerfile>.dockerignore
    tags: Sequence[str] = ()  # fully qualified names
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    network: str = "default"  # default (host), host, none
    labels: dict[str, str] = field(default_factory=dict)
    quiet: bool = False
    secrets: dict[str, bytes] = field(default_factory=dict)  # RUN --mount=type=secret
    ssh: SSHAgents | None = None  # --ssh agents, for RUN --mount=type=ssh (the caller's)
    cache_from: Sequence[CacheSpec] = ()  # registry caches to import (remote_cache)
    cache_to: Sequence[CacheSpec] = ()  # and to export to
    jobs: int | None = None  # stages built at once; None: SOUTE_BUILD_JOBS, else the CPUs
    memo: Memo | None = None  # gathers what a fully cached build read (build.fastlane)
    allow: frozenset[str] = frozenset()  # entitlements granted (--allow security.insecure)


@dataclass
class StageResult:
    config: ImageConfig
    layers: list[tuple[str, int]]  # (diff_id, size) base first
    key: str  # cache key of the last step
    image: Image | None = None


def _key(*parts: object) -> str:
    return (
        "sha256:"
        + hashlib.sha256(
            json.dumps(parts, separators=(",", ":"), sort_keys=True).encode()
        ).hexdigest()
    )


def build_jobs(value: str | None = None) -> int:
    """How many stages a build runs at once: ``value`` (or ``SOUTE_BUILD_JOBS``) when set,
    else the number of CPUs this process may use."""
    if value is None:
        value = os.environ.get("SOUTE_BUILD_JOBS", "")
    if value.strip():
        try:
            jobs = int(value)
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise SouteError(f"invalid SOUTE_BUILD_JOBS {value!r}",
                             "give a number of stages to build at once, 1 or more")
        return jobs
    return max(1, len(os.sched_getaffinity(0)))


class _Canceled(Exception):
    """Raised in a stage's thread once the build is ending: another stage failed."""


class _Results(dict[int, StageResult]):
    """Built stages by index. A stage that reads one not built yet (a base image's ONBUILD
    trigger may name a stage the plan could not see) waits for it."""

    def __init__(self, builder: Builder) -> None:
        super().__init__()
        self._builder = builder

    def __missing__(self, index: int) -> StageResult:
        return self._builder._await_stage(index)


def _go_list(items: Sequence[str]) -> str:
    """Go's %v of a []string: [a b c]."""
    return "[" + " ".join(items) + "]"


class Builder:
    def __init__(self, store: Store, opts: BuildOptions, progress: Progress) -> None:
        self.store = store
        self.opts = opts
        self.progress = progress
        self.results: dict[int, StageResult] = _Results(self)
        self._scopes: dict[int, StageScope] = {}
        self.scope: BuildScope | None = None
        # Stages may be built in threads (_Scheduler): what they share is guarded.
        self._lock = threading.Lock()
        self._local = threading.local()  # the thread's stage index and build context
        self._pull_lock = threading.Lock()  # one pull at a time: a base shared is pulled once
        self._remote_lock = threading.Lock()  # RemoteCache is not thread-safe
        self._step_locks: dict[str, threading.Lock] = {}  # one step per cache key at a time
        # Each stage's results for --cache-to, replayed in the plan's order at the end.
        self._records: dict[int, list[tuple[str, str | None, str]]] = {}
        self._canceled = threading.Event()
        self._scheduler: _Scheduler | None = None
        self.remote: RemoteCache | None = None  # --cache-from / --cache-to
        if opts.cache_from or opts.cache_to:
            from soute.build.remote_cache import RemoteCache

            self.remote = RemoteCache(store, opts.cache_from, opts.cache_to, progress)

    def context(self) -> BuildContext:
        """The build context, read once per build and thread (content hashes keep a stat
        cache, whose SQLite connection is the thread's own)."""
        context: BuildContext | None = getattr(self._local, "context", None)
        if context is None:
            from soute.build.context import BuildContext

            assert self.opts.context is not None
            cache = self.store.root / "cache"
            cache.mkdir(exist_ok=True)
            context = BuildContext(
                self.opts.context,
                dockerfile=self.opts.dockerfile_path,
                stat_cache=cache / "contenthash.db",
                memo=self.opts.memo,
            )
            self._local.context = context
        return context

    # ------------------------------------------------------------------ entry

    def build(self) -> Image:
        from soute.dockerfile.instructions import parse_dockerfile
        from soute.dockerfile.stages import BuildScope

        df = parse_dockerfile(self.opts.dockerfile, file=self.opts.dockerfile_name)
        scope = BuildScope(df, self.opts.build_args, target=self.opts.target)
        self.scope = scope
        plan = scope.plan()
        for stage in plan:  # checked before anything runs, as BuildKit's solver does
            for instr in stage.commands:
                self._check_entitlements(instr)
        self._expand_ahead(scope, plan)
        with self.store.session():
            if self.remote is not None:
                self.remote.load()
            jobs = self.opts.jobs or build_jobs()
            if jobs == 1 or len(plan) == 1:
                for stage in plan:
                    self.results[stage.index] = self._build_stage(df, scope, stage, len(plan))
            else:
                self._scheduler = _Scheduler(self, df, scope, plan, jobs)
                self._scheduler.run()
            result = self.results[plan[-1].index]  # the target: the plan ends with it
            warning = scope.unused_build_args_warning()
            if warning:
                self.progress.say(warning)
            image = self._export(result)
            if self.remote is not None:
                for stage in plan:  # in the plan's order, whatever order the stages ran in
                    self.remote.stage = stage.index
                    for record in self._records.get(stage.index, ()):
                        self.remote.record(*record)
                self.remote.export(scope, plan[-1])
            return image

    def _expand_ahead(self, scope: BuildScope, plan: Sequence[Stage]) -> None:
        """Expand every instruction of the plan before anything runs, as BuildKit turns the
        whole Dockerfile into its graph first: a quoting mistake on the last line stops the
        build before the first RUN. A stage on an image the store lacks yet (a pull comes
        first), or on such a stage, is left to the build itself."""
        from soute.image.config import ImageConfig
        from soute.store.names import resolve

        walked: dict[int, StageScope] = {}
        for stage in plan:
            base = scope.resolve_base(stage)
            if base.stage is not None:
                if base.stage.index not in walked:
                    continue
                sscope = scope.stage_scope(stage, base=walked[base.stage.index])
            elif base.name == "scratch":
                sscope = scope.stage_scope(stage, image_env=[f"PATH={DEFAULT_PATH}"])
            else:
                try:
                    image = resolve(self.store, base.name)
                except SouteError:
                    continue
                config = ImageConfig.from_json(self.store.blobs.read(image.id)).config
                sscope = scope.stage_scope(stage, image_env=_with_path(config.env),
                                           image_onbuild=config.on_build)
            for _ in sscope.walk():
                pass
            walked[stage.index] = sscope

    def _check_entitlements(self, instr: ins.Instruction) -> None:
        if (isinstance(instr, ins.Run) and instr.security == "insecure"
                and INSECURE not in self.opts.allow):
            raise LocatedError(f"RUN --security=insecure needs the {INSECURE} entitlement",
                               file=self.opts.dockerfile_name, line=instr.line,
                               hint=f"allow it with 'soute build --allow {INSECURE}'")

    # ------------------------------------------------------------------ stages

    def _build_stage(
        self, df: Dockerfile, scope: BuildScope, stage: Stage, total: int
    ) -> StageResult:
        """Build one stage in the calling thread."""
        self._local.stage = stage.index
        try:
            return self._stage(df, scope, stage, total)
        finally:
            self._local.stage = None

    def _needs(self, scope: BuildScope, stage: Stage) -> set[int]:
        """The stages ``stage`` reads: its FROM, ``COPY --from`` and ``RUN --mount from=``."""
        base = scope.resolve_base(stage).stage
        needs = {d.stage.index for d in scope.dependencies(stage)}
        return needs | ({base.index} if base is not None else set())

    def _await_stage(self, index: int) -> StageResult:
        """The result of stage ``index`` once it is built (only stages built in threads
        can wait for another; a sequential build has built it already, or never will)."""
        if self._scheduler is None:
            raise KeyError(index)
        return self._scheduler.wait_for(index)

    def _leave_thread(self) -> None:
        """A stage's thread is over: close what it opened for itself."""
        context: BuildContext | None = getattr(self._local, "context", None)
        if context is not None:
            self._local.context = None
            context.close()
        self.store.meta.release()

    def _check_canceled(self) -> None:
        if self._canceled.is_set():
            raise _Canceled()

    def _step_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._step_locks.setdefault(key, threading.Lock())

    def _record(self, key: str, diff_id: str | None, created: str) -> None:
        """A step's result, for --cache-to (sent in the plan's order at the end)."""
        stage = getattr(self._local, "stage", None)
        self._records.setdefault(-1 if stage is None else stage, []).append(
            (key, diff_id, created))

    def _stage(self, df: Dockerfile, scope: BuildScope, stage: Stage, total: int) -> StageResult:
        from soute.image.config import ImageConfig

        base = scope.resolve_base(stage)
        stage_name = stage.display_name
        if base.stage is not None:
            parent = self.results[base.stage.index]  # built already (or waited for)
            config = ImageConfig.from_json(parent.config.to_json())
            layers = list(parent.layers)
            key = parent.key
            sscope = scope.stage_scope(stage, base=self._scopes[base.stage.index])
        elif base.name == "scratch":
            from soute.image.config import ContainerConfig
            from soute.image.platforms import Platform

            # BuildKit's empty image: the default PATH and WorkingDir "/" are in its config.
            config = ImageConfig(config=ContainerConfig(env=[f"PATH={DEFAULT_PATH}"],
                                                        working_dir="/"))
            config.set_platform(Platform.host())
            layers = []
            key = _key("scratch")
            sscope = scope.stage_scope(stage, image_env=config.config.env)
        else:
            image = self._base_image(base.name, stage)
            config = ImageConfig.from_json(self.store.blobs.read(image.id))
            config.config.env = _with_path(config.config.env)
            layers = list(image.layers)
            key = _key("image", image.id)
            sscope = scope.stage_scope(
                stage, image_env=config.config.env, image_onbuild=config.config.on_build
            )
            config.config.on_build = []  # triggers run once, in the child
        self._scopes[stage.index] = sscope
        state = ConfigState()
        commands = sscope.commands
        self.progress.step(f"[{stage_name} 1/{len(commands) + 1}] {stage.from_.original}")
        self.progress.done()
        for i, raw in enumerate(commands, start=2):
            self._check_canceled()
            instr = sscope.step(raw)
            self.progress.step(f"[{stage_name} {i}/{len(commands) + 1}] {raw.original}")
            key, layer = self._dispatch(instr, sscope, config, layers, key, state)
            if layer is not None:
                layers.append(layer)
            self.progress.done()
        return StageResult(config, layers, key)

    def _base_image(self, name: str, stage: Stage) -> Image:
        from soute.store.names import resolve
        from soute.store.store import ImageNotFound

        try:  # pulled when the store lacks it, as docker build does
            with self._pull_lock:  # stages side by side on one base: one pull
                try:  # a local image needs no registry client (its import: about 45 ms)
                    return self.note_image(name, resolve(self.store, name))
                except ImageNotFound:
                    from soute.registry.pull import ensure_image

                    if self.opts.memo is not None:
                        self.opts.memo.spoil("a base image was pulled")
                    return ensure_image(self.store, name, out=self.progress.out)
        except SouteError as e:
            raise LocatedError(
                e.message,
                file=self.opts.dockerfile_name,
                line=stage.from_.line,
                hint="make it first: soute bootstrap debian:bookworm, soute import, soute load",
            ) from None

    # ------------------------------------------------------------------ instructions

    def _dispatch(
        self,
        instr: ins.Instruction,
        sscope: StageScope,
        config: ImageConfig,
        layers: list[tuple[str, int]],
        key: str,
        state: ConfigState,
    ) -> tuple[str, tuple[str, int] | None]:
        cfg = config.config
        if isinstance(instr, ins.Run):
            return self._run(instr, sscope, config, layers, key)
        if isinstance(instr, (ins.Copy, ins.Add)):
            return self._copy(instr, sscope, config, layers, key)
        if isinstance(instr, ins.Workdir):
            apply_instruction(cfg, instr, state)
            wd = cfg.working_dir
            if wd == "/":
                self._history(config, f"WORKDIR {wd}", empty=True, created=None)
                return key, None
            user = cfg.user

            def make(upper: Path, lowers: list[Path]) -> None:
                from soute.build.copystep import workdir_step

                try:
                    workdir_step(self.store.tmp, upper, lowers, wd, user)
                except SouteError as e:
                    raise LocatedError(e.message, file=self.opts.dockerfile_name,
                                       line=instr.line, hint=e.hint) from None

            # "made": the directory's owner is USER and existing parents are copied up
            # (keys from before, when both were wrong, must not be reused).
            return self._layer_step(config, layers, _key(key, "workdir", wd, user, "made"),
                                    f"WORKDIR {wd}", make, suffix=False)
        if isinstance(instr, (ins.Arg,)):
            parts = [f"{a.key}={a.value}" if a.value is not None else a.key for a in instr.args]
            self._history(config, "ARG " + " ".join(parts), empty=True, created=None)
            return key, None
        if isinstance(instr, ins.Onbuild):
            cfg.on_build.append(instr.expression)  # BuildKit writes no history for ONBUILD
            return key, None
        if isinstance(instr, ins.Maintainer):
            config.author = instr.maintainer
            self._history(config, f"MAINTAINER {instr.maintainer}", empty=True, created=None)
            return key, None
        if not apply_instruction(cfg, instr, state):
            raise SouteError(f"internal: no dispatcher for {instr.NAME}")
        self._history(config, _created_by(instr, cfg), empty=True, created=None)
        return key, None

    def _history(
        self, config: ImageConfig, created_by: str, *, empty: bool, created: Timestamp | None
    ) -> None:
        """Record a step. Metadata steps get no time here (``created=None``): the export
        gives them the time of a neighbouring layer, as BuildKit's exporter does, so a
        rebuild from cache gives the same image."""
        from soute.image.config import History

        epoch = self._epoch()
        if epoch is not None and (created is None or created.unix_nanos > epoch.unix_nanos):
            created = epoch
        config.history.append(
            History(
                created=created, created_by=created_by, comment=HISTORY_COMMENT, empty_layer=empty
            )
        )

    def _epoch(self) -> Timestamp | None:
        from soute.image.timestamp import Timestamp
        from soute.store.importer import source_date_epoch

        epoch = source_date_epoch()
        return Timestamp.from_unix(epoch) if epoch is not None else None

    def _now(self) -> Timestamp:
        from soute.image.timestamp import Timestamp

        return self._epoch() or Timestamp.now()

    # ------------------------------------------------------------------ layers

    def _layer_step(
        self,
        config: ImageConfig,
        layers: list[tuple[str, int]],
        key: str,
        created_by: str,
        make: Callable[[Path, list[Path]], LayerDigest | None],
        *,
        suffix: bool = True,
    ) -> tuple[str, tuple[str, int] | None]:
        """Reuse the cached result of ``key`` or run ``make(upper, lowers)`` and keep the
        upper dir as the new layer.

        Stages side by side may reach the same step (same cache key): the second waits for
        the first and reuses its result, as BuildKit's solver merges equal vertices."""
        with self._step_lock(key):
            return self._layer_step_locked(config, layers, key, created_by, make, suffix=suffix)

    def _stored_result(self, key: str) -> str | None:
        """Under ``--no-cache``, the layer that step ``key`` made last time, if the store
        still holds it. A COPY into a new directory, rebuilt from the same sources, makes it
        again byte for byte: its new layer is then hashed first and written only when it
        differs, rather than written whole and deleted as a duplicate. (Not a COPY into a
        directory that exists, nor a RUN: the directories they change take the build's
        time, so their layers rarely repeat and would be tarred twice.)"""
        if not self.opts.no_cache:
            return None
        hit = self.store.meta.cache_get(key)
        if hit is None or hit[0] is None or not self.store.has_layer(hit[0]):
            return None
        return hit[0]

    def _write_layer(self, upper: Path) -> LayerDigest:
        """The layer tar of the finished upper dir, into the store."""
        from soute.layer import write_layer

        # Under SOURCE_DATE_EPOCH, mtimes are clamped to it (BuildKit's rewrite-timestamp)
        # so that the same build gives the same layers.
        epoch = self._epoch()
        seconds = epoch.seconds if epoch is not None else None
        with self.store.blobs.writer() as w:
            layer = write_layer(upper, w, overlay=True, epoch=seconds)  # type: ignore[arg-type]
            w.commit()
        return layer

    def _layer_step_locked(
        self,
        config: ImageConfig,
        layers: list[tuple[str, int]],
        key: str,
        created_by: str,
        make: Callable[[Path, list[Path]], LayerDigest | None],
        *,
        suffix: bool = True,
    ) -> tuple[str, tuple[str, int] | None]:
        from soute.image.digest import chain_ids
        from soute.image.timestamp import Timestamp

        text = created_by + (" # buildkit" if suffix else "")
        hit = None if self.opts.no_cache else self.store.meta.cache_get(key)
        if hit is not None and hit[0] is not None and not self.store.has_layer(hit[0]):
            hit = None  # its layer is gone from the store
        if hit is None and self.remote is not None and not self.opts.no_cache:
            with self._remote_lock:
                hit = self.remote.lookup(key, [d for d, _ in layers])  # --cache-from
        if hit is not None:
            diff_id, size, _, created = hit
            if self.opts.memo is not None:
                self.opts.memo.keys[key] = diff_id
            if self.remote is not None:
                self._record(key, diff_id, created)
            self.progress.cached()
            self._history(config, text, empty=diff_id is None, created=Timestamp.parse(created))
            if diff_id is None:
                return key, None
            self._add_layer(config, diff_id)
            return key, (diff_id, size)
        self._check_canceled()  # the build is ending: no new command
        if self.opts.memo is not None:
            self.opts.memo.spoil("a step ran")
        lowers = self.store.snapshots([d for d, _ in layers])
        upper = self.store.new_tree("upper-")
        # overlayfs shows the upper dir's own mode as the root's: give it the image's.
        top = os.stat(lowers[-1]) if lowers else None
        os.chmod(upper, top.st_mode & 0o7777 if top else 0o755)
        if top is not None:
            os.chown(upper, top.st_uid, top.st_gid)
        try:
            made = make(upper, lowers)
            created = self._now()
            if made is None and not any(os.scandir(upper)):
                # Nothing changed on disk: docker records the step without a layer.
                self.store.meta.cache_put(key, None, 0, None, created.format(), created.format())
                if self.remote is not None:
                    self._record(key, None, created.format())
                self._history(config, text, empty=True, created=created)
                return key, None
            # A COPY may have written its layer while it ran.
            layer = made if made is not None else self._write_layer(upper)
            diff_id = layer.diff_id
            chain = chain_ids([*[d for d, _ in layers], diff_id])[-1]
            snapshot = self.store.snapshot_path(chain)
            if not snapshot.is_dir():
                os.chmod(upper, 0o755)
                try:
                    os.rename(upper, snapshot)  # the upper dir becomes the snapshot as it is
                except OSError:
                    if not snapshot.is_dir():
                        raise  # else a stage beside this one made the same layer first
            else:
                self.store.discard(upper)  # a duplicate (--no-cache rebuild): not worth waiting
            self.store.meta.add_snapshot(
                chain, chain_ids([d for d, _ in layers])[-1] if layers else None, diff_id
            )
            self.store.meta.cache_put(
                key, diff_id, layer.size, chain, created.format(), created.format()
            )
            if self.remote is not None:
                self._record(key, diff_id, created.format())
            self._history(config, text, empty=False, created=created)
            self._add_layer(config, diff_id)
            return key, (diff_id, layer.size)
        finally:
            shutil.rmtree(upper, ignore_errors=True)

    @staticmethod
    def _add_layer(config: ImageConfig, diff_id: str) -> None:
        config.rootfs.diff_ids.append(diff_id)

    # ------------------------------------------------------------------ RUN

    def _run(
        self,
        instr: ins.Run,
        sscope: StageScope,
        config: ImageConfig,
        layers: list[tuple[str, int]],
        key: str,
    ) -> tuple[str, tuple[str, int] | None]:
        self._check_entitlements(instr)  # an ONBUILD trigger's RUN comes only now
        cfg = config.config
        shell = cfg.shell or list(ins.DEFAULT_SHELL)
        script = instr.script()
        if script.pipe_file is not None or not instr.shell_form:
            argv = list(script.args)  # exec form, or a `#!` heredoc run as a file
        else:
            argv = [*shell, *script.args]
        env = dict(sscope.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env_list = [f"{k}={v}" for k, v in env.items()]
        # Proxy build args reach every RUN without an ARG, in both cases, and stay out of
        # the cache key and the history, as BuildKit's ProxyEnv (an ENV or ARG wins).
        assert self.scope is not None
        run_env = env_list + [e for e in self.scope.proxy_env()
                              if e.partition("=")[0] not in env]
        cwd = cfg.working_dir or "/"
        network = instr.network if instr.network != "default" else self.opts.network
        sources, mount_keys = self._mount_sources(instr)
        step_key = _key(
            key,
            "run",
            argv,
            env_list,
            cwd,
            cfg.user,
            network,
            list(instr.mount_specs),
            instr.security,
            # What the mounts read (a stage, an image, context files) keys the step too;
            # left out when there is none, so that plain RUN keys stay as they were.
            *([mount_keys] if any(mount_keys) else []),
        )
        created_by = "RUN " + sscope.run_history(argv)

        def make(upper: Path, lowers: list[Path]) -> None:
            with self._cache_locks(instr):
                self._check_canceled()  # it may have waited for a stage that failed
                run(upper, lowers)

        def run(upper: Path, lowers: list[Path]) -> None:
            from soute.build.run import run_step

            run_step(
                instr,
                argv,
                run_env,
                cwd,
                cfg.user or "0",
                network,
                upper,
                lowers,
                self.store,
                self.progress.current(),  # the pump thread writes to this stage's lane
                file=self.opts.dockerfile_name,
                pipe_file=script.pipe_file,
                context=self.opts.context,
                secrets=self.opts.secrets,
                sources=sources,
                ssh=self.opts.ssh,
            )

        return self._layer_step(config, layers, step_key, created_by, make)

    @contextlib.contextmanager
    def _cache_locks(self, instr: ins.Run) -> Iterator[None]:
        """Hold the cache mounts with ``sharing=locked`` (or ``private``) for the RUN: stages
        side by side take turns on them, as the steps of a sequential build did."""
        ids = sorted({m.cache_id for m in instr.mounts
                      if m.type == "cache" and not m.from_
                      and m.effective_sharing in ("locked", "private")})
        with contextlib.ExitStack() as held:
            for cache_id in ids:  # in one order: no two RUNs wait for each other
                held.enter_context(self._step_lock("cache-mount:" + cache_id))
            yield

    def _mount_sources(self, instr: ins.Run) -> tuple[list[MountSource | None], list[str]]:
        """For each ``--mount``: the tree its ``from=`` names (a stage built earlier, an
        image in the store, or scratch), and what it adds to the step's cache key (that
        tree's key, or the content digest of a bind's source in the context)."""
        if not instr.mounts:
            return [], []  # without importing soute.build.run (a cached step needs none)
        from soute.build.run import MountSource
        from soute.dockerfile.instructions import Stage

        sources: list[MountSource | None] = []
        keys: list[str] = []
        for m in instr.mounts:
            source = None
            if m.type in ("bind", "cache") and m.from_:
                assert self.scope is not None
                ref = self.scope.mount_ref(m.from_)
                if isinstance(ref, Stage):
                    result = self.results[ref.index]
                    lowers = self.store.snapshots([d for d, _ in result.layers])
                    source = MountSource(m.from_, tuple(map(str, lowers)), result.key)
                elif ref == "scratch" and m.type == "cache":
                    keys.append("")  # the plain cache of that id, as without from=
                    sources.append(None)
                    continue
                elif ref == "scratch":
                    source = MountSource(m.from_, (), _key("scratch"))
                else:
                    image = self._mount_image(ref, instr)
                    lowers = self.store.snapshots(image.diff_ids)
                    source = MountSource(m.from_, tuple(map(str, lowers)), image.id)
                keys.append(source.key)
            elif m.type == "bind" and self.opts.context is not None:
                keys.append(self._context_digest(m.source, instr))
            else:
                keys.append("")
            sources.append(source)
        return sources, keys

    def note_image(self, name: str, image: Image) -> Image:
        """``name`` resolved to ``image``: what the memo of a cached build checks again."""
        memo = self.opts.memo
        if memo is not None:
            from soute.store.names import lookup_tag

            tag = lookup_tag(name)
            memo.image(tag, image.id, self.store.meta.tag_target(tag) if tag else None)
        return image

    def _mount_image(self, name: str, instr: ins.Run) -> Image:
        from soute.store.names import resolve

        try:
            return self.note_image(name, resolve(self.store, name))
        except SouteError as e:
            raise LocatedError(
                e.message,
                file=self.opts.dockerfile_name,
                line=instr.line,
                hint="RUN --mount from= names a stage of this file or an image in the store",
            ) from None

    def _context_digest(self, source: str, instr: ins.Run) -> str:
        """BuildKit keys a RUN on the content of the context files it binds."""
        from soute.build.contenthash import go_join

        try:
            return self.context().checksum(go_join("/", source), follow_links=True)
        except SouteError as e:
            from soute.build.copystep import _checksum_error

            raise LocatedError(
                _checksum_error(e),
                file=self.opts.dockerfile_name,
                line=instr.line,
                hint=e.hint or "check the mount's source path in the context",
            ) from None

    # ------------------------------------------------------------------ COPY / ADD

    def _copy(
        self,
        instr: ins.Copy | ins.Add,
        sscope: StageScope,
        config: ImageConfig,
        layers: list[tuple[str, int]],
        key: str,
    ) -> tuple[str, tuple[str, int] | None]:
        from soute.build.copystep import copy_step

        return copy_step(self, instr, sscope, config, layers, key)

    # ------------------------------------------------------------------ export

    def _export(self, result: StageResult) -> Image:
        config = result.config
        for k, v in self.opts.labels.items():
            config.config.labels[k] = v
        from soute.image.config import normalise_history

        normalise_history(config)  # BuildKit's exporter: times for the metadata steps
        times = [h.created for h in config.history if h.created is not None]
        config.created = times[-1] if times else self._now()
        return self.store.add_image(config.to_json(), result.layers, tags=list(self.opts.tags))


_HANDLERS_EVERY = 0.2  # seconds: how often the calling thread looks for signal handlers


class _Scheduler:
    """Builds the planned stages, each once the stages it reads are built.

    Up to ``jobs`` stages run at once, each in a thread of its own with its own progress
    lane. When one stage alone can run and none is running, the calling thread builds it, as
    a sequential build does (its RUN then gets the signals soute receives). The first failure,
    or an interrupt (SIGINT, SIGTERM) while stages run in threads, cancels the others: no new
    step starts, and the processes their threads forked (RUN containers, copy and mount
    helpers) are killed until those threads are over. Then the failure is raised.
    """

    def __init__(
        self, builder: Builder, df: Dockerfile, scope: BuildScope, plan: list[Stage], jobs: int
    ) -> None:
        self.builder = builder
        self.df = df
        self.scope = scope
        self.plan = plan
        self.jobs = jobs
        self.planned = {s.index for s in plan}
        self.needs = {s.index: builder._needs(scope, s) & self.planned for s in plan}
        self.pending = list(plan)  # in the plan's order: ready stages start in that order
        self.running: dict[int, threading.Thread] = {}
        self.threads: list[threading.Thread] = []  # every one started: _cancel waits for them
        self.awaited: list[int] = []  # stages running stages wait for (their slot is free)
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self.owner = threading.get_ident()

    def run(self) -> None:
        _preload()
        restore = _interrupt_on_sigterm()
        try:
            try:
                while (stage := self._next()) is not None:
                    result = self.builder._build_stage(self.df, self.scope, stage,
                                                       len(self.plan))
                    with self.cond:
                        self.builder.results[stage.index] = result
            except BaseException as e:
                with self.cond:
                    if self.error is None:
                        self.error = e
            if self.error is not None:
                self._cancel()
                raise self.error
        finally:
            restore()

    def _next(self) -> Stage | None:
        """Start the stages that can start; the one the calling thread builds itself, or
        None when every stage is built (or the build is failing)."""
        results = self.builder.results
        with self.cond:
            while self.error is None:
                ready = [s for s in self.pending if all(i in results for i in self.needs[s.index])]
                if len(ready) == 1 and not self.running:
                    self.pending.remove(ready[0])
                    return ready[0]
                free = self.jobs - (len(self.running) - len(self.awaited))
                if ready and free > 0:
                    for stage in ready[:free]:
                        self._start(stage)
                    continue
                if not self.pending and not self.running:
                    return None
                stuck = sum(1 for i in self.awaited if i not in results)
                if not ready and len(self.running) == stuck:
                    # Nothing runs and nothing can start: stages wait for each other.
                    self.error = SouteError(
                        "circular dependency between stages",
                        "a stage's ONBUILD triggers read a stage that needs it")
                    break
                # Not forever: Python runs signal handlers in this thread only, and a ^C the
                # kernel gave a stage's thread (blocked in waitpid) does not wake this one.
                self.cond.wait(_HANDLERS_EVERY)
        return None

    def _start(self, stage: Stage) -> None:
        self.pending.remove(stage)
        thread = threading.Thread(target=self._work, args=(stage,), daemon=True,
                                  name=f"stage {stage.display_name}")
        self.threads.append(thread)
        self.running[stage.index] = thread
        thread.start()

    def _work(self, stage: Stage) -> None:
        """A stage's thread: build it on a progress lane of its own."""
        builder = self.builder
        lane = builder.progress.lane()
        result: StageResult | None = None
        try:
            with builder.progress.bound(lane):
                result = builder._build_stage(self.df, self.scope, stage, len(self.plan))
        except BaseException as e:
            with self.cond:
                first = self.error is None and not isinstance(e, _Canceled)
                if first:
                    self.error = e
                    builder._canceled.set()  # the others start no new step
            if first:
                lane.fail()
            else:
                lane.cancel()  # killed, or stopped, because the build is ending
        finally:
            builder._leave_thread()
            with self.cond:
                if result is not None:
                    builder.results[stage.index] = result
                self.running.pop(stage.index, None)
                self.cond.notify_all()

    def wait_for(self, index: int) -> StageResult:
        """Stage ``index``'s result, waiting for it (a stage in a thread reading one the plan
        could not see it needs); meanwhile another stage may take this one's slot."""
        results = self.builder.results
        with self.cond:
            if index not in self.planned or threading.get_ident() == self.owner:
                raise KeyError(index)  # never built, or this thread is the one to build it
            self.awaited.append(index)
            self.cond.notify_all()
            try:
                while index not in results and self.error is None:
                    self.cond.wait()
            finally:
                self.awaited.remove(index)
            if index not in results:
                raise _Canceled()
            return dict.__getitem__(results, index)

    def _cancel(self) -> None:
        """Stop the stages still running and wait for their threads. Their processes are
        killed again and again: a thread may fork one more before it sees the cancel."""
        self.builder._canceled.set()
        with self.cond:
            self.cond.notify_all()  # stages waiting for another give up
        interrupted = False
        while True:
            threads = [t for t in self.threads if t.is_alive()]
            if not threads:
                return
            for thread in threads:
                _kill_children(thread.native_id)
            try:
                threads[0].join(0.05)
            except KeyboardInterrupt:
                if interrupted:
                    raise  # a second ^C: stop waiting (what runs dies with soute)
                interrupted = True


# What forked children that do not exec (copies, mount helpers) import: imported before the
# threads start. A child forked while another thread is importing a module inherits that
# module's import lock held by a thread it does not have, and would wait for it forever.
_CHILD_MODULES = (
    "soute.build.copy", "soute.build.copystep", "soute.build.context", "soute.build.run",
    "soute.dockerfile.ignore", "soute.layer", "soute.layer.apply", "soute.layer.compress",
    "soute.layer.write", "soute.runtime", "soute.runtime.executor", "soute.runtime.paths",
    "soute.runtime.rootfs", "soute.runtime.spec", "soute.runtime._linux", "bz2", "lzma",
    "isal.igzip", "isal.isal_zlib", "zstandard",
)  # fmt: skip


def _preload() -> None:
    import importlib

    for name in _CHILD_MODULES:
        with contextlib.suppress(ImportError):  # optional ones (compression) may be missing
            importlib.import_module(name)


def _kill_children(thread_id: int | None) -> None:
    """SIGKILL the processes a thread forked. A RUN container under a mount helper dies with
    it (its parent-death signal)."""
    if thread_id is None:
        return
    try:
        with open(f"/proc/self/task/{thread_id}/children") as f:
            pids = f.read().split()
    except OSError:  # the thread is gone
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def close_inherited_fds(*keep: int) -> None:
    """In a forked child that does not exec (a copy, a mount helper): close every descriptor
    but stdio and ``keep``. Stages build side by side, and their pipes (a RUN's output, a
    child's report) would otherwise stay open in the child, so that their readers would wait
    for its end before they see EOF."""
    low = 3
    for fd in sorted(k for k in keep if k >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _interrupt_on_sigterm() -> Callable[[], None]:
    """While stages run in threads, SIGTERM cancels the build as ^C does (a RUN in the
    calling thread still gets it forwarded, as in a sequential build); how to undo that."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None  # the caller handles it

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _with_path(env: list[str] | None) -> list[str]:
    """An image's Env with PATH, as BuildKit makes sure of (an imported root filesystem has
    none)."""
    env = env or []
    if any(e.partition("=")[0] == "PATH" for e in env):
        return env
    return [*env, f"PATH={DEFAULT_PATH}"]


def _created_by(instr: ins.Instruction, cfg: Any) -> str:
    """The history text BuildKit writes for a metadata instruction."""
    from soute.dockerfile.goquote import go_quote

    if isinstance(instr, ins.Env):
        return "ENV " + " ".join(f"{p.key}={p.value}" for p in instr.pairs)
    if isinstance(instr, ins.Label):
        return "LABEL " + " ".join(f"{p.key}={p.value}" for p in instr.pairs)
    if isinstance(instr, ins.Cmd):
        return "CMD [" + " ".join(go_quote(a) for a in cfg.cmd) + "]"
    if isinstance(instr, ins.Entrypoint):
        return "ENTRYPOINT [" + " ".join(go_quote(a) for a in cfg.entrypoint) + "]"
    if isinstance(instr, ins.Expose):
        return "EXPOSE " + _go_list(sorted(instr.port_specs or instr.ports))
    if isinstance(instr, ins.Volume):
        return "VOLUME " + _go_list(list(instr.volumes))
    if isinstance(instr, ins.User):
        return f"USER {instr.user}"
    if isinstance(instr, ins.Stopsignal):
        return f"STOPSIGNAL {instr.signal}"
    if isinstance(instr, ins.Shell):
        return "SHELL " + _go_list(list(instr.shell))
    if isinstance(instr, ins.Healthcheck):
        return "HEALTHCHECK " + instr.health.describe()
    return instr.original


def build(store: Store, opts: BuildOptions, *, progress: TextIO | None = sys.stderr) -> Image:
    """Build ``opts.dockerfile`` into ``store``; the image is tagged with ``opts.tags``."""
    return Builder(store, opts, Progress(None if opts.quiet else progress)).build()
