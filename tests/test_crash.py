"""kill -9 of the daemon at ten points of a run: no proposal lost, none run twice, fsck clean."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import git, within
from daemonkit import fsck_clean, propose, record, run_once, tool_use_lines, wait_for, wait_status

POINTS = ["after-catch-up", "mid-commit", "after-auto-approve", "before-running-commit",
          "after-running-commit", "tool-started", "before-result-commit", "after-result-commit"]


def _check_recovered(root, pid):
    for _ in range(2):
        done = run_once(root)
        assert done.returncode == 0, done.stderr
    rec = record(root, pid)
    assert rec, "the proposal was lost"
    runs = tool_use_lines(root, pid)
    assert len(runs) <= 1, "ran twice"
    if rec["status"] == "succeeded":
        assert len(runs) == 1
    else:
        assert rec["status"] == "interrupted", rec
    assert git(root, "status", "--porcelain").stdout == "", "the tree was left dirty"
    fsck_clean(root)
    return rec


@pytest.mark.parametrize("point", POINTS)
def test_kill9_at_each_point(state_dir, point):
    pid = propose(state_dir, "echo", "crash test")
    crashed = run_once(state_dir, env={"JANUS_GIT_CRASHPOINT": point})
    assert crashed.returncode == -signal.SIGKILL, (point, crashed.stderr)
    _check_recovered(state_dir, pid)


def test_kill9_during_recovery_of_an_interrupted_run(state_dir):
    pid = propose(state_dir, "echo", "crash twice")
    assert run_once(state_dir, env={"JANUS_GIT_CRASHPOINT": "tool-started"}).returncode == -9
    assert run_once(state_dir, env={"JANUS_GIT_CRASHPOINT": "after-interrupt"}).returncode == -9
    assert _check_recovered(state_dir, pid)["status"] == "interrupted"


def test_kill9_mid_tool_from_outside_kills_the_tool_too(state_dir):
    marker = "janus-crash-sleep-marker"
    pid = propose(state_dir, "-c", f"import time; time.sleep(120)  # {marker}",
                  tool="python", type_="maintenance")
    run_once(state_dir)
    git(state_dir, "commit", "-q", "--allow-empty", "-m", "noop")
    from daemonkit import set_status
    set_status(state_dir, pid, "approved")
    d = subprocess.Popen([sys.executable, "-m", "janus_git.cli", "daemon", str(state_dir),
                          "--no-think"], stderr=subprocess.DEVNULL, start_new_session=True)
    wait_status(state_dir, pid, "running")
    wait_for(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode
             == 0, 10, "the tool to be running")
    os.kill(d.pid, signal.SIGKILL)
    d.wait()
    # the sandbox dies with its parent (bwrap --die-with-parent): the tool goes within a
    # moment, never lingers
    wait_for(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode
             != 0, within(1.0), "the tool to die with the daemon")
    _check_recovered(state_dir, pid)


def test_kill9_inside_a_hygiene_batch_commit_leaves_nothing_stuck(state_dir):
    """The batch commit moves the branch before the working tree follows; a crash between
    must not leave files that look like a person's uncommitted edit."""
    from janus_git import lifecycle
    from janus_git.gitrepo import GitRepo
    repo = GitRepo(state_dir)
    ids = []
    for _ in range(30):  # one original and 29 duplicates: above the batch threshold
        p = lifecycle.new_proposal(mission="STUDY-004-BETA", type_="maintenance", tool="shell",
                                   args=["echo", "same"], rationale="r", created_by="agent")
        lifecycle.create(repo, p, None)
        ids.append(p.id)
    crashed = subprocess.run([sys.executable, "-m", "janus_git.cli", "hygiene", "-C",
                              str(state_dir)], capture_output=True, text=True,
                             env={**os.environ, "JANUS_GIT_CRASHPOINT": "hygiene-after-ref"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert git(state_dir, "status", "--porcelain").stdout != ""  # the tree lags behind HEAD
    assert run_once(state_dir).returncode == 0
    assert git(state_dir, "status", "--porcelain").stdout == ""
    statuses = [record(state_dir, pid)["status"] for pid in ids]
    assert statuses.count("duplicate") == 29
    fsck_clean(state_dir)


def test_a_lock_left_by_kill9_is_cleared_by_the_next_command_not_only_the_daemon(state_dir):
    """kill -9 while the commit engine holds git's index.lock: the lock names the dead
    process, so a person's next janus-git command puts right what it left and goes on; it
    neither waits out the lock nor needs a daemon start first."""
    from janus_git import lifecycle
    from janus_git.gitrepo import GitRepo

    from daemonkit import propose
    repo = GitRepo(state_dir)
    for _ in range(30):  # a hygiene batch commit: one original and 29 duplicates
        p = lifecycle.new_proposal(mission="STUDY-004-BETA", type_="maintenance", tool="shell",
                                   args=["echo", "same"], rationale="r", created_by="agent")
        lifecycle.create(repo, p, None)
    crashed = subprocess.run([sys.executable, "-m", "janus_git.cli", "hygiene", "-C",
                              str(state_dir)], capture_output=True, text=True,
                             env={**os.environ, "JANUS_GIT_CRASHPOINT": "hygiene-after-ref"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert (state_dir / ".git" / "index.lock").read_bytes().startswith(b"janus-git ")
    pid = propose(state_dir, "echo", "after the crash")  # a person's command, no daemon
    assert record(state_dir, pid)["status"] == "proposed"
    assert not (state_dir / ".git" / "index.lock").exists()
    assert git(state_dir, "status", "--porcelain").stdout == ""
    fsck_clean(state_dir)
