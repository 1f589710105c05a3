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
class Ticket:
    """An approved proposal waiting for a run slot and the escapement."""
    id: str
    decision: dict[str, Any]

    @property
    def lane(self) -> str:
        """"people" for work a person approved (it starts first), else "auto"."""
        return "people" if self.decision.get("rule") == "human" else "auto"


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
    # what a claim records of the daemon that made it ({"instance": ...} on a remote)
    claim: dict[str, str] = field(default_factory=dict)
    queue: dict[str, Ticket] = field(default_factory=dict)
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
        return sum(1 for t in self.queue.values() if t.lane == "auto")

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
