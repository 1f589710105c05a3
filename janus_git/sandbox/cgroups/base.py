"""What both cgroup versions share: a run cgroup's name, the kernel's files as numbers, and
the sweep of what a dead daemon left behind."""
from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
Reading = tuple[float, str]  # a figure and how the kernel gave it

_serial = itertools.count()
_serial_lock = threading.Lock()


def run_name() -> str:
    """run-<pid>-<n>: unique even for two runs that start in the same nanosecond (parallel
    run slots); the pid names the owner for the sweep of a dead daemon's leftovers."""
    with _serial_lock:
        n = next(_serial)
    return f"run-{os.getpid()}-{time.monotonic_ns()}-{n}"


def _int(text: str) -> int:
    try:
        return int(text.split()[0])
    except (IndexError, ValueError):
        return 0


def _stat(text: str) -> dict[str, int]:
    """A `key value` file (memory.stat, cpu.stat, memory.events) as a dict."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def owner_alive(name: str) -> bool:
    """run-<pid>-<ns>: another live daemon's run dir, maybe created a moment ago and still
    empty, is not ours to remove."""
    try:
        return psutil.pid_exists(int(name.split("-")[1]))
    except (IndexError, ValueError):
        return True


def sweep_stale(base: Path) -> None:
    """Remove the run cgroups a dead daemon left under BASE (a live one's are left alone)."""
    for stale in base.glob("run-*"):
        if not owner_alive(stale.name):
            try:
                stale.rmdir()
            except OSError:
                pass
