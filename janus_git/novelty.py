"""Novelty: is a proposal new, or the same work as one filed in the window, or as one whose
creation was reverted?

The data lives in the derived index (index.py): each proposal's row carries the normalised
digest of its type, tool and args (proposal.novelty_digest), and a table remembers the digests
of proposals whose file was deleted (a reverted creation), which only history knows.  One sync
brings both to HEAD.  This module asks the questions; hygiene and the planner use it.
"""
from __future__ import annotations

import datetime as dt
import sqlite3

from .config import Config
from .gitrepo import GitRepo
from .index import Index
from .proposal import LIVE, Proposal, novelty_digest

# a row (a tuple): id, novelty digest, status, mission, tool, type, created_at, blob
ID, NOV, STATUS, MISSION, TOOL, TYPE, CREATED, BLOB = range(8)
_ROWS = ("SELECT path, id, novelty, status, mission, tool, type, created_at, blob "
         "FROM proposals WHERE novelty IS NOT NULL")
_LIVE = tuple(sorted(s.value for s in LIVE))


class NoveltyIndex:
    """The novelty view of the index at the HEAD of its last sync().  ROWS (path -> row, valid
    proposals only) and FORGOTTEN (novelty digest -> id of the deleted one) are read on first
    use; original_of asks the index for the few rows it needs, never loads ROWS."""

    def __init__(self, repo: GitRepo) -> None:
        self.repo = repo
        self.index = Index(repo)
        self._db: sqlite3.Connection | None = None
        self._rows: dict[str, tuple] | None = None
        self._forgotten: dict[str, str] | None = None

    def sync(self) -> "NoveltyIndex":
        self.close()
        self._db = self.index.sync()
        return self

    def rebuild(self) -> "NoveltyIndex":
        """From scratch: every proposal at HEAD, and every proposal file ever deleted."""
        self.index.rebuild()
        self.sync()
        self.index.scan_deleted(self.db, force=True)
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db, self._rows, self._forgotten = None, None, None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.sync()
        assert self._db is not None
        return self._db

    @property
    def head(self) -> str | None:
        return self.index._meta(self.db, "head")

    @property
    def rows(self) -> dict[str, tuple]:
        if self._rows is None:
            self._rows = {r[0]: r[1:] for r in self.db.execute(_ROWS)}
        return self._rows

    def live_rows(self) -> list[tuple[str, tuple]]:
        """(path, row) of the proposals in a LIVE status, the only ones hygiene judges or
        compares with (ROWS without the rejected, duplicate and archived ones)."""
        return [(r[0], r[1:]) for r in self.db.execute(
            f"{_ROWS} AND status IN ({','.join('?' * len(_LIVE))})", _LIVE)]

    def count(self) -> int:
        """How many valid proposals the index holds."""
        return self.db.execute("SELECT count(*) FROM proposals WHERE novelty IS NOT NULL"
                               ).fetchone()[0]

    @property
    def forgotten(self) -> dict[str, str]:
        if self._forgotten is None:
            self.index.scan_deleted(self.db)
            self._forgotten = dict(self.db.execute("SELECT novelty, id FROM forgotten"))
        return self._forgotten

    def remember(self, p: Proposal) -> None:
        digest = novelty_digest(p.type, p.tool, p.args)
        self.index.forget(self.db, digest, p.id)
        if self._forgotten is not None:
            self._forgotten[digest] = p.id

    def original_of(self, p: Proposal, window_days: float,
                    now: dt.datetime | None = None) -> tuple[str, str] | None:
        """(id, why) of what makes P not novel, or None: a live proposal with the same
        normalised digest filed within the window, or a deleted (reverted) one."""
        digest = novelty_digest(p.type, p.tool, p.args)
        gone = self.forgotten.get(digest)
        if gone:
            return gone, "its creation was reverted"
        cutoff = timestamp(now or dt.datetime.now(dt.timezone.utc)) - window_days * 86400
        same = self.db.execute(
            f"SELECT id, created_at FROM proposals WHERE novelty=? AND id != ? AND status IN "
            f"({','.join('?' * len(_LIVE))}) ORDER BY id", (digest, p.id, *_LIVE))
        best = next((pid for pid, created in same if parse_timestamp(created) >= cutoff), None)
        return (best, "the same proposal was filed in the novelty window") if best else None


def parse_timestamp(value: str) -> float:
    try:
        return timestamp(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    except (ValueError, AttributeError):
        return 0.0  # an unreadable date counts as very old


def timestamp(d: dt.datetime) -> float:
    return d.timestamp() if d.tzinfo else d.replace(tzinfo=dt.timezone.utc).timestamp()


def remember_deleted(repo: GitRepo, p: Proposal) -> None:
    """A proposal file was deleted (its creation reverted): never propose it again."""
    index = NoveltyIndex(repo).sync()
    try:
        index.remember(p)
    finally:
        index.close()


def reindex(repo: GitRepo, config: Config | None = None) -> int:
    """Rebuild the index (and what it remembers of deleted proposals) from git; returns how
    many valid proposals it holds."""
    index = NoveltyIndex(repo).rebuild()
    try:
        return index.count()
    finally:
        index.close()
