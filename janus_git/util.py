"""Small helpers with no dependency on the rest of janus-git (the sandbox imports them too): the
one atomic file write, the one UTC timestamp, and Signal."""
from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def utcnow() -> str:
    """Now in UTC, as every record janus-git writes spells it: 2026-11-26T15:12:00.123456Z."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def atomic_write(path: Path, data: bytes, *, make_parents: bool = True) -> None:
    """Write DATA to PATH so that a reader sees the old content or the new, never a part.

    The temporary file is unique (two writers never share one) and lives beside PATH (the
    rename stays on one file system); it is removed if the write fails.  MAKE_PARENTS=False
    for state files of a repository that may have been removed meanwhile: then the missing
    folder is a FileNotFoundError for the caller, not a folder recreated in its place."""
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class Signal:
    """Listeners of one event of one owner (huey's Signal, per instance: two daemons in one
    process never hear each other's).  A listener that raises is logged and never breaks
    the sender or the listeners after it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._listeners: list[Callable[..., Any]] = []

    def connect(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        self._listeners.append(fn)
        return fn

    def disconnect(self, fn: Callable[..., Any]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def send(self, *args: Any) -> None:
        for fn in list(self._listeners):
            try:
                fn(*args)
            except Exception:
                logging.getLogger(__name__).exception("a %s listener failed", self.name)
