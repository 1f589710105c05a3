"""What a tool that runs inside the daemon may read: a file of HEAD's tree, as git stores it.

An in-process tool (file_chunker, process_chunk) has the daemon's rights: opening the working
tree, it could be led by a committed symlink (`notes/g -> ../.git`) to .git/config and a forge
token in a remote URL, to the agent's key, or to a name no check ever saw.  So it never opens
the working tree.  The path must name a regular file (mode 100644 or 100755) in HEAD's tree,
reached through trees only; a symlink anywhere on the way, a submodule, a folder, a name under
.git or one HEAD does not have is refused with the reason.  Trees and the blob are read as
objects by the git layer (gitrepo/objects.py): no filter or textconv a pushed .gitattributes
could name applies, a pushed refs/replace/ swaps nothing, and a name is a name (no pathspec
magic).

check_worktree() is the cheap, static twin for tools.check (no subprocess): the same refusals
read from the working tree with lstat, which never follows a link.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import threading
from pathlib import Path
from typing import Iterator

from . import ToolRefused

REGULAR = ("100644", "100755")


def _repo(root: Path):
    from ..gitrepo import GitRepo
    return GitRepo(root)


def _entry(root: Path, path: str, tool: str) -> tuple[str, str, str] | None:
    """(mode, type, object id) of PATH in HEAD's tree, or None."""
    repo = _repo(root)
    try:
        if repo.fast_head() is None:
            raise ToolRefused(f"{tool}: cannot read HEAD's tree: the repository has no commit")
        found = repo.entry("HEAD", path)
    finally:
        repo.close()
    if found is None:
        return None
    mode, oid = found
    kind = {0o040000: "tree", 0o160000: "commit"}.get(mode, "blob")
    return f"{mode:06o}", kind, oid


def _refusal(path: str, where: str, mode: str) -> str:
    if mode == "120000":
        if where == path:
            return f"{path!r} is a symlink; tools read only regular files (name its target)"
        return f"{path!r} goes through the symlink {where!r}; tools read only regular files"
    if mode == "160000":
        return f"{path!r} is in a submodule ({where!r}), which tools may not read"
    if where != path:  # a file where a folder should be
        return f"{path!r} is not a file in the repository ({where!r} is a file)"
    if mode == "040000":
        return f"{path!r} is a folder, not a file in the repository"
    return f"{path!r} is not a file in the repository" + (f" (mode {mode})" if mode else "")


def blob_id(root: Path, path: str, tool: str) -> str:
    """The id of the regular-file blob PATH names in HEAD's tree (PATH already passed
    tools.path_problem); ToolRefused, its reason prefixed with TOOL, otherwise."""
    path = posixpath.normpath(path)
    found = _entry(root, path, tool)
    if found is not None and found[0] in REGULAR and found[1] == "blob":
        return found[2]
    if found is not None:
        raise ToolRefused(f"{tool}: {_refusal(path, path, found[0])}")
    parts = path.split("/")
    for n in range(len(parts) - 1, 0, -1):  # why it is missing: the nearest thing on the way
        where = "/".join(parts[:n])
        above = _entry(root, where, tool)
        if above is not None:
            if above[0] == "040000":
                break
            raise ToolRefused(f"{tool}: {_refusal(path, where, above[0])}")
    raise ToolRefused(f"{tool}: {path!r} is not a file in the repository (not in HEAD's "
                      "tree: commit it first)")


@contextlib.contextmanager
def open_blob(root: Path, oid: str) -> Iterator[int]:
    """A read fd streaming blob OID (read as an object, fed through a pipe by a thread); the
    feed stops when the block ends, read or not."""
    repo = _repo(root)
    found = repo.objects.raw(oid)
    repo.close()
    data = found[1] if found is not None and found[0] == 3 else b""
    rfd, wfd = os.pipe()

    def feed() -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(wfd, view[:1 << 16]):]
        except OSError:
            pass  # the reader stopped early
        finally:
            os.close(wfd)

    writer = threading.Thread(target=feed, name="blob-feed", daemon=True)
    writer.start()
    try:
        yield rfd
    finally:
        os.close(rfd)
        writer.join()


def check_worktree(root: Path, path: str, tool: str) -> None:
    """The working tree's view of blob_id's rule, by lstat: no symlink on the way, a regular
    file at the end."""
    parts = posixpath.normpath(path).split("/")
    for n in range(1, len(parts) + 1):
        where = "/".join(parts[:n])
        try:
            mode = os.lstat(Path(root) / where).st_mode
        except OSError:
            raise ToolRefused(f"{tool}: {path!r} is not a file in the repository") from None
        if stat.S_ISLNK(mode):
            raise ToolRefused(f"{tool}: {_refusal(path, where, '120000')}")
        if n < len(parts) and not stat.S_ISDIR(mode):
            raise ToolRefused(f"{tool}: {_refusal(path, where, '100644')}")
    if not stat.S_ISREG(mode):  # a folder (a submodule's too), a FIFO, a device
        kind = "040000" if stat.S_ISDIR(mode) else ""
        raise ToolRefused(f"{tool}: {_refusal(path, path, kind)}")
