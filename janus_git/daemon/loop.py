"""The daemon's loop: it builds its parts, hands each what it uses, and steps them in order.

Each step: commit finished runs' results (executor), read what people committed since the
cursor (reader, judging approvals through the judge, answering through corrections), honour
the emergency stop, start approved work (executor), decide new proposals (decider), and let
the thinker think.  `work(burst=True)` steps until idle and returns, as rq's worker does; the
live daemon steps until SIGTERM, woken early by a watchdog on the refs and by finished runs.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..controls import Controls
from ..errors import Conflict, JanusError
from ..notify import Notifier
from ..proposal import Status, utcnow
from ..runlock import DaemonLock
from ..staterepo import StateRepo
from ..trust import Trust
from .branches import ApprovalBranches
from .chores import CommitGraph, DailySummary
from .coordinator import for_config
from .corrections import Corrections
from .decider import Decider
from .emergency import EmergencyStop, StopWatch
from .executor import Executor
from .judge import ApprovalJudge
from .reader import CommitReader
from .state import CursorFile, DaemonState
from .thinker import ModelSlot, Thinker

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0  # how often refs are read with no watchdog event
S = Status


class Daemon:
    def __init__(self, root: str | Path, *, once: bool = False, think: bool = True,
                 on_start: Callable[[str, int], None] | None = None,
                 instance: str | None = None, listen: str | None = None) -> None:
        self.sr = StateRepo(root)
        self.repo = self.sr.repo
        self.root = self.sr.root
        self.once = once
        self.lock = DaemonLock(self.root)  # one daemon per repository
        self.cursor_file = CursorFile(self.lock.dir)
        cursor = self.cursor_file.load()
        head = self.repo.head()
        if head is None:
            raise JanusError(f"{self.root} has no commits; create it with `janus-git init`")
        if cursor and not self.repo.is_ancestor(cursor, head):
            log.warning("history was rewritten under the daemon; re-reading from HEAD")
            cursor = None
        # the rules in force come from history (trust.py), never from the working tree: as
        # they stood where reading starts; the catch-up judges every commit since
        trust = Trust(self.repo)
        trust.load(cursor or head)
        self.state = state = DaemonState(trust, cursor=cursor)
        # the escapements, PI governor and relief valve (controls.py), shared by the decider
        # and the executor
        self.controls = Controls(state.config["controls"])
        self.notifier = Notifier(self.root, lambda: state.config["notifications"])
        # alone, or one of several on a shared remote (`remote:` in the rules in force)
        self.coordinator = coordinator = for_config(self.sr, state, self.notifier, instance,
                                                    listen)
        self.instance = coordinator.instance
        self.model = model = ModelSlot(self.root, state)
        self.branches = ApprovalBranches(self.repo, state)
        self.corrections = Corrections(self.sr, state, self.notifier)
        self.judge = ApprovalJudge(self.sr, state, self.corrections, self.notifier)
        self.reader = CommitReader(self.sr, state, self.cursor_file, self.judge, self.corrections)
        self.decider = Decider(self.sr, state, self.branches, self.controls, self.notifier,
                               one_commit_per_pass=coordinator.one_commit_per_pass)
        self.thinker = Thinker(self.repo, state, model, enabled=think, once=once,
                               notifier=self.notifier)
        self.executor = Executor(self.sr, state, self.branches, self.controls, coordinator,
                                 model.get, on_start, thinking=self.thinker.alive)
        self.stop = EmergencyStop(self.sr, state, self.notifier)
        self.stop_watch = StopWatch(self.root, state)
        self.summary = DailySummary(self.sr, state, self.notifier)
        self.graph = CommitGraph(self.root)
        self.started = utcnow()
        self.fatal = False
        self.term_count = 0
        self.watching = False  # a watchdog observer marks the refs dirty
        self.dirty = True
        self._opened = False
        self._polled = 0.0
        self._decided_for: str | None = None
        self._last_status: dict[str, Any] | None = None
        self._status_due = 0.0

    # -- life ----------------------------------------------------------------------------
    def run(self) -> int:
        """`janus-git daemon`: live, or once (`--once`: until idle)."""
        return self.work(burst=self.once)

    def work(self, burst: bool = False) -> int:
        """Start up, then step until SIGTERM or, with BURST, until idle (nothing queued,
        running or waiting to be committed, HEAD read; a thinking cycle only once).  Returns
        the exit code.  A burst leaves no thread behind but the sandbox's own."""
        state = self.state
        self.thinker.once = self.thinker.once or burst
        saved = self._install_signals()
        observer = None
        try:
            self.open()
            if not burst:
                observer = self._watch()
                self.stop_watch.start()
            while not state.exiting:
                head = self.repo.fast_head() if burst else None  # (no ref read per tick)
                self.step()
                if burst and self.idle():
                    break
                if burst and self.repo.fast_head() != head:
                    continue  # the step committed (or someone did): read it at once
                state.wake.wait(self._next_timeout())
                state.wake.clear()
            self.shut_down()
            return 1 if self.fatal else 0
        finally:
            if observer is not None:
                observer.stop()
            self.stop_watch.close()
            self.close()
            self._restore_signals(saved)

    def open(self) -> None:
        """Take the repository (one daemon each) and start up; `step` does it when needed."""
        if self._opened:
            return
        self.lock.acquire()
        self._opened = True
        try:
            self.notifier.start()
            self.repo.transitions.connect(self.notifier.on_transition)
            self.coordinator.open()  # (a shared remote's news first: start-up reads it)
            self._start_up()
        except BaseException:
            self.close()
            raise

    def shut_down(self) -> None:
        """The end of a clean exit: runs finish and their results are committed."""
        self.executor.join()
        self.graph.join(60)
        for _ in range(20):  # on a remote, a refused push is fetched and tried again
            try:
                self.executor.finish()
                break
            except Conflict as e:
                log.info("on the way out: %s", e)
                self.coordinator.resync()
        self.cursor_file.save(self.state.cursor)

    def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        self.coordinator.close()
        self.repo.transitions.disconnect(self.notifier.on_transition)
        self.notifier.close()
        self.state.activity = "exited"
        self._write_status(force=True)
        self.model.close()  # the model's child process ends with the daemon
        self.lock.release()
        self.repo.close()

    def __enter__(self) -> "Daemon":
        self.open()
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        try:
            if exc_type is None:
                self.shut_down()
        finally:
            self.close()

    def request_stop(self) -> None:
        """Finish the step in hand, then exit (the first SIGTERM)."""
        self.state.exiting = True
        self.state.wake.set()

    def idle(self) -> bool:
        return (self.executor.idle() and self.repo.fast_head() == self.state.cursor
                and not self.thinker.alive())

    # -- signals and the watcher ---------------------------------------------------------
    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        handlers = {signal.SIGTERM: self._on_term, signal.SIGINT: self._on_term,
                    signal.SIGUSR1: self._nudged}  # `janus-git stop` nudges us
        return {sig: signal.signal(sig, fn) for sig, fn in handlers.items()}

    @staticmethod
    def _restore_signals(saved: dict[int, Any]) -> None:
        for sig, fn in saved.items():
            signal.signal(sig, fn)

    def _nudged(self, *_: Any) -> None:
        self.dirty = True
        self.coordinator.poke()  # `janus-git poke`: a shared remote is fetched now
        self.state.wake.set()

    def _on_term(self, *_: Any) -> None:
        self.term_count += 1
        if self.term_count >= 2:
            log.warning("second signal: aborting the running tools")
            for run in self.state.runs.values():
                run.cancel.set()
        else:
            log.info("signal: finishing the current step, then exiting (again to abort)")
        self.request_stop()

    def _watch(self):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        daemon = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):  # a commit is a `moved` onto .git/refs/heads/...
                if event.event_type in ("opened", "closed_no_write"):
                    return
                path = f"{event.src_path} {getattr(event, 'dest_path', '')}"
                if "refs" in path or "HEAD" in path or "packed-refs" in path:
                    daemon.dirty = True
                    daemon.state.wake.set()
                    daemon.state.refs_moved.set()

        observer = Observer()
        observer.schedule(Handler(), str(self.repo.git_dir / "refs" / "heads"), recursive=True)
        observer.schedule(Handler(), str(self.repo.git_dir), recursive=False)
        observer.daemon = True
        observer.start()
        self.watching = True
        return observer

    def _next_timeout(self) -> float:
        tick = 1.0 / float(self.state.config["controls"]["tick_hz"])
        return self.executor.next_start_in(tick)

    def _harden(self) -> None:
        """The settings that keep a pusher from changing what git shows (gitrepo/refs.py),
        on a repository made before them too; replacements found are deleted, and said."""
        for change in self.repo.harden():
            log.info("hardened the repository: %s", change)
        dropped = self.repo.drop_replace_refs()
        if dropped:
            listed = ", ".join(sorted(dropped))
            log.warning("deleted %s: replacements change nothing janus-git reads", listed)
            self.notifier.post("janus-git: replacement refs deleted",
                               f"{listed} would have changed what git shows of history; "
                               "janus-git never honours them, and has deleted them. Find out "
                               "who pushed them: the repository refuses such pushes now "
                               "(transfer.hideRefs).", kind="alert")

    def _start_up(self) -> None:
        from .. import sandbox
        s = self.state
        sandbox.prepare()  # the first run starts warm too (made in the background)
        for path in self.repo.recover_intents():
            log.warning("put %s back to HEAD: a janus-git process died before committing it",
                        path)
        self._harden()
        head = self.repo.head()
        self._check_agent_key()
        self.branches.load()
        self.reader.catch_up(head)
        self.corrections.refusals(live=False)  # HEAD must show the rules in force
        s.stopped = s.rules.stopped
        for row in self.sr.index.query(status=[S.RUNNING.value]):
            current = self.sr.store.head(row["id"])
            if current is None or not self.coordinator.owns(current[0]):
                continue  # another daemon's claim: its lease says when it is orphaned
            self.executor.interrupt(row["id"], "the daemon stopped while this ran; it is not "
                                    "re-run by itself: set status to approved and commit to "
                                    "run it again")
        for row in self.sr.index.query(status=[S.APPROVED.value]):
            self.judge.requeue(row["id"])
        s.activity = "idle"
        log.info("daemon started on %s at %s (%s mode%s)", self.root, (head or "")[:10],
                 s.config.mode, ", STOPPED" if s.stopped else "")

    def _check_agent_key(self) -> None:
        """The agent signs its commits; say so plainly when its key is not one the rules in
        force list (its commits would then be read as a stranger's after a restart).  Made
        before the daemon's first commit: its repository looks the key up when it first
        signs."""
        from ..agentkey import ensure_key, signers_line
        s = self.state
        key = ensure_key()
        identity = s.config.identity
        line = signers_line(identity.email, key).split()
        if " ".join(line[2:4]) not in s.rules.signers().decode(errors="replace"):
            s.last_error = (f"the agent's key {key}.pub is not listed under {identity.email} "
                            f"in {s.config['allowed_signers']}; an approver should add this "
                            "line: " + " ".join(line))
            log.warning("%s", s.last_error)

    # -- one step ------------------------------------------------------------------------
    def step(self) -> None:
        """One pass: results, people's commits, the stop, runs, decisions, thinking."""
        self.open()
        try:
            self._step()
        except Conflict as e:
            log.info("waiting: %s", e)
        except JanusError as e:
            self.state.last_error = str(e)
            log.error("%s", e)
        self._write_status()

    def _step(self) -> None:
        s = self.state
        if not self.repo.git_dir.is_dir():
            s.exiting, self.fatal = True, True
            raise JanusError(f"{self.root} is no longer a git repository; stopping")
        if self.coordinator.sync():  # others' work first: the reader below judges it
            self.dirty = True
        self.executor.collect()
        now = time.monotonic()
        if (self.dirty or not self.watching or now - self._polled > POLL_SECONDS or s.runs
                or s.exiting):
            # events only say "look now"; the poll is the safety net for a missed one
            self.dirty = False
            self._polled = now
            head = self.repo.fast_head()
        else:
            head = s.cursor
        if head is not None and head != s.cursor:
            s.trust.prefetch(head)  # its signature is checked while the log is read
            with s.writes:
                self.reader.catch_up(head)
        was_stopped = s.stopped
        s.stopped = s.rules.stopped
        if s.stopped:
            self.stop.enforce()
            return
        if was_stopped:
            self.stop.resume()
            self._decided_for = None  # everything is decided again
        if s.exiting:
            return
        self.executor.start_runs()  # approved work first: it is what a person is waiting for
        if not self.coordinator.leads():
            return  # deciding, thinking and the chores are the leader's (daemon/remote/)
        for pid, why in self.coordinator.orphans():
            self.executor.interrupt(pid, why)
        self.summary.maybe()
        self.graph.maybe_write(self.reader.commits_read)
        if head != self._decided_for:
            self.decider.decide_new()
            self._decided_for = head
            self.executor.start_runs()
        if self.decider.due():  # the relief valve closed: deferred auto work is decided again
            self.decider.decide_new()
            self.executor.start_runs()
        if not self.executor.holds_thinking():  # an exclusive run waits or runs alone
            self.thinker.maybe_think()

    def _write_status(self, force: bool = False) -> None:
        """Written when something changed (or every 30 s as a heartbeat), not every tick."""
        s = self.state
        status = {"pid": os.getpid(), "started_at": self.started, "activity": s.activity,
                  "head": s.cursor, "stopped": s.stopped, "queued": sorted(s.queue),
                  "running_ids": sorted(s.runs), "mode": s.config.mode,
                  "last_error": s.last_error, "instance": self.instance}
        # figures that move every tick (a backoff's countdown, a lease's age) are written
        # with the rest but make no write by themselves
        thinking = self.thinker.report()
        remote = self.coordinator.status()
        status["volatile_key"] = {
            "thinking": {k: thinking[k] for k in ("last", "failures")},
            "remote": remote and {"leader": remote["leader"], "lag": remote["lag_commits"],
                                  "last_fetch": remote["last_fetch"],
                                  "alive": [n for n, v in remote["leases"].items()
                                            if v["alive"]]}}
        self.controls.ticks.tick()
        controls = {**self.executor.status(), "deferred": len(self.decider.deferred)}
        # measured figures change every second: alone they make no write, but are fresh
        # within 2 s while work is queued or running (30 s when idle)
        status["controls_key"] = {"valve": controls["valve"]["state"], **{
            k: controls[k] for k in ("slots", "exclusive", "deferred")}}
        now = time.monotonic()
        if not force and status == self._last_status and now < self._status_due:
            return
        self._last_status = status
        self._status_due = now + (2.0 if s.runs or s.queue else 30.0)
        status = {k: v for k, v in status.items() if not k.endswith("_key")}
        self.lock.write_status({**status, "thinking": thinking, "remote": remote,
                                "controls": controls, "updated_at": utcnow()})


def run_daemon(root: str | Path, *, once: bool = False, think: bool = True,
               instance: str | None = None, listen: str | None = None) -> int:
    return Daemon(root, once=once, think=think, instance=instance, listen=listen).run()
