"""The thinking cycle in its own thread: the planner files proposals for the active mission,
then hygiene deduplicates, archives or rejects what it left.  The model's minutes are spent
outside the write lock; it is held only to commit."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from ..errors import JanusError
from ..gitrepo import GitRepo
from ..proposal import CLEARED
from .state import DaemonState

log = logging.getLogger("janus_git.daemon")


class ModelSlot:
    """One model per process, loaded on first use (llama_cpp is imported only then); the
    thinker and the tools share it."""

    def __init__(self, root: Path, state: DaemonState) -> None:
        self.root = root
        self.state = state
        self._context = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._context is None:
                from ..llm import ModelContext
                self._context = ModelContext(self.state.config, self.root)
            return self._context


class Thinker:
    def __init__(self, root: Path, state: DaemonState, model: ModelSlot, *,
                 enabled: bool, once: bool) -> None:
        self.root = root
        self.state = state
        self.model = model
        self.enabled = enabled
        self.once = once  # think once, at the first step (`daemon --once`, burst mode)
        self.last = 0.0
        self.thread: threading.Thread | None = None

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def maybe_think(self) -> None:
        if not self.enabled or self.alive():
            return
        interval = float(self.state.config["controls"]["mission_poll_interval"])
        if self.last and (self.once or time.monotonic() - self.last < interval):
            return
        self.last = time.monotonic()
        self.thread = threading.Thread(target=self._think, name="think", daemon=True)
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _think(self) -> None:
        from .. import planner
        state = self.state
        try:
            # its own GitRepo: GitPython's persistent cat-file pipe is not shared across threads
            repo = GitRepo(self.root)
            try:
                planner.think(repo, state.config, llm=self.model.get(),
                              commit_lock=state.writes, in_force=state.rules.files)
                from .. import hygiene
                with state.writes:  # deduplicate / archive / reject what the cycle left
                    counts = hygiene.hygiene(repo, state.config)
                if any(counts.get(s.value) for s in CLEARED):
                    log.info("hygiene: %s", counts)
            finally:
                repo.close()
        except JanusError as e:
            state.last_error = str(e)
            log.error("thinking cycle: %s", e)
        except Exception:
            log.exception("thinking cycle crashed")
        state.wake.set()
