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

import os
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass

from .cgroups import Cgroups

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def prestart_off() -> bool:
    return os.environ.get("JANUS_GIT_NO_PRESTART", "") not in ("", "0")


@dataclass
class Prestarted:
    """A shell waiting in its run's cgroups for the script on `script_fd`."""
    proc: subprocess.Popen
    cg: Cgroups
    script_fd: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self, argv: list[str], cwd: str, env: dict[str, str]) -> None:
        """Hand over the command: the shell changes to CWD, takes ENV as its whole
        environment and execs ARGV.  Raises OSError if the shell is gone."""
        os.write(self.script_fd, script(argv, cwd, env))
        os.close(self.script_fd)
        self.script_fd = -1

    def discard(self) -> None:
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
    lines = ["exec 2>&1", f"cd -- {q(cwd)} || exit 126", "unset PWD OLDPWD"]
    if env:
        lines.append("export " + " ".join(q(f"{k}={v}") for k, v in env.items()))
    lines.append(f"exec {' '.join(q(a) for a in argv)}")
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def spawn() -> Prestarted | None:
    """A shell in a fresh run's cgroups, with the daemon's uid (the command it execs drops
    to 65534: setpriv, under bwrap or in the reduced chain), or None where no cgroup can be
    made."""
    cg = Cgroups(f"run-{os.getpid()}-{time.monotonic_ns()}")
    if not cg.dirs:
        return None
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", ". /dev/fd/2"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=read_end, cwd="/", env={},
                                start_new_session=True)
    except OSError:
        os.close(write_end)
        cg.remove()
        return None
    finally:
        os.close(read_end)
    pre = Prestarted(proc, cg, write_end)
    try:
        cg.attach(proc.pid)
    except OSError:
        pre.discard()
        return None
    return pre


class Pool:
    """One waiting shell (any isolation level can use it), refilled in the background once
    runs have asked for one."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._ready: Prestarted | None = None
        self._wanted = False
        self._closed = False

    def take(self) -> Prestarted | None:
        with self._lock:
            self._wanted = True
            pre, self._ready = self._ready, None
        if pre is not None and pre.proc.poll() is not None:  # someone killed it
            pre.discard()
            return None
        return pre

    def want(self) -> None:
        with self._lock:
            self._wanted = True

    def refill(self) -> None:
        with self._lock:
            if self._ready is not None or self._closed or not self._wanted:
                return
        pre = spawn()
        if pre is None:
            return
        with self._lock:
            surplus = self._ready is not None or self._closed
            if not surplus:
                self._ready = pre
                self._lock.notify_all()
        if surplus:
            pre.discard()

    def wait_ready(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._ready is not None, timeout)

    def close(self) -> None:
        """At exit: discard the waiting shell, start no more."""
        with self._lock:
            self._closed = True
            pre, self._ready = self._ready, None
        if pre is not None:
            pre.discard()


pool = Pool()
