"""The thinking cycle in its own thread: the planner files proposals for the active mission,
then hygiene deduplicates, archives or rejects what it left.  The model's minutes are spent
outside the write lock; it is held only to commit.

The model runs in its own process (modelproc.py): a crash, a hang past its deadline or running
out of memory there fails the cycle, not the daemon.  A failed cycle is recorded
(`state.last_error`, the log), alerts once per run of failures, and backs the next try off
exponentially; a good cycle resets that.  A cycle with nothing the planner may propose is
skipped and says why."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import JanusError
from ..gitrepo import GitRepo
from ..proposal import CLEARED
from .state import DaemonState

log = logging.getLogger(__name__)
BACKOFF_CAP = 3600.0  # seconds: a broken model is tried at least once an hour
PREFIX = "thinking cycle"  # what the thinker's own entries in state.last_error start with


class ModelSlot:
    """One model per daemon, in its own process, started on first use; the thinker and the
    tools share it.  A change to the model settings in force starts a new one."""

    def __init__(self, root: Path, state: DaemonState) -> None:
        self.root = root
        self.state = state
        self._context: Any = None
        self._settings: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def get(self):
        settings = dict(self.state.config["model"])
        with self._lock:
            old = None
            if self._context is None or settings != self._settings:
                from ..backend import ModelContext
                old = self._context
                self._context = ModelContext(self.state.config, self.root, isolated=True)
                self._settings = settings
            context = self._context
        if old is not None:
            old.close()
        return context

    def close(self) -> None:
        with self._lock:
            context, self._context = self._context, None
        if context is not None:
            context.close()


class Health:
    """The run of failed cycles: how many, whether it was alerted, when to try again."""

    def __init__(self) -> None:
        self.failures = 0
        self.alerted = False
        self.not_before = 0.0  # monotonic time before which no cycle starts
        self.last = ""         # "ok", "skipped: ...", "failed: ..."

    def backoff(self, interval: float, cap: float) -> float:
        return min(max(cap, interval), interval * 2 ** self.failures)


class Thinker:
    def __init__(self, repo: GitRepo, state: DaemonState, model: ModelSlot, *,
                 enabled: bool, once: bool, notifier: Any = None,
                 backoff_cap: float = BACKOFF_CAP) -> None:
        self.repo = repo  # the daemon's: its commits go through the same publisher
        self.root = repo.root
        self.state = state
        self.model = model
        self.enabled = enabled
        self.once = once  # think once, at the first step (`daemon --once`, burst mode)
        self.notifier = notifier  # notify.Notifier: one alert per run of failed cycles
        self.backoff_cap = backoff_cap
        self.health = Health()
        self.last = 0.0
        self.thread: threading.Thread | None = None
        self._skip_said = ""

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def report(self) -> dict[str, Any]:
        """For the daemon's status: the last cycle's outcome and the backoff in force."""
        h = self.health
        wait = max(0.0, h.not_before - time.monotonic())
        return {"last": h.last, "failures": h.failures, "retry_in_s": round(wait, 1)}

    def maybe_think(self) -> None:
        if not self.enabled or self.alive():
            return
        interval = float(self.state.config["controls"]["mission_poll_interval"])
        now = time.monotonic()
        if self.last and (self.once or now - self.last < interval or now < self.health.not_before):
            return
        self.last = now
        self.thread = threading.Thread(target=self._think, name="think", daemon=True)
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _think(self) -> None:
        try:
            skipped = self._cycle(self.repo)
        except JanusError as e:  # modelproc.ModelFailed among them: the child is gone, we live
            self._failed(str(e))
        except Exception as e:
            log.exception("thinking cycle crashed")
            self._failed(f"{type(e).__name__}: {e}")
        else:
            self._succeeded(skipped)
        self.state.wake.set()

    def _cycle(self, repo: GitRepo) -> str:
        """One cycle; returns why it was skipped ("" when the planner ran)."""
        from .. import hygiene, planner
        state = self.state
        skipped = ""
        try:
            planner.think(repo, state.config, llm=self.model.get(),
                          commit_lock=state.writes, in_force=state.rules.files)
        except planner.CycleSkipped as e:
            skipped = str(e)
        with state.writes:  # deduplicate / archive / reject what the cycle left
            counts = hygiene.hygiene(repo, state.config)
        if any(counts.get(s.value) for s in CLEARED):
            log.info("hygiene: %s", counts)
        return skipped

    def _succeeded(self, skipped: str) -> None:
        """A cycle that ran, or was skipped on purpose: the run of failures ends."""
        h = self.health
        if h.failures:
            log.info("thinking cycle succeeded after %d failed", h.failures)
        h.failures, h.alerted, h.not_before = 0, False, 0.0
        if skipped:
            if skipped != self._skip_said:  # said once, not every cycle
                log.warning("%s", skipped)
            h.last = f"skipped: {skipped}"
        else:
            h.last = "ok"
            if self.state.last_error.startswith(PREFIX):
                self.state.last_error = ""  # ours, and no longer true
        self._skip_said = skipped
        if skipped:
            self.state.last_error = skipped

    def _failed(self, why: str) -> None:
        h = self.health
        h.failures += 1
        interval = float(self.state.config["controls"]["mission_poll_interval"])
        wait = h.backoff(interval, self.backoff_cap)
        h.not_before = time.monotonic() + wait
        h.last = f"failed: {why}"
        message = (f"{PREFIX} failed ({h.failures} in a row; the next in {wait:.1f} s): {why}")
        self.state.last_error = message
        log.error("%s", message)
        if not h.alerted and self.notifier is not None:
            h.alerted = True  # once per run of failures; a good cycle re-arms it
            self.notifier.post("janus-git: the thinking cycle failed", message +
                               "\nThe daemon keeps serving approvals; it tries again with a "
                               "growing pause and alerts again only after a good cycle.",
                               kind="alert")
