"""Trust cases that need a live daemon process: files that would kill or wedge it, commits it
must answer without a restart, the stop while its main loop is busy, a rewritten history.
The attacker pushes anything but is not an approver (tests/test_trust.py has the rest)."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml

from conftest import AGENT, MALLORY, configure, git, within
from daemonkit import (
    DaemonProcess,
    propose,
    record,
    run_once,
    set_status,
    status,
    tool_use_lines,
    wait_for,
    wait_status,
)

MANUAL = "maintenance"


def path_of(pid: str) -> str:
    return f"proposals/{pid[0:4]}/{pid[4:6]}/{pid}.yaml"


def commit_as(root: Path, who, message: str, files: dict[str, str | bytes | None],
              extra: tuple[str, ...] = ()) -> None:
    for rel, data in files.items():
        if data is None:
            git(root, "rm", "-q", "--", rel)
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data.encode() if isinstance(data, str) else data)
        git(root, "add", "--", rel)
    git(root, "commit", "-q", "-m", message, *extra, who=who)


def hostile_proposal(root: Path, args_yaml: str, **fields) -> tuple[str, str]:
    """A proposal file as a pusher writes it: valid but for ARGS_YAML (raw YAML)."""
    pid = f"20261129-1200{int(time.time() * 1000) % 100000:05d}-abcdef"
    head = {"id": pid, "mission": "TEST", "type": MANUAL, "tool": "python",
            "rationale": "hostile", "created_at": "2026-11-29T12:00:00Z",
            "created_by": "mallory", "digest": "sha256:" + "0" * 64, "status": "proposed",
            **fields}
    return pid, yaml.safe_dump(head, sort_keys=False) + f"args: {args_yaml}\n"


LAUGHS = ("{a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol], "
          + ", ".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]"
                      for p, c in zip("abcdefgh", "bcdefghi")) + "}")


def _still_serves(root: Path, d: DaemonProcess, marker: str) -> None:
    legit = propose(root, "-c", f"print({marker!r})", tool="python", type_=MANUAL)
    wait_for(lambda: git(root, "rev-parse", "-q", "--verify", f"refs/heads/janus/proposal/{legit}",
                         check=False).returncode == 0, 20, "the approval branch")
    set_status(root, legit, "approved")
    wait_status(root, legit, "succeeded", timeout=30)
    assert d.alive()


def test_billion_laughs_in_args_neither_wedges_nor_runs(state_dir):
    with DaemonProcess(state_dir) as d:
        pid, text = hostile_proposal(state_dir, LAUGHS, status="approved")
        t0 = time.monotonic()
        commit_as(state_dir, MALLORY, "laughs", {path_of(pid): text})
        _still_serves(state_dir, d, "after the laughs")
        assert time.monotonic() - t0 < 30
    assert not tool_use_lines(state_dir, pid)
    rc = run_once(state_dir)
    assert rc.returncode == 0, rc.stderr


def test_args_nested_900_deep_neither_crash_nor_run_even_after_git_rm(state_dir):
    with DaemonProcess(state_dir) as d:
        pid, text = hostile_proposal(state_dir, "[" * 900 + "]" * 900, status="approved")
        commit_as(state_dir, MALLORY, "deep", {path_of(pid): text})
        _still_serves(state_dir, d, "after the deep one")
        commit_as(state_dir, MALLORY, "gone", {path_of(pid): None})
        _still_serves(state_dir, d, "after the git rm")
    for _ in range(2):  # and every restart
        rc = run_once(state_dir)
        assert rc.returncode == 0, rc.stderr


def test_a_bad_decision_block_does_not_crash_the_start(state_dir):
    pid, text = hostile_proposal(state_dir, "['-c', 'print(1)']", status="approved",
                                 decision={"rule": 5})
    commit_as(state_dir, MALLORY, "rule 5", {path_of(pid): text})
    for _ in range(2):
        rc = run_once(state_dir)  # the daemon's first start meets it in its requeue
        assert rc.returncode == 0, rc.stderr
    assert not tool_use_lines(state_dir, pid)
    listed = subprocess.run(["janus-git", "list", "--json", "-C", str(state_dir)],
                            capture_output=True, text=True, check=True).stdout
    row = next(r for r in __import__("json").loads(listed) if r["id"] == pid)
    assert row["status"] == "invalid" and "decision.rule" in row["error"]


def test_agent_email_with_janus_trailers_is_answered_live(state_dir):
    with DaemonProcess(state_dir):
        pid = propose(state_dir, "-c", "print('pwned')", tool="python", type_=MANUAL)
        wait_for(lambda: git(state_dir, "rev-parse", "-q", "--verify",
                             f"refs/heads/janus/proposal/{pid}", check=False).returncode == 0)
        data = record(state_dir, pid)
        data["status"] = "approved"
        commit_as(state_dir, AGENT, f"janus: {pid} proposed -> approved",
                  {path_of(pid): yaml.safe_dump(data, sort_keys=False)},
                  extra=("-m", f"Janus-Proposal: {pid}\nJanus-Transition: proposed -> approved"))
        rec = wait_status(state_dir, pid, "proposed", timeout=10)  # no restart needed
        assert "never approve" in rec["note"]
    assert not tool_use_lines(state_dir, pid)


STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('started', flush=True); time.sleep(120)")


def _tool_pids() -> list[str]:
    return subprocess.run(["pgrep", "-f", "signal.SIG_IGN"], capture_output=True,
                          text=True).stdout.split()


def _stop(root: Path) -> float:
    out = subprocess.run(["janus-git", "stop", "-C", str(root), "--reason", "test"],
                         capture_output=True, text=True, check=True)
    assert out.returncode == 0
    return time.monotonic()


def _start_stubborn(root: Path) -> str:
    pid = propose(root, "-c", STUBBORN, tool="python", type_=MANUAL)
    wait_for(lambda: git(root, "rev-parse", "-q", "--verify",
                         f"refs/heads/janus/proposal/{pid}", check=False).returncode == 0)
    set_status(root, pid, "approved")
    wait_for(_tool_pids, 20, "the tool to start")
    return pid


def test_stop_kills_within_a_second_while_the_main_loop_is_busy(state_dir):
    """The daemon's main loop sleeps 30 s right after it starts the run (a stand-in for a
    long catch-up or a slow disk); the stop still kills the tool within a second."""
    env = {"JANUS_GIT_STALLPOINT": "after-run-start:30"}
    with DaemonProcess(state_dir, env=env):
        pid = _start_stubborn(state_dir)
        t0 = _stop(state_dir)
        wait_for(lambda: not _tool_pids(), within(1.0), "the tool to be killed")
        assert time.monotonic() - t0 < within(1.0)
    assert status(state_dir, pid) in ("running", "interrupted")


def test_stop_kills_within_a_second_after_a_hostile_file(state_dir):
    with DaemonProcess(state_dir) as d:
        _start_stubborn(state_dir)
        hostile, text = hostile_proposal(state_dir, LAUGHS)
        commit_as(state_dir, MALLORY, "laughs", {path_of(hostile): text})
        t0 = _stop(state_dir)
        wait_for(lambda: not _tool_pids(), within(1.0), "the tool to be killed")
        assert time.monotonic() - t0 < within(1.0)
        assert d.alive()


def test_a_rewritten_history_stops_the_daemon(state_dir, tmp_path):
    run_once(state_dir)
    # Mallory replaces history with a root commit of her own, in which she approves
    git(state_dir, "checkout", "-q", "--orphan", "evil")
    data = yaml.safe_load((state_dir / "state/agent.yaml").read_text())
    data["approvers"] = [{"email": MALLORY[1]}]
    (state_dir / "state/agent.yaml").write_text(yaml.safe_dump(data))
    git(state_dir, "add", "-A")
    git(state_dir, "commit", "-qm", "a new beginning", who=MALLORY)
    git(state_dir, "branch", "-f", "main", "evil")
    git(state_dir, "checkout", "-q", "main")
    rc = run_once(state_dir)
    assert rc.returncode == 1 and "the watched branch was rewritten" in rc.stderr


def test_a_force_push_is_refused(state_dir, tmp_path):
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(state_dir), str(clone))
    git(clone, "reset", "-q", "--hard", "HEAD~1")
    (clone / "notes" / "x.md").write_text("x\n")
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "diverge", who=MALLORY)
    out = git(clone, "push", "-f", "origin", "HEAD:main", check=False)
    assert out.returncode != 0 and "non-fast-forward" in out.stderr


def test_a_pushers_edit_of_a_running_claim_is_put_back_and_the_result_lands(state_dir):
    """Only the agent writes the decision and execution blocks: Mallory rewriting a running
    proposal's claim (`execution.instance`, which tells several daemons whose claim it is,
    and a made-up exit code) is put back, and the real result is committed."""
    registry = yaml.safe_load((state_dir / "state/agent.yaml").read_text())["tools"]
    configure(state_dir, tools={**registry, "nap": {
        "description": "sleeps", "risk": "low", "auto_exec": True, "network": False,
        "runner": "external", "command": ["sleep"]}})
    with DaemonProcess(state_dir):
        pid = propose(state_dir, "3", tool="nap")
        wait_status(state_dir, pid, "running")
        path = state_dir / f"proposals/{pid[0:4]}/{pid[4:6]}/{pid}.yaml"
        data = yaml.safe_load(path.read_text())
        data["execution"] = {**data["execution"], "instance": "ghost", "exit_code": 0}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        git(state_dir, "commit", "-qm", "claim it for a ghost", "--", str(path), who=MALLORY)
        rec = wait_status(state_dir, pid, "succeeded", timeout=20)
    assert "instance" not in rec["execution"] and rec["execution"]["exit_code"] == 0
    log = git(state_dir, "log", "--format=%s%n%b", "--", str(path)).stdout
    assert "only the agent writes those" in log
