"""The daemon's housekeeping between decisions: the daily summary, and a commit-graph that
keeps per-file `git log` fast.  Neither is on anyone's clock."""
from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

from .. import summary
from ..gitrepo import GitRepo
from ..notify import Notifier
from ..proposal import Status
from ..state import StateRepo
from .state import DaemonState

GRAPH_EVERY = 200  # new commits between commit-graph writes


class DailySummary:
    def __init__(self, sr: StateRepo, state: DaemonState, notifier: Notifier) -> None:
        self.sr = sr
        self.state = state
        self.notifier = notifier
        self.checked = 0.0

    def maybe(self) -> None:
        """Once a day, after `daily_summary_at`: commit the summary and send it."""
        now = time.monotonic()
        if now - self.checked < 60:
            return
        self.checked = now
        config = self.state.config
        at = config["notifications"]["daily_summary_at"]
        if time.strftime("%H:%M") < at:
            return
        day = dt.datetime.now(dt.timezone.utc).date()
        repo = self.sr.repo
        if repo.read_blob("HEAD", summary.summary_path(day)) is not None:
            return
        pending = len(self.sr.index.query(status=[Status.PROPOSED.value]))
        data = summary.build(repo, day, pending)
        with self.state.writes:
            summary.commit_summary(repo, config.identity, data)
        self.notifier.post(f"janus-git daily summary {day}", summary.render(data), "summary")


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
