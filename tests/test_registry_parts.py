"""The registry client's parts that need no server: challenges, settings, credentials files,
error lines, token caching. (The servers are in test_registry.py.)"""

from __future__ import annotations

import base64
import json
import stat
import urllib.parse
from pathlib import Path

import pytest

from soute.errors import SouteError
from soute.registry import credentials
from soute.registry.auth import Authenticator, parse_challenges
from soute.registry.config import RegistrySettings, is_loopback, split_host_port, strip_scheme
from soute.registry.credentials import Credential
from soute.registry.errors import describe


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("SOUTE_REGISTRIES_CONFIG", str(tmp_path / "registries.json"))
    for name in ("SOUTE_INSECURE_REGISTRIES", "SOUTE_REGISTRY_MIRROR", "DOCKER_AUTH_CONFIG",
                 "SOUTE_CERTS_D"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_challenges() -> None:
    [bearer] = parse_challenges([
        'Bearer realm="http://127.0.0.1:5003/token",service="test-registry",'
        'scope="repository:research/tiny:pull,push repository:research/other:pull"'])
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "http://127.0.0.1:5003/token", "service": "test-registry",
        "scope": "repository:research/tiny:pull,push repository:research/other:pull"}
    both = parse_challenges(['Basic realm="a \\"quoted\\" realm", Bearer realm=x,error='
                             '"insufficient_scope"'])
    assert [(c.scheme, c.params) for c in both] == [
        ("basic", {"realm": 'a "quoted" realm'}),
        ("bearer", {"realm": "x", "error": "insufficient_scope"})]
    assert parse_challenges(["", "  "]) == []


def test_addresses() -> None:
    assert split_host_port("127.0.0.1:5000") == ("127.0.0.1", 5000)
    assert split_host_port("[::1]:5000") == ("::1", 5000)
    assert split_host_port("registry.lan") == ("registry.lan", None)
    assert strip_scheme("https://registry.lan:443/v2/") == ("https", "registry.lan:443")
    assert all(map(is_loopback, ["localhost", "127.0.0.1", "127.8.9.10", "::1"]))
    assert not any(map(is_loopback, ["10.0.0.1", "registry.lan", "localhost.lan"]))


def test_settings(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / "registries.json").write_text(json.dumps({
        "insecure-registries": ["registry.lan", "10.0.0.0/8"],
        "registry-mirrors": ["https://mirror.lan:5000"]}))
    monkeypatch.setenv("SOUTE_INSECURE_REGISTRIES", "other.lan:5000, ")
    monkeypatch.setenv("SOUTE_REGISTRY_MIRROR", "http://127.0.0.1:5000")
    monkeypatch.setenv("SOUTE_CERTS_D", str(isolated / "certs"))
    settings = RegistrySettings.load()
    assert settings.is_insecure("registry.lan:5000")  # a bare host: any port
    assert settings.is_insecure("10.1.2.3:443")
    assert settings.is_insecure("other.lan:5000") and not settings.is_insecure("other.lan")
    assert not settings.is_insecure("registry.example")
    assert settings.allows_http("127.0.0.1:5000") and settings.allows_http("[::1]:80")
    assert not settings.allows_http("192.168.1.1:5000")
    assert settings.hub_mirrors() == [("http", "127.0.0.1:5000"), ("https", "mirror.lan:5000")]
    assert settings.certs_d == isolated / "certs"
    (isolated / "registries.json").write_text('{"insecure-registries": "nope"}')
    with pytest.raises(SouteError, match="must be a list of strings"):
        RegistrySettings.load()


def test_credentials_file(isolated: Path) -> None:
    path = isolated / "docker" / "config.json"
    assert credentials.lookup("127.0.0.1:5000") == Credential()
    credentials.store("127.0.0.1:5000", Credential("alice", "s3cret:with:colons"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.lookup("127.0.0.1:5000") == Credential("alice", "s3cret:with:colons")
    assert "s3cret" not in repr(credentials.lookup("127.0.0.1:5000"))

    # Docker Hub has one key whatever the spelling; unknown keys survive a rewrite.
    doc = json.loads(path.read_text())
    doc["psFormat"] = "table {{.ID}}"
    doc["auths"]["https://index.docker.io/v1/"] = {
        "auth": base64.b64encode(b"bob:pw\x00").decode(), "identitytoken": "refresh-1"}
    path.write_text(json.dumps(doc))
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert credentials.lookup(name) == Credential("bob", "pw", "refresh-1")
    credentials.store("docker.io", Credential("carol", "x", identity_token="tok"))
    doc = json.loads(path.read_text())
    assert doc["psFormat"] == "table {{.ID}}"
    assert doc["auths"]["https://index.docker.io/v1/"] == {
        "auth": base64.b64encode(b"carol:").decode(), "identitytoken": "tok"}

    # Legacy keys (scheme and path) still match; erase removes them.
    doc["auths"]["https://legacy.lan:5000/v1/"] = {
        "auth": base64.b64encode(b"dave:pw").decode()}
    path.write_text(json.dumps(doc))
    assert credentials.lookup("legacy.lan:5000").username == "dave"
    assert credentials.erase("legacy.lan:5000")
    assert not credentials.erase("legacy.lan:5000")
    assert "https://legacy.lan:5000/v1/" not in json.loads(path.read_text())["auths"]

    doc["auths"]["broken.lan"] = {"auth": "not base64!"}
    path.write_text(json.dumps(doc))
    with pytest.raises(SouteError, match="not valid base64"):
        credentials.lookup("broken.lan")


def test_docker_auth_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = base64.b64encode(b"erin:pw").decode()
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps({"auths": {"r.lan": {"auth": auth}}}))
    assert credentials.lookup("r.lan") == Credential("erin", "pw")
    assert credentials.lookup("other.lan") == Credential()


def test_missing_helper_is_one_line(isolated: Path) -> None:
    path = isolated / "docker" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"credHelpers": {"r.lan": "soute-no-such-helper"}}))
    with pytest.raises(SouteError, match="docker-credential-soute-no-such-helper: not found"):
        credentials.lookup("r.lan")
    assert credentials.lookup("other.lan") == Credential()


def test_error_lines() -> None:
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown",' \
           b'"detail":{"Tag":"nope"}}]}'
    assert describe(404, body) == ("manifest unknown: manifest unknown", ("MANIFEST_UNKNOWN",))
    assert describe(401, b'{"details":"incorrect username or password"}')[0] == \
        "incorrect username or password"
    assert describe(401, b"")[0] == "unauthorized: authentication required"
    assert describe(502, b"<html>\nbad gateway")[0] == "HTTP 502: <html>"


def test_tokens_are_cached_per_scope_and_renewed() -> None:
    calls: list[tuple[str, str, bytes | None]] = []
    expires = {"value": 300}

    def fetch(method: str, url: str, headers: dict[str, str],
              body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        calls.append((method, url, body))
        return 200, {}, json.dumps({"token": f"t{len(calls)}",
                                    "expires_in": expires["value"]}).encode()

    auth = Authenticator(Credential("alice", "pw"), fetch)
    assert auth.challenged(['Bearer realm="http://t/token",service="svc"'])
    assert not auth.challenged(['Bearer realm="http://t/token",service="svc"'])
    pull = ("repository:a:pull",)
    assert auth.header(pull) == "Bearer t1"
    assert auth.header(pull) == "Bearer t1"
    assert auth.header(("repository:a:pull,push",)) == "Bearer t2"
    method, url, _ = calls[0]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert (method, query) == ("GET", {"service": ["svc"], "scope": ["repository:a:pull"],
                                       "account": ["alice"]})
    auth.forget(pull)
    assert auth.header(pull) == "Bearer t3"
    # A token shorter-lived than the renewal margin is fetched again on every use.
    expires["value"] = 0
    auth.forget(pull)
    assert auth.header(pull) == "Bearer t4"
    # With a refresh token: the OAuth2 POST.
    refreshed = Authenticator(Credential(identity_token="r1"), fetch)
    refreshed.challenged(['Bearer realm="http://t/token",service="svc"'])
    assert refreshed.header(pull) == "Bearer t5"
    method, _, body = calls[-1]
    assert method == "POST" and body is not None
    form = urllib.parse.parse_qs(body.decode())
    assert form["grant_type"] == ["refresh_token"] and form["refresh_token"] == ["r1"]
    assert form["scope"] == ["repository:a:pull"] and form["client_id"] == ["soute"]


# --- writing a pulled layer behind its decompression -------------------------------------


def test_write_behind_writes_everything_in_order(tmp_path: Path) -> None:
    import hashlib

    from soute.store.blobs import BlobStore, WriteBehind

    (tmp_path / "tmp").mkdir()
    blobs = BlobStore(tmp_path / "blobs", tmp_path / "tmp")
    (tmp_path / "blobs").mkdir()
    chunks = [bytes([i]) * (1000 + i) for i in range(50)]
    with blobs.writer() as writer:
        behind = WriteBehind(writer, depth=2)
        for chunk in chunks:
            behind.write(chunk)
        behind.close()
        digest = writer.commit()
    assert digest == "sha256:" + hashlib.sha256(b"".join(chunks)).hexdigest()
    assert blobs.read(digest) == b"".join(chunks)


def test_write_behind_hands_back_the_writers_error(tmp_path: Path) -> None:
    from soute.store.blobs import WriteBehind

    class Failing:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

    behind = WriteBehind(Failing(), depth=1)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="No space left"):
        for _ in range(100):  # the producer hears of it on a later write...
            behind.write(b"x" * 10)
        behind.close()  # ...or at the end
    behind.close(quiet=True)  # a second close (on the error path) neither blocks nor raises
