"""How the daemon runs approved proposals: the escapement lets one start, its tool runs in a
worker thread, and the daemon's own thread commits the result.

Crash safety: `running` is committed before the tool starts, and a proposal found `running`
at start-up is moved to `interrupted`, never re-run silently.  The result, its output, its
audit line and every file the tool changed are one commit, so `git revert` of that commit
undoes all of it.  An approval is used by the run: it never counts again.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Callable

from .. import lifecycle
from ..controls import Escapement, Governor
from ..errors import Conflict, JanusError
from ..gitrepo import UnsafePath, crashpoint, stallpoint
from ..policy import decide
from ..proposal import Proposal, Status, utcnow
from ..state import StateRepo
from .branches import ApprovalBranches
from .state import DaemonState, Run, Ticket

log = logging.getLogger("janus_git.daemon")
S = Status


class Executor:
    def __init__(self, sr: StateRepo, state: DaemonState, branches: ApprovalBranches,
                 escapement: Escapement, governor: Governor, context: Callable[[], object],
                 on_start: Callable[[str, int], None] | None = None) -> None:
        self.sr = sr
        self.repo = sr.repo
        self.store = sr.store
        self.state = state
        self.branches = branches
        self.escapement = escapement
        self.governor = governor
        self.context = context  # the model context tools may use (loaded on first use)
        self.on_start = on_start

    def start_runs(self) -> None:
        state = self.state
        while state.queue and not state.runs and not state.exiting:
            self.governor.update(_cpu_percent(), 1.0 / state.config["controls"]["tick_hz"])
            if self.escapement.wait_time(self.governor.throttle) > 0:
                return
            ticket = state.queue.pop(next(iter(state.queue)))
            try:
                self.start(ticket)
            except Conflict:
                state.queue[ticket.id] = ticket  # a person is editing it: try again later
                raise

    def start(self, ticket: Ticket) -> None:
        from .. import tools

        state = self.state
        current = self.store.head(ticket.id)
        if current is None:
            return
        p, text = current
        if p.status != S.APPROVED:
            return
        if ticket.decision.get("rule", "").startswith("auto:") and not decide(
                p, state.config).auto:
            # the policy is asked again at start: an "auto" decision forged into a commit, or
            # one the current agent.yaml no longer allows, runs nothing
            with state.writes:
                lifecycle.transition(self.repo, p, S.PROPOSED, state.config.identity,
                                     base_text=text, reason="the policy no longer allows this "
                                     "to run by itself; it needs a person's approval")
            state.seen_manual.discard(p.id)
            return
        if p.recompute_digest() != ticket.decision["digest"]:
            with state.writes:
                lifecycle.transition(self.repo, p, S.PROPOSED, state.config.identity,
                                     base_text=text, reason="changed after approval: the "
                                     "approved digest no longer matches; approve it again")
            return
        started = utcnow()
        crashpoint("before-running-commit")

        def mark(q: Proposal) -> None:
            q.decision = ticket.decision
            q.execution = {"started_at": started, **state.claim}
            q.approvals = []  # used: an approval counts once, for this run

        with state.writes:
            lifecycle.transition(self.repo, p, S.RUNNING, state.config.identity,
                                 base_text=text, update=mark)
        crashpoint("after-running-commit")
        self.escapement.take()
        run = Run(p.id, thread=None)  # type: ignore[arg-type]

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
        state.activity = f"running {p.id} ({p.tool})"
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
        for item in list(state.results):
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

    def join(self) -> None:
        """Wait for every running tool to end (the first SIGTERM lets the step in hand
        finish)."""
        for run in list(self.state.runs.values()):
            run.thread.join()

    def _commit_result(self, run: Run, p: Proposal) -> None:
        from .. import tools

        identity = self.state.config.identity
        text = self.repo.read_blob("HEAD", p.path)
        if p.status != S.RUNNING:
            log.warning("%s is %s, not running; result dropped", p.id, p.status.value)
            return
        result = run.result
        if isinstance(result, Exception):
            p.execution.update(ended_at=utcnow(), error=f"tool crashed: {result}")
            lifecycle.transition(self.repo, p, S.FAILED, identity, base_text=text,
                                 reason=f"the tool crashed: {result}")
            return
        out_path = f"logs/runs/{p.id}.txt"
        line = json.dumps(tools.tool_use_line(p, result), sort_keys=True) + "\n"
        audit = (self.repo.read_blob("HEAD", "logs/tool_use.jsonl") or b"") + line.encode()
        files: dict[str, bytes | None] = {**result.files, out_path: result.output,
                                          "logs/tool_use.jsonl": audit}
        cancelled = result.limit_hit == "cancelled"
        new = S.INTERRUPTED if cancelled else (S.SUCCEEDED if result.status == "succeeded"
                                               else S.FAILED)

        def fill(q: Proposal) -> None:
            q.execution = {**q.execution, "ended_at": result.ended_at,
                           "exit_code": result.exit_code, "limit_hit": result.limit_hit,
                           "isolation": result.isolation, "resources": result.resources,
                           "output": out_path, "files": sorted(result.files)}

        reason = result.error or ("stopped by the emergency stop" if cancelled else "")
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


def _cpu_percent() -> float:
    import psutil
    return psutil.cpu_percent(interval=None)
