"""`soute run`'s usual command lines, read without argparse (cli.containers.fast_run): the
same values as configure_run's parser, or None so that argparse reads them."""

from __future__ import annotations

import pytest

from soute.cli.containers import configure_run, fast_run
from soute.cli.main import UsageError, _parser

READ_FAST = [
    ["img"],
    ["img", "true"],
    ["--rm", "img", "true"],
    ["--rm", "-d", "-i", "-t", "--init", "--read-only", "-P", "--no-healthcheck", "img"],
    ["--detach", "--interactive", "--tty", "--publish-all", "img", "sh", "-c", "echo hi"],
    ["--rm", "--rm", "img"],
    ["img", "--rm", "-d", "x"],
    ["img", "-h"],
    ["img", "--help"],
    ["img", "-1"],
    ["img", ""],
    ["docker.io/library/debian:bookworm", "ls", "-l", "/"],
    ["--rm", "img@sha256:" + "a" * 64, "true"],
]
LEFT_TO_ARGPARSE = [
    [],
    ["--rm"],
    ["--rm", "--", "img"],
    ["img", "--", "x"],  # argparse drops a "--" here, not there:
    ["img", "x", "--", "-y"],
    ["-it", "img"],
    ["--name", "x", "img"],
    ["--name=x", "img"],
    ["-e", "A=1", "img"],
    ["--r", "img"],
    ["--det", "img"],
    ["-h", "x", "img"],
    ["--help"],
    ["-", "img"],
    ["--network", "host", "img"],
    ["-1", "img"],
]


def argparse_values(argv: list[str]) -> dict[str, object]:
    parser = _parser("soute run", "Create and run a new container from an image",
                     own_process=False)
    configure_run(parser)
    return vars(parser.parse_args(argv))


@pytest.mark.parametrize("argv", READ_FAST, ids=" ".join)
def test_fast_run_reads_what_argparse_reads(argv: list[str]) -> None:
    fast = fast_run(list(argv))
    assert fast is not None
    assert vars(fast) == argparse_values(argv)


@pytest.mark.parametrize("argv", LEFT_TO_ARGPARSE, ids=" ".join)
def test_fast_run_leaves_the_others_to_argparse(argv: list[str]) -> None:
    assert fast_run(list(argv)) is None


def test_fast_run_values_are_fresh() -> None:
    first, second = fast_run(["img"]), fast_run(["img"])
    assert first is not None and second is not None
    first.env.append("A=1")
    assert second.env == []


def test_an_argparse_error_is_still_argparses() -> None:
    with pytest.raises(UsageError):
        argparse_values(["--rm"])
