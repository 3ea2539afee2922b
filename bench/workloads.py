"""The workloads of issue #7, section 2, as cases for :func:`bench.measure.run_case`.

Each workload is a generator of cases: the driver runs a case before asking for the next,
so a workload can rely on the state the previous case left (cached builds after cold
ones). Builds go through :meth:`Tool.build`; everything else through a tool's own
commands.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .contexts import BASE_IMAGE, apache_context, copy_context, steps_context, touch_one_file
from .measure import Case, Outcome, Trial
from .services import Registry
from .system import Failed, Sample, sh, timed
from .tools import Soute, Tool, Unsupported, http_latency

SKOPEO = "skopeo"
_PRUNE_BELOW = 15 << 30  # bytes free: a full copy workload writes about 20 GB
# The copy's floor: what any builder that keeps both a snapshot and a layer does at least,
# by C tools, the two halves in parallel (a column of its own in the copy cold row).
FLOOR = "floor"


@dataclass
class Bench:
    """What the workloads share: the work directory, the tools, the results so far."""

    work: Path
    soute: Soute
    peers: list[Tool]  # the builders besides soute, in column order
    skopeo: bool  # skopeo installed: the registry workload's reference
    broken: dict[str, str] = field(default_factory=dict)  # tool -> why it is unusable
    results: dict[str, tuple[Case, dict[str, Outcome]]] = field(default_factory=dict)
    _ports: Iterator[int] = field(default_factory=lambda: itertools.count(18700))
    prune_due: bool = False

    @property
    def builders(self) -> list[Tool]:
        return [self.soute, *self.peers]

    def tool(self, name: str) -> Tool | None:
        return next((t for t in self.builders if t.name == name), None)

    def port(self) -> int:
        return next(self._ports)

    def scratch(self, name: str) -> Path:
        path = self.work / "tmp" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def case(self, workload: str, name: str, title: str, tools: list[Tool],
             make: Callable[[Tool], Trial], *, reference: str | None = None,
             cold: bool = False, once_quick: bool = False, size: int | None = None) -> Case:
        """A case over ``tools``: a tool that is broken, or that raises Unsupported while
        its trial is made, is n/a with the reason."""
        trials: dict[str, Trial] = {}
        na: dict[str, str] = {}
        for tool in tools:
            if tool.name in self.broken:
                na[tool.name] = self.broken[tool.name]
                continue
            try:
                trials[tool.name] = make(tool)
            except (Unsupported, Failed) as e:
                na[tool.name] = str(e)
        return Case(workload, name, title, trials, na, reference=reference, cold=cold,
                    once_quick=once_quick, size=size)

    def usable(self, tool: Tool) -> bool:
        return tool.name not in self.broken

    def prune(self) -> None:
        """What cold builds left is removed at the end of the run (:meth:`finish`), or now
        when the disk runs short. On this machine's ext4 (no journal) an inode stays unused
        for 60 s after its deletion, 360 s while its inode table block is dirty, and each
        new file's allocation walks past every such inode of its group: after a prune
        deleted 20,000 files, builds took several times longer for minutes (a soute copy
        cold 12 s against 2.4 s; sys time 11 s against 2)."""
        self.prune_due = True
        if shutil.disk_usage(self.work).free < _PRUNE_BELOW:
            self.finish()

    def finish(self) -> None:
        """Prune what :meth:`prune` put off."""
        if self.prune_due:
            self.prune_due = False
            for tool in self.builders:
                if self.usable(tool):
                    tool.prune()


def build_trial(context: Path, workload: str, *, no_cache: bool,
                before: Callable[[], None] | None = None) -> Callable[[Tool], Trial]:
    def make(tool: Tool) -> Trial:
        tag = tool.tag(workload)
        watch = no_cache and workload == "copy" and tool.name == "soute"

        def run() -> Sample:
            return tool.build(context, tag, no_cache=no_cache, watch_memory=watch)

        return Trial(run, before=before) if before else Trial(run)

    return make


def steps(b: Bench) -> Iterator[Case]:
    ctx = steps_context(b.work)
    yield b.case("steps", "cold", "steps, cold (--no-cache)", b.builders,
                 build_trial(ctx, "steps", no_cache=True), reference="buildkit", cold=True)
    yield b.case("steps", "cached", "steps, fully cached", b.builders,
                 build_trial(ctx, "steps", no_cache=False), reference="buildkit")
    b.prune()


def copy(b: Bench) -> Iterator[Case]:
    ctx = copy_context(b.work)
    cold = b.case("copy", "cold", "copy, cold (--no-cache)", b.builders,
                  build_trial(ctx, "copy", no_cache=True), reference="buildkit", cold=True)
    cold.trials[FLOOR] = floor_trial(ctx, b.scratch("floor"))  # under tmp/: kept to the end
    yield cold
    yield b.case("copy", "cached", "copy, fully cached", b.builders,
                 build_trial(ctx, "copy", no_cache=False), reference="buildkit")
    yield b.case("copy", "touched", "copy, one file touched", b.builders,
                 build_trial(ctx, "copy", no_cache=False, before=lambda: touch_one_file(ctx)),
                 reference="buildkit")
    b.prune()


def floor_trial(ctx: Path, out: Path) -> Trial:
    """``cp -a`` of the copy's context (the snapshot) beside ``tar | tee | sha256sum`` of it
    (the layer: written and hashed), each on its own core. Every run writes to a new
    directory under ``out``, all removed at the end of the run (see :meth:`Bench.prune`)."""
    runs = itertools.count()

    def run() -> Sample:
        target = out / str(next(runs))
        target.mkdir(parents=True)
        script = (f"set -eo pipefail; cp -a ctx {target}/tree & copy=$!; "
                  f"tar --sort=name -cf - ctx | tee {target}/layer.tar | sha256sum >/dev/null; "
                  "wait $copy")
        return timed(["bash", "-c", script], cwd=ctx)

    return Trial(run)


def apache(b: Bench) -> Iterator[Case]:
    ctx = apache_context(b.work)
    yield b.case("apache", "cold", "apache, cold (--no-cache)", b.builders,
                 build_trial(ctx, "apache", no_cache=True), cold=True, once_quick=True)
    yield b.case("apache", "cached", "apache, fully cached", b.builders,
                 build_trial(ctx, "apache", no_cache=False), reference="buildkit")
    b.prune()


def run(b: Bench) -> Iterator[Case]:
    """Container start: ``run --rm IMAGE true``, and ``run -d -p`` to the first HTTP answer
    of the apache image. docker run stands in the docker column; BuildKit only builds."""
    runners = [t for t in b.builders if t.name != "buildkit"]

    def run_true(tool: Tool) -> Trial:
        argv = tool.run_true_argv(BASE_IMAGE)
        return Trial(lambda: timed(argv, env=tool.env()))

    yield b.case("run", "true", "run --rm IMAGE true", runners, run_true, reference="docker")

    ctx = apache_context(b.work)

    def run_http(tool: Tool) -> Trial:
        tool.require_detached()
        tool.ensure_built(ctx, tool.tag("apache"))
        containers: list[str] = []

        def go() -> Sample:
            sample, container = http_latency(tool, tool.tag("apache"), b.port())
            containers.append(container)
            return sample

        def after() -> None:
            while containers:
                tool.remove_container(containers.pop())

        return Trial(go, after=after)

    yield b.case("run", "http", "run -d -p, to first HTTP answer", runners, run_http,
                 reference="docker")


def export(b: Bench) -> Iterator[Case]:
    """``save`` of the apache image: MB/s of its uncompressed size (soute's figure)."""
    ctx = apache_context(b.work)
    savers = [t for t in b.builders if t.name != "buildkit"]
    b.soute.ensure_built(ctx, b.soute.tag("apache"))
    size = b.soute.image_size(b.soute.tag("apache"))
    built: set[str] = set()
    for compression in ("gzip", "zstd", "none"):

        def make(tool: Tool, compression: str = compression) -> Trial:
            output = b.scratch(f"export-{tool.name}.tar")
            argv = tool.save_argv(tool.tag("apache"), compression, output)
            if tool.name not in built:
                tool.ensure_built(ctx, tool.tag("apache"))
                built.add(tool.name)
            return Trial(lambda: timed(argv, env=tool.env()),
                         before=lambda: output.unlink(missing_ok=True),
                         after=lambda: output.unlink(missing_ok=True))

        yield b.case("export", compression, f"save, {compression}", savers, make, size=size)


def registry(b: Bench) -> Iterator[Case]:
    """Push of the apache image to a local registry (emptied before every run), then pull
    into an empty store; skopeo copies the same image from soute's OCI layout."""
    soute = b.soute
    ctx = apache_context(b.work)
    soute.ensure_built(ctx, soute.tag("apache"))
    reg = Registry(b.work / "registry")
    ref = f"{reg.address}/bench/apache:latest"
    layout = f"oci:{soute.root / 'oci'}:{soute.tag('apache')}:latest"
    can_push, can_pull = soute.has_command("push"), soute.has_command("pull")
    if can_push:
        sh(soute.cli("tag", soute.tag("apache"), ref))
    try:
        pushers: dict[str, Trial] = {}
        na: dict[str, str] = {}
        if can_push:
            pushers["soute"] = Trial(lambda: timed(soute.cli("push", ref)),
                                     before=reg.start_empty)
        else:
            na["soute"] = "soute push not available"
        if b.skopeo:
            pushers[SKOPEO] = Trial(
                lambda: timed([SKOPEO, "copy", "-q", "--dest-tls-verify=false", layout,
                               f"docker://{ref}"]), before=reg.start_empty)
        yield Case("registry", "push", "push to a local registry", pushers, na,
                   reference=SKOPEO)

        # One push for all the pulls.
        reg.start_empty()
        if can_push:
            sh(soute.cli("push", ref))
        elif b.skopeo:
            sh([SKOPEO, "copy", "-q", "--dest-tls-verify=false", layout, f"docker://{ref}"])
        pullers: dict[str, Trial] = {}
        na = {}
        fresh = b.scratch("pull")

        def empty() -> None:
            shutil.rmtree(fresh, ignore_errors=True)

        if can_pull:
            pullers["soute"] = Trial(lambda: timed(soute.cli("pull", ref, root=fresh)),
                                     before=empty, after=empty)
        else:
            na["soute"] = "soute pull not available"
        if b.skopeo:
            pullers[SKOPEO] = Trial(
                lambda: timed([SKOPEO, "copy", "-q", "--src-tls-verify=false",
                               f"docker://{ref}", f"oci:{fresh}:apache"]),
                before=empty, after=empty)
        yield Case("registry", "pull", "pull from a local registry", pullers, na,
                   reference=SKOPEO)
    finally:
        reg.stop()
        if can_push:  # each run's registry has a port of its own: its tag would keep an image
            sh(soute.cli("rmi", ref), check=False)


def memory(b: Bench) -> Iterator[Case]:
    """Peak RSS of soute during copy cold: read from the copy workload's runs when it ran,
    else measured here on soute alone."""
    if "copy.cold" in b.results:
        return
    ctx = copy_context(b.work)
    yield b.case("memory", "copy-cold", "memory, copy cold (soute alone)", [b.soute],
                 build_trial(ctx, "copy", no_cache=True), cold=True)
    b.soute.prune()


WORKLOADS: dict[str, Callable[[Bench], Iterator[Case]]] = {
    "steps": steps,
    "copy": copy,
    "apache": apache,
    "run": run,
    "export": export,
    "registry": registry,
    "memory": memory,
}
