"""Remote mode (daemon/remote.py): the state repository on a shared remote served by real
servers on 127.0.0.1 (`git daemon`, smart HTTP through `git http-backend`), reviewers in their
own clones, daemons in theirs, each a real process."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import ALICE, configure, git
from daemonkit import (DaemonProcess, fsck_clean, propose, record, set_status, wait_for)
from remotekit import GitDaemonRemote, HttpRemote, clone, seed_remote

MANUAL = "maintenance"


def shared(state_dir: Path, remote, **cfg) -> Path:
    """Put STATE_DIR (configured for remote mode) on REMOTE; returns the remote's url."""
    configure(state_dir, remote={"poll_seconds": 0.5, "lease_seconds": 3, **cfg})
    seed_remote(remote, state_dir)
    return remote.url


def pull(root: Path) -> None:
    git(root, "pull", "-q", "--ff-only")


def pulled_status(root: Path, pid: str) -> str | None:
    pull(root)
    return record(root, pid).get("status")


def push(root: Path) -> None:
    git(root, "push", "-q", "origin", "HEAD:main")


@pytest.mark.parametrize("kind", [GitDaemonRemote, HttpRemote], ids=["git", "http"])
def test_round_trip_reviewer_clone_to_daemon_and_back(state_dir, tmp_path, kind):
    with kind(tmp_path / "server") as remote:
        url = shared(state_dir, remote)
        daemon_clone = clone(url, tmp_path / "daemon")
        alice = clone(url, tmp_path / "alice")
        with DaemonProcess(daemon_clone, "--instance", "d1"):
            pid = propose(alice, "-c", "print('round trip')", tool="python", type_=MANUAL)
            push(alice)
            # the daemon decides (manual: it offers the approval branch on the remote)
            wait_for(lambda: git(alice, "ls-remote", "origin", f"janus/proposal/{pid}")
                     .stdout.strip(), 20, "the approval branch on the remote")
            pull(alice)
            assert record(alice, pid)["status"] == "proposed"
            set_status(alice, pid, "approved")
            push(alice)
            wait_for(lambda: pulled_status(alice, pid) == "succeeded", 30, "the result")
        rec = record(alice, pid)
        assert rec["decision"]["by"] == ALICE[1]
        assert rec["execution"]["instance"] == "d1"
        assert "round trip" in (alice / rec["execution"]["output"]).read_text()
        for root in (alice, daemon_clone):
            fsck_clean(root)
