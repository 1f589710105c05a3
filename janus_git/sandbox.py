"""Run one command in a sandbox, under resource limits, measuring what it used.

Two isolation levels; the one used is recorded on every run:

* ``bwrap``: bubblewrap with every namespace unshared (``--share-net`` only when the tool
  declares ``network: true``), ``--cap-drop ALL``, the system bound read-only, the repository
  read-only at ``/repo`` (the working directory; its ``.git`` hidden unless asked), a fresh
  writable scratch dir at ``/tmp`` (also ``HOME``), ``--new-session``, ``--die-with-parent``,
  a clean environment, uid/gid 65534.
* ``reduced`` (no usable bwrap, or forced with ``JANUS_GIT_FORCE_REDUCED=1``): no mount or pid
  namespaces; the network is taken away with ``unshare --user --net`` where that works (else
  the run records that it could reach the network); rlimits, own session and process group, clean environment, uid 65534
  when the daemon is root; cwd is the repository (not writable by that uid), ``HOME`` and
  ``TMPDIR`` the scratch dir.

In both, when the cgroup v1 controllers are writable (``JANUS_GIT_NO_CGROUPS=1`` turns them
off), each run gets its own memory, pids, cpu and cpuacct cgroup: a hard memory cap, a process
cap against fork bombs, a CPU share and exact CPU accounting.  Without cgroups the rlimits are
the caps: RLIMIT_AS for memory, RLIMIT_NPROC for processes (only when the child runs as a
non-root uid: the kernel exempts root), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_CORE 0.

How the command gets its limits without ``preexec_fn`` (not safe in our threaded daemon), with
nothing of it running before: under bwrap, bwrap blocks on ``--block-fd`` before it forks the
command while we move its processes into the cgroups and set their rlimits with prlimit(2).
In the reduced sandbox, util-linux ``prlimit`` lowers its own rlimits and execs on, and with
cgroups a last ``/bin/sh -c 'read -r _ && exec "$@"'`` waits until its pid is attached.
Every descendant inherits both.

Limits (``agent.yaml`` ``limits``, per tool via ``Config.tool_limits``): ``memory_mb``,
``disk_write_mb`` (bytes written, and the largest file), ``timeout_s``, ``cpu_percent`` (the
share of the whole machine, enforced by the cpu cgroup; also sets the CPU-time budget to
``cpu_percent`` % of ``timeout_s`` unless ``cpu_s`` is given), ``pids``, ``output_kb`` (output
kept; past 64 times that the run is killed with limit ``output`` so a 1 GB output costs
nothing).  A run over a limit gets SIGTERM on its whole process group and cgroup, then SIGKILL
after a grace (2 s for timeout and cancel, 0.25 s for resources, which keep growing meanwhile).

For other modules (node_generator, process_chunk, ...)::

    from janus_git import sandbox
    res = sandbox.run(["python3", "-m", "pkg.mod"], limits, root,
                      ro_binds=sandbox.python_binds(), writable_dir=out_dir)
    # res: SandboxResult (exit_code, signal, limit_hit, isolation, resources, output, error...)
    # files the command wrote in /tmp (bwrap) or $TMPDIR (reduced) are in out_dir afterwards.

``run(argv, limits, root, *, network=False, cancel=None, on_start=None, stdin=None,
writable_dir=None, isolation=None, cgroups=None, ro_binds=(), hide_git=True, env=None)``
never raises
for a failing command; it raises ``SandboxError`` only when asked for bwrap where there is none.
"""
from __future__ import annotations

import functools
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from .errors import JanusError
from .proposal import utcnow

NOBODY = 65534
PATH = "/usr/local/bin:/usr/bin:/bin"
POLL_S = 0.025
OUTPUT_HARD_FACTOR = 64
LIMIT_KEYS = ("memory_mb", "disk_write_mb", "timeout_s", "cpu_percent", "pids", "output_kb")
_WRAPPER = 'read -r _ && exec "$@"'
# What a limit's kernel signal looks like once the command died of it.
_SIGNAL_LIMITS = {signal.SIGXCPU: "cpu", signal.SIGXFSZ: "disk"}
_MEMORY_WORDS = (b"MemoryError", b"Cannot allocate memory", b"std::bad_alloc",
                 b"out of memory", b"Out of memory")
_FORK_WORDS = (b"Resource temporarily unavailable", b"fork: retry", b"Cannot fork",
               b"can't fork")


class SandboxError(JanusError):
    pass


@dataclass
class SandboxResult:
    argv: list[str]
    isolation: str
    limits: dict
    exit_code: int | None
    signal: int | None
    limit_hit: str | None
    resources: dict
    output: bytes
    output_bytes: int
    started_at: str
    ended_at: str
    error: str = ""
    cgroups: list[str] = field(default_factory=list)
    network: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.limit_hit is None


def effective_limits(limits: dict) -> dict:
    from .config import DEFAULT_LIMITS
    out = {**DEFAULT_LIMITS, **{k: v for k, v in limits.items() if v is not None}}
    out.setdefault("cpu_s", max(1, round(out["timeout_s"] * out["cpu_percent"] / 100)))
    return out


# --- cgroups (v1) --------------------------------------------------------------------------

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")


def _own_cgroup(controller: str) -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if controller in names.split(","):
                return path
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def _cgroup_base(controller: str) -> Path | None:
    """Our own cgroup's janus-git child, so runs nest under the daemon's limits."""
    own = _own_cgroup(controller)
    mount = CGROUP_ROOT / controller
    if own is None or not (mount / "cgroup.procs").exists():
        return None
    return mount / own.lstrip("/") / "janus-git"


class Cgroups:
    """One run's cgroups, one per controller that could be created."""

    def __init__(self, name: str, limits: dict, overhead: int = 0, enabled: bool = True) -> None:
        self.dirs: dict[str, Path] = {}
        for ctl in CONTROLLERS if enabled else ():
            base = _cgroup_base(ctl)
            if base is None:
                continue
            try:
                base.mkdir(exist_ok=True)
                (base / name).mkdir()
                self.dirs[ctl] = base / name
            except OSError:
                continue
        self._set("memory", "memory.limit_in_bytes", limits["memory_mb"] << 20)
        self._set("memory", "memory.memsw.limit_in_bytes", limits["memory_mb"] << 20)
        self._set("pids", "pids.max", limits["pids"] + overhead)
        quota = int(100_000 * (os.cpu_count() or 1) * limits["cpu_percent"] / 100)
        self._set("cpu", "cpu.cfs_period_us", 100_000)
        self._set("cpu", "cpu.cfs_quota_us", max(1000, quota))

    def _set(self, ctl: str, name: str, value: int) -> None:
        if ctl in self.dirs:
            try:
                (self.dirs[ctl] / name).write_text(str(value))
            except OSError:  # e.g. memsw without swap accounting: the other caps still hold
                pass

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


# --- availability ------------------------------------------------------------------------

_probe_lock = threading.Lock()
_probe: dict | None = None


def _drop_to_nobody() -> bool:
    return os.geteuid() == 0


def _bwrap_probe() -> tuple[bool, str]:
    """Run `true` with exactly the bwrap command line real runs get."""
    path = shutil.which("bwrap")
    if not path:
        return False, "bwrap is not installed (apt-get install bubblewrap)"
    scratch = Path(tempfile.mkdtemp(prefix="janus-git-probe-"))
    try:
        r = subprocess.run(_bwrap_argv(["true"], Path("/usr"), scratch, False, False, []),
                           capture_output=True, timeout=10, cwd="/")
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"bwrap does not start: {e}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if r.returncode != 0:
        detail = (r.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        return False, f"bwrap cannot build the sandbox here: {detail}"
    how = ("as root: privileged namespaces, setpriv to uid 65534" if _drop_to_nobody()
           else "in a user namespace as uid 65534")
    return True, f"bwrap works ({how}, all capabilities dropped)"


def _unshare_probe() -> bool:
    """Can the reduced sandbox still take the network away (an unprivileged user+net
    namespace with util-linux unshare)?"""
    path = shutil.which("unshare")
    if not path:
        return False
    kw = dict(user=NOBODY, group=NOBODY, extra_groups=[]) if _drop_to_nobody() else {}
    try:
        return subprocess.run([path, "--user", "--net", "true"], capture_output=True,
                              timeout=10, cwd="/", **kw).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _owner_alive(name: str) -> bool:
    """run-<pid>-<ns>: another live daemon's run dir, maybe created a moment ago and still
    empty, is not ours to remove."""
    try:
        return psutil.pid_exists(int(name.split("-")[1]))
    except (IndexError, ValueError):
        return True


def _cgroup_probe() -> dict:
    out = {}
    for ctl in CONTROLLERS:
        base = _cgroup_base(ctl)
        ok = False
        if base is not None and base.is_dir():
            for stale in base.glob("run-*"):  # left by a daemon that died
                if not _owner_alive(stale.name):
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


def _probes() -> dict:
    global _probe
    with _probe_lock:
        if _probe is None:
            ok, why = _bwrap_probe()
            _probe = {"bwrap_usable": ok, "bwrap_why": why, "cgroups": _cgroup_probe(),
                      "unshare_net": _unshare_probe()}
        return _probe


def _forced_reduced() -> bool:
    return os.environ.get("JANUS_GIT_FORCE_REDUCED", "") not in ("", "0")


def _cgroups_off() -> bool:
    return os.environ.get("JANUS_GIT_NO_CGROUPS", "") not in ("", "0")


def doctor() -> dict:
    """Which isolation runs would get, and why (for `janus-git doctor`)."""
    p = _probes()
    forced = _forced_reduced()
    isolation = "bwrap" if p["bwrap_usable"] and not forced else "reduced"
    why = p["bwrap_why"] if not forced else "JANUS_GIT_FORCE_REDUCED is set"
    if isolation == "reduced":
        why += "; runs get rlimits, their own session and a clean environment, no namespaces"
    cg = {k: (v and not _cgroups_off()) for k, v in p["cgroups"].items()}
    return {"bwrap": shutil.which("bwrap") is not None, "bwrap_path": shutil.which("bwrap"),
            "bwrap_usable": p["bwrap_usable"], "isolation": isolation, "why": why,
            "forced_reduced": forced, "cgroups": cg,
            "fork_bomb_guard": "pids cgroup" if cg.get("pids") else
            ("RLIMIT_NPROC as uid 65534" if _drop_to_nobody() else "none (not root, no cgroup)"),
            "run_as_uid": NOBODY if _drop_to_nobody() else os.geteuid(),
            "network_isolation": isolation == "bwrap" or p["unshare_net"]}


def python_binds() -> list[str]:
    """Paths a `python -m janus_git...` child needs inside bwrap (interpreter, site, package)."""
    import janus_git
    paths = {sys.base_prefix, sys.prefix, str(Path(janus_git.__file__).parent.parent)}
    paths.update(p for p in sys.path if p and Path(p).is_dir() and "site-packages" in p)
    return sorted(p for p in paths if not p.startswith(("/usr/", "/etc/")) and p != "/usr")


# --- the command line --------------------------------------------------------------------

# As root, bwrap runs privileged: namespaces without a user namespace (in one, the sandbox's
# uid would map to kuid 0 and own every root file), only the capabilities setpriv needs, and
# setpriv drops to 65534 with empty capability sets before the command.  As another user,
# bwrap makes a user namespace and maps 65534 to that user.  Paths are bound by name because
# bwrap resolves even --bind-fd sources by path (a 0700 parent refuses uid 65534).
_NAMESPACES = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
               "--unshare-cgroup-try"]
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_SETPRIV = ["--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--"]


def _bwrap_argv(argv: list[str], root: Path, scratch: Path, network: bool, hide_git: bool,
                binds: list[str], shm_bytes: int = 64 << 20) -> list[str]:
    cmd = [shutil.which("bwrap") or "bwrap"]
    if _drop_to_nobody():
        cmd += [n for n in _NAMESPACES if not (network and n == "--unshare-net")]
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                "--cap-add", "CAP_SETPCAP"]
    else:
        cmd += ["--unshare-all", *(["--share-net"] if network else []), "--cap-drop", "ALL",
                "--uid", str(NOBODY), "--gid", str(NOBODY)]
    cmd += ["--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    cmd += ["--proc", "/proc", "--perms", "0755", "--dir", "/dev"]  # else 0700: untraversable
    for dev in _DEVICES:  # five binds instead of --dev's sixteen mounts (~5 ms here)
        cmd += ["--dev-bind", dev, dev]
    # /dev/shm is memory, not disk: its own size cap, and the memory cgroup counts it.
    cmd += ["--perms", "1777", "--size", str(shm_bytes), "--tmpfs", "/dev/shm",
            "--ro-bind", str(root), "/repo"]
    if hide_git and (root / ".git").exists():
        cmd += ["--tmpfs", "/repo/.git"]
    cmd += _extra_binds(binds)
    cmd += ["--bind", str(scratch), "/tmp", "--chdir", "/repo", "--"]
    if _drop_to_nobody():
        cmd += [shutil.which("setpriv") or "setpriv", *_SETPRIV]
    return cmd + argv


def _extra_binds(paths: list[str]) -> list[str]:
    """Read-only binds at their own path.  Missing ancestors are made 0755 first: bwrap
    copies the host's mode, and a 0700 /root would hide a Python under /root/.pyenv."""
    system = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/proc", "/dev", "/tmp")
    keep = sorted({os.path.normpath(p) for p in paths})
    keep = [p for p in keep if not any(p != q and p.startswith(q + "/") for q in keep)]
    keep = [p for p in keep if not p.startswith(system) and os.path.exists(p)]
    out: list[str] = []
    made: set[str] = set()
    for path in keep:
        for anc in reversed(Path(path).parents[:-1]):
            if str(anc) not in made:
                made.add(str(anc))
                out += ["--perms", "0755", "--dir", str(anc)]
        out += ["--ro-bind", path, path]
    return out


def _rlimits(limits: dict, cg: Cgroups, overhead: int) -> dict[int, int]:
    import resource
    lim = {resource.RLIMIT_CORE: 0,
           resource.RLIMIT_FSIZE: limits["disk_write_mb"] << 20,
           resource.RLIMIT_CPU: int(limits["cpu_s"])}
    if "memory" not in cg.dirs:
        # Address space, not memory: it breaks programs that map big files (llama.cpp models),
        # so it is the cap only when the memory cgroup is missing.
        lim[resource.RLIMIT_AS] = limits["memory_mb"] << 20
    if _drop_to_nobody():
        # NPROC counts every process of uid 65534 on the box; with a pids cgroup it is only
        # a generous backstop so that concurrent runs do not starve each other.
        n = limits["pids"] + overhead
        lim[resource.RLIMIT_NPROC] = n * 8 if "pids" in cg.dirs else n
    return lim


_PRLIMIT_FLAGS = {"RLIMIT_CORE": "--core", "RLIMIT_FSIZE": "--fsize", "RLIMIT_CPU": "--cpu",
                  "RLIMIT_AS": "--as", "RLIMIT_NPROC": "--nproc"}


def _prlimit_argv(lim: dict[int, int]) -> list[str]:
    """The child lowers its own limits with util-linux prlimit: lowering needs no privilege,
    while setting them from here on a uid-65534 child needs CAP_SYS_RESOURCE (absent on this
    box's root)."""
    import resource
    names = {getattr(resource, n): flag for n, flag in _PRLIMIT_FLAGS.items()}
    out = [shutil.which("prlimit") or "prlimit"]
    for res, value in lim.items():
        hard = value + 1 if res == resource.RLIMIT_CPU else value  # SIGXCPU first, then KILL
        out.append(f"{names[res]}={value}:{hard}")
    return out + ["--"]


# --- output, measurement, killing --------------------------------------------------------

class _Output:
    """Keeps the first `keep` bytes of the output, counts and discards the rest."""

    def __init__(self, keep: int) -> None:
        self.buf = bytearray()
        self.total = 0
        self.keep = keep

    def feed(self, data: bytes) -> None:
        room = self.keep - len(self.buf)
        if room > 0:
            self.buf += data[:room]
        self.total += len(data)

    def text(self) -> bytes:
        dropped = self.total - len(self.buf)
        if dropped <= 0:
            return bytes(self.buf)
        return bytes(self.buf) + (f"\n[janus-git: output truncated at {self.keep // 1024} KiB; "
                                  f"{dropped} bytes dropped]\n").encode()


def _dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


class _Meter:
    """Samples the run's processes: CPU, RSS sum, bytes written, process count."""

    def __init__(self, pid: int, cg: Cgroups, scratch: Path, overhead: int) -> None:
        self.pid, self.cg, self.scratch, self.overhead = pid, cg, scratch, overhead
        self.ncpu = os.cpu_count() or 1
        self._procs: dict[int, psutil.Process] = {}
        self._cpu: dict[int, float] = {}
        self._io: dict[int, int] = {}
        self.cpu_seconds = self.cpu_peak = self.peak_rss = 0.0
        self.bytes_written = self.peak_pids = self._n = 0
        self._last = (time.monotonic(), 0.0)

    def members(self) -> list[int]:
        if self.cg.dirs:
            return self.cg.pids()
        try:
            top = psutil.Process(self.pid)
            return [self.pid] + [c.pid for c in top.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> None:
        pids = self.members()
        rss = 0
        for pid in pids:
            try:
                p = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    self._cpu[pid] = t.user + t.system
                    self._io[pid] = p.io_counters().write_bytes
            except (psutil.Error, OSError):
                continue
        self.peak_pids = max(self.peak_pids, len(pids))
        self.peak_rss = max(self.peak_rss, rss / 2**20)
        cg_cpu = self.cg.cpu_seconds()
        self.cpu_seconds = max(self.cpu_seconds, cg_cpu if cg_cpu is not None
                               else sum(self._cpu.values()))
        now = time.monotonic()
        t0, c0 = self._last
        if now - t0 >= 0.02:
            share = (self.cpu_seconds - c0) / (now - t0) / self.ncpu * 100
            self.cpu_peak = max(self.cpu_peak, min(100.0, share))
            self._last = (now, self.cpu_seconds)
        self._n += 1
        scratch = _dir_bytes(self.scratch) if self._n % 4 == 1 else 0
        self.bytes_written = max(self.bytes_written, sum(self._io.values()), scratch)

    def resources(self, wall: float) -> dict:
        return {"cpu_seconds": round(self.cpu_seconds, 3),
                "cpu_peak_percent": round(self.cpu_peak, 1),
                "peak_rss_mb": round(self.peak_rss, 1), "bytes_written": int(self.bytes_written),
                "wall_seconds": round(wall, 3), "peak_processes": self.peak_pids}


class _Killer:
    def __init__(self, pid: int, meter: _Meter) -> None:
        self.pid, self.meter = pid, meter
        self.reason: str | None = None
        self.kill_at: float | None = None

    def signal_all(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in self.meter.members():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, reason: str) -> None:
        """TERM the whole run now, KILL after a grace; the first reason is the one named.
        Resources get a short grace: they keep growing while the program handles TERM."""
        if self.reason is not None:
            return
        self.reason = reason
        self.signal_all(signal.SIGTERM)
        self.kill_at = time.monotonic() + (2.0 if reason in ("timeout", "cancelled") else 0.25)

    def tick(self) -> None:
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            self.signal_all(signal.SIGKILL)
            self.kill_at = None

    def wait_gone(self, timeout: float) -> None:
        """Until no process of the run is left (its group and cgroup are empty)."""
        end = time.monotonic() + timeout
        pause = 0.0005
        while time.monotonic() < end:
            try:
                os.killpg(self.pid, 0)
            except (ProcessLookupError, PermissionError):
                if not self.meter.cg.pids():
                    return
            time.sleep(pause)  # exiting tasks leave their cgroup within a millisecond or so
            pause = min(pause * 2, 0.02)
            self.signal_all(signal.SIGKILL)


def _over_limit(meter: _Meter, limits: dict, deadline: float,
                cancel: threading.Event | None) -> str | None:
    if cancel is not None and cancel.is_set():
        return "cancelled"
    if time.monotonic() >= deadline:
        return "timeout"
    meter.sample()
    if meter.peak_rss >= limits["memory_mb"] or meter.cg.oom_kills():
        return "memory"
    if meter.cg.pids_refused() or meter.peak_pids >= limits["pids"] + meter.overhead:
        return "pids"
    if meter.cpu_seconds >= limits["cpu_s"]:
        return "cpu"
    if meter.bytes_written >= limits["disk_write_mb"] << 20:
        return "disk"
    return None


def _supervise(proc: subprocess.Popen, meter: _Meter, killer: _Killer, limits: dict,
               deadline: float, cancel: threading.Event | None) -> tuple[int, object, _Output]:
    """One thread does it all: poll() on the output pipe and a pidfd (readable when the
    process exits), sampling every POLL_S in between.  Threads cost ~1 ms each to start on
    this VM and a fixed poll interval would delay every exit; this costs neither."""
    out = _Output(limits["output_kb"] * 1024)
    hard = out.keep * OUTPUT_HARD_FACTOR
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        pidfd = os.pidfd_open(proc.pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):  # kernel < 5.3: look with WNOHANG every few ms
        pidfd = None
    next_sample = time.monotonic() + POLL_S  # a run that ends sooner costs no sampling
    try:
        while True:
            now = time.monotonic()
            wake = min(next_sample, killer.kill_at or next_sample)
            if pidfd is None:
                wake = min(wake, now + 0.005)
            _read_ready(poller, fd, out, max(0.0, wake - now))
            if out.total > hard:
                killer.stop("output")
            if pidfd is None or _readable(pidfd):
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG if pidfd is None else 0)
                if pid:
                    break
            killer.tick()
            if time.monotonic() >= next_sample:
                if killer.reason is None:
                    reason = _over_limit(meter, limits, deadline, cancel)
                    if reason:
                        killer.stop(reason)
                next_sample = time.monotonic() + POLL_S
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: rusage needs wait4
        killer.signal_all(signal.SIGKILL)  # whatever it left behind does not outlive the run
        killer.wait_gone(2.0)
        _drain(poller, fd, out, time.monotonic() + 0.5)
    finally:
        proc.stdout.close()
        if pidfd is not None:
            os.close(pidfd)
    return status, usage, out


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _read_ready(poller: select.poll, fd: int, out: _Output, timeout: float) -> bool:
    """Wait up to TIMEOUT seconds; read what the pipe has.  False once it is at EOF."""
    for ready, _ in poller.poll(timeout * 1000):
        if ready != fd:
            continue
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            continue
        if not data:
            poller.unregister(fd)
            return False
        out.feed(data)
    return True


def _drain(poller: select.poll, fd: int, out: _Output, until: float) -> None:
    """The output left in the pipe; bounded, as a stray process may still hold it open."""
    while time.monotonic() < until and out.total <= out.keep * OUTPUT_HARD_FACTOR:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            select.select([fd], [], [], max(0.0, until - time.monotonic()))
            continue
        except OSError:
            return
        if not data:
            return
        out.feed(data)


# --- the run -----------------------------------------------------------------------------

def _choose_isolation(isolation: str | None) -> str:
    if isolation in ("bwrap", "reduced"):
        if isolation == "bwrap" and not _probes()["bwrap_usable"]:
            raise SandboxError(f"bwrap isolation requested but {_probes()['bwrap_why']}")
        return isolation
    if _forced_reduced() or not _probes()["bwrap_usable"]:
        return "reduced"
    return "bwrap"


def _scratch(writable_dir: Path | None) -> tuple[Path, bool]:
    if writable_dir is not None:
        path, owned = Path(writable_dir), False
        path.mkdir(parents=True, exist_ok=True)
    else:
        path, owned = Path(tempfile.mkdtemp(prefix="janus-git-run-")), True
    if _drop_to_nobody():
        os.chown(path, NOBODY, NOBODY)
    return path, owned


def _post_mortem(status: int, isolation: str, killer: _Killer, meter: _Meter, cg: Cgroups,
                 limits: dict, out: _Output) -> tuple[int | None, int | None, str | None]:
    code = os.waitstatus_to_exitcode(status)
    sig = -code if code < 0 else None
    if isolation == "bwrap" and 128 < code <= 128 + 64:
        sig = code - 128  # bwrap reports a child killed by signal N as exit 128+N
    exit_code = None if code < 0 else code
    limit = killer.reason
    if limit is None:
        if cg.oom_kills():
            limit = "memory"
        elif cg.pids_refused() or meter.peak_pids >= limits["pids"] + meter.overhead:
            limit = "pids"
        elif sig in _SIGNAL_LIMITS:
            limit = _SIGNAL_LIMITS[sig]
        elif meter.cpu_seconds >= limits["cpu_s"]:
            limit = "cpu"
        elif meter.bytes_written >= limits["disk_write_mb"] << 20:
            limit = "disk"
        elif code != 0 and "memory" not in cg.dirs and any(w in out.buf for w in _MEMORY_WORDS):
            # RLIMIT_AS refusals leave no trace but the program's own complaint.
            limit = "memory"
        elif code != 0 and any(w in out.buf for w in _FORK_WORDS):
            # fork() refused with EAGAIN: by RLIMIT_NPROC (which counts every process of uid
            # 65534 on the box, so concurrent runs share it) or by the pids cgroup.
            limit = "pids"
    return exit_code, sig, limit


def _error(exit_code: int | None, sig: int | None, limit: str | None, limits: dict,
           res: dict) -> str:
    if limit == "timeout":
        return f"killed: timeout after {limits['timeout_s']} s"
    if limit == "cancelled":
        return "cancelled"
    if limit:
        what = {"memory": f"{limits['memory_mb']} MB memory (peak RSS {res['peak_rss_mb']} MB)",
                "cpu": f"{limits['cpu_s']} CPU seconds (used {res['cpu_seconds']})",
                "disk": f"{limits['disk_write_mb']} MB written "
                        f"({res['bytes_written'] >> 20} MB)",
                "pids": f"{limits['pids']} processes",
                "output": f"{limits['output_kb'] * OUTPUT_HARD_FACTOR} KiB of output"}[limit]
        return f"stopped: {limit} limit reached, {what}"
    if sig is not None:
        return f"killed by signal {signal.Signals(sig).name if sig in signal.valid_signals() else sig}"
    return "" if exit_code == 0 else f"exit status {exit_code}"


def _start_bwrap(argv: list[str], cwd: Path, env: dict, stdin, cg: Cgroups,
                 lim: dict[int, int]) -> subprocess.Popen:
    """bwrap waits on --block-fd, after its namespaces are built and before it forks the
    command: meanwhile we put its two processes into the cgroups and lower their rlimits
    (same uid, so prlimit(2) is allowed).  The cgroup attach, which pays an RCU grace period
    of 5-15 ms, overlaps bwrap's own mount work instead of adding to it."""
    block_r, block_w = os.pipe()
    info_r, info_w = os.pipe()
    argv = [argv[0], "--block-fd", str(block_r), "--info-fd", str(info_w), *argv[1:]]
    try:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                pass_fds=(block_r, info_w), start_new_session=True)
    finally:
        os.close(block_r)
        os.close(info_w)
    try:
        cg.attach(proc.pid)  # first: its RCU wait runs while bwrap clones and mounts
        inner = _child_pid(info_r)
        for pid in inner:
            cg.attach(pid)
        for pid in [proc.pid, *inner]:
            _set_rlimits(pid, lim)
        os.write(block_w, b"x")
    except OSError as e:
        _abort(proc, e)  # never run the command outside its limits
    finally:
        os.close(info_r)
        os.close(block_w)
    return proc


def _child_pid(fd: int) -> list[int]:
    """The sandbox's pid 1, from bwrap's --info-fd JSON (none if bwrap failed early)."""
    import json
    data = b""
    while b"}" not in data:
        chunk = os.read(fd, 4096)
        if not chunk:
            return []
        data += chunk
    return [int(json.loads(data[:data.index(b"}") + 1])["child-pid"])]


def _set_rlimits(pid: int, lim: dict[int, int]) -> None:
    import resource
    for res, value in lim.items():
        hard = value + 1 if res == resource.RLIMIT_CPU else value  # SIGXCPU first, then KILL
        resource.prlimit(pid, res, (value, hard))


def _start_reduced(argv: list[str], cwd: Path, env: dict, stdin, cg: Cgroups,
                   lim: dict[int, int], network: bool) -> subprocess.Popen:
    """prlimit lowers its own limits (lowering needs no privilege; setting them from here on
    a uid-65534 child would need CAP_SYS_RESOURCE, which this box's root lacks), unshare
    takes the network away, and with cgroups a last /bin/sh waits on stdin until we have
    attached the pid: all of them exec, none forks, so nothing escapes the cgroups."""
    if not network and _probes()["unshare_net"]:
        argv = [shutil.which("unshare") or "unshare", "--user", "--net", "--", *argv]
    if cg.dirs:
        argv = ["/bin/sh", "-c", _WRAPPER, "janus-sandbox", *argv]
        stdin = subprocess.PIPE
    argv = _prlimit_argv(lim) + argv
    kw = dict(user=NOBODY, group=NOBODY, extra_groups=[]) if _drop_to_nobody() else {}
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=cwd, env=env,
                            start_new_session=True, **kw)
    if cg.dirs:
        try:
            cg.attach(proc.pid)
            os.write(proc.stdin.fileno(), b"\n")  # the wrapper's `read` returns: exec
        except OSError as e:
            _abort(proc, e)
    return proc


def _abort(proc: subprocess.Popen, e: OSError) -> None:
    proc.kill()
    proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            f.close()
    raise OSError(e.errno, f"could not put the run under its limits: {e.strerror}")


def run(argv: list[str], limits: dict, root: Path, *, network: bool = False,
        cancel: threading.Event | None = None, on_start: Callable[[int], None] | None = None,
        stdin: bytes | None = None, writable_dir: Path | None = None,
        isolation: str | None = None, cgroups: bool | None = None,
        ro_binds: list[str] | tuple = (), hide_git: bool = True,
        env: dict[str, str] | None = None) -> SandboxResult:
    """Run ARGV (no shell) in the sandbox; see the module docstring.  ENV adds variables to
    the clean environment (never the daemon's own)."""
    limits = effective_limits(limits)
    iso = _choose_isolation(isolation)
    root = Path(root).resolve()
    scratch, owned = _scratch(writable_dir)
    use_cg = (cgroups if cgroups is not None else not _cgroups_off())
    overhead = 2 if iso == "bwrap" else 0  # bwrap's own two processes (outer, pid 1)
    cg = Cgroups(f"run-{os.getpid()}-{time.monotonic_ns()}", limits, overhead, use_cg)
    lim = _rlimits(limits, cg, overhead)
    home = "/tmp" if iso == "bwrap" else str(scratch)
    env = {**(env or {}), "PATH": PATH, "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home}
    pipe_in = subprocess.PIPE if stdin else subprocess.DEVNULL
    started = utcnow()
    t0 = time.monotonic()
    try:
        if iso == "bwrap":
            cmd = _bwrap_argv(list(argv), root, scratch, network, hide_git, list(ro_binds),
                              limits["disk_write_mb"] << 20)
            proc = _start_bwrap(cmd, root, env, pipe_in, cg, lim)
        else:
            proc = _start_reduced(list(argv), root, env, pipe_in, cg, lim, network)
    except OSError as e:
        cg.remove()
        if owned:
            shutil.rmtree(scratch, ignore_errors=True)
        return SandboxResult(list(argv), iso, limits, None, None, None, {}, b"", 0, started,
                             utcnow(), f"could not start: {e}", list(cg.dirs), network)
    if proc.stdin is not None:
        if stdin:
            threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True).start()
        else:
            proc.stdin.close()
    if on_start is not None:
        on_start(proc.pid)
    meter = _Meter(proc.pid, cg, scratch, overhead)
    killer = _Killer(proc.pid, meter)
    status, usage, out = _supervise(proc, meter, killer, limits,
                                    t0 + limits["timeout_s"], cancel)
    wall = time.monotonic() - t0
    meter.cpu_seconds = max(meter.cpu_seconds, cg.cpu_seconds() or 0.0,
                            usage.ru_utime + usage.ru_stime)
    meter.peak_rss = max(meter.peak_rss, usage.ru_maxrss / 1024)
    meter.bytes_written = max(meter.bytes_written, _dir_bytes(scratch))
    exit_code, sig, limit = _post_mortem(status, iso, killer, meter, cg, limits, out)
    # An emptied cgroup may stay busy for a moment, and nobody waits for a scratch dir to go.
    _cleanup(cg, scratch if owned else None)
    res = meter.resources(wall)
    return SandboxResult(list(argv), iso, limits, exit_code, sig, limit, res, out.text(),
                         out.total, started, utcnow(), _error(exit_code, sig, limit, limits, res),
                         sorted(cg.dirs), _reachable(iso, network))


_cleanups: "queue.SimpleQueue[tuple[Cgroups, Path | None]]" = queue.SimpleQueue()
_cleaner: threading.Thread | None = None


def _cleanup(cg: Cgroups, scratch: Path | None) -> None:
    """Hand the removal to one long-lived thread (starting a thread per run costs ~1 ms)."""
    global _cleaner
    _cleanups.put((cg, scratch))
    with _probe_lock:
        if _cleaner is None or not _cleaner.is_alive():
            _cleaner = threading.Thread(target=_clean_forever, name="sandbox-cleanup",
                                        daemon=True)
            _cleaner.start()


def _clean_forever() -> None:
    while True:
        cg, scratch = _cleanups.get()
        cg.remove()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _reachable(isolation: str, network: bool) -> bool:
    """Whether the run could reach the network (recorded; True also when it should not have)."""
    return network or (isolation == "reduced" and not _probes()["unshare_net"])


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
    except OSError:
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass
