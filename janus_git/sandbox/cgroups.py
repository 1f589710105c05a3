"""Per-run cgroup v1 controllers (memory, pids, cpu, cpuacct), nested under the daemon's own
cgroup.  Each is optional: a run gets the ones that could be created, and says which."""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")


def own_cgroup(controller: str) -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if controller in names.split(","):
                return path
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def cgroup_base(controller: str) -> Path | None:
    """Our own cgroup's janus-git child, so runs nest under the daemon's limits."""
    own = own_cgroup(controller)
    mount = CGROUP_ROOT / controller
    if own is None or not (mount / "cgroup.procs").exists():
        return None
    return mount / own.lstrip("/") / "janus-git"


class Cgroups:
    """One run's cgroups, one per controller that could be created."""

    def __init__(self, name: str, enabled: bool = True) -> None:
        self.name = name
        self.dirs: dict[str, Path] = {}
        for ctl in CONTROLLERS if enabled else ():
            base = cgroup_base(ctl)
            if base is None:
                continue
            try:
                base.mkdir(exist_ok=True)
                (base / name).mkdir()
                self.dirs[ctl] = base / name
            except OSError:
                continue

    def limit(self, limits: dict, overhead: int = 0, strict: bool = False) -> None:
        """Plain writes, cheap at any time: a pre-started run gets its caps just before its
        command is released.  STRICT (a waiter, already running in the cgroup): a memory
        or pids cap that does not take raises OSError, and the run starts cold instead."""
        caps = [self._set("memory", "memory.limit_in_bytes", limits["memory_mb"] << 20),
                self._set("pids", "pids.max", limits["pids"] + overhead)]
        # memsw fails without swap accounting: the other caps still hold
        self._set("memory", "memory.memsw.limit_in_bytes", limits["memory_mb"] << 20)
        quota = int(100_000 * (os.cpu_count() or 1) * limits["cpu_percent"] / 100)
        self._set("cpu", "cpu.cfs_period_us", 100_000)
        self._set("cpu", "cpu.cfs_quota_us", max(1000, quota))
        if strict and not all(caps):
            raise OSError(16, "a memory or pids cap could not be set on the waiting cgroup")

    def _set(self, ctl: str, name: str, value: int) -> bool:
        if ctl not in self.dirs:
            return True
        try:
            (self.dirs[ctl] / name).write_text(str(value))
            return True
        except OSError:
            return False

    def _read(self, ctl: str, name: str) -> str:
        try:
            return (self.dirs[ctl] / name).read_text() if ctl in self.dirs else ""
        except OSError:
            return ""

    def attach(self, pid: int) -> None:
        for d in self.dirs.values():
            (d / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        ctl = "pids" if "pids" in self.dirs else next(iter(self.dirs), None)
        return [int(x) for x in self._read(ctl, "cgroup.procs").split()] if ctl else []

    def cpu_seconds(self) -> float | None:
        text = self._read("cpuacct", "cpuacct.usage")
        return int(text) / 1e9 if text.strip() else None

    def oom_kills(self) -> int:
        for line in self._read("memory", "memory.oom_control").splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def pids_refused(self) -> int:
        text = self._read("pids", "pids.events").split()
        return int(text[1]) if len(text) == 2 and text[0] == "max" else 0

    def remove(self) -> None:
        for d in self.dirs.values():
            for _ in range(50):  # the last processes may take a moment to leave
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def owner_alive(name: str) -> bool:
    """run-<pid>-<ns>: another live daemon's run dir, maybe created a moment ago and still
    empty, is not ours to remove."""
    try:
        return psutil.pid_exists(int(name.split("-")[1]))
    except (IndexError, ValueError):
        return True


def probe() -> dict:
    out = {}
    for ctl in CONTROLLERS:
        base = cgroup_base(ctl)
        ok = False
        if base is not None and base.is_dir():
            for stale in base.glob("run-*"):  # left by a daemon that died
                if not owner_alive(stale.name):
                    try:
                        stale.rmdir()
                    except OSError:
                        pass
        if base is not None:
            probe = base / f"probe-{os.getpid()}"
            try:
                base.mkdir(exist_ok=True)
                probe.mkdir()
                probe.rmdir()
                ok = True
            except OSError:
                pass
        out[ctl] = ok
    return out
