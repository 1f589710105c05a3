"""Per-run cgroups, v1 (v1.py: one cgroup per controller) or v2 (v2.py: one tree, in the
subtree systemd delegates); `make` picks the version the host offers
(``JANUS_GIT_CGROUP_VERSION=1|2`` forces one).

Besides the caps, a run's cgroups are where its figures come from (see measure): the kernel's
own peak memory, peak process count and CPU time, each counted from the moment the command is
released (`start_counting`), so the sandbox's set-up is left out."""
from __future__ import annotations

import functools
import os

from . import v1, v2
from .base import CGROUP_ROOT, Reading, owner_alive, run_name, sweep_stale
from .v1 import CONTROLLERS, Cgroups, cgroup_base

__all__ = ["CGROUP_ROOT", "CONTROLLERS", "Cgroups", "Reading", "cgroup_base", "make",
           "owner_alive", "probe", "run_name", "sweep_stale", "v1", "v2", "version"]


def forced_version() -> int | None:
    v = os.environ.get("JANUS_GIT_CGROUP_VERSION", "")
    return int(v) if v in ("1", "2") else None


@functools.lru_cache(maxsize=None)
def version() -> int:
    """1 where a v1 controller of ours is mounted and writable, else 2 where a cgroup2 tree
    is (a v2-only host, or a hybrid one whose v1 controllers are not ours), else 1 (which
    then finds nothing)."""
    forced = forced_version()
    if forced:
        return forced
    if v1.usable():
        return 1
    return 2 if v2.usable() else 1


def make(name: str, enabled: bool = True) -> "Cgroups":
    """One run's cgroups, of the version the host offers."""
    if enabled and version() == 2:
        return v2.Cgroups2(name)
    return Cgroups(name, enabled)


def probe() -> dict:
    """{controller: usable} for the version in use; v2 adds "tree" (runs get a cgroup of
    their own, even with no controller: exact CPU time and every process of the run)."""
    return v2.probe() if version() == 2 else v1.probe()
