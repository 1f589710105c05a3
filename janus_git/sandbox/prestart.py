"""Warm starts: the next run's first process is started, and put into its cgroups, before the
run is asked for.

Moving a process into a cgroup-v1 cgroup takes the kernel's ``cgroup_threadgroup_rwsem`` for
writing, which waits for an RCU grace period whenever the lock has been idle: 5-15 ms on this
box, most of what cgroups add to a run's start.  A process forked by one that is already
inside is born there at no cost.  So one ``/bin/sh`` waits in a fresh set of run cgroups,
reading a script from a pipe; a run gives it its rlimits (prlimit(2)) and cgroup caps, then
the script, which only ``cd``s, sets the environment and ``exec``s the command (bwrap, or the
reduced chain).  Nothing of the command runs before its limits are set, and the shell itself
runs nothing but that script.  A replacement is started in the background once the run is over.

The shell dies on its own when its script pipe closes, so a daemon killed with -9 leaves no
waiting shell behind (its empty cgroups are swept by the next probe, as for any run).
``JANUS_GIT_NO_PRESTART=1`` turns warm starts off (every run then starts cold)."""
from __future__ import annotations

import functools
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from . import cgroups
from .cgroups import Cgroups

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def prestart_off() -> bool:
    return os.environ.get("JANUS_GIT_NO_PRESTART", "") not in ("", "0")


# What waits: a whole bwrap sandbox (kind "sandbox:<its set-up>", spawn_sandbox) for the
# bwrap runs that fit one; a shell for other bwrap runs and reduced runs without Landlock;
# or confine.py, which applies Landlock in-process and so is a Python whose start-up
# (~25 ms) is paid here too, worth pre-starting even for runs without cgroups ("-bare").


def kind_for(landlock: bool, cgroups: bool) -> str | None:
    """The waiter a run can use, or None where a warm start would save nothing."""
    if landlock:
        return "confine" if cgroups else "confine-bare"
    return "shell" if cgroups else None


def waiter_argv(kind: str) -> list[str]:
    if kind.startswith("confine"):
        return [sys.executable, "-I", "-S", str(Path(__file__).with_name("confine.py")),
                "--wait"]
    return ["/bin/sh", "-c", ". /dev/fd/2"]


RELEASE_TIMEOUT_S = 5.0


def write_all(fd: int, data: bytes, timeout: float) -> None:
    """All of DATA (a signal can cut a write short), or OSError after TIMEOUT seconds: a
    waiter that stopped reading must not hold the run up before its timeout counts."""
    os.set_blocking(fd, False)
    view, end = memoryview(data), time.monotonic() + timeout
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            left = end - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise OSError(110, "the waiter stopped reading its orders") from None


@dataclass
class Prestarted:
    """A waiter (a shell, confine.py, or a whole sandbox with a shell inside) in its run's
    cgroups, waiting for its orders on `script_fd`."""
    kind: str
    proc: subprocess.Popen
    cg: Cgroups
    script_fd: int
    scratch: Path | None = None  # a sandbox waiter's /tmp, made with it

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self, argv: list[str], cwd: str | None, env: dict[str, str],
                ulimits: Sequence[str] = ()) -> None:
        """Hand over the command: the waiter changes to CWD, takes ENV as its whole
        environment and execs ARGV (confine.py: confines itself as the flags in ARGV say,
        then execs what follows them; a sandbox waiter first lowers its rlimits with the
        ULIMITS lines).  Raises OSError if the waiter is gone."""
        if self.kind.startswith("confine"):
            data = json.dumps({"cwd": cwd, "env": env, "argv": argv}).encode()
        else:
            first = "exec 2>&1" if self.kind == "shell" else "exec 0</dev/null"
            data = script(argv, cwd, env, [first, *ulimits])
        write_all(self.script_fd, data, RELEASE_TIMEOUT_S)
        os.close(self.script_fd)
        self.script_fd = -1

    def discard(self) -> None:
        """Kill the waiter and remove its cgroups (never called once it has been released)."""
        if self.script_fd >= 0:
            os.close(self.script_fd)  # EOF: the shell ends by itself
            self.script_fd = -1
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self.cg.remove()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def script(argv: list[str], cwd: str | None, env: dict[str, str],
           first: Sequence[str] = ("exec 2>&1",)) -> bytes:
    """A shell waiter reads this from its fd 2 (dash can name no fd above 9 to close it, so
    the pipe is put where the first line replaces it with the output); a sandbox waiter
    from its fd 0, which its first line replaces with /dev/null.  Then `cd`, a clean
    environment (the shell's own PWD/OLDPWD unset) and `exec`.  Every word is single-quoted
    by shlex.quote, so nothing in ARGV or ENV is ever parsed by the shell; FIRST comes from
    us, never from a run."""
    bad = [k for k in env if not ENV_NAME.match(k)]
    if bad:
        raise ValueError(f"not an environment variable name: {bad[0]!r}")
    q = shlex.quote
    # in braces: dash reads the whole block before running any of it, so a script cut
    # short is a syntax error, never half a script
    lines = ["{", *first, *([f"cd -- {q(cwd)} || exit 126"] if cwd else []),
             "unset PWD OLDPWD"]
    if env:
        lines.append("export " + " ".join(q(f"{k}={v}") for k, v in env.items()))
    lines.append(f"exec {' '.join(q(a) for a in argv)}")
    lines.append("}")
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def spawn(kind: str) -> Prestarted | None:
    """A waiter in a fresh run's cgroups, with the daemon's uid (the command it execs drops
    to 65534: setpriv, under bwrap or in the reduced chain), or None where no cgroup can be
    made."""
    bare = kind.endswith("-bare")
    cg = cgroups.make(cgroups.run_name(), enabled=not bare)
    if not cg.joined and not bare:
        return None
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(waiter_argv(kind), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=read_end, cwd="/", env={},
                                start_new_session=True)
    except OSError:
        os.close(write_end)
        cg.remove()
        return None
    finally:
        os.close(read_end)
    pre = Prestarted(kind, proc, cg, write_end)
    try:
        cg.attach(proc.pid)
    except OSError:
        pre.discard()
        return None
    return pre


def spawn_sandbox(kind: str, root: Path, network: bool, hide_git: bool, binds: list[str],
                  shm_bytes: int) -> Prestarted | None:
    """A whole bwrap sandbox, built and waiting: its namespaces and mounts made, a shell
    inside reading its orders from fd 0.  A run with the same repository, network, binds
    and /dev/shm size (and no writable_dir or stdin of its own) only hands it its rlimits
    (`ulimit` lines), cgroup caps, environment and command, which starts with setpriv.

    While it waits the shell is still root (bwrap's few capabilities): as uid 65534 it
    could be written to, through /proc/<pid>/fd/0, by any other process of that uid.  Its
    scratch dir sits in a 0700 directory of ours for the same reason."""
    from .argv import NOBODY, PATH, bwrap_argv, drop_to_nobody, start_bwrap
    cg = cgroups.make(cgroups.run_name())
    if not cg.joined:
        return None
    private = Path(tempfile.mkdtemp(prefix=f"janus-git-run-{os.getpid()}-"))
    scratch = private / "tmp"
    scratch.mkdir()
    if drop_to_nobody():
        os.chown(scratch, NOBODY, NOBODY)
    read_end, write_end = os.pipe()
    argv = bwrap_argv(["/bin/sh", "-c", ". /proc/self/fd/0"], root, scratch, network,
                      hide_git, binds, shm_bytes, drop=False)
    try:
        # bwrap clones its pid 1 at once: start_bwrap holds it on --block-fd until both are
        # in the cgroups, so the shell pid 1 forks afterwards is born there
        proc = start_bwrap(argv, root, {"PATH": PATH}, read_end, cg, {})
    except OSError:
        os.close(write_end)
        cg.remove()
        shutil.rmtree(private, ignore_errors=True)
        return None
    finally:
        os.close(read_end)
    return Prestarted(kind, proc, cg, write_end, private)


Recipe = Callable[[], "Prestarted | None"]
SANDBOX_KINDS_KEPT = 3  # distinct sandbox set-ups kept waiting (repository, network, binds)


class Pool:
    """At most one waiter of each kind, refilled in the background for the kinds that runs
    have asked for (the latest few sandbox kinds only: each is a whole idle sandbox)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._ready: dict[str, Prestarted] = {}
        self._wanted: dict[str, Recipe] = {}  # in the order last asked for
        self._closed = False
        self._refilling = 0

    def take(self, kind: str, recipe: Recipe | None = None) -> Prestarted | None:
        with self._lock:
            dropped = self._want(kind, recipe)
            pre = self._ready.pop(kind, None)
        for old in dropped:
            old.discard()
        if pre is not None and pre.proc.poll() is not None:  # someone killed it
            pre.discard()
            return None
        return pre

    def want(self, kind: str) -> None:
        with self._lock:
            dropped = self._want(kind, None)
        for old in dropped:
            old.discard()

    def _want(self, kind: str, recipe: Recipe | None) -> list[Prestarted]:
        self._wanted.pop(kind, None)
        self._wanted[kind] = recipe or functools.partial(spawn, kind)
        sandboxes = [k for k in self._wanted if k.startswith("sandbox:")]
        dropped = []
        for old in sandboxes[:-SANDBOX_KINDS_KEPT]:
            del self._wanted[old]
            if old in self._ready:
                dropped.append(self._ready.pop(old))
        return dropped

    def refill(self) -> None:
        with self._lock:
            missing = [] if self._closed else [(k, r) for k, r in self._wanted.items()
                                               if k not in self._ready]
            self._refilling += 1
        try:
            for kind, recipe in missing:
                pre = recipe()
                if pre is None:
                    continue
                with self._lock:
                    surplus = kind in self._ready or kind not in self._wanted or self._closed
                    if not surplus:
                        self._ready[kind] = pre
                        self._lock.notify_all()
                if surplus:
                    pre.discard()
        finally:
            with self._lock:
                self._refilling -= 1
                self._lock.notify_all()

    def wait_ready(self, kind: str, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: kind in self._ready, timeout)

    def close(self) -> None:
        """At exit: start no more, let a refill under way finish (its waiter is then
        discarded as surplus), discard the waiters."""
        with self._lock:
            self._closed = True
            self._lock.wait_for(lambda: self._refilling == 0, 5)
            ready, self._ready = list(self._ready.values()), {}
        for pre in ready:
            pre.discard()


pool = Pool()
