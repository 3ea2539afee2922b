"""Typed instructions, stages and ARG/ENV scoping, checked against BuildKit's behaviour.

Expected messages are BuildKit's (frontend/dockerfile/instructions and dockerfile2llb); the
scoping cases are the examples of BuildKit's reference.md and its integration tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BUILDKIT_PARSER
from soute.dockerfile.instructions import (
    WINDOWS_SHELL,
    Add,
    Arg,
    ArgDef,
    Cmd,
    Copy,
    Device,
    Dockerfile,
    Entrypoint,
    Env,
    Expose,
    From,
    Healthcheck,
    HealthConfig,
    InlineFile,
    Instruction,
    InstructionError,
    InvalidValue,
    KeyValue,
    Label,
    Maintainer,
    Mount,
    Onbuild,
    Run,
    Shell,
    SourceContent,
    Stopsignal,
    User,
    Volume,
    Workdir,
    format_go_duration,
    parse_dockerfile,
    parse_go_duration,
    parse_mount,
    parse_ports,
    parse_signal,
    parse_trigger,
)
from soute.dockerfile.stages import BuildScope, StageScope, host_platform
from soute.errors import LocatedError, SouteError
from soute.image import platforms
from soute.image.platforms import Platform, PlatformError

FILE = "build/Dockerfile.test"
AMD64 = Platform("linux", "amd64")


def parse(text: str) -> Dockerfile:
    return parse_dockerfile(text, file=FILE)


def one(text: str) -> Instruction:
    """The instruction after a leading FROM."""
    return parse("FROM scratch\n" + text).instructions[1]


def fails(text: str) -> LocatedError:
    with pytest.raises(LocatedError) as info:
        parse(text)
    return info.value


def scope(text: str, build_args: dict[str, str] | None = None, **kw: object) -> BuildScope:
    kw.setdefault("build_platform", AMD64)
    return BuildScope(parse(text), build_args, **kw)  # type: ignore[arg-type]


def walk(build: BuildScope, index: int = -1, base: StageScope | None = None) -> StageScope:
    """Walk one stage to its end and return its scope."""
    stage_scope = build.stage_scope(build.dockerfile.stages[index], base=base)
    for _ in stage_scope.walk():
        pass
    return stage_scope


def walked(build: BuildScope, index: int = -1) -> list[Instruction]:
    return list(build.stage_scope(build.dockerfile.stages[index]).walk())


# ---------------------------------------------------------------------------- each instruction


def test_from_forms() -> None:
    df = parse("FROM --platform=$BUILDPLATFORM golang:1.22 AS Build\nFROM build\nFROM a as b\n")
    first, second, third = df.instructions
    assert isinstance(first, From)
    assert (first.base, first.name, first.platform) == ("golang:1.22", "build", "$BUILDPLATFORM")
    assert (first.line, first.end_line, first.keyword) == (1, 1, "FROM")
    assert first.original == "FROM --platform=$BUILDPLATFORM golang:1.22 AS Build"
    assert isinstance(second, From) and (second.base, second.name) == ("build", "")
    assert isinstance(third, From) and third.name == "b"
    # the stage-name rule: lower-cased, then ^[a-z][a-z0-9-_.]*$
    assert one("FROM x AS a-b_c.9").name == "a-b_c.9"  # type: ignore[attr-defined]


def test_run_forms() -> None:
    shell = one("RUN echo  $HOME \\\n  && ls")
    assert isinstance(shell, Run)
    assert shell.command == ("echo  $HOME   && ls",)
    assert shell.shell_form
    assert shell.argv() == ["/bin/sh", "-c", "echo  $HOME   && ls"]
    assert (shell.line, shell.end_line) == (2, 3)
    exec_form = one('RUN ["ls", "-l"]')
    assert isinstance(exec_form, Run)
    assert exec_form.command == ("ls", "-l") and not exec_form.shell_form
    assert exec_form.argv(["bash", "-c"]) == ["ls", "-l"]
    assert exec_form.network == "default" and exec_form.security == "sandbox"
    assert exec_form.mounts == () and exec_form.flags_used == ()


def test_run_flags() -> None:
    run = one(
        "RUN --mount=type=cache,target=/c --mount=type=secret,id=s --network=none "
        "--security=insecure --device=vendor.com/gpu=all,required true"
    )
    assert isinstance(run, Run)
    assert run.mount_specs == ("type=cache,target=/c", "type=secret,id=s")
    assert run.network == "none" and run.security == "insecure"
    assert run.devices == (Device("vendor.com/gpu=all", required=True),)
    assert run.flags_used == ("mount", "network", "security", "device")
    host = one("RUN --network=host true")
    assert isinstance(host, Run) and host.network == "host"


def test_cmd_and_entrypoint() -> None:
    cmd = one('CMD ["python", "app.py"]')
    assert isinstance(cmd, Cmd) and cmd.command == ("python", "app.py")
    assert cmd.argv() == ["python", "app.py"]
    shell_cmd = one("CMD python app.py")
    assert isinstance(shell_cmd, Cmd)
    assert shell_cmd.argv(["/bin/bash", "-c"]) == ["/bin/bash", "-c", "python app.py"]
    # CMD [] keeps an empty command; ENTRYPOINT [] clears it (nil in BuildKit)
    empty_cmd = one("CMD []")
    assert isinstance(empty_cmd, Cmd) and empty_cmd.argv() == []
    empty_ep = one("ENTRYPOINT []")
    assert isinstance(empty_ep, Entrypoint) and empty_ep.command is None
    assert empty_ep.argv() is None
    bare = one("ENTRYPOINT")
    assert isinstance(bare, Entrypoint) and bare.argv() == ["/bin/sh", "-c", ""]
    ep = one("ENTRYPOINT exec top -b")
    assert isinstance(ep, Entrypoint) and ep.command == ("exec top -b",) and ep.shell_form


def test_env_and_label_pairs() -> None:
    env = one('ENV MY_NAME="John Doe" MY_DOG=Rex\\ The\\ Dog \\\n    MY_CAT=fluffy')
    assert isinstance(env, Env)
    assert env.pairs == (
        KeyValue("MY_NAME", '"John Doe"'),
        KeyValue("MY_DOG", "Rex\\ The\\ Dog"),
        KeyValue("MY_CAT", "fluffy"),
    )
    legacy = one("ENV ONE TWO= THREE=world")
    assert isinstance(legacy, Env)
    assert legacy.pairs == (KeyValue("ONE", "TWO= THREE=world", legacy=True),)
    label = one('LABEL "com.example.vendor"="ACME" version=1.0')
    assert isinstance(label, Label)
    assert label.pairs == (KeyValue('"com.example.vendor"', '"ACME"'), KeyValue("version", "1.0"))
    assert str(label.pairs[1]) == "version=1.0"


def test_simple_instructions() -> None:
    maint = one("MAINTAINER Jane <jane@example.com>")
    assert isinstance(maint, Maintainer) and maint.maintainer == "Jane <jane@example.com>"
    user = one("USER app:app")
    assert isinstance(user, User) and user.user == "app:app"
    workdir = one("WORKDIR /srv/my app")
    assert isinstance(workdir, Workdir) and workdir.path == "/srv/my app"
    sig = one("STOPSIGNAL SIGKILL")
    assert isinstance(sig, Stopsignal) and sig.signal == "SIGKILL"
    vol = one('VOLUME ["/data", " /logs "]')
    assert isinstance(vol, Volume) and vol.volumes == ("/data", "/logs")
    vol2 = one("VOLUME /a /b")
    assert isinstance(vol2, Volume) and vol2.volumes == ("/a", "/b")
    shell = one('SHELL ["powershell", "-command"]')
    assert isinstance(shell, Shell) and shell.shell == ("powershell", "-command")


def test_expose_is_sorted_as_text_before_expansion() -> None:
    expose = one("EXPOSE 8080 80/udp 443 $PORT")
    assert isinstance(expose, Expose)
    assert expose.ports == ("$PORT", "443", "80/udp", "8080")


def test_arg_definitions() -> None:
    arg = one('ARG a1="foo bar" a2 a3=')
    assert isinstance(arg, Arg)
    assert arg.args == (ArgDef("a1", '"foo bar"'), ArgDef("a2"), ArgDef("a3", ""))
    assert [str(a) for a in arg.args] == ['a1="foo bar"', "a2", "a3="]


def test_doc_comments() -> None:
    df = parse(
        "# foo sets foo\nARG foo=bar\n\n# base defines first stage\nFROM busybox AS base\n"
        "# this is irrelevant\nARG foo\n# bar defines bar\n# baz is something else\n"
        "ARG bar baz=123\n"
    )
    assert df.meta_args[0].args[0].doc_comment == "sets foo"
    assert df.stages[0].from_.doc_comment == "defines first stage"
    first, second = df.stages[0].commands
    assert isinstance(first, Arg) and first.args[0].doc_comment == ""
    assert isinstance(second, Arg)
    assert [a.doc_comment for a in second.args] == ["defines bar", "is something else"]


def test_add_and_copy() -> None:
    add = one(
        "ADD --chown=1:2 --chmod=644 --link --keep-git-dir=true --checksum=sha256:abc "
        "--unpack=false --exclude=*.md --exclude=.git https://x/y.tar.gz a /dst/"
    )
    assert isinstance(add, Add)
    assert add.sources == ("https://x/y.tar.gz", "a") and add.dest == "/dst/"
    assert (add.chown, add.chmod, add.link) == ("1:2", "644", True)
    assert (add.keep_git_dir, add.checksum, add.unpack) == (True, "sha256:abc", False)
    assert add.excludes == ("*.md", ".git")
    plain = one("ADD a b")
    assert isinstance(plain, Add)
    assert (plain.keep_git_dir, plain.unpack, plain.link, plain.excludes) == (None, None, False, ())
    copy = one("COPY --from=build --parents --link=FALSE --chmod=u+x ./src/**/*.go /app/")
    assert isinstance(copy, Copy)
    assert (copy.from_, copy.parents, copy.link, copy.chmod) == ("build", True, False, "u+x")
    assert copy.sources == ("./src/**/*.go",) and copy.dest == "/app/"
    json_copy = one('COPY ["a b", "c", "/d"]')
    assert isinstance(json_copy, Copy) and json_copy.sources == ("a b", "c")


def test_healthcheck() -> None:
    hc = one(
        "HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=0 --start-interval=2s "
        "--retries=3 CMD curl -f http://localhost/ || exit 1"
    )
    assert isinstance(hc, Healthcheck)
    assert hc.health == HealthConfig(
        test=("CMD-SHELL", "curl -f http://localhost/ || exit 1"),
        interval=90_000_000_000,
        timeout=500_000_000,
        start_period=0,
        start_interval=2_000_000_000,
        retries=3,
    )
    assert hc.health.describe() == (
        "{Test:[CMD-SHELL curl -f http://localhost/ || exit 1] Interval:1m30s Timeout:500ms "
        "StartPeriod:0s StartInterval:2s Retries:3}"
    )
    exec_hc = one('HEALTHCHECK cmd ["/bin/check", "-q"]')
    assert isinstance(exec_hc, Healthcheck)
    assert exec_hc.health == HealthConfig(test=("CMD", "/bin/check", "-q"))
    none = one("HEALTHCHECK none")
    assert isinstance(none, Healthcheck) and none.health.test == ("NONE",)
    # NONE never reads the flags, not even unknown ones (BuildKit skips flag parsing there)
    ignored = one("HEALTHCHECK --bogus=1 NONE")
    assert isinstance(ignored, Healthcheck) and ignored.health.test == ("NONE",)


def test_onbuild() -> None:
    ob = one("ONBUILD   RUN --mount=type=cache,target=/c make")
    assert isinstance(ob, Onbuild)
    assert ob.expression == "RUN --mount=type=cache,target=/c make"
    assert ob.trigger == "RUN"
    lower = one("onbuild copy --from=x a b")
    assert isinstance(lower, Onbuild) and lower.expression == "copy --from=x a b"
    doc = parse("FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\n").instructions[1]
    assert isinstance(doc, Onbuild)
    assert doc.expression == "RUN <<EOF\necho hi\nEOF"
    # an unknown trigger instruction is only refused when a child image runs it
    later = one("ONBUILD BOGUS x")
    assert isinstance(later, Onbuild)
    with pytest.raises(InstructionError, match="unknown instruction: BOGUS") as info:
        parse_trigger(later.expression, file="child", line=7)
    assert info.value.line == 7


def test_parse_trigger() -> None:
    trig = parse_trigger("COPY --from=build /a /b", line=3)
    assert isinstance(trig, Copy) and trig.from_ == "build" and trig.line == 3
    with pytest.raises(InstructionError, match="single expression"):
        parse_trigger("RUN a\nRUN b", line=2)
    with pytest.raises(InstructionError, match="not a command type"):
        parse_trigger("FROM alpine", line=2)


def test_every_instruction_has_its_type() -> None:
    text = (
        "ARG A\nFROM a\nRUN x\nCMD x\nLABEL a=b\nMAINTAINER m\nEXPOSE 1\nENV a=b\nADD a b\n"
        "COPY a b\nENTRYPOINT x\nVOLUME /v\nUSER u\nWORKDIR /w\nARG b\nONBUILD RUN x\n"
        'STOPSIGNAL 9\nHEALTHCHECK NONE\nSHELL ["sh"]\n'
    )
    df = parse(text)
    names = [type(i).__name__ for i in df.instructions]
    assert names == [
        "Arg", "From", "Run", "Cmd", "Label", "Maintainer", "Expose", "Env", "Add", "Copy",
        "Entrypoint", "Volume", "User", "Workdir", "Arg", "Onbuild", "Stopsignal",
        "Healthcheck", "Shell",
    ]  # fmt: skip
    assert [i.NAME for i in df.instructions] == [line.split()[0] for line in text.splitlines()]
    assert [i.line for i in df.instructions] == list(range(1, 20))


def test_instructions_are_frozen() -> None:
    run = one("RUN x")
    with pytest.raises(AttributeError):
        run.line = 3  # type: ignore[misc]


# ---------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("flag", "link"),
    [("--link", True), ("--link=true", True), ("--link=TRUE", True), ("--link=False", False)],
)
def test_bool_flag_forms(flag: str, link: bool) -> None:
    copy = one(f"COPY {flag} a b")
    assert isinstance(copy, Copy) and copy.link is link


def test_string_slice_flags_repeat() -> None:
    copy = one("COPY --exclude=a --exclude= --exclude=c x y")
    assert isinstance(copy, Copy) and copy.excludes == ("a", "", "c")


def test_empty_string_flag_value() -> None:
    copy = one("COPY --chown= a b")
    assert isinstance(copy, Copy) and copy.chown == ""


def test_flags_that_buildkit_never_reads() -> None:
    arg = one("ARG --whatever x=1")
    assert isinstance(arg, Arg) and arg.args == (ArgDef("x", "1"),)
    sig = one("STOPSIGNAL --whatever SIGTERM")
    assert isinstance(sig, Stopsignal) and sig.signal == "SIGTERM"


def test_unknown_flag_lists_the_instructions_flags() -> None:
    err = fails("FROM a\nCOPY --chowm=1 a b")
    assert err.message == "unknown flag: --chowm (did you mean chown?)"
    assert err.hint == "COPY takes --chmod, --chown, --exclude, --from, --link, --parents"
    assert err.line == 2 and err.file == FILE
    assert str(err).startswith(f"{FILE}:2: unknown flag: --chowm (did you mean chown?)")
    none = fails("FROM a\nUSER --x=1 me")
    assert none.message == "unknown flag: --x" and none.hint == "USER takes no flags"


# ---------------------------------------------------------------------------- errors


ERRORS = [
    # (Dockerfile, BuildKit's message, line)
    ("FROM a\nFOO bar", "unknown instruction: FOO (did you mean FROM?)", 2),
    ("FROM a\nfoo bar", "unknown instruction: foo (did you mean from?)", 2),
    ("FROM a\nFNTRYPOINT x", "unknown instruction: FNTRYPOINT (did you mean ENTRYPOINT?)", 2),
    ("FROM a\n\nxyzzy plugh", "unknown instruction: xyzzy", 3),
    ("RUN true", "no build stage in current context", 1),
    ("ARG a\nARG b", "dockerfile contains no stages to build", 0),
    ("FROM", "FROM requires either one or three arguments", 1),
    ("FROM a b", "FROM requires either one or three arguments", 1),
    ("FROM a AS", "FROM requires either one or three arguments", 1),
    ("FROM a AS b c", "FROM requires either one or three arguments", 1),
    (
        "FROM a AS 1st",
        'invalid name for build stage: "1st", name can\'t start with a number or contain symbols',
        1,
    ),
    (
        "FROM a AS b$",
        'invalid name for build stage: "b$", name can\'t start with a number or contain symbols',
        1,
    ),
    ("FROM --foo a", "unknown flag: --foo", 1),
    ("FROM --platform a", "missing a value on flag: --platform", 1),
    ("FROM --platform=x --platform=y a", "duplicate flag specified: --platform", 1),
    ("FROM a\nMAINTAINER", "MAINTAINER requires exactly one argument", 2),
    ("FROM a\nWORKDIR", "WORKDIR requires exactly one argument", 2),
    ("FROM a\nUSER", "USER requires exactly one argument", 2),
    ("FROM a\nSTOPSIGNAL", "STOPSIGNAL requires exactly one argument", 2),
    ("FROM a\nENV", "ENV requires at least one argument", 2),
    ("FROM a\nLABEL", "LABEL requires at least one argument", 2),
    ("FROM a\nONBUILD", "ONBUILD requires at least one argument", 2),
    ("FROM a\nHEALTHCHECK", "HEALTHCHECK requires at least one argument", 2),
    ("FROM a\nEXPOSE", "EXPOSE requires at least one argument", 2),
    ("FROM a\nVOLUME", "VOLUME requires at least one argument", 2),
    ("FROM a\nARG", "ARG requires at least one argument", 2),
    ("FROM a\nSHELL []", "SHELL requires at least one argument", 2),
    (
        "FROM a\nADD a",
        "ADD requires at least two arguments, but only one was provided. Destination could "
        "not be determined",
        2,
    ),
    (
        "FROM a\nCOPY\t\n\t\tquux \\\n      bar",
        "COPY requires at least two arguments, but only one was provided. Destination could "
        "not be determined",
        2,
    ),
    ("FROM a\nENV =x", "ENV names can not be blank", 2),
    ("FROM a\nLABEL =x", "LABEL names can not be blank", 2),
    ("FROM a\nARG =x", "ARG names can not be blank", 2),
    ("FROM a\nONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", 2),
    ("FROM a\nONBUILD FROM scratch", "FROM isn't allowed as an ONBUILD trigger", 2),
    ("FROM a\nONBUILD maintainer me", "MAINTAINER isn't allowed as an ONBUILD trigger", 2),
    ("FROM a\nONBUILD --x RUN y", "unknown flag: --x", 2),
    ("FROM a\nSHELL /bin/sh -c", "SHELL requires the arguments to be in JSON form", 2),
    ('FROM a\nVOLUME ["/a", " "]', "VOLUME specified can not be an empty string", 2),
    ("FROM a\nMAINTAINER --boo joe@example.com", "unknown flag: --boo", 2),
    ("FROM a\nENV --x a=b", "unknown flag: --x", 2),
    ("FROM a\nLABEL --x a=b", "unknown flag: --x", 2),
    ("FROM a\nEXPOSE --x 80", "unknown flag: --x", 2),
    ("FROM a\nWORKDIR --x /w", "unknown flag: --x", 2),
    ("FROM a\nCMD --x y", "unknown flag: --x", 2),
    ("FROM a\nENTRYPOINT --x y", "unknown flag: --x", 2),
    ('FROM a\nSHELL --x ["sh"]', "unknown flag: --x", 2),
    ("FROM a\nHEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments", 2),
    ("FROM a\nHEALTHCHECK FOO x", 'Unknown type "FOO" in HEALTHCHECK (try CMD)', 2),
    ("FROM a\nHEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD", 2),
    ("FROM a\nHEALTHCHECK CMD []", "Missing command after HEALTHCHECK CMD", 2),
    ("FROM a\nHEALTHCHECK --foo=1 CMD x", "unknown flag: --foo", 2),
    (
        "FROM a\nHEALTHCHECK --interval=50ns CMD x",
        'Interval "interval" cannot be less than 1ms',
        2,
    ),
    (
        "FROM a\nHEALTHCHECK --start-interval=-5s CMD x",
        'Interval "start-interval" cannot be less than 1ms',
        2,
    ),
    ("FROM a\nHEALTHCHECK --timeout=abc CMD x", 'time: invalid duration "abc"', 2),
    ("FROM a\nHEALTHCHECK --start-period=1 CMD x", 'time: missing unit in duration "1"', 2),
    ("FROM a\nHEALTHCHECK --interval=3d CMD x", 'time: unknown unit "d" in duration "3d"', 2),
    ("FROM a\nHEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative (-1)", 2),
    (
        "FROM a\nHEALTHCHECK --retries=x CMD x",
        'strconv.ParseInt: parsing "x": invalid syntax',
        2,
    ),
    (
        "FROM a\nHEALTHCHECK --retries=2147483648 CMD x",
        'strconv.ParseInt: parsing "2147483648": value out of range',
        2,
    ),
    ("FROM a\nHEALTHCHECK --interval CMD x", "missing a value on flag: --interval", 2),
    ("FROM a\nRUN --network=bridge x", 'invalid network mode "bridge"', 2),
    ("FROM a\nRUN --security=privileged x", 'security "privileged" is not valid', 2),
    ("FROM a\nRUN --network=host --network=none x", "duplicate flag specified: --network", 2),
    ("FROM a\nRUN --mount x", "missing a value on flag: --mount", 2),
    ("FROM a\nRUN --mount= x", "failed to parse csv mounts: EOF", 2),
    (
        'FROM a\nRUN --mount=target=/a\\"b x',
        'failed to parse csv mounts: parse error on line 1, column 10: bare " in non-quoted-field',
        2,
    ),
    (
        "FROM a\nRUN --mount=from=$X,target=/x x",
        "'from' doesn't support variable expansion, define alias stage instead",
        2,
    ),
    ("FROM a\nRUN --foo x", "unknown flag: --foo", 2),
    ("FROM a\nRUN --mont=type=cache x", "unknown flag: --mont (did you mean mount?)", 2),
    ("FROM a\nRUN --device=a,b x", "invalid field 'b' must be a key=value pair", 2),
    ("FROM a\nRUN --device=name=a,name=b x", "device name already set to a", 2),
    ("FROM a\nRUN --device=a,colour=b x", "unexpected key 'colour' in 'colour=b'", 2),
    ("FROM a\nCOPY --chmod a b", "missing a value on flag: --chmod", 2),
    ("FROM a\nCOPY --link= a b", "missing a value on flag: --link", 2),
    ("FROM a\nCOPY --link=maybe a b", "expecting boolean value for flag --link, not: maybe", 2),
    ("FROM a\nCOPY --checksum=sha256:x a b", "unknown flag: --checksum", 2),
    ("FROM a\nCOPY --unpack a b", "unknown flag: --unpack", 2),
    ("FROM a\nCOPY --from=a --from=b x y", "duplicate flag specified: --from", 2),
    ("FROM a\nCOPY /foo <<EOF\nEOF", "COPY cannot accept a heredoc as a destination", 2),
    ("FROM a\nADD /foo <<EOF\nEOF", "ADD cannot accept a heredoc as a destination", 2),
    ("FROM a\nADD --parents a b", "unknown flag: --parents", 2),
    ("FROM a\nADD --from=x a b", "unknown flag: --from", 2),
]


@pytest.mark.parametrize(("text", "message", "line"), ERRORS)
def test_buildkit_errors(text: str, message: str, line: int) -> None:
    err = fails(text)
    assert isinstance(err, LocatedError)
    assert err.message == message
    assert err.line == line
    assert err.file == FILE
    where = f"{FILE}:{line}: " if line else f"{FILE}: "
    assert str(err).startswith(where + message)


def test_errors_come_in_file_order() -> None:
    # BuildKit reads instruction by instruction: the stray RUN on line 1 is reported first.
    assert fails("RUN a\nFROM a\nFOO b").line == 1
    assert fails("FROM a\nFOO b\nCOPY a").line == 2


def test_usage_hints_on_argument_counts() -> None:
    assert fails("FROM a\nWORKDIR").hint == "usage: WORKDIR <path>"
    assert fails("FROM a b").hint == "usage: FROM [--platform=<platform>] <image> [AS <name>]"


def test_unknown_instruction_hint_when_buildkit_has_none() -> None:
    err = fails("FROM a\nWORKDIRECTORY /a")
    assert err.message == "unknown instruction: WORKDIRECTORY"
    assert err.hint == "did you mean WORKDIR?"
    far = fails("FROM a\nQQQQQQQ x")
    assert far.hint is not None and far.hint.startswith("instructions: ADD, ARG")


# ---------------------------------------------------------------------------- RUN --mount


def full(spec: str) -> Mount:
    return parse_mount(spec, lambda w: w)


@pytest.mark.parametrize(
    ("spec", "readonly"),
    [
        ("target=/a", True),
        ("type=bind,target=/a", True),
        ("type=cache,target=/a", False),
        ("type=tmpfs,target=/a", False),
        ("type=secret,id=x", True),
        ("type=ssh", True),
        ("type=bind,target=/a,rw", False),
        ("type=bind,target=/a,readwrite=true", False),
        ("type=cache,target=/a,ro", True),
        ("type=cache,target=/a,readonly=1", True),
        ("type=cache,target=/a,ro=false", False),
        ("type=bind,target=/a,rw=F", True),
    ],
)
def test_mount_readonly_defaults(spec: str, readonly: bool) -> None:
    assert full(spec).readonly is readonly


def test_mount_fields() -> None:
    m = full(
        "TYPE=CACHE,id=go,dst=/root/.cache/,from=base,src=/sub,sharing=Locked,mode=0750,"
        "uid=1000,gid=1001"
    )
    assert m == Mount(
        type="cache", id="go", target="/root/.cache/", from_="base", source="/sub",
        sharing="locked", mode=0o750, uid=1000, gid=1001, readonly=False,
    )  # fmt: skip
    assert m.cache_id == "go"
    assert full("type=cache,destination=//root/.cache/").cache_id == "/root/.cache"
    assert full("type=cache,target=/c").effective_sharing == "shared"
    assert full("type=cache,target=/c").file_mode() == 0o755
    tmpfs = full("type=tmpfs,target=/t,size=64m")
    assert tmpfs.size == 64 << 20
    assert full("type=tmpfs,target=/t,size=1.5GiB").size == 3 << 29
    assert full("type=tmpfs,target=/t,size=512").size == 512
    quoted = full('type=bind,"target=/a,b",source=x')
    assert quoted.target == "/a,b"


def test_secret_and_ssh_mounts() -> None:
    secret = full("type=secret,id=aws")
    assert (secret.secret_id, secret.secret_target) == ("aws", "/run/secrets/aws")
    assert secret.file_mode() == 0o400 and not secret.required
    by_target = full("type=secret,target=/etc/token,required")
    assert (by_target.secret_id, by_target.secret_target) == ("token", "/etc/token")
    assert by_target.required
    by_source = full("type=secret,source=npmrc,required=false,uid=1,mode=0440")
    assert (by_source.secret_id, by_source.uid, by_source.mode) == ("npmrc", 1, 0o440)
    as_env = full("type=secret,id=tok,env=TOKEN")
    assert (as_env.env, as_env.secret_target) == ("TOKEN", None)
    ssh = full("type=ssh")
    assert (ssh.ssh_id, ssh.target, ssh.file_mode()) == ("default", "", 0o600)
    assert full("type=ssh,id=github,required=true").ssh_id == "github"
    # BuildKit does not refuse `from` on an ssh mount (only on secret)
    assert full("type=ssh,from=base").from_ == "base"


MOUNT_ERRORS = [
    ("type=bogus", 'unsupported mount type "bogus"'),
    ("type=cach,target=/c", 'unsupported mount type "cach" (did you mean cache?)'),
    ("type=cache,target=/c,sharing=everyone", 'unsupported sharing value "everyone"'),
    ("type=cache,target=/c,sharing=lock",
     'unsupported sharing value "lock" (did you mean locked?)'),
    ("target=/a,required", "unexpected key 'required' for mount type 'bind'"),
    ("required,type=secret,id=x", "unexpected key 'required' for mount type 'bind'"),
    ("type=cache,target=/c,required=true", "unexpected key 'required' for mount type 'cache'"),
    ("type=cache,target=/c,size=1m", "unexpected key 'size' for mount type 'cache'"),
    ("type=tmpfs,target=/t,size=lots", "invalid value for size: lots"),
    ("type=tmpfs,target=/t,size=-1", "invalid value for size: -1"),
    ("target=/a,mode=0755", 'mode not allowed for "bind" type mounts'),
    ("type=tmpfs,target=/a,uid=1", 'uid not allowed for "tmpfs" type mounts'),
    ("target=/a,gid=1", 'gid not allowed for "bind" type mounts'),
    ("type=cache,target=/a,mode=0800", "invalid value 0800 for mode"),
    ("type=cache,target=/a,uid=-1", "invalid value -1 for uid"),
    ("type=cache,target=/a,gid=4294967296", "invalid value 4294967296 for gid"),
    ("type=secret,id=x,from=base", "secret mount should not have a from"),
    ("type=secret,id=x,sharing=shared", "secret mount should not define sharing"),
    ("type=secret", "invalid secret mount. one of source, target required"),
    ("type=secret,source=a,id=b", "both source and id can't be set"),
    ("target=/a,sharing=private", "invalid cache sharing set for bind mount"),
    ("target=/a,nonsense", "invalid field 'nonsense' must be a key=value pair"),
    ("targte=/a", "unexpected key 'targte' in 'targte=/a' (did you mean target?)"),
    ("target=/a,ro=maybe", "invalid value for ro: maybe"),
    ("type=secret,id=x,required=yes", "invalid value for required: yes"),
    ("", "failed to parse csv mounts: EOF"),
    ('"target=/a', 'failed to parse csv mounts: parse error on line 1, column 2: extraneous or '
     'missing " in quoted-field'),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "message"), MOUNT_ERRORS)
def test_mount_errors(spec: str, message: str) -> None:
    with pytest.raises(InvalidValue) as info:
        full(spec)
    assert info.value.message == message


def test_mount_parse_time_pass_is_lenient() -> None:
    # Before variables are known BuildKit only reads `from`; the rest waits for dispatch.
    run = one("RUN --mount=type=bogus,from=base,mode=x true")
    assert isinstance(run, Run)
    assert run.mounts == (Mount(from_="base"),)
    assert run.mount_sources == ("base",)
    # a trailing $ is not a variable
    assert parse_mount("from=stage$").from_ == "stage$"


# ---------------------------------------------------------------------------- durations and values

DURATIONS = [
    # checked against Go 1.19's time.ParseDuration
    ("1m30s", 90_000_000_000),
    ("500ms", 500_000_000),
    ("1.5h", 5_400_000_000_000),
    (".5s", 500_000_000),
    ("+0", 0),
    ("-0", 0),
    ("0", 0),
    ("1\u00b5s", 1000),
    ("1\u03bcs", 1000),
    ("1us", 1000),
    ("-1s", -1_000_000_000),
    ("1h1m1.5s", 3_661_500_000_000),
    ("0.0000000001s", 0),
    ("9223372036854775807ns", 9223372036854775807),
    ("-9223372036854775808ns", -9223372036854775808),
    ("1.000000000000000000001s", 1_000_000_000),
]
BAD_DURATIONS = [
    ("", 'time: invalid duration ""'),
    ("-", 'time: invalid duration "-"'),
    ("1", 'time: missing unit in duration "1"'),
    ("1e3s", 'time: unknown unit "e" in duration "1e3s"'),
    ("1 s", 'time: unknown unit " s" in duration "1 s"'),
    ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
    ("2562048h", 'time: invalid duration "2562048h"'),
    (".s", 'time: invalid duration ".s"'),
    ("1x\u00e9", 'time: unknown unit "x\\xc3\\xa9" in duration "1x\\xc3\\xa9"'),
]


@pytest.mark.parametrize(("text", "ns"), DURATIONS)
def test_go_durations(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize(("text", "message"), BAD_DURATIONS)
def test_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_go_duration(text)
    assert info.value.message == message


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"), (1, "1ns"), (1500, "1.5\u00b5s"), (500_000_000, "500ms"),
        (1_000_000_000, "1s"), (90_000_000_000, "1m30s"), (3_600_000_000_000, "1h0m0s"),
        (5_400_000_000_000, "1h30m0s"), (-1_500_000_000, "-1.5s"), (61_000_000_000, "1m1s"),
        (9223372036854775807, "2562047h47m16.854775807s"),
    ],
)  # fmt: skip
def test_go_duration_strings(ns: int, text: str) -> None:
    assert format_go_duration(ns) == text


@pytest.mark.parametrize(
    ("signal", "number"),
    [("SIGTERM", 15), ("term", 15), ("SIGRTMIN+3", 37), ("RTMAX-1", 63), ("9", 9), ("-3", -3)],
)
def test_signals(signal: str, number: int) -> None:
    assert parse_signal(signal) == number


@pytest.mark.parametrize("signal", ["0", "SIGFOO", "", "+"])
def test_bad_signals(signal: str) -> None:
    with pytest.raises(InvalidValue, match="invalid signal: "):
        parse_signal(signal)


@pytest.mark.parametrize(
    ("ports", "specs"),
    [
        (["80"], ["80/tcp"]),
        (["53/UDP"], ["53/udp"]),
        (["7000-7002/sctp"], ["7000/sctp", "7001/sctp", "7002/sctp"]),
        (["8080:80"], ["80/tcp"]),
        (["127.0.0.1:8080:80/udp"], ["80/udp"]),
        (["[::1]:8080:80"], ["80/tcp"]),
        (["5000-5000"], ["5000/tcp"]),
    ],
)
def test_ports(ports: list[str], specs: list[str]) -> None:
    assert parse_ports(ports) == specs


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("80/xyz", 'invalid port: "80/xyz": invalid proto: xyz'),
        ("/tcp", 'invalid port: "/tcp": no port specified'),
        ("abc", "invalid containerPort: abc"),
        ("90-80", "invalid containerPort: 90-80"),
        ("70000", "invalid containerPort: 70000"),
        ("x:1:80", "invalid IP address: x"),
        ("a:80", "invalid hostPort: a"),
        ("1-3:80-81", "invalid ranges specified for container and host Ports: 80-81 and 1-3"),
    ],
)
def test_bad_ports(port: str, message: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_ports([port])
    assert info.value.message == message


# ---------------------------------------------------------------------------- heredocs


def test_run_heredoc_runs_as_shell_text() -> None:
    run = parse("FROM a\nRUN <<EOF\nls /\nwhoami\nEOF\n").instructions[1]
    assert isinstance(run, Run)
    assert run.command == ("<<EOF",) and run.shell_form
    assert run.files == (InlineFile("EOF", "ls /\nwhoami\n"),)
    assert (run.line, run.end_line) == (2, 5)
    assert run.script().args == ("ls /\nwhoami\n",)
    assert run.script().pipe_file is None


def test_run_heredoc_with_shebang_becomes_a_file() -> None:
    run = parse("FROM a\nRUN <<-EOT\n\t#!/usr/bin/env python3\n\tprint(1)\n\tEOT\n").instructions[1]
    assert isinstance(run, Run)
    assert run.files == (InlineFile("EOT", "\t#!/usr/bin/env python3\n\tprint(1)\n", True),)
    script = run.script()
    assert script.args == ("/dev/pipes/EOT",)
    assert script.pipe_file == InlineFile("EOT", "#!/usr/bin/env python3\nprint(1)\n")
    assert (script.pipe_dir, script.pipe_mode) == ("/dev/pipes/", 0o755)
    # not on Windows: there the text goes to the shell
    assert run.script(os="windows").args == ("#!/usr/bin/env python3\nprint(1)\n",)


def test_run_heredoc_inside_a_longer_line_is_reassembled() -> None:
    run = parse("FROM a\nRUN <<'EOF' | python\nprint(\"hello\")\nEOF\n").instructions[1]
    assert isinstance(run, Run)
    assert run.command == ("<<'EOF' | python",)
    assert run.script().args == ("<<'EOF' | python\nprint(\"hello\")\nEOF",)
    two = parse("FROM a\nRUN cat <<A <<-B\na\nA\n\tb\n\tB\n").instructions[1]
    assert isinstance(two, Run)
    # reassembled from the raw bodies: the shell strips the tabs of <<- itself
    assert two.script().args == ("cat <<A <<-B\na\nA\n\tb\nB",)


def test_run_argv_folds_heredocs_in() -> None:
    run = parse("FROM a\nRUN <<EOF\necho hi\nEOF\n").instructions[1]
    assert isinstance(run, Run)
    assert run.argv() == ["/bin/sh", "-c", "echo hi\n"]
    assert run.argv(WINDOWS_SHELL) == ["cmd", "/S", "/C", "echo hi\n"]
    assert str(run) == "RUN <<EOF"
    assert InlineFile("E", "\ta\n\t\tb\n", chomp=True).content == "a\nb\n"


def test_run_exec_form_has_no_heredocs() -> None:
    run = one('RUN ["<<EOF"]')
    assert isinstance(run, Run) and run.files == () and run.command == ("<<EOF",)


@pytest.mark.parametrize(
    ("text", "sources", "contents"),
    [
        ("COPY /foo /bar", ("/foo",), ()),
        ("COPY <<EOF /bar\nEOF", (), (SourceContent("EOF", "", True),)),
        ("COPY <<EOF /bar\nTESTING\nEOF", (), (SourceContent("EOF", "TESTING\n", True),)),
        ("COPY <<-EOF /bar\n\tTESTING\nEOF", (), (SourceContent("EOF", "TESTING\n", True),)),
        ("COPY <<'EOF' /bar\nTESTING\nEOF", (), (SourceContent("EOF", "TESTING\n", False),)),
        ('COPY <<"EOF" /bar\nX\nEOF', (), (SourceContent("EOF", "X\n", False),)),
        (
            "COPY <<EOF1 <<EOF2 /bar\nthis is the first file\nEOF1\nthis is the second file\nEOF2",
            (),
            (
                SourceContent("EOF1", "this is the first file\n", True),
                SourceContent("EOF2", "this is the second file\n", True),
            ),
        ),
        (
            "COPY <<EOF foo.txt /bar\nthis is inline\nEOF",
            ("foo.txt",),
            (SourceContent("EOF", "this is inline\n", True),),
        ),
        ('COPY <<EOF /quotes\n"quotes"\nEOF', (), (SourceContent("EOF", '"quotes"\n', True),)),
        # BuildKit reads heredoc words even in the JSON form, where no body was collected
        ('COPY ["<<EOF", "/bar"]', (), (SourceContent("EOF", "", True),)),
    ],
)
def test_copy_heredocs(
    text: str, sources: tuple[str, ...], contents: tuple[SourceContent, ...]
) -> None:
    copy = parse("FROM a\n" + text).instructions[1]
    assert isinstance(copy, Copy)
    assert (copy.sources, copy.contents) == (sources, contents)


def test_add_heredoc() -> None:
    add = parse("FROM a\nADD <<EOF /etc/motd\nhello\nEOF\n").instructions[1]
    assert isinstance(add, Add)
    assert add.contents == (SourceContent("EOF", "hello\n", True),) and add.dest == "/etc/motd"


# ---------------------------------------------------------------------------- stages


def test_stages_and_meta_args() -> None:
    df = parse(
        "ARG A=1\nARG B\nFROM x AS Builder\nRUN a\nFROM y\nCOPY --from=builder / /\n"
        "FROM builder AS final\n"
    )
    assert [a.args for a in df.meta_args] == [(ArgDef("A", "1"),), (ArgDef("B"),)]
    assert [(s.index, s.name, s.display_name) for s in df.stages] == [
        (0, "builder", "builder"),
        (1, "", "stage-1"),
        (2, "final", "final"),
    ]
    assert [type(c).__name__ for c in df.stages[0].commands] == ["Run"]
    assert len(df.instructions) == 7 and df.instructions[2] is df.stages[0].from_
    assert df.find_stage("BUILDER") is df.stages[0]
    assert df.find_stage("nope") is None
    assert df.target() is df.stages[2] and df.target("Final") is df.stages[2]
    assert df.directives == {} and df.escape == "\\"


def test_duplicate_stage_names_resolve_to_the_last() -> None:
    df = parse("FROM a AS x\nFROM b AS x\nFROM c\nCOPY --from=x / /\n")
    build = BuildScope(df, build_platform=AMD64)
    copy = df.stages[2].commands[0]
    assert isinstance(copy, Copy)
    assert build.stage_ref(copy) is df.stages[1]


def test_target_not_found() -> None:
    df = parse("FROM a AS build\nFROM b AS final\n")
    with pytest.raises(LocatedError) as info:
        df.target("buidl")
    assert info.value.message == 'target stage "buidl" could not be found (did you mean build?)'


def test_directives_are_kept() -> None:
    df = parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nRUN a `\n  b\n")
    assert df.directives == {"syntax": "docker/dockerfile:1", "escape": "`"}
    assert df.escape == "`"
    run = df.instructions[1]
    assert isinstance(run, Run) and run.command == ("a   b",)


def test_from_resolves_earlier_stages_only_and_exactly() -> None:
    build = scope(
        "ARG BASE=base\nFROM alpine AS base\nFROM $BASE AS one\nFROM Base AS two\n"
        "FROM later AS three\nFROM x AS later\n"
    )
    stages = build.dockerfile.stages
    assert build.resolve_base(stages[1]).stage is stages[0]
    assert build.resolve_base(stages[1]).name == "base"
    # the base name is matched as written: `Base` is an image, not the stage
    assert build.resolve_base(stages[2]).stage is None
    # a stage defined further down is not a base either
    assert build.resolve_base(stages[3]).stage is None


def test_copy_from_references() -> None:
    build = scope(
        "FROM a AS build\nFROM b\nCOPY --from=0 / /\nCOPY --from=BUILD / /\n"
        "COPY --from=nginx:latest / /\nRUN --mount=from=build,target=/b --mount=type=cache,"
        "target=/c true\n"
    )
    df = build.dockerfile
    copies = [c for c in df.stages[1].commands if isinstance(c, Copy)]
    assert [build.stage_ref(c) for c in copies] == [df.stages[0], df.stages[0], "nginx:latest"]
    deps = build.dependencies(df.stages[1])
    assert [(type(d.instr).__name__, d.stage.index, d.ref) for d in deps] == [
        ("Copy", 0, "0"),
        ("Copy", 0, "BUILD"),
        ("Run", 0, "build"),
    ]
    assert deps[2].target == "/b"
    assert build.mount_ref("") == "scratch"


def test_plan_builds_only_what_the_target_needs() -> None:
    text = (
        "FROM a AS base\nFROM base AS deps\nFROM x AS unused\nFROM b AS tools\n"
        "FROM deps AS final\nCOPY --from=tools / /\n"
    )
    build = scope(text)
    assert [s.name for s in build.plan()] == ["base", "deps", "tools", "final"]
    assert [s.name for s in scope(text, target="deps").plan()] == ["base", "deps"]


STAGE_ERRORS = [
    (
        "FROM a\nCOPY --from=$X / /",
        "variable expansion is not supported for --from, define a new stage with FROM using ARG "
        "from global scope as a workaround",
        2,
    ),
    ("FROM a\nFROM b\nCOPY --from=5 / /", "invalid stage index 5", 3),
    ("FROM a\nFROM b\nCOPY --from=-1 / /", "invalid stage index -1", 3),
    ("FROM a AS x\nCOPY --from=x / /", "circular dependency detected on stage: x", 2),
    ("FROM a\nCOPY --from=0 / /", "circular dependency detected on stage: stage-0", 2),
    (
        "FROM a AS x\nCOPY --from=y / /\nFROM b AS y\nCOPY --from=x / /\nFROM c",
        "circular dependency detected on stage: x",
        2,
    ),
    (
        "FROM a AS x\nCOPY --from=y / /\nFROM b AS y\nFROM c\nCOPY --from=x / /",
        'cannot copy from stage "y", it needs to be defined before current stage "x"',
        2,
    ),
    (
        "FROM a AS x\nRUN --mount=from=y,target=/m true\nFROM b AS y\nFROM x",
        'cannot mount from stage "y" to "/m", stage needs to be defined before current command',
        2,
    ),
    ("ARG IMG\nFROM $IMG", "base name ($IMG) should not be blank", 2),
    ("ARG V\nFROM a\nFROM ${V:?needs}", 'failed to process "${V:?needs}": V: needs', 3),
    ("FROM --platform=$NOPE a", "empty platform value from expression $NOPE", 1),
    (
        "FROM --platform=$TARGETPLATFROM a",
        "empty platform value from expression $TARGETPLATFROM (did you mean TARGETPLATFORM?)",
        1,
    ),
]


@pytest.mark.parametrize(("text", "message", "line"), STAGE_ERRORS)
def test_stage_errors(text: str, message: str, line: int) -> None:
    with pytest.raises(LocatedError) as info:
        scope(text).plan()
    assert info.value.message == message
    assert (info.value.line, info.value.file) == (line, FILE)


def test_bad_platform() -> None:
    with pytest.raises(LocatedError) as info:
        scope("FROM --platform=linux/a/b/c/d x").plan()
    assert info.value.message.startswith("failed to parse platform linux/a/b/c/d: ")


def test_onbuild_triggers_of_a_stage_run_in_the_stages_built_from_it() -> None:
    text = (
        "FROM img AS tools\nFROM a AS base\nONBUILD ENV X=1\nONBUILD COPY --from=tools /t /t\n"
        "RUN base\nFROM base AS child\nRUN echo $X\n"
    )
    build = scope(text)
    df = build.dockerfile
    # the trigger's COPY --from makes `tools` a dependency of `child`, not of `base`
    assert [s.name for s in build.plan()] == ["tools", "base", "child"]
    assert [s.name for s in scope(text, target="base").plan()] == ["base"]
    base = walk(build, 1)
    assert "X" not in base.env  # ONBUILD does not run in its own stage
    child = build.stage_scope(df.stages[2], base=base)
    steps = list(child.walk())
    assert [type(i).__name__ for i in steps] == ["Env", "Copy", "Run"]
    assert [i.line for i in steps] == [6, 6, 7]
    assert child.env["X"] == "1"
    # triggers from a base image's config run the same way
    img = build.stage_scope(df.stages[0], image_onbuild=["RUN make"])
    assert [type(i).__name__ for i in img.commands] == ["Run"]
    with pytest.raises(LocatedError) as info:
        build.stage_scope(df.stages[0], image_onbuild=["RUN a\nRUN b"])
    assert info.value.message == "onbuild trigger should be a single expression"
    assert info.value.line == 1
    with pytest.raises(LocatedError, match="unterminated heredoc") as bad:
        build.stage_scope(df.stages[0], image_onbuild=["RUN <<EOF"])
    assert bad.value.line == 1


def test_platform_expansion_error() -> None:
    with pytest.raises(LocatedError) as info:
        scope("FROM --platform=${P:?unset} a").plan()
    assert info.value.message == (
        'failed to process arguments for platform : failed to process "${P:?unset}": P: unset'
    )


def test_every_from_is_expanded_even_unused_stages() -> None:
    with pytest.raises(LocatedError, match="should not be blank"):
        scope("ARG E\nFROM $E AS unused\nFROM a\n").plan()


# ---------------------------------------------------------------------------- platforms


def test_platforms() -> None:
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert Platform.parse("linux/aarch64") == Platform("linux", "arm64")
    assert Platform.parse("linux/arm") == Platform("linux", "arm")
    assert Platform.parse("linux/armhf") == Platform("linux", "arm")  # v7 is arm's default
    assert Platform.parse("linux/armel") == Platform("linux", "arm", "v6")
    assert Platform.parse("Linux/x86_64") == Platform("linux", "amd64")
    assert Platform.parse("windows(10.0.17763)/amd64").format_all() == ("windows(10.0.17763)/amd64")
    assert str(Platform("linux", "arm", "v7")) == "linux/arm/v7"
    with pytest.raises(PlatformError, match="wildcards"):
        Platform.parse("linux/*")
    with pytest.raises(PlatformError, match="unknown operating system or architecture"):
        Platform.parse("plan10")


def test_host_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    def machine(name: str) -> None:
        uname = os.uname_result(("Linux", "host", "6.1", "#1", name))
        monkeypatch.setattr(platforms.os, "uname", lambda: uname)
        platforms._host.cache_clear()

    try:
        machine("aarch64")
        assert host_platform() == Platform("linux", "arm64")
        machine("armv7l")
        assert str(host_platform()) == "linux/arm/v7"
        machine("x86_64")
        assert str(host_platform()) == "linux/amd64"
    finally:
        platforms._host.cache_clear()


def test_predefined_args() -> None:
    build = scope(
        "FROM --platform=$BUILDPLATFORM golang AS b\nARG TARGETPLATFORM TARGETOS TARGETARCH "
        "TARGETVARIANT BUILDPLATFORM BUILDOS BUILDARCH BUILDVARIANT TARGETSTAGE\n",
        target_platform=Platform("linux", "arm", "v7"),
    )
    assert build.resolve_base(build.dockerfile.stages[0]).platform == AMD64
    env = walk(build).env
    assert {k: env[k] for k in env if k != "PATH"} == {
        "TARGETPLATFORM": "linux/arm/v7",
        "TARGETOS": "linux",
        "TARGETARCH": "arm",
        "TARGETVARIANT": "v7",
        "BUILDPLATFORM": "linux/amd64",
        "BUILDOS": "linux",
        "BUILDARCH": "amd64",
        "BUILDVARIANT": "",
        "TARGETSTAGE": "b",
    }


def test_predefined_args_default_to_the_normalised_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # BuildKit normalises its worker's platform: on an arm64 host TARGETVARIANT is empty
    uname = os.uname_result(("Linux", "host", "6.1", "#1", "aarch64"))
    monkeypatch.setattr(platforms.os, "uname", lambda: uname)
    platforms._host.cache_clear()
    try:
        build = BuildScope(parse("FROM a\n"))
    finally:
        platforms._host.cache_clear()
    p = build.predefined
    assert (p["BUILDPLATFORM"], p["BUILDARCH"], p["BUILDVARIANT"]) == ("linux/arm64", "arm64", "")
    assert (p["TARGETPLATFORM"], p["TARGETVARIANT"]) == ("linux/arm64", "")


def test_predefined_args_with_an_os_version() -> None:
    target = Platform.parse("windows(10.0.17763+win32k)/amd64")
    p = scope("FROM a\n", target_platform=target).predefined
    assert p["TARGETPLATFORM"] == "windows(10.0.17763+win32k)/amd64"  # containerd's FormatAll
    assert (p["TARGETOS"], p["TARGETOSVERSION"]) == ("windows", "10.0.17763")
    assert (p["BUILDPLATFORM"], p["BUILDOSVERSION"]) == ("linux/amd64", "")


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("linux/*", '"linux/*": wildcards not yet supported: invalid argument'),
        (
            "linux/a/b/c/d",
            '"c/d" is an invalid component of "linux/a/b/c/d": platform specifier component '
            'must match "^[A-Za-z0-9_.-]+$": invalid argument',
        ),
        ("linux/a/b/c", '"linux/a/b/c": cannot parse platform specifier: invalid argument'),
        ("plan10", '"plan10": unknown operating system or architecture: invalid argument'),
        (
            "l.x/amd64",
            '"l.x" is an invalid OS component of "l.x/amd64": OSAndVersion specifier component '
            r'must match "^([A-Za-z0-9_-]+)(?:\\(([A-Za-z0-9_.%-]*)((?:\\+[A-Za-z0-9_.%-]+)*)'
            r'\\))?$": invalid argument',
        ),
        (
            "windows(%zz)/amd64",
            '"windows(%zz)/amd64" has an invalid OS version "%zz": invalid URL escape "%zz"',
        ),
    ],
)
def test_platform_errors_in_buildkit_words(spec: str, reason: str) -> None:
    with pytest.raises(LocatedError) as info:
        scope(f"FROM --platform={spec} x").plan()
    assert info.value.message == f"failed to parse platform {spec}: {reason}"
    assert info.value.line == 1


def test_predefined_args_need_redeclaring_and_can_be_overridden() -> None:
    text = "FROM alpine\nRUN a\nARG TARGETARCH\nRUN b\n"
    build = scope(text, {"TARGETARCH": "riscv64"})
    st = build.stage_scope(build.dockerfile.stages[0])
    steps = st.walk()
    next(steps)
    assert "TARGETARCH" not in st.env
    next(steps)
    next(steps)
    assert st.env["TARGETARCH"] == "riscv64"
    assert build.unused_build_args() == []


def test_target_stage_arg() -> None:
    # BuildKit's testTargetStageNameArg
    text = (
        "FROM alpine AS base\nWORKDIR /out\nRUN echo $TARGETSTAGE\nARG TARGETSTAGE\n"
        "RUN echo $TARGETSTAGE\nFROM scratch AS foo\nCOPY --from=base /out/ /\n"
        "FROM scratch\nCOPY --from=base /out/ /\n"
    )
    assert walk(scope(text, target="foo"), 0).env["TARGETSTAGE"] == "foo"
    assert walk(scope(text), 0).env["TARGETSTAGE"] == "default"
    named = text + "FROM scratch AS final\nCOPY --from=base /out/ /\n"
    assert walk(scope(named), 0).env["TARGETSTAGE"] == "final"


# ---------------------------------------------------------------------------- ARG / ENV scoping


def test_env_replacement_uses_values_from_before_the_instruction() -> None:
    # reference.md, "Environment replacement"
    build = scope("FROM busybox\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n")
    env = walk(build).env
    assert (env["def"], env["ghi"]) == ("hello", "bye")


def test_environment_replacement_example() -> None:
    # reference.md: WORKDIR ${FOO} -> /bar, ADD . $FOO -> /bar, COPY \$FOO /quux -> $FOO
    build = scope("FROM busybox\nENV FOO=/bar\nWORKDIR ${FOO}\nADD . $FOO\nCOPY \\$FOO /quux\n")
    _, workdir, add, copy = walked(build)
    assert isinstance(workdir, Workdir) and workdir.path == "/bar"
    assert isinstance(add, Add) and add.dest == "/bar"
    assert isinstance(copy, Copy) and copy.sources == ("$FOO",) and copy.dest == "/quux"


def test_global_args_in_from() -> None:
    # reference.md, "Understand how ARG and FROM interact"
    build = scope(
        "ARG  CODE_VERSION=latest\nFROM base:${CODE_VERSION}\nCMD  /code/run-app\n\n"
        "FROM extras:${CODE_VERSION}\nCMD  /code/run-extras\n"
    )
    assert [build.resolve_base(s).name for s in build.dockerfile.stages] == [
        "base:latest",
        "extras:latest",
    ]
    assert "CODE_VERSION" not in walk(build, 0).env
    override = scope("ARG tag=nosuchtag\nFROM busybox:${tag}\n", {"tag": "latest"})
    assert override.resolve_base(override.dockerfile.stages[0]).name == "busybox:latest"


def test_global_arg_redeclared_in_stage() -> None:
    build = scope("ARG VERSION=latest\nFROM busybox:$VERSION\nARG VERSION\nRUN echo $VERSION\n")
    st = walk(build)
    assert st.env["VERSION"] == "latest"
    assert st.run_history(["/bin/sh", "-c", "echo $VERSION"]) == (
        "|1 VERSION=latest /bin/sh -c echo $VERSION"
    )


def test_global_args_are_invisible_in_stages() -> None:
    build = scope("ARG X=1\nFROM a\nWORKDIR /x$X\nRUN env\n")
    workdir = walked(build)[0]
    assert isinstance(workdir, Workdir) and workdir.path == "/x"
    assert "X" not in walk(build).env


def test_arg_scope_starts_at_its_line() -> None:
    # reference.md, "Scope"
    build = scope(
        "FROM busybox\nUSER ${username:-some_user}\nARG username\nUSER $username\n",
        {"username": "what_user"},
    )
    first, _, second = walked(build)
    assert isinstance(first, User) and first.user == "some_user"
    assert isinstance(second, User) and second.user == "what_user"


def test_env_overrides_arg() -> None:
    # reference.md, "Using ARG variables"
    text = "FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=v1.0.0\nRUN echo $CONT_IMG_VER\n"
    st = walk(scope(text, {"CONT_IMG_VER": "v2.0.1"}))
    assert st.env["CONT_IMG_VER"] == "v1.0.0"
    assert st.image_env["CONT_IMG_VER"] == "v1.0.0"
    default = "FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}\n"
    assert walk(scope(default)).image_env["CONT_IMG_VER"] == "v1.0.0"
    assert walk(scope(default, {"CONT_IMG_VER": "v2.0.1"})).image_env["CONT_IMG_VER"] == "v2.0.1"


def test_arg_after_env_wins_in_the_build_but_not_in_the_image() -> None:
    build = scope("FROM a AS one\nENV X=1\nARG X=2\nFROM one AS two\n")
    one_scope = walk(build, 0)
    assert (one_scope.env["X"], one_scope.image_env["X"]) == ("2", "1")
    # a stage built FROM it re-applies the image config's Env over what it inherits
    two = walk(build, 1, base=one_scope)
    assert two.env["X"] == "1"
    assert [a.key for a in two.args] == ["X"]


def test_stage_args_are_inherited_by_child_stages_only() -> None:
    build = scope("FROM a AS base\nARG V=1\nFROM base AS child\nRUN x\nFROM a AS other\n")
    base = walk(build, 0)
    child = walk(build, 1, base=base)
    assert child.env["V"] == "1" and child.args == [ArgDef("V", "1")]
    assert child.run_history(["/bin/sh", "-c", "x"]) == "|1 V=1 /bin/sh -c x"
    other = walk(build, 2)
    assert "V" not in other.env and other.args == []


def test_multi_args() -> None:
    # BuildKit's testMultiArgs
    build = scope(
        'ARG a1="foo bar" a2=box\nARG a3="$a2-foo"\nFROM busy$a2 AS build\n'
        'ARG a3 a4="123 456" a1\nRUN echo -n "$a1:$a3:$a4" > /out\n'
    )
    assert build.resolve_base(build.dockerfile.stages[0]).name == "busybox"
    env = walk(build).env
    assert f"{env['a1']}:{env['a3']}:{env['a4']}" == "foo bar:box-foo:123 456"


def test_quoted_meta_args() -> None:
    # BuildKit's testQuotedMetaArgs
    build = scope(
        'ARG a1="box"\nARG a2="$a1-foo"\nFROM busy$a1 AS build\nARG a2\nARG a3="bar-$a2"\n'
    )
    assert walk(build).env["a3"] == "bar-box-foo"


@pytest.mark.parametrize(
    ("build_args", "expected"),
    [
        ({}, ("my_arg=def_val", "my_arg=d")),
        ({"my_arg": ""}, ("my_arg=def_val", "my_arg=d")),
        ({"my_arg": "override"}, ("my_arg=override", "my_arg=ov")),
    ],
)
def test_default_env_with_args(build_args: dict[str, str], expected: tuple[str, str]) -> None:
    # BuildKit's testDefaultEnvWithArgs
    build = scope(
        "ARG image=idlebox\nFROM busy${image#idle} AS build\nARG my_arg\n"
        'ENV my_arg "my_arg=${my_arg:-def_val}"\nENV my_trimmed_arg "${my_arg%%e*}"\n',
        build_args,
    )
    assert build.resolve_base(build.dockerfile.stages[0]).name == "busybox"
    env = walk(build).env
    assert (env["my_arg"], env["my_trimmed_arg"]) == expected


def test_empty_string_arg_in_env() -> None:
    # BuildKit's testEmptyStringArgInEnv: BAR= is set, FOO is not
    st = walk(scope("FROM busybox\nARG FOO\nARG BAR=\nRUN env\n"))
    assert st.env["BAR"] == "" and "FOO" not in st.env
    assert st.run_history(["env"]) == "|2 FOO= BAR= env"


def test_arg_values_resolve_name_by_name() -> None:
    # unlike ENV, an ARG sees the names declared before it in the same instruction
    st = walk(scope("FROM a\nENV a=0\nARG a=1 b=$a\n"))
    assert (st.env["a"], st.env["b"]) == ("1", "1")
    meta = scope("ARG a=1 b=$a\nFROM img:$b\n")
    assert meta.resolve_base(meta.dockerfile.stages[0]).name == "img:1"


def test_build_args_override_defaults_verbatim() -> None:
    st = walk(scope("FROM a\nARG V=default\nARG W=$V\n", {"V": "$HOME", "W": "x"}))
    assert (st.env["V"], st.env["W"]) == ("$HOME", "x")
    assert walk(scope("FROM a\nARG V=default\n")).env["V"] == "default"


def test_expand_does_not_change_the_scope() -> None:
    build = scope("FROM a\nARG A=1\n")
    st = build.stage_scope(build.dockerfile.stages[0])
    arg = st.expand(build.dockerfile.stages[0].commands[0])
    assert isinstance(arg, Arg) and arg.args == (ArgDef("A", "1"),)
    assert "A" not in st.env and st.args == []


def test_proxy_args() -> None:
    # BuildKit's testBuiltinArgs: proxies reach RUN without an ARG, any spelling
    build = scope(
        "FROM busybox AS build\nARG FOO\nARG BAR\nARG BAZ=bazcontent\nRUN echo\n",
        {"FOO": "foocontents", "http_proxy": "hpvalue", "NO_PROXY": "npvalue"},
    )
    st = walk(build)
    assert (st.env["FOO"], st.env["BAZ"], "BAR" in st.env) == ("foocontents", "bazcontent", False)
    assert "http_proxy" not in st.env
    assert build.proxy_env() == [
        "HTTP_PROXY=hpvalue",
        "http_proxy=hpvalue",
        "NO_PROXY=npvalue",
        "no_proxy=npvalue",
    ]
    assert build.unused_build_args_warning() is None
    declared = walk(scope("FROM a\nARG HTTP_PROXY\n", {"HTTP_PROXY": "p"}))
    assert declared.env["HTTP_PROXY"] == "p"


def test_unused_build_args_warning() -> None:
    build_args = {
        "X": "1", "Y": "2", "G": "3", "http_proxy": "p", "BUILDKIT_INLINE_CACHE": "1",
        "SOURCE_DATE_EPOCH": "0", "TARGETARCH": "arm64",
    }  # fmt: skip
    build = scope("ARG G\nFROM a\nRUN x\nARG Y\n", build_args)
    assert build.unused_build_args_warning() == (
        "[Warning] One or more build-args [X Y] were not consumed"
    )
    walk(build)
    assert build.unused_build_args() == ["X"]
    assert build.unused_build_args_warning() == (
        "[Warning] One or more build-args [X] were not consumed"
    )


def test_sbom_args_stay_out_of_the_environment() -> None:
    st = walk(scope("FROM a\nARG BUILDKIT_SBOM_SCAN_STAGE=true\n"))
    assert "BUILDKIT_SBOM_SCAN_STAGE" not in st.env
    assert st.args == [ArgDef("BUILDKIT_SBOM_SCAN_STAGE", "true")]


def test_source_date_epoch() -> None:
    assert scope("ARG SOURCE_DATE_EPOCH=1700000000\nFROM a\n").source_date_epoch == "1700000000"
    assert scope("FROM a\n", {"SOURCE_DATE_EPOCH": "5"}).source_date_epoch == "5"
    assert scope("FROM a\n").source_date_epoch is None


def test_buildkit_build_args() -> None:
    plain = scope("FROM a\n")
    assert (plain.sandbox_hostname, plain.cache_mount_namespace) == ("buildkitsandbox", "")
    args = {"BUILDKIT_SANDBOX_HOSTNAME": "box", "BUILDKIT_CACHE_MOUNT_NS": "ns"}
    tuned = scope("FROM a\n", args)
    assert (tuned.sandbox_hostname, tuned.cache_mount_namespace) == ("box", "ns")
    assert tuned.unused_build_args() == []


def test_base_image_env_and_default_path() -> None:
    build = scope("FROM a\nENV PATH=$PATH:/opt/bin\n")
    st = build.stage_scope(build.dockerfile.stages[0], image_env=["LANG=C.UTF-8", "EMPTY="])
    assert list(st.env) == ["LANG", "EMPTY", "PATH"]
    list(st.walk())
    assert st.image_env["PATH"].endswith("/sbin:/bin:/opt/bin")
    own_path = build.stage_scope(build.dockerfile.stages[0], image_env={"PATH": "/x"})
    assert own_path.env == {"PATH": "/x"}
    windows = build.stage_scope(build.dockerfile.stages[0], os="windows")
    assert windows.env == {}


def test_env_order_follows_buildkit() -> None:
    st = walk(scope("FROM a\nENV A=1 B=2\nENV A=3\n"))
    # the build environment moves a re-set name to the end; the image config keeps its place
    assert [k for k in st.env if k != "PATH"] == ["B", "A"]
    assert [k for k in st.image_env if k != "PATH"] == ["A", "B"]


# ---------------------------------------------------------------------------- expansion


def test_what_is_expanded() -> None:
    text = (
        "FROM a\nARG U=app D=/dst S=src M=0644 P=8080 V=/vol G=SIGINT N=net\n"
        "ENV $U=$U\nLABEL $U.label=$U\nCOPY --chown=$U --chmod=$M --from=stage "
        "--exclude=$S $S $D\n"
        "ADD --checksum=sha256:$S --chown=$U $S $D\nWORKDIR $D\nUSER $U\nVOLUME $V\n"
        "STOPSIGNAL $G\nEXPOSE $P\n"
        "RUN --mount=type=cache,target=$D,id=$S --network=none echo $U\nCMD echo $U\n"
        'ENTRYPOINT $U\nHEALTHCHECK CMD $U\nSHELL ["$U"]\nONBUILD RUN $U\nMAINTAINER $U\n'
    )
    out = walked(scope(text))[1:]
    env, label, copy, add, workdir, user, volume, sig, expose, run, *rest = out
    assert isinstance(env, Env) and env.pairs == (KeyValue("app", "app"),)
    assert isinstance(label, Label) and label.pairs == (KeyValue("app.label", "app"),)
    assert isinstance(copy, Copy)
    assert (copy.chown, copy.chmod, copy.sources, copy.dest) == ("app", "0644", ("src",), "/dst")
    assert (copy.from_, copy.excludes) == ("stage", ("$S",))  # never expanded
    assert isinstance(add, Add) and (add.checksum, add.chown) == ("sha256:src", "app")
    assert isinstance(workdir, Workdir) and workdir.path == "/dst"
    assert isinstance(user, User) and user.user == "app"
    assert isinstance(volume, Volume) and volume.volumes == ("/vol",)
    assert isinstance(sig, Stopsignal) and sig.signal == "SIGINT"
    assert isinstance(expose, Expose) and expose.port_specs == ("8080/tcp",)
    assert isinstance(run, Run) and run.command == ("echo $U",)
    assert run.mounts == (Mount(type="cache", target="/dst", id="src", readonly=False),)
    originals = [i.original.split(" ", 1)[1] for i in rest]
    assert originals == ["echo $U", "$U", "CMD $U", '["$U"]', "RUN $U", "$U"]
    assert rest == [i for i in scope(text).dockerfile.stages[0].commands[-6:]]


def test_expose_words_split_after_expansion() -> None:
    out = walked(scope("FROM a\nENV PORTS='80 443/udp'\nEXPOSE $PORTS 22\n"))
    expose = out[1]
    assert isinstance(expose, Expose)
    # BuildKit sorts the words as written ("$PORTS" < "22"), then expands them
    assert expose.ports == ("80", "443/udp", "22")
    assert expose.port_specs == ("80/tcp", "443/udp", "22/tcp")


def test_heredoc_sources_expand_only_unquoted() -> None:
    text = (
        'FROM a\nENV NAME=world\nCOPY <<EOF <<"RAW" /x/\nhello $NAME "q" \\$NAME\nEOF\n'
        "keep $NAME\nRAW\n"
    )
    copy = walked(scope(text))[1]
    assert isinstance(copy, Copy)
    assert copy.contents == (
        SourceContent("EOF", 'hello world "q" $NAME\n', True),
        SourceContent("RAW", "keep $NAME\n", False),
    )


EXPAND_ERRORS = [
    ("FROM a\nRUN --mount=type=bogus true", 'unsupported mount type "bogus"'),
    (
        "FROM a\nARG T=tmpfs\nRUN --mount=type=$T,target=/t,mode=1 x",
        'mode not allowed for "tmpfs" type mounts',
    ),
    ("FROM a\nRUN --mount=type=ssh,source=x true", "ssh does not support source"),
    ("FROM a\nARG E\nVOLUME $E", "VOLUME specified can not be an empty string"),
    ("FROM a\nARG S=SIGFOO\nSTOPSIGNAL $S", "invalid signal: SIGFOO"),
    ("FROM a\nEXPOSE 80/xyz", 'invalid port: "80/xyz": invalid proto: xyz'),
    ("FROM a\nWORKDIR ${X:?required}", 'failed to process "${X:?required}": X: required'),
    ("FROM a\nARG B=${FOO:?missing}", 'failed to process "${FOO:?missing}": FOO: missing'),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), EXPAND_ERRORS)
def test_expansion_errors(text: str, message: str) -> None:
    build = scope(text)
    with pytest.raises(LocatedError) as info:
        walk(build)
    assert info.value.message == message
    assert (info.value.line, info.value.file) == (text.count("\n") + 1, FILE)


def test_arg_default_error_is_skipped_by_a_build_arg() -> None:
    # BuildKit's testArgDefaultExpansion: a --build-arg replaces the failing default
    text = 'FROM scratch\nARG FOO\nARG BAR=${FOO:?"foo missing"}\n'
    assert walk(scope(text, {"FOO": "123"})).env["BAR"] == "123"
    assert walk(scope(text, {"BAR": "123"})).env["BAR"] == "123"


def test_global_arg_errors() -> None:
    # BuildKit's testGlobalArgErrors
    with pytest.raises(LocatedError, match="FOO: custom error") as info:
        scope('ARG FOO=${FOO:?"custom error"}\nFROM busybox\n')
    assert info.value.line == 1
    assert (
        scope('ARG FOO=${FOO:?"custom error"}\nFROM busybox\n', {"FOO": "bar"}).global_args["FOO"]
        == "bar"
    )


# ---------------------------------------------------------------------------- whole files


CORPUS = sorted(p for p in (BUILDKIT_PARSER / "testfiles").glob("*/Dockerfile"))


def test_corpus_is_present() -> None:
    assert len(CORPUS) == 33


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.parent.name)
def test_buildkit_corpus_reads_or_refuses_cleanly(path: Path) -> None:
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    try:
        df = parse_dockerfile(text, file=str(path))
    except LocatedError as e:
        assert e.line >= 0 and e.message
        return
    assert len(df.instructions) == len(df.result.nodes)
    for node, instr in zip(df.result.nodes, df.instructions, strict=True):
        assert node.start_line == instr.line and node.name == type(instr).NAME.lower()
    try:
        build = BuildScope(df, build_platform=AMD64)
        for stage in build.plan():
            list(build.stage_scope(stage).walk())
    except SouteError:
        pass


# ---------------------------------------------------------------------------- fuzzing

KEYWORDS = [
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD RUN", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
]  # fmt: skip
ODD_KEYWORDS = ["from", "Copy", "FORM", "ONBUILD ONBUILD", "ONBUILD", "HEALTHCHECK CMD"]
FLAGS = {
    "FROM": ["--platform=$BUILDPLATFORM", "--platform=x/y/z/w", "--platform=$NOPE"],
    "RUN": [
        "--mount=type=cache,target=/c", "--mount=type=secret,id=$X", "--mount=", "--mount",
        "--mount=type=tmpfs,target=/t,size=1x", '--mount=\\"a', "--mount=from=s0,target=/m",
        "--mount=type=$X,target=/$U", "--mount=type=ssh,required", "--network=host",
        "--network=x", "--security=insecure", "--device=a",
    ],
    "COPY": [
        "--from=0", "--from=$S", "--from=s0", "--from=s1", "--from=9", "--link", "--link=maybe",
        "--chown=$U", "--chmod=755", "--exclude=*", "--parents",
    ],
    "ADD": ["--checksum=x", "--unpack", "--keep-git-dir=true", "--chown=$U", "--exclude=$X"],
    "HEALTHCHECK": ["--interval=1s", "--timeout=5", "--retries=-1", "--start-period=1ms"],
}  # fmt: skip
ODD_FLAGS = ["--bogus", "--", "--from=x", "--mount=type=bind"]
WORDS = [
    "a", "b", "AS", "as", "s1", "x", "1", "$X", "${X:-d}", "${X:?e}", "${", "$", "=", "a=b",
    "=x", '"q', "'s'", "[", "]", '["a"]', '["a", 1]', "[]", "<<EOF", "<<-'E'", "80/udp", "1-2",
    "NONE", "CMD", "\\", "`", "/p", ".", "scratch", "SIGTERM", "0", "$U=$X",
]  # fmt: skip


@st.composite
def lines(draw: st.DrawFn) -> str:
    # mostly well-formed lines, so that most files get past parsing into the scope walk
    keyword = draw(st.sampled_from(KEYWORDS * 4 + ODD_KEYWORDS))
    pool = FLAGS.get(keyword.split()[-1], [])
    flags = draw(st.lists(st.sampled_from(pool * 6 + ODD_FLAGS), max_size=2 if pool else 0))
    words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=4))
    return " ".join([keyword, *flags, *words])


FILLER = ["EOF", "E", "", "# escape=`", "  \\"]
# one line in ten is filler: heredoc terminators, blanks, a late directive, a lone continuation
any_line = st.tuples(st.integers(0, 9), lines(), st.sampled_from(FILLER)).map(
    lambda t: t[2] if t[0] == 0 else t[1]
)
dockerfiles = st.lists(any_line, max_size=10).map(
    lambda ls: "\n".join(["FROM a AS s0", *ls]) + "\n"
)


def _exercise(text: str, build_args: dict[str, str]) -> None:
    try:
        df = parse_dockerfile(text)
        build = BuildScope(df, build_args, build_platform=AMD64)
        scopes: dict[int, StageScope] = {}
        for stage in build.plan():
            base = build.resolve_base(stage).stage
            st_scope = build.stage_scope(stage, base=scopes.get(base.index) if base else None)
            for instr in st_scope.walk():
                if isinstance(instr, Run):
                    instr.script()
                    st_scope.run_history(instr.argv() or [])
            scopes[stage.index] = st_scope
        build.unused_build_args_warning()
    except SouteError as e:
        assert str(e)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dockerfiles, st.dictionaries(st.sampled_from(["X", "S", "U", "http_proxy"]), st.text()))
def test_fuzz_structured(text: str, build_args: dict[str, str]) -> None:
    _exercise(text, build_args)


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("FROMRUNCOPYARGENVabs $={}[]\"'\\<-\n\t#:,/0")), max_size=80
    )
)
def test_fuzz_raw_text(text: str) -> None:
    _exercise(text, {})


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_values(text: str) -> None:
    for call in (
        lambda: parse_mount(text),
        lambda: parse_mount(text, lambda w: w),
        lambda: parse_go_duration(text),
        lambda: parse_ports(text.split()),
        lambda: parse_signal(text),
        lambda: Platform.parse(text),
    ):
        try:
            call()
        except (InvalidValue, PlatformError) as e:
            assert e.message
