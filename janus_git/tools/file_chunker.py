"""The `file_chunker` tool: one 5,000-line chunk of a document in the repository.

Args: ``{"path": "docs/x.txt", "chunk": 1}``.  The output is a header line ``chunk N of M:
PATH lines A-B of L`` and the chunk's text, truncated at ``output_kb`` with the same marker as
sandboxed runs.  It runs in-process (reading a file needs no child) and stays inside the
repository: no absolute paths, no ``..``, no ``.git``, no symlink that resolves outside, and
the file is opened component by component with O_NOFOLLOW after resolving, so a symlink
swapped in meanwhile fails instead of being followed.  Only regular files are read (a FIFO
would block, a device never ends).  It streams in 1 MiB blocks: a 1 GB single-line file costs
at most ``output_kb`` of memory.
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

from ..util import utcnow
from . import RunResult, ToolRefused, path_problem

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
    path, _ = chunk_args(proposal, tool)
    problem = path_problem(root, path)
    if problem:
        raise ToolRefused(f"{tool}: {problem}")
    if not (Path(root) / path).is_file():
        raise ToolRefused(f"{tool}: {path!r} is not a file in the repository")


def check(proposal: Any, config: Any, root: Path) -> None:
    check_chunk_file(proposal, root)


def open_confined(root: Path, rel: str) -> int:
    """A read fd for REL inside ROOT, refusing anything but a regular file reached without
    symlinks once the path is resolved."""
    problem = path_problem(root, rel)
    if problem:
        raise ToolRefused(f"file_chunker: {problem}")
    real_root = os.path.realpath(root)
    parts = os.path.relpath(os.path.realpath(os.path.join(real_root, rel)), real_root).split(os.sep)
    fd = os.open(real_root, os.O_PATH | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        f = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    dir_fd=fd)
    except OSError as e:
        raise ToolRefused(f"file_chunker: cannot open {rel!r} safely: {e.strerror}") from None
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(f).st_mode):
        os.close(f)
        raise ToolRefused(f"file_chunker: {rel!r} is not a regular file")
    return f


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
    fd = open_confined(root, path)
    limit, error, out, size = None, "", b"", 0
    try:
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
    finally:
        os.close(fd)
    wall = time.monotonic() - t0
    return RunResult(
        status="failed" if error else "succeeded", exit_code=None if error else 0,
        limit_hit=limit, isolation="in-process",
        resources={"cpu_seconds": round(time.thread_time() - c0, 3), "cpu_peak_percent": 0.0,
                   "peak_rss_mb": round(len(out) / 2**20, 3), "bytes_written": 0,
                   "wall_seconds": round(wall, 3)},
        output=out, files={}, argv=["file_chunker", path, str(chunk)], limits=limits,
        started_at=started, ended_at=utcnow(), error=error, output_bytes=size)
