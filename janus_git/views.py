"""Reading the state repository for people and programs: show, export, tables."""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from .errors import ConfigError
from .proposal import parse_proposal, shard_path
from .state import StateRepo

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


def table(rows: list[dict[str, Any]], title: str = ""):
    from rich.table import Table

    t = Table(title=title or None, show_lines=False)
    for col in LIST_COLUMNS:
        t.add_column(col, no_wrap=col in ("id", "status"))
    t.add_column("note / error", overflow="fold")
    style = {"invalid": "bold red", "failed": "red", "succeeded": "green", "approved": "cyan",
             "running": "yellow", "proposed": "bold", "interrupted": "magenta"}
    for r in rows:
        cells = [str(r.get(c) or "") for c in LIST_COLUMNS]
        t.add_row(*cells, r.get("error") or r.get("note") or "",
                  style=style.get(r.get("status") or "", None))
    return t
