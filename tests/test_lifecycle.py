"""lifecycle: one transition, one commit, the right author and trailers; listeners; guards."""
from __future__ import annotations

import pytest

from janus_git import lifecycle
from janus_git.errors import Conflict, TransitionError
from janus_git.gitrepo import Identity
from janus_git.proposal import Status, parse_proposal

from conftest import AGENT, ALICE, git

S = Status
AGENT_ID = Identity(*AGENT)


def _new(sr, **kw):
    p = lifecycle.new_proposal(mission="STUDY-002-BETA", type_="analysis", tool="shell",
                               args=["ls", "-la"], rationale="look around",
                               created_by=f"{AGENT[0]} <{AGENT[1]}>", **kw)
    lifecycle.create(sr.repo, p, AGENT_ID)
    return p


def _trailers(root, rng):
    out = git(root, "log", "--format=%H%x1f%an%x1f%(trailers:key=Janus-Proposal,valueonly)"
              "%x1f%(trailers:key=Janus-Transition,valueonly)%x1e", rng).stdout
    rows = []
    for rec in out.split("\x1e"):
        if rec.strip():
            sha, an, pid, tr = rec.strip("\n").split("\x1f")
            rows.append((an, pid.strip(), tr.strip()))
    return list(reversed(rows))


def test_a_whole_life_is_one_commit_per_transition(sr):
    start = sr.repo.head()
    p = _new(sr)
    path = p.path
    text = (sr.root / path).read_bytes()
    for new in (S.APPROVED, S.RUNNING, S.SUCCEEDED, S.REVERTED):
        lifecycle.transition(sr.repo, p, new, AGENT_ID, base_text=text)
        text = (sr.root / path).read_bytes()
    assert _trailers(sr.root, f"{start}..HEAD") == [
        (AGENT[0], p.id, "new -> proposed"),
        (AGENT[0], p.id, "proposed -> approved"),
        (AGENT[0], p.id, "approved -> running"),
        (AGENT[0], p.id, "running -> succeeded"),
        (AGENT[0], p.id, "succeeded -> reverted"),
    ]
    # the file's history *is* its git log
    assert len(sr.repo.file_history(path)) == 5
    assert git(sr.root, "status", "--porcelain").stdout == ""


def test_person_commits_with_their_own_identity(sr):
    p = _new(sr)
    lifecycle.transition(sr.repo, p, S.REJECTED, None, reason="not now")
    info = sr.repo.commit_info("HEAD")
    assert (info.author_name, info.author_email) == ALICE
    assert info.trailers() == {"Janus-Proposal": p.id, "Janus-Transition": "proposed -> rejected"}
    assert "not now" in info.body
    assert parse_proposal((sr.root / p.path).read_bytes(), p.path).note == "not now"


def test_update_and_extra_files_land_in_the_same_commit(sr):
    p = _new(sr)
    before = sr.repo.head()

    def update(q):
        q.execution = {"exit_code": 0, "output": f"logs/runs/{q.id}.txt"}

    lifecycle.transition(sr.repo, p, S.APPROVED, AGENT_ID)
    lifecycle.transition(sr.repo, p, S.RUNNING, AGENT_ID)
    sha = lifecycle.transition(sr.repo, p, S.SUCCEEDED, AGENT_ID, update=update,
                               extra_files={f"logs/runs/{p.id}.txt": b"hello\n"})
    changed = git(sr.root, "diff-tree", "--no-commit-id", "--name-only", "-r", sha).stdout.split()
    assert sorted(changed) == sorted([p.path, f"logs/runs/{p.id}.txt"])
    assert len(git(sr.root, "rev-list", f"{before}..HEAD").stdout.split()) == 3
    stored = sr.store.read(p.id)
    assert stored.status is S.SUCCEEDED and stored.execution["exit_code"] == 0


def test_listeners_hear_each_transition_once_and_cannot_break_it(sr):
    heard = []

    def good(p, old, new, sha):
        heard.append((p.id, old, new, sha))

    def bad(p, old, new, sha):
        raise RuntimeError("a broken notifier")

    sr.repo.transitions.connect(bad)
    sr.repo.transitions.connect(good)
    try:
        p = _new(sr)
        sha = lifecycle.transition(sr.repo, p, S.APPROVED, AGENT_ID)
    finally:
        sr.repo.transitions.disconnect(bad)
        sr.repo.transitions.disconnect(good)
    assert heard[0][1:3] == (None, S.PROPOSED)
    assert heard[1] == (p.id, S.PROPOSED, S.APPROVED, sha)
    assert len(heard) == 2
    lifecycle.transition(sr.repo, p, S.RUNNING, AGENT_ID)
    assert len(heard) == 2, "unsubscribed"


def test_each_repository_has_its_own_listeners(sr, tmp_path):
    """Two daemons in one process (tests, a fleet on one host) never hear each other's."""
    from janus_git.gitrepo import GitRepo
    other, heard = GitRepo(sr.root), []
    other.transitions.connect(lambda *a: heard.append(a))
    lifecycle.transition(sr.repo, _new(sr), S.APPROVED, AGENT_ID)
    assert heard == []
    lifecycle.transition(other, _new(sr), S.APPROVED, AGENT_ID)
    assert [a[2] for a in heard] == [S.APPROVED]
    other.close()


def test_refused_transition_publishes_nothing(sr):
    heard = []
    fn = sr.repo.transitions.connect(lambda *a: heard.append(a))
    try:
        p = _new(sr)
        with pytest.raises(TransitionError):
            lifecycle.transition(sr.repo, p, S.SUCCEEDED, AGENT_ID)
    finally:
        sr.repo.transitions.disconnect(fn)
    assert len(heard) == 1  # only the creation


def test_a_persons_uncommitted_edit_of_the_same_file_is_never_overwritten(sr):
    p = _new(sr)
    committed = (sr.root / p.path).read_bytes()
    mine = committed.replace(b"rationale: look around", b"rationale: my own words")
    (sr.root / p.path).write_bytes(mine)
    head = sr.repo.head()
    with pytest.raises(Conflict, match="uncommitted changes"):
        lifecycle.transition(sr.repo, p, S.APPROVED, AGENT_ID, base_text=committed)
    assert sr.repo.head() == head
    assert (sr.root / p.path).read_bytes() == mine


def test_a_conflict_leaves_the_record_unchanged(sr):
    p = _new(sr)
    committed = (sr.root / p.path).read_bytes()
    (sr.root / p.path).write_bytes(committed + b"# a person typing\n")
    with pytest.raises(Conflict):
        lifecycle.transition(sr.repo, p, S.APPROVED, AGENT_ID, base_text=committed)
    assert p.status is S.PROPOSED


def test_create_refuses_to_overwrite_an_existing_file(sr):
    p = _new(sr)
    head = sr.repo.head()
    p2 = lifecycle.new_proposal(mission="M", type_="analysis", tool="shell", args=[],
                                rationale="same id", created_by="x", pid=p.id)
    with pytest.raises(Conflict):
        lifecycle.create(sr.repo, p2, AGENT_ID)
    assert sr.repo.head() == head


def test_restore_is_a_correction_not_a_transition(sr):
    p = _new(sr)
    # a person sets `succeeded` by hand, which nobody may do
    sr.repo.commit_files({p.path: p.to_yaml().replace(b"status: proposed",
                                                      b"status: succeeded")}, "by hand\n")
    shown = sr.store.read(p.id)
    assert shown.status is S.SUCCEEDED
    lifecycle.restore(sr.repo, shown, S.PROPOSED, AGENT_ID, reason="nobody may set succeeded")
    info = sr.repo.commit_info("HEAD")
    assert info.trailers() == {"Janus-Proposal": p.id, "Janus-Correction": "succeeded -> proposed"}
    assert "Janus-Transition" not in info.body
    assert sr.store.read(p.id).status is S.PROPOSED


def test_transition_many_is_one_commit_checked_and_published(sr):
    ps = [_new(sr) for _ in range(3)]
    heard = []

    def listen(p, old, new, sha):
        heard.append((p.id, old, new, p.duplicate_of, sha))
    sr.repo.transitions.connect(listen)
    try:
        head = sr.repo.head()
        moves = [(lifecycle.Move(p.id, p.path, S.DUPLICATE, "same", duplicate_of=ps[0].id),
                  (sr.root / p.path).read_bytes()) for p in ps[1:]]
        gone = lifecycle.Move("x", "proposals/none.yaml", S.ARCHIVED, "old")
        sha, n = lifecycle.transition_many(sr.repo, [*moves, (gone, b"")], AGENT_ID,
                                           subject="janus: test: {n} moved",
                                           trailers={"Janus-Batch": "{n}"})
    finally:
        sr.repo.transitions.disconnect(listen)
    c = sr.repo.commit_info("HEAD")
    assert n == 2 and c.sha == sha and c.parents == [head] and c.author_name == AGENT[0]
    assert sr.repo.agent_key() is None or sha in sr.repo.made  # signed as the agent
    assert c.subject == "janus: test: 2 moved" and c.trailers()["Janus-Batch"] == "2"
    assert heard == [(p.id, S.PROPOSED, S.DUPLICATE, ps[0].id, sha) for p in ps[1:]]
    assert parse_proposal((sr.root / ps[2].path).read_bytes(), ps[2].path).status == S.DUPLICATE
    assert git(sr.root, "status", "--porcelain").stdout == ""
    with pytest.raises(TransitionError):  # only a proposed proposal moves in a batch
        lifecycle.transition_many(sr.repo, [(lifecycle.Move(ps[0].id, ps[0].path, S.SUCCEEDED,
                                                            "no"), b"x")], AGENT_ID,
                                  subject="s", trailers={})
    assert sr.repo.head() == sha


def test_offer_approval_writes_approved_on_a_side_commit_only(sr):
    p = _new(sr)
    head, heard = sr.repo.head(), []

    def listen(q, old, new, sha):
        heard.append(q.id)
    sr.repo.transitions.connect(listen)
    try:
        sha = lifecycle.offer_approval(sr.repo, p, AGENT_ID, f"janus/proposal/{p.id}")
    finally:
        sr.repo.transitions.disconnect(listen)
    assert heard == [] and sr.repo.head() == head and p.status == S.PROPOSED
    shown = parse_proposal(sr.repo.read_blob(sha, p.path), p.path)
    assert shown.status == S.APPROVED and sr.repo.commit_info(sha).parents == [head]
    assert sr.repo.commit_info(sha).trailers()["Janus-Approval-Branch"] == \
        f"janus/proposal/{p.id}"
