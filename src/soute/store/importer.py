"""Root filesystems into one-layer images: ``soute import`` and ``soute bootstrap``.

The tarball is unpacked once, into what becomes the image's snapshot, and the layer is
written back from that tree in soute's canonical form. So a hostile archive is refused before
anything is stored, and the same tarball always gives the same DiffID and image ID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from soute.errors import SouteError
from soute.image.config import ContainerConfig, ImageConfig
from soute.image.digest import chain_ids
from soute.store.store import Image, Store

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise SouteError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds",
                         "unset it or give an integer") from None


def newest_mtime(root: Path) -> int:
    newest = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, int(os.lstat(os.path.join(dirpath, name)).st_mtime))
    return newest


def import_tree(
    store: Store,
    tree: Path,
    *,
    tags: Sequence[str] = (),
    config: ImageConfig | None = None,
    comment: str = "",
    created_by: str = "",
) -> Image:
    """Store ``tree`` (a directory inside ``store.tmp``) as a one-layer image.

    ``tree`` is consumed: it becomes the layer's snapshot. ``config`` gives the container
    config (CMD, ENV...); the rest is filled here. ``created`` is SOURCE_DATE_EPOCH when set,
    else the newest mtime in the tree, so that importing the same content twice gives the same
    image ID (docker uses the time of the import, which never repeats).
    """
    from soute.image.config import History
    from soute.image.platforms import Platform
    from soute.image.timestamp import Timestamp
    from soute.layer import write_layer

    with store.session():
        epoch = source_date_epoch()
        with store.blobs.writer() as w:
            layer = write_layer(tree, w, overlay=True, epoch=epoch)  # type: ignore[arg-type]
            diff_id = w.commit()
        if diff_id != layer.diff_id:
            raise SouteError(f"internal: layer digest mismatch {diff_id} != {layer.diff_id}")
        created = Timestamp.from_unix(epoch if epoch is not None else newest_mtime(tree))
        image_config = config or ImageConfig()
        image_config.set_platform(Platform.host())
        image_config.created = created
        image_config.history = [History(created=created, created_by=created_by, comment=comment)]
        image_config.rootfs.diff_ids = [diff_id]
        snapshot = store.snapshot_path(chain_ids([diff_id])[0])
        if snapshot.is_dir():
            shutil.rmtree(tree)
        else:
            os.chmod(tree, 0o755)
            os.rename(tree, snapshot)
        store.meta.add_snapshot(diff_id, None, diff_id)
        return store.add_image(image_config.to_json(), [(diff_id, layer.size)], tags=tags)


def import_tarball(
    store: Store,
    source: BinaryIO,
    *,
    tags: Sequence[str] = (),
    config: ImageConfig | None = None,
    comment: str = "",
) -> Image:
    """``soute import``: a root filesystem tar (plain, gzip, xz, bzip2 or zstd)."""
    from soute.layer import apply_layer, open_decompressed

    with store.session():
        tree = store.new_tree("import-")
        try:
            apply_layer(open_decompressed(source), tree, overlay=True)
            return import_tree(store, tree, tags=tags, config=config, comment=comment)
        finally:
            shutil.rmtree(tree, ignore_errors=True)


# ---------------------------------------------------------------------------- bootstrap


def bootstrap_debian(
    store: Store,
    suite: str,
    *,
    variant: str = "minbase",
    include: Sequence[str] = (),
    mirror: str | None = None,
    tags: Sequence[str] = (),
) -> Image:
    """A Debian base image made by mmdebstrap from Debian's package registry."""
    if shutil.which("mmdebstrap") is None:
        raise SouteError("mmdebstrap is not installed", "apt-get install mmdebstrap")
    with store.session():
        fd, name = tempfile.mkstemp(prefix="debian-", suffix=".tar", dir=store.tmp)
        os.close(fd)
        try:
            cmd = ["mmdebstrap", "--quiet", f"--variant={variant}", "--format=tar"]
            if include:
                cmd.append("--include=" + ",".join(include))
            cmd += [suite, name]
            if mirror:
                cmd.append(mirror)
            result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True)
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise SouteError(f"mmdebstrap failed for {suite}: {last}",
                                 "check the suite name and that Debian's mirror is reachable")
            config = ImageConfig(config=ContainerConfig(env=[f"PATH={DEFAULT_PATH}"],
                                                        cmd=["bash"]))
            with open(name, "rb") as f:
                return import_tarball(store, f, tags=tags, config=config,
                                      comment=f"mmdebstrap --variant={variant} {suite}")
        finally:
            os.unlink(name)


def _busybox_binary(work: Path) -> Path:
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "busybox-static"],
                               capture_output=True, text=True)
    if "install ok installed" in installed.stdout and Path("/bin/busybox").is_file():
        return Path("/bin/busybox")
    # Not installed here (or not the static build): fetch Debian's busybox-static package.
    subprocess.run(["apt-get", "download", "busybox-static"], cwd=work, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    debs = sorted(work.glob("busybox-static_*.deb"))
    if not debs:
        raise SouteError("could not download busybox-static", "apt-get update, then retry")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "pkg")], check=True)
    return work / "pkg" / "bin" / "busybox"


def bootstrap_busybox(store: Store, *, tags: Sequence[str] = ()) -> Image:
    """A tiny base from Debian's busybox-static: one binary, its applet links, /etc basics."""
    with store.session():
        work = Path(tempfile.mkdtemp(prefix="busybox-", dir=store.tmp))
        try:
            binary = _busybox_binary(work)
            tree = work / "rootfs"
            for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "proc",
                      "sys", "dev", "var", "home"):
                (tree / d).mkdir(parents=True, exist_ok=True)
            os.chmod(tree / "tmp", 0o1777)
            os.chmod(tree / "root", 0o700)
            shutil.copy(binary, tree / "bin" / "busybox")
            os.chmod(tree / "bin" / "busybox", 0o755)
            applets = subprocess.run([str(binary), "--list-full"], capture_output=True,
                                     text=True, check=True).stdout.split()
            for applet in applets:
                link = tree / applet
                if link.name == "busybox" or link.exists() or link.is_symlink():
                    continue
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(os.path.relpath(tree / "bin" / "busybox", link.parent))
            (tree / "etc" / "passwd").write_text(
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n")
            (tree / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
            # Pin every mtime so that the image is the same wherever it is made.
            epoch = source_date_epoch()
            stamp = epoch if epoch is not None else int(binary.stat().st_mtime)
            for dirpath, dirnames, filenames in os.walk(tree):
                for n in (*dirnames, *filenames):
                    os.utime(os.path.join(dirpath, n), (stamp, stamp), follow_symlinks=False)
            os.utime(tree, (stamp, stamp))
            config = ImageConfig(config=ContainerConfig(env=[f"PATH={DEFAULT_PATH}"],
                                                        cmd=["sh"]))
            version = subprocess.run([str(binary)], capture_output=True, text=True).stdout
            first = version.splitlines()[0] if version else "busybox"
            return import_tree(store, tree, tags=tags, config=config,
                               comment=f"bootstrap from Debian busybox-static ({first})")
        finally:
            shutil.rmtree(work, ignore_errors=True)
