"""Reading git as objects: commits, trees, modes and blobs, never text a commit can shape.

A pusher writes the bytes of a commit message, its author's name and e-mail, its paths and
the modes of its files.  So nothing here splits `git log` output: a commit's id, parents,
author and message come from its raw object, parsed by `parse_commit`; what it changed comes
from comparing its tree with its first parent's.  The signature the trust layer verifies is
read from the same raw object whose tree is then read.

Objects are read in-process through pygit2 (libgit2), which reads the object database
directly and knows nothing of `refs/replace/*`.  libgit2 does honour `.git/info/grafts` when
it parses a commit, so parents are taken from the raw object, never from pygit2's commit.
Where a walk is git's own (history with path filters, which git answers from its
commit-graph), git is asked for commit ids alone (`--format=%H`, with replacements and grafts
off: proc.git_env), each checked to be 40 hex digits, and everything else is read here.

Measured against GitPython's `cat-file --batch` pipe (2,000 proposal blobs of a 10,000-proposal
repository, by path at HEAD): ~90 µs a read either way, with no pipe that only one thread may
use (each thread gets its own libgit2 handle) and no process to keep alive.  But importing
pygit2 costs a one-shot command ~50 ms, so the read commands (`status`, `show`, `list`) read
raw objects through one `git cat-file --batch` pipe instead (`ObjectReader(pipe=True)`): the
same raw bytes, with replacements off (proc.git_env), and trees parsed here.  What they
write, or compare tree against tree, still goes through pygit2, imported when first needed.
tests/test_gitobjects.py holds both readers to git's own view.
"""
from __future__ import annotations

import re
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..errors import GitError

if TYPE_CHECKING:
    import pygit2  # imported where objects are first read: a sandboxed helper never needs it

REGULAR_MODES = (0o100644, 0o100755)
SYMLINK, GITLINK, TREE = 0o120000, 0o160000, 0o040000
_HEX40 = re.compile(r"[0-9a-f]{40}\Z")
_COMMIT_TYPE = 1


def _read_errors() -> tuple[type[Exception], ...]:
    """What a read of a missing or broken object raises (evaluated only when one does)."""
    import pygit2
    return (KeyError, ValueError, pygit2.GitError)


def is_sha(text: str) -> bool:
    return bool(_HEX40.match(text))


def mode_name(mode: int) -> str:
    return {SYMLINK: "a symlink", GITLINK: "a gitlink (submodule)", TREE: "a folder",
            0: "absent"}.get(mode, "a regular file" if mode in REGULAR_MODES
                             else f"mode {mode:o}")


@dataclass
class Commit:
    sha: str
    parents: list[str]
    author_name: str
    author_email: str
    subject: str
    body: str = ""
    # path -> change letter (A, M, D, T) against the first parent
    changes: dict[str, str] = field(default_factory=dict)
    # path -> its mode after the commit (0: deleted), for the paths in `changes`
    modes: dict[str, int] = field(default_factory=dict)
    tree: str = ""
    malformed: str = ""  # why the raw object is not a well-formed commit ("" when it is)

    @property
    def is_merge(self) -> bool:
        return len(self.parents) > 1

    def trailers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.body.splitlines():
            key, sep, value = line.partition(": ")
            if sep and key.startswith("Janus-"):
                out[key] = value.strip()
        return out

    def irregular(self, prefixes: tuple[str, ...] = ("",)) -> dict[str, int]:
        """Paths under PREFIXES this commit left as anything but a regular file."""
        return {p: m for p, m in self.modes.items()
                if m and m not in REGULAR_MODES and p.startswith(prefixes)}


def parse_commit(sha: str, raw: bytes) -> Commit:
    """A commit from its raw object, as git's own parser reads it: `tree`, then the `parent`
    lines, then the rest of the header up to the first empty line; the message after it.
    A header that is not well formed (no tree, a bad id, no author or two of them) gives a
    commit with no author and `malformed` saying why: it can never be an approver's or the
    agent's, and is still answered."""
    head, _, message = raw.partition(b"\n\n")
    lines = head.split(b"\n")
    tree, parents, authors, problem = "", [], [], ""
    i = 0
    if lines and lines[0].startswith(b"tree "):
        tree = lines[0][5:].decode("ascii", "replace")
        i = 1
    while i < len(lines) and lines[i].startswith(b"parent "):
        parents.append(lines[i][7:].decode("ascii", "replace"))
        i += 1
    authors = [line[7:] for line in lines[i:] if line.startswith(b"author ")]
    if not is_sha(tree) or not all(map(is_sha, parents)):
        problem = "its tree or parent line is not a commit id"
    elif len(authors) != 1:
        problem = f"it has {len(authors)} author lines"
    name, email = _ident(authors[0]) if len(authors) == 1 else ("", "")
    text = message.decode("utf-8", "replace")
    paragraphs = text.lstrip("\n").split("\n\n", 1)
    subject = " ".join(line.strip() for line in paragraphs[0].splitlines()).strip()
    body = paragraphs[1].lstrip("\n") if len(paragraphs) > 1 else ""
    if problem:
        name = email = ""
    return Commit(sha, parents if not problem else [p for p in parents if is_sha(p)],
                  name, email, subject, body, tree=tree if is_sha(tree) else "",
                  malformed=problem)


def _ident(line: bytes) -> tuple[str, str]:
    """`Name <email> 1700000000 +0000` as git's split_ident_line reads it: the name is what
    comes before the first `<`, the e-mail runs to the first `>` after it."""
    lt = line.find(b"<")
    gt = line.find(b">", lt + 1) if lt >= 0 else -1
    if gt < 0:
        return "", ""  # git shows neither
    name = line[:lt].rstrip(b" \t\n\r")  # git's isspace(), trailing only
    return name.decode("utf-8", "replace"), line[lt + 1:gt].decode("utf-8", "replace")


_TYPES = {b"commit": 1, b"tree": 2, b"blob": 3, b"tag": 4}  # libgit2's numbers


class CatFile:
    """One `git cat-file --batch` process: raw objects by id, as git stores them."""

    def __init__(self, root: Path) -> None:
        from .proc import git_env
        self.proc = subprocess.Popen(["git", "cat-file", "--batch"], cwd=root,
                                     env=git_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def read(self, sha: str) -> tuple[int, bytes] | None:
        """(type, content) of SHA, or None when the repository has no such object.  A pipe
        that ended raises GitError: a missing object and a reader that could not look are
        not the same answer (`status` would show the stop as off)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(sha.encode() + b"\n")
            self.proc.stdin.flush()
            header = self.proc.stdout.readline().split()
            if header[1:] == [b"missing"]:
                return None
            if len(header) != 3 or not header[2].isdigit():
                raise OSError(f"unexpected answer {b' '.join(header)[:80]!r}")
            size = int(header[2])
            data = self.proc.stdout.read(size + 1)
            if len(data) != size + 1:
                raise OSError("the object was cut short")
        except OSError as e:
            raise GitError(["cat-file", "--batch"], self.proc.poll() or -1, "",
                           f"reading {sha}: {e}") from None
        kind = _TYPES.get(header[1])
        return (kind, data[:-1]) if kind is not None else None

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def tree_entries(data: bytes) -> dict[str, tuple[int, str]]:
    """A raw tree object's entries: {name: (mode, id)} (`<octal mode> <name>\\0<20 bytes>`)."""
    out: dict[str, tuple[int, str]] = {}
    at = 0
    while at < len(data):
        space = data.index(b" ", at)
        nul = data.index(b"\0", space)
        name = data[space + 1:nul].decode("utf-8", "surrogateescape")
        out[name] = (int(data[at:space], 8), data[nul + 1:nul + 21].hex())
        at = nul + 21
    return out


class ObjectReader:
    """The object database of one repository, one libgit2 handle per thread; with PIPE, raw
    objects and entries come from one `git cat-file --batch` (a one-shot command's reads:
    no pygit2 import)."""

    def __init__(self, root: Path, pipe: bool = False) -> None:
        self.root = root
        self._local = threading.local()
        self._pipe: CatFile | None = None
        self.pipe = pipe
        self._trees: dict[str, dict[str, tuple[int, str]]] = {}  # parsed, by id (pipe reads)

    @property
    def _repo(self) -> pygit2.Repository:
        repo = getattr(self._local, "repo", None)
        if repo is None:
            import pygit2
            repo = self._local.repo = pygit2.Repository(str(self.root / ".git"))
        return repo

    def close(self) -> None:
        repo = getattr(self._local, "repo", None)
        if repo is not None:
            repo.free()
            self._local.repo = None
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    # -- raw objects ---------------------------------------------------------------------
    def raw(self, sha: str) -> tuple[int, bytes] | None:
        """(libgit2's type number, content) of the object SHA, or None."""
        if not is_sha(sha):
            return None
        if self.pipe:
            if self._pipe is None:
                self._pipe = CatFile(self.root)
            return self._pipe.read(sha)
        try:
            kind, data = self._repo.odb.read(sha)
        except _read_errors():
            return None
        return kind, data

    def commit(self, sha: str) -> Commit | None:
        found = self.raw(sha)
        if found is None or found[0] != _COMMIT_TYPE:
            return None
        return parse_commit(sha, found[1])

    def raw_commit(self, sha: str) -> bytes | None:
        found = self.raw(sha)
        return found[1] if found is not None and found[0] == _COMMIT_TYPE else None

    # -- trees ---------------------------------------------------------------------------
    def _tree(self, tree: str) -> pygit2.Tree | None:
        if not tree:
            return None
        try:
            obj = self._repo.get(tree)
        except _read_errors():
            return None
        return cast("pygit2.Tree", obj) if obj is not None and obj.type == 2 else None

    def entry(self, tree: str, path: str) -> tuple[int, str] | None:
        """(mode, object id) of PATH in TREE, or None when there is nothing there."""
        if self.pipe:
            return self._entry_by_pipe(tree, path)
        root = self._tree(tree)
        if root is None or not path:
            return None
        try:
            obj = root[path]
        except (KeyError, ValueError, TypeError):
            return None
        return obj.filemode, str(obj.id)

    def _entry_by_pipe(self, tree: str, path: str) -> tuple[int, str] | None:
        if not tree or not path:
            return None
        found: tuple[int, str] | None = (TREE, tree)
        for name in path.split("/"):
            if found is None or found[0] != TREE:
                return None  # (a file, a symlink or a gitlink has no entries)
            entries = self._parsed_tree(found[1])
            if entries is None:
                return None
            found = entries.get(name)
        return found

    def _parsed_tree(self, sha: str) -> dict[str, tuple[int, str]] | None:
        """Tree SHA's entries, parsed once: a tree never changes, and a file's history reads
        the same month folder (hundreds of entries) for every commit."""
        cache = self._trees
        entries = cache.get(sha)
        if entries is None:
            raw = self.raw(sha)
            if raw is None or raw[0] != 2:
                return None
            if len(cache) >= 512:
                cache.clear()
            try:
                entries = cache[sha] = tree_entries(raw[1])
            except (ValueError, IndexError):
                return None  # a malformed tree (a pusher's): no entries, as libgit2 says
        return entries

    def blob(self, tree: str, path: str) -> bytes | None:
        """The content of PATH in TREE where it is a regular file (a symlink, a gitlink or a
        folder there is no file's content)."""
        found = self.entry(tree, path)
        if found is None or found[0] not in REGULAR_MODES:
            return None
        raw = self.raw(found[1])
        return raw[1] if raw is not None and raw[0] == 3 else None

    def changes(self, old_tree: str | None, new_tree: str, paths: tuple[str, ...] = (),
                ids: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, int]]:
        """What differs between two trees under PATHS (every path when none are given), as
        {path: letter} and {path: new mode (0: gone)}.  Renames are a deletion and an
        addition; a file that became a symlink or gitlink is a type change (T).  IDS, when
        given, gets each path's object id in NEW_TREE (none for a deletion)."""
        letters: dict[str, str] = {}
        modes: dict[str, int] = {}
        for prefix in paths or ("",):
            old = self._subtree(old_tree, prefix)
            new = self._subtree(new_tree, prefix)
            if old is not None and new is not None and old[1] == new[1] and old[0] == new[0]:
                continue
            self._diff(old, new, prefix, letters, modes, ids)
        return letters, modes

    def _subtree(self, tree: str | None, prefix: str) -> tuple[int, str] | None:
        """(mode, id) at PREFIX in TREE (the tree itself for "")."""
        if not tree:
            return None
        return (TREE, tree) if not prefix else self.entry(tree, prefix.rstrip("/"))

    def _diff(self, old: tuple[int, str] | None, new: tuple[int, str] | None, prefix: str,
              letters: dict[str, str], modes: dict[str, int],
              ids: dict[str, str] | None = None) -> None:
        base = prefix.rstrip("/")
        old_is_tree = old is not None and old[0] == TREE
        new_is_tree = new is not None and new[0] == TREE
        if base and not (old_is_tree and new_is_tree):
            # PREFIX itself is (or was) a file, or is absent on one side
            if old is not None and not old_is_tree and (new is None or new_is_tree):
                letters[base], modes[base] = "D", 0
            elif new is not None and not new_is_tree:
                if old is None or old_is_tree:
                    letters[base] = "A"
                elif old[0] != new[0] and not (old[0] in REGULAR_MODES
                                               and new[0] in REGULAR_MODES):
                    letters[base] = "T"
                else:
                    letters[base] = "M"
                modes[base] = new[0]
                if ids is not None:
                    ids[base] = new[1]
            if not (old_is_tree or new_is_tree):
                return
        a = self._tree(old[1]) if old is not None and old_is_tree else None
        b = self._tree(new[1]) if new is not None and new_is_tree else None
        empty = cast("pygit2.Tree", self._repo.get(self._empty_tree()))
        from pygit2.enums import DiffOption
        diff = (a or empty).diff_to_tree(b or empty, flags=DiffOption.INCLUDE_TYPECHANGE)
        head = f"{base}/" if base else ""
        for delta in diff.deltas:
            letter = delta.status_char()
            path = head + (delta.new_file.path if letter != "D" else delta.old_file.path)
            letters[path] = letter
            modes[path] = 0 if letter == "D" else delta.new_file.mode
            if ids is not None and letter != "D":
                ids[path] = str(delta.new_file.id)

    def _empty_tree(self) -> str:
        tree = getattr(self._local, "empty", None)
        if tree is None:
            tree = self._local.empty = str(self._repo.TreeBuilder().write())
        return tree

    def with_changes(self, c: Commit, paths: tuple[str, ...] = ()) -> Commit:
        """C with what it changed against its first parent under PATHS filled in."""
        parent = self.commit(c.parents[0]) if c.parents else None
        c.changes, c.modes = self.changes(parent.tree if parent else None, c.tree, paths)
        return c

    # -- walks ---------------------------------------------------------------------------
    def first_parent_chain(self, since: str | None, until: str,
                           limit: int = 10_000_000) -> list[Commit] | None:
        """The commits on UNTIL's first-parent line after SINCE, oldest first, read from the
        raw objects; None when SINCE is not on that line (the caller asks git: a merge may
        have made SINCE a side parent)."""
        out: list[Commit] = []
        sha: str | None = until
        while sha and sha != since and len(out) < limit:
            c = self.commit(sha)
            if c is None:
                return None
            out.append(c)
            sha = c.parents[0] if c.parents else None
        if since and sha != since:
            return None
        out.reverse()
        return out
