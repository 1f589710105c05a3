"""The PI governor (controls.py) against a plant model: host CPU as a first-order lag on the
load the auto slots make.  The plant: cpu' = (base + per_slot * output - cpu) / tau, sampled
every second as the daemon samples it."""
from __future__ import annotations

import math

from janus_git.controls import Governor


def simulate(gov: Governor, seconds: int, base=lambda t: 5.0, per_slot: float = 25.0,
             tau: float = 2.0, cpu: float = 5.0) -> tuple[list[float], list[float]]:
    cpus, outs = [], []
    for t in range(seconds):
        out = gov.update(cpu, 1.0)
        steady = min(100.0, base(t) + per_slot * out)
        cpu += (steady - cpu) * (1 - math.exp(-1.0 / tau))
        cpus.append(cpu)
        outs.append(out)
    return cpus, outs


def reversals(xs: list[float], band: float) -> int:
    """How often XS turns around by more than BAND (a sustained oscillation turns often)."""
    turns, direction, anchor = 0, 0, xs[0]
    for x in xs[1:]:
        if direction >= 0 and x < anchor - band:
            turns, direction, anchor = turns + (direction > 0), -1, x
        elif direction <= 0 and x > anchor + band:
            turns, direction, anchor = turns + (direction < 0), 1, x
        elif (direction > 0 and x > anchor) or (direction < 0 and x < anchor):
            anchor = x
    return turns


def test_the_step_response_settles_at_the_target_without_oscillating():
    gov = Governor(target=50.0, kp=0.5, ki=0.1, high=3)  # the default gains
    cpus, outs = simulate(gov, 180)  # full output first: 80 % CPU, over the target
    assert max(cpus) > 65  # it starts from everything, as a fresh daemon does
    settled = cpus[90:]
    assert all(abs(c - 50.0) < 1.0 for c in settled), settled[:5]
    assert reversals(cpus, band=1.0) <= 2  # at most an overshoot, no sustained swing
    assert abs(outs[-1] - 1.8) < 0.05  # (50 - 5) / 25 slots


def test_a_step_in_the_hosts_own_load_is_absorbed():
    gov = Governor(target=50.0, kp=1.0, ki=0.5, high=3)
    cpus, outs = simulate(gov, 240, base=lambda t: 5.0 if t < 120 else 30.0)
    assert abs(cpus[115] - 50.0) < 1.0
    assert abs(cpus[-1] - 50.0) < 1.0 and abs(outs[-1] - 0.8) < 0.05
    assert reversals(cpus[120:], band=1.0) <= 2


def test_anti_windup_the_output_turns_as_soon_as_the_error_changes_sign():
    # a long overload by someone else: the output saturates at 0 for ten minutes
    gov = Governor(target=50.0, kp=0.5, ki=0.1, high=3)
    simulate(gov, 600, base=lambda t: 95.0, cpu=95.0)
    assert gov.output == 0.0 and gov.slots == 0
    # the overload ends: within two samples the auto work gets slots again
    cpus, outs = simulate(gov, 60, cpu=95.0)
    first = next(i for i, o in enumerate(outs) if o > 0)
    assert first <= 2, outs[:5]
    assert abs(cpus[-1] - 50.0) < 2.0
    # without the clamp the integral would sit 600 s * 0.45 * 0.1 * 3 = 81 slots under:
    # the output would stay at 0 for minutes after the error changed sign
    naive_integral = -600 * 0.45 * 0.1 * 3
    assert naive_integral + 3 * 0.5 * 0.45 < 0


def test_saturating_high_unwinds_at_once_too():
    gov = Governor(target=50.0, kp=0.5, ki=0.1, high=2)
    simulate(gov, 600, base=lambda t: 0.0, per_slot=5.0, cpu=0.0)  # can never reach 50 %
    assert gov.output == 2.0
    gov.update(90.0, 1.0)  # the host is suddenly busy: the output falls in the same step
    assert gov.output < 1.9 and gov.update(90.0, 1.0) < gov.output + 1e-9
