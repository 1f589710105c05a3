"""A run's resource figures, each with how it was measured (``resources["measured"]``).

Where the run has cgroups, the kernel's own accounting: the memory cgroup's peak (less what
the sandbox's set-up had charged and the page cache the run read), ``pids.peak``, the CPU
time of every process that was ever in the cgroup.  Otherwise what the sampler saw of the
process tree (supervise.Meter: each process's peak RSS, VmHWM, sampled from 2 ms after the
start, so a 50 ms run is seen several times), with wait4's rusage as the floor.

wait4's ``ru_maxrss`` is a floor only when it is above the daemon's own peak RSS: our child is
started with vfork, and exec records the peak of the address space it leaves, which is the
daemon's, as the child's own (that is how a `print(6*7)` next to a loaded model was once
recorded at 252 MB).  Above our own peak it can only be the run's."""
from __future__ import annotations

import resource

from .cgroups import Cgroups

MB = 2**20


def rusage_floor_mb(ru_maxrss_kb: int) -> float | None:
    """RU_MAXRSS (of our reaped child) in MB, or None where it may be the daemon's peak."""
    own_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru_maxrss_kb / 1024 if ru_maxrss_kb > own_kb else None


def _best(*candidates: tuple[float | None, str]) -> tuple[float, str]:
    """The largest of the figures that exist, with its source (each is a lower bound of the
    truth, or the truth itself)."""
    have = [(v, how) for v, how in candidates if v is not None]
    return max(have, key=lambda c: c[0]) if have else (0.0, "none")


def memory(cg: Cgroups, sampled_mb: float, ru_maxrss_kb: int) -> tuple[float, str]:
    kernel = cg.memory_peak()
    if kernel is not None:
        return kernel[0] / MB, kernel[1]
    return _best((sampled_mb if sampled_mb > 0 else None, "sampled:VmHWM sum over the tree"),
                 (rusage_floor_mb(ru_maxrss_kb), "wait4:ru_maxrss"))


def cpu(cg: Cgroups, sampled_s: float, usage) -> tuple[float, str]:
    kernel = cg.cpu_reading()
    if kernel is not None:
        return kernel
    # rusage counts every process the run reaped; the samples also those it left orphaned
    return _best((usage.ru_utime + usage.ru_stime, "wait4:ru_utime+ru_stime"),
                 (sampled_s if sampled_s > 0 else None, "sampled:psutil cpu_times"))


def processes(cg: Cgroups, sampled: int) -> tuple[int, str]:
    kernel = cg.pids_peak()
    if kernel is not None and kernel[0] >= sampled:
        return int(kernel[0]), kernel[1]
    where = "cgroup.procs" if cg.joined else "the process tree"
    if sampled >= 1:
        return sampled, f"sampled:{where}"
    return 1, f"sampled:{where} (floor 1: the run's first process)"


def figures(cg: Cgroups, meter, usage, wall: float, ncpu: int) -> dict:
    """The run's resources dict: the numbers the summary reads, and "measured"."""
    rss, rss_how = memory(cg, meter.peak_rss, usage.ru_maxrss)
    cpu_s, cpu_how = cpu(cg, meter.cpu_seconds, usage)
    procs, procs_how = processes(cg, meter.peak_pids)
    # a window's share is at least the whole run's average: a run too short for two samples
    # still has a peak
    average = cpu_s / wall / ncpu * 100 if wall > 0 else 0.0
    peak = min(100.0, max(meter.cpu_peak, average))
    return {"cpu_seconds": round(cpu_s, 3), "cpu_peak_percent": round(peak, 1),
            "peak_rss_mb": round(rss, 1), "bytes_written": int(meter.bytes_written),
            "wall_seconds": round(wall, 3), "peak_processes": procs,
            "measured": {"cpu_seconds": cpu_how, "peak_rss_mb": rss_how,
                         "peak_processes": procs_how,
                         "cpu_peak_percent": "sampled every 25 ms (at least the run's average)",
                         "bytes_written": "psutil write_bytes and the scratch dir's size",
                         "wall_seconds": "monotonic clock, start to exit"}}
