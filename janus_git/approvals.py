"""What makes a commit an approval (the product's approval rules, README "Threat model").

- It is an approver's commit under the rules in force before it (author listed; where
  `require_signed_approvals` is on, signed by that approver's own principal).  The agent's
  own commits, and anything in the agent's name, never approve.
- It binds what was filed: the type, tool and args of the version it approved hash to the
  digest of the proposal as its filing commit added it, never to a `digest:` field that a
  later commit could rewrite.
- A merge approves only the proposal its `janus/proposal/<id>` branch names, and only while
  the branch tip it merged is the agent's own signed commit and the merge kept its file as is.
- A quorum (`approvals_required`) needs that many distinct approvers; the approvals counted so
  far are those the agent recorded in its own signed commits, never a list a person wrote.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .gitrepo import TRAILER_PROPOSAL, Commit, GitRepo
from .proposal import RUN_OUTCOMES, Proposal, Status
from .trust import Rules, Trust, Verdict

APPROVAL_BRANCH_PREFIX = "janus/proposal/"
TRAILER_APPROVAL_BRANCH = "Janus-Approval-Branch"


@dataclass(frozen=True)
class Filing:
    """A proposal as filed: the digest its type, tool and args hash to, and the commit."""
    digest: str | None
    commit: str | None
    proposal: Proposal | None


def check_approval(trust: Trust, rules: Rules, commit: Commit, then: Proposal,
                   filed: Filing) -> Verdict:
    """Is COMMIT, which left the proposal as THEN, a valid approval under RULES?"""
    if trust.is_agent(commit, rules):
        if TRAILER_APPROVAL_BRANCH in commit.trailers():
            return Verdict(False, "the approval branch was fast-forwarded: the agent's own "
                           "commit is no approval; merge it with a merge commit (--no-ff)")
        return Verdict(False, "the agent's own commit is no approval")
    verdict = trust.authorize(commit, rules)
    if not verdict.ok:
        return verdict
    if filed.digest is None:
        return Verdict(False, "the proposal as filed cannot be read; file a new one")
    if then.recompute_digest() != filed.digest:
        return Verdict(False, "the approved type, tool or args differ from what was filed ("
                       f"{describe_change(filed.proposal, then)}); approve the proposal as "
                       "filed, or file a new one")
    return verdict


def branch_approval(repo: GitRepo, trust: Trust, rules: Rules, merge: Commit,
                    pid: str, path: str) -> bool:
    """Is MERGE the merge of the agent's approval branch for PID, with its file as the
    agent put it there?"""
    if len(merge.parents) != 2:
        return False
    tip = repo.commit_info(merge.parents[1])
    trailers = tip.trailers()
    return (trailers.get(TRAILER_APPROVAL_BRANCH) == f"{APPROVAL_BRANCH_PREFIX}{pid}"
            and trailers.get(TRAILER_PROPOSAL) == pid and trust.is_agent(tip, rules)
            and repo.read_blob(merge.sha, path) == repo.read_blob(tip.sha, path))


def filing(repo: GitRepo, path: str, until: str = "HEAD") -> Filing:
    """The proposal as its filing commit (the last first-parent commit that added PATH)
    left it."""
    from .errors import ConfigError
    from .proposal import parse_proposal

    sha = repo.filing_commit(path, until)
    text = repo.read_blob(sha, path) if sha else None
    if text is None:
        return Filing(None, sha, None)
    try:
        p = parse_proposal(text, path)
    except ConfigError:
        return Filing(None, sha, None)
    return Filing(p.recompute_digest(), sha, p)


def describe_change(old: Proposal | None, new: Proposal) -> str:
    """`args: ["-c", "print(1)"] -> ["-c", "evil()"]`, for each of type, tool and args."""
    if old is None:
        return "the filed version cannot be read"
    parts = []
    for name in ("type", "tool", "args"):
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            parts.append(f"{name}: {_short(a)} -> {_short(b)}")
    return "; ".join(parts) or "no change"


def _short(value: object, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def counted(approvals: list[dict], rules: Rules) -> list[str]:
    """The distinct approvers among recorded APPROVALS who are still approvers."""
    out: list[str] = []
    for entry in approvals:
        by = str(entry.get("by", "")).lower()
        if by and by not in out and rules.config.approver_for(by) is not None:
            out.append(by)
    return out


def is_revert_of_result(old: Proposal, new: Proposal) -> bool:
    """A `git revert` of a result commit puts the file back to running."""
    return old.status in RUN_OUTCOMES and new.status == Status.RUNNING
