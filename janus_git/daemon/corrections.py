"""Corrections: the daemon's answer to commits no one may make, a new commit that puts the record
right and says why in its `note:` (or message), and an alert.  Published history is never
rewritten.

- a proposal filed as anything but `proposed` (or with a decision of its own) is filed again;
- a change to type, tool or args after filing is put back as filed, and voids every approval;
- a file left unreadable gets its last readable version back, its approvals void;
- a refused change to the rules (trust.py) puts the guarded files back as they are in force;
- a person's change to the audit log `logs/tool_use.jsonl`, which only the agent appends to,
  is taken out again (whatever the agent appended since stays).
"""
from __future__ import annotations

import logging
from typing import Callable

from .. import lifecycle
from ..approvals import Filing, describe_change
from ..errors import ConfigError
from ..gitrepo import REGULAR_MODES, Commit, format_message
from ..notify import Notifier
from ..proposal import Proposal, Status, parse_proposal, shard_path
from ..staterepo import StateRepo
from .state import DaemonState

log = logging.getLogger(__name__)
S = Status


class Corrections:
    def __init__(self, sr: StateRepo, state: DaemonState, notifier: Notifier) -> None:
        self.repo = sr.repo
        self.store = sr.store
        self.state = state
        self.notifier = notifier

    def check_filing(self, c: Commit, new: Proposal) -> None:
        """A person files proposals as `proposed`, with no decision, execution or approvals
        of their own making: anything else is put right."""
        if new.status == S.PROPOSED and not (new.decision or new.execution or new.approvals):
            return
        current = self.store.head(new.id)
        if current is None:
            return
        p, text = current

        def as_filed(q: Proposal) -> None:
            q.status, q.decision, q.execution, q.approvals = S.PROPOSED, {}, {}, []
        self.correct(p, text, f"{c.author_email} filed this as {new.status.value} in "
                     f"{c.sha[:10]}; a proposal is filed as proposed, with no decision of its "
                     "own, and decided again", as_filed)

    def agents_blocks(self, c: Commit, old: Proposal, new: Proposal) -> None:
        """A person edited the decision or execution block, which only the agent writes (a
        forged `execution.instance` would let the leader of several daemons take a live
        claim for an orphan, and drop its result): both go back as they were."""
        current = self.store.head(new.id)
        if current is None:
            return
        p, text = current
        if (p.decision, p.execution) == (old.decision, old.execution):
            return  # already put back

        def as_before(q: Proposal) -> None:
            q.decision, q.execution = old.decision, old.execution
        self.correct(p, text, f"{c.author_email} changed its decision or execution block in "
                     f"{c.sha[:10]}; only the agent writes those", as_before)

    def changed(self, c: Commit, new: Proposal, filed: Filing) -> None:
        """Type, tool or args changed after filing: put them back as filed; every approval
        so far is void."""
        self.state.queue.withdraw(new.id)
        current = self.store.head(new.id)
        if current is None or filed.proposal is None:
            return
        p, text = current
        if p.recompute_digest() == filed.digest:
            return  # already put back

        was = filed.proposal

        def as_filed(q: Proposal) -> None:
            q.type, q.tool, q.args = was.type, was.tool, was.args
            q.digest = filed.digest or q.digest
            void_approvals(q)
        self.correct(p, text, f"{c.author_email} changed what was filed in {c.sha[:10]} ("
                     f"{describe_change(filed.proposal, new)}); put back as filed, and every "
                     "approval is void: file a new proposal for the new version", as_filed)

    def unreadable(self, c: Commit, pid: str, error: ConfigError) -> None:
        """A commit left the file unreadable: its approvals are void, and the last readable
        version goes back (as proposed, if it was approved)."""
        self.state.queue.withdraw(pid)
        path = shard_path(pid)
        if self.store.head(pid) is not None:
            return  # a later commit made it readable again; that one is judged on its own
        text = self.repo.read_blob("HEAD", path)
        for older in self.repo.file_history(path, limit=50):
            found = self.repo.entry(older.sha, path)
            if found is not None and found[0] not in REGULAR_MODES:
                continue  # a symlink or gitlink there: no version of the file
            data = self.repo.read_blob(older.sha, path)
            try:
                good = parse_proposal(data, path) if data else None
            except ConfigError:
                continue
            if good is None:
                break

            self.correct(good, text, f"{c.author_email} left this file unreadable in "
                         f"{c.sha[:10]} ({error.problem}); the last readable version is put "
                         "back and approvals before it are void", void_approvals)
            return
        log.error("%s: no readable version to put back (%s)", path, error)

    def tool_log(self, c: Commit) -> None:
        """C, a person's commit, changed the audit log: their change comes out again, in a
        commit that says why (every result commit rewrites the file: a pushed megabyte of it
        would weigh on each)."""
        before = self.repo.read_blob(c.parents[0], TOOL_LOG) if c.parents else None
        theirs = self.repo.read_blob(c.sha, TOOL_LOG)
        head = self.repo.read_blob("HEAD", TOOL_LOG)
        fixed = without_change(head or b"", before or b"", theirs or b"")
        reason = (f"{c.author_email} changed {TOOL_LOG} in {c.sha[:10]}; only the agent "
                  "appends to it")
        if fixed is None or fixed == head:
            log.warning("%s (left as it is: later commits rewrote it)", reason)
            self.notifier.post("janus-git: the audit log was edited", reason, kind="alert")
            return
        msg = format_message(f"janus: put back {TOOL_LOG}", f"{reason}; their change is "
                             "taken out, what the agent appended since stays.",
                             {"Janus-Refused": c.sha})
        with self.state.writes:
            self.repo.commit_files({TOOL_LOG: fixed}, msg, self.state.config.identity,
                                   guard=self.repo.guard_for([TOOL_LOG]))
        self.notifier.post("janus-git: the audit log was edited", reason, kind="alert")

    def correct(self, p: Proposal, text: bytes | None, reason: str,
                update: Callable[[Proposal], None]) -> None:
        log.warning("%s: %s", p.id, reason)
        with self.state.writes:
            lifecycle.correct(self.repo, p, self.state.config.identity, reason=reason,
                              update=update, base_text=text)
        self.notifier.post(f"janus-git: corrected {p.id}", reason, kind="alert")

    def refusals(self, live: bool = True) -> None:
        """Refused changes to the rules: the guarded files go back to what is in force, in
        one commit that says why, and people are told.  At start-up every guarded file at
        HEAD is compared with the rules in force (a refusal may have gone unanswered)."""
        trust = self.state.trust
        refusals, trust.refusals = trust.refusals, []
        if not refusals and live:
            return
        rules = trust.rules
        assert rules is not None  # (loaded before anything is read)
        paths = {p for r in refusals for p in r.paths}
        if not live:
            paths |= set(rules.files) | set(trust.guarded_paths("HEAD"))
        files = {p: rules.files.get(p) for p in sorted(paths)
                 if self.repo.read_blob("HEAD", p) != rules.files.get(p)
                 or not _regular_or_absent(self.repo, p)}
        if not files:
            return
        reasons = "\n".join(f"- {r.commit.sha[:10]} by {r.commit.author_email} "
                            f"({', '.join(r.paths)}): {r.reason}" for r in refusals) or \
            "- HEAD differs from the rules in force (a change no approver made)"
        msg = format_message(f"janus: refuse changes to {', '.join(files)}",
                             f"Only an approver may change these; the rules in force "
                             f"stay.\n\n{reasons}", {"Janus-Refused": ", ".join(
                                 r.commit.sha for r in refusals) or "HEAD"})
        with self.state.writes:
            self.repo.commit_files(files, msg, self.state.config.identity,
                                   guard=self.repo.guard_for(files))
        self.notifier.post("janus-git: refused a change to the rules", reasons, kind="alert")


TOOL_LOG = "logs/tool_use.jsonl"


def without_change(head: bytes, before: bytes, theirs: bytes) -> bytes | None:
    """HEAD's audit log with a person's change (BEFORE -> THEIRS) taken out, keeping what was
    appended after it; None when HEAD no longer extends their version (cannot be told)."""
    if not head.startswith(theirs):
        return None
    return before + head[len(theirs):]


def _regular_or_absent(repo, path: str) -> bool:
    found = repo.entry("HEAD", path)
    return found is None or found[0] in REGULAR_MODES


def void_approvals(q: Proposal) -> None:
    """Every approval so far counts for nothing: the list empties, approved goes back to
    proposed."""
    q.approvals = []
    if q.status == S.APPROVED:
        q.status = S.PROPOSED
