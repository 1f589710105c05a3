"""Who may change what the agent may do: the rules in force, derived from history alone.

The guarded paths are `state/` (agent.yaml, allowed_signers, constitution.md and anything
else there) and `missions/`, and the removal of `state/STOP`.  A commit's change to them takes
effect only if its author is an approver under the rules in force *before* it (and its
signature verifies against the allowed_signers in force then, where signatures are
required), or if it is the agent's own signed commit (its corrections and mission
bookkeeping).  Anyone may impose the stop; only an approver may lift it.

Walking the first-parent line from the root commit gives the same rules on every clone, so
daemons sharing a remote agree; the walk is cached under .git/janus/ (derived data only).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .config import AGENT_PATH, Config, config_from_text
from .errors import ConfigError, JanusError
from .gitrepo import REGULAR_MODES, Commit, GitRepo, mode_name, parse_commit
from .util import atomic_write

log = logging.getLogger(__name__)
GUARDED_DIRS = ("state", "missions")
STOP_PATH = "state/STOP"
_GOOD_SSH = re.compile(r'Good "git" signature for (\S+) with')
_GOOD_GPG = re.compile(r"\[GNUPG:\] GOODSIG \S+ .*?<([^>]+)>")


def is_guarded(path: str, change: str) -> bool:
    """Does this change of PATH need an approver?  Adding or editing the stop does not; its
    removal does, and so does turning it into anything but a file (T)."""
    if path == STOP_PATH:
        return change in ("D", "T")
    return path.startswith(tuple(d + "/" for d in GUARDED_DIRS))


def irregular(commit: Commit, paths) -> dict[str, int]:
    """The PATHS COMMIT left as something other than a regular file (a symlink, a gitlink):
    guarded paths are files, whoever commits, so these are refused and put back."""
    return {p: m for p in paths if (m := commit.modes.get(p, 0)) and m not in REGULAR_MODES}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    approver: str = ""
    signer: str = ""


@dataclass
class Rules:
    """The guarded files in force after commit AT, and the configuration they make."""
    at: str
    files: dict[str, bytes]
    config: Config

    def ids(self) -> dict[str, str]:
        """Each file's git blob id (what the cache keeps: contents are in git already)."""
        return {p: _blob_id(d) for p, d in self.files.items()}

    @property
    def stopped(self) -> bool:
        return STOP_PATH in self.files

    def signers(self) -> bytes:
        return self.files.get(self.config["allowed_signers"], b"")


@dataclass
class Refusal:
    commit: Commit
    paths: list[str]
    reason: str


@dataclass
class Trust:
    """Judges commits against the rules in force, and keeps those rules current."""
    repo: GitRepo
    rules: Rules | None = None
    refusals: list[Refusal] = field(default_factory=list)
    _verified: dict[tuple[str, str, str], tuple[bool, str]] = field(default_factory=dict)
    # early checks under way (prefetch), by (commit, signers digest): the judge waits for one
    _early_started: dict[tuple[str, str], threading.Thread] = field(default_factory=dict)
    _root_author: str | None = None
    _saved_files: dict | None = None  # the files whose ids _ids holds (hashed once per change)
    _ids: dict[str, str] = field(default_factory=dict)

    # -- identity ------------------------------------------------------------------------
    def signed_by(self, sha: str, principal: str, rules: Rules) -> tuple[bool, str]:
        """Does SHA carry a good signature by PRINCIPAL's key, per the allowed_signers in
        RULES?  And why not."""
        key = (sha, principal.lower(), hashlib.sha256(rules.signers()).hexdigest())
        early = self._early_started.pop((sha, key[2]), None)
        if early is not None:
            early.join()  # checked ahead (prefetch): its answer may be in the cache
        if key not in self._verified:
            self._verified[key] = self._verify(sha, principal.lower(), rules.signers(),
                                               key[2])
        return self._verified[key]

    def prefetch(self, sha: str) -> None:
        """Where approvals must be signed, start checking the signature of SHA (a new HEAD)
        by its author's principal in a thread of its own, while the catch-up reads the log:
        the judge then finds the answer waiting.  It only fills the cache, keyed by commit,
        principal and signers, so it can never change a verdict."""
        rules = self.rules
        if rules is None or not rules.config["require_signed_approvals"]:
            return
        thread = threading.Thread(target=self._check_early, args=(sha, rules),
                                  name="verify-early", daemon=True)
        raw_key = (sha, hashlib.sha256(rules.signers()).hexdigest())
        self._early_started[raw_key] = thread
        thread.start()

    def _check_early(self, sha: str, rules: Rules) -> None:
        try:
            raw = self.repo.read_object_once(sha)
            author = parse_commit(sha, raw).author_email.lower() if raw else None
            entry = rules.config.approver_for(author) if author else None
            if entry is None:
                return
            principal = entry.get("principal", entry["email"]).lower()
            signers = rules.signers()
            key = (sha, principal, hashlib.sha256(signers).hexdigest())
            if key not in self._verified:
                self._verified[key] = self._verify(sha, principal, signers, key[2], raw)
        except Exception:  # a guess that failed costs nothing: the judge checks itself
            log.debug("early signature check of %s failed", sha, exc_info=True)

    def _verify(self, sha: str, principal: str, signers: bytes, digest: str,
                raw: bytes | None = None) -> tuple[bool, str]:
        where = self.repo.git_dir / "janus" / "signers" / digest
        if not where.is_file():
            atomic_write(where, signers)
        if raw is None:
            raw = self.repo.read_object(sha)
        payload, signature = _split_signature(raw or b"")
        if signature is None:
            return False, "the commit is not signed"
        bad = (False, "its signature does not verify against the allowed_signers in force "
               f"as {principal}")
        if signature.startswith(b"-----BEGIN SSH SIGNATURE-----"):
            # ssh-keygen itself, on the object read through the open cat-file pipe: a third
            # of the time of `git verify-commit`, which starts it after a git of its own
            return (True, "") if _ssh_verify(where, principal, payload, signature) else bad
        status, text = self.repo.verify_commit(sha, where)  # GPG, or anything else
        m = _GOOD_SSH.search(text) or _GOOD_GPG.search(text)
        return (True, "") if status == 0 and m and m.group(1).lower() == principal else bad

    def is_agent(self, commit: Commit, rules: Rules | None = None) -> bool:
        """The agent's own commit: signed with a key listed under the agent's e-mail.  The
        e-mail a commit carries proves nothing (anyone who can push can write it)."""
        rules = rules or self.rules
        assert rules is not None
        agent = rules.config.identity.email.lower()
        if commit.malformed or commit.author_email.lower() != agent:
            return False
        if commit.sha in self.repo.made:
            return True
        return self.signed_by(commit.sha, agent, rules)[0]

    def authorize(self, commit: Commit, rules: Rules) -> Verdict:
        """Is COMMIT an approver's, under RULES (author listed; signature where required)?"""
        config = rules.config
        if commit.malformed:
            return Verdict(False, f"the commit object is malformed ({commit.malformed})")
        author = commit.author_email.lower()
        if author == config.identity.email.lower():
            return Verdict(False, "the agent's own identity can never approve")
        entry = config.approver_for(author)
        if entry is None and not config["approvers"] and author == self._creator():
            return Verdict(True, "the repository's creator, while no approver is listed",
                           author)
        if entry is None:
            return Verdict(False, f"{commit.author_email} is not in approvers "
                           "(state/agent.yaml)")
        if not config["require_signed_approvals"]:
            return Verdict(True, "approver", author)
        principal = entry.get("principal", entry["email"]).lower()
        ok, why = self.signed_by(commit.sha, principal, rules)
        if not ok:
            return Verdict(False, f"signed approvals are required and {why}", author)
        return Verdict(True, "approver", author, principal)

    def _creator(self) -> str:
        if self._root_author is None:
            self._root_author = self.repo.commit_info(
                self.repo.root_commit()).author_email.lower()
        return self._root_author

    # -- the rules -----------------------------------------------------------------------
    def load(self, head: str) -> Rules:
        """The rules in force at HEAD: from the cache where it is an ancestor, else from the
        root commit; then every guarded commit since, judged in order."""
        rules = self._cached(head) or self._initial(head)
        self.rules = rules
        if rules.at != head:
            for commit in self.repo.first_parent_log(rules.at, head, paths=GUARDED_DIRS):
                self.apply(commit)
            self.rules.at = head
        self.save()
        return self.rules

    def guarded_paths(self, rev: str) -> list[str]:
        return [p for d in GUARDED_DIRS for p in self.repo.ls_tree(rev, d)]

    def _initial(self, head: str) -> Rules:
        root = self.repo.root_commit(head)
        files = {}
        for path in self.guarded_paths(root):
            data = self.repo.read_blob(root, path)
            if data is not None:
                files[path] = data
        return Rules(root, files, _config_of(files))  # the repository's creator is trusted

    def apply(self, commit: Commit) -> list[Refusal]:
        """Take COMMIT's changes to the guarded paths into the rules if it may make them;
        returns what was refused (and remembers it for the daemon to answer)."""
        assert self.rules is not None
        rules = self.rules
        changed = {p: c for p, c in commit.changes.items()
                   if p.startswith(tuple(d + "/" for d in GUARDED_DIRS))}
        if not changed:
            return []
        refused: list[Refusal] = []
        odd = irregular(commit, changed)
        if odd:
            refused.append(Refusal(commit, sorted(odd), "guarded paths are regular files; " +
                                   ", ".join(f"{p} became {mode_name(m)}"
                                             for p, m in sorted(odd.items()))))
        guarded = [p for p, c in changed.items() if is_guarded(p, c) and p not in odd]
        accept = set(changed) - set(guarded) - set(odd)  # the stop, committed by anyone
        if guarded:
            verdict = self._may_change(commit, rules)
            stale = [p for p in guarded if verdict.ok and not self.is_agent(commit, rules)
                     and self.repo.read_blob(commit.parents[0], p) != rules.files.get(p)]
            if stale:
                verdict = Verdict(False, f"it builds on {', '.join(stale)} as a refused commit "
                                  "left it; make the change on the rules in force (after the "
                                  "daemon's correction)")
            files: dict[str, bytes | None] = dict(rules.files)
            if verdict.ok:
                files.update(self._contents(commit, guarded))
                try:
                    config = _config_of({p: d for p, d in files.items() if d is not None})
                except ConfigError as e:
                    verdict = Verdict(False, f"it leaves an invalid configuration ({e}); the "
                                      "last valid one stays in force")
                else:
                    rules.config = config
                    accept |= set(guarded)
            if not verdict.ok:
                refused.append(Refusal(commit, sorted(guarded), verdict.reason))
        if accept:  # a new mapping, never changed in place: save() hashes it once
            merged: dict[str, bytes | None] = {**rules.files,
                                               **self._contents(commit, sorted(accept))}
            rules.files = {p: d for p, d in merged.items() if d is not None}
        rules.at = commit.sha
        self.refusals.extend(refused)
        for r in refused:
            log.warning("refused %s's change to %s in %s: %s", commit.author_email,
                        ", ".join(r.paths), commit.sha[:10], r.reason)
        return refused

    def _may_change(self, commit: Commit, rules: Rules) -> Verdict:
        if self.is_agent(commit, rules):
            return Verdict(True, "the agent's own correction")
        verdict = self.authorize(commit, rules)
        if not verdict.ok:
            return verdict
        # a merge brings in other commits: each that touched a guarded path is judged by its
        # own author (the agent's signed policy branch passes; a pusher's commit does not)
        for side in self.repo.side_commits(commit, *GUARDED_DIRS):
            if self.is_agent(side, rules):
                continue
            inner = self.authorize(side, rules)
            if not inner.ok:
                return Verdict(False, f"the merge brings in {side.sha[:10]}, whose change to "
                               f"the rules is refused: {inner.reason}")
        return verdict

    def _contents(self, commit: Commit, paths: list[str]) -> dict[str, bytes | None]:
        return {p: self.repo.read_blob(commit.sha, p) for p in paths}

    # -- the cache -----------------------------------------------------------------------
    @property
    def _cache_path(self) -> Path:
        return self.repo.git_dir / "janus" / "rules.json"

    def save(self) -> None:
        if self.rules is None:
            return
        ids = self.rules.ids() if self._saved_files is not self.rules.files else self._ids
        self._saved_files, self._ids = self.rules.files, ids
        atomic_write(self._cache_path, json.dumps({"at": self.rules.at, "ids": ids}).encode())

    def _cached(self, head: str) -> Rules | None:
        try:
            data = json.loads(self._cache_path.read_text())
            ids, at = dict(data["ids"]), data["at"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        read = {p: self.repo.read_object(i) for p, i in ids.items()}
        files = {p: d for p, d in read.items() if d is not None}
        if len(files) != len(read):
            return None
        if not self.repo.is_ancestor(at, head):
            if self.repo.is_ancestor(at, self.repo.head() or head):
                return None  # derived further along the same history (by a command)
            # the rules were derived on a history that is no longer there: re-deriving them
            # from a root commit anyone who can push may have replaced would hand that
            # pusher the rules
            raise JanusError(
                f"the watched branch was rewritten: {at[:10]}, where the rules in force were "
                "last derived, is not in its history any more; check the history (`git "
                "reflog`), then remove .git/janus/rules.json to derive the rules from it")
        try:
            return Rules(at, files, _config_of(files))
        except ConfigError:
            return None


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _split_signature(raw: bytes) -> tuple[bytes, bytes | None]:
    """A commit object as (what was signed, the signature): the `gpgsig` header and its
    continuation lines are the signature; the object without them is what was signed."""
    head, sep, body = raw.partition(b"\n\n")
    payload, signature, inside = [], [], False
    for line in head.split(b"\n"):
        if line.startswith(b"gpgsig "):
            inside = True
            signature.append(line[7:])
        elif inside and line.startswith(b" "):
            signature.append(line[1:])
        else:
            inside = False
            payload.append(line)
    text = b"\n".join(payload) + sep + body
    return text, (b"\n".join(signature) + b"\n") if signature else None


def _ssh_verify(signers: Path, principal: str, payload: bytes, signature: bytes) -> bool:
    with tempfile.NamedTemporaryFile(dir=signers.parent, suffix=".sig") as sig:
        sig.write(signature)
        sig.flush()
        try:
            return subprocess.run(["ssh-keygen", "-q", "-Y", "verify", "-f", str(signers),
                                   "-I", principal, "-n", "git", "-s", sig.name],
                                  input=payload, capture_output=True).returncode == 0
        except FileNotFoundError:
            raise JanusError("ssh-keygen is not installed (apt-get install openssh-client): "
                             "SSH signatures cannot be checked") from None


def _config_of(files: dict[str, bytes]) -> Config:
    return config_from_text(files.get(AGENT_PATH))
