"""The daemon on a real repository: approvals, policy, rollback, stop.  Most cases drive it in
this process until idle (`burst`, as rq's work(burst=True)); the live paths (the watchdog,
signals, the stop's timing, one daemon per repository, bad input) run a real process."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import AGENT, ALICE, MALLORY, configure, git, within
from daemonkit import (
    DaemonProcess,
    burst,
    fsck_clean,
    person_commits,
    propose,
    record,
    run_once,
    set_status,
    status,
    wait_for,
    wait_read,
    wait_status,
)

MANUAL = "maintenance"  # a type that is not on the auto-exec whitelist


def test_whitelisted_work_runs_with_no_human(state_dir):
    with DaemonProcess(state_dir):
        pid = propose(state_dir, "echo", "hello from beta")
        rec = wait_status(state_dir, pid, "succeeded")
    assert rec["decision"]["rule"] == "auto:beta:analysis:shell"
    assert rec["risk"] == "low"
    out = (state_dir / rec["execution"]["output"]).read_text()
    assert "hello from beta" in out
    subjects = git(state_dir, "log", "--format=%(trailers:key=Janus-Transition,valueonly)",
                   "--", rec_path(pid)).stdout.split()
    assert " ".join(subjects).count("->") == 4  # new->proposed->approved->running->succeeded
    fsck_clean(state_dir)


def rec_path(pid: str) -> str:
    return f"proposals/{pid[0:4]}/{pid[4:6]}/{pid}.yaml"


def branch_exists(root, pid: str) -> bool:
    return git(root, "rev-parse", "-q", "--verify", f"refs/heads/janus/proposal/{pid}",
               check=False).returncode == 0


def test_manual_proposal_waits_then_runs_on_approvers_commit(state_dir):
    pid = propose(state_dir, "echo", "manual", type_=MANUAL)
    assert burst(state_dir) == 0
    assert branch_exists(state_dir, pid)
    assert status(state_dir, pid) == "proposed"
    approval = set_status(state_dir, pid, "approved")
    assert burst(state_dir) == 0
    rec = record(state_dir, pid)
    assert rec["status"] == "succeeded"
    assert not branch_exists(state_dir, pid)  # the offer goes once the run starts
    assert rec["decision"]["rule"] == "human"
    assert rec["decision"]["by"] == ALICE[1]
    assert rec["decision"]["commit"] == approval


@pytest.mark.parametrize("who,why", [(MALLORY, "not in approvers"),
                                     (AGENT, "agent's own identity")])
def test_approval_by_wrong_identity_is_refused_and_says_why(state_dir, who, why):
    pid = propose(state_dir, "echo", "x", type_=MANUAL)
    set_status(state_dir, pid, "approved", who=who)
    burst(state_dir)
    rec = record(state_dir, pid)
    assert rec["status"] == "proposed" and "refused" in rec["note"]
    assert why in rec["note"]
    assert not rec["execution"]


def test_edit_after_approval_voids_it(state_dir):
    pid = propose(state_dir, "echo", "original", type_=MANUAL)
    burst(state_dir)
    set_status(state_dir, pid, "approved")
    set_status(state_dir, pid, "approved", args=["echo", "swapped"])  # edited after approval
    burst(state_dir)
    rec = record(state_dir, pid)
    assert rec["status"] == "proposed"
    assert "changed what was filed" in rec["note"] and "swapped" in rec["note"]
    assert rec["args"] == ["echo", "original"]  # put back as filed
    assert not rec["execution"]


def test_approval_that_changes_args_is_refused(state_dir):
    pid = propose(state_dir, "echo", "original", type_=MANUAL)
    set_status(state_dir, pid, "approved", args=["echo", "other"])
    burst(state_dir)
    rec = record(state_dir, pid)
    assert rec["status"] == "proposed" and "changed what was filed" in rec["note"]
    assert rec["args"] == ["echo", "original"]


def test_merge_of_the_approval_branch_approves_but_fast_forward_does_not(state_dir):
    a = propose(state_dir, "echo", "merged", type_=MANUAL)
    b = propose(state_dir, "echo", "fast-forwarded", type_=MANUAL)
    burst(state_dir)
    # b's branch was made on the current HEAD (a's on the one before): it can fast-forward
    git(state_dir, "merge", "--ff-only", "-q", f"janus/proposal/{b}", who=ALICE)
    assert status(state_dir, b) == "approved"  # the agent's own commit landed as it is
    burst(state_dir)
    rec = record(state_dir, b)
    assert rec["status"] == "proposed" and "fast-forward" in rec["note"]
    git(state_dir, "merge", "--no-ff", "-q", "-m", "approve a", f"janus/proposal/{a}",
        who=ALICE)
    burst(state_dir)
    assert record(state_dir, a)["status"] == "succeeded"


def test_revert_of_result_marks_reverted_restores_files_and_never_reruns(state_dir):
    pid = propose(state_dir, "echo", "to be reverted")
    burst(state_dir)
    rec = record(state_dir, pid)
    assert rec["status"] == "succeeded"
    out = rec["execution"]["output"]
    result_commit = git(state_dir, "log", "-1", "--format=%H", "--", out).stdout.strip()
    git(state_dir, "revert", "--no-edit", result_commit, who=ALICE)
    assert not (state_dir / out).exists()
    burst(state_dir)
    rec = record(state_dir, pid)
    assert rec["status"] == "reverted"
    burst(state_dir)
    assert record(state_dir, pid)["status"] == "reverted"
    assert not (state_dir / out).exists()
    fsck_clean(state_dir)


def test_revert_of_approval_before_run_returns_to_proposed(state_dir):
    pid = propose(state_dir, "echo", "x", type_=MANUAL)
    burst(state_dir)
    approval = set_status(state_dir, pid, "approved")
    git(state_dir, "revert", "--no-edit", approval, who=ALICE)
    burst(state_dir)
    rec = record(state_dir, pid)
    assert rec["status"] == "proposed" and not rec["execution"]


def test_human_cannot_set_succeeded_by_hand(state_dir):
    pid = propose(state_dir, "echo", "x", type_=MANUAL)
    burst(state_dir)
    set_status(state_dir, pid, "succeeded")
    burst(state_dir)
    rec = record(state_dir, pid)
    assert rec["status"] == "proposed" and "only the daemon" in rec["note"]


def test_alpha_mode_leaves_everything_manual(state_dir):
    configure(state_dir, mode="alpha")
    pid = propose(state_dir, "echo", "x")
    burst(state_dir)
    assert status(state_dir, pid) == "proposed"


def test_unknown_tool_and_hostile_args_are_rejected_with_reason(state_dir):
    from janus_git import lifecycle
    from janus_git.gitrepo import GitRepo
    bad = propose(state_dir, "ls;", "rm", "-rf", "/")
    ghost = lifecycle.new_proposal(mission="TEST", type_="analysis", tool="teleport",
                                   args=["now"], rationale="hand-written", created_by="alice")
    lifecycle.create(GitRepo(state_dir), ghost, None)  # `propose` refuses it; a file need not
    burst(state_dir)
    rec = record(state_dir, bad)
    assert rec["status"] == "rejected" and ";" in rec["note"]
    rec = record(state_dir, ghost.id)
    assert rec["status"] == "rejected" and "teleport" in rec["note"]


# -- signatures --------------------------------------------------------------------------------
def _keys(tmp: Path) -> tuple[Path, Path]:
    alice, mallory = tmp / "alice", tmp / "mallory"
    for k in (alice, mallory):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
    return alice, mallory


def test_signed_approvals(state_dir, tmp_path):
    alice_key, mallory_key = _keys(tmp_path)
    signers = state_dir / "state" / "allowed_signers"
    signers.write_text(f"{ALICE[1]} {Path(str(alice_key) + '.pub').read_text()}")
    git(state_dir, "add", "state/allowed_signers")
    git(state_dir, "commit", "-qm", "signers", who=ALICE)
    configure(state_dir, require_signed_approvals=True)
    good = propose(state_dir, "echo", "good", type_=MANUAL)
    unsigned = propose(state_dir, "echo", "unsigned", type_=MANUAL)
    forged = propose(state_dir, "echo", "forged", type_=MANUAL)
    burst(state_dir)
    set_status(state_dir, good, "approved", sign_key=alice_key)
    set_status(state_dir, unsigned, "approved")
    set_status(state_dir, forged, "approved", sign_key=mallory_key)  # Alice's e-mail, wrong key
    burst(state_dir)
    assert status(state_dir, good) == "succeeded"
    for pid in (unsigned, forged):
        rec = record(state_dir, pid)
        assert rec["status"] == "proposed", pid
        assert "signed approvals are required" in rec["note"]


# -- emergency stop ----------------------------------------------------------------------------
def test_stop_kills_running_suspends_queued_and_resume_lifts_it(state_dir):
    configure(state_dir, controls={"tick_hz": 10, "max_starts_per_second": 10})
    with DaemonProcess(state_dir) as d:
        slow = propose(state_dir, "-c", "import time; time.sleep(60)", tool="python",
                       type_=MANUAL)
        wait_for(lambda: git(state_dir, "rev-parse", "-q", "--verify",
                             f"refs/heads/janus/proposal/{slow}", check=False).returncode == 0)
        set_status(state_dir, slow, "approved")
        wait_status(state_dir, slow, "running")
        queued = propose(state_dir, "echo", "queued behind the slow one")
        wait_status(state_dir, queued, "approved")
        t0 = time.monotonic()
        out = subprocess.run(["janus-git", "stop", "-C", str(state_dir), "--reason", "test"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        wait_status(state_dir, slow, "interrupted", timeout=10)
        assert time.monotonic() - t0 < within(5)
        wait_status(state_dir, queued, "suspended")
        late = propose(state_dir, "echo", "filed during the stop")
        wait_read(state_dir)  # read and decided (or not) by now
        assert status(state_dir, late) == "proposed"
        assert d.alive()
        subprocess.run(["janus-git", "resume", "-C", str(state_dir)], check=True)
        wait_status(state_dir, late, "succeeded")
        wait_status(state_dir, queued, "succeeded")
    assert record(state_dir, slow)["status"] == "interrupted"


def test_stop_dry_run_changes_nothing(state_dir):
    head = git(state_dir, "rev-parse", "HEAD").stdout
    out = subprocess.run(["janus-git", "stop", "--dry-run", "-C", str(state_dir)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "DRY RUN" in out.stdout
    assert git(state_dir, "rev-parse", "HEAD").stdout == head
    assert not (state_dir / "state" / "STOP").exists()


def test_revert_of_stop_commit_resumes(state_dir):
    subprocess.run(["janus-git", "stop", "-C", str(state_dir)], check=True)
    pid = propose(state_dir, "echo", "x")
    burst(state_dir)
    assert status(state_dir, pid) == "proposed"
    stop_commit = git(state_dir, "log", "-1", "--format=%H", "--", "state/STOP").stdout.strip()
    git(state_dir, "revert", "--no-edit", stop_commit, who=ALICE)
    burst(state_dir)
    assert status(state_dir, pid) == "succeeded"


def test_sigterm_exits_cleanly_and_one_daemon_per_repo(state_dir):
    d = DaemonProcess(state_dir).wait_ready()
    second = run_once(state_dir)
    assert second.returncode == 1 and "another janus-git daemon" in second.stderr
    st = subprocess.run(["janus-git", "status", "-C", str(state_dir), "--json"],
                        capture_output=True, text=True, check=True)
    assert f'"pid": {d.proc.pid}' in st.stdout
    assert d.stop() == 0


def by_hand(root, tool, args, type_="analysis"):
    """File a proposal with the library (the CLI refuses while agent.yaml is broken)."""
    from janus_git import lifecycle
    from janus_git.gitrepo import GitRepo
    p = lifecycle.new_proposal(mission="TEST", type_=type_, tool=tool, args=args,
                               rationale="by hand", created_by="alice")
    lifecycle.create(GitRepo(root), p, None)
    return p.id


# -- bad input ---------------------------------------------------------------------------------
def test_bad_input_keeps_the_daemon_alive(state_dir):
    with DaemonProcess(state_dir) as d:
        broken = propose(state_dir, "echo", "to be broken", type_=MANUAL)
        path = state_dir / rec_path(broken)
        wait_for(lambda: git(state_dir, "rev-parse", "-q", "--verify",
                             f"refs/heads/janus/proposal/{broken}", check=False).returncode == 0)
        path.write_text("status: [approved\n  <<<<<<< HEAD\n")  # conflict markers, bad YAML
        git(state_dir, "commit", "-qam", "oops", who=ALICE)
        (state_dir / "state" / "agent.yaml").write_text("mode: [beta\n")
        git(state_dir, "commit", "-qam", "broken config", who=ALICE)
        unknown = by_hand(state_dir, "teleport", ["now"])
        deleted = by_hand(state_dir, "shell", ["echo", "deleted"], type_=MANUAL)
        (state_dir / rec_path(deleted)).unlink()
        person_commits(state_dir, "delete a proposal", rec_path(deleted))
        (state_dir / "proposals" / "stray.yaml").write_text("id: nope\n")
        person_commits(state_dir, "stray", "proposals/stray.yaml")
        after = by_hand(state_dir, "shell", ["echo", "still alive"])
        wait_status(state_dir, after, "succeeded")
        wait_status(state_dir, unknown, "rejected")
        assert d.alive()
    log = d.text()
    assert "not valid YAML" in log
    listed = subprocess.run(["janus-git", "list", "-C", str(state_dir), "--json"],
                            capture_output=True, text=True, check=True).stdout
    assert '"status": "invalid"' in listed and after in listed


def test_first_sigterm_finishes_the_run_second_aborts_it(state_dir):
    import signal as sig
    d = DaemonProcess(state_dir).wait_ready()
    pid = propose(state_dir, "-c", "import time; time.sleep(2); print('finished')",
                  tool="python", type_=MANUAL)
    wait_for(lambda: git(state_dir, "rev-parse", "-q", "--verify",
                         f"refs/heads/janus/proposal/{pid}", check=False).returncode == 0)
    set_status(state_dir, pid, "approved")
    wait_status(state_dir, pid, "running")
    d.proc.send_signal(sig.SIGTERM)
    assert d.proc.wait(20) == 0
    rec = record(state_dir, pid)
    assert rec["status"] == "succeeded", (rec, d.text())  # the step in hand was finished

    d = DaemonProcess(state_dir).wait_ready()
    slow = propose(state_dir, "-c", "import time; time.sleep(60)", tool="python", type_=MANUAL)
    wait_for(lambda: git(state_dir, "rev-parse", "-q", "--verify",
                         f"refs/heads/janus/proposal/{slow}", check=False).returncode == 0)
    set_status(state_dir, slow, "approved")
    wait_status(state_dir, slow, "running")
    d.proc.send_signal(sig.SIGTERM)
    wait_for(lambda: "finishing the current step" in d.log.read_text(), 10,
             "the first SIGTERM's acknowledgement")
    assert d.alive()
    d.proc.send_signal(sig.SIGTERM)
    assert d.proc.wait(20) == 0
    assert record(state_dir, slow)["status"] == "interrupted"


# -- in process, one step at a time --------------------------------------------------------------
def test_step_by_step(state_dir):
    from janus_git.daemon import Daemon
    pid = propose(state_dir, "echo", "one step at a time")
    with Daemon(state_dir, think=False) as d:
        assert d.state.activity == "idle" and not d.state.queue
        d.step()  # decided by the policy, approved and started
        assert pid in d.state.runs and status(state_dir, pid) == "running"
        d.executor.join()
        assert not d.idle()
        d.step()  # the result is committed, and read back
        assert d.idle() and d.state.activity == "idle"
    assert record(state_dir, pid)["status"] == "succeeded"
    assert d.state.activity == "exited"


def test_burst_leaves_no_thread_and_no_handler_behind(state_dir):
    import signal
    import threading
    before = set(threading.enumerate())
    handler = signal.getsignal(signal.SIGTERM)
    auto = propose(state_dir, "echo", "auto")
    manual = propose(state_dir, "echo", "manual", type_=MANUAL)
    assert burst(state_dir) == 0
    assert [status(state_dir, p) for p in (auto, manual)] == ["succeeded", "proposed"]
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert all(name.startswith("sandbox") for name in left), left  # the warm sandbox's own
    assert signal.getsignal(signal.SIGTERM) is handler


def test_one_daemon_per_repository_in_process(state_dir):
    from janus_git.daemon import Daemon
    from janus_git.errors import JanusError
    with Daemon(state_dir, think=False):
        with pytest.raises(JanusError, match="another janus-git daemon"):
            Daemon(state_dir, think=False).work(burst=True)
    assert burst(state_dir) == 0  # released on the way out
