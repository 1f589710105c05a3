"""One error base class.  The CLI maps JanusError to exit 1 with its one-line message;
anything else is a bug and exits 3 with a crash log."""
from __future__ import annotations


class JanusError(Exception):
    """A user-facing error: the message says what went wrong and what to do."""


class ConfigError(JanusError):
    """A file the user wrote (agent.yaml, a mission, a proposal) does not validate."""

    def __init__(self, path: object, field: str | None, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.field = field
        self.problem = problem
        where = f"{self.path}: {field}" if field else self.path
        msg = f"{where}: {problem}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class TransitionError(JanusError):
    """A status change the lifecycle does not allow."""


class NotFound(JanusError):
    pass


class GitError(JanusError):
    """A git command failed; carries the command, its exit status and its output."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr or stdout).strip().splitlines()
        super().__init__(
            f"git {' '.join(argv)} failed ({returncode}): {detail[-1] if detail else 'no output'}"
        )


class Conflict(JanusError):
    """Someone else changed the same thing at the same time; the caller may retry.  PATHS:
    the files of the caller's commit that others changed meanwhile, when known (a refused
    push that could not be replayed only because of them: daemon/remote/replay.py)."""

    def __init__(self, message: str, paths: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.paths = paths
