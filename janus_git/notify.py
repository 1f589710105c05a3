"""apprise delivery: alerts and the daily summary reach people through notifications.urls.

Messages go through an outbox under .git/janus/outbox/ (one JSON file each), so an alert
survives a crash and a receiver that is down gets it later.  Delivery runs off the daemon's
reactor thread: a slow webhook never delays an approval.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from .proposal import Proposal, Status, new_id
from .util import atomic_write, utcnow

log = logging.getLogger("janus_git.notify")
MAX_ATTEMPTS = 20
S = Status


def send(urls: list[str], title: str, body: str) -> tuple[int, int]:
    """Deliver to each URL with a fresh apprise instance (its mail plugin otherwise waits
    5.5 s between sends on one instance); returns (delivered, total).  apprise never raises:
    its result is truthy only on success."""
    import apprise

    ok = 0
    for url in urls:
        ap = apprise.Apprise()
        if not ap.add(url):
            log.error("notification URL not understood by apprise: %s", _redact(url))
            continue
        if ap.notify(title=title, body=body):
            ok += 1
    return ok, len(urls)


def _redact(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://…{rest[-12:]}" if rest else url


class Outbox:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / ".git" / "janus" / "outbox"
        self.dir.mkdir(parents=True, exist_ok=True)

    def put(self, title: str, body: str, kind: str) -> Path:
        msg = {"title": title, "body": body, "kind": kind, "created_at": utcnow(),
               "attempts": 0, "next_try": 0.0}
        path = self.dir / f"{new_id()}.json"
        atomic_write(path, json.dumps(msg).encode())
        return path

    def pending(self) -> list[Path]:
        return sorted(self.dir.glob("*.json"))

    def flush(self, urls: list[str]) -> int:
        """Try every due message; returns how many were delivered everywhere."""
        done = 0
        for path in self.pending():
            try:
                msg = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                path.unlink(missing_ok=True)
                continue
            if msg["next_try"] > time.time():
                continue
            ok, total = send(urls, msg["title"], msg["body"])
            if ok == total:
                path.unlink(missing_ok=True)
                done += 1
                continue
            msg["attempts"] += 1
            if msg["attempts"] >= MAX_ATTEMPTS:
                log.error("giving up on notification %r after %d attempts", msg["title"],
                          msg["attempts"])
                path.rename(path.with_suffix(".failed"))
                continue
            msg["next_try"] = time.time() + min(600, 2 ** msg["attempts"])
            path.write_text(json.dumps(msg))
        return done


def alert_for(p: Proposal, old: Status | None, new: Status) -> tuple[str, str] | None:
    """The alert a transition deserves, or None (most transitions are routine)."""
    where = f"{p.id} ({p.tool}: {p.type}, mission {p.mission})"
    if new == S.FAILED:
        return f"janus-git: run failed: {p.id}", f"{where} failed. {p.note}".strip()
    if new == S.INTERRUPTED:
        return f"janus-git: run interrupted: {p.id}", f"{where} was interrupted. {p.note}"
    if new == S.PROPOSED and old == S.APPROVED:
        return f"janus-git: approval not accepted: {p.id}", f"{where}: {p.note}"
    if new == S.REVERTED:
        return f"janus-git: result reverted: {p.id}", f"{where}: {p.note}"
    if new == S.SUSPENDED:
        return f"janus-git: suspended by the emergency stop: {p.id}", where
    return None


def needs_human(p: Proposal, rule: str) -> tuple[str, str]:
    return (f"janus-git: approval needed: {p.id}",
            f"{p.id} wants {p.tool} {json.dumps(p.args)[:300]} for mission {p.mission} "
            f"({rule}). Rationale: {p.rationale[:500]}\n"
            f"Approve: set status: approved in {p.path} and commit, merge the branch "
            f"janus/proposal/{p.id} with a merge commit, or `janus-git approve {p.id}`.")


class Notifier:
    """The daemon's side: alerts go to the outbox, a thread delivers them."""

    def __init__(self, root: Path, urls: list[str]) -> None:
        self.outbox = Outbox(root)
        self.urls = urls
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="notify", daemon=True)

    def start(self) -> "Notifier":
        if self.urls:
            self.thread.start()
        return self

    def post(self, title: str, body: str, kind: str = "alert") -> None:
        if not self.urls:
            return
        self.outbox.put(title, body, kind)
        self.wake.set()

    def on_transition(self, p: Proposal, old: Status | None, new: Status, _sha: str) -> None:
        alert = alert_for(p, old, new)
        if alert:
            self.post(*alert)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.outbox.flush(self.urls)
            except Exception:  # delivery must never take the daemon down
                log.exception("notification delivery failed")
            self.wake.wait(5.0)
            self.wake.clear()
        try:  # one last try on the way out (`daemon --once` posts and exits at once)
            self.outbox.flush(self.urls)
        except Exception:
            log.exception("notification delivery failed")

    def close(self, timeout: float = 5.0) -> None:
        self.stop.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout)


def send_test(sr: Any) -> tuple[int, int]:
    urls = sr.config["notifications"]["urls"]
    return send(urls, "janus-git: test",
                f"Test notification from the state repository {sr.root}.")
