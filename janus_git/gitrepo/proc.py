"""Running git: one clean environment for every process, and one error that carries the
command, its status and its output.

What a git process sees is decided here, not by whoever started the daemon:
- no inherited `GIT_DIR`, `GIT_WORK_TREE`, `GIT_INDEX_FILE`, `GIT_OBJECT_DIRECTORY`,
  `GIT_ALTERNATE_OBJECT_DIRECTORIES`, `GIT_NAMESPACE`, `GIT_REPLACE_REF_BASE` or config
  injected through the environment: only identity, transport and the config-file locations
  pass (as pre-commit's `no_git_env` does);
- `GIT_NO_REPLACE_OBJECTS=1` and a graft file that does not exist: a `refs/replace/*` that
  anyone may push, or a graft, changes nothing that git prints, checks out or compares;
- the C locale, so that messages can be matched.
"""
from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

from ..errors import GitError, JanusError

LOCK_RETRY_SECONDS = 10.0
# identity, transport and where the user's config lives: nothing that says what a repository
# or an object is
_KEPT = ("GIT_AUTHOR_", "GIT_COMMITTER_", "GIT_SSH", "GIT_SSL_", "GIT_HTTP_", "GIT_PROXY_",
         "GIT_ASKPASS", "GIT_TERMINAL_PROMPT", "GIT_EXEC_PATH", "GIT_CONFIG_GLOBAL",
         "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_SYSTEM")
NO_GRAFTS = "/nonexistent/janus-git/no-grafts"


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every git process janus-git starts."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_") or k.startswith(_KEPT)}
    env.update(LANGUAGE="C", LC_ALL="C", GIT_NO_REPLACE_OBJECTS="1", GIT_GRAFT_FILE=NO_GRAFTS)
    env.update(extra or {})
    return env


class Process:
    """The git commands of one repository (ROOT is its working tree)."""

    root: Path

    def _run(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None,
             check: bool = True) -> str:
        status, out, err = self._run_status(*args, env=env, stdin=stdin)
        if check and status != 0:
            raise GitError([str(a) for a in args], status, out, err)
        return out

    def _run_status(self, *args: str, env: dict[str, str] | None = None,
                    stdin: str | None = None) -> tuple[int, str, str]:
        """(exit status, stdout, stderr).  Commands run through subprocess directly, as
        pre-commit does."""
        try:
            proc = subprocess.run(["git", *map(str, args)], cwd=self.root, env=git_env(env),
                                  input=stdin, capture_output=True, text=True,
                                  errors="replace")
        except FileNotFoundError:
            if not self.root.is_dir():
                raise JanusError(f"{self.root} no longer exists") from None
            raise JanusError("git is not installed (apt-get install git)") from None
        return proc.returncode, proc.stdout, proc.stderr

    def _run_bytes(self, *args: str, stdin: bytes | None = None,
                   env: dict[str, str] | None = None) -> bytes:
        proc = subprocess.run(["git", *args], cwd=self.root, env=git_env(env), input=stdin,
                              capture_output=True)
        if proc.returncode != 0:
            raise GitError(list(args), proc.returncode, "",
                           proc.stderr.decode(errors="replace"))
        return proc.stdout

    def _run_retrying(self, *args: str, env: dict[str, str] | None = None,
                      stdin: str | None = None) -> str:
        """Run a command that takes index.lock, waiting politely while someone else holds it."""
        deadline = time.monotonic() + LOCK_RETRY_SECONDS
        delay = 0.005
        while True:
            try:
                return self._run(*args, env=env, stdin=stdin)
            except GitError as e:
                # index.lock: someone is staging; "cannot lock ref": a concurrent commit moved
                # the branch between our read and our update.  Both clear up: try again.
                transient = "index.lock" in e.stderr or "cannot lock ref" in e.stderr
                if not transient:
                    raise
                if time.monotonic() > deadline:
                    e.args = (f"{self.root / '.git' / 'index.lock'} was held for "
                              f"{LOCK_RETRY_SECONDS:.0f} s by another git process; if none "
                              "is running, remove it",)
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.25)

    def _run_timed(self, timeout: float, *args: str) -> str:
        status, out, err = self._run_status_timed(timeout, *args)
        if status != 0:
            raise GitError([str(a) for a in args], status, out, err)
        return out

    def _run_status_timed(self, timeout: float, *args: str) -> tuple[int, str, str]:
        """A network command: a dead remote must not wedge the daemon."""
        try:
            proc = subprocess.run(["git", *args], cwd=self.root,
                                  env=git_env({"GIT_TERMINAL_PROMPT": "0"}),
                                  capture_output=True, text=True, errors="replace",
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return 124, "", f"git {args[0]} took more than {timeout:.0f} s"
        return proc.returncode, proc.stdout, proc.stderr


def git_version() -> str | None:
    try:
        return subprocess.run(["git", "--version"], capture_output=True, text=True,
                              env=git_env()).stdout.strip()
    except FileNotFoundError:
        return None
