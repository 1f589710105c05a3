"""Remote mode: push -> run start, and throughput with 1, 2 and 3 daemons, beside
the local daemon of today, measured in the same run.

The remote is a bare repository served by `git daemon` on 127.0.0.1; the reviewer works in
her own clone; each daemon is a real process on its own clone.

- latency: Alice approves a manual `python` proposal that prints time.time() and pushes; we
  time from her push returning to the time the tool printed (its real start).  Modes: the
  webhook (a signed delivery sent right after the push), polling (poll_seconds 2), and the
  local daemon today (the approval committed in the daemon's own repository).
  Targets: webhook p50 <= 300 ms; polling p50 <= 2 s + 300 ms.
- throughput: N automatic proposals whose tool sleeps 0.2 s, filed in one push; time until
  every one has succeeded, with 1, 2 and 3 daemons of one run slot each, and the local daemon
  with one slot.  Target: 3 daemons >= 2.5x faster than 1.

    python bench/bench_remote.py [--rounds 10] [--proposals 300] [--hook]
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import random
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import common  # noqa: E402

SECRET = b"bench-secret"
PRINT_TIME = ["-c", "import time; print(repr(time.time()))"]


def make_state(base: Path) -> Path:
    from janus_git.staterepo import init_state

    from conftest import AGENT, ALICE, TEST_MISSION, configure
    root, _ = init_state(base / "state")
    (root / "missions" / "TEST.yaml").write_text(TEST_MISSION)
    configure(root, agent={"name": AGENT[0], "email": AGENT[1]},
              approvers=[{"name": ALICE[0], "email": ALICE[1]}])
    return root


def deliver(port: int, n: int) -> None:
    body = f'{{"ref": "refs/heads/main", "n": {n}}}'.encode()
    sig = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST",
                                 headers={"X-Hub-Signature-256": sig,
                                          "X-GitHub-Delivery": f"bench-{n}-{time.time()}"})
    urllib.request.urlopen(req, timeout=5).read()


def tool_started(root: Path, pid: str, rev: str, timeout: float = 30) -> float:
    """The time the tool printed, once its output is at REV (fetching when remote)."""
    from conftest import git
    path = f"logs/runs/{pid}.txt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rev != "HEAD":
            git(root, "fetch", "-q", "origin")
        out = git(root, "show", f"{rev}:{path}", check=False)
        if out.returncode == 0 and out.stdout.strip():
            return float(out.stdout.split()[0])
        time.sleep(0.02)
    raise TimeoutError(f"{pid} did not run within {timeout}s")


def approve_and_time(reviewer: Path, rev: str, n: int, port: int | None) -> float:
    from janus_git import actions
    from janus_git.staterepo import StateRepo

    from conftest import git
    if rev != "HEAD":
        git(reviewer, "pull", "-q", "--ff-only")
    sr = StateRepo(reviewer)
    p = actions.propose(sr, mission="TEST", type_="maintenance", tool="python",
                        args=PRINT_TIME, rationale="bench")
    # the daemon decides (manual: it waits for a person); then a random phase against the
    # poll interval, so polling is not timed at one lucky phase
    time.sleep(1.0 + random.random() * 2.0)
    if rev != "HEAD":
        git(reviewer, "pull", "-q", "--ff-only")
    sr = StateRepo(reviewer)
    actions.approve(sr, p.id)  # commits, and on a clone with a remote pushes
    t0 = time.time()
    if port is not None:
        deliver(port, n)
    return (tool_started(reviewer, p.id, rev) - t0) * 1000


def latency(base: Path, mode: str, rounds: int) -> list[float]:
    import shutil

    from daemonkit import DaemonProcess
    from fleet import share
    from remotekit import GitDaemonRemote, clone, free_port
    work = base / mode
    state = make_state(work)
    if mode == "local":
        with DaemonProcess(state):
            return [approve_and_time(state, "HEAD", n, None) for n in range(rounds)]
    with GitDaemonRemote(work / "server") as remote:
        port = free_port()
        cfg = {"poll_seconds": 2}
        if mode == "webhook":
            cfg = {"poll_seconds": 60, "webhook": {"listen": f"127.0.0.1:{port}",
                                                   "secret_env": "BENCH_HOOK"}}
        url = share(state, remote, **cfg)
        daemon_clone, alice = clone(url, work / "daemon"), clone(url, work / "alice")
        with DaemonProcess(daemon_clone, "--instance", "d1",
                           env={"BENCH_HOOK": SECRET.decode()}):
            out = [approve_and_time(alice, "origin/main", n,
                                    port if mode == "webhook" else None)
                   for n in range(rounds)]
    shutil.rmtree(work, ignore_errors=True)
    return out


def throughput(base: Path, daemons: int, n: int, batch: int = 8, poll: float = 0.5,
               hook: bool = False) -> float:
    """Seconds until N sleeping auto runs have all succeeded on DAEMONS daemons (0: the
    local daemon today).  With HOOK, the remote delivers a forge's webhook to every daemon
    after each push (tests/remotekit.forge_webhooks) and the poll is only a safety net."""
    from conftest import configure, git
    from daemonkit import DaemonProcess
    from fleet import SLEEPER, file_many, fleet, share, start
    from remotekit import GitDaemonRemote, clone, forge_webhooks, free_port
    work = base / f"tp-{daemons}{'-hook' if hook else ''}"
    state = make_state(work)
    if daemons == 0:  # the local daemon today, one slot
        import yaml
        tools = yaml.safe_load((state / "state/agent.yaml").read_text())["tools"]
        configure(state, tools={**tools, "nap": SLEEPER},
                  controls={"max_parallel_runs": 1, "reserved_for_people": 0,
                            "governor": {"target_cpu_percent": 100},
                            "relief_valve": {"max_pending_auto": 10000}})
        with DaemonProcess(state):
            ids = file_many(state, n, "nap", ["0.2"])
            t0 = time.monotonic()
            _wait_local(state, ids)
            return time.monotonic() - t0
    with GitDaemonRemote(work / "server") as remote:
        listen = [f"127.0.0.1:{free_port()}" for _ in range(daemons)] if hook else None
        cfg = {"poll_seconds": poll}
        if hook:
            cfg = {"poll_seconds": 10, "webhook": {"listen": "127.0.0.1:1",
                                                   "secret_env": "BENCH_HOOK"}}
            forge_webhooks(remote.path, [f"http://{a}/" for a in listen], SECRET)
        # the product's lease (30 s: a heartbeat every 10 s), not the tests' 3 s: nothing
        # here waits for a lease to expire
        url = share(state, remote, tools={"nap": SLEEPER}, claim_batch=batch,
                    lease_seconds=30, **cfg)
        alice = clone(url, work / "alice")
        procs = start(fleet(url, work, daemons), listen, BENCH_HOOK=SECRET.decode())
        try:
            ids = file_many(alice, n, "nap", ["0.2"])
            git(alice, "push", "-q", "origin", "HEAD:main")
            t0 = time.monotonic()
            host0 = _host_busy()
            if not hook:  # no waiting for a poll: the bench times the work itself
                for proc in procs:
                    proc.proc.send_signal(signal.SIGUSR1)
            _wait_remote(alice, len(ids))
            took = time.monotonic() - t0
            CPU[daemons] = sum(_cpu(proc.proc.pid) for proc in procs)
            HOST[daemons] = _host_busy(host0)
            import json
            for i in range(daemons):
                st = json.loads((work / f"daemon-{i + 1}/.git/janus/daemon.json").read_text())
                r = st["remote"]
                print(f"    d{i + 1}: {r['pushes']} pushes, {r['refused_pushes']} refused "
                      f"({r.get('replayed', 0)} replayed on the new tip), "
                      f"{r['fetches']} fetches")
            return took
        finally:
            for proc in procs:
                proc.stop()


CPU: dict[int, float] = {}  # daemons -> their CPU seconds (with their tools'), last run
HOST: dict[int, float] = {}  # daemons -> the host's busy share over the run


def _host_busy(since=None):
    """The host's CPU times now, or (with SINCE) the busy share since then, 0-100 %."""
    import psutil
    now = psutil.cpu_times()
    if since is None:
        return now
    total = sum(now) - sum(since)
    idle = (now.idle + now.iowait) - (since.idle + since.iowait)
    return 100.0 * (total - idle) / total if total else 0.0


def _cpu(pid: int) -> float:
    """CPU seconds of a daemon and everything it started (its git, bwrap and tools)."""
    import psutil
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
        return sum(sum(p.cpu_times()[:4]) for p in procs)
    except psutil.Error:
        return 0.0


def _succeeded(root: Path, rev: str) -> int:
    """How many proposals REV shows succeeded (one `git grep`, no parsing here)."""
    from conftest import git
    out = git(root, "grep", "-c", "^status: succeeded", rev, "--", "proposals", check=False)
    return sum(int(line.rsplit(":", 1)[1]) for line in out.stdout.splitlines())


def _wait_remote(root: Path, n: int, timeout: float = 600) -> None:
    """Until the remote's branch shows N succeeded: `git ls-remote` every 0.1 s, and a fetch
    and a count only when the tip moved (the watcher's own CPU stays out of the figure)."""
    from conftest import git
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        tip = git(root, "ls-remote", "origin", "refs/heads/main").stdout.split()[:1]
        if tip and tip[0] != seen:
            seen = tip[0]
            git(root, "fetch", "-q", "origin")
            if _succeeded(root, seen) >= n:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{n} runs did not all succeed within {timeout:.0f} s")


def _wait_local(root: Path, ids: list[str]) -> None:
    while _succeeded(root, "HEAD") < len(ids):
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--proposals", type=int, default=300)  # the workload
    ap.add_argument("--claim-batch", type=int, default=8)
    ap.add_argument("--poll", type=float, default=0.5)
    ap.add_argument("--only", choices=["latency", "throughput"])
    ap.add_argument("--hook", action="store_true",
                    help="throughput with a forge's webhook after every push, not polling")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        common.use_env(base / "home")
        print("push -> run start (ms)       p50     p90   target")
        figures = {}
        modes = (("local", None), ("webhook", 300.0), ("polling", 2300.0))
        for mode, target in modes if args.only != "throughput" else ():
            ms = latency(base, mode, args.rounds)
            figures[mode] = ms
            verdict = "" if target is None else ("ok" if statistics.median(ms) <= target
                                                 else "MISS")
            print(f"  {mode:<24} {statistics.median(ms):7.0f} {common.p90(ms):7.0f}   "
                  f"{'' if target is None else f'<= {target:.0f}'} {verdict}")
        if args.only == "latency":
            return
        how = "a forge's webhook after each push" if args.hook else f"poll {args.poll} s"
        print(f"\nthroughput, {args.proposals} auto runs of 0.2 s, one slot per daemon, "
              f"claim_batch {args.claim_batch}, {how}")
        times = {}
        for daemons in (0, 1, 2, 3):
            times[daemons] = throughput(base, daemons, args.proposals, args.claim_batch,
                                        args.poll, args.hook)
            label = "local daemon today" if daemons == 0 else f"{daemons} daemon(s), remote"
            cpu = (f"  daemons' CPU {CPU[daemons]:5.1f} s, host busy {HOST[daemons]:.0f} %"
                   if daemons in CPU else "")
            print(f"  {label:<24} {times[daemons]:6.1f} s  "
                  f"{args.proposals / times[daemons]:5.2f} runs/s{cpu}")
        speedup = times[1] / times[3]
        print(f"  3 daemons vs 1: {speedup:.2f}x (target >= 2.5x) "
              f"{'ok' if speedup >= 2.5 else 'MISS'}")


if __name__ == "__main__":
    main()
