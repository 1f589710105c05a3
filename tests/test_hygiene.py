"""Hygiene on a crafted state repository: dedupe, reject, archive, and the novelty index."""
from __future__ import annotations

import datetime as dt

from janus_git import hygiene, lifecycle, novelty
from janus_git.config import load_config
from janus_git.gitrepo import GitRepo
from janus_git.proposal import Status, new_id, parse_proposal
from janus_git.store import Store

from conftest import git

NOW = dt.datetime.now(dt.timezone.utc)


def file(repo, config, *, days_ago: float, args, tool="process_chunk", type_="process_chunk",
         mission="STUDY-004-BETA", status=Status.PROPOSED):
    when = NOW - dt.timedelta(days=days_ago)
    p = lifecycle.new_proposal(mission=mission, type_=type_, tool=tool, args=args,
                               rationale="crafted", created_by="test",
                               pid=new_id(when))
    p.created_at = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    p.status = status
    lifecycle.create(repo, p, config.identity)
    return p


def status_of(repo, p):
    return Store(repo).read(p.id)


def crafted(state_dir):
    repo, config = GitRepo(state_dir), load_config(state_dir)
    doc = "missions/docs/git-release-chronicle.txt"
    ps = {
        "orig": file(repo, config, days_ago=2, args={"path": doc, "chunk": 1}),
        # the same after normalisation: key order and whitespace differ
        "near": file(repo, config, days_ago=1, args={"chunk": 1, "path": f"  {doc} "}),
        "exact": file(repo, config, days_ago=0.5, args={"path": doc, "chunk": 1}),
        "old": file(repo, config, days_ago=40, args={"path": doc, "chunk": 2}),
        "gone_tool": file(repo, config, days_ago=1, args=["x"], tool="telnet"),
        "done_mission": file(repo, config, days_ago=1, args={"path": doc, "chunk": 3},
                             mission="OLD-1"),
        "ran": file(repo, config, days_ago=3, args={"path": doc, "chunk": 4},
                    status=Status.SUCCEEDED),
        "again": file(repo, config, days_ago=1, args={"path": doc, "chunk": 4}),
        # outside the 14-day window of its twin: not a duplicate, not old enough to archive
        "twin_old": file(repo, config, days_ago=25, args={"path": doc, "chunk": 5},
                         status=Status.FAILED),
        "twin_new": file(repo, config, days_ago=1, args={"path": doc, "chunk": 5}),
        "fresh": file(repo, config, days_ago=0, args={"path": doc, "chunk": 6}),
    }
    (state_dir / "missions/OLD-1.yaml").write_text(
        "id: OLD-1\ntitle: t\ngoal: g\nkind: k\nstatus: done\n"
        "budget: {min: 1, max: 1, unit: u}\n")
    git(state_dir, "add", "missions/OLD-1.yaml")
    git(state_dir, "commit", "-qm", "a finished mission")
    return repo, config, ps


def test_hygiene_counts_and_statuses(state_dir):
    repo, config, ps = crafted(state_dir)
    head = repo.head()
    dry = hygiene.hygiene(repo, config, dry_run=True)
    assert repo.head() == head
    assert {k: dry[k] for k in ("duplicate", "archived", "rejected")} == \
        {"duplicate": 3, "archived": 1, "rejected": 2}
    counts = hygiene.hygiene(repo, config)
    assert counts["scanned"] == 11 and counts["commits"] == 6
    got = {name: status_of(repo, p) for name, p in ps.items()}
    assert got["near"].status == got["exact"].status == Status.DUPLICATE
    assert got["near"].duplicate_of == got["exact"].duplicate_of == ps["orig"].id
    assert got["again"].duplicate_of == ps["ran"].id
    assert got["old"].status == Status.ARCHIVED
    assert got["gone_tool"].status == Status.REJECTED and "registry" in got["gone_tool"].note
    assert got["done_mission"].status == Status.REJECTED and "OLD-1 is done" in \
        got["done_mission"].note
    for name in ("orig", "twin_new", "fresh"):
        assert got[name].status == Status.PROPOSED, name
    # every change went through the lifecycle: one commit each, with trailers
    c = repo.commit_info("HEAD")
    assert c.trailers()["Janus-Transition"].startswith("proposed -> ")
    assert hygiene.hygiene(repo, config)["commits"] == 0  # idempotent


def test_a_reverted_creation_is_remembered_even_after_reindex(state_dir):
    repo, config = GitRepo(state_dir), load_config(state_dir)
    args = ["echo", "hello"]
    p = file(repo, config, days_ago=0, args=args, tool="shell", type_="analysis")
    index = novelty.NoveltyIndex(repo).sync()
    git(state_dir, "revert", "--no-edit", "HEAD")
    assert novelty.reindex(repo) == 0
    index = novelty.NoveltyIndex(repo).sync()
    again = lifecycle.new_proposal(mission="STUDY-004-BETA", type_="analysis", tool="shell",
                                   args=[" echo", "hello "], rationale="r", created_by="t")
    assert index.original_of(again, 14) == (p.id, "its creation was reverted")
    # and a copy someone files anyway becomes a duplicate naming the reverted one
    q = file(repo, config, days_ago=0, args=args, tool="shell", type_="analysis")
    hygiene.hygiene(repo, config)
    assert status_of(repo, q).status == Status.DUPLICATE
    assert status_of(repo, q).duplicate_of == p.id


def test_remember_deleted_and_incremental_sync(state_dir):
    repo, config = GitRepo(state_dir), load_config(state_dir)
    p = file(repo, config, days_ago=0, args=["ls"], tool="shell", type_="analysis")
    index = novelty.NoveltyIndex(repo).sync()
    assert len(index.rows) == 1
    novelty.remember_deleted(repo, p)
    assert novelty.NoveltyIndex(repo).sync().forgotten
    file(repo, config, days_ago=0, args=["pwd"], tool="shell", type_="analysis")
    assert len(novelty.NoveltyIndex(repo).sync().rows) == 2


def test_novelty_is_part_of_the_one_index_and_its_one_sync(state_dir, monkeypatch):
    from janus_git import index as index_mod
    repo, config = GitRepo(state_dir), load_config(state_dir)
    p = file(repo, config, days_ago=0, args=["ls"], tool="shell", type_="analysis")
    assert list(novelty.NoveltyIndex(repo).sync().rows) == [p.path]
    diffs = []
    real = index_mod.Index._apply_diff
    monkeypatch.setattr(index_mod.Index, "_apply_diff",
                        lambda self, *a: diffs.append(a) or real(self, *a))
    q = file(repo, config, days_ago=0, args=["pwd"], tool="shell", type_="analysis")
    assert sorted(novelty.NoveltyIndex(repo).sync().rows) == sorted([p.path, q.path])
    assert sorted(r["id"] for r in index_mod.Index(repo).query()) == sorted([p.id, q.id])
    assert len(diffs) == 1, "one diff-tree catch-up served novelty and the list"
    assert sorted(f.name for f in (state_dir / ".git" / "janus").glob("*.marshal")) == []


def test_deleted_proposals_are_found_again_after_the_index_is_lost(state_dir):
    repo, config = GitRepo(state_dir), load_config(state_dir)
    p = file(repo, config, days_ago=0, args=["echo", "x"], tool="shell", type_="analysis")
    git(state_dir, "revert", "--no-edit", "HEAD")
    for f in (state_dir / ".git" / "janus").glob("index.sqlite*"):
        f.unlink()
    index = novelty.NoveltyIndex(repo).sync()  # rebuilt; history is read when first asked
    assert index.index._meta(index.db, "deleted_scan") == "pending"
    assert index.forgotten == {novelty.novelty_digest("analysis", "shell", ["echo", "x"]):
                               p.id}
    assert index.index._meta(index.db, "deleted_scan") == "done"


def test_bulk_cleansing_uses_batch_commits(state_dir):
    repo, config = GitRepo(state_dir), load_config(state_dir)
    doc = "missions/docs/git-release-chronicle.txt"
    first = file(repo, config, days_ago=1, args={"path": doc, "chunk": 7})
    dups = [file(repo, config, days_ago=0.5, args={"path": doc, "chunk": 7})
            for _ in range(hygiene.BATCH_THRESHOLD + 5)]
    head = repo.head()
    counts = hygiene.hygiene(repo, config)
    assert counts["duplicate"] == len(dups) and counts["commits"] == 1
    c = repo.commit_info("HEAD")
    assert c.parents == [head] and c.trailers()["Janus-Hygiene"] == f"batch of {len(dups)}"
    assert c.body.count("proposed -> duplicate") == len(dups)
    assert all(status_of(repo, d).duplicate_of == first.id for d in dups)
    assert git(state_dir, "status", "--porcelain").stdout == ""


def test_the_index_novelty_digest_agrees_with_the_full_yaml_parse():
    """Hygiene's rows come from the one index: whichever reader read a file, its novelty
    digest is the one of the fully parsed proposal, and the common layouts read fast."""
    from janus_git import fastrow, index
    cases = [{"path": "docs/x.txt", "chunk": 3}, ["ls", "-la", "notes"], {"a": "yes"},
             {"a": "1:20"}, {"a": " x  y "}, {"t": "It's"}, [], {}, None, {"n": [1, 2]},
             "plain string", {"x": -5, "y": "0"}, ["007"], {"q": "a: b"}, {"k": "true"},
             {"w": "x # y"}, ["a", 12, "b c"], {"z": "10.5"}, {"e": ""}, {"u": "é ü"},
             {"o": "0o17"}, {"h": "0x1F"}, {"f": 1.5}, {"b": True}, {"d": "2026-01-01"}]
    fast = 0
    for args in cases:
        p = lifecycle.new_proposal(mission="M", type_="analysis", tool="shell", args=args,
                                   rationale="a long rationale " * 10, created_by="me <m@x>")
        text = p.to_yaml()
        full = parse_proposal(text, p.path)
        row = index.row_for(p.path, "b", text)
        assert row[-2] == novelty.novelty_digest(full.type, full.tool, full.args), args
        if fastrow.fast_proposal(p.path, text) is not None:
            assert fastrow.fast_proposal(p.path, text) == full, args
            fast += 1
    assert fast >= len(cases) - 1  # all but the plain non-ASCII string (é ü), read slowly


def test_the_in_place_edit_equals_a_full_rewrite():
    for args, new, dup in [({"path": "d.txt", "chunk": 2}, Status.DUPLICATE, "x-1"),
                           (["ls", "-la"], Status.ARCHIVED, None),
                           ({"q": "it's: \"quoted\" ü"}, Status.REJECTED, None)]:
        p = lifecycle.new_proposal(mission="M", type_="analysis", tool="shell", args=args,
                                   rationale="why " * 40, created_by="me <m@x>")
        p.note = "an old note"
        text = p.to_yaml()
        a = hygiene.Action(p.id, p.path, new, "reason: with \"quotes\" and ü", dup)
        got = parse_proposal(hygiene.edited(text, a), p.path)
        p.status, p.note, p.duplicate_of = new, a.reason, dup
        assert got == p
    gone = lifecycle.new_proposal(mission="M", type_="analysis", tool="shell", args=[],
                                  rationale="r", created_by="m")
    gone.status = Status.SUCCEEDED
    assert hygiene.edited(gone.to_yaml(), hygiene.Action(gone.id, gone.path,
                                                         Status.ARCHIVED, "old")) is None
