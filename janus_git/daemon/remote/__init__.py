"""Remote mode: the state repository lives on a shared remote (a bare repository over SSH or
git://, a forge), people review in their own clones, and several daemons share the work.

Git is the coordination; there is no service of our own:
- every commit this daemon makes is pushed *before* its local branch moves (gitrepo's
  publisher), so the clone is never ahead of the remote with work of its own.  The remote's
  refusal of a non-fast-forward push is the compare-and-swap: a claim (`approved -> running`)
  is the push that lands, and a daemon whose push is refused fetches, reads what landed and
  decides again (a person's edit of the same file wins: it is read first);
- what others pushed arrives by fetch, on the poll interval or at once when poked
  (`janus-git poke`, a webhook delivery, a refused push), and is fast-forwarded in: the
  reader then judges it commit by commit, as it judges a local commit;
- liveness is a lease: each daemon pushes a heartbeat commit to `refs/janus/lease/<instance>`.
  A lease that has not moved for `lease_seconds` (by the observer's own clock: no clock skew)
  has expired; the claims of its daemon become `interrupted`, never run twice.  The live
  daemon with the least instance name leads: it alone decides new proposals, thinks, and
  makes the daily summary and hygiene.
  Only the agent's signed heartbeats count, and only forward (leases.py).

The package, each part handed what it uses:

- sync.py    Remote: fetch and bring in the branch; the publisher every commit lands through
- replay.py  a refused push made again on the remote's new tip, when nothing it read moved
- leases.py  Heartbeat (this daemon's lease, from its own thread) and Leases (everyone's)
- batch.py   Batcher: automatic work claimed and reported in batches, one push each
- here       RemoteCoordinator: the daemon's Coordinator (daemon/coordinator.py) on a remote
"""
from __future__ import annotations

import logging
import time
from typing import Any

from ...notify import Notifier
from ...proposal import Proposal, Status
from ...staterepo import StateRepo
from ..state import DaemonState
from .batch import Batcher
from .sync import Remote, claimed_by

log = logging.getLogger(__name__)
REAP_EVERY_S = 1.0  # a lease expires in seconds, and every claim is read each time


class RemoteCoordinator:
    """A daemon among others on a shared remote."""

    one_commit_per_pass = True  # the policy's approvals of one pass: one push

    def __init__(self, sr: StateRepo, state: DaemonState, notifier: Notifier,
                 instance: str, listen: str | None = None) -> None:
        self.sr = sr
        self.state = state
        self.instance = instance
        self.claim = {"instance": instance}
        self.remote = Remote(sr.repo, state, instance, notifier, listen)
        self._reaped = 0.0

    def open(self) -> None:
        # what a process killed mid-commit left in the tree goes first: the fast-forward
        # would refuse to overwrite it
        for path in self.sr.repo.recover_intents():
            log.warning("put %s back to HEAD: a janus-git process died before committing it",
                        path)
        self.remote.open()  # the remote's news first: start-up reads it

    def close(self) -> None:
        self.remote.close()

    def sync(self) -> bool:
        if not self.remote.due():
            return False
        # others' pushes come in first (a refused push waits on this); the reader judges
        # them.  The fetch itself runs beside the loop
        self.remote.sync(background=True)
        return True

    def resync(self) -> None:
        self.remote.sync()

    def leads(self) -> bool:
        return self.remote.leader()

    def owns(self, p: Proposal) -> bool:
        """Each claim names its daemon's instance (a claim naming none is taken as ours)."""
        return claimed_by(p.execution) in (None, self.instance)

    def orphans(self) -> list[tuple[str, str]]:
        """Claims of a daemon whose lease expired: interrupted by the leader (the run may
        have happened in part; a person decides whether to run it again)."""
        now = time.monotonic()
        if now - self._reaped < REAP_EVERY_S:
            return []
        self._reaped = now
        found = []
        for row in self.sr.index.query(status=[Status.RUNNING.value]):
            current = self.sr.store.head(row["id"])
            owner = claimed_by(current[0].execution) if current else None
            if current and self.remote.orphaned(owner):
                found.append((row["id"], f"the daemon {owner!r} that ran this stopped "
                              "renewing its lease; it is not re-run by itself: set status "
                              "to approved and commit to run it again"))
        return found

    def poke(self) -> None:
        self.remote.poke()

    def claims(self, executor: Any) -> Batcher:
        remote = self.remote
        return Batcher(executor, self.instance, int(self.state.config["remote"]["claim_batch"]),
                       peers=remote.alive, ready=lambda: not remote.behind,
                       resync=remote.sync)

    def status(self) -> dict[str, Any]:
        return self.remote.status()


__all__ = ["RemoteCoordinator"]
