"""The only place that changes a proposal's status: one transition, one commit, with trailers."""
from __future__ import annotations

import copy
from typing import Any, Callable

from .gitrepo import TRAILER_PROPOSAL, TRAILER_TRANSITION, GitRepo, Identity, format_message
from .proposal import Proposal, Status, check_transition, compute_digest, new_id, utcnow

Listener = Callable[[Proposal, Status | None, Status, str], None]
_listeners: list[Listener] = []


def subscribe(fn: Listener) -> Listener:
    """Side effects (notifications, logs) subscribe to transitions; published once per commit."""
    _listeners.append(fn)
    return fn


def unsubscribe(fn: Listener) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def _publish(p: Proposal, old: Status | None, new: Status, sha: str) -> None:
    for fn in list(_listeners):
        try:
            fn(p, old, new, sha)
        except Exception:  # a broken subscriber must never break the lifecycle
            import logging
            logging.getLogger("janus_git").exception("transition listener failed")


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
    _publish(p, None, p.status, sha)
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
    _publish(p, old, new, sha)
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
                                           "Janus-Correction": f"{shown.value} -> {q.status.value}"})
    guard = {q.path: base_text} if base_text is not None else None
    sha = repo.commit_files({q.path: q.to_yaml()}, msg, identity, guard=guard)
    p.__dict__.update(q.__dict__)
    return sha
