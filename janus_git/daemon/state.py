"""What the daemon holds between steps, in one object that its parts share.

The rules in force (and the configuration they make) come from history through `trust`,
never from the working tree's agent.yaml.  Everything here is derived: a restart rebuilds it
from git (the cursor and the rules cache under .git/janus/ only save re-reading history).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..approvals import Filing
from ..config import Config
from ..proposal import Proposal
from ..trust import Rules, Trust
from ..util import atomic_write


@dataclass
class Seen:
    """A proposal as it was read at commit HEAD, handed along with its ticket: the part that
    takes the ticket uses it while HEAD is still that commit, instead of reading it again."""
    head: str
    proposal: Proposal
    text: bytes


@dataclass
class Ticket:
    """An approved proposal waiting for a run slot and the escapement (SEEN: as the part
    that queued it read it; used once, and only at the same HEAD)."""
    id: str
    decision: dict[str, Any]
    seen: Seen | None = field(default=None, compare=False, repr=False)

    @property
    def lane(self) -> str:
        """"people" for work a person approved (it starts first), else "auto"."""
        return "people" if self.decision.get("rule") == "human" else "auto"


class RunQueue:
    """Approved work waiting to start, in the order it was offered: the executor's.

    The reader, the judge, the decider and the stop offer and withdraw tickets; only the
    executor (and, on a shared remote, its batcher) takes one to start it.  Reading it is
    a mapping's (`in`, `len`, iteration, `get`, `values`); writing it is only these verbs,
    so that every change to what will run is one of them."""

    def __init__(self) -> None:
        self._tickets: dict[str, Ticket] = {}

    def offer(self, ticket: Ticket) -> None:
        """Queue TICKET (a newer decision for the same proposal replaces the older)."""
        self._tickets[ticket.id] = ticket

    def offer_once(self, ticket: Ticket) -> None:
        """Queue TICKET unless its proposal is queued already."""
        self._tickets.setdefault(ticket.id, ticket)

    def withdraw(self, pid: str) -> Ticket | None:
        """PID no longer waits (decided otherwise, changed, stopped); its ticket, if any."""
        return self._tickets.pop(pid, None)

    def next(self, lane: str | None = None, skip=lambda t: False) -> Ticket | None:
        """The oldest ticket (of LANE) that SKIP does not pass over; it stays queued."""
        return next((t for t in self._tickets.values()
                     if (lane is None or t.lane == lane) and not skip(t)), None)

    def take(self, pid: str) -> Ticket:
        """Take PID's ticket out to start it (the executor's)."""
        return self._tickets.pop(pid)

    def pending_auto(self) -> int:
        return sum(1 for t in self._tickets.values() if t.lane == "auto")

    def get(self, pid: str) -> Ticket | None:
        return self._tickets.get(pid)

    def values(self):
        return self._tickets.values()

    def __contains__(self, pid: object) -> bool:
        return pid in self._tickets

    def __iter__(self):
        return iter(list(self._tickets))

    def __len__(self) -> int:
        return len(self._tickets)

    def __bool__(self) -> bool:
        return bool(self._tickets)


@dataclass
class Run:
    """A tool running in a worker thread; RESULT is set when it ends.  LANE is "people" (a
    person approved it) or "auto"; an EXCLUSIVE run has the host to itself, and records the
    host's load before (HOST_BEFORE) and after it."""
    id: str
    thread: threading.Thread
    cancel: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    lane: str = "auto"
    exclusive: bool = False
    host_before: dict[str, Any] | None = None
    started_at: str | None = None


@dataclass
class DaemonState:
    trust: Trust
    cursor: str | None = None  # the last first-parent commit read
    queue: RunQueue = field(default_factory=RunQueue)
    runs: dict[str, Run] = field(default_factory=dict)
    results: list[tuple[Run, Proposal]] = field(default_factory=list)  # awaiting their commit
    branches: set[str] = field(default_factory=set)  # approval branches offered
    seen_manual: set[str] = field(default_factory=set)  # decided manual: waiting for a person
    filed: dict[str, Filing] = field(default_factory=dict)  # id -> as filed, read when needed
    stopped: bool = False
    exiting: bool = False
    activity: str = "starting"
    last_error: str = ""
    # the loop sleeps on WAKE (set by runs, signals, the watcher); WRITES is held to commit
    wake: threading.Event = field(default_factory=threading.Event)
    # set by the watcher when a ref moves: the stop-watch's cue (the main loop may be busy)
    refs_moved: threading.Event = field(default_factory=threading.Event)
    writes: threading.RLock = field(default_factory=threading.RLock)

    @property
    def rules(self) -> Rules:
        assert self.trust.rules is not None
        return self.trust.rules

    @property
    def config(self) -> Config:
        """The configuration in force: the rules' (trust.py), never the working tree's."""
        return self.rules.config

    def pending_auto(self) -> int:
        return self.queue.pending_auto()

    def running(self, lane: str | None = None) -> int:
        return sum(1 for r in self.runs.values() if lane is None or r.lane == lane)


class CursorFile:
    """The cursor, kept under .git/janus/ so a restart reads on from where it stopped."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "cursor"

    def load(self) -> str | None:
        try:
            return self.path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def save(self, sha: str | None) -> None:
        if sha and self.path.parent.is_dir():
            atomic_write(self.path, sha.encode())
