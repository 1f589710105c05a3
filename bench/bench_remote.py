"""Remote mode (issue 10): push -> run start, and throughput with 1, 2 and 3 daemons, beside
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

    python bench/bench_remote.py [--rounds 10] [--proposals 150]
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
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
    from conftest import AGENT, ALICE, TEST_MISSION, configure
    from janus_git.state import init_state
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
    from janus_git.state import StateRepo
    from conftest import git
    if rev != "HEAD":
        git(reviewer, "pull", "-q", "--ff-only")
    sr = StateRepo(reviewer)
    p = actions.propose(sr, mission="TEST", type_="maintenance", tool="python",
                        args=PRINT_TIME, rationale="bench")
    time.sleep(1.0)  # the daemon decides (manual: it waits for a person)
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


def throughput(base: Path, daemons: int, n: int) -> float:
    from conftest import configure, git
    from daemonkit import DaemonProcess
    from fleet import SLEEPER, file_many, fleet, share, start, wait_done
    from remotekit import GitDaemonRemote, clone
    work = base / f"tp-{daemons}"
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
        url = share(state, remote, tools={"nap": SLEEPER})
        alice = clone(url, work / "alice")
        procs = start(fleet(url, work, daemons))
        try:
            ids = file_many(alice, n, "nap", ["0.2"])
            git(alice, "push", "-q", "origin", "HEAD:main")
            t0 = time.monotonic()
            for proc in procs:  # no waiting for a poll: the bench times the work itself
                proc.proc.send_signal(__import__("signal").SIGUSR1)
            wait_done(alice, ids, 600, done=("succeeded",))
            return time.monotonic() - t0
        finally:
            for proc in procs:
                proc.stop()


def _wait_local(root: Path, ids: list[str]) -> None:
    from conftest import git
    while True:
        out = git(root, "grep", "-c", "^status: succeeded", "HEAD", "--", "proposals",
                  check=False)
        done = sum(int(line.rsplit(":", 1)[1]) for line in out.stdout.splitlines())
        if done >= len(ids):
            return
        time.sleep(0.2)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--proposals", type=int, default=150)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        common.use_env(base / "home")
        print("push -> run start (ms)       p50     p90   target")
        figures = {}
        for mode, target in (("local", None), ("webhook", 300.0), ("polling", 2300.0)):
            ms = latency(base, mode, args.rounds)
            figures[mode] = ms
            verdict = "" if target is None else ("ok" if statistics.median(ms) <= target
                                                 else "MISS")
            print(f"  {mode:<24} {statistics.median(ms):7.0f} {pct(ms, 0.9):7.0f}   "
                  f"{'' if target is None else f'<= {target:.0f}'} {verdict}")
        print(f"\nthroughput, {args.proposals} auto runs of 0.2 s, one slot per daemon")
        times = {}
        for daemons in (0, 1, 2, 3):
            times[daemons] = throughput(base, daemons, args.proposals)
            label = "local daemon today" if daemons == 0 else f"{daemons} daemon(s), remote"
            print(f"  {label:<24} {times[daemons]:6.1f} s  "
                  f"{args.proposals / times[daemons]:5.2f} runs/s")
        speedup = times[1] / times[3]
        print(f"  3 daemons vs 1: {speedup:.2f}x (target >= 2.5x) "
              f"{'ok' if speedup >= 2.5 else 'MISS'}")


if __name__ == "__main__":
    main()
