"""The crash-safe outbox under .git/janus/outbox/: what was posted, and what is to be sent.

Two kinds of file, each written whole (temp file + rename):
- `i-<id>.json`, an item: one post (an alert, an approval request) waiting to be digested;
- `m-<id>.json`, a message: the title, body and attachment to send, the items it was made
  of, and the targets that already have it.
A digest is made by writing its message first and removing its items after; at start the
items a message names are removed again (a kill -9 between the two), so an item is in one
message, never two, and never lost.  A message leaves only once every target has it; each
target is recorded as it succeeds, so a retry does not send twice to the ones that had it.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from ..faults import crashpoint
from ..proposal import new_id
from ..util import atomic_write, utcnow
from . import batching
from .targets import Target, deliver, resolve

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 20
ANNOUNCED = 5000  # approval requests remembered as sent


class Outbox:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / ".git" / "janus" / "outbox"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.last_sent: dict[str, float] = {}  # group -> when its last message was made

    # -- items ---------------------------------------------------------------------------
    def add(self, title: str, body: str, kind: str) -> Path:
        item = {"title": title, "body": body, "kind": kind, "at": time.time(),
                "group": batching.group_of(kind, title, body)}
        path = self.dir / f"i-{new_id()}.json"
        atomic_write(path, json.dumps(item).encode())
        return path

    def first_time(self, key: str) -> bool:
        """True once per KEY: a restarted daemon offers its waiting proposals again, and
        people were told already (reminders name them again, once per interval)."""
        path = self.dir.parent / "announced.json"
        try:
            seen = json.loads(path.read_text())
        except (OSError, ValueError):
            seen = []
        if key in seen:
            return False
        atomic_write(path, json.dumps((seen + [key])[-ANNOUNCED:]).encode())
        return True

    def items(self) -> list[tuple[Path, dict[str, Any]]]:
        return [(p, d) for p in sorted(self.dir.glob("i-*.json")) if (d := _read(p))]

    def recover(self) -> int:
        """Remove items a message already holds (the process died between the two)."""
        gone = 0
        for _path, msg in self.messages():
            for name in msg.get("items", []):
                if (self.dir / name).exists():
                    (self.dir / name).unlink(missing_ok=True)
                    gone += 1
        return gone

    def digest(self, window: float, force: bool = False) -> float | None:
        """Make a message of every group that is due (all of them with FORCE); returns when
        the next group falls due, or None when nothing waits."""
        groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
        for path, item in self.items():
            groups.setdefault(item["group"], []).append((path, item))
        now, upcoming = time.time(), None
        for group, entries in groups.items():
            entries.sort(key=lambda e: e[1]["at"])
            when = batching.due_at([i for _, i in entries], self.last_sent.get(group), window)
            if force or when <= now:
                self._make(group, entries, now)
            else:
                upcoming = when if upcoming is None else min(upcoming, when)
        return upcoming

    def _make(self, group: str, entries: list[tuple[Path, dict[str, Any]]], now: float) -> None:
        items = [i for _, i in entries]
        title, body = batching.compose(items)
        self.put(title, body, items[0]["kind"], items=[p.name for p, _ in entries])
        crashpoint("after-digest-written")
        for path, _ in entries:  # after the message is on disk: see recover()
            path.unlink(missing_ok=True)
        self.last_sent[group] = now

    # -- messages ------------------------------------------------------------------------
    def put(self, title: str, body: str, kind: str, *, items: list[str] | None = None,
            attach: bytes | None = None, held: bool = False, name: str | None = None) -> Path:
        """A message to send.  NAME makes it findable (a summary's day); HELD keeps it back
        until release(NAME): the summary is committed first."""
        name = name or new_id()
        attach_name = None
        if attach is not None:
            attach_name = f"a-{name}.png"
            atomic_write(self.dir / attach_name, attach)
        msg = {"title": title, "body": body, "kind": kind, "created_at": utcnow(),
               "items": items or [], "attach": attach_name, "held": held, "delivered": [],
               "attempts": 0, "next_try": 0.0}
        path = self.dir / f"m-{name}.json"
        atomic_write(path, json.dumps(msg).encode())
        return path

    def messages(self) -> list[tuple[Path, dict[str, Any]]]:
        """Messages in the order they were made (older outboxes' plain <id>.json too)."""
        found = [(p, d) for p in self.dir.glob("*.json")
                 if not p.name.startswith("i-") and (d := _read(p))]
        return sorted(found, key=lambda e: (e[1].get("created_at", ""), e[0].name))

    def pending(self) -> list[Path]:
        return [p for p, _ in self.messages()] + [p for p, _ in self.items()]

    def held(self) -> list[str]:
        return [p.stem[2:] for p, m in self.messages() if m.get("held")]

    def release(self, name: str) -> None:
        path = self.dir / f"m-{name}.json"
        msg = _read(path)
        if msg is not None:
            msg["held"] = False
            atomic_write(path, json.dumps(msg).encode())

    def drop(self, name: str) -> None:
        path = self.dir / f"m-{name}.json"
        self._remove(path, _read(path) or {})

    def flush(self, targets: list[Any] | Callable[[], list[Target]]) -> int:
        """Try every due message on every target that wants its kind and lacks it yet;
        returns how many messages every target now has.  TARGETS: Target objects (or URL
        strings), or a callable giving the ones in force at each message."""
        done = 0
        for path, msg in self.messages():
            if msg.get("held") or msg.get("next_try", 0) > time.time():
                continue
            every = targets() if callable(targets) else resolve(targets)[0]
            wanted = [t for t in every
                      if t.wants(msg["kind"]) and t.key not in msg.get("delivered", [])]
            attach = str(self.dir / msg["attach"]) if msg.get("attach") else None
            for target in wanted:
                if deliver(target, msg["title"], msg["body"], msg["kind"], attach):
                    msg.setdefault("delivered", []).append(target.key)
                    atomic_write(path, json.dumps(msg).encode())
            if all(t.key in msg["delivered"] for t in wanted):
                self._remove(path, msg)
                done += 1
            else:
                self._retry_later(path, msg)
        return done

    def _retry_later(self, path: Path, msg: dict[str, Any]) -> None:
        msg["attempts"] = msg.get("attempts", 0) + 1
        if msg["attempts"] >= MAX_ATTEMPTS:
            log.error("giving up on notification %r after %d attempts", msg["title"],
                      msg["attempts"])
            path.rename(path.with_suffix(".failed"))
            return
        msg["next_try"] = time.time() + min(600, 2 ** msg["attempts"])
        atomic_write(path, json.dumps(msg).encode())

    def _remove(self, path: Path, msg: dict[str, Any]) -> None:
        path.unlink(missing_ok=True)
        if msg.get("attach"):
            (self.dir / msg["attach"]).unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any] | None:
    """A file another process half-wrote cannot exist (atomic writes); one a person broke is
    set aside rather than retried forever."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.error("unreadable outbox file %s set aside", path.name)
        path.rename(path.with_suffix(".broken"))
        return None
    return data if isinstance(data, dict) and "title" in data else None
