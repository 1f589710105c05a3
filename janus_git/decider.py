"""How the daemon decides new proposals: the policy and the tool's own check, then an
automatic approval, a refusal, or an approval branch offered to a person.

A mixin of Daemon: it works on the daemon's queue, repository and configuration.
"""
from __future__ import annotations

import logging

from . import lifecycle
from .approvals import APPROVAL_BRANCH_PREFIX, TRAILER_APPROVAL_BRANCH
from .errors import JanusError
from .gitrepo import crashpoint, format_message
from .notify import needs_human
from .policy import decide
from .proposal import Proposal, Status, utcnow
from .reader import Ticket

log = logging.getLogger("janus_git.daemon")
S = Status


class Decider:
    def _decide_new(self) -> None:
        from . import tools

        pending_auto = sum(1 for t in self.queue.values()
                           if t.decision.get("rule", "").startswith("auto:"))
        for row in self.state.index.query(status=[S.PROPOSED.value]):
            pid = row["id"]
            if pid in self.seen_manual or pid in self.queue:
                continue
            current = self._head_proposal(pid)
            if current is None:
                continue
            p, text = current
            if p.digest != p.recompute_digest():
                self._refuse(p, text, "its digest field does not match its type, tool and "
                             "args; file it with `janus-git propose`")
                continue
            decision = decide(p, self.config)
            if decision.reject:
                self._refuse(p, text, decision.reason)
                continue
            try:
                tools.check(p, self.config, self.root)
            except JanusError as e:
                self._refuse(p, text, str(e))
                continue
            if not decision.auto:
                self._offer_branch(p)
                self.seen_manual.add(pid)
                self.notifier.post(*needs_human(p, decision.reason), kind="approval")
                continue
            if self.valve.should_vent(pending_auto):
                with self.writes:
                    lifecycle.transition(self.repo, p, S.ARCHIVED, self.config.identity,
                                         base_text=text, reason="relief valve: "
                                         f"{pending_auto} auto proposals already queued")
                continue
            record = {"rule": decision.rule, "by": self.config.identity.email,
                      "digest": p.recompute_digest(), "at": utcnow(), "reason": decision.reason}

            def approve(q: Proposal, record=record, risk=decision.risk) -> None:
                q.risk = risk
                q.decision = record

            with self.writes:
                sha = lifecycle.transition(self.repo, p, S.APPROVED, self.config.identity,
                                           base_text=text, update=approve,
                                           reason=decision.reason)
            crashpoint("after-auto-approve")
            record["commit"] = sha
            self.queue[pid] = Ticket(pid, record)
            pending_auto += 1

    def _drop_branch(self, pid: str) -> None:
        branch = f"{APPROVAL_BRANCH_PREFIX}{pid}"
        if branch in self.branches:
            self.repo.delete_branch(branch)
            self.branches.discard(branch)

    def _refuse(self, p: Proposal, text: bytes, reason: str) -> None:
        with self.writes:
            lifecycle.transition(self.repo, p, S.REJECTED, self.config.identity,
                                 base_text=text, reason=reason)
        self._drop_branch(p.id)
        log.warning("%s rejected: %s", p.id, reason)

    def _offer_branch(self, p: Proposal) -> None:
        """For a manual proposal, a branch holding its approval: merge it (with a merge
        commit) to approve.  A fast-forward lands the agent's own commit, which is refused."""
        branch = f"{APPROVAL_BRANCH_PREFIX}{p.id}"
        if branch in self.branches:
            return
        head = self.repo.head()
        shown = Proposal(**{**p.__dict__})
        shown.status = S.APPROVED
        shown.note = f"approved by merging {branch}"
        msg = format_message(f"janus: approve {p.id} ({p.tool}: {p.type})",
                             "Merge this branch with a merge commit to approve the proposal.",
                             {lifecycle.TRAILER_PROPOSAL: p.id, TRAILER_APPROVAL_BRANCH: branch})
        sha = self.repo.create_commit_on(head, {p.path: shown.to_yaml()}, msg,
                                         self.config.identity)
        self.repo.update_branch_ref(branch, sha, None)
        self.branches.add(branch)
