"""soute analyze: real builds on a busybox base, then layers, waste, efficiency and --ci."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from soute.errors import SouteError
from soute.lint.analyze import analyze_layers, parse_ratio, parse_size
from soute_cli import busybox_store, ok, soute

BIG = 3_000_000

# The seeds' superalpine1 vs superalpine2 lesson, in miniature: the same file made and
# deleted in two RUNs (its bytes stay in the first layer) or in one (they never land).
TWO_RUNS = f"""\
FROM busybox
RUN head -c {BIG} /dev/urandom > /big && echo x > /keep
RUN rm /big
"""
ONE_RUN = f"""\
FROM busybox
RUN head -c {BIG} /dev/urandom > /big && echo x > /keep && rm /big
"""
SHADOWED = """\
FROM busybox
RUN head -c 200000 /dev/urandom > /s
RUN head -c 50000 /dev/urandom > /s
"""
OPAQUE = """\
FROM busybox
RUN mkdir /d && head -c 100000 /dev/urandom > /d/f
RUN rm -rf /d && mkdir /d
"""
COUNTS = """\
FROM busybox
RUN mkdir -p /c/sub && echo a > /c/a && echo b > /c/b && echo x > /c/sub/x
RUN echo changed > /c/a && echo new > /c/new && rm /c/b && rm -rf /c/sub
"""
APT_LISTS = """\
FROM busybox
RUN mkdir -p /var/lib/apt/lists/partial && head -c 20000 /dev/urandom \
    > /var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with busybox and the images above, shared by the tests of this file."""
    path = busybox_store(tmp_path_factory)
    for name, text in (("two-runs", TWO_RUNS), ("one-run", ONE_RUN), ("shadowed", SHADOWED),
                       ("opaque", OPAQUE), ("counts", COUNTS), ("apt-lists", APT_LISTS)):
        ok(soute(path, "build", "-q", "-t", name, "-", input=text))
    return path


def analysis(root: Path, name: str, *extra: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ok(soute(root, "analyze", "--format", "json", *extra, name)))
    return doc


def rules(doc: dict[str, Any]) -> list[str | None]:
    return [s["rule"] for s in doc["suggestions"]]


# ------------------------------------------------------------------------- the seeds' lesson


def test_file_removed_in_a_later_run_is_wasted(root: Path) -> None:
    doc = analysis(root, "two-runs")
    layers = doc["layers"]
    assert [layer["index"] for layer in layers] == [0, 1, 2]
    assert layers[1]["instruction"].startswith("RUN head -c")
    assert layers[2]["instruction"] == "RUN rm /big"
    assert (layers[1]["added"], layers[1]["changed"], layers[1]["removed"]) == (2, 0, 0)
    assert (layers[2]["added"], layers[2]["changed"], layers[2]["removed"]) == (0, 0, 1)
    assert layers[1]["wasted"] == BIG

    wasted = doc["wasted"]
    assert wasted["total"] == BIG and wasted["files"] == 1
    [big] = wasted["paths"]
    assert (big["path"], big["size"], big["how"]) == ("/big", BIG, "removed")
    assert big["added_by"]["layer"] == 1 and "head -c" in big["added_by"]["created_by"]
    assert big["hidden_by"]["layer"] == 2 and "rm /big" in big["hidden_by"]["created_by"]

    total = sum(layer["size"] for layer in layers)
    assert doc["size"] == total
    assert doc["efficiency"] == pytest.approx(1 - BIG / total)
    assert doc["efficiency"] < 0.9
    # The lint rule for "added in one layer, removed in a later one".
    [s] = [s for s in doc["suggestions"] if s["rule"] == "SOU006"]
    assert s["name"] == "RemovedInLaterLayer" and s["bytes"] == BIG and s["layers"] == [1, 2]


def test_file_made_and_removed_in_one_run_is_not(root: Path) -> None:
    doc = analysis(root, "one-run")
    assert doc["wasted"] == {"total": 0, "files": 0, "paths": [], "groups": []}
    assert doc["efficiency"] == 1.0
    assert doc["suggestions"] == []
    assert doc["layers"][1]["added"] == 1  # /keep only


def test_ci_fails_past_the_thresholds(root: Path) -> None:
    p = soute(root, "analyze", "--ci", "two-runs")
    assert p.returncode == 1
    assert "FAIL lowest-efficiency" in p.stdout and "Result: FAIL" in p.stdout

    p = soute(root, "analyze", "--ci", "one-run")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS lowest-efficiency" in p.stdout and "Result: PASS" in p.stdout

    # Each threshold on its own, in both forms of the command.
    args = ("--ci", "--lowest-efficiency", "0.1")
    assert soute(root, "image", "analyze", *args, "two-runs").returncode == 0
    p = soute(root, "analyze", *args, "--highest-wasted-bytes", "2MB", "two-runs")
    assert p.returncode == 1
    assert "FAIL highest-wasted-bytes" in p.stdout and "PASS lowest-efficiency" in p.stdout
    assert soute(root, "analyze", *args, "--highest-wasted-bytes", "3MiB",
                 "two-runs").returncode == 0
    p = soute(root, "analyze", "--format", "json", "--ci", "--lowest-efficiency", "95%",
              "two-runs")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert doc["ci"]["passed"] is False
    assert [c["name"] for c in doc["ci"]["checks"] if not c["passed"]] == ["lowest-efficiency"]
    assert "FAIL lowest-efficiency" in p.stderr


# ------------------------------------------------------------------------- kinds of waste


def test_file_rewritten_later_is_shadowed_waste(root: Path) -> None:
    doc = analysis(root, "shadowed")
    [w] = doc["wasted"]["paths"]
    assert (w["path"], w["size"], w["how"]) == ("/s", 200_000, "shadowed")
    assert (w["added_by"]["layer"], w["hidden_by"]["layer"]) == (1, 2)
    assert doc["layers"][2]["changed"] == 1 and doc["layers"][2]["added"] == 0
    # Two RUNs writing the same file: the rule about RUNs that could be one.
    assert rules(doc) == ["SOU005"]


def test_opaque_directory_hides_what_was_under_it(root: Path) -> None:
    doc = analysis(root, "opaque")
    [w] = doc["wasted"]["paths"]
    assert (w["path"], w["size"], w["how"]) == ("/d/f", 100_000, "removed")
    assert (w["added_by"]["layer"], w["hidden_by"]["layer"]) == (1, 2)
    # /d is listed again with the same mode (not a change); /d/f is removed.
    assert (doc["layers"][2]["added"], doc["layers"][2]["changed"],
            doc["layers"][2]["removed"]) == (0, 0, 1)
    assert "SOU006" in rules(doc)


def test_added_changed_removed_counts(root: Path) -> None:
    layers = analysis(root, "counts")["layers"]
    # /c, /c/sub, /c/a, /c/b, /c/sub/x
    assert (layers[1]["added"], layers[1]["changed"], layers[1]["removed"]) == (5, 0, 0)
    # /c/new added; /c/a changed; /c/b, /c/sub and /c/sub/x removed
    assert (layers[2]["added"], layers[2]["changed"], layers[2]["removed"]) == (1, 1, 3)
    assert layers[0]["added"] > 100 and layers[0]["instruction"]  # busybox's comment


def test_apt_lists_left_in_the_image(root: Path) -> None:
    doc = analysis(root, "apt-lists")
    [s] = doc["suggestions"]
    assert (s["rule"], s["name"], s["layers"]) == ("SOU003", "AptListsNotRemoved", [1])
    assert s["bytes"] == 20_000
    assert doc["wasted"]["total"] == 0  # left behind is not wasted: it is still visible


# ------------------------------------------------------------------------- output and errors


def test_json_schema(root: Path) -> None:
    doc = analysis(root, "two-runs")
    assert {"image", "names", "size", "layers", "wasted", "efficiency",
            "suggestions"} <= set(doc)
    assert doc["image"].startswith("sha256:") and "docker.io/library/two-runs:latest" in \
        doc["names"]
    assert set(doc["layers"][0]) == {"index", "diff_id", "size", "created_by", "comment",
                                     "instruction", "added", "changed", "removed", "wasted"}
    assert set(doc["wasted"]) == {"total", "files", "paths", "groups"}
    assert set(doc["wasted"]["paths"][0]) == {"path", "size", "how", "added_by", "hidden_by"}
    assert set(doc["wasted"]["groups"][0]) == {"path", "size", "files", "added_by",
                                               "hidden_by"}
    assert doc["wasted"]["groups"][0]["path"] == "/"
    assert set(doc["suggestions"][0]) == {"rule", "name", "message", "fix", "bytes", "layers"}
    assert isinstance(doc["efficiency"], float)
    assert "ci" not in doc


def test_text_report(root: Path) -> None:
    out = ok(soute(root, "analyze", "two-runs"))
    lines = out.splitlines()
    assert lines[0].startswith("Image: two-runs (")
    header = next(line for line in lines if line.startswith("LAYER"))
    assert header.split() == ["LAYER", "SIZE", "ADDED", "CHANGED", "REMOVED", "WASTED",
                              "CREATED", "BY"]
    assert any(line.split()[:1] == ["2"] and line.endswith("RUN rm /big") for line in lines)
    assert "Wasted: 3MB (3000000 bytes) in 1 file" in out
    assert any(line.split() == ["3MB", "removed", "1", "2", "/big"] for line in lines)
    assert "Efficiency: " in out and "Suggestions:" in out
    assert "SOU006 RemovedInLaterLayer" in out
    assert out.index("LAYER") < out.index("Wasted:") < out.index("Efficiency:") \
        < out.index("Suggestions:")


def test_unknown_image_is_one_line(root: Path) -> None:
    p = soute(root, "analyze", "no-such-image")
    assert p.returncode == 1
    assert p.stdout == "" and len(p.stderr.splitlines()) == 1
    assert "No such image: no-such-image" in p.stderr


@pytest.mark.parametrize("args, message", [
    (["--ci", "--highest-wasted-bytes", "20XB"], "--highest-wasted-bytes: invalid size"),
    (["--ci", "--lowest-efficiency", "1.5"], "--lowest-efficiency: invalid ratio"),
    (["--lowest-efficiency", "0.5"], "--lowest-efficiency is a --ci threshold"),
])
def test_bad_thresholds_are_one_line(root: Path, args: list[str], message: str) -> None:
    p = soute(root, "analyze", *args, "two-runs")
    assert p.returncode == 1 and p.stdout == ""
    assert len(p.stderr.splitlines()) == 1 and message in p.stderr


def test_parse_size() -> None:
    assert parse_size("1000") == 1000
    assert parse_size("20MB") == parse_size("20mb") == parse_size("20M") == 20_000_000
    assert parse_size("20MiB") == 20 * 1024 * 1024
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("2kB") == 2000 and parse_size("2KiB") == 2048
    for bad in ("", "x", "-1", "20XB", "1 2", "MB"):
        with pytest.raises(SouteError):
            parse_size(bad)


def test_parse_ratio() -> None:
    assert parse_ratio("0.9") == 0.9
    assert parse_ratio("90%") == pytest.approx(0.9)
    assert parse_ratio("1") == 1.0 and parse_ratio("0") == 0.0
    for bad in ("1.5", "-0.1", "abc", "120%", ""):
        with pytest.raises(SouteError):
            parse_ratio(bad)


# ------------------------------------------------------------------------- crafted layer tars


def _tar(*members: tuple[str, str, bytes | str]) -> bytes:
    """A layer: (name, type, data) with type file, dir, hardlink (data: the target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in members:
            ti = tarfile.TarInfo(name)
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, str(data)
                tf.addfile(ti)
            else:
                body = data if isinstance(data, bytes) else data.encode()
                ti.size = len(body)
                tf.addfile(ti, io.BytesIO(body))
    return buf.getvalue()


def _analyze(*layers: bytes) -> Any:
    blobs = {f"sha256:{i}": data for i, data in enumerate(layers)}
    return analyze_layers([(d, len(b), f"RUN step {d}", "") for d, b in blobs.items()],
                          lambda d: io.BytesIO(blobs[d]))


def test_crafted_layers_whiteout_order_and_prefixes() -> None:
    # "./" prefixes are the same paths; a whiteout listed after the layer's own entry still
    # acts on the lower layer only.
    a = _analyze(
        _tar(("./etc/", "dir", b""), ("./etc/x", "file", b"1" * 1000)),
        _tar(("etc/x", "file", b"2" * 10), ("etc/.wh.x", "file", b"")),
    )
    [w] = a.wasted_files
    assert (w.path, w.size, w.how, w.added_by, w.hidden_by) == ("/etc/x", 1000, "removed", 0, 1)
    assert (a.layers[1].added, a.layers[1].changed, a.layers[1].removed) == (1, 0, 1)


def test_crafted_layers_file_over_directory_removes_its_tree() -> None:
    a = _analyze(
        _tar(("d", "dir", b""), ("d/a", "file", b"a" * 300), ("d/b", "file", b"b" * 200)),
        _tar(("d", "file", b"now a file")),
    )
    assert sorted((w.path, w.size) for w in a.wasted_files) == [("/d/a", 300), ("/d/b", 200)]
    assert (a.layers[1].added, a.layers[1].changed, a.layers[1].removed) == (0, 1, 2)


def test_crafted_layers_hard_link_keeps_content() -> None:
    # Removing one name of a hard-linked file wastes nothing while the other name remains;
    # removing that one too wastes the content once.
    a = _analyze(
        _tar(("f", "file", b"z" * 500), ("g", "hardlink", "f")),
        _tar((".wh.f", "file", b"")),
    )
    assert a.wasted == 0
    a = _analyze(
        _tar(("f", "file", b"z" * 500), ("g", "hardlink", "f")),
        _tar((".wh.f", "file", b"")),
        _tar((".wh.g", "file", b"")),
    )
    [w] = a.wasted_files
    assert (w.path, w.size, w.added_by, w.hidden_by) == ("/g", 500, 0, 2)
