"""Start time of the read commands, each beside `python3 -c pass` measured in the same run.

On a state repository of N proposals (default 10,000, built once and cached under
bench/.work/ by common.build_repo, with the commit-graph the daemon keeps), the wall time of:
`python3 -c pass`, `janus-git --help`, `janus-git list --json`, `janus-git show ID`,
`janus-git status`, and `git ls-tree -r HEAD` as a git baseline.  Target: python start +
100 ms, that is "over python" (median minus the `python3 -c pass` median) <= 100 ms.

Every figure is a real subprocess, stdout to /dev/null.  Each command runs once to warm
(bytecode, the index, the per-HEAD list file), then R rounds; a round runs every command
once, so a change of load on a shared machine hits all rows alike.  The python is this
interpreter and janus-git the script installed beside it: a pyenv shim on PATH is a bash
script that costs ~100 ms of its own.  PYTHONDONTWRITEBYTECODE is dropped for the children so
the warm run leaves bytecode behind, as on a user's machine.

`--against REV` adds the same four commands from a git worktree of REV (default 08afad9,
checked out under bench/.work/ by common.rev_tree), run by the same interpreter with that tree
first on the path, in the same rounds.

    python3 bench/bench_cli.py [--proposals 10000] [--runs 15] [--against REV]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET_MS = 100.0


def janus_git() -> list[str]:
    """The console script beside this interpreter; else whatever PATH has; else `-m`."""
    beside = Path(sys.executable).parent / "janus-git"
    if beside.exists():
        return [str(beside)]
    exe = shutil.which("janus-git")
    return [exe] if exe else [sys.executable, "-m", "janus_git.cli"]


def wall(argv: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def ms(x: float, sign: bool = False) -> str:
    return f"{x * 1000:+.1f} ms" if sign else f"{x * 1000:.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--proposals", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--against", default="08afad9",
                    help="a commit whose CLI is timed in the same rounds ('' for none)")
    args = ap.parse_args()
    common.use_env(common.WORK / "home")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    # one commit per five proposals: at 10,000 the repository bench_list.py --quick builds
    root = common.build_repo(args.proposals, max(1, args.proposals // 5))
    if not (root / ".git" / "objects" / "info" / "commit-graph").exists():
        common.git(root, "commit-graph", "write", "--reachable", "--changed-paths")
    pid = common.pick_ids(root, 1, seed=11)[0]
    jg = janus_git()
    # (name, argv, ours: held to the target; the others are baselines)
    commands = [
        ("`python3 -c pass`", [sys.executable, "-c", "pass"], False),
        ("`janus-git --help`", [*jg, "--help"], True),
        ("`janus-git list --json`", [*jg, "list", "--json"], True),
        ("`janus-git show ID`", [*jg, "show", pid], True),
        ("`janus-git status`", [*jg, "status"], True),
        ("`git ls-tree -r HEAD`", ["git", "ls-tree", "-r", "HEAD"], False),
    ]
    if args.against:
        tree = common.rev_tree(args.against)
        old = ["env", f"PYTHONPATH={tree}", sys.executable, "-c",
               "import sys; from janus_git.cli import main; sys.exit(main())"]
        commands += [(f"{args.against}: `{' '.join(a)}`", [*old, *a], False)
                     for a in (["--help"], ["list", "--json"], ["show", pid], ["status"])]
    for _name, argv, _ours in commands:  # the warm run
        wall(argv, root)
    times: dict[str, list[float]] = {name: [] for name, _argv, _ours in commands}
    load0 = os.getloadavg()[0]
    for _ in range(args.runs):
        for name, argv, _ours in commands:
            times[name].append(wall(argv, root))
    load1 = os.getloadavg()[0]

    py = statistics.median(times[commands[0][0]])  # python start alone
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# {args.proposals} proposals ({root.name}), {args.runs} runs each after one warm "
          f"run; janus-git = {' '.join(jg)}; show ID = {pid}")
    print(f"# load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores; {date}")
    if shutil.which("janus-git") not in (None, jg[0]):
        print(f"# note: `janus-git` on PATH is {shutil.which('janus-git')}, not measured here")
    print()
    print("| command | target | median | p90 | over python | verdict |")
    print("|---|---|---|---|---|---|")
    for i, (name, _argv, ours) in enumerate(commands):
        xs = times[name]
        med = statistics.median(xs)
        over = "—" if i == 0 else ms(med - py, sign=True)
        target = f"python start + {TARGET_MS:.0f} ms" if ours else "—"
        verdict = ("PASS" if (med - py) * 1000 <= TARGET_MS else "MISS") if ours else "baseline"
        print(f"| {name} | {target} | {ms(med)} | {ms(common.p90(xs))} | {over} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
