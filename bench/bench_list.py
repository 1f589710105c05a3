"""Benchmarks (2) and (3) on a state repository with 100,000 proposals (10,000 commits):

    (2a) `janus-git list --json` warm (the index exists and is current): target <= 0.5 s
         baseline: `git ls-tree -r HEAD -- proposals` (listing the files, nothing read)
    (2b) the index rebuilt from scratch (index deleted, then `janus-git list --json`):
         target <= 15 s; baseline: reading every proposal blob with
         `git ls-tree -r HEAD proposals | git cat-file --batch`
    (3)  `janus-git show ID`: target <= 0.3 s; baseline: `git log -- PATH` of that file,
         both without and with a commit-graph with changed-path Bloom filters.

Every figure is wall time of a real subprocess, Python start included, stdout to /dev/null.

    python bench/bench_list.py            # 100,000 proposals
    python bench/bench_list.py --quick    # 10,000 proposals
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CPU: dict[str, list[float]] = {}  # label -> CPU seconds (user+sys) of each measured run


def wall(argv, cwd, shell=False, label: str | None = None) -> float:
    """Wall time of one run; its CPU time (children's user+sys) is kept under LABEL: on a
    shared machine the CPU time is the steadier figure (wall = CPU when the cores are free)."""
    import resource
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, shell=shell, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if label:
        CPU.setdefault(label, []).append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return elapsed


def cpu(label: str) -> str:
    xs = CPU.get(label, [])
    return f"cpu {common.fmt_s(statistics.median(xs))}" if xs else ""


def med(fn, n) -> tuple[float, list[float]]:
    xs = [fn() for _ in range(n)]
    return statistics.median(xs), xs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cmd", default=None,
                    help="the command to measure instead of janus-git (e.g. another python)")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    n_prop = 10000 if args.quick else 100000
    common.use_env(common.WORK / "home")
    root = common.build_repo(n_prop, 10000 if not args.quick else 2000)
    exe = shutil.which("janus-git")
    jg = [exe] if exe else [sys.executable, "-m", "janus_git.cli"]
    if args.cmd:
        import shlex
        jg = shlex.split(args.cmd)
    index = root / ".git" / "janus" / "index.sqlite"
    graph = root / ".git" / "objects" / "info" / "commit-graph"
    graphs = root / ".git" / "objects" / "info" / "commit-graphs"
    rows = []

    def add_row(name: str, target: float, baseline: float, baseline_what: str, ours: float,
                cpu_label: str) -> None:
        rows.append({"name": f"{name} {args.label}".rstrip(), "target": f"≤ {target} s",
                     "baseline": baseline, "baseline_what": baseline_what, "ours": ours,
                     "ok": ours <= target,
                     "cpu": statistics.median(CPU[cpu_label]) if CPU.get(cpu_label) else None})

    def drop_list_cache():
        for name in ("list.json", "list.json.head"):
            (index.parent / name).unlink(missing_ok=True)

    def drop_index():
        drop_list_cache()  # else `list --json` answers from the per-HEAD file, no rebuild
        for suffix in ("", "-wal", "-shm"):
            Path(str(index) + suffix).unlink(missing_ok=True)

    py = med(lambda: wall([sys.executable, "-c", "pass"], root), args.runs)[0]
    load = os.getloadavg()[0]
    print(f"# {n_prop} proposals; {' '.join(jg)}; python start alone: {common.fmt_s(py)}; "
          f"load average {load:.1f} on {os.cpu_count()} cores")

    # (2b) rebuild from scratch
    base_read = med(lambda: wall("git ls-tree -r HEAD proposals | git cat-file --batch",
                                 root, shell=True), 3)[0]
    rebuilds = []
    for _ in range(2):
        drop_index()
        rebuilds.append(wall([*jg, "list", "--json"], root, label="rebuild"))
    rebuild = min(rebuilds)
    print(f"(2b) rebuild: baseline cat-file of all blobs {common.fmt_s(base_read)}; ours "
          f"{', '.join(common.fmt_s(x) for x in rebuilds)} ({cpu('rebuild')}, both processes)")
    add_row(f"(2b) index rebuild from scratch, {n_prop} proposals", 15, base_read,
            "ls-tree piped to cat-file --batch", rebuild, "rebuild")

    # (2a) warm list --json
    base_ls = med(lambda: wall(["git", "ls-tree", "-r", "HEAD", "--", "proposals"], root),
                  args.runs)[0]
    warm, xs = med(lambda: wall([*jg, "list", "--json"], root, label="warm"), args.runs)
    print(f"(2a) list --json warm: baseline ls-tree {common.fmt_s(base_ls)}; ours median "
          f"{common.fmt_s(warm)} (runs {', '.join(common.fmt_s(x) for x in xs)}; {cpu('warm')})")
    ls_what = "git ls-tree -r HEAD proposals"
    add_row(f"(2a) `list --json` warm, {n_prop} proposals", 0.5, base_ls, ls_what, warm, "warm")
    def no_cache():
        drop_list_cache()
        return wall([*jg, "list", "--json"], root, label="nocache")
    nocache, _ = med(no_cache, args.runs)
    print(f"(2a\") list --json, index warm but no per-HEAD list file (first call after a "
          f"commit): {common.fmt_s(nocache)} ({cpu('nocache')})")
    add_row(f"(2a\") `list --json` first call after a commit, {n_prop} proposals", 0.5,
            base_ls, ls_what, nocache, "nocache")
    filt, _ = med(lambda: wall([*jg, "list", "--json", "--status", "failed", "--mission",
                                "OPT-001-BETA"], root, label="filt"), args.runs)
    print(f"(2a') list --json --status failed --mission OPT-001-BETA: {common.fmt_s(filt)} "
          f"({cpu('filt')})")
    add_row("(2a') `list --json` with filters (~5% of rows)", 0.5, base_ls, ls_what, filt,
            "filt")

    # (3) show, without and with a commit-graph
    ids = common.pick_ids(root, args.runs, seed=11)
    paths = [f"proposals/{i[:4]}/{i[4:6]}/{i}.yaml" for i in ids]
    for with_graph in (False, True):
        graph.unlink(missing_ok=True)
        shutil.rmtree(graphs, ignore_errors=True)
        if with_graph:
            t0 = time.perf_counter()
            common.git(root, "commit-graph", "write", "--reachable", "--changed-paths")
            print(f"# commit-graph --reachable --changed-paths written in "
                  f"{common.fmt_s(time.perf_counter() - t0)}")
        base = statistics.median(wall(["git", "log", "--", p], root) for p in paths)
        ours = statistics.median(wall([*jg, "show", i], root, label=f"show{with_graph}")
                                 for i in ids)
        ours_json = statistics.median(wall([*jg, "show", "--json", i], root) for i in ids)
        label = "with" if with_graph else "without"
        print(f"(3) show, {label} commit-graph: baseline git log -- path {common.fmt_s(base)}; "
              f"ours {common.fmt_s(ours)} ({cpu(f'show{with_graph}')}; --json "
              f"{common.fmt_s(ours_json)})")
        add_row(f"(3) `show ID`, {label} commit-graph", 0.3, base, "git log -- PATH", ours,
                f"show{with_graph}")
    print(common.report(rows))
    out = common.WORK / f"result-list-{n_prop}{args.label.replace(' ', '-')}.json"
    out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
