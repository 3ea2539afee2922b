"""The build context (.dockerignore applied) and BuildKit's content hash of COPY sources."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest

from soute.build import contenthash
from soute.build.contenthash import EMPTY_DIGEST, NotFoundError, go_match, split_wildcards
from soute.build.context import BuildContext, SourceTree
from soute.errors import SouteError

ROOT = os.geteuid() == 0


def write(root: Path, files: dict[str, str | None]) -> None:
    """Files (``None``: a directory) under ``root``; parents 0755, files 0644."""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            path.mkdir(exist_ok=True)
        else:
            path.write_text(data)
            os.chmod(path, 0o644)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def header(
    mode: int, size: int, typeflag: str, uid: int = 0, gid: int = 0, link: str = ""
) -> bytes:
    """BuildKit's tarsum v1 header, written out by hand from tarsum.go's field list."""
    return (
        f"namemode{mode}uid{uid}gid{gid}size{size}typeflag{typeflag}linkname{link}"
        f"unamegnamedevmajor0devminor0"
    ).encode()


# --------------------------------------------------------------------------------------
# Exact digests: the format, pinned


def test_file_digest_format(tmp_path: Path) -> None:
    write(tmp_path, {"hello": "hello"})
    ctx = BuildContext(tmp_path)
    assert ctx.checksum("hello") == sha(header(0o644, 5, "0") + b"hello")
    assert ctx.checksum("/hello") == ctx.checksum("./x/../hello")


def test_symlink_and_empty_file_digests(tmp_path: Path) -> None:
    write(tmp_path, {"empty": ""})
    os.symlink("empty", tmp_path / "link")
    ctx = BuildContext(tmp_path)
    assert ctx.checksum("empty") == sha(header(0o644, 0, "0"))
    assert ctx.checksum("link") == sha(header(0o777, 0, "2", link="empty"))
    assert ctx.checksum("link", follow_links=True) == ctx.checksum("empty")


def test_directory_digest_format(tmp_path: Path) -> None:
    write(tmp_path, {"d/b": "B", "d/a": "A"})
    os.chmod(tmp_path / "d", 0o750)
    ctx = BuildContext(tmp_path)
    dir_header = sha(header(0o750, 0, "5"))
    a = sha(header(0o644, 1, "0") + b"A")
    b = sha(header(0o644, 1, "0") + b"B")
    want = sha(b"\0" + dir_header.encode() + b"\0a" + a.encode() + b"\0b" + b.encode())
    assert ctx.checksum("d") == want
    # the context's root has no header of its own (the digest of no bytes)
    root = sha(b"\0" + EMPTY_DIGEST.encode() + b"\0d" + want.encode())
    assert ctx.checksum("/") == root == ctx.checksum(".") == ctx.checksum("")


def test_stage_root_has_a_header_and_owners(tmp_path: Path) -> None:
    write(tmp_path, {"f": "x"})
    os.chmod(tmp_path, 0o700)
    tree = SourceTree(tmp_path)
    st = os.stat(tmp_path / "f")
    assert tree.checksum("f") == sha(header(0o644, 1, "0", st.st_uid, st.st_gid) + b"x")
    root_header = sha(header(0o700, 0, "5", os.getuid(), os.getgid()))
    want = sha(b"\0" + root_header.encode() + b"\0f" + tree.checksum("f").encode())
    assert tree.checksum("/") == want


def test_xattrs_in_digest(tmp_path: Path) -> None:
    write(tmp_path, {"f": "x"})
    ctx = BuildContext(tmp_path)
    plain = ctx.checksum("f")
    try:
        os.setxattr(tmp_path / "f", "user.b", b"2")
        os.setxattr(tmp_path / "f", "user.a", b"1")
    except OSError:
        pytest.skip("no user xattrs here")
    want = sha(header(0o644, 1, "0") + b"user.a1user.b2" + b"x")
    assert BuildContext(tmp_path).checksum("f") == want != plain


def test_wildcard_digest_format(tmp_path: Path) -> None:
    write(tmp_path, {"foo1": "1", "foo2": "2", "bar": "b", "sub/x": "x"})
    ctx = BuildContext(tmp_path)
    f1, f2 = ctx.checksum("foo1"), ctx.checksum("foo2")
    assert ctx.checksum("foo*", wildcard=True) == sha(
        b"\0foo1" + f1.encode() + b"\0foo2" + f2.encode()
    )
    # one match named like the pattern's base is that match's digest
    assert ctx.checksum("foo[1]", wildcard=True) == sha(b"\0foo1" + f1.encode())
    assert ctx.checksum("fo?1", wildcard=True) != f1
    assert ctx.checksum("nomatch*", wildcard=True) == EMPTY_DIGEST
    # a matched directory contributes its header and each entry below it
    sub_header = sha(header(0o755, 0, "5"))
    x = ctx.checksum("sub/x")
    assert ctx.checksum("su*", wildcard=True) == sha(
        b"\0sub" + sub_header.encode() + b"\0sub\0x" + x.encode()
    )
    # without glob characters "wildcard" changes nothing (as BuildKit's selectors)
    assert ctx.checksum("foo1", wildcard=True) == f1


# --------------------------------------------------------------------------------------
# What counts and what does not


def digests(tmp_path: Path, tree_class: type[SourceTree] = BuildContext) -> tuple[str, str, str]:
    tree = tree_class(tmp_path)
    return tree.checksum("/"), tree.checksum("d"), tree.checksum("d/f")


def test_mtime_does_not_count(tmp_path: Path) -> None:
    write(tmp_path, {"d/f": "data", "d/e/g": "g"})
    before = digests(tmp_path)
    for path in (tmp_path / "d/f", tmp_path / "d", tmp_path / "d/e"):
        os.utime(path, (1, 1))
    assert digests(tmp_path) == before


@pytest.mark.parametrize(
    "change",
    [
        lambda p: os.chmod(p / "d/f", 0o600),
        lambda p: os.chmod(p / "d/f", 0o4644),
        lambda p: os.chmod(p / "d/e", 0o700),
        lambda p: (p / "d/f").write_text("dat4"),
        lambda p: (p / "d/f").write_text("data!"),
        lambda p: (p / "d/e/new").write_text(""),
        lambda p: os.rename(p / "d/e/g", p / "d/e/h"),
        lambda p: (p / "d/e/g").unlink(),
        lambda p: os.symlink("f", p / "d/l"),
    ],
)
def test_what_counts(tmp_path: Path, change: object) -> None:
    write(tmp_path, {"d/f": "data", "d/e/g": "g"})
    before = digests(tmp_path)
    change(tmp_path)  # type: ignore[operator]
    after = digests(tmp_path)
    assert after[0] != before[0] and after[1] != before[1]


@pytest.mark.skipif(not ROOT, reason="needs root to chown")
def test_owner_counts_for_stages_not_for_the_context(tmp_path: Path) -> None:
    write(tmp_path, {"d/f": "data"})
    ctx_before, stage_before = digests(tmp_path), digests(tmp_path, SourceTree)
    os.chown(tmp_path / "d/f", 1000, 1000)
    # The client resets owners to 0:0 before sending the context (moby/moby#32816 is about
    # stages and images, where owners count).
    assert digests(tmp_path) == ctx_before
    assert digests(tmp_path, SourceTree)[2] != stage_before[2]


def test_excluded_and_ignored_files_do_not_count(tmp_path: Path) -> None:
    write(tmp_path, {"d/f": "data", "d/notes.md": "x", "secret": "s"})
    ctx = BuildContext(tmp_path, ignore_patterns=["secret"])
    root, excluded = ctx.checksum("/"), ctx.checksum("d", exclude_patterns=["*.md"])
    (tmp_path / "secret").write_text("changed")
    (tmp_path / "d/notes.md").write_text("changed")
    ctx = BuildContext(tmp_path, ignore_patterns=["secret"])
    assert ctx.checksum("d", exclude_patterns=["*.md"]) == excluded
    assert ctx.checksum("/") != root  # notes.md is not ignored by .dockerignore
    (tmp_path / "secret").write_text("again")
    assert BuildContext(tmp_path, ignore_patterns=["secret"]).checksum("/") == ctx.checksum("/")


def test_wildcard_cache_semantics(tmp_path: Path) -> None:
    """testCopyWildcardCache: foo* changes with foo2, not with bar."""
    write(tmp_path, {"foo1": "foo1-data", "foo2": "foo2-data", "bar": "bar-data"})
    before = BuildContext(tmp_path).checksum("foo*", wildcard=True)
    (tmp_path / "bar").write_text("bar-data-mod")
    assert BuildContext(tmp_path).checksum("foo*", wildcard=True) == before
    (tmp_path / "foo2").write_text("foo2-data-mod")
    assert BuildContext(tmp_path).checksum("foo*", wildcard=True) != before


def test_symlinks_in_paths(tmp_path: Path) -> None:
    write(tmp_path, {"real/f": "x", "real/sub/g": "g"})
    os.symlink("real", tmp_path / "link")
    os.symlink("/real/sub", tmp_path / "abs")
    os.symlink("../../real", tmp_path / "real/sub/up")
    ctx = BuildContext(tmp_path)
    assert ctx.checksum("link/f") == ctx.checksum("real/f")
    assert ctx.checksum("abs/g") == ctx.checksum("real/sub/g")  # absolute: from the root
    assert ctx.checksum("real/sub/up/f") == ctx.checksum("real/f")  # ".." stops at the root
    assert ctx.checksum("link", follow_links=True) == ctx.checksum("real")
    assert ctx.checksum("link") != ctx.checksum("real")
    # a matched link is followed at the top only
    real = ctx.checksum("real").encode()
    assert ctx.checksum("lin*", wildcard=True, follow_links=True) == sha(b"\0link" + real)


def test_not_found(tmp_path: Path) -> None:
    write(tmp_path, {"f": "x", "ignored": "y"})
    os.symlink("nowhere", tmp_path / "dangling")
    ctx = BuildContext(tmp_path, ignore_patterns=["ignored"])
    for path, shown in [("missing", "/missing"), ("f/x", "/f/x"), ("ignored", "/ignored")]:
        with pytest.raises(NotFoundError) as info:
            ctx.checksum(path)
        assert str(info.value) == (
            f'failed to compute cache key: failed to calculate checksum of ref context: "{shown}":'
            " not found"
        )
    with pytest.raises(NotFoundError):
        ctx.checksum("dangling", follow_links=True)
    assert ctx.checksum("dangling") == sha(header(0o777, 0, "2", link="nowhere"))
    with pytest.raises(NotFoundError, match='"/d/x": not found'):
        ctx.checksum("/", include_patterns=["d/x"], required_paths=["/d/x"])


def test_include_patterns_as_parents(tmp_path: Path) -> None:
    write(tmp_path, {"a/b/c": "c", "a/b/d": "d", "a/e": "e"})
    ctx = BuildContext(tmp_path)
    only_c = ctx.checksum("/", include_patterns=["a/b/c"])
    (tmp_path / "a/e").write_text("changed")
    (tmp_path / "a/b/d").write_text("changed")
    assert BuildContext(tmp_path).checksum("/", include_patterns=["a/b/c"]) == only_c
    (tmp_path / "a/b/c").write_text("changed")
    assert BuildContext(tmp_path).checksum("/", include_patterns=["a/b/c"]) != only_c


def test_too_many_links(tmp_path: Path) -> None:
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(SouteError, match="too many links"):
        BuildContext(tmp_path).checksum("a/x")


def test_go_match_and_split() -> None:
    assert go_match("*.go", "a.go") and not go_match("*.go", "d/a.go")
    assert go_match("/app/[[]xyz]/file.txt", "/app/[xyz]/file.txt")
    assert go_match("a[^b]c", "a/c")  # a class may match "/" in Go
    assert go_match("n\\?pe", "n?pe") and not go_match("n\\?pe", "nope")
    assert go_match("[a-c]x", "bx") and not go_match("[!a]x", "bx")
    for bad in ("[", "a[", "\\", "[]a]", "[-a]", "[a-]"):
        with pytest.raises(SouteError, match="syntax error in pattern"):
            go_match(bad, "x")
    assert split_wildcards("/a/b*/c") == ("/a", "b*/c")
    assert split_wildcards("/*.go") == ("/", "*.go")
    assert split_wildcards("/a/b\\*/c") == ("/a/b\\*/c", "")


# --------------------------------------------------------------------------------------
# .dockerignore, with BuildKit's walk


def test_dockerignore_walk(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "Dockerfile": "FROM scratch",
            "keep/a": "a",
            "drop/a": "a",
            "drop/sub/keep.txt": "k",
            "drop/sub/other": "o",
            "logs/x.log": "l",
            "node_modules/m/index.js": "js",
        },
    )
    os.chmod(tmp_path / "drop", 0o700)
    (tmp_path / ".dockerignore").write_text("drop\n!drop/sub/keep.txt\n*/*.log\nnode_modules\n")
    ctx = BuildContext(tmp_path)
    assert ctx.ignore_patterns == ["drop", "!drop/sub/keep.txt", "*/*.log", "node_modules"]
    assert list(ctx.walk()) == [
        ".dockerignore",
        "Dockerfile",
        "drop",
        "drop/sub",
        "drop/sub/keep.txt",
        "keep",
        "keep/a",
        "logs",
    ]
    assert stat.S_IMODE(ctx.lstat("drop").st_mode) == 0o700  # kept with its own metadata
    assert ctx.is_ignored("drop/a") and not ctx.is_ignored("keep/a")
    assert ctx.resolve("node_modules/m") is None



@pytest.mark.parametrize(
    ("files", "patterns", "want"),
    [
        # An exception with a wildcard makes today's fsutil (filter.go) walk excluded
        # directories, so "!**/oneline.txt" brings volume/data/oneline.txt back. BuildKit
        # 0.8 (docker 20.10) skipped "volume" because no exception starts with "volume/".
        (["volume/data/oneline.txt"], ["volume", "!**/oneline.txt"],
         ["volume", "volume/data", "volume/data/oneline.txt"]),
        (["subdir/sub1.txt", "subdir/sub2.txt"], ["subdir", "!*/sub1*"],
         ["subdir", "subdir/sub1.txt"]),
        (["test1.txt", "test2.txt", "subdir/sub1.txt", "subdir/sub2.txt"],
         ["*", "test*", "!test2*", "subdir", "!*/sub1*"],
         ["subdir", "subdir/sub1.txt", "test2.txt"]),
        # An excluded directory is present only when something below it is: BuildKit 0.8
        # also sent "folder" itself, empty, because an exception starts with "folder/".
        (["folder/file"], ["**", "!folder/subfolder/file"], []),
    ],
)
def test_dockerignore_exceptions_as_today(
    tmp_path: Path, files: list[str], patterns: list[str], want: list[str]
) -> None:
    write(tmp_path, dict.fromkeys(files, "x"))
    assert list(BuildContext(tmp_path, ignore_patterns=patterns).walk()) == want

def test_dockerfile_own_ignore_file(tmp_path: Path) -> None:
    """testDockerignoreOverride: <Dockerfile>.dockerignore wins."""
    write(
        tmp_path,
        {
            "foo": "x",
            "bar": "y",
            "Dockerfile2": "",
            ".dockerignore": "foo\n",
            "Dockerfile2.dockerignore": "bar\n",
        },
    )
    assert BuildContext(tmp_path).lstat("foo") is None
    ctx2 = BuildContext(tmp_path, dockerfile=tmp_path / "Dockerfile2")
    assert ctx2.lstat("bar") is None and ctx2.lstat("foo") is not None


def test_invalid_dockerignore(tmp_path: Path) -> None:
    """testDockerignoreInvalid: a lone "!" is an error."""
    write(tmp_path, {".dockerignore": "!\n", "f": ""})
    with pytest.raises(SouteError, match="illegal exclusion pattern"):
        BuildContext(tmp_path)


# --------------------------------------------------------------------------------------
# Tar contexts


def test_from_tar(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in {
            "Dockerfile": b"FROM scratch\n",
            ".dockerignore": b"*.tmp\n",
            "src/main.c": b"int main;",
            "x.tmp": b"t",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o640
            tf.addfile(info, io.BytesIO(data))
    ctx = BuildContext.from_tar(io.BytesIO(gzip.compress(buf.getvalue())), tmp_path)
    assert list(ctx.walk()) == [".dockerignore", "Dockerfile", "src", "src/main.c"]
    assert ctx.checksum("src/main.c") == sha(header(0o640, 9, "0") + b"int main;")
    with pytest.raises(SouteError):
        BuildContext.from_tar(io.BytesIO(b"not a tar" * 100), tmp_path / "bad")


# --------------------------------------------------------------------------------------
# The stat cache


class Counter:
    """Counts the regular files whose bytes the hasher reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[bytes] = []
        real = contenthash.entry_digest

        def counting(path: bytes, st: os.stat_result, *, reset_owner: bool = False) -> str:
            if stat.S_ISREG(st.st_mode):
                self.paths.append(path)
            return real(path, st, reset_owner=reset_owner)

        monkeypatch.setattr(contenthash, "entry_digest", counting)


def old_files(root: Path, files: dict[str, str]) -> None:
    write(root, files)
    time.sleep(0.12)  # older than the racy window: their digests may be cached


def test_stat_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "cache" / "contenthash.db"
    ctx_dir = tmp_path / "ctx"
    old_files(ctx_dir, {f"d{i % 3}/f{i}": f"content {i}" for i in range(30)})
    count = Counter(monkeypatch)
    with BuildContext(ctx_dir, stat_cache=db) as ctx:
        cold = ctx.checksum("/")
    assert len(count.paths) == 30 and db.exists()

    count.paths.clear()
    with BuildContext(ctx_dir, stat_cache=db) as ctx:
        assert ctx.checksum("/") == cold
    assert count.paths == []  # warm: a walk of lstat calls

    # An edit is caught even when size and mtime are put back: ctime moves on every write.
    target = ctx_dir / "d1/f1"
    st = os.stat(target)
    target.write_text("content X")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    time.sleep(0.12)
    count.paths.clear()
    with BuildContext(ctx_dir, stat_cache=db) as ctx:
        edited = ctx.checksum("/")
    assert edited != cold and count.paths == [os.fsencode(target)]

    # touched but identical: re-read, same digest
    os.utime(ctx_dir / "d2/f2")
    time.sleep(0.12)
    count.paths.clear()
    with BuildContext(ctx_dir, stat_cache=db) as ctx:
        assert ctx.checksum("/") == edited
    assert count.paths == [os.fsencode(ctx_dir / "d2/f2")]

    # the same digests without the cache
    count.paths.clear()
    assert BuildContext(ctx_dir).checksum("/") == edited
    assert len(count.paths) == 30


def test_stat_cache_racy_entries_are_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "c.db"
    write(tmp_path / "ctx", {"fresh": "just written"})
    count = Counter(monkeypatch)
    with BuildContext(tmp_path / "ctx", stat_cache=db) as ctx:
        first = ctx.checksum("fresh")
    # Rewritten within the same clock tick, a file could keep its ctime: a digest taken
    # that close to the last write is not cached.
    with BuildContext(tmp_path / "ctx", stat_cache=db) as ctx:
        assert ctx.checksum("fresh") == first
    assert len(count.paths) == 2


def test_stat_cache_forgets_removed_files(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "c.db"
    old_files(tmp_path / "ctx", {"a": "1", "b": "2"})
    with BuildContext(tmp_path / "ctx", stat_cache=db) as ctx:
        ctx.checksum("/")
    (tmp_path / "ctx/b").unlink()
    with BuildContext(tmp_path / "ctx", stat_cache=db) as ctx:
        ctx.checksum("/")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM contenthash_v1").fetchone() == (1,)


def test_stat_cache_separates_contexts_and_stages(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    old_files(tmp_path / "t", {"f": "x"})
    with BuildContext(tmp_path / "t", stat_cache=db) as ctx:
        local = ctx.checksum("f")
    with SourceTree(tmp_path / "t", stat_cache=db) as tree:
        assert tree.checksum("f") == SourceTree(tmp_path / "t").checksum("f")
    assert local == BuildContext(tmp_path / "t").checksum("f")


def test_unusable_stat_cache_is_skipped(tmp_path: Path) -> None:
    write(tmp_path / "ctx", {"f": "x"})
    (tmp_path / "db").mkdir()  # a directory where the database should be
    with BuildContext(tmp_path / "ctx", stat_cache=tmp_path / "db") as ctx:
        assert ctx.checksum("f") == BuildContext(tmp_path / "ctx").checksum("f")
