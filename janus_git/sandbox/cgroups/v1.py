"""Per-run cgroups on cgroup v1: one cgroup per controller (memory, pids, cpu, cpuacct),
nested under the daemon's own.  Each is optional: a run gets the ones that could be created,
and says which."""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from .base import CGROUP_ROOT, Reading, _int, _stat, sweep_stale

CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")


def usable() -> bool:
    """Whether a v1 controller of ours is mounted and writable."""
    for ctl in CONTROLLERS:
        base = cgroup_base(ctl)
        if base is not None and os.access(base.parent, os.W_OK):
            return True
    return False


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
    """One run's cgroups, one per controller that could be created (v1)."""
    version = 1

    def __init__(self, name: str, enabled: bool = True) -> None:
        self.name = name
        self.dirs: dict[str, Path] = {}
        self._base: tuple[int, int] | None = None  # set-up's lasting charge, file cache
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

    @property
    def joined(self) -> bool:
        """Whether the run has a cgroup to be born in (v2 may have one with no controller)."""
        return bool(self.dirs)

    def attach(self, pid: int) -> None:
        for d in self.dirs.values():
            (d / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        ctl = "pids" if "pids" in self.dirs else next(iter(self.dirs), None)
        return [int(x) for x in self._read(ctl, "cgroup.procs").split()] if ctl else []

    def start_counting(self) -> None:
        """Just before the command is released.  The memory cgroup's peak is reset to what is
        charged now (writing max_usage_in_bytes does that).  At the end the figure leaves out
        what the set-up charged for good (bwrap's mounts, page cache: all but the waiter's
        anonymous memory, which its exec gives back) and the page cache read since, so it is
        the run's own memory, give or take the waiter's anonymous pages (0.3 MB for a shell,
        ~6 MB for confine.py) when the run itself stays below them."""
        if "memory" in self.dirs:
            self._set("memory", "memory.max_usage_in_bytes", 0)
            usage = _int(self._read("memory", "memory.usage_in_bytes"))
            stat = _stat(self._read("memory", "memory.stat"))
            self._base = (usage - stat.get("total_rss", 0), self._file_cache(stat))

    def _file_cache(self, stat: dict[str, int] | None = None) -> int:
        """Page cache less shmem: tmpfs pages (/dev/shm) are memory the run holds."""
        stat = stat if stat is not None else _stat(self._read("memory", "memory.stat"))
        return stat.get("total_cache", 0) - stat.get("total_shmem", 0)

    def memory_peak(self) -> Reading | None:
        """Bytes: the peak since start_counting, less what was charged then and the growth of
        the page cache since (file pages are reclaimable: not the run's memory)."""
        peak = self._read("memory", "memory.max_usage_in_bytes")
        if not peak.strip():
            return None
        usage, cache = self._base or (0, self._file_cache())
        grown = max(0, self._file_cache() - cache)
        return (max(0, _int(peak) - usage - grown),
                "cgroup-v1:memory.max_usage_in_bytes less set-up and page cache")

    def pids_peak(self) -> Reading | None:
        text = self._read("pids", "pids.peak")
        return (_int(text), "cgroup-v1:pids.peak") if text.strip() else None

    def cpu_reading(self) -> Reading | None:
        text = self._read("cpuacct", "cpuacct.usage")
        return (int(text) / 1e9, "cgroup-v1:cpuacct.usage") if text.strip() else None

    def cpu_seconds(self) -> float | None:
        reading = self.cpu_reading()
        return reading[0] if reading else None

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


def probe() -> dict:
    """{controller: usable} on v1 (stale runs swept)."""
    out = {}
    for ctl in CONTROLLERS:
        base = cgroup_base(ctl)
        ok = False
        if base is not None and base.is_dir():
            sweep_stale(base)
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
