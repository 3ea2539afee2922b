"""Image commands: images, tag, rmi, history, inspect, import, bootstrap (docker's output)."""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, BinaryIO

from soute.cli.table import print_table

if TYPE_CHECKING:
    from soute.cli.main import Context
    from soute.container.record import Container
    from soute.store.store import Image, Store


def _familiar(full: str) -> tuple[str, str]:
    """(repository, tag) as docker shows them: debian, latest."""
    from soute.store.names import familiar

    name, _, tag = familiar(full).rpartition(":")
    return name, tag


# ---------------------------------------------------------------------------- images


def configure_images(p: argparse.ArgumentParser) -> None:
    p.add_argument("repository", nargs="?", help="only images of this REPOSITORY[:TAG]")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("-a", "--all", action="store_true", help="show all images")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="dangling=true|false, reference=PATTERN, label=KEY[=VALUE], "
                        "before=IMAGE, since=IMAGE (repeatable)")
    p.add_argument("--format", default="table",
                   help="table, json, or a Go template: '{{.Repository}}:{{.Tag}}', "
                        "'table {{.ID}}\\t{{.Size}}'")


IMAGES_TITLES = {"ID": "IMAGE ID", "CreatedSince": "CREATED"}


def run_images(ctx: Context, args: argparse.Namespace) -> int:
    from soute.image.digest import short_id
    from soute.image.gojson import dumps
    from soute.image.inspect import human_duration_ago, human_size
    from soute.image.timestamp import Timestamp

    store = ctx.store()
    filters = _image_filters(store, args.filter)
    patterns = filters.get("reference", [])
    wanted = None
    if args.repository and _GLOB.search(args.repository):
        patterns = [*patterns, args.repository]  # docker makes it a reference filter
    elif args.repository:
        wanted = _repository_filter(args.repository)
    digests = args.digests or ".Digest" in args.format  # docker shows them then too
    rows: list[tuple[Timestamp | None, str, str, str, Image]] = []
    for image in store.images():
        created = Timestamp.parse(image.created) if image.created else None
        if not _kept(store, image, created, filters):
            continue
        for repo, tag, digest in _names(store, image, digests):
            if wanted and not wanted(repo, tag):
                continue
            if patterns and not any(_reference_match(p, repo, tag) for p in patterns):
                continue  # as docker: only the references that match are listed
            rows.append((created, repo, tag, digest, image))
    rows.sort(key=lambda r: (-(r[0].unix_nanos if r[0] else 0), r[1], r[2], r[3]))
    ident = (lambda i: i.id) if args.no_trunc else (lambda i: short_id(i.id))
    if args.quiet:  # one line per row, as docker: an image with two tags shows twice
        for *_, image in rows:
            print(ident(image))
        return 0
    if args.format != "table":
        records = [{
            "Containers": "N/A",
            "CreatedAt": _go_time(created),
            "CreatedSince": human_duration_ago(created) if created else "N/A",
            "Digest": digest,
            "ID": ident(image),
            "Repository": repo,
            "SharedSize": "N/A",
            "Size": human_size(image.size),
            "Tag": tag,
            "UniqueSize": "N/A",
            "VirtualSize": human_size(image.size),
        } for created, repo, tag, digest, image in rows]
        if args.format == "json":
            for record in records:
                print(dumps(record))
        else:
            from soute.cli.table import render_template

            sys.stdout.write(render_template(args.format, records, IMAGES_TITLES))
        return 0
    print_table(
        ["REPOSITORY", "TAG", *(["DIGEST"] if args.digests else []), "IMAGE ID", "CREATED",
         "SIZE"],
        [[repo, tag, *([digest] if args.digests else []), ident(image),
          human_duration_ago(created) if created else "N/A", human_size(image.size)]
         for created, repo, tag, digest, image in rows],
    )
    return 0


def _names(store: Store, image: Image, digests: bool) -> list[tuple[str, str, str]]:
    """(repository, tag, digest) rows of an image, as docker lists them: a row per tag (per
    tag and digest of its repository with ``digests``), then one per repository known only
    by a digest (a pull by digest), else ``<none>``."""
    from soute.store.names import familiar

    by_repo: dict[str, list[str]] = {}
    for ref in store.meta.repo_digests_of(image.id):
        repo, _, digest = familiar(ref).partition("@")
        by_repo.setdefault(repo, []).append(digest)
    rows = []
    tagged = set()
    for repo, tag in (_familiar(t) for t in image.tags):
        tagged.add(repo)
        known = by_repo.get(repo, []) if digests else []
        rows += [(repo, tag, d) for d in known] or [(repo, tag, "<none>")]
    for repo, known in by_repo.items():
        if repo in tagged:
            continue  # shown with its tags
        rows += [(repo, "<none>", d) for d in known] if digests else [(repo, "<none>", "<none>")]
    return rows or [("<none>", "<none>", "<none>")]


_GLOB = re.compile(r"[*?\\[]")
_IMAGE_FILTERS = ("before", "dangling", "label", "reference", "since")


def _image_filters(store: Store, values: list[str]) -> dict[str, list[str]]:
    """``--filter`` values by key (several values of a key: any of them; several keys: all),
    with ``before``/``since`` turned into the creation time of the image they name."""
    from soute.errors import SouteError
    from soute.store.names import resolve

    out: dict[str, list[str]] = {}
    for value in values:
        key, sep, arg = value.partition("=")
        key = key.strip().lower()
        if not sep or key not in _IMAGE_FILTERS:
            raise SouteError(f"invalid filter {value!r}",
                             "use " + ", ".join(f"{k}=..." for k in _IMAGE_FILTERS))
        if key == "dangling" and arg.lower() not in ("true", "false", "1", "0"):
            raise SouteError(f"invalid filter 'dangling={arg}'", "use dangling=true or false")
        if key in ("before", "since"):
            arg = resolve(store, arg).created or ""
        out.setdefault(key, []).append(arg)
    return out


def _kept(store: Store, image: Image, created: object, filters: dict[str, list[str]]) -> bool:
    from soute.image.timestamp import Timestamp

    if "dangling" in filters:
        # As docker: an image known by a repository digest (a pull by digest) has a name.
        named = bool(image.tags) or bool(store.meta.repo_digests_of(image.id))
        wants_dangling = filters["dangling"][-1].lower() in ("true", "1")
        if wants_dangling == named:
            return False
    when = created.unix_nanos if isinstance(created, Timestamp) else 0
    for key, keep in (("before", lambda t: when < t), ("since", lambda t: when > t)):
        if key in filters and not all(
                keep(Timestamp.parse(c).unix_nanos if c else 0) for c in filters[key]):
            return False
    if "label" in filters:
        config = store.config(image).get("config")
        labels = (config.get("Labels") if isinstance(config, dict) else None) or {}
        for want in filters["label"]:
            key, sep, value = want.partition("=")
            if key not in labels or (sep and labels[key] != value):
                return False
    return True


def _reference_match(pattern: str, repo: str, tag: str) -> bool:
    """docker's FamiliarMatch: the pattern against ``repo:tag``, then against ``repo``."""
    import fnmatch

    if repo == "<none>":
        return False

    def match(name: str) -> bool:  # path.Match: '*' stops at '/'
        return fnmatch.fnmatchcase(name, pattern) and (
            name.count("/") == pattern.count("/"))

    return match(f"{repo}:{tag}") or match(repo)


def _repository_filter(text: str):  # type: ignore[no-untyped-def]
    from soute.image.reference import parse_reference
    from soute.store.names import familiar

    ref = parse_reference(text)
    repo = familiar(ref.name)

    def keep(r: str, t: str) -> bool:
        return r == repo and (ref.tag is None or t == ref.tag)

    return keep


def _go_time(ts: object) -> str:
    """Go's time.Time String() in UTC: 2024-01-02 03:04:05 +0000 UTC."""
    from datetime import UTC, datetime

    from soute.image.timestamp import Timestamp

    if not isinstance(ts, Timestamp):
        return ""
    dt = datetime.fromtimestamp(ts.seconds, UTC)
    return dt.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


# ---------------------------------------------------------------------------- tag, rmi


def configure_tag(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")


def run_tag(ctx: Context, args: argparse.Namespace) -> int:
    from soute.store.names import full_tag, resolve

    store = ctx.store()
    image = resolve(store, args.source)
    store.tag(image.id, full_tag(args.target))
    return 0


def configure_rmi(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--force", action="store_true", help="force removal of the image")
    p.add_argument("--no-prune", action="store_true", help="keep unused blobs and snapshots")


def run_rmi(ctx: Context, args: argparse.Namespace) -> int:
    from soute.errors import SouteError

    store = ctx.store()
    failed = 0
    for name in args.images:
        try:
            for line in remove_image(store, name, force=args.force):
                print(line)
        except SouteError as e:
            print(f"soute: {e}", file=sys.stderr)
            failed += 1
    if not args.no_prune:
        store.collect_garbage()
    return 1 if failed else 0


def remove_image(store: Store, name: str, *, force: bool = False) -> list[str]:
    """docker's rmi: untag a name; delete the image when no tag is left or it was named by ID."""
    from soute.errors import SouteError
    from soute.image.reference import parse_reference
    from soute.store.names import familiar, resolve

    image = resolve(store, name)
    by_tag = None
    try:
        ref = parse_reference(name)
        if ref.digest is None:
            full = str(ref.with_default_tag())
            if full in image.tags:
                by_tag = full
    except SouteError:
        pass
    out: list[str] = []
    if by_tag is not None and (len(image.tags) > 1):
        store.untag(by_tag)
        return [f"Untagged: {familiar(by_tag)}"]
    users = _containers_using(store, image.id)
    if users:
        running = [c for c, up in users if up]
        if by_tag is not None and not running:
            if not force:
                raise SouteError(
                    f'conflict: unable to remove repository reference "{name}" (must force) - '
                    f"container {users[0][0]} is using its referenced image {image.id[7:19]}",
                    "remove the container first, or use -f to untag only")
        elif running or not force:
            kind = "running" if running else "stopped"
            forced = "cannot be forced" if running else "must be forced"
            raise SouteError(
                f"conflict: unable to delete {image.id[7:19]} ({forced}) - image is being used "
                f"by {kind} container {(running or [users[0][0]])[0]}",
                "remove the container first (soute rm)")
        # Forced: the tags go, the image stays for its containers (see docs/differences.md).
        for tag in image.tags:
            store.untag(tag)
            out.append(f"Untagged: {familiar(tag)}")
        return out
    if by_tag is None and len(image.tags) > 1 and not force:
        raise SouteError(
            f"conflict: unable to delete {image.id[7:19]} (must be forced) - image is "
            "referenced in multiple repositories",
            "remove it by name, or use -f",
        )
    digests = store.meta.repo_digests_of(image.id)  # go with the image: docker names them
    user = store.forget_image(image.id)
    if user is not None:  # a container made since the check above
        raise SouteError(
            f"conflict: unable to delete {image.id[7:19]} (must be forced) - image is being "
            f"used by stopped container {user[:12]}",
            "remove the container first (soute rm)")
    out += [f"Untagged: {familiar(tag)}" for tag in image.tags]
    out += [f"Untagged: {familiar(ref)}" for ref in digests]
    out.append(f"Deleted: {image.id}")
    return out


def _container_named(store: Store, name: str, *, required: bool) -> Container | None:
    from soute.container.record import Containers, NoSuchContainer

    try:
        return Containers(store).get(name)
    except NoSuchContainer:
        if required:
            raise
        return None


def _containers_using(store: Store, image_id: str) -> list[tuple[str, bool]]:
    """(short ID, running) of the containers made from the image."""
    from soute.container.record import Containers

    return [(c.short_id, c.state().running) for c in Containers(store).using_image(image_id)]


# ---------------------------------------------------------------------------- history, inspect


def configure_history(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-H", "--human", default="true", choices=("true", "false"),
                   help="print sizes and dates in human readable format (default true)")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("--format", default="table",
                   help="table, json, or a Go template: '{{.ID}}: {{.CreatedBy}}'")


HISTORY_TITLES = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT"}


def run_history(ctx: Context, args: argparse.Namespace) -> int:
    from soute.image.config import ImageConfig
    from soute.image.gojson import dumps
    from soute.image.inspect import ellipsis, history_created_since, history_rows, human_size
    from soute.image.timestamp import Timestamp
    from soute.store.names import resolve

    store = ctx.store()
    image = resolve(store, args.image)
    config = ImageConfig.from_json(store.blobs.read(image.id))
    rows = history_rows(config, [s for _, s in image.layers], image.id, image.tags)
    human = args.human == "true"

    def ident(r: object) -> str:
        rid = r.id  # type: ignore[attr-defined]
        return rid if args.no_trunc or rid == "<missing>" else r.short_id  # type: ignore[attr-defined]

    def created_at(r: object) -> str:
        # docker's history has Unix seconds: RFC 3339 without a fraction.
        c = r.created  # type: ignore[attr-defined]
        return Timestamp.from_unix(c.seconds).format() if c is not None else ""

    def created(r: object) -> str:
        return history_created_since(r.created) if human else created_at(r)  # type: ignore[attr-defined]

    def created_by(r: object) -> str:
        text = r.created_by.replace("\t", " ")  # type: ignore[attr-defined]
        return text if args.no_trunc else ellipsis(text, 45)

    if args.quiet:
        for r in rows:
            print(ident(r))
        return 0
    if args.format != "table":
        records = [{
            "Comment": r.comment, "CreatedAt": created_at(r),
            "CreatedBy": created_by(r), "CreatedSince": history_created_since(r.created),
            "ID": ident(r), "Size": human_size(r.size) if human else str(r.size),
        } for r in rows]
        if args.format == "json":
            for record in records:
                print(dumps(record))
        else:
            from soute.cli.table import render_template

            sys.stdout.write(render_template(args.format, records, HISTORY_TITLES))
        return 0
    print_table(
        ["IMAGE", "CREATED" if human else "CREATED AT", "CREATED BY", "SIZE", "COMMENT"],
        [[ident(r), created(r), created_by(r), human_size(r.size) if human else str(r.size),
          r.comment] for r in rows],
    )
    return 0


def configure_image_inspect(p: argparse.ArgumentParser) -> None:
    configure_inspect(p, types=False)


def run_image_inspect(ctx: Context, args: argparse.Namespace) -> int:
    args.type = "image"  # `image inspect` looks at images only, as docker's
    return run_inspect(ctx, args)


def configure_inspect(p: argparse.ArgumentParser, *, types: bool = True) -> None:
    p.add_argument("images", nargs="+", metavar="NAME|ID")
    if types:
        p.add_argument("--type", choices=("container", "image"),
                       help="only look for this kind (default: a container, then an image)")
    p.add_argument("-f", "--format",
                   help="a Go template applied to each object, e.g. '{{.Id}}' or "
                   "'{{json .Config.Env}}'")


def run_inspect(ctx: Context, args: argparse.Namespace) -> int:
    from soute.cli.gotemplate import print_inspected
    from soute.errors import SouteError
    from soute.image.config import ImageConfig
    from soute.image.inspect import inspect_dict
    from soute.store.names import familiar, resolve
    from soute.store.store import ImageNotFound

    store = ctx.store()
    out: list[dict[str, object]] = []
    partial: list[bool] = []  # containers: only the fields soute has
    errors: list[SouteError] = []  # as docker: what was found, then what was not
    for name in args.images:
        try:
            if args.type != "image":  # docker inspect: a container of that name first
                container = _container_named(store, name, required=args.type == "container")
                if container is not None:
                    from soute.container.api import inspect_dict as container_dict

                    out.append(container_dict(container))
                    partial.append(True)
                    continue
            image = resolve(store, name)
        except ImageNotFound:
            # docker's words: plain inspect looked for a container and an image.
            errors.append(SouteError(f"No such object: {name}",
                                     "see 'soute images' and 'soute ps -a'")
                          if args.type is None else ImageNotFound(f"No such image: {name}"))
            continue
        except SouteError as e:
            errors.append(e)
            continue
        config = ImageConfig.from_json(store.blobs.read(image.id))
        out.append(inspect_dict(
            image.id, [familiar(t) for t in image.tags],
            [familiar(d) for d in store.meta.repo_digests_of(image.id)], config, image.size,
            driver="overlay",
        ))
        partial.append(False)
    return print_inspected(out, errors, args.format, partial)


# ---------------------------------------------------------------------------- import, bootstrap


def configure_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="file|URL|-",
                   help="root filesystem tarball (a path, an http(s) URL, or - for stdin)")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-c", "--change", action="append", default=[],
                   help="apply a Dockerfile instruction to the image (repeatable)")
    p.add_argument("-m", "--message", default="", help="commit message for the image")


def run_import(ctx: Context, args: argparse.Namespace) -> int:
    from soute.build.changes import apply_changes
    from soute.errors import SouteError
    from soute.image.config import ImageConfig
    from soute.store.importer import import_tarball
    from soute.store.names import full_tag

    tags = [full_tag(args.reference)] if args.reference else []
    config = ImageConfig()
    apply_changes(config, args.change)
    comment = args.message or "Imported from -"  # docker's CLI streams any file as "-"
    store = ctx.store()
    if args.file == "-":
        image = import_tarball(store, sys.stdin.buffer, tags=tags, config=config,
                               comment=comment)
    elif args.file.startswith(("http://", "https://")):
        # As dockerd: it downloads the tarball itself (through the proxy variables).
        with _download(args.file) as f:
            image = import_tarball(store, f, tags=tags, config=config,
                                   comment=args.message or f"Imported from {args.file}")
    else:
        try:
            f = open(args.file, "rb")  # noqa: SIM115 (closed by the with below)
        except OSError as e:
            raise SouteError(f"{args.file}: {e.strerror}",
                             "give a root filesystem tarball or '-'") from None
        with f:
            image = import_tarball(store, f, tags=tags, config=config, comment=comment)
    print(image.id)
    return 0


def _download(url: str) -> BinaryIO:
    import urllib.error
    import urllib.request

    from soute.errors import SouteError

    try:
        return urllib.request.urlopen(url, timeout=60)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:
        raise SouteError(f"cannot download {url}: {e.code} {e.reason}",
                         "check the URL") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise SouteError(f"cannot download {url}: {reason}", "check the URL") from None


def configure_bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="debian:SUITE|busybox",
                   help="what to make: a Debian suite with mmdebstrap, or busybox")
    p.add_argument("--variant", default="minbase", help="mmdebstrap variant (default minbase)")
    p.add_argument("--include", default="", help="extra Debian packages, comma-separated")
    p.add_argument("--mirror", default=None, help="Debian mirror URL")
    p.add_argument("-t", "--tag", action="append", default=[],
                   help="name the image (default: the IMAGE argument)")


def run_bootstrap(ctx: Context, args: argparse.Namespace) -> int:
    from soute.errors import SouteError
    from soute.image.reference import parse_reference
    from soute.store.importer import bootstrap_busybox, bootstrap_debian
    from soute.store.names import full_tag

    ref = parse_reference(args.image)
    tags = [full_tag(t) for t in (args.tag or [args.image])]
    store = ctx.store()
    if ref.name == "docker.io/library/busybox":
        print("Bootstrapping busybox from Debian's busybox-static", file=sys.stderr)
        image = bootstrap_busybox(store, tags=tags)
    elif ref.name == "docker.io/library/debian":
        suite = ref.tag or "bookworm"
        include = [p for p in args.include.split(",") if p]
        print(f"Bootstrapping debian:{suite} with mmdebstrap ({args.variant})", file=sys.stderr)
        image = bootstrap_debian(store, suite, variant=args.variant, include=include,
                                 mirror=args.mirror, tags=tags)
    else:
        raise SouteError(f"cannot bootstrap {args.image!r}",
                         "use debian:SUITE (e.g. debian:bookworm) or busybox")
    print(image.id)
    return 0
