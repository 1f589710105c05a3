"""Hygiene over 100,000 proposals (target: <= 10 s).

Builds a state repository (janus-git's templates) and adds N proposals in one commit with
`git fast-import`: most already finished, some fresh, some duplicates (exact and near), some
old and unrun, some naming a tool that is gone.  Then measures, in the same run:

  floor    reading every proposal blob from git (ls-tree + one cat-file --batch): the I/O any
           approach pays once
  reindex  rebuilding the novelty index from nothing (cold start)
  hygiene  `hygiene(repo, config)` with the index current (what the daemon and
           `janus-git hygiene` do): plan + the batch commits of every transition
  per-commit baseline: one lifecycle.transition commit per proposal, timed on 20 and
           extrapolated to the number of transitions hygiene made

    python bench/bench_hygiene.py [N]
"""
from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from janus_git import hygiene, lifecycle, novelty  # noqa: E402
from janus_git.config import load_config  # noqa: E402
from janus_git.gitrepo import GitRepo, read_blobs  # noqa: E402
from janus_git.proposal import Status, compute_digest, shard_path  # noqa: E402
from janus_git.staterepo import init_state  # noqa: E402

DOC = "missions/docs/git-release-chronicle.txt"
TEMPLATE = """id: {id}
mission: {mission}
type: {type}
tool: {tool}
args:
  path: {path}
  chunk: {chunk}
rationale: generated for the hygiene benchmark
created_at: '{created_at}'
created_by: bench
digest: {digest}
risk: low
status: {status}
note: ''
decision: {{}}
execution: {{}}
"""


def make(n: int, rng: random.Random, now: dt.datetime) -> tuple[dict[str, bytes], dict]:
    files, kinds = {}, {"finished": 0, "fresh": 0, "duplicate": 0, "old": 0, "gone_tool": 0}
    for i in range(n):
        roll = rng.random()
        days, status, tool, chunk, path = rng.uniform(0, 10), "succeeded", "process_chunk", \
            i, f"docs/doc-{i}.txt"
        if roll < 0.03:
            kind, status, path, chunk = "duplicate", "proposed", f"docs/doc-{i // 97}.txt ", \
                i // 97
        elif roll < 0.04:
            kind, status, days = "old", "proposed", rng.uniform(31, 90)
        elif roll < 0.05:
            kind, status, tool = "gone_tool", "proposed", "telnet"
        elif roll < 0.10:
            kind, status = "fresh", "proposed"
        else:
            kind, status = "finished", rng.choice(["succeeded", "failed", "rejected"])
            if i % 97 == 0:  # the originals the duplicates repeat
                path, chunk, days = f"docs/doc-{i // 97}.txt", i // 97, 11.0
        kinds[kind] += 1
        when = now - dt.timedelta(days=days, microseconds=i)
        pid = f"{when:%Y%m%d-%H%M%S}{when.microsecond // 1000:03d}-{i:06x}"
        args = {"path": path, "chunk": chunk}
        files[shard_path(pid)] = TEMPLATE.format(
            id=pid, mission="STUDY-004-BETA", type="process_chunk", tool=tool, path=path,
            chunk=chunk, created_at=when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), status=status,
            digest=compute_digest("process_chunk", tool, args)).encode()
    return files, kinds


def fast_import(root: Path, files: dict[str, bytes]) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()
    out = [b"commit refs/heads/main\n",
           b"committer bench <bench@localhost> 1700000000 +0000\n",
           b"data 21\n100k bench proposals\n", f"from {head}\n".encode()]
    for path, data in files.items():
        out.append(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=root, input=b"".join(out),
                   check=True)
    subprocess.run(["git", "reset", "-q", "--hard", "main"], cwd=root, check=True)


CPU: dict[str, float] = {}  # label -> CPU seconds (this process + its git children)


def cpu_now() -> float:
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), \
        resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, label: str = ""):
    """Wall time (and, under LABEL, CPU time: the machine is shared, wall time is not)."""
    t0, c0 = time.perf_counter(), cpu_now()
    value = fn()
    if label:
        CPU[label] = cpu_now() - c0
    return time.perf_counter() - t0, value


def main(n: int = 100_000) -> dict:
    rng, now = random.Random(5), dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory() as tmp:
        root, _ = init_state(Path(tmp) / "state")
        t_gen, (files, kinds) = timed(lambda: make(n, rng, now))
        t_imp, _ = timed(lambda: fast_import(root, files))
        repo, config = GitRepo(root), load_config(root)
        print(f"{n} proposals generated in {t_gen:.1f}s, imported in {t_imp:.1f}s: {kinds}")

        def floor():
            shas = list(repo.ls_tree_blobs("HEAD", ["proposals"]).values())
            return len(read_blobs(repo, shas))
        t_floor, _ = timed(floor, "floor")
        t_reindex, count = timed(lambda: novelty.reindex(repo), "reindex")
        t_dry, dry = timed(lambda: hygiene.hygiene(repo, config, dry_run=True), "dry")
        t_hyg, counts = timed(lambda: hygiene.hygiene(repo, config), "hygiene")
        t_again, again = timed(lambda: hygiene.hygiene(repo, config), "again")
        # baseline: one commit per transition through the lifecycle
        proposed = [p for p, row in hygiene.NoveltyIndex(repo).sync().rows.items()
                    if row[hygiene.STATUS] == "proposed"][:20]
        from janus_git.store import Store
        store = Store(repo)

        def one_each():
            for path in proposed:
                p = store.read_path(path)
                lifecycle.transition(repo, p, Status.ARCHIVED, config.identity, reason="b")
        t_each, _ = timed(one_each)
        moved = counts["duplicate"] + counts["archived"] + counts["rejected"]
        per_commit = t_each / max(1, len(proposed))
        figures = {
            "proposals": count, "floor_s": t_floor, "reindex_s": t_reindex,
            "dry_run_s": t_dry, "hygiene_s": t_hyg, "hygiene_again_s": t_again,
            "transitions": moved, "commits": counts["commits"],
            "one_commit_each_s_estimated": per_commit * moved, "per_commit_s": per_commit,
            "cpu": dict(CPU),
        }
    print(f"floor (read every blob)        {t_floor:6.2f} s wall, {CPU['floor']:6.2f} s CPU")
    print(f"reindex (cold novelty index)   {t_reindex:6.2f} s wall, {CPU['reindex']:6.2f} s CPU")
    print(f"hygiene --dry-run (warm)       {t_dry:6.2f} s wall, {CPU['dry']:6.2f} s CPU")
    print(f"hygiene (warm, {moved} transitions in {counts['commits']} batch commits) "
          f"{t_hyg:6.2f} s wall, {CPU['hygiene']:6.2f} s CPU   target <= 10 s")
    print(f"hygiene again (nothing to do)  {t_again:6.2f} s wall, {CPU['again']:6.2f} s CPU")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"baseline: one commit per transition {per_commit * 1000:.0f} ms each -> "
          f"{per_commit * moved:.0f} s for {moved}")
    print(f"counts: {({k: v for k, v in counts.items() if k != 'actions'})}; "
          f"dry run agreed: {dry['duplicate'] == counts['duplicate']}; again: "
          f"{again['commits']} commits")
    return figures


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
