"""login, logout, push and pull: docker's registry commands."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from soute.cli.main import Context


def _domain(server: str | None) -> str:
    """The registry a login names: Docker Hub by default, in any of its spellings."""
    from soute.registry.config import HUB_ALIASES, HUB_DOMAIN, strip_scheme

    if not server:
        return HUB_DOMAIN
    _, host = strip_scheme(server)
    if not host:
        from soute.errors import SouteError

        raise SouteError(f"invalid registry address {server!r}", "give HOST[:PORT]")
    return HUB_DOMAIN if host in HUB_ALIASES else host


def configure_login(p: argparse.ArgumentParser) -> None:
    p.add_argument("server", nargs="?", metavar="SERVER",
                   help="the registry (default Docker Hub)")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password")
    p.add_argument("--password-stdin", action="store_true",
                   help="take the password from standard input")


def run_login(ctx: Context, args: argparse.Namespace) -> int:
    from soute.errors import SouteError
    from soute.registry import credentials
    from soute.registry.client import Registry
    from soute.registry.credentials import Credential

    domain = _domain(args.server)
    if args.password and args.password_stdin:
        raise SouteError("--password and --password-stdin are mutually exclusive")
    if args.password_stdin and not args.username:
        raise SouteError("Must provide --username with --password-stdin")
    password = args.password
    if args.password:
        print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
              file=sys.stderr)
    if args.password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    username = args.username
    if not username and password is None:
        stored = credentials.lookup(domain)
        if stored:
            print("Authenticating with existing credentials...", file=sys.stderr)
            with Registry(domain, credential=stored) as registry:
                registry.check_login()
            print("Login Succeeded")
            return 0
    if not username or password is None:
        if not sys.stdin.isatty():
            raise SouteError("Cannot perform an interactive login from a non TTY device",
                             "give -u USER and --password-stdin")
        import getpass

        if not username:
            username = input("Username: ").strip()
        if password is None:
            password = getpass.getpass("Password: ")
    if not username:
        raise SouteError("Username is required", "give -u USER")
    if not password:
        raise SouteError("Password is required", "give --password-stdin")
    with Registry(domain, credential=Credential(username, password)) as registry:
        refresh = registry.check_login()
    credential = Credential(username, password, identity_token=refresh or "")
    path = credentials.store(domain, credential)
    if not credentials.using_helper(domain):
        print(f"WARNING! Your password will be stored unencrypted in {path}.", file=sys.stderr)
        print("Configure a credential helper to remove this warning. See",
              "https://docs.docker.com/engine/reference/commandline/login/#credentials-store",
              file=sys.stderr)
    print("Login Succeeded")
    return 0


def configure_logout(p: argparse.ArgumentParser) -> None:
    p.add_argument("server", nargs="?", metavar="SERVER",
                   help="the registry (default Docker Hub)")


def run_logout(ctx: Context, args: argparse.Namespace) -> int:
    from soute.registry import credentials

    domain = _domain(args.server)
    key = credentials.auth_key(domain)
    if credentials.erase(domain):
        print(f"Removing login credentials for {key}")
    else:
        print(f"Not logged in to {key}")
    return 0


def configure_push(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME[:TAG]")
    p.add_argument("-a", "--all-tags", action="store_true",
                   help="push every local tag of NAME")
    p.add_argument("--compression", choices=("gzip", "zstd"), default="gzip",
                   help="layer compression (default gzip: docker 20.10 cannot read zstd)")
    p.add_argument("--format", choices=("oci", "docker"), default=None,
                   help="manifest format (default OCI, Docker schema2 when the registry "
                        "refuses OCI)")
    p.add_argument("-q", "--quiet", action="store_true", help="only print the digest lines")


def run_push(ctx: Context, args: argparse.Namespace) -> int:
    from soute.registry.push import push

    if not args.all_tags:
        _default_tag(args.name, args.quiet)
    push(ctx.store(), args.name, all_tags=args.all_tags, compression=args.compression,
         format=args.format, out=sys.stdout, err=None if args.quiet else sys.stderr)
    return 0


def configure_pull(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("-a", "--all-tags", action="store_true",
                   help="pull every tag of the repository")
    p.add_argument("--platform", help="os/arch[/variant] to pull (default this machine's)")
    p.add_argument("-q", "--quiet", action="store_true", help="only print the image name")


def _default_tag(name: str, quiet: bool) -> None:
    """docker's notice for a name without a tag or digest."""
    from soute.image.reference import parse_reference

    ref = parse_reference(name)
    if not quiet and ref.tag is None and ref.digest is None:
        print("Using default tag: latest", flush=True)


def run_pull(ctx: Context, args: argparse.Namespace) -> int:
    from soute.registry.pull import list_tags, pull

    names = [args.name]
    if args.all_tags:
        names = [f"{args.name}:{tag}" for tag in list_tags(args.name)]
    else:
        _default_tag(args.name, args.quiet)
    for name in names:
        if args.quiet:
            result = pull(ctx.store(), name, platform=args.platform, out=None, err=None)
            print(result.reference)
        else:
            pull(ctx.store(), name, platform=args.platform, out=sys.stdout, err=sys.stderr)
    return 0
