"""The PI governor, live: host CPU under a CPU-heavy automatic workload, with the governor
holding `target_cpu_percent`, beside the same workload uncontrolled (target 100 %: the
governor never pulls back).

The workload: a queue of automatic runs of a registered `spinner` tool (python3 burning
--procs processes for --run-seconds each), filed in one commit; max_parallel_runs 3 with 1
reserved for people, so two automatic slots (on 2 cores, one spinning process is 50 % of the
host).  The daemon runs in this process (its own thread); host CPU is read here once a second
(psutil.cpu_percent over the second) for --seconds after a --warmup; mean and p95 are
reported for each mode, with the governor's own figures from the daemon's status.

    python bench/bench_governor.py [--target 50] [--seconds 60] [--warmup 10] [--procs 1]
                                   [--kp 0.5] [--ki 0.1]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_slots import MISSION, person, wait_for  # noqa: E402

import common  # noqa: E402

SPIN = ("import multiprocessing as m, time\n"
        "def spin(s):\n"
        "    end = time.time() + s\n"
        "    while time.time() < end: pass\n"
        "ps = [m.Process(target=spin, args=({s},)) for _ in range({n})]\n"
        "[p.start() for p in ps]; [p.join() for p in ps]\n")


def make_repo(tmp: Path, target: float, args) -> Path:
    from janus_git import lifecycle
    from janus_git.staterepo import init_state
    root, _ = init_state(tmp / "state")
    cfg = yaml.safe_load((root / "state/agent.yaml").read_text())
    cfg["approvers"] = [{"name": common.ALICE[0], "email": common.ALICE[1]}]
    cfg["controls"].update(max_parallel_runs=3, reserved_for_people=1, max_starts_per_second=10,
                           governor={"target_cpu_percent": target, "kp": args.kp,
                                     "ki": args.ki})
    cfg["controls"]["relief_valve"]["max_pending_auto"] = 1000
    cfg["tools"]["spinner"] = {"description": "burns CPU (bench)", "risk": "low",
                               "auto_exec": True, "network": False, "runner": "external",
                               "command": ["python3"]}
    (root / "state/agent.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (root / "missions/BENCH.yaml").write_text(MISSION.replace("sleeper", "spinner"))
    person(root, "add", "state", "missions")
    person(root, "commit", "-qm", "bench: approver, slots, governor, a spinner tool")
    code = SPIN.replace("{s}", str(args.run_seconds)).replace("{n}", str(args.procs))
    n = int((args.seconds + args.warmup) * 2 / args.run_seconds) + 10  # more than 2 slots eat
    for i in range(n):
        p = lifecycle.new_proposal(mission="BENCH", type_="analysis", tool="spinner",
                                   args=["-c", code + f"# {i}\n"], rationale="bench load",
                                   created_by=f"{common.ALICE[0]} <{common.ALICE[1]}>")
        (root / p.path).parent.mkdir(parents=True, exist_ok=True)
        (root / p.path).write_bytes(p.to_yaml())
    person(root, "add", "proposals")
    person(root, "commit", "-qm", f"bench: {n} spinner proposals")
    return root


def run_mode(name: str, target: float, args) -> dict:
    from janus_git.daemon import Daemon
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-gov-{name}-"))
    root = make_repo(tmp, target, args)
    d = Daemon(root, think=False)
    thread = threading.Thread(target=d.work, daemon=True)
    thread.start()
    cpu, slots, outputs = [], [], []
    try:
        wait_for(lambda: d.state.runs, timeout=60)
        time.sleep(args.warmup)
        psutil.cpu_percent(interval=None)
        for _ in range(int(args.seconds)):
            cpu.append(psutil.cpu_percent(interval=1.0))
            slots.append(d.state.running("auto"))
            outputs.append(d.controls.governor.output)
    finally:
        for pid in list(d.state.queue):
            d.state.queue.withdraw(pid)
        for run in list(d.state.runs.values()):
            run.cancel.set()
        d.request_stop()
        thread.join(120)
    xs = sorted(cpu)
    return {"name": name, "target": target, "mean": statistics.mean(cpu),
            "p95": xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))],
            "min": xs[0], "max": xs[-1], "slots": statistics.mean(slots),
            "output": statistics.mean(outputs), "n": len(cpu)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--run-seconds", type=float, default=3.0)
    ap.add_argument("--procs", type=int, default=1, help="spinning processes per run")
    ap.add_argument("--kp", type=float, default=0.5)
    ap.add_argument("--ki", type=float, default=0.1)
    args = ap.parse_args()
    common.use_env(Path(tempfile.mkdtemp(prefix="bench-gov-home-")))
    print(f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.procs} spinning "
          f"process(es) per run, {args.run_seconds:g} s each; kp {args.kp}, ki {args.ki}",
          flush=True)
    before = psutil.cpu_percent(interval=3.0)
    print(f"host CPU before, 3 s, nothing of ours running: {before:.1f} %", flush=True)
    rows = [run_mode("uncontrolled", 100.0, args),
            run_mode("governed", args.target, args)]
    for r in rows:
        print(f"{r['name']:>12} (target {r['target']:g} %): host CPU mean {r['mean']:5.1f} %, "
              f"p95 {r['p95']:5.1f} %, min {r['min']:5.1f}, max {r['max']:5.1f} over "
              f"{r['n']} s; auto runs in flight {r['slots']:.2f} on average, governor "
              f"output {r['output']:.2f} slots", flush=True)
    gov = rows[1]
    ok = abs(gov["mean"] - args.target) <= 10 and gov["p95"] <= args.target + 25
    print(f"verdict: {'PASS' if ok else 'MISS'} (governed mean within 10 points of "
          f"{args.target:g} % and p95 <= {args.target + 25:g} %)")
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
