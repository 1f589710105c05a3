"""How the daemon reads people's commits: approvals (and refusals), reverts, deletions,
hand-made status edits and agent.yaml changes, one first-parent commit at a time.

A mixin of Daemon: it works on the daemon's queue, cursor and configuration.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from . import lifecycle
from .approvals import TRAILER_APPROVAL_BRANCH, check_approval, is_revert_of_result
from .config import AGENT_PATH, load_config
from .errors import ConfigError
from .gitrepo import Commit, crashpoint
from .proposal import HUMAN_TRANSITIONS, Proposal, Status, parse_proposal, shard_path, utcnow
from .store import check_placement, id_from_path, is_proposal_path

log = logging.getLogger("janus_git.daemon")
S = Status


@dataclass
class Ticket:
    """An approved proposal waiting for the escapement."""
    id: str
    decision: dict[str, Any]



class CommitReader:
    # -- reading what people did ---------------------------------------------------------
    def _catch_up(self, head: str | None) -> None:
        head = head or self.repo.head()
        if self.cursor is None:
            self.cursor = head
        elif head != self.cursor:
            for commit in self.repo.first_parent_log(self.cursor, head):
                self._process_commit(commit)
                self.cursor = commit.sha
                self._unindexed_commits += 1
            crashpoint("after-catch-up")
            self.cursor = self.repo.head() if self.cursor != head else head
        self._save_cursor()

    def _process_commit(self, c: Commit) -> None:
        # The agent's own commits carry janus trailers.  A commit in the agent's name without
        # them (or a fast-forwarded approval branch) is read like anyone's, and refused.
        trailers = c.trailers()
        own = (c.author_email.lower() == self.config.identity.email.lower()
               and bool(trailers) and TRAILER_APPROVAL_BRANCH not in trailers)
        if AGENT_PATH in c.changes:
            self._reload_config()
        if own:
            return
        for path, change in c.changes.items():
            if not is_proposal_path(path):
                continue
            try:
                self._process_change(c, path, change)
            except ConfigError as e:
                log.error("commit %s by %s: %s", c.sha[:10], c.author_email, e)
                self.last_error = str(e)

    def _process_change(self, c: Commit, path: str, change: str) -> None:
        pid = id_from_path(path)
        if change == "D":
            self.queue.pop(pid, None)
            log.warning("%s was deleted by %s in %s; its history stays in git", path,
                        c.author_email, c.sha[:10])
            self._remember_deleted(c, path)
            return
        check_placement(path)
        new = parse_proposal(self.repo.read_blob(c.sha, path) or b"", path)
        if change == "A" or not c.parents:
            return  # a new proposal: _decide_new picks it up from HEAD
        old_text = self.repo.read_blob(c.parents[0], path)
        try:
            old = parse_proposal(old_text, path) if old_text else None
        except ConfigError:
            old = None
        if old is None or old.status == new.status:
            if old is not None and new.status == S.APPROVED and pid in self.queue \
                    and new.recompute_digest() != self.queue[pid].decision["digest"]:
                log.info("%s changed after approval: the approval no longer holds", pid)
            return
        self._human_transition(c, old, new)

    def _human_transition(self, c: Commit, old: Proposal, new: Proposal) -> None:
        current = self._head_proposal(new.id)
        if current is None or current[0].status != new.status:
            return  # already superseded by a later commit
        p, text = current
        if is_revert_of_result(old, new):
            lifecycle.transition(self.repo, p, S.REVERTED, self.config.identity, old=old.status,
                                 base_text=text, reason=f"result reverted by {c.author_email} "
                                 f"in {c.sha[:10]}; it is never re-run")
            return
        if new.status not in HUMAN_TRANSITIONS.get(old.status, frozenset()):
            lifecycle.restore(self.repo, p, old.status, self.config.identity, base_text=text,
                              reason=f"{c.author_email} set {old.status.value} -> "
                              f"{new.status.value} in {c.sha[:10]}; only the daemon makes that "
                              "change")
            return
        if new.status == S.APPROVED:
            self._judge_approval(c, new, p, text)
        elif new.status in (S.PROPOSED, S.REJECTED):
            self.queue.pop(p.id, None)
            log.info("%s: %s -> %s by %s", p.id, old.status.value, new.status.value,
                     c.author_email)

    def _judge_approval(self, c: Commit, then: Proposal, p: Proposal, text: bytes) -> None:
        """THEN is the proposal as the approving commit C left it; P and TEXT are HEAD's."""
        verdict = check_approval(self.repo, self.config, c, then)
        if not verdict.ok:
            lifecycle.transition(self.repo, p, S.PROPOSED, self.config.identity,
                                 base_text=text,
                                 reason=f"approval in {c.sha[:10]} refused: {verdict.reason}")
            log.warning("%s: approval refused: %s", p.id, verdict.reason)
            return
        self.queue[p.id] = Ticket(p.id, {"rule": "human", "by": verdict.approver,
                                         "signer": verdict.signer or None, "commit": c.sha,
                                         "digest": p.digest, "at": utcnow()})
        log.info("%s approved by %s in %s", p.id, verdict.approver, c.sha[:10])

    def _requeue_approved(self, pid: str) -> None:
        """At start: approved proposals whose run never began go back on the queue, after
        their approval is checked again from history."""
        current = self._head_proposal(pid)
        if current is None or pid in self.queue:
            return
        p, text = current
        if p.decision.get("rule", "").startswith("auto:"):
            self.queue[pid] = Ticket(pid, p.decision)
            return
        for c in self.repo.file_history(p.path, limit=50):
            if not c.parents:
                continue
            old_text = self.repo.read_blob(c.parents[0], p.path)
            then = self.repo.read_blob(c.sha, p.path)
            try:
                was = parse_proposal(old_text, p.path).status if old_text else None
                approved = parse_proposal(then, p.path) if then else None
            except ConfigError:
                continue
            if approved and approved.status == S.APPROVED and was != S.APPROVED:
                self._judge_approval(self.repo.commit_info(c.sha), approved, p, text)
                return

    def _remember_deleted(self, c: Commit, path: str) -> None:
        old = self.repo.read_blob(c.parents[0], path) if c.parents else None
        if old is None:
            return
        from . import novelty
        try:  # the novelty index remembers it, so it is not proposed again
            novelty.remember_deleted(self.repo, parse_proposal(old, path))
        except ConfigError:
            pass  # a file that never parsed has no digest to remember

    def _reload_config(self) -> None:
        try:
            self.config = load_config(self.root)
        except ConfigError as e:
            self.last_error = f"{e}; keeping the last valid configuration"
            log.error("%s", self.last_error)

    def _head_proposal(self, pid: str) -> tuple[Proposal, bytes] | None:
        text = self.repo.read_blob("HEAD", shard_path(pid))
        if text is None:
            return None
        try:
            return parse_proposal(text, shard_path(pid)), text
        except ConfigError as e:
            log.error("%s", e)
            return None
