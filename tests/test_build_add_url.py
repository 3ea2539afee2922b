"""ADD of URLs as BuildKit does it, against a local HTTP server: file name, mode 0600, mtime
from Last-Modified, never unpacked, --checksum, the cache (content digest, ETag), proxies;
and the source checks BuildKit makes (URLs and git refs in COPY, --checksum's rules)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from soute.build import remote
from soute_cli import busybox_store, ok, soute

LAST_MODIFIED = "Thu, 04 Mar 2021 05:06:07 GMT"
LAST_MODIFIED_UNIX = 1614834367


@dataclass
class Server:
    url: str
    routes: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(("GET", self.path, dict(self.headers)))
            route = state.routes.get(self.path) or state.routes.get(self.path.split("?")[0])
            status, body, headers = route or (404, b"no\n", {})
            etag = headers.get("ETag")
            if etag and self.headers.get("If-None-Match") == etag:
                status, body = 304, b""
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()






@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_store(tmp_path_factory)


def entry(root: Path, name: str, path: str) -> tuple[os.stat_result, bytes] | None:
    """(lstat, content) of ``path`` in image ``name``, or None."""
    from soute.store.names import resolve
    from soute.store.store import Store

    with Store(root) as store:
        for snap in reversed(store.snapshots(resolve(store, name).diff_ids)):
            p = snap / path
            if os.path.lexists(p):
                st = os.lstat(p)
                return st, (p.read_bytes() if p.is_file() else b"")
    return None


def last_line(p: subprocess.CompletedProcess[str]) -> str:
    return p.stderr.strip().splitlines()[-1]


def targz() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("inside.txt")
        info.size = 3
        t.addfile(info, io.BytesIO(b"in\n"))
    return buf.getvalue()


def test_add_url_makes_a_0600_file_named_after_the_url(root: Path, server: Server) -> None:
    server.routes["/files/hello.txt"] = (200, b"hello web\n", {"Last-Modified": LAST_MODIFIED})
    server.routes["/"] = (200, b"index\n", {"Content-Disposition": 'attachment; filename="x"'})
    server.routes["/a.tar.gz"] = (200, targz(), {})
    server.routes["/we%20ird%5B1%5D.txt"] = (200, b"weird\n", {})
    text = f"""\
FROM busybox
USER 1001
ADD {server.url}/files/hello.txt /a/
ADD {server.url}/files/hello.txt?x=1#frag /b
ADD {server.url}/ /c/
ADD {server.url}/a.tar.gz /d/
ADD --unpack=true {server.url}/a.tar.gz /e/
ADD --chmod=755 --chown=12:34 {server.url}/files/hello.txt /f/
ADD {server.url}/we%20ird%5B1%5D.txt /g/
"""
    ok(soute(root, "build", "-t", "addurl", "-", input=text))
    got = entry(root, "addurl", "a/hello.txt")
    assert got is not None
    st, data = got
    assert data == b"hello web\n"
    assert oct(st.st_mode & 0o7777) == oct(0o600) and (st.st_uid, st.st_gid) == (0, 0)
    assert int(st.st_mtime) == LAST_MODIFIED_UNIX
    got = entry(root, "addurl", "b")  # a file dest; query and fragment are not the name
    assert got is not None and got[1] == b"hello web\n"
    # No name in the path: __unnamed__ (Content-Disposition is not looked at); no
    # Last-Modified: the Unix epoch.
    got = entry(root, "addurl", "c/__unnamed__")
    assert got is not None and got[1] == b"index\n" and got[0].st_mtime == 0
    # Archives are not unpacked, unless --unpack=true.
    assert entry(root, "addurl", "d/a.tar.gz") is not None
    assert entry(root, "addurl", "d/inside.txt") is None
    got = entry(root, "addurl", "e/inside.txt")
    assert got is not None and got[1] == b"in\n"
    got = entry(root, "addurl", "f/hello.txt")
    assert got is not None
    assert (got[0].st_mode & 0o7777, got[0].st_uid, got[0].st_gid) == (0o755, 12, 34)
    got = entry(root, "addurl", "g/we ird[1].txt")  # unescaped, and not a wildcard
    assert got is not None and got[1] == b"weird\n"
    user_agent = server.requests[0][2].get("User-Agent", "")
    assert user_agent.startswith("soute/")


def test_add_url_cache_follows_the_content(root: Path, server: Server) -> None:
    server.routes["/v"] = (200, b"one\n", {"ETag": '"1"'})
    text = f"FROM busybox\nADD {server.url}/v /v\n"
    ok(soute(root, "build", "-t", "urlcache", "-", input=text))
    again = soute(root, "build", "-t", "urlcache", "-", input=text)
    assert again.returncode == 0 and "CACHED" in again.stderr
    # The second build asked with the ETag it had, and the 304 reused the file.
    assert server.requests[-1][2].get("If-None-Match") == '"1"'
    server.routes["/v"] = (200, b"two\n", {"ETag": '"2"'})
    p = soute(root, "build", "-t", "urlcache", "-", input=text)
    assert p.returncode == 0 and "CACHED" not in p.stderr
    got = entry(root, "urlcache", "v")
    assert got is not None and got[1] == b"two\n"


def test_add_checksum(root: Path, server: Server) -> None:
    import hashlib

    body = b"pinned\n"
    server.routes["/p"] = (200, body, {})
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    text = f"FROM busybox\nARG SUM={digest}\nADD --checksum=${{SUM}} {server.url}/p /p\n"
    ok(soute(root, "build", "-t", "pinned", "-", input=text))
    got = entry(root, "pinned", "p")
    assert got is not None and got[1] == body
    # The key is known from --checksum: a cached step does not download again.
    count = len(server.requests)
    again = soute(root, "build", "-t", "pinned", "-", input=text)
    assert again.returncode == 0 and "CACHED" in again.stderr
    assert len(server.requests) == count

    wrong = "sha256:" + "0" * 64
    p = soute(root, "build", "-t", "pinned-wrong", "-",
              input=f"FROM busybox\n\nADD --checksum={wrong} {server.url}/p /p\n")
    assert p.returncode == 1
    assert last_line(p).startswith(f"Dockerfile:3: digest mismatch for {server.url}/p: {digest} "
                                   f"(expected: {wrong})")
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize(("line", "message"), [
    ("ADD {url}/nothere /x", "failed to load cache key: invalid response status 404"),
    ("ADD http://127.0.0.1:1/x /x", 'failed to load cache key: Get "http://127.0.0.1:1/x": '
                                    "connection refused"),
    ("ADD --checksum=sha256:abc {url}/p /x", "invalid checksum digest length"),
    ("ADD --checksum=md5:abc {url}/p /x", "unsupported digest algorithm"),
    ("ADD --checksum=abc {url}/p /x", "invalid checksum digest format"),
    ("ADD --checksum=sha256:{zeros} Dockerfile /x", "checksum requires HTTP(S) or Git sources"),
    ("ADD --checksum=sha256:{zeros} {url}/p {url}/p /x/",
     "checksum can't be specified for multiple sources"),
    ("COPY {url}/p /x", "source can't be a URL for COPY"),
    ("COPY git@github.com:moby/buildkit.git /x", "source can't be a git ref for COPY"),
    ("ADD https://github.com/moby/buildkit.git?nope=1 /x", 'unexpected query "nope"'),
])
def test_add_url_errors_name_the_line(tmp_path: Path, root: Path, server: Server, line: str,
                                      message: str) -> None:
    server.routes["/p"] = (200, b"p\n", {})
    text = "FROM busybox\n\n" + line.format(url=server.url, zeros="0" * 64) + "\n"
    (tmp_path / "Dockerfile").write_text(text)
    p = soute(root, "build", "-f", str(tmp_path / "Dockerfile"), str(tmp_path))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    last = last_line(p)
    assert last.startswith(f"{tmp_path / 'Dockerfile'}:3: {message}"), last


def test_add_url_goes_through_the_proxy(root: Path, server: Server) -> None:
    # Our server plays the proxy: the request line holds the whole URL.
    server.routes["http://soute-test.invalid/via-proxy"] = (200, b"proxied\n", {})
    text = "FROM busybox\nADD http://soute-test.invalid/via-proxy /p\n"
    env = {"HTTP_PROXY": server.url, "http_proxy": "", "NO_PROXY": "", "no_proxy": ""}
    ok(soute(root, "build", "-t", "proxied", "-", input=text, env=env))
    got = entry(root, "proxied", "p")
    assert got is not None and got[1] == b"proxied\n"
    # NO_PROXY sends it direct (and then the name does not resolve).
    env["NO_PROXY"] = ".invalid"
    p = soute(root, "build", "--no-cache", "-", input=text, env=env)
    assert p.returncode == 1 and "failed to load cache key: Get" in last_line(p)


@pytest.mark.parametrize(("url", "env", "proxy"), [
    ("http://example.com/x", {"HTTP_PROXY": "http://p:3128"}, "http://p:3128"),
    ("http://example.com/x", {"http_proxy": "http://low:1", "HTTP_PROXY": "http://up:2"},
     "http://up:2"),
    ("https://example.com/x", {"HTTP_PROXY": "http://p:3128"}, None),
    ("https://example.com/x", {"https_proxy": "http://p:3128"}, "http://p:3128"),
    ("http://127.0.0.1:8000/x", {"HTTP_PROXY": "http://p:3128"}, None),
    ("http://localhost/x", {"HTTP_PROXY": "http://p:3128"}, None),
    ("http://[::1]/x", {"HTTP_PROXY": "http://p:3128"}, None),
    ("http://a.example.com/x", {"HTTP_PROXY": "p:1", "NO_PROXY": "example.com"}, None),
    ("http://example.com/x", {"HTTP_PROXY": "p:1", "NO_PROXY": ".example.com"}, "p:1"),
    ("http://a.example.com/x", {"HTTP_PROXY": "p:1", "NO_PROXY": ".example.com"}, None),
    ("http://10.1.2.3/x", {"HTTP_PROXY": "p:1", "NO_PROXY": "10.0.0.0/8"}, None),
    ("http://example.com:8080/x", {"HTTP_PROXY": "p:1", "NO_PROXY": "example.com:80"},
     "p:1"),
    ("http://example.com/x", {"HTTP_PROXY": "p:1", "NO_PROXY": "example.com:80"}, None),
    ("http://example.com/x", {"HTTP_PROXY": "p:1", "NO_PROXY": "*"}, None),
])
def test_proxy_from_environment(url: str, env: dict[str, str], proxy: str | None) -> None:
    assert remote.proxy_for(url, env) == proxy


@pytest.mark.parametrize(("src", "kind"), [
    ("http://example.com/file.tar.gz", "http"),
    ("https://example.com/repo.git", "git"),
    ("https://example.com/repo.git#main:sub", "git"),
    ("https://example.com/file?x=.git", "http"),
    ("git@github.com:moby/buildkit.git", "git"),
    ("git://example.com/repo", "git"),
    ("ssh://git@example.com/repo", "git"),
    ("github.com/moby/buildkit", "local"),
    ("ftp://example.com/x", "local"),
    ("./git@x:y", "local"),
    ("dir/file.txt", "local"),
    ("HTTP://example.com/x", "local"),
])
def test_source_kind(src: str, kind: str) -> None:
    assert remote.source_kind(src) == kind


@pytest.mark.parametrize(("url", "name"), [
    ("http://h/a/b.txt", "b.txt"),
    ("http://h/a/b/", "b"),
    ("http://h/", "__unnamed__"),
    ("http://h", "__unnamed__"),
    ("http://h/a%20b?q=1#f", "a b"),
    ("http://h/bad%zz", "__unnamed__"),
])
def test_url_file_name(url: str, name: str) -> None:
    assert remote.url_file_name(url) == name
