"""The image store through the soute command: import, tag, rmi, history, inspect, fsck, prune."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from soute.store.store import Store


def soute(root: Path, *args: str, input: bytes | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "soute.cli.main", "--root", str(root), *args],
        input=input, capture_output=True, env={**os.environ, **(env or {})},
    )
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(),
                                       p.stderr.decode())


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, p.stderr
    return p.stdout


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


def rootfs_tar(files: dict[str, bytes], *, dirs: bool = False, mtime: int = 1_600_000_000
               ) -> bytes:
    """A small root filesystem tarball; without ``dirs``, parents are implicit (as many
    hand-made tarballs are)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        if dirs:
            for d in sorted({str(Path(n).parent) for n in files} - {"."}):
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, mtime
                t.addfile(ti)
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o755, mtime
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


FILES = {"bin/hello": b"#!/bin/sh\necho hello\n", "etc/os-release": b"ID=tiny\n"}


def test_import_gives_an_image_with_one_layer(tmp_path: Path) -> None:
    image_id = ok(soute(tmp_path, "import", "-", "tiny:v1", input=rootfs_tar(FILES))).strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    out = ok(soute(tmp_path, "images"))
    lines = out.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert lines[1].split()[:3] == ["tiny", "v1", image_id[7:19]]
    info = json.loads(ok(soute(tmp_path, "inspect", "tiny:v1")))[0]
    assert info["Id"] == image_id
    assert info["RepoTags"] == ["tiny:v1"]
    assert info["Os"] == "linux" and info["RootFS"]["Type"] == "layers"
    assert len(info["RootFS"]["Layers"]) == 1
    history = ok(soute(tmp_path, "history", "tiny:v1")).splitlines()
    assert history[0].split()[:2] == ["IMAGE", "CREATED"]
    assert history[1].startswith(image_id[7:19])
    assert "Imported from -" in history[1]


def test_images_takes_a_go_template_as_docker_does(tmp_path: Path) -> None:
    """``docker images --format '{{.Repository}}:{{.Tag}}'`` and its ``table`` form, with
    docker's column titles; an unknown field is a one-line error that lists the fields."""
    image_id = ok(soute(tmp_path, "import", "-", "tiny:v1", input=rootfs_tar(FILES))).strip()
    ok(soute(tmp_path, "tag", "tiny:v1", "tiny:v2"))
    assert ok(soute(tmp_path, "images", "--format", "{{.Repository}}:{{.Tag}}")) == (
        "tiny:v1\ntiny:v2\n")
    table = ok(soute(tmp_path, "images", "--format", r"table {{.ID}}\t{{.CreatedSince}}"))
    lines = table.splitlines()
    assert lines[0].split() == ["IMAGE", "ID", "CREATED"]
    assert [line.split()[0] for line in lines[1:]] == [image_id[7:19]] * 2
    error = one_line_error(soute(tmp_path, "images", "--format", "{{.Nope}}"))
    assert "can't evaluate field Nope" in error and "Repository" in error


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress, "zstd"])
def test_import_reads_compressed_tarballs(tmp_path: Path, compress: object) -> None:
    raw = rootfs_tar(FILES)
    if compress == "zstd":
        import zstandard

        data = zstandard.ZstdCompressor().compress(raw)
    else:
        data = compress(raw)  # type: ignore[operator]
    plain = ok(soute(tmp_path / "a", "import", "-", input=raw)).strip()
    packed = tmp_path / "rootfs.tar.x"
    packed.write_bytes(data)
    assert ok(soute(tmp_path / "b", "import", str(packed))).strip() == plain


def test_same_tarball_same_image_id_at_any_time(tmp_path: Path) -> None:
    data = rootfs_tar(FILES)  # implicit parent directories on purpose
    first = ok(soute(tmp_path / "a", "import", "-", "x", input=data)).strip()
    time.sleep(1.1)
    again = ok(soute(tmp_path / "a", "import", "-", "y", input=data)).strip()
    other_store = ok(soute(tmp_path / "b", "import", "-", "z", input=data)).strip()
    assert first == again == other_store


def test_source_date_epoch_sets_created(tmp_path: Path) -> None:
    out = ok(soute(tmp_path, "import", "-", "x", input=rootfs_tar(FILES),
                   env={"SOURCE_DATE_EPOCH": "1700000000"}))
    info = json.loads(ok(soute(tmp_path, "inspect", out.strip())))[0]
    assert info["Created"] == "2023-11-14T22:13:20Z"


def test_import_changes_and_message(tmp_path: Path) -> None:
    ok(soute(tmp_path, "import", "-", "app", "-c", 'CMD ["/bin/hello"]', "-c", "ENV A=1 B=$A",
             "-c", "EXPOSE 80/udp 8080", "-c", "WORKDIR /srv", "-c", "USER nobody",
             "-m", "first cut", input=rootfs_tar(FILES)))
    info = json.loads(ok(soute(tmp_path, "inspect", "app")))[0]
    cfg = info["Config"]
    assert cfg["Cmd"] == ["/bin/hello"]
    assert cfg["Env"] == ["A=1", "B="]  # like docker: $A is read before this change sets it
    assert cfg["ExposedPorts"] == {"80/udp": {}, "8080/tcp": {}}
    assert (cfg["WorkingDir"], cfg["User"]) == ("/srv", "nobody")
    assert info["Comment"] == "first cut"


def test_bad_change_is_refused(tmp_path: Path) -> None:
    line = one_line_error(soute(tmp_path, "import", "-", "x", "-c", "RUN echo",
                                input=rootfs_tar(FILES)))
    assert "run is not a valid change command (use one of CMD, ENTRYPOINT" in line  # docker's
    # The change has no line: its own errors name it, with soute's prefix.
    line = one_line_error(soute(tmp_path, "import", "-", "x", "-c", "BOGUS x",
                                input=rootfs_tar(FILES)))
    assert line.startswith("soute: bogus is not a valid change command (use one of CMD")
    line = one_line_error(soute(tmp_path, "import", "-", "x", "-c", "ENV",
                                input=rootfs_tar(FILES)))
    assert line.startswith("soute: --change 'ENV': ENV requires at least one argument")
    assert Store(tmp_path).images() == []


def test_tag_rmi_and_garbage(tmp_path: Path) -> None:
    image_id = ok(soute(tmp_path, "import", "-", "one", input=rootfs_tar(FILES))).strip()
    ok(soute(tmp_path, "tag", "one", "two:latest"))
    ok(soute(tmp_path, "image", "tag", image_id[7:15], "registry.example:5000/team/three:v3"))
    names = {tuple(line.split()[:2]) for line in ok(soute(tmp_path, "image", "ls")).splitlines()}
    assert {("one", "latest"), ("two", "latest"),
            ("registry.example:5000/team/three", "v3")} <= names
    # By ID with several tags: refused without -f, as docker does.
    line = one_line_error(soute(tmp_path, "rmi", image_id))
    assert "must be forced" in line
    assert ok(soute(tmp_path, "rmi", "two")) == "Untagged: two:latest\n"
    blobs = tmp_path / "oci" / "blobs" / "sha256"
    assert len(list(blobs.iterdir())) == 3  # config, manifest, layer
    out = ok(soute(tmp_path, "image", "rm", "-f", image_id))
    assert out.splitlines()[-1] == f"Deleted: {image_id}"
    assert list(blobs.iterdir()) == []
    assert list((tmp_path / "snapshots").iterdir()) == []
    assert ok(soute(tmp_path, "images", "-q")) == ""


def test_import_from_a_url(tmp_path: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    tarball = rootfs_tar(FILES)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/rootfs.tar"
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(tarball) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(tarball)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        # As dockerd: downloaded, and the history says where from.
        from_url = ok(soute(tmp_path, "import", f"{base}/rootfs.tar", "web:1")).strip()
        from_stdin = ok(soute(tmp_path, "import", "-", input=tarball)).strip()
        history = ok(soute(tmp_path, "history", "--format", "{{.Comment}}", "web:1"))
        assert history == f"Imported from {base}/rootfs.tar\n"
        with Store(tmp_path) as store:
            assert store.image(from_url).diff_ids == store.image(from_stdin).diff_ids
        p = soute(tmp_path, "import", f"{base}/missing.tar")
        assert p.returncode == 1 and "404" in p.stderr and len(p.stderr.splitlines()) == 1
    finally:
        httpd.shutdown()


def test_images_filters_as_docker_reads_them(tmp_path: Path) -> None:
    def imported(mtime: int, *name: str, label: str = "a=b") -> str:
        # An import is as old as its newest file (docs/differences.md).
        out = ok(soute(tmp_path, "import", "-c", f"LABEL {label}", "-", *name,
                       input=rootfs_tar({"f": str(mtime).encode()}, mtime=mtime)))
        return out.strip()[7:19]

    old = imported(1_600_000_000)  # no name: dangling
    app = imported(1_600_000_100, "org/app:1", label="tier=web")
    ok(soute(tmp_path, "tag", "org/app:1", "org/app:2"))
    other = imported(1_600_000_200, "other:1", label="tier=db")

    def ids(*args: str) -> list[str]:
        return ok(soute(tmp_path, "images", "-q", *args)).split()

    def names(*args: str) -> list[str]:
        out = ok(soute(tmp_path, "images", "--format", "{{.Repository}}:{{.Tag}}", *args))
        return out.split()

    assert ids("-f", "dangling=true") == [old]  # docker rmi $(docker images -qf dangling=true)
    assert ids("-f", "dangling=false") == [other, app, app]  # a line per tag, as docker
    assert ids("-f", "label=tier") == [other, app, app]
    assert ids("-f", "label=tier=web") == [app, app]
    assert ids("-f", "label=tier=web", "-f", "dangling=true") == []  # every key must hold
    assert ids("-f", "before=other:1") == [app, app, old]
    assert ids("-f", "since=" + old) == [other, app, app]
    assert names("-f", "reference=org/*:2") == ["org/app:2"]  # only the matching tags
    assert names("-f", "reference=*") == ["other:1"]  # '*' does not cross a '/'
    assert names("org/*") == ["org/app:1", "org/app:2"]  # a pattern as the argument too
    for bad in ("bogus=1", "dangling=maybe", "dangling"):
        p = soute(tmp_path, "images", "-f", bad)
        assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
    # image prune's filters: what is older than until=, what has (or lacks) a label.
    p = soute(tmp_path, "image", "prune", "-a", "--filter", "colour=red")
    assert p.returncode == 1 and "invalid filter" in p.stderr
    p = soute(tmp_path, "image", "prune", "-a", input=b"n\n")
    assert p.stdout.endswith("Total reclaimed space: 0B\n") and ids() == [other, app, app, old]
    ok(soute(tmp_path, "image", "prune", "-a", "-f", "--filter", "until=1600000050"))
    assert ids() == [other, app, app]
    ok(soute(tmp_path, "image", "prune", "-a", "-f", "--filter", "label!=tier=web"))
    assert ids() == [app, app]


def test_images_and_history_take_docker_templates(tmp_path: Path) -> None:
    # With no image, a table still has its header (the template run on the titles).
    out = ok(soute(tmp_path, "images", "--format", "table {{upper .Repository}}\t{{.ID}}"))
    assert out.split() == ["REPOSITORY", "IMAGE", "ID"]
    image_id = ok(soute(tmp_path, "import", "-", "org/app:1", input=rootfs_tar(FILES)))
    short = image_id.strip()[7:19]
    other = ok(soute(tmp_path, "import", "-", input=rootfs_tar({"other": b"x"})))[7:19]
    out = ok(soute(tmp_path, "images", "--format",
                   '{{upper .Repository}} {{.Tag | printf "%q"}} {{len .ID}} '
                   '{{join (split .Repository "/") "+"}}', "org/app"))
    assert out == 'ORG/APP "1" 12 org+app\n'
    out = ok(soute(tmp_path, "images", "--format", "table {{lower .Repository}}\t{{.ID}}"))
    # The header is the template run on the titles (lower of REPOSITORY), as docker's.
    assert [line.split() for line in out.splitlines()] == [
        ["repository", "IMAGE", "ID"], ["<none>", other], ["org/app", short]]
    records = [json.loads(line) for line in ok(soute(
        tmp_path, "images", "--format", "{{json .}}")).splitlines()]
    assert {r["Digest"] for r in records} == {"<none>"}
    assert "\\u003cnone\\u003e" in ok(soute(tmp_path, "images", "--format", "{{json .}}"))
    out = ok(soute(tmp_path, "history", "--format", "{{.ID}}|{{upper .Comment}}", "org/app:1"))
    assert out == f"{short}|IMPORTED FROM -\n"
    out = ok(soute(tmp_path, "history", "--format", "table {{.ID}}\t{{.Comment}}", short))
    assert out.splitlines()[0].split() == ["IMAGE", "COMMENT"]


def test_an_image_removed_by_another_command_takes_no_tag_and_comes_back_whole(
        tmp_path: Path) -> None:
    """What another command (an ``rmi`` beside this one) removed between a lookup and a
    write: a tag is refused with No such image, a repository digest is not recorded, and
    the same image added again gets its tags (the API, as ``tag``, ``push`` and ``import``
    call it; the CLI cannot time such a race)."""
    from soute.store.store import ImageNotFound

    image_id = ok(soute(tmp_path, "import", "-", "one", input=rootfs_tar(FILES))).strip()
    with Store(tmp_path) as store:
        image = store.image(image_id)
        config, layer = store.blobs.read(image_id), image.diff_ids[0]
        assert store.forget_image(image_id) is None
        with pytest.raises(ImageNotFound, match="No such image"):
            store.tag(image_id, "docker.io/library/two:latest")
        store.meta.add_repo_digest("docker.io/library/one", "sha256:" + "1" * 64, image_id)
        assert store.meta.repo_digests_of(image_id) == []
        assert store.meta.tags() == []
    # Known no more: imported again whole, with its tag.
    assert ok(soute(tmp_path, "import", "-", "one", input=rootfs_tar(FILES))).strip() == image_id
    with Store(tmp_path) as store:
        assert store.image(image_id).tags == ("docker.io/library/one:latest",)
        assert store.blobs.read(image_id) == config
        assert store.image(image_id).diff_ids == [layer]
    ok(soute(tmp_path, "fsck"))


def _docker_archive(layers: list[bytes], tag: str) -> bytes:
    """A ``docker save`` archive of an image made of ``layers`` (uncompressed tars)."""
    import hashlib

    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    names = [f"{i}/layer.tar" for i in range(len(layers))]
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [tag],
                            "Layers": names}]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in [("manifest.json", manifest), ("config.json", config),
                           *zip(names, layers, strict=True)]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


THREE_LAYERS = [rootfs_tar({"a": b"1"}), rootfs_tar({"b": b"2"}),
                rootfs_tar({"c": b"3", ".wh.a": b""})]


def test_load_names_what_it_loaded_even_with_quiet(tmp_path: Path) -> None:
    # docker's -q hides progress bars only: `docker load -q | sed` scripts get the names.
    archive = _docker_archive(THREE_LAYERS, "three:v1")
    assert ok(soute(tmp_path, "load", "-q", input=archive)) == "Loaded image: three:v1\n"
    # Over a tag that names another image: docker says so, and the old one keeps no name.
    old = ok(soute(tmp_path, "images", "-q", "--no-trunc", "three:v1")).strip()
    other = _docker_archive(THREE_LAYERS[:2], "three:v1")
    assert ok(soute(tmp_path, "load", input=other)).splitlines() == [
        f"The image three:v1 already exists, renaming the old one with ID {old} to empty "
        "string", "Loaded image: three:v1"]
    assert ok(soute(tmp_path, "images", "-q", "--no-trunc", "-f", "dangling=true")) == old + "\n"
    saved = tmp_path / "saved.tar"
    ok(soute(tmp_path, "save", "-o", str(saved), "three:v1"))
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600  # docker's CLI makes it so


def test_the_layers_of_an_image_unpack_side_by_side(tmp_path: Path) -> None:
    """An image's missing snapshots are unpacked together (threads, one layer each): each
    gets its own layer, whiteouts as overlayfs reads them."""
    from soute.store.names import resolve

    ok(soute(tmp_path, "load", input=_docker_archive(THREE_LAYERS, "three:v1")))
    assert list((tmp_path / "snapshots").iterdir()) == []
    with Store(tmp_path) as store:
        first, second, third = store.snapshots(resolve(store, "three:v1").diff_ids)
    assert (first / "a").read_bytes() == b"1" and not (first / "b").exists()
    assert (second / "b").read_bytes() == b"2" and not (second / "a").exists()
    assert (third / "c").read_bytes() == b"3"
    whiteout = os.lstat(third / "a")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert "0 problem(s)" in ok(soute(tmp_path, "fsck"))


def test_a_layer_that_fails_to_unpack_leaves_the_others_made_and_nothing_half_made(
        tmp_path: Path) -> None:
    from soute.errors import SouteError
    from soute.store.names import resolve

    ok(soute(tmp_path, "load", input=_docker_archive(THREE_LAYERS, "three:v1")))
    with Store(tmp_path) as store:
        diff_ids = resolve(store, "three:v1").diff_ids
        # The middle layer's blob is damaged on disk: no tar header can be read from it.
        store.blobs.path(diff_ids[1]).write_bytes(b"not a tar" * 200)
        with pytest.raises(SouteError):
            store.snapshots(diff_ids)
        recorded = {chain for chain, _, _ in store.meta.snapshots()}
    made = {"sha256:" + p.name for p in (tmp_path / "snapshots").iterdir()}
    assert len(made) == 2 and made == recorded  # the layers below and above it
    assert list((tmp_path / "tmp").iterdir()) == []
    fsck = soute(tmp_path, "fsck")
    assert diff_ids[1] in fsck.stdout + fsck.stderr and "not recorded" not in fsck.stdout


def test_an_interrupted_collection_leaves_no_half_removed_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot leaves snapshots/ in one rename before its files go: a ^C in the middle of
    a prune never leaves a snapshot that a later run would use with files missing."""
    import soute.store.store as store_module
    from soute.store.names import resolve

    ok(soute(tmp_path, "load", input=_docker_archive(THREE_LAYERS, "three:v1")))
    with Store(tmp_path) as store:
        image = resolve(store, "three:v1")
        store.snapshots(image.diff_ids)
        store.meta.remove_image(image.id)
        real = store_module._rmtree

        def interrupted(path: str | Path, ignore_errors: bool = False) -> None:
            files = [p for p in Path(path).rglob("*") if p.is_file()]
            if files:  # one file removed, then the ^C
                files[0].unlink()
                raise KeyboardInterrupt
            real(path, ignore_errors=ignore_errors)

        monkeypatch.setattr(store_module, "_rmtree", interrupted)
        with pytest.raises(KeyboardInterrupt):
            store.collect_garbage()
        monkeypatch.setattr(store_module, "_rmtree", real)
    for snapshot in (tmp_path / "snapshots").iterdir():  # whole, or not there at all
        assert [p.name for p in snapshot.iterdir()], snapshot
    ok(soute(tmp_path, "load", input=_docker_archive(THREE_LAYERS, "three:v1")))
    with Store(tmp_path) as store:
        first, second, third = store.snapshots(resolve(store, "three:v1").diff_ids)
    assert (first / "a").read_bytes() == b"1" and (second / "b").read_bytes() == b"2"
    assert (third / "c").read_bytes() == b"3"
    ok(soute(tmp_path, "image", "prune", "-f"))  # what the ^C left goes with the next one
    assert "0 problem(s)" in ok(soute(tmp_path, "fsck"))
    assert not (tmp_path / "trash").exists() or not any((tmp_path / "trash").iterdir())


def test_oci_layout_follows_tags(tmp_path: Path) -> None:
    ok(soute(tmp_path, "import", "-", "debianish:bookworm", input=rootfs_tar(FILES)))
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["annotations"] == {
        "org.opencontainers.image.ref.name": "debianish:bookworm",
        "io.containerd.image.name": "docker.io/library/debianish:bookworm",
    }
    manifest = json.loads((tmp_path / "oci" / "blobs" / "sha256" / entry["digest"][7:])
                          .read_text())
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert json.loads((tmp_path / "oci" / "oci-layout").read_text()) == {
        "imageLayoutVersion": "1.0.0"}


def test_fsck_finds_corruption_and_changes_nothing(tmp_path: Path) -> None:
    ok(soute(tmp_path, "import", "-", "x", input=rootfs_tar(FILES)))
    assert "0 problem(s)" in ok(soute(tmp_path, "fsck"))
    store = Store(tmp_path)
    (image,) = store.images()
    layer = store.blobs.path(image.diff_ids[0])
    data = bytearray(layer.read_bytes())
    data[600] ^= 0xFF
    layer.write_bytes(bytes(data))
    p = soute(tmp_path, "fsck")
    assert p.returncode == 1
    assert f"blob {image.diff_ids[0]}: content does not match digest" in p.stdout
    assert layer.exists()  # never deletes silently
    layer.unlink()
    p = soute(tmp_path, "fsck", "--quick")
    assert p.returncode == 1 and "is missing" in p.stdout


def test_hostile_tarball_stores_nothing(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo("../escape")
        ti.size = 1
        t.addfile(ti, io.BytesIO(b"x"))
    store_root = tmp_path / "store"
    p = soute(store_root, "import", "-", "evil", input=buf.getvalue())
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "escape").exists()
    assert Store(store_root).images() == []
    assert list((store_root / "oci" / "blobs" / "sha256").iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("inspect", "nope"), "No such object: nope"),
        (("image", "inspect", "nope"), "No such image: nope"),
        (("history", "Bad:Name:x"), "invalid reference format"),
        (("tag", "nope", "x"), "No such image: nope"),
        (("rmi", "nope"), "No such image: nope"),
        (("import", "/does/not/exist", "x"), "/does/not/exist"),
        (("bootstrap", "alpine"), "cannot bootstrap 'alpine'"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    line = one_line_error(soute(tmp_path, *args))
    assert message in line


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    line = one_line_error(soute(tmp_path, "import", "-", "x", input=b"this is no tarball" * 50))
    assert "tar" in line.lower()


def test_sigkill_during_import_leaves_the_store_sound(tmp_path: Path) -> None:
    big = rootfs_tar({f"data/f{i}": os.urandom(64 * 1024) for i in range(400)})
    src = tmp_path / "big.tar"
    src.write_bytes(big)
    root = tmp_path / "store"
    ok(soute(root, "import", "-", "small", input=rootfs_tar(FILES)))
    for delay in (0.3, 0.6, 0.9):
        proc = subprocess.Popen(
            [sys.executable, "-m", "soute.cli.main", "--root", str(root), "import", str(src),
             "big"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        p = soute(root, "fsck")
        assert p.returncode == 0, p.stdout
    ok(soute(root, "import", str(src), "big"))
    assert "0 problem(s)" in ok(soute(root, "fsck"))
    names = [line.split()[0] for line in ok(soute(root, "images")).splitlines()[1:]]
    assert sorted(names) == ["big", "small"]
    ok(soute(root, "system", "prune", "-f"))
    assert list((root / "tmp").iterdir()) == []


def test_concurrent_imports_share_one_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    procs = [
        subprocess.Popen([sys.executable, "-m", "soute.cli.main", "--root", str(root), "import",
                          "-", f"img{i}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
        for i in range(4)
    ]
    for i, proc in enumerate(procs):
        files = {**FILES, "etc/n": str(i % 2).encode()}
        proc.communicate(rootfs_tar(files))
        assert proc.returncode == 0
    store = Store(root)
    assert len(store.images()) == 2  # two contents, four names
    assert sum(len(i.tags) for i in store.images()) == 4
    assert store.fsck().problems == []


def test_a_store_opens_while_another_writer_locks_its_new_database(tmp_path: Path) -> None:
    """Switching a new store's database to WAL meets the lock of another writer: SQLite
    then fails at once ("database is locked", no busy timeout), which one of four imports
    started together hit under load. The store waits for the lock instead."""
    import sqlite3
    import threading

    tmp_path.joinpath("store").mkdir()
    other = sqlite3.connect(tmp_path / "store" / "meta.db", isolation_level=None,
                            check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # a write lock on a database still in rollback mode
    threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
    store = Store(tmp_path / "store")
    try:
        assert store.meta.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.images() == []
    finally:
        store.close()
        other.close()


def _attributes(path: Path) -> str:
    return subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True,
                          check=True).stdout.split()[0]


def test_the_store_has_ext4_spread_the_trees_it_makes(tmp_path: Path) -> None:
    """Without a journal, ext4 walks past every inode freed in the last minutes to make a
    file beside them; a COPY after another program's deletion nearby took 6 s instead of
    1.8 s. The store's tmp/, where snapshots and upper dirs are made, carries chattr's
    +T, so that ext4 places each of them anew; a store made before this gets it too."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert kind == "ext2/ext3", f"the tests run on ext4 on this machine, not {kind}"
    root = tmp_path / "store"
    ok(soute(root, "images"))
    assert "T" in _attributes(root / "tmp")
    subprocess.run(["chattr", "-T", str(root / "tmp")], check=True)
    assert "T" not in _attributes(root / "tmp")
    ok(soute(root, "import", "-", "tiny", input=rootfs_tar(FILES)))
    assert "T" in _attributes(root / "tmp")
    assert "T" not in _attributes(root / "snapshots")  # trees are made in tmp/, then renamed


def test_a_new_tree_is_made_again_where_files_are_slow_to_make(tmp_path: Path) -> None:
    """Where a probe file takes longer than the limit (every file, with a limit of 0), the
    store makes the tree's directory up to four times and keeps the last; the others and
    the probes are gone. With the usual limit too, one empty directory is all it leaves."""
    store = Store(tmp_path / "store")
    try:
        tree = store.new_tree("upper-", slow_ns=0)
        assert [p.name for p in store.tmp.iterdir()] == [tree.name]
        assert tree.name.startswith("upper-") and list(tree.iterdir()) == []
        kept = store.new_tree("snap-")
        assert sorted(p.name for p in store.tmp.iterdir()) == sorted([tree.name, kept.name])
        assert list(kept.iterdir()) == []
    finally:
        store.close()


def test_busybox_bootstrap_is_reproducible(tmp_path: Path) -> None:
    a = ok(soute(tmp_path / "a", "bootstrap", "busybox")).strip()
    b = ok(soute(tmp_path / "b", "bootstrap", "busybox", "-t", "bb:1")).strip()
    assert a == b
    info = json.loads(ok(soute(tmp_path / "a", "inspect", "busybox")))[0]
    assert info["Config"]["Cmd"] == ["sh"]
    snapshot = next((tmp_path / "a" / "snapshots").iterdir())
    assert (snapshot / "bin" / "busybox").is_file()
    assert os.readlink(snapshot / "bin" / "sh") == "busybox"


def test_system_df(tmp_path: Path) -> None:
    ok(soute(tmp_path, "import", "-", "x", input=rootfs_tar(FILES)))
    lines = ok(soute(tmp_path, "system", "df")).splitlines()
    assert lines[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    # No container uses it: not active, all of it reclaimable (docker's meaning).
    assert lines[1].split()[:3] == ["Images", "1", "0"] and lines[1].endswith("(100%)")
    assert lines[4].split()[:4] == ["Build", "Cache", "0", "0"]


def test_skopeo_reads_the_store_layout_in_place(tmp_path: Path) -> None:
    ok(soute(tmp_path, "import", "-", "tiny:v1", input=rootfs_tar(FILES)))
    store = Store(tmp_path)
    (image,) = store.images()
    out = subprocess.run(["skopeo", "inspect", f"oci:{tmp_path}/oci:tiny:v1"],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    assert info["Digest"] == image.manifest
    assert info["Layers"] == image.diff_ids


def test_history_flags(tmp_path: Path) -> None:
    image_id = ok(soute(tmp_path, "import", "-", "x", "-m", "m" * 60,
                        input=rootfs_tar(FILES), env={"SOURCE_DATE_EPOCH": "1700000000"})).strip()
    store = Store(tmp_path)
    size = store.images()[0].size
    header, line = ok(soute(tmp_path, "history", "--no-trunc", "-H=false", "x")).splitlines()
    assert header.split()[:4] == ["IMAGE", "CREATED", "AT", "CREATED"]  # as docker's
    full = line.split()
    assert full[0] == image_id
    assert full[1] == "2023-11-14T22:13:20Z"
    assert str(size) in full
    rows = [json.loads(line) for line in ok(soute(tmp_path, "history", "--format", "json",
                                                  "x")).splitlines()]
    assert rows[0]["ID"] == image_id[7:19] and rows[0]["Comment"] == "m" * 60
    assert rows[0]["CreatedAt"] == "2023-11-14T22:13:20Z"
    assert ok(soute(tmp_path, "history", "-q", "x")).split() == [image_id[7:19]]


def test_a_store_from_a_newer_soute_is_refused(tmp_path: Path) -> None:
    import sqlite3

    from soute.errors import SouteError
    from soute.store.meta import SCHEMA_VERSION

    Store(tmp_path / "s").close()
    with sqlite3.connect(tmp_path / "s" / "meta.db") as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(SouteError, match="made by a newer soute"):
        Store(tmp_path / "s")
