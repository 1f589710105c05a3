"""Shared helpers for the foundation benchmarks: big state repositories built fast with
`git fast-import`, timing, and the results table.

A generated repository is a real state repository (made by `janus-git init`) followed by
N proposals spread over C commits.  Every proposal file is what `lifecycle.create` would
have written (Proposal.to_yaml), placed in its month shard, and each commit carries the
same trailers a lifecycle commit carries, so `list`, `show` and the index see a realistic
repository.  Repos are cached under bench/.work/ (git-ignored) by their size.
"""
from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
sys.path.insert(0, str(ROOT))

AGENT = ("Janus Agent", "janus-agent@localhost")
ALICE = ("Alice Reviewer", "alice@example.com")
TYPES = ["analysis", "optimization_experiment", "generate_new_nodes", "process_chunk"]
TOOLS = ["shell", "file_chunker", "node_generator", "llama_bench"]
MISSIONS = ["STUDY-002-BETA", "OPT-001-BETA", "STUDY-004-BETA"]


def bench_env(home: Path) -> dict[str, str]:
    """An environment that never touches the real home: fixed identity, no system config."""
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / ".gitconfig"
    cfg.write_text(f"[user]\n\tname = {ALICE[0]}\n\temail = {ALICE[1]}\n"
                   "[init]\n\tdefaultBranch = main\n")
    env = dict(os.environ)
    env.update(HOME=str(home), GIT_CONFIG_GLOBAL=str(cfg), GIT_CONFIG_NOSYSTEM="1",
               JANUS_GIT_HOME=str(home / "janus-git"))
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(var, None)
    return env


def use_env(home: Path) -> None:
    env = bench_env(home)
    os.environ.clear()
    os.environ.update(env)


def git(root: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, **kw)


def proposal_text(i: int, when: dt.datetime, rng: random.Random):
    """(id, path, yaml bytes) of the I-th synthetic proposal, as lifecycle.create writes it."""
    from janus_git import lifecycle
    from janus_git.proposal import new_id

    pid = new_id(when)
    pid = pid[:-6] + f"{i:06x}"[-6:]  # deterministic, unique suffix
    args = ["grep", "-c", f"pattern-{i}", f"notes/chunk-{i % 13:02d}.md"]
    p = lifecycle.new_proposal(mission=MISSIONS[i % 3], type_=TYPES[i % 4], tool=TOOLS[i % 4],
                               args=args, rationale=f"synthetic proposal {i} for the benchmark; "
                               "counts occurrences to test a hypothesis about the chronicle",
                               created_by=f"{AGENT[0]} <{AGENT[1]}>", pid=pid)
    p.created_at = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    p.risk = "low"
    p.status = rng.choice(["proposed", "succeeded", "succeeded", "failed", "rejected",
                           "archived", "duplicate"])
    from janus_git.proposal import Status
    p.status = Status(p.status)
    if p.status.value in ("succeeded", "failed"):
        p.decision = {"rule": "auto:beta-whitelist", "by": AGENT[1], "digest": p.digest}
        p.execution = {"started_at": p.created_at, "ended_at": p.created_at,
                       "exit_code": 0 if p.status.value == "succeeded" else 1,
                       "isolation": "bwrap", "output": f"logs/runs/{pid}.txt",
                       "resources": {"cpu_s": 0.01, "max_rss_mb": 3.1, "wall_s": 0.02}}
    return p.id, p.path, p.to_yaml(), p.status.value


def build_repo(n_proposals: int, n_commits: int, name: str | None = None,
               fresh: bool = False) -> Path:
    """A state repository with N_PROPOSALS proposals in N_COMMITS commits (cached)."""
    WORK.mkdir(exist_ok=True)
    root = WORK / (name or f"repo-{n_proposals}p-{n_commits}c")
    home = WORK / "home"
    env = bench_env(home)
    if root.exists() and (root / ".git" / "janus-bench-done").exists() and not fresh:
        return root
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "janus_git.cli", "init", str(root)], env=env,
                   check=True, capture_output=True, cwd=ROOT)
    rng = random.Random(42)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    # spread the ids over ~18 months so they land in many shards
    step = dt.timedelta(seconds=max(1, int(18 * 30 * 86400 / max(n_proposals, 1))))
    per_commit = max(1, -(-n_proposals // n_commits))
    head = git(root, "rev-parse", "HEAD", env=env).stdout.decode().strip()
    proc = subprocess.Popen(["git", "fast-import", "--quiet", "--done"], cwd=root, env=env,
                            stdin=subprocess.PIPE)
    w = proc.stdin
    ts = int(start.timestamp())
    first = True
    i = 0
    while i < n_proposals:
        batch = []
        for _ in range(per_commit):
            if i >= n_proposals:
                break
            when = start + step * i + dt.timedelta(milliseconds=i % 1000)
            batch.append(proposal_text(i, when, rng))
            i += 1
        pid0 = batch[0][0]
        msg = (f"janus: {pid0} new -> proposed (bench: {len(batch)} files)\n\n"
               f"Janus-Proposal: {pid0}\nJanus-Transition: new -> proposed\n").encode()
        ts += 60
        w.write(b"commit refs/heads/main\n")
        w.write(f"author {AGENT[0]} <{AGENT[1]}> {ts} +0000\n".encode())
        w.write(f"committer {AGENT[0]} <{AGENT[1]}> {ts} +0000\n".encode())
        w.write(b"data %d\n%s\n" % (len(msg), msg))
        if first:
            w.write(f"from {head}\n".encode())
            first = False
        for _pid, path, text, _status in batch:
            w.write(f"M 100644 inline {path}\n".encode())
            w.write(b"data %d\n%s\n" % (len(text), text))
    w.write(b"done\n")
    w.close()
    if proc.wait() != 0:
        raise SystemExit("git fast-import failed")
    git(root, "reset", "-q", "--hard", "main", env=env)
    t1 = time.perf_counter()
    (root / ".git" / "janus-bench-done").write_text(f"{n_proposals} {n_commits}\n")
    print(f"# built {root.name}: {n_proposals} proposals, {n_commits} commits in "
          f"{t1 - t0:.1f} s", file=sys.stderr)
    return root


def pick_ids(root: Path, k: int, status: str | None = None, seed: int = 7) -> list[str]:
    """K proposal ids at HEAD (optionally with STATUS in their file), chosen reproducibly."""
    out = git(root, "ls-tree", "-r", "--name-only", "HEAD", "proposals").stdout.decode()
    paths = [p for p in out.splitlines() if p.endswith(".yaml")]
    rng = random.Random(seed)
    rng.shuffle(paths)
    chosen = []
    for p in paths:
        if status:
            text = (root / p).read_text()
            if f"\nstatus: {status}\n" not in text:
                continue
        chosen.append(Path(p).stem)
        if len(chosen) == k:
            break
    return chosen


def timeit(fn, n: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "p90": p90(xs), "min": min(xs), "n": len(xs)}


def fmt_s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def report(rows: list[dict]) -> str:
    """A markdown table: target, baseline, ours, ratio, verdict, date."""
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["| benchmark | target | baseline | ours (wall) | ours (CPU) | ratio | verdict "
             "| date |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ours'] / r['baseline']:.2f}×" if r.get("baseline") else "—"
        base = f"{fmt_s(r['baseline'])} ({r['baseline_what']})" if r.get("baseline") else "—"
        cpu = fmt_s(r["cpu"]) if r.get("cpu") else "—"
        lines.append(f"| {r['name']} | {r['target']} | {base} | {fmt_s(r['ours'])} | {cpu} "
                     f"| {ratio} | {'PASS' if r['ok'] else 'MISS'} | {date} |")
    return "\n".join(lines)


def rev_tree(rev: str) -> Path:
    """REV checked out (detached) in a git worktree under bench/.work/, made once."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout.strip()
    tree = WORK / f"tree-{sha[:10]}"
    if not (tree / ".git").exists():
        WORK.mkdir(exist_ok=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT,
                       check=True, capture_output=True)
    return tree
