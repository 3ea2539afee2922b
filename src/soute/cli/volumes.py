"""``soute volume``: create, ls, inspect, rm, prune."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from soute.cli.main import Context


def _users(ctx: Context) -> dict[str, list[str]]:
    """Volume name -> IDs of the containers that mount it."""
    from soute.container.record import Containers

    users: dict[str, list[str]] = {}
    for c in Containers(ctx.store()).all():
        for m in c.spec.mounts:
            if m.kind == "volume":
                users.setdefault(m.source, []).append(c.id)
    return users


def configure_create(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="VOLUME")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")


def run_create(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.volumes import Volumes

    labels = dict(item.partition("=")[::2] for item in args.label)
    print(Volumes(ctx.store().root).create(args.name, labels=labels).name)
    return 0


def configure_ls(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only show volume names")


def run_ls(ctx: Context, args: argparse.Namespace) -> int:
    from soute.cli.table import print_table
    from soute.container.volumes import Volumes

    volumes = Volumes(ctx.store().root).list()
    if args.quiet:
        for v in volumes:
            print(v.name)
        return 0
    print_table(["DRIVER", "VOLUME NAME"], [["local", v.name] for v in volumes])
    return 0


def configure_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", metavar="VOLUME")


def run_inspect(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.volumes import Volumes
    from soute.image.gojson import dumps

    volumes = Volumes(ctx.store().root)
    print(dumps([volumes.get(n).inspect() for n in args.names], indent=4, escape_html=False))
    return 0


def configure_rm(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("names", nargs="+", metavar="VOLUME")


def run_rm(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.volumes import Volumes
    from soute.errors import SouteError

    volumes = Volumes(ctx.store().root)
    users = _users(ctx)
    failed = 0
    for name in args.names:
        try:
            volumes.remove(name, users.get(name, []))
            print(name)
        except SouteError as exc:
            print(f"soute: {exc}", file=sys.stderr)
            failed = 1
    return failed


def configure_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="also unused named volumes")
    p.add_argument("-f", "--force", action="store_true", help="do not ask (soute never asks)")


def run_prune(ctx: Context, args: argparse.Namespace) -> int:
    from soute.container.volumes import Volumes

    removed = Volumes(ctx.store().root).prune(set(_users(ctx)), all=args.all)
    if removed:
        print("Deleted Volumes:")
        for name in removed:
            print(name)
        print()
    print(f"Total volumes removed: {len(removed)}")
    return 0
