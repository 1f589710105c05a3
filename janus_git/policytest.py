"""`janus-git policy test`: replay the proposals in history under a candidate agent.yaml.

The baseline is the rules in force at HEAD (trust.py), the candidate the working tree's
`state/agent.yaml` or the one at a revision.  Each proposal is decided by both (policy.decide,
a pure function of type, tool and the configuration) and the differences are reported: work
that would have run by itself where a person was needed, the reverse, and what the candidate
would refuse outright.  The index gives the rows, so 10k proposals take well under a second.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import AGENT_PATH, Config, config_from_text
from .errors import JanusError
from .policy import decide
from .proposal import Proposal, Status


@dataclass
class Shift:
    id: str
    type: str
    tool: str
    status: str
    before: str  # the rule that decides it under the rules in force
    after: str   # under the candidate


@dataclass
class Report:
    candidate: str
    since: str | None
    proposals: int = 0
    would_run_alone: list[Shift] = field(default_factory=list)
    would_need_person: list[Shift] = field(default_factory=list)
    would_be_refused: list[Shift] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def changed(self) -> bool:
        return bool(self.would_run_alone or self.would_need_person or self.would_be_refused)


def candidate_config(sr: Any, against: str | None) -> tuple[Config, str]:
    if against:
        text = sr.repo.read_blob(against, AGENT_PATH)
        if text is None:
            raise JanusError(f"{against} has no {AGENT_PATH} (give a branch, tag or commit)")
        return config_from_text(text, f"{against}:{AGENT_PATH}"), f"{against}:{AGENT_PATH}"
    path = sr.root / AGENT_PATH
    return config_from_text(path.read_bytes(), AGENT_PATH), f"{AGENT_PATH} (working tree)"


def back_test(rows: list[dict[str, Any]], baseline: Config, candidate: Config,
              label: str, since: str | None = None) -> Report:
    report = Report(label, since)
    decided: dict[tuple[str, str], tuple[Any, Any]] = {}
    for row in rows:
        if row.get("status") in (None, "invalid") or not row.get("type"):
            continue
        report.proposals += 1
        key = (row["type"], row["tool"])
        if key not in decided:  # decide is pure in (type, tool): once per shape
            p = Proposal(id="", mission="", type=row["type"], tool=row["tool"], args=None,
                         rationale="", created_at="", created_by="", digest="",
                         status=Status.PROPOSED)
            decided[key] = (decide(p, baseline), decide(p, candidate))
        before, after = decided[key]
        shift = Shift(row["id"], row["type"], row["tool"], row["status"], before.rule,
                      after.rule)
        if after.reject and not before.reject:
            report.would_be_refused.append(shift)
        elif after.auto and not before.auto:
            report.would_run_alone.append(shift)
        elif before.auto and not after.auto and not after.reject:
            report.would_need_person.append(shift)
    return report


def run(sr: Any, against: str | None = None, since_days: float | None = None) -> Report:
    from .actions import rules_in_force
    baseline = rules_in_force(sr).config
    candidate, label = candidate_config(sr, against)
    since = None
    if since_days is not None:
        since = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=since_days)).strftime(
            "%Y-%m-%dT%H:%M:%S")
    rows = sr.index.query(since=since)
    return back_test(rows, baseline, candidate, label, since)


def render(report: Report, limit: int = 20) -> str:
    lines = [f"policy test: {report.candidate} against the rules in force, "
             f"{report.proposals} proposals" + (f" since {report.since}" if report.since else "")]
    for title, shifts in (("would have run by themselves (a person approved them)",
                           report.would_run_alone),
                          ("would need a person (they ran by themselves)",
                           report.would_need_person),
                          ("would be refused", report.would_be_refused)):
        lines.append(f"\n{len(shifts)} {title}")
        for s in shifts[:limit]:
            lines.append(f"  {s.id}  {s.status:<11} {s.tool}: {s.type}  ({s.before} -> "
                         f"{s.after})")
        if len(shifts) > limit:
            lines.append(f"  ... and {len(shifts) - limit} more (--json lists them all)")
    if not report.changed:
        lines.append("\nno proposal would be decided differently")
    return "\n".join(lines)
