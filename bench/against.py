"""Every benchmark, for this tree and for an earlier commit, one after the other in one run.

Each script runs twice with the same arguments: this tree's, then REV's own copy of the script
in a git worktree of REV (bench/.work/tree-<sha>, with that tree first on the path), so both
sides are measured by their own instruments on the same machine within minutes of each other.
The two outputs are written to bench/.work/against-<rev>/<script>.{new,old}.txt and their
last lines printed side by side; the figures that bench/README.md reports are read from them.

    python3 bench/against.py [--rev 08afad9] [--only bench_cli,bench_list] [--timeout 900]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# each script with arguments small enough for the whole set to run in about an hour
SCRIPTS = [
    ("bench_commit.py", ["--quick"]),
    ("bench_list.py", ["--quick"]),
    ("bench_policy.py", ["--quick"]),
    ("bench_slots.py", []),
    ("bench_sandbox.py", ["--runs", "100"]),
    ("bench_hygiene.py", ["10000"]),
    ("bench_planner.py", ["--cycles", "2"]),
    ("bench_governor.py", ["--seconds", "20"]),
    ("bench_remote.py", ["--rounds", "2", "--proposals", "100"]),
]
# these measure REV themselves, in the same run (its code in a worktree): this tree's script
# only, told which REV
SELF_BASELINED = [
    ("bench_cli.py", ["--runs", "11", "--against"]),
    ("bench_objects.py", ["--rev"]),
    ("bench_latency.py", ["--approvals", "50", "--baseline-rev"]),
]


def run(script: Path, args: list[str], cwd: Path, env: dict[str, str], out: Path,
        timeout: float) -> tuple[float, int]:
    t0 = time.monotonic()
    with out.open("w") as f:
        try:
            rc = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env,
                                stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            f.write(f"\n# timed out after {timeout:.0f} s\n")
            rc = 124
    return time.monotonic() - t0, rc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="08afad9")
    ap.add_argument("--only", default="", help="comma-separated script names (no .py)")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    tree = common.rev_tree(args.rev)
    outdir = common.WORK / f"against-{args.rev}"
    outdir.mkdir(parents=True, exist_ok=True)
    only = {f"{n}.py" for n in args.only.split(",") if n}
    new_env = {**os.environ}
    old_env = {**os.environ, "PYTHONPATH": str(tree)}
    jobs = [(n, a, False) for n, a in SCRIPTS] + [(n, a, True) for n, a in SELF_BASELINED]
    for name, sargs, itself in jobs:
        if only and name not in only:
            continue
        sides = [("new", common.ROOT / "bench" / name, common.ROOT, new_env)]
        if itself:
            sargs = [*sargs, args.rev]
        else:
            sides.append(("old", tree / "bench" / name, tree, old_env))
        for side, script, cwd, env in sides:
            if not script.exists():
                print(f"{name} {side}: no such script at {args.rev}", flush=True)
                continue
            took, rc = run(script, sargs, cwd, env, outdir / f"{name}.{side}.txt",
                           args.timeout)
            load = os.getloadavg()[0]
            print(f"{name} {side}: exit {rc} in {took:.0f} s (load {load:.1f}) -> "
                  f"{outdir.name}/{name}.{side}.txt", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
