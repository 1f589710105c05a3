"""How the daemon decides new proposals: the policy and the tool's own check, then an
automatic approval, a refusal, or an approval branch offered to a person.

Only the policy in force (the rules' configuration, never the working tree's agent.yaml)
approves by itself, and only in `beta` mode for the whitelisted types and tools.  While the
relief valve is open (controls.py: too much auto work queued, host memory, automatic runs
failing) automatic work is deferred: it stays `proposed`, nothing is committed, and it is
decided again once the valve closes (`due()`), so a runaway planner cannot flood the queue
and nothing is lost.  The valve's opening is alerted once; a person's work is never deferred.
"""
from __future__ import annotations

import copy
import logging
import time

from .. import lifecycle
from ..controls import Controls
from ..errors import JanusError
from ..faults import crashpoint
from ..notify import Notifier, needs_human
from ..policy import decide
from ..proposal import Proposal, Status, utcnow
from ..staterepo import StateRepo
from .branches import ApprovalBranches
from .state import DaemonState, Seen, Ticket

log = logging.getLogger(__name__)
S = Status
ALERT_EVERY_S = 600.0  # the relief valve's alert, at most this often


class Decider:
    def __init__(self, sr: StateRepo, state: DaemonState, branches: ApprovalBranches,
                 controls: Controls, notifier: Notifier, *,
                 one_commit_per_pass: bool = False) -> None:
        self.sr = sr  # its index lists the proposals to decide
        self.repo = sr.repo
        self.store = sr.store
        self.state = state
        self.branches = branches
        self.controls = controls
        self.valve = controls.valve
        self.notifier = notifier
        self.deferred: set[str] = set()  # auto work the open valve holds back
        self._redecide = False
        self._alerted = 0.0
        controls.valve_moved.connect(self._valve_moved)
        # ONE_COMMIT_PER_PASS (a shared remote's coordinator asks for it): the policy's
        # approvals of one pass go in one commit, one push; else one commit each
        self.grouped = one_commit_per_pass
        self.batch: list[tuple[Proposal, bytes, object]] = []

    def due(self) -> bool:
        """Whether deferred work is to be decided again (the valve closed since)."""
        return self._redecide

    def _valve_moved(self, change: str) -> None:
        if change == "opened":
            why = self.valve.describe()
            now = time.monotonic()
            # a backlog that drains opens and closes the valve in turn: one alert per
            # ALERT_EVERY_S, the rest in the log
            if self._alerted and now - self._alerted < ALERT_EVERY_S:
                log.info("relief valve open again: %s", why)
                return
            self._alerted = now
            log.warning("relief valve open: %s; automatic work is deferred", why)
            self.notifier.post("janus-git: relief valve open, automatic work deferred",
                               f"{why}.\nAutomatic proposals stay proposed and are decided "
                               "again when the pressure falls; people's approvals still run.",
                               kind="alert")
        else:
            log.info("relief valve closed; %d deferred proposal(s) decided again",
                     len(self.deferred))
            self._redecide = bool(self.deferred)

    def decide_new(self) -> None:
        state = self.state
        self._redecide = False
        self.controls.configure(state.config["controls"])
        rows = self.sr.index.query(status=[S.PROPOSED.value])
        self.deferred &= {row["id"] for row in rows}
        try:
            self._decide_rows(rows)
        finally:
            if self.batch:
                self._approve_batch()

    def _decide_rows(self, rows: list[dict]) -> None:
        from .. import tools

        state = self.state
        for row in rows:
            pid = row["id"]
            if pid in state.seen_manual or pid in state.queue:
                continue
            if pid in self.deferred and self.controls.defers_auto(self._pending()):
                continue  # still held back: not read again until the valve closes
            current = self.store.head(pid)
            if current is None:
                continue
            p, text = current
            if p.digest != p.recompute_digest():
                self.refuse(p, text, "its digest field does not match its type, tool and "
                            "args; file it with `janus-git propose`")
                continue
            decision = decide(p, state.config)
            if decision.reject:
                self.refuse(p, text, decision.reason)
                continue
            try:
                tools.check(p, state.config, self.sr.root)
            except JanusError as e:
                self.refuse(p, text, str(e))
                continue
            if not decision.auto:
                self.branches.offer(p)
                state.seen_manual.add(pid)
                self.notifier.post(*needs_human(p, decision.reason, decision.risk),
                                   kind="approval")
                continue
            if self.controls.defers_auto(self._pending()):
                self.deferred.add(pid)  # stays proposed: decided again when it closes
                continue
            self.deferred.discard(pid)
            self._approve(p, text, decision)

    def _pending(self) -> int:
        return self.state.pending_auto() + len(self.batch)

    def _approve(self, p: Proposal, text: bytes, decision) -> None:
        """The policy's approval: committed (with the rule that made it), then queued."""
        if self.grouped:
            self.batch.append((p, text, decision))
            return
        state = self.state
        record, approve = self._record(p, decision)
        with state.writes:
            sha = lifecycle.transition(self.repo, p, S.APPROVED, state.config.identity,
                                       base_text=text, update=approve,
                                       reason=decision.reason)
        crashpoint("after-auto-approve")
        # exactly what that commit wrote (before the record, which P's decision is, learns
        # its commit), handed to the executor: used while HEAD is that commit
        seen = Seen(sha, copy.deepcopy(p), p.to_yaml())
        record["commit"] = sha
        state.queue.offer(Ticket(p.id, record, seen=seen))

    def _record(self, p: Proposal, decision):
        record = {"rule": decision.rule, "by": self.state.config.identity.email,
                  "digest": p.recompute_digest(), "at": utcnow(), "reason": decision.reason}

        def approve(q: Proposal) -> None:
            q.risk = decision.risk
            q.decision = record
        return record, approve

    def _approve_batch(self) -> None:
        """The pass's approvals in one commit; queued once it landed (a refused push leaves
        them proposed, decided again after the fetch)."""
        state, batch = self.state, self.batch
        self.batch = []
        made = [(p, *self._record(p, d), text, d) for p, text, d in batch]
        steps = [lifecycle.Step(p, S.APPROVED, text, d.reason, approve)
                 for p, _, approve, text, d in made]
        with state.writes:
            sha = lifecycle.transition_group(self.repo, steps, state.config.identity)
        crashpoint("after-auto-approve")
        for p, record, _, _, _ in made:
            record["commit"] = sha
            state.queue.offer(Ticket(p.id, record))

    def refuse(self, p: Proposal, text: bytes, reason: str) -> None:
        with self.state.writes:
            lifecycle.transition(self.repo, p, S.REJECTED, self.state.config.identity,
                                 base_text=text, reason=reason)
        self.branches.drop(p.id)
        log.warning("%s rejected: %s", p.id, reason)
