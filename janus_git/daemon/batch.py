"""Claims and results in batches, for a daemon on a shared remote (remote.py).

Every push to the shared branch costs a network round trip and is a compare-and-swap that
any other daemon's push refuses: one push per transition would cap a fleet at the remote's
pushes per second, and three daemons would go no faster than one.  So automatic work is
claimed in batches, one `approved -> running` commit for several proposals (each daemon
prefers its own by rendezvous hashing, so two rarely want the same ones), started as slots
free, and reported together with the next claim: one push per batch.

A claimed proposal not yet started shows `running` with `execution.claimed_at` (its result
gives `started_at`); if its daemon dies it is interrupted with the rest of its claims, never
run twice.  People's approvals and exclusive tools are not batched: they are claimed at once,
alone, by the executor's own path, and their results are reported at once.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable

from .. import lifecycle
from ..errors import Conflict
from ..lifecycle import Step
from ..proposal import Proposal, Status, utcnow
from .state import Run, Ticket

log = logging.getLogger("janus_git.daemon")
S = Status
REPORT_AFTER = 3.0  # seconds a finished run's result may wait for the next claim


class Batcher:
    def __init__(self, executor, instance: str, size: int,
                 fresh: Callable[[], None] = lambda: None) -> None:
        self.ex = executor
        self.fresh = fresh  # fetch now, unless just fetched: a claim built on a stale tip
        # is refused by any push made since (measured: a third of all pushes)
        self.state = executor.state
        self.instance = instance
        self.size = size
        self.backlog: dict[str, Ticket] = {}  # claimed here, waiting for a slot
        self.waiting_since: float | None = None  # the oldest unreported result

    def takes(self, t: Ticket) -> bool:
        return t.lane == "auto" and not self.ex._exclusive(t)

    # -- the executor's hooks ----------------------------------------------------------------
    def step(self) -> None:
        """Start what was claimed; when nothing claimed is left and a slot is free, claim
        the next batch (with the results so far in the same commit).  Claiming ahead of a
        busy slot was measured twice: more pushes, more of them refused, and three daemons
        no faster (1.46x and 1.81x of one, against 2.35-2.54x this way)."""
        self._start_backlog()
        if not self.backlog and self._free():  # (a busy slot: results wait for the claim)
            if self.state.results or any(self.takes(t) for t in self.state.queue.values()):
                self.fresh()
            batch = self._pick(self.size)
            if batch or self.state.results:
                self._commit(batch)
            self._start_backlog()

    def report(self) -> None:
        """Finished runs: reported now if a person waits for one, the daemon stops, or the
        oldest has waited long enough; otherwise with the next claim."""
        state = self.state
        if not state.results:
            self.waiting_since = None
            return
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
        if state.stopped or state.exiting:
            self._commit([], release=True)
        elif (any(run.lane == "people" for run, _ in state.results)
              or time.monotonic() - self.waiting_since > REPORT_AFTER):
            self._commit([])

    def release(self) -> None:
        """On the way out (or at the stop): what was claimed here but never started is
        interrupted in one commit, with the results still unreported."""
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
            self.ex.launch(current[0], ticket)

    def _pick(self, want: int) -> list[tuple[Ticket, Proposal, bytes]]:
        if not self._free():
            return []  # claimed only for a free slot: claims never wait on a busy one
        state = self.state
        mine = sorted((t for t in state.queue.values() if self.takes(t)), key=self._rank)
        out: list[tuple[Ticket, Proposal, bytes]] = []
        for t in mine:
            if len(out) >= want:
                break
            del state.queue[t.id]
            admitted = self.ex.admit(t)
            if admitted is not None:
                out.append((t, *admitted))
        return out

    def _rank(self, t: Ticket) -> bytes:
        """Rendezvous hashing: every daemon orders the same work differently."""
        return hashlib.sha256(f"{self.instance}/{t.id}".encode()).digest()

    # -- the one commit ----------------------------------------------------------------------
    def _commit(self, batch: list[tuple[Ticket, Proposal, bytes]], release: bool = False) -> None:
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
        if audit:
            files["logs/tool_use.jsonl"] = (ex.repo.read_blob("HEAD", "logs/tool_use.jsonl")
                                            or b"") + audit
        try:
            with state.writes:
                lifecycle.transition_group(ex.repo, steps, state.config.identity, files)
        except Conflict:
            for t, _, _ in batch:
                state.queue[t.id] = t  # decided again after the fetch
            raise
        self._done(reported)
        for t, _, _ in batch:
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
