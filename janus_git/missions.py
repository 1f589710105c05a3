"""Mission files (missions/<ID>.yaml) and mission sequencing.

A mission is queued -> active -> done.  Progress is derived, never stored: the count of the
mission's succeeded proposals (of the types that count).  When the active mission's completion
rule holds, advance() moves it to done and the next queued mission (by order, dependencies
done) to active, in one agent commit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from .config import Config, validate
from .errors import ConfigError
from .gitrepo import GitRepo, format_message
from .proposal import IN_FLIGHT, load_yaml

MISSIONS_DIR = "missions"
STATUSES = ("queued", "active", "done")
TRAILER_MISSION = "Janus-Mission"
TRAILER_MISSION_TRANSITION = "Janus-Mission-Transition"
TRAILER_MISSION_NEXT = "Janus-Mission-Next"

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://janus-git.dev/schema/mission.json",
    "title": "janus-git mission (missions/<ID>.yaml)",
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "title", "goal", "kind", "budget", "status"],
    "properties": {
        "id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
        "title": {"type": "string", "minLength": 1, "maxLength": 200},
        "goal": {"type": "string", "minLength": 1, "maxLength": 4000},
        "kind": {"type": "string", "minLength": 1},
        "budget": {"type": "object", "additionalProperties": False,
                   "required": ["min", "max", "unit"],
                   "properties": {"min": {"type": "integer", "minimum": 1},
                                  "max": {"type": "integer", "minimum": 1},
                                  "unit": {"type": "string", "minLength": 1}}},
        # min: done once budget.min proposals succeeded; max: keep going to budget.max
        "complete_when": {"enum": ["min", "max"]},
        "order": {"type": "integer"},
        "depends_on": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "status": {"enum": list(STATUSES)},
        "documents": {"type": "array", "items": {"type": "string", "minLength": 1}},
        # hints for the planner; proposal_types are also the types that count as progress
        "proposal_types": {"type": "array", "items": {"type": "string"}},
        "tools": {"type": "array", "items": {"type": "string"}},
        "guidance": {"type": "string", "maxLength": 2000},
    },
}


@dataclass
class Mission:
    id: str
    title: str
    goal: str
    kind: str
    budget_min: int
    budget_max: int
    unit: str
    status: str
    path: str
    order: int = 0
    depends_on: list[str] = field(default_factory=list)
    complete_when: str = "min"
    documents: list[str] = field(default_factory=list)
    proposal_types: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    guidance: str = ""

    @property
    def target(self) -> int:
        return self.budget_min if self.complete_when == "min" else self.budget_max


@dataclass
class Progress:
    mission: str
    succeeded: int
    in_flight: int
    target: int
    budget_max: int
    unit: str

    @property
    def complete(self) -> bool:
        return self.succeeded >= self.target

    @property
    def room(self) -> int:
        """How many more proposals the planner may file without overshooting the budget."""
        return max(0, self.budget_max - self.succeeded - self.in_flight)


def mission_path(mission_id: str) -> str:
    return f"{MISSIONS_DIR}/{mission_id}.yaml"


def parse_mission(text: bytes | str, path: str) -> Mission:
    data = load_yaml(text, path)
    if not isinstance(data, dict):
        raise ConfigError(path, None, "a mission must be a mapping of fields")
    validate(data, SCHEMA, path)
    if path.startswith(MISSIONS_DIR + "/") and path != mission_path(data["id"]):
        raise ConfigError(path, "id", f"id {data['id']!r} does not match the file name",
                          f"name the file {mission_path(data['id'])}")
    budget = data["budget"]
    if budget["min"] > budget["max"]:
        raise ConfigError(path, "budget.min", "is larger than budget.max")
    return Mission(
        id=data["id"], title=data["title"], goal=data["goal"], kind=data["kind"],
        budget_min=budget["min"], budget_max=budget["max"], unit=budget["unit"],
        status=data["status"], path=path, order=data.get("order", 0),
        depends_on=list(data.get("depends_on", [])),
        complete_when=data.get("complete_when", "min"),
        documents=list(data.get("documents", [])),
        proposal_types=list(data.get("proposal_types", [])),
        tools=list(data.get("tools", [])), guidance=data.get("guidance", ""),
    )


def mission_paths(repo: GitRepo, rev: str = "HEAD") -> list[str]:
    # only the top level: missions/docs/ holds documents, not missions
    return sorted(p for p in repo.ls_tree(rev, MISSIONS_DIR)
                  if p.count("/") == 1 and p.endswith((".yaml", ".yml")))


def load_missions(repo: GitRepo, rev: str = "HEAD", on_error: Any = None,
                  texts: dict[str, bytes] | None = None) -> list[Mission]:
    """All missions at REV (or in TEXTS, path -> content: the rules in force), sorted by
    (order, id).  A broken file raises ConfigError, or, with ON_ERROR (a callable taking the
    error), is reported and skipped."""
    missions = []
    paths = mission_paths(repo, rev) if texts is None else sorted(
        p for p in texts if p.startswith(MISSIONS_DIR + "/") and p.count("/") == 1
        and p.endswith((".yaml", ".yml")))
    for path in paths:
        try:
            text = repo.read_blob(rev, path) if texts is None else texts[path]
            missions.append(parse_mission(text or b"", path))
        except ConfigError as e:
            if on_error is None:
                raise
            on_error(e)
    known = {m.id for m in missions}
    for m in missions:
        missing = [d for d in m.depends_on if d not in known]
        if missing and on_error is None:
            raise ConfigError(m.path, "depends_on", f"unknown mission {missing[0]!r}")
    return sorted(missions, key=lambda m: (m.order, m.id))


def _get(p: Any, name: str) -> Any:
    return p.get(name) if isinstance(p, dict) else getattr(p, name, None)


def progress(mission: Mission, proposals: Iterable[Any]) -> Progress:
    """Pure: count MISSION's succeeded and in-flight proposals among PROPOSALS (Proposal
    objects or dicts, e.g. the derived index's rows)."""
    succeeded = in_flight = 0
    types = set(mission.proposal_types)
    for p in proposals:
        if _get(p, "mission") != mission.id or (types and _get(p, "type") not in types):
            continue
        status = str(_get(p, "status"))
        if status == "succeeded":
            succeeded += 1
        elif status in IN_FLIGHT:
            in_flight += 1
    return Progress(mission.id, succeeded, in_flight, mission.target, mission.budget_max,
                    mission.unit)


def active_mission(missions: list[Mission]) -> Mission | None:
    return next((m for m in missions if m.status == "active"), None)


def next_transitions(missions: list[Mission],
                     proposals: Iterable[Any]) -> list[tuple[Mission, str, str]]:
    """Pure: the mission status changes due now, as (mission, old, new)."""
    changes: list[tuple[Mission, str, str]] = []
    done = {m.id for m in missions if m.status == "done"}
    active = active_mission(missions)
    if active is not None:
        if not progress(active, list(proposals)).complete:
            return []
        changes.append((active, "active", "done"))
        done.add(active.id)
    for m in missions:
        if m.status == "queued" and all(d in done for d in m.depends_on):
            changes.append((m, "queued", "active"))
            break
    return changes


_STATUS_LINE = re.compile(r"(?m)^status:[ \t]*[\"']?(queued|active|done)[\"']?[ \t]*(#.*)?$")


def with_status(text: bytes, path: str, new: str) -> bytes:
    """TEXT with its top-level status changed, comments and layout kept."""
    src = text.decode()
    out, n = _STATUS_LINE.subn(lambda m: f"status: {new}" + (f"  {m[2]}" if m[2] else ""), src,
                               count=1)
    if n != 1:
        raise ConfigError(path, "status", "no top-level `status:` line to update")
    return out.encode()


def advance(repo: GitRepo, config: Config, proposals: Iterable[Any], rev: str = "HEAD",
            texts: dict[str, bytes] | None = None) -> list[tuple[str, str, str]]:
    """Commit the due mission transitions (active -> done, next queued -> active) as one
    agent commit; returns them as (mission id, old, new).  Nothing due: no commit.

    TEXTS (path -> content) are the missions in force (trust.py): the agent's signed commit
    is built on them, never on a HEAD that may hold a change no approver made (that change
    would otherwise pass into force under the agent's signature)."""
    missions = load_missions(repo, rev, on_error=lambda e: None, texts=texts)
    changes = next_transitions(missions, proposals)
    if not changes:
        return []
    files: dict[str, bytes | None] = {}
    guard: dict[str, bytes | None] = {}
    for m, _old, new in changes:
        head = repo.read_blob(rev, m.path)
        guard[m.path] = head
        files[m.path] = with_status((head if texts is None else texts[m.path]) or b"",
                                    m.path, new)
    repo.commit_files(files, _message(changes), config.identity, guard=guard)
    return [(m.id, old, new) for m, old, new in changes]


def _message(changes: list[tuple[Mission, str, str]]) -> str:
    first, old, new = changes[0]
    trailers = {TRAILER_MISSION: first.id, TRAILER_MISSION_TRANSITION: f"{old} -> {new}"}
    lines = [f"{m.id}: {o} -> {n}" for m, o, n in changes]
    if len(changes) > 1:
        trailers[TRAILER_MISSION_NEXT] = f"{changes[1][0].id} ({changes[1][1]} -> "\
                                         f"{changes[1][2]})"
    subject = "janus: mission " + "; ".join(lines)
    return format_message(subject, "", trailers)


def missions_table(missions: Any, proposals: Iterable[Any] | None = None
                   ) -> list[dict[str, Any]]:
    """Rows for `janus-git missions` (and its --json).  MISSIONS: a list of Mission with
    PROPOSALS (rows or Proposal objects), or a StateRepo (its missions at HEAD, its index)."""
    if proposals is None and hasattr(missions, "index"):
        state = missions
        missions = load_missions(state.repo, on_error=lambda e: None)
        proposals = state.index.query()
    rows = []
    proposals = list(proposals or [])
    for m in missions:
        pr = progress(m, proposals)
        rows.append({
            "id": m.id, "title": m.title, "kind": m.kind, "status": m.status,
            "order": m.order, "depends_on": m.depends_on, "succeeded": pr.succeeded,
            "in_flight": pr.in_flight, "budget": {"min": m.budget_min, "max": m.budget_max,
                                                  "unit": m.unit},
            "progress": f"{pr.succeeded}/{m.target} {m.unit}",
            "complete": pr.complete, "path": m.path,
        })
    return rows
