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

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .cgroups import Cgroups

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def prestart_off() -> bool:
    return os.environ.get("JANUS_GIT_NO_PRESTART", "") not in ("", "0")


# What waits: a shell (bwrap runs, and reduced runs without Landlock), or confine.py, which
# applies Landlock in-process and so is a Python whose start-up (~25 ms) is paid here too,
# so it is worth pre-starting even for runs without cgroups ("-bare").
KINDS = ("shell", "confine", "confine-bare")


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


@dataclass
class Prestarted:
    """A shell or confine.py waiting in its run's cgroups for its orders on `script_fd`."""
    kind: str
    proc: subprocess.Popen
    cg: Cgroups
    script_fd: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self, argv: list[str], cwd: str, env: dict[str, str]) -> None:
        """Hand over the command: the waiter changes to CWD, takes ENV as its whole
        environment and execs ARGV (confine.py: confines itself as the flags in ARGV say,
        then execs what follows them).  Raises OSError if the waiter is gone."""
        data = (script(argv, cwd, env) if self.kind == "shell" else
                json.dumps({"cwd": cwd, "env": env, "argv": argv}).encode())
        view = memoryview(data)
        while view:  # a signal can cut a write to a pipe short
            view = view[os.write(self.script_fd, view):]
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


def script(argv: list[str], cwd: str, env: dict[str, str]) -> bytes:
    """The shell reads this from its fd 2 (dash can name no fd above 9 to close it, so the
    pipe is put where the first line replaces it with the output): then `cd`, a clean
    environment (the shell's own PWD/OLDPWD unset) and `exec`.  Every word is single-quoted
    by shlex.quote, so nothing in ARGV or ENV is ever parsed by the shell."""
    bad = [k for k in env if not ENV_NAME.match(k)]
    if bad:
        raise ValueError(f"not an environment variable name: {bad[0]!r}")
    q = shlex.quote
    # in braces: dash reads the whole block before running any of it, so a script cut
    # short is a syntax error, never half a script
    lines = ["{", "exec 2>&1", f"cd -- {q(cwd)} || exit 126", "unset PWD OLDPWD"]
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
    cg = Cgroups(f"run-{os.getpid()}-{time.monotonic_ns()}", enabled=not bare)
    if not cg.dirs and not bare:
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


class Pool:
    """At most one waiter of each kind, refilled in the background for the kinds that runs
    have asked for."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._ready: dict[str, Prestarted] = {}
        self._wanted: set[str] = set()
        self._closed = False

    def take(self, kind: str) -> Prestarted | None:
        with self._lock:
            self._wanted.add(kind)
            pre = self._ready.pop(kind, None)
        if pre is not None and pre.proc.poll() is not None:  # someone killed it
            pre.discard()
            return None
        return pre

    def want(self, kind: str) -> None:
        with self._lock:
            self._wanted.add(kind)

    def refill(self) -> None:
        with self._lock:
            missing = [] if self._closed else [k for k in KINDS
                                               if k in self._wanted and k not in self._ready]
        for kind in missing:
            pre = spawn(kind)
            if pre is None:
                continue
            with self._lock:
                surplus = kind in self._ready or self._closed
                if not surplus:
                    self._ready[kind] = pre
                    self._lock.notify_all()
            if surplus:
                pre.discard()

    def wait_ready(self, kind: str, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: kind in self._ready, timeout)

    def close(self) -> None:
        """At exit: discard the waiters, start no more."""
        with self._lock:
            self._closed = True
            ready, self._ready = list(self._ready.values()), {}
        for pre in ready:
            pre.discard()


pool = Pool()
