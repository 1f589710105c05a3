"""The Victorian controls: escapement, PI governor and relief valve.

- The escapement limits the *rate* of tool starts (a token bucket refilled at
  max_starts_per_second); an idle daemon starts the next approved run at once, with no tick of
  delay.
- The PI governor watches host CPU and scales the escapement's rate down when CPU runs above
  target (auto work only: a person's approval is never throttled below one start per second).
- The relief valve caps the queue of pending auto work: past max_pending_auto, new auto
  proposals are archived rather than queued, so a runaway planner cannot flood the daemon.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


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
    """A PI controller on host CPU %; output is a throttle in [0.05, 1]."""
    target: float = 80.0
    kp: float = 0.5
    ki: float = 0.1
    _integral: float = field(default=0.0, init=False)
    throttle: float = field(default=1.0, init=False)

    def update(self, cpu_percent: float, dt: float) -> float:
        error = (self.target - cpu_percent) / 100.0      # positive: headroom
        self._integral = max(-5.0, min(5.0, self._integral + error * dt))
        out = 1.0 + self.kp * min(error, 0.0) * 10 + self.ki * min(self._integral, 0.0)
        self.throttle = max(0.05, min(1.0, out))
        return self.throttle


@dataclass
class ReliefValve:
    max_pending: int = 50

    def should_vent(self, pending_auto: int) -> bool:
        return pending_auto >= self.max_pending
