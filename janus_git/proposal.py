"""The proposal record, its status, and the one table of allowed transitions."""
from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from . import safeyaml
from .errors import ConfigError, TransitionError

try:  # libyaml is ~7x faster; fall back to the pure-Python class where it is missing
    from yaml import CSafeDumper as _Dumper
except ImportError:  # pragma: no cover
    from yaml import SafeDumper as _Dumper  # type: ignore[assignment]


class Status(str, enum.Enum):
    PROPOSED = "proposed"
    APPROVED = "approved"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    ARCHIVED = "archived"
    SUSPENDED = "suspended"
    INTERRUPTED = "interrupted"
    REVERTED = "reverted"

    def __str__(self) -> str:
        return self.value


S = Status
# Every status change in janus-git is checked against this table (lifecycle.py is its only
# caller that writes).  Keys are "from", values the statuses it may move to.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.PROPOSED: frozenset({S.APPROVED, S.REJECTED, S.DUPLICATE, S.ARCHIVED, S.SUSPENDED}),
    # approved -> proposed: the approval was reverted, voided (digest changed) or refused
    S.APPROVED: frozenset({S.RUNNING, S.PROPOSED, S.REJECTED, S.SUSPENDED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.INTERRUPTED}),
    S.SUCCEEDED: frozenset({S.REVERTED}),
    S.FAILED: frozenset({S.REVERTED}),
    # suspended by an emergency stop: back to proposed on resume, to be decided again
    S.SUSPENDED: frozenset({S.PROPOSED, S.REJECTED}),
    # never re-run silently: a person re-approves it (or rejects it)
    S.INTERRUPTED: frozenset({S.APPROVED, S.REJECTED}),
    S.REJECTED: frozenset(),
    S.DUPLICATE: frozenset(),
    S.ARCHIVED: frozenset({S.PROPOSED}),
    S.REVERTED: frozenset(),
}
# What a person may do by editing a proposal file and committing.
HUMAN_TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.PROPOSED: frozenset({S.APPROVED, S.REJECTED}),
    S.APPROVED: frozenset({S.PROPOSED, S.REJECTED}),
    S.INTERRUPTED: frozenset({S.APPROVED, S.REJECTED}),
    S.SUSPENDED: frozenset({S.REJECTED}),
    S.ARCHIVED: frozenset({S.PROPOSED}),
}
TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


def check_transition(old: Status, new: Status) -> None:
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "nothing (final)"
        raise TransitionError(f"a proposal cannot go from {old.value} to {new.value}; "
                              f"from {old.value} it may go to {allowed}")


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(now: dt.datetime | None = None) -> str:
    """Time-sortable id: 20261126-151200123-a1b2c3 (UTC, milliseconds, random suffix)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"


def shard_path(proposal_id: str) -> str:
    return f"proposals/{proposal_id[0:4]}/{proposal_id[4:6]}/{proposal_id}.yaml"


def canonical_args(args: Any) -> Any:
    """Args normalised for comparison: strings stripped, whitespace collapsed, dicts sorted."""
    if isinstance(args, str):
        return " ".join(args.split())
    if isinstance(args, list):
        return [canonical_args(a) for a in args]
    if isinstance(args, dict):
        return {str(k): canonical_args(v) for k, v in sorted(args.items())}
    return args


def compute_digest(type_: str, tool: str, args: Any) -> str:
    blob = json.dumps({"type": type_, "tool": tool, "args": args}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def novelty_digest(type_: str, tool: str, args: Any) -> str:
    """Digest of the normalised form: near-duplicates (whitespace, key order) collide."""
    return compute_digest(type_, tool, canonical_args(args))


@dataclass
class Proposal:
    id: str
    mission: str
    type: str
    tool: str
    args: Any
    rationale: str
    created_at: str
    created_by: str
    digest: str
    risk: str = "unknown"
    status: Status = Status.PROPOSED
    note: str = ""
    decision: dict[str, Any] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)
    duplicate_of: str | None = None
    # approvals counted so far toward a quorum (written by the daemon; see approvals.py)
    approvals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return shard_path(self.id)

    def recompute_digest(self) -> str:
        return compute_digest(self.type, self.tool, self.args)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        if d["duplicate_of"] is None:
            del d["duplicate_of"]
        if not d["approvals"]:
            del d["approvals"]
        return d

    def to_yaml(self) -> bytes:
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                         default_flow_style=False, width=100).encode()


REQUIRED = {"id": str, "mission": str, "type": str, "tool": str, "rationale": str,
            "created_at": str, "created_by": str, "digest": str, "status": str}
OPTIONAL = {"risk": str, "note": str, "decision": dict, "execution": dict,
            "duplicate_of": (str, type(None)), "args": (list, dict, str, type(None)),
            "approvals": list}
# The decision block's fields are read by the daemon: a committed `rule: 5` is refused here,
# never met as an AttributeError later.
DECISION_FIELDS = {"rule": str, "by": str, "signer": (str, type(None)), "commit": str,
                   "digest": str, "at": str, "reason": str, "approvals": list}


def load_yaml(text: bytes | str, path: str) -> Any:
    """Every YAML file janus-git reads comes from a commit, so it is loaded within bounds: a
    ConfigError names the limit, the syntax error or the value it could not read."""
    return safeyaml.load(text, path)


def proposal_from_dict(data: Any, path: str) -> Proposal:
    if not isinstance(data, dict):
        raise ConfigError(path, None, "a proposal must be a mapping of fields")
    unknown = set(data) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        raise ConfigError(path, sorted(unknown)[0], "unknown field",
                          f"known fields: {', '.join(list(REQUIRED) + list(OPTIONAL))}")
    for name, kind in REQUIRED.items():
        if name not in data:
            raise ConfigError(path, name, "missing required field")
        if not isinstance(data[name], kind):
            raise ConfigError(path, name, f"must be a {kind.__name__}, "
                              f"got {type(data[name]).__name__}")
    for name, kinds in OPTIONAL.items():
        if name in data and not isinstance(data[name], kinds):
            raise ConfigError(path, name, f"has the wrong type ({type(data[name]).__name__})")
    _check_decision(data.get("decision") or {}, path)
    try:  # the digest hashes the args as JSON: dates, sets or mixed-type keys are refused here
        json.dumps(data.get("args"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(path, "args", f"must be plain JSON-like data ({e})") from None
    for i, entry in enumerate(data.get("approvals") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("by", ""), str):
            raise ConfigError(path, f"approvals.{i}", "must be a mapping with `by: <e-mail>`")
    try:
        status = Status(data["status"])
    except ValueError:
        raise ConfigError(path, "status", f"unknown status {data['status']!r}",
                          f"one of: {', '.join(s.value for s in Status)}") from None
    expected = shard_path(data["id"])
    if not path.endswith(expected) and path.startswith("proposals/"):
        raise ConfigError(path, "id", f"id {data['id']!r} does not match the file's place",
                          f"a proposal with this id lives at {expected}")
    return Proposal(
        id=data["id"], mission=data["mission"], type=data["type"], tool=data["tool"],
        args=data.get("args"), rationale=data["rationale"], created_at=data["created_at"],
        created_by=data["created_by"], digest=data["digest"], risk=data.get("risk", "unknown"),
        status=status, note=data.get("note", "") or "", decision=data.get("decision") or {},
        execution=data.get("execution") or {}, duplicate_of=data.get("duplicate_of"),
        approvals=list(data.get("approvals") or []),
    )


def _check_decision(decision: dict[str, Any], path: str) -> None:
    for name, kinds in DECISION_FIELDS.items():
        if name in decision and not isinstance(decision[name], kinds):
            raise ConfigError(path, f"decision.{name}",
                              f"has the wrong type ({type(decision[name]).__name__})")


def parse_proposal(text: bytes | str, path: str) -> Proposal:
    return proposal_from_dict(load_yaml(text, path), path)


def json_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://janus-git.dev/schema/proposal.json",
        "title": "janus-git proposal",
        "type": "object",
        "additionalProperties": False,
        "required": list(REQUIRED),
        "properties": {
            "id": {"type": "string", "pattern": r"^\d{8}-\d{9}-[0-9a-f]{6}$"},
            "mission": {"type": "string"},
            "type": {"type": "string"},
            "tool": {"type": "string"},
            "args": {"type": ["array", "object", "string", "null"]},
            "rationale": {"type": "string"},
            "created_at": {"type": "string"},
            "created_by": {"type": "string"},
            "digest": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
            "risk": {"type": "string"},
            "status": {"enum": [s.value for s in Status]},
            "note": {"type": "string"},
            "decision": {"type": "object"},
            "execution": {"type": "object"},
            "duplicate_of": {"type": ["string", "null"]},
            "approvals": {"type": "array", "items": {"type": "object"}},
        },
    }
