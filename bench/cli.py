"""``scripts/bench [--peers ...] [--quick] [--only NAME[,NAME]]``: set up, run, report."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import Any

from . import report
from .measure import run_case
from .services import Dockerd, base_tarball
from .system import Failed, ensure_packages, machine, sh
from .tools import Buildah, ChImage, Docker, Soute, Tool
from .workloads import FLOOR, SKOPEO, WORKLOADS, Bench

PEERS = ("buildkit", "docker", "buildah", "ch-image", "skopeo")
LABELS = {"soute": "soute", "buildkit": "BuildKit", "docker": "docker", "buildah": "buildah",
          "ch-image": "ch-image", SKOPEO: "skopeo", FLOOR: "cp -a ∥ tar"}
HERE = Path(__file__).resolve().parent
DEFAULT_WORK = Path("/var/tmp/soute-bench")

# What the harness installs when missing (Debian packages).
PACKAGES = {
    "base": ["mmdebstrap", "curl"],
    "buildkit": ["docker.io", "runc"],
    "docker": ["docker.io", "runc"],
    "buildah": ["buildah", "runc"],
    "ch-image": ["charliecloud-builders", "charliecloud-runtime", "python3-lark", "git"],
    SKOPEO: ["skopeo"],
    "registry": ["docker-registry"],
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Measure soute side by side with its peers on the workloads of issue #7 "
                    "and write bench/RESULTS.md and bench/results.json.")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma list of peers (default: all of {','.join(PEERS)}; skopeo is "
                        "the registry workload's reference)")
    p.add_argument("--quick", action="store_true",
                   help="3 counted runs instead of 5, fewer runs of the slow cold cases")
    p.add_argument("--only", metavar="NAME[,NAME]",
                   help=f"only these workloads: {', '.join(WORKLOADS)}")
    p.add_argument("--runs", type=int, help="counted runs per case (default 5, 3 with --quick)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("SOUTE_BENCH_WORK",
                                                                     DEFAULT_WORK)),
                   help=f"where the base tarball, the stores and the contexts are kept "
                        f"between runs (default {DEFAULT_WORK}; env SOUTE_BENCH_WORK)")
    p.add_argument("--reset", action="store_true",
                   help="forget every store of the work directory first (not the base "
                        "tarball nor the contexts)")
    p.add_argument("--no-write", action="store_true",
                   help="print the table only; leave bench/RESULTS.md and results.json")
    args = p.parse_args(argv)
    args.peers = [x for x in args.peers.split(",") if x]
    for peer in args.peers:
        if peer not in PEERS:
            p.error(f"unknown peer {peer!r}: choose among {', '.join(PEERS)}")
    args.only = [x for x in args.only.split(",") if x] if args.only else list(WORKLOADS)
    for name in args.only:
        if name not in WORKLOADS:
            p.error(f"unknown workload {name!r}: choose among {', '.join(WORKLOADS)}")
    if args.runs is None:
        args.runs = 3 if args.quick else 5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("scripts/bench: run it as root (dockerd, buildah and soute's runs need it)",
              file=sys.stderr)
        return 2
    # Killed with SIGTERM (a timeout): unwind, so that dockerd and the registry are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.reset:
        for name in ("soute", "docker", "buildah", "ch"):
            shutil.rmtree(work / name, ignore_errors=True)
    packages = PACKAGES["base"] + [p for peer in args.peers for p in PACKAGES[peer]]
    if "registry" in args.only:
        packages += PACKAGES["registry"]
    ensure_packages(sorted(set(packages)))
    tarball = base_tarball(work)

    with ExitStack() as stack:
        peers: list[Tool] = []
        broken: dict[str, str] = {}
        if {"buildkit", "docker"} & set(args.peers):
            dockerd = Dockerd(work / "docker")
            stack.callback(dockerd.stop)
            try:
                dockerd.start()
            except Failed as e:
                broken["buildkit"] = broken["docker"] = str(e)
            for buildkit in (True, False):
                tool = Docker(dockerd, buildkit=buildkit)
                if tool.name in args.peers:
                    peers.append(tool)
        if "buildah" in args.peers:
            peers.append(Buildah(work / "buildah"))
        if "ch-image" in args.peers:
            peers.append(ChImage(work / "ch"))
        soute = Soute(work / "soute")
        bench = Bench(work, soute, peers, skopeo=SKOPEO in args.peers and
                      shutil.which(SKOPEO) is not None, broken=broken)
        versions = _versions(bench)
        for tool in bench.builders:
            if tool.name in broken:
                continue
            try:
                tool.prepare(tarball)
            except Failed as e:
                broken[tool.name] = f"could not import the base: {e}"
                print(f"bench: {tool.name}: {broken[tool.name]}", file=sys.stderr)
        if "soute" in broken:
            print(f"scripts/bench: {broken['soute']}", file=sys.stderr)
            return 1

        problems: list[str] = []
        for name in args.only:
            print(f"bench: {name}", file=sys.stderr, flush=True)
            try:
                for case in WORKLOADS[name](bench):
                    bench.results[case.key] = (case, run_case(case, runs=args.runs,
                                                              quick=args.quick))
            except Failed as e:
                problems.append(f"{name}: {e}")
                print(f"bench: {name} stopped: {e}", file=sys.stderr)
        print("bench: pruning (timings after this within 6 minutes are slower: see "
              "bench/README.md)", file=sys.stderr, flush=True)
        bench.finish()
        shutil.rmtree(work / "tmp", ignore_errors=True)

    columns = [(t.name, LABELS[t.name]) for t in bench.builders]
    if bench.skopeo:
        columns.append((SKOPEO, LABELS[SKOPEO]))
    if any(FLOOR in outcomes for _, outcomes in bench.results.values()):
        columns.append((FLOOR, LABELS[FLOOR]))
    meta: dict[str, Any] = {
        "date": date.today().isoformat(),
        "command": " ".join(["scripts/bench", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "runs": args.runs,
        "machine": machine(),
        "versions": versions,
        "problems": problems,
        "elapsed_minutes": round((time.monotonic() - started) / 60, 1),
    }
    section = report.markdown(meta, bench.results, columns, args.runs)
    print(section.split("\n", 1)[1].rsplit(report.END, 1)[0])
    if not args.no_write:
        report.write_markdown(HERE / "RESULTS.md", section)
        report.write_json(HERE / "results.json", report.to_json(meta, bench.results))
        print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'results.json'}", file=sys.stderr)
    return 0


def _versions(bench: Bench) -> dict[str, str]:
    versions: dict[str, str] = {}
    for tool in bench.builders:
        try:
            versions[tool.name] = tool.version()
        except Failed as e:
            versions[tool.name] = f"unknown ({e})"
            bench.broken.setdefault(tool.name, str(e))
    extra = {SKOPEO: [SKOPEO, "--version"], "runc": ["/usr/sbin/runc", "--version"],
             "docker-registry": ["docker-registry", "--version"]}
    for name, argv in extra.items():
        try:
            versions[name] = sh(argv).splitlines()[0].strip()
        except (Failed, IndexError):
            continue
    return versions
