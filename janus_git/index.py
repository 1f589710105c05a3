"""The derived index of proposals (sqlite under .git/janus/), never committed: the one
`list`, the daemon, hygiene and the planner read.

The files in git are the truth: the index records the commit it reflects and catches up with
`git diff-tree` when HEAD moves, or rebuilds itself from `git ls-tree` when missing or broken.
A row holds the columns the field table names (proposal.FIELDS), the novelty digest of the
proposal's type, tool and args, and the row as `list --json` prints it; a second table keeps
the novelty digests of proposals whose file was deleted (novelty.py asks about both).
"""
from __future__ import annotations

import json
import operator
import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any, Iterable

from . import proposal
from .errors import ConfigError
from .gitrepo import GitRepo, read_blobs
from .proposal import Proposal, novelty_digest, parse_proposal
from .store import PROPOSALS_DIR, check_placement, id_from_path, is_proposal_path
from .util import atomic_write

FORMAT = "4"  # of the tables below; the columns' names are part of the version too
_INDEXES = (("by_status", "status"), ("by_created", "created_at"), ("by_id", "id"),
            ("by_novelty", "novelty"))
_SCALARS = (str, int, float, bool, type(None))


def row_columns() -> tuple[str, ...]:
    """The keys of an index row, in order: the field table's columns, the file's path
    (second) and the error of a broken file (last)."""
    return _layout().names


class _Layout:
    """The index row as the field table in force lays it out (a test may extend the table)."""

    def __init__(self, table: dict[str, proposal.FieldSpec]) -> None:
        placed = {name: s.column for name, s in table.items() if s.column is not None}
        placed["path"] = 1
        self.table = table
        self.names = (*sorted(placed, key=lambda name: placed[name]), "error")
        self.fields = [n for n in self.names if n not in ("path", "error")]
        self.values = operator.attrgetter(*self.fields)
        self.path_at = self.names.index("path")
        self.status_at = self.names.index("status")
        # a column that may hold a list or mapping is stored in sqlite as JSON
        self.plain = all(set(table[n].types) <= set(_SCALARS) for n in self.fields)


def _layout() -> _Layout:
    global _layout_memo
    if _layout_memo is None or _layout_memo.table is not proposal.FIELDS:
        _layout_memo = _Layout(proposal.FIELDS)
    return _layout_memo


_layout_memo: _Layout | None = None


def columns(p: Proposal, path: str) -> dict[str, Any]:
    """The index row of P (what `list --json` prints), the same whichever reader parsed it."""
    return dict(zip(_layout().names, _values(p, path), strict=True))


def fast_columns(path: str, text: bytes) -> dict[str, Any] | None:
    """The index row of TEXT by fastrow's fast path, or None (the slow path reads it then)."""
    from .fastrow import fast_proposal
    p = fast_proposal(path, text)
    return None if p is None else columns(p, path)


def _values(p: Proposal, path: str) -> list[Any]:
    layout = _layout()
    values = list(layout.values(p)) if len(layout.fields) > 1 else [layout.values(p)]
    values.insert(layout.path_at, path)
    values.append(None)  # error
    values[layout.status_at] = p.status.value
    return values


def row_for(path: str, blob: str, text: bytes) -> tuple:
    """One index row: the columns, the novelty digest and the row as JSON; a broken file
    becomes a row with status 'invalid', the error, and no novelty digest."""
    # imported here, not with the module: `list` on a current index parses nothing
    from .fastrow import fast_proposal
    layout = _layout()
    try:
        check_placement(path)
        # the files janus-git writes are read several times faster without PyYAML; anything
        # else, and every broken file, goes the slow way (which writes the exact error)
        p = fast_proposal(path, text) or parse_proposal(text, path)
        values = _values(p, path)
        row = dict(zip(layout.names, values, strict=True))
        nov = novelty_digest(p.type, p.tool, p.args)
    except ConfigError as e:
        row = dict.fromkeys(layout.names)
        row.update(id=id_from_path(path), path=path, status="invalid", error=str(e))
        values, nov = list(row.values()), None
    del values[layout.path_at]
    if not layout.plain:
        values = [_sql(v) for v in values]
    return (path, blob, *values, nov, _row_json(row))


_row_json = json.JSONEncoder(ensure_ascii=False).encode


def _sql(value: Any) -> Any:
    """A column value sqlite can hold: a str (or number) as it is, anything else as JSON."""
    return value if isinstance(value, _SCALARS) else _row_json(value)


PARALLEL_MIN = 4000  # below this a second process costs more than it saves


def _rows(repo: GitRepo, entries: list[tuple[str, str]]) -> list[tuple]:
    texts = read_blobs(repo, [blob for _, blob in entries])
    return [row_for(path, blob, text) for (path, blob), text in zip(entries, texts, strict=True)]


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

    from . import fastrow  # noqa: F401  (imported before the fork, not in each process)
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
    """The proposals at HEAD, one row each, and the novelty digests of deleted ones (see
    novelty.py, which asks the questions).  One sync: a diff-tree catch-up when HEAD moved,
    a rebuild from ls-tree when the index is missing, broken, of another format or its commit
    is gone."""

    def __init__(self, repo: GitRepo) -> None:
        self.repo = repo
        self.path = repo.git_dir / "janus" / "index.sqlite"

    @property
    def columns(self) -> tuple[str, ...]:
        return row_columns()

    @property
    def version(self) -> str:
        """The format and the columns: an index made with other columns is rebuilt."""
        return f"{FORMAT} {','.join(self.columns)}"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA mmap_size=268435456")  # reads straight from the page cache
        db.executescript(self._ddl())
        return db

    def _ddl(self) -> str:
        cols = ", ".join(f'"{c}" TEXT' for c in self.columns if c != "path")
        return f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS proposals (
  path TEXT PRIMARY KEY, blob TEXT, {cols}, novelty TEXT, row_json TEXT);
CREATE TABLE IF NOT EXISTS forgotten (novelty TEXT PRIMARY KEY, id TEXT);
""" + "".join(f"CREATE INDEX IF NOT EXISTS {name} ON proposals({column});\n"
              for name, column in _INDEXES)

    def _insert(self, verb: str = "INSERT") -> str:
        return f"{verb} INTO proposals VALUES ({','.join('?' * (len(self.columns) + 3))})"

    def _meta(self, db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def sync(self, head: str | None = None) -> sqlite3.Connection:
        """Bring the index to HEAD (or HEAD given) and return an open connection."""
        head = head or self.repo.fast_head()  # a file read, not a git process
        db = self._open()
        seen = self._meta(db, "head")
        if head is None or seen == head:
            return db
        if seen and self.repo.object_type(seen) == "commit":
            self._apply_diff(db, seen, head)
        else:
            self._rebuild(db, head)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)", (head,))
        return db

    def _open(self) -> sqlite3.Connection:
        """A connection to an index of this version: a broken one, or one of another
        version, is removed first (its WAL too: replayed into a new file it would corrupt
        it)."""
        try:
            db = self._connect()
            if self._meta(db, "version") == self.version or self._empty(db):
                return db
            db.close()
        except sqlite3.DatabaseError:
            pass
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        return self._connect()

    @staticmethod
    def _empty(db: sqlite3.Connection) -> bool:
        return db.execute("SELECT count(*) FROM meta").fetchone()[0] == 0

    def rebuild(self) -> int:
        db = self._open()
        try:
            head = self.repo.head()
            if head:
                self._rebuild(db, head)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)", (head,))
            return db.execute("SELECT count(*) FROM proposals").fetchone()[0]
        finally:
            db.close()

    def _rebuild(self, db: sqlite3.Connection, head: str) -> None:
        entries = [(path, blob) for path, blob
                   in self.repo.ls_tree_blobs(head, [PROPOSALS_DIR]).items()
                   if is_proposal_path(path)]
        rows = _rows_in_two(self.repo, entries)
        db.execute("BEGIN")
        db.execute("DELETE FROM proposals")
        db.execute("DELETE FROM forgotten")
        for name, _ in _INDEXES:  # built once after the rows, not grown row by row
            db.execute(f"DROP INDEX IF EXISTS {name}")
        db.executemany(self._insert(), rows)
        for name, column in _INDEXES:
            db.execute(f"CREATE INDEX {name} ON proposals({column})")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (self.version,))
        # which deleted files history holds is read when first asked (deleted_scan): a
        # `git log` over all history costs seconds that `list` need not wait for
        db.execute("INSERT OR REPLACE INTO meta VALUES ('deleted_scan', 'pending')")
        db.execute("COMMIT")
        # the novelty index of earlier versions lived beside this one
        (self.path.parent / "novelty.marshal").unlink(missing_ok=True)

    def _apply_diff(self, db: sqlite3.Connection, old: str, new: str) -> None:
        changed: list[tuple[str, str]] = []
        deleted: list[tuple[str, str]] = []
        for letter, path, blob in self.repo.diff_tree(old, new, PROPOSALS_DIR):
            if is_proposal_path(path):
                (deleted if letter == "D" else changed).append((path, blob))
        if len(changed) > 20:
            texts = read_blobs(self.repo, [b for _, b in changed])
        else:  # a few files: the persistent cat-file process beats starting a new one
            texts = [self._blob(b) for _, b in changed]
        gone = [(p,) for p, _ in deleted]
        db.execute("BEGIN")
        # a deleted proposal (its creation reverted) is remembered, never proposed again
        db.executemany("INSERT OR REPLACE INTO forgotten SELECT novelty, id FROM proposals "
                       "WHERE path=? AND novelty IS NOT NULL", gone)
        db.executemany("DELETE FROM proposals WHERE path=?", gone)
        db.executemany(self._insert("INSERT OR REPLACE"),
                       [row_for(p, b, t) for (p, b), t in zip(changed, texts, strict=True)])
        db.execute("COMMIT")

    def _blob(self, sha: str) -> bytes:
        return self.repo.read_object(sha) or b""

    # -- the deleted proposals (for novelty.py) ------------------------------------------
    def forget(self, db: sqlite3.Connection, digest: str, pid: str) -> None:
        db.execute("INSERT OR REPLACE INTO forgotten VALUES (?, ?)", (digest, pid))

    def scan_deleted(self, db: sqlite3.Connection, force: bool = False) -> None:
        """Remember every proposal file HEAD's history deleted, once after each rebuild."""
        if not force and self._meta(db, "deleted_scan") != "pending":
            return
        head = self._meta(db, "head")
        found = self._deleted(db, head) if head else []
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO forgotten VALUES (?, ?)", found)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('deleted_scan', 'done')")
        db.execute("COMMIT")

    def _deleted(self, db: sqlite3.Connection, head: str) -> list[tuple[str, str]]:
        """(novelty digest, id) of each proposal file deleted in HEAD's history and not there
        now, the latest deletion first."""
        found = []
        for parent, paths in self.repo.deletions(head, PROPOSALS_DIR):
            for path in paths:
                if not is_proposal_path(path):
                    continue
                if db.execute("SELECT 1 FROM proposals WHERE path=?", (path,)).fetchone():
                    continue  # deleted once, restored since
                text = self.repo.read_blob(parent, path)
                row = row_for(path, "", text) if text else None
                if row and row[-2]:
                    found.append((row[-2], row[2]))  # (novelty, id)
        return found

    def query(self, *, status: Iterable[str] = (), mission: str | None = None,
              tool: str | None = None, type_: str | None = None, since: str | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
        rows = self.query_json(status=status, mission=mission, tool=tool, type_=type_,
                               since=since, limit=limit)
        assert isinstance(rows, list)
        return [json.loads(r) for r in rows]

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
        want = f"{self.version} {head}"
        try:
            if tag.read_text() == want:
                return cache.read_bytes()
        except FileNotFoundError:
            pass
        data = self.query_json(raw=True, joined=True)
        assert isinstance(data, bytes)
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
