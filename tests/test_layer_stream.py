"""LayerStream: a layer written while its tree is made, told which entries are final.

Whatever it is told, it either writes exactly what ``write_layer`` writes of the finished
tree, or gives up (None) so that the caller writes it that way.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from soute.layer import LayerStream, write_layer


def _tree(root: Path) -> None:
    (root / "app" / "sub").mkdir(parents=True)
    (root / "app" / "a.txt").write_bytes(b"a" * 700)
    (root / "app" / "sub" / "b").write_bytes(b"")
    (root / "app" / "z-link").symlink_to("a.txt")
    os.chmod(root / "app" / "sub", 0o2750)
    for path, mtime in [("app/sub/b", 10), ("app/sub", 20), ("app/a.txt", 30), ("app", 40)]:
        os.utime(root / path, ns=(1, mtime * 10**9), follow_symlinks=False)


def _expected(root: Path, epoch: int | None = None) -> bytes:
    out = io.BytesIO()
    write_layer(root, out, epoch=epoch)
    return out.getvalue()


def _announce(stream: LayerStream, root: Path, order: list[str],
              mtimes: dict[str, int] | None = None) -> None:
    for rel in order:
        st = os.lstat(root / rel)
        if (root / rel).is_dir() and not (root / rel).is_symlink():
            mtime = (mtimes or {}).get(rel, st.st_mtime_ns)
            stream.directory(rel.encode(), st.st_mode & 0o7777, st.st_uid, st.st_gid, mtime)
        else:
            stream.entry(rel.encode())


ORDER = ["app", "app/a.txt", "app/sub", "app/sub/b", "app/z-link"]


@pytest.mark.parametrize("epoch", [None, 25])
def test_announced_in_order_it_writes_what_write_layer_writes(
    tmp_path: Path, epoch: int | None
) -> None:
    _tree(tmp_path)
    out = io.BytesIO()
    stream = LayerStream(tmp_path, out, epoch=epoch)
    _announce(stream, tmp_path, ORDER)
    layer = stream.finish()
    assert layer is not None
    assert out.getvalue() == _expected(tmp_path, epoch)
    assert layer.size == len(out.getvalue())


def test_a_directory_announced_before_its_final_mtime(tmp_path: Path) -> None:
    """The directory's time is what it will be once its children are made."""
    _tree(tmp_path)
    out = io.BytesIO()
    stream = LayerStream(tmp_path, out)
    os.utime(tmp_path / "app", ns=(1, 5 * 10**9))  # as it is while the copy runs
    _announce(stream, tmp_path, ORDER, mtimes={"app": 40 * 10**9})
    os.utime(tmp_path / "app", ns=(1, 40 * 10**9))  # as the copy leaves it
    assert stream.finish() is not None
    assert out.getvalue() == _expected(tmp_path)


@pytest.mark.parametrize("change", ["mtime", "mode", "xattr", "extra file", "extra dir",
                                    "dir to symlink"])
def test_a_wrong_announcement_gives_up(tmp_path: Path, change: str) -> None:
    _tree(tmp_path)
    stream = LayerStream(tmp_path, io.BytesIO())
    _announce(stream, tmp_path, ORDER)
    if change == "mtime":
        os.utime(tmp_path / "app/sub", ns=(1, 99 * 10**9))
    elif change == "mode":
        os.chmod(tmp_path / "app", 0o700)
    elif change == "xattr":
        os.setxattr(tmp_path / "app/sub", "user.note", b"x")
    elif change == "dir to symlink":
        elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"  # outside the tree
        elsewhere.mkdir()
        (tmp_path / "app/sub/b").rename(elsewhere / "b")
        (tmp_path / "app/sub").rmdir()
        (tmp_path / "app/sub").symlink_to(elsewhere)
    elif change == "extra file":
        (tmp_path / "app/sub/late").write_bytes(b"")
    else:
        (tmp_path / "other").mkdir()
    assert stream.finish() is None


@pytest.mark.parametrize("order", [
    ["app", "app/sub", "app/sub/b", "app/a.txt", "app/z-link"],  # a.txt sorts before sub
    ["app/a.txt"],  # its directory was never announced
    ["app", "app/a.txt", "app/a.txt"],  # twice
])
def test_announcements_out_of_archive_order_give_up(tmp_path: Path, order: list[str]) -> None:
    _tree(tmp_path)
    stream = LayerStream(tmp_path, io.BytesIO())
    _announce(stream, tmp_path, order)
    assert stream.failure is not None
    assert stream.finish() is None


def test_hardlinks_and_directories_as_entries_give_up(tmp_path: Path) -> None:
    _tree(tmp_path)
    os.link(tmp_path / "app/a.txt", tmp_path / "app/sub/c")
    stream = LayerStream(tmp_path, io.BytesIO())
    _announce(stream, tmp_path, ["app"])
    stream.entry(b"app/a.txt")
    assert stream.failure is not None
    stream = LayerStream(tmp_path, io.BytesIO())
    _announce(stream, tmp_path, ["app"])
    stream.entry(b"app/sub")
    assert stream.finish() is None


@pytest.mark.parametrize("quiet", [False, True])
def test_a_lost_wake_up_does_not_hang_the_layer_writer(quiet: bool) -> None:
    """A ^C landing inside Queue.put can lose the wake-up of the writing thread: closing
    still ends (the thread polls), with every byte written unless the layer is abandoned."""
    import io
    import threading
    import time

    from soute.layer.write import _HashingSink

    out = io.BytesIO()
    sink = _HashingSink(out)
    sink.write_large(b"x" * 10)
    time.sleep(0.05)  # the thread now waits on an empty queue
    sink._queue.not_empty.notify = lambda n=1: None  # type: ignore[method-assign]
    done = threading.Event()
    threading.Thread(target=lambda: (sink.close(quiet=quiet), done.set()), daemon=True).start()
    assert done.wait(3)
    assert out.getvalue() == b"x" * 10
