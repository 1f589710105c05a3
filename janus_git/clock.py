"""The wall clock the daily summary and reminders are scheduled by.

Tests move it with JANUS_GIT_NOW (an ISO time; the clock then runs on from it), so a daemon
can be killed at 23:58 and restarted at 00:30 without waiting a night.  It is an environment
variable of the process, set by whoever starts the daemon: nothing committed can move it.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)
UTC = dt.timezone.utc
_seen: dict[str, float] = {}  # each JANUS_GIT_NOW value -> when this process first read it


def now() -> dt.datetime:
    """Now, timezone-aware (UTC)."""
    fixed = os.environ.get("JANUS_GIT_NOW")
    if fixed:
        # the clock runs on from the moment the value was first read, not from the
        # import: a test may set a new value in a long-lived process
        since = _seen.setdefault(fixed, time.monotonic())
        return parse_time(fixed) + dt.timedelta(seconds=time.monotonic() - since)
    return dt.datetime.now(UTC)


def parse_time(text: str) -> dt.datetime:
    """An ISO timestamp as janus-git writes them (trailing Z), aware; naive means UTC."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def zone(name: str | None) -> dt.tzinfo:
    """The IANA zone NAME; UTC (and a logged error) for one this machine does not know, so a
    typo committed to agent.yaml delays nobody's summary."""
    if not name or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.error("notifications.timezone %r is not a known IANA zone; using UTC", name)
        return UTC


def iso(moment: dt.datetime) -> str:
    """MOMENT in UTC as janus-git's records spell it, so strings compare as times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
