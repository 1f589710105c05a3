"""How the daemon runs approved proposals: run slots in two lanes, the escapement lets each
start, its tool runs in a worker thread, and the daemon's own thread commits the result.

Run slots (controls.max_parallel_runs) in two lanes.  The people's lane (work a person
approved, decision rule "human") is looked at first, may use any free slot and is paced only
by its own escapement at the base rate.  Automatic work starts only while, after it starts,
`reserved_for_people` slots would still be free (so an approval arriving then finds a slot),
and only within the governor's auto slots and rate; while the relief valve is open for memory
or failures it starts none.  reserved_for_people is capped at max_parallel_runs - 1, so 1 run
slot is today's one run at a time, people first.

Exclusive tools (`exclusive: true`, e.g. llama_bench measure the host): an exclusive run first
*waits*: no automatic run and no thinking cycle starts, and it starts once no other run and
no thinking cycle is left; while it runs nothing else starts.  A person's approval never
waits for a queue: one that arrives while the exclusive run is waiting starts first (the
exclusive run waits for it too), and one that arrives while it runs waits for that one run
only, and then goes before any other exclusive run queued.

Crash safety: `running` is committed before the tool starts, and a proposal found `running`
at start-up is moved to `interrupted`, never re-run silently.  The result, its output, its
audit line and every file the tool changed are one commit, so `git revert` of that commit
undoes all of it; concurrent runs' results are committed one by one as they finish, each
under the write lock.  An approval is used by the run: it never counts again.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable

from .. import lifecycle
from ..controls import Controls
from ..errors import Conflict, JanusError
from ..faults import crashpoint, stallpoint
from ..gitrepo import UnsafePath
from ..policy import decide
from ..proposal import Proposal, Status, utcnow
from ..staterepo import StateRepo
from .branches import ApprovalBranches
from .coordinator import Coordinator
from .state import DaemonState, Run, Ticket

log = logging.getLogger(__name__)
S = Status


class Executor:
    def __init__(self, sr: StateRepo, state: DaemonState, branches: ApprovalBranches,
                 controls: Controls, coordinator: Coordinator, context: Callable[[], object],
                 on_start: Callable[[str, int], None] | None = None,
                 thinking: Callable[[], bool] = lambda: False) -> None:
        self.sr = sr
        self.repo = sr.repo
        self.store = sr.store
        self.state = state
        self.branches = branches
        self.controls = controls
        self.context = context  # the model context tools may use (loaded on first use)
        self.on_start = on_start
        self.thinking = thinking  # whether a thinking cycle is under way
        self.exclusive_waiting: str | None = None
        self._tools: dict[str, str | None] = {}  # queued id -> its tool (read once)
        self.claim_record = coordinator.claim  # what a claim records of this daemon
        # how automatic work is claimed and reported: one commit each here, or in batches
        # on a shared remote (remote/batch.py)
        self.claims = coordinator.claims(self)

    # -- which ticket starts next -----------------------------------------------------------
    def start_runs(self) -> None:
        state = self.state
        self.controls.configure(state.config["controls"])
        self.controls.sample(state.pending_auto())
        self.claims.step()
        while state.queue and not state.exiting:
            ticket = self.next_ticket()
            if ticket is None:
                return
            state.queue.take(ticket.id)
            try:
                self.start(ticket)
            except Conflict:
                state.queue.offer(ticket)  # a person is editing it: try again later
                raise

    def next_ticket(self) -> Ticket | None:
        """The ticket that may start now, or None; sets exclusive_waiting."""
        state, c = self.state, self.controls
        self.exclusive_waiting = None
        if any(r.exclusive for r in state.runs.values()):
            return None  # an exclusive run has the host to itself
        if state.running() >= c.max_runs:
            return None
        for lane in ("people", "auto"):
            # (automatic work on a remote is claimed in batches: not here)
            t = state.queue.next(lane, skip=self.claims.takes)
            if t is None:
                continue
            if self.is_exclusive(t) and (state.runs or self.thinking()):
                self.exclusive_waiting = t.id
                if lane == "people":
                    # a later approval may go first: people never wait for a queue
                    t = state.queue.next("people", skip=self.is_exclusive)
                    if t is not None and self._may_start(t):
                        return t
                return None  # no automatic work starts while it waits
            if self._may_start(t):
                return t
        return None

    def _may_start(self, t: Ticket) -> bool:
        state, c = self.state, self.controls
        if t.lane == "people":
            return c.people.wait_time() == 0
        if c.valve.is_open and any(k != "queue" for k in c.valve.why):
            return False  # memory or failures: hold automatic runs as well as decisions
        if state.running() + 1 > c.max_runs - c.reserved:
            return False
        if state.running("auto") + 1 > c.governor.slots:
            return False
        return c.auto.wait_time(c.governor.scale) == 0

    def is_exclusive(self, t: Ticket) -> bool:
        if t.id not in self._tools:
            if len(self._tools) > 4096:
                self._tools.clear()
            tool: str | None
            if t.seen is not None:  # (a proposal's tool never changes: filed, or refused)
                tool = t.seen.proposal.tool
            else:
                current = self.store.head(t.id)
                tool = current[0].tool if current else None
            self._tools[t.id] = tool if isinstance(tool, str) else None
        tool = self._tools[t.id]
        spec = self.state.config.tools.get(tool) if tool else None
        return bool(spec and spec.get("exclusive"))

    def holds_thinking(self) -> bool:
        """Whether a thinking cycle must not start (an exclusive run waits or runs)."""
        return self.exclusive_waiting is not None or any(
            r.exclusive for r in self.state.runs.values())

    def status(self) -> dict[str, Any]:
        """The controls and the run slots, for `janus-git status` (daemon.json "controls")."""
        state, c = self.state, self.controls
        out = c.status()
        out["slots"] = {"max": c.max_runs, "reserved_for_people": c.reserved,
                        "auto_limit": min(c.auto_slots_max, c.governor.slots),
                        "in_use": {"people": state.running("people"),
                                   "auto": state.running("auto")},
                        "queued": {"people": len(state.queue) - state.pending_auto(),
                                   "auto": state.pending_auto()}}
        running = next((r.id for r in state.runs.values() if r.exclusive), None)
        out["exclusive"] = ({"id": running, "state": "running"} if running else
                            {"id": self.exclusive_waiting, "state": "waiting"}
                            if self.exclusive_waiting else None)
        return out

    def next_start_in(self, tick: float) -> float:
        """Seconds the loop may sleep before a queued ticket could start (at most TICK):
        shorter only when the escapement alone holds a ticket back (anything else that
        holds one back changes with a step: a run ending wakes the loop)."""
        state, c = self.state, self.controls
        if (not state.queue or state.stopped or state.running() >= c.max_runs
                or self.holds_thinking()):
            return tick
        waits = []
        if any(t.lane == "people" for t in state.queue.values()):
            waits.append(c.people.wait_time())
        if (state.pending_auto() and state.running() + 1 <= c.max_runs - c.reserved
                and state.running("auto") + 1 <= c.governor.slots and not c.valve.is_open):
            waits.append(c.auto.wait_time(c.governor.scale))
        waits = [w for w in waits if w > 0]  # 0: it would have started; something else holds
        return min(tick, min(waits)) if waits else tick

    def start(self, ticket: Ticket) -> None:
        admitted = self.admit(ticket)
        if admitted is None:
            return
        p, text = admitted
        state = self.state
        started = utcnow()
        crashpoint("before-running-commit")
        with state.writes:
            lifecycle.transition(self.repo, p, S.RUNNING, state.config.identity,
                                 base_text=text, update=self.claim(ticket, started))
        crashpoint("after-running-commit")
        self.launch(p, ticket)

    def claim(self, ticket: Ticket, started: str | None) -> Callable[[Proposal], None]:
        """What the `approved -> running` commit writes (STARTED None: claimed in a batch,
        started when a slot frees; the result says when)."""
        claim = self.claim_record

        def mark(q: Proposal) -> None:
            q.decision = ticket.decision
            q.execution = ({"started_at": started} if started else {"claimed_at": utcnow()})
            q.execution.update(claim)
            q.approvals = []  # used: an approval counts once, for this run
        return mark

    def admit(self, ticket: Ticket) -> tuple[Proposal, bytes] | None:
        """The proposal as it stands, if it may run now; else None (answered when needed)."""
        state = self.state
        seen, ticket.seen = ticket.seen, None  # (once: a ticket offered again reads afresh)
        if seen is not None and seen.head == self.repo.fast_head():
            current: tuple[Proposal, bytes] | None = (seen.proposal, seen.text)
        else:
            current = self.store.head(ticket.id)
        if current is None:
            return None
        p, text = current
        if p.status != S.APPROVED:
            return None
        if ticket.decision.get("rule", "").startswith("auto:") and not decide(
                p, state.config).auto:
            # the policy is asked again at start: an "auto" decision forged into a commit, or
            # one the current agent.yaml no longer allows, runs nothing
            with state.writes:
                lifecycle.transition(self.repo, p, S.PROPOSED, state.config.identity,
                                     base_text=text, reason="the policy no longer allows this "
                                     "to run by itself; it needs a person's approval")
            state.seen_manual.discard(p.id)
            return None
        if p.recompute_digest() != ticket.decision["digest"]:
            with state.writes:
                lifecycle.transition(self.repo, p, S.PROPOSED, state.config.identity,
                                     base_text=text, reason="changed after approval: the "
                                     "approved digest no longer matches; approve it again")
            return None
        return p, text

    def launch(self, p: Proposal, ticket: Ticket) -> None:
        """Start the tool of claimed proposal P in a worker thread."""
        from .. import tools

        state = self.state
        (self.controls.people if ticket.lane == "people" else self.controls.auto).take()
        run = Run(p.id, thread=None, lane=ticket.lane,  # type: ignore[arg-type]
                  exclusive=self.is_exclusive(ticket), started_at=utcnow())
        self._tools.pop(p.id, None)
        if run.exclusive:
            run.host_before = self.controls.host.load()

        def work() -> None:
            try:
                run.result = tools.execute(p, state.config, self.sr.root, cancel=run.cancel,
                                           on_start=lambda pid: self._started(p.id, pid),
                                           context=self.context())
            except Exception as e:  # a tool bug must not kill the daemon
                log.exception("tool %s crashed", p.tool)
                run.result = e
            state.wake.set()

        run.thread = threading.Thread(target=work, name=f"run-{p.id}", daemon=True)
        state.runs[p.id] = run
        self.exclusive_waiting = None
        state.activity = "running " + ", ".join(sorted(state.runs))
        run.thread.start()
        stallpoint("after-run-start")  # tests: the main loop busy while a tool runs
        self.branches.drop(p.id)  # after the start: it is bookkeeping, not on anyone's clock

    def _started(self, pid: str, os_pid: int) -> None:
        crashpoint("tool-started")
        if self.on_start:
            self.on_start(pid, os_pid)

    def collect(self) -> None:
        """Finished runs: their results are committed, one commit each (a result that meets
        a person's edit waits for the next step)."""
        state = self.state
        for pid, run in list(state.runs.items()):
            if run.thread.is_alive():
                continue
            del state.runs[pid]
            current = self.store.head(pid)
            if current is None:
                log.error("%s vanished while it ran; its result is only in this log: %r",
                          pid, run.result)
                continue
            state.results.append((run, current[0]))
        for item in list(state.results) if not self.claims.report() else ():
            crashpoint("before-result-commit")
            try:
                with state.writes:
                    self._commit_result(*item)
                crashpoint("after-result-commit")
                state.results.remove(item)
            except Conflict as e:
                log.info("result of %s waits: %s", item[1].id, e)
        if not state.runs:
            state.activity = "stopped" if state.stopped else "idle"
        else:
            state.activity = "running " + ", ".join(sorted(state.runs))

    def idle(self) -> bool:
        """Nothing queued, claimed, running or waiting for its result's commit."""
        s = self.state
        return not (s.queue or s.runs or s.results or self.claims.backlog)

    def finish(self) -> None:
        """On the way out: the results committed, and what was claimed but never started
        given up (may raise Conflict on a shared remote: fetch, and call again)."""
        self.collect()
        self.claims.release()

    def join(self) -> None:
        """Wait for every running tool to end (the first SIGTERM lets the step in hand
        finish)."""
        for run in list(self.state.runs.values()):
            run.thread.join()

    def _commit_result(self, run: Run, p: Proposal) -> None:
        identity = self.state.config.identity
        text = self.repo.read_blob("HEAD", p.path)
        if p.status != S.RUNNING:
            log.warning("%s is %s, not running; result dropped", p.id, p.status.value)
            return
        result = run.result
        host = {"before": run.host_before, "after": self.controls.host.load()} \
            if run.exclusive else None
        self.controls.run_ended(run.lane, not isinstance(result, Exception) and (
            result.status == "succeeded" or result.limit_hit == "cancelled"))
        if isinstance(result, Exception):
            p.execution.update(ended_at=utcnow(), error=f"tool crashed: {result}")
            lifecycle.transition(self.repo, p, S.FAILED, identity, base_text=text,
                                 reason=f"the tool crashed: {result}")
            return
        new, fill, files, line, reason = self.result_parts(run, p, host)
        audit = (self.repo.read_blob("HEAD", "logs/tool_use.jsonl") or b"") + line
        files["logs/tool_use.jsonl"] = audit
        try:
            lifecycle.transition(self.repo, p, new, identity, base_text=text,
                                 update=fill, extra_files=files, reason=reason)
        except UnsafePath as e:
            # a committed symlink where the output or a tool's file would go: the result is
            # recorded without them, and says why
            lifecycle.transition(self.repo, p, S.FAILED, identity, base_text=text,
                                 update=fill, reason=f"{e}; the run's output and files were "
                                 "not written")
            return
        if new == S.SUCCEEDED and p.decision.get("rule") == "human":
            self._suggest(p)

    def result_parts(self, run: Run, p: Proposal, host: dict[str, Any] | None):
        """What a finished run's commit holds: (new status, the execution block's filler,
        files, its audit line, the note)."""
        from .. import tools

        result = run.result
        out_path = f"logs/runs/{p.id}.txt"
        line = (json.dumps(tools.tool_use_line(p, result), sort_keys=True) + "\n").encode()
        files: dict[str, bytes | None] = {**result.files, out_path: result.output}
        cancelled = result.limit_hit == "cancelled"
        new = S.INTERRUPTED if cancelled else (S.SUCCEEDED if result.status == "succeeded"
                                               else S.FAILED)

        def fill(q: Proposal) -> None:
            q.execution = {**q.execution, "ended_at": result.ended_at,
                           "exit_code": result.exit_code, "limit_hit": result.limit_hit,
                           "isolation": result.isolation, "resources": result.resources,
                           "output": out_path, "files": sorted(result.files),
                           "lane": run.lane}
            q.execution.setdefault("started_at", run.started_at)  # claimed in a batch
            if host is not None:  # an exclusive run: was the host as quiet as it claims?
                q.execution.update(exclusive=True, host_load=host)

        reason = result.error or ("stopped by the emergency stop" if cancelled else "")
        return new, fill, files, line, reason

    def _suggest(self, p: Proposal) -> None:
        from .. import suggest
        try:
            suggest.maybe_offer(self.repo, self.state.config, self.sr.index, p.type, p.tool,
                                in_force=self.state.rules.files.get("state/agent.yaml"))
        except JanusError as e:  # an offer is a courtesy: it never holds up a result
            log.warning("could not offer a policy change for %s: %s", p.tool, e)

    def interrupt(self, pid: str, reason: str) -> None:
        current = self.store.head(pid)
        if current is None or current[0].status != S.RUNNING:
            return
        with self.state.writes:
            lifecycle.transition(self.repo, current[0], S.INTERRUPTED,
                                 self.state.config.identity, base_text=current[1],
                                 reason=reason)
        crashpoint("after-interrupt")


