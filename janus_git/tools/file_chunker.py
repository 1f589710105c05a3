"""The `file_chunker` tool: one 5,000-line chunk of a document committed in the repository.

Args: ``{"path": "docs/x.txt", "chunk": 1}``.  The output is a header line ``chunk N of M:
PATH lines A-B of L`` and the chunk's text, truncated at ``output_kb`` with the same marker as
sandboxed runs.  It runs in-process (reading a file needs no child), so it reads no file at
all: the content is the blob PATH names in HEAD's tree (blobs.py), a regular file reached
through folders only.  Absolute paths, ``..``, ``.git``, a symlink anywhere on the way (even
one to a file beside it), a submodule and a file HEAD does not have are refused with the
reason; what the working tree holds meanwhile (a FIFO, a symlink swapped in) is never opened.
It streams: a 1 GB single-line file costs at most ``output_kb`` of memory.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..util import utcnow
from . import RunResult, ToolRefused, path_problem
from .blobs import blob_id, check_worktree, open_blob

CHUNK_LINES = 5000
BLOCK = 1 << 20


def chunk_args(proposal: Any, tool: str = "file_chunker") -> tuple[str, int]:
    """(path, chunk) from args {path, chunk}: shared by every tool that reads one chunk."""
    a = proposal.args
    if not isinstance(a, dict):
        raise ToolRefused(f"{tool}: args must be a mapping like {{path: docs/x.txt, chunk: 1}}")
    unknown = sorted(set(a) - {"path", "chunk"})
    if unknown:
        raise ToolRefused(f"{tool}: unknown argument {unknown[0]!r} (known: path, chunk)")
    path, chunk = a.get("path"), a.get("chunk", 1)
    if not isinstance(path, str) or not path.strip():
        raise ToolRefused(f"{tool}: path must be a file in the repository, e.g. docs/x.txt")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ToolRefused(f"{tool}: chunk must be a whole number from 1, got {chunk!r}")
    return path.strip(), chunk


def check_chunk_file(proposal: Any, root: Path, tool: str = "file_chunker") -> None:
    """Static (tools.check): the working tree's view; the run asks HEAD's tree again."""
    path, _ = chunk_args(proposal, tool)
    problem = path_problem(root, path)
    if problem:
        raise ToolRefused(f"{tool}: {problem}")
    check_worktree(Path(root), path, tool)


def check(proposal: Any, config: Any, root: Path) -> None:
    check_chunk_file(proposal, root)


def committed_blob(root: Path, path: str, tool: str = "file_chunker") -> str:
    """The blob id of PATH in HEAD's tree, after the same path rules as the check."""
    problem = path_problem(root, path)
    if problem:
        raise ToolRefused(f"{tool}: {problem}")
    return blob_id(Path(root), path, tool)


class _Stopped(Exception):
    pass


def read_chunk(fd: int, chunk: int, keep: int, deadline: float, cancel=None
               ) -> tuple[bytes, int, int]:
    """(kept bytes of the chunk, its full size, total lines in the file)."""
    start, stop = (chunk - 1) * CHUNK_LINES, chunk * CHUNK_LINES
    line = size = 0
    kept = bytearray()
    last = b"\n"
    while True:
        block = os.read(fd, BLOCK)
        if not block:
            break
        if cancel is not None and cancel.is_set():
            raise _Stopped("cancelled")
        if time.monotonic() > deadline:
            raise _Stopped("timeout")
        last = block[-1:]
        n = block.count(b"\n")
        if line + n < start or line >= stop:  # nothing of the chunk in this block
            line += n
            continue
        pos = 0
        while pos < len(block) and line < stop:
            nl = block.find(b"\n", pos)
            end = len(block) if nl == -1 else nl + 1
            if line >= start:
                piece = block[pos:end]
                size += len(piece)
                kept += piece[:max(0, keep - len(kept))]
            if nl == -1:
                break
            line, pos = line + 1, end
        if pos < len(block) and line >= stop:
            line += block.count(b"\n", pos)
    total = line + (0 if last == b"\n" else 1)
    return bytes(kept), size, total


def execute(proposal: Any, config: Any, root: Path, *, cancel=None, on_start=None,
            context=None, isolation: str | None = None) -> RunResult:
    path, chunk = chunk_args(proposal)
    limits = dict(config.tool_limits(proposal.tool))
    keep = limits["output_kb"] * 1024
    started, t0, c0 = utcnow(), time.monotonic(), time.thread_time()
    if on_start is not None:
        on_start(os.getpid())
    oid = committed_blob(root, path)
    limit, error, out, size = None, "", b"", 0
    try:
        with open_blob(Path(root), oid) as fd:
            body, size, total = read_chunk(fd, chunk, keep, t0 + limits["timeout_s"], cancel)
        chunks = max(1, -(-total // CHUNK_LINES))
        if chunk > chunks:
            error = f"chunk {chunk} of {chunks} does not exist ({path} has {total} lines)"
        else:
            first, last = (chunk - 1) * CHUNK_LINES + 1, min(chunk * CHUNK_LINES, total)
            out = f"chunk {chunk} of {chunks}: {path} lines {first}-{last} of {total}\n".encode()
            out += body
            if size > len(body):
                out += (f"\n[janus-git: output truncated at {keep // 1024} KiB; "
                        f"{size - len(body)} bytes dropped]\n").encode()
    except _Stopped as e:
        limit = str(e)
        error = "cancelled" if limit == "cancelled" else \
            f"killed: timeout after {limits['timeout_s']} s"
    wall = time.monotonic() - t0
    return RunResult(
        status="failed" if error else "succeeded", exit_code=None if error else 0,
        limit_hit=limit, isolation="in-process",
        resources={"cpu_seconds": round(time.thread_time() - c0, 3), "cpu_peak_percent": 0.0,
                   "peak_rss_mb": round(len(out) / 2**20, 3), "bytes_written": 0,
                   "wall_seconds": round(wall, 3)},
        output=out, files={}, argv=["file_chunker", path, str(chunk)], limits=limits,
        started_at=started, ended_at=utcnow(), error=error, output_bytes=size)
