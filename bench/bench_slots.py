"""Approval commit -> tool start, idle and under load (two long automatic runs active).

The daemon runs in this process (its own thread), as in bench_latency.py; a person approves
a manual `python` proposal with `git commit`, and we time from that commit returning to the
sandbox's on_start callback for the tool's process.  Two modes, one after the other in the
same run and on the same repository:

- idle: nothing else runs;
- loaded: two automatic runs (a registered `sleeper`, python3 sleeping 600 s, which the
  policy runs by itself) hold the automatic slots (max_parallel_runs 3, reserved 1).

The target: p50 under load <= 300 ms and within 1.5x the idle p50 of the same run.

    python bench/bench_slots.py [--approvals 20] [--proposals 500]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import common  # noqa: E402

TARGET_MS, TARGET_RATIO = 300.0, 1.5
MISSION = """\
id: BENCH
title: The bench's own mission
goal: Proposals that the bench files by hand.
kind: analysis
budget: {min: 1000, max: 1000, unit: proposals}
order: 99
depends_on: []
status: queued
proposal_types: [analysis, maintenance]
tools: [shell, python, sleeper]
"""


def person(root: Path, *args: str) -> str:
    for _ in range(200):  # the daemon's index.lock now and then
        out = subprocess.run(["git", *args], cwd=root, text=True, capture_output=True,
                             env={**os.environ, "GIT_AUTHOR_NAME": common.ALICE[0],
                                  "GIT_AUTHOR_EMAIL": common.ALICE[1],
                                  "GIT_COMMITTER_NAME": common.ALICE[0],
                                  "GIT_COMMITTER_EMAIL": common.ALICE[1]})
        if out.returncode == 0:
            return out.stdout
        if "index.lock" not in out.stderr:
            raise SystemExit(f"git {' '.join(args)}: {out.stderr}")
        time.sleep(0.01)
    raise SystemExit("index.lock never freed")


def make_repo(tmp: Path, existing: int) -> Path:
    from janus_git import lifecycle
    from janus_git.gitrepo import GitRepo
    from janus_git.proposal import Status
    from janus_git.staterepo import init_state
    root, _ = init_state(tmp / "state")
    cfg = yaml.safe_load((root / "state/agent.yaml").read_text())
    cfg["approvers"] = [{"name": common.ALICE[0], "email": common.ALICE[1]}]
    cfg["controls"].update(max_parallel_runs=3, reserved_for_people=1,
                           max_starts_per_second=10)
    cfg["tools"]["sleeper"] = {"description": "sleeps (bench)", "risk": "low",
                               "auto_exec": True, "network": False, "runner": "external",
                               "command": ["python3"]}
    (root / "state/agent.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (root / "missions/BENCH.yaml").write_text(MISSION)
    person(root, "add", "state", "missions")
    person(root, "commit", "-qm", "bench: approver, three run slots, a sleeper tool")
    repo = GitRepo(root)
    for i in range(existing):  # history the daemon must not trip over
        p = lifecycle.new_proposal(mission="BENCH", type_="analysis", tool="shell",
                                   args=["echo", str(i)], rationale="bench filler",
                                   created_by=f"{common.AGENT[0]} <{common.AGENT[1]}>")
        p.status = Status.SUCCEEDED
        (root / p.path).parent.mkdir(parents=True, exist_ok=True)
        (root / p.path).write_bytes(p.to_yaml())
    if existing:
        person(root, "add", "proposals")
        person(root, "commit", "-qm", f"bench: {existing} filler proposals")
    repo.close()
    return root


def propose(root: Path, tool: str, type_: str, args: list[str]) -> str:
    out = subprocess.run([sys.executable, "-m", "janus_git.cli", "propose", "-C", str(root),
                          "-m", "BENCH", "-t", type_, "--tool", tool, "--json",
                          "--args-json", json.dumps(args)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["id"]


def wait_for(pred, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.02)


def approvals(root: Path, daemon, starts: dict[str, float], n: int) -> list[float]:
    out = []
    for _ in range(n):
        pid = propose(root, "python", "maintenance", ["-c", "print('approved')"])
        wait_for(lambda: pid in daemon.state.seen_manual)
        path = root / f"proposals/{pid[0:4]}/{pid[4:6]}/{pid}.yaml"
        data = yaml.safe_load(path.read_text())
        data["status"] = "approved"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        person(root, "commit", "-qm", f"approve {pid}", "--", str(path))
        t0 = time.monotonic()
        wait_for(lambda: pid in starts)
        out.append((starts[pid] - t0) * 1000)
        wait_for(lambda: pid not in daemon.state.runs and not daemon.state.results)
        time.sleep(0.2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--approvals", type=int, default=20)
    ap.add_argument("--proposals", type=int, default=500)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-slots-"))
    common.use_env(tmp / "home")
    from janus_git.daemon import Daemon
    print(f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    root = make_repo(tmp, args.proposals)
    starts: dict[str, float] = {}
    d = Daemon(root, think=False,
               on_start=lambda pid, _os: starts.setdefault(pid, time.monotonic()))
    thread = threading.Thread(target=d.work, daemon=True)
    thread.start()
    wait_for(lambda: d.state.activity != "starting")
    try:
        idle = approvals(root, d, starts, args.approvals)
        autos = [propose(root, "sleeper", "analysis", ["-c", "import time; time.sleep(600)"])
                 for _ in range(2)]
        wait_for(lambda: all(a in starts for a in autos))
        loaded = approvals(root, d, starts, args.approvals)
        assert all(a in d.state.runs for a in autos), "the auto runs ended early"
    finally:
        for run in list(d.state.runs.values()):
            run.cancel.set()
        d.request_stop()
        thread.join(60)
    rows = {"idle": idle, "two auto runs active": loaded}
    for name, xs in rows.items():
        xs = sorted(xs)
        print(f"{name:>22}: p50 {statistics.median(xs):6.1f} ms, p90 {common.p90(xs):6.1f} ms,"
              f" max {max(xs):6.1f} ms ({len(xs)} approvals)")
    p50_idle, p50_load = statistics.median(idle), statistics.median(loaded)
    ok = p50_load <= TARGET_MS and p50_load <= TARGET_RATIO * p50_idle
    print(f"verdict: {'PASS' if ok else 'MISS'} (under load p50 {p50_load:.1f} ms vs "
          f"{TARGET_MS:.0f} ms target; {p50_load / p50_idle:.2f}x idle, target <= "
          f"{TARGET_RATIO}x)")
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
