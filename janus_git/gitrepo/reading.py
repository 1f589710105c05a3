"""History as the daemon reads it: the first-parent line, a file's history, what a merge
brought in, the rules' files, all as parsed objects (objects.py).

git is asked only for commit ids (`--format=%H`, rev-list), which no commit can shape; every
id is checked to be one (`_ids`).  Everything a commit says of itself (parents, author,
message) and everything it changed (paths, modes, blob ids) is read from its objects.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import GitError, JanusError
from .objects import REGULAR_MODES, Commit, ObjectReader, is_sha
from .proc import Process

BATCH_DIFFS = 24  # more commits than this: one `git diff-tree --stdin` (~40 us a commit)


class HistoryError(JanusError):
    """git named something that is not a commit id, or a commit cannot be read."""


class Reading(Process):
    root: Path
    objects: ObjectReader

    @property
    def git_dir(self) -> Path:
        return self.root / ".git"

    # -- revisions -----------------------------------------------------------------------
    def head(self) -> str | None:
        out = self._run("rev-parse", "--verify", "-q", "HEAD", check=False).strip()
        return out or None

    def fast_head(self) -> str | None:
        """HEAD's commit read straight from the ref files (no process): the daemon's tick."""
        try:
            head = (self.git_dir / "HEAD").read_text().strip()
            if not head.startswith("ref: "):
                return head if is_sha(head) else self.head()
            ref = head[5:]
            try:
                sha = (self.git_dir / ref).read_text().strip()
                return sha if is_sha(sha) else self.head()
            except FileNotFoundError:
                for line in (self.git_dir / "packed-refs").read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
        return self.head()

    def resolve(self, rev: str) -> str | None:
        """The commit id REV names (HEAD, a branch, `X~1`, an id), or None."""
        if is_sha(rev):
            return rev
        if rev == "HEAD":
            return self.fast_head()
        out = self._run("rev-parse", "--verify", "-q", f"{rev}^{{commit}}", check=False).strip()
        return out if is_sha(out) else None

    def _tree_of(self, rev: str) -> str | None:
        sha = self.resolve(rev)
        c = self.objects.commit(sha) if sha else None
        if c is not None:
            return c.tree
        # REV may name a tree (the empty tree, `X^{tree}`)
        found = self.objects.raw(sha) if sha else None
        return sha if found is not None and found[0] == 2 else None

    # -- blobs ---------------------------------------------------------------------------
    def read_blob(self, rev: str, path: str) -> bytes | None:
        """Content of PATH at REV when it is a regular file there (never a symlink's target,
        a gitlink or a folder), or None."""
        tree = self._tree_of(rev)
        return self.objects.blob(tree, path) if tree else None

    read_blob_once = read_blob  # one read needs no pipe of its own any more

    def entry(self, rev: str, path: str) -> tuple[int, str] | None:
        """(mode, object id) of PATH at REV, whatever it is, or None."""
        tree = self._tree_of(rev)
        return self.objects.entry(tree, path) if tree else None

    def read_object(self, sha: str) -> bytes | None:
        """An object's raw content by id (a blob, or a commit with its signature header)."""
        found = self.objects.raw(sha)
        return found[1] if found is not None else None

    read_object_once = read_object  # every thread has its own libgit2 handle

    def object_type(self, rev: str) -> str | None:
        """`commit`, `tree`, `blob` or `tag`; None when REV names no object here."""
        return self._run("cat-file", "-t", rev, check=False).strip() or None

    def ls_tree_blobs(self, rev: str, paths: list[str] | tuple[str, ...],
                      recursive: bool = True) -> dict[str, str]:
        """{path: blob id} at REV for the regular files under PATHS (recursive) or the files
        PATHS name exactly (not recursive: cheaper for a few hundred named files)."""
        out = self._run("ls-tree", *(["-r"] if recursive else []), "-z", rev, "--", *paths)
        blobs = {}
        for item in filter(None, out.split("\0")):
            meta, path = item.split("\t", 1)
            mode, _kind, sha = meta.split()
            if int(mode, 8) in REGULAR_MODES:
                blobs[path] = sha
        return blobs

    def ls_tree(self, rev: str, prefix: str) -> list[str]:
        """Every path under PREFIX at REV, whatever its mode (a gitlink or symlink too)."""
        out = self._run("ls-tree", "-r", "--name-only", "-z", rev, "--", prefix, check=False)
        return [p for p in out.split("\0") if p]

    def diff_tree(self, old: str, new: str, *paths: str) -> list[tuple[str, str, str]]:
        """(change letter, path, blob id in NEW) for each file that differs between two
        trees under PATHS; renames show as a deletion and an addition.  A path that is not a
        regular file in NEW reads as deleted (it holds no proposal)."""
        old_tree, new_tree = self._tree_of(old), self._tree_of(new)
        if new_tree is None:
            raise HistoryError(f"{new} names no commit or tree here")
        ids: dict[str, str] = {}  # the diff's own ids: no lookup of each path again
        letters, modes = self.objects.changes(old_tree, new_tree, tuple(p.rstrip("/") + "/"
                                                                        for p in paths), ids)
        out = []
        for path, letter in sorted(letters.items()):
            if modes[path] and modes[path] not in REGULAR_MODES:
                letter = "D"
            out.append((letter, path, ids.get(path, "0" * 40) if letter != "D" else "0" * 40))
        return out

    # -- commits -------------------------------------------------------------------------
    def commit_info(self, rev: str) -> Commit:
        sha = self.resolve(rev)
        c = self.objects.commit(sha) if sha else None
        if c is None:
            raise HistoryError(f"{rev} names no commit here")
        return c

    def _ids(self, *args: str) -> list[str]:
        """Commit ids from a git walk that prints nothing else (`--format=%H`, rev-list)."""
        if args[0] == "log":
            args = ("log", "--no-patch", *args[1:])  # ids alone, whatever the options imply
        out = self._run(*args).split()
        bad = [x for x in out if not is_sha(x)]
        if bad:
            raise HistoryError(f"git {args[0]} printed {bad[0][:40]!r} where a commit id "
                               "belongs")
        return out

    def _commits(self, ids: list[str]) -> list[Commit]:
        out = []
        for sha in ids:
            c = self.objects.commit(sha)
            if c is None:
                raise HistoryError(f"{sha} is not a commit that can be read")
            out.append(c)
        return out

    def first_parent_log(self, since: str | None, until: str = "HEAD",
                         paths: tuple[str, ...] = ()) -> list[Commit]:
        """Commits on the first-parent line after SINCE up to UNTIL, oldest first, with the
        files each changed against its first parent (so a merge shows what it brought in);
        with PATHS, only the commits that changed something under them."""
        tip = self.resolve(until)
        if tip is None:
            return []
        start = self.resolve(since) if since else None
        rng = [f"{start}..{tip}"] if start else [tip]
        prefixes = tuple(p.rstrip("/") + "/" for p in paths)
        if paths:  # git's walk (its commit-graph filters) names the commits that touch them
            chain = self._commits(self._ids("rev-list", "--first-parent", "--reverse", *rng,
                                            "--", *paths))
        else:
            walked = self.objects.first_parent_chain(start, tip)
            if walked is not None:
                chain = walked
            else:  # SINCE is not on the line (a merge took it in as a side parent)
                chain = self._commits(self._ids("rev-list", "--first-parent", "--reverse",
                                                *rng))
        if len(chain) > BATCH_DIFFS:
            self._diff_many(chain, prefixes)
        else:
            trees = {c.sha: c.tree for c in chain}
            for c in chain:
                parent = c.parents[0] if c.parents else None
                if parent in trees:  # the one before it on the line: no second read
                    c.changes, c.modes = self.objects.changes(trees[parent], c.tree, prefixes)
                else:
                    self.objects.with_changes(c, prefixes)
        return [c for c in chain if c.changes or not paths]

    def _diff_many(self, commits: list[Commit], prefixes: tuple[str, ...]) -> None:
        """Fill in what each commit changed against its first parent, for many at once: one
        `git diff-tree --stdin`, fed the ids and parents read from the objects.  What it
        prints comes from trees alone (`-z`: modes, ids, a letter, then the path), with a
        commit's id before its entries; a path is always the field after an entry."""
        by_id = {c.sha: c for c in commits}
        for c in commits:
            c.changes, c.modes = {}, {}
        feed = "".join(f"{c.sha} {c.parents[0]}\n" if c.parents else f"{c.sha}\n"
                       for c in commits)
        pathspec = ["--", *(p.rstrip("/") for p in prefixes)] if prefixes else []
        out = self._run_bytes("diff-tree", "--stdin", "--root", "-r", "-z", "--no-renames",
                              *pathspec, stdin=feed.encode())
        fields = out.split(b"\0")
        current: Commit | None = None
        i = 0
        while i < len(fields):
            field = fields[i]
            if field.startswith(b":"):
                meta = field[1:].split()
                if current is None or len(meta) < 5 or i + 1 >= len(fields):
                    raise HistoryError("git diff-tree printed an entry outside a commit")
                path = fields[i + 1].decode("utf-8", "surrogateescape")
                letter = meta[4][:1].decode()
                current.changes[path] = letter
                current.modes[path] = 0 if letter == "D" else int(meta[1], 8)
                i += 2
                continue
            if field:
                sha = field.decode("ascii", "replace")
                current = by_id.get(sha)
                if current is None:
                    raise HistoryError(f"git diff-tree named {sha[:40]!r}, not one it was given")
            i += 1

    def file_history(self, path: str, limit: int | None = None) -> list[Commit]:
        """The first-parent commits that changed PATH, newest first, with PATH's change."""
        ids = self._ids("log", "--first-parent", "--format=%H",
                        *([f"-n{limit}"] if limit else []), "--", path)
        return [self.objects.with_changes(c, (path,)) for c in self._commits(ids)]

    def filing_commit(self, path: str, until: str = "HEAD") -> str | None:
        """The first-parent commit that last added PATH (the proposal's filing)."""
        try:
            ids = self._ids("log", "--first-parent", "--diff-merges=first-parent",
                            "--diff-filter=A", "-1", "--format=%H", until, "--", path)
        except GitError:
            return None
        return ids[0] if ids else None

    def side_commits(self, merge: Commit, *paths: str) -> list[Commit]:
        """The commits a merge brought in (reachable from its other parents, not from its
        first) that touch PATHS, newest first."""
        if not merge.is_merge:
            return []
        ids = self._ids("rev-list", *merge.parents[1:], f"^{merge.parents[0]}", "--", *paths)
        return [self.objects.with_changes(c, tuple(paths)) for c in self._commits(ids)]

    def root_commit(self, rev: str = "HEAD") -> str:
        return self._ids("rev-list", "--first-parent", "--max-parents=0", rev)[-1]

    def deletions(self, rev: str, *paths: str) -> list[tuple[str, list[str]]]:
        """(first parent, deleted paths) for each commit in REV's history that deleted files
        under PATHS, newest first; root commits are left out."""
        ids = self._ids("log", "--diff-filter=D", "--no-renames", "--format=%H", rev, "--",
                        *paths)
        prefixes = tuple(p.rstrip("/") + "/" for p in paths)
        found = []
        for c in self._commits(ids):
            if not c.parents:
                continue
            self.objects.with_changes(c, prefixes)
            gone = [p for p, letter in c.changes.items() if letter == "D"]
            if gone:
                found.append((c.parents[0], gone))
        return found

    def touched_paths(self, a: str, b: str) -> list[str]:
        """Every path that any commit in A..B changed, merges against each parent: not the
        net difference, in which a change made and undone again (a stop committed and
        removed) would not show."""
        touched: set[str] = set()
        for c in self._commits(self._ids("rev-list", f"{a}..{b}")):
            parents = [self.objects.commit(p) for p in c.parents] or [None]
            for parent in parents:
                letters, _ = self.objects.changes(parent.tree if parent else None, c.tree)
                touched.update(letters)
        return sorted(touched)

    def trailer_values(self, key: str, since: str, until: str) -> list[str]:
        """The values of trailer KEY on first-parent commits between two dates."""
        ids = self._ids("log", "--first-parent", f"--since={since}", f"--until={until}",
                        "--format=%H")
        out = []
        for c in self._commits(ids):
            for line in c.body.splitlines():
                name, sep, value = line.partition(":")
                if sep and name == key and value.strip():
                    out.append(value.strip())
        return out

    def log_oneline(self, n: int) -> str:
        return self._run("log", "--oneline", "-n", str(n))

    def is_ancestor(self, a: str, b: str) -> bool:
        return self._run_status("merge-base", "--is-ancestor", a, b)[0] == 0

    def rev_count(self, since: str, until: str) -> int:
        return int(self._run("rev-list", "--count", f"{since}..{until}").strip() or 0)

    def verify_commit(self, sha: str, allowed_signers: Path) -> tuple[int, str]:
        """`git verify-commit --raw` against ALLOWED_SIGNERS: (status, what it said)."""
        status, out, err = self._run_status(
            "-c", f"gpg.ssh.allowedSignersFile={allowed_signers}", "verify-commit", "--raw", sha)
        return status, f"{out}\n{err}"

    def dirty_paths(self, paths: list[str]) -> set[str]:
        """Which of PATHS differ between the working tree and HEAD (a person's edit)."""
        if not paths:
            return set()
        out = self._run("status", "--porcelain", "-z", "--untracked-files=no",
                        "--ignore-submodules=all", "--", *paths)
        return {entry[3:] for entry in out.split("\0") if len(entry) > 3}

    def write_commit_graph(self) -> None:
        """An incremental commit-graph with changed-path filters: per-file `git log` is
        8-20x faster with it.  Safe beside other git commands (git takes its own lock)."""
        self._run_status("commit-graph", "write", "--reachable", "--changed-paths", "--split")
