"""Claims and results in batches, for a daemon on a shared remote (sync.py).

Every push to the shared branch costs a network round trip and is a compare-and-swap that
any other daemon's push refuses: one push per transition would cap a fleet at the remote's
pushes per second, and three daemons would go no faster than one.  So automatic work is
claimed in batches, one `approved -> running` commit for several proposals, started as slots
free, and reported together with the next claim: one push per batch.  Which daemon takes
which proposal is rendezvous hashing over the live leases: each proposal has one owner among
the live daemons, whom the others leave it to; a daemon with none of its own left steals
from the far end of another's order (what that owner would reach last), so two daemons
want the same proposal only at the very end.  (Each daemon merely ordering the work its own
way, as first built, collided on a third of the claims: each refused push then re-read.)

Claims are made in the background, pipelined, and sized to the work left.  The commit and its
push run in a thread of their own (a Flight), so the loop goes on starting runs while the
network works.  While the runs are short (a median under AHEAD_UNDER seconds), the next batch
is claimed once the claimed runs left to start would take less than twice as long as a claim
takes to land (an average of the last ones), so its push overlaps the runs instead of idling
the slot between batches (measured: a claim took 0.1 s to land for one daemon and 0.3-1 s
for three on a 2-core host, against a 0.2 s run).  Long runs are claimed only for a free
slot: a batch must not wait behind an hour-long run while another daemon is idle.  A batch
takes at most `claim_batch`, and no more than the work left shared by the live daemons
(guided self-scheduling), so the fleet's last runs end together rather than on one daemon.
(Halving that share as well was measured and dropped: at the tail every run became a push of
its own, and the others' last reports waited up to 2 s on them.) A refused push is made
again on the new tip when nothing it changed moved (gitrepo, replay.py); a claim that lost
its race is dropped from the batch and the rest goes again.

A claimed proposal not yet started shows `running` with `execution.claimed_at` (its result
gives `started_at`); if its daemon dies it is interrupted with the rest of its claims, never
run twice.  People's approvals and exclusive tools are not batched: they are claimed at once,
alone, by the executor's own path, and their results are reported at once.
"""
from __future__ import annotations

import hashlib
import logging
import math
import statistics
import threading
import time
from collections import deque
from typing import Callable

from ... import lifecycle
from ...errors import Conflict
from ...gitrepo import GitRepo
from ...lifecycle import Step
from ...proposal import Proposal, Status, utcnow
from ..state import Run, Ticket

log = logging.getLogger(__name__)
S = Status
TRIES = 3  # a batch's commit, with the claims others made first dropped each time
REPORT_AFTER = 3.0  # seconds a finished run's result may wait for the next claim
AHEAD_UNDER = 2.0  # runs shorter than this (median of the last few) are claimed ahead


def claim_order(tickets: list[Ticket], me: str, live: set[str]) -> list[Ticket]:
    """Rendezvous hashing over the LIVE daemons: each ticket's owner is the daemon whose
    hash of it is least.  ME takes its own first, in its own order; then the others', each
    from the end of its owner's order (what that owner would reach last)."""
    def weight(name: str, t: Ticket) -> bytes:
        return hashlib.sha256(f"{name}/{t.id}".encode()).digest()

    def rank(t: Ticket) -> tuple[int, bytes]:
        owner = min(live | {me}, key=lambda name: weight(name, t))
        if owner == me:
            return 0, weight(me, t)
        return 1, bytes(255 - b for b in weight(owner, t))
    return sorted(tickets, key=rank)


def batch_size(waiting: int, size: int, live: int) -> int:
    """At most SIZE (`claim_batch`), and no more than one daemon's share of the WAITING
    automatic work (guided self-scheduling: batches shrink as the work runs out, so the last
    runs end together on every daemon); at least one."""
    return max(1, min(size, math.ceil(waiting / max(1, live))))


class Batcher:
    def __init__(self, executor, instance: str, size: int,
                 peers: Callable[[], set[str]] = set,
                 ready: Callable[[], bool] = lambda: True,
                 resync: Callable[[], None] = lambda: None) -> None:
        self.ex = executor
        self.peers = peers  # the daemons (this one too) that hold a live lease
        # whether the clone holds everything fetched (a claim is built on what it holds),
        # and a fetch-and-bring-in now (after a refused claim)
        self.ready, self.resync = ready, resync
        self.state = executor.state
        self.instance = instance
        self.size = size
        self.backlog: dict[str, Ticket] = {}  # claimed here, waiting for a slot
        self.waiting_since: float | None = None  # the oldest unreported result
        self.launched: dict[str, float] = {}  # started here -> monotonic start
        self.lengths: deque[float] = deque(maxlen=8)  # the last auto runs' seconds
        self.flight: Flight | None = None  # the batch commit under way in the background
        self.landing = 0.2  # seconds a claim takes to land (a moving average)

    def takes(self, ticket: Ticket) -> bool:
        return ticket.lane == "auto" and not self.ex.is_exclusive(ticket)

    # -- the executor's hooks ----------------------------------------------------------------
    def step(self) -> None:
        """Take in the claim that landed, start what was claimed, and claim the next batch
        (with the results so far in the same commit) in the background: for a free slot,
        or, while runs are short, ahead of a busy one (see the module's note)."""
        if self._harvest() is False:
            return  # refused: what landed is fetched; the reader reads it before a new claim
        self._start_backlog()
        if self.flight is None and self.ready() and (
                (not self.backlog and self._free())
                or (self._running_out() and self._ahead())):
            batch = self._pick(self._want())
            if batch or self.state.results:
                self._commit(batch, background=True)

    def report(self) -> bool:
        """Finished runs: reported now if a person waits for one, the daemon stops, or the
        oldest has waited long enough; otherwise with the next claim.  True: they are this
        batcher's to report (the executor commits none of them itself)."""
        state = self.state
        self._measure()
        if not state.results:
            self.waiting_since = None
            return True
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
        if state.stopped or state.exiting:
            self.release()
        elif self.flight is not None:
            pass  # the claim under way takes them, or the next one
        elif (any(run.lane == "people" for run, _ in state.results)
              or time.monotonic() - self.waiting_since > REPORT_AFTER):
            self._commit([])
        return True

    def release(self) -> None:
        """On the way out (or at the stop): what was claimed here but never started is
        interrupted in one commit, with the results still unreported (after the claim under
        way, if any, has landed or been refused)."""
        if self.flight is not None and self.flight.thread is not None:
            self.flight.thread.join()
            self._harvest()
        self._commit([], release=True)

    # -- claims ------------------------------------------------------------------------------
    def _may_claim(self) -> bool:
        """Whether automatic work may be taken on at all now (claimed ahead of a slot)."""
        state, c = self.state, self.ex.controls
        if state.stopped or state.exiting or self.ex.exclusive_waiting is not None:
            return False
        if any(r.exclusive for r in state.runs.values()):
            return False
        if c.valve.is_open and any(k != "queue" for k in c.valve.why):
            return False
        return c.max_runs - c.reserved >= 1 and c.governor.slots >= 1

    def _ahead(self) -> bool:
        """Whether to claim ahead of a busy slot: runs are short, and nothing but this
        daemon's own automatic runs fills the slots (one batch ahead at most: the caller
        claims only when what it has claimed is running out)."""
        state, c = self.state, self.ex.controls
        return (self._may_claim() and len(self.lengths) >= 2
                and statistics.median(self.lengths) < AHEAD_UNDER
                and state.running("people") == 0
                and state.running("auto") <= min(c.max_runs - c.reserved, c.governor.slots))

    def _running_out(self) -> bool:
        """Whether the claimed runs left to start take less than two claims' landing."""
        if not self.lengths:
            return not self.backlog
        left = len(self.backlog) * statistics.median(self.lengths)
        return left < 2 * self.landing

    def _want(self) -> int:
        waiting = sum(1 for t in self.state.queue.values() if self.takes(t))
        return batch_size(waiting, self.size, len(self.peers()))

    def _measure(self) -> None:
        """The lengths of automatic runs that ended since the last step."""
        for run, _ in self.state.results:
            began = self.launched.pop(run.id, None)
            if began is not None and run.lane == "auto":
                self.lengths.append(time.monotonic() - began)

    def _free(self) -> bool:
        """Whether an automatic run may start now."""
        state, c = self.state, self.ex.controls
        return self._may_claim() and (state.running() + 1 <= c.max_runs - c.reserved
                                      and state.running("auto") + 1 <= c.governor.slots)

    def _start_backlog(self) -> None:
        c = self.ex.controls
        while self.backlog and self._free() and c.auto.wait_time(c.governor.scale) == 0:
            pid = next(iter(self.backlog))
            ticket = self.backlog.pop(pid)
            current = self.ex.store.head(pid)
            # ours by this daemon's own record, not the file's execution block (a pusher can
            # write that); the leader takes back an orphan by moving its status
            if current is None or current[0].status != S.RUNNING:
                continue  # a person, the stop or the leader moved it meanwhile
            self.launched[pid] = time.monotonic()
            self.ex.launch(current[0], ticket)

    def _pick(self, want: int) -> list[tuple[Ticket, Proposal, bytes]]:
        state = self.state
        mine = claim_order([t for t in state.queue.values() if self.takes(t)],
                           self.instance, self.peers() | {self.instance})
        out: list[tuple[Ticket, Proposal, bytes]] = []
        for t in mine:
            if len(out) >= want:
                break
            state.queue.take(t.id)
            admitted = self.ex.admit(t)
            if admitted is not None:
                out.append((t, *admitted))
        return out

    # -- the one commit ----------------------------------------------------------------------
    def _commit(self, batch: list[tuple[Ticket, Proposal, bytes]], release: bool = False,
                background: bool = False) -> None:
        """One commit: the results so far, BATCH's claims, and (RELEASE) the claimed runs
        never started.  In the BACKGROUND (a thread of its own, its own repository
        handle), so that the push and any replay on a moved tip overlap the runs; `step`
        takes the outcome in."""
        state, ex = self.state, self.ex
        steps, files, audit, reported = [], {}, b"", []
        for run, _ in list(state.results):
            made = self._result_step(run)
            reported.append(run)
            if made is not None:
                step, extra, line = made
                steps.append(step)
                files.update(extra)
                audit += line
        for t, p, text in batch:
            steps.append(Step(p, S.RUNNING, text, update=ex.claim(t, None)))
        if release:
            steps += self._released()
        if not steps:
            self._done(reported)
            return
        flight = Flight(batch, reported, steps, files, audit, time.monotonic())
        if not background:
            flight.land(ex.repo, state)
            self._settle(flight)
            if flight.error is not None:
                raise flight.error
            return
        flight.thread = threading.Thread(target=self._fly, args=(flight,), name="claim",
                                         daemon=True)
        self.flight = flight
        flight.thread.start()

    def _fly(self, flight: "Flight") -> None:
        try:
            flight.land(self.ex.repo, self.state)  # one repository for all its threads
        finally:
            self.state.wake.set()

    def _harvest(self) -> bool | None:
        """The background commit's outcome, once it has one: True when it landed, False
        when it was refused (what landed instead is fetched and brought in at once, so that
        the next claim is not built on the same stale tip), None while under way."""
        flight = self.flight
        if flight is None or (flight.thread is not None and flight.thread.is_alive()):
            return None
        self.flight = None
        self.landing += 0.3 * (flight.took - self.landing)
        self._settle(flight)
        log.debug("claimed %d, reported %d: %.0f ms%s", len(flight.batch),
                  len(flight.reported), flight.took * 1000,
                  f" ({flight.error})" if flight.error else "")
        if isinstance(flight.error, Conflict):
            log.info("waiting: %s", flight.error)
            self.resync()
            return False
        if flight.error is not None:
            raise flight.error
        return True

    def _settle(self, flight: "Flight") -> None:
        for t in flight.lost:
            self.state.queue.offer(t)  # admitted afresh: `admit` reads the file as it is
        if flight.error is not None:
            for t, _, _ in flight.batch:
                self.state.queue.offer(t)  # decided again after the fetch
            return
        self._done(flight.reported)
        for t, _, _ in flight.batch:
            self.backlog[t.id] = t

    def _done(self, reported: list[Run]) -> None:
        state = self.state
        state.results[:] = [item for item in state.results if item[0] not in reported]
        self.waiting_since = None if not state.results else self.waiting_since
        for run in reported:
            result = run.result
            self.ex.controls.run_ended(run.lane, not isinstance(result, Exception) and (
                result.status == "succeeded" or result.limit_hit == "cancelled"))

    def _result_step(self, run: Run):
        """(step, files, audit line) for a finished run, or None when its proposal is no
        longer this daemon's running claim (the result is then only in the log)."""
        current = self.ex.store.head(run.id)
        if current is None or current[0].status != S.RUNNING:
            log.warning("%s is no longer ours to report; result dropped: %r", run.id,
                        run.result)
            return None
        p, text = current
        if isinstance(run.result, Exception):
            def crashed(q: Proposal) -> None:
                q.execution.update(ended_at=utcnow(), error=f"tool crashed: {run.result}")
            return Step(p, S.FAILED, text, f"the tool crashed: {run.result}", crashed), {}, b""
        new, fill, files, line, reason = self.ex.result_parts(run, p, None)
        return Step(p, new, text, reason, fill), files, line

    def _released(self) -> list[Step]:
        steps = []
        for pid in list(self.backlog):
            self.backlog.pop(pid)
            current = self.ex.store.head(pid)
            if current and current[0].status == S.RUNNING:
                steps.append(Step(current[0], S.INTERRUPTED, current[1],
                                  "claimed but never started: the daemon stopped first; "
                                  "set status to approved and commit to run it"))
        return steps


class Flight:
    """One batch commit, made in the main loop or in a thread of its own."""

    def __init__(self, batch, reported: list[Run], steps: list[Step],
                 files: dict[str, bytes | None], audit: bytes, began: float) -> None:
        self.batch, self.reported, self.steps = batch, reported, steps
        self.files, self.audit, self.began = files, audit, began
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.lost: list[Ticket] = []  # claims dropped: their files changed meanwhile
        self.took = 0.0

    def land(self, repo: GitRepo, state) -> None:
        """Commit (and push) the batch.  A claim that another daemon made first is dropped
        and the rest committed again (on the remote's tip, by the replay): one lost race
        must not cost the whole batch and its results a read and a new decision."""
        try:
            for _ in range(TRIES):
                try:
                    self._try(repo, state)
                    break
                except Conflict as e:
                    if not self._drop(e.paths):
                        raise
        except BaseException as e:  # noqa: BLE001 (handed to the main loop)
            self.error = e
        self.took = time.monotonic() - self.began

    def _try(self, repo: GitRepo, state) -> None:
        if not self.steps:
            return
        files = dict(self.files)
        with state.writes:  # the audit log is read at the HEAD the commit goes on
            if self.audit:
                files["logs/tool_use.jsonl"] = (
                    repo.read_blob("HEAD", "logs/tool_use.jsonl") or b"") + self.audit
            lifecycle.transition_group(repo, self.steps, state.config.identity, files)

    def _drop(self, paths: frozenset[str]) -> bool:
        """Drop the claims of PATHS (changed meanwhile: most often another daemon's claim,
        but anyone who can push can write a proposal file); False if PATHS holds more than
        claims (a result's file changed: that is read again).  Their tickets are queued
        again and admitted afresh from the file as it now stands, as after any refusal."""
        claims = {s.p.path for s in self.steps if s.new == S.RUNNING}
        if not paths or not paths <= claims:
            return False
        self.steps = [s for s in self.steps if s.p.path not in paths]
        self.lost += [t for t, p, _ in self.batch if p.path in paths]
        self.batch = [b for b in self.batch if b[1].path not in paths]
        log.info("%d claim(s) taken by another daemon first; the rest go again",
                 len(paths))
        return True
