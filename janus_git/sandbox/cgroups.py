"""Per-run cgroups.  cgroup v1 here: one cgroup per controller (memory, pids, cpu, cpuacct),
nested under the daemon's own.  Each is optional: a run gets the ones that could be created,
and says which.  cgroup v2 (one tree, a delegated subtree) is in cgroup2; `make` picks the
version this machine offers (``JANUS_GIT_CGROUP_VERSION=1|2`` forces one).

Besides the caps, a run's cgroups are where its figures come from (see measure): the kernel's
own peak memory, peak process count and CPU time, each counted from the moment the command is
released (`start_counting`), so the sandbox's set-up is left out."""
from __future__ import annotations

import functools
import itertools
import os
import threading
import time
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
Reading = tuple[float, str]  # a figure and how the kernel gave it

_serial = itertools.count()
_serial_lock = threading.Lock()


def run_name() -> str:
    """run-<pid>-<n>: unique even for two runs that start in the same nanosecond (parallel
    run slots); the pid names the owner for the sweep of a dead daemon's leftovers."""
    with _serial_lock:
        n = next(_serial)
    return f"run-{os.getpid()}-{time.monotonic_ns()}-{n}"


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
    for ctl in CONTROLLERS:
        base = cgroup_base(ctl)
        if base is not None and os.access(base.parent, os.W_OK):
            return 1
    from . import cgroup2
    return 2 if cgroup2.usable() else 1


def make(name: str, enabled: bool = True) -> "Cgroups":
    """One run's cgroups, of the version this machine offers."""
    if enabled and version() == 2:
        from . import cgroup2
        return cgroup2.Cgroups2(name)
    return Cgroups(name, enabled)


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


def probe() -> dict:
    """{controller: usable} for the version in use; v2 adds "tree" (runs get a cgroup of
    their own, even with no controller: exact CPU time and every process of the run)."""
    if version() == 2:
        from . import cgroup2
        return cgroup2.probe()
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
