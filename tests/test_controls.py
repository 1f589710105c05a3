"""The Victorian controls (controls.py): the escapement's rate of starts, the PI governor's
throttle on CPU, and the relief valve's cap on queued auto work (also through the daemon)."""
from __future__ import annotations

import time

import pytest

from janus_git.controls import MIN_AUTO_SCALE, RECENT_FAILURES_S, Escapement, Governor, ReliefValve

from conftest import configure
from daemonkit import burst, propose, record


# -- escapement --------------------------------------------------------------------------------
def test_an_idle_escapement_lets_the_first_start_go_at_once():
    esc = Escapement(rate=2.0)
    assert esc.wait_time() == 0.0
    esc.take()
    assert 0.45 < esc.wait_time() <= 0.5  # the next token in 1/rate seconds


def test_the_throttle_slows_the_rate():
    esc = Escapement(rate=2.0)
    esc.take()
    assert 0.9 < esc.wait_time(throttle=0.5) <= 1.0
    assert esc.wait_time(throttle=0.0) > 100  # never zero: at least 1e-3 starts a second


def test_tokens_refill_and_an_idle_spell_saves_up_no_burst():
    esc = Escapement(rate=50.0)  # a token each 20 ms
    esc.take()
    time.sleep(0.1)  # long enough for five tokens: the bucket holds one
    assert esc.wait_time() == 0.0
    esc.take()
    assert esc.wait_time() > 0.0


def test_a_bigger_burst_allows_back_to_back_starts_after_an_idle_spell():
    esc = Escapement(rate=50.0, burst=3.0)
    esc.take()
    time.sleep(0.1)  # five tokens' worth: the bucket holds three
    for _ in range(3):
        assert esc.wait_time() == 0.0
        esc.take()
    assert esc.wait_time() > 0.0


# -- governor (the plant-model tests are in test_governor.py) ------------------------------------
def test_governor_gives_everything_below_target():
    gov = Governor(target=80.0, high=2)
    for cpu in (0.0, 40.0, 79.9):
        assert gov.update(cpu, 1.0) == 2.0
    assert (gov.slots, gov.scale) == (2, 1.0)


def test_governor_pulls_back_in_proportion_above_target():
    gov = Governor(target=80.0, kp=0.5, ki=0.1, high=2)
    # p = 2 * 0.5 * -0.05 = -0.05; the integral 2 - 2 * 0.1 * 0.05 = 1.99
    assert gov.update(85.0, 1.0) == pytest.approx(1.94)
    assert (gov.slots, gov.scale) == (2, pytest.approx(0.97))
    assert Governor(target=80.0, high=2).update(100.0, 1.0) < 1.8


def test_governor_output_is_bounded_and_a_part_slot_is_a_slot():
    gov = Governor(target=50.0, kp=0.5, ki=0.5, high=3)
    for _ in range(100):
        gov.update(100.0, 1.0)
    assert (gov.output, gov.slots, gov.scale) == (0.0, 0, MIN_AUTO_SCALE)
    gov.update(45.0, 1.0)
    assert 0 < gov.output < 1 and gov.slots == 1
    for _ in range(100):
        gov.update(0.0, 1.0)
    assert (gov.output, gov.slots, gov.scale) == (3.0, 3, 1.0)


# -- relief valve ------------------------------------------------------------------------------
def test_relief_valve_opens_at_its_cap_and_closes_with_hysteresis():
    valve = ReliefValve(max_pending=10, close_at=0.8)
    assert [valve.update(pending=n) for n in (5, 9, 10, 9, 8, 7, 10)] == [
        None, None, "opened", None, None, "closed", "opened"]
    assert valve.why == ["queue"] and "queued" in valve.describe()


def test_relief_valve_opens_on_memory_and_on_failures_in_a_row():
    valve = ReliefValve(max_memory_percent=90, max_recent_failures=3)
    assert valve.update(memory_percent=91.0) == "opened" and valve.why == ["memory"]
    assert valve.update(memory_percent=75.0) is None  # 83 % of its limit: still open
    assert valve.update(memory_percent=70.0) == "closed"
    for _ in range(2):
        valve.failed()
    valve.succeeded()  # in a row: a success starts the count again
    for _ in range(2):
        valve.failed()
    assert valve.update() is None
    valve.failed()
    assert valve.update() == "opened" and valve.why == ["failures"]
    later = time.monotonic() + RECENT_FAILURES_S + 1
    assert valve.update(now=later) == "closed"  # old failures no longer count


def test_the_valve_is_announced_once_per_opening():
    from janus_git.config import DEFAULTS
    from janus_git.controls import Controls
    c = Controls({**DEFAULTS["controls"],
                  "relief_valve": {**DEFAULTS["controls"]["relief_valve"],
                                   "max_pending_auto": 2}})
    seen = []
    c.valve_moved.connect(seen.append)
    assert [c.defers_auto(n) for n in (0, 1, 2, 3, 2, 1, 0, 2)] == [
        False, False, True, True, True, False, False, True]
    assert seen == ["opened", "closed", "opened"]


def test_relief_valve_defers_auto_work_and_loses_none(state_dir):
    configure(state_dir, controls={"relief_valve": {"max_pending_auto": 1,
                                                    "max_memory_percent": 90,
                                                    "max_recent_failures": 5,
                                                    "close_at": 0.8}})
    ids = [propose(state_dir, "echo", str(i)) for i in range(3)]
    assert burst(state_dir) == 0
    recs = [record(state_dir, pid) for pid in ids]
    # one approved at a time: the others waited as proposals, and ran when it closed
    assert [r["status"] for r in recs] == ["succeeded"] * 3
    assert [r["execution"]["lane"] for r in recs] == ["auto"] * 3


def test_memory_pressure_defers_auto_work_until_it_falls(state_dir):
    valve = {"max_pending_auto": 50, "max_memory_percent": 1, "max_recent_failures": 5,
             "close_at": 0.8}
    configure(state_dir, controls={"relief_valve": valve})
    auto = propose(state_dir, "echo", "deferred")
    manual = propose(state_dir, "echo", "a person decides", type_="maintenance")
    assert burst(state_dir) == 0
    assert record(state_dir, auto)["status"] == "proposed"  # deferred, not archived
    assert record(state_dir, manual)["status"] == "proposed"  # offered to a person
    configure(state_dir, controls={"relief_valve": {**valve, "max_memory_percent": 100}})
    assert burst(state_dir) == 0
    assert record(state_dir, auto)["status"] == "succeeded"
