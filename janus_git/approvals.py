"""Reading people's commits: who approved what, the digest it binds, signatures, reverts."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .config import Config
from .gitrepo import Commit, GitRepo
from .proposal import Proposal

APPROVAL_BRANCH_PREFIX = "janus/proposal/"
TRAILER_APPROVAL_BRANCH = "Janus-Approval-Branch"
_GOOD_SSH = re.compile(r'Good "git" signature for (\S+) with')
_GOOD_GPG = re.compile(r"\[GNUPG:\] GOODSIG \S+ .*?<([^>]+)>")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    approver: str = ""
    signer: str = ""


def signer_of(repo: GitRepo, config: Config, sha: str) -> tuple[str | None, str]:
    """The principal that signed SHA per `git verify-commit`, or None and why not."""
    signers = repo.root / config["allowed_signers"]
    status, out, err = repo.run_status("-c", f"gpg.ssh.allowedSignersFile={signers}",
                                       "verify-commit", "--raw", sha)
    text = f"{out}\n{err}"  # verify-commit reports on stderr
    m = _GOOD_SSH.search(text) or _GOOD_GPG.search(text)
    if status == 0 and m:
        return m.group(1).lower(), ""
    if "no signature" in text.lower() or not text.strip():
        return None, "the commit is not signed"
    return None, "the signature does not verify against " + config["allowed_signers"]


def check_approval(repo: GitRepo, config: Config, commit: Commit, p: Proposal) -> Verdict:
    """Is COMMIT (a first-parent commit on the watched branch that moved P to approved) a
    valid approval under PRODUCT.md's rules?"""
    author = commit.author_email.lower()
    agent = config.identity.email.lower()
    if author == agent:
        if TRAILER_APPROVAL_BRANCH in commit.trailers() and not commit.is_merge:
            return Verdict(False, "the approval branch was fast-forwarded: the agent's own "
                           "commit is no approval; merge it with a merge commit (--no-ff)")
        return Verdict(False, "the agent's own identity can never approve")
    if author not in config.approver_emails:
        return Verdict(False, f"{commit.author_email} is not in approvers (state/agent.yaml)")
    if p.recompute_digest() != p.digest:
        return Verdict(False, "the proposal's type, tool or args do not match its digest: "
                       "approve the proposal as filed, or file a new one")
    signer = ""
    if config["require_signed_approvals"]:
        signer, why = signer_of(repo, config, commit.sha)
        if signer is None:
            return Verdict(False, f"signed approvals are required and {why}", author)
        if signer not in config.approver_principals():
            return Verdict(False, f"signed by {signer}, who is not an approver's principal",
                           author, signer)
    return Verdict(True, "approved", author, signer or "")


def is_revert_of_result(old: Proposal, new: Proposal) -> bool:
    """A `git revert` of a result commit puts the file back to running."""
    return old.status.value in ("succeeded", "failed") and new.status.value == "running"
