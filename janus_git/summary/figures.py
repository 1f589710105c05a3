"""The daily summary's figures, for one calendar day in the configured timezone.

Built only from what is committed (logs/tool_use.jsonl, the proposal files through the
derived index, transition and stop trailers in `git log`, missions/*.yaml), so anyone can
rebuild it from the repository.  logs/tool_use.jsonl is not a guarded path: anyone who can
push may append to it, so a line counts only when the proposal it names exists, carries the
same digest and has run (its status says so), and the proposal's last line agrees with that
status; the rest are counted as unverified and shown as unusual.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from typing import Any

from .. import clock
from ..gitrepo import GitRepo, Identity, format_message

SUMMARY_DIR = "logs/summaries"
RESOURCES = ("cpu_seconds", "peak_rss_mb", "wall_seconds", "bytes_written")
RAN = {"succeeded", "failed", "interrupted", "reverted"}  # statuses a proposal has after a run
OUTCOMES = ("succeeded", "failed", "other")


def summary_path(day: dt.date, ext: str = "md") -> str:
    return f"{SUMMARY_DIR}/{day.isoformat()}.{ext}"


def period(day: dt.date, tz: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """DAY from local midnight to the next (23 or 25 hours across a DST change), in UTC."""
    start = dt.datetime.combine(day, dt.time(), tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz)
    return start.astimezone(clock.UTC), end.astimezone(clock.UTC)


def percentile(values: list[float], q: float) -> float | None:
    """The Q-th percentile with linear interpolation between ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# -- runs ----------------------------------------------------------------------------------
def tool_use(repo: GitRepo) -> list[dict[str, Any]]:
    text = (repo.read_blob("HEAD", "logs/tool_use.jsonl") or b"").decode(errors="replace")
    lines = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("ended_at"), str):
            lines.append(rec)
    return lines


def verified(lines: list[dict[str, Any]], rows: dict[str, dict[str, Any]]
             ) -> tuple[list[dict[str, Any]], int]:
    """The lines a run of a real proposal wrote, and how many others there were."""
    last: dict[str, dict[str, Any]] = {}
    for rec in lines:
        last[str(rec.get("proposal"))] = rec
    good = []
    for rec in lines:
        row = rows.get(str(rec.get("proposal")))
        if row is None or row.get("status") not in RAN or row.get("digest") != rec.get("digest"):
            continue
        if last[row["id"]] is rec and row["status"] in ("succeeded", "failed") \
                and rec.get("status") != row["status"]:
            continue  # its final run says otherwise than the proposal: a forged line
        good.append(rec)
    return good, len(lines) - len(good)


def within(runs: list[dict[str, Any]], start: dt.datetime, end: dt.datetime
           ) -> list[dict[str, Any]]:
    lo, hi = clock.iso(start), clock.iso(end)
    return [r for r in runs if lo <= _norm(r["ended_at"]) < hi]


def _norm(stamp: str) -> str:
    """A record's time as clock.iso spells it, so it compares as a string."""
    try:
        return clock.iso(clock.parse_time(stamp))
    except ValueError:
        return ""


def outcome(run: dict[str, Any]) -> str:
    status = run.get("status")
    return status if status in ("succeeded", "failed") else "other"


def rate(runs: list[dict[str, Any]]) -> float | None:
    return sum(outcome(r) == "succeeded" for r in runs) / len(runs) if runs else None


def resources(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    out = {}
    for key in RESOURCES:
        values = [float(v) for r in runs
                  if isinstance(v := (r.get("resources") or {}).get(key), (int, float))]
        if values:
            out[key] = {"median": percentile(values, 50), "p95": percentile(values, 95),
                        "max": max(values), "n": len(values)}
    return out


def hourly(runs: list[dict[str, Any]], start: dt.datetime, tz: dt.tzinfo
           ) -> list[dict[str, int]]:
    """Runs per local hour of the day by outcome (a DST day has 23 or 25 rows)."""
    hours = []
    for r in runs:
        at = clock.parse_time(r["ended_at"])
        hours.append((int((at - start).total_seconds() // 3600), outcome(r)))
    n = max([24] + [h + 1 for h, _ in hours])
    rows = [dict.fromkeys(OUTCOMES, 0) for _ in range(n)]
    for h, kind in hours:
        rows[h][kind] += 1
    return rows


# -- the rest of the day -------------------------------------------------------------------
def _git_date(moment: dt.datetime) -> str:
    return moment.astimezone(clock.UTC).strftime("%Y-%m-%d %H:%M:%S +0000")


def moves(repo: GitRepo, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
    """Transitions committed in the period, by the status moved to; stops committed."""
    values = repo.trailer_values("Janus-Transition", _git_date(start), _git_date(end))
    to = Counter(v.rsplit("->", 1)[-1].strip() for v in values)
    stops = repo.trailer_values("Janus-Stop", _git_date(start), _git_date(end))
    return {"filed": sum(v.strip().startswith("new ") for v in values),
            "approved": to.get("approved", 0), "rejected": to.get("rejected", 0),
            "duplicates": to.get("duplicate", 0), "archived": to.get("archived", 0),
            "reverted": to.get("reverted", 0), "suspended": to.get("suspended", 0),
            "stops": sum(v.strip() == "on" for v in stops)}


def waiting(rows: list[dict[str, Any]], as_of: dt.datetime) -> list[dict[str, Any]]:
    """Proposals waiting for a person at AS_OF, oldest first, with their age in hours."""
    out = []
    for row in rows:
        if row.get("status") != "proposed":
            continue
        try:
            created = clock.parse_time(str(row.get("created_at")))
        except ValueError:
            continue
        if created <= as_of:
            out.append({"id": row["id"], "tool": row.get("tool"), "type": row.get("type"),
                        "mission": row.get("mission"), "risk": row.get("risk"),
                        "created_at": row.get("created_at"),
                        "age_hours": round((as_of - created).total_seconds() / 3600, 2)})
    return sorted(out, key=lambda w: (-w["age_hours"], w["id"]))


def mission_progress(repo: GitRepo, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from ..missions import load_missions, progress
    out = []
    for m in load_missions(repo, on_error=lambda e: None):
        pr = progress(m, rows)
        span = f"{m.target}" if m.target == m.budget_max else f"{m.budget_min}–{m.budget_max}"
        out.append({"id": m.id, "title": m.title, "kind": m.kind, "status": m.status,
                    "succeeded": pr.succeeded, "in_flight": pr.in_flight,
                    "target": m.target, "max": m.budget_max, "unit": m.unit,
                    "text": f"{m.kind} {pr.succeeded}/{span} {m.unit}"})
    return out


def failures(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"proposal": r.get("proposal"), "tool": r.get("tool"), "status": r.get("status"),
             "exit_code": r.get("exit_code"), "limit_hit": r.get("limit_hit"),
             "reason": r.get("error") or (f"limit hit: {r['limit_hit']}" if r.get("limit_hit")
                                          else f"exit code {r.get('exit_code')}")}
            for r in runs if outcome(r) != "succeeded"]


# -- the whole ------------------------------------------------------------------------------
def build(sr: Any, day: dt.date, tz_name: str = "UTC", *, as_of: dt.datetime | None = None,
          remind_after: float = 86400.0) -> dict[str, Any]:
    """The summary of DAY in TZ_NAME, from HEAD; waiting proposals and ages as of AS_OF
    (the moment it is made: now by default)."""
    tz = clock.zone(tz_name)
    start, end = period(day, tz)
    as_of = as_of or clock.now()
    rows = sr.index.query()
    runs, unverified = verified(tool_use(sr.repo), {r["id"]: r for r in rows})
    today = within(runs, start, end)
    week = [_day_figures(runs, day - dt.timedelta(days=k), tz) for k in range(7, 0, -1)]
    data = {
        "date": day.isoformat(), "timezone": tz_name, "from": clock.iso(start),
        "to": clock.iso(end), "as_of": clock.iso(as_of),
        "executed": len(today), "succeeded": sum(outcome(r) == "succeeded" for r in today),
        "failed": sum(outcome(r) == "failed" for r in today),
        "other": sum(outcome(r) == "other" for r in today),
        "success_rate": _round(rate(today)), "unverified_lines": unverified,
        "hourly": hourly(today, start, tz), "resources": resources(today),
        "limits_hit": dict(Counter(r["limit_hit"] for r in today if r.get("limit_hit"))),
        "tools": dict(Counter(str(r.get("tool", "?")) for r in today)),
        "failures": failures(today), "moves": moves(sr.repo, start, end),
        "waiting": waiting(rows, as_of), "missions": mission_progress(sr.repo, rows),
        "previous_days": week, "stopped_now": sr.stopped_at() is not None,
    }
    data["compare"] = compare(data, week)
    data["unusual"] = unusual(data, remind_after)
    return data


def _round(value: float | None, places: int = 4) -> float | None:
    return None if value is None else round(value, places)


def _day_figures(runs: list[dict[str, Any]], day: dt.date, tz: dt.tzinfo) -> dict[str, Any]:
    some = within(runs, *period(day, tz))
    walls = [float(w) for r in some
             if isinstance(w := (r.get("resources") or {}).get("wall_seconds"), (int, float))]
    return {"date": day.isoformat(), "executed": len(some),
            "succeeded": sum(outcome(r) == "succeeded" for r in some),
            "success_rate": _round(rate(some)),
            "wall_median": percentile(walls, 50)}


def compare(data: dict[str, Any], week: list[dict[str, Any]]) -> dict[str, Any]:
    """This day against the 7 before it: runs per day, success rate over all their runs,
    the median of the days' median run times."""
    runs = sum(d["executed"] for d in week)
    ok = sum(d["succeeded"] for d in week)
    walls = [d["wall_median"] for d in week if d["wall_median"] is not None]
    avg = runs / 7
    prev_rate = ok / runs if runs else None
    now_rate = data["success_rate"]
    return {
        "runs_per_day": round(avg, 2),
        "runs_change_percent": round((data["executed"] - avg) / avg * 100, 1) if avg else None,
        "success_rate": _round(prev_rate),
        "success_rate_change_points": (round((now_rate - prev_rate) * 100, 1)
                                       if now_rate is not None and prev_rate is not None
                                       else None),
        "wall_median": percentile(walls, 50),
    }


def unusual(data: dict[str, Any], remind_after: float) -> list[str]:
    """What a person should look at, in a few words each."""
    notes = []
    if data["failed"]:
        notes.append(f"{data['failed']} run{'s' * (data['failed'] != 1)} failed")
    for limit, n in sorted(data["limits_hit"].items()):
        notes.append(f"limit {limit} hit {n}×")
    m = data["moves"]
    for key, word in (("reverted", "reverted"), ("suspended", "suspended"),
                      ("stops", "emergency stops")):
        if m[key]:
            notes.append(f"{m[key]} {word}")
    if data["stopped_now"]:
        notes.append("the emergency stop is in force")
    change = data["compare"]["success_rate_change_points"]
    if change is not None and change <= -20:
        notes.append(f"success rate {change:+.0f} points against the 7 days before")
    late = [w for w in data["waiting"] if w["age_hours"] * 3600 >= remind_after]
    if late:
        notes.append(f"{len(late)} waiting longer than {remind_after / 3600:g} h")
    if data["unverified_lines"]:
        notes.append(f"{data['unverified_lines']} tool_use.jsonl lines match no run "
                     "(not counted)")
    return notes


def commit_summary(repo: GitRepo, identity: Identity, data: dict[str, Any],
                   markdown: str, png: bytes | None) -> str:
    """The summary (and its chart) in one commit; Janus-Summary names the day."""
    day = dt.date.fromisoformat(data["date"])
    files: dict[str, bytes | None] = {summary_path(day): markdown.encode()}
    if png is not None:
        files[summary_path(day, "png")] = png
    return repo.commit_files(files, format_message(f"janus: daily summary {data['date']}", "",
                                                   {"Janus-Summary": data["date"]}), identity)
