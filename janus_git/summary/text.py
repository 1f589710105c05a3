"""The daily summary as people read it: markdown whose first lines fit a chat preview (runs,
success rate, what waits for you, anything unusual), then the details.  The text sparkline
stands in for the chart where a target takes no attachment.

Every name and reason in it comes from committed files anyone can push (proposal files,
tool_use.jsonl lines, missions): each goes in through chattext.inert, so the summary, in chat
and on the forge, mentions no one and links nowhere; its own markdown stays as it is."""
from __future__ import annotations

from typing import Any

from ..notify.chattext import inert

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], top: float | None = None) -> str:
    """One block character per value, scaled to TOP (default the largest); a gap for a
    missing value."""
    known = [v for v in values if v is not None]
    top = top or max(known, default=0) or 1
    return "".join(" " if v is None else BARS[min(7, int(v / top * 7 + 0.5))] if v else "▁"
                   for v in values)


def sparklines(s: dict[str, Any]) -> str:
    runs = sparkline([sum(h.values()) for h in s["hourly"]])
    rates = sparkline([d["success_rate"] for d in s["previous_days"]] + [s["success_rate"]],
                      1.0)  # a rate's scale is 0-100 %, not the week's best
    return f"runs per hour `{runs}` · success rate, 8 days `{rates}`"


def age(hours: float) -> str:
    if hours < 1:
        return f"{round(hours * 60)} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{int(hours // 24)} d {round(hours % 24)} h"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f} %"


def top(s: dict[str, Any]) -> list[str]:
    wait = s["waiting"]
    waits = (f"**{len(wait)} wait for you** (oldest {age(wait[0]['age_hours'])})" if wait
             else "nothing waits for you")
    lines = [f"# janus-git daily summary {s['date']} ({s['timezone']})", "",
             f"**{s['executed']} runs, {percent(s['success_rate'])} succeeded** · {waits}", "",
             "unusual: " + ("; ".join(map(inert, s["unusual"])) if s["unusual"] else "nothing"),
             "",
             sparklines(s), ""]
    return lines


def render(s: dict[str, Any], chart: str | None = None) -> str:
    """The summary's markdown; CHART, the PNG's file name beside it, is shown when given."""
    lines = top(s)
    if chart:
        lines += [f"![runs per hour by outcome, and the 7-day success rate]({chart})", ""]
    for part in (_waiting, _missions, _failures, _resources, _compare, _activity):
        lines += part(s) + [""]
    lines.append(f"Made {s['as_of']} from the committed history (tool_use.jsonl lines, "
                 "proposal files, transition trailers, missions/); the day runs "
                 f"{s['from']} to {s['to']}.")
    return "\n".join(lines) + "\n"


def _waiting(s: dict[str, Any]) -> list[str]:
    lines = ["## Waiting for you (oldest first)", ""]
    if not s["waiting"]:
        return lines + ["Nothing."]
    lines += ["| proposal | tool | mission | waiting | approve / reject |", "|---|---|---|---|---|"]
    for w in s["waiting"]:
        pid = inert(w["id"])
        lines.append(f"| {pid} | {inert(w['tool'])} ({inert(w['type'])}) | "
                     f"{inert(w['mission'])} | {age(w['age_hours'])} | "
                     f"`janus-git approve {pid}` / `janus-git reject {pid}` |")
    return lines


def _missions(s: dict[str, Any]) -> list[str]:
    lines = ["## Missions", ""]
    lines += [f"- {inert(m['id'])} ({inert(m['status'])}): {inert(m['text'])}"
              + (f", {m['in_flight']} in flight" if m["in_flight"] else "")
              for m in s["missions"]] or ["No missions."]
    return lines


def _failures(s: dict[str, Any]) -> list[str]:
    lines = ["## Failures, limits, reverts and stops", ""]
    for f in s["failures"]:
        lines.append(f"- {inert(f['proposal'])} ({inert(f['tool'])}) {inert(f['status'])}: "
                     f"{inert(f['reason'])}")
    m = s["moves"]
    lines.append(f"- limits hit: {_counts(s['limits_hit'])}; reverted {m['reverted']}, "
                 f"suspended {m['suspended']}, emergency stops {m['stops']}"
                 + ("; the stop is in force now" if s["stopped_now"] else ""))
    return lines


def _resources(s: dict[str, Any]) -> list[str]:
    lines = ["## Resources per run", ""]
    if not s["resources"]:
        return lines + ["No runs."]
    lines += ["| resource | median | p95 | max |", "|---|---|---|---|"]
    for key, v in s["resources"].items():
        lines.append(f"| {key} | {_num(v['median'])} | {_num(v['p95'])} | {_num(v['max'])} |")
    return lines


def _compare(s: dict[str, Any]) -> list[str]:
    c = s["compare"]
    change = c["runs_change_percent"]
    points = c["success_rate_change_points"]
    return ["## Against the previous 7 days", "",
            "| | this day | previous 7 days | change |", "|---|---|---|---|",
            f"| runs per day | {s['executed']} | {c['runs_per_day']:g} | "
            f"{'n/a' if change is None else f'{change:+.0f} %'} |",
            f"| success rate | {percent(s['success_rate'])} | {percent(c['success_rate'])} | "
            f"{'n/a' if points is None else f'{points:+.0f} points'} |",
            f"| median run time (s) | {_num(_median(s, 'wall_seconds'))} | "
            f"{_num(c['wall_median'])} | |"]


def _median(s: dict[str, Any], key: str) -> float | None:
    return (s["resources"].get(key) or {}).get("median")


def _activity(s: dict[str, Any]) -> list[str]:
    m = s["moves"]
    return ["## Other activity", "",
            f"filed {m['filed']}, approved {m['approved']}, rejected {m['rejected']}, "
            f"duplicates {m['duplicates']}, archived {m['archived']}; tools: "
            f"{_counts(s['tools'])}"]


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{inert(k)} {v}" for k, v in sorted(d.items())) or "none"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
