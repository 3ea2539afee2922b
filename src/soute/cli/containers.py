"""Container commands: run, create, start, ps, stop, kill, rm, logs, top, exec, port, wait,
restart, commit, container inspect and prune. Thin: the work is in :mod:`soute.container`."""

from __future__ import annotations

import contextlib
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # argparse and typing: not imported by `soute run`'s fast path
    import argparse
    from collections.abc import Callable, Iterator
    from typing import Any

    from soute.cli.main import Context
    from soute.container.create import RunOptions
    from soute.container.record import Container
    from soute.store.store import Store


# ---------------------------------------------------------------------------- run, create


def _run_options(p: argparse.ArgumentParser, *, run: bool) -> None:
    import argparse

    add = p.add_argument
    if run:
        add("-d", "--detach", action="store_true", help="run in the background, print the ID")
    add("--rm", action="store_true", help="remove the container when it exits")
    add("-i", "--interactive", action="store_true", help="keep standard input open")
    add("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    add("--name", help="the container's name")
    add("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]")
    add("--env-file", action="append", default=[], metavar="FILE")
    add("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]",
        help="bind mount a host path or mount a named volume")
    add("--mount", action="append", default=[], metavar="type=...,source=...,target=...")
    add("--tmpfs", action="append", default=[], metavar="PATH[:OPTIONS]")
    add("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:CTR[/PROTO]")
    add("-P", "--publish-all", action="store_true",
        help="publish every exposed port to a free host port")
    add("--expose", action="append", default=[], metavar="PORT[/PROTO]")
    add("-w", "--workdir")
    add("-u", "--user", metavar="USER[:GROUP]")
    add("--entrypoint", help="replace the image's ENTRYPOINT (and drop its CMD)")
    add("--network", "--net", default="private", choices=("private", "host", "none", "bridge",
                                                          "default"))
    add("-h", "--hostname")
    add("--read-only", action="store_true", help="mount the root filesystem read-only")
    add("--init", action="store_true", help="run an init (tini) as PID 1 that reaps zombies")
    add("-l", "--label", action="append", default=[], metavar="KEY=VALUE")
    add("--label-file", action="append", default=[], metavar="FILE",
        help="labels from a file of KEY=VALUE lines")
    add("--cap-add", action="append", default=[])
    add("--cap-drop", action="append", default=[])
    add("--stop-signal")
    add("--stop-timeout", type=int)
    add("-m", "--memory")
    add("--cpus")
    add("--pids-limit", type=int)
    add("--health-cmd")
    add("--health-interval")
    add("--health-timeout")
    add("--health-start-period")
    add("--health-retries", type=int)
    add("--no-healthcheck", action="store_true")
    add("--runtime", default="soute", help="soute (default) or an OCI runtime such as runc")
    add("--add-host", action="append", default=[], metavar="HOST:IP",
        help="a line of /etc/hosts (IP may be host-gateway: the host, from inside)")
    add("--dns", action="append", default=[], metavar="IP", help="a nameserver of its own")
    add("--dns-search", action="append", default=[], metavar="DOMAIN",
        help="a search domain of its own ('.' for none)")
    add("--dns-option", "--dns-opt", action="append", default=[], metavar="OPTION",
        help="a resolver option of its own, e.g. ndots:2")
    add("--security-opt", action="append", default=[], metavar="OPTION",
        help="no-new-privileges[=true|false], seccomp=unconfined, systempaths=unconfined, "
             "apparmor=..., label=... (soute has no seccomp, AppArmor or SELinux)")
    add("--device", action="append", default=[], metavar="HOST[:CONTAINER][:PERMISSIONS]",
        help="a host device (or a directory of them) in the container, e.g. /dev/fuse")
    add("--ipc", default="", metavar="MODE",
        help="private (default), shareable, host (the host's IPC and /dev/shm) or none")
    add("--uts", default="", metavar="MODE", help="host: the host's hostname")
    add("--sysctl", action="append", default=[], metavar="KEY=VALUE",
        help="a namespaced kernel parameter: net.*, fs.mqueue.*, kernel.shm*/msg*/sem")
    add("--privileged", action="store_true",
        help="every capability, /proc and /sys unmasked (no host devices)")
    add("--volumes-from", action="append", default=[], metavar="CONTAINER[:ro|rw]",
        help="the volumes and bind mounts of another container")
    add("--group-add", action="append", default=[], metavar="GROUP",
        help="another group for the process: a name in the image's /etc/group, or a gid")
    add("--shm-size", metavar="SIZE", help="size of /dev/shm (default 64m)")
    add("--cidfile", metavar="FILE", help="write the container's ID to FILE")
    add("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]",
        help="a resource limit, e.g. nofile=1024:2048 (-1: unlimited)")
    add("--pull", choices=("missing", "always", "never"), default="missing",
        help="pull the image first: missing (default), always, never")
    add("--restart", default="no", metavar="POLICY",
        help="no (default), always, unless-stopped, on-failure[:MAX]: run it again when it "
             "ends (while its monitor lives: there is no daemon to restart it at boot)")
    add("image", metavar="IMAGE")
    add("args", nargs=argparse.REMAINDER, metavar="ARG")


def _free_short_help(p: argparse.ArgumentParser) -> None:
    """-h is --hostname for run and create, as in docker: help stays --help."""
    p._option_string_actions.pop("-h", None)
    for action in p._actions:
        if "-h" in action.option_strings:
            action.option_strings.remove("-h")


def configure_run(p: argparse.ArgumentParser) -> None:
    _free_short_help(p)
    _run_options(p, run=True)


def configure_create(p: argparse.ArgumentParser) -> None:
    _free_short_help(p)
    _run_options(p, run=False)


# What configure_run's parser gives for `soute run IMAGE` (tests check it against argparse).
_RUN_DEFAULTS: dict[str, object] = {
    "detach": False, "rm": False, "interactive": False, "tty": False, "name": None,
    "env": [], "env_file": [], "volume": [], "mount": [], "tmpfs": [], "publish": [],
    "publish_all": False, "expose": [], "workdir": None, "user": None, "entrypoint": None,
    "network": "private", "hostname": None, "read_only": False, "init": False, "label": [],
    "cap_add": [], "cap_drop": [], "stop_signal": None, "stop_timeout": None, "memory": None,
    "cpus": None, "pids_limit": None, "health_cmd": None, "health_interval": None,
    "health_timeout": None, "health_start_period": None, "health_retries": None,
    "no_healthcheck": False, "runtime": "soute", "add_host": [], "dns": [],
    "privileged": False, "shm_size": None, "cidfile": None, "ulimit": [], "pull": "missing",
    "restart": "no", "group_add": [], "volumes_from": [], "dns_search": [], "dns_option": [],
    "label_file": [], "security_opt": [], "sysctl": [], "device": [], "ipc": "", "uts": "",
}
# The options fast_run reads: flags without a value, spelt out in full.
_RUN_FLAGS = {
    "-d": "detach", "--detach": "detach", "--rm": "rm", "-i": "interactive",
    "--interactive": "interactive", "-t": "tty", "--tty": "tty", "-P": "publish_all",
    "--publish-all": "publish_all", "--read-only": "read_only", "--init": "init",
    "--no-healthcheck": "no_healthcheck", "--privileged": "privileged",
}


def fast_run(argv: list[str]) -> argparse.Namespace | None:
    """``soute run [FLAG]... IMAGE [ARG]...`` read as configure_run's parser reads it, for
    the usual command lines (flags of _RUN_FLAGS only); None for any other, which argparse
    reads (and reports). Importing argparse and setting up its 40 options: 3 ms a run."""
    if "--" in argv:  # argparse drops some of them, not all
        return None
    values = {k: [] if v == [] else v for k, v in _RUN_DEFAULTS.items()}
    i = 0
    while i < len(argv) and argv[i][:1] == "-":
        dest = _RUN_FLAGS.get(argv[i])
        if dest is None:
            return None
        values[dest] = True
        i += 1
    if i == len(argv):
        return None  # no image: argparse's error
    values["image"], values["args"] = argv[i], argv[i + 1:]
    from types import SimpleNamespace

    return SimpleNamespace(**values)  # type: ignore[return-value]


def _options(args: argparse.Namespace) -> RunOptions:
    from soute.container.create import RunOptions

    network = {"bridge": "private", "default": "private"}.get(args.network, args.network)
    return RunOptions(
        args=list(args.args), name=args.name, detach=getattr(args, "detach", False),
        interactive=args.interactive, tty=args.tty, auto_remove=getattr(args, "rm", False),
        env=args.env, env_files=args.env_file, volumes=args.volume, mounts=args.mount,
        tmpfs=args.tmpfs, publish=args.publish, publish_all=args.publish_all,
        expose=args.expose, workdir=args.workdir, user=args.user, entrypoint=args.entrypoint,
        network=network, hostname=args.hostname, read_only=args.read_only, init=args.init,
        labels=args.label, cap_add=args.cap_add, cap_drop=args.cap_drop,
        stop_signal=args.stop_signal, stop_timeout=args.stop_timeout, memory=args.memory,
        cpus=args.cpus, pids_limit=args.pids_limit, health_cmd=args.health_cmd,
        health_interval=args.health_interval, health_timeout=args.health_timeout,
        health_start_period=args.health_start_period, health_retries=args.health_retries,
        no_healthcheck=args.no_healthcheck, runtime=args.runtime, add_hosts=args.add_host,
        dns=args.dns, privileged=args.privileged, shm_size=args.shm_size, cidfile=args.cidfile,
        ulimits=args.ulimit, pull=args.pull, restart=args.restart, group_add=args.group_add,
        volumes_from=args.volumes_from, dns_search=args.dns_search,
        dns_options=args.dns_option, label_files=args.label_file,
        security_opt=args.security_opt, sysctls=args.sysctl, devices=args.device,
        ipc=args.ipc, uts=args.uts,
    )


def _check_tty(interactive: bool, tty: bool, detach: bool) -> None:
    """docker's CheckTty: ``-it`` attached to a stdin that is not a terminal (a pipe, a CI
    job) fails at once, with 1; the terminal would otherwise echo the input and wait."""
    if interactive and tty and not detach and not sys.stdin.isatty():
        from soute.errors import SouteError

        raise SouteError("the input device is not a TTY",
                         "drop -t to pipe input in, or run it from a terminal")


def run_run(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.api import run

    _check_tty(args.interactive, args.tty, args.detach)
    opts = _options(args)
    store = ctx.store()
    with _status_125():
        if opts.detach:
            container = run(store, args.image, opts)
            print(container.id)  # type: ignore[union-attr]
            return 0
        return run(store, args.image, opts, attach=True)  # type: ignore[return-value]


def run_create(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.create import create

    with _status_125():
        print(create(ctx.store(), args.image, _options(args)).id)
    return 0


@contextlib.contextmanager
def _status_125() -> Iterator[None]:
    """docker run's status for its own errors (unknown image, bad option...) is 125."""
    from soute.errors import SouteError

    try:
        yield
    except SouteError as exc:
        if exc.exit_code == 1:
            exc.exit_code = 125
        raise


# ---------------------------------------------------------------------------- lifecycle


def _each(ctx: Context, names: list[str], action: Any, *, echo: bool = True) -> int:
    """Apply ``action`` to each container, docker's way: print the name given, go on after a
    failure, exit 1 if any failed."""
    from soute.container.record import Containers
    from soute.errors import SouteError

    containers = Containers(ctx.store())
    failed = 0
    for name in names:
        try:
            action(containers.get(name))
            if echo:
                print(name)
        except SouteError as exc:
            print(f"soute: {exc}", file=sys.stderr)
            failed = 1
    return failed


def configure_start(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--attach", action="store_true",
                   help="attach its output and wait for it to end (its exit code)")
    p.add_argument("-i", "--interactive", action="store_true", help="attach its input too")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_start(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.control import start

    if args.attach or args.interactive:
        from soute.container.api import start_attached
        from soute.container.record import ContainerError, Containers

        if len(args.containers) > 1:
            error = ContainerError("you cannot start and attach multiple containers at once",
                                   "start them, then 'soute logs -f' each")
            error.exit_code = 1
            raise error
        container = Containers(ctx.store()).get(args.containers[0])
        _check_tty(args.interactive, container.spec.tty and container.spec.open_stdin, False)
        return start_attached(ctx.store(), container, stdin=args.interactive)
    return _each(ctx, args.containers, lambda c: start(ctx.store(), c))


def configure_stop(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", "--timeout", type=int, dest="time",
                   help="seconds to wait before killing it (default: 10; "
                        "negative: wait, never kill)")
    p.add_argument("-s", "--signal", help="signal to send instead of its stop signal")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_stop(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.control import stop

    return _each(ctx, args.containers, lambda c: stop(c, args.time, args.signal))


def configure_restart(p: argparse.ArgumentParser) -> None:
    configure_stop(p)


def run_restart(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.control import start, stop

    def restart(c: Container) -> None:
        stop(c, args.time, args.signal)
        start(ctx.store(), c)

    return _each(ctx, args.containers, restart)


def configure_kill(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--signal", default="KILL")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_kill(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.control import kill
    from soute.container.create import parse_signal

    sig = parse_signal(args.signal)
    return _each(ctx, args.containers, lambda c: kill(c, sig))


def configure_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_wait(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.control import wait

    return _each(ctx, args.containers, lambda c: print(wait(c)), echo=False)


def configure_rm(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="kill it first if running")
    p.add_argument("-v", "--volumes", action="store_true", help="remove its anonymous volumes")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_rm(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.control import remove

    store = ctx.store()
    return _each(ctx, args.containers,
                 lambda c: remove(store, c, force=args.force, volumes=args.volumes))


def configure_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="do not ask (soute never asks)")


def run_prune(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.control import prune

    removed = prune(ctx.store())
    if removed:
        print("Deleted Containers:")
        for container_id in removed:
            print(container_id)
        print()
    print("Total reclaimed space: 0B" if not removed else f"Deleted {len(removed)} containers")
    return 0


def configure_rename(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("new_name", metavar="NEW_NAME")


def run_rename(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.record import Containers

    store = ctx.store()
    container = Containers(store).get(args.container)
    container.rename(store, args.new_name)
    return 0


# ---------------------------------------------------------------------------- ps


def configure_ps(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="show all containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only show IDs")
    p.add_argument("-l", "--latest", action="store_true", help="only the latest created")
    p.add_argument("-n", "--last", type=int, default=-1, help="the last N created")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="id, name, status, exited, ancestor, label, health (repeatable)")
    p.add_argument("--format", help="a Go template: '{{.ID}} {{.Names}}', 'table ...', json")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-s", "--size", action="store_true", help="display total file sizes")


PS_COLUMNS = ("ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names")
PS_TITLES = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]


def run_ps(ctx: Context, args: argparse.Namespace) -> int:
    from soute.cli.table import print_table, render_template
    from soute.container.api import ps_records
    from soute.container.record import Containers

    store = ctx.store()
    containers = Containers(store).all()
    show_all = args.all or args.latest or args.last >= 0
    limit = 1 if args.latest else args.last
    # As docker: a template that uses .Size gets it without -s.
    sized = args.size or ".Size" in (args.format or "")
    records = ps_records(containers, show_all=show_all, no_trunc=args.no_trunc,
                         filters=args.filter, size_of=_size_of(store) if sized else None,
                         limit=limit)
    if args.quiet:
        for record in records:
            print(record["ID"])
    elif args.format == "json":
        sys.stdout.write(render_template("{{json .}}", records))
    elif args.format:
        sys.stdout.write(render_template(args.format, records))
    else:
        columns = (*PS_COLUMNS, "Size") if args.size else PS_COLUMNS
        print_table(PS_TITLES + (["SIZE"] if args.size else []),
                    [[r[k] for k in columns] for r in records])
    return 0


def _size_of(store: Store) -> Callable[[Container], str]:
    """docker's SIZE: what the container wrote, then with its image ("virtual")."""
    from soute.container.changes import upper_size
    from soute.image.inspect import human_size
    from soute.store.store import ImageNotFound

    def size_of(container: Container) -> str:
        written = upper_size(container.upper)
        try:
            image = store.image(container.spec.image).size
        except ImageNotFound:
            return human_size(written)
        return f"{human_size(written)} (virtual {human_size(written + image)})"

    return size_of


# ---------------------------------------------------------------------------- logs, top, port


def configure_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--tail", default="all")
    p.add_argument("-t", "--timestamps", action="store_true")
    p.add_argument("--since", help="only records from then on: 10m, an RFC 3339 time, seconds")
    p.add_argument("--until", help="only records up to then (same forms)")
    p.add_argument("--details", action="store_true",
                   help="each line after its extra attributes (soute records none)")
    p.add_argument("container", metavar="CONTAINER")


def run_logs(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.logs import follow_logs, read_logs
    from soute.container.record import Containers

    container = Containers(ctx.store()).get(args.container)
    tail = None if args.tail == "all" else _int(args.tail, "--tail")
    if tail is not None and tail < 0:
        tail = None
    if args.follow:
        records = follow_logs(container.log_path, is_running=lambda: container.state().running,
                              tail=tail, timestamps=args.timestamps, since=args.since,
                              until=args.until, details=args.details)
    else:
        records = read_logs(container.log_path, tail=tail, timestamps=args.timestamps,
                            since=args.since, until=args.until, details=args.details)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        for stream, data in records:
            target = err if stream == "stderr" else out
            target.write(data)
            target.flush()
    except KeyboardInterrupt:
        return 0
    return 0


def _int(text: str, what: str) -> int:
    from soute.container.record import ContainerError

    try:
        return int(text)
    except ValueError:
        raise ContainerError(f"invalid value for {what}: {text!r}", "give a number") from None


def _running(container: Container) -> Any:
    from soute.container.record import ContainerError

    state = container.state()
    if not state.running:
        raise ContainerError(f"container {container.short_id} is not running",
                             f"start it with 'soute start {container.name}'")
    return state


def configure_top(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")
    import argparse

    p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="PS_OPTIONS")


def run_top(ctx: Context, args: argparse.Namespace) -> int:
    from soute.cli.table import print_table
    from soute.container.record import Containers
    from soute.container.top import top

    container = Containers(ctx.store()).get(args.container)
    state = _running(container)
    titles, rows = top(state.pid, args.ps_args or None)
    print_table(titles, rows)
    return 0


def configure_port(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("port", nargs="?", metavar="PRIVATE_PORT[/PROTO]")


def run_port(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.ports import PortBinding, port_lines
    from soute.container.record import ContainerError, Containers

    container = Containers(ctx.store()).get(args.container)
    state = _running(container)
    bindings = [PortBinding(p.host_ip, p.host_port, p.container_port, p.proto)
                for p in state.ports]
    if args.port:
        port, _, proto = args.port.partition("/")
        chosen = [b for b in bindings
                  if str(b.container_port) == port and b.proto == (proto or "tcp")]
        if not chosen:
            raise ContainerError(f"No public port '{port}/{proto or 'tcp'}' published for "
                                 f"{container.name}")
        for b in chosen:
            print(f"{b.host_ip}:{b.host_port}")
        return 0
    for line in port_lines(bindings):
        print(line)
    return 0


# ---------------------------------------------------------------------------- exec


def configure_exec(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-u", "--user")
    p.add_argument("-w", "--workdir")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("container", metavar="CONTAINER")
    import argparse

    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")


def run_exec(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.api import exec_command
    from soute.container.monitor import StartError
    from soute.container.record import ContainerError, Containers

    _check_tty(args.interactive, args.tty, args.detach)
    try:
        if not args.command:
            raise ContainerError("exec needs a command", "soute exec CONTAINER COMMAND [ARG...]")
        container = Containers(ctx.store()).get(args.container)
        return exec_command(container, args.command, interactive=args.interactive,
                            tty=args.tty, user=args.user, workdir=args.workdir, env=args.env,
                            detach=args.detach)
    except ContainerError as e:
        if not isinstance(e, StartError):
            e.exit_code = 1  # 125 is run's and create's; docker exec says 1 (no such container...)
        raise


# ---------------------------------------------------------------------------- commit, inspect


def configure_commit(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--author", default="")
    p.add_argument("-c", "--change", action="append", default=[],
                   help="apply a Dockerfile instruction to the image (repeatable)")
    p.add_argument("-m", "--message", default="")
    p.add_argument("-p", "--pause", default="true", choices=("true", "false"),
                   help="stop the container's processes while committing (default true)")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")


def run_commit(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.control import commit
    from soute.container.record import Containers

    store = ctx.store()
    container = Containers(store).get(args.container)
    image = commit(store, container, tag=args.reference, changes=tuple(args.change),
                   message=args.message, author=args.author, pause=args.pause == "true")
    print(image.id)
    return 0


def configure_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.add_argument("-f", "--format",
                   help="a Go template applied to each container, e.g. '{{.State.Status}}'")


def run_inspect(ctx: Context, args: argparse.Namespace) -> int:
    from soute.cli.gotemplate import print_inspected
    from soute.container.api import inspect_dict
    from soute.container.record import Containers
    from soute.errors import SouteError

    containers = Containers(ctx.store())
    out: list[dict[str, object]] = []
    errors: list[SouteError] = []  # as docker: what was found, then each name that was not
    for name in args.containers:
        try:
            out.append(inspect_dict(containers.get(name)))
        except SouteError as e:
            errors.append(e)
    # soute's container inspect has only the fields it knows (container.api.inspect_dict).
    return print_inspected(out, errors, args.format, partial=[True] * len(out))


def configure_cp(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--archive", action="store_true",
                   help="keep the files' owners (uid and gid)")
    p.add_argument("-L", "--follow-link", action="store_true",
                   help="copy what a symlink SRC points at, not the link")
    p.add_argument("src", metavar="SRC", help="CONTAINER:PATH, a host path, or - (a tar)")
    p.add_argument("dest", metavar="DEST", help="CONTAINER:PATH, a host path, or - (a tar)")


def run_cp(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.copy import CopyError, copy_in, copy_out
    from soute.container.record import Containers

    def split(arg: str) -> tuple[str, str] | None:
        # docker's rule: a ':' before any '/' names a container (./a:b is a host path).
        name, sep, path = arg.partition(":")
        if not sep or "/" in name or not name:
            return None
        return name, path or "/"

    src, dest = split(args.src), split(args.dest)
    if (src is None) == (dest is None):
        raise CopyError("copying between containers, or between host paths, is not supported",
                        "name one container: soute cp CONTAINER:SRC DEST or SRC CONTAINER:DEST")
    store = ctx.store()
    if src is not None:
        container = Containers(store).get(src[0])
        copy_out(store, container, src[1], args.dest, archive=args.archive,
                 follow=args.follow_link)
    else:
        assert dest is not None
        container = Containers(store).get(dest[0])
        copy_in(store, container, args.src, dest[1], archive=args.archive,
                follow=args.follow_link)
    return 0


def configure_diff(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")


def run_diff(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.changes import RUNTIME_STUBS, changes, container_lowers
    from soute.container.record import Containers

    store = ctx.store()
    container = Containers(store).get(args.container)
    stubs = RUNTIME_STUBS if container.state().running else frozenset()
    with store.session():  # no garbage collection of its image's snapshots meanwhile
        snapshots = store.snapshots(store.image(container.spec.image).diff_ids)
        found = changes(container.upper, container_lowers(snapshots, container.dir), stubs)
    # Paths as the container wrote them, even in no valid encoding.
    sys.stdout.flush()
    sys.stdout.buffer.write(b"".join(os.fsencode(f"{kind} {path}\n") for kind, path in found))
    return 0


def configure_pause(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_pause(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.control import pause

    return _each(ctx, args.containers, pause)


def configure_unpause(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_unpause(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.control import unpause

    return _each(ctx, args.containers, unpause)


def configure_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="all containers, not only running")
    p.add_argument("--no-stream", action="store_true", help="print once and exit")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("--format", help="a Go template: '{{.Name}} {{.CPUPerc}}', 'table ...', json")
    p.add_argument("containers", nargs="*", metavar="CONTAINER")


STATS_TABLE = ("table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t"
               "{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}")
STATS_TITLES = {"ID": "CONTAINER ID", "CPUPerc": "CPU %", "MemUsage": "MEM USAGE / LIMIT",
                "MemPerc": "MEM %", "NetIO": "NET I/O", "BlockIO": "BLOCK I/O", "PIDs": "PIDS",
                "Container": "CONTAINER"}


def run_stats(ctx: Context, args: argparse.Namespace) -> int:
    import time

    from soute.cli.table import render_template
    from soute.container.record import Containers

    store = ctx.store()
    registry = Containers(store)
    named = [(given, registry.get(given)) for given in args.containers]  # unknown: error now
    template = STATS_TABLE if args.format in (None, "table") else (
        "{{json .}}" if args.format == "json" else args.format)

    def chosen() -> list[tuple[str, Container]]:
        if named:
            return named
        return [(c.short_id, c) for c in registry.all() if args.all or c.state().running]

    before = _stats_readings(chosen())
    while True:
        time.sleep(1.0)  # docker's CPU % is over the last second too
        containers = chosen()
        after = _stats_readings(containers)
        records = [_stats_record(given, c, before.get(c.id), after[c.id], args.no_trunc)
                   for given, c in containers]
        if not args.no_stream:
            sys.stdout.write("\033[2J\033[H")  # docker clears the screen for each refresh
        sys.stdout.write(render_template(template, records, STATS_TITLES))
        sys.stdout.flush()
        if args.no_stream:
            return 0
        before = after


def _stats_readings(containers: list[tuple[str, Container]]) -> dict[str, Any]:
    from soute.container import stats
    from soute.errors import SouteError

    out = {}
    for _, c in containers:
        try:
            state = c.state()
        except (OSError, SouteError):  # removed while `stats` shows it: docker's zeros too
            out[c.id] = stats.ZERO
            continue
        out[c.id] = stats.read(state.pid, own_network=c.spec.network == "private") \
            if state.running else stats.ZERO
    return out


def _stats_record(given: str, c: Container, before: Any, after: Any,
                  no_trunc: bool) -> dict[str, str]:
    from soute.container import stats
    from soute.image.inspect import human_size

    if after is stats.ZERO:  # not running: docker's zeros
        usage, limit, cpu = 0, 0, 0.0
    else:
        usage, limit = after.memory, stats.memory_limit(c.spec.resources.get("memory"))
        cpu = stats.cpu_percent(before or after, after)
    return {  # in docker's order of {{json .}}
        "BlockIO": f"{human_size(after.block_read)} / {human_size(after.block_write)}",
        "CPUPerc": f"{cpu:.2f}%",
        "Container": given,
        "ID": c.id if no_trunc else c.short_id,
        "MemPerc": f"{usage / limit * 100 if limit else 0.0:.2f}%",
        "MemUsage": f"{human_size(usage, 4, binary=True)} / "
                    f"{human_size(limit, 4, binary=True)}",
        "Name": c.name,
        "NetIO": f"{human_size(after.net_rx)} / {human_size(after.net_tx)}",
        "PIDs": str(after.pids),
    }


def configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="write the tar archive to FILE")
    p.add_argument("container", metavar="CONTAINER")


def run_export(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.control import export
    from soute.container.record import Containers

    store = ctx.store()
    export(store, Containers(store).get(args.container), args.output)
    return 0
