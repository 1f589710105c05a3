"""How the daemon decides new proposals: the policy and the tool's own check, then an
automatic approval, a refusal, or an approval branch offered to a person.

Only the policy in force (the rules' configuration, never the working tree's agent.yaml)
approves by itself, and only in `beta` mode for the whitelisted types and tools; the relief
valve archives auto work past `max_pending_auto` so a runaway planner cannot flood the queue.
"""
from __future__ import annotations

import logging

from .. import lifecycle
from ..controls import ReliefValve
from ..errors import JanusError
from ..gitrepo import crashpoint
from ..notify import Notifier, needs_human
from ..policy import decide
from ..proposal import Proposal, Status, utcnow
from ..state import StateRepo
from .branches import ApprovalBranches
from .state import DaemonState, Ticket

log = logging.getLogger("janus_git.daemon")
S = Status


class Decider:
    def __init__(self, sr: StateRepo, state: DaemonState, branches: ApprovalBranches,
                 valve: ReliefValve, notifier: Notifier) -> None:
        self.sr = sr  # its index lists the proposals to decide
        self.repo = sr.repo
        self.store = sr.store
        self.state = state
        self.branches = branches
        self.valve = valve
        self.notifier = notifier

    def decide_new(self) -> None:
        from .. import tools

        state = self.state
        pending_auto = state.pending_auto()
        for row in self.sr.index.query(status=[S.PROPOSED.value]):
            pid = row["id"]
            if pid in state.seen_manual or pid in state.queue:
                continue
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
                self.notifier.post(*needs_human(p, decision.reason), kind="approval")
                continue
            if self.valve.should_vent(pending_auto):
                with state.writes:
                    lifecycle.transition(self.repo, p, S.ARCHIVED, state.config.identity,
                                         base_text=text, reason="relief valve: "
                                         f"{pending_auto} auto proposals already queued")
                continue
            self._approve(p, text, decision)
            pending_auto += 1

    def _approve(self, p: Proposal, text: bytes, decision) -> None:
        """The policy's approval: committed (with the rule that made it), then queued."""
        state = self.state
        record = {"rule": decision.rule, "by": state.config.identity.email,
                  "digest": p.recompute_digest(), "at": utcnow(), "reason": decision.reason}

        def approve(q: Proposal) -> None:
            q.risk = decision.risk
            q.decision = record

        with state.writes:
            sha = lifecycle.transition(self.repo, p, S.APPROVED, state.config.identity,
                                       base_text=text, update=approve,
                                       reason=decision.reason)
        crashpoint("after-auto-approve")
        record["commit"] = sha
        state.queue[p.id] = Ticket(p.id, record)

    def refuse(self, p: Proposal, text: bytes, reason: str) -> None:
        with self.state.writes:
            lifecycle.transition(self.repo, p, S.REJECTED, self.state.config.identity,
                                 base_text=text, reason=reason)
        self.branches.drop(p.id)
        log.warning("%s rejected: %s", p.id, reason)
