"""Several daemons on one remote, for tests and bench/bench_remote.py: a state repository put
on a real server (remotekit), a reviewer's clone, N daemon clones each run as a real process,
and many sleeping auto proposals filed in one commit."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import yaml

from conftest import ALICE, configure, git
from daemonkit import DaemonProcess
from remotekit import clone, seed_remote

SLEEPER = {"description": "sleeps (tests)", "risk": "low", "auto_exec": True,
           "network": False, "runner": "external", "command": ["sleep"]}


def share(state_dir: Path, remote, *, tools: dict | None = None, **remote_cfg) -> str:
    """Put STATE_DIR on REMOTE in remote mode (Alice, an approver, commits the config)."""
    changes = {"remote": {"poll_seconds": 0.5, "lease_seconds": 3, **remote_cfg},
               # one run slot each; this 2-core box runs the whole fleet, so neither the
               # governor (CPU) nor the valve (queue) should hold the work back
               "controls": {"max_parallel_runs": 1, "reserved_for_people": 0,
                            "governor": {"target_cpu_percent": 100},
                            "relief_valve": {"max_pending_auto": 10000}}}
    if tools:
        registry = yaml.safe_load((state_dir / "state/agent.yaml").read_text())["tools"]
        changes["tools"] = {**registry, **tools}
    configure(state_dir, **changes)
    seed_remote(remote, state_dir)
    return remote.url


def file_many(root: Path, n: int, tool: str, args: list[str], type_: str = "analysis") -> list[str]:
    """N proposals filed by Alice in one commit (as `janus-git propose` files each)."""
    from janus_git import lifecycle
    from janus_git.policy import decide
    from janus_git.staterepo import StateRepo
    sr = StateRepo(root)
    ids = []
    for _ in range(n):
        p = lifecycle.new_proposal(mission="TEST", type_=type_, tool=tool, args=args,
                                   rationale="fleet", created_by=f"{ALICE[0]} <{ALICE[1]}>")
        p.risk = decide(p, sr.config).risk
        path = root / p.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(p.to_yaml())
        ids.append(p.id)
    git(root, "add", "proposals")
    git(root, "commit", "-qm", f"file {n} proposals", who=ALICE)
    return ids


def start(roots: list[Path], listen: list[str] | None = None, **env) -> list[DaemonProcess]:
    """A daemon process on each of ROOTS (instances d1, d2, ...), each with its own webhook
    address from LISTEN if given; FLEET_VERBOSE=1 logs at debug level."""
    verbose = ["-v"] if os.environ.get("FLEET_VERBOSE") else []
    procs = [DaemonProcess(root, "--instance", f"d{i + 1}", *verbose,
                           *(["--webhook-listen", listen[i]] if listen else []),
                           env=env or None)
             for i, root in enumerate(roots)]
    for proc in procs:
        proc.wait_ready(60)
    return procs


def fleet(url: str, base: Path, n: int) -> list[Path]:
    return [clone(url, base / f"daemon-{i + 1}") for i in range(n)]


def statuses(root: Path, ids: list[str]) -> dict[str, str]:
    """Each proposal's status at the remote's tip (fetched into ROOT)."""
    git(root, "fetch", "-q", "origin")
    out = git(root, "ls-tree", "-r", "--name-only", "origin/main", "proposals").stdout.split()
    want = {i for i in ids}
    paths = [p for p in out if Path(p).stem in want]
    text = git(root, "cat-file", "--batch", input="".join(
        f"origin/main:{p}\n" for p in paths)).stdout
    return dict(re.findall(r"^id: ['\"]?([\w-]+)['\"]?$[\s\S]*?^status: (\w+)$", text, re.M))


def runs_in_history(root: Path, rev: str = "origin/main") -> dict[str, int]:
    """How many times each proposal went approved -> running, counted over every commit in
    history (not in HEAD: a run twice would show only once there)."""
    out = git(root, "log", rev, "--format=%(trailers:key=Janus-Proposal,valueonly,separator=%x2C)"
              "|%(trailers:key=Janus-Transition,valueonly,separator=%x2C)").stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        pids, _, moves = line.partition("|")
        for pid, move in zip(pids.split(","), moves.split(",")):
            if move.strip() == "approved -> running":
                counts[pid.strip()] = counts.get(pid.strip(), 0) + 1
    return counts


def wait_done(root: Path, ids: list[str], timeout: float, done=("succeeded", "interrupted",
                                                                "failed"),
              every: float = 0.5) -> float:
    start_at = time.monotonic()
    while time.monotonic() - start_at < timeout:
        now = statuses(root, ids)
        if len(now) == len(ids) and all(s in done for s in now.values()):
            return time.monotonic() - start_at
        time.sleep(every)
    left = {k: v for k, v in statuses(root, ids).items() if v not in done}
    raise AssertionError(f"{len(left)} not done after {timeout}s: {list(left.items())[:5]}")


def fsck(root: Path) -> None:
    out = subprocess.run(["git", "fsck", "--strict", "--no-dangling"], cwd=root,
                         capture_output=True, text=True)
    assert out.returncode == 0, f"{root}: {out.stderr}"
