"""save and load: images to and from tar archives docker, podman and skopeo read."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from soute.cli.main import Context


def configure_save(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", help="write to a file instead of standard output")
    p.add_argument("--format", choices=("docker", "oci"), default="docker",
                   help="docker: the layout docker 20.10+, podman and skopeo load (default); "
                        "oci: an oci-archive")
    p.add_argument("--compression", choices=("none", "gzip", "zstd"), default="none",
                   help="compress the layers in the archive (default none, as docker)")


def run_save(ctx: Context, args: argparse.Namespace) -> int:
    from soute.errors import SouteError
    from soute.image.reference import parse_reference
    from soute.store.archive import save
    from soute.store.names import resolve

    store = ctx.store()
    chosen: dict[str, tuple[object, list[str]]] = {}
    for name in args.images:
        image = resolve(store, name)
        entry = chosen.setdefault(image.id, (image, []))
        try:
            ref = parse_reference(name)
        except SouteError:
            continue  # named by ID: no tag recorded, as docker does
        if ref.digest is None:
            full = str(ref.with_default_tag())
            if full in image.tags and full not in entry[1]:
                entry[1].append(full)
    if args.output is None and sys.stdout.isatty():
        raise SouteError("cowardly refusing to save to a terminal",
                         "use the -o flag or redirect standard output")
    items = list(chosen.values())
    if args.output is None:
        save(store, items, sys.stdout.buffer, format=args.format,  # type: ignore[arg-type]
             compression=args.compression)
        return 0
    tmp = f"{args.output}.soute-tmp-{os.getpid()}"
    try:
        # 0600, as docker's CLI makes it (a temporary file renamed): images may hold secrets.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            save(store, items, f, format=args.format,  # type: ignore[arg-type]
                 compression=args.compression)
        os.replace(tmp, args.output)  # a failed save leaves no half-written archive
    except OSError as e:
        raise SouteError(f"{args.output}: {e.strerror}", "check the output path") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return 0


def configure_load(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", help="read from a file instead of standard input")
    # docker's -q hides its progress bars, which soute does not draw: the names still print.
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress output (the loaded names are printed, as docker does)")


def run_load(ctx: Context, args: argparse.Namespace) -> int:
    from soute.errors import SouteError
    from soute.store.archive import load
    from soute.store.names import familiar

    store = ctx.store()
    before = {name: image_id for name, image_id, _ in store.meta.tags()}
    if args.input is None:
        if sys.stdin.isatty():
            raise SouteError("requested load from stdin, but stdin is empty",
                             "use -i FILE or pipe an archive in")
        loaded = load(store, sys.stdin.buffer)
    else:
        try:
            f = open(args.input, "rb")  # noqa: SIM115 (closed by the with below)
        except OSError as e:
            raise SouteError(f"{args.input}: {e.strerror}", "give an image archive") from None
        with f:
            loaded = load(store, f)
    for item in loaded:
        if item.tags:
            for tag in item.tags:
                old = before.get(tag)
                if old is not None and old != item.image.id:
                    print(f"The image {familiar(tag)} already exists, renaming the old one "
                          f"with ID {old} to empty string")
                print(f"Loaded image: {familiar(tag)}")
        else:
            print(f"Loaded image ID: {item.image.id}")
    return 0
