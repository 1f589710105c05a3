"""Every git operation janus-git makes goes through this package:

- proc.py: the git processes, each with a clean environment (no inherited GIT_DIR or
  alternates; replacements and grafts off);
- objects.py: commits, trees, modes and blobs read as objects (pygit2), never from text a
  commit message can shape;
- reading.py: history as the daemon reads it (the first-parent line, a file's history, what a
  merge brought in), built on objects.py;
- commits.py: the commit engine: commits built from blobs and signed, landed under git's own
  index.lock, with the intent journal that makes a crash safe;
- refs.py: refs, the shared remote, and the settings that keep a pusher from changing what
  git shows (`harden`).

GitPython is no longer used: its `repo.index` measured ~9x slower than the CLI on a 10k-commit
repository, and its `cat-file` pipe (one thread only, honouring replacements unless told not
to) gave way to pygit2's in-process reads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from ..faults import crashpoint, stallpoint
from ..util import Signal
from .commits import EMPTY_TREE, Commits, Identity, UnsafePath, check_no_symlink
from .objects import REGULAR_MODES, Commit, ObjectReader, is_sha, mode_name, parse_commit
from .proc import git_env, git_version
from .reading import HistoryError, Reading
from .refs import REPLACE_REFS, Refs

TRAILER_PROPOSAL = "Janus-Proposal"
TRAILER_TRANSITION = "Janus-Transition"

def format_message(subject: str, body: str = "", trailers: dict[str, str] | None = None) -> str:
    parts = [subject.strip()]
    if body.strip():
        parts.append(body.strip())
    if trailers:
        parts.append("\n".join(f"{k}: {v}" for k, v in trailers.items()))
    return "\n\n".join(parts) + "\n"


class Publisher(Protocol):
    """What remote mode hands the git layer (daemon/remote/sync.py implements it): every
    commit is landed on the remote before the local branch moves."""

    def land(self, repo: "GitRepo", sha: str, head: str | None,
             files: dict[str, bytes | None], message: str,
             identity: Identity | None) -> str:
        """Land SHA (FILES' commit on HEAD) on the remote and return what landed there: SHA,
        or the same change made again on the remote's new tip; or raise Conflict."""

    def publish_ref(self, ref: str, sha: str | None) -> None:
        """Best effort: make REF on the remote point at SHA (None: delete it)."""


class GitRepo(Reading, Commits, Refs):
    """One repository's working tree, its objects and its refs.

    One instance serves all of a daemon's threads (each gets its own libgit2 handle), so
    what it holds is the daemon's:
    - `made`: the commits it signed as the agent, known to be its own without a signature
      check (a new process knows them by their signatures again);
    - `transitions`: the signal a proposal's committed transitions are sent on;
    - `publisher`: remote mode's (daemon/remote/sync.py), which lands each new commit before the
      local branch moves: git's refusal of a non-fast-forward push is the compare-and-swap.
    """

    def __init__(self, root: str | os.PathLike[str], *, pipe_reads: bool = False) -> None:
        """PIPE_READS: objects are read through a `git cat-file --batch` pipe (a one-shot
        read command: no pygit2 import), not libgit2 (objects.py)."""
        self.root = Path(root).resolve()
        self.objects = ObjectReader(self.root, pipe=pipe_reads)
        self.made: set[str] = set()
        self.publisher: Publisher | None = None
        # a proposal's transitions committed through this repository (lifecycle.py sends;
        # the daemon's notifier listens)
        self.transitions = Signal("transition")
        self._key: Path | None | bool = False  # False: not looked up yet

    def close(self) -> None:
        self.objects.close()

    def _publisher(self) -> Publisher | None:
        return self.publisher

    # -- the agent's signature -----------------------------------------------------------
    def agent_key(self) -> Path | None:
        if self._key is False:
            from ..agentkey import find_key
            self._key = find_key()
        return self._key  # type: ignore[return-value]

    def sign_args(self, identity: Identity | None) -> list[str]:
        """Options that sign a commit made in the agent's name (None: a person's commit)."""
        from ..agentkey import sign_args
        return sign_args(self.agent_key()) if identity is not None else []

    def _made(self, sha: str, identity: Identity | None) -> str:
        if identity is not None and self.agent_key() is not None:
            self.made.add(sha)
        return sha


def init_repo(root: Path, branch: str = "main") -> GitRepo:
    root.mkdir(parents=True, exist_ok=True)
    repo = GitRepo(root)
    repo._run("init", "-q", "-b", branch)
    # Reviewers push approvals into the daemon's checked-out branch: update the working tree
    # in place (refused only if it is dirty, which the daemon never leaves it).
    repo._run("config", "receive.denyCurrentBranch", "updateInstead")
    repo.harden()
    return repo


def read_blobs(repo: GitRepo, shas: list[str]) -> list[bytes]:
    """Contents of many blobs (for index rebuilds), read in-process."""
    out = []
    for sha in shas:
        found = repo.objects.raw(sha)
        out.append(found[1] if found is not None and found[0] == 3 else b"")
    return out


__all__ = [
    "EMPTY_TREE", "REGULAR_MODES", "REPLACE_REFS", "TRAILER_PROPOSAL",
    "TRAILER_TRANSITION", "Commit", "GitRepo", "HistoryError", "Identity", "ObjectReader",
    "Publisher", "UnsafePath", "check_no_symlink", "crashpoint", "format_message", "git_env",
    "git_version", "init_repo", "is_sha", "mode_name", "parse_commit", "read_blobs",
    "stallpoint",
]
