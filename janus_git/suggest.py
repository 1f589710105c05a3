"""The agent proposes a policy change, and never makes one.

When people have approved the same tool for the same proposal type `policy.suggest_after`
times (and the tool's risk is within `max_auto_risk`), the agent offers a branch
`janus/policy/<tool>-<type>` whose one commit lets that work run by itself, with the policy
back-test in its message.  It is a change to a guarded file: it takes effect only when an
approver merges the branch (trust.py judges the merge by its author).
"""
from __future__ import annotations

import copy
import logging

import yaml

from .config import AGENT_PATH, RISKS, Config, config_from_text
from .gitrepo import GitRepo, format_message
from .policytest import back_test, render
from .proposal import load_yaml

log = logging.getLogger(__name__)
BRANCH_PREFIX = "janus/policy/"


def maybe_offer(repo: GitRepo, config: Config, index, type_: str, tool: str,
                in_force: bytes | None = None) -> str | None:
    """Offer the branch if the count is reached and none is offered yet; returns its name."""
    threshold = int(config["policy"].get("suggest_after", 0))
    spec = config.tools.get(tool)
    if not threshold or spec is None or spec.get("auto_exec") and type_ in config[
            "policy"]["auto_types"]:
        return None
    if RISKS.index(spec["risk"]) > RISKS.index(config["policy"]["max_auto_risk"]):
        return None  # never offer to let riskier work than the policy allows run alone
    approved = index.query(tool=tool, type_=type_, status=["succeeded"])
    branch = f"{BRANCH_PREFIX}{tool}-{type_}"
    if len(approved) < threshold or repo.branch_exists(branch):
        return None
    rows = index.query()
    head = repo.head()
    if head is None:
        return None
    # built on the agent.yaml in force, never on a HEAD that may hold a refused change
    text = in_force if in_force is not None else repo.read_blob(head, AGENT_PATH) or b""
    data = load_yaml(text, AGENT_PATH) or {}  # bounded: agent.yaml is anyone's text
    new = copy.deepcopy(data)
    new.setdefault("tools", {}).setdefault(tool, dict(spec))["auto_exec"] = True
    policy = new.setdefault("policy", {})
    types = policy.setdefault("auto_types", list(config["policy"]["auto_types"]))
    if type_ not in types:
        types.append(type_)
    body = yaml.safe_dump(new, sort_keys=False).encode()
    candidate = config_from_text(body)
    report = render(back_test(rows, config, candidate, f"{branch}:{AGENT_PATH}"), limit=10)
    msg = format_message(
        f"janus: let {tool} run by itself for {type_} (proposed, not in force)",
        f"People approved {len(approved)} {tool} proposals of type {type_}; this change would "
        f"let such work run with no approval.  It takes effect only if an approver merges "
        f"this branch with a merge commit.\n\n{report}",
        {"Janus-Policy-Proposal": f"{tool}:{type_}"})
    sha = repo.create_commit_on(head, {AGENT_PATH: body}, msg, config.identity)
    repo.update_branch_ref(branch, sha, None)
    log.info("offered %s: %d approvals of %s for %s", branch, len(approved), tool, type_)
    return branch
