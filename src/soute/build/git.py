"""ADD of git repositories, as BuildKit's Dockerfile frontend (``dfgitutil``,
``dispatchCopy``) and its git source (``source/git``) do it, with the ``git`` command.

- **Sources.** ``https://host/repo.git``, ``http://...git``, ``git://``, ``ssh://`` and
  ``git@host:path`` (see :func:`soute.build.remote.source_kind`). The fragment is
  ``#REF[:SUBDIR]``; BuildKit's query form is read too: ``?ref=``, ``?tag=`` (``refs/tags/``),
  ``?branch=`` (``refs/heads/``), ``?subdir=``, ``?checksum=``/``?commit=``,
  ``?keep-git-dir[=BOOL]``, ``?submodules[=BOOL]``, ``?fetch-by-commit[=BOOL]``, ``?mtime=``
  (checked, then unused, as the frontend does for ADD). Conflicts between the two forms, or
  with ``--keep-git-dir``/``--checksum``, are BuildKit's errors.
- **Resolving.** A ref that is a full commit SHA needs no network. Otherwise ``git
  ls-remote`` finds the commit (the default branch through ``HEAD`` when there is no ref;
  branches win over tags; an annotated tag is peeled). ``--checksum`` is a prefix of the
  commit (or of the annotated tag object). The step's cache key is BuildKit's git cache key:
  the commit, plus ``.git#REF`` with ``--keep-git-dir``, ``:SUBDIR``, ``(skip-submodules)``.
  So a step reruns when the ref moves, and the URL's spelling does not count.
- **Fetching.** One bare repository per remote in ``$SOUTE_ROOT/cache/git/repos``, fetched
  with ``--depth=1`` (a commit SHA with ``--tags``, all history), under a file lock so that
  concurrent builds share it. Checkouts are kept in ``$SOUTE_ROOT/cache/git/checkouts``
  under their snapshot key, as BuildKit keeps its git snapshots: a step that misses the
  cache but reads the same commit gets the same files and times.
- **The tree.** ``git checkout --no-overlay`` run with umask 022 (files 0644, or 0755 when
  executable in git; directories 0755), owned by root, mtimes the time of the checkout.
  Submodules are checked out (``submodule update --init --recursive --depth=1``) unless
  ``?submodules=false``; only ``http(s)``, ``git`` and ``ssh`` submodule URLs are allowed
  (``protocol.file.allow=user``). ``--keep-git-dir`` keeps a ``.git``: a shallow clone at
  the commit, detached HEAD, ``origin`` set to the URL (credentials redacted); not with a
  subdir. A subdir must be made of directories only; its content becomes the root.
- **git's environment** is BuildKit's: no system or global config (``HOME=/dev/null``), no
  prompts, ``ssh -F /dev/null -o StrictHostKeyChecking=no``, the proxy variables and
  ``SSH_AUTH_SOCK`` of soute's own environment (BuildKit uses the agent ``--ssh default``
  forwards).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from soute.errors import SouteError

_PROTO = re.compile(r"^[a-zA-Z0-9]+://")
_SCP = re.compile(r"^([a-zA-Z0-9-_]+)@([a-zA-Z0-9-.]+):(.*?)(?:\?(.*?))?(?:#(.*))?$")
_HEX = re.compile(r"^[a-fA-F0-9]+$")
_DEFAULT_BRANCH = re.compile(r"refs/heads/(\S+)")
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
               "http_proxy", "https_proxy", "no_proxy", "all_proxy")
_VALUELESS = ("submodules", "keep-git-dir", "fetch-by-commit")


def is_commit_sha(text: str) -> bool:
    """gitutil.IsCommitSHA: a full SHA-1 or SHA-256 in lower-case hex."""
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


# ---------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class GitRef:
    """What dfgitutil.ParseGitRef reads from a source."""

    remote: str  # the URL git is given: no fragment, no query
    ref: str = ""
    subdir: str = ""
    checksum: str = ""
    keep_git_dir: bool | None = None
    submodules: bool | None = None
    fetch_by_commit: bool = False


def parse_git_ref(src: str) -> GitRef:
    """The git reference ``src`` names (a source :func:`remote.source_kind` calls git).

    Raises :class:`SouteError` with BuildKit's message for a bad query.
    """
    proto = _PROTO.match(src)
    if proto is not None:
        parts = urllib.parse.urlsplit(src)
        scheme = proto.group(0)[:-3].lower()  # Go's url.Parse lower-cases it
        remote = urllib.parse.urlunsplit((scheme, parts.netloc, parts.path, "", ""))
        raw_query = parts.query
        fragment = urllib.parse.unquote(parts.fragment)
    else:
        match = _SCP.match(src)
        if match is None:
            raise SouteError(f"{src}: not a git URL")
        user, host, path, raw_query, fragment = match.groups()
        remote = f"{user}@{host}:{path}"
        raw_query, fragment = raw_query or "", fragment or ""
    ref, _, subdir = fragment.partition(":")
    subdir = _clean_subdir(subdir)
    return _load_query(GitRef(remote, ref, subdir), _query_values(raw_query))


def _clean_subdir(subdir: str) -> str:
    """Go's ``strings.TrimPrefix(path.Join("/", subdir), "/")``."""
    import posixpath

    return posixpath.normpath("/" + subdir).lstrip("/") if subdir else ""


def _query_values(raw: str) -> dict[str, list[str]]:
    """Go's ``url.ParseQuery`` as ``URL.Query()`` uses it (bad pairs are dropped)."""
    values: dict[str, list[str]] = {}
    for pair in raw.split("&"):
        if not pair or ";" in pair:
            continue
        key, _, value = pair.partition("=")
        try:
            key = urllib.parse.unquote_plus(key, errors="strict")
            value = urllib.parse.unquote_plus(value, errors="strict")
        except UnicodeDecodeError:
            continue
        if re.search(r"%(?![0-9a-fA-F]{2})", pair):
            continue  # Go refuses a bad escape
        values.setdefault(key, []).append(value)
    return values


def _parse_bool(key: str, values: list[str]) -> bool:
    if not values:
        return True
    try:
        return _go_bool(values[0])
    except ValueError:
        raise SouteError(f"invalid {key} value: {_q(values[0])}") from None


def _go_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(text)


def _load_query(ref: GitRef, query: dict[str, list[str]]) -> GitRef:
    """dfgitutil's ``loadQuery``: the query's options over the fragment's."""
    fields = {
        "ref": ref.ref, "subdir": ref.subdir, "checksum": "", "keep_git_dir": None,
        "submodules": None, "fetch_by_commit": False,
    }
    tag = branch = ""
    for key, values in query.items():
        if len(values) > 1:
            raise SouteError(f"query {_q(key)} has multiple values")
        if values[0] == "":
            if key not in _VALUELESS:
                raise SouteError(f"query {_q(key)} has no value")
            values = []
        if key == "ref":
            if fields["ref"] and fields["ref"] != values[0]:
                raise SouteError(f"ref conflicts: {_q(str(fields['ref']))} vs {_q(values[0])}")
            fields["ref"] = values[0]
        elif key == "tag":
            tag = values[0]
        elif key == "branch":
            branch = values[0]
        elif key == "subdir":
            if fields["subdir"] and fields["subdir"] != values[0]:
                raise SouteError(
                    f"subdir conflicts: {_q(str(fields['subdir']))} vs {_q(values[0])}")
            fields["subdir"] = values[0]
        elif key in ("checksum", "commit"):
            fields["checksum"] = values[0]
        elif key == "keep-git-dir":
            fields["keep_git_dir"] = _parse_bool(key, values)
        elif key == "submodules":
            fields["submodules"] = _parse_bool(key, values)
        elif key == "fetch-by-commit":
            fields["fetch_by_commit"] = _parse_bool(key, values)
        elif key == "mtime":
            if values[0] not in ("checkout", "commit"):
                raise SouteError(f"invalid mtime value: {_q(values[0])} "
                                 '(must be "checkout" or "commit")')
        else:
            raise SouteError(f"unexpected query {_q(key)}")
    if tag:
        tag = tag if tag.startswith("refs/tags/") else "refs/tags/" + tag
        if fields["ref"] and fields["ref"] != tag:
            raise SouteError(f"ref conflicts: {_q(str(fields['ref']))} vs {_q(tag)}")
        fields["ref"] = tag
    if branch:
        if tag:
            raise SouteError("branch conflicts with tag")
        branch = branch if branch.startswith("refs/heads/") else "refs/heads/" + branch
        if fields["ref"] and fields["ref"] != branch:
            raise SouteError(f"ref conflicts: {_q(str(fields['ref']))} vs {_q(branch)}")
        fields["ref"] = branch
    return GitRef(ref.remote, **fields)  # type: ignore[arg-type]


def _q(text: str) -> str:
    from soute.dockerfile.goquote import go_quote

    return go_quote(text)


# ---------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class GitSource:
    """The git source an ADD reads (BuildKit's GitIdentifier, as dispatchCopy fills it)."""

    remote: str
    ref: str
    checksum: str
    subdir: str
    keep_git_dir: bool
    skip_submodules: bool
    fetch_by_commit: bool
    auth: tuple[str, ...] = field(default=(), repr=False)  # git -c options: a credential


def with_auth(source: GitSource, secrets: Mapping[str, bytes]) -> GitSource:
    """``source`` with the build secret BuildKit's llb.Git reads for HTTP credentials:
    ``GIT_AUTH_HEADER.<host>``, ``GIT_AUTH_TOKEN.<host>``, ``GIT_AUTH_HEADER``,
    ``GIT_AUTH_TOKEN``, the first one given (a token is sent as basic auth for
    ``x-access-token``)."""
    import base64

    if not _PROTO.match(source.remote):
        return source  # scp-style: url.Parse fails, BuildKit sends nothing
    host = urllib.parse.urlsplit(source.remote).netloc
    for name, token in ((f"GIT_AUTH_HEADER.{host}", False), (f"GIT_AUTH_TOKEN.{host}", True),
                        ("GIT_AUTH_HEADER", False), ("GIT_AUTH_TOKEN", True)):
        if name not in secrets:
            continue
        value = secrets[name]
        if token:
            value = b"basic " + base64.b64encode(b"x-access-token:" + value)
        header = "Authorization: " + value.decode("utf-8", "surrogateescape")
        return replace(source, auth=("-c", f"http.{_token_scope(source.remote)}.extraheader="
                                           + header))
    return source


def _token_scope(remote: str) -> str:
    """A token for github.com serves all its repositories (submodules too), as BuildKit
    and actions/checkout have it."""
    for prefix in ("https://github.com/", "https://www.github.com/"):
        if remote.startswith(prefix):
            return prefix
    return remote


def git_source(src: str, *, keep_git_dir: bool | None, checksum: str) -> GitSource:
    """The source of ``ADD [--keep-git-dir] [--checksum] src``: dispatchCopy's checks."""
    ref = parse_git_ref(src)
    keep = keep_git_dir
    if keep is not None and ref.keep_git_dir is not None and keep != ref.keep_git_dir:
        raise SouteError("inconsistent keep-git-dir configuration",
                         "--keep-git-dir and the URL's ?keep-git-dir= disagree")
    if ref.keep_git_dir is not None:
        keep = ref.keep_git_dir
    if checksum and ref.checksum and checksum != ref.checksum:
        raise SouteError(f"checksum mismatch {_q(checksum)} != {_q(ref.checksum)}",
                         "--checksum and the URL's ?checksum= disagree")
    if ref.ref.startswith("-"):
        raise SouteError(f"invalid git ref {_q(ref.ref)}")
    return GitSource(
        remote=ref.remote,
        ref=ref.ref,
        checksum=ref.checksum or checksum,
        subdir=ref.subdir,
        keep_git_dir=bool(keep),
        skip_submodules=ref.submodules is False,
        fetch_by_commit=ref.fetch_by_commit,
    )


@dataclass(frozen=True)
class Resolved:
    """A git source with its commit known."""

    source: GitSource
    ref: str  # what is fetched: the ref as given, or the default branch's name
    commit: str  # the object the ref names (an annotated tag's own SHA)
    key: str  # BuildKit's cache key of the source

    def cache_key(self) -> list[str]:
        return ["git", self.key]


def resolve(source: GitSource) -> Resolved:
    """Find the commit ``source`` names (``git ls-remote``, unless the ref is a commit SHA)
    and check ``--checksum`` against it: BuildKit's resolveMetadata and CacheKey."""
    checksum = source.checksum
    if checksum and not _HEX.match(checksum):
        raise SouteError(f"invalid checksum {checksum} for Git URL, expected hex commit hash")
    ref = source.ref
    if is_commit_sha(ref):
        if checksum and not ref.startswith(checksum):
            raise SouteError(f"expected checksum to match {checksum}, got {ref}")
        return Resolved(source, ref, ref, _cache_key(source, ref, ref))
    if source.fetch_by_commit:
        if not checksum:
            raise SouteError("fetch-by-commit requires a checksum or a commit SHA ref")
        if not is_commit_sha(checksum):
            raise SouteError(
                f"fetch-by-commit requires a full commit SHA checksum, got {_q(checksum)}")
        if ref and not ref.startswith("refs/"):
            ref = "refs/heads/" + ref
        ref = ref or checksum
        sha = ref if is_commit_sha(ref) else checksum
        return Resolved(source, ref, checksum, _cache_key(source, sha, ref))
    if not ref:
        ref = _default_branch(source)
    try:
        out = _run(["ls-remote", "--", source.remote, ref, ref + "^{}"], auth=source.auth)
    except _GitFailed as e:
        raise SouteError(f"failed to fetch remote {redact(source.remote)}: {e.brief}",
                         "check the URL, the network and your access to the repository"
                         ) from None
    wanted = {
        "partial": "refs/" + ref.removeprefix("refs/"),
        "head": "refs/heads/" + ref.removeprefix("refs/heads/"),
        "tag": "refs/tags/" + ref.removeprefix("refs/tags/"),
    }
    found: dict[str, str] = {}
    for line in out.split("\n"):
        sha, _, name = line.partition("\t")
        for what, full in wanted.items():
            if name == full:
                found[what] = sha
        if name == wanted["tag"] + "^{}":
            found["peeled"] = sha
    sha, used = found.get("partial", ""), wanted["partial"]
    if not sha:
        sha, used = found.get("head", ""), wanted["head"]  # git checkout prefers branches
    peeled = "" if sha else found.get("peeled", "")
    if not sha:
        sha, used = found.get("tag", ""), wanted["tag"]
    if not sha:
        raise SouteError(f"repository does not contain ref {ref}, output: {_q(out)}",
                         "check the branch, tag or commit after # in the URL")
    if not is_commit_sha(sha):
        raise SouteError(f"invalid commit sha {_q(sha)}")
    if checksum and not sha.startswith(checksum) and not peeled.startswith(checksum):
        got = f"{sha} or {peeled}" if peeled else sha
        raise SouteError(f"expected checksum to match {checksum}, got {got}",
                         "the ref does not point at the commit --checksum pins")
    # Without a .git, a tag's files are its commit's: key on the commit for more matches.
    key_sha = peeled if peeled and not source.keep_git_dir else sha
    return Resolved(source, ref, sha, _cache_key(source, key_sha, used))


def _cache_key(source: GitSource, sha: str, ref: str) -> str:
    """BuildKit's shaToCacheKey."""
    key = sha
    if source.keep_git_dir:
        key += ".git"
        if ref:
            key += "#" + ref
    if source.subdir:
        key += ":" + source.subdir
    if source.skip_submodules:
        key += "(skip-submodules)"
    return key


def _default_branch(source: GitSource) -> str:
    remote = source.remote
    try:
        out = _run(["ls-remote", "--symref", remote, "HEAD"], auth=source.auth)
    except _GitFailed as e:
        raise SouteError(f"error fetching default branch for repository {redact(remote)}: "
                         f"{e.brief}",
                         "check the URL, the network and your access to the repository"
                         ) from None
    match = _DEFAULT_BRANCH.search(out)
    if match is None:
        raise SouteError(f"could not find default branch for repository: {redact(remote)}",
                         "name a branch, tag or commit after # in the URL")
    if match.group(1).startswith("-"):
        raise SouteError(f"invalid git ref {_q(match.group(1))}")
    return match.group(1)


# ---------------------------------------------------------------------------- checkout


def checkout(cache_root: Path, resolved: Resolved) -> Path:
    """The directory holding the tree ``resolved`` names (made once, then kept)."""
    source = resolved.source
    snapshot_key = resolved.key + ":" + source.subdir
    slot = cache_root / "checkouts" / hashlib.sha256(snapshot_key.encode()).hexdigest()
    if slot.is_dir():
        return slot
    slot.parent.mkdir(parents=True, exist_ok=True)
    with _locked_repo(cache_root, source.remote, sha256=len(resolved.commit) == 64) as repo:
        if slot.is_dir():
            return slot  # another build made it while we waited
        _fetch(repo, resolved)
        scratch = Path(tempfile.mkdtemp(prefix=".checkout-", dir=slot.parent))
        try:
            os.chmod(scratch, 0o755)  # a snapshot's root, as BuildKit's snapshotter makes it
            _checkout(repo, resolved, scratch)
            try:
                os.rename(scratch, slot)
            except OSError:
                if not slot.is_dir():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return slot


@contextlib.contextmanager
def _locked_repo(cache_root: Path, remote: str, *, sha256: bool) -> Iterator[Path]:
    """The shared bare repository of ``remote``, locked for this process."""
    repos = cache_root / "repos"
    repos.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(remote.encode()).hexdigest()
    repo = repos / name
    with open(repos / (name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (repo / "HEAD").is_file():
            _init_bare(repo, remote, sha256=sha256)
        yield repo


def _init_bare(repo: Path, remote: str, *, sha256: bool) -> None:
    shutil.rmtree(repo, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=".init-", dir=repo.parent))
    try:
        args = ["-c", "init.defaultBranch=master", "init", "--bare"]
        if sha256:
            args.append("--object-format=sha256")
        _run(args, git_dir=scratch)
        _run(["remote", "add", "origin", remote], git_dir=scratch)
        os.rename(scratch, repo)
    except _GitFailed as e:
        raise SouteError(f"failed to init repo at {repo}: {e.brief}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _fetch(repo: Path, resolved: Resolved) -> None:
    """Fetch the commit into the bare repository: BuildKit's tryRemoteFetch, then the
    checksum check of remoteFetch."""
    source = resolved.source
    try:
        _fetch_once(repo, resolved)
    except _Clobbered:
        # A tag moved or a branch became a directory of refs: start a fresh repository.
        _init_bare(repo, source.remote, sha256=len(resolved.commit) == 64)
        _fetch_once(repo, resolved)
    if not source.checksum:
        return
    ref = source.checksum if source.fetch_by_commit else resolved.ref
    actual = _rev_parse(repo, ref)
    if actual.startswith(source.checksum):
        return
    peeled = _rev_parse(repo, ref + "^{}")
    if peeled == actual:
        raise SouteError(f"expected checksum to match {source.checksum}, got {actual}")
    if not peeled.startswith(source.checksum):
        raise SouteError(
            f"expected checksum to match {source.checksum}, got {actual} or {peeled}")


class _Clobbered(Exception):
    pass


def _fetch_once(repo: Path, resolved: Resolved) -> None:
    source, ref = resolved.source, resolved.ref
    remote = redact(source.remote)
    fetch_ref = source.checksum if source.fetch_by_commit and source.checksum else ref
    gd = str(repo)
    if is_commit_sha(fetch_ref) and _ok(["cat-file", "-e", "--", fetch_ref + "^{commit}"],
                                        git_dir=repo):
        return  # already there
    # Local refs make the next fetch cheaper; a branch is kept as a tag so that it can move.
    target = ref if ref.startswith("refs/tags/") else "tags/" + ref
    with contextlib.suppress(FileNotFoundError):
        os.unlink(repo / "shallow.lock")
    args = ["fetch"]
    if source.fetch_by_commit or not is_commit_sha(fetch_ref):
        args += ["--depth=1", "--no-tags"]
    else:
        args.append("--tags")
        if (repo / "shallow").exists():
            args.append("--unshallow")
    args.append("origin")
    if is_commit_sha(ref):
        args.append(ref)
    else:
        args += ["--force", "--", f"{fetch_ref}:{target}"]
    try:
        _run(args, git_dir=gd, auth=source.auth)
    except _GitFailed as e:
        if ("rejected" in e.stderr and "(would clobber existing tag)" in e.stderr) or (
                "some local refs could not be updated;" in e.stderr
                and ("(unable to update local ref)" in e.stderr
                     or "refname conflict" in e.stderr)):
            raise _Clobbered() from None
        raise SouteError(f"failed to fetch remote {remote}: {e.brief}",
                         "check the URL, the network and your access to the repository"
                         ) from None
    if _rev_parse(repo, fetch_ref) == resolved.commit:
        return
    # The ref moved since it was resolved: go back to the commit the cache key names.
    update = target if target.startswith("refs/") else "refs/" + target
    if not _ok(["cat-file", "-e", resolved.commit], git_dir=repo):
        args = ["fetch", "--tags"]
        if (repo / "shallow").exists():
            args.append("--unshallow")
        try:
            _run([*args, "origin", resolved.commit], git_dir=gd, auth=source.auth)
        except _GitFailed as e:
            raise SouteError(f"failed to fetch remote {remote}: {e.brief}") from None
        if not _ok(["cat-file", "-e", resolved.commit], git_dir=repo):
            raise SouteError(f"fetched ref {ref} does not match expected commit "
                             f"{resolved.commit} and commit can not be found in the repository")
    _run(["update-ref", update, resolved.commit, "--no-deref"], git_dir=gd)


def _checkout(repo: Path, resolved: Resolved, root: Path) -> None:
    """Write the tree into ``root``: BuildKit's ``checkout``."""
    source = resolved.source
    remote = redact(source.remote)
    ref = resolved.ref
    ref_or_commit = source.checksum if source.fetch_by_commit and source.checksum else ref
    subdir = _clean_subdir(source.subdir) or "."
    git_dir, work = repo, root
    try:
        if source.keep_git_dir and subdir == ".":
            git_dir = root / ".git"
            wt = {"git_dir": git_dir, "work_tree": root}
            _run(["-c", "init.defaultBranch=master", "init",
                  *(["--object-format=sha256"] if len(resolved.commit) == 64 else [])], **wt)
            # file:// rather than a path: no local-clone shortcuts into the cache.
            _run(["remote", "add", "origin", "file://" + str(repo)], **wt)
            kind = _run(["cat-file", "-t", ref_or_commit], git_dir=repo).strip()
            if kind == "tag":
                pull = f"{ref}:{ref if ref.startswith('refs/tags/') else 'refs/tags/' + ref}"
            elif source.fetch_by_commit and ref != ref_or_commit:
                pull = f"{ref_or_commit}:{ref}"
            elif is_commit_sha(ref):
                pull = "refs/soute/" + os.urandom(8).hex()
                _run(["update-ref", pull, ref], git_dir=repo)
            else:
                pull = f"{ref}:{ref}"
            _run(["fetch", "-u", "--depth=1", "--", "origin", pull], **wt)
            try:
                _run(["checkout", "FETCH_HEAD"], **wt)
            except _GitFailed as e:
                raise SouteError(f"failed to checkout remote {remote}: {e.brief}") from None
            _run(["remote", "set-url", "origin", remote], **wt)
            _run(["reflog", "expire", "--all", "--expire=now"], **wt)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(git_dir / "FETCH_HEAD")
            if pull.startswith("refs/soute/"):
                _run(["update-ref", "-d", pull], git_dir=repo)
        else:
            if subdir != ".":
                work = Path(tempfile.mkdtemp(prefix="checkout", dir=root))
            try:
                _run(["checkout", "--no-overlay", ref_or_commit, "--", "."],
                     git_dir=repo, work_tree=work)
            except _GitFailed as e:
                raise SouteError(f"failed to checkout remote {remote}: {e.brief}") from None
        if not source.skip_submodules:
            try:
                _run(["submodule", "update", "--init", "--recursive", "--depth=1"],
                     git_dir=git_dir, work_tree=work, auth=source.auth)
            except _GitFailed as e:
                raise SouteError(f"failed to update submodules for {remote}: {e.brief}"
                                 ) from None
    except _GitFailed as e:
        raise SouteError(f"git failed for {remote}: {e.brief}") from None
    if subdir != ".":
        _move_subdir(work, subdir, root)


def _move_subdir(work: Path, subdir: str, root: Path) -> None:
    """Make ``work/subdir``'s content the checkout: each of its parts must be a
    directory (no file, no symlink), as BuildKit's validateDirsOnly requires."""
    here = work
    for part in subdir.split("/"):
        here = here / part
        try:
            st = os.lstat(here)
        except OSError as e:
            raise SouteError(f"invalid subdir {subdir}: failed to lstat {_q(part)}: "
                             f"lstat {part}: {(e.strerror or str(e)).lower()}",
                             "the path after : in the URL must be a directory of the "
                             "repository") from None
        if not stat.S_ISDIR(st.st_mode):
            raise SouteError(f"invalid subdir {subdir}: git subpath {_q(subdir)} contains "
                             f"non-directory {_q(str(here.relative_to(work)))}")
    for name in os.listdir(here):
        os.rename(here / name, root / name)
    shutil.rmtree(work)


def _rev_parse(repo: Path, ref: str) -> str:
    try:
        return _run(["rev-parse", ref], git_dir=repo).strip()
    except _GitFailed as e:
        raise SouteError(f"failed to rev-parse {ref}: {e.brief}") from None


def _ok(args: list[str], *, git_dir: Path) -> bool:
    try:
        _run(args, git_dir=git_dir)
    except _GitFailed:
        return False
    return True


def redact(remote: str) -> str:
    """BuildKit's urlutil.RedactCredentials: user and password of a URL become xxxxx."""
    try:
        parts = urllib.parse.urlsplit(remote)
    except ValueError:
        return remote
    if not parts.scheme or "@" not in parts.netloc:
        return remote
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if user and colon:
        userinfo = "xxxxx:xxxxx"
    elif user:
        userinfo = "xxxxx"
    elif colon:
        userinfo = ":xxxxx"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


# ---------------------------------------------------------------------------- running git


class _GitFailed(Exception):
    def __init__(self, stderr: str, code: int) -> None:
        super().__init__(stderr)
        self.stderr = stderr
        self.code = code

    @property
    def brief(self) -> str:
        """git's own complaint, on one line (its fatal:/error: lines when it has some)."""
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
        return "; ".join(errors or lines[-3:]) or f"git exited with status {self.code}"


def _env() -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_SSH_COMMAND": "ssh -F /dev/null -o StrictHostKeyChecking=no",
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": os.devnull,
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    for name in (*_PROXY_VARS, "SSH_AUTH_SOCK"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _run(args: list[str], *, git_dir: Path | str | None = None,
         work_tree: Path | str | None = None, auth: Sequence[str] = ()) -> str:
    """Run git as BuildKit's GitCLI does (its retries included); its standard output."""
    base = ["git", "-c", "protocol.file.allow=user"]  # no file:// submodules
    if work_tree is not None:
        base += ["--work-tree", str(work_tree)]
    if git_dir is not None:
        base += ["--git-dir", str(git_dir)]
    base += auth
    while True:
        try:
            p = subprocess.run(
                [*base, *args], cwd=str(work_tree) if work_tree is not None else "/",
                env=_env(), stdin=subprocess.DEVNULL, capture_output=True, umask=0o022,
            )
        except FileNotFoundError:
            raise SouteError("git is not installed", "install git (apt-get install git)"
                             ) from None
        if p.returncode == 0:
            return p.stdout.decode("utf-8", "surrogateescape")
        stderr = p.stderr.decode("utf-8", "replace")
        if ("--depth" in stderr or "shallow" in stderr) and "--depth=1" in args:
            args = [a for a in args if a != "--depth=1"]  # a server without shallow support
            continue
        if (("not our ref" in stderr or "unadvertised object" in stderr)
                and len(args) > 2 and args[0] == "fetch" and is_commit_sha(args[-1])):
            args = args[:-1]  # the server refuses a SHA it does not advertise: fetch all
            continue
        raise _GitFailed(stderr, p.returncode)
