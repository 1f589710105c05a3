"""Proposals on disk: sharded paths under proposals/YYYY/MM/, read from a git revision."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from .errors import ConfigError, JanusError, NotFound
from .gitrepo import GitRepo
from .proposal import Proposal, parse_proposal, shard_path

PROPOSALS_DIR = "proposals"
SHARD_RE = re.compile(r"^proposals/(\d{4})/(\d{2})/(\d{8}-\d{9}-[0-9a-f]{6})\.yaml$")
ID_RE = re.compile(r"^\d{8}-\d{9}-[0-9a-f]{6}$")
log = logging.getLogger(__name__)


def is_proposal_path(path: str) -> bool:
    return path.startswith(PROPOSALS_DIR + "/") and path.endswith((".yaml", ".yml"))


def check_placement(path: str) -> None:
    """A proposal file must live in its shard and be named after its id."""
    m = SHARD_RE.match(path)
    if not m or m.group(1) != m.group(3)[:4] or m.group(2) != m.group(3)[4:6]:
        raise ConfigError(path, None, "a proposal file outside the shards",
                          "proposal files live at proposals/YYYY/MM/<id>.yaml; "
                          "use `janus-git propose` to file one")


def id_from_path(path: str) -> str:
    return Path(path).stem


class Store:
    def __init__(self, repo: GitRepo) -> None:
        self.repo = repo

    def resolve(self, pid_or_prefix: str, rev: str = "HEAD") -> str:
        """Full id from an id or a unique prefix of one."""
        if ID_RE.match(pid_or_prefix):
            return pid_or_prefix
        prefix = pid_or_prefix.strip()
        if len(prefix) < 4:
            raise NotFound(f"proposal {prefix!r} not found (give at least 4 characters of its id)")
        shard = f"{PROPOSALS_DIR}/{prefix[0:4]}/" if prefix[:4].isdigit() else PROPOSALS_DIR
        matches = [id_from_path(p) for p in self.repo.ls_tree(rev, shard)
                   if id_from_path(p).startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFound(f"no proposal has an id starting with {prefix!r} "
                           "(`janus-git list` shows them)")
        raise NotFound(f"{prefix!r} matches {len(matches)} proposals; give more of the id")

    def read_text(self, pid: str, rev: str = "HEAD") -> bytes | None:
        return self.repo.read_blob(rev, shard_path(pid))

    def read(self, pid: str, rev: str = "HEAD") -> Proposal:
        text = self.read_text(pid, rev)
        if text is None:
            raise NotFound(f"proposal {pid} not found at {rev} (`janus-git list` shows them)")
        return parse_proposal(text, shard_path(pid))

    def head(self, pid: str) -> tuple[Proposal, bytes] | None:
        """The proposal as HEAD has it, and the file's bytes (what a commit that changes it
        guards against a person's uncommitted edit); None when HEAD has no such file or it
        cannot be read (logged: the daemon's reader answers an unreadable file)."""
        text = self.read_text(pid)
        if text is None:
            return None
        try:
            return parse_proposal(text, shard_path(pid)), text
        except JanusError as e:
            log.error("%s", e)
            return None

    def head_at(self, pid: str) -> tuple[str, Proposal, bytes] | None:
        """(the commit HEAD is, the proposal, its bytes), all read at that one commit: what a
        part hands along (daemon/state.Seen) for a later part of the same step."""
        sha = self.repo.fast_head()
        if sha is None:
            return None
        text = self.read_text(pid, sha)
        if text is None:
            return None
        try:
            return sha, parse_proposal(text, shard_path(pid)), text
        except JanusError as e:
            log.error("%s", e)
            return None

    def read_path(self, path: str, rev: str = "HEAD") -> Proposal:
        text = self.repo.read_blob(rev, path)
        if text is None:
            raise NotFound(f"{path} not found at {rev}")
        check_placement(path)
        return parse_proposal(text, path)

    def paths(self, rev: str = "HEAD") -> list[str]:
        return [p for p in self.repo.ls_tree(rev, PROPOSALS_DIR) if is_proposal_path(p)]
