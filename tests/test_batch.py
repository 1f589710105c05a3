"""Which daemon claims what, and how much at a time (janus_git/daemon/remote/batch.py): rendezvous
hashing over the live leases, and batches that shrink as the work runs out.  The fleet
itself is tested against a real remote in tests/test_remote.py."""
from __future__ import annotations

from janus_git.daemon.remote.batch import batch_size, claim_order
from janus_git.daemon.state import Ticket

LIVE = {"d1", "d2", "d3"}
TICKETS = [Ticket(f"20261130-000000{i:03d}-abcdef", {"rule": "auto"}) for i in range(300)]


def owner(tid: str, live: set[str]) -> str:
    import hashlib
    return min(live, key=lambda n: hashlib.sha256(f"{n}/{tid}".encode()).digest())


def test_every_proposal_has_one_owner_and_each_takes_its_own_first():
    for me in LIVE:
        order = [t.id for t in claim_order(TICKETS, me, LIVE)]
        assert sorted(order) == sorted(t.id for t in TICKETS)  # nothing lost or doubled
        mine = [t for t in order if owner(t, LIVE) == me]
        assert order[:len(mine)] == mine  # all its own before anyone else's
        assert 60 <= len(mine) <= 140  # a fair share of 300 among three


def test_a_thief_takes_from_the_far_end_of_the_owners_order():
    d2_own = [t.id for t in claim_order(TICKETS, "d2", LIVE) if owner(t.id, LIVE) == "d2"]
    d1_takes_of_d2 = [t.id for t in claim_order(TICKETS, "d1", LIVE)
                      if owner(t.id, LIVE) == "d2"]
    assert d1_takes_of_d2 == list(reversed(d2_own))  # d2's last first: they meet at the end


def test_a_daemon_that_dies_gives_its_share_away_and_nobody_elses_moves():
    before = {t.id: owner(t.id, LIVE) for t in TICKETS}
    after = {t.id: owner(t.id, {"d1", "d2"}) for t in TICKETS}
    moved = {t for t in before if before[t] != after[t]}
    assert moved == {t for t in before if before[t] == "d3"}  # only the dead one's work


def test_batches_are_claim_batch_at_most_and_shrink_as_the_work_runs_out():
    assert batch_size(300, 8, 3) == 8
    assert batch_size(12, 8, 3) == 4  # one daemon's share of what is left
    assert batch_size(5, 8, 3) == 2
    assert batch_size(1, 8, 3) == 1
    assert batch_size(0, 8, 3) == 1
    assert batch_size(5, 8, 0) == 5  # no lease seen yet: counted as itself alone
    assert batch_size(300, 1, 3) == 1
