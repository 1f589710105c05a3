"""The daemon: watch the state repository, turn commits into decisions and runs.

It reconciles from git state, never from events alone: a watchdog event only wakes the loop
early, and each step reads what changed on the first-parent line since the last commit it saw
(the cursor, kept under .git/janus/).  On start it re-reads every approved and running proposal,
so a missed event, a crash or a restart loses nothing.

Crash safety: `running` is committed before a tool starts; a proposal found `running` at start
is moved to `interrupted` and never re-run silently.  A run's result, its output, its audit line
and every file it changed are one commit, so `git revert` of that commit undoes all of it.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from . import lifecycle, summary
from .approvals import APPROVAL_BRANCH_PREFIX
from .config import Config
from .controls import Escapement, Governor, ReliefValve
from .decider import Decider
from .emergency import EmergencyStop
from .errors import Conflict, JanusError
from .gitrepo import GitRepo
from .notify import Notifier
from .proposal import Proposal, Status, utcnow
from .reader import CommitReader, Ticket
from .runlock import DaemonLock
from .runner import Run, Runner
from .state import STOP_PATH, StateRepo
from .trust import Trust

log = logging.getLogger("janus_git.daemon")
POLL_SECONDS = 1.0  # how often refs are read with no watchdog event
GRAPH_EVERY = 200  # new commits between commit-graph writes
S = Status


class Daemon(CommitReader, Decider, Runner, EmergencyStop):
    def __init__(self, root: str | Path, *, once: bool = False, think: bool = True,
                 on_start: Callable[[str, int], None] | None = None) -> None:
        self.state = StateRepo(root)
        self.repo = self.state.repo
        self.root = self.state.root
        self.once = once
        self.think_enabled = think
        self.on_start_hook = on_start
        self.lock = DaemonLock(self.root)
        self.cursor: str | None = self._load_cursor()
        head = self.repo.head()
        if head is None:
            raise JanusError(f"{self.root} has no commits; create it with `janus-git init`")
        if self.cursor and not self.repo.is_ancestor(self.cursor, head):
            log.warning("history was rewritten under the daemon; re-reading from HEAD")
            self.cursor = None
        # the rules in force come from history (trust.py), never from the working tree: as
        # they stood where reading starts; the catch-up judges every commit since
        self.trust = Trust(self.repo)
        self.config: Config = self.trust.load(self.cursor or head).config
        self.filed: dict = {}  # proposal id -> Filing (approvals.py), read when first needed
        self.wake = threading.Event()
        self.writes = threading.RLock()
        self.queue: dict[str, Ticket] = {}
        self.runs: dict[str, Run] = {}
        self.branches: set[str] = set()
        self.seen_manual: set[str] = set()
        self.stopped = False
        self.term_count = 0
        self.exit = False
        self.started = utcnow()
        self.activity = "starting"
        self.last_error = ""
        self.last_think = 0.0
        self.thinker: threading.Thread | None = None
        self._pending_results: list[tuple[Run, Proposal]] = []
        self._status_due = 0.0
        c = self.config["controls"]
        self.escapement = Escapement(float(c["max_starts_per_second"]))
        self.governor = Governor(**{"target": c["governor"]["target_cpu_percent"],
                                    "kp": c["governor"]["kp"], "ki": c["governor"]["ki"]})
        self.valve = ReliefValve(c["relief_valve"]["max_pending_auto"])
        self._model_context = None
        self.notifier = Notifier(self.root, self.config["notifications"]["urls"])
        self._summary_checked = 0.0

    # -- life ----------------------------------------------------------------------------
    def run(self) -> int:
        self.lock.acquire()
        observer = None
        try:
            self._install_signals()
            self.notifier.start()
            lifecycle.subscribe(self.notifier.on_transition)
            self._start_up()
            if not self.once:
                observer = self._watch()
                self._stop_watch()
            while not self.exit:
                self.step()
                if self.once and self._idle():
                    break
                self.wake.wait(self._next_timeout())
                self.wake.clear()
            self._shut_down()
            return 1 if self.fatal else 0
        finally:
            lifecycle.unsubscribe(self.notifier.on_transition)
            self.notifier.close()
            if observer is not None:
                observer.stop()
            self.activity = "exited"
            self._write_status(force=True)
            self.lock.release()
            self.repo.close()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGUSR1, self._nudged)  # `janus-git stop` nudges us

    def _nudged(self, *_: Any) -> None:
        self.dirty = True
        self.wake.set()

    def _on_term(self, *_: Any) -> None:
        self.term_count += 1
        self.exit = True
        if self.term_count >= 2:
            log.warning("second signal: aborting the running tools")
            for run in self.runs.values():
                run.cancel.set()
        else:
            log.info("signal: finishing the current step, then exiting (again to abort)")
        self.wake.set()

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
                    daemon.wake.set()

        observer = Observer()
        observer.schedule(Handler(), str(self.repo.git_dir / "refs" / "heads"), recursive=True)
        observer.schedule(Handler(), str(self.repo.git_dir), recursive=False)
        observer.daemon = True
        observer.start()
        return observer

    def _stop_watch(self) -> None:
        """The stop reaches running tools within a second even while the main loop is busy
        (a long catch-up, a slow commit): its own thread reads HEAD and cancels every run."""
        def watch() -> None:
            repo = GitRepo(self.root)
            seen = None
            while not self.exit:
                head = repo.fast_head()
                if head != seen:
                    seen = head
                    stop = repo.read_blob_once(head or "HEAD", STOP_PATH) is not None
                    if stop and self.runs:
                        log.warning("emergency stop committed: cancelling %d run(s)",
                                    len(self.runs))
                        for run in list(self.runs.values()):
                            run.cancel.set()
                        self.wake.set()
                time.sleep(0.1)

        threading.Thread(target=watch, name="stop-watch", daemon=True).start()

    def _idle(self) -> bool:
        return (not self.queue and not self.runs and not self._pending_results
                and self.repo.fast_head() == self.cursor
                and (self.thinker is None or not self.thinker.is_alive()))

    def _next_timeout(self) -> float:
        tick = 1.0 / float(self.config["controls"]["tick_hz"])
        if self.queue and not self.runs and not self.stopped:
            return min(tick, max(0.0, self.escapement.wait_time(self.governor.throttle)))
        return tick

    def _start_up(self) -> None:
        from . import sandbox
        sandbox.prepare()  # the first run starts warm too (made in the background)
        for path in self.repo.recover_intents():
            log.warning("put %s back to HEAD: a janus-git process died before committing it",
                        path)
        head = self.repo.head()
        self._check_agent_key()
        self.branches = set(self.repo.run(
            "for-each-ref", "--format=%(refname:short)", f"refs/heads/{APPROVAL_BRANCH_PREFIX}"
        ).split())
        self._catch_up(head)
        self._answer_refusals(live=False)  # HEAD must show the rules in force
        self.stopped = self.trust.rules.stopped
        for row in self.state.index.query(status=[S.RUNNING.value]):
            self._interrupt(row["id"], "the daemon stopped while this ran; it is not re-run "
                            "by itself: set status to approved and commit to run it again")
        for row in self.state.index.query(status=[S.APPROVED.value]):
            self._requeue_approved(row["id"])
        self.activity = "idle"
        log.info("daemon started on %s at %s (%s mode%s)", self.root, head[:10],
                 self.config.mode, ", STOPPED" if self.stopped else "")

    def _shut_down(self) -> None:
        for run in list(self.runs.values()):
            run.thread.join()
        if self._graph_thread is not None:
            self._graph_thread.join(60)  # git writes it under a lock file: let it finish
        self._collect_results()
        self._save_cursor()

    # -- one step ------------------------------------------------------------------------
    def step(self) -> None:
        try:
            self._step()
        except Conflict as e:
            log.info("waiting: %s", e)
        except JanusError as e:
            self.last_error = str(e)
            log.error("%s", e)
        self._write_status()

    def _step(self) -> None:
        if not self.repo.git_dir.is_dir():
            self.exit, self.fatal = True, True
            raise JanusError(f"{self.root} is no longer a git repository; stopping")
        self._collect_results()
        now = time.monotonic()
        if self.dirty or now - self._polled > POLL_SECONDS or self.runs or self.exit:
            # events only say "look now"; the poll is the safety net for a missed one
            self.dirty = False
            self._polled = now
            head = self.repo.fast_head()
        else:
            head = self.cursor
        if head != self.cursor:
            with self.writes:
                self._catch_up(head)
        was_stopped = self.stopped
        self.stopped = self.trust.rules.stopped
        if self.stopped:
            self._enforce_stop()
            return
        if was_stopped:
            self._resume()
        if self.exit:
            return
        self._start_runs()  # approved work first: it is what a person is waiting for
        self._maybe_summarise()
        self._maybe_write_commit_graph()
        if head != self._decided_for:
            self._decide_new()
            self._decided_for = head
            self._start_runs()
        self._maybe_think()

    _decided_for: str | None = None

    fatal = False
    _polled = 0.0
    dirty = True

    def _check_agent_key(self) -> None:
        """The agent signs its commits; say so plainly when its key is not one the rules in
        force list (its commits would then be read as a stranger's after a restart)."""
        from .agentkey import ensure_key, signers_line
        key = ensure_key()
        self.repo._key = key
        line = signers_line(self.config.identity.email, key).split()
        if " ".join(line[2:4]) not in self.trust.rules.signers().decode(errors="replace"):
            self.last_error = (f"the agent's key {key}.pub is not listed under "
                               f"{self.config.identity.email} in {self.config['allowed_signers']}"
                               "; an approver should add this line: " + " ".join(line))
            log.warning("%s", self.last_error)

    # -- commit-graph --------------------------------------------------------------------
    _unindexed_commits = GRAPH_EVERY  # write one at start
    _graph_thread: threading.Thread | None = None

    def _maybe_write_commit_graph(self) -> None:
        """Keep a commit-graph with changed-path filters: per-file `git log` (show, approval
        look-ups) is 8-20x faster with it.  Incremental (--split), off the reactor thread."""
        if self._unindexed_commits < GRAPH_EVERY or (
                self._graph_thread and self._graph_thread.is_alive()):
            return
        self._unindexed_commits = 0
        root = self.root

        def write() -> None:
            import subprocess
            subprocess.run(["git", "commit-graph", "write", "--reachable", "--changed-paths",
                            "--split"], cwd=root, capture_output=True)

        self._graph_thread = threading.Thread(target=write, name="commit-graph", daemon=True)
        self._graph_thread.start()

    # -- daily summary -------------------------------------------------------------------
    def _maybe_summarise(self) -> None:
        now = time.monotonic()
        if now - self._summary_checked < 60:
            return
        self._summary_checked = now
        at = self.config["notifications"]["daily_summary_at"]
        if time.strftime("%H:%M") < at:
            return
        day = dt.datetime.now(dt.timezone.utc).date()
        if self.repo.read_blob("HEAD", summary.summary_path(day)) is not None:
            return
        pending = len(self.state.index.query(status=[S.PROPOSED.value]))
        data = summary.build(self.repo, day, pending)
        with self.writes:
            summary.commit_summary(self.repo, self.config.identity, data)
        self.notifier.post(f"janus-git daily summary {day}", summary.render(data), "summary")

    # -- thinking ------------------------------------------------------------------------
    def _maybe_think(self) -> None:
        if not self.think_enabled or (self.thinker and self.thinker.is_alive()):
            return
        interval = float(self.config["controls"]["mission_poll_interval"])
        if self.last_think and (self.once or time.monotonic() - self.last_think < interval):
            return
        self.last_think = time.monotonic()
        self.thinker = threading.Thread(target=self._think, name="think", daemon=True)
        self.thinker.start()

    def _context(self):
        """One model per process, loaded on first use (llama_cpp is imported only then)."""
        if self._model_context is None:
            from .llm import ModelContext
            self._model_context = ModelContext(self.config, self.root)
        return self._model_context

    def _think(self) -> None:
        from . import planner
        try:
            # the model's minutes are spent outside the write lock; it is held only to commit
            # its own GitRepo: GitPython's persistent cat-file pipe is not shared across threads
            repo = GitRepo(self.root)
            try:
                planner.think(repo, self.config, llm=self._context(), commit_lock=self.writes)
                from . import hygiene
                with self.writes:  # deduplicate / archive / reject what the cycle left
                    counts = hygiene.hygiene(repo, self.config)
                if any(counts.get(k) for k in ("duplicate", "archived", "rejected")):
                    log.info("hygiene: %s", counts)
            finally:
                repo.close()
        except JanusError as e:
            self.last_error = str(e)
            log.error("thinking cycle: %s", e)
        except Exception:
            log.exception("thinking cycle crashed")
        self.wake.set()

    # -- bookkeeping ---------------------------------------------------------------------
    def _load_cursor(self) -> str | None:
        try:
            return (self.lock.dir / "cursor").read_text().strip() or None
        except FileNotFoundError:
            return None

    def _save_cursor(self) -> None:
        if self.cursor and self.lock.dir.is_dir():
            tmp = self.lock.dir / "cursor.tmp"
            tmp.write_text(self.cursor)
            os.replace(tmp, self.lock.dir / "cursor")

    def _write_status(self, force: bool = False) -> None:
        """Written when something changed (or every 30 s as a heartbeat), not every tick."""
        status = {"pid": os.getpid(), "started_at": self.started, "activity": self.activity,
                  "head": self.cursor, "stopped": self.stopped, "queued": sorted(self.queue),
                  "running_ids": sorted(self.runs), "mode": self.config.mode,
                  "last_error": self.last_error}
        now = time.monotonic()
        if not force and status == self._last_status and now < self._status_due:
            return
        self._last_status = status
        self._status_due = now + 30.0
        self.lock.write_status({**status, "updated_at": utcnow()})

    _last_status: dict[str, Any] | None = None


def run_daemon(root: str | Path, *, once: bool = False, think: bool = True) -> int:
    return Daemon(root, once=once, think=think).run()
