"""The Victorian controls (controls.py): the escapement's rate of starts, the PI governor's
throttle on CPU, and the relief valve's cap on queued auto work (also through the daemon)."""
from __future__ import annotations

import time

import pytest

from conftest import configure
from daemonkit import burst, propose, record

from janus_git.controls import Escapement, Governor, ReliefValve


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


# -- governor ----------------------------------------------------------------------------------
def test_governor_leaves_full_speed_below_target():
    gov = Governor(target=80.0)
    for cpu in (0.0, 40.0, 79.9):
        assert gov.update(cpu, 1.0) == 1.0


def test_governor_throttles_in_proportion_above_target():
    gov = Governor(target=80.0, kp=0.5, ki=0.1)
    assert gov.update(85.0, 1.0) == pytest.approx(1.0 - 0.25 - 0.005)
    assert Governor(target=80.0).update(90.0, 1.0) < 0.5
    assert Governor(target=80.0).update(100.0, 1.0) == 0.05  # never stops starts altogether


def test_governor_integral_is_bounded_so_it_recovers():
    gov = Governor(target=80.0, kp=0.5, ki=0.1)
    for _ in range(1000):  # a long overload winds the integral up to its bound only
        gov.update(100.0, 1.0)
    assert gov.throttle == 0.05
    gov.update(0.0, 1.0)  # idle again: the proportional term lets go at once
    assert 0.5 < gov.throttle < 1.0
    for _ in range(6):
        gov.update(0.0, 1.0)
    assert gov.throttle == 1.0  # and the integral unwinds within seconds


# -- relief valve ------------------------------------------------------------------------------
def test_relief_valve_vents_at_its_cap():
    valve = ReliefValve(max_pending=2)
    assert [valve.should_vent(n) for n in range(4)] == [False, False, True, True]


def test_relief_valve_archives_auto_work_past_the_cap(state_dir):
    configure(state_dir, controls={"relief_valve": {"max_pending_auto": 1}})
    ids = [propose(state_dir, "echo", str(i)) for i in range(3)]
    assert burst(state_dir) == 0
    recs = [record(state_dir, pid) for pid in ids]
    assert [r["status"] for r in recs] == ["succeeded", "archived", "archived"]
    assert recs[1]["note"] == "relief valve: 1 auto proposals already queued"
    manual = propose(state_dir, "echo", "a person decides", type_="maintenance")
    assert burst(state_dir) == 0
    assert record(state_dir, manual)["status"] == "proposed"  # the valve is for auto work only
