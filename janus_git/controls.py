"""The Victorian controls: escapement, PI governor and relief valve, and the host sampler that
feeds them.

- The escapement limits the *rate* of tool starts (a token bucket refilled at
  max_starts_per_second).  Each lane has its own bucket: the people's runs at the base rate,
  always; automatic runs at the base rate times the governor's scale.  An idle daemon starts
  the next approved run at once, with no tick of delay.
- The PI governor holds host CPU near `governor.target_cpu_percent`.  Its output is the
  capacity it gives automatic work, in run slots (a float in [0, auto slots]): the whole
  slots it allows, and the start-rate scale for the automatic lane (output / auto slots).
  Anti-windup: the integral is clamped to the output's range, so the output turns as soon as
  the error changes sign.  It never looks
  at the people's lane.
- The relief valve opens on pressure (approved auto work queued past max_pending_auto, host
  memory past max_memory_percent, max_recent_failures automatic runs failed in a row within
  RECENT_FAILURES_S).  While open, automatic work is deferred (it stays `proposed` and is
  decided again once the valve closes; it is never archived); it closes when every pressure
  is below close_at times its threshold.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .util import Signal

SAMPLE_S = 1.0             # how often the host is measured (from the loop, never blocking it)
RECENT_FAILURES_S = 300.0  # a failed auto run counts towards the valve for this long
MIN_AUTO_SCALE = 0.05      # the automatic lane's slowest start rate, as a share of the base


@dataclass
class Escapement:
    rate: float                      # starts per second
    burst: float = 1.0
    _tokens: float = field(default=1.0, init=False)
    _last: float = field(default_factory=time.monotonic, init=False)

    def _refill(self, now: float, rate: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * rate)
        self._last = now

    def wait_time(self, throttle: float = 1.0) -> float:
        """Seconds until a start is allowed (0 when one may start now)."""
        rate = max(self.rate * throttle, 1e-3)
        self._refill(time.monotonic(), rate)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / rate

    def take(self) -> None:
        self._tokens -= 1.0


@dataclass
class Governor:
    """A PI controller from host CPU % to the capacity given to automatic work (run slots).

    error = (target - measured) / 100; output = high * kp * error + integral, where the
    integral (in slots) moves by high * ki * error * dt.  Anti-windup: the integral is clamped
    to the output's own range [0, high], so a long saturation winds it no further than the
    edge and the output turns as soon as the error changes sign (a plain integral would sit
    far past the edge and hold the output saturated for as long again).  The output is
    clamped to [0, high] too.  A fresh governor gives everything."""
    target: float = 80.0
    kp: float = 0.5
    ki: float = 0.1
    high: float = 1.0                 # the most auto slots it may give
    measured: float | None = field(default=None, init=False)
    output: float = field(default=-1.0, init=False)
    _integral: float = field(default=-1.0, init=False)

    def __post_init__(self) -> None:
        self._integral = self.output = float(self.high)

    def set_high(self, high: float) -> None:
        """A new bound (the configuration changed): the state is clamped into it."""
        self.high = float(high)
        self._integral = min(self._integral, self.high)
        self.output = min(self.output, self.high)

    def update(self, cpu_percent: float, dt: float) -> float:
        self.measured = cpu_percent
        error = (self.target - cpu_percent) / 100.0
        p = self.high * self.kp * error
        integral = self._integral + self.high * self.ki * error * dt
        self._integral = min(max(integral, 0.0), self.high)  # never wound past the range
        self.output = min(max(p + self._integral, 0.0), self.high)
        return self.output

    @property
    def slots(self) -> int:
        """Whole run slots for automatic work: a part of a slot is a slot, slowed."""
        return min(int(self.high), math.ceil(self.output - 1e-6))

    @property
    def scale(self) -> float:
        """The automatic lane's start-rate scale, in [MIN_AUTO_SCALE, 1]."""
        if self.high <= 0:
            return 1.0
        return max(MIN_AUTO_SCALE, min(1.0, self.output / self.high))

    @property
    def throttle(self) -> float:  # the name the escapement's callers used
        return self.scale


@dataclass
class ReliefValve:
    """Opens when a pressure reaches its threshold; closes when every pressure is below
    close_at times its threshold (hysteresis).  update() says what changed."""
    max_pending: int = 50
    max_memory_percent: float = 90.0
    max_recent_failures: int = 5
    close_at: float = 0.8
    is_open: bool = field(default=False, init=False)
    why: list[str] = field(default_factory=list, init=False)
    pressures: dict[str, float] = field(default_factory=dict, init=False)
    opened_at: float | None = field(default=None, init=False)
    _failures: list[float] = field(default_factory=list, init=False)

    def should_vent(self, pending_auto: int) -> bool:
        """Whether auto work is deferred with PENDING_AUTO approved auto runs queued."""
        self.update(pending=pending_auto)
        return self.is_open

    # failures: consecutive failed automatic runs, each counted for RECENT_FAILURES_S
    def failed(self, now: float | None = None) -> None:
        self._failures.append(time.monotonic() if now is None else now)

    def succeeded(self) -> None:
        self._failures.clear()

    def recent_failures(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        self._failures = [t for t in self._failures if now - t < RECENT_FAILURES_S]
        return len(self._failures)

    def update(self, pending: int | None = None, memory_percent: float | None = None,
               now: float | None = None) -> str | None:
        """New readings (None keeps the last); returns "opened", "closed" or None."""
        if pending is not None:
            self.pressures["queue"] = pending / self.max_pending
        if memory_percent is not None:
            self.pressures["memory"] = memory_percent / self.max_memory_percent
        self.pressures["failures"] = self.recent_failures(now) / self.max_recent_failures
        over = [k for k, v in self.pressures.items() if v >= 1.0]
        if not self.is_open and over:
            self.is_open, self.why, self.opened_at = True, over, time.monotonic()
            return "opened"
        if self.is_open and all(v < self.close_at for v in self.pressures.values()):
            self.is_open, self.why, self.opened_at = False, [], None
            return "closed"
        if self.is_open:
            self.why = sorted(set(self.why) | set(over))
        return None

    def describe(self) -> str:
        """Why it is open, in words (for the alert and the status)."""
        words = {"queue": f"approved auto work queued (limit {self.max_pending})",
                 "memory": f"host memory (limit {self.max_memory_percent:g} %)",
                 "failures": f"automatic runs failing in a row (limit "
                             f"{self.max_recent_failures})"}
        return "; ".join(f"{words[k]} at {self.pressures.get(k, 0) * 100:.0f} % of its limit"
                         for k in self.why)


class HostSampler:
    """Host CPU % (from /proc/stat through psutil.cpu_times, as deltas of its own, so no other
    caller's psutil.cpu_percent state is disturbed) and memory %, read without blocking."""

    def __init__(self) -> None:
        self._last = self._times()
        self.cpu_percent: float | None = None
        self.memory_percent: float | None = None
        self.at = 0.0

    @staticmethod
    def _times() -> tuple[float, float]:
        import psutil
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0), idle

    def cpu_since_last(self, reset: bool = True) -> float | None:
        total, idle = self._times()
        dt = total - self._last[0]
        if dt <= 0:
            return self.cpu_percent
        value = max(0.0, min(100.0, 100.0 * (1.0 - (idle - self._last[1]) / dt)))
        if reset:
            self._last = (total, idle)
        return value

    def sample(self) -> None:
        import psutil
        self.cpu_percent = self.cpu_since_last()
        self.memory_percent = psutil.virtual_memory().percent
        self.at = time.monotonic()

    def load(self) -> dict[str, Any]:
        """The host's load now: load averages and CPU % since the last sample (for a run's
        record)."""
        cpu = self.cpu_since_last(reset=False)
        return {"loadavg": [round(x, 2) for x in os.getloadavg()],
                "cpu_percent": None if cpu is None else round(cpu, 1)}


class TickMeter:
    """The loop's achieved tick rate: steps per second over the last WINDOW seconds."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._ticks: list[float] = []

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._ticks.append(now)
        if len(self._ticks) > 4096 or now - self._ticks[0] > 2 * self.window:
            self._ticks = [t for t in self._ticks if now - t <= self.window]

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        recent = [t for t in self._ticks if now - t <= self.window]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(now - recent[0], 1e-6)


class Controls:
    """The controls one daemon holds: both lanes' escapements, the governor, the valve and
    the host sampler, kept in step with the configuration in force (configure())."""

    def __init__(self, controls_cfg: dict[str, Any]) -> None:
        self.cfg: dict[str, Any] = {}
        rate = float(controls_cfg["max_starts_per_second"])
        self.people = Escapement(rate)
        self.auto = Escapement(rate)
        self.governor = Governor(high=0.0)
        self._fresh = True
        self.valve = ReliefValve()
        self.host = HostSampler()
        self.ticks = TickMeter()
        self.valve_moved = Signal("relief valve")  # sent "opened" / "closed"
        self.configure(controls_cfg)

    # -- configuration --------------------------------------------------------------------
    def configure(self, c: dict[str, Any]) -> None:
        if c is self.cfg:
            return
        self.cfg = c
        rate = float(c["max_starts_per_second"])
        self.people.rate = self.auto.rate = rate
        g = c["governor"]
        self.governor.target, self.governor.kp, self.governor.ki = (
            float(g["target_cpu_percent"]), float(g["kp"]), float(g["ki"]))
        self.governor.set_high(self.auto_slots_max)
        if self._fresh:  # a fresh governor gives automatic work everything it may have
            self.governor.__post_init__()
            self._fresh = False
        v = c["relief_valve"]
        self.valve.max_pending = int(v["max_pending_auto"])
        self.valve.max_memory_percent = float(v["max_memory_percent"])
        self.valve.max_recent_failures = int(v["max_recent_failures"])
        self.valve.close_at = float(v["close_at"])

    @property
    def max_runs(self) -> int:
        return int(self.cfg.get("max_parallel_runs", 1))

    @property
    def reserved(self) -> int:
        """Slots kept for people, at most max_parallel_runs - 1: automatic work always has
        one slot to itself, so max_parallel_runs: 1 is one run at a time, people first."""
        return max(0, min(int(self.cfg.get("reserved_for_people", 0)), self.max_runs - 1))

    @property
    def auto_slots_max(self) -> int:
        return self.max_runs - self.reserved

    # -- measuring ------------------------------------------------------------------------
    def sample(self, pending_auto: int, force: bool = False) -> None:
        """Measure the host (at most every SAMPLE_S), step the governor, read the valve."""
        now = time.monotonic()
        if not force and now - self.host.at < SAMPLE_S:
            self._valve(self.valve.update(pending=pending_auto))
            return
        dt = now - self.host.at if self.host.at else SAMPLE_S
        self.host.sample()
        if self.host.cpu_percent is not None:
            self.governor.update(self.host.cpu_percent, min(dt, 5 * SAMPLE_S))
        self._valve(self.valve.update(pending=pending_auto,
                                      memory_percent=self.host.memory_percent))

    def defers_auto(self, pending_auto: int) -> bool:
        """Whether automatic work is deferred now, with PENDING_AUTO approved auto runs
        queued (the valve is read again, and a change is announced)."""
        self._valve(self.valve.update(pending=pending_auto))
        return self.valve.is_open

    def run_ended(self, lane: str, ok: bool) -> None:
        """A run's outcome: automatic failures in a row press on the valve."""
        if lane != "auto":
            return
        if ok:
            self.valve.succeeded()
        else:
            self.valve.failed()
        self._valve(self.valve.update())

    def _valve(self, change: str | None) -> None:
        if change:
            self.valve_moved.send(change)

    def status(self) -> dict[str, Any]:
        g, v = self.governor, self.valve
        age = time.monotonic() - self.host.at if self.host.at else None
        return {
            "tick_hz": self.cfg.get("tick_hz"),
            "achieved_tick_hz": round(self.ticks.rate(), 1),
            "max_starts_per_second": self.people.rate,
            "auto_starts_per_second": round(self.auto.rate * g.scale, 3),
            "governor": {"setpoint": g.target,
                         "measurement": None if g.measured is None else round(g.measured, 1),
                         "output": round(g.output, 2), "auto_slots": g.slots,
                         "rate_scale": round(g.scale, 3),
                         "measured_s_ago": None if age is None else round(age, 1)},
            "valve": {"state": "open" if v.is_open else "closed", "why": v.describe(),
                      "pressures": {k: round(x, 2) for k, x in sorted(v.pressures.items())},
                      "memory_percent": self.host.memory_percent},
        }
