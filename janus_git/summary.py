"""The daily summary: success rate, resource metrics and proposals executed, for one UTC day.

Built from what is committed (logs/tool_use.jsonl and the transition trailers in `git log`), so
anyone can rebuild it from the repository; written to logs/summaries/<YYYY-MM-DD>.md in a commit
and sent through the notification URLs.
"""
from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any

from .gitrepo import GitRepo, Identity, format_message

SUMMARY_DIR = "logs/summaries"


def summary_path(day: dt.date) -> str:
    return f"{SUMMARY_DIR}/{day.isoformat()}.md"


def runs_on(repo: GitRepo, day: dt.date) -> list[dict[str, Any]]:
    text = (repo.read_blob("HEAD", "logs/tool_use.jsonl") or b"").decode(errors="replace")
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if str(rec.get("ended_at", "")).startswith(day.isoformat()):
            out.append(rec)
    return out


def transitions_on(repo: GitRepo, day: dt.date) -> Counter:
    start = f"{day.isoformat()}T00:00:00Z"
    end = f"{(day + dt.timedelta(days=1)).isoformat()}T00:00:00Z"
    return Counter(repo.trailer_values("Janus-Transition", start, end))


def _stat(runs: list[dict[str, Any]], key: str) -> tuple[float, float]:
    values = [float(r.get("resources", {}).get(key, 0) or 0) for r in runs]
    return (sum(values) / len(values), max(values)) if values else (0.0, 0.0)


def build(repo: GitRepo, day: dt.date, pending: int = 0) -> dict[str, Any]:
    runs = runs_on(repo, day)
    ok = sum(1 for r in runs if r.get("status") == "succeeded")
    moves = transitions_on(repo, day)
    return {
        "date": day.isoformat(),
        "executed": len(runs), "succeeded": ok, "failed": len(runs) - ok,
        "success_rate": round(ok / len(runs), 3) if runs else None,
        "limits_hit": dict(Counter(r["limit_hit"] for r in runs if r.get("limit_hit"))),
        "isolation": dict(Counter(r.get("isolation", "?") for r in runs)),
        "tools": dict(Counter(r.get("tool", "?") for r in runs)),
        "resources": {k: {"mean": round(m, 3), "max": round(x, 3)} for k in
                      ("cpu_seconds", "cpu_peak_percent", "peak_rss_mb", "bytes_written",
                       "wall_seconds") for m, x in [_stat(runs, k)]},
        "proposed": moves.get("new -> proposed", 0),
        "auto_approved_or_approved": sum(v for k, v in moves.items() if k.endswith("-> approved")),
        "rejected": sum(v for k, v in moves.items() if k.endswith("-> rejected")),
        "duplicates": sum(v for k, v in moves.items() if k.endswith("-> duplicate")),
        "reverted": sum(v for k, v in moves.items() if k.endswith("-> reverted")),
        "pending_approval": pending,
    }


def render(s: dict[str, Any]) -> str:
    rate = "n/a" if s["success_rate"] is None else f"{s['success_rate'] * 100:.0f} %"
    lines = [f"# janus-git daily summary {s['date']}", "",
             f"- proposals executed: **{s['executed']}** ({s['succeeded']} succeeded, "
             f"{s['failed']} failed), success rate **{rate}**",
             f"- filed {s['proposed']}, approved {s['auto_approved_or_approved']}, rejected "
             f"{s['rejected']}, duplicates {s['duplicates']}, reverted {s['reverted']}",
             f"- waiting for a person: {s['pending_approval']}",
             f"- limits hit: {s['limits_hit'] or 'none'}; isolation: {s['isolation'] or 'n/a'}",
             f"- tools: {s['tools'] or 'none'}", "",
             "| resource | mean | max |", "|---|---|---|"]
    for key, v in s["resources"].items():
        lines.append(f"| {key} | {v['mean']} | {v['max']} |")
    return "\n".join(lines) + "\n"


def commit_summary(repo: GitRepo, identity: Identity, s: dict[str, Any]) -> str:
    day = dt.date.fromisoformat(s["date"])
    return repo.commit_files({summary_path(day): render(s).encode()},
                             format_message(f"janus: daily summary {s['date']}", "",
                                            {"Janus-Summary": s["date"]}), identity)
