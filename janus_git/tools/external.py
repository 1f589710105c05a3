"""Manual tools (python, curl, git, rg, jq, sqlite3): agent.yaml's ``command`` plus the
proposal's args, run in the sandbox once a human approved them.

The arguments are only checked for shape (a list of strings without NUL bytes): the human
approval is the check of their meaning.  The sandbox still applies: the repository is
read-only, the network exists only for tools that declare ``network: true``, and the limits
hold.  ``git`` sees the repository's ``.git`` (read-only); every other tool does not.
"""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from .. import sandbox
from . import RunResult, ToolRefused, from_sandbox

# git refuses a repository owned by another uid ("dubious ownership"); the sandbox's uid is
# never the owner, and the mount is read-only anyway.
GIT_ENV = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
           "GIT_CONFIG_VALUE_0": "*", "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


def _command(proposal: Any, config: Any) -> list[str]:
    cmd = config.tools.get(proposal.tool, {}).get("command")
    if not cmd or not all(isinstance(c, str) and c for c in cmd):
        raise ToolRefused(f"tool {proposal.tool!r} has no command in state/agent.yaml "
                          "(tools.<name>.command: [program, ...])")
    return list(cmd)


def _args(proposal: Any) -> list[str]:
    args = proposal.args
    if args is None:
        return []
    if isinstance(args, str):
        try:
            args = shlex.split(args)
        except ValueError as e:
            raise ToolRefused(f"{proposal.tool}: cannot split the arguments: {e}") from None
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ToolRefused(f"{proposal.tool}: args must be a list of strings")
    if any("\x00" in a for a in args):
        raise ToolRefused(f"{proposal.tool}: an argument contains a NUL byte")
    return list(args)


def check(proposal: Any, config: Any, root: Path) -> None:
    _command(proposal, config)
    _args(proposal)


def execute(proposal: Any, config: Any, root: Path, *, cancel=None, on_start=None,
            context=None, isolation: str | None = None) -> RunResult:
    cmd = _command(proposal, config)
    argv = cmd + _args(proposal)
    if shutil.which(cmd[0], path=sandbox.PATH) is None:
        raise ToolRefused(f"{proposal.tool}: {cmd[0]} is not installed on this machine")
    spec = config.tools[proposal.tool]
    is_git = Path(cmd[0]).name == "git"
    res = sandbox.run(argv, config.tool_limits(proposal.tool), root,
                      network=bool(spec.get("network", False)), cancel=cancel,
                      on_start=on_start, isolation=isolation, hide_git=not is_git,
                      env=GIT_ENV if is_git else None)
    return from_sandbox(res)
