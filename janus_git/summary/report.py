"""Making the daily summary: which days are due, and the summary of one (figures, markdown,
chart), the same for the daemon and `janus-git summary`.

A day is due once `daily_summary_at` has passed on the next day, in `notifications.timezone`.
Whether a day's summary was made is read from HEAD (logs/summaries/<day>.md), never from
local state, so a restart, a second clone or a missed night never makes one twice; days
missed while the daemon was down are made one by one, oldest first (at most MAX_BACKLOG).
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import clock
from ..gitrepo import GitRepo
from . import figures as summary

MAX_BACKLOG = 31
log = logging.getLogger(__name__)


@dataclass
class Report:
    data: dict[str, Any]
    markdown: str       # as committed (it shows the chart beside it)
    message: str        # as sent (the chart is attached; the sparkline stands in without)
    png: bytes | None

    @property
    def title(self) -> str:
        d = self.data
        return (f"janus-git daily summary {d['date']}: {d['executed']} runs, "
                f"{len(d['waiting'])} waiting")


def made_days(repo: GitRepo, rev: str = "HEAD") -> set[dt.date]:
    days = set()
    for path in repo.ls_tree(rev, summary.SUMMARY_DIR):
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".md"):
            try:
                days.add(dt.date.fromisoformat(name[:-3]))
            except ValueError:
                continue
    return days


def last_due(settings: dict[str, Any], now: dt.datetime) -> dt.date:
    """The latest day whose summary time has come: yesterday once `daily_summary_at` has
    passed today (local time), else the day before."""
    local = now.astimezone(clock.zone(settings["timezone"]))
    hour, minute = (int(x) for x in str(settings["daily_summary_at"]).split(":"))
    passed = (local.hour, local.minute) >= (hour, minute)
    return local.date() - dt.timedelta(days=1 if passed else 2)


def due_days(repo: GitRepo, settings: dict[str, Any], now: dt.datetime,
             since: dt.datetime | None = None) -> list[dt.date]:
    """Days whose summary is due and not in HEAD, oldest first.  A repository with none yet
    starts with the first day whose summary time came after SINCE (when this daemon first
    looked): a first start sends nothing (and the day that just ended without SINCE)."""
    end = last_due(settings, now)
    made = made_days(repo)
    if made:
        first = max(made) + dt.timedelta(days=1)
    elif since is not None:
        first = last_due(settings, since) + dt.timedelta(days=1)
    else:
        first = end
    first = max(first, end - dt.timedelta(days=MAX_BACKLOG - 1))
    days = []
    while first <= end:
        if first not in made:
            days.append(first)
        first += dt.timedelta(days=1)
    return days


def make(sr: Any, day: dt.date, settings: dict[str, Any], *, as_of: dt.datetime | None = None,
         chart: bool = True) -> Report:
    from . import text as summary_text
    data = summary.build(sr, day, settings["timezone"], as_of=as_of,
                         remind_after=float(settings["remind_after"]))
    png = None
    if chart:
        try:
            from .chart import draw
        except ImportError as e:  # the summary is worth more than its picture
            log.warning("no chart for the summary: %s", e)
        else:
            png = draw(data)
    name = summary.summary_path(day, "png").rsplit("/", 1)[-1] if png else None
    return Report(data, summary_text.render(data, name), summary_text.render(data), png)


def summary_on_demand(sr: Any, day: str | None, *, send: bool = False, as_json: bool = False
                      ) -> tuple[str, tuple[int, int] | None]:
    """`janus-git summary`: the text (markdown or JSON) of DAY (default the last day due),
    and, with SEND, (delivered, targets).  Nothing is committed: the daemon does that."""
    import json
    import tempfile

    from ..errors import JanusError
    from ..notify import send as deliver
    from ..notify import settings
    conf = settings(sr.config)
    try:
        when = dt.date.fromisoformat(day) if day else last_due(conf, clock.now())
    except ValueError:
        raise JanusError(f"--date {day!r} is not a date: use YYYY-MM-DD") from None
    made = make(sr, when, conf, chart=send)
    text = json.dumps(made.data, indent=1) if as_json else made.markdown
    if not send:
        return text, None
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / f"{when.isoformat()}.png"
        png.write_bytes(made.png or b"")
        return text, deliver(conf["urls"], made.title, made.message, "summary", sr.root,
                             str(png) if made.png else None)
