"""A refused push made again on the remote's new tip (janus_git/daemon/remote/replay.py),
against a real bare repository and real clones: only when nothing the commit changed moved
meanwhile, and never past a change to the rules; the append-only audit log is joined, not
overwritten; a kill -9 between the push and the branch's move leaves a clone the next fetch
brings level."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from janus_git.errors import Conflict
from janus_git.gitrepo import GitRepo

from conftest import git
from remotekit import GitPublisher, clone, make_bare, seed_remote

X = "proposals/2026/11/20261130-000000000-aaaaaa.yaml"
Y = "proposals/2026/11/20261130-000000000-bbbbbb.yaml"
AUDIT = "logs/tool_use.jsonl"


@pytest.fixture
def two_clones(state_dir, tmp_path):
    """A bare remote seeded with X, Y and an audit log; MINE (publishing through git) and
    OTHER, each a clone of it."""
    for path, text in ((X, "id: x\nstatus: approved\n"), (Y, "id: y\nstatus: approved\n"),
                       (AUDIT, '{"line": "base"}\n')):
        (state_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (state_dir / path).write_text(text)
    git(state_dir, "add", "-f", X, Y, AUDIT)
    git(state_dir, "commit", "-qm", "seed")
    bare = make_bare(tmp_path / "remote.git")
    seed_remote(str(bare), state_dir)
    mine, other = clone(str(bare), tmp_path / "mine"), clone(str(bare), tmp_path / "other")
    yield mine, other, bare, GitPublisher(mine)


def published(mine, publisher) -> GitRepo:
    """Our clone's repository, its commits going through PUBLISHER (as remote mode's)."""
    repo = GitRepo(mine)
    repo.publisher = publisher
    return repo


def land(root: Path, changes: dict[str, str], message: str = "other") -> str:
    for path, text in changes.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    git(root, "add", "-f", *changes)
    git(root, "commit", "-qm", message)
    git(root, "push", "-q", "origin", "HEAD:main")
    return git(root, "rev-parse", "HEAD").stdout.strip()


def remote_file(bare: Path, path: str) -> str:
    return git(bare, "show", f"main:{path}").stdout


def test_a_refused_push_lands_on_the_new_tip_when_only_other_files_moved(two_clones):
    mine, other, bare, publisher = two_clones
    theirs = land(other, {Y: "id: y\nstatus: running\n",
                          AUDIT: '{"line": "base"}\n{"line": "theirs"}\n'})
    repo = published(mine, publisher)
    sha = repo.commit_files({X: b"id: x\nstatus: running\n",
                             AUDIT: b'{"line": "base"}\n{"line": "ours"}\n'}, "ours\n")
    assert publisher.refused == 1 and publisher.replays == 1
    assert git(bare, "rev-parse", "main").stdout.strip() == sha == repo.head()
    assert git(mine, "rev-parse", f"{sha}^").stdout.strip() == theirs  # on top of theirs
    assert remote_file(bare, X) == "id: x\nstatus: running\n"
    assert remote_file(bare, Y) == "id: y\nstatus: running\n"  # theirs kept
    # the audit log is append-only: their line, then ours, nothing lost
    assert remote_file(bare, AUDIT) == '{"line": "base"}\n{"line": "theirs"}\n{"line": "ours"}\n'
    # the clone follows: index and working tree are the landed commit's, nothing left over
    assert git(mine, "status", "--porcelain").stdout == ""
    assert (mine / Y).read_text() == "id: y\nstatus: running\n"
    assert (mine / AUDIT).read_text().endswith('{"line": "ours"}\n')


def test_a_file_someone_else_changed_is_not_passed_over_and_is_named(two_clones):
    mine, other, bare, publisher = two_clones
    theirs = land(other, {X: "id: x\nstatus: rejected\n"})  # a person's edit of the same one
    repo = published(mine, publisher)
    before = repo.head()
    with pytest.raises(Conflict) as refused:
        repo.commit_files({X: b"id: x\nstatus: running\n"}, "ours\n")
    assert refused.value.paths == {X}  # the caller may drop that claim and go again
    assert git(bare, "rev-parse", "main").stdout.strip() == theirs  # the person's change won
    assert repo.head() == before and (mine / X).read_text() == "id: x\nstatus: approved\n"
    assert git(mine, "status", "--porcelain").stdout == ""
    assert publisher.replays == 0


@pytest.mark.parametrize("path", ["state/agent.yaml", "state/STOP", "missions/TEST.yaml"])
def test_a_change_to_the_rules_or_the_stop_is_never_passed_over(two_clones, path):
    mine, other, bare, publisher = two_clones
    land(other, {path: "changed: by someone\n"})
    repo = published(mine, publisher)
    with pytest.raises(Conflict) as refused:
        repo.commit_files({X: b"id: x\nstatus: running\n"}, "ours\n")
    assert refused.value.paths == frozenset()  # read everything again, decide again
    assert publisher.replays == 0
    assert remote_file(bare, X) == "id: x\nstatus: approved\n"


def test_a_stop_committed_and_removed_meanwhile_is_still_not_passed_over(two_clones):
    """A pusher who is no approver commits state/STOP and then removes it (or anyone does
    both): the net difference is nothing, yet a commit under the rules' paths went by."""
    mine, other, bare, publisher = two_clones
    land(other, {"state/STOP": "reason: by someone\n"}, "stop")
    git(other, "rm", "-q", "state/STOP")
    git(other, "commit", "-qm", "resume")
    git(other, "push", "-q", "origin", "HEAD:main")
    repo = published(mine, publisher)
    with pytest.raises(Conflict) as refused:
        repo.commit_files({X: b"id: x\nstatus: running\n"}, "ours\n")
    assert refused.value.paths == frozenset() and publisher.replays == 0
    assert remote_file(bare, X) == "id: x\nstatus: approved\n"


def test_a_merge_that_brings_in_a_rules_change_is_not_passed_over(two_clones):
    mine, other, bare, publisher = two_clones
    base = git(other, "rev-parse", "HEAD").stdout.strip()
    git(other, "checkout", "-q", "-b", "side")
    land_local = {"state/agent.yaml": "changed: on a side branch\n"}
    for path, text in land_local.items():
        (other / path).write_text(text)
    git(other, "commit", "-qam", "side")
    git(other, "checkout", "-q", "main")
    (other / Y).write_text("id: y\nstatus: running\n")
    git(other, "commit", "-qam", "main side")
    git(other, "merge", "-q", "--no-edit", "side")
    git(other, "push", "-q", "origin", "HEAD:main")
    assert base != git(other, "rev-parse", "HEAD").stdout.strip()
    with pytest.raises(Conflict):
        published(mine, publisher).commit_files({X: b"id: x\nstatus: running\n"}, "ours\n")
    assert publisher.replays == 0


def test_an_audit_log_that_ours_does_not_extend_is_refused(two_clones):
    mine, other, bare, publisher = two_clones
    land(other, {AUDIT: '{"line": "base"}\n{"line": "theirs"}\n'})
    with pytest.raises(Conflict):
        published(mine, publisher).commit_files({AUDIT: b'{"line": "rewritten"}\n'}, "ours\n")
    assert remote_file(bare, AUDIT) == '{"line": "base"}\n{"line": "theirs"}\n'


CRASH = """
import sys
sys.path.insert(0, {tests!r})
from janus_git.gitrepo import GitRepo
from remotekit import GitPublisher
repo = GitRepo({mine!r})
repo.publisher = GitPublisher(repo.root)
repo.commit_files({{{x!r}: b"id: x\\nstatus: running\\n",
                    {audit!r}: b'{{"line": "base"}}\\n{{"line": "ours"}}\\n'}}, "ours\\n")
"""


@pytest.mark.parametrize("point", ["after-push", "replay-catch-up"])
def test_a_kill_after_a_replayed_push_leaves_a_clone_the_next_fetch_levels(two_clones, point):
    mine, other, bare, _ = two_clones
    land(other, {Y: "id: y\nstatus: running\n",
                 AUDIT: '{"line": "base"}\n{"line": "theirs"}\n'})
    old = git(mine, "rev-parse", "HEAD").stdout.strip()
    script = CRASH.format(tests=str(Path(__file__).parent), mine=str(mine), x=X, audit=AUDIT)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "JANUS_GIT_CRASHPOINT": point})
    assert proc.returncode == -9, proc.stderr  # killed there, as kill -9 would
    landed = git(bare, "rev-parse", "main").stdout.strip()
    assert git(mine, "rev-parse", "HEAD").stdout.strip() == old  # the branch never moved
    # what the daemon's next start does: put back its journaled writes, fetch, fast-forward
    repo = GitRepo(mine)
    repo.recover_intents()
    repo.fetch("origin", ["+refs/heads/main:refs/remotes/origin/main"])
    repo.fast_forward("origin/main")
    assert repo.head() == landed
    assert git(mine, "status", "--porcelain").stdout == ""
    assert (mine / X).read_text() == "id: x\nstatus: running\n"
    assert (mine / AUDIT).read_text() == ('{"line": "base"}\n{"line": "theirs"}\n'
                                          '{"line": "ours"}\n')
    git(mine, "fsck", "--no-dangling")
