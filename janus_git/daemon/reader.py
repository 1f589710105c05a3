"""How the daemon reads people's commits: approvals (and refusals), reverts, deletions,
hand-made edits and changes to the rules, one first-parent commit at a time.

Every commit that is not the agent's own signed commit is a person's, whatever e-mail it
carries, and is answered: a change to the rules is judged by the rules in force before it
(trust.py), a status change by the approval rules (approvals.py, through judge.py), a change
to what was filed or an unreadable file is put right by a correction commit that says why
(corrections.py).

The cursor (the last commit read) moves only past commits that were read in full; it is saved
under .git/janus/ after each catch-up, so a crash re-reads at most what it had not saved.
"""
from __future__ import annotations

import logging

from .. import lifecycle
from ..approvals import TRAILER_APPROVAL_BRANCH, Filing, is_revert_of_result
from ..errors import ConfigError
from ..faults import crashpoint
from ..gitrepo import REGULAR_MODES, Commit, mode_name
from ..proposal import HUMAN_TRANSITIONS, Proposal, Status, parse_proposal
from ..staterepo import StateRepo
from ..store import check_placement, id_from_path, is_proposal_path
from ..trust import Rules
from .corrections import TOOL_LOG, Corrections
from .judge import ApprovalJudge
from .state import CursorFile, DaemonState, Ticket

log = logging.getLogger(__name__)
S = Status


class CommitReader:
    def __init__(self, sr: StateRepo, state: DaemonState, cursor_file: CursorFile,
                 judge: ApprovalJudge, corrections: Corrections) -> None:
        self.repo = sr.repo
        self.store = sr.store
        self.state = state
        self.cursor_file = cursor_file
        self.judge = judge
        self.corrections = corrections
        self.commits_read = 0  # since start (the commit-graph is rewritten every so many)
        self.read_before: str | None = None  # the cursor when this catch-up began

    @property
    def trust(self):
        return self.state.trust

    def catch_up(self, head: str | None) -> None:
        """Read every first-parent commit after the cursor up to HEAD, in order."""
        state = self.state
        head = head or self.repo.head()
        if head is None:
            return  # (an empty repository: nothing to read)
        if state.cursor is None:
            state.cursor = head
        elif head != state.cursor:
            self.read_before = state.cursor
            for commit in self.repo.first_parent_log(state.cursor, head):
                self._process_commit(commit)
                state.cursor = commit.sha
                self.commits_read += 1
            crashpoint("after-catch-up")
            state.cursor = self.repo.head() if state.cursor != head else head
            self.trust.rules.at = state.cursor
            self.trust.save()
        self.corrections.refusals()
        self.cursor_file.save(state.cursor)

    def _process_commit(self, c: Commit) -> None:
        rules = self.trust.rules  # in force before C: C is judged by them
        before = Rules(rules.at, dict(rules.files), rules.config)
        own = self.trust.is_agent(c, before) and TRAILER_APPROVAL_BRANCH not in c.trailers()
        self.trust.apply(c)  # the state's config is now the rules' after C
        if own:
            self._note_filings(c)
            if c.sha not in self.repo.made:
                self._others_decisions(c)
            return
        taken = self._taken_from_agent(c)
        if TOOL_LOG in c.changes and TOOL_LOG not in taken:
            self.corrections.tool_log(c)
        for path, change in c.changes.items():
            if not is_proposal_path(path):
                continue
            if path in taken:
                self._agents_change(c, path, change)
                continue
            try:
                self._process_change(c, path, change, before)
            except ConfigError as e:
                log.error("commit %s by %s: %s", c.sha[:10], c.author_email, e)
                self.state.last_error = str(e)

    def _taken_from_agent(self, c: Commit) -> set[str]:
        """The proposal and audit-log paths a person's merge C took exactly as the agent's
        signed commit on its other side left them, where that commit is one this daemon had
        already read on the watched branch: a reviewer's `git pull` merge of main, pushed.
        Against its first parent such a merge shows every run that landed meanwhile; those
        versions are the agent's acts, not the person's.  An agent commit that never was on
        the branch (an approval branch's tip, a refused claim) is no such thing: a merge of
        it is judged as the person's, as before."""
        if not c.is_merge or self.read_before is None:
            return set()
        paths = [p for p in c.changes if is_proposal_path(p) or p == TOOL_LOG]
        if not paths:
            return set()
        by_path: dict[str, list[Commit]] = {}
        for side in self.repo.side_commits(c, *paths):
            for p in side.changes:
                by_path.setdefault(p, []).append(side)
        taken = set()
        for p in paths:
            commits = by_path.get(p)  # newest first: the first made the side's version
            if not commits or not self.trust.is_agent(commits[0]) or \
                    not self.repo.is_ancestor(commits[0].sha, self.read_before):
                continue
            mine = self.repo.entry(c.sha, p)
            if any(self.repo.entry(q, p) == mine for q in c.parents[1:]):
                taken.add(p)
        return taken

    def _agents_change(self, c: Commit, path: str, change: str) -> None:
        """PATH as the agent's commits left it, brought in by C: kept as theirs (a filing
        noted, the queue following the status), never judged as a person's edit."""
        try:
            p = parse_proposal(self.repo.read_blob(c.sha, path) or b"", path)
        except ConfigError:
            return
        if change == "A":
            self._filed(c, p)
        if p.status != S.APPROVED:
            self.state.queue.withdraw(p.id)
        elif str(p.decision.get("rule", "")).startswith("auto:"):
            self.state.queue.offer_once(Ticket(p.id, {
                **p.decision, "digest": self.judge.filing(p.id).digest}))

    def _note_filings(self, c: Commit) -> None:
        """The agent's own filings, kept as they are read (the approval path then needs no
        `git log` to find them)."""
        for path, change in c.changes.items():
            if change == "A" and is_proposal_path(path):
                try:
                    self._filed(c, parse_proposal(self.repo.read_blob(c.sha, path) or b"",
                                                  path))
                except ConfigError:
                    self.state.filed.pop(id_from_path(path), None)

    def _others_decisions(self, c: Commit) -> None:
        """Another daemon's commit (several share a remote): the work its policy approved
        is queued here too (the claim that lands runs it), and what left `approved` there
        leaves this queue."""
        for path, change in c.changes.items():
            if change != "M" or not is_proposal_path(path):
                continue
            try:
                p = parse_proposal(self.repo.read_blob(c.sha, path) or b"", path)
            except ConfigError:
                continue
            if p.status != S.APPROVED:
                self.state.queue.withdraw(p.id)
            elif str(p.decision.get("rule", "")).startswith("auto:"):
                digest = self.judge.filing(p.id).digest
                self.state.queue.offer_once(Ticket(p.id, {**p.decision,
                                                                "digest": digest}))

    def _filed(self, c: Commit, p: Proposal) -> None:
        self.state.filed[p.id] = Filing(p.recompute_digest(), c.sha, p)

    def _process_change(self, c: Commit, path: str, change: str, rules: Rules) -> None:
        pid = id_from_path(path)
        self.state.filed.pop(pid, None) if change in ("A", "D") else None
        if change == "D":
            self.state.queue.withdraw(pid)
            log.warning("%s was deleted by %s in %s; its history stays in git", path,
                        c.author_email, c.sha[:10])
            self._remember_deleted(c, path)
            return
        check_placement(path)
        mode = c.modes.get(path, 0)
        if mode and mode not in REGULAR_MODES:
            self.corrections.unreadable(c, pid, ConfigError(
                path, None, f"it became {mode_name(mode)}; a proposal is a regular file"))
            return
        try:
            new = parse_proposal(self.repo.read_blob(c.sha, path) or b"", path)
        except ConfigError as e:
            self.corrections.unreadable(c, pid, e)
            return
        if change == "A" or not c.parents:
            self._filed(c, new)
            self.corrections.check_filing(c, new)
            return
        old_text = self.repo.read_blob(c.parents[0], path)
        try:
            old = parse_proposal(old_text, path) if old_text else None
        except ConfigError:
            old = None  # an unreadable version voids every approval before it
            self.state.queue.withdraw(pid)
        filed = self.judge.filing(pid)
        if filed.digest is not None and new.recompute_digest() != filed.digest:
            self.corrections.changed(c, new, filed)
            return
        if old is None:
            if new.status == S.APPROVED:
                self.judge.judge(self.judge.acting(c, pid, path, rules), new, rules)
            return
        if old.status == new.status:
            if (new.decision, new.execution) != (old.decision, old.execution):
                self.corrections.agents_blocks(c, old, new)
                return
            if new.status == S.PROPOSED and len(new.approvals) > len(old.approvals):
                self.judge.judge(self.judge.acting(c, pid, path, rules), new, rules)
            return
        self._human_transition(c, old, new, rules)

    def _human_transition(self, c: Commit, old: Proposal, new: Proposal, rules: Rules) -> None:
        read = self.store.head_at(new.id)
        if read is None or read[1].status != new.status:
            return  # already superseded by a later commit
        _, p, text = read
        identity = self.state.config.identity
        if is_revert_of_result(old, new):
            lifecycle.transition(self.repo, p, S.REVERTED, identity, old=old.status,
                                 base_text=text, reason=f"result reverted by {c.author_email} "
                                 f"in {c.sha[:10]}; it is never re-run")
            return
        if new.status not in HUMAN_TRANSITIONS.get(old.status, frozenset()):
            lifecycle.restore(self.repo, p, old.status, identity, base_text=text,
                              reason=f"{c.author_email} set {old.status.value} -> "
                              f"{new.status.value} in {c.sha[:10]}; only the daemon makes that "
                              "change")
            return
        if new.status == S.APPROVED:  # (HEAD's version, read here, handed along)
            self.judge.judge(self.judge.acting(c, p.id, p.path, rules), new, rules, read)
        elif new.status in (S.PROPOSED, S.REJECTED):
            self.state.queue.withdraw(p.id)
            log.info("%s: %s -> %s by %s", p.id, old.status.value, new.status.value,
                     c.author_email)

    def _remember_deleted(self, c: Commit, path: str) -> None:
        old = self.repo.read_blob(c.parents[0], path) if c.parents else None
        if old is None:
            return
        from .. import novelty
        try:  # the novelty index remembers it, so it is not proposed again
            novelty.remember_deleted(self.repo, parse_proposal(old, path))
        except ConfigError:
            pass  # a file that never parsed has no digest to remember
