"""Sandbox start overhead per run: `/bin/true` through janus_git.sandbox vs a plain subprocess.

Both are measured in the same run, interleaved, so the machine's state is the same for both.
"plain" is subprocess.run(["/bin/true"]); each sandbox variant is sandbox.run(["true"], ...),
the full path a tool run takes: cgroups, rlimits, bwrap or the reduced chain, supervision,
post-mortem, the cleanup hand-off.  With cgroups, "warm" is the default (the run takes a shell
already waiting in its cgroups, see janus_git/sandbox/prestart.py; the column "warm" counts the
runs that found one ready, "waiters" which kind: a whole waiting sandbox, a shell or
confine.py) and "cold" the path without one.  Also reported: how long until
on_start fires (the process is started, nothing waits for a first sample).

    python bench/bench_sandbox.py [--runs 200]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from janus_git import sandbox  # noqa: E402

LIMITS = {"memory_mb": 2048, "disk_write_mb": 100, "timeout_s": 600, "cpu_percent": 80,
          "pids": 64, "output_kb": 256}


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(round(0.9 * len(xs))) - 1)]


def variants(root: Path) -> dict:
    d = sandbox.doctor()
    out = {"plain subprocess /bin/true": lambda: subprocess.run(["/bin/true"], check=True)}
    if d["bwrap_usable"]:
        # bwrap alone with the exact command line a run gets: what bubblewrap itself costs
        from janus_git.sandbox.launch import bwrap_argv
        scratch = Path(tempfile.mkdtemp(prefix="janus-bench-scratch-"))
        if os.geteuid() == 0:
            os.chown(scratch, sandbox.NOBODY, sandbox.NOBODY)
        bare = bwrap_argv(["true"], root, scratch, False, True, [])
        out["bare bwrap, same command line"] = lambda: subprocess.run(bare, check=True)
    for iso in ("bwrap", "reduced"):
        if iso == "bwrap" and not d["bwrap_usable"]:
            continue
        for cg, start in ((True, "warm"), (True, "cold"), (False, "")):
            if cg and not any(d["cgroups"].values()):
                continue
            name = f"sandbox {iso} + cgroups, {start}" if cg else f"sandbox {iso}, rlimits only"
            out[name] = (lambda iso=iso, cg=cg, start=start, name=name: _run(
                name, start, isolation=iso, cgroups=cg, root=root))
    return out


WARM: dict[str, list[bool]] = {}


def _run(name: str, start: str, root: Path, **kw) -> None:
    """A cold variant turns warm starts off for its run (the default, warm, is what the
    daemon gets: it has a shell made ready when it starts and after every run)."""
    if start == "cold":
        os.environ["JANUS_GIT_NO_PRESTART"] = "1"
    try:
        res = sandbox.run(["true"], LIMITS, root, **kw)
    finally:
        os.environ.pop("JANUS_GIT_NO_PRESTART", None)
    if not res.ok:
        raise SystemExit(f"sandboxed true failed: {res.error} {res.output!r}")
    WARM.setdefault(name, []).append(res.waiter)


def start_latency(root: Path, runs: int) -> list[float]:
    """Seconds from calling sandbox.run to on_start (default isolation), 20 ms apart (a
    daemon commits between two runs)."""
    out = []
    for _ in range(runs):
        time.sleep(0.02)
        t0 = time.perf_counter()
        mark: list[float] = []
        sandbox.run(["true"], LIMITS, root, on_start=lambda pid: mark.append(time.perf_counter()))
        out.append(mark[0] - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="janus-bench-repo-"))
    (root / "README").write_text("bench\n")
    fns = variants(root)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm up: probes, page cache
        fn()
    sandbox.prepare(wait=5)  # as the daemon does when it starts
    for _ in range(args.runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    start = start_latency(root, min(args.runs, 100))
    base = statistics.median(times["plain subprocess /bin/true"])
    rows = []
    for name, xs in times.items():
        med = statistics.median(xs)
        waiters = WARM.get(name, [])
        warm = [w for w in waiters if w]
        kinds = ", ".join(f"{warm.count(k)} {k}" for k in sorted(set(warm)))
        rows.append({"variant": name, "min_ms": round(min(xs) * 1e3, 2),
                     "median_ms": round(med * 1e3, 2), "p90_ms": round(p90(xs) * 1e3, 2),
                     "added_ms": round((med - base) * 1e3, 2),
                     "warm_runs": f"{len(warm)}/{len(waiters)}" if waiters else "",
                     "waiters": kinds})
    result = {"runs": args.runs, "doctor": sandbox.doctor(), "rows": rows,
              "loadavg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              "on_start_median_ms": round(statistics.median(start) * 1e3, 2),
              "on_start_p90_ms": round(p90(start) * 1e3, 2)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.runs} runs each, interleaved; default isolation: "
          f"{result['doctor']['isolation']}; {result['cpus']} CPUs, load {result['loadavg']}")
    print(f"{'variant':<34} {'min ms':>8} {'median ms':>10} {'p90 ms':>8} {'added ms':>9} "
          f"{'warm':>8}  waiters")
    for r in rows:
        print(f"{r['variant']:<34} {r['min_ms']:>8.2f} {r['median_ms']:>10.2f} "
              f"{r['p90_ms']:>8.2f} {r['added_ms']:>9.2f} {r['warm_runs']:>8}  {r['waiters']}")
    print("added ms = median minus the plain subprocess median")
    print(f"sandbox.run -> on_start: median {result['on_start_median_ms']} ms, "
          f"p90 {result['on_start_p90_ms']} ms")


if __name__ == "__main__":
    main()
