"""Every git call janus-git makes goes through this module.

Commands run through GitPython's command wrapper (``git.cmd.Git``); object reads use its
persistent ``cat-file --batch`` process.  GitPython's ``repo.index`` is never used: measured
~9x slower than the CLI on a 10k-commit repository.

Commits touch only the paths the caller names (``git commit --only``), so a person's staged or
uncommitted work in a shared working tree is never swept into an agent commit.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Conflict, GitError, JanusError
from .util import atomic_write

log = logging.getLogger("janus_git")

LOCK_RETRY_SECONDS = 10.0
TRAILER_PROPOSAL = "Janus-Proposal"
TRAILER_TRANSITION = "Janus-Transition"
_RS, _US = "\x1e", "\x1f"
_COMMITTED = re.compile(r"^\[[^\]]*?([0-9a-f]{40})\]", re.M)  # "[main 1a2b...] subject"


@dataclass(frozen=True)
class Identity:
    name: str
    email: str

    def env(self) -> dict[str, str]:
        return {
            "GIT_AUTHOR_NAME": self.name,
            "GIT_AUTHOR_EMAIL": self.email,
            "GIT_COMMITTER_NAME": self.name,
            "GIT_COMMITTER_EMAIL": self.email,
        }


@dataclass
class Commit:
    sha: str
    parents: list[str]
    author_name: str
    author_email: str
    subject: str
    body: str = ""
    # path -> change letter (A, M, D) against the first parent
    changes: dict[str, str] = field(default_factory=dict)

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


def format_message(subject: str, body: str = "", trailers: dict[str, str] | None = None) -> str:
    parts = [subject.strip()]
    if body.strip():
        parts.append(body.strip())
    if trailers:
        parts.append("\n".join(f"{k}: {v}" for k, v in trailers.items()))
    return "\n\n".join(parts) + "\n"


# Commits this process signed as the agent: known to be its own without a verify-commit.
MADE: set[str] = set()
# Remote mode (daemon/remote.py): a repository whose commits must land on a shared remote
# first.  Its publisher pushes each new commit before the local branch moves (git's refusal of
# a non-fast-forward push is the compare-and-swap); every GitRepo on that root, in any thread,
# goes through it.
PUBLISHERS: dict[Path, "Publisher"] = {}
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


class Publisher:
    """What remote mode plugs in (daemon/remote.py implements it)."""

    def publish(self, sha: str, old: str | None) -> None:
        """Land SHA (a child of OLD) on the remote, or raise Conflict: it moved on."""
        raise NotImplementedError

    def publish_ref(self, ref: str, sha: str | None) -> None:
        """Best effort: make REF on the remote point at SHA (None: delete it)."""
        raise NotImplementedError

    def tip(self) -> str | None:
        """Fetch the branch alone and say where the remote has it now (replay.py)."""
        raise NotImplementedError

    def replayed(self) -> None:
        """A refused commit landed on the new tip after all (for the status's figures)."""


class GitRepo:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._git_cmd = None
        self._key: Path | None | bool = False  # False: not looked up yet

    # -- the agent's signature -----------------------------------------------------------
    def agent_key(self) -> Path | None:
        if self._key is False:
            from .agentkey import find_key
            self._key = find_key()
        return self._key  # type: ignore[return-value]

    def sign_args(self, identity: Identity | None) -> list[str]:
        """Options that sign a commit made in the agent's name (None: a person's commit)."""
        from .agentkey import sign_args
        return sign_args(self.agent_key()) if identity is not None else []

    def _made(self, sha: str, identity: Identity | None) -> str:
        if identity is not None and self.agent_key() is not None:
            MADE.add(sha)
        return sha

    # -- low level -----------------------------------------------------------------------
    def _run(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None,
            check: bool = True) -> str:
        status, out, err = self._run_status(*args, env=env, stdin=stdin)
        if check and status != 0:
            raise GitError([str(a) for a in args], status, out, err)
        return out

    def _run_status(self, *args: str, env: dict[str, str] | None = None,
                   stdin: str | None = None) -> tuple[int, str, str]:
        """(exit status, stdout, stderr).  Commands run through subprocess directly, as
        pre-commit does: GitPython's import (~0.1 s) is paid only by what reads objects."""
        full_env = {**os.environ, "LANGUAGE": "C", "LC_ALL": "C", **(env or {})}
        try:
            proc = subprocess.run(["git", *map(str, args)], cwd=self.root, env=full_env,
                                  input=stdin, capture_output=True, text=True,
                                  errors="replace")
        except FileNotFoundError:
            if not self.root.is_dir():
                raise JanusError(f"{self.root} no longer exists") from None
            raise JanusError("git is not installed (apt-get install git)") from None
        return proc.returncode, proc.stdout, proc.stderr

    def _run_retrying(self, *args: str, env: dict[str, str] | None = None,
                     stdin: str | None = None) -> str:
        """Run a command that takes index.lock, waiting politely while someone else holds it."""
        deadline = time.monotonic() + LOCK_RETRY_SECONDS
        delay = 0.005
        while True:
            try:
                return self._run(*args, env=env, stdin=stdin)
            except GitError as e:
                # index.lock: someone is staging; "cannot lock ref": a concurrent commit moved
                # the branch between our read and our update.  Both clear up: try again.
                transient = "index.lock" in e.stderr or "cannot lock ref" in e.stderr
                if not transient:
                    raise
                if time.monotonic() > deadline:
                    e.args = (f"{self.git_dir / 'index.lock'} was held for "
                              f"{LOCK_RETRY_SECONDS:.0f} s by another git process; if none "
                              "is running, remove it",)
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.25)

    @property
    def _git(self):
        """GitPython's command object, for its persistent `cat-file --batch` pipe."""
        if self._git_cmd is None:
            import git as gitpython
            self._git_cmd = gitpython.cmd.Git(str(self.root))
        return self._git_cmd

    def close(self) -> None:
        if self._git_cmd is not None:
            self._git_cmd.clear_cache()

    # -- reading -------------------------------------------------------------------------
    @property
    def git_dir(self) -> Path:
        return self.root / ".git"

    def head(self) -> str | None:
        out = self._run("rev-parse", "--verify", "-q", "HEAD", check=False).strip()
        return out or None

    def fast_head(self) -> str | None:
        """HEAD's commit read straight from the ref files (no process): the daemon's tick."""
        try:
            head = (self.git_dir / "HEAD").read_text().strip()
            if not head.startswith("ref: "):
                return head
            ref = head[5:]
            try:
                return (self.git_dir / ref).read_text().strip()
            except FileNotFoundError:
                for line in (self.git_dir / "packed-refs").read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
        except (FileNotFoundError, IsADirectoryError):
            pass
        return self.head()

    def branch(self) -> str:
        return self._run("symbolic-ref", "--short", "HEAD").strip()

    def branches(self, prefix: str) -> list[str]:
        """Local branch names under PREFIX (e.g. janus/proposal/)."""
        return self._run("for-each-ref", "--format=%(refname:short)",
                        f"refs/heads/{prefix}").split()

    def person(self) -> Identity | None:
        """Who git says is at the keyboard (user.name/email, GIT_AUTHOR_*), if anyone."""
        ident = self._run("var", "GIT_AUTHOR_IDENT", check=False).strip()
        if "<" not in ident:
            return None
        name, _, rest = ident.partition(" <")
        return Identity(name.strip(), rest.split(">", 1)[0])

    def log_oneline(self, n: int) -> str:
        return self._run("log", "--oneline", "-n", str(n))

    def trailer_values(self, key: str, since: str, until: str) -> list[str]:
        """The values of trailer KEY on first-parent commits between two dates."""
        out = self._run("log", "--first-parent", f"--since={since}", f"--until={until}",
                       f"--format=%(trailers:key={key},valueonly,separator=%x1f)")
        return [v.strip() for v in out.replace(_US, "\n").splitlines() if v.strip()]

    def write_commit_graph(self) -> None:
        """An incremental commit-graph with changed-path filters: per-file `git log` is
        8-20x faster with it.  Safe beside other git commands (git takes its own lock)."""
        self._run_status("commit-graph", "write", "--reachable", "--changed-paths", "--split")

    def add_all(self) -> None:
        self._run("add", "-A")

    def set_config(self, key: str, value: str) -> None:
        self._run("config", key, value)

    def read_blob(self, rev: str, path: str) -> bytes | None:
        """Content of PATH at REV, or None when it does not exist there."""
        cmd = self._git
        from git.exc import GitCommandError
        try:
            _sha, kind, _size, data = cmd.get_object_data(f"{rev}:{path}")
        except (ValueError, GitCommandError):
            return None
        return data if kind in (b"blob", "blob") else None

    def read_object(self, sha: str) -> bytes | None:
        """An object's raw content by id (a blob, or a commit with its signature header)."""
        from git.exc import GitCommandError
        try:
            _sha, _kind, _size, data = self._git.get_object_data(sha)
        except (ValueError, OSError, GitCommandError):
            return None
        return data

    def read_object_once(self, sha: str) -> bytes | None:
        """A commit's raw content without the persistent cat-file pipe (safe off the main
        thread, which owns it): a loose object is read and inflated here, checked against
        its id (a fresh commit is loose); anything else through `git cat-file`."""
        try:
            data = zlib.decompress((self.git_dir / "objects" / sha[:2] / sha[2:]).read_bytes())
        except (OSError, zlib.error, ValueError):
            data = b""
        head, _, body = data.partition(b"\0")
        if head.startswith(b"commit ") and hashlib.sha1(data).hexdigest() == sha:
            return body
        proc = subprocess.run(["git", "cat-file", "commit", sha], cwd=self.root,
                              capture_output=True)
        return proc.stdout if proc.returncode == 0 else None

    def read_blob_once(self, rev: str, path: str) -> bytes | None:
        """One read without GitPython's persistent pipe (whose import alone costs ~0.1 s):
        for one-shot commands such as `show`."""
        proc = subprocess.run(["git", "cat-file", "blob", f"{rev}:{path}"], cwd=self.root,
                              capture_output=True)
        return proc.stdout if proc.returncode == 0 else None

    def object_type(self, rev: str) -> str | None:
        """`commit`, `tree`, `blob` or `tag`; None when REV names no object here."""
        return self._run("cat-file", "-t", rev, check=False).strip() or None

    def ls_tree_blobs(self, rev: str, paths: list[str] | tuple[str, ...],
                      recursive: bool = True) -> dict[str, str]:
        """{path: blob sha} at REV for the files under PATHS (recursive) or the files PATHS
        name exactly (not recursive: cheaper for a few hundred named files)."""
        out = self._run("ls-tree", *(["-r"] if recursive else []), "-z", rev, "--", *paths)
        blobs = {}
        for item in filter(None, out.split("\0")):
            meta, path = item.split("\t", 1)
            blobs[path] = meta.split()[2]
        return blobs

    def diff_tree(self, old: str, new: str, *paths: str) -> list[tuple[str, str, str]]:
        """(change letter, path, blob sha in NEW) for each file that differs between two
        trees under PATHS; renames show as a deletion and an addition."""
        out = self._run("diff-tree", "-r", "-z", "--no-renames", old, new, "--", *paths)
        fields = [f for f in out.split("\0") if f]
        changes = []
        for i in range(0, len(fields) - 1, 2):
            meta = fields[i].split()
            changes.append((meta[4], fields[i + 1], meta[3]))
        return changes

    def deletions(self, rev: str, *paths: str) -> list[tuple[str, list[str]]]:
        """(first parent, deleted paths) for each commit in REV's history that deleted files
        under PATHS, newest first; root commits are left out."""
        out = self._run("log", "--diff-filter=D", "--no-renames", "--name-only",
                        "--format=%x1e%H %P", rev, "--", *paths)
        found = []
        for record in filter(None, out.split("\x1e")):
            lines = [ln for ln in record.splitlines() if ln.strip()]
            shas = lines[0].split()
            if len(shas) >= 2:
                found.append((shas[1], lines[1:]))
        return found

    def ls_tree(self, rev: str, prefix: str) -> list[str]:
        out = self._run("ls-tree", "-r", "--name-only", "-z", rev, "--", prefix, check=False)
        return [p for p in out.split("\0") if p]

    def touched_paths(self, a: str, b: str) -> list[str]:
        """Every path that any commit in A..B changed, merges against each parent: not the
        net difference, in which a change made and undone again (a stop committed and
        removed) would not show."""
        out = self._run("log", "-m", "--no-renames", "--name-only", "--format=", "-z",
                        f"{a}..{b}")
        return sorted({p.strip("\n") for p in out.split("\0") if p.strip("\n")})

    def is_ancestor(self, a: str, b: str) -> bool:
        return self._run_status("merge-base", "--is-ancestor", a, b)[0] == 0

    def first_parent_log(self, since: str | None, until: str = "HEAD",
                         paths: tuple[str, ...] = ()) -> list[Commit]:
        """Commits on the first-parent line after SINCE up to UNTIL, oldest first, with the
        files each changed against its first parent (so a merge shows what it brought in)."""
        rng = f"{since}..{until}" if since else until
        fmt = f"{_RS}%H{_US}%P{_US}%an{_US}%ae{_US}%s{_US}%b{_US}"
        out = self._run("log", "--first-parent", "--reverse", "--diff-merges=first-parent",
                       "--no-renames", "--name-status", "-z", f"--format={fmt}", rng,
                       "--", *paths)
        commits = []
        for record in out.split(_RS)[1:]:
            sha, parents, an, ae, subject, body, rest = record.split(_US, 6)
            fields = [f for f in rest.strip("\n").split("\0")]
            fields = [f.strip("\n") for f in fields]
            fields = [f for f in fields if f != ""]
            changes = {}
            for i in range(0, len(fields) - 1, 2):
                changes[fields[i + 1]] = fields[i][0]
            commits.append(Commit(sha, parents.split(), an, ae, subject, body, changes))
        return commits

    def commit_info(self, rev: str) -> Commit:
        log = self._run("log", "-1", f"--format=%H{_US}%P{_US}%an{_US}%ae{_US}%s{_US}%b", rev)
        sha, parents, an, ae, subject, body = log.rstrip("\n").split(_US, 5)
        return Commit(sha, parents.split(), an, ae, subject, body)

    def file_history(self, path: str, limit: int | None = None) -> list[Commit]:
        args = ["log", "--first-parent", f"--format={_RS}%H{_US}%P{_US}%an{_US}%ae{_US}%s{_US}%b"]
        if limit:
            args.append(f"-n{limit}")
        out = self._run(*args, "--", path)
        commits = []
        for record in out.split(_RS)[1:]:
            sha, parents, an, ae, subject, body = record.rstrip("\n").split(_US, 5)
            commits.append(Commit(sha, parents.split(), an, ae, subject, body))
        return commits

    def filing_commit(self, path: str, until: str = "HEAD") -> str | None:
        """The first-parent commit that last added PATH (the proposal's filing)."""
        out = self._run("log", "--first-parent", "--diff-merges=first-parent", "--diff-filter=A",
                       "-1", "-s", "--format=%H", until, "--", path, check=False).strip()
        return out or None

    def side_commits(self, merge: Commit, *paths: str) -> list[Commit]:
        """The commits a merge brought in (reachable from its other parents, not from its
        first) that touch PATHS, newest first."""
        if not merge.is_merge:
            return []
        fmt = f"{_RS}%H{_US}%P{_US}%an{_US}%ae{_US}%s{_US}%b"
        out = self._run("log", f"--format={fmt}", *merge.parents[1:], f"^{merge.parents[0]}",
                       "--", *paths)
        commits = []
        for record in out.split(_RS)[1:]:
            sha, parents, an, ae, subject, body = record.rstrip("\n").split(_US, 5)
            commits.append(Commit(sha, parents.split(), an, ae, subject, body))
        return commits

    def root_commit(self, rev: str = "HEAD") -> str:
        return self._run("rev-list", "--first-parent", "--max-parents=0", rev).split()[-1]

    def verify_commit(self, sha: str, allowed_signers: Path) -> tuple[int, str]:
        """`git verify-commit --raw` against ALLOWED_SIGNERS: (status, what it said)."""
        status, out, err = self._run_status("-c", f"gpg.ssh.allowedSignersFile={allowed_signers}",
                                           "verify-commit", "--raw", sha)
        return status, f"{out}\n{err}"

    def dirty_paths(self, paths: list[str]) -> set[str]:
        """Which of PATHS differ between the working tree and HEAD (a person's edit)."""
        if not paths:
            return set()
        out = self._run("status", "--porcelain", "-z", "--untracked-files=no", "--", *paths)
        return {entry[3:] for entry in out.split("\0") if len(entry) > 3}

    # -- writing -------------------------------------------------------------------------
    def commit_files(self, files: dict[str, bytes | None], message: str,
                     identity: Identity | None = None,
                     guard: dict[str, bytes | None] | None = None) -> str:
        """Write FILES (None deletes) and commit exactly those paths in one commit.

        GUARD maps paths to the content the caller last read from HEAD; if the working tree
        holds something else there (a person's uncommitted edit), nothing is written and
        Conflict is raised so the caller can retry after that edit is committed.
        """
        for path, expected in (guard or {}).items():
            current = _read_or_none(self.root / path)
            if current != expected:
                raise Conflict(f"{path} has uncommitted changes in the working tree; "
                               "commit or discard them and the daemon will retry")
        for path in files:
            check_no_symlink(self.root, path)
        before = {path: _read_or_none(self.root / path) for path in files}
        journal = self.write_intent(files, before)
        try:
            with self._commit_lock():
                sha = self._write_and_commit(files, message, identity)
        except BaseException:
            self._put_back(before)  # a failed commit leaves the tree as it found it
            raise
        journal.unlink(missing_ok=True)
        return sha

    @contextlib.contextmanager
    def _commit_lock(self):
        """janus-git processes commit one at a time: git's `commit --only` reads the index
        before it locks it, so two of them at once could drop each other's entries."""
        jdir = self.git_dir / "janus"
        jdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(jdir / "commit.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _put_back(self, before: dict[str, bytes | None]) -> None:
        for path, data in before.items():
            if data is None:
                (self.root / path).unlink(missing_ok=True)
            else:
                atomic_write(self.root / path, data)
        self._run("reset", "-q", "--", *before, check=False)  # unstage, if the lock allows
        for journal in (self.git_dir / "janus").glob(
                f"intent-{os.getpid()}-{threading.get_ident()}.json"):
            journal.unlink(missing_ok=True)

    def _write_and_commit(self, files: dict[str, bytes | None], message: str,
                          identity: Identity | None) -> str:
        for path, data in files.items():
            target = self.root / path
            if data is None:
                try:
                    target.unlink()
                except FileNotFoundError:
                    pass
            else:
                atomic_write(target, data)
        publisher = PUBLISHERS.get(self.root)
        if publisher is not None:
            return self._commit_published(files, message, identity, publisher)
        paths = sorted(files)
        # only new paths need an index entry; a tracked one is read from the tree by --only
        present = [p for p in paths if files[p] is not None and self.read_blob("HEAD", p) is None]
        env = identity.env() if identity else None
        for attempt in range(5):
            # Nothing of ours is ever staged in the shared index: new files get only an
            # intent-to-add entry (a person's plain `git commit` skips those), and
            # `commit --only` takes the content from the working tree inside its own lock.
            if present:
                self._run_retrying("add", "--intent-to-add", "--", *present)
            crashpoint("mid-commit")
            try:
                out = self._run_retrying("-c", "core.abbrev=40", *self.sign_args(identity),
                                        "commit", "--no-verify", *self._sign_flag(identity),
                                        "--allow-empty", "--only", "-F", "-", "--", *paths,
                                        env=env, stdin=message)
                break
            except GitError as e:
                # A concurrent `git commit` by someone else can write back an index it read
                # before our `git add` (a lost update inside git): add again.
                if "did not match any file" not in e.stderr or attempt == 4:
                    raise
        m = _COMMITTED.search(out)
        return self._made(m.group(1) if m else self._run("rev-parse", "HEAD").strip(), identity)

    def _commit_published(self, files: dict[str, bytes | None], message: str,
                          identity: Identity | None, publisher: Publisher) -> str:
        """Remote mode: the commit is built beside the index (a temporary one), pushed, and
        only then does the local branch move and the index follow.  A refused push is made
        again on the remote's new tip when nothing it changed moved meanwhile (replay.py);
        otherwise it raises Conflict with the branch untouched (the caller puts the working
        tree back)."""
        head = self.head()
        info = self.index_info(files)
        sha = self.tree_commit(head, info, message, identity)
        crashpoint("mid-commit")
        try:
            publisher.publish(sha, head)
        except Conflict as refused:
            from . import replay  # only the files it changed moved meanwhile? then again
            landed = replay.onto_tip(self, publisher, head, files, message, identity, refused)
            crashpoint("after-push")
            self._follow(sha, landed, info, sorted(files))
            return landed
        crashpoint("after-push")  # on the remote, not yet here: the next start fetches it
        self._run("update-ref", "-m", "janus", f"refs/heads/{self.branch()}", sha, head or "")
        self._run_retrying("update-index", "--index-info", stdin=info)
        return sha

    def write_blob(self, data: bytes) -> str:
        """Store DATA (any bytes) as a blob; its id."""
        args = ["hash-object", "-w", "--no-filters", "--stdin"]
        proc = subprocess.run(["git", *args], cwd=self.root, input=data, capture_output=True)
        if proc.returncode != 0:
            raise GitError(args, proc.returncode, "", proc.stderr.decode(errors="replace"))
        return proc.stdout.decode().strip()

    def index_info(self, files: dict[str, bytes | None]) -> str:
        """`update-index --index-info` lines for FILES (None: removed), their blobs written
        from the working tree (where the caller has just written them)."""
        paths = sorted(files)
        present = [p for p in paths if files[p] is not None]
        blobs = self._run("hash-object", "-w", "--no-filters", "--stdin-paths",
                          stdin="".join(f"{p}\n" for p in present)).split() if present else []
        blob = dict(zip(present, blobs))
        return "".join(f"100644 {blob[p]}\t{p}\n" if p in blob else f"0 {'0' * 40}\t{p}\n"
                       for p in paths)

    def _follow(self, built: str, landed: str, info: str, paths: list[str]) -> None:
        """After LANDED (BUILT made again on the remote's new tip) is on the remote: the
        index and working tree, which hold BUILT's files (INFO), follow to LANDED by git's
        two-tree merge (which refuses to overwrite anything a person changed), and the
        branch moves.  If the merge refuses, our PATHS are put back and the branch is
        fast-forwarded as after any fetch.  A crash between the merge and the branch's move
        leaves an index that already matches LANDED: the next start's fast-forward takes
        it as it is."""
        old = self.head()
        try:
            self._run_retrying("update-index", "--index-info", stdin=info)
            self._run("update-index", "-q", "--refresh", check=False)
            self._run_retrying("read-tree", "-m", "-u", built, landed)
        except GitError as e:
            log.warning("%s landed, but the working tree could not follow it (%s); "
                        "fast-forwarding instead", landed[:10], e.stderr.strip()[-200:])
            self._run("reset", "-q", "--", *paths, check=False)
            self._run("checkout", "-q", "HEAD", "--", *paths, check=False)
            self._run_retrying("merge", "--ff-only", "-q", landed)
            return
        crashpoint("replay-catch-up")
        self._run("update-ref", "-m", "janus replay", f"refs/heads/{self.branch()}", landed,
                  old or "")

    def tree_commit(self, head: str | None, info: str, message: str,
                    identity: Identity | None) -> str:
        """A commit of HEAD's tree changed by INFO (`update-index --index-info` lines), built
        in a temporary index: neither the index nor the working tree is touched."""
        with tempfile.TemporaryDirectory(dir=self.git_dir) as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"),
                   **(identity.env() if identity else {})}
            if head:
                self._run("read-tree", head, env=env)
            self._run("update-index", "--index-info", env=env, stdin=info)
            tree = self._run("write-tree", env=env).strip()
            return self.commit_tree(tree, [head] if head else [], message, identity, env)

    def _sign_flag(self, identity: Identity | None) -> list[str]:
        return ["-S"] if self.sign_args(identity) else []

    # An intent journal makes a write-then-commit safe against a crash in between: what a dead
    # process wrote but never committed is put back to HEAD, so it cannot be mistaken for a
    # person's uncommitted edit (which the daemon would otherwise wait on forever).
    def write_intent(self, files: dict[str, bytes | None],
                     before: dict[str, bytes | None]) -> Path:
        """Journal a write-and-commit: for each path the content before and after.  Whichever
        of the two a dead process left in the working tree, it is janus-git's, and recovery
        puts the path to HEAD (the commit either happened or did not)."""
        jdir = self.git_dir / "janus"
        jdir.mkdir(parents=True, exist_ok=True)
        path = jdir / f"intent-{os.getpid()}-{threading.get_ident()}.json"
        intent = {p: [_digest(before.get(p)), _digest(d)] for p, d in files.items()}
        atomic_write(path, json.dumps(intent).encode())
        return path

    def recover_intents(self) -> list[str]:
        """Undo the uncommitted writes of janus-git processes that died mid-commit."""
        restored = []
        for journal in (self.git_dir / "janus").glob("intent-*.json"):
            pid = int(journal.stem.split("-")[1])
            if _alive(pid):
                continue  # in flight (this process's other threads included)
            intent = json.loads(journal.read_text() or "{}")
            for path, digests in intent.items():
                if _digest(_read_or_none(self.root / path)) not in digests:
                    continue  # someone else's content now: leave it alone
                if self.read_blob("HEAD", path) is not None:
                    self._run_retrying("checkout", "-q", "HEAD", "--", path)
                else:
                    self._run_retrying("rm", "-q", "--cached", "--ignore-unmatch", "--", path)
                    (self.root / path).unlink(missing_ok=True)
                restored.append(path)
            journal.unlink(missing_ok=True)
        return restored

    def commit_all_staged(self, message: str, identity: Identity | None = None) -> str:
        env = identity.env() if identity else None
        self._run_retrying(*self.sign_args(identity), "commit", "-q", "--no-verify",
                          *self._sign_flag(identity), "--allow-empty", "-F", "-",
                          env=env, stdin=message)
        return self._made(self._run("rev-parse", "HEAD").strip(), identity)

    def commit_many(self, files: dict[str, bytes], message: str, identity: Identity,
                    guard: dict[str, bytes | None]) -> str:
        """One commit changing thousands of files, in time linear in their number.

        `git commit --only -- <paths>` matches every pathspec against every index entry: 60 s
        for 4,800 paths in a 100,000-file repository.  Here the blobs go in through one
        `git fast-import`, the commit is built in a temporary index (read-tree, update-index
        --index-info, write-tree, commit-tree: signed as the agent) and the branch moves with
        compare-and-swap; only then do the real index and the working tree follow
        (update-index, checkout-index), so a failure leaves nothing half-done.  Like
        commit_files it refuses to overwrite a person's uncommitted edit (GUARD: the content
        last read from HEAD)."""
        for path, expected in guard.items():
            if _read_or_none(self.root / path) != expected:
                raise Conflict(f"{path} has uncommitted changes in the working tree; commit "
                               "or discard them and try again")
        for path in files:
            check_no_symlink(self.root, path)
        head, branch = self.head(), self.branch()
        paths = list(files)
        with tempfile.TemporaryDirectory(dir=self.git_dir) as tmp:
            marks = Path(tmp) / "marks"
            stream = "".join(f"blob\nmark :{i + 1}\ndata {len(data)}\n{data.decode()}\n"
                             for i, data in enumerate(files.values()))
            self._run("fast-import", "--quiet", f"--export-marks={marks}", stdin=stream)
            shas = dict(line.split() for line in marks.read_text().splitlines())
        info = "".join(f"100644 {shas[f':{i + 1}']}\t{path}\n" for i, path in enumerate(paths))
        sha = self.tree_commit(head, info, message, identity)
        publisher = PUBLISHERS.get(self.root)
        if publisher is not None:
            publisher.publish(sha, head)
        # a crash after the branch moved but before the tree followed is put right at the
        # next daemon start (recover_intents), not mistaken for a person's edit
        journal = self.write_intent(dict(files), dict(guard))
        self._run("update-ref", "-m", "janus batch", f"refs/heads/{branch}", sha, head)
        crashpoint("hygiene-after-ref")
        self._run_retrying("update-index", "--index-info", stdin=info)
        self._run_retrying("checkout-index", "-f", "-u", "--stdin",
                           stdin="\n".join(paths) + "\n")
        journal.unlink(missing_ok=True)
        return sha

    def branch_exists(self, branch: str) -> bool:
        return self._run_status("rev-parse", "-q", "--verify", f"refs/heads/{branch}")[0] == 0

    def delete_branch(self, branch: str) -> None:
        self._run("update-ref", "-d", f"refs/heads/{branch}", check=False)
        if self.root in PUBLISHERS:
            PUBLISHERS[self.root].publish_ref(f"refs/heads/{branch}", None)

    def update_branch_ref(self, branch: str, new: str, old: str | None) -> None:
        args = ["update-ref", f"refs/heads/{branch}", new]
        if old:
            args.append(old)
        self._run(*args)
        if self.root in PUBLISHERS:
            PUBLISHERS[self.root].publish_ref(f"refs/heads/{branch}", new)

    def create_commit_on(self, parent: str, files: dict[str, bytes], message: str,
                         identity: Identity) -> str:
        """Build a commit on PARENT with FILES changed, without touching the working tree or
        the index (a temporary index is used).  Returns the new commit's sha."""
        info = "".join(f"100644 {self.write_blob(data)}\t{path}\n"
                       for path, data in files.items())
        return self.tree_commit(parent, info, message, identity)

    def commit_tree(self, tree: str, parents: list[str], message: str,
                    identity: Identity | None, env: dict[str, str] | None = None) -> str:
        """A commit object for TREE (signed when made in the agent's name); no ref moves."""
        env = {**(env or {}), **(identity.env() if identity else {})}
        sha = self._run(*self.sign_args(identity), "commit-tree", tree,
                       *[a for p in parents for a in ("-p", p)], *self._sign_flag(identity),
                       "-F", "-", env=env, stdin=message).strip()
        return self._made(sha, identity)


    # -- a shared remote (remote mode: daemon/remote.py) -----------------------------------
    def remote_url(self, name: str) -> str | None:
        out = self._run("remote", "get-url", name, check=False).strip()
        return out or None

    def fetch(self, remote: str, refspecs: list[str], timeout: float = 60.0) -> None:
        """Fetch REFSPECS (forced updates of our own tracking refs: the remote is the
        truth), pruning what it deleted."""
        self._run_timed(timeout, "fetch", "-q", "--no-tags", "--prune", "--no-write-fetch-head",
                        remote, *refspecs)

    def push(self, remote: str, refspecs: list[str], timeout: float = 60.0) -> tuple[bool, str]:
        """(landed, git's words).  A non-fast-forward is refused by the remote: the
        compare-and-swap every daemon's claim goes through."""
        status, out, err = self._run_status_timed(timeout, "push", "--porcelain", "-q",
                                                  remote, *refspecs)
        return status == 0, (out + err).strip()

    def fast_forward(self, sha: str) -> None:
        """Move the checked-out branch forward to SHA, index and working tree with it."""
        with self._commit_lock():
            self._run_retrying("merge", "--ff-only", "-q", sha)

    def rebase_onto(self, upstream: str) -> None:
        """A person's local commits replayed onto UPSTREAM (their CLI's push was refused);
        a conflict is left to them, with the clone as it was."""
        status, out, err = self._run_status("rebase", "-q", upstream)
        if status != 0:
            self._run("rebase", "--abort", check=False)
            raise JanusError(f"your commits do not rebase cleanly onto {upstream}: "
                             f"{(out + err).strip()[-300:]}; pull, resolve and push by hand")

    def rev_count(self, since: str, until: str) -> int:
        return int(self._run("rev-list", "--count", f"{since}..{until}").strip() or 0)

    def refs(self, prefix: str) -> dict[str, str]:
        """Refs under PREFIX (full names) and the objects they name."""
        out = self._run("for-each-ref", "--format=%(refname) %(objectname)", prefix)
        return dict(line.split() for line in out.splitlines() if line)

    def set_ref(self, ref: str, sha: str | None) -> None:
        self._run("update-ref", *(["-d", ref] if sha is None else [ref, sha]), check=False)

    def empty_commit(self, parents: list[str], message: str, identity: Identity) -> str:
        """A commit of the empty tree: a lease's heartbeat (daemon/remote.py).  The tree is
        written once (git knows it without storing it, but fsck and a push want it)."""
        if not parents:
            self._run("mktree", stdin="")
        return self.commit_tree(EMPTY_TREE, parents, message, identity)

    def _run_timed(self, timeout: float, *args: str) -> str:
        status, out, err = self._run_status_timed(timeout, *args)
        if status != 0:
            raise GitError([str(a) for a in args], status, out, err)
        return out

    def _run_status_timed(self, timeout: float, *args: str) -> tuple[int, str, str]:
        """A network command: a dead remote must not wedge the daemon."""
        env = {**os.environ, "LANGUAGE": "C", "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
        try:
            proc = subprocess.run(["git", *args], cwd=self.root, env=env, capture_output=True,
                                  text=True, errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            return 124, "", f"git {args[0]} took more than {timeout:.0f} s"
        return proc.returncode, proc.stdout, proc.stderr


def crashpoint(name: str) -> None:
    """Crash tests name a point here (JANUS_GIT_CRASHPOINT); the process SIGKILLs itself
    there, exactly as `kill -9` would.  Free when the variable is unset."""
    if _CRASHPOINT and _CRASHPOINT == name:
        os.kill(os.getpid(), signal.SIGKILL)


_CRASHPOINT = os.environ.get("JANUS_GIT_CRASHPOINT")


def stallpoint(name: str) -> None:
    """Tests that prove something holds while the daemon's main loop is busy name a point
    here and a time (JANUS_GIT_STALLPOINT=name:seconds); the calling thread sleeps there.
    Free when the variable is unset."""
    if _STALLPOINT and _STALLPOINT[0] == name:
        time.sleep(float(_STALLPOINT[1]))


_STALLPOINT = os.environ.get("JANUS_GIT_STALLPOINT", "").partition(":")[::2] \
    if os.environ.get("JANUS_GIT_STALLPOINT") else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class UnsafePath(JanusError):
    """A path janus-git will not write: through a symlink, or out of the repository."""


def check_no_symlink(root: Path, path: str) -> None:
    """janus-git writes through no symlink a commit placed: every folder on PATH's way from
    the repository's root must be a real folder (a committed `logs/runs -> /etc` would
    otherwise carry a run's output out of the repository)."""
    here = root
    parts = Path(path).parts
    if Path(path).is_absolute() or ".." in parts:
        raise UnsafePath(f"{path}: not a path inside the repository")
    for part in parts[:-1]:
        here = here / part
        if here.is_symlink():
            raise UnsafePath(f"{path}: {here.relative_to(root)} is a symlink; janus-git "
                             "writes through no symlink (remove it with `git rm`)")


def git_version() -> str | None:
    try:
        return subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return None


def init_repo(root: Path, branch: str = "main") -> GitRepo:
    root.mkdir(parents=True, exist_ok=True)
    repo = GitRepo(root)
    repo._run("init", "-q", "-b", branch)
    # Reviewers push approvals into the daemon's checked-out branch: update the working tree
    # in place (refused only if it is dirty, which the daemon never leaves it).
    repo._run("config", "receive.denyCurrentBranch", "updateInstead")
    return repo


def read_blobs(repo: GitRepo, shas: list[str]) -> list[bytes]:
    """Contents of many blobs through one `git cat-file --batch` (for index rebuilds)."""
    import subprocess
    import threading

    proc = subprocess.Popen(["git", "cat-file", "--batch"], cwd=repo.root,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def feed() -> None:
        try:
            proc.stdin.write("".join(f"{s}\n" for s in shas).encode())
        finally:
            proc.stdin.close()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out, read = [], proc.stdout
    for _ in shas:
        header = read.readline().split()
        if len(header) < 3:
            out.append(b"")
            continue
        size = int(header[2])
        out.append(read.read(size))
        read.read(1)
    writer.join()
    proc.wait()
    return out
