"""Proposals on disk (shards, placement, ids) and the derived sqlite index: rebuilt when
missing or broken, caught up incrementally, and honest about broken files."""
from __future__ import annotations

import os
import sqlite3
import threading

import pytest
import yaml

from janus_git import lifecycle
from janus_git.errors import ConfigError, NotFound
from janus_git.gitrepo import Identity
from janus_git.index import Index, index_path
from janus_git.proposal import Status
from janus_git.store import check_placement

from conftest import AGENT, git

AGENT_ID = Identity(*AGENT)


def _file(sr, mission="STUDY-002-BETA", tool="shell", type_="analysis", pid=None):
    p = lifecycle.new_proposal(mission=mission, type_=type_, tool=tool, args=["ls"],
                               rationale="r", created_by="agent", pid=pid)
    lifecycle.create(sr.repo, p, AGENT_ID)
    return p


def _commit_raw(sr, path: str, text: str, msg: str = "by hand") -> None:
    target = sr.root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    git(sr.root, "add", path)
    git(sr.root, "commit", "-qm", msg)


def _ids(sr) -> list[str]:
    return [r["id"] for r in sr.index.query()]


def _rows_by_full_rebuild(sr) -> list[dict]:
    fresh = Index(sr.repo)
    fresh.path = sr.root / ".git" / "janus" / "check.sqlite"
    fresh.rebuild()
    return fresh.query()


# -- placement ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    "proposals/foo.yaml",
    "proposals/20261126-120000000-abcdef.yaml",          # not in its shard
    "proposals/2026/01/20261126-120000000-abcdef.yaml",  # wrong month folder
    "proposals/2025/11/20261126-120000000-abcdef.yaml",  # wrong year folder
    "proposals/2026/11/sub/20261126-120000000-abcdef.yaml",
    "proposals/2026/11/20261126-120000000-ABCDEF.yaml",
])
def test_a_file_outside_the_shards_is_refused(path):
    with pytest.raises(ConfigError) as e:
        check_placement(path)
    assert str(e.value).startswith(f"{path}: ") and "outside the shards" in str(e.value)
    assert "\n" not in str(e.value)


def test_the_right_place_is_accepted():
    check_placement("proposals/2026/11/20261126-120000000-abcdef.yaml")


# -- the store -----------------------------------------------------------------------------
def test_resolve_by_prefix(sr):
    a = _file(sr, pid="20261126-120000000-aaaaaa")
    _file(sr, pid="20261126-120000000-aaaabb")
    c = _file(sr, pid="20261127-090000000-cccccc")
    assert sr.store.resolve(a.id) == a.id
    assert sr.store.resolve("20261127") == c.id
    assert sr.store.resolve("20261126-120000000-aaaaa") == a.id
    with pytest.raises(NotFound, match="matches 2 proposals"):
        sr.store.resolve("20261126-120000000-aaaa")
    with pytest.raises(NotFound, match="no proposal has an id starting with"):
        sr.store.resolve("2030")
    with pytest.raises(NotFound, match="at least 4 characters"):
        sr.store.resolve("20")
    with pytest.raises(NotFound, match="not found"):
        sr.store.read("20261126-120000000-ffffff")


def test_store_reads_what_is_committed_not_the_working_tree(sr):
    p = _file(sr)
    (sr.root / p.path).write_text("garbage: [\n")
    assert sr.store.read(p.id).status is Status.PROPOSED
    assert sr.store.paths() == [p.path]


# -- the index -------------------------------------------------------------------------------
def test_list_shows_every_other_proposal_and_marks_the_broken_ones(sr):
    good = [_file(sr) for _ in range(3)]
    broken = _file(sr)
    _commit_raw(sr, broken.path, "id: [this is not\n  yaml at all\n")
    typo = _file(sr)
    data = yaml.safe_load((sr.root / typo.path).read_text())
    data["stauts"] = data.pop("status")
    _commit_raw(sr, typo.path, yaml.safe_dump(data))
    _commit_raw(sr, "proposals/foo.yaml", "id: x\n")
    _commit_raw(sr, "proposals/2025/01/20261126-120000000-abcdef.yaml",
                (sr.root / good[0].path).read_text())
    mismatch = good[1].to_dict()
    mismatch["id"] = "20261126-130000000-bbbbbb"
    _commit_raw(sr, "proposals/2026/11/20261126-130000000-cccccc.yaml", yaml.safe_dump(mismatch))

    rows = {r["path"]: r for r in sr.index.query()}
    assert len(rows) == 8
    for p in good:
        assert rows[p.path]["status"] == "proposed" and rows[p.path]["error"] is None
    expect = {broken.path: (None, "not valid YAML"),
              typo.path: ("stauts", "unknown field"),
              "proposals/foo.yaml": (None, "outside the shards"),
              "proposals/2025/01/20261126-120000000-abcdef.yaml": (None, "outside the shards"),
              "proposals/2026/11/20261126-130000000-cccccc.yaml": ("id", "does not match")}
    for path, (field, words) in expect.items():
        row = rows[path]
        assert row["status"] == "invalid"
        where = f"{path}: {field}: " if field else f"{path}: "
        assert row["error"].startswith(where) and words in row["error"], row["error"]
        assert "\n" not in row["error"]
    assert rows["proposals/foo.yaml"]["id"] == "foo"
    assert sr.index.counts() == {"proposed": 3, "invalid": 5}
    assert [r["status"] for r in sr.index.query(status=["invalid"])] == ["invalid"] * 5


def test_filters(sr):
    a = _file(sr, mission="A", tool="shell", type_="analysis")
    b = _file(sr, mission="B", tool="file_chunker", type_="process_chunk")
    lifecycle.transition(sr.repo, b, Status.REJECTED, AGENT_ID)
    ids = lambda **kw: [r["id"] for r in sr.index.query(**kw)]  # noqa: E731
    assert ids(mission="A") == [a.id]
    assert ids(tool="file_chunker") == [b.id]
    assert ids(type_="analysis") == [a.id]
    assert ids(status=["rejected"]) == [b.id]
    assert ids(status=["rejected", "proposed"]) == [a.id, b.id]
    assert ids(since="2999-01-01") == []
    assert ids(since=a.created_at[:10]) == [a.id, b.id]
    assert ids(limit=1) == [a.id]


def test_rebuilt_when_deleted(sr):
    p = _file(sr)
    assert _ids(sr) == [p.id]
    index_path(sr.root).unlink()
    assert _ids(sr) == [p.id]


@pytest.mark.parametrize("garbage", [b"this is not a database" * 100, b"", b"SQLite format 3\0"
                                     + b"\xff" * 4000])
def test_rebuilt_when_corrupt(sr, garbage):
    p = _file(sr)
    assert _ids(sr) == [p.id]
    for extra in ("-wal", "-shm"):
        (index_path(sr.root).parent / f"index.sqlite{extra}").unlink(missing_ok=True)
    index_path(sr.root).write_bytes(garbage)
    assert _ids(sr) == [p.id]
    assert Index(sr.repo).counts() == {"proposed": 1}


def test_rebuilt_from_an_old_format(sr):
    p = _file(sr)
    assert _ids(sr) == [p.id]
    db = sqlite3.connect(index_path(sr.root))
    db.execute("UPDATE meta SET value='0' WHERE key='version'")
    db.execute("DELETE FROM proposals")
    db.commit()
    db.close()
    assert _ids(sr) == [p.id]


def test_caught_up_incrementally_after_new_commits(sr):
    a = _file(sr)
    assert _ids(sr) == [a.id]
    db = sqlite3.connect(index_path(sr.root))
    # a marker row the diff does not touch: a rebuild would drop it, a catch-up keeps it
    db.execute("INSERT INTO proposals (path, id, status, row_json) VALUES "
               "('proposals/x.yaml', 'x', 'm', '{\"id\": \"x\"}')")
    db.commit()
    db.close()
    b = _file(sr)
    lifecycle.transition(sr.repo, a, Status.APPROVED, AGENT_ID)
    rows = {r["id"]: r for r in sr.index.query()}
    assert "x" in rows, "caught up by diff, not rebuilt"
    assert rows[a.id]["status"] == "approved" and rows[b.id]["status"] == "proposed"


def test_follows_a_person_deleting_a_file(sr):
    a, b = _file(sr), _file(sr)
    assert sorted(_ids(sr)) == sorted([a.id, b.id])
    git(sr.root, "rm", "-q", a.path)
    git(sr.root, "commit", "-qm", "remove a")
    assert _ids(sr) == [b.id]
    assert sr.index.query() == _rows_by_full_rebuild(sr)


def test_follows_history_moving_backwards(sr):
    a = _file(sr)
    lifecycle.transition(sr.repo, a, Status.APPROVED, AGENT_ID)
    b = _file(sr)
    assert {r["id"]: r["status"] for r in sr.index.query()} == {a.id: "approved",
                                                                 b.id: "proposed"}
    git(sr.root, "reset", "-q", "--hard", "HEAD~2")
    assert {r["id"]: r["status"] for r in sr.index.query()} == {a.id: "proposed"}
    assert sr.index.query() == _rows_by_full_rebuild(sr)


def test_follows_a_revert_and_a_merge(sr):
    a = _file(sr)
    sha = lifecycle.transition(sr.repo, a, Status.APPROVED, AGENT_ID)
    assert sr.index.query()[0]["status"] == "approved"
    git(sr.root, "revert", "--no-edit", sha)
    assert sr.index.query()[0]["status"] == "proposed"
    git(sr.root, "checkout", "-qb", "side")
    b = _file(sr)
    git(sr.root, "checkout", "-q", "main")
    git(sr.root, "merge", "-q", "--no-ff", "-m", "merge side", "side")
    assert sorted(_ids(sr)) == sorted([a.id, b.id])


def test_survives_a_head_it_never_saw_being_garbage_collected(sr):
    a = _file(sr)
    _file(sr)
    assert len(_ids(sr)) == 2
    git(sr.root, "reset", "-q", "--hard", "HEAD~1")
    git(sr.root, "reflog", "expire", "--expire=now", "--all")
    git(sr.root, "gc", "-q", "--prune=now")
    assert _ids(sr) == [a.id]


def test_uncommitted_files_are_not_in_the_index(sr):
    a = _file(sr)
    (sr.root / a.path).write_text("rubbish [\n")
    assert sr.index.query()[0]["status"] == "proposed"


# -- the index's fast reader agrees with PyYAML ------------------------------------------------
def _slow(path: str, text: bytes):
    from janus_git.index import columns
    from janus_git.proposal import parse_proposal
    try:
        check_placement(path)
        return columns(parse_proposal(text, path), path)
    except ConfigError:
        return "error"


TRICKY = ["", "plain", "123", "0o17", "1_000", "1e3", ".inf", "true", "yes", "No", "on", "null",
          "~", "2025-01-01", "2025-01-01T00:00:00Z", "1:20", "<<", "=", "-", "-1", "-la", "- x",
          "a: b", "a:b", "a #b", "a#b", "#x", "it's", "'quoted'", '"dq"', "tab\there",
          "line\nbreak", "trailing ", " leading", "ünïcödé ✓", "emoji 🦀", "\x85nel",
          "back\\slash", "[x]", "{x}", "a, b", "*star", "&amp", "!tag", "|pipe", ">gt", "%pc",
          "@at", "`tick", "?q", ",c", "x" * 250, "word " * 60, "a  b", "ends with:",
          "\u2028ls", "\ufeffbom", "\x00nul"]


def _variants():
    import random as _random

    from janus_git.proposal import compute_digest
    rng = _random.Random(5)
    out = []
    for k in range(400):
        pick = lambda: rng.choice(TRICKY)  # noqa: E731
        args = rng.choice([[pick(), pick()], {"path": pick(), "n": rng.randint(0, 9)}, pick(),
                           None, [], {}, {"nested": {"deep": [pick()]}}])
        p = lifecycle.new_proposal(mission=pick() or "M", type_=pick(), tool=pick(), args=args,
                                   rationale=pick(), created_by=pick())
        p.note = pick()
        p.risk = pick()
        p.status = rng.choice(list(Status))
        if k % 3 == 0:
            p.execution = {"exit_code": rng.randint(0, 2), "isolation": pick(),
                           "resources": {"cpu_s": 0.5, "note": pick()}, "argv": [pick()]}
            p.decision = {"rule": pick(), "digest": compute_digest("a", "b", args)}
        if k % 7 == 0:
            p.duplicate_of = pick()
        out.append((p.path, p.to_yaml()))
    return out


def test_fast_reader_agrees_with_pyyaml_on_what_the_dumper_writes():
    from janus_git.index import fast_columns
    fast = 0
    for path, text in _variants():
        row = fast_columns(path, text)
        if row is not None:
            fast += 1
            assert row == _slow(path, text), text.decode()
    assert fast > 50
    # what the agent writes every day takes the fast path
    from janus_git.proposal import compute_digest
    p = lifecycle.new_proposal(mission="STUDY-004-BETA", type_="process_chunk",
                               tool="process_chunk", args={"path": "missions/docs/x.md",
                                                           "chunk": 3},
                               rationale="Summarise chunk 3 of 13 of the chronicle: who "
                               "changed what, and why it mattered for the release after it. " * 3,
                               created_by="janus-agent <janus-agent@localhost>")
    p.status, p.risk, p.note = Status.SUCCEEDED, "low", "exit 0 in 1.2 s"
    p.decision = {"rule": "auto:beta-whitelist", "by": "janus-agent@localhost",
                  "digest": compute_digest("a", "b", []), "commit": "ab" * 20}
    p.execution = {"started_at": p.created_at, "ended_at": p.created_at, "exit_code": 0,
                   "limit_hit": None, "isolation": "bwrap", "output": "logs/runs/x.txt",
                   "resources": {"cpu_s": 0.12, "max_rss_mb": 31.5, "disk_write_mb": 0.0,
                                 "wall_s": 1.2}, "argv": ["python3", "-c", "x"]}
    row = fast_columns(p.path, p.to_yaml())
    assert row is not None and row == _slow(p.path, p.to_yaml())


def test_fast_reader_never_accepts_what_pyyaml_reads_differently():
    """Random edits (the kind a person or a bad merge makes) of dumped files: whenever the fast
    reader gives a row, PyYAML plus the validator give the same row."""
    import random as _random

    from mutate import edit

    from janus_git.index import fast_columns
    rng = _random.Random(11)
    base = _variants()
    checked = 0
    for _ in range(3000):
        path, text = rng.choice(base)
        s = edit(rng, text.decode())
        mutated = s.encode()
        row = fast_columns(path, mutated)
        if row is not None:
            checked += 1
            assert row == _slow(path, mutated), s
    assert checked > 200


def _counting(fn, calls):
    def wrapper(*a, **kw):
        calls.append(len(a[1]))
        return fn(*a, **kw)
    return wrapper


def test_a_big_rebuild_in_two_processes_gives_the_same_rows(sr, monkeypatch):
    from janus_git import index as index_mod
    for _ in range(5):
        _file(sr)
    _commit_raw(sr, "proposals/foo.yaml", "id: x\n")
    one = _rows_by_full_rebuild(sr)
    monkeypatch.setattr(index_mod, "PARALLEL_MIN", 2)
    helped: list[int] = []  # the parent's calls (the child's own are in another process)
    monkeypatch.setattr(index_mod, "_rows", _counting(index_mod._rows, helped))
    # the index forks only while this process has one thread; an earlier test's lingering
    # thread (a sandbox clean-up, say) makes it build all rows itself, which is also right
    forks = threading.active_count() == 1
    assert _rows_by_full_rebuild(sr) == one
    if forks:
        assert len(helped) == 1, "the parent made one half, the child the other"
    # a helper that dies leaves its half to the parent
    monkeypatch.setattr(index_mod, "_rows_child", lambda *a: os._exit(1))
    before = len(helped)
    assert _rows_by_full_rebuild(sr) == one
    if forks and threading.active_count() == 1:
        assert len(helped) - before == 2
    assert len(one) == 6


def test_the_unfiltered_list_cache_follows_head(sr):
    """`list --json` keeps one file per HEAD; a new commit must show up, a reset must not."""
    import json as _json
    first = _json.loads(sr.index.all_json())
    p = _file(sr)
    second = _json.loads(sr.index.all_json())
    assert [r["id"] for r in second] == [r["id"] for r in first] + [p.id]
    assert sr.index.all_json() == sr.index.query_json(raw=True, joined=True)
    git(sr.root, "reset", "-q", "--hard", "HEAD~1")
    assert [r["id"] for r in _json.loads(sr.index.all_json())] == [r["id"] for r in first]
