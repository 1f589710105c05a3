"""A derived index of proposals (sqlite under .git/janus/), never committed.

The files in git are the truth: the index records the commit it reflects and catches up with
`git diff-tree` when HEAD moves, or rebuilds itself from `git ls-tree` when missing or broken.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any, Iterable

from .errors import ConfigError
from .gitrepo import GitRepo, atomic_write, read_blobs
from .proposal import Status, parse_proposal
from .store import PROPOSALS_DIR, check_placement, id_from_path, is_proposal_path

SCHEMA_VERSION = "3"
COLUMNS = ("id", "path", "status", "mission", "type", "tool", "risk", "created_at",
           "created_by", "digest", "note", "error")
_DDL = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS proposals (
  path TEXT PRIMARY KEY, blob TEXT, {", ".join(f"{c} TEXT" for c in COLUMNS if c != "path")},
  row_json TEXT);
CREATE INDEX IF NOT EXISTS by_status ON proposals(status);
CREATE INDEX IF NOT EXISTS by_created ON proposals(created_at);
CREATE INDEX IF NOT EXISTS by_id ON proposals(id);
"""
_STATUSES = frozenset(s.value for s in Status)


def row_for(path: str, blob: str, text: bytes) -> tuple:
    """One index row; a broken file becomes a row with status 'invalid' and the error."""
    try:
        check_placement(path)
        # the files janus-git writes are read ~3x faster without PyYAML; anything else, and
        # every broken file, goes the slow way (which writes the exact error).  Imported here:
        # its regular expressions take ~15 ms to compile, which `list` need not pay.
        from .fastrow import fast_columns
        row = fast_columns(path, text, _STATUSES)
        if row is None:
            row = _slow_row(path, text)
    except ConfigError as e:
        row = {c: None for c in COLUMNS}
        row.update(id=id_from_path(path), path=path, status="invalid", error=str(e))
    return (path, blob, *[row[c] for c in COLUMNS if c != "path"],
            json.dumps(row, ensure_ascii=False))


def _slow_row(path: str, text: bytes) -> dict[str, Any]:
    p = parse_proposal(text, path)
    return {"id": p.id, "path": path, "status": p.status.value, "mission": p.mission,
            "type": p.type, "tool": p.tool, "risk": p.risk, "created_at": p.created_at,
            "created_by": p.created_by, "digest": p.digest, "note": p.note, "error": None}


PARALLEL_MIN = 4000  # below this a second process costs more than it saves


def _rows(repo: GitRepo, entries: list[tuple[str, str]]) -> list[tuple]:
    texts = read_blobs(repo, [blob for _, blob in entries])
    return [row_for(path, blob, text) for (path, blob), text in zip(entries, texts)]


def _rows_child(root: Path, entries: list[tuple[str, str]], conn) -> None:
    conn.send(_rows(GitRepo(root), entries))
    conn.close()


def _rows_in_two(repo: GitRepo, entries: list[tuple[str, str]]) -> list[tuple]:
    """Rows for ENTRIES; a big rebuild reads and parses half of them in a forked process (the
    parse is CPU-bound Python, and one process's read overlaps the other's parse)."""
    # Forking is unsafe while other threads run (the daemon's watcher may hold a lock the
    # child would need), and spawn needs an importable __main__: then one process it is.
    if (len(entries) < PARALLEL_MIN or (os.cpu_count() or 1) < 2 or sys.platform == "win32"
            or threading.active_count() > 1):
        return _rows(repo, entries)
    import multiprocessing

    from . import fastrow  # noqa: F401  (imported before the fork, not in the child)
    ctx = multiprocessing.get_context("fork")
    half = len(entries) // 2
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_rows_child, args=(repo.root, entries[half:], send), daemon=True)
    child.start()
    send.close()
    mine = _rows(repo, entries[:half])
    theirs = None
    try:
        while theirs is None:
            if recv.poll(0.5):
                theirs = recv.recv()
            elif not child.is_alive():
                break
    except (EOFError, OSError):
        pass
    if theirs is None:  # the helper died: do its half here
        theirs = _rows(repo, entries[half:])
    child.join()
    return mine + theirs


class Index:
    def __init__(self, repo: GitRepo) -> None:
        self.repo = repo
        self.path = repo.git_dir / "janus" / "index.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA mmap_size=268435456")  # reads straight from the page cache
        db.executescript(_DDL)
        return db

    def _meta(self, db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def sync(self, head: str | None = None) -> sqlite3.Connection:
        """Bring the index to HEAD (or HEAD given) and return an open connection."""
        head = head or self.repo.fast_head()  # a file read, not a git process
        try:
            db = self._connect()
            if self._meta(db, "version") != SCHEMA_VERSION:
                raise sqlite3.DatabaseError("old index format")
        except sqlite3.DatabaseError:
            self.path.unlink(missing_ok=True)
            db = self._connect()
        seen = self._meta(db, "head")
        if head is None or seen == head:
            return db
        if seen and self.repo.run("cat-file", "-t", seen, check=False).strip() == "commit":
            self._apply_diff(db, seen, head)
        else:
            self._rebuild(db, head)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)", (head,))
        return db

    def rebuild(self) -> int:
        db = self._connect()
        head = self.repo.head()
        if head:
            self._rebuild(db, head)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)", (head,))
        return db.execute("SELECT count(*) FROM proposals").fetchone()[0]

    def _rebuild(self, db: sqlite3.Connection, head: str) -> None:
        out = self.repo.run("ls-tree", "-r", "-z", head, "--", PROPOSALS_DIR)
        entries = []
        for item in out.split("\0"):
            if not item:
                continue
            meta, path = item.split("\t", 1)
            if is_proposal_path(path):
                entries.append((path, meta.split()[2]))
        rows = _rows_in_two(self.repo, entries)
        db.execute("BEGIN")
        db.execute("DELETE FROM proposals")
        db.executemany(f"INSERT INTO proposals VALUES ({','.join('?' * 14)})", rows)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (SCHEMA_VERSION,))
        db.execute("COMMIT")

    def _apply_diff(self, db: sqlite3.Connection, old: str, new: str) -> None:
        out = self.repo.run("diff-tree", "-r", "-z", "--no-renames", old, new, "--",
                            PROPOSALS_DIR)
        fields = [f for f in out.split("\0") if f]
        changed, deleted = [], []
        for i in range(0, len(fields) - 1, 2):
            meta, path = fields[i].split(), fields[i + 1]
            if not is_proposal_path(path):
                continue
            (deleted if meta[4] == "D" else changed).append((path, meta[3]))
        if len(changed) > 20:
            texts = read_blobs(self.repo, [b for _, b in changed])
        else:  # a few files: the persistent cat-file process beats starting a new one
            texts = [self._blob(b) for _, b in changed]
        db.execute("BEGIN")
        db.executemany("DELETE FROM proposals WHERE path=?", [(p,) for p, _ in deleted])
        db.executemany(f"INSERT OR REPLACE INTO proposals VALUES ({','.join('?' * 14)})",
                       [row_for(p, b, t) for (p, b), t in zip(changed, texts)])
        db.execute("COMMIT")

    def _blob(self, sha: str) -> bytes:
        try:
            return self.repo._git.get_object_data(sha)[3]
        except (ValueError, OSError):
            return b""

    def query(self, *, status: Iterable[str] = (), mission: str | None = None,
              tool: str | None = None, type_: str | None = None, since: str | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self.query_json(status=status, mission=mission,
                                                       tool=tool, type_=type_, since=since,
                                                       limit=limit)]

    def query_json(self, *, status: Iterable[str] = (), mission: str | None = None,
                   tool: str | None = None, type_: str | None = None,
                   since: str | None = None, limit: int | None = None,
                   raw: bool = False, joined: bool = False) -> list[Any] | bytes:
        """Rows as stored JSON strings (the fast path for `list --json`); RAW gives UTF-8
        bytes, to be written as they are (no decode and re-encode of 40 MB at 100k rows);
        JOINED gives one JSON array as bytes, concatenated inside sqlite (no 100k objects)."""
        where, params = [], []
        status = list(status)
        if status:
            where.append(f"status IN ({','.join('?' * len(status))})")
            params += status
        for col, val in (("mission", mission), ("tool", tool), ("type", type_)):
            if val:
                where.append(f"{col} = ?")
                params.append(val)
        if since:
            where.append("created_at >= ?")
            params.append(since)
        sql = "SELECT row_json FROM proposals"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        db = self.sync()
        if raw:
            db.text_factory = bytes
        try:
            if joined:
                sql = f"SELECT CAST(group_concat(row_json, ',\n') AS BLOB) FROM ({sql})"
                body = db.execute(sql, params).fetchone()[0] or b""
                return b"[" + bytes(body) + b"]\n"
            return [r[0] for r in db.execute(sql, params)]
        finally:
            db.close()

    def all_json(self) -> bytes:
        """`list --json` with no filter: kept as one file per HEAD under .git/janus/, so a
        warm call reads 40 MB (at 100k rows) instead of querying; rebuilt on first use after
        HEAD moves.  Derived like the index: delete it and nothing is lost."""
        head = self.repo.fast_head() or ""
        cache, tag = self.path.parent / "list.json", self.path.parent / "list.json.head"
        want = f"{SCHEMA_VERSION} {head}"
        try:
            if tag.read_text() == want:
                return cache.read_bytes()
        except FileNotFoundError:
            pass
        data = self.query_json(raw=True, joined=True)
        atomic_write(cache, data)
        atomic_write(tag, want.encode())
        return data

    def counts(self) -> dict[str, int]:
        db = self.sync()
        try:
            return dict(db.execute("SELECT status, count(*) FROM proposals GROUP BY status"))
        finally:
            db.close()


def index_path(root: Path) -> Path:
    return root / ".git" / "janus" / "index.sqlite"
