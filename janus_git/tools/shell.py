"""The `shell` tool: read-only commands, argv only, never a shell.

The proposal's args are an argv list (a single string is split with shlex, then checked the
same way).  Checked token by token, in this order, the first problem refusing it:

1. forbidden tokens anywhere: ``;`` ``|`` ``&`` backticks ``$(`` ``${`` ``>`` ``<`` newline, NUL
   (no shell would interpret them, but a reviewer reading the log should never have to think);
2. the command: a bare name on the allow-list (not a path), never a forbidden word such as
   ``sudo`` or ``rm``, which are refused wherever they appear;
3. the command's forbidden flags (``find -exec/-delete...``, ``sed`` without ``-n``, ``sed -i``,
   ``sort -o``, ``tail -f``...), also abbreviated (getopt takes ``--deref`` for
   ``--dereference``), and every option that reads a list of names or patterns from a file
   (``--files0-from``, ``du -X``, ``sha256sum -c``, ``grep -f``, ``find -files0-from``...):
   the list's own path would be checked, the names inside it never are;
4. every path operand and option value stays inside the repository (tools.path_problem).

No allowed command expands ``@file`` arguments (an ``@name`` is an ordinary name, checked as
a path), and a ``-`` operand reads the run's stdin, which is /dev/null.

Then it runs in the sandbox with the repository read-only as its working directory.
"""
from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import sandbox
from . import ToolRefused, from_sandbox, path_problem

FORBIDDEN_TOKENS = [(";", "';' (command chaining)"), ("|", "'|' (a pipe)"),
                    ("&", "'&' (background or '&&')"), ("`", "a backtick (substitution)"),
                    ("$(", "'$(' (substitution)"), ("${", "'${' (expansion)"),
                    (">", "'>' (redirection)"), ("<", "'<' (redirection)"),
                    ("\n", "a newline"), ("\r", "a carriage return"), ("\x00", "a NUL byte")]
FORBIDDEN_WORDS = frozenset({
    "sudo", "su", "doas", "pkexec", "rm", "rmdir", "mv", "cp", "dd", "ln", "shred", "truncate",
    "chmod", "chown", "chgrp", "chattr", "mkfs", "mount", "umount", "kill", "pkill", "killall",
    "shutdown", "reboot", "halt", "tee", "sh", "bash", "dash", "zsh", "env", "exec", "eval",
    "xargs", "nohup", "setsid", "nice", "timeout", "python", "python3", "perl", "ruby", "curl",
    "wget", "nc", "ncat", "ssh", "scp", "git", "crontab", "systemctl", "apt", "apt-get", "pip"})
MAX_TOKENS = 256
MAX_TOKEN_LEN = 4096


@dataclass(frozen=True)
class Rule:
    """How a command's operands and flags are read.

    operands: "paths" (every operand a path), "data" (operands are text, never opened),
    "pattern" (first operand is text, the rest paths).  flags: refused exactly, as
    ``--flag=...`` or abbreviated; letters: short options refused even inside a cluster
    (``-ni``).  lists: the same for options that read a list of names from a file."""
    operands: str = "paths"
    flags: frozenset[str] = frozenset()
    letters: str = ""
    value_letters: str = ""  # short options whose value is the next token
    lists: frozenset[str] = frozenset()
    list_letters: str = ""


def _r(operands: str = "paths", flags: str = "", letters: str = "",
       value_letters: str = "", lists: str = "", list_letters: str = "") -> Rule:
    return Rule(operands, frozenset(flags.split()), letters, value_letters,
                frozenset(lists.split()), list_letters)


FIND_WRITES = ("-exec -execdir -ok -okdir -delete -fprint -fprint0 -fprintf -fls "
               "-L -H -follow")
# Each command's options that read names (or patterns, or checksummed names) from a file,
# from GNU coreutils 9, grep 3 and findutils 4.9; `--files0-from=-` reads them from stdin.
RULES: dict[str, Rule] = {
    # diff is left out: it follows symlinks met while recursing into directories.
    "cat": _r(), "cut": _r(), "nl": _r(), "tac": _r(), "head": _r(), "comm": _r(),
    "wc": _r(lists="--files0-from"),
    "md5sum": _r(lists="--check", list_letters="c"),
    "sha256sum": _r(lists="--check", list_letters="c"),
    "realpath": _r(),
    "stat": _r(flags="--dereference", letters="L"),
    "du": _r(flags="--dereference", letters="L", lists="--files0-from --exclude-from",
             list_letters="X"),
    "ls": _r(flags="--dereference", letters="L"),
    "tail": _r(flags="--follow --retry", letters="fF"),
    "sort": _r(flags="--output --temporary-directory --compress-program", letters="oT",
               lists="--files0-from"),
    "uniq": _r(),
    "grep": _r("pattern", flags="--dereference-recursive", letters="R",
               value_letters="emABCdD", lists="--file --exclude-from", list_letters="f"),
    "find": _r(flags=FIND_WRITES, lists="-files0-from"),
    "sed": _r("pattern", flags="--in-place --file --separate", letters="ifs",
              value_letters="e"),
    "echo": _r("data"), "printf": _r("data"), "basename": _r("data"), "dirname": _r("data"),
    "seq": _r("data"), "tr": _r("data"), "true": _r("data"), "false": _r("data"),
    "pwd": _r("data"),
    # date -r FILE / --reference=FILE: a data command's next token is never path-checked
    "date": _r("data", flags="--set --file --reference", letters="sfr"),
}
ALLOWED = frozenset(RULES)

# sed scripts: one address or range, optionally negated, then p, =, l, q or s with safe
# flags.  No w/W/r/R/e commands or s///w, s///e flags: those write files or run commands.
_ADDR = r"(?:\d+|\$|/(?:[^/\\]|\\.)*/)"
_SED = re.compile(rf"^(?:{_ADDR}(?:,(?:{_ADDR}|[+~]\d+))?)?!?\s*"
                  r"(?:p|=|l|[qQ]\d*|s(?P<d>[^\\\sa-zA-Z0-9])"
                  r"(?:(?!(?P=d))[^\\]|\\.)*(?P=d)(?:(?!(?P=d))[^\\]|\\.)*(?P=d)[gpiImM0-9]*)$")


def argv_of(args: Any) -> list[str]:
    if isinstance(args, str):
        try:
            args = shlex.split(args)
        except ValueError as e:
            raise ToolRefused(f"shell: cannot split the command line: {e}") from None
    if not isinstance(args, list) or not args:
        raise ToolRefused("shell: args must be a non-empty argv list, e.g. [ls, -la, docs]")
    if len(args) > MAX_TOKENS:
        raise ToolRefused(f"shell: {len(args)} arguments; at most {MAX_TOKENS}")
    for a in args:
        if not isinstance(a, str):
            raise ToolRefused(f"shell: every argument must be a string, got {a!r}")
        if len(a) > MAX_TOKEN_LEN:
            raise ToolRefused(f"shell: an argument of {len(a)} characters; at most "
                              f"{MAX_TOKEN_LEN}")
    return list(args)


def _refuse(why: str) -> ToolRefused:
    return ToolRefused(f"shell: {why}")


def _check_tokens(argv: list[str]) -> None:
    for tok in argv:
        for bad, name in FORBIDDEN_TOKENS:
            if bad in tok:
                raise _refuse(f"{name} in {tok!r} is not allowed: argv only, never a shell")
    cmd = argv[0]
    if "/" in cmd:
        raise _refuse(f"commands are named, not given as paths ({cmd!r}); allowed: "
                      f"{', '.join(sorted(ALLOWED))}")
    for tok in argv:
        if tok in FORBIDDEN_WORDS:
            raise _refuse(f"{tok!r} is forbidden (the shell tool only reads)")
    if cmd not in ALLOWED:
        raise _refuse(f"{cmd!r} is not on the read-only allow-list: "
                      f"{', '.join(sorted(ALLOWED))}")


_WHY = "it writes, runs a command, follows symlinks out of the repository or never ends"
_LIST = ("reads the names to open from a file, which are never checked: name the files "
         "themselves")


# Options that begin a refused one (du's and grep's --exclude, a glob, beside --exclude-from):
# given whole they are themselves, as getopt reads them, not an abbreviation.
WHOLE_OPTIONS = frozenset({"--exclude"})


def _named(name: str, flags: frozenset[str]) -> str | None:
    """The flag of FLAGS that the option NAME is, exactly or abbreviated (``--deref``)."""
    if name in flags:
        return name
    if name.startswith("--") and len(name) > 2 and name not in WHOLE_OPTIONS:
        return next((f for f in sorted(flags) if f.startswith(name)), None)
    return None


def _check_flags(cmd: str, rule: Rule, tok: str) -> None:
    name = tok.split("=", 1)[0]
    for flags, why in ((rule.flags, f"is not allowed ({_WHY})"), (rule.lists, _LIST)):
        flag = _named(name, flags)
        if flag:
            raise _refuse(f"{cmd} {flag} {why}")
    if tok.startswith("-") and not tok.startswith("--") and cmd != "find":
        letters_run = re.match(r"-([A-Za-z]*)", tok)
        cluster = letters_run.group(1) if letters_run else ""
        for letters, why in ((rule.letters, f"is not allowed ({_WHY})"),
                             (rule.list_letters, _LIST)):
            for letter in letters:
                if letter in cluster:
                    raise _refuse(f"{cmd} -{letter} {why}")


def _option_value(tok: str) -> str | None:
    """The path-like value inside an option token: --file=x -> x, -f../x -> ../x."""
    if tok.startswith("--"):
        return tok.split("=", 1)[1] if "=" in tok else None
    rest = re.sub(r"^-[A-Za-z]+", "", tok)
    return rest or None


def _operands(cmd: str, rule: Rule, argv: list[str]) -> list[tuple[str, bool]]:
    """(token, is_path) for every token after the command; options give their values."""
    out: list[tuple[str, bool]] = []
    pattern_taken = rule.operands != "pattern"
    if cmd == "grep" and any(t in ("-e", "-f") or t.startswith(("--regexp", "--file"))
                             for t in argv[1:]):
        pattern_taken = True
    if cmd == "sed" and any(t == "-e" or t.startswith("--expression") for t in argv[1:]):
        pattern_taken = True
    end_of_options = takes_value = False
    for tok in argv[1:]:
        if takes_value:
            takes_value = False
            out.append((tok, cmd != "sed"))
            continue
        if tok.startswith("-") and tok != "-" and not end_of_options:
            if tok == "--":
                end_of_options = True
                continue
            _check_flags(cmd, rule, tok)
            if cmd == "find":  # find's "options" are predicates; values are separate tokens
                continue
            if rule.value_letters and re.fullmatch(rf"-[A-Za-z]*[{rule.value_letters}]", tok):
                takes_value = True
            value = _option_value(tok)
            if value is not None:
                out.append((value, True))
            continue
        if rule.operands == "data":
            continue
        if not pattern_taken:
            pattern_taken = True
            out.append((tok, False))
            continue
        out.append((tok, True))
    return out


def _check_sed(argv: list[str], operands: list[tuple[str, bool]]) -> None:
    opts = [t for t in argv[1:] if t.startswith("-")]
    if not any(t in ("--quiet", "--silent") or (not t.startswith("--") and "n" in t[1:])
               for t in opts):
        raise _refuse("sed must run with -n (print only what the script asks for)")
    scripts = [t for t, is_path in operands if not is_path]
    for i, t in enumerate(argv[1:-1], start=1):
        if t == "-e" or t.startswith("--expression"):
            scripts.append(argv[i + 1] if t == "-e" else t.split("=", 1)[-1])
    if not scripts:
        raise _refuse("sed needs a script such as '1,20p'")
    for s in scripts:
        if not _SED.match(s.strip()):
            raise _refuse(f"sed script {s!r} is not allowed: only addresses with p, =, l, q "
                          "or s/// (flags g, p, i, digits)")


def check_argv(argv: list[str], root: Path) -> None:
    _check_tokens(argv)
    cmd = argv[0]
    rule = RULES[cmd]
    operands = _operands(cmd, rule, argv)
    if cmd == "sed":
        _check_sed(argv, operands)
    if cmd == "uniq" and sum(1 for _, p in operands if p) > 1:
        raise _refuse("uniq with two files writes the second: give one input")
    for tok, is_path in operands:
        if not is_path:
            continue
        problem = path_problem(root, tok)
        if problem:
            raise _refuse(problem)


def check(proposal: Any, config: Any, root: Path) -> None:
    check_argv(argv_of(proposal.args), root)


def execute(proposal: Any, config: Any, root: Path, *, cancel=None, on_start=None,
            context=None, isolation: str | None = None):
    argv = argv_of(proposal.args)
    check_argv(argv, root)
    if shutil.which(argv[0], path=sandbox.PATH) is None:
        raise ToolRefused(f"shell: {argv[0]} is not installed on this machine")
    spec = config.tools.get(proposal.tool, {})
    res = sandbox.run(argv, config.tool_limits(proposal.tool), root,
                      network=bool(spec.get("network", False)), cancel=cancel,
                      on_start=on_start, isolation=isolation)
    return from_sandbox(res)
