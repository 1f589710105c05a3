"""apprise delivery: alerts, approval requests, reminders and the daily summary reach people
through the `notifications` targets of the rules in force.

Posts go to a crash-safe outbox under .git/janus/outbox/ (outbox.py); a thread digests them
(batching.py: a burst of approval requests, or of identical alerts, is one message) and delivers
them, off the daemon's reactor thread: a slow webhook never delays an approval.  The
notifications section is read again at every post and every delivery, so a committed change
(URLs, tags, windows) applies with no restart.

What anyone could push (a proposal's fields, a STOP reason) enters a message through
chattext.inert: it mentions no one and links nowhere.  The composers here quote each such
field that way; post() passes whole titles and bodies through it again for the ones composed
elsewhere (the daemon's stop, refusal and reminder messages), which changes nothing the agent
wrote itself: its fixed text holds no mention or link.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..config import DEFAULTS
from ..proposal import Proposal, Status
from .chattext import inert
from .outbox import Outbox
from .targets import Target, deliver, redact, resolve

log = logging.getLogger(__name__)
S = Status
__all__ = ["Notifier", "Outbox", "alert_for", "needs_human", "send", "send_test", "redact"]


def settings(source: Any) -> dict[str, Any]:
    """The notifications section with its defaults, from a list of URLs (older callers),
    the section itself, or a whole configuration (Config or dict)."""
    if isinstance(source, (list, tuple)):
        source = {"urls": list(source)}
    data = getattr(source, "data", source) or {}
    section = data.get("notifications", data) if isinstance(data, dict) else {}
    return {**DEFAULTS["notifications"], **section}


def send(urls: list[Any], title: str, body: str, kind: str = "test",
         root: Path | None = None, attach: str | None = None) -> tuple[int, int]:
    """Deliver now, with no outbox; returns (delivered, total), an unresolvable entry (an
    unset variable) counting as not delivered."""
    found, problems = resolve(urls, root)
    for line in problems:
        log.error("notification target skipped: %s", line)
    wanted = [t for t in found if t.wants(kind)]
    ok = sum(1 for t in wanted if deliver(t, title, body, kind, attach))
    return ok, len(wanted) + len(problems)


def alert_for(p: Proposal, old: Status | None, new: Status) -> tuple[str, str] | None:
    """The alert a transition deserves, or None (most transitions are routine)."""
    pid, note = inert(p.id), inert(p.note)  # a note quotes what a run or a pusher wrote
    where = f"{pid} ({inert(p.tool)}: {inert(p.type)}, mission {inert(p.mission)})"
    if new == S.FAILED:
        return f"janus-git: run failed: {pid}", f"{where} failed. {note}".strip()
    if new == S.INTERRUPTED:
        return f"janus-git: run interrupted: {pid}", f"{where} was interrupted. {note}"
    if new == S.PROPOSED and old == S.APPROVED:
        return f"janus-git: approval not accepted: {pid}", f"{where}: {note}"
    if new == S.REVERTED:
        return f"janus-git: result reverted: {pid}", f"{where}: {note}"
    if new == S.SUSPENDED:
        return f"janus-git: suspended by the emergency stop: {pid}", where
    return None


def shorten(value: Any, width: int = 120) -> str:
    """VALUE cut to WIDTH and made inert (chattext): for anything a pusher wrote."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return inert(text if len(text) <= width else text[:width - 1] + "…")


def needs_human(p: Proposal, rule: str, risk: str | None = None) -> tuple[str, str]:
    """An approval request: one entry of the approvals digest, with what to run."""
    risk = inert(risk or (p.risk if p.risk != "unknown" else "see the tool registry"))
    pid = inert(p.id)  # (the id pattern allows no mention or link: inert all the same)
    return (f"janus-git: approval needed: {pid}",
            f"• {pid}: {inert(p.tool)} {shorten(p.args)} (risk {risk}, mission "
            f"{inert(p.mission)}; {inert(rule)})\n  why: {shorten(p.rationale, 200)}\n"
            f"  approve: `janus-git approve {pid}` (or set status: approved in {p.path} "
            f"and commit, or merge janus/proposal/{pid})\n"
            f"  reject:  `janus-git reject {pid} --reason ...`")


class Notifier:
    """The daemon's side: posts go to the outbox, a thread digests and delivers them.

    SOURCE is a list of URLs, or a zero-argument callable returning the notifications
    section (or the whole configuration) in force: then a committed change applies to the
    next message."""

    def __init__(self, root: Path, source: list[Any] | Callable[[], Any]) -> None:
        self.root = Path(root)
        self.source = source
        self.outbox = Outbox(root)
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="notify", daemon=True)

    def settings(self) -> dict[str, Any]:
        return settings(self.source() if callable(self.source) else self.source)

    def targets(self) -> list[Target]:
        found, problems = resolve(self.settings()["urls"], self.root)
        for line in problems:
            log.error("notification target skipped: %s", line)
        return found

    def enabled(self) -> bool:
        return bool(self.settings()["urls"])

    def start(self) -> "Notifier":
        # with live settings the thread runs even with no URL yet: one may be committed
        if callable(self.source) or self.enabled():
            self.thread.start()
        return self

    def post(self, title: str, body: str, kind: str = "alert") -> None:
        if not self.enabled():
            return  # nobody to tell: nothing piles up in the outbox
        title, body = inert(title), inert(body)  # see the module's docstring
        if kind == "approval" and not self.outbox.first_time(title):
            return
        self.outbox.add(title, body, kind)
        self.wake.set()

    def post_message(self, title: str, body: str, kind: str, **kw: Any) -> bool:
        """A whole message, past the digests (the daily summary); False with no target."""
        if not self.enabled():
            return False
        self.outbox.put(title, body, kind, **kw)
        self.wake.set()
        return True

    def on_transition(self, p: Proposal, old: Status | None, new: Status, _sha: str) -> None:
        alert = alert_for(p, old, new)
        if alert:
            self.post(*alert)

    def cycle(self, force: bool = False) -> float:
        """Digest what is due, deliver what can go; returns the seconds to wait."""
        upcoming = self.outbox.digest(float(self.settings()["batch_seconds"]), force)
        self.outbox.flush(self.targets)
        return 5.0 if upcoming is None else max(0.05, min(5.0, upcoming - time.time()))

    def _run(self) -> None:
        self.outbox.recover()
        while not self.stop.is_set():
            wait = 5.0
            try:
                wait = self.cycle()
            except Exception:  # delivery must never take the daemon down
                log.exception("notification delivery failed")
            self.wake.wait(wait)
            self.wake.clear()
        try:  # what waits goes on the way out (`daemon --once` posts and exits at once)
            self.cycle(force=True)
        except Exception:
            log.exception("notification delivery failed")

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout)


def send_test(sr: Any) -> tuple[int, int]:
    return send(sr.config["notifications"]["urls"], "janus-git: test",
                f"Test notification from the state repository {sr.root}.", "test", sr.root)
