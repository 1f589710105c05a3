"""The daemon's housekeeping between decisions: the daily summary, reminders of what still
waits for a person, and a commit-graph that keeps per-file `git log` fast.  None of them is
on anyone's clock."""
from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from .. import clock
from ..errors import JanusError
from ..faults import crashpoint
from ..gitrepo import GitRepo
from ..notify import Notifier, settings
from ..proposal import Status
from ..staterepo import StateRepo
from ..summary import figures as summary
from ..summary import report
from ..summary.text import age
from ..util import atomic_write
from .state import DaemonState

log = logging.getLogger(__name__)
GRAPH_EVERY = 200  # new commits between commit-graph writes
CHECK_EVERY = 30.0  # seconds between looks at the clock: a summary is at most this late
HELD = "summary-"


class DailySummary:
    """At `daily_summary_at` (in `notifications.timezone`) the day that ended is summarised,
    committed and sent; days missed while the daemon was down are made at the next look.

    Made once, sent once, across a kill -9: the message waits in the outbox, held, while
    the summary is committed, and is released after; at start a held one is released when
    HEAD has its day's summary (the commit happened) and dropped when not (it is made
    again).  Reminders are looked at on the same beat."""

    def __init__(self, sr: StateRepo, state: DaemonState, notifier: Notifier) -> None:
        self.sr = sr
        self.state = state
        self.notifier = notifier
        self.reminders = Reminders(sr, notifier)
        self.checked: float | None = None
        self.recovered = False

    def maybe(self) -> None:
        now = time.monotonic()
        if self.checked is not None and now - self.checked < CHECK_EVERY:
            return
        self.checked = now
        conf = settings(self.state.config)
        if not self.recovered:
            self._recover()
            self.recovered = True
        try:
            for day in report.due_days(self.sr.repo, conf, clock.now(), self._since()):
                self.make(day, conf)
            self.reminders.maybe(conf)
        except JanusError:
            raise  # the loop's own handling: a Conflict waits, an error is recorded
        except Exception as e:  # a summary must never take the daemon down; retried later
            log.exception("daily summary or reminders failed")
            self.state.last_error = f"daily summary: {e}"

    def make(self, day: dt.date, conf: dict[str, Any]) -> None:
        made = report.make(self.sr, day, conf)
        name = f"{HELD}{day.isoformat()}"
        posted = self.notifier.post_message(made.title, made.message, "summary",
                                            attach=made.png, held=True, name=name)
        with self.state.writes:
            summary.commit_summary(self.sr.repo, self.state.config.identity, made.data,
                                   made.markdown, made.png)
        crashpoint("after-summary-commit")
        if posted:
            self.notifier.outbox.release(name)
            self.notifier.wake.set()
        log.info("daily summary %s committed%s", day, " and sent" if posted else "")

    def _since(self) -> dt.datetime:
        """When this daemon first looked (kept in .git/janus/): a repository with no
        summary yet gets its first for a day that ends after it, never one at start."""
        path = self.sr.repo.git_dir / "janus" / "summaries-since"
        try:
            return clock.parse_time(path.read_text())
        except (OSError, ValueError):
            now = clock.now()
            atomic_write(path, clock.iso(now).encode())
            return now

    def _recover(self) -> None:
        made = report.made_days(self.sr.repo)
        for name in self.notifier.outbox.held():
            if not name.startswith(HELD):
                continue
            try:
                day = dt.date.fromisoformat(name[len(HELD):])
            except ValueError:
                continue
            if day in made:
                self.notifier.outbox.release(name)
            else:
                self.notifier.outbox.drop(name)


class Reminders:
    """A proposal waiting longer than `remind_after` is named again in a "still waiting"
    digest, once per interval.  The rounds sent are kept in .git/janus/reminders.json and
    saved before the post: a kill -9 between them skips a reminder, never repeats one."""

    def __init__(self, sr: StateRepo, notifier: Notifier) -> None:
        self.sr = sr
        self.notifier = notifier
        self.path = sr.repo.git_dir / "janus" / "reminders.json"

    def maybe(self, conf: dict[str, Any]) -> list[str]:
        every = float(conf["remind_after"])
        now = clock.now()
        rows = self.sr.index.query(status=[Status.PROPOSED.value])
        sent = self._load()
        due = []
        for row in rows:
            try:
                waited = (now - clock.parse_time(str(row["created_at"]))).total_seconds()
            except ValueError:
                continue
            rounds = int(waited // every)
            if rounds >= 1 and sent.get(row["id"], 0) < rounds:
                due.append((waited, row))
                sent[row["id"]] = rounds
        waiting = {r["id"] for r in rows}
        kept = {k: v for k, v in sent.items() if k in waiting}
        if kept != self._load():  # an idle daemon writes nothing
            self._save(kept)
        if due:
            due.sort(key=lambda d: (-d[0], d[1]["id"]))
            self.notifier.post(*still_waiting(due, every), kind="reminder")
        return [r["id"] for _, r in due]

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, int]) -> None:
        atomic_write(self.path, json.dumps(data, sort_keys=True).encode())


def still_waiting(due: list[tuple[float, dict[str, Any]]], every: float) -> tuple[str, str]:
    lines = [f"{len(due)} proposal{'s' * (len(due) != 1)} still wait for a person "
             f"(longer than {every / 3600:g} h, oldest first):"]
    for waited, row in due:
        lines.append(f"• {row['id']}: {row.get('tool')} ({row.get('type')}, mission "
                     f"{row.get('mission')}) waiting {age(waited / 3600)}: "
                     f"`janus-git approve {row['id']}` / `janus-git reject {row['id']}`")
    return f"janus-git: {len(due)} still waiting for approval", "\n".join(lines)


class CommitGraph:
    """Keep a commit-graph with changed-path filters: per-file `git log` (show, approval
    look-ups) is 8-20x faster with it.  Incremental (--split), off the reactor thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written_at = -GRAPH_EVERY  # commits read when it was last written: one at start
        self.thread: threading.Thread | None = None

    def maybe_write(self, commits_read: int) -> None:
        if commits_read - self.written_at < GRAPH_EVERY or (
                self.thread and self.thread.is_alive()):
            return
        self.written_at = commits_read
        repo = GitRepo(self.root)  # its own: this runs off the reactor thread
        self.thread = threading.Thread(target=repo.write_commit_graph, name="commit-graph",
                                       daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)  # git writes it under a lock file: let it finish
