"""A light reading of shell scripts: enough to find the simple commands a RUN or a startup
script runs, with their words unquoted. Not a shell: expansions stay as written, and a
construct it does not follow only makes the linter see less, never fail.
"""

from __future__ import annotations

from dataclasses import dataclass

_OPERATORS = ("&&", "||", ";;", ";", "|", "&", "(", ")", "\n")
# words that open or close a compound command; what follows them is a command
_KEYWORDS = frozenset(
    ("if", "then", "else", "elif", "fi", "do", "done", "while", "until", "{", "}", "!", "esac")
)
# prefixes that run the rest of their words as the command
_WRAPPERS = frozenset(("sudo", "env", "time", "nohup", "exec", "command", "nice"))


@dataclass
class Command:
    words: list[str]
    line: int  # 1-based line of the script where the command starts
    op_after: str = ""  # the operator that ends it ("&&", ";", "\n", "" at the end)
    assignments: tuple[str, ...] = ()  # NAME=value words before the command

    @property
    def name(self) -> str:
        return self.words[0].rsplit("/", 1)[-1] if self.words else ""


def split_commands(script: str) -> list[Command]:
    """The simple commands of ``script`` in order, quotes removed, comments dropped."""
    out: list[Command] = []
    words: list[str] = []
    word: list[str] = []
    in_word = False
    line = 1
    start_line = 1
    i, n = 0, len(script)

    def end_word() -> None:
        nonlocal in_word
        if in_word:
            words.append("".join(word))
            word.clear()
            in_word = False

    def end_command(op: str) -> None:
        nonlocal start_line
        end_word()
        if words:
            cmd = _make(list(words), start_line, op)
            if cmd.words or cmd.assignments:
                out.append(cmd)
            words.clear()
        start_line = line

    while i < n:
        c = script[i]
        if c == "\\" and i + 1 < n:
            if script[i + 1] == "\n":
                line += 1
                i += 2
                continue
            word.append(script[i + 1])
            in_word = True
            i += 2
            continue
        if c == "'":
            j = script.find("'", i + 1)
            j = n if j < 0 else j
            word.append(script[i + 1 : j])
            line += script.count("\n", i, j)
            in_word = True
            i = j + 1
            continue
        if c == '"':
            j = i + 1
            buf = []
            while j < n and script[j] != '"':
                if script[j] == "\\" and j + 1 < n and script[j + 1] in '"\\$`':
                    buf.append(script[j + 1])
                    j += 2
                    continue
                if script[j] == "\\" and j + 1 < n and script[j + 1] == "\n":
                    j += 2
                    line += 1
                    continue
                if script[j] == "\n":
                    line += 1
                buf.append(script[j])
                j += 1
            word.append("".join(buf))
            in_word = True
            i = j + 1
            continue
        if c == "#" and not in_word:
            j = script.find("\n", i)
            i = n if j < 0 else j
            continue
        if c in " \t\r":
            end_word()
            i += 1
            continue
        if c == "$" and script.startswith("$(", i) and not script.startswith("$((", i):
            depth, j = 0, i  # keep a command substitution as one word
            while j < n:
                if script[j] == "(":
                    depth += 1
                elif script[j] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            word.append(script[i : j + 1])
            line += script.count("\n", i, j)
            in_word = True
            i = j + 1
            continue
        op = next((o for o in _OPERATORS if script.startswith(o, i)), None)
        if op is not None and not (op in ("(", ")") and in_word):
            if op == "&" and (script.startswith(">", i + 1) or (word and word[-1] == ">")):
                word.append(c)  # 2>&1, &>file
                in_word = True
                i += 1
                continue
            if op == "\n":
                line += 1
            end_command(op)
            i += len(op)
            continue
        word.append(c)
        in_word = True
        i += 1
    end_command("")
    return out


def _make(words: list[str], line: int, op: str) -> Command:
    while words and words[0] in _KEYWORDS:
        words = words[1:]
    assignments = []
    while words and _is_assignment(words[0]):
        assignments.append(words.pop(0))
    return Command(words, line, op, tuple(assignments))


def _is_assignment(word: str) -> bool:
    name, eq, _ = word.partition("=")
    return bool(eq) and name.replace("_", "a").isalnum() and not name[:1].isdigit()


def unwrap(cmd: Command) -> Command:
    """The command run under sudo/env/exec/... prefixes (their options skipped)."""
    words = list(cmd.words)
    assignments = list(cmd.assignments)
    while words and words[0].rsplit("/", 1)[-1] in _WRAPPERS:
        words.pop(0)
        while words and (words[0].startswith("-") or _is_assignment(words[0])):
            w = words.pop(0)
            if _is_assignment(w):
                assignments.append(w)
            elif w in ("-u", "-g", "-n") and words:  # sudo -u USER, nice -n 10
                words.pop(0)
    return Command(words, cmd.line, cmd.op_after, tuple(assignments))
