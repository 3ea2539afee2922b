"""The lint rules: stable ids, names, levels, what each one means and how to fix it.

Ids (``SOU001``...) never change meaning and are never reused; a retired rule keeps its row.
Rules that BuildKit also checks (``docker build --check``) carry BuildKit's rule name, so that
a ``# check=skip=JSONArgsRecommended`` directive means the same under soute and under BuildKit;
soute's own rules have names in the same style. ``--ignore`` and ``check=skip=`` take either
the id or the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["error", "warning", "info"]

BUILDKIT_DOCS = "https://docs.docker.com/go/dockerfile/rule/"


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    level: Level
    summary: str  # what the rule looks for, one line
    fix: str  # the usual fix, one line (a finding may give a more precise one)
    doc: str  # why it matters
    buildkit: bool = False  # BuildKit has a check of this name

    @property
    def url(self) -> str:
        if not self.buildkit:
            return ""
        slug = "".join("-" + c.lower() if c.isupper() else c for c in self.name).lstrip("-")
        slug = slug.replace("j-s-o-n", "json")
        return BUILDKIT_DOCS + slug + "/"


RULES: tuple[Rule, ...] = (
    Rule(
        "SOU001", "AptGetMissingYes", "warning",
        "apt-get install (or upgrade, remove) without -y",
        "add -y (apt-get install -y PKG...)",
        "A build has no terminal: without -y, apt-get stops at its confirmation prompt and the "
        "RUN fails (or hangs on a prompt nobody answers).",
    ),
    Rule(
        "SOU002", "AptGetNoInstallRecommends", "warning",
        "apt-get install without --no-install-recommends",
        "add --no-install-recommends and name the packages you really need",
        "Recommended packages are not needed to run a service, and they often double the size "
        "of the layer.",
    ),
    Rule(
        "SOU003", "AptListsNotRemoved", "warning",
        "apt-get update or install without removing /var/lib/apt/lists in the same RUN",
        "end the RUN with '&& rm -rf /var/lib/apt/lists/*'",
        "The package lists (tens of MB) are kept in the layer of the RUN that downloaded them; "
        "removing them in a later RUN does not make the image smaller. Only stages that end up "
        "in the final image are checked.",
    ),
    Rule(
        "SOU004", "AptGetUpgrade", "warning",
        "apt-get upgrade / dist-upgrade in an image",
        "use a newer base image (rebuild on the updated base) instead of upgrading in place",
        "Upgrading inside the image makes builds unreproducible and its layers large; the base "
        "image's maintainers ship the updates.",
    ),
    Rule(
        "SOU005", "ConsecutiveRun", "info",
        "consecutive RUN instructions that could be one",
        "join them with '&& \\' into one RUN",
        "Each RUN is a layer; several small RUNs in a row make more layers and keep files "
        "that a single RUN would have cleaned up.",
    ),
    Rule(
        "SOU006", "RemovedInLaterLayer", "warning",
        "a package or file added in one layer and removed in a later one",
        "remove it in the same RUN that added it (or use a build stage)",
        "Layers only add: a file deleted by a later layer still takes its space in the image, "
        "and a package purged later is still downloaded and stored.",
    ),
    Rule(
        "SOU007", "MaintainerDeprecated", "warning",
        "MAINTAINER instruction",
        'use LABEL org.opencontainers.image.authors="NAME <EMAIL>"',
        "MAINTAINER is deprecated; a label carries the same information.",
        buildkit=True,
    ),
    Rule(
        "SOU008", "UnpinnedBaseImage", "warning",
        "FROM without a tag, or with the tag latest",
        "name a version tag (debian:bookworm) or a digest (@sha256:...)",
        "'latest' changes under you: the same Dockerfile builds a different image tomorrow.",
    ),
    Rule(
        "SOU009", "NoUser", "warning",
        "the final stage sets no USER (or sets root): the service runs as root",
        "create a user and add 'USER name' (or drop privileges with gosu in the entrypoint)",
        "A process running as root in the container is root on the host if it escapes. A "
        "startup script that ends by exec'ing gosu, su-exec or setpriv counts as dropping "
        "privileges.",
    ),
    Rule(
        "SOU010", "StartupScriptNoExec", "warning",
        "the startup script (ENTRYPOINT/CMD) launches the service without exec",
        "start the service with 'exec ...' as the script's last command",
        "Without exec the shell stays PID 1 and does not pass SIGTERM on: 'docker stop' waits "
        "its 10 seconds and kills the service. Checked on shell scripts COPY'd from the build "
        "context.",
    ),
    Rule(
        "SOU011", "SuSudo", "warning",
        "su or sudo in RUN or in the startup script",
        "use USER in the Dockerfile, or 'exec gosu USER ...' in the startup script",
        "sudo is rarely installed and keeps a root parent; su starts a new session and stays "
        "behind as the parent of the service, so signals and the TTY go astray.",
    ),
    Rule(
        "SOU012", "CopyInsteadOfAdd", "warning",
        "ADD of a local file that is not an archive",
        "use COPY",
        "ADD also fetches URLs and unpacks archives; COPY says what it does. Keep ADD for "
        "archives to unpack, URLs and git sources.",
    ),
    Rule(
        "SOU013", "JSONArgsRecommended", "warning",
        "shell-form CMD or ENTRYPOINT",
        'use the JSON form: CMD ["program", "arg"]',
        "In shell form the command runs under /bin/sh -c, which does not pass signals on: the "
        "service never sees SIGTERM.",
        buildkit=True,
    ),
    Rule(
        "SOU014", "AptNoninteractive", "info",
        "apt-get install without DEBIAN_FRONTEND=noninteractive",
        "add 'ARG DEBIAN_FRONTEND=noninteractive' before the RUN (ARG: it stays out of the image)",
        "Without it debconf looks for a terminal, prints warnings, and packages that ask "
        "questions (tzdata) can stop the build.",
    ),
    Rule(
        "SOU015", "WorkdirRelativePath", "warning",
        "relative WORKDIR before any absolute WORKDIR in the stage",
        "give an absolute path (WORKDIR /app)",
        "A relative WORKDIR depends on the base image's working directory, which can change.",
        buildkit=True,
    ),
    Rule(
        "SOU016", "CdInRun", "info",
        "cd in RUN",
        "use WORKDIR DIR, or give the path to the command (make -C DIR, git -C DIR)",
        "cd only lasts for one RUN; WORKDIR says where the next instructions run and is easier "
        "to read.",
    ),
    Rule(
        "SOU017", "SecretsUsedInArgOrEnv", "warning",
        "ARG or ENV whose name suggests a secret (PASSWORD, SECRET, TOKEN, KEY...)",
        "pass it at run time, or at build time with RUN --mount=type=secret",
        "ARG and ENV values are stored in the image's config and history for anyone who pulls "
        "it.",
        buildkit=True,
    ),
    Rule(
        "SOU018", "ExposeInvalidPort", "error",
        "EXPOSE of a port or protocol that is not valid",
        "EXPOSE PORT[/tcp|/udp|/sctp] with 1 <= PORT <= 65535",
        "An invalid EXPOSE fails the build.",
    ),
    Rule(
        "SOU019", "StopsignalInvalid", "error",
        "STOPSIGNAL that is not a signal",
        "STOPSIGNAL SIGTERM (a name like SIGINT, or a number)",
        "An invalid STOPSIGNAL fails the build.",
    ),
    Rule(
        "SOU020", "StageNameCasing", "warning",
        "stage name not in lower case",
        "write the stage name in lower case",
        "Stage names are lower-cased when read; writing them so avoids confusion.",
        buildkit=True,
    ),
    Rule(
        "SOU021", "FromAsCasing", "warning",
        "the AS keyword's case does not match FROM's",
        "write 'FROM x AS y' or 'from x as y'",
        "Consistent casing reads better.",
        buildkit=True,
    ),
    Rule(
        "SOU022", "NoEmptyContinuation", "warning",
        "empty line after a line continuation",
        "remove the empty line (or make it a comment)",
        "Empty continuation lines will be errors in a future release of the Dockerfile syntax.",
        buildkit=True,
    ),
    Rule(
        "SOU023", "ConsistentInstructionCasing", "warning",
        "instruction cased differently from most of the file",
        "write every instruction in the same case (upper case is the convention)",
        "Consistent casing reads better.",
        buildkit=True,
    ),
    Rule(
        "SOU024", "DuplicateStageName", "error",
        "two stages with the same name",
        "give every stage its own name",
        "Only the last stage of a name can be referred to.",
        buildkit=True,
    ),
    Rule(
        "SOU025", "ReservedStageName", "error",
        "stage named scratch or context",
        "choose another name",
        "These names are reserved: 'FROM scratch' and named contexts would not mean the stage.",
        buildkit=True,
    ),
    Rule(
        "SOU026", "UndefinedVar", "warning",
        "variable used before it is defined (ARG or ENV)",
        "declare it with ARG or ENV first, or fix its spelling",
        "An undefined variable expands to nothing, silently. Variables the base image defines "
        "cannot be seen here; PATH and the proxy and platform args are known.",
        buildkit=True,
    ),
    Rule(
        "SOU027", "MultipleInstructionsDisallowed", "warning",
        "more than one CMD, ENTRYPOINT or HEALTHCHECK in a stage",
        "keep only the last one",
        "Only the last one takes effect; the others are dead code.",
        buildkit=True,
    ),
    Rule(
        "SOU028", "LegacyKeyValueFormat", "warning",
        "ENV or LABEL in the legacy 'key value' form",
        "write key=value",
        "The space-separated form sets one variable only and cannot be extended.",
        buildkit=True,
    ),
    Rule(
        "SOU029", "RedundantTargetPlatform", "info",
        "FROM --platform=$TARGETPLATFORM",
        "remove --platform: the target platform is the default",
        "It changes nothing.",
        buildkit=True,
    ),
    Rule(
        "SOU030", "UndefinedArgInFrom", "warning",
        "FROM uses a variable that no global ARG declares",
        "declare it with ARG before the first FROM",
        "Only global ARGs (before the first FROM) and the platform args can be used in FROM.",
        buildkit=True,
    ),
    Rule(
        "SOU031", "InvalidDefaultArgInFrom", "warning",
        "the default values of the global ARGs make the FROM image name empty or invalid",
        "give the ARG a default that makes a valid image name",
        "Without a --build-arg the build fails.",
        buildkit=True,
    ),
    Rule(
        "SOU032", "FromPlatformFlagConstDisallowed", "warning",
        "FROM --platform with a constant value",
        "remove --platform, or use $BUILDPLATFORM / $TARGETPLATFORM",
        "A constant platform makes the build wrong for every other target.",
        buildkit=True,
    ),
    Rule(
        "SOU033", "ExposeProtoCasing", "warning",
        "EXPOSE protocol not in lower case",
        "write tcp, udp or sctp in lower case",
        "Consistent casing reads better.",
        buildkit=True,
    ),
    Rule(
        "SOU034", "ExposeInvalidFormat", "warning",
        "EXPOSE with an IP address or a host port",
        "EXPOSE the container port only; publish it with -p HOST:PORT at run time",
        "The host side is chosen at run time; the IP and host port are ignored here.",
        buildkit=True,
    ),
    Rule(
        "SOU035", "CopyIgnoredFile", "warning",
        "COPY or ADD of a file that .dockerignore excludes",
        "remove the source, or stop ignoring it in .dockerignore",
        "The file is not in the build context: the COPY fails or copies less than expected.",
        buildkit=True,
    ),
    Rule(
        "SOU036", "AptUpdateAlone", "warning",
        "apt-get update in a RUN that installs nothing",
        "run 'apt-get update && apt-get install -y ...' in one RUN, ending with "
        "'&& rm -rf /var/lib/apt/lists/*'",
        "The cached layer of a lone update is reused by later builds, so a changed install "
        "line gets stale package lists (or none); and removing the lists in that RUN would "
        "leave nothing for the install.",
    ),
)  # fmt: skip

BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
BY_NAME: dict[str, Rule] = {r.name.lower(): r for r in RULES}


def find_rule(key: str) -> Rule | None:
    """The rule whose id (any case) or name (any case) is ``key``."""
    key = key.strip()
    return BY_ID.get(key.upper()) or BY_NAME.get(key.lower())
