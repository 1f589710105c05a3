"""Batching: which waiting outbox items go out now, and as what one message (a digest).

Pure functions of the items, the clock and the window (`notifications.batch_seconds`), so the
rules are tested without a receiver.  The rules, from the people who read the messages:
- approval requests (and reminders) made within a window go out as one message;
- identical alerts within a window become one message that says how many times;
- the first of a burst still goes out at once (after GATHER seconds, so what was posted in
  the same moment rides with it); only the rest of the burst waits, until the burst has been
  quiet for a window, or at most MAX_WINDOWS windows, so a steady stream still gets through.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any

GATHER = 1.0
MAX_WINDOWS = 5
LISTED = ("approval", "reminder")  # kinds whose items are listed in one message


def group_of(kind: str, title: str, body: str) -> str:
    """Items of one group go out together: every approval request is one group; an alert's
    group is its exact text, so only identical alerts merge."""
    if kind in LISTED:
        return kind
    text = "\0".join((title, body)).encode()
    return f"{kind}:{hashlib.sha256(text).hexdigest()[:16]}"


def due_at(items: list[dict[str, Any]], last_sent: float | None, window: float) -> float:
    """When the group's waiting ITEMS (oldest first) go out: soon after the first when no
    message of the group went out within a window; else after a quiet window."""
    first, last = items[0]["at"], items[-1]["at"]
    if window <= 0:
        return first
    if last_sent is None or first - last_sent >= window:
        return first + min(GATHER, window)
    return min(last + window, first + MAX_WINDOWS * window)


def compose(items: list[dict[str, Any]]) -> tuple[str, str]:
    """One message for ITEMS of one group (oldest first)."""
    if len(items) == 1:
        return items[0]["title"], items[0]["body"]
    kind = items[0]["kind"]
    if kind == "approval":
        return _approvals(items)
    if kind in LISTED:
        return items[-1]["title"], "\n\n".join(i["body"] for i in items)
    n = len(items)
    return (f"{items[0]['title']} ({n} times)",
            f"{items[0]['body']}\n\nThis happened {n} times, from {_hms(items[0]['at'])} to "
            f"{_hms(items[-1]['at'])} UTC.")


def _approvals(items: list[dict[str, Any]]) -> tuple[str, str]:
    n = len(items)
    head = f"{n} proposals wait for a person's approval (oldest first):"
    foot = ("Approve one by setting `status: approved` in its file and committing, by "
            "merging its branch janus/proposal/<id> with a merge commit, or with the "
            "command shown.")
    return (f"janus-git: {n} proposals need approval",
            "\n\n".join([head, *(i["body"] for i in items), foot]))


def _hms(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at))
