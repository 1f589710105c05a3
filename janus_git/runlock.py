"""One daemon per state repository: an flock under .git/janus/, with the daemon's pid and
what it is doing written beside it for `janus-git status`."""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from .errors import JanusError
from .util import atomic_write


class DaemonLock:
    """One daemon per repository: an flock on .git/janus/daemon.lock, pid and state beside it."""

    def __init__(self, root: Path) -> None:
        self.dir = root / ".git" / "janus"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "daemon.lock"
        self.status_path = self.dir / "daemon.json"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JanusError(f"another janus-git daemon already works on this repository "
                             f"(pid {read_status(self.path.parent.parent.parent).get('pid')}); "
                             "`janus-git status` shows it") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write_status(self, status: dict[str, Any]) -> None:
        try:
            atomic_write(self.status_path, json.dumps(status, indent=1).encode(),
                         make_parents=False)
        except FileNotFoundError:  # the repository was removed under us
            pass


def read_status(root: Path) -> dict[str, Any]:
    """What the daemon last said about itself, and whether it still holds the lock."""
    jdir = root / ".git" / "janus"
    try:
        status = json.loads((jdir / "daemon.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"running": False}
    alive = False
    try:
        fd = os.open(jdir / "daemon.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            alive = True
        finally:
            os.close(fd)
    except FileNotFoundError:
        pass
    status["running"] = alive
    return status
