"""Judging approvals: a commit that left a manual proposal approved (or added an approval to
its `approvals:` list) is counted under the approval rules (approvals.py), or answered with a
commit that says why not.  History is judged the same way live and at start-up.

- Whose act a change is: a merge that is not the merge of the proposal's own approval branch
  is judged by the author of the commit it merged that last touched the file.
- What it binds: the digest of the proposal as filed (the filing commit's version), never a
  `digest:` field a later commit could rewrite.
- A quorum counts distinct approvers from the list the agent recorded in its own signed
  commits; a list a person wrote counts for nothing.  An approval counts once, for the
  version it approved, until the proposal runs.
"""
from __future__ import annotations

import copy
import logging

from .. import lifecycle
from ..approvals import Filing, branch_approval, check_approval, counted, filing
from ..errors import ConfigError
from ..gitrepo import Commit
from ..notify import Notifier
from ..proposal import Proposal, Status, parse_proposal, shard_path, utcnow
from ..staterepo import StateRepo
from ..trust import Rules
from .corrections import Corrections
from .state import DaemonState, Seen, Ticket

log = logging.getLogger(__name__)
S = Status


class ApprovalJudge:
    def __init__(self, sr: StateRepo, state: DaemonState, corrections: Corrections,
                 notifier: Notifier) -> None:
        self.repo = sr.repo
        self.store = sr.store
        self.state = state
        self.corrections = corrections
        self.notifier = notifier

    @property
    def trust(self):
        return self.state.trust

    def acting(self, c: Commit, pid: str, path: str, rules: Rules) -> Commit:
        """Whose act a change of PATH in C is: C's own, or, where C is a merge that is not
        the merge of PID's approval branch, the commit it merged that last touched PATH
        (judged by its own author)."""
        if not c.is_merge or branch_approval(self.repo, self.trust, rules, c, pid, path):
            return c
        side = self.repo.side_commits(c, path)
        return side[0] if side else c

    def judge(self, c: Commit, then: Proposal, rules: Rules,
              read: tuple[str, Proposal, bytes] | None = None) -> None:
        """C left the proposal as THEN (approved, or with an approval added): count it, or
        answer why not.  The answer is written against HEAD's version (READ: as the caller
        read it, store.head_at; else read here)."""
        read = read or self.store.head_at(then.id)
        if read is None:
            return
        seen_at, p, text = read
        filed = self.filing(p.id)
        if filed.digest is not None and then.recompute_digest() != filed.digest:
            self.corrections.changed(c, then, filed)
            return
        verdict = check_approval(self.trust, rules, c, then, filed)
        if not verdict.ok:
            self.refuse(p, text, f"approval in {c.sha[:10]} by {c.author_email} "
                        f"refused: {verdict.reason}")
            return
        required = rules.config.approvals_required(p.tool)
        prior = self.recorded_approvals(p) if required > 1 else []
        approvers = counted(prior, rules)
        if verdict.approver in approvers:
            self.refuse(p, text, f"{verdict.approver} has already approved; "
                        f"{len(approvers)} of {required} approvals, the next must "
                        "come from another approver", keep=prior)
            return
        entry = {"by": verdict.approver, "commit": c.sha, "at": utcnow()}
        if verdict.signer:
            entry["signer"] = verdict.signer
        approvals = [e for e in prior if str(e.get("by", "")).lower() in approvers] + [entry]
        if len(approvals) < required:
            self.refuse(p, text, f"{len(approvals)} of {required} approvals ("
                        f"{', '.join(e['by'] for e in approvals)}); it needs "
                        f"{required - len(approvals)} more from other approvers",
                        keep=approvals)
            log.info("%s: approval %d of %d by %s", p.id, len(approvals), required,
                     verdict.approver)
            return
        if p.status != S.APPROVED:  # the last of a quorum, given through `approvals:`
            with self.state.writes:
                seen_at = lifecycle.transition(
                    self.repo, p, S.APPROVED, self.state.config.identity, base_text=text,
                    reason=f"{required} of {required} approvals",
                    update=lambda q: setattr(q, "approvals", approvals))
            text = p.to_yaml()  # (what that commit wrote)
        self.state.queue.offer(Ticket(p.id, {"rule": "human", "by": verdict.approver,
                                               "signer": verdict.signer or None,
                                               "commit": c.sha, "digest": filed.digest,
                                               "at": utcnow(), "approvals": approvals},
                                      seen=Seen(seen_at, copy.deepcopy(p), text)))
        log.info("%s approved by %s in %s", p.id, verdict.approver, c.sha[:10])

    def refuse(self, p: Proposal, text: bytes, reason: str,
               keep: list[dict] | None = None) -> None:
        self.state.queue.withdraw(p.id)
        log.warning("%s: %s", p.id, reason)

        kept = self.recorded_approvals(p) if keep is None else keep

        def back(q: Proposal) -> None:
            q.status = S.PROPOSED if q.status in (S.APPROVED, S.PROPOSED) else q.status
            q.approvals = list(kept)
        with self.state.writes:
            lifecycle.correct(self.repo, p, self.state.config.identity, reason=reason,
                              update=back, base_text=text)
        if keep is None:
            self.notifier.post(f"janus-git: approval of {p.id} refused", reason, kind="alert")

    def recorded_approvals(self, p: Proposal) -> list[dict]:
        """The approvals the agent recorded, in its own signed commit, since the proposal was
        filed (a list a person wrote into the file counts for nothing)."""
        for c in self.repo.file_history(p.path, limit=50):
            if self.trust.is_agent(c):
                text = self.repo.read_blob(c.sha, p.path)
                try:
                    return parse_proposal(text, p.path).approvals if text else []
                except ConfigError:
                    return []
        return []

    def filing(self, pid: str) -> Filing:
        """The proposal as filed (cached in the state; the reader forgets an entry when the
        file is added or deleted again)."""
        if pid not in self.state.filed:
            self.state.filed[pid] = filing(self.repo, shard_path(pid))
        return self.state.filed[pid]

    # -- start-up ------------------------------------------------------------------------
    def requeue(self, pid: str) -> None:
        """At start: approved proposals whose run never began are judged again from history,
        by the same rules as the live reader.  The approval is the newest commit that made
        the file approved; every version since must be readable and approved, or it is
        void."""
        current = self.store.head(pid)
        if current is None or pid in self.state.queue:
            return
        p, text = current
        history = self.repo.file_history(p.path, limit=50)
        for c in history:
            then = self._version(c.sha, p.path)
            if then is None or then.status != S.APPROVED:
                self.refuse(p, text, "at start-up: no valid approval of this "
                            "version (a version since could not be read)")
                return
            before = self._version(c.parents[0], p.path) if c.parents else None
            if before is not None and before.status == S.APPROVED:
                continue  # approved already before C: look further back
            commit = self.repo.commit_info(c.sha)
            if self.trust.is_agent(commit) and str(then.decision.get("rule", "")).startswith(
                    "auto:"):
                self.state.queue.offer(Ticket(pid, {**then.decision,
                                                     "digest": self.filing(pid).digest}))
                return
            commit.changes = {p.path: "M"}
            rules = self.state.rules
            self.judge(self.acting(commit, pid, p.path, rules), then, rules)
            return
        self.refuse(p, text, "at start-up: the commit that approved this version "
                    "is too far back to judge; approve it again")

    def _version(self, rev: str, path: str) -> Proposal | None:
        data = self.repo.read_blob(rev, path)
        try:
            return parse_proposal(data, path) if data else None
        except ConfigError:
            return None
