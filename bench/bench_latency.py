"""Approval commit -> tool start latency, and the idle daemon's cost.

A person approves a manual proposal with `git commit`; we time from the moment that commit
returns to the moment the daemon has the tool's process started (the sandbox's on_start
callback).  Baseline in the same run: the raw `git commit` itself.  Then the idle daemon on a
repository with N proposals: CPU % and RSS over a quiet window.

    python bench/bench_latency.py [--approvals 100] [--proposals 10000] [--idle-seconds 10]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from janus_git import lifecycle  # noqa: E402
from janus_git.proposal import new_id  # noqa: E402
from janus_git.daemon import Daemon  # noqa: E402
from janus_git.gitrepo import GitRepo  # noqa: E402
from janus_git.state import init_state  # noqa: E402

APPROVER = ("Bench Approver", "approver@example.com")
ENV = {**os.environ, "GIT_AUTHOR_NAME": APPROVER[0], "GIT_AUTHOR_EMAIL": APPROVER[1],
       "GIT_COMMITTER_NAME": APPROVER[0], "GIT_COMMITTER_EMAIL": APPROVER[1]}


def git(root: Path, *args: str) -> str:
    for _ in range(100):  # a person's git also meets the daemon's index.lock now and then
        out = subprocess.run(["git", *args], cwd=root, env=ENV, text=True, capture_output=True)
        if out.returncode == 0:
            return out.stdout
        if "index.lock" not in out.stderr and "cannot lock ref" not in out.stderr:
            raise SystemExit(f"git {' '.join(args)}: {out.stderr}")
        time.sleep(0.01)
    raise SystemExit("index.lock never freed")


def make_repo(tmp: Path, existing: int, months: int = 12) -> Path:
    root, _ = init_state(tmp / "state")
    cfg = yaml.safe_load((root / "state/agent.yaml").read_text())
    cfg["approvers"] = [{"name": APPROVER[0], "email": APPROVER[1]}]
    cfg["controls"]["max_starts_per_second"] = 1000
    (root / "state/agent.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    now = dt.datetime.now(dt.timezone.utc)
    for i in range(existing):  # history: finished proposals the daemon must not trip over
        # spread over the past `months` month shards, as a year of work would be
        when = now - dt.timedelta(days=31 * (1 + i % months)) if months else now
        p = lifecycle.new_proposal(mission="BENCH", type_="analysis", tool="shell",
                                   args=["echo", str(i)], rationale="bench filler",
                                   created_by="bench", pid=new_id(when))
        p.status = lifecycle.Status.SUCCEEDED
        path = root / p.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(p.to_yaml())
    git(root, "add", "-A")
    git(root, "commit", "-qm", f"bench: {existing} proposals")
    git(root, "commit-graph", "write", "--reachable", "--changed-paths")
    return root


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def bench_latency(root: Path, approvals: int) -> tuple[list[float], list[float]]:
    started: dict[str, float] = {}
    daemon = Daemon(root, think=False, on_start=lambda pid, _os: started.setdefault(
        pid, time.perf_counter()))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    ids = []
    person = GitRepo(root)  # not the daemon's: GitPython's cat-file pipe is per thread
    for i in range(approvals):
        p = lifecycle.new_proposal(mission="BENCH", type_="maintenance", tool="shell",
                                   args=["echo", f"approval {i}"], rationale="bench",
                                   created_by="bench")
        lifecycle.create(person, p, None)
        ids.append(p.id)
    time.sleep(1.0)  # let the daemon offer approval branches for all of them
    latencies, commits = [], []
    for pid in ids:
        path = root / f"proposals/{pid[0:4]}/{pid[4:6]}/{pid}.yaml"
        text = path.read_text().replace("status: proposed", "status: approved")
        path.write_text(text)
        t0 = time.perf_counter()
        git(root, "commit", "-qm", f"approve {pid}", "--", str(path))
        t1 = time.perf_counter()
        deadline = time.monotonic() + 10
        while pid not in started and time.monotonic() < deadline:
            time.sleep(0.0005)
        if pid not in started:
            raise SystemExit(f"{pid} did not start within 10 s")
        commits.append((t1 - t0) * 1000)
        latencies.append((started[pid] - t1) * 1000)
        while daemon.runs or daemon.queue or daemon._pending_results:  # wait for the result commit: measure from idle
            time.sleep(0.002)
        time.sleep(0.02)
    daemon.exit = True
    daemon.wake.set()
    thread.join(30)
    return latencies, commits


def bench_idle(root: Path, seconds: float) -> tuple[float, float]:
    proc = subprocess.Popen([sys.executable, "-m", "janus_git.cli", "daemon", str(root),
                             "--no-think"], stderr=subprocess.DEVNULL)
    try:
        time.sleep(3.0)  # start-up: index build, recovery
        ps = psutil.Process(proc.pid)
        ps.cpu_percent(None)
        time.sleep(seconds)
        cpu = ps.cpu_percent(None)
        rss = ps.memory_info().rss / 2**20
    finally:
        proc.terminate()
        proc.wait(20)
    return cpu, rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--approvals", type=int, default=100)
    ap.add_argument("--proposals", type=int, default=10_000)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--months", type=int, default=12,
                    help="month shards the existing proposals are spread over (0: all in "
                         "the current month, the worst case for git's tree rewrite)")
    args = ap.parse_args()
    print(f"# load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        root = make_repo(Path(tmp), args.proposals, args.months)
        lat, raw = bench_latency(root, args.approvals)
        cpu, rss = bench_idle(root, args.idle_seconds)
    print(f"repository: {args.proposals} finished proposals over {args.months or 1} month "
          f"shard(s) + {args.approvals} approvals")
    print(f"baseline raw `git commit` of the approval: p50 {statistics.median(raw):.1f} ms, "
          f"p99 {pct(raw, 0.99):.1f} ms")
    print(f"approval commit -> tool start:            p50 {statistics.median(lat):.1f} ms, "
          f"p99 {pct(lat, 0.99):.1f} ms   (target p50 <= 150, p99 <= 400)")
    print(f"idle daemon over {args.idle_seconds:.0f} s: CPU {cpu:.2f} %, RSS {rss:.0f} MB "
          "(target < 1 %, < 150 MB)")


if __name__ == "__main__":
    main()
