"""The object reader (gitrepo/objects.py) against the release that parsed `git log` text
(08afad9), side by side in one run; and the differential property test at any size.

For each tree (this one, and REV checked out in a worktree under bench/.work/), each in a
process of its own with that tree's janus_git first on sys.path, on the same repositories:
- history reads on a 10,000-commit state repository: the whole first-parent log with its
  changes (what the trust layer's first walk and the reader's catch-up use), the log of the
  guarded folders alone, `file_history` of 50 proposals, and `Trust.load` from the root (the
  rules cache deleted);
- row 1: that tree's own `bench_commit.py --quick` (a transition commit vs a raw
  `git add && git commit`, 2,000 proposals);
- `policy test` over 10,000 proposals: that tree's own `bench_policy.py`.
Approval -> tool start is `bench_latency.py --baseline-rev 08afad9` (its own same-run
comparison).  `--examples N` runs tests/test_gitobjects.py's property test with N examples
(the suite runs 60) and prints how long it took.

    python bench/bench_objects.py [--rev 08afad9] [--runs 5] [--examples 0] [--skip policy]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

READS = r"""
import json, statistics, sys, time
from pathlib import Path
from janus_git.gitrepo import GitRepo
from janus_git.trust import Trust
root, runs = Path(sys.argv[1]), int(sys.argv[2])
def timed(fn):
    xs = []
    for _ in range(runs):
        t0 = time.perf_counter(); out = fn(); xs.append(time.perf_counter() - t0)
    return statistics.median(xs), out
repo = GitRepo(root)
paths = [p for p in repo.ls_tree("HEAD", "proposals")][::200][:50]
full, log = timed(lambda: repo.first_parent_log(None, "HEAD"))
guarded, _ = timed(lambda: repo.first_parent_log(None, "HEAD", paths=("state", "missions")))
hist, _ = timed(lambda: [repo.file_history(p) for p in paths])
def load():
    (root / ".git" / "janus" / "rules.json").unlink(missing_ok=True)
    return Trust(GitRepo(root)).load(repo.head())
rules, _ = timed(load)
print(json.dumps({"commits": len(log), "changes": sum(len(c.changes) for c in log),
                  "full_log_ms": full * 1e3, "guarded_log_ms": guarded * 1e3,
                  "file_history_50_ms": hist * 1e3, "trust_load_ms": rules * 1e3}))
"""


def in_tree(tree: Path, argv: list[str], timeout: float = 1800) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": ""}
    out = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"{tree.name}: {' '.join(argv[:2])} exited {out.returncode}\n"
                         f"{(out.stdout + out.stderr)[-2000:]}")
    return out.stdout


def figure(text: str, pattern: str) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def ms(text: str, pattern: str) -> float | None:
    """A figure printed as `12.3 ms` or `1.23 s`, in ms."""
    m = re.search(pattern + r"\s*([0-9.]+)\s*(ms|s)\b", text)
    if not m:
        return None
    return float(m.group(1)) * (1000 if m.group(2) == "s" else 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="08afad9", help="the release to compare with")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--examples", type=int, default=0, help="property-test examples to run")
    ap.add_argument("--skip", action="append", default=[], choices=["reads", "commit",
                                                                     "policy"])
    args = ap.parse_args()
    common.use_env(common.WORK / "home")
    print(f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    trees = {args.rev: common.rev_tree(args.rev), "this tree": common.ROOT}
    if "reads" not in args.skip:
        src = common.build_repo(10_000, 10_000)
        print(f"history reads, {src.name} (10,000 proposals in 10,000 commits), median of "
              f"{args.runs}:")
        rows = {name: json.loads(in_tree(tree, ["-c", READS, str(src), str(args.runs)])
                                 .splitlines()[-1]) for name, tree in trees.items()}
        old, new = rows[args.rev], rows["this tree"]
        for key in ("full_log_ms", "guarded_log_ms", "file_history_50_ms", "trust_load_ms"):
            print(f"  {key:20s} {args.rev}: {old[key]:8.1f} ms   now: {new[key]:8.1f} ms   "
                  f"({new[key] / old[key]:.2f}x)")
        print(f"  (both read {new['commits']} commits; changes seen {old['changes']} vs "
              f"{new['changes']})", flush=True)
    if "commit" not in args.skip:
        print("row 1, transition commit vs raw git add && git commit (bench_commit.py --quick):")
        for name, tree in trees.items():
            text = in_tree(tree, ["bench/bench_commit.py", "--quick"])
            base = ms(text, r"baseline git add && git commit : median")
            ours = ms(text, r"ours lifecycle.transition      : median")
            print(f"  {name:10s}: raw git {base:.1f} ms, ours {ours:.1f} ms, "
                  f"{ours / base:.2f}x", flush=True)
    if "policy" not in args.skip:
        print(f"policy test over 10,000 proposals (bench_policy.py --runs {args.runs}):")
        got = {}
        for name, tree in trees.items():
            text = in_tree(tree, ["bench/bench_policy.py", "--runs", str(args.runs)])
            got[name] = (ms(text, r"policytest.run\+render warm"),
                         figure(text, r"cold \(index and rules cache rebuilt\) ([0-9.]+) s"),
                         ms(text, r"CLI `?policy test --json`?:?\s*(?:warm)?"))
            line = next((ln for ln in text.splitlines() if "in-process:" in ln), "")
            print(f"  {name:10s}: {line.strip()}", flush=True)
        (ow, oc, _), (nw, nc, _) = got[args.rev], got["this tree"]
        if ow and nw:
            print(f"  warm {nw / ow:.2f}x, cold {nc / oc:.2f}x {args.rev}'s (target <= 1.2x)")
    if args.examples:
        env = {**os.environ, "JANUS_GIT_PROPERTY_EXAMPLES": str(args.examples)}
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              str(common.ROOT / "tests/test_gitobjects.py"), "-k",
                              "view_of_history"], env=env, capture_output=True, text=True)
        took = time.perf_counter() - t0
        verdict = "PASS" if out.returncode == 0 else "FAIL\n" + out.stdout[-3000:]
        print(f"property test: {args.examples} examples in {took:.1f} s: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
