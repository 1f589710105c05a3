"""How the daemon honours the emergency stop: while the stop file is committed, running tools
are cancelled and approved proposals are suspended before they start; when it is lifted, the
suspended ones go back to `proposed` to be decided again.

Anyone may commit the stop; only an approver may lift it (trust.py), so `stopped` is read
from the rules in force, never from the working tree.  The stop-watch thread reaches running
tools within a second even while the main loop is busy.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from .. import lifecycle
from ..gitrepo import GitRepo
from ..notify import Notifier
from ..proposal import Status
from ..staterepo import STOP_PATH, StateRepo
from .state import DaemonState

log = logging.getLogger(__name__)
S = Status


class EmergencyStop:
    def __init__(self, sr: StateRepo, state: DaemonState, notifier: Notifier) -> None:
        self.sr = sr
        self.repo = sr.repo
        self.store = sr.store
        self.state = state
        self.notifier = notifier

    def enforce(self) -> None:
        state = self.state
        if state.activity not in ("stopped", "stopping"):
            log.warning("emergency stop in force (%s)", STOP_PATH)
            self.notifier.post("janus-git: EMERGENCY STOP in force",
                               self.sr.stopped_at() or "", kind="stop")
        for run in state.runs.values():
            run.cancel.set()
        for pid in list(state.queue):
            state.queue.withdraw(pid)
            current = self.store.head(pid)
            if current and current[0].status == S.APPROVED:
                with state.writes:
                    lifecycle.transition(self.repo, current[0], S.SUSPENDED,
                                         state.config.identity, base_text=current[1],
                                         reason="emergency stop: suspended before it started")
        state.activity = "stopped" if not state.runs else "stopping"

    def resume(self) -> None:
        """The suspended go back to `proposed`; the caller decides everything again."""
        state = self.state
        log.info("emergency stop lifted; resuming")
        for row in self.sr.index.query(status=[S.SUSPENDED.value]):
            current = self.store.head(row["id"])
            if current:
                with state.writes:
                    lifecycle.transition(self.repo, current[0], S.PROPOSED,
                                         state.config.identity, base_text=current[1],
                                         reason="resumed after the emergency stop; decided again")
                state.seen_manual.discard(row["id"])
        state.activity = "idle"


class StopWatch:
    """The stop reaches running tools within a second even while the main loop is busy
    (a long catch-up, a slow commit): its own thread, woken by the watcher whenever a ref
    moves (and once a second regardless), reads HEAD and cancels every run."""

    def __init__(self, root: Path, state: DaemonState) -> None:
        self.root = root
        self.state = state
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._watch, name="stop-watch", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.done.set()
        self.state.refs_moved.set()
        if self.thread is not None:
            self.thread.join()

    def _watch(self) -> None:
        state = self.state
        repo = GitRepo(self.root)  # its own: it only reads the stop
        seen = None
        try:
            while not state.exiting and not self.done.is_set():
                head = repo.fast_head()
                if head != seen:
                    seen = head
                    stop = repo.read_blob_once(head or "HEAD", STOP_PATH) is not None
                    if stop and state.runs:
                        log.warning("emergency stop committed: cancelling %d run(s)",
                                    len(state.runs))
                        for run in list(state.runs.values()):
                            run.cancel.set()
                        state.wake.set()
                # woken by the watcher when a ref moves; the 1 s poll is only a safety net
                state.refs_moved.wait(1.0)
                state.refs_moved.clear()
        finally:
            repo.close()
