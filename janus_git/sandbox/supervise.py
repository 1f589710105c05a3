"""Watching a run: its output (bounded), what it uses (psutil and the cgroups), its limits,
and stopping it (TERM to the whole run, KILL after a grace)."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil

from .cgroups import Cgroups
from .measure import figures

POLL_S = 0.025
FIRST_SAMPLE_S = 0.002
OUTPUT_HARD_FACTOR = 64


class Output:
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


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


class Meter:
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
        if self.cg.joined:
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
                    rss += peak_rss(pid)
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
        scratch = dir_bytes(self.scratch) if self._n % 4 == 1 else 0
        self.bytes_written = max(self.bytes_written, sum(self._io.values()), scratch)

    def resources(self, usage, wall: float) -> dict:
        return figures(self.cg, self, usage, wall, self.ncpu)


def peak_rss(pid: int) -> int:
    """Bytes: the process's peak RSS so far (VmHWM), so that a sample sees a peak that came
    and went between two samples; its current RSS where the kernel gives no peak."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return psutil.Process(pid).memory_info().rss


class Killer:
    def __init__(self, pid: int, meter: Meter) -> None:
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
        # a timeout gets 2 s to clean up; the emergency stop must have killed within 1 s
        grace = {"timeout": 2.0, "cancelled": 0.5}.get(reason, 0.25)
        self.kill_at = time.monotonic() + grace

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


def over_limit(meter: Meter, limits: dict, deadline: float,
               cancel: threading.Event | None) -> str | None:
    if cancel is not None and cancel.is_set():
        return "cancelled"
    if time.monotonic() >= deadline:
        return "timeout"
    meter.sample()
    # With a memory cgroup the kernel enforces the cap exactly (and we see its OOM kill); the
    # RSS sum counts pages shared between forked processes more than once, so it is the
    # trigger only without one.
    capped = "memory" in meter.cg.dirs
    if meter.cg.oom_kills() or (not capped and meter.peak_rss >= limits["memory_mb"]):
        return "memory"
    if meter.cg.pids_refused() or meter.peak_pids >= limits["pids"] + meter.overhead:
        return "pids"
    if meter.cpu_seconds >= limits["cpu_s"]:
        return "cpu"
    if meter.bytes_written >= limits["disk_write_mb"] << 20:
        return "disk"
    return None


def supervise(proc: subprocess.Popen, meter: Meter, killer: Killer, limits: dict,
              deadline: float, cancel: threading.Event | None) -> tuple[int, object, Output]:
    """One thread does it all: poll() on the output pipe and a pidfd (readable when the
    process exits), sampling every POLL_S in between.  A thread costs up to ~1 ms to start
    on a small virtual machine and a fixed poll interval would delay every exit; this costs
    neither."""
    out = Output(limits["output_kb"] * 1024)
    hard = out.keep * OUTPUT_HARD_FACTOR
    assert proc.stdout is not None  # (every run is started with its output on a pipe)
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        pidfd = os.pidfd_open(proc.pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):  # kernel < 5.3: look with WNOHANG every few ms
        pidfd = None
    # the first samples come fast (2, 4, 8, 16 ms, then every POLL_S): a 50 ms run is seen
    # several times, and one that ends within 2 ms costs no sampling
    step = FIRST_SAMPLE_S
    next_sample = time.monotonic() + step
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
                    reason = over_limit(meter, limits, deadline, cancel)
                    if reason:
                        killer.stop(reason)
                step = min(POLL_S, step * 2)
                next_sample = time.monotonic() + step
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


def _read_ready(poller: select.poll, fd: int, out: Output, timeout: float) -> bool:
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


def _drain(poller: select.poll, fd: int, out: Output, until: float) -> None:
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
