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

`--figures` instead: what each backend records for three programs (print(1), 200
MB, a 1 s CPU spin), from a process holding --ballast-mb as a daemon with its model does;
`--code DIR` measures another janus-git tree (e.g. `git archive` of an older commit).

    python bench/bench_sandbox.py --figures [--runs 3] [--ballast-mb 250] [--code DIR]
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
        from janus_git.sandbox.argv import bwrap_argv
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


# --- the figures a run records, per backend: `--figures` ---------------------------------

FIGURES_CHILD = """
import json, os, statistics, sys
from pathlib import Path
mount, ballast_mb, runs, root = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if mount:  # cgroup v2: a fresh cgroup, as systemd gives a service with Delegate=yes
    cg = Path(mount) / f"janus-git-bench-{os.getpid()}"
    cg.mkdir()
    (cg / "cgroup.procs").write_text(str(os.getpid()))
sys.path.insert(0, os.environ["BENCH_CODE"])  # ahead of the working directory's tree
ballast = bytearray(ballast_mb << 20)  # a daemon with its model loaded
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
from janus_git import sandbox
iso = os.environ["BENCH_ISO"]
programs = json.loads(os.environ["BENCH_PROGRAMS"])
limits = json.loads(os.environ["BENCH_LIMITS"])
sandbox.prepare(iso, wait=5)
out = {}
for name, code in programs.items():
    rows = [sandbox.run(["python3", "-S", "-c", code], limits, Path(root), isolation=iso)
            for _ in range(runs)]
    res = [r.resources for r in rows]
    out[name] = {k: statistics.median(x[k] for x in res) for k in
                 ("peak_rss_mb", "peak_processes", "cpu_seconds", "cpu_peak_percent")}
    out[name]["measured"] = res[-1].get("measured", {})
    if name == "spin1s":
        out[name]["truth"] = statistics.median(float(r.output.split()[-1]) for r in rows)
import janus_git
out["_code"] = janus_git.__file__
print(json.dumps(out))
"""

FIGURE_PROGRAMS = {
    "print": "print(1)",
    "alloc200": ("b = bytearray(200 << 20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\n"
                 "import time\ntime.sleep(0.1)\n"),
    "spin1s": ("import time\nwhile time.process_time() < 1.0:\n    pass\n"
               "print(time.process_time())\n"),
}


def figure_backends() -> list[tuple[str, str, dict]]:
    """(name, isolation, environment) for each backend this machine can run."""
    from janus_git.sandbox.cgroups import v2 as cgroup2
    out = []
    mount = cgroup2.mount_point()
    for iso in ("bwrap", "reduced"):
        out.append((f"cgroup v1, {iso}", iso, {}))
        if mount is not None and os.access(mount / "cgroup.procs", os.W_OK):
            out.append((f"cgroup v2 (no controllers here), {iso}", iso,
                        {"JANUS_GIT_CGROUP_VERSION": "2", "_MOUNT": str(mount)}))
        out.append((f"rlimits only, {iso}", iso, {"JANUS_GIT_NO_CGROUPS": "1"}))
    return out


def figures(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="janus-bench-figures-"))
    os.chmod(root, 0o755)
    code = args.code or str(Path(__file__).resolve().parent.parent)
    print(f"code: {code}; daemon ballast {args.ballast_mb} MB; median of {args.runs} runs")
    print(f"{'backend':<40} {'program':<9} {'rss MB':>7} {'procs':>5} {'cpu s':>6} "
          f"{'truth':>6} {'peak %':>6}  how (memory / cpu / processes)")
    for name, iso, env in figure_backends():
        mount = env.pop("_MOUNT", "")
        child_env = {**os.environ, **env, "BENCH_CODE": code, "BENCH_ISO": iso,
                     "BENCH_PROGRAMS": json.dumps(FIGURE_PROGRAMS),
                     "BENCH_LIMITS": json.dumps({**LIMITS, "timeout_s": 30,
                                                 "cpu_percent": 100})}
        done = subprocess.run([sys.executable, "-c", FIGURES_CHILD, mount,
                               str(args.ballast_mb), str(args.runs), str(root)],
                              capture_output=True, text=True, env=child_env, timeout=300)
        if mount:
            _rm_cgroups(Path(mount))
        if done.returncode != 0:
            print(f"{name:<40} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        found = json.loads(done.stdout.splitlines()[-1])
        print(f"# {name}: janus_git from {found.pop('_code')}")
        for prog, f in found.items():
            m = f["measured"]
            how = " / ".join(m.get(k, "?") for k in ("peak_rss_mb", "cpu_seconds",
                                                      "peak_processes")) if m else "(none)"
            print(f"{name:<40} {prog:<9} {f['peak_rss_mb']:>7.1f} {f['peak_processes']:>5} "
                  f"{f['cpu_seconds']:>6.3f} {f.get('truth', 0):>6.3f} "
                  f"{f['cpu_peak_percent']:>6.1f}  {how}")


def _rm_cgroups(mount: Path) -> None:
    for top in mount.glob("janus-git-bench-*"):
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            d.rmdir()
        top.rmdir()


if __name__ == "__main__":
    if "--figures" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--figures", action="store_true")
        parser.add_argument("--runs", type=int, default=3)
        parser.add_argument("--ballast-mb", type=int, default=250)
        parser.add_argument("--code", help="a janus-git tree to measure (default: this one)")
        figures(parser.parse_args())
    else:
        main()
