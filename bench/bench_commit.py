"""Benchmark (1): the cost of one lifecycle transition commit, beside a raw `git add && git
commit` of the same kind of file, on a state repository with 10,000 proposals (10,000 commits).

    python bench/bench_commit.py            # 10,000 proposals, 50 commits each side
    python bench/bench_commit.py --quick    # 2,000 proposals, 20 commits each side

Ours is `lifecycle.transition(..., base_text=...)`: the guard, the YAML, the write and the
commit through GitRepo.commit_files.  The baseline writes the same YAML from Python and runs
`git add PATH` and `git commit -q -F -` (the same message, trailers included) as
subprocesses.  The two alternate, commit by commit, so a noisy neighbour hits both alike.
Target: ours / baseline <= 1.3 at the median.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=None, help="commits per side")
    ap.add_argument("--commit-graph", action="store_true",
                    help="write a commit-graph first (as a maintained repo would have)")
    args = ap.parse_args()
    size = 2000 if args.quick else 10000
    n = args.n or (20 if args.quick else 50)
    common.use_env(common.WORK / "home")
    src = common.build_repo(size, size)
    root = common.WORK / f"commit-run-{size}"
    shutil.rmtree(root, ignore_errors=True)
    common.git(common.WORK, "clone", "-q", str(src), str(root))
    common.git(root, "config", "user.name", common.ALICE[0])
    common.git(root, "config", "user.email", common.ALICE[1])
    if args.commit_graph:
        common.git(root, "commit-graph", "write", "--reachable", "--changed-paths")

    from janus_git import lifecycle
    from janus_git.gitrepo import GitRepo, Identity
    from janus_git.proposal import Status
    from janus_git.store import Store

    repo = GitRepo(root)
    store = Store(repo)
    agent = Identity(*common.AGENT)
    ids = common.pick_ids(root, 2 * n, status="proposed")
    if len(ids) < 2 * n:
        raise SystemExit(f"only {len(ids)} proposed proposals; use a smaller -n")
    ours_ids, base_ids = ids[:n], ids[n:]

    def ours(pid: str) -> float:
        p = store.read(pid)
        text = (root / p.path).read_bytes()
        t0 = time.perf_counter()
        lifecycle.transition(repo, p, Status.REJECTED, agent, base_text=text, reason="bench")
        return time.perf_counter() - t0

    def baseline(pid: str) -> float:
        p = store.read(pid)
        p.status, p.note = Status.REJECTED, "bench"
        data = p.to_yaml()
        msg = lifecycle.message_for(p, Status.PROPOSED, Status.REJECTED, "bench")
        env = dict(__import__("os").environ, **agent.env())
        t0 = time.perf_counter()
        (root / p.path).write_bytes(data)
        subprocess.run(["git", "add", p.path], cwd=root, check=True, env=env)
        subprocess.run(["git", "commit", "-q", "-F", "-"], cwd=root, check=True, env=env,
                       input=msg.encode())
        return time.perf_counter() - t0

    # warm both paths (page cache, GitPython's first call)
    ours_t, base_t = [], []
    for a, b in zip(ours_ids, base_ids):
        ours_t.append(ours(a))
        base_t.append(baseline(b))
    ours_t, base_t = ours_t[2:], base_t[2:]
    o, b = common.summary(ours_t), common.summary(base_t)
    ratio = o["median"] / b["median"]
    n_commits = common.git(root, "rev-list", "--count", "HEAD").stdout.decode().strip()
    print(f"# load average {__import__('os').getloadavg()[0]:.1f}; repo: {size} proposals, "
          f"{n_commits} commits, commit-graph: {args.commit_graph}; "
          f"{len(ours_t)} commits each side")
    print(f"baseline git add && git commit : median {common.fmt_s(b['median'])}  "
          f"p90 {common.fmt_s(b['p90'])}")
    print(f"ours lifecycle.transition      : median {common.fmt_s(o['median'])}  "
          f"p90 {common.fmt_s(o['p90'])}")
    print(f"ratio (median) {ratio:.2f}x  ratio (p90) {o['p90'] / b['p90']:.2f}x  "
          f"target <= 1.3x: {'PASS' if ratio <= 1.3 else 'MISS'}")
    row = {"name": f"(1) transition commit, {size} proposals", "target": "≤ 1.3×",
           "baseline": b["median"], "baseline_what": "git add && git commit, median",
           "ours": o["median"], "ok": ratio <= 1.3, "p90_ours": o["p90"], "p90_base": b["p90"]}
    print(common.report([row]))
    (common.WORK / f"result-commit-{size}.json").write_text(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
