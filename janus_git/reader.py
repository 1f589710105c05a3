"""How the daemon reads people's commits: approvals (and refusals), reverts, deletions,
hand-made edits and changes to the rules, one first-parent commit at a time.

Every commit that is not the agent's own signed commit is a person's, whatever e-mail it
carries, and is answered: a change to the rules is judged by the rules in force before it
(trust.py), a status change by the approval rules (approvals.py), a change to what was filed
or an unreadable file is put right by a correction commit that says why.

A mixin of Daemon: it works on the daemon's queue, cursor, trust and configuration.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from . import lifecycle
from .approvals import (TRAILER_APPROVAL_BRANCH, Filing, branch_approval, check_approval,
                        counted, describe_change, filing, is_revert_of_result)
from .errors import ConfigError, JanusError
from .gitrepo import Commit, crashpoint
from .proposal import HUMAN_TRANSITIONS, Proposal, Status, parse_proposal, shard_path, utcnow
from .store import check_placement, id_from_path, is_proposal_path
from .trust import Rules

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
            self.trust.rules.at = self.cursor
            self.trust.save()
        self._answer_refusals()
        self._save_cursor()

    def _process_commit(self, c: Commit) -> None:
        rules = self.trust.rules  # in force before C: C is judged by them
        before = Rules(rules.at, dict(rules.files), rules.config)
        own = self.trust.is_agent(c, before) and TRAILER_APPROVAL_BRANCH not in c.trailers()
        self.trust.apply(c)
        self.config = self.trust.rules.config
        if own:
            self._note_filings(c)
            return
        for path, change in c.changes.items():
            if not is_proposal_path(path):
                continue
            try:
                self._process_change(c, path, change, before)
            except ConfigError as e:
                log.error("commit %s by %s: %s", c.sha[:10], c.author_email, e)
                self.last_error = str(e)

    def _note_filings(self, c: Commit) -> None:
        for path, change in c.changes.items():
            if change == "A" and is_proposal_path(path):
                self.filed.pop(id_from_path(path), None)  # read again when first needed

    def _process_change(self, c: Commit, path: str, change: str, rules: Rules) -> None:
        pid = id_from_path(path)
        self.filed.pop(pid, None) if change in ("A", "D") else None
        if change == "D":
            self.queue.pop(pid, None)
            log.warning("%s was deleted by %s in %s; its history stays in git", path,
                        c.author_email, c.sha[:10])
            self._remember_deleted(c, path)
            return
        check_placement(path)
        try:
            new = parse_proposal(self.repo.read_blob(c.sha, path) or b"", path)
        except ConfigError as e:
            self._answer_unreadable(c, pid, e)
            return
        if change == "A" or not c.parents:
            self._check_filing(c, new)
            return
        old_text = self.repo.read_blob(c.parents[0], path)
        try:
            old = parse_proposal(old_text, path) if old_text else None
        except ConfigError:
            old = None  # an unreadable version voids every approval before it
            self.queue.pop(pid, None)
        filed = self._filing(pid)
        if filed.digest is not None and new.recompute_digest() != filed.digest:
            self._answer_changed(c, new, filed)
            return
        if old is None:
            if new.status == S.APPROVED:
                self._judge_approval(self._acting(c, pid, path, rules), new, rules)
            return
        if old.status == new.status:
            if new.status == S.PROPOSED and len(new.approvals) > len(old.approvals):
                self._judge_approval(self._acting(c, pid, path, rules), new, rules)
            return
        self._human_transition(c, old, new, rules)

    def _acting(self, c: Commit, pid: str, path: str, rules: Rules) -> Commit:
        """Whose act a change of PATH in C is: C's own, or, where C is a merge that is not
        the merge of PID's approval branch, the commit it merged that last touched PATH
        (judged by its own author)."""
        if not c.is_merge or branch_approval(self.repo, self.trust, rules, c, pid, path):
            return c
        side = self.repo.side_commits(c, path)
        return side[0] if side else c

    def _human_transition(self, c: Commit, old: Proposal, new: Proposal, rules: Rules) -> None:
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
            self._judge_approval(self._acting(c, p.id, p.path, rules), new, rules)
        elif new.status in (S.PROPOSED, S.REJECTED):
            self.queue.pop(p.id, None)
            log.info("%s: %s -> %s by %s", p.id, old.status.value, new.status.value,
                     c.author_email)

    # -- approvals -----------------------------------------------------------------------
    def _judge_approval(self, c: Commit, then: Proposal, rules: Rules) -> None:
        """C left the proposal as THEN (approved, or with an approval added): count it, or
        answer why not.  The answer is written against HEAD's version."""
        current = self._head_proposal(then.id)
        if current is None:
            return
        p, text = current
        filed = self._filing(p.id)
        if filed.digest is not None and then.recompute_digest() != filed.digest:
            self._answer_changed(c, then, filed)
            return
        verdict = check_approval(self.trust, rules, c, then, filed)
        if not verdict.ok:
            self._refuse_approval(p, text, f"approval in {c.sha[:10]} by {c.author_email} "
                                  f"refused: {verdict.reason}")
            return
        required = rules.config.approvals_required(p.tool)
        prior = self._recorded_approvals(p) if required > 1 else []
        approvers = counted(prior, rules)
        if verdict.approver in approvers:
            self._refuse_approval(p, text, f"{verdict.approver} has already approved; "
                                  f"{len(approvers)} of {required} approvals, the next must "
                                  "come from another approver", keep=prior)
            return
        entry = {"by": verdict.approver, "commit": c.sha, "at": utcnow()}
        if verdict.signer:
            entry["signer"] = verdict.signer
        approvals = [e for e in prior if str(e.get("by", "")).lower() in approvers] + [entry]
        if len(approvals) < required:
            self._refuse_approval(p, text, f"{len(approvals)} of {required} approvals ("
                                  f"{', '.join(e['by'] for e in approvals)}); it needs "
                                  f"{required - len(approvals)} more from other approvers",
                                  keep=approvals)
            log.info("%s: approval %d of %d by %s", p.id, len(approvals), required,
                     verdict.approver)
            return
        if p.status != S.APPROVED:  # the last of a quorum, given through `approvals:`
            with self.writes:
                lifecycle.transition(self.repo, p, S.APPROVED, self.config.identity,
                                     base_text=text, reason=f"{required} of {required} "
                                     "approvals", update=lambda q: setattr(q, "approvals",
                                                                           approvals))
        self.queue[p.id] = Ticket(p.id, {"rule": "human", "by": verdict.approver,
                                         "signer": verdict.signer or None, "commit": c.sha,
                                         "digest": filed.digest, "at": utcnow(),
                                         "approvals": approvals})
        log.info("%s approved by %s in %s", p.id, verdict.approver, c.sha[:10])

    def _refuse_approval(self, p: Proposal, text: bytes, reason: str,
                         keep: list[dict] | None = None) -> None:
        self.queue.pop(p.id, None)
        log.warning("%s: %s", p.id, reason)

        kept = self._recorded_approvals(p) if keep is None else keep

        def back(q: Proposal) -> None:
            q.status = S.PROPOSED if q.status in (S.APPROVED, S.PROPOSED) else q.status
            q.approvals = list(kept)
        with self.writes:
            lifecycle.correct(self.repo, p, self.config.identity, reason=reason, update=back,
                              base_text=text)
        if keep is None:
            self.notifier.post(f"janus-git: approval of {p.id} refused", reason, kind="alert")

    def _recorded_approvals(self, p: Proposal) -> list[dict]:
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

    def _filing(self, pid: str) -> Filing:
        if pid not in self.filed:
            self.filed[pid] = filing(self.repo, shard_path(pid))
        return self.filed[pid]

    # -- answers -------------------------------------------------------------------------
    def _check_filing(self, c: Commit, new: Proposal) -> None:
        """A person files proposals as `proposed`, with no decision, execution or approvals
        of their own making: anything else is put right."""
        if new.status == S.PROPOSED and not (new.decision or new.execution or new.approvals):
            return
        current = self._head_proposal(new.id)
        if current is None:
            return
        p, text = current

        def as_filed(q: Proposal) -> None:
            q.status, q.decision, q.execution, q.approvals = S.PROPOSED, {}, {}, []
        self._correct(p, text, f"{c.author_email} filed this as {new.status.value} in "
                      f"{c.sha[:10]}; a proposal is filed as proposed, with no decision of its "
                      "own, and decided again", as_filed)

    def _answer_changed(self, c: Commit, new: Proposal, filed: Filing) -> None:
        """Type, tool or args changed after filing: put them back as filed; every approval
        so far is void."""
        self.queue.pop(new.id, None)
        current = self._head_proposal(new.id)
        if current is None or filed.proposal is None:
            return
        p, text = current
        if p.recompute_digest() == filed.digest:
            return  # already put back

        def as_filed(q: Proposal) -> None:
            q.type, q.tool, q.args = filed.proposal.type, filed.proposal.tool, filed.proposal.args
            q.digest = filed.digest
            q.approvals = []
            if q.status == S.APPROVED:
                q.status = S.PROPOSED
        self._correct(p, text, f"{c.author_email} changed what was filed in {c.sha[:10]} ("
                      f"{describe_change(filed.proposal, new)}); put back as filed, and every "
                      "approval is void: file a new proposal for the new version", as_filed)

    def _answer_unreadable(self, c: Commit, pid: str, error: ConfigError) -> None:
        """A commit left the file unreadable: its approvals are void, and the last readable
        version goes back (as proposed, if it was approved)."""
        self.queue.pop(pid, None)
        path = shard_path(pid)
        if self._head_proposal(pid) is not None:
            return  # a later commit made it readable again; that one is judged on its own
        text = self.repo.read_blob("HEAD", path)
        for older in self.repo.file_history(path, limit=50):
            data = self.repo.read_blob(older.sha, path)
            try:
                good = parse_proposal(data, path) if data else None
            except ConfigError:
                continue
            if good is None:
                break

            def as_was(q: Proposal) -> None:
                q.approvals = []
                if q.status == S.APPROVED:
                    q.status = S.PROPOSED
            self._correct(good, text, f"{c.author_email} left this file unreadable in "
                          f"{c.sha[:10]} ({error.problem}); the last readable version is put "
                          "back and approvals before it are void", as_was)
            return
        log.error("%s: no readable version to put back (%s)", path, error)

    def _correct(self, p: Proposal, text: bytes | None, reason: str, update) -> None:
        log.warning("%s: %s", p.id, reason)
        with self.writes:
            lifecycle.correct(self.repo, p, self.config.identity, reason=reason,
                              update=update, base_text=text)
        self.notifier.post(f"janus-git: corrected {p.id}", reason, kind="alert")

    def _answer_refusals(self, live: bool = True) -> None:
        """Refused changes to the rules: the guarded files go back to what is in force, in
        one commit that says why, and people are told.  At start-up every guarded file at
        HEAD is compared with the rules in force (a refusal may have gone unanswered)."""
        refusals, self.trust.refusals = self.trust.refusals, []
        if not refusals and live:
            return
        rules = self.trust.rules
        paths = {p for r in refusals for p in r.paths}
        if not live:
            paths |= set(rules.files) | set(self.trust.guarded_paths("HEAD"))
        files = {p: rules.files.get(p) for p in sorted(paths)
                 if self.repo.read_blob("HEAD", p) != rules.files.get(p)}
        if not files:
            return
        reasons = "\n".join(f"- {r.commit.sha[:10]} by {r.commit.author_email} "
                            f"({', '.join(r.paths)}): {r.reason}" for r in refusals) or \
            "- HEAD differs from the rules in force (a change no approver made)"
        from .gitrepo import format_message
        msg = format_message(f"janus: refuse changes to {', '.join(files)}",
                             f"Only an approver may change these; the rules in force "
                             f"stay.\n\n{reasons}", {"Janus-Refused": ", ".join(
                                 r.commit.sha for r in refusals) or "HEAD"})
        with self.writes:
            self.repo.commit_files(files, msg, self.config.identity, guard={
                p: self.repo.read_blob("HEAD", p) for p in files})
        self.notifier.post("janus-git: refused a change to the rules", reasons, kind="alert")

    # -- start-up ------------------------------------------------------------------------
    def _requeue_approved(self, pid: str) -> None:
        """At start: approved proposals whose run never began are judged again from history,
        by the same rules as the live reader.  The approval is the newest commit that made
        the file approved; every version since must be readable and approved, or it is
        void."""
        current = self._head_proposal(pid)
        if current is None or pid in self.queue:
            return
        p, text = current
        history = self.repo.file_history(p.path, limit=50)
        for i, c in enumerate(history):
            then = self._version(c.sha, p.path)
            if then is None or then.status != S.APPROVED:
                self._refuse_approval(p, text, "at start-up: no valid approval of this "
                                      "version (a version since could not be read)")
                return
            before = self._version(c.parents[0], p.path) if c.parents else None
            if before is not None and before.status == S.APPROVED:
                continue  # approved already before C: look further back
            commit = self.repo.commit_info(c.sha)
            if self.trust.is_agent(commit) and str(then.decision.get("rule", "")).startswith(
                    "auto:"):
                self.queue[pid] = Ticket(pid, {**then.decision,
                                               "digest": self._filing(pid).digest})
                return
            commit.changes = {p.path: "M"}
            self._judge_approval(self._acting(commit, pid, p.path, self.trust.rules), then,
                                 self.trust.rules)
            return
        self._refuse_approval(p, text, "at start-up: the commit that approved this version "
                              "is too far back to judge; approve it again")

    def _version(self, rev: str, path: str) -> Proposal | None:
        data = self.repo.read_blob(rev, path)
        try:
            return parse_proposal(data, path) if data else None
        except ConfigError:
            return None

    def _remember_deleted(self, c: Commit, path: str) -> None:
        old = self.repo.read_blob(c.parents[0], path) if c.parents else None
        if old is None:
            return
        from . import novelty
        try:  # the novelty index remembers it, so it is not proposed again
            novelty.remember_deleted(self.repo, parse_proposal(old, path))
        except ConfigError:
            pass  # a file that never parsed has no digest to remember

    def _head_proposal(self, pid: str) -> tuple[Proposal, bytes] | None:
        text = self.repo.read_blob("HEAD", shard_path(pid))
        if text is None:
            return None
        try:
            return parse_proposal(text, shard_path(pid)), text
        except (ConfigError, JanusError) as e:
            log.error("%s", e)
            return None
