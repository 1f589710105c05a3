"""Helpers for tests that run the daemon on a real state repository: in this process
(`burst`), or as a real child process (`DaemonProcess`, `run_once`)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from conftest import ALICE, git


def wait_for(pred: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def record(root: Path, pid: str, rev: str = "HEAD") -> dict:
    path = f"proposals/{pid[0:4]}/{pid[4:6]}/{pid}.yaml"
    out = git(root, "show", f"{rev}:{path}", check=False)
    return yaml.safe_load(out.stdout) if out.returncode == 0 else {}


def status(root: Path, pid: str) -> str | None:
    return record(root, pid).get("status")


def wait_status(root: Path, pid: str, *wanted: str, timeout: float = 20.0) -> dict:
    wait_for(lambda: status(root, pid) in wanted, timeout,
             f"{pid} to be {'/'.join(wanted)} (is {status(root, pid)})")
    return record(root, pid)


def daemon_json(root: Path) -> dict:
    try:
        return json.loads((root / ".git" / "janus" / "daemon.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_read(root: Path, timeout: float = 20.0) -> None:
    """The daemon's acknowledgement that it has read HEAD as it is now: its status file (written
    at the end of the step that read it, decisions made) names HEAD or a commit after it."""
    head = git(root, "rev-parse", "HEAD").stdout.strip()

    def read() -> bool:
        seen = daemon_json(root).get("head")
        return bool(seen) and git(root, "merge-base", "--is-ancestor", head, seen,
                                  check=False).returncode == 0
    wait_for(read, timeout, f"the daemon to read {head[:10]}")


def outbox_empty(root: Path) -> bool:
    """Whether every notification posted has gone to every target (nothing more can follow
    from what was posted)."""
    from janus_git.notify.outbox import Outbox
    return not Outbox(root).pending()


def propose(root: Path, *argv: str, type_: str = "analysis", tool: str = "shell",
            mission: str = "TEST", args_json: str | None = None) -> str:
    cmd = [sys.executable, "-m", "janus_git.cli", "propose", "-C", str(root), "-m", mission,
           "-t", type_, "--tool", tool, "--json"]
    if args_json is not None:
        cmd += ["--args-json", args_json]
    else:
        cmd += ["--", *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["id"]


def person_commits(root: Path, message: str, *paths: str, who=ALICE) -> None:
    """`git add PATHS && git commit` as a person would, adding again when git's own race (a
    concurrent `commit --only` writes back an index read before the add) undid the add."""
    for _ in range(20):
        git(root, "add", "-A", "--", *paths)
        out = git(root, "commit", "-qm", message, who=who, check=False)
        if out.returncode == 0:
            return
        if "nothing added to commit" not in out.stdout + out.stderr \
                and "no changes added" not in out.stdout + out.stderr:
            out.check_returncode()
    raise AssertionError(f"could not commit {paths}")


def set_status(root: Path, pid: str, new: str, who: tuple[str, str] = ALICE,
               sign_key: Path | None = None, **changes) -> str:
    """Edit the proposal file and commit it as WHO: how a person approves."""
    path = root / f"proposals/{pid[0:4]}/{pid[4:6]}/{pid}.yaml"
    data = yaml.safe_load(path.read_text())
    data["status"] = new
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    # `commit -- PATH` takes the tracked file from the working tree under git's own lock: no
    # separate `git add` for a concurrent daemon commit to undo
    args = ["commit", "-qm", f"{new} {pid}"]
    if sign_key:
        args = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={sign_key}", *args, "-S"]
    git(root, *args, "--", str(path), who=who)
    # not `rev-parse HEAD`: the daemon may have committed on top already
    return git(root, "log", "-1", "--format=%H", f"--author={who[1]}", "--",
               str(path)).stdout.strip()


class DaemonProcess:
    """`janus-git daemon DIR` as a real child process."""

    def __init__(self, root: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.log = root.parent / f"daemon-{time.monotonic_ns()}.log"
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "janus_git.cli", "daemon", str(root), "--no-think", *extra],
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"), env=full_env,
            start_new_session=True)

    def wait_ready(self, timeout: float = 20.0) -> "DaemonProcess":
        status_file = self.root / ".git" / "janus" / "daemon.json"

        def ready() -> bool:
            try:
                st = json.loads(status_file.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return False
            return st.get("pid") == self.proc.pid and st.get("activity") != "starting"

        wait_for(ready, timeout, "the daemon to start")
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def kill9(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def text(self) -> str:
        return self.log.read_text()

    def __enter__(self) -> "DaemonProcess":
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


def burst(root: Path, **kw) -> int:
    """The daemon in this process until it is idle, as rq's `work(burst=True)`: no
    subprocess, no sleeps.  Each burst is a restart: the agent's earlier commits are known by
    their signatures again, as a new process would know them."""
    from janus_git.daemon import Daemon
    return Daemon(root, think=False, **kw).work(burst=True)


def run_once(root: Path, env: dict[str, str] | None = None, timeout: float = 60.0
             ) -> subprocess.CompletedProcess:
    """`janus-git daemon --once` as a child process (crash points, the lock, signals)."""
    return subprocess.run([sys.executable, "-m", "janus_git.cli", "daemon", str(root),
                           "--once", "--no-think"], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def fsck_clean(root: Path) -> None:
    out = git(root, "fsck", "--strict", "--no-dangling", check=False)
    assert out.returncode == 0, out.stderr


def tool_use_lines(root: Path, pid: str) -> list[dict]:
    text = git(root, "show", "HEAD:logs/tool_use.jsonl", check=False).stdout
    return [json.loads(line) for line in text.splitlines()
            if line.strip() and json.loads(line).get("proposal") == pid]
