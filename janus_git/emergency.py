"""How the daemon honours the emergency stop: while the stop file is committed, running tools
are cancelled and approved proposals are suspended before they start; when it is lifted, the
suspended ones go back to `proposed` to be decided again.

A mixin of Daemon: it works on the daemon's queue, runs and activity.
"""
from __future__ import annotations

import logging

from . import lifecycle
from .proposal import Status
from .state import STOP_PATH

log = logging.getLogger("janus_git.daemon")
S = Status


class EmergencyStop:
    def _enforce_stop(self) -> None:
        if self.activity not in ("stopped", "stopping"):
            log.warning("emergency stop in force (%s)", STOP_PATH)
            self.notifier.post("janus-git: EMERGENCY STOP in force",
                               self.state.stopped_at() or "", kind="stop")
        for run in self.runs.values():
            run.cancel.set()
        for pid in list(self.queue):
            self.queue.pop(pid)
            current = self._head_proposal(pid)
            if current and current[0].status == S.APPROVED:
                with self.writes:
                    lifecycle.transition(self.repo, current[0], S.SUSPENDED,
                                         self.config.identity, base_text=current[1],
                                         reason="emergency stop: suspended before it started")
        self.activity = "stopped" if not self.runs else "stopping"

    def _resume(self) -> None:
        log.info("emergency stop lifted; resuming")
        for row in self.state.index.query(status=[S.SUSPENDED.value]):
            current = self._head_proposal(row["id"])
            if current:
                with self.writes:
                    lifecycle.transition(self.repo, current[0], S.PROPOSED,
                                         self.config.identity, base_text=current[1],
                                         reason="resumed after the emergency stop; decided again")
                self.seen_manual.discard(row["id"])
        self._decided_for = None
        self.activity = "idle"
