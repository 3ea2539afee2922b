"""Interoperability: GNU tar, Python's tarfile and umoci (Go's archive/tar) against our layers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from soute.layer import compress_stream, open_decompressed
from test_layer_support import (
    CAPABILITY,
    Spec,
    apply_bytes,
    build_tree,
    layer_bytes,
    needs_root,
    snapshot,
)

pytestmark = needs_root

T = 1_500_000_000 * 10**9

TREE = [
    Spec("dir", b"etc", mode=0o755, mtime_ns=T),
    Spec(
        "file",
        b"etc/ping",
        content=b"\x7fELF",
        mode=0o4755,
        uid=5,
        gid=7,
        mtime_ns=T,
        xattrs={"user.k": b"v", "trusted.t": b"\x00\xff", "security.capability": CAPABILITY},
    ),
    Spec("hardlink", b"etc/ping2", target=b"etc/ping"),
    Spec("file", b"etc/empty", mtime_ns=T),
    Spec("symlink", b"etc/abs", target=b"/etc/ping", mtime_ns=T),
    Spec("symlink", b"dangling", target=b"../nowhere", mtime_ns=T),
    Spec("fifo", b"fifo", mode=0o640, mtime_ns=T),
    Spec("chr", b"null", rdev=(1, 3), mode=0o666, mtime_ns=T),
    Spec("blk", b"loop0", rdev=(7, 0), mode=0o660, gid=6, mtime_ns=T),
    Spec("dir", b"tmp", mode=0o1777, mtime_ns=T),
    Spec("dir", b"srv", mode=0o2750, uid=33, gid=33, mtime_ns=T),
    Spec("file", b"srv/\xff\xfe-bytes", content=b"nonutf8", mtime_ns=T),
    Spec("file", "srv/é漢".encode(), content=b"utf8", mtime_ns=T),
    Spec("dir", b"l" * 90, mtime_ns=T),
    Spec("file", b"l" * 90 + b"/" + b"n" * 120, content=b"long" * 300, mtime_ns=T),
    Spec("file", b"big-ids", uid=3_000_000, gid=2_100_000, content=b"ids", mtime_ns=T),
]


def _tree(root: Path, specs: list[Spec] = TREE) -> Path:
    root.mkdir()
    build_tree(root, specs)
    return root


def _run(*args: str | Path, stdin: bytes | None = None) -> bytes:
    result = subprocess.run([str(a) for a in args], input=stdin, capture_output=True)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


# --- GNU tar --------------------------------------------------------------------------------


def test_gnu_tar_extracts_our_layer(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    _run(
        "tar",
        "--xattrs",
        "--xattrs-include=*",
        "--numeric-owner",
        "-xpf",
        "-",
        "-C",
        out,
        stdin=layer_bytes(src),
    )
    assert snapshot(out) == snapshot(src)
    listing = _run("tar", "-tf", "-", stdin=layer_bytes(src)).decode(errors="surrogateescape")
    assert listing.splitlines()[:2] == ["big-ids", "dangling"]  # no "./", relative names


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar", "v7"])
def test_we_apply_gnu_tar_archives(tmp_path: Path, fmt: str) -> None:
    specs = TREE
    if fmt in ("ustar", "v7"):
        # No room for long names, big ids or xattrs in these formats.
        specs = [
            replace(s, xattrs={})
            for s in TREE
            if len(s.rel) < 100 and s.uid < 2**21 and s.gid < 2**21
        ]
    if fmt == "v7":
        specs = [s for s in specs if s.kind not in ("chr", "blk", "fifo")]
    src = _tree(tmp_path / "src", specs)
    archive = _run(
        "tar",
        f"--format={fmt}",
        "--xattrs",
        "--xattrs-include=*",
        "--numeric-owner",
        "-cf",
        "-",
        "-C",
        src,
        ".",
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    apply_bytes(archive, dest)  # "./"-prefixed names, root entry "./"
    assert snapshot(dest) == snapshot(src)


@pytest.mark.parametrize(
    ("fmt", "version"), [("gnu", None), ("posix", "0.0"), ("posix", "0.1"), ("posix", "1.0")]
)
def test_we_apply_gnu_sparse_files(tmp_path: Path, fmt: str, version: str | None) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        for offset in (0, 1 << 20, 5 << 20):
            f.seek(offset)
            f.write(os.urandom(3000))
        f.truncate(9 << 20)  # ends in a hole
    (src / "after").write_bytes(b"next entry")
    args = ["tar", f"--format={fmt}", "--sparse", "-cf", "-", "-C", str(src), "sparse", "after"]
    if version:
        args.insert(3, f"--sparse-version={version}")
    archive = _run(*args)
    assert len(archive) < 1 << 20  # really stored sparse
    dest = tmp_path / "dest"
    dest.mkdir()
    apply_bytes(archive, dest)
    assert (dest / "sparse").read_bytes() == (src / "sparse").read_bytes()
    assert (dest / "after").read_bytes() == b"next entry"
    assert os.stat(dest / "sparse").st_blocks * 512 < 1 << 20  # holes stay holes


# --- Python's tarfile -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_we_apply_tarfile_archives(tmp_path: Path, fmt: int) -> None:
    specs = [
        replace(s, xattrs={}) for s in TREE if not s.rel.startswith(b"l" * 90) and s.uid < 2**21
    ]
    src = _tree(tmp_path / "src", specs)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for path in sorted(src.rglob("*")):
            tf.add(path, arcname=str(path.relative_to(src)), recursive=False)
    dest = tmp_path / "dest"
    dest.mkdir()
    apply_bytes(out.getvalue(), dest)
    # tarfile adds directories before it sets their times; compare files only for mtimes.
    assert snapshot(dest, dir_mtimes=False) == snapshot(src, dir_mtimes=False)


# --- umoci (Go's archive/tar) ---------------------------------------------------------------

umoci = shutil.which("umoci")
def needs_umoci(test):  # type: ignore[no-untyped-def]
    """Marks the tests that run umoci (installed by scripts/setup; missing, they fail)."""
    return test


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layout(layout: Path, layers: list[bytes]) -> None:
    """An OCI layout holding one image, tag "t", with these uncompressed layers."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descriptors, diff_ids = [], []
    for tar in layers:
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        gz = io.BytesIO()
        compress_stream(io.BytesIO(tar), gz, "gzip")
        descriptors.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                **_blob(layout, gz.getvalue()),
            }
        )
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_blob(layout, json.dumps(config).encode()),
        },
        "layers": descriptors,
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **_blob(layout, json.dumps(manifest).encode()),
                "annotations": {"org.opencontainers.image.ref.name": "t"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))


@needs_umoci
def test_umoci_unpacks_our_layers(tmp_path: Path) -> None:
    base = _tree(tmp_path / "base")
    # The second layer: an overlay upper dir with a whiteout, an opaque dir and a new file.
    upper = tmp_path / "upper"
    upper.mkdir()
    build_tree(
        upper,
        [
            Spec("dir", b"etc", mode=0o755, mtime_ns=T),
            Spec("chr", b"etc/empty", rdev=(0, 0), mode=0),
            Spec("file", b"etc/new", content=b"new", mtime_ns=T),
            Spec("dir", b"srv", mode=0o2750, uid=33, gid=33, mtime_ns=T),
            Spec("file", b"srv/only", content=b"only", mtime_ns=T),
        ],
    )
    os.setxattr(upper / "srv", "trusted.overlay.opaque", b"y")
    layers = [layer_bytes(base), layer_bytes(upper, overlay=True)]
    _layout(tmp_path / "layout", layers)
    _run("umoci", "unpack", "--image", f"{tmp_path / 'layout'}:t", tmp_path / "bundle")
    rootfs = tmp_path / "bundle" / "rootfs"

    ours = tmp_path / "ours"
    ours.mkdir()
    for layer in layers:
        apply_bytes(layer, ours)
    assert snapshot(rootfs) == snapshot(ours)
    assert not (rootfs / "etc" / "empty").exists()
    assert os.listdir(rootfs / "srv") == ["only"]


@needs_umoci
def test_we_apply_umoci_layers(tmp_path: Path) -> None:
    layout, bundle = tmp_path / "layout", tmp_path / "bundle"
    _run("umoci", "init", "--layout", layout)
    _run("umoci", "new", "--image", f"{layout}:t")
    _run("umoci", "unpack", "--image", f"{layout}:t", bundle)
    rootfs = bundle / "rootfs"
    _run("cp", "-a", "--preserve=all", f"{_tree(tmp_path / 'src')}/.", rootfs)
    _run("umoci", "repack", "--image", f"{layout}:t", bundle)
    # A second layer with deletions: umoci writes the whiteouts.
    bundle = tmp_path / "bundle2"
    _run("umoci", "unpack", "--image", f"{layout}:t", bundle)
    rootfs = bundle / "rootfs"
    (rootfs / "etc" / "empty").unlink()
    shutil.rmtree(rootfs / "srv")
    (rootfs / "srv").mkdir()
    (rootfs / "srv" / "fresh").write_bytes(b"fresh")
    os.chmod(rootfs / "tmp", 0o755)
    for path in (rootfs / "etc", rootfs / "srv", rootfs / "srv" / "fresh"):
        os.utime(path, ns=(T, T))  # umoci rounds mtimes to the nearest second; we truncate
    _run("umoci", "repack", "--image", f"{layout}:t", bundle)

    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_bytes())
    ours = tmp_path / "ours"
    ours.mkdir()
    assert len(manifest["layers"]) == 2
    for descriptor in manifest["layers"]:
        blob = layout / "blobs" / "sha256" / descriptor["digest"].split(":")[1]
        with open(blob, "rb") as f:
            data = open_decompressed(f).read()
        assert gzip.decompress(blob.read_bytes()) == data
        apply_bytes(data, ours)
    assert snapshot(ours) == snapshot(rootfs)
