"""Per-run cgroups on cgroup v2: one tree, in the subtree that systemd delegates to the daemon.

The daemon's own cgroup comes from /proc/self/cgroup (``0::/path``) and the tree's mount from
/proc/self/mountinfo (``JANUS_GIT_CGROUP2_MOUNT`` points it elsewhere).  Under systemd with
``Delegate=yes`` that cgroup (``.../janus-git.service``) is ours to write.  v2 lets no process
live in a cgroup that hands controllers to its children, so the daemon first moves itself into
a leaf of its own (``<own>/daemon``, which systemd 254+ does for us with
``DelegateSubgroup=daemon``) and only then enables memory, pids and cpu for the subtree.  The
layout then matches v1's::

    <own>/daemon/               the daemon (a leaf)
    <own>/janus-git/run-<...>/  one run: memory.max, memory.swap.max, pids.max, cpu.max

A run's cgroup is worth having even when no controller is delegated: its processes are born
in it (prestart), ``cpu.stat`` counts their CPU time exactly, and ``cgroup.procs`` names every
one of them.  The caps are then the rlimits, as without cgroups.

`Hierarchy` takes the mount and the daemon's path, so a test can point the same code at
another root (a fake tree of plain files) and check what it writes and how it reads."""
from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import psutil

from .base import Reading, _int, _stat, sweep_stale
from .v1 import Cgroups

WANTED = ("memory", "pids", "cpu")


def mount_point() -> Path | None:
    """Where the cgroup2 tree is mounted (the first such mount)."""
    forced = os.environ.get("JANUS_GIT_CGROUP2_MOUNT")
    if forced:
        return Path(forced)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4].replace("\\040", " "))
    return None


def own_path() -> str | None:
    """The daemon's cgroup in the v2 tree (relative to the tree's root as we see it)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:] or "/"
    except OSError:
        pass
    return None


def _names(text: str) -> set[str]:
    # the kernel lists "memory pids"; a plain file someone wrote may hold "+memory +pids"
    return {w.lstrip("+") for w in text.split()}


class Hierarchy:
    """The delegated subtree: MOUNT is the tree's root, OWN the daemon's cgroup in it."""

    def __init__(self, mount: Path, own: str) -> None:
        own = own or "/"
        if own.endswith("/daemon"):  # already in the leaf (DelegateSubgroup=daemon, a restart)
            own = own.removesuffix("/daemon") or "/"
        self.mount, self.own = Path(mount), own
        self.own_dir = self.mount / self.own.lstrip("/")
        self.problem = ""  # why runs get fewer controllers than WANTED (doctor says it)
        self._runs: Path | None = None
        self._lock = threading.Lock()

    def controllers(self, d: Path, name: str = "cgroup.controllers") -> set[str]:
        try:
            return _names((d / name).read_text()) & set(WANTED)
        except OSError:
            return set()

    def runs_dir(self) -> Path | None:
        """<own>/janus-git, set up once: the daemon in its leaf, the controllers enabled on
        the way down.  None where the daemon's cgroup is not ours to write."""
        with self._lock:
            if self._runs is None and os.access(self.own_dir / "cgroup.procs", os.W_OK):
                self._runs = self._set_up()
            return self._runs

    def _set_up(self) -> Path | None:
        if self.own != "/":
            self._leave_inner_node()
        runs = self.own_dir / "janus-git"
        try:
            runs.mkdir(exist_ok=True)
        except OSError as e:
            self.problem = f"cannot make {runs}: {e.strerror}"
            return None
        self._enable(self.own_dir)
        self._enable(runs)
        missing = set(WANTED) - self.controllers(runs, "cgroup.subtree_control")
        if missing and not self.problem:
            has = " ".join(sorted(self.controllers(self.own_dir))) or "none"
            self.problem = f"{', '.join(sorted(missing))} not delegated to {self.own} " \
                           f"(it has: {has})"
        return runs

    def _leave_inner_node(self) -> None:
        """We and our children move (a git started before the first run would otherwise
        keep the controllers from being enabled); a shell sharing our cgroup is not ours
        to move."""
        leaf = self.own_dir / "daemon"
        try:
            leaf.mkdir(exist_ok=True)
            here_now = set((self.own_dir / "cgroup.procs").read_text().split())
            for pid in [p for p in _ours() if str(p) in here_now]:
                try:
                    (leaf / "cgroup.procs").write_text(str(pid))
                except ProcessLookupError:
                    continue  # a child that ended meanwhile
        except OSError as e:
            self.problem = f"cannot move the daemon into {leaf}: {e.strerror}"

    def _enable(self, d: Path) -> None:
        want = self.controllers(d)
        if not want:
            return
        try:
            (d / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(want)))
        except OSError as e:
            # EBUSY: processes other than ours live in that cgroup (v2's no-internal-process
            # rule); the runs still get their cgroup, without these controllers
            self.problem = (f"cannot enable {' '.join(sorted(want))} in {d}: {e.strerror}"
                            + (" (other processes live there: run the daemon in a cgroup "
                               "of its own)" if e.errno == errno.EBUSY else ""))


def _ours() -> list[int]:
    """This process, then its descendants."""
    try:
        kids = [c.pid for c in psutil.Process().children(recursive=True)]
    except psutil.Error:
        kids = []
    return [os.getpid(), *kids]


_here: Hierarchy | None = None
_here_lock = threading.Lock()


def here() -> Hierarchy | None:
    """This process's hierarchy (None without a cgroup2 mount or a place in it)."""
    global _here
    with _here_lock:
        if _here is None:
            mount, own = mount_point(), own_path()
            if mount is None or own is None:
                return None
            _here = Hierarchy(mount, own)
        return _here


def usable() -> bool:
    h = here()
    return h is not None and h.runs_dir() is not None


class Cgroups2(Cgroups):
    """One run's cgroup in the v2 tree; `dirs` names the controllers it has (all the same
    directory), `path` the cgroup itself, which it has even with no controller."""
    version = 2

    def __init__(self, name: str, hierarchy: Hierarchy | None = None) -> None:
        super().__init__(name, enabled=False)
        self.path: Path | None = None
        self._peak_fd = -1
        h = hierarchy or here()
        runs = h.runs_dir() if h is not None else None
        if h is None or runs is None:
            return
        try:
            (runs / name).mkdir()
        except OSError:
            return
        self.path = runs / name
        # a child's controllers are its parent's subtree_control (read there: a fake tree of
        # plain files has no cgroup.controllers in a directory it did not prepare)
        for ctl in sorted(h.controllers(runs, "cgroup.subtree_control")):
            self.dirs[ctl] = self.path

    @property
    def joined(self) -> bool:
        return self.path is not None

    def limit(self, limits: dict, overhead: int = 0, strict: bool = False) -> None:
        caps = [self._set("memory", "memory.max", limits["memory_mb"] << 20),
                self._set("pids", "pids.max", limits["pids"] + overhead)]
        self._set("memory", "memory.swap.max", 0)  # as v1's memsw cap: no way around memory.max
        quota = int(100_000 * (os.cpu_count() or 1) * limits["cpu_percent"] / 100)
        if "cpu" in self.dirs and self.path is not None:
            try:
                (self.path / "cpu.max").write_text(f"{max(1000, quota)} 100000")
            except OSError:
                pass
        if strict and not all(caps):
            raise OSError(16, "a memory or pids cap could not be set on the waiting cgroup")

    def _file(self, name: str) -> str:
        try:
            return (self.path / name).read_text() if self.path is not None else ""
        except OSError:
            return ""

    def attach(self, pid: int) -> None:
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(x) for x in self._file("cgroup.procs").split()]

    def start_counting(self) -> None:
        """memory.peak resets for reads through the fd it was reset on (Linux 6.12+); on an
        older kernel the write fails and the figure is the cgroup's whole peak, less what
        was charged at this moment."""
        if "memory" not in self.dirs or self.path is None:
            return
        try:
            self._peak_fd = os.open(self.path / "memory.peak", os.O_RDWR | os.O_CLOEXEC)
            os.write(self._peak_fd, b"reset\n")
        except OSError:
            pass  # a kernel before 6.12: the whole peak, less the set-up's lasting charge
        stat = _stat(self._file("memory.stat"))
        self._base = (_int(self._file("memory.current")) - stat.get("anon", 0),
                      self._file_cache(stat))

    def _file_cache(self, stat: dict[str, int] | None = None) -> int:
        stat = stat if stat is not None else _stat(self._file("memory.stat"))
        return stat.get("file", 0) - stat.get("shmem", 0)

    def memory_peak(self) -> Reading | None:
        if "memory" not in self.dirs:
            return None
        text = os.pread(self._peak_fd, 64, 0).decode() if self._peak_fd >= 0 else \
            self._file("memory.peak")
        if not text.strip():
            return None
        usage, cache = self._base or (0, self._file_cache())
        grown = max(0, self._file_cache() - cache)
        return max(0, _int(text) - usage - grown), "cgroup-v2:memory.peak less page cache"

    def pids_peak(self) -> Reading | None:
        text = self._file("pids.peak") if "pids" in self.dirs else ""
        return (_int(text), "cgroup-v2:pids.peak") if text.strip() else None

    def cpu_reading(self) -> Reading | None:
        # cpu.stat's usage_usec is there in every v2 cgroup, cpu controller or not
        stat = _stat(self._file("cpu.stat"))
        if "usage_usec" not in stat:
            return None
        return stat["usage_usec"] / 1e6, "cgroup-v2:cpu.stat usage_usec"

    def oom_kills(self) -> int:
        return _stat(self._file("memory.events")).get("oom_kill", 0)

    def pids_refused(self) -> int:
        return _stat(self._file("pids.events")).get("max", 0)

    def remove(self) -> None:
        if self._peak_fd >= 0:
            os.close(self._peak_fd)
            self._peak_fd = -1
        for _ in range(50):  # the last processes may take a moment to leave
            try:
                if self.path is not None:
                    self.path.rmdir()
                return
            except OSError as e:
                if e.errno != errno.EBUSY:
                    return
                time.sleep(0.02)


def probe(h: Hierarchy | None = None) -> dict:
    """{memory, pids, cpu: delegated; tree: runs get a cgroup}; stale runs swept."""
    h = h or here()
    runs = h.runs_dir() if h is not None else None
    out = {ctl: False for ctl in WANTED}
    if h is None or runs is None:
        return {**out, "tree": False}
    sweep_stale(runs)
    probe_dir = runs / f"probe-{os.getpid()}"
    try:
        probe_dir.mkdir()
        probe_dir.rmdir()
    except OSError:
        return {**out, "tree": False}
    have = h.controllers(runs, "cgroup.subtree_control")
    return {**{ctl: ctl in have for ctl in WANTED}, "tree": True}


def delegation_advice(h: Hierarchy | None = None) -> str:
    """What to add to the unit, in words doctor prints; "" when runs get every controller."""
    h = h or here()
    if h is None:
        return ("no cgroup2 tree is mounted here (mount -t cgroup2 none /sys/fs/cgroup, or "
                "boot with systemd.unified_cgroup_hierarchy=1)")
    if h.runs_dir() is None:
        return (f"the daemon's cgroup {h.own} is not writable: run it under systemd with, in "
                "the [Service] section of its unit, Delegate=memory pids cpu (and "
                "DelegateSubgroup=daemon on systemd 254+), ProtectControlGroups=no; then "
                "systemctl daemon-reload && systemctl restart janus-git")
    if h.problem:
        return (f"{h.problem}: in the unit's [Service] section set Delegate=memory pids cpu "
                "(or Delegate=yes) and ProtectControlGroups=no, and start the daemon as "
                "the service's only process")
    return ""
