"""The policy: decide(), `janus-git policy test` (the back-test) and the agent's own offer of a
policy change, which takes effect only when an approver merges it."""
from __future__ import annotations

import json
import subprocess

import yaml

from janus_git.config import config_from_text
from janus_git.policy import decide
from janus_git.proposal import Proposal

from conftest import ALICE, MALLORY, git
from daemonkit import burst, propose, record, set_status, status


def _p(type_: str, tool: str) -> Proposal:
    return Proposal(id="x", mission="M", type=type_, tool=tool, args=[], rationale="",
                    created_at="", created_by="", digest="")


def test_decide_reads_only_the_registry_and_the_whitelist(state_dir):
    config = config_from_text((state_dir / "state/agent.yaml").read_bytes())
    assert decide(_p("analysis", "shell"), config).auto
    assert decide(_p("maintenance", "shell"), config).rule == "manual:type-not-whitelisted"
    assert decide(_p("analysis", "python"), config).rule == "manual:tool-not-auto-exec"
    assert decide(_p("analysis", "teleport"), config).reject
    alpha = config_from_text(yaml.safe_dump({**config.data, "mode": "alpha"}))
    assert decide(_p("analysis", "shell"), alpha).rule == "manual:alpha-mode"


def test_quorum_is_the_larger_of_tool_and_risk(state_dir):
    config = config_from_text(yaml.safe_dump({
        "policy": {"approvals_required": {"high": 2}},
        "tools": {"python": {"risk": "high"}, "jq": {"risk": "medium", "approvals_required": 3},
                  "ls": {"risk": "low"}}}))
    assert [config.approvals_required(t) for t in ("python", "jq", "ls")] == [2, 3, 1]


def _policy_test(root, *args):
    out = subprocess.run(["janus-git", "policy", "test", "-C", str(root), *args],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_policy_test_reports_what_would_change(state_dir):
    manual = propose(state_dir, "-c", "print(1)", tool="python", type_="analysis")
    auto = propose(state_dir, "echo", "hi", type_="analysis")
    burst(state_dir)
    set_status(state_dir, manual, "approved")
    burst(state_dir)
    assert status(state_dir, manual) == "succeeded" and status(state_dir, auto) == "succeeded"
    data = yaml.safe_load((state_dir / "state/agent.yaml").read_text())
    data["tools"]["python"].update(auto_exec=True, risk="low")
    data["tools"]["shell"]["auto_exec"] = False
    (state_dir / "state/agent.yaml").write_text(yaml.safe_dump(data))
    report = json.loads(_policy_test(state_dir, "--json"))
    assert [s["id"] for s in report["would_run_alone"]] == [manual]
    assert [s["id"] for s in report["would_need_person"]] == [auto]
    assert report["proposals"] == 2
    text = _policy_test(state_dir)
    assert "1 would have run by themselves" in text and manual in text
    # against a branch: the same candidate, committed where only git sees it
    git(state_dir, "checkout", "-q", "-b", "candidate")
    git(state_dir, "commit", "-qam", "candidate policy")
    git(state_dir, "checkout", "-q", "main")
    assert json.loads(_policy_test(state_dir, "--json", "--against", "candidate"))[
        "would_run_alone"][0]["id"] == manual
    assert json.loads(_policy_test(state_dir, "--json", "--since", "0"))["proposals"] == 0


def test_policy_test_with_no_change_says_so(state_dir):
    propose(state_dir, "echo", "hi", type_="analysis")
    assert "no proposal would be decided differently" in _policy_test(state_dir)


def test_agent_offers_a_policy_branch_and_only_a_merge_makes_it(state_dir):
    data = yaml.safe_load((state_dir / "state/agent.yaml").read_text())
    data["policy"]["suggest_after"] = 2
    data["tools"]["jq"].update(risk="low")
    (state_dir / "state/agent.yaml").write_text(yaml.safe_dump(data))
    git(state_dir, "commit", "-qam", "suggest after 2", who=ALICE)
    ids = [propose(state_dir, "-n", f"{i}", tool="jq", type_="analysis") for i in range(2)]
    burst(state_dir)
    for pid in ids:
        set_status(state_dir, pid, "approved")
    burst(state_dir)
    assert [status(state_dir, p) for p in ids] == ["succeeded", "succeeded"]
    branch = "janus/policy/jq-analysis"
    msg = git(state_dir, "log", "-1", "--format=%B", branch).stdout
    assert "People approved 2 jq proposals" in msg and "policy test:" in msg
    offered = yaml.safe_load(git(state_dir, "show", f"{branch}:state/agent.yaml").stdout)
    assert offered["tools"]["jq"]["auto_exec"] is True
    # nothing changed by itself
    assert yaml.safe_load((state_dir / "state/agent.yaml").read_text())["tools"]["jq"].get(
        "auto_exec") is False
    # the offer waits; an approver's merge puts it in force
    later = propose(state_dir, "-n", "3", tool="jq", type_="analysis")
    burst(state_dir)
    assert status(state_dir, later) == "proposed"
    git(state_dir, "merge", "--no-ff", "-q", "-m", "take it", branch, who=ALICE)
    burst(state_dir)
    after = propose(state_dir, "-n", "4", tool="jq", type_="analysis")
    burst(state_dir)
    assert status(state_dir, after) == "succeeded", record(state_dir, after)


def test_a_non_approvers_merge_of_the_policy_branch_is_refused(state_dir):
    data = yaml.safe_load((state_dir / "state/agent.yaml").read_text())
    data["policy"]["suggest_after"] = 1
    data["tools"]["jq"].update(risk="low")
    (state_dir / "state/agent.yaml").write_text(yaml.safe_dump(data))
    git(state_dir, "commit", "-qam", "suggest after 1", who=ALICE)
    pid = propose(state_dir, "-n", "1", tool="jq", type_="analysis")
    burst(state_dir)
    set_status(state_dir, pid, "approved")
    burst(state_dir)
    git(state_dir, "merge", "--no-ff", "-q", "-m", "take it", "janus/policy/jq-analysis",
        who=MALLORY)
    later = propose(state_dir, "-n", "2", tool="jq", type_="analysis")
    burst(state_dir)
    assert status(state_dir, later) == "proposed"
    assert "mallory@example.com is not in approvers" in git(
        state_dir, "log", "--format=%B", "-5").stdout
