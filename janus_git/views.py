"""Reading the state repository for people and programs: show, export, tables."""
from __future__ import annotations

import csv
import io
import json
import time
from typing import Any, Optional

from .errors import ConfigError
from .proposal import parse_proposal, shard_path
from .staterepo import StateRepo

LIST_COLUMNS = ("id", "status", "mission", "type", "tool", "risk", "created_at")


def show(sr: StateRepo, pid: str) -> dict[str, Any]:
    """The record and its history (one entry per commit that touched it, newest first)."""
    full = sr.store.resolve(pid)
    path = shard_path(full)
    text = sr.repo.read_blob_once("HEAD", path)
    record: dict[str, Any]
    try:
        record = parse_proposal(text, path).to_dict() if text is not None else {}
        error = None if text is not None else "deleted at HEAD (see history)"
    except ConfigError as e:
        record, error = {}, str(e)
    history = [{"commit": c.sha, "author": f"{c.author_name} <{c.author_email}>",
                "subject": c.subject, "transition": c.trailers().get("Janus-Transition"),
                "correction": c.trailers().get("Janus-Correction")}
               for c in sr.repo.file_history(path)]
    return {"id": full, "path": path, "record": record, "error": error, "history": history}


def export(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=1, ensure_ascii=False) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        cols = list(rows[0]) if rows else list(LIST_COLUMNS)
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    if fmt == "md":
        cols = list(LIST_COLUMNS) + ["note"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            cells = [str(r.get(c) or r.get("error") or "").replace("|", "\\|").replace("\n", " ")
                     for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    raise ValueError(fmt)


# -- the proposal table (list, watch) ---------------------------------------------------------
# Compact: every id, status and age whole; the note on one line, cut to fit; type and tool cut
# only when the note would get less than NOTE_MIN.  --wide: every column, every value whole
# (the note takes the rest of the terminal, at least WIDE_NOTE_MIN, and folds onto more
# lines).  No row ever wraps or cuts its id or status.
COMPACT = ("id", "status", "type", "tool", "age", "note")
WIDE = ("id", "status", "mission", "type", "tool", "risk", "created_at", "note")
NOTE_MIN, WIDE_NOTE_MIN, CUT_MIN, GAP = 16, 48, 8, 2
STATUS_STYLE = {"invalid": "bold red", "failed": "red", "succeeded": "green",
                "approved": "cyan", "running": "yellow", "proposed": "bold",
                "interrupted": "magenta"}


def age(created_at: Optional[str], now: float) -> str:
    import datetime as dt
    try:
        then = dt.datetime.fromisoformat(str(created_at).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return ""
    s = max(0, int(now - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _cells(row: dict, columns: tuple[str, ...], now: float) -> list[str]:
    """One line per cell: the note (or the error of a broken file) with its whitespace folded."""
    note = " ".join(str(row.get("error") or row.get("note") or "").split())
    values = {**row, "age": age(row.get("created_at"), now), "note": note}
    return [str(values.get(c) or "") for c in columns]


def _fit(columns: tuple[str, ...], natural: list[int], width: int, wide: bool) -> list[int]:
    """Column widths for WIDTH: the note takes what is left; when that is under NOTE_MIN,
    type and tool give way (compact only), the wider first, down to CUT_MIN, or further if
    even without a note the table would not fit."""
    widths = list(natural)
    note = columns.index("note")
    cut = [] if wide else [columns.index("type"), columns.index("tool")]
    room = width - GAP * (len(columns) - 1) - sum(natural) + natural[note]
    while room < min(NOTE_MIN, natural[note]):
        floor = CUT_MIN if room >= 0 else 1
        shrinkable = [i for i in cut if widths[i] > floor]
        if not shrinkable:
            break
        widths[max(shrinkable, key=widths.__getitem__)] -= 1
        room += 1
    widths[note] = min(natural[note], max(room, WIDE_NOTE_MIN if wide else 0))
    return widths


def table(rows: list[dict], title: str, width: int, wide: bool = False):
    from rich.table import Table
    from rich.text import Text
    columns = WIDE if wide else COMPACT
    now = time.time()
    cells = [_cells(r, columns, now) for r in rows]
    natural = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    t = Table(title=title or None, title_justify="left", box=None, pad_edge=False,
              padding=(0, GAP // 2), header_style="bold", show_edge=False)
    for c, w in zip(columns, _fit(columns, natural, width, wide), strict=True):
        fold = wide and c == "note"
        t.add_column(c, width=w, no_wrap=not fold, overflow="fold" if fold else "ellipsis",
                     justify="right" if c == "age" else "left")
    for r, line in zip(rows, cells, strict=True):
        # Text, not markup: a note is anyone's text, and "[x]" in it is not a style
        t.add_row(*(Text(v) for v in line), style=STATUS_STYLE.get(r.get("status") or ""))
    return t


def print_table(console, rows: list[dict], title: str, wide: bool) -> None:
    from rich.measure import Measurement
    t = table(rows, title, console.width, wide)
    # whole columns wider than the terminal: the lines run on rather than be cut
    need = Measurement.get(console, console.options.update_width(1 << 16), t).maximum
    console.width = max(console.width, need)
    console.print(t)


def daemon_lines(d: dict[str, Any]) -> list[str]:
    """What `janus-git status` says of a running daemon beyond its activity: the Victorian
    controls and, on a shared remote, the remote and the leases this daemon sees."""
    out = []
    c = d.get("controls")
    if c:
        g, v, s = c["governor"], c["valve"], c["slots"]
        out.append(f"ticks: {c.get('achieved_tick_hz')} Hz of {c.get('tick_hz')}; starts "
                   f"<= {c.get('auto_starts_per_second')}/s auto, "
                   f"{c.get('max_starts_per_second')}/s people")
        out.append(f"governor: CPU {g['measurement']} % for a setpoint of {g['setpoint']} % "
                   f"-> output {g['output']} ({g['auto_slots']} auto slot(s))")
        out.append(f"relief valve: {v['state']}" + (f" ({v['why']})" if v.get("why") else "")
                   + (f", {c['deferred']} deferred" if c.get("deferred") else ""))
        out.append(f"slots: {s['in_use']['people']} people + {s['in_use']['auto']} auto in "
                   f"use of {s['max']} ({s['reserved_for_people']} kept for people); queued "
                   f"{s['queued']['people']} people, {s['queued']['auto']} auto")
        if c.get("exclusive"):
            out.append(f"exclusive: {c['exclusive']}")
    r = d.get("remote")
    if r:
        out.append(f"remote: {r['name']} {r['url']} ({r['branch']}), instance {r['instance']}"
                   f"{', leader' if r['leader'] else ''}")
        out.append(f"  last fetch {r['last_fetch'] or 'never'}, last push "
                   f"{r['last_push'] or 'never'}; {r['lag_commits']} commit(s) behind at the "
                   f"last fetch; {r['refused_pushes']} push(es) refused of "
                   f"{r['pushes'] + r['refused_pushes']}"
                   + (f", {r['replayed']} landed on the new tip after a refusal"
                      if r.get("replayed") else ""))
        for name, lease in r["leases"].items():
            state = "released" if lease["released"] else ("alive" if lease["alive"]
                                                          else "EXPIRED")
            out.append(f"  lease {name}: {state}, moved {lease['moved_seconds_ago']} s ago")
        for key in ("fetch_error", "lease_error"):
            if r.get(key):
                out.append(f"  {key.replace('_', ' ')}: {r[key]}")
        if r.get("webhook"):
            w = r["webhook"]
            out.append("  webhook: " + ", ".join(f"{k} {v}" for k, v in w.items() if v))
    return out
