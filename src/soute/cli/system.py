"""Store-wide commands: fsck, system df, image prune, system prune."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import TYPE_CHECKING

from soute.cli.table import print_table
from soute.container.changes import upper_size

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from soute.cli.main import Context
    from soute.store.store import Image, Store


def configure_fsck(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="skip re-hashing every blob")


def run_fsck(ctx: Context, args: argparse.Namespace) -> int:
    report = ctx.store().fsck(verify_blobs=not args.quick)
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"problem: {problem}")
    print(f"checked {report.blobs} blobs, {report.images} images, {report.snapshots} snapshots:"
          f" {len(report.problems)} problem(s)")
    return 1 if report.problems else 0


def configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="a Go template: '{{.NCPU}} {{.MemTotal}}', json")


# statfs magic numbers of the file systems docker names in "Backing Filesystem".
_FS_NAMES = {0xEF53: "extfs", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs",
             0x794C7630: "overlayfs", 0x2FC12FC1: "zfs"}


def run_info(ctx: Context, args: argparse.Namespace) -> int:
    """``soute info``: docker's ``info`` fields that a store without a daemon has."""
    import platform
    import socket

    from soute import __version__
    from soute.container.record import Containers
    from soute.errors import SouteError
    from soute.image.inspect import human_size
    from soute.runtime.cgroups import detect_layout

    store = ctx.store()
    states = [c.state() for c in Containers(store).all()]
    running = sum(1 for s in states if s.running and not s.paused)
    paused = sum(1 for s in states if s.paused)
    with open("/proc/meminfo") as f:
        memory = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    try:
        release = platform.freedesktop_os_release()
    except OSError:  # no /etc/os-release: the kernel's name stands in, as docker's
        release = {}
    layout = detect_layout()
    info: dict[str, Any] = {  # docker's names, for --format
        "Containers": len(states), "ContainersRunning": running, "ContainersPaused": paused,
        "ContainersStopped": len(states) - running - paused, "Images": len(store.images()),
        "Driver": "overlay",
        "DriverStatus": [["Backing Filesystem", _backing_fs(store.root)]],
        "LoggingDriver": "json-file", "CgroupDriver": "cgroupfs",
        "CgroupVersion": "1" if any(h.version == 1 for h in layout.hierarchies) else "2",
        "KernelVersion": platform.release(),
        "OperatingSystem": release.get("PRETTY_NAME", platform.system()),
        "OSVersion": release.get("VERSION_ID", ""), "OSType": "linux",
        "Architecture": platform.machine(), "NCPU": os.cpu_count() or 1, "MemTotal": memory,
        "Name": socket.gethostname(), "DockerRootDir": str(store.root),
        "ServerVersion": __version__, "DefaultRuntime": "soute",
        "Runtimes": {"soute": {"path": "soute"},
                     **({"runc": {"path": "runc"}} if shutil.which("runc") else {})},
        "Debug": ctx.debug,
    }
    if args.format:
        from soute.cli.gotemplate import TemplateError, render

        text = "{{json .}}" if args.format == "json" else args.format
        try:
            print(render(text.replace("\\t", "\t").replace("\\n", "\n"), info,
                         strict=False))
        except TemplateError as e:
            raise SouteError(e.message) from None
        return 0
    print(f"""Containers: {info["Containers"]}
 Running: {running}
 Paused: {paused}
 Stopped: {info["ContainersStopped"]}
Images: {info["Images"]}
Server Version: soute {__version__} (no daemon)
Storage Driver: overlay
 Backing Filesystem: {info["DriverStatus"][0][1]}
Logging Driver: json-file
Cgroup Driver: cgroupfs
Cgroup Version: {info["CgroupVersion"]}
Runtimes: {" ".join(info["Runtimes"])}
Default Runtime: soute
Kernel Version: {info["KernelVersion"]}
Operating System: {info["OperatingSystem"]}
OSType: linux
Architecture: {info["Architecture"]}
CPUs: {info["NCPU"]}
Total Memory: {human_size(memory, 4, binary=True)}
Name: {info["Name"]}
Root Dir: {store.root}
Debug Mode: {str(ctx.debug).lower()}""")
    return 0


def _backing_fs(path: Path) -> str:
    """docker's name for the file system ``path`` is on."""
    import ctypes
    import ctypes.util

    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type comes first
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return "unknown"
    magic = int.from_bytes(buf.raw[:8], sys.byteorder) & 0xFFFFFFFF
    return _FS_NAMES.get(magic, f"0x{magic:x}")


def configure_df(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="show detailed information")
    p.add_argument("--format", help="a Go template for each row: '{{.Type}} {{.Size}}', json")


def run_df(ctx: Context, args: argparse.Namespace) -> int:
    from soute.cli.table import render_template
    from soute.container.record import Containers
    from soute.image.inspect import human_size

    store = ctx.store()
    images = store.images()
    containers = Containers(store).all()
    layer_sizes = dict(store.meta.layers())
    image_layers = {d for i in images for d, _ in i.layers}
    total = sum(s for d, s in layer_sizes.items() if d in image_layers)
    # As docker: an image is active while a container uses it; the rest could be pruned.
    used_ids = {c.spec.image for c in containers}
    used = [i for i in images if i.id in used_ids]
    kept = {d for i in used for d, _ in i.layers}
    reclaimable = sum(s for d, s in layer_sizes.items() if d in image_layers and d not in kept)
    pct = f" ({reclaimable * 100 // total}%)" if total else ""
    sizes = {c.id: upper_size(c.upper) for c in containers}
    rows = [["Images", str(len(images)), str(len(used)), human_size(total),
             human_size(reclaimable) + pct]]
    rows += _container_and_volume_rows(ctx, containers, sizes)
    # The build cache's own layers (those no image has), all of them free to prune.
    cache_layers, _ = store.meta.cache_roots()
    cache_size = sum(layer_sizes.get(d, 0) for d in cache_layers - image_layers)
    rows.append(["Build Cache", str(store.meta.cache_count()), "0", human_size(cache_size),
                 human_size(cache_size)])
    if args.verbose:
        _df_verbose(store, images, containers, sizes, cache_size)
    elif args.format:
        records = [{  # in docker's order of {{json .}}
            "Active": row[2], "Reclaimable": row[4], "Size": row[3], "TotalCount": row[1],
            "Type": row[0]} for row in rows]
        sys.stdout.write(render_template("{{json .}}" if args.format == "json" else args.format,
                                         records))
    else:
        print_table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows)
    return 0


def _df_verbose(store: Store, images: list[Image], containers: list[Any],
                sizes: dict[str, int], cache_size: int) -> None:
    """docker's ``system df -v``: a table per kind, each under its title."""
    from soute.container.api import ps_records
    from soute.container.volumes import Volumes
    from soute.image.digest import short_id
    from soute.image.inspect import human_duration_ago, human_size
    from soute.image.timestamp import Timestamp
    from soute.store.names import familiar

    layer_users: dict[str, int] = {}
    for image in images:
        for d, _ in image.layers:
            layer_users[d] = layer_users.get(d, 0) + 1
    users = {i.id: sum(1 for c in containers if c.spec.image == i.id) for i in images}
    rows = []
    for image in images:
        shared = sum(s for d, s in image.layers if layer_users[d] > 1)
        created = (human_duration_ago(Timestamp.parse(image.created)) if image.created
                   else "N/A")
        for tag in image.tags or ("",):
            repo, name = familiar(tag).rpartition(":")[::2] if tag else ("<none>", "<none>")
            rows.append([repo, name, short_id(image.id), created, human_size(image.size),
                         human_size(shared), human_size(image.size - shared),
                         str(users[image.id])])
    print("Images space usage:\n")
    print_table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE",
                 "UNIQUE SIZE", "CONTAINERS"], rows)
    by_id = {c.short_id: c for c in containers}
    print("\nContainers space usage:\n")
    print_table(["CONTAINER ID", "IMAGE", "COMMAND", "LOCAL VOLUMES", "SIZE", "CREATED",
                 "STATUS", "NAMES"],
                [[r["ID"], r["Image"], r["Command"],
                  str(sum(1 for m in by_id[r["ID"]].spec.mounts if m.kind == "volume")),
                  human_size(sizes[by_id[r["ID"]].id]), r["RunningFor"], r["Status"],
                  r["Names"]] for r in ps_records(containers, show_all=True)])
    volumes = Volumes(store.root).list()
    print("\nLocal Volumes space usage:\n")
    print_table(["VOLUME NAME", "LINKS", "SIZE"],
                [[v.name, str(sum(1 for c in containers for m in c.spec.mounts
                                  if m.kind == "volume" and m.source == v.name)),
                  human_size(upper_size(v.mountpoint))] for v in volumes])
    print(f"\nBuild cache usage: {human_size(cache_size)}\n")
    print_table(["CACHE ID", "CACHE TYPE", "SIZE", "CREATED", "LAST USED", "USAGE", "SHARED"],
                [[key.removeprefix("sha256:")[:12], "regular", human_size(size),
                  human_duration_ago(Timestamp.parse(created)),
                  human_duration_ago(Timestamp.parse(last)), "-",
                  str(bool(diff_id) and diff_id in layer_users).lower()]
                 for key, diff_id, size, created, last in store.meta.cache_records()])


def _container_and_volume_rows(ctx: Context, containers: list[Any],
                               sizes: dict[str, int]) -> list[list[str]]:
    """docker's Containers (writable layers) and Local Volumes rows."""
    from soute.container.control import volumes_in_use
    from soute.container.volumes import Volumes
    from soute.image.inspect import human_size

    store = ctx.store()
    running = {c.id for c in containers if c.state().running}
    stopped = sum(size for cid, size in sizes.items() if cid not in running)
    total = sum(sizes.values())
    volumes = Volumes(store.root).list()
    used = volumes_in_use(store)
    volume_sizes = {v.name: upper_size(v.mountpoint) for v in volumes}
    unused = sum(size for name, size in volume_sizes.items() if name not in used)
    volume_total = sum(volume_sizes.values())

    def pct(part: int, whole: int) -> str:
        return f" ({part * 100 // whole}%)" if whole else ""

    return [
        ["Containers", str(len(containers)), str(len(running)), human_size(total),
         human_size(stopped) + pct(stopped, total)],
        ["Local Volumes", str(len(volumes)), str(sum(1 for v in volumes if v.name in used)),
         human_size(volume_total), human_size(unused) + pct(unused, volume_total)],
    ]


def _confirm(warning: str, force: bool) -> bool:
    if force:
        return True
    print(warning)
    print("Are you sure you want to continue? [y/N] ", end="", flush=True)
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def configure_image_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true",
                   help="remove all unused images, not just dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="until=DURATION|TIME (made before), label=K[=V], label!=K[=V]")


def run_image_prune(ctx: Context, args: argparse.Namespace) -> int:
    what = "all images without at least one container associated to them" if args.all \
        else "all dangling images"
    keep = _prune_filter(args.filter)  # a bad filter is refused before the question
    if not _confirm(f"WARNING! This will remove {what}.", args.force):
        print("Total reclaimed space: 0B")
        return 0
    _prune_images(ctx, everything=args.all, keep=keep)
    return 0


def _prune_filter(values: list[str]) -> Callable[[str | None, dict[str, str]], bool]:
    """docker's prune filters: whether what was created then, with these labels, is
    spared (an image or a container alike)."""
    from soute.container.logs import parse_since
    from soute.errors import SouteError
    from soute.image.timestamp import Timestamp

    until: list[int] = []
    labels: list[tuple[bool, str, str | None]] = []  # (must have, key, value)
    for value in values:
        key, sep, arg = value.partition("=")
        if key.endswith("!") and sep:
            key, negated = key[:-1], True
        else:
            negated = False
        if key == "until" and sep and not negated:
            until.append(parse_since(arg, flag="until"))
        elif key == "label" and sep:
            name, has_value, wanted = arg.partition("=")
            labels.append((not negated, name, wanted if has_value else None))
        else:
            raise SouteError(f"invalid filter {value!r}", "use until=..., label=... or label!=...")

    def spared(created: str | None, have: dict[str, str]) -> bool:
        when = Timestamp.parse(created).unix_nanos if created else 0
        if any(when >= limit for limit in until):
            return True
        for must, name, wanted in labels:
            matches = name in have and (wanted is None or have[name] == wanted)
            if matches != must:
                return True
        return False

    return spared


def _image_labels(store: Store, image: Image) -> dict[str, str]:
    config = store.config(image).get("config")
    return (config.get("Labels") if isinstance(config, dict) else None) or {}


def _prune_images(ctx: Context, *, everything: bool,
                  keep: Callable[[str | None, dict[str, str]], bool] | None = None) -> None:
    from soute.image.inspect import human_size
    from soute.store.names import familiar

    store = ctx.store()
    removed = []
    for image in store.images():
        if image.tags and not everything:
            continue
        if keep is not None and keep(image.created, _image_labels(store, image)):
            continue
        if store.forget_image(image.id) is not None:
            continue  # a container's image stays while the container exists
        removed += [f"untagged: {familiar(t)}" for t in image.tags]
        removed.append(f"deleted: {image.id}")
    report = store.collect_garbage()
    if removed:
        print("Deleted Images:")
        print("\n".join(removed))
        print()
    print(f"Total reclaimed space: {human_size(report.bytes)}")


def configure_system_prune(p: argparse.ArgumentParser) -> None:
    configure_image_prune(p)


def run_system_prune(ctx: Context, args: argparse.Namespace) -> int:
    images = "all images without at least one container associated to them" if args.all \
        else "all dangling images"
    warning = ("WARNING! This will remove:\n  - all stopped containers\n"
               f"  - {images}\n  - unused blobs and snapshots")
    keep = _prune_filter(args.filter)
    if not _confirm(warning, args.force):
        print("Total reclaimed space: 0B")
        return 0
    from soute.container.control import prune

    containers = prune(ctx.store(), keep=lambda c: keep(c.spec.created, c.spec.labels))
    if containers:
        print("Deleted Containers:")
        print("\n".join(containers))
        print()
    _prune_images(ctx, everything=args.all, keep=keep)
    return 0


def configure_builder_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="remove all build cache")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")


def run_builder_prune(ctx: Context, args: argparse.Namespace) -> int:
    from soute.image.inspect import human_size

    if not _confirm("WARNING! This will remove all the build cache.", args.force):
        return 0
    store = ctx.store()
    entries = store.meta.cache_prune()
    report = store.collect_garbage()
    # RUN --mount=type=cache directories, kept downloads (ADD URL) and git checkouts.
    with store.exclusive():
        for name in ("mounts", "http", "git"):
            path = store.root / "cache" / name
            if path.is_dir():
                entries += sum(1 for _ in path.iterdir())
                report.bytes += upper_size(path)  # the sizes of its files, as df counts
                shutil.rmtree(path, ignore_errors=True)
    print(f"Deleted build cache objects: {entries}")
    print(f"Total:\t{human_size(report.bytes)}")
    return 0
