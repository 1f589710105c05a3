"""A refused push replayed onto the remote's new tip, when nothing it read has changed.

In remote mode every daemon commit is pushed to one shared branch, and a push made on a tip
that has moved since is refused: git's compare-and-swap.  Taken whole, that swap is over the
entire branch: three daemons claiming different proposals refuse each other's pushes about
half the time (measured, 3 daemons on a 0.2 s workload), and each refusal used to cost a
fetch, a read of everything fetched and a new decision, with the run slot idle meanwhile.

What a commit of ours decided depends only on the files it changes (a proposal's status
moves from what its file said at our base).  So when no commit that landed meanwhile
touched any of those files, and each touched only proposals/ and logs/ (nothing under
state/ or missions/, where the rules, the stop and the approvers live; every commit is
looked at, so a change made and undone again still counts), the same change is
made again on the new tip and pushed: the compare-and-swap per file that the branch-wide one
was standing in for.  If any of our files changed (a person's edit, another daemon's claim
of the same proposal) the refusal stands and the daemon reads and decides again, as before:
the person's change still wins.  The audit log `logs/tool_use.jsonl` is append-only: ours is
the base's lines plus our own, so on the new tip it becomes theirs plus our own.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ...errors import Conflict

if TYPE_CHECKING:
    from ...gitrepo import GitRepo, Identity

log = logging.getLogger(__name__)
APPEND_ONLY = frozenset({"logs/tool_use.jsonl"})
PASSABLE = ("proposals/", "logs/")  # what others may have changed for a replay to go ahead
TRIES = 3


class Replaying:
    """A publisher (gitrepo's `Publisher`) whose refused pushes are made again on the
    remote's new tip where nothing they changed moved.  What mixes it in pushes (`publish`),
    fetches the tip (`tip`) and counts replays (`replayed`)."""

    def publish(self, sha: str, old: str | None) -> None:
        raise NotImplementedError

    def tip(self) -> str | None:
        raise NotImplementedError

    def replayed(self) -> None:
        pass

    def land(self, repo: "GitRepo", sha: str, head: str | None,
             files: dict[str, bytes | None], message: str,
             identity: "Identity | None") -> str:
        """Push SHA (FILES' commit on HEAD); refused, replay it on the tip.  What landed."""
        try:
            self.publish(sha, head)
            return sha
        except Conflict as refused:
            return onto_tip(repo, self, head, files, message, identity, refused)


def onto_tip(repo: "GitRepo", publisher: Replaying, head: str | None,
             files: dict[str, bytes | None], message: str,
             identity: "Identity | None", refused: Conflict) -> str:
    """FILES' commit (first built on HEAD, whose push was REFUSED) made again on the
    remote's tip and pushed; its sha.  Raises REFUSED when it cannot be replayed."""
    for _ in range(TRIES):
        tip = publisher.tip()
        if head is None or tip is None or tip == head or not repo.is_ancestor(head, tip):
            raise refused  # a rewritten or vanished branch: read it all again
        changed = repo.touched_paths(head, tip)
        why = _blocked(changed, files)
        if why:
            log.info("push refused and not replayed: %s", why)
            ours = frozenset(p for p in changed if p in files and p not in APPEND_ONLY)
            if all(p.startswith(PASSABLE) for p in changed):
                raise Conflict(str(refused), paths=ours)  # the caller may drop those
            raise refused
        info = _index_info(repo, head, tip, changed, files)
        sha = repo.tree_commit(tip, info, message, identity)
        try:
            publisher.publish(sha, tip)
        except Conflict as again:
            refused = again
            continue
        publisher.replayed()
        return sha
    raise refused


def _blocked(changed: list[str], files: dict[str, bytes | None]) -> str:
    """Why a commit of FILES cannot go on top of commits that changed CHANGED ('' if it
    can)."""
    for path in changed:
        if not path.startswith(PASSABLE):
            return f"{path} changed meanwhile (only proposals/ and logs/ are passed over)"
        if path in files and path not in APPEND_ONLY:
            return f"{path} changed meanwhile (ours too): decided again from it"
    return ""


def _index_info(repo: "GitRepo", head: str, tip: str, changed: list[str],
                files: dict[str, bytes | None]) -> str:
    """`update-index --index-info` lines for FILES on TIP: the working tree's blobs, but
    for an append-only file both sides appended to, TIP's content and then our lines."""
    joined = {}
    for path in APPEND_ONLY & set(files) & set(changed):
        ours, base = files[path] or b"", repo.read_blob(head, path) or b""
        if not ours.startswith(base):
            raise Conflict(f"{path} is append-only, yet ours does not extend {head[:10]}'s")
        joined[path] = repo.write_blob((repo.read_blob(tip, path) or b"") + ours[len(base):])
    rest = repo.index_info({p: d for p, d in files.items() if p not in joined})
    return rest + "".join(f"100644 {sha}\t{path}\n" for path, sha in joined.items())
