"""Proposal hygiene: deduplicate -> reject -> archive, each pass a lifecycle transition.

What counts as a duplicate comes from novelty.py (the novelty digests the derived index keeps);
this module plans the transitions due and commits them, one commit each or, for bulk cleansing,
in batches.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from . import lifecycle
from .config import Config
from .errors import ConfigError
from .gitrepo import GitRepo, read_blobs
from .novelty import (
    BLOB,
    CREATED,
    ID,
    MISSION,
    NOV,
    STATUS,
    TOOL,
    NoveltyIndex,
    parse_timestamp,
    timestamp,
)
from .proposal import LIVE, Proposal, Status, parse_proposal
from .store import PROPOSALS_DIR

# more actions than this go into batch commits instead of one commit per transition
BATCH_THRESHOLD = 25
BATCH_SIZE = 10000  # one commit for a typical cleansing; argv stays < 1 MB
TRAILER_HYGIENE = "Janus-Hygiene"


@dataclass
class Action(lifecycle.Move):
    blob: str = ""  # the file's blob at the indexed HEAD


def plan(rows: Iterable[tuple[str, Sequence[Any]]], config: Config, done_missions: set[str],
         forgotten: dict[str, str], now: dt.datetime) -> list[Action]:
    """Pure: the hygiene actions due for ROWS ((path, row) pairs), oldest first."""
    window = config["hygiene"]["novelty_window_days"] * 86400
    archive_before = timestamp(now) - config["hygiene"]["archive_after_days"] * 86400
    tools = set(config.tools)
    originals: dict[str, tuple[str, str]] = {}  # novelty -> (first live id, its created_at)
    actions = []
    for path, row in sorted(rows, key=lambda pr: pr[1][ID]):
        if row[STATUS] != Status.PROPOSED:
            if row[STATUS] in LIVE:
                originals.setdefault(row[NOV], (row[ID], row[CREATED]))
            continue
        action = _judge(row, path, tools, done_missions, forgotten, originals, window,
                        archive_before)
        if action:
            action.blob = row[BLOB]
            actions.append(action)
        else:
            originals.setdefault(row[NOV], (row[ID], row[CREATED]))
    return actions


def _judge(row, path, tools, done_missions, forgotten, originals, window,
           archive_before) -> Action | None:
    if row[TOOL] not in tools:
        return Action(row[ID], path, Status.REJECTED,
                      f"tool {row[TOOL]!r} is no longer in the registry (state/agent.yaml)")
    if row[MISSION] in done_missions:
        return Action(row[ID], path, Status.REJECTED, f"mission {row[MISSION]} is done")
    if row[NOV] in forgotten:
        return Action(row[ID], path, Status.DUPLICATE, "the same proposal's creation was "
                      "reverted; it is not proposed again", forgotten[row[NOV]])
    first = originals.get(row[NOV])
    # dates are parsed only where needed: 100,000 parses cost ~1 s
    created = parse_timestamp(row[CREATED])
    if first and created - parse_timestamp(first[1]) <= window:
        return Action(row[ID], path, Status.DUPLICATE, f"same as {first[0]} (normalised "
                      "type, tool and args, inside the novelty window)", first[0])
    if created < archive_before:
        return Action(row[ID], path, Status.ARCHIVED, "not run before archive_after_days")
    return None


def _done_missions(repo: GitRepo) -> set[str]:
    from .missions import load_missions
    return {m.id for m in load_missions(repo, on_error=lambda e: None) if m.status == "done"}


def hygiene(repo: GitRepo, config: Config, dry_run: bool = False, *,
            now: dt.datetime | None = None, reindex: bool = False) -> dict[str, Any]:
    """Deduplicate, reject and archive proposed proposals; returns counts (and, in a dry run,
    the actions it would take)."""
    index = NoveltyIndex(repo)
    try:
        index.rebuild() if reindex else index.sync()
        now = now or dt.datetime.now(dt.timezone.utc)
        actions = plan(index.live_rows(), config, _done_missions(repo), index.forgotten, now)
        scanned = index.count()
    finally:
        index.close()
    counts: dict[str, Any] = {"scanned": scanned, "duplicate": 0, "archived": 0,
                              "rejected": 0, "commits": 0}
    for a in actions:
        counts[a.new.value] += 1
    if dry_run:
        return counts
    if len(actions) <= BATCH_THRESHOLD:
        counts["commits"] = _apply_each(repo, config, actions)
    else:
        counts["commits"] = _apply_batched(repo, config, actions)
    return counts


def _load(repo: GitRepo, a: Action) -> tuple[Proposal, bytes] | None:
    text = repo.read_blob("HEAD", a.path)
    if text is None:
        return None
    try:
        p = parse_proposal(text, a.path)
    except ConfigError:
        return None  # broken since the index read it: the daemon reports it
    return (p, text) if p.status == Status.PROPOSED else None


def _mark(a: Action):
    def update(p: Proposal) -> None:
        if a.duplicate_of:
            p.duplicate_of = a.duplicate_of
    return update


def _apply_each(repo: GitRepo, config: Config, actions: list[Action]) -> int:
    commits = 0
    for a in actions:
        loaded = _load(repo, a)
        if loaded:
            lifecycle.transition(repo, loaded[0], a.new, config.identity, reason=a.reason,
                                 base_text=loaded[1], update=_mark(a))
            commits += 1
    return commits


def _apply_batched(repo: GitRepo, config: Config, actions: list[Action]) -> int:
    """Bulk cleansing (thousands of legacy proposals): one commit per BATCH_SIZE transitions
    through lifecycle.transition_many, with a Janus-Hygiene trailer instead of the
    per-proposal trailers."""
    commits = 0
    texts = dict(zip([a.path for a in actions],
                     read_blobs(repo, [a.blob for a in actions]) if all(a.blob for a in actions)
                     else _read_head_blobs(repo, [a.path for a in actions]), strict=True))
    for start in range(0, len(actions), BATCH_SIZE):
        batch = actions[start:start + BATCH_SIZE]
        sha, _ = lifecycle.transition_many(
            repo, [(a, texts.get(a.path) or b"") for a in batch], config.identity,
            subject="janus: hygiene: {n} proposals cleansed",
            trailers={TRAILER_HYGIENE: "batch of {n}"})
        commits += sha is not None
    return commits


def edited(text: bytes, a: Action) -> bytes | None:
    """TEXT moved by A (None when it is no longer a readable proposed proposal)."""
    return lifecycle.moved_text(text, a)


def _read_head_blobs(repo: GitRepo, paths: list[str]) -> list[bytes]:
    if not paths:
        return []
    blobs = repo.ls_tree_blobs("HEAD", paths, recursive=False) if len(paths) < 500 else \
        repo.ls_tree_blobs("HEAD", [PROPOSALS_DIR])
    wanted = [blobs.get(p) for p in paths]
    found = read_blobs(repo, [b for b in wanted if b])
    it = iter(found)
    return [next(it) if b else b"" for b in wanted]
