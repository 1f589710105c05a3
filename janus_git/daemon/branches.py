"""The approval branches: for each manual proposal the agent offers `janus/proposal/<id>`,
holding its own signed commit that sets the file to approved.  A merge of it (with a merge
commit) is an approval (approvals.branch_approval says when); a fast-forward lands the agent's
own commit, which is refused.  A branch goes once its proposal is decided or starts."""
from __future__ import annotations

from .. import lifecycle
from ..approvals import APPROVAL_BRANCH_PREFIX
from ..gitrepo import GitRepo
from ..proposal import Proposal
from .state import DaemonState


class ApprovalBranches:
    def __init__(self, repo: GitRepo, state: DaemonState) -> None:
        self.repo = repo
        self.state = state

    def load(self) -> None:
        """The branches that exist (at start: offered by an earlier run)."""
        self.state.branches = set(self.repo.branches(APPROVAL_BRANCH_PREFIX))

    def offer(self, p: Proposal) -> None:
        """For a manual proposal, a branch holding its approval: merge it (with a merge
        commit) to approve.  A fast-forward lands the agent's own commit, which is refused."""
        branch = f"{APPROVAL_BRANCH_PREFIX}{p.id}"
        if branch in self.state.branches:
            return
        sha = lifecycle.offer_approval(self.repo, p, self.state.config.identity, branch)
        self.repo.update_branch_ref(branch, sha, None)
        self.state.branches.add(branch)

    def drop(self, pid: str) -> None:
        branch = f"{APPROVAL_BRANCH_PREFIX}{pid}"
        if branch in self.state.branches:
            self.repo.delete_branch(branch)
            self.state.branches.discard(branch)
