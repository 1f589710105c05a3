"""Small helpers with no dependency on the rest of janus-git (the sandbox imports them too): the
one atomic file write and the one UTC timestamp."""
from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path


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
