"""The fast reader (fastrow.py) against PyYAML, and the field table that drives it: a new field
is one line in proposal.py, and the fast path, the validator, the schema and the index pick it
up from there."""
from __future__ import annotations

import dataclasses
import json
import random

import pytest
import yaml
from mutate import edit
from test_store_index import TRICKY, _commit_raw, _variants

from janus_git import fastrow, index, lifecycle, proposal, safeyaml
from janus_git.errors import ConfigError
from janus_git.gitrepo import Identity
from janus_git.proposal import Status

from conftest import AGENT

AGENT_ID = Identity(*AGENT)


def _same_as_pyyaml(text: bytes) -> bool:
    """Whether fastrow reads TEXT as PyYAML does, or declines it (None) for the slow path."""
    fast = fastrow.load(text)
    if fast is None:
        return True
    return fast == safeyaml.load(text, "p.yaml")


def _nested(rng: random.Random, depth: int):
    """A random value of the shapes the dumper writes in a block: mappings, sequences (of
    mappings and of sequences too), empty ones, and tricky scalars."""
    roll = rng.random()
    if depth > 3 or roll < 0.45:
        if rng.random() < 0.05:
            return rng.choice(TRICKY)
        return rng.choice(["x", "a b", "-la", "1:20", "yes", "", "0o17", "it's", 0, -7, 3.25,
                           True, None, 10 ** 30, "a" * 120, "ü", "x: y", "{}"])
    if roll < 0.7:
        return [_nested(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["a", "b_c", "x.y", "on", "null", "1", "it's", "k k", "-z"]
    return {rng.choice(keys): _nested(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _documents(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = lifecycle.new_proposal(mission="M", type_="analysis", tool="shell",
                                   args=_nested(rng, 1), rationale="why " * rng.randint(1, 40),
                                   created_by="me <m@x>")
        p.execution = {"resources": _nested(rng, 2), "argv": [_nested(rng, 4)],
                       "exit_code": rng.randint(0, 3)}
        if rng.random() < 0.5:
            p.approvals = [{"by": "alice@example.com", "commit": "ab" * 20, "at": p.created_at,
                            "extra": _nested(rng, 3)}]
        out.append((p.path, p.to_yaml()))
    return out


# -- the loader --------------------------------------------------------------------------------
def test_load_reads_what_the_dumper_writes_as_pyyaml_does():
    fast = {}
    for name, docs in (("tricky scalars", _variants()), ("nested", _documents(400, seed=3))):
        for _, text in docs:
            assert _same_as_pyyaml(text), text.decode()
        fast[name] = sum(fastrow.load(text) is not None for _, text in docs) / len(docs)
    assert fast["tricky scalars"] > 0.2 and fast["nested"] > 0.4, fast


def test_what_the_agent_writes_every_day_takes_the_fast_path():
    p = lifecycle.new_proposal(mission="STUDY-004-BETA", type_="process_chunk",
                               tool="process_chunk", args={"path": "missions/docs/x.md",
                                                           "chunk": 3},
                               rationale="Résumé of chunk 3: who changed what, and why it "
                               "mattered for the release after it. " * 3,
                               created_by="janus-agent <janus-agent@localhost>")
    texts = [p.to_yaml()]
    p.status, p.risk = Status.APPROVED, "low"
    p.decision = {"rule": "human", "by": "alice@example.com", "signer": None,
                  "commit": "ab" * 20, "digest": p.digest, "at": p.created_at,
                  "approvals": ["alice@example.com", "bob@example.com"]}
    p.approvals = [{"by": "alice@example.com", "commit": "ab" * 20, "at": p.created_at}]
    texts.append(p.to_yaml())
    p.status, p.note = Status.SUCCEEDED, "exit 0 in 1.2 s"
    p.execution = {"started_at": p.created_at, "ended_at": p.created_at, "exit_code": 0,
                   "limit_hit": None, "isolation": "bwrap", "output": "logs/runs/x.txt",
                   "resources": {"cpu_seconds": 0.12, "peak_rss_mb": 31.5,
                                 "bytes_written": 0, "wall_seconds": 1.2},
                   "argv": ["python3", "-c", "print(6*7)"], "files": []}
    texts.append(p.to_yaml())
    from janus_git import hygiene
    texts.append(hygiene.edited(texts[0], hygiene.Action(p.id, p.path, Status.DUPLICATE,
                                                         "same as x (window)", "x-1")))
    for text in texts:
        assert fastrow.load(text) is not None, text.decode()
        assert fastrow.load(text) == yaml.safe_load(text)


def test_load_never_reads_an_edited_file_otherwise_than_pyyaml():
    """Random edits of dumped files (what a person or a bad merge makes): whenever the fast
    reader accepts one, PyYAML (within safeyaml's bounds) reads the same values."""
    rng = random.Random(17)
    base = _documents(60, seed=5) + _variants()[:60]
    accepted = 0
    for _ in range(4000):
        s = edit(rng, rng.choice(base)[1].decode())
        text = s.encode()
        if fastrow.load(text) is not None:
            accepted += 1
            try:
                assert fastrow.load(text) == safeyaml.load(text, "p.yaml"), s
            except ConfigError as e:
                pytest.fail(f"fast path accepted what the slow path refuses ({e}):\n{s}")
    assert accepted > 500


def test_replace_top_changes_those_fields_and_nothing_else():
    """Hygiene's in-place edit: the fields named are set, every other value reads the same."""
    for _, text in _documents(80, seed=9) + _variants()[:80]:
        data = fastrow.load(text)
        if data is None:
            continue
        new = fastrow.replace_top(text, {"status": "archived", "note": json.dumps("it's: \"x\" ü"),
                                         "duplicate_of": "x-1"})
        assert safeyaml.load(new, "p.yaml") == {**data, "status": "archived",
                                                "note": "it's: \"x\" ü", "duplicate_of": "x-1"}
        assert new.startswith(text.split(b"\nstatus:")[0])


@pytest.mark.parametrize("text", [
    "a: " + "1" * 150 + "\n",                       # safeyaml refuses a 150-digit integer
    "a:\n" + "".join(f"{'  ' * i}b:\n" for i in range(1, 70)) + "  " * 70 + "c: 1\n",
    "a: .nan\n",                                    # nan is unequal to itself
    "a: 2026-01-01\n",                              # a date
    "a: =\n", "a:\n  b: <<\n", "<<: x\n",           # tags safeyaml would refuse
    "a: x # a comment\n", "a: 'unterminated\n", 'a: "esc\\n"\n', "a: [x]\n", "a: &x 1\n",
    "a:\n  b: 1\n  b: 2\n",                         # a duplicate key
    "on: 1\n", "a:\n  yes: 1\n",                    # keys PyYAML reads as booleans
    "a:\n- - x\n", "a:\n   b: 1\n", "a:\tb\n", "a:\n- \n", "a: b",
])
def test_what_the_fast_path_declines(text):
    assert fastrow.load(text.encode()) is None


def test_size_is_bounded_as_the_slow_path_bounds_it():
    big = b"a:\n" + b"- x\n" * (safeyaml.MAX_BYTES // 4 + 1)
    assert fastrow.load(big) is None
    with pytest.raises(ConfigError, match="too large"):
        safeyaml.load(big, "p.yaml")


# -- validation is the table's, on both paths ------------------------------------------------------
def _yaml_of(p: proposal.Proposal, **edits: str) -> bytes:
    text = p.to_yaml().decode()
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    return text.encode()


def _both(path: str, text: bytes):
    """(the fast path's row or None, the row the index stores) of TEXT."""
    return index.fast_columns(path, text), json.loads(index.row_for(path, "b", text)[-1])


def test_a_decision_field_of_the_wrong_type_is_refused_on_the_fast_path_too():
    p = lifecycle.new_proposal(mission="M", type_="analysis", tool="shell", args=["ls"],
                               rationale="r", created_by="me")
    p.status = Status.APPROVED
    p.decision = {"rule": "auto", "digest": p.digest}
    text = _yaml_of(p, **{"rule: auto": "rule: 5"})
    fast, row = _both(p.path, text)
    assert fast is None
    assert row["status"] == "invalid" and "decision.rule: has the wrong type (int)" in \
        row["error"]


def test_approvals_a_list_of_mappings_take_the_fast_path():
    """`approvals:` (the daemon's record toward a quorum) is a block list of mappings: read
    fast and checked as the table says (each a mapping, `by` a string)."""
    p = lifecycle.new_proposal(mission="M", type_="analysis", tool="python", args=["-c", "1"],
                               rationale="r", created_by="me")
    p.approvals = [{"by": "alice@example.com", "commit": "ab" * 20,
                    "at": "2026-11-29T10:00:00.000000Z"},
                   {"by": "bob@example.com", "commit": "cd" * 20,
                    "at": "2026-11-29T11:00:00.000000Z"}]
    text = p.to_yaml()
    assert "approvals:\n- by: alice@example.com\n" in text.decode()
    fast, row = _both(p.path, text)
    assert fast is not None and fast == row and row["status"] == "proposed"
    assert fastrow.fast_proposal(p.path, text) == p
    # what the table refuses, the fast path refuses: each is then read slowly, and invalid
    for bad, where in [("- by: alice@example.com\n  commit", "approvals.0.by"),
                       ("- by: bob@example.com\n  commit", "approvals.1.by")]:
        broken = text.decode().replace(bad, bad.replace("by: ", "by: 7\n  was: "), 1)
        fast, row = _both(p.path, broken.encode())
        assert fast is None and row["status"] == "invalid" and where in row["error"], broken
    scalars = text.decode().split("approvals:")[0] + "approvals:\n- alice@example.com\n"
    fast, row = _both(p.path, scalars.encode())
    assert fast is None and "approvals.0: has the wrong type (str)" in row["error"]
    flow = text.decode().split("approvals:")[0] + "approvals: [{by: alice@example.com}]\n"
    fast, row = _both(p.path, flow.encode())
    assert fast is None and row["status"] == "proposed"  # flow style: read slowly, valid
    assert fastrow.fast_proposal(p.path, flow.encode()) is None


# -- a new field: one line in the table ---------------------------------------------------------
@pytest.fixture
def add_ticket_field(monkeypatch):
    """Adds to the table one more field, as a developer would: one line in Proposal (here in
    a subclass, put in its place for the test)."""
    def add():
        @dataclasses.dataclass
        class Ticketed(proposal.Proposal):
            ticket: str | None = proposal.spec(str, None, column=11, omit_default=True,
                                               default=None)
        monkeypatch.setattr(proposal, "Proposal", Ticketed)
        monkeypatch.setattr(proposal, "FIELDS", proposal.field_table(Ticketed))
        return Ticketed
    return add


def _ticketed(cls, sr, ticket=None):
    p = lifecycle.new_proposal(mission="M", type_="analysis", tool="shell", args=["ls"],
                               rationale="r", created_by="me")
    if cls is not None:
        p = cls(**{f.name: getattr(p, f.name) for f in dataclasses.fields(p)}, ticket=ticket)
    lifecycle.create(sr.repo, p, AGENT_ID)
    return p


def test_a_new_field_is_read_fast_checked_and_indexed(sr, add_ticket_field):
    before = _ticketed(None, sr)  # a file written before the field, indexed before it
    assert [r["id"] for r in sr.index.query()] == [before.id]
    old_version = sr.index.version
    t = _ticketed(add_ticket_field(), sr, "OPS-42")
    text = t.to_yaml()
    assert b"\nticket: OPS-42\n" in text and b"ticket" not in before.to_yaml()
    # the fast path reads it (no slow path), as PyYAML would
    row = index.fast_columns(t.path, text)
    assert row is not None and row["ticket"] == "OPS-42"
    assert fastrow.fast_proposal(t.path, text) == proposal.parse_proposal(text, t.path)
    # the validator, the schema and the index know it
    with pytest.raises(ConfigError, match="ticket: has the wrong type"):
        proposal.parse_proposal(text.replace(b"OPS-42", b"42"), t.path)
    assert proposal.json_schema()["properties"]["ticket"] == {"type": ["string", "null"]}
    assert "ticket" in index.row_columns() and index.row_columns()[-1] == "error"
    assert sr.index.version != old_version  # the index made before the field is rebuilt
    rows = {r["id"]: r for r in sr.index.query()}
    assert rows[t.id]["ticket"] == "OPS-42" and rows[before.id]["ticket"] is None
    assert sr.index.query(status=["proposed"])[0]["ticket"] is None


def test_a_new_field_of_the_wrong_type_reads_slowly_and_is_reported(sr, add_ticket_field):
    t = _ticketed(add_ticket_field(), sr, "OPS-1")
    _commit_raw(sr, t.path, t.to_yaml().decode().replace("ticket: OPS-1", "ticket: [a]"))
    assert index.fast_columns(t.path, (sr.root / t.path).read_bytes()) is None
    row = sr.index.query()[0]
    assert row["status"] == "invalid" and "ticket: has the wrong type (list)" in row["error"]


def test_columns_come_from_the_table_in_their_places():
    assert index.row_columns() == ("id", "path", "status", "mission", "type", "tool", "risk",
                                   "created_at", "created_by", "digest", "note", "error")
    places = [s.column for s in proposal.FIELDS.values() if s.column is not None]
    assert len(places) == len(set(places)) and 1 not in places  # 1 is the path's


def test_the_schema_and_the_validator_agree_with_the_table():
    import jsonschema
    schema = proposal.json_schema()
    assert set(schema["properties"]) == set(proposal.FIELDS)
    assert schema["required"] == [n for n, s in proposal.FIELDS.items() if s.required]
    p = lifecycle.new_proposal(mission="M", type_="analysis", tool="shell", args={"a": 1},
                               rationale="r", created_by="me")
    p.approvals = [{"by": "a@b"}]
    p.decision = {"rule": "auto", "signer": None}
    jsonschema.validate(yaml.safe_load(p.to_yaml()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**p.to_dict(), "approvals": [{"by": 5}]}, schema)
    with pytest.raises(ConfigError, match="approvals.0.by"):
        proposal.proposal_from_dict({**p.to_dict(), "approvals": [{"by": 5}]}, p.path)
