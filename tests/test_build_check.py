"""What soute build checks before it runs a step: the Dockerfile (BuildKit's build checks,
``--check``, the ``check`` directive) and the platform (``--platform``, ``FROM --platform``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from soute.dockerfile.instructions import parse_dockerfile
from soute.dockerfile.stages import BuildScope, host_platform, unsupported_platform
from soute.errors import LocatedError
from soute.image.platforms import Platform
from soute_cli import soute


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store")
    p = soute(path, "bootstrap", "busybox")
    assert p.returncode == 0, p.stderr
    return path


JSON_ARGS = ("JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended "
             "behavior related to OS signals")
# BuildKit's rules fire on lines 2 and 4; soute's own (UnpinnedBaseImage, NoUser) on line 1.
FINDINGS = "FROM busybox\nMAINTAINER me <me@example.org>\nENV A=1\nCMD echo hi\n"


# ---------------------------------------------------------------------------- checks


def test_a_build_lists_buildkits_check_warnings_after_it(root: Path) -> None:
    p = soute(root, "build", "-t", "warned", "-", input=FINDINGS)
    assert p.returncode == 0, p.stderr
    assert "WARN:" not in p.stderr and p.stderr.startswith("#1 [stage-0 1/4] FROM busybox\n")
    # as docker prints them, after the build's own lines
    assert p.stderr.endswith(
        "naming to warned:latest done\n"
        "\n 2 warnings found (use soute lint to expand):\n"
        " - MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label "
        "(line 2)\n"
        f" - {JSON_ARGS} (line 4)\n"
    )


def test_a_clean_dockerfile_prints_no_warnings(root: Path) -> None:
    p = soute(root, "build", "-", input='FROM busybox:latest\nCMD ["sh"]\n')
    assert p.returncode == 0 and "warning" not in p.stderr
    assert p.stderr.splitlines()[-1].startswith("writing image sha256:")


def test_check_lists_every_rules_findings_first_then_builds(root: Path) -> None:
    p = soute(root, "build", "--check", "-t", "checked", "-", input=FINDINGS)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    first = lines.index("#1 [stage-0 1/4] FROM busybox")
    top = lines[:first]
    assert all(line.startswith("WARN: ") for line in top)
    assert [line.split(":")[1].strip() for line in top] == [
        "UnpinnedBaseImage", "NoUser", "MaintainerDeprecated", "JSONArgsRecommended"]
    assert top[-1] == f"WARN: {JSON_ARGS} (line 4)"
    assert "\n 4 warnings found (use soute lint to expand):\n" in p.stderr
    assert soute(root, "inspect", "checked").returncode == 0


def test_check_error_true_fails_before_any_step(root: Path) -> None:
    text = "# check=error=true\n" + FINDINGS
    p = soute(root, "build", "--check", "-t", "never", "-", input=text)
    assert p.returncode == 1 and p.stdout == ""
    lines = p.stderr.splitlines()
    assert not any(line.startswith("#") for line in lines)
    assert lines[:4] == [
        "Dockerfile:2: UnpinnedBaseImage: FROM busybox has no tag (it means latest)",
        "Dockerfile:2: NoUser: no USER in the final stage: the container runs as root",
        "Dockerfile:3: MaintainerDeprecated: Maintainer instruction is deprecated in favor of "
        "using label",
        f"Dockerfile:5: {JSON_ARGS}",
    ]
    assert lines[4].startswith(
        "Dockerfile:2: lint violation found for rules: UnpinnedBaseImage, NoUser, "
        "MaintainerDeprecated, JSONArgsRecommended (")
    assert len(lines) == 5
    assert soute(root, "inspect", "never").returncode != 0


def test_error_true_without_check_fails_on_buildkits_rules_only(root: Path) -> None:
    p = soute(root, "build", "-q", "-", input="# check=error=true\nFROM busybox AS Base\n")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.splitlines() == [
        "Dockerfile:2: StageNameCasing: Stage name 'Base' should be lowercase",
        "Dockerfile:2: lint violation found for rules: StageNameCasing ('# check=error=true' "
        "makes check findings fail the build: fix them, or skip their rules with "
        "'# check=skip=RULE,...')",
    ]
    # soute's own rules (no tag, no USER) are not BuildKit's: they fail only with --check
    p = soute(root, "build", "-q", "-", input="# check=error=true\nFROM busybox\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("sha256:") and p.stderr == ""


def test_skips_and_the_build_arg_that_replaces_the_directive(root: Path) -> None:
    p = soute(root, "build", "--check", "-", input="# check=skip=JSONArgsRecommended,SOU008,"
              "NoUser\nFROM busybox\nCMD echo hi\n")
    assert p.returncode == 0 and "WARN" not in p.stderr and "warning" not in p.stderr
    p = soute(root, "build", "--check", "-", input="# check=skip=all\n" + FINDINGS)
    assert p.returncode == 0 and "WARN" not in p.stderr and "warning" not in p.stderr
    # BUILDKIT_DOCKERFILE_CHECK takes the directive's place, as in BuildKit
    text = "# check=error=true\n" + FINDINGS
    p = soute(root, "build", "--build-arg", "BUILDKIT_DOCKERFILE_CHECK=skip=all", "-", input=text)
    assert p.returncode == 0, p.stderr
    assert "were not consumed" not in p.stderr
    p = soute(root, "build", "--build-arg", "BUILDKIT_DOCKERFILE_CHECK=error=true", "-",
              input=FINDINGS)
    assert p.returncode == 1 and "lint violation found for rules: MaintainerDeprecated, " \
        "JSONArgsRecommended" in p.stderr


def test_quiet_builds_print_no_warnings(root: Path) -> None:
    p = soute(root, "build", "-q", "--check", "-", input=FINDINGS)
    assert p.returncode == 0 and p.stderr == "" and p.stdout.startswith("sha256:")


def test_warnings_come_before_the_error_of_a_failing_build(root: Path) -> None:
    p = soute(root, "build", "-", input="FROM busybox\nCMD echo hi\nRUN exit 4\n")
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    assert lines[-4:-1] == ["", " 1 warning found (use soute lint to expand):",
                            f" - {JSON_ARGS} (line 2)"]
    assert lines[-1].startswith("Dockerfile:3: process \"/bin/sh -c exit 4\" did not complete")


def test_a_bad_check_directive_fails_the_build(root: Path) -> None:
    p = soute(root, "build", "-", input="# check=skip\nFROM busybox\n")
    assert p.returncode == 1 and "invalid check option" in p.stderr
    assert "#1" not in p.stderr


# ---------------------------------------------------------------------------- platforms

HOST = host_platform()
# Another architecture: building for it would need emulation.
OTHER = Platform("linux", "arm64" if HOST.architecture != "arm64" else "amd64")


def test_the_host_platform_is_the_only_one() -> None:
    assert unsupported_platform(HOST, HOST) is None
    assert unsupported_platform(Platform.parse(str(HOST)).normalized(), HOST) is None
    assert unsupported_platform(OTHER, HOST) == (
        f"building for {OTHER} needs emulation, which soute does not do (yet)")
    assert "needs a windows host" in str(
        unsupported_platform(Platform("windows", HOST.architecture), HOST))


def test_plan_refuses_a_stage_for_another_platform() -> None:
    df = parse_dockerfile(f"FROM busybox AS ok\nFROM --platform={OTHER} busybox AS arm\n"
                          "FROM ok\n", file="df")
    scope = BuildScope(df, build_platform=HOST)
    assert [s.name for s in scope.plan()] == ["ok", ""]  # not needed: no error
    with pytest.raises(LocatedError) as info:
        BuildScope(df, target="arm", build_platform=HOST).plan()
    assert (info.value.file, info.value.line) == ("df", 2)
    assert info.value.message == f"building for {OTHER} needs emulation, which soute does " \
        "not do (yet)"


def test_from_platform_of_another_architecture_fails_at_its_line(root: Path) -> None:
    p = soute(root, "build", "-", input=f"FROM busybox\nRUN true\nFROM --platform={OTHER} "
              "busybox\nRUN true\n")
    assert p.returncode == 1
    assert p.stderr.splitlines()[-1] == (
        f"Dockerfile:3: building for {OTHER} needs emulation, which soute does not do (yet) "
        "(remove --platform, or use --platform=$BUILDPLATFORM)")
    assert "#1 " not in p.stderr  # refused before any step


def test_platform_option(root: Path) -> None:
    p = soute(root, "build", "--platform", str(OTHER), "-", input="FROM busybox\n")
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"soute: --platform {OTHER}: building for {OTHER} needs emulation, which soute does "
        f"not do (yet) (leave --platform out to build for {HOST})"]
    p = soute(root, "build", "--platform", "linux/nope/x/y/z", "-", input="FROM busybox\n")
    assert p.returncode == 1 and "invalid platform" in p.stderr
    p = soute(root, "build", "--platform", f"{HOST},{OTHER}", "-", input="FROM busybox\n")
    assert p.returncode == 1 and f"--platform {OTHER}:" in p.stderr


def test_the_host_platform_builds_with_buildkits_platform_args(root: Path) -> None:
    text = (
        "FROM --platform=$BUILDPLATFORM busybox AS tools\n"
        "ARG TARGETPLATFORM BUILDPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDOS BUILDARCH\n"
        "RUN echo \"$TARGETPLATFORM|$BUILDPLATFORM|$TARGETOS|$TARGETARCH|$TARGETVARIANT|"
        "$BUILDOS|$BUILDARCH\" > /platforms\n"
        f"FROM --platform={HOST} busybox\n"
        "COPY --from=tools /platforms /\n"
    )
    p = soute(root, "build", "--platform", str(HOST), "-t", "plat", "-", input=text)
    assert p.returncode == 0, p.stderr
    run = soute(root, "run", "--rm", "plat", "cat", "/platforms")
    assert run.returncode == 0, run.stderr
    assert run.stdout == (f"{HOST}|{HOST}|{HOST.os}|{HOST.architecture}|{HOST.variant}|"
                          f"{HOST.os}|{HOST.architecture}\n")
    # FROM --platform with a constant: BuildKit's warning, and the build goes on
    assert "FromPlatformFlagConstDisallowed: FROM --platform flag should not use constant " \
        f'value "{HOST}" (line 4)' in p.stderr
