"""ADD of git repositories as BuildKit does it, against repositories served here: dumb
HTTP (what BuildKit's own integration tests serve) and ``git daemon`` (git://).

Docker 20.10's BuildKit (v0.8) predates ``ADD <git ref>`` (BuildKit 0.11, 2022): it
downloads ``https://...git`` as a file. So these tests follow BuildKit's source
(``source/git``, ``dfgitutil``, ``dockerfile_addgit_test.go``) rather than a docker build.
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from soute.build import git as gitsrc
from soute.errors import SouteError
from soute_cli import busybox_store, fake_command, ok, soute

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "HOME": os.devnull,
}


PRIVATE_AUTH = "basic " + base64.b64encode(b"x-access-token:s3cret").decode()


def git(cwd: Path, *args: str) -> str:
    p = subprocess.run(["git", "-c", "protocol.file.allow=always", *args], cwd=cwd,
                       capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert p.returncode == 0, (args, p.stderr)
    return p.stdout.strip()


@dataclass
class Repos:
    work: Path  # working repositories, where commits are made
    srv: Path  # their bare copies, served over HTTP and git://
    http: str
    git: str

    def new(self, name: str) -> Path:
        path = self.work / name
        path.mkdir()
        git(path, "init", "-q", "-b", "main")
        return path

    def commit(self, name: str, files: dict[str, str], message: str = "c") -> str:
        path = self.work / name
        for rel, text in files.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_text(text)
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", message)
        return git(path, "rev-parse", "HEAD")

    def publish(self, name: str) -> None:
        """Make the work repository's refs what the servers show."""
        bare = self.srv / f"{name}.git"
        if not bare.exists():
            git(self.srv, "init", "-q", "--bare", "-b", "main", bare.name)
        git(self.work / name, "push", "-q", "--force", "--mirror", str(bare))
        git(bare, "update-server-info")  # for dumb HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repos]:
    base = tmp_path_factory.mktemp("git")
    (base / "work").mkdir()
    srv = base / "srv"
    srv.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/private/"):  # the same repositories, behind a token
                if self.headers.get("Authorization") != PRIVATE_AUTH:
                    self.send_error(401)
                    return
                self.path = self.path.removeprefix("/private")
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                functools.partial(Quiet, directory=str(srv)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    port = _free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", f"--base-path={srv}", "--export-all", "--reuseaddr",
         "--listen=127.0.0.1", f"--port={port}", str(srv)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "git daemon did not start"
            time.sleep(0.05)
    try:
        yield Repos(base / "work", srv, f"http://127.0.0.1:{httpd.server_address[1]}",
                    f"git://127.0.0.1:{port}")
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_store(tmp_path_factory)


@pytest.fixture(scope="module")
def project(repos: Repos) -> dict[str, str]:
    """``project``: main (two commits, tags v1 and annotated ann), a branch ``feature``,
    an executable, a symlink and a directory; its commits by name."""
    started = time.time()
    path = repos.new("project")
    first = repos.commit("project", {"a.txt": "one\n", "dir/deep/f.txt": "deep\n",
                                     "run.sh": "#!/bin/sh\necho ran\n"})
    os.chmod(path / "run.sh", 0o755)
    os.symlink("a.txt", path / "link")
    first = repos.commit("project", {})
    git(path, "tag", "v1")
    git(path, "tag", "-a", "-m", "annotated", "ann")
    git(path, "checkout", "-q", "-b", "feature")
    feature = repos.commit("project", {"a.txt": "feature\n"})
    git(path, "checkout", "-q", "main")
    second = repos.commit("project", {"a.txt": "two\n"})
    repos.publish("project")
    return {"first": first, "second": second, "feature": feature,
            "ann": git(path, "rev-parse", "ann"), "started": str(started)}


def snapshot_path(root: Path, name: str, path: str) -> Path | None:
    """The host path of ``path`` in image ``name`` (its topmost layer holding it)."""
    from soute.store.names import resolve
    from soute.store.store import Store

    with Store(root) as store:
        for snap in reversed(store.snapshots(resolve(store, name).diff_ids)):
            if os.path.lexists(snap / path):
                return snap / path
    return None


def read(root: Path, name: str, path: str) -> str | None:
    p = snapshot_path(root, name, path)
    return None if p is None else p.read_text()


def last_line(p: subprocess.CompletedProcess[str]) -> str:
    return p.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------- refs


def test_add_git_refs_and_subdirs(root: Path, repos: Repos, project: dict[str, str]) -> None:
    http = f"{repos.http}/project.git"
    text = f"""\
FROM busybox
ADD {http} /default
ADD {http}#v1 /tag/
ADD {http}#ann /annotated
ADD {repos.git}/project.git#{project['first']} /commit
ADD {http}#feature /branch
ADD {http}#main:dir /subdir
ARG REPO={repos.git}/project.git
ADD ${{REPO}}?ref=main&subdir=dir/deep /query
ADD {http}?branch=feature /querybranch
"""
    ok(soute(root, "build", "-t", "refs", "-", input=text))
    assert read(root, "refs", "default/a.txt") == "two\n"  # the default branch (HEAD)
    assert read(root, "refs", "tag/a.txt") == "one\n"
    assert read(root, "refs", "annotated/a.txt") == "one\n"
    assert read(root, "refs", "commit/a.txt") == "one\n"
    assert read(root, "refs", "branch/a.txt") == "feature\n"
    assert read(root, "refs", "querybranch/a.txt") == "feature\n"
    # A subdir's content is the root of what is added.
    assert read(root, "refs", "subdir/deep/f.txt") == "deep\n"
    assert snapshot_path(root, "refs", "subdir/a.txt") is None
    assert read(root, "refs", "query/f.txt") == "deep\n"
    # No .git without --keep-git-dir.
    assert snapshot_path(root, "refs", "default/.git") is None
    out = ok(soute(root, "run", "--rm", "refs", "sh", "-c",
                   "/default/run.sh; readlink /default/link"))
    assert out == "ran\na.txt\n"


def test_add_git_modes_owners_and_times(root: Path, repos: Repos,
                                        project: dict[str, str]) -> None:
    """Files are 0644, or 0755 when executable in git; directories 0755; all root's; the
    mtimes are the time of the checkout, kept with it (BuildKit's git snapshot)."""
    http = f"{repos.http}/project.git"
    before = float(project["started"])  # an earlier test may have checked v1 out
    ok(soute(root, "build", "-t", "modes", "-",
             input=f"FROM busybox\nUSER 1000\nADD {http}#v1 /m\n"))
    after = time.time()
    modes = {}
    for rel in ("m", "m/a.txt", "m/run.sh", "m/dir", "m/dir/deep", "m/dir/deep/f.txt",
                "m/link"):
        p = snapshot_path(root, "modes", rel)
        assert p is not None, rel
        st = os.lstat(p)
        modes[rel] = oct(st.st_mode & 0o7777)
        assert (st.st_uid, st.st_gid) == (0, 0), rel
        assert before - 1 <= st.st_mtime <= after + 1, rel
    assert modes == {"m": "0o755", "m/a.txt": "0o644", "m/run.sh": "0o755", "m/dir": "0o755",
                     "m/dir/deep": "0o755", "m/dir/deep/f.txt": "0o644", "m/link": "0o777"}
    # Another step reading the same commit (a cache miss: another dest) gets the same
    # files with the same times, as BuildKit reuses its checkout.
    ok(soute(root, "build", "-t", "modes2", "-",
             input=f"FROM busybox\nADD {http}#{project['first']} /other\n"))
    a, b = snapshot_path(root, "modes", "m/a.txt"), snapshot_path(root, "modes2", "other/a.txt")
    assert a is not None and b is not None
    assert os.stat(a).st_mtime_ns == os.stat(b).st_mtime_ns
    # --chown and --chmod apply as to any copy (BuildKit's test uses 4242:8484).
    ok(soute(root, "build", "-t", "chowned", "-",
             input=f"FROM busybox\nADD --chown=4242:8484 --chmod=640 {http}#v1 /c\n"))
    c = snapshot_path(root, "chowned", "c/run.sh")
    assert c is not None
    assert (os.stat(c).st_uid, os.stat(c).st_gid, os.stat(c).st_mode & 0o7777) == (
        4242, 8484, 0o640)


def test_add_git_history(root: Path, repos: Repos, project: dict[str, str]) -> None:
    from soute.store.names import resolve
    from soute.store.store import Store

    src = f"{repos.http}/project.git#v1"
    ok(soute(root, "build", "-t", "hist", "-",
             input=f"FROM busybox\nADD --keep-git-dir --checksum={project['first'][:7]} "
                   f"{src} /h\n"))
    import json

    with Store(root) as store:
        history = json.loads(store.blobs.read(resolve(store, "hist").id))["history"]
    # The flags BuildKit leaves out of the history are left out.
    assert history[-1]["created_by"] == f"ADD {src} /h # buildkit"


# ---------------------------------------------------------------------------- .git


def test_keep_git_dir(tmp_path: Path, root: Path, repos: Repos,
                      project: dict[str, str]) -> None:
    http = f"{repos.http}/project.git"
    text = f"""\
FROM busybox
ADD --keep-git-dir=true {http}#main /k
ADD {repos.git}/project.git?keep-git-dir /q
ADD --keep-git-dir=true {http}#main:dir /sub
ADD --keep-git-dir=false {http}#main /no
"""
    ok(soute(root, "build", "-t", "keep", "-", input=text))
    for dest in ("k", "q"):
        kept = snapshot_path(root, "keep", dest)
        assert kept is not None and (kept / ".git").is_dir()
        clone = tmp_path / dest
        shutil.copytree(kept, clone, symlinks=True)
        # A usable repository: the commit checked out, nothing changed, origin the URL.
        assert git(clone, "rev-parse", "HEAD") == project["second"]
        assert git(clone, "status", "--porcelain") == ""
        assert git(clone, "rev-parse", "--is-shallow-repository") == "true"
        assert git(clone, "remote", "get-url", "origin").startswith(("http://", "git://"))
    assert (snapshot_path(root, "keep", "k/.git/FETCH_HEAD")) is None
    # With a subdir there is no .git (BuildKit keeps it only for the whole repository).
    assert snapshot_path(root, "keep", "sub/.git") is None
    assert snapshot_path(root, "keep", "no/.git") is None


def test_keep_git_dir_annotated_tag(tmp_path: Path, root: Path, repos: Repos,
                                    project: dict[str, str]) -> None:
    ok(soute(root, "build", "-t", "keepann", "-",
             input=f"FROM busybox\nADD --keep-git-dir {repos.http}/project.git#ann /k\n"))
    kept = snapshot_path(root, "keepann", "k")
    assert kept is not None
    clone = tmp_path / "k"
    shutil.copytree(kept, clone, symlinks=True)
    assert git(clone, "rev-parse", "HEAD") == project["first"]
    assert git(clone, "rev-parse", "refs/tags/ann") == project["ann"]  # the tag object


# ---------------------------------------------------------------------------- checksum


def test_checksum(root: Path, repos: Repos, project: dict[str, str]) -> None:
    http = f"{repos.http}/project.git"
    first = project["first"]
    ok(soute(root, "build", "-t", "sum", "-",
             input=f"FROM busybox\nADD --checksum={first[:7]} {http}#v1 /a\n"
                   f"ADD --checksum={first} {http}#{first} /b\n"
                   f"ADD {http}?tag=v1&commit={first[:10]} /c\n"
                   # An annotated tag matches its commit or the tag object.
                   f"ADD --checksum={project['ann']} {http}#ann /d\n"))
    assert read(root, "sum", "a/a.txt") == read(root, "sum", "b/a.txt") == "one\n"
    assert read(root, "sum", "c/a.txt") == read(root, "sum", "d/a.txt") == "one\n"
    second = project["second"]
    p = soute(root, "build", "-", input=f"FROM busybox\n\nADD --checksum={first} {http}#main /x\n")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert last_line(p).startswith(
        f"Dockerfile:3: failed to load cache key: expected checksum to match {first}, "
        f"got {second}")


@pytest.mark.parametrize(("line", "message"), [
    ("ADD --checksum=zz {url}#v1 /x",
     "failed to load cache key: invalid checksum zz for Git URL, expected hex commit hash"),
    ("ADD --checksum=abc {url}?commit=def /x", 'checksum mismatch "abc" != "def"'),
    ("ADD --checksum={zeros} {url}#{first} /x",
     "failed to load cache key: expected checksum to match {zeros}, got {first}"),
    ("ADD {url}#nosuch /x",
     'failed to load cache key: repository does not contain ref nosuch, output: ""'),
    ("ADD {url}?branch=v1 /x",
     'failed to load cache key: repository does not contain ref refs/heads/v1, output: ""'),
    ("ADD {url}?tag=v1#main /x", 'ref conflicts: "main" vs "refs/tags/v1"'),
    ("ADD {url}?tag=v1&branch=main /x", "branch conflicts with tag"),
    ("ADD {url}?foo=1 /x", 'unexpected query "foo"'),
    ("ADD {url}?ref= /x", 'query "ref" has no value'),
    ("ADD {url}?keep-git-dir=maybe /x", 'invalid keep-git-dir value: "maybe"'),
    ("ADD --keep-git-dir=true {url}?keep-git-dir=false /x",
     "inconsistent keep-git-dir configuration"),
    ("ADD {url}#-x /x", 'invalid git ref "-x"'),
    ("ADD {url}#main:a.txt /x",
     'invalid subdir a.txt: git subpath "a.txt" contains non-directory "a.txt"'),
    ("ADD {url}#main:nope /x", "invalid subdir nope: failed to lstat"),
    ("ADD {missing} /x", "failed to load cache key: error fetching default branch for "
                         "repository {missing}"),
    ("ADD --checksum=sha256:{zeros} {url} /x",
     "failed to load cache key: invalid checksum sha256:"),
    ("COPY {url} /x", "source can't be a git ref for COPY"),
])
def test_errors_name_the_line(tmp_path: Path, root: Path, repos: Repos,
                              project: dict[str, str], line: str, message: str) -> None:
    values = {"url": f"{repos.http}/project.git", "zeros": "0" * 40,
              "first": project["first"], "missing": f"{repos.git}/missing.git"}
    text = "FROM busybox\n\n" + line.format(**values) + "\n"
    (tmp_path / "Dockerfile").write_text(text)
    p = soute(root, "build", "-f", str(tmp_path / "Dockerfile"), str(tmp_path))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert last_line(p).startswith(
        f"{tmp_path / 'Dockerfile'}:3: {message.format(**values)}"), last_line(p)


# ---------------------------------------------------------------------------- cache


def test_cache_follows_the_ref(root: Path, repos: Repos) -> None:
    repos.new("moving")
    repos.commit("moving", {"v": "1\n"})
    repos.publish("moving")
    url = f"{repos.git}/moving.git#main"
    text = f"FROM busybox\nADD {url} /m\nRUN cat /m/v > /copy\n"
    ok(soute(root, "build", "-t", "moving", "-", input=text))
    again = soute(root, "build", "--progress", "plain", "-t", "moving", "-", input=text)
    assert again.returncode == 0 and again.stderr.count("CACHED") == 2, again.stderr
    # The ref's spelling does not count, --checksum neither: the key is the commit.
    sha = git(repos.work / "moving", "rev-parse", "HEAD")
    other = (f"FROM busybox\nADD --checksum={sha[:12]} "
             f"{repos.http}/moving.git?ref={sha} /m\nRUN cat /m/v > /copy\n")
    p = soute(root, "build", "--progress", "plain", "-t", "moving2", "-", input=other)
    assert p.returncode == 0 and p.stderr.count("CACHED") == 2, p.stderr
    # A new commit on the branch: the step (and the next) run again.
    repos.commit("moving", {"v": "2\n"})
    repos.publish("moving")
    p = soute(root, "build", "--progress", "plain", "-t", "moving", "-", input=text)
    assert p.returncode == 0 and "CACHED" not in p.stderr, p.stderr
    assert read(root, "moving", "copy") == "2\n"


def test_cached_commit_needs_no_server(root: Path, repos: Repos,
                                       project: dict[str, str]) -> None:
    """A ref that is a commit SHA is its own key: no ls-remote, so a cached step builds
    while the server is down."""
    text = f"FROM busybox\nADD http://127.0.0.1:1/gone.git#{project['first']} /x\n"
    ok(soute(root, "build", "-t", "pinned", "-",
             input=text.replace("http://127.0.0.1:1/gone.git", f"{repos.http}/project.git")))
    p = soute(root, "build", "--progress", "plain", "-", input=text)
    assert p.returncode == 0 and "CACHED" in p.stderr, p.stderr


# ---------------------------------------------------------------------------- submodules


def test_submodules(root: Path, repos: Repos) -> None:
    repos.new("lib")
    repos.commit("lib", {"lib.txt": "lib\n"})
    repos.publish("lib")
    top = repos.new("withsub")
    repos.commit("withsub", {"top.txt": "top\n"})
    git(top, "submodule", "add", "-q", f"{repos.http}/lib.git", "vendor/lib")
    repos.commit("withsub", {})
    repos.publish("withsub")
    url = f"{repos.git}/withsub.git"
    ok(soute(root, "build", "-t", "subs", "-",
             input=f"FROM busybox\nADD {url} /s\nADD {url}?submodules=false /n\n"))
    assert read(root, "subs", "s/vendor/lib/lib.txt") == "lib\n"
    # As in BuildKit, the submodule keeps git's ".git" file (its gitdir was in the cache).
    gitfile = read(root, "subs", "s/vendor/lib/.git")
    assert gitfile is not None and gitfile.startswith("gitdir: ")
    assert snapshot_path(root, "subs", "n/vendor/lib/lib.txt") is None
    empty = snapshot_path(root, "subs", "n/vendor/lib")
    assert empty is not None and empty.is_dir() and not any(empty.iterdir())


def test_file_submodules_are_refused(root: Path, repos: Repos) -> None:
    """protocol.file.allow=user: a submodule cannot read the builder's own files."""
    top = repos.new("filesub")
    repos.commit("filesub", {"x": "x\n"})
    git(top, "submodule", "add", "-q", str(repos.srv / "lib.git"), "lib")
    repos.commit("filesub", {})
    repos.publish("filesub")
    p = soute(root, "build", "-", input=f"FROM busybox\nADD {repos.http}/filesub.git /f\n")
    assert p.returncode == 1 and "failed to update submodules for" in last_line(p), p.stderr


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("src", "remote", "ref", "subdir"), [
    ("https://github.com/moby/buildkit.git", "https://github.com/moby/buildkit.git", "", ""),
    ("https://github.com/moby/buildkit.git#v0.10.1:docs/./a/../b",
     "https://github.com/moby/buildkit.git", "v0.10.1", "docs/b"),
    ("HTTPS://h/r.git#main", "https://h/r.git", "main", ""),
    ("git@github.com:moby/buildkit.git#v0.14.1:docs", "git@github.com:moby/buildkit.git",
     "v0.14.1", "docs"),
    ("git://h/r#a%2Fb:../up", "git://h/r", "a/b", "up"),
    ("ssh://git@h:2222/r.git?ref=x&subdir=y", "ssh://git@h:2222/r.git", "x", "y"),
    ("https://h/r.git?tag=v1", "https://h/r.git", "refs/tags/v1", ""),
    ("https://h/r.git?branch=refs/heads/b", "https://h/r.git", "refs/heads/b", ""),
    ("https://h/r.git?tag=v1#refs/tags/v1", "https://h/r.git", "refs/tags/v1", ""),
])
def test_parse_git_ref(src: str, remote: str, ref: str, subdir: str) -> None:
    parsed = gitsrc.parse_git_ref(src)
    assert (parsed.remote, parsed.ref, parsed.subdir) == (remote, ref, subdir)


def test_git_source_options() -> None:
    s = gitsrc.git_source("https://h/r.git?keep-git-dir&submodules=0&commit=ab",
                          keep_git_dir=None, checksum="")
    assert (s.keep_git_dir, s.skip_submodules, s.checksum) == (True, True, "ab")
    s = gitsrc.git_source("https://h/r.git", keep_git_dir=True, checksum="cd")
    assert (s.keep_git_dir, s.skip_submodules, s.checksum) == (True, False, "cd")
    with pytest.raises(SouteError, match="invalid mtime value"):
        gitsrc.git_source("https://h/r.git?mtime=now", keep_git_dir=None, checksum="")
    with pytest.raises(SouteError, match='query "ref" has multiple values'):
        gitsrc.git_source("https://h/r.git?ref=a&ref=b", keep_git_dir=None, checksum="")


def test_cache_keys_are_buildkits() -> None:
    """shaToCacheKey: the commit, then .git#REF, :SUBDIR and (skip-submodules)."""
    sha = "a" * 40
    s = gitsrc.git_source(f"https://h/r.git?submodules=false#{sha}:sub",
                          keep_git_dir=True, checksum="")
    assert gitsrc.resolve(s).key == f"{sha}.git#{sha}:sub(skip-submodules)"
    s = gitsrc.git_source(f"https://h/r.git#{sha}", keep_git_dir=None, checksum="")
    assert gitsrc.resolve(s).key == sha
    with pytest.raises(SouteError, match=f"expected checksum to match b, got {sha}"):
        gitsrc.resolve(gitsrc.git_source(f"https://h/r.git#{sha}", keep_git_dir=None,
                                         checksum="b"))


@pytest.mark.parametrize(("url", "redacted"), [
    ("https://user:pw@h/r.git", "https://xxxxx:xxxxx@h/r.git"),
    ("ssh://git@h/r.git", "ssh://xxxxx@h/r.git"),
    ("https://h/r.git", "https://h/r.git"),
    ("git@h:r.git", "git@h:r.git"),
])
def test_redact(url: str, redacted: str) -> None:
    assert gitsrc.redact(url) == redacted


def test_scp_style_urls_go_through_ssh(tmp_path: Path, root: Path, repos: Repos,
                                       project: dict[str, str]) -> None:
    """``git@host:path`` runs ssh as BuildKit does (no config file, host keys accepted),
    with soute's own agent. A fake ssh runs the remote command here."""
    log = tmp_path / "ssh.log"
    env = {**fake_command(tmp_path / "bin", "ssh",
                          f'echo "$SSH_AUTH_SOCK $*" >> {log}\n'
                          'for last; do :; done\nexec sh -c "$last"\n'),
           "SSH_AUTH_SOCK": "/agent.sock"}
    src = f"git@fakehost:{repos.srv}/project.git#v1"
    ok(soute(root, "build", "-t", "viassh", "-", env=env,
             input=f"FROM busybox\nADD {src} /s\n"))
    assert read(root, "viassh", "s/a.txt") == "one\n"
    calls = log.read_text()
    assert "/agent.sock -F /dev/null -o StrictHostKeyChecking=no" in calls
    assert "git@fakehost git-upload-pack" in calls


def test_auth_token_secret(tmp_path: Path, root: Path, repos: Repos,
                           project: dict[str, str]) -> None:
    """BuildKit's GIT_AUTH_TOKEN[.<host>] secret: sent as basic auth for x-access-token."""
    secret = tmp_path / "token"
    secret.write_text("s3cret")
    url = f"{repos.http}/private/project.git#v1"
    text = f"FROM busybox\nADD {url} /p\n"
    p = soute(root, "build", "--no-cache", "-", input=text)
    assert p.returncode == 1 and "failed to load cache key: failed to fetch remote" in (
        last_line(p)), p.stderr
    host = repos.http.removeprefix("http://")
    for sid in (f"GIT_AUTH_TOKEN.{host}", "GIT_AUTH_TOKEN"):
        ok(soute(root, "build", "--no-cache", "-t", "private", "--secret",
                 f"id={sid},src={secret}", "-", input=text))
        assert read(root, "private", "p/a.txt") == "one\n"
