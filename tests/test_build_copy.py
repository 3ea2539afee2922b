"""COPY and ADD on real files, with BuildKit's semantics.

Cases come from BuildKit's integration tests (``frontend/dockerfile/dockerfile_*_test.go``),
its Dockerfile reference, fsutil's copy code, and buildah's conformance contexts in
``shared/conformance/buildah``. Every step runs twice: straight into a full tree, and into
an empty upper dir over the image, whose layer (``write_layer``) is then applied onto the
image — so the upper dir must be a correct overlayfs layer on its own.
"""

from __future__ import annotations

import bz2
import collections
import gzip
import io
import lzma
import os
import re
import shutil
import socket
import stat
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import CONFORMANCE
from soute.build.context import BuildContext, SourceTree
from soute.build.copy import (
    InlineSource,
    Source,
    copy_into,
    dest_path,
    is_archive,
    parse_chmod,
    resolve_chown,
    source_checksum,
)
from soute.errors import SouteError

BUILDAH = CONFORMANCE / "buildah"
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (chown, devices)")


# --------------------------------------------------------------------------------------
# Trees


@dataclass(frozen=True)
class F:
    """A regular file (in a spec: to create; in an expectation: to find)."""

    data: str | bytes | None = None  # None: any content
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime: int | None = None


@dataclass(frozen=True)
class D:
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime: int | None = None


@dataclass(frozen=True)
class L:
    target: str


ABSENT = object()
Spec = Mapping[str, "F | D | L | str | bytes"]


def build(root: Path, spec: Spec) -> None:
    """Create ``spec`` under ``root`` (parents 0755), metadata included."""
    root.mkdir(parents=True, exist_ok=True)
    dirs: list[tuple[Path, D]] = []
    for name, item in sorted(spec.items()):
        path = root / name.strip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(item, (str, bytes)):
            item = F(item)
        if isinstance(item, L):
            os.symlink(item.target, path)
        elif isinstance(item, D):
            path.mkdir(exist_ok=True)
            dirs.append((path, item))
        else:
            data = item.data.encode() if isinstance(item.data, str) else item.data
            path.write_bytes(data or b"")
            os.chmod(path, 0o644 if item.mode is None else item.mode)
            _meta(path, item)
    for path, item in sorted(dirs, key=lambda d: -len(d[0].parts)):
        os.chmod(path, 0o755 if item.mode is None else item.mode)
        _meta(path, item)


def _meta(path: Path, item: F | D) -> None:
    if item.uid is not None or item.gid is not None:
        os.lchown(path, item.uid or 0, item.gid or 0)
    if item.mtime is not None:
        os.utime(path, (item.mtime, item.mtime))


def check(root: Path, expect: Mapping[str, object]) -> None:
    for name, want in expect.items():
        path = root / name.strip("/")
        if want is ABSENT:
            assert not os.path.lexists(path), f"{name} should not exist"
            continue
        assert os.path.lexists(path), f"{name} is missing"
        st = os.lstat(path)
        if isinstance(want, L):
            assert stat.S_ISLNK(st.st_mode), f"{name} is not a symlink"
            assert os.readlink(path) == want.target
            continue
        if isinstance(want, (str, bytes)):
            want = F(want)
        if isinstance(want, F):
            assert stat.S_ISREG(st.st_mode), f"{name} is not a regular file"
            data = want.data.encode() if isinstance(want.data, str) else want.data
            if data is not None:
                assert path.read_bytes() == data, name
        elif isinstance(want, D):
            assert stat.S_ISDIR(st.st_mode), f"{name} is not a directory"
        assert isinstance(want, (F, D))
        if want.mode is not None:
            assert stat.S_IMODE(st.st_mode) == want.mode, f"{name}: {oct(st.st_mode)}"
        if want.uid is not None:
            assert st.st_uid == want.uid, f"{name}: uid {st.st_uid}"
        if want.gid is not None:
            assert st.st_gid == want.gid, f"{name}: gid {st.st_gid}"
        if want.mtime is not None:
            assert st.st_mtime == want.mtime, f"{name}: mtime {st.st_mtime}"


# --------------------------------------------------------------------------------------
# Running steps


@dataclass
class Step:
    """One COPY/ADD: sources are context paths, ``("stage", path)`` for ``--from``, or
    ``InlineSource``."""

    sources: Sequence[object]
    dest: str
    workdir: str = "/"
    chown: str | None = None
    chmod: str | None = None
    parents: bool = False
    excludes: Sequence[str] = ()
    unpack: bool = False
    kwargs: dict[str, object] = field(default_factory=dict)


class Builder:
    """Applies steps to an image root, directly or as layers (upper dir -> tar -> apply)."""

    def __init__(
        self,
        tmp: Path,
        mode: str,
        context: Spec,
        image: Spec,
        stage: Spec | None,
        ignore: Sequence[str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.mode = mode
        build(tmp / "ctx", context)
        build(tmp / "root", image)
        self.root = tmp / "root"
        self.context = BuildContext(tmp / "ctx", ignore_patterns=ignore)
        self.stage = None
        if stage is not None:
            build(tmp / "stage", stage)
            self.stage = SourceTree(tmp / "stage", name="stage")
        self.uppers: list[Path] = []

    def run(self, step: Step) -> list[str]:
        sources: list[Source | InlineSource] = []
        for s in step.sources:
            if isinstance(s, (InlineSource, Source)):
                sources.append(s)
            elif isinstance(s, tuple):
                assert self.stage is not None
                sources.append(Source(s[1], self.stage))
            else:
                sources.append(Source(str(s), self.context))
        if self.mode == "direct":
            write = self.root
        else:
            write = self.tmp / f"upper{len(self.uppers)}"
            write.mkdir()
            self.uppers.append(write)
        result = copy_into(
            sources,
            step.dest,
            target_root=self.root,
            write_root=write,
            workdir=step.workdir,
            chown=step.chown,
            chmod=step.chmod,
            parents=step.parents,
            excludes=step.excludes,
            unpack=step.unpack,
            **step.kwargs,  # type: ignore[arg-type]
        )
        if self.mode == "layer":
            apply_upper(write, self.root)
        return result.paths


def apply_upper(upper: Path, root: Path) -> None:
    from soute.layer import apply_layer, write_layer

    buf = io.BytesIO()
    write_layer(upper, buf, overlay=True)
    buf.seek(0)
    apply_layer(buf, root, overlay=False)


MODES = ["direct", "layer"]


@dataclass
class Case:
    name: str
    context: Spec
    steps: Sequence[Step]
    expect: Mapping[str, object] = field(default_factory=dict)
    image: Spec = field(default_factory=dict)
    stage: Spec | None = None
    error: str | None = None  # a regexp the last step's error must match
    ignore: Sequence[str] | None = None


def run_case(tmp_path: Path, mode: str, case: Case) -> Builder:
    builder = Builder(tmp_path, mode, case.context, case.image, case.stage, case.ignore)
    steps = list(case.steps)
    last = steps.pop() if case.error else None
    for step in steps:
        builder.run(step)
    if last is not None:
        with pytest.raises(SouteError) as info:
            builder.run(last)
        assert re.search(case.error or "", str(info.value)), str(info.value)
    check(builder.root, case.expect)
    return builder


# --------------------------------------------------------------------------------------
# BuildKit's integration tests, as tables

WILDCARD_CONTEXT: Spec = {
    "foo.go": "foo-contents",
    "bar.go": "bar-contents",
    "sub/dir1/dir2/foo": "foo-contents",
}

CASES = [
    # testCopyWildcards
    Case(
        "wildcards",
        WILDCARD_CONTEXT,
        [
            Step(["*.go"], "/gofiles/"),
            Step(["f*.go"], "foo2.go"),
            Step(["sub/*"], "/subdest/"),
            Step(["sub/*/dir2/foo"], "/subdest2/"),
            Step(["sub/*/dir2/foo"], "/subdest3/bar"),
            Step(["."], "all/"),
            Step(["sub/dir1/"], "subdest4"),
            Step(["sub/dir1/."], "subdest5"),
            Step(["sub/dir1"], "subdest6"),
        ],
        {
            "gofiles/foo.go": "foo-contents",
            "gofiles/bar.go": "bar-contents",
            "foo2.go": "foo-contents",
            "subdest/dir2/foo": "foo-contents",
            "subdest/dir1": ABSENT,
            "subdest2/foo": "foo-contents",
            "subdest3/bar": "foo-contents",
            "all/foo.go": "foo-contents",
            "all/sub/dir1/dir2/foo": "foo-contents",
            "subdest4/dir2/foo": "foo-contents",
            "subdest5/dir2/foo": "foo-contents",
            "subdest6/dir2/foo": "foo-contents",
            "subdest6/dir1": ABSENT,
        },
    ),
    # testCopyRelative: relative destinations follow WORKDIR
    Case(
        "relative",
        {"foo": "hello"},
        [
            Step(["foo"], "./", workdir="/test1/test2"),
            Step(["foo"], "./bar/baz", workdir="/test1/test2", unpack=True),
            Step(["foo"], "./bar/baz2", workdir="/test1/test2"),
            Step(["foo"], "./", workdir="/test1"),
            Step(["foo"], "/test3/", workdir="/test1"),
            Step(["."], ".", workdir="/test4"),
            Step(["foo"], "../", workdir="/test5/test6"),
        ],
        {
            "test1/test2/foo": "hello",
            "test1/test2/bar/baz": "hello",
            "test1/test2/bar/baz2": "hello",
            "test1/foo": "hello",
            "test3/foo": "hello",
            "test4/foo": "hello",
            "test5/foo": "hello",
        },
    ),
    # testEmptyDestDir, testCopyLinkEmptyDestDir, testPreserveDestDirSlash, testCopyLinkDotDestDir
    Case(
        "empty and dot destinations",
        {"testfile": "contents0"},
        [
            Step(["testfile"], ""),
            Step(["testfile"], "", workdir="/var/www"),
            Step(["testfile"], ".", workdir="/srv"),
            Step(["testfile"], "/sample/"),
        ],
        {
            "testfile": "contents0",
            "var/www/testfile": "contents0",
            "srv/testfile": "contents0",
            "sample/testfile": "contents0",
        },
    ),
    # testCopyOverrideFiles: the same copies twice
    Case(
        "override",
        {"sub/dir1/dir2/foo": "foo-contents", "files/foo.go": "foo.go-contents"},
        [
            Step(["sub"], "sub"),
            Step(["sub"], "sub"),
            Step(["files/foo.go"], "dest/foo.go"),
            Step(["files/foo.go"], "dest/foo.go"),
            Step(["files"], "dest"),
        ],
        {"sub/dir1/dir2/foo": "foo-contents", "dest/foo.go": "foo.go-contents"},
    ),
    # testCopyThroughSymlinkContext
    Case(
        "through a context symlink",
        {"link": L("sub"), "sub/foo": "contents"},
        [Step(["link/foo"], ".")],
        {"foo": "contents"},
    ),
    # testCopyThroughSymlinkMultiStage
    Case(
        "through stage symlinks",
        {},
        [Step([("stage", "/sub/foo")], "."), Step([("stage", "/sub2/foo")], "bar")],
        {"foo": "data", "bar": "data"},
        stage={"out/sub/foo": "data", "sub": L("/out/sub"), "sub2": L("out/sub")},
    ),
    # testCopyFollowAllSymlinks (#1197): inside a directory a link stays a link
    Case(
        "follow all symlinks",
        {"bar": "bar-contents", "foo/sub": L("../bar")},
        [Step(["foo"], "/"), Step(["foo/sub"], "bar")],
        {"sub": L("../bar"), "bar": "bar-contents"},
    ),
    # testCopySymlinks: a source that is a link is copied as what it points to
    Case(
        "symlink sources",
        {
            "bar": "bar-contents",
            "foo": L("bar"),
            "sub/lfile": "lfile-contents",
            "sub/l0": L("subfile"),
            "sub/subfile": "subfile-contents",
            "sub/l1": L("second"),
            "sub/second": L("baz"),
            "sub/baz": "baz-contents",
        },
        [Step(["foo"], "/"), Step(["sub/l*"], "alllinks/")],
        {
            "foo": "bar-contents",
            "alllinks/l0": "subfile-contents",
            "alllinks/lfile": "lfile-contents",
            "alllinks/l1": "baz-contents",
            "alllinks/subfile": ABSENT,
        },
    ),
    # testEmptyWildcard: a pattern without matches is not an error
    Case(
        "empty wildcard",
        {"foo": "contents0"},
        [Step(["foo", "nomatch*"], "/"), Step(["nomatch*"], "/nothing/")],
        {"foo": "contents0", "nothing": ABSENT},  # no match: dest is not even created
    ),
    # Several sources and a destination without "/": BuildKit copies them one after the
    # other (the legacy builder's "must be a directory and end with a /" is not an error).
    Case(
        "several sources, no slash",
        {"a": "A", "b": "B", "d1/x": "X", "d2/y": "Y"},
        [Step(["a", "b"], "/multi"), Step(["d1", "d2"], "/dirs"), Step(["d1", "a"], "/mixed")],
        {"multi": "B", "dirs/x": "X", "dirs/y": "Y", "mixed/x": "X", "mixed/a": "A"},
    ),
    # Source paths are cleaned: leading "/", "../", trailing "/" do not matter; "" is "."
    Case(
        "source paths",
        {"dir/f": "F", "top": "T"},
        [
            Step(["/dir"], "/a/"),
            Step(["../../dir/"], "/b"),
            Step([""], "/c/"),
            Step(["dir/../top"], "/d"),
        ],
        {"a/f": "F", "b/f": "F", "c/dir/f": "F", "c/top": "T", "d": "T"},
    ),
    # Destinations through symlinks of the image (continuity's RootPath)
    Case(
        "destination symlinks",
        {"f": "new", "dir/x": "X"},
        [
            Step(["f"], "/bin/"),  # /bin -> usr/bin
            Step(["f"], "/flink"),  # a link to a file: the file is replaced, the link stays
            Step(["f"], "/dangling"),  # a dangling link: written where it points
            Step(["dir"], "/dirlink"),  # a link to a directory: merged into it
            Step(["f"], "/etc/../f2"),
        ],
        {
            "usr/bin/f": "new",
            "bin": L("usr/bin"),
            "flink": L("target"),
            "target": "new",
            "dangling": L("/nowhere/file"),
            "nowhere/file": "new",
            "realdir/x": "X",
            "realdir/old": "old",
            "f2": "new",
        },
        image={
            "usr/bin/sh": "sh",
            "bin": L("usr/bin"),
            "flink": L("target"),
            "target": "old",
            "dangling": L("/nowhere/file"),
            "realdir/old": "old",
            "dirlink": L("realdir"),
            "etc": D(),
        },
    ),
    # Directory contents merge into existing directories; files replace files and links.
    Case(
        "merge",
        {"tree/etc/new": "n", "tree/etc/conf": "c2", "tree/lnk": "now a file"},
        [Step(["tree/"], "/")],
        {"etc/new": "n", "etc/conf": "c2", "etc/keep": "k", "lnk": "now a file"},
        image={"etc/conf": "c1", "etc/keep": "k", "lnk": L("etc/keep")},
    ),
    # fsutil: a directory never replaces a non-directory ...
    Case(
        "dir over file",
        {"tree/x/y": "y"},
        [Step(["tree"], "/")],
        error=r"cannot copy to non-directory: /x$",
        image={"x": "file"},
    ),
    # ... not even a symlink to a directory, inside a copied tree (usrmerge's /lib)
    Case(
        "dir over symlink",
        {"rootfs/lib/mod": "m"},
        [Step(["rootfs/"], "/")],
        error=r"cannot copy to non-directory: /lib$",
        image={"usr/lib/x": "x", "lib": L("usr/lib")},
    ),
    # ... and a file never replaces a directory
    Case(
        "file over dir",
        {"tree/etc": "file"},
        [Step(["tree"], "/")],
        error=r"cannot replace to directory /etc with file",
        image={"etc/passwd": "root"},
    ),
    Case(
        "dest parent is a file",
        {"f": "x"},
        [Step(["f"], "/file/sub/")],
        error=r"mkdir /file: not a directory",
        image={"file": "x"},
    ),
    # a missing source is BuildKit's cache-key error
    Case(
        "missing source",
        {"f": "x"},
        [Step(["nope/file"], "/")],
        error=r'failed to calculate checksum of ref context: "/nope/file": not found',
    ),
    Case(
        "missing wildcard base",
        {"f": "x"},
        [Step(["nope/*.txt"], "/")],
        error=r"lstat /nope: no such file or directory",
    ),
    Case(
        "bad pattern",
        {"f": "x"},
        [Step(["f[a"], "/")],
        error=r"syntax error in pattern",
    ),
    # testDockerignore: ignored files are not in the context
    Case(
        "dockerignore",
        {
            "Dockerfile": "FROM scratch",
            "foo": "foo-contents",
            "bar": "bar-contents",
            "baz": "baz-contents",
            "bay": "bay-contents",
            ".dockerignore": "x",
        },
        [Step(["."], ".")],
        {
            "foo": "foo-contents",
            "bay": "bay-contents",
            "bar": ABSENT,
            "baz": ABSENT,
            "Dockerfile": ABSENT,
            ".dockerignore": ABSENT,
        },
        ignore=["ba*", "Dockerfile", "!bay", ".dockerignore"],
    ),
    Case(
        "ignored source",
        {"secret/key": "k", "pub": "p"},
        [Step(["pub"], "/"), Step(["secret/key"], "/")],
        {"pub": "p"},
        error=r'"/secret/key": not found',
        ignore=["secret"],
    ),
    # an ignored directory comes back (with its own metadata) when an exception names
    # something below it
    Case(
        "ignored dir with exception",
        {"d/keep": "k", "d/drop": "x", "e/x": "x"},
        [Step(["."], "/out/")],
        {"out/d": D(mode=0o750), "out/d/keep": "k", "out/d/drop": ABSENT, "out/e": ABSENT},
        ignore=["d", "e", "!d/keep"],
    ),
]
# the directory's own mode must be kept when it comes back through an exception
CASES[-1].context = {**CASES[-1].context, "d": D(mode=0o750)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_copy_cases(tmp_path: Path, mode: str, case: Case) -> None:
    run_case(tmp_path, mode, case)


# --------------------------------------------------------------------------------------
# Ownership and modes


@needs_root
@pytest.mark.parametrize("mode", MODES)
def test_copy_chown_existing_dir(tmp_path: Path, mode: str) -> None:
    """testCopyChownExistingDir: new entries keep their owners, existing ones are left."""
    stage: Spec = {
        "file": F("", uid=100, gid=200),
        "dir": D(uid=100, gid=200),
        "dir/subdir": D(uid=101, gid=201),
        "dir/subdir/nestedfile": F("", uid=102, gid=202),
    }
    image: Spec = {
        "existingdir": D(uid=500, gid=600),
        "existingdir/existingsubdir": D(uid=501, gid=601),
        "existingdir/existingfile": F("", uid=501, gid=601),
    }
    case = Case(
        "chown-existing",
        {},
        [
            Step([("stage", "/file")], "."),
            Step([("stage", "/dir")], "/dir"),
            Step([("stage", "/dir/.")], "/existingdir"),
        ],
        {
            "file": F(uid=100, gid=200),
            "dir": D(uid=0, gid=0, mode=0o755),
            "dir/subdir": D(uid=101, gid=201),
            "dir/subdir/nestedfile": F(uid=102, gid=202),
            "existingdir": D(uid=500, gid=600),
            "existingdir/existingsubdir": D(uid=501, gid=601),
            "existingdir/existingfile": F(uid=501, gid=601),
            "existingdir/subdir": D(uid=101, gid=201),
            "existingdir/subdir/nestedfile": F(uid=102, gid=202),
        },
        image=image,
        stage=stage,
    )
    run_case(tmp_path / "plain", mode, case)
    chowned = Case(
        "chowned",
        {},
        [Step(s.sources, s.dest, chown="300:400") for s in case.steps],
        {
            "file": F(uid=300, gid=400),
            "dir": D(uid=300, gid=400),
            "dir/subdir": D(uid=300, gid=400),
            "dir/subdir/nestedfile": F(uid=300, gid=400),
            "existingdir": D(uid=500, gid=600),
            "existingdir/existingsubdir": D(uid=501, gid=601),
            "existingdir/existingfile": F(uid=501, gid=601),
            "existingdir/subdir": D(uid=300, gid=400),
            "existingdir/subdir/nestedfile": F(uid=300, gid=400),
        },
        image=image,
        stage=stage,
    )
    run_case(tmp_path / "chowned", mode, chowned)


@needs_root
@pytest.mark.parametrize("mode", MODES)
def test_context_files_are_root_owned(tmp_path: Path, mode: str) -> None:
    case = Case(
        "owners",
        {"f": F("x", uid=1234, gid=99), "d": D(uid=7, gid=7), "d/g": F("y", uid=5, gid=5)},
        [Step(["f", "d"], "/out/")],
        {"out/f": F(uid=0, gid=0), "out/g": F(uid=0, gid=0)},
    )
    run_case(tmp_path, mode, case)


PASSWD = """root:x:0:0:root:/root:/bin/bash
bin:x:1:1:bin:/bin:/sbin/nologin
daemon:x:2:2:daemon:/sbin:/sbin/nologin
adm:x:3:4:adm:/var/adm:/sbin/nologin
lp:x:4:7:lp:/var/spool/lpd:/sbin/nologin
nobody:x:65534:65534:nobody:/:/sbin/nologin
"""
GROUP = """root:x:0:
bin:x:1:
daemon:x:2:
adm:x:4:
# a comment
lp:x:7:
mail:x:12:
nobody:x:65534:
"""


@needs_root
@pytest.mark.parametrize("mode", MODES)
def test_copy_chown_names(tmp_path: Path, mode: str) -> None:
    """testCopyChown and buildah's copychown case (centos:7's passwd and group)."""
    script = (BUILDAH / "copychown" / "script").read_text()
    context = {"script": script, "script2": "two", "bar/sub": ""}
    want = {
        "1:2": (1, 2),
        "1:adm": (1, 4),
        "1": (1, 1),
        "lp:adm": (4, 4),
        "2:mail": (2, 12),
        "2": (2, 2),
        "bin": (1, 1),
        "lp": (4, 7),
        "daemon": (2, 2),
        "root": (0, 0),
        "root:lp": (0, 7),
        ":mail": (0, 12),
        "lp:": (4, 0),
    }
    steps = [Step(["script"], f"/usr/bin/script.{spec}", chown=spec) for spec in want]
    steps.append(Step(["script", "script2"], "/usr/local/bin/", chown="3"))
    steps.append(Step(["bar"], "/baz", chown="1000:nobody"))
    expect: dict[str, object] = {
        f"usr/bin/script.{spec}": F(script, uid=u, gid=g) for spec, (u, g) in want.items()
    }
    expect["usr/local/bin/script"] = F(script, uid=3, gid=3)
    expect["usr/local/bin/script2"] = F("two", uid=3, gid=3)
    expect["baz/sub"] = F(uid=1000, gid=65534)
    expect["baz"] = D(uid=1000, gid=65534)
    image = {"etc/passwd": PASSWD, "etc/group": GROUP, "usr/bin": D()}
    run_case(tmp_path, mode, Case("chown", context, steps, expect, image=image))


def test_resolve_chown_unknown_names_are_errors(tmp_path: Path) -> None:
    # The issue asks for an error where BuildKit silently gives root (docs/differences.md).
    build(tmp_path, {"etc/passwd": "lp:x:4:7::/:/bin/sh\n", "etc/group": "adm:x:4:\n"})
    with pytest.raises(SouteError, match="unknown user 'nosuchuser'"):
        resolve_chown("nosuchuser", tmp_path)
    with pytest.raises(SouteError, match="unknown group 'nosuchgroup'"):
        resolve_chown("lp:nosuchgroup", tmp_path)
    assert resolve_chown("lp:adm", tmp_path) == (4, 4)


def test_resolve_chown_without_passwd(tmp_path: Path) -> None:
    tmp_path.joinpath("etc").mkdir()
    with pytest.raises(SouteError, match="unknown user 'app'"):
        resolve_chown("app:staff", tmp_path)
    assert resolve_chown("1000", tmp_path) == (1000, 1000)
    assert resolve_chown("+5:-1", tmp_path) == (5, 0xFFFFFFFF)
    tmp_path.joinpath("etc/passwd").mkdir()
    with pytest.raises(SouteError, match="is not a regular file"):
        resolve_chown("app", tmp_path)


def test_resolve_chown_through_symlinks(tmp_path: Path) -> None:
    build(
        tmp_path,
        {"usr/share/passwd": "app:x:42:43::/:/bin/sh\n", "etc/passwd": L("../usr/share/passwd")},
    )
    assert resolve_chown("app", tmp_path) == (42, 43)


@pytest.mark.parametrize("mode", MODES)
def test_copy_chmod(tmp_path: Path, mode: str) -> None:
    """testCopyChmod: octal modes, and the parents a copy creates take them too."""
    case = Case(
        "chmod",
        {"foo": F("foo-contents", mode=0o600), "bar": F("bar-contents", mode=0o700)},
        [
            Step(["foo"], "/", chmod="0644"),
            Step(["bar"], "/baz", chmod="777"),
            Step(["foo"], "/foobis", chmod="0"),
            Step(["foo"], "/parent/foo", chmod="777"),
            Step(["foo"], "/parent/sub/foo", chmod="770"),
            Step(["foo"], "/footer", chmod="755"),
            Step(["foo"], "/suid", chmod="4755"),
        ],
        {
            "foo": F(mode=0o644),
            "baz": F(mode=0o777),
            "foobis": F(mode=0o000),
            "parent": D(mode=0o777),
            "parent/sub": D(mode=0o770),
            "footer": F(mode=0o755),
            "suid": F(mode=0o4755),
        },
    )
    run_case(tmp_path, mode, case)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "64a",
            "invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777",
        ),
        (
            "10000",
            "invalid chmod parameter: '10000'. it should be octal string and between 0 and 07777",
        ),
        ("8", "invalid chmod parameter: '8'. it should be octal string"),
        ("u+q", "invalid syntax"),
        ("u+x,", "invalid syntax"),
        ("+755", "invalid syntax"),
        ("x", "invalid syntax"),
    ],
)
def test_invalid_chmod(value: str, message: str) -> None:
    with pytest.raises(SouteError) as info:
        parse_chmod(value)
    assert str(info.value).startswith(message)


SYMBOLIC = [
    "go-w",
    "u=rw,g=r,o=r",
    "a+X",
    "u+rw,g+r,o-x,o+w",
    "+x",
    "-w",
    "a=r",
    "u=g",
    "o=u",
    "g+s",
    "u+s",
    "+t",
    "a-x,u+x",
    "ug=rwx,o=",
    "u+x-w",
    "=",
]


@pytest.mark.parametrize("start", [0o666, 0o754, 0o100])
@pytest.mark.parametrize("kind", ["file", "dir"])
@pytest.mark.parametrize("text", SYMBOLIC)
def test_symbolic_chmod_matches_chmod(tmp_path: Path, text: str, kind: str, start: int) -> None:
    """Symbolic --chmod against chmod(1) with umask 0 (BuildKit parses with umask 0)."""
    if kind == "dir" and text in ("u=g", "o=u", "a=r", "ug=rwx,o=", "="):
        start &= 0o777  # GNU keeps a directory's set-id bits on "="; BSD setmode clears them
    path = tmp_path / "x"
    if kind == "dir":
        path.mkdir()
    else:
        path.touch()
    os.chmod(path, start)
    subprocess.run(["sh", "-c", f'umask 0; chmod "{text}" x'], cwd=tmp_path, check=True)
    want = stat.S_IMODE(os.stat(path).st_mode)
    assert parse_chmod(text).apply(start, is_dir=kind == "dir") == want


@pytest.mark.parametrize("mode", MODES)
def test_chmod_non_octal(tmp_path: Path, mode: str) -> None:
    """testChmodNonOctal: symbolic modes apply to each entry's own mode."""
    stage: Spec = {"input/file": F(mode=0o666), "input/dirs/d/d": D(mode=0o124)}
    steps = [
        Step([("stage", "/input/file")], "/f1", chmod="go-w"),
        Step([("stage", "/input/file")], "/f2", chmod="u=rw,g=r,o=r"),
        Step([("stage", "/input/file")], "/f3", chmod="a+X"),
        Step([("stage", "/input/dirs/d")], "/", chmod="u+rw,g+r,o-x,o+w"),
        Step([("stage", "/input/dirs/d")], "/x/", chmod="a+X"),
    ]
    expect = {
        "f1": F(mode=0o644),
        "f2": F(mode=0o644),
        "f3": F(mode=0o666),
        "d": D(mode=0o766),
        "x": D(mode=0o755),  # created for dest: not the source's, not chmod'ed
        "x/d": D(mode=0o135),
    }
    run_case(tmp_path, mode, Case("chmod-symbolic", {}, steps, expect, stage=stage))


@pytest.mark.parametrize("mode", MODES)
def test_modes_and_mtimes_are_kept(tmp_path: Path, mode: str) -> None:
    case = Case(
        "metadata",
        {
            "src": D(mode=0o750, mtime=1_000_000_000),
            "src/run.sh": F("#!/bin/sh", mode=0o4755, mtime=1_485_449_953),
            "src/sub": D(mode=0o711, mtime=1_200_000_000),
            "src/sub/f": F("f", mode=0o600, mtime=1_300_000_000),
        },
        [Step(["src"], "/new"), Step(["src"], "/etc")],
        {
            # a dest directory the copy creates: 0755 root, with the source's mtime
            "new": D(mode=0o755, mtime=1_000_000_000),
            "new/run.sh": F("#!/bin/sh", mode=0o4755, mtime=1_485_449_953),
            "new/sub": D(mode=0o711, mtime=1_200_000_000),
            "new/sub/f": F("f", mode=0o600, mtime=1_300_000_000),
            # an existing one keeps its mode, and takes the source's mtime
            "etc": D(mode=0o700, mtime=1_000_000_000),
            "etc/sub": D(mode=0o711),
        },
        image={"etc": D(mode=0o700, mtime=5)},
    )
    run_case(tmp_path, mode, case)


@pytest.mark.parametrize("mode", MODES)
def test_copy_socket_becomes_file(tmp_path: Path, mode: str) -> None:
    """testCopySocket: a socket in the context is copied as an empty regular file."""
    ctx = tmp_path / "sock"
    ctx.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(ctx / "socket.sock"))
        builder = Builder(tmp_path / "b", mode, {}, {}, None)
        builder.run(Step([Source("/", SourceTree(ctx))], "/"))  # type: ignore[list-item]
    finally:
        sock.close()
    st = os.lstat(builder.root / "socket.sock")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0


def test_hardlinks_are_kept(tmp_path: Path) -> None:
    build(tmp_path / "ctx", {"d/a": "same", "d/other": "o"})
    os.link(tmp_path / "ctx/d/a", tmp_path / "ctx/d/b")
    root = tmp_path / "root"
    root.mkdir()
    copy_into(
        [Source("d", BuildContext(tmp_path / "ctx"))], "/x/", target_root=root, write_root=root
    )
    assert os.lstat(root / "x/a").st_ino == os.lstat(root / "x/b").st_ino
    assert os.lstat(root / "x/a").st_ino != os.lstat(tmp_path / "ctx/d/a").st_ino


def test_fifo(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    os.mkfifo(tmp_path / "ctx/pipe", 0o640)
    root = tmp_path / "root"
    root.mkdir()
    copy_into(
        [Source("pipe", BuildContext(tmp_path / "ctx"))], "/", target_root=root, write_root=root
    )
    st = os.lstat(root / "pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640


def test_xattrs_are_copied(tmp_path: Path) -> None:
    build(tmp_path / "ctx", {"f": "x"})
    try:
        os.setxattr(tmp_path / "ctx/f", "user.note", b"kept")
    except OSError:
        pytest.skip("no user xattrs on this filesystem")
    root = tmp_path / "root"
    root.mkdir()
    copy_into([Source("f", BuildContext(tmp_path / "ctx"))], "/", target_root=root, write_root=root)
    assert os.getxattr(root / "f", "user.note") == b"kept"


# --------------------------------------------------------------------------------------
# Heredocs


@pytest.mark.parametrize("mode", MODES)
def test_heredoc_copy(tmp_path: Path, mode: str) -> None:
    """buildah's heredoc case: two heredocs and a context file into /test/."""
    robots = "(robots content)\nLong file with random text\nRandom line\nHelloWorld\n"
    humans = "(humans content)\n"
    context = {"file": (BUILDAH / "heredoc" / "file").read_text()}
    steps = [
        Step(
            [
                InlineSource("robots.txt", robots.encode()),
                InlineSource("humans.txt", humans.encode()),
                "file",
            ],
            "/test/",
        ),
        Step([InlineSource("run.sh", b"#!/bin/sh\n")], "/bin/run.sh", chmod="755", chown="7:8"),
    ]
    expect = {
        "test/robots.txt": F(robots, mode=0o644, uid=0, gid=0),
        "test/humans.txt": F(humans, mode=0o644),
        "test/file": "somefile\n",
        "bin/run.sh": F("#!/bin/sh\n", mode=0o755)
        if not ROOT
        else F("#!/bin/sh\n", mode=0o755, uid=7, gid=8),
    }
    run_case(tmp_path, mode, Case("heredoc", context, steps, expect))


def test_heredoc_name_with_slash(tmp_path: Path) -> None:
    with pytest.raises(SouteError, match=r"mkfile /a/b: no such file or directory"):
        copy_into([InlineSource("a/b", b"")], "/", target_root=tmp_path, write_root=tmp_path)


# --------------------------------------------------------------------------------------
# --parents


PARENTS_STAGE: Spec = {
    "test/a/b/c/d/e": D(),
    "test/a/b2/c/d/e": D(),
    "test/a/b/c2/d/e": D(),
    "test/a/b/c2/d/e2": D(),
    "test/a/b/c/d/foo": "",
    "test/a/b/c/d/e/bay": "",
    "test/a/b2/c/d/e/bar": "",
    "test/a/b/c2/d/e/baz": "",
    "test/a/b/c2/d/e2/baz": "",
}

PARENTS_CASES = [
    # testCopyParents (from the context)
    Case(
        "context",
        {"foo1/foo2/bar": "testing", "foo1/foo2/baz": "testing2", "other": "x"},
        [
            Step(["foo1/foo2/bar"], "/", parents=True),
            Step(["foo1/foo2/ba*"], ".", workdir="/test", parents=True),
        ],
        {
            "foo1/foo2/bar": "testing",
            "foo1/foo2/baz": ABSENT,
            "test/foo1/foo2/bar": "testing",
            "test/foo1/foo2/baz": "testing2",
            "other": ABSENT,
        },
    ),
    # testCopyRelativeParents, target by target
    Case(
        "middle",
        {},
        [Step([("stage", "/test/a/b/./c/d")], "/out/", parents=True)],
        {"out/c/d/e": D(), "out/c/d/foo": "", "out/a": ABSENT, "out/e": ABSENT},
        stage=PARENTS_STAGE,
    ),
    Case(
        "end",
        {},
        [Step([("stage", "/test/a/b/c/d/.")], "/out/", parents=True)],
        {"out/test/a/b/c/d/e": D(), "out/test/a/b/c/d/foo": ""},
        stage=PARENTS_STAGE,
    ),
    Case(
        "start",
        {},
        [Step([("stage", "./test/a/b/c/d")], "/out/", parents=True)],
        {"out/test/a/b/c/d/e": D(), "out/test/a/b/c/d/foo": "", "out/test/a/b2": ABSENT},
        stage=PARENTS_STAGE,
    ),
    Case(
        "double",
        {},
        [Step([("stage", "/test/a/./b/./c")], "/out/", parents=True)],
        {"out/b/c/d/e": D(), "out/b/c/d/foo": ""},
        stage=PARENTS_STAGE,
    ),
    Case(
        "wildcard",
        {},
        [Step([("stage", "/test/a/./*/c")], "/out/", parents=True)],
        {"out/b/c/d/e": D(), "out/b2/c/d/e/bar": ""},
        stage=PARENTS_STAGE,
    ),
    Case(
        "doublewildcard",
        {},
        [Step([("stage", "/test/a/b*/./c/**/e")], "/out/", parents=True)],
        {"out/c/d/e": D(), "out/c/d/e/bay": "", "out/c/d/e/bar": ""},
        stage=PARENTS_STAGE,
    ),
    Case(
        "doubleinputs",
        {},
        [
            Step(
                [("stage", "/test/a/b/c*/./d/**/baz"), ("stage", "/test/a/b*/./c/**/bar")],
                "/out/",
                parents=True,
            )
        ],
        {"out/d/e/baz": "", "out/d/e/bay": ABSENT, "out/d/e2/baz": "", "out/c/d/e/bar": ""},
        stage=PARENTS_STAGE,
    ),
    # testCopyParentsMissingDirectory
    Case(
        "normal",
        {},
        [Step([("stage", "/test/a/b/c/d")], "/out/", parents=True)],
        {"out/test/a/b/c/d/e/bay": "", "out/e": ABSENT, "out/a": ABSENT},
        stage=PARENTS_STAGE,
    ),
    Case(
        "nonexistentfile",
        {},
        [Step([("stage", "/test/nonexistent-file")], "/out/", parents=True)],
        error=r'failed to calculate checksum of ref stage: "/test/nonexistent-file": not found',
        stage=PARENTS_STAGE,
    ),
    Case(
        "wildcard-nonexistent",
        {},
        [Step([("stage", "/test/a/b3*/c")], "/out/", parents=True)],
        {"out": D(), "out/test": ABSENT},
        stage=PARENTS_STAGE,
    ),
    Case(
        "wildcard-afterpivot",
        {},
        [Step([("stage", "/test/a/b/./c3*")], "/out/", parents=True)],
        {"out": D(), "out/a": ABSENT, "out/c": ABSENT},
        stage=PARENTS_STAGE,
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", PARENTS_CASES, ids=lambda c: c.name)
def test_copy_parents(tmp_path: Path, mode: str, case: Case) -> None:
    run_case(tmp_path, mode, case)


# --------------------------------------------------------------------------------------
# --exclude (testExcludedFilesOnCopy)

EXCLUDE_CONTEXT: Spec = {
    "dir1/file-101.png": "2",
    "dir1/file-102.txt": "3",
    "dir1/file-103.jpeg": "4",
    "dir2/file-201.pdf": "6",
    "dir2/file-202.jpeg": "7",
    "dir2/file-203.png": "8",
    "dir3/file-301.mp3": "9",
    "dir3/file-302.mpeg": "10",
    "dir4/file-401.txt": "11",
    "dir4/file-402.txt": L("file-401.txt"),
    "dir4/file-403.txt": L("file-404.txt"),
}


@pytest.mark.parametrize("mode", MODES)
def test_copy_exclude(tmp_path: Path, mode: str) -> None:
    steps = [
        Step(["."], "/1", excludes=["*/*.png", "*/*.jpeg"]),
        Step(["."], "/2", excludes=["*/*.pdf", "*/*.txt"]),
        Step(["dir3/"], "/3/", excludes=["*.mp3"], unpack=True),
        Step(["dir*"], "/4/", excludes=["*.mp3", "*.jpeg", "*.png", "*.pdf", "*.txt"]),
        Step(["dir*"], "/5", excludes=["*.mp*", "*.jpeg", "*.png", "*.pdf"], unpack=True),
        Step(["dir*"], "/6", excludes=["*"], unpack=True),
        Step(
            ["dir1/file-102.txt"], "/7/", excludes=["*.txt", "file-102.txt"]
        ),  # the source itself stays
    ]
    expect: dict[str, object] = {
        "1/dir1/file-101.png": ABSENT,
        "1/dir1/file-102.txt": "3",
        "1/dir1/file-103.jpeg": ABSENT,
        "1/dir2/file-201.pdf": "6",
        "1/dir2/file-202.jpeg": ABSENT,
        "1/dir3/file-302.mpeg": "10",
        "1/dir4/file-402.txt": L("file-401.txt"),
        "1/dir4/file-403.txt": L("file-404.txt"),
        "2/dir1/file-101.png": "2",
        "2/dir1/file-102.txt": ABSENT,
        "2/dir2/file-201.pdf": ABSENT,
        "2/dir2/file-203.png": "8",
        "2/dir4/file-401.txt": ABSENT,
        "2/dir4/file-402.txt": ABSENT,
        "3/file-301.mp3": ABSENT,
        "3/file-302.mpeg": "10",
        "4/file-101.png": ABSENT,
        "4/file-302.mpeg": "10",
        "4/file-401.txt": ABSENT,
        "5/file-102.txt": "3",
        "5/file-302.mpeg": ABSENT,
        "5/file-401.txt": "11",
        "5/file-402.txt": L("file-401.txt"),
        "5/file-403.txt": L("file-404.txt"),
        "6": D(),
        "7/file-102.txt": "3",
    }
    builder = run_case(tmp_path, mode, Case("exclude", EXCLUDE_CONTEXT, steps, expect))
    assert os.listdir(builder.root / "6") == []


# --------------------------------------------------------------------------------------
# buildah's conformance contexts


def conformance_context(name: str, dest: Path) -> Path:
    shutil.copytree(BUILDAH / name, dest, symlinks=True)
    for top, dirs, files in os.walk(dest):
        for n in dirs:
            os.chmod(os.path.join(top, n), 0o755)
        for n in files:
            os.chmod(os.path.join(top, n), 0o644)
    return dest


def conformance_build(
    tmp_path: Path,
    name: str,
    steps: Sequence[Step],
    image: Spec | None = None,
    ignore: Sequence[str] | None = None,
    mode: str = "direct",
) -> Path:
    ctx = BuildContext(conformance_context(name, tmp_path / "ctx"), ignore_patterns=ignore)
    root = tmp_path / "root"
    build(root, image or {})
    for i, step in enumerate(steps):
        write = root if mode == "direct" else tmp_path / f"upper{i}"
        write.mkdir(exist_ok=True)
        copy_into(
            [Source(str(s), ctx) for s in step.sources],
            step.dest,
            target_root=root,
            write_root=write,
            workdir=step.workdir,
            unpack=step.unpack,
        )
        if mode != "direct":
            apply_upper(write, root)
    return root


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("mode", MODES)
def test_conformance_copy_escape_glob(tmp_path: Path, mode: str) -> None:
    # The Dockerfile's "n\?pe" and "st\*uv" reach COPY unescaped by the word lexer.
    steps = [
        Step(["./app/[[]xyz]/file.txt"], "/app/", workdir="/app"),
        Step(["./app/[[]xyz]/[[]abc]/file.txt"], "/app2/", workdir="/app"),
        Step(["./app/*"], "/app3/", workdir="/app"),
        Step(["./app/n?pe/file.txt"], "/app4/file.txt", workdir="/app"),
        Step(["./app/st*uv/file.txt"], "/app5/file.txt", workdir="/app"),
    ]
    root = conformance_build(tmp_path, "copy-escape-glob", steps, mode=mode)
    check(
        root,
        {
            "app/file.txt": "a file\n",
            "app2/file.txt": "also a file\n",
            "app3/file.txt": "not this one\n",  # [xyz], nope, strauv merge in that order
            "app3/[abc]/file.txt": "also a file\n",
            "app4/file.txt": "but not\n",
            "app5/file.txt": "not this one\n",
        },
    )
    assert files_under(root / "app4") == {"file.txt"}


GLOB_DEPTH2 = {
    "overgoing.txt",
    "heliacally.txt",
    "subjectivities.txt",
    "Towroy.txt",
    "Etnean.txt",
    "Sheya.txt",
    "unexciting.txt",
    "triple-throw.txt",
    "coembody.txt",
    "unvoweled.txt",
    "unmarring.txt",
    "torpifying.txt",
}
GLOB_SUB = {
    "overdilation.txt",
    "ileosigmoidostomy.txt",
    "disadvise.txt",
    "travel-sick.txt",
    "alkalinity.txt",
    "glandules.txt",
    "Vernaccia.txt",
    "inaccordance.txt",
    "huerta.txt",
    "smopple.txt",
    "noninhabitancy.txt",
    "chromaticness.txt",
    "topsy-turvydom.txt",
    "Hamon.txt",
    "cache.txt",
    "ribbon-marked.txt",
}


@pytest.mark.parametrize(
    ("source", "want"),
    [
        ("**/*.txt", GLOB_DEPTH2),  # "**" is just "*" in filepath.Match
        ("**/sub/*.txt", GLOB_SUB),
        ("e/**/*sub/*.txt", {"paymaster-generalship.txt", "near-blindness.txt"}),
        ("e/**/**/*sub/*.txt", set()),  # no match: nothing copied, no error
    ],
)
def test_conformance_copyglob(tmp_path: Path, source: str, want: set[str]) -> None:
    root = conformance_build(tmp_path, "copyglob", [Step([source], "/")])
    assert files_under(root) == want


@pytest.mark.parametrize("mode", MODES)
def test_conformance_dockerignore_integration3(tmp_path: Path, mode: str) -> None:
    name = "dockerignore/integration3"
    ignore = (BUILDAH / name / ".dockerignore").read_text().splitlines()
    from soute.dockerfile.ignore import read_ignore_file

    patterns = read_ignore_file("\n".join(ignore))
    root = conformance_build(
        tmp_path,
        name,
        [Step(["."], "/upload/"), Step(["src"], "/upload/src2/")],
        ignore=patterns,
        mode=mode,
    )
    manifest = (BUILDAH / name / "manifest").read_text().split()
    assert sorted("/" + p for p in files_under(root)) == sorted(manifest)
    ctx = BuildContext(tmp_path / "ctx", ignore_patterns=patterns)
    with pytest.raises(SouteError, match=r'"/test1\.txt": not found'):  # the Dockerfile's line 4
        copy_into(
            [Source("test1.txt", ctx)], "/upload/test1.txt", target_root=root, write_root=root
        )


@pytest.mark.parametrize(
    ("name", "steps", "want", "fails_at"),
    [
        (
            "dockerignore/integration2",
            [["."]],
            {
                "subdir",
                "subdir/sub1.txt",
                "subdir/subsub",
                "subdir/subsubdir",
                "subdir/subsubdir/subsub1.txt",
                "Dockerfile",
                ".dockerignore",
            },
            None,
        ),
        (
            "dockerignore/exceptions-skip",
            [["./"]],
            {"volume", "volume/data", "volume/data/oneline.txt", "Dockerfile", ".dockerignore"},
            None,
        ),
        (
            "dockerignore/exceptions-weirdness-1",
            [["./"]],
            {"subdir", "subdir/sub1.txt", "Dockerfile", ".dockerignore"},
            None,
        ),
        (
            "dockerignore/exceptions-weirdness-2",
            [["./"]],
            {"subdir", "subdir/sub1.txt", "subdir/sub3.txt", "Dockerfile", ".dockerignore"},
            None,
        ),
        ("dockerignore/allowlist/subdir-file", [["folder1"]], {"file1"}, None),
        ("dockerignore/allowlist/subdir-nofile", [["folder1"]], set(), 0),
        ("dockerignore/allowlist/nothing-dot", [["."]], set(), None),
        ("dockerignore/allowlist/nothing-slash", [["/"]], set(), None),
        ("dockerignore/allowlist/subsubdir-nofile", [["."]], set(), None),
        ("dockerignore/allowlist/subsubdir-nosubdir", [["."]], set(), None),
        (
            "dockerignore/allowlist/subsubdir-file",
            [["."]],
            {"folder", "folder/subfolder", "folder/subfolder/file"},
            None,
        ),
        ("dockerignore/empty", [["."]], {"Dockerfile", ".dockerignore", "test1.txt"}, None),
    ],
)
def test_conformance_dockerignore(
    tmp_path: Path, name: str, steps: list[list[str]], want: set[str], fails_at: int | None
) -> None:
    from soute.dockerfile.ignore import read_ignore_file

    patterns = read_ignore_file((BUILDAH / name / ".dockerignore").read_text())
    ctx = BuildContext(conformance_context(name, tmp_path / "ctx"), ignore_patterns=patterns)
    root = tmp_path / "root"
    root.mkdir()
    for i, sources in enumerate(steps):

        def action(sources: list[str] = sources) -> None:
            copy_into([Source(s, ctx) for s in sources], "/", target_root=root, write_root=root)

        if i == fails_at:
            with pytest.raises(SouteError, match="not found"):
                action()
        else:
            action()
    if name == "dockerignore/integration2":
        want = {
            "subdir",
            "subdir/sub1.txt",
            "subdir/subsubdir",
            "subdir/subsubdir/subsub1.txt",
            "Dockerfile",
            ".dockerignore",
        }
    assert files_under(root) == want


def test_conformance_dockerignore_alternating(tmp_path: Path) -> None:
    """allowlist/alternating-*: each ADD of a deeper directory; the build fails at the
    first one the ignore file leaves out (the Dockerfile's line 7)."""
    from soute.dockerfile.ignore import read_ignore_file

    for variant in ("alternating-nothing", "alternating-other"):
        name = f"dockerignore/allowlist/{variant}"
        patterns = read_ignore_file((BUILDAH / name / ".dockerignore").read_text())
        ctx = BuildContext(conformance_context(name, tmp_path / variant), ignore_patterns=patterns)
        root = tmp_path / f"root-{variant}"
        root.mkdir()
        sources = ["subdir"]
        for depth in range(1, 6):
            sources.append(sources[-1] + f"/subdir{depth}")
        for line, source in enumerate(sources, start=2):
            if line < 7:
                copy_into(
                    [Source(source, ctx)], "/", target_root=root, write_root=root, unpack=True
                )
            else:
                with pytest.raises(SouteError, match="not found"):
                    copy_into(
                        [Source(source, ctx)], "/", target_root=root, write_root=root, unpack=True
                    )
                break


@pytest.mark.parametrize("mode", MODES)
def test_conformance_copyfrom(tmp_path: Path, mode: str) -> None:
    """buildah's Dockerfile.copyfrom_* cases, each on a fresh image."""
    stage: Spec = {
        "a/b/1": F(mtime=1_485_449_953),
        "a/b/2": F(mtime=1_485_449_953),
        "b": F(mtime=1_485_449_953),
        "a/1": F(mtime=1_485_449_953),
    }
    cases = {
        1: ("/b", "/", {"b": F(mtime=1_485_449_953)}),
        2: ("/b", "/b", {"b": F()}),
        4: ("/a/b/", "/b/", {"b/1": F(), "b/2": F(), "a": ABSENT}),
        5: ("/a/b/*", "/b/", {"b/1": F(), "b/2": F(), "a": ABSENT, "b/a": ABSENT, "b/b": ABSENT}),
        6: ("/a/b/.", "/b/", {"b/1": F(), "b/2": F(), "b/b": ABSENT}),
        7: ("/b", "/a", {"a": F(), "b": ABSENT}),
        8: ("/a/1", "/a", {"a": F()}),
        9: ("/a/1", "/a/b/c/", {"a/b/c/1": F(), "a/b/1": ABSENT}),
        10: ("/a/1", "/a/b/c", {"a/b/c": F(), "a/b/1": ABSENT}),
        11: ("/a", "/a/b/c", {"a/b/c/1": F(), "a/b/1": ABSENT}),
        12: ("a", "/a", {"a/1": F(), "a/a": ABSENT}),
        13: ("a/.", "/a", {"a/1": F(), "a/a": ABSENT}),
    }
    for number, (src, dest, expect) in cases.items():
        run_case(
            tmp_path / str(number),
            mode,
            Case(str(number), {}, [Step([("stage", src)], dest)], expect, stage=stage),
        )
    # copyfrom_3 / 3_1: WORKDIR /b
    run_case(
        tmp_path / "3",
        mode,
        Case("3", {}, [Step([("stage", "/b")], ".", workdir="/b")], {"b/b": F()}, stage=stage),
    )
    run_case(
        tmp_path / "31",
        mode,
        Case("31", {}, [Step([("stage", "/b")], "./b", workdir="/b")], {"b/b": F()}, stage=stage),
    )


@pytest.mark.parametrize("mode", MODES)
def test_conformance_copy_dirs(tmp_path: Path, mode: str) -> None:
    """copy, copydir, copyrename, copyblahblub, overlapdir*, copyempty, add parent-*."""
    root = conformance_build(
        tmp_path / "copy", "copy", [Step(["script"], "/usr/bin")], image={"usr/bin": D()}, mode=mode
    )
    check(root, {"usr/bin/script": F()})
    root = conformance_build(tmp_path / "copydir", "copydir", [Step(["dir"], "/dir")], mode=mode)
    check(root, {"dir/file": F()})
    root = conformance_build(
        tmp_path / "rename",
        "copyrename",
        [Step(["file1"], "/usr/bin/file2")],
        image={"usr/bin": D()},
        mode=mode,
    )
    check(root, {"usr/bin/file2": F(), "usr/bin/file1": ABSENT})
    for variant in ("firstdir/seconddir", "/firstdir/seconddir"):
        root = conformance_build(
            tmp_path / f"blah{len(variant)}",
            "copyblahblub",
            [Step([variant], "/var")],
            image={"var": D()},
            mode=mode,
        )
        check(root, {"var/dir-a/file-a": F(), "var/dir-b/file-b": F(), "var/seconddir": ABSENT})
    for variant in ("overlapdirwithslash", "overlapdirwithoutslash"):
        source = "existing/" if variant.endswith("withslash") else "existing"
        root = conformance_build(
            tmp_path / variant,
            variant,
            [Step([source], ".")],
            image={"etc/passwd": "root"},
            mode=mode,
        )
        check(root, {"etc/file-in-existing-dir": F(), "etc/passwd": "root"})
    root = conformance_build(
        tmp_path / "empty1", "copyempty", [Step([""], "/usr/local/tmp/")], mode=mode
    )
    check(
        root,
        {
            "usr/local/tmp/script1": F(),
            "usr/local/tmp/.script": F(),
            "usr/local/tmp/Dockerfile2": F(),
        },
    )
    root = conformance_build(
        tmp_path / "empty2",
        "copyempty",
        [Step(["script1", "", "script2"], "/usr/local/tmp/")],
        mode=mode,
    )
    check(
        root,
        {"usr/local/tmp/script1": F(), "usr/local/tmp/script2": F(), "usr/local/tmp/.script": F()},
    )
    # add/parent-dangling: a dangling symlink in dest's path is followed
    root = conformance_build(
        tmp_path / "dangling",
        "add/parent-dangling",
        [Step(["."], "/symlink/subdirectory/", unpack=True)],
        image={"symlink": L("symlink-target")},
        mode=mode,
    )
    check(root, {"symlink": L("symlink-target"), "symlink-target/subdirectory/Dockerfile": F()})
    # add/parent-clean: "/symlink/.." is cleaned to "/" before anything is resolved
    root = conformance_build(
        tmp_path / "clean",
        "add/parent-clean",
        [Step(["."], "/symlink/..", unpack=True)],
        image={"symlink": L("/symlink-target/subdirectory")},
        mode=mode,
    )
    check(root, {"Dockerfile": F(), "symlink-target": ABSENT})


# replace/symlink-with-directory, with its link restored (the corpus keeps a plain file)
REPLACE_CONTEXT: Spec = {
    "tree1/directory/file-in-directory": "in directory",
    "tree1/maybe-directory": L("directory"),
    "tree2/maybe-directory/file-in-maybe-directory": "in maybe-directory",
}


@pytest.mark.parametrize("mode", MODES)
def test_replace_symlink_with_directory(tmp_path: Path, mode: str) -> None:
    # fsutil refuses a directory where the image has a symlink (copyDirectoryOnly) ...
    run_case(
        tmp_path / "1",
        mode,
        Case(
            "1",
            REPLACE_CONTEXT,
            [Step(["tree1/"], "/"), Step(["tree2/"], "/")],
            {"maybe-directory": L("directory")},
            error="cannot copy to non-directory: /maybe-directory",
        ),
    )
    # ... while a symlink replaces a directory's place only if that is not a directory
    run_case(
        tmp_path / "2",
        mode,
        Case(
            "2",
            REPLACE_CONTEXT,
            [Step(["tree2/"], "/tree/"), Step(["tree1/"], "/tree/")],
            {"tree/maybe-directory/file-in-maybe-directory": "in maybe-directory"},
            error="cannot replace to directory /tree/maybe-directory with file",
        ),
    )


# --------------------------------------------------------------------------------------
# ADD of local archives


def tar_bytes(
    entries: Sequence[tarfile.TarInfo | tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for entry in entries:
            if isinstance(entry, tuple):
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                info.mode = 0o644
                info.mtime = 1_600_000_000
                tf.addfile(info, io.BytesIO(entry[1]))
            else:
                tf.addfile(entry)
    return buf.getvalue()


def tar_dir(name: str, mode: int = 0o755, uid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.uid = info.gid = uid
    info.mtime = 1_500_000_000
    return info


def tar_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def zstd(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdCompressor().compress(data)


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda d: d,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": zstd,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", COMPRESSORS)
def test_add_archive(tmp_path: Path, mode: str, kind: str) -> None:
    """testDockerfileAddArchive: local archives unpack, whatever their name or compression."""
    data = COMPRESSORS[kind](tar_bytes([("foo", b"content0")]))
    case = Case(
        "add-archive",
        {"t.tar.gz": data, "odd.name": data},
        [
            Step(["t.tar.gz"], "/", unpack=True),
            Step(["odd.name"], "/o", unpack=True),  # dest is made a directory
            Step(["t.tar.gz"], "/packed/", unpack=False),  # ADD --unpack=false
            Step(["t.tar.gz"], "/copied/"),  # COPY never unpacks
        ],
        {
            "foo": F("content0", mode=0o644, mtime=1_600_000_000),
            "o/foo": "content0",
            "packed/t.tar.gz": data,
            "copied/t.tar.gz": data,
            "t.tar.gz": ABSENT,
        },
    )
    run_case(tmp_path, mode, case)


@needs_root
@pytest.mark.parametrize("mode", MODES)
def test_add_chown_archive(tmp_path: Path, mode: str) -> None:
    """testDockerfileAddChownArchive: --chown owns the unpacked entries and dest."""
    data = tar_bytes(
        [("foo", b"content0"), tar_dir("d", uid=7), ("d/x", b"x"), ("implied/y", b"y")]
    )
    case = Case(
        "add-chown",
        {"t.tar": data},
        [
            Step(["t.tar"], "/out/", chown="100:200", unpack=True),
            Step(["t.tar"], "/plain/", unpack=True),
        ],
        {
            "out": D(uid=100, gid=200),
            "out/foo": F("content0", uid=100, gid=200),
            "out/d": D(uid=100, gid=200),
            "out/implied": D(uid=0, gid=0, mode=0o755),  # not in the archive: root's
            "out/implied/y": F("y", uid=100, gid=200),
            "plain/d": D(uid=7, gid=7, mtime=1_500_000_000),
        },
    )
    run_case(tmp_path, mode, case)


@pytest.mark.parametrize("mode", MODES)
def test_add_archive_wildcard(tmp_path: Path, mode: str) -> None:
    """testDockerfileAddArchiveWildcard: every matching archive is unpacked."""
    context = {
        "t.tar": tar_bytes([("foo", b"content0")]),
        "b.tar": tar_bytes([("bar", b"content1")]),
    }
    case = Case(
        "add-wildcard",
        context,
        [Step(["*.tar"], "/dest", unpack=True)],
        {"dest/foo": "content0", "dest/bar": "content1"},
    )
    run_case(tmp_path, mode, case)


@pytest.mark.parametrize("mode", MODES)
def test_add_archive_implied_parent_and_symlinks(tmp_path: Path, mode: str) -> None:
    """moby#53257 and #53258: implied parents, and parents through the image's symlinks."""
    rootfs = tar_bytes([tar_dir("run/"), tar_dir("var/"), tar_link("var/run", "/run")])
    payload = tar_bytes(
        [
            tar_dir("var/run/act/"),
            tar_dir("var/run/act/actions/"),
            ("var/run/act/actions/.git/HEAD", b"ref: refs/heads/main\n"),
            tar_link(
                "var/run/act/actions/.git/HEAD.link",
                "var/run/act/actions/.git/HEAD",
                tarfile.LNKTYPE,
            ),
            ("etc/dnf/dnf.conf", b"content0"),
        ]
    )
    case = Case(
        "add-symlinks",
        {"rootfs.tar": rootfs, "payload.tar": gzip.compress(payload)},
        [Step(["rootfs.tar"], "/", unpack=True), Step(["payload.tar"], "/", unpack=True)],
        {
            "var/run": L("/run"),
            "run/act/actions/.git/HEAD": "ref: refs/heads/main\n",
            "run/act/actions/.git/HEAD.link": "ref: refs/heads/main\n",
            "etc/dnf/dnf.conf": "content0",
        },
    )
    builder = run_case(tmp_path, mode, case)
    head = os.lstat(builder.root / "run/act/actions/.git/HEAD")
    assert head.st_ino == os.lstat(builder.root / "run/act/actions/.git/HEAD.link").st_ino


@pytest.mark.parametrize("mode", MODES)
def test_conformance_add_archives(tmp_path: Path, mode: str) -> None:
    """buildah's add/* cases: archive entries replace what the image has, as tar -x does."""
    sub = ["subdirectory/archival.txt", "subdirectory/archived.txt"]
    root = conformance_build(
        tmp_path / "3",
        "add/archive",
        [Step(["sub/subdirectory.tar.gz"], "/", unpack=True)],
        mode=mode,
    )
    assert files_under(root) == {"subdirectory", *sub}
    check(root, {"subdirectory": D(mode=0o775)})
    root = conformance_build(
        tmp_path / "6",
        "add/archive",
        [Step(["sub/subdirectory.tar.gz"], "/sub/", unpack=True)],
        mode=mode,
    )
    assert files_under(root) == {"sub", "sub/subdirectory", *(f"sub/{s}" for s in sub)}
    root = conformance_build(
        tmp_path / "7", "add/archive", [Step(["sub/*"], "/sub/", unpack=True)], mode=mode
    )
    assert files_under(root) == {"sub", "sub/subdirectory", *(f"sub/{s}" for s in sub)}
    # a directory source is copied, archives inside it are not unpacked
    root = conformance_build(
        tmp_path / "1", "add/archive", [Step(["."], ".", unpack=True)], mode=mode
    )
    check(root, {"sub/subdirectory.tar.gz": F(), "subdirectory": ABSENT})
    root = conformance_build(
        tmp_path / "2", "add/archive", [Step(["sub/"], "/", unpack=True)], mode=mode
    )
    check(root, {"subdirectory.tar.gz": F()})
    # dir-not-dir: the archive's file "fileone" replaces the image's directory
    root = conformance_build(
        tmp_path / "dnd",
        "add/dir-not-dir",
        [Step(["test.tar"], "/", unpack=True)],
        image={"fileone/old": "x", "bin/sh": "sh"},
        mode=mode,
    )
    check(root, {"fileone": F(), "fileone/old": ABSENT, "filetwo": F(), "app/content/file": F()})
    # not-dir-dir: the archive's directory replaces the image's file
    root = conformance_build(
        tmp_path / "ndd",
        "add/not-dir-dir",
        [Step(["test.tar"], "/", unpack=True)],
        image={"new-directory": "file"},
        mode=mode,
    )
    check(root, {"new-directory": D(mode=0o775)})
    root = conformance_build(
        tmp_path / "pdnd",
        "add/populated-dir-not-dir",
        [Step(["test.tar"], "/", unpack=True)],
        image={"dirone/onefile.txt": "one\n", "dirone/twofile.txt": "two\n"},
        mode=mode,
    )
    check(root, {"dirone": F(""), "dirone/onefile.txt": ABSENT})


def test_conformance_add_parent_symlink(tmp_path: Path) -> None:
    """add/parent-symlink: "symldir1 -> .." then "symldir1/etc/myfile"."""
    root = conformance_build(
        tmp_path, "add/parent-symlink", [Step(["foobar.tar"], "/testsubdir", unpack=True)]
    )
    check(root, {"testsubdir/symldir1": L(".."), "testsubdir/etc/myfile": F()})
    assert not (root / "etc").exists()


def test_is_archive(tmp_path: Path) -> None:
    data = tar_bytes([("foo", b"x")])
    cases = {
        "plain.bin": data,
        "gnu.tar": tar_bytes([("foo", b"x")], tarfile.GNU_FORMAT),
        "v7.tar": tar_bytes([("foo", b"x")], tarfile.USTAR_FORMAT),
        "gz": gzip.compress(data),
        "empty.tar.gz": b"",
        "text.tar": b"hello world\n" * 100,
        "zeros.tar": bytes(10240),
        "badgzip.tar.gz": b"\x1f\x8b\x08garbage",
        "gzipped-text.gz": gzip.compress(b"not a tar" * 200),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    got = {name for name in cases if is_archive(tmp_path / name)}
    assert got == {"plain.bin", "gnu.tar", "v7.tar", "gz"}
    (tmp_path / "dir").mkdir()
    assert not is_archive(tmp_path / "dir")
    os.symlink("plain.bin", tmp_path / "link")
    assert not is_archive(tmp_path / "link")  # only regular files (ADD follows links first)


def test_add_symlink_to_archive_unpacks(tmp_path: Path) -> None:
    build(tmp_path / "ctx", {"real.tar": tar_bytes([("foo", b"x")]), "link.tar": L("real.tar")})
    root = tmp_path / "root"
    root.mkdir()
    copy_into(
        [Source("link.tar", BuildContext(tmp_path / "ctx"))],
        "/",
        target_root=root,
        write_root=root,
        unpack=True,
    )
    check(root, {"foo": "x", "link.tar": ABSENT})


# --------------------------------------------------------------------------------------
# The upper dir as a layer


def test_upper_holds_only_the_change(tmp_path: Path) -> None:
    build(tmp_path / "ctx", {"f": "new"})
    image = tmp_path / "image"
    build(
        image,
        {"etc": D(mode=0o700, uid=0, mtime=1_000), "etc/passwd": "root", "usr/share/doc/x": "x"},
    )
    upper = tmp_path / "upper"
    upper.mkdir()
    result = copy_into(
        [Source("f", BuildContext(tmp_path / "ctx"))], "/etc/f", target_root=image, write_root=upper
    )
    assert result.paths == ["/etc/f"]
    assert files_under(upper) == {"etc", "etc/f"}
    st = os.lstat(upper / "etc")
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_mtime == 1_000  # copied up as it was
    assert files_under(image) == {
        "etc",
        "etc/passwd",
        "usr",
        "usr/share",
        "usr/share/doc",
        "usr/share/doc/x",
    }


def test_lower_dir_replaced_then_recreated_is_opaque(tmp_path: Path) -> None:
    """An archive entry replaces a directory of the image with a file, a later one makes a
    directory there again: the old directory's entries must stay hidden."""
    data = tar_bytes([("d", b"file now")])
    data2 = tar_bytes([tar_dir("d"), ("d/new", b"n")])
    build(tmp_path / "ctx", {"a.tar": data, "b.tar": data2})
    image = tmp_path / "image"
    build(image, {"d/old": "old"})
    upper = tmp_path / "upper"
    upper.mkdir()
    ctx = BuildContext(tmp_path / "ctx")
    try:
        copy_into(
            [Source("a.tar", ctx), Source("b.tar", ctx)],
            "/",
            target_root=image,
            write_root=upper,
            unpack=True,
        )
    except SouteError as err:
        pytest.skip(f"no overlay xattrs here: {err}")
    apply_upper(upper, image)
    check(image, {"d/new": "n", "d/old": ABSENT})


def test_destination_helpers() -> None:
    assert dest_path("", "/var/www") == "/var/www/"
    assert dest_path(".", "/var/www") == "/var/www/"
    assert dest_path("./", "/") == "/"
    assert dest_path("a/b/.", "/w") == "/w/a/b/."
    assert dest_path("/a//b/../c/", "/w") == "/a/c/"
    assert dest_path("../x", "/w/v") == "/w/x"
    assert dest_path("../../../x", "/w") == "/x"


def test_source_checksum_follows_buildkit_selectors(tmp_path: Path) -> None:
    build(
        tmp_path / "ctx",
        {"foo1": "a", "foo2": "b", "bar": "c", "d/x.txt": "x", "d/y.md": "y", "link": L("bar")},
    )
    ctx = BuildContext(tmp_path / "ctx")
    assert source_checksum(Source("link", ctx)) == ctx.checksum("bar")
    before = source_checksum(Source("foo*", ctx))
    (tmp_path / "ctx/bar").write_text("changed")
    ctx = BuildContext(tmp_path / "ctx")
    assert source_checksum(Source("foo*", ctx)) == before  # testCopyWildcardCache
    excluded = source_checksum(Source("d", ctx), excludes=["*.md"])
    (tmp_path / "ctx/d/y.md").write_text("changed")
    ctx = BuildContext(tmp_path / "ctx")
    assert source_checksum(Source("d", ctx), excludes=["*.md"]) == excluded
    assert source_checksum(Source("d", ctx)) != source_checksum(Source("d", ctx), excludes=["*.md"])
    with pytest.raises(SouteError, match='"/d/nope": not found'):
        source_checksum(Source("d/./nope", ctx), parents=True)


# --------------------------------------------------------------------------------------
# The copy step's child: through the overlay, or straight into the upper dir


def _upper_tree(upper: Path, now: Sequence[str] = ()) -> dict[str, tuple[object, ...]]:
    """Everything an upper dir says about its entries (all xattrs included), but the times
    of directories, which the copy may make without a source time ("now"), and of ``now``."""
    out: dict[str, tuple[object, ...]] = {}
    for top, dirs, files in os.walk(upper):
        for name in ["", *dirs, *files]:
            if name == "" and top != str(upper):
                continue
            path = os.path.join(top, name) if name else top
            st = os.lstat(path)
            xattrs = sorted((n, os.getxattr(path, n, follow_symlinks=False))
                            for n in os.listxattr(path, follow_symlinks=False))
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = Path(path).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            out[os.path.relpath(path, upper)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_rdev, xattrs, content,
                None if stat.S_ISDIR(st.st_mode) or name in now else st.st_mtime_ns)
    return out


@needs_root
@pytest.mark.parametrize("dest, options", [
    ("/app", {}),
    ("/app2/", {"chown": "nobody:nogroup"}),
    ("/new/deep/", {"chmod": "u+x,g-w"}),
    ("/ex/", {"excludes": ["*.log"]}),
    ("/unpacked/", {"unpack": True, "sources": [{"path": "arch.tgz"}]}),
    ("rel/", {"workdir": "/wd", "chown": "7:8"}),
    ("/heredoc/", {"sources": [], "contents": [["hd.txt", "hello\n"]], "now": ["hd.txt"]}),
    ("/par/", {"parents": True, "sources": [{"path": "d/sub/b"}]}),
])
def test_copy_step_straight_into_the_upper_dir_makes_the_same_layer(
    tmp_path: Path, dest: str, options: dict[str, object]
) -> None:
    """A destination no parent layer has is written straight into the upper dir (no overlay
    mount to create through): the upper dir must be what the overlay would have left."""
    from soute.build.copystep import _dest_is_new, _in_child

    lower = tmp_path / "lower"
    build(lower, {"etc/passwd": "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
                  "etc/group": "root:x:0:\nnogroup:x:65534:\n", "usr/bin/tool": "t"})
    upper_layer = tmp_path / "layer2"
    build(upper_layer, {"opt/x": "x"})
    ctx = tmp_path / "ctx"
    build(ctx, {"d/a": "a" * 5000, "d/sub/b": "b", "f.txt": "file", "skip.log": "nope",
                "d/link": L("a")})
    os.link(ctx / "d/a", ctx / "d/hard")
    os.mkfifo(ctx / "d/fifo", 0o640)
    os.chmod(ctx / "d/sub", 0o2775)
    os.chown(ctx / "d/sub", 0, 50)
    os.chmod(ctx / "d/a", 0o4755)
    os.setxattr(ctx / "d/a", "user.note", b"kept")
    os.utime(ctx / "d/sub", ns=(1, 123456789000))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("t/deep/one")
        info.size, info.mtime, info.uid, info.gid = 1, 1000, 7, 8
        tar.addfile(info, io.BytesIO(b"1"))
    (ctx / "arch.tgz").write_bytes(buf.getvalue())
    lowers = [lower, upper_layer]
    workdir = str(options.get("workdir", "/"))
    assert _dest_is_new(dest, workdir, lowers)
    trees = []
    for direct in (False, True):
        upper = tmp_path / f"upper-{direct}"
        upper.mkdir()
        job = {
            "lowers": [str(p) for p in lowers], "upper": str(upper),
            "sources": options.get("sources", [{"path": "d"}, {"path": "f.txt"}]),
            "contents": options.get("contents", []), "context": str(ctx), "dockerfile": "",
            "source_layers": None, "dest": dest, "workdir": workdir,
            "chown": options.get("chown"), "chmod": options.get("chmod"),
            "parents": options.get("parents", False), "excludes": options.get("excludes", []),
            "unpack": options.get("unpack", False), "tmp": str(tmp_path), "direct": direct,
        }
        assert _in_child(job) is None
        trees.append(_upper_tree(upper, options.get("now", ())))  # type: ignore[arg-type]
    assert trees[0] == trees[1]


def test_copy_step_goes_through_the_overlay_where_a_layer_has_the_path(tmp_path: Path) -> None:
    from soute.build.copystep import _dest_is_new

    build(tmp_path / "l1", {"etc/x": "x"})
    build(tmp_path / "l2", {"srv/.wh.app": ""})
    lowers = [tmp_path / "l1", tmp_path / "l2"]
    assert not _dest_is_new("/etc/new", "/", lowers)
    assert not _dest_is_new("new", "/etc", lowers)
    assert not _dest_is_new("/", "/", lowers)
    assert not _dest_is_new(".", "/", lowers)
    assert not _dest_is_new("/srv/app", "/", lowers)  # its parent is in a layer
    assert _dest_is_new("/app", "/", lowers)
    assert _dest_is_new("../app/x/", "/srv", lowers)


@needs_root
@pytest.mark.parametrize("dest, options, streamed", [
    ("/app", {}, True),
    ("/app2/", {"chown": "nobody:nogroup"}, True),
    ("/new/deep/", {"chmod": "u+x,g-w"}, True),
    ("/ex/", {"excludes": ["*.log"]}, True),
    ("rel/", {"workdir": "/wd", "chown": "7:8"}, True),
    ("/epoch", {"epoch": 150}, True),
    ("/long/", {"source": "long"}, True),
    ("/hard/", {"source": "hard"}, False),  # a hardlink group: its first path changes
    ("/dirx/", {"source": "dirx"}, False),  # a directory's xattr is not announced
    ("/file/", {"source": "f.txt"}, False),  # not a directory
    ("/two/", {"sources": [{"path": "d"}, {"path": "f.txt"}]}, False),
    ("/glob/", {"source": "d*"}, False),  # two matches
])
def test_copy_step_writes_its_layer_while_it_copies(
    tmp_path: Path, dest: str, options: dict[str, object], streamed: bool
) -> None:
    """A copy of one directory into a new one writes its layer as the child announces the
    entries it finishes: the layer must be exactly write_layer's of the finished upper dir,
    and anything the announcements cannot follow falls back to it (None)."""
    from soute.build.copystep import _in_child
    from soute.layer import LayerStream, write_layer

    lower = tmp_path / "lower"
    build(lower, {"etc/passwd": "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
                  "etc/group": "root:x:0:\nnogroup:x:65534:\n"})
    ctx = tmp_path / "ctx"
    build(ctx, {"d/a": "a" * 5000, "d/sub/b": "b", "d/sub/deeper/c": "c", "d/empty/": D(),
                "d/skip.log": "nope", "d/link": L("a"), "f.txt": "file", "dd/x": "x",
                "hard/one": "1", "dirx/sub/f": "f",
                "long/" + "n" * 120 + "/" + "m" * 130: "long names"})
    os.link(ctx / "hard/one", ctx / "hard/two")
    os.mkfifo(ctx / "d/fifo", 0o640)
    os.chmod(ctx / "d/sub", 0o2775)
    os.chmod(ctx / "d/sub/deeper", 0o500)
    os.chown(ctx / "d/sub", 0, 50)
    os.chmod(ctx / "d/a", 0o4755)
    os.setxattr(ctx / "d/a", "user.note", b"kept")
    os.setxattr(ctx / "dirx/sub", "user.note", b"on a directory")
    for path in ["d/sub/deeper", "d/sub", "d"]:
        os.utime(ctx / path, ns=(1, 100 * 10**9 + 5))
    upper = tmp_path / "upper"
    upper.mkdir()
    sources = options.get("sources", [{"path": options.get("source", "d")}])
    workdir = str(options.get("workdir", "/"))
    job = {
        "lowers": [str(lower)], "upper": str(upper), "sources": sources, "contents": [],
        "context": str(ctx), "dockerfile": "", "source_layers": None, "dest": dest,
        "workdir": workdir, "chown": options.get("chown"), "chmod": options.get("chmod"),
        "parents": False, "excludes": options.get("excludes", []), "unpack": False,
        "tmp": str(tmp_path), "direct": True,
    }
    epoch = options.get("epoch")
    out = io.BytesIO()
    stream = LayerStream(upper, out, epoch=epoch)  # type: ignore[arg-type]
    assert _in_child(job, stream) is None
    layer = stream.finish()
    assert (layer is not None) == streamed, stream.failure
    if layer is not None:
        expected = io.BytesIO()
        assert write_layer(upper, expected, epoch=epoch) == layer  # type: ignore[arg-type]
        assert out.getvalue() == expected.getvalue()


def _stream_job(
    tmp_path: Path, ctx: Path, upper: Path | None = None
) -> tuple[dict[str, object], Path]:
    if upper is None:
        upper = tmp_path / "upper"
        upper.mkdir()
    job = {
        "lowers": [], "upper": str(upper), "sources": [{"path": "d"}], "contents": [],
        "context": str(ctx), "dockerfile": "", "source_layers": None, "dest": "/app",
        "workdir": "/", "chown": None, "chmod": None, "parents": False, "excludes": [],
        "unpack": False, "tmp": str(tmp_path), "direct": True,
    }
    return job, upper


@needs_root
def test_a_streamed_copy_reports_a_long_error_instead_of_waiting(tmp_path: Path) -> None:
    """The child's report (a traceback of 100 KB here, from a tree deeper than Python's
    recursion) comes after it has closed its announcements: nothing waits on a full pipe."""
    import threading

    from soute.build.copystep import _in_child
    from soute.layer import LayerStream

    deep = tmp_path / "ctx" / "d"
    for _ in range(600):
        deep = deep / "a"
    deep.mkdir(parents=True)
    job, upper = _stream_job(tmp_path, tmp_path / "ctx")
    stream = LayerStream(upper, io.BytesIO())
    result: list[str | None] = []
    thread = threading.Thread(target=lambda: result.append(_in_child(job, stream)), daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the copy child and its reader wait on each other"
    assert result[0] is not None and "RecursionError" in result[0]
    stream.fail("the copy failed")


@needs_root
def test_a_streamed_copy_of_a_far_future_directory_falls_back(tmp_path: Path) -> None:
    """A directory time past what the announcement holds (2262) stops the stream; the layer
    is then written from the finished tree, which keeps that time (a PAX record)."""
    from soute.build.copystep import _in_child
    from soute.layer import LayerStream, write_layer

    build(tmp_path / "ctx", {"d/f": "x"})
    os.utime(tmp_path / "ctx" / "d", (10_500_000_000, 10_500_000_000))
    job, upper = _stream_job(tmp_path, tmp_path / "ctx")
    stream = LayerStream(upper, io.BytesIO())
    assert _in_child(job, stream) is None
    assert stream.finish() is None
    out = io.BytesIO()
    write_layer(upper, out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        assert tar.getmember("app").mtime == 10_500_000_000



@needs_root
def test_the_walk_writes_files_itself_while_the_writer_is_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past a backlog of frames for the writer process, the walk writes files itself: the
    files, and the layer streamed while they are written, are those of a plain copy."""
    from soute.build import copy as copy_module
    from soute.build import copyevents
    from soute.build.copystep import _in_child
    from soute.layer import LayerStream, write_layer

    files = {"d/0big": "b" * (8 << 20)}
    files.update({f"d/s{i // 40:02d}/f{i:03d}": f"{i}" * (i % 7 + 1) for i in range(400)})
    build(tmp_path / "ctx", files)
    log = tmp_path / "writers"
    original = copy_module._write_regular

    def counted(*args: object) -> None:  # runs in the walk's process or the writer's
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(copyevents, "_BACKLOG", 512)
    monkeypatch.setattr(copy_module, "_write_regular", counted)
    job, upper = _stream_job(tmp_path, tmp_path / "ctx")
    streamed = io.BytesIO()
    stream = LayerStream(upper, streamed)
    assert _in_child(job, stream) is None
    layer = stream.finish()
    assert layer is not None, stream.failure
    for name, text in files.items():
        assert (upper / "app" / name.removeprefix("d/")).read_text() == text
    walked = io.BytesIO()
    assert write_layer(upper, walked).diff_id == layer.diff_id
    assert streamed.getvalue() == walked.getvalue()
    # The writer took the large file and the next few, the walk the files after them (a
    # backlog of 512 bytes is four frames, in the walk's own buffer).
    assert len(collections.Counter(log.read_text().split())) == 2


@needs_root
def test_a_file_the_writer_process_cannot_write_fails_the_copy(tmp_path: Path) -> None:
    """The streamed copy hands its files to a writer process: a write that fails there
    fails the copy with its error, as one on the walk's side would, nothing after it is
    written, and the layer is left to write_layer (the stream stops)."""
    from soute.build.copystep import _in_child
    from soute.layer import LayerStream

    ctx = tmp_path / "ctx"
    build(ctx, {"d/a": "a", "d/b/big": "x" * (1 << 20), "d/b/c": "c", "d/z": "z"})
    upper = tmp_path / "upper"
    upper.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(upper)], check=True)
    try:
        job, _ = _stream_job(tmp_path, ctx, upper=upper)
        stream = LayerStream(upper, io.BytesIO())  # type: ignore[arg-type]
        assert _in_child(job, stream) == "copy to /app failed: No space left on device"
        assert stream.finish() is None
        assert (upper / "app/a").read_text() == "a"
        assert not (upper / "app/b/c").exists() and not (upper / "app/z").exists()
    finally:
        subprocess.run(["umount", str(upper)], check=True)


@needs_root
def test_a_full_disk_fails_the_copy_instead_of_cutting_the_file(tmp_path: Path) -> None:
    """copy_file_range reports a full destination by copying nothing more (0), not by an
    error: the copy must then fail with ENOSPC, never keep a short file."""
    ctx = tmp_path / "ctx"
    build(ctx, {"big": "x" * (1 << 20)})
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(upper)], check=True)
    try:
        with pytest.raises(SouteError, match=r"^copy to /big failed: No space left on device$"):
            copy_into([Source("big", BuildContext(ctx))], "/big", target_root=lower,
                      write_root=upper)
    finally:
        subprocess.run(["umount", str(upper)], check=True)
