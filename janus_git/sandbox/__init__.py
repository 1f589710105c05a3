"""Run one command in a sandbox, under resource limits, measuring what it used.

Two isolation levels; the one used is recorded on every run:

* ``bwrap``: bubblewrap with every namespace unshared (``--share-net`` only when the tool
  declares ``network: true``), ``--cap-drop ALL``, the system bound read-only, the repository
  read-only at ``/repo`` (the working directory; its ``.git`` hidden unless asked), a fresh
  writable scratch dir at ``/tmp`` (also ``HOME``), ``--new-session``, ``--die-with-parent``,
  a clean environment, uid/gid 65534.
* ``reduced`` (no usable bwrap, or forced with ``JANUS_GIT_FORCE_REDUCED=1``): no mount or pid
  namespaces; the network is taken away with ``unshare --user --net`` where that works (else
  the run records that it could reach it); rlimits, own session and process group, clean
  environment, no_new_privs, uid 65534 when the daemon is root; cwd is the repository,
  ``HOME`` and ``TMPDIR`` the scratch dir.  Where the kernel has Landlock (``confine``;
  ``JANUS_GIT_NO_LANDLOCK=1`` turns it off) the run may read the system and the repository
  (its ``.git`` listed, not read, unless asked), write only its scratch dir, make no TCP
  connection and no unix socket unless the tool declares the network, and signal nothing
  outside: what keeps a non-root daemon's runs from writing its repository (Landlock does
  not cover chmod, chown, utime or xattrs).

In both, when cgroups are writable (``JANUS_GIT_NO_CGROUPS=1`` turns them off), each run
gets its own: v1 memory, pids, cpu and cpuacct cgroups, or one cgroup in the daemon's delegated
v2 subtree (cgroup2) with the controllers delegated to it: a hard memory cap, a process cap
against fork bombs, a CPU share and exact CPU accounting.  Without cgroups the rlimits are
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
never raises for a failing command; it raises ``SandboxError`` only when asked for bwrap where
there is none, or given an environment variable name a shell could not take.  In the
reduced sandbox, as root, the command runs as uid 65534, so a ``writable_dir`` and an
interpreter must be reachable by that uid (not under a 0700 /root).

Runs start warm when they can (``prestart``): after a bwrap run, a whole sandbox for the same
repository and set-up is built ahead and waits, already in the next run's cgroups; other
runs find a shell (or confine.py) waiting in their cgroups (``prepare()`` has one made ahead
of the first run).

What a run used (``resources``, each figure's source in ``resources["measured"]``) comes
from ``measure``: the kernel's accounting where the run has cgroups, else samples and rusage.

The package: ``launch`` (command lines, rlimits, starting under the limits), ``cgroups``,
``cgroup2``, ``measure``,
``prestart`` (waiters), ``start`` (a run's start: warm or cold), ``confine`` (Landlock),
``supervise`` (output, sampling, stopping), ``probe`` (what the machine offers,
``doctor()``); this module puts a run together.
"""
from __future__ import annotations

import atexit
import functools
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import JanusError
from ..util import utcnow
from .argv import NOBODY, PATH
from .cgroups import Cgroups
from .launch import Launch
from .prestart import ENV_NAME, kind_for, pool, prestart_off
from .probe import cgroups_off, doctor, forced_reduced, landlock_off, probes, python_binds
from .supervise import OUTPUT_HARD_FACTOR, POLL_S, Killer, Meter, Output, dir_bytes, supervise

__all__ = ["NOBODY", "PATH", "POLL_S", "SandboxError", "SandboxResult", "doctor",
           "effective_limits", "prepare", "python_binds", "run"]

log = logging.getLogger(__name__)

# What a limit's kernel signal looks like once the command died of it.
_SIGNAL_LIMITS = {int(signal.SIGXCPU): "cpu", int(signal.SIGXFSZ): "disk"}
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
    warm: bool = False  # started from a pre-started waiter (see prestart)
    landlock: bool = False  # the reduced chain confined itself with Landlock (see confine)
    waiter: str = ""  # which: "sandbox" (a whole bwrap sandbox), "shell", "confine"

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.limit_hit is None


def effective_limits(limits: dict) -> dict:
    from ..config import DEFAULT_LIMITS
    out = {**DEFAULT_LIMITS, **{k: v for k, v in limits.items() if v is not None}}
    out.setdefault("cpu_s", max(1, round(out["timeout_s"] * out["cpu_percent"] / 100)))
    return out


def _choose_isolation(isolation: str | None) -> str:
    if isolation in ("bwrap", "reduced"):
        if isolation == "bwrap" and not probes()["bwrap_usable"]:
            raise SandboxError(f"bwrap isolation requested but {probes()['bwrap_why']}")
        return isolation
    if forced_reduced() or not probes()["bwrap_usable"]:
        return "reduced"
    return "bwrap"


def _post_mortem(status: int, isolation: str, killer: Killer, meter: Meter, cg: Cgroups,
                 limits: dict, out: Output) -> tuple[int | None, int | None, str | None]:
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
                "cpu": f"{limits['cpu_s']} CPU seconds",
                "disk": f"{limits['disk_write_mb']} MB written "
                        f"({res['bytes_written'] >> 20} MB)",
                "pids": f"{limits['pids']} processes",
                "output": f"{limits['output_kb'] * OUTPUT_HARD_FACTOR} KiB of output"}[limit]
        return f"stopped: {limit} limit reached, {what}"
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        return f"killed by signal {name}"
    return "" if exit_code == 0 else f"exit status {exit_code}"


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
    argv = _words(argv, env or {}, str(root))
    root = Path(root).resolve()
    use_cg = (cgroups if cgroups is not None else not cgroups_off())
    landlock = iso == "reduced" and probes()["landlock"] >= 1 and not landlock_off()
    spec = Launch(list(argv), iso, root, network, hide_git, list(ro_binds), limits,
                  2 if iso == "bwrap" else 0,  # bwrap's own two processes (outer, pid 1)
                  use_cg, landlock, env or {},
                  subprocess.PIPE if stdin else subprocess.DEVNULL, writable_dir)
    started = utcnow()
    t0 = time.monotonic()
    try:
        proc, cg, waiter = spec.start()
    except OSError as e:
        spec.drop_scratch()
        return SandboxResult(list(argv), iso, limits, None, None, None, {}, b"", 0, started,
                             utcnow(), f"could not start: {e}", [], network)
    scratch, owned = spec.scratch, spec.owned
    assert scratch is not None  # (the launch made it)
    if proc.stdin is not None:
        if stdin:
            threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True).start()
        else:
            proc.stdin.close()
    if on_start is not None:
        on_start(proc.pid)
    meter = Meter(proc.pid, cg, scratch, spec.overhead)
    killer = Killer(proc.pid, meter)
    status, usage, out = supervise(proc, meter, killer, limits,
                                   t0 + limits["timeout_s"], cancel)
    wall = time.monotonic() - t0
    meter.bytes_written = max(meter.bytes_written, dir_bytes(scratch))
    res = meter.resources(usage, wall)  # before the cleanup: it reads the cgroups
    meter.cpu_seconds = res["cpu_seconds"]  # the post-mortem judges the final figures
    exit_code, sig, limit = _post_mortem(status, iso, killer, meter, cg, limits, out)
    _cleanup(cg, scratch if owned else None)
    return SandboxResult(list(argv), iso, limits, exit_code, sig, limit, res, out.text(),
                         out.total, started, utcnow(), _error(exit_code, sig, limit, limits, res),
                         sorted(cg.dirs), _reachable(iso, network), bool(waiter), landlock,
                         waiter)


def _words(argv: list, env: dict[str, str], cwd: str) -> list[str]:
    """ARGV as strings (paths allowed); what cannot reach a program intact is refused
    before anything is made for the run."""
    bad = [k for k in env if not ENV_NAME.match(k)]
    if bad:
        raise SandboxError(f"not an environment variable name: {bad[0]!r}")
    try:
        words = [os.fspath(a) for a in argv]
    except TypeError as e:
        raise SandboxError(f"an argument cannot be passed to a program: {e}") from None
    for what, word in [*(("argument", w) for w in words),
                       *(("environment value", v) for v in env.values()),
                       ("repository path", cwd)]:
        try:
            os.fsencode(word)
        except UnicodeError as e:
            raise SandboxError(f"{what} {word!r} cannot be passed to a program: {e}") from None
        if "\0" in word:
            raise SandboxError(f"{what} {word!r} cannot be passed to a program: a NUL byte")
    return words


_jobs: "queue.SimpleQueue[Callable[[], None]]" = queue.SimpleQueue()
_worker: threading.Thread | None = None
_worker_lock = threading.Lock()


def _later(job: Callable[[], None]) -> None:
    """Hand JOB to one long-lived thread (starting a thread per run costs ~1 ms here).  The
    pre-started shells are its children: bwrap's --die-with-parent watches the thread that
    forked it, and this one lives as long as the process."""
    global _worker
    _jobs.put(job)
    with _worker_lock:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_work_forever, name="sandbox-aftercare",
                                       daemon=True)
            _worker.start()


def _work_forever() -> None:
    while True:
        job = _jobs.get()
        try:
            job()
        except Exception:  # a failed cleanup or spawn must not end the thread
            log.exception("sandbox background job failed")


def _cleanup(cg: Cgroups, scratch: Path | None) -> None:
    """An emptied cgroup may stay busy for a moment, and nobody waits for a scratch dir to
    go; then the next run's shell is started (prestart)."""
    _later(functools.partial(_clean_one, cg, scratch))
    _later(pool.refill)


def prepare(isolation: str | None = None, wait: float = 0.0) -> bool:
    """Have a waiter ready for the next run of ISOLATION (the default: what runs get here);
    the daemon calls this when it starts, so even its first run starts warm.  With WAIT, up
    to that many seconds until one is.  Does nothing where a warm start saves nothing (no
    cgroups and no Landlock) or warm starts are off.  True if one is ready."""
    iso = _choose_isolation(isolation)
    landlock = iso == "reduced" and probes()["landlock"] >= 1 and not landlock_off()
    kind = kind_for(landlock, not cgroups_off() and any(probes()["cgroups"].values()))
    if kind is None or prestart_off():
        return False
    pool.want(kind)
    _later(pool.refill)
    return pool.wait_ready(kind, wait)


def _clean_one(cg: Cgroups, scratch: Path | None) -> None:
    cg.remove()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


@atexit.register
def _clean_pending() -> None:
    """At exit, the cleanups the background thread had not reached yet (it is a daemon
    thread); no new shell is started."""
    pool.close()
    while not _jobs.empty():
        job = _jobs.get()
        if isinstance(job, functools.partial):
            job()


def _reachable(isolation: str, network: bool) -> bool:
    """Whether the run could reach the network (recorded; True also when it should not have)."""
    return network or (isolation == "reduced" and not probes()["unshare_net"])


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
