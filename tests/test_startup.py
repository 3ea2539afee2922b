"""What keeps soute's start-up short: the dataclass method table (soute._dccache)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Run in a fresh interpreter: install() changes the dataclasses module of its process.
PROGRAM = """
import builtins, dataclasses, sys
from soute import _dccache

print(_dccache.install(sys.argv[1]))
seen = []  # what dataclasses hands to exec(): source strings, or code from the table
real_exec = builtins.exec
def watching_exec(code, *args):
    seen.append(type(code).__name__)
    return real_exec(code, *args)
builtins.exec = watching_exec

@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: list = dataclasses.field(default_factory=list, compare=False)

p = Point(1, tags=["a"])
assert p == Point(1, 0) and p != Point(2) and hash(p) == hash(Point(1))
assert repr(p) == "Point(x=1, y=0, tags=['a'])", repr(p)
assert dataclasses.replace(p, y=5).y == 5 and dataclasses.asdict(p)["tags"] == ["a"]
try:
    p.x = 3
except dataclasses.FrozenInstanceError:
    pass
else:
    raise AssertionError("not frozen")
print(sorted(set(seen)))
"""

TABLE = """
import dataclasses, sys
from soute import _dccache
import builtins
sources = set()
real_exec = builtins.exec
def record(source, *args):
    sources.add(source)
    return real_exec(source, *args)
dataclasses.exec = record

@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: list = dataclasses.field(default_factory=list, compare=False)

dataclasses.exec = real_exec
import marshal, zlib
index, blobs = {}, bytearray()
for s in sorted(sources):
    entry = marshal.dumps((s, compile(s, "<string>", "exec")))
    index.setdefault(zlib.crc32(s.encode()), []).append((len(blobs), len(entry)))
    blobs += entry
head = marshal.dumps({k: tuple(v) for k, v in index.items()})
with open(sys.argv[1], "wb") as f:
    f.write(_dccache._magic() + len(head).to_bytes(4, "little") + head + blobs)
"""


def python(program: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", program, *args], capture_output=True,
                         text=True, env={"PYTHONPATH": str(SRC)}, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dataclasses_from_the_table_behave_as_compiled_ones(tmp_path: Path) -> None:
    table = tmp_path / "table.bin"
    python(TABLE, str(table))
    lines = python(PROGRAM, str(table)).splitlines()
    assert lines[0] == "True"
    # Every method came from the table as code: no source string was compiled.
    assert lines[1] == "['code']", lines


def test_a_missing_or_foreign_table_changes_nothing(tmp_path: Path) -> None:
    assert python(PROGRAM, str(tmp_path / "none.bin")).splitlines()[:2] == ["False", "['str']"]
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"\x00\x01\x02\x03" + bytes(64))
    assert python(PROGRAM, str(foreign)).splitlines()[:2] == ["False", "['str']"]


def test_a_table_misses_a_changed_class(tmp_path: Path) -> None:
    """A class whose methods' source is not in the table is compiled as usual."""
    table = tmp_path / "table.bin"
    python(TABLE.replace("y: int = 0", "w: int = 0"), str(table))
    lines = python(PROGRAM, str(table)).splitlines()
    assert lines[0] == "True"
    assert "str" in lines[1], lines  # an __init__ taking y was not in the table


def test_build_covers_soute_modules(tmp_path: Path) -> None:
    table = tmp_path / "table.bin"
    count = python(f"from soute._dccache import build; print(build({str(table)!r}))")
    assert int(count) > 100
    program = f"""
import builtins, sys
from soute import _dccache
assert _dccache.install({str(table)!r})
seen = []
real_exec = builtins.exec
def watching_exec(code, *args):
    seen.append(type(code).__name__)
    return real_exec(code, *args)
builtins.exec = watching_exec
import soute.container.record
print(sorted(set(seen)))
"""
    assert python(program).strip() == "['code']"


DEFERRED_URLS = """
import sys
from soute._lazy import Deferred, defer_url_parsing

defer_url_parsing()
import pathlib
print(type(sys.modules["urllib.parse"]) is Deferred)  # pathlib took the stand-in
print(pathlib.Path("/a b").as_uri())
from urllib.parse import urlsplit
print(urlsplit("http://host:5000/v2/").port)
import urllib.parse
print(urllib.parse.quote("x y"), type(sys.modules["urllib.parse"]) is Deferred)
"""


def test_pathlib_gets_url_parsing_when_first_used() -> None:
    """The soute command's process defers urllib.parse (3 ms: it imports ipaddress); every
    way of importing it still gives the real module's functions."""
    assert python(DEFERRED_URLS).split("\n") == [
        "True", "file:///a%20b", "5000", "x%20y False", ""]


def test_setup_makes_the_venv_with_debians_python() -> None:
    """scripts/setup's .venv runs on /usr/bin/python3 (PGO and LTO: soute ran 20-25% slower
    on a plain build of the same Python), not on whatever python3 comes first on PATH,
    unless PYTHON names another."""
    default = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    chosen = shutil.which(os.environ.get("PYTHON", default))
    venv_python = SRC.parent / ".venv" / "bin" / "python"
    assert chosen is not None and venv_python.exists()

    def interpreter(python: str | Path, attribute: str) -> Path:
        out = subprocess.run([python, "-c", f"import sys; print(sys.{attribute})"],
                             capture_output=True, text=True, check=True)
        return Path(out.stdout.strip()).resolve()

    # sys.executable: a pyenv shim names the interpreter it runs.
    assert interpreter(venv_python, "_base_executable") == interpreter(chosen, "executable")
