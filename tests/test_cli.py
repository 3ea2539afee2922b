"""The soute command as users run it: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUILDKIT_PARSER


def soute(*args: str, input: bytes | None = None, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soute.cli.main", *args],
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(p: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert p.returncode == code, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


def test_ast_format_is_buildkit_dump() -> None:
    case = BUILDKIT_PARSER / "testfiles" / "brimstone-consuldock"
    p = soute("parse", "-f", str(case / "Dockerfile"), "--format", "ast")
    assert p.returncode == 0, p.stderr
    assert p.stdout == (case / "result").read_text()


def test_json_format_from_stdin() -> None:
    p = soute("parse", "-f", "-", "--format", "json",
              input=b"FROM debian AS base\nRUN <<EOF\necho hi\nEOF\nCMD [\"sh\"]\n")
    assert p.returncode == 0, p.stderr
    nodes = json.loads(p.stdout)
    assert [n["cmd"] for n in nodes] == ["FROM", "RUN", "CMD"]
    assert nodes[1]["heredocs"] == [{"name": "EOF", "file_descriptor": 0, "content": "echo hi\n"}]
    assert (nodes[1]["start_line"], nodes[1]["end_line"]) == (2, 4)
    assert nodes[2] == {
        "cmd": "CMD", "sub_cmd": None, "json": True, "original": 'CMD ["sh"]',
        "start_line": 5, "end_line": 5, "flags": [], "value": ["sh"], "heredocs": [],
    }


def test_text_format_lists_instructions(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM debian:bookworm\nRUN apt-get update && \\\n    apt-get install -y curl\n"
    )
    p = soute("parse", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["1", "FROM", "debian:bookworm"]
    assert lines[1].split()[:3] == ["2-3", "RUN", "apt-get"]


def test_missing_dockerfile_is_one_line(tmp_path: Path) -> None:
    line = assert_one_line_error(soute("parse", "-f", str(tmp_path / "nope")))
    assert str(tmp_path / "nope") in line and "no such file" in line


def test_parse_error_names_file_and_line(tmp_path: Path) -> None:
    df = tmp_path / "Dockerfile"
    df.write_text("FROM a\nRUN <<EOF\necho never ends\n")
    line = assert_one_line_error(soute("parse", "-f", str(df), "--format", "ast"))
    assert line.startswith(f"{df}:2: unterminated heredoc"), line


def test_unknown_command_suggests() -> None:
    line = assert_one_line_error(soute("parze"))
    assert "unknown command 'parze'" in line and "'parse'" in line


def test_unknown_global_option() -> None:
    assert_one_line_error(soute("--nope", "parse"))


@pytest.mark.parametrize("flag", ["--version", "-v"])
def test_version(flag: str) -> None:
    p = soute(flag)
    assert p.returncode == 0 and p.stdout.startswith("soute version ")


def test_root_option_and_env(tmp_path: Path) -> None:
    p = soute("--root", str(tmp_path / "r1"), "version")
    assert f"store {tmp_path / 'r1'}" in p.stdout
    p = soute("version", env={"SOUTE_ROOT": str(tmp_path / "r2")})
    assert f"store {tmp_path / 'r2'}" in p.stdout


def test_help_lists_commands() -> None:
    p = soute("--help")
    assert p.returncode == 0
    assert "parse" in p.stdout and "--root" in p.stdout


def test_a_relative_root_works_from_its_directory(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "f.txt").write_text("copied\n")
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM busybox\nCOPY f.txt /f.txt\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "soute.cli.main", "--root", "store", *args],
                              cwd=tmp_path, capture_output=True, text=True)

    assert run("bootstrap", "busybox").returncode == 0
    built = run("build", "-q", "-t", "rel", "ctx")
    assert built.returncode == 0, built.stderr
