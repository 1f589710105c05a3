"""The only place that writes a proposal's status: one transition, one commit, with trailers;
or, for bulk cleansing, many transitions in one batch commit (transition_many); and the
approved copy the agent offers on an approval branch (offer_approval)."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from . import fastrow
from .errors import ConfigError
from .gitrepo import TRAILER_PROPOSAL, TRAILER_TRANSITION, GitRepo, Identity, format_message
from .proposal import (
    Proposal,
    Status,
    check_transition,
    compute_digest,
    new_id,
    parse_proposal,
    utcnow,
)

Listener = Callable[[Proposal, Status | None, Status, str], None]


def _publish(repo: GitRepo, p: Proposal, old: Status | None, new: Status, sha: str) -> None:
    """Side effects (notifications, logs) listen on the repository's `transitions` signal,
    the daemon's own: sent once per transition committed (a listener that fails is logged)."""
    repo.transitions.send(p, old, new, sha)


def message_for(p: Proposal, old: Status | None, new: Status, reason: str = "") -> str:
    frm = old.value if old else "new"
    subject = f"janus: {p.id} {frm} -> {new.value} ({p.tool}: {p.type})"
    trailers = {TRAILER_PROPOSAL: p.id, TRAILER_TRANSITION: f"{frm} -> {new.value}"}
    return format_message(subject, reason, trailers)


def new_proposal(*, mission: str, type_: str, tool: str, args: Any, rationale: str,
                 created_by: str, pid: str | None = None) -> Proposal:
    return Proposal(id=pid or new_id(), mission=mission, type=type_, tool=tool, args=args,
                    rationale=rationale, created_at=utcnow(), created_by=created_by,
                    digest=compute_digest(type_, tool, args))


def create(repo: GitRepo, p: Proposal, identity: Identity | None, reason: str = "",
           extra_files: dict[str, bytes | None] | None = None) -> str:
    """Commit a new proposal file (status as set on P, normally proposed)."""
    files = {p.path: p.to_yaml(), **(extra_files or {})}
    sha = repo.commit_files(files, message_for(p, None, p.status, reason), identity,
                            guard={p.path: None})
    _publish(repo, p, None, p.status, sha)
    return sha


def transition(repo: GitRepo, p: Proposal, new: Status, identity: Identity | None, *,
               reason: str = "", base_text: bytes | None = None, old: Status | None = None,
               update: Callable[[Proposal], None] | None = None,
               extra_files: dict[str, bytes | None] | None = None) -> str:
    """Move P to NEW in one commit.  BASE_TEXT is the file as last read from HEAD: if the
    working tree holds anything else (a person's uncommitted edit) nothing is written.
    OLD overrides the from-status (when the file already shows a person's edit)."""
    old = old or p.status
    check_transition(old, new)
    q = copy.deepcopy(p)  # P changes only once the commit exists
    q.status = new
    q.note = reason  # the note always explains the latest change (empty: nothing to explain)
    if update:
        update(q)
    files = {q.path: q.to_yaml(), **(extra_files or {})}
    guard = {q.path: base_text} if base_text is not None else None
    sha = repo.commit_files(files, message_for(q, old, new, reason), identity, guard=guard)
    p.__dict__.update(q.__dict__)
    _publish(repo, p, old, new, sha)
    return sha


@dataclass
class Step:
    """One transition of a group (transition_group): as `transition`'s arguments."""
    p: Proposal
    new: Status
    base_text: bytes | None = None
    reason: str = ""
    update: Callable[[Proposal], None] | None = None


def transition_group(repo: GitRepo, steps: list[Step], identity: Identity,
                     extra_files: dict[str, bytes | None] | None = None) -> str:
    """Several transitions in one commit (a daemon on a shared remote claims and reports in
    batches: one push for many).  Each is checked against the table; the message lists each
    with its own pair of trailers, so `git log` reads every move as if it had a commit."""
    moved = []
    files: dict[str, bytes | None] = {}
    guard: dict[str, bytes | None] = {}
    for s in steps:
        check_transition(s.p.status, s.new)
        q = copy.deepcopy(s.p)
        q.status, q.note = s.new, s.reason
        if s.update:
            s.update(q)
        files[q.path] = q.to_yaml()
        if s.base_text is not None:
            guard[q.path] = s.base_text
        moved.append((s.p, q))
    files.update(extra_files or {})
    lines = [f"{q.id} {p.status.value} -> {q.status.value} ({q.tool}: {q.type})"
             + (f": {q.note}" if q.note else "") for p, q in moved]
    trailers = "\n".join(f"{TRAILER_PROPOSAL}: {q.id}\n{TRAILER_TRANSITION}: "
                         f"{p.status.value} -> {q.status.value}" for p, q in moved)
    msg = f"janus: {len(moved)} transitions\n\n" + "\n".join(lines) + f"\n\n{trailers}\n"
    sha = repo.commit_files(files, msg, identity, guard=guard)
    for p, q in moved:
        old = p.status
        p.__dict__.update(q.__dict__)
        _publish(repo, p, old, q.status, sha)
    return sha


def restore(repo: GitRepo, p: Proposal, status: Status, identity: Identity, *, reason: str,
            base_text: bytes | None = None) -> str:
    """Undo a status edit that no one may make (a person set `succeeded` by hand, say): a new
    commit puts the previous status back."""
    def put_back(q: Proposal) -> None:
        q.status = status
    return correct(repo, p, identity, reason=reason, base_text=base_text, update=put_back)


def correct(repo: GitRepo, p: Proposal, identity: Identity, *, reason: str,
            update: Callable[[Proposal], None], base_text: bytes | None = None) -> str:
    """Answer a commit no one may make (a status set by hand, args changed after filing, an
    unreadable file) with a new commit that puts the record right.  It is a correction, not
    a lifecycle transition, and its trailer says so."""
    shown = p.status
    q = copy.deepcopy(p)
    update(q)
    q.note = reason
    subject = f"janus: {q.id} correct {shown.value} -> {q.status.value}"
    msg = format_message(subject, reason, {TRAILER_PROPOSAL: q.id,
                                           "Janus-Correction":
                                               f"{shown.value} -> {q.status.value}"})
    guard = {q.path: base_text} if base_text is not None else None
    sha = repo.commit_files({q.path: q.to_yaml()}, msg, identity, guard=guard)
    p.__dict__.update(q.__dict__)
    return sha


@dataclass
class Move:
    """One proposed proposal's transition in a batch (transition_many)."""
    id: str
    path: str
    new: Status
    reason: str
    duplicate_of: str | None = None


def moved_text(text: bytes, m: Move) -> bytes | None:
    """TEXT (a proposed proposal's file) moved by M, or None when it is no longer a readable
    proposed proposal.  A file the fast reader reads (what janus-git writes) has its status,
    note and duplicate_of lines replaced in place (~20 us instead of ~1 ms for a YAML load and
    dump); anything else goes through the full parse and dump."""
    check_transition(Status.PROPOSED, m.new)
    data = fastrow.load(text)
    if data is not None and data.get("id") == m.id and data.get("status") == Status.PROPOSED \
            and data.get("duplicate_of") is None:
        values = {"status": m.new.value, "note": json.dumps(m.reason)}
        if m.duplicate_of:
            values["duplicate_of"] = json.dumps(m.duplicate_of)
        return fastrow.replace_top(text, values)
    try:
        p = parse_proposal(text, m.path)
    except ConfigError:
        return None
    if p.status != Status.PROPOSED:
        return None
    p.status, p.note = m.new, m.reason
    if m.duplicate_of:
        p.duplicate_of = m.duplicate_of
    return p.to_yaml()


def transition_many(repo: GitRepo, items: Iterable[tuple[Move, bytes]], identity: Identity,
                    *, subject: str, trailers: dict[str, str]) -> tuple[str | None, int]:
    """Move many proposed proposals in one commit (git layer's commit_many): ITEMS pairs
    each Move with its file as last read from HEAD (a person's uncommitted edit there stops
    the batch with Conflict).  Each move is checked against the transition table and listed
    one per line in the body; SUBJECT and the TRAILERS' values may say `{n}`, the number
    moved.  Each is published once the commit exists.  Returns (commit, number moved);
    (None, 0) when none was still a readable proposed proposal."""
    files, guard, moved, lines = {}, {}, [], []
    for m, text in items:
        new_text = moved_text(text, m) if text else None
        if new_text is None:
            continue
        files[m.path], guard[m.path] = new_text, text
        moved.append(m)
        lines.append(f"{m.id}: proposed -> {m.new.value} ({m.reason})")
    if not files:
        return None, 0
    n = len(files)
    msg = format_message(subject.format(n=n), "\n".join(lines),
                         {k: v.format(n=n) for k, v in trailers.items()})
    sha = repo.commit_many(files, msg, identity, guard)
    if repo.transitions:  # parsed only for someone who listens: a batch can hold 100,000
        for m in moved:
            p = fastrow.fast_proposal(m.path, files[m.path]) or \
                parse_proposal(files[m.path], m.path)
            _publish(repo, p, Status.PROPOSED, m.new, sha)
    return sha, n


def offer_approval(repo: GitRepo, p: Proposal, identity: Identity, branch: str) -> str:
    """A commit on top of HEAD, for BRANCH only (no ref moves, nothing is published: it is
    no transition on the watched branch), that sets P to approved: merged with a merge
    commit, it is a person's approval (approvals.branch_approval)."""
    from .approvals import TRAILER_APPROVAL_BRANCH
    shown = copy.deepcopy(p)
    shown.status = Status.APPROVED
    shown.note = f"approved by merging {branch}"
    msg = format_message(f"janus: approve {p.id} ({p.tool}: {p.type})",
                         "Merge this branch with a merge commit to approve the proposal.",
                         {TRAILER_PROPOSAL: p.id, TRAILER_APPROVAL_BRANCH: branch})
    head = repo.head()
    assert head is not None  # (a proposal is on the branch: it has a commit)
    return repo.create_commit_on(head, {p.path: shown.to_yaml()}, msg, identity)
