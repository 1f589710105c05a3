"""The proposal record: its status, the one table of allowed transitions and the status groups
other modules ask about, and the one table of its fields (Proposal's spec() fields, as FIELDS)
that the validator, the JSON Schema, the fast reader and the index all follow."""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import json
import secrets
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

from .errors import ConfigError, TransitionError
from .util import utcnow  # noqa: F401  (re-exported: many modules import it from here)


@functools.cache
def _dumper() -> Any:
    """PyYAML's dumper, imported when a file is first written: `list --json` on a current
    index reads no YAML at all, and yaml's import is a sixth of a command's start.  libyaml's
    is ~7x faster; the pure-Python class where it is missing."""
    import yaml
    try:
        return yaml.CSafeDumper
    except AttributeError:  # pragma: no cover
        return yaml.SafeDumper


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
# The groups other modules ask about (hash equal to their values: `"running" in IN_FLIGHT`).
# The first three split every status (tests/test_proposal.py checks that).
# Work not at an end: it may still run, or is waiting for a person or a resume.
IN_FLIGHT = frozenset({S.PROPOSED, S.APPROVED, S.RUNNING, S.INTERRUPTED, S.SUSPENDED})
# Ran to an end (a reverted result did run).
FINISHED = frozenset({S.SUCCEEDED, S.FAILED, S.REVERTED})
# Set aside without running: where hygiene moves a proposed proposal (and a person rejects).
CLEARED = frozenset({S.REJECTED, S.DUPLICATE, S.ARCHIVED})
# What a run ends in (a tool_use.jsonl line's status).
RUN_OUTCOMES = frozenset({S.SUCCEEDED, S.FAILED})
# Work that was done or may still be: what a new proposal can duplicate.
LIVE = IN_FLIGHT | FINISHED


def check_transition(old: Status, new: Status) -> None:
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "nothing (final)"
        raise TransitionError(f"a proposal cannot go from {old.value} to {new.value}; "
                              f"from {old.value} it may go to {allowed}")


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
    blob = _digest_json({"type": type_, "tool": tool, "args": args})
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


_digest_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def novelty_digest(type_: str, tool: str, args: Any) -> str:
    """Digest of the normalised form: near-duplicates (whitespace, key order) collide."""
    return compute_digest(type_, tool, canonical_args(args))


# -- the field table ---------------------------------------------------------------------------
NULL = type(None)
ID_PATTERN = r"^\d{8}-\d{9}-[0-9a-f]{6}$"
_KIND_NAMES = {str: "str", dict: "mapping", list: "list", NULL: "null", int: "int",
               float: "float", bool: "bool"}
_JSON_TYPES = {str: "string", dict: "object", list: "array", NULL: "null", int: "integer",
               float: "number", bool: "boolean"}


class FieldSpec(NamedTuple):
    """What a proposal file may hold under one name."""
    types: tuple[type, ...]                # the values accepted (NULL: `null`)
    required: bool = False                 # in every file
    # its place in a row of the derived index (and of `list --json`, `export`); None: not a
    # column.  Columns are read on every `list`: keep them to short scalars.
    column: int | None = None
    omit_default: bool = False             # left out of the file while it has its default
    items: tuple[type, ...] = ()           # a list's items must be one of these
    # the types of the keys a mapping (or each mapping in a list) names; other keys are free
    inner: Mapping[str, tuple[type, ...]] = MappingProxyType({})
    schema: Mapping[str, Any] = MappingProxyType({})  # JSON Schema keywords beyond the types


def spec(*types: type | None, required: bool = False, column: int | None = None,
         omit_default: bool = False, items: Any = (),
         inner: Mapping[str, Any] | None = None, schema: Mapping[str, Any] | None = None,
         **default: Any) -> Any:
    """A dataclass field of Proposal carrying its FieldSpec; DEFAULT is `default=` or
    `default_factory=`, as dataclasses.field takes them."""
    def kinds(ts: Any) -> tuple[type, ...]:
        ts = ts if isinstance(ts, tuple) else (ts,)
        return tuple(NULL if t is None else t for t in ts)
    meta = FieldSpec(kinds(types), required, column, omit_default, kinds(items),
                     MappingProxyType({k: kinds(v) for k, v in (inner or {}).items()}),
                     MappingProxyType(dict(schema or {})))
    return dataclasses.field(metadata={"spec": meta}, **default)


# The decision block's fields are read by the daemon: a committed `rule: 5` is refused where the
# file is read, never met as an AttributeError later.
DECISION_FIELDS = {"rule": str, "by": str, "signer": (str, None), "commit": str,
                   "digest": str, "at": str, "reason": str, "approvals": list}


@dataclass
class Proposal:
    """One proposal file, and the table of what such a file may hold: each field's spec()
    gives the types a file may hold under its name, whether it is required, and its column in
    the derived index.  proposal_from_dict, json_schema, the fast reader (fastrow.py) and the
    index (index.py) all read FIELDS, made from this class: a new field is one line here."""
    id: str = spec(str, required=True, column=0, schema={"pattern": ID_PATTERN})
    mission: str = spec(str, required=True, column=3)
    type: str = spec(str, required=True, column=4)
    tool: str = spec(str, required=True, column=5)
    args: Any = spec(list, dict, str, None)
    rationale: str = spec(str, required=True)
    created_at: str = spec(str, required=True, column=7)
    created_by: str = spec(str, required=True, column=8)
    digest: str = spec(str, required=True, column=9,
                       schema={"pattern": "^sha256:[0-9a-f]{64}$"})
    risk: str = spec(str, column=6, default="unknown")
    status: Status = spec(str, required=True, column=2, default=Status.PROPOSED,
                          schema={"enum": [s.value for s in Status]})
    note: str = spec(str, column=10, default="")
    decision: dict[str, Any] = spec(dict, inner=DECISION_FIELDS, default_factory=dict)
    execution: dict[str, Any] = spec(dict, default_factory=dict)
    duplicate_of: str | None = spec(str, None, omit_default=True, default=None)
    # approvals counted so far toward a quorum (written by the daemon; see approvals.py)
    approvals: list[dict[str, Any]] = spec(list, items=dict, inner={"by": str},
                                           omit_default=True, default_factory=list)

    @property
    def path(self) -> str:
        return shard_path(self.id)

    def recompute_digest(self) -> str:
        return compute_digest(self.type, self.tool, self.args)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        for f in dataclasses.fields(self):
            if f.metadata["spec"].omit_default and d[f.name] == _default(f):
                del d[f.name]
        return d

    def to_yaml(self) -> bytes:
        import yaml
        return yaml.dump(self.to_dict(), Dumper=_dumper(), sort_keys=False,
                         allow_unicode=True, default_flow_style=False, width=100).encode()


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def field_table(cls: type = Proposal) -> dict[str, FieldSpec]:
    """{name: FieldSpec} of every field of CLS, in file order."""
    return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}


# The one table.  Read it as `proposal.FIELDS` at call time (a test may extend it: a subclass
# of Proposal with one more field, and FIELDS = field_table(that class)).
FIELDS: dict[str, FieldSpec] = field_table()


def load_yaml(text: bytes | str, path: str) -> Any:
    """Every YAML file janus-git reads comes from a commit, so it is loaded within bounds: a
    ConfigError names the limit, the syntax error or the value it could not read."""
    from . import safeyaml  # (imports yaml: only where a file is read)
    return safeyaml.load(text, path)


def proposal_from_dict(data: Any, path: str) -> Proposal:
    """The one check of a proposal record, whichever reader parsed it (PyYAML or fastrow)."""
    if not isinstance(data, dict):
        raise ConfigError(path, None, "a proposal must be a mapping of fields")
    plan = _plan()
    if not plan.names >= data.keys():
        unknown = [k for k in data if k not in plan.names]
        raise ConfigError(path, str(min(unknown, key=str)), "unknown field",
                          f"known fields: {', '.join(FIELDS)}")
    if not data.keys() >= plan.required:
        missing = next(name for name in FIELDS if name in plan.required and name not in data)
        raise ConfigError(path, missing, "missing required field")
    for name, value in data.items():
        s, deep = plan.checks[name]
        if deep:
            _check_value(value, s, name, path)
        elif not isinstance(value, s.types):
            _check_type(value, s.types, name, path)
    try:  # the digest hashes the args as JSON: dates, sets or mixed-type keys are refused here
        _json_check(data.get("args"))
    except (TypeError, ValueError) as e:
        raise ConfigError(path, "args", f"must be plain JSON-like data ({e})") from None
    status = _STATUS_OF.get(data["status"])
    if status is None:
        raise ConfigError(path, "status", f"unknown status {data['status']!r}",
                          f"one of: {', '.join(s.value for s in Status)}")
    expected = shard_path(data["id"])
    if not path.endswith(expected) and path.startswith("proposals/"):
        raise ConfigError(path, "id", f"id {data['id']!r} does not match the file's place",
                          f"a proposal with this id lives at {expected}")
    values = {**plan.defaults, **data, "status": status}
    for name, factory in plan.factories:
        if name not in data:
            values[name] = factory()
    return Proposal(**values)


_json_check = json.JSONEncoder(sort_keys=True, allow_nan=False).encode
_STATUS_OF = {s.value: s for s in Status}


class _Plan(NamedTuple):
    """FIELDS and Proposal's defaults laid out for proposal_from_dict (~100,000 calls in an
    index rebuild)."""
    cls: type
    table: dict[str, FieldSpec]
    names: frozenset[str]
    required: frozenset[str]
    checks: dict[str, tuple[FieldSpec, bool]]  # name -> (spec, look inside the value)
    defaults: dict[str, Any]
    factories: tuple[tuple[str, Any], ...]


def _plan() -> _Plan:
    global _plan_memo
    if _plan_memo is None or _plan_memo.cls is not Proposal or _plan_memo.table is not FIELDS:
        fs = dataclasses.fields(Proposal)
        factory = [(f.name, f.default_factory) for f in fs
                   if f.default_factory is not dataclasses.MISSING]
        _plan_memo = _Plan(
            Proposal, FIELDS, frozenset(FIELDS),
            frozenset(name for name, s in FIELDS.items() if s.required),
            {name: (s, bool(s.items or s.inner) or (int in s.types and bool not in s.types))
             for name, s in FIELDS.items()},
            # a field with no default (args) is None when the file leaves it out
            {f.name: None if f.default is dataclasses.MISSING else f.default
             for f in fs if f.default_factory is dataclasses.MISSING},
            tuple(factory))
    return _plan_memo


_plan_memo: _Plan | None = None


def _check_value(value: Any, s: FieldSpec, name: str, path: str) -> None:
    _check_type(value, s.types, name, path)
    if isinstance(value, list) and s.items:
        for i, item in enumerate(value):
            _check_type(item, s.items, f"{name}.{i}", path)
            if isinstance(item, dict):
                _check_inner(item, s.inner, f"{name}.{i}", path)
    elif isinstance(value, dict):
        _check_inner(value, s.inner, name, path)


def _check_inner(mapping: dict, inner: Mapping[str, tuple[type, ...]], name: str,
                 path: str) -> None:
    for key, kinds in inner.items():
        if key in mapping:
            _check_type(mapping[key], kinds, f"{name}.{key}", path)


def _check_type(value: Any, kinds: tuple[type, ...], name: str, path: str) -> None:
    # bool is an int to isinstance: a field of ints must not take `yes`
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        want = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise ConfigError(path, name, f"has the wrong type ({_kind_name(value)}): "
                          f"it must be a {want}")


def _kind_name(value: Any) -> str:
    return _KIND_NAMES.get(type(value), type(value).__name__)


def parse_proposal(text: bytes | str, path: str) -> Proposal:
    return proposal_from_dict(load_yaml(text, path), path)


def json_schema() -> dict[str, Any]:
    table = FIELDS
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://janus-git.dev/schema/proposal.json",
        "title": "janus-git proposal",
        "type": "object",
        "additionalProperties": False,
        "required": [name for name, s in table.items() if s.required],
        "properties": {name: _schema_of(s) for name, s in table.items()},
    }


def _schema_of(s: FieldSpec) -> dict[str, Any]:
    out: dict[str, Any] = {} if "enum" in s.schema else {"type": _json_types(s.types)}
    if s.items:
        item: dict[str, Any] = {"type": _json_types(s.items)}
        if s.inner:
            item["properties"] = _inner_schema(s.inner)
        out["items"] = item
    elif s.inner:
        out["properties"] = _inner_schema(s.inner)
    out.update(s.schema)
    return out


def _inner_schema(inner: Mapping[str, tuple[type, ...]]) -> dict[str, Any]:
    return {key: {"type": _json_types(kinds)} for key, kinds in inner.items()}


def _json_types(kinds: tuple[type, ...]) -> str | list[str]:
    names = [_JSON_TYPES[k] for k in kinds]
    return names[0] if len(names) == 1 else names
