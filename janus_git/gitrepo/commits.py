"""The commit engine: every commit janus-git makes, built from blobs and landed in one step.

A commit is built beside the working tree, never from it: the files' bytes become blobs in
the object database, the tree is HEAD's with those entries changed (built in-process), and
the commit object is written and, in the agent's name, signed (`ssh-keygen -Y sign`, as git
itself signs).  Only then does anything visible move, under git's own `index.lock`, which a
person's `git add` or `git commit` in the same tree also takes:

1. the branch moves from the HEAD the commit was built on (compare-and-swap: a person's commit
   that landed meanwhile makes it build again on theirs);
2. the files are written to the working tree;
3. the index gets their entries.

So a person's `git add -A && git commit` in the daemon's own tree can never sweep up a
half-written result, nor commit an index that predates the agent's commit: it runs wholly
before (and the agent builds on it) or wholly after (and sees the agent's commit).  What the
working tree holds never decides what is committed; `.gitattributes` does not change a byte
of it (a blob is written as given, with no filters).

An intent journal makes the window between 1 and 3 safe against `kill -9`: what a dead
process wrote but did not finish is put back to HEAD at the next start, and the index.lock it
held (it names its pid) is removed.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import Conflict, GitError, JanusError
from ..faults import crashpoint
from ..util import atomic_write
from .objects import GITLINK, SYMLINK, TREE, ObjectReader, is_sha
from .proc import LOCK_RETRY_SECONDS, Process

log = logging.getLogger(__name__)
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_LOCK_TAG = b"janus-git "


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

    def ident(self, when: float | None = None) -> bytes:
        """`Name <email> 1700000000 +0000` (what git cannot parse is left out)."""
        when = time.time() if when is None else when
        offset = time.localtime(when).tm_gmtoff // 60
        sign = "+" if offset >= 0 else "-"
        name, email = (_crud(x) for x in (self.name, self.email))
        return (f"{name} <{email}> {int(when)} {sign}{abs(offset) // 60:02d}"
                f"{abs(offset) % 60:02d}").encode()


def _crud(text: str) -> str:
    return "".join(ch for ch in text if ch not in "<>\n\0").strip()


class UnsafePath(JanusError):
    """A path janus-git will not write: through a symlink, or out of the repository."""


def check_no_symlink(root: Path, path: str) -> None:
    """janus-git writes through no symlink a commit placed: every folder on PATH's way from
    the repository's root must be a real folder (a committed `logs/runs -> /etc` would
    otherwise carry a run's output out of the repository)."""
    here = root
    parts = Path(path).parts
    if Path(path).is_absolute() or ".." in parts or not parts or parts[0] == ".git":
        raise UnsafePath(f"{path}: not a path inside the repository")
    for part in parts[:-1]:
        here = here / part
        if here.is_symlink():
            raise UnsafePath(f"{path}: {here.relative_to(root)} is a symlink; janus-git "
                             "writes through no symlink (remove it with `git rm`)")


PACK_FROM = 64  # blobs written at once from this many: one pack, not a file each


class Commits(Process):
    root: Path
    objects: ObjectReader

    if TYPE_CHECKING:  # from the repository class (gitrepo/__init__.py) and its other parts
        def head(self) -> str | None: ...
        def branch(self) -> str: ...
        def read_blob(self, rev: str, path: str) -> bytes | None: ...
        def entry(self, rev: str, path: str) -> tuple[int, str] | None: ...
        def read_object(self, sha: str) -> bytes | None: ...
        def sign_args(self, identity: Identity | None) -> list[str]: ...
        def agent_key(self) -> Path | None: ...
        def _made(self, sha: str, identity: Identity | None) -> str: ...
        def _publisher(self) -> Any: ...

    @property
    def git_dir(self) -> Path:
        return self.root / ".git"

    # -- building ------------------------------------------------------------------------
    def guard_for(self, paths) -> dict[str, bytes | None]:
        """The guard for PATHS: each as HEAD has it (None where it is no regular file)."""
        return {p: self.read_blob("HEAD", p) for p in paths}

    def write_blob(self, data: bytes) -> str:
        """Store DATA (any bytes, no filters) as a blob; its id."""
        return str(self.objects._repo.create_blob(data))

    def write_blobs(self, datas: list[bytes]) -> list[str]:
        """Store each of DATAS as a blob; their ids.  Many go into one pack through one `git
        fast-import` (a loose object is a file of its own: hygiene's 473 cost 0.2-0.6 s)."""
        if len(datas) < PACK_FROM:
            return [self.write_blob(d) for d in datas]
        from .proc import git_env
        stream = b"".join(b"blob\nmark :%d\ndata %d\n%s\n" % (i + 1, len(d), d)
                          for i, d in enumerate(datas))
        marks = self.git_dir / "janus" / f"marks-{os.getpid()}-{threading.get_ident()}"
        marks.parent.mkdir(exist_ok=True)
        try:
            # (fast-import itself writes loose objects below fastimport.unpackLimit, 100)
            proc = subprocess.run(["git", "-c", "fastimport.unpackLimit=0", "fast-import",
                                   "--quiet", f"--export-marks={marks}"],
                                  cwd=self.root, env=git_env(), input=stream,
                                  capture_output=True)
            if proc.returncode != 0:
                raise GitError(["fast-import"], proc.returncode, "",
                               proc.stderr.decode(errors="replace"))
            ids = dict(line.split() for line in marks.read_text().splitlines())
        finally:
            marks.unlink(missing_ok=True)
        return [ids[f":{i + 1}"] for i in range(len(datas))]

    def index_info(self, files: dict[str, bytes | None]) -> str:
        """`update-index --index-info` lines for FILES (None: removed), their blobs written
        from the bytes given."""
        paths = sorted(files)
        kept = [p for p in paths if files[p] is not None]
        ids = dict(zip(kept, self.write_blobs([files[p] or b"" for p in kept]), strict=True))
        return "".join(f"100644 {ids[path]}\t{path}\n" if path in ids
                       else f"0 {'0' * 40}\t{path}\n" for path in paths)

    def build_tree(self, head: str | None, info: str) -> str:
        """HEAD's tree changed by INFO (`mode id<TAB>path` lines; mode 0 removes), built
        in-process: only the folders on the changed paths are written again."""
        base = None
        if head:
            c = self.objects.commit(head)
            if c is None:
                raise GitError(["build-tree"], 1, "", f"{head} is not a commit here")
            base = c.tree
        changes: dict[str, tuple[int, str] | None] = {}
        for line in info.splitlines():
            if not line:
                continue
            meta, path = line.split("\t", 1)
            mode, sha = meta.split()
            changes[path] = None if int(mode) == 0 else (int(mode, 8), sha)
        return self._tree_with(base, changes) or EMPTY_TREE

    def _tree_with(self, tree: str | None, changes: dict[str, tuple[int, str] | None]
                   ) -> str | None:
        repo = self.objects._repo
        existing = repo.get(tree) if tree else None
        builder = (repo.TreeBuilder(existing) if existing is not None  # type: ignore[arg-type]
                   else repo.TreeBuilder())  # (pygit2's stubs: a tree is an Object)
        nested: dict[str, dict[str, tuple[int, str] | None]] = {}
        for path, change in changes.items():
            name, sep, rest = path.partition("/")
            if sep:
                nested.setdefault(name, {})[rest] = change
            elif change is None:
                if builder.get(name) is not None:
                    builder.remove(name)
            else:
                builder.insert(name, change[1], change[0])
        for name, inner in nested.items():
            current = builder.get(name)
            sub = str(current.id) if current is not None and current.filemode == TREE else None
            new = self._tree_with(sub, inner)
            if new is None:
                if current is not None and current.filemode == TREE:
                    builder.remove(name)
            else:
                builder.insert(name, new, TREE)
        if len(builder) == 0:
            return None
        return str(builder.write())

    def tree_commit(self, head: str | None, info: str, message: str,
                    identity: Identity | None) -> str:
        """A commit of HEAD's tree changed by INFO; no ref, index or file moves."""
        return self.commit_tree(self.build_tree(head, info), [head] if head else [], message,
                                identity)

    def commit_tree(self, tree: str, parents: list[str], message: str,
                    identity: Identity | None, env: dict[str, str] | None = None) -> str:
        """A commit object for TREE; no ref moves.  In the agent's name it is written here
        and signed with the agent's key; a person's goes through `git commit-tree`, with
        their identity and signing settings."""
        key = self.agent_key() if identity is not None else None
        if identity is None or key is None:
            env = {**(env or {}), **(identity.env() if identity else {})}
            sha = self._run(*self.sign_args(identity), "commit-tree", tree,
                            *[a for p in parents for a in ("-p", p)],
                            *(["-S"] if self.sign_args(identity) else []), "-F", "-",
                            env=env, stdin=message).strip()
            return self._made(sha, identity)
        who = identity.ident()
        payload = (f"tree {tree}\n".encode() + b"".join(f"parent {p}\n".encode()
                                                       for p in parents)
                   + b"author " + who + b"\ncommitter " + who + b"\n\n" + message.encode())
        signature = _ssh_sign(key, payload)
        header, _, body = payload.partition(b"\n\n")
        lines = signature.rstrip(b"\n").split(b"\n")
        gpgsig = b"gpgsig " + b"\n ".join(lines)
        raw = header + b"\n" + gpgsig + b"\n\n" + body
        sha = str(self.objects._repo.odb.write(1, raw))
        return self._made(sha, identity)

    def create_commit_on(self, parent: str, files: dict[str, bytes], message: str,
                         identity: Identity) -> str:
        """A commit on PARENT with FILES changed; neither the working tree nor the index is
        touched."""
        return self.tree_commit(parent, self.index_info(dict(files)), message, identity)

    def empty_commit(self, parents: list[str], message: str, identity: Identity) -> str:
        """A commit of the empty tree: a lease's heartbeat (daemon/remote.py)."""
        if not parents:
            self.objects._repo.TreeBuilder().write()  # fsck and a push want it stored
        return self.commit_tree(EMPTY_TREE, parents, message, identity)

    # -- landing -------------------------------------------------------------------------
    def commit_files(self, files: dict[str, bytes | None], message: str,
                     identity: Identity | None = None,
                     guard: Mapping[str, bytes | None] | None = None,
                     _after_ref: str = "after-ref") -> str:
        """Commit FILES (None deletes) and nothing else, and bring the working tree and the
        index to it.

        GUARD maps paths to the content the caller last read from HEAD; if the working tree
        holds something else there (a person's uncommitted edit), nothing is written and
        Conflict is raised so the caller can retry after that edit is committed."""
        for path in files:
            check_no_symlink(self.root, path)
        info = self.index_info(files)
        with self._commit_lock():
            publisher = self._publisher()
            if publisher is not None:
                return self._commit_published(files, info, message, identity, guard or {},
                                              publisher)
            for _ in range(20):
                with self._index_lock():
                    _check_guard(self, guard or {})
                    head = self.head()
                    sha = self.tree_commit(head, info, message, identity)
                    journal = self.write_intent(files, guard or {})
                    crashpoint("mid-commit")
                    if not self._move_branch(sha, head):
                        journal.unlink(missing_ok=True)
                        continue  # a person's commit landed meanwhile: build on it
                    crashpoint(_after_ref)
                    self._follow_files(files, info)
                journal.unlink(missing_ok=True)
                return sha
        raise Conflict("the branch kept moving while janus-git committed; try again")

    def commit_many(self, files: dict[str, bytes], message: str, identity: Identity,
                    guard: Mapping[str, bytes | None]) -> str:
        """One commit changing thousands of files, in time linear in their number (the same
        engine as commit_files: `git commit --only -- <paths>` would match every pathspec
        against every index entry, 60 s for 4,800 paths in a 100,000-file repository)."""
        return self.commit_files(dict[str, "bytes | None"](files), message, identity, guard,
                                 _after_ref="hygiene-after-ref")

    def _move_branch(self, sha: str, head: str | None) -> bool:
        """Compare-and-swap the checked-out branch from HEAD to SHA; False if it moved."""
        status, _out, err = self._run_status("update-ref", "-m", "janus",
                                             f"refs/heads/{self.branch()}", sha, head or "")
        if status == 0:
            return True
        if "but expected" in err or "cannot lock ref" in err or "reference already" in err:
            return False
        raise GitError(["update-ref", sha], status, "", err)

    def _follow_files(self, files: dict[str, bytes | None], info: str) -> None:
        """The working tree and the index take FILES (the caller holds index.lock): what goes
        first, deepest first, so that a file can take the place of a folder it empties."""
        order = sorted(files, key=lambda p: (files[p] is not None, -p.count("/")))
        for path in order:
            _write_worktree(self.root, path, files[path])
        self._update_index(info)

    def _update_index(self, info: str) -> None:
        """The index gets INFO's entries, written as git writes it: into a copy, renamed into
        place while we hold index.lock (a person's git waits or retries meanwhile)."""
        index = self.git_dir / "index"
        tmp = self.git_dir / "janus" / f"index-{os.getpid()}-{threading.get_ident()}"
        try:
            tmp.write_bytes(index.read_bytes())
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
        self._run("update-index", "--index-info", env={"GIT_INDEX_FILE": str(tmp)},
                  stdin=info)
        os.replace(tmp, index)

    def _commit_published(self, files: dict[str, bytes | None], info: str, message: str,
                          identity: Identity | None, guard: Mapping[str, bytes | None],
                          publisher) -> str:
        """Remote mode: the commit is built beside the index, pushed, and only then does the
        local branch move and the tree follow.  A refused push is made again on the remote's
        new tip when nothing it changed moved meanwhile (the publisher's `land`); else it raises
        Conflict with the branch untouched."""
        _check_guard(self, guard)
        head = self.head()
        sha = self.tree_commit(head, info, message, identity)
        crashpoint("mid-commit")
        landed = publisher.land(self, sha, head, files, message, identity)
        if landed != sha:  # made again on the remote's new tip
            crashpoint("after-push")
            journal = self.write_intent(files, guard)
            with self._index_lock():
                self._follow_files(files, info)
            self._follow(sha, landed, sorted(files))
            journal.unlink(missing_ok=True)
            return landed
        crashpoint("after-push")  # on the remote, not yet here: the next start fetches it
        journal = self.write_intent(files, guard)
        with self._index_lock():
            if not self._move_branch(sha, head):
                raise Conflict("the local branch moved while the push was in flight")
            self._follow_files(files, info)
        journal.unlink(missing_ok=True)
        return sha

    def _follow(self, built: str, landed: str, paths: list[str]) -> None:
        """After LANDED (BUILT made again on the remote's new tip) is on the remote: the
        index and working tree, which hold BUILT's files, follow to LANDED by git's two-tree
        merge (which refuses to overwrite anything a person changed), and the branch moves.
        If the merge refuses, our PATHS are put back and the branch is fast-forwarded as
        after any fetch.  A crash between the merge and the branch's move leaves an index
        that already matches LANDED: the next start's fast-forward takes it as it is."""
        old = self.head()
        try:
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

    def commit_all_staged(self, message: str, identity: Identity | None = None) -> str:
        """`git commit` of the index as it is (init's first commit)."""
        env = identity.env() if identity else None
        self._run_retrying(*self.sign_args(identity), "commit", "-q", "--no-verify",
                           *(["-S"] if self.sign_args(identity) else []), "--allow-empty",
                           "-F", "-", env=env, stdin=message)
        return self._made(self._run("rev-parse", "HEAD").strip(), identity)

    def add_all(self) -> None:
        self._run("add", "-A")

    # -- locks and the journal -----------------------------------------------------------
    @contextlib.contextmanager
    def _commit_lock(self):
        """janus-git processes commit one at a time."""
        jdir = self.git_dir / "janus"
        jdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(jdir / "commit.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _index_lock(self):
        """git's own `index.lock`, taken as git takes it (O_EXCL), waiting politely while a
        person's git holds it.  It names this process, so that a `kill -9` here leaves a lock
        the next start can tell from a live person's."""
        lock = self.git_dir / "index.lock"
        deadline = time.monotonic() + LOCK_RETRY_SECONDS
        delay = 0.002
        recovered = False
        while True:
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                if not recovered and self._dead_lock_owner() is not None:
                    # a janus-git process killed while it held the lock: put right what it
                    # left (its journal) and go on, whoever meets it first (a person's CLI)
                    recovered = True
                    self.recover_intents()
                    continue
                if time.monotonic() > deadline:
                    raise Conflict(f"{lock} was held for {LOCK_RETRY_SECONDS:.0f} s by "
                                   "another git process; if none is running, remove it") \
                        from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        try:
            os.write(fd, _LOCK_TAG + str(os.getpid()).encode() + b"\n")
            os.close(fd)
            yield
        finally:
            lock.unlink(missing_ok=True)

    def write_intent(self, files: dict[str, bytes | None],
                     before: Mapping[str, bytes | None]) -> Path:
        """Journal a write-and-commit: for each path the content before and after.  Whichever
        of the two a dead process left in the working tree, it is janus-git's, and recovery
        puts the path to HEAD (the commit either happened or did not)."""
        jdir = self.git_dir / "janus"
        jdir.mkdir(parents=True, exist_ok=True)
        path = jdir / f"intent-{os.getpid()}-{threading.get_ident()}.json"
        intent = {p: [_digest(before.get(p, _read_or_none(self.root / p))), _digest(d)]
                  for p, d in files.items()}
        atomic_write(path, json.dumps(intent).encode())
        return path

    def recover_intents(self) -> list[str]:
        """Undo what janus-git processes that died mid-commit left: their index.lock, and
        the files they wrote but did not bring the index to."""
        self._recover_index_lock()
        restored = []
        for journal in (self.git_dir / "janus").glob("intent-*.json"):
            pid = int(journal.stem.split("-")[1])
            if _alive(pid):
                continue  # in flight (this process's other threads included)
            try:
                intent = json.loads(journal.read_text() or "{}")
            except ValueError:
                intent = {}
            mine = []
            for path, digests in intent.items():
                if _digest(_read_or_none(self.root / path)) not in digests:
                    continue  # someone else's content now (or a merge's): leave it alone
                _write_worktree(self.root, path, self.read_blob("HEAD", path))
                mine.append(path)
            if mine:
                self._run_retrying("reset", "-q", "HEAD", "--", *mine)
            restored += mine
            journal.unlink(missing_ok=True)
        for tmp in (self.git_dir / "janus").glob("index-*"):
            if not _alive(int(tmp.name.split("-")[1])):
                tmp.unlink(missing_ok=True)
        return restored

    def _dead_lock_owner(self) -> int | None:
        """The pid of the janus-git process that holds index.lock, if it is dead."""
        try:
            tag = (self.git_dir / "index.lock").read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None
        if not tag.startswith(_LOCK_TAG):
            return None  # a person's git: theirs to finish
        try:
            pid = int(tag[len(_LOCK_TAG):].strip() or 0)
        except ValueError:
            return None
        return pid if pid and not _alive(pid) else None

    def _recover_index_lock(self) -> None:
        pid = self._dead_lock_owner()
        if pid is not None:
            log.warning("removed the index.lock left by janus-git process %d", pid)
            (self.git_dir / "index.lock").unlink(missing_ok=True)


def _check_guard(repo: "Commits", guard: Mapping[str, bytes | None]) -> None:
    """Nothing under GUARD's paths differs from what the caller read from HEAD, or from what
    a checkout of HEAD put there: a symlink or a gitlink's empty folder where HEAD has one is
    git's, not a person's edit (and a symlink is never followed)."""
    for path, expected in guard.items():
        target = repo.root / path
        if target.is_symlink() or target.is_dir():
            found = repo.entry("HEAD", path)
            link = os.readlink(target).encode() if target.is_symlink() else None
            if found is not None and (
                    (found[0] == SYMLINK and link is not None
                     and repo.read_object(found[1]) == link)
                    or (found[0] in (GITLINK, TREE) and link is None)):
                continue  # as a checkout of HEAD left it (a folder's files have guards of
                # their own where they are changed)
        elif _read_or_none(target) == expected:
            continue
        raise Conflict(f"{path} has uncommitted changes in the working tree; commit or "
                       "discard them and the daemon will retry")


def _write_worktree(root: Path, path: str, data: bytes | None) -> None:
    """PATH in the working tree as DATA (None: gone).  What a commit left there that is no
    file (a gitlink's empty folder, a symlink) is replaced, never followed."""
    target = root / path
    if data is None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if target.is_dir() and not target.is_symlink():
                with contextlib.suppress(OSError):
                    target.rmdir()
            else:
                target.unlink()
        return
    if target.is_dir() and not target.is_symlink():
        try:
            target.rmdir()  # a gitlink checks out as an empty folder
        except OSError:
            raise Conflict(f"{path} is a folder with files in it; move them and the daemon "
                           "will retry") from None
    atomic_write(target, data)


def _ssh_sign(key: Path, payload: bytes) -> bytes:
    """An SSH signature of PAYLOAD in git's namespace, as `git commit -S` makes it: in
    process for an ed25519 key (sshsig.py), else by ssh-keygen."""
    from .sshsig import sign
    made = sign(key, payload)
    if made is not None:
        return made
    try:
        proc = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-n", "git", "-f", str(key)],
                              input=payload, capture_output=True)
    except FileNotFoundError:
        raise JanusError("ssh-keygen is not installed (apt-get install openssh-client): the "
                         "agent signs its commits with it") from None
    if proc.returncode != 0 or b"BEGIN SSH SIGNATURE" not in proc.stdout:
        raise JanusError(f"ssh-keygen could not sign with {key}: "
                         f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
    return proc.stdout


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
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


__all__ = ["EMPTY_TREE", "Commits", "Identity", "UnsafePath", "check_no_symlink", "is_sha"]
