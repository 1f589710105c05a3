"""Where a daemon stands among others: the one seam between a daemon alone and a fleet.

The loop, the executor and the decider ask their coordinator, and none of them knows which
kind it is:

- `LocalCoordinator`: the daemon is alone with its repository.  It always leads, every claim
  is its own, nothing needs fetching, and every commit lands straight on the branch.
- `RemoteCoordinator` (daemon/remote/): the repository lives on a shared remote and several
  daemons share the work by leases, pushes and fetches.  It is imported only when the rules
  in force name a remote (`for_config`), and nothing on the local path imports it
  (tests/test_architecture.py holds that).

What the executor hands to its coordinator is the `Claims` of automatic work: claimed one
at a time with each result committed as it ends (local), or in batches, one push each
(remote/batch.py).
"""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..notify import Notifier
    from ..proposal import Proposal
    from ..staterepo import StateRepo
    from .state import DaemonState, Ticket


def default_instance() -> str:
    """A daemon's name among others (its host's, unless `--instance` names one)."""
    return socket.gethostname() or "janus"


class Claims(Protocol):
    """How the executor claims automatic work and reports its results."""

    backlog: dict[str, "Ticket"]  # claimed, not yet started

    def takes(self, ticket: "Ticket") -> bool:
        """Whether TICKET is claimed by this, not started by the executor's own path."""

    def step(self) -> None:
        """Before the executor's own starts: claim and start what this takes."""

    def report(self) -> bool:
        """Finished runs: True if this reports them (else the executor commits each)."""

    def release(self) -> None:
        """On the way out: what was claimed but never started is given up."""


class Coordinator(Protocol):
    instance: str
    claim: dict[str, str]  # what a claim records of the daemon that made it
    one_commit_per_pass: bool  # the policy's approvals of a pass in one commit

    def open(self) -> None:
        """Before start-up reads anything: the others' news first."""

    def close(self) -> None: ...

    def sync(self) -> bool:
        """At a step's start: bring in what others did; True if the branch may have moved."""

    def resync(self) -> None:
        """After a refused commit: fetch and bring in now."""

    def leads(self) -> bool:
        """Whether this daemon decides new proposals, thinks and does the chores."""

    def owns(self, p: "Proposal") -> bool:
        """Whether running proposal P is this daemon's claim."""

    def orphans(self) -> list[tuple[str, str]]:
        """(id, why) of claims whose daemon is gone: to be interrupted (the leader's)."""

    def poke(self) -> None:
        """Look at the others now (`janus-git poke`, a webhook delivery)."""

    def claims(self, executor: Any) -> Claims:
        """The claims of EXECUTOR's automatic work."""

    def status(self) -> dict[str, Any] | None: ...


class DirectClaims:
    """A daemon alone: each run is claimed by its own commit, each result committed alone."""

    def __init__(self) -> None:
        self.backlog: dict[str, "Ticket"] = {}  # (never any: nothing is claimed ahead)

    def takes(self, ticket: "Ticket") -> bool:
        return False

    def step(self) -> None:
        pass

    def report(self) -> bool:
        return False

    def release(self) -> None:
        pass


class LocalCoordinator:
    """The daemon alone with its repository."""

    one_commit_per_pass = False

    def __init__(self, instance: str | None = None) -> None:
        self.instance = instance or default_instance()
        self.claim: dict[str, str] = {}

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def sync(self) -> bool:
        return False

    def resync(self) -> None:
        pass

    def leads(self) -> bool:
        return True

    def owns(self, p: "Proposal") -> bool:
        return True

    def orphans(self) -> list[tuple[str, str]]:
        return []

    def poke(self) -> None:
        pass

    def claims(self, executor: Any) -> Claims:
        return DirectClaims()

    def status(self) -> dict[str, Any] | None:
        return None


def for_config(sr: "StateRepo", state: "DaemonState", notifier: "Notifier",
               instance: str | None, listen: str | None) -> Coordinator:
    """The coordinator the rules in force call for: a shared remote's when they name one.
    (The one door from the local path to daemon/remote/.)"""
    if not state.config["remote"]:
        return LocalCoordinator(instance)
    from .remote import RemoteCoordinator
    return RemoteCoordinator(sr, state, notifier, instance or default_instance(), listen)
