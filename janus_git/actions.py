"""What a person does through the CLI: file, approve, reject, stop, resume.

Each is the same commit a person could make by hand, made with their own git identity.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any

from . import lifecycle
from .errors import JanusError
from .gitrepo import format_message
from .policy import decide
from .proposal import Proposal, Status, utcnow
from .runlock import read_status
from .staterepo import STOP_PATH, StateRepo

S = Status


def propose(sr: StateRepo, *, mission: str, type_: str, tool: str, args: Any,
            rationale: str) -> Proposal:
    me = sr.human_identity()
    if tool not in sr.config.tools:
        raise JanusError(f"unknown tool {tool!r}; registered tools: "
                         f"{', '.join(sorted(sr.config.tools))} (state/agent.yaml tools:)")
    p = lifecycle.new_proposal(mission=mission, type_=type_, tool=tool, args=args,
                               rationale=rationale, created_by=f"{me.name} <{me.email}>")
    p.risk = decide(p, sr.config).risk
    lifecycle.create(sr.repo, p, None, reason=rationale)
    share(sr)
    return p


def _load_for_change(sr: StateRepo, pid: str) -> tuple[Proposal, bytes]:
    full = sr.store.resolve(pid)
    text = sr.store.read_text(full)
    if text is None:
        raise JanusError(f"proposal {pid} not found")
    return sr.store.read(full), text


def approve(sr: StateRepo, pid: str) -> Proposal:
    me = sr.human_identity()
    p, text = _load_for_change(sr, pid)
    if rules_in_force(sr).config.approver_for(me.email) is None:
        raise JanusError(f"you ({me.email}) are not in approvers in state/agent.yaml; "
                         "ask an approver, or add yourself there in a reviewed commit")
    if p.status not in (S.PROPOSED, S.INTERRUPTED):
        raise JanusError(f"{p.id} is {p.status.value}; only a proposed or interrupted "
                         "proposal can be approved")
    lifecycle.transition(sr.repo, p, S.APPROVED, None, base_text=text,
                         reason=f"approved by {me.email}")
    _nudge(sr)
    share(sr)
    return p


def reject(sr: StateRepo, pid: str, reason: str) -> Proposal:
    me = sr.human_identity()
    p, text = _load_for_change(sr, pid)
    lifecycle.transition(sr.repo, p, S.REJECTED, None, base_text=text,
                         reason=reason or f"rejected by {me.email}")
    share(sr)
    return p


@dataclass
class StopPlan:
    already: bool
    daemon: dict[str, Any]
    running: list[str] = field(default_factory=list)
    to_suspend: list[str] = field(default_factory=list)
    commit: str | None = None


def stop(sr: StateRepo, *, reason: str, dry_run: bool) -> StopPlan:
    """Commit state/STOP (who, when, why) and signal the local daemon.  Every daemon watching
    the repository cancels its running tools and starts nothing until the stop is lifted."""
    me = sr.human_identity()
    rows = sr.index.query(status=[S.RUNNING.value, S.APPROVED.value])
    plan = StopPlan(already=sr.stopped_at() is not None, daemon=read_status(sr.root),
                    running=[r["id"] for r in rows if r["status"] == "running"],
                    to_suspend=[r["id"] for r in rows if r["status"] == "approved"])
    if dry_run or plan.already:
        return plan
    body = f"stopped_by: {me.name} <{me.email}>\nstopped_at: {utcnow()}\nreason: {reason}\n"
    plan.commit = sr.repo.commit_files(
        {STOP_PATH: body.encode()},
        format_message("janus: EMERGENCY STOP", reason, {"Janus-Stop": "on"}))
    _nudge(sr)
    share(sr)
    return plan


def resume(sr: StateRepo, *, reason: str) -> str:
    if sr.stopped_at() is None:
        raise JanusError("no emergency stop is in force (state/STOP is absent)")
    me = sr.human_identity()
    if rules_in_force(sr).config.approver_for(me.email) is None:
        raise JanusError(f"only an approver can lift the stop, and you ({me.email}) are not "
                         "one; the daemon would put state/STOP back")
    sha = sr.repo.commit_files({STOP_PATH: None},
                               format_message("janus: resume after emergency stop", reason,
                                              {"Janus-Stop": "off"}))
    _nudge(sr)
    share(sr)
    return sha


def rules_in_force(sr: StateRepo):
    """The rules as history makes them (the daemon's view), not the working tree's file."""
    from .trust import Trust
    return Trust(sr.repo).load(sr.repo.head() or "HEAD")


def share(sr: StateRepo) -> None:
    """In a clone whose rules name a remote, a person's commit made here goes up at once, so
    every daemon sees it (the stop within one poll, at once through a webhook).  When someone
    pushed first, it is rebased onto theirs and pushed again."""
    remote = sr.config["remote"]  # this clone's own file: it only says where to push
    if not remote or sr.repo.remote_url(remote["name"]) is None:
        return
    name, branch = remote["name"], remote["branch"]
    tracking = f"refs/remotes/{name}/{branch}"
    for _ in range(5):
        ok, words = sr.repo.push(name, [f"HEAD:refs/heads/{branch}"])
        if ok:
            return
        if "rejected" not in words and "fetch first" not in words:
            break
        sr.repo.fetch(name, [f"+refs/heads/{branch}:{tracking}"])
        sr.repo.rebase_onto(tracking)
    raise JanusError(f"committed here, but the push to {name} failed: {words[-300:]}; push "
                     "it with `git push` so the daemons see it")


def _nudge(sr: StateRepo) -> None:
    """Wake the local daemon at once (it would also see the commit through its watcher)."""
    status = read_status(sr.root)
    if status.get("running") and status.get("pid"):
        try:
            os.kill(int(status["pid"]), signal.SIGUSR1)
        except (ProcessLookupError, PermissionError):
            pass
