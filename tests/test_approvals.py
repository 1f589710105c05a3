"""The approval rules at the unit level: approvals.py and Trust.authorize on real commits in a
real state repository, with real SSH signatures; no daemon."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from janus_git import lifecycle
from janus_git.approvals import (
    APPROVAL_BRANCH_PREFIX,
    TRAILER_APPROVAL_BRANCH,
    Filing,
    branch_approval,
    check_approval,
    counted,
    describe_change,
    filing,
    is_revert_of_result,
)
from janus_git.config import AGENT_PATH, config_from_text
from janus_git.gitrepo import Commit, GitRepo, Identity, format_message
from janus_git.proposal import Proposal, Status, compute_digest
from janus_git.trust import Rules, Trust

from conftest import AGENT, ALICE, MALLORY, git

BOB = ("Bob Second", "bob@example.com")


@pytest.fixture
def repo(state_dir) -> GitRepo:
    return GitRepo(state_dir)


@pytest.fixture
def trust(repo) -> Trust:
    t = Trust(repo)
    t.load(repo.head())
    return t


def agent_files(repo: GitRepo, trust: Trust, args=("-c", "print(1)")) -> Proposal:
    """A manual proposal filed by the agent (its own signed commit)."""
    p = lifecycle.new_proposal(mission="TEST", type_="maintenance", tool="python",
                               args=list(args), rationale="r", created_by="agent")
    lifecycle.create(repo, p, trust.rules.config.identity)
    return p


def person_commits(root: Path, who, files: dict[str, bytes | str], message: str = "edit",
                   sign_key: Path | None = None) -> Commit:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data.encode() if isinstance(data, str) else data)
        git(root, "add", "--", rel)
    args = ["commit", "-q", "--allow-empty", "-m", message]
    if sign_key:
        args = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={sign_key}", *args, "-S"]
    git(root, *args, who=who)
    return GitRepo(root).commit_info("HEAD")


def edited(p: Proposal, **changes) -> bytes:
    data = yaml.safe_load(p.to_yaml())
    data.update(changes)
    return yaml.safe_dump(data, sort_keys=False).encode()


def rules_with(trust: Trust, files: dict[str, bytes] | None = None, **config) -> Rules:
    """The rules in force with CONFIG changed in agent.yaml (and FILES added)."""
    current = trust.rules
    data = yaml.safe_load(current.files[AGENT_PATH])
    data.update(config)
    text = yaml.safe_dump(data).encode()
    all_files = {**current.files, **(files or {}), AGENT_PATH: text}
    return Rules(current.at, all_files, config_from_text(text))


def keygen(tmp: Path, name: str) -> Path:
    key = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


# -- what was filed ----------------------------------------------------------------------------
def test_filing_binds_the_version_its_filing_commit_added(state_dir, repo, trust):
    p = agent_files(repo, trust)
    filed_at = repo.head()
    evil = ["-c", "print('pwned')"]
    person_commits(state_dir, MALLORY, {p.path: edited(
        p, args=evil, digest=compute_digest(p.type, p.tool, evil))})
    f = filing(repo, p.path)
    assert f.commit == filed_at
    assert f.digest == compute_digest("maintenance", "python", ["-c", "print(1)"])
    assert f.proposal.args == ["-c", "print(1)"]  # never the rewritten digest field


def test_filing_is_the_last_add_and_none_when_unreadable(state_dir, repo, trust):
    p = agent_files(repo, trust)
    git(state_dir, "rm", "-q", p.path)
    git(state_dir, "commit", "-qm", "gone", who=ALICE)
    again = person_commits(state_dir, MALLORY, {p.path: "status: [broken\n"})
    assert filing(repo, p.path) == Filing(None, again.sha, None)
    assert filing(repo, "proposals/2026/01/20260101-000000000-000000.yaml") == \
        Filing(None, None, None)


# -- is a commit an approval -------------------------------------------------------------------
def approval_by(state_dir, p: Proposal, who, sign_key=None, **changes) -> tuple[Commit, Proposal]:
    c = person_commits(state_dir, who, {p.path: edited(p, status="approved", **changes)},
                       f"approve {p.id}", sign_key)
    return c, Proposal(**{**p.__dict__, "status": Status.APPROVED,
                          **{k: v for k, v in changes.items()}})


def test_an_approvers_commit_of_the_filed_version_approves(state_dir, repo, trust):
    p = agent_files(repo, trust)
    c, then = approval_by(state_dir, p, ALICE)
    verdict = check_approval(trust, trust.rules, c, then, filing(repo, p.path))
    assert verdict.ok and verdict.approver == ALICE[1] and verdict.signer == ""


@pytest.mark.parametrize("who,why", [
    (MALLORY, "mallory@example.com is not in approvers"),
    (AGENT, "the agent's own identity can never approve"),  # unsigned, in the agent's name
])
def test_anyone_else_is_refused(state_dir, repo, trust, who, why):
    p = agent_files(repo, trust)
    c, then = approval_by(state_dir, p, who)
    verdict = check_approval(trust, trust.rules, c, then, filing(repo, p.path))
    assert not verdict.ok and why in verdict.reason


def test_the_agents_own_commit_is_no_approval(repo, trust):
    p = agent_files(repo, trust)
    p.status = Status.APPROVED
    sha = lifecycle.correct(repo, p, trust.rules.config.identity, reason="x",
                            update=lambda q: setattr(q, "status", Status.APPROVED))
    c = repo.commit_info(sha)
    repo.made.discard(sha)  # known by its signature, as after a restart
    assert trust.is_agent(c)
    verdict = check_approval(trust, trust.rules, c, p, filing(repo, p.path))
    assert not verdict.ok and verdict.reason == "the agent's own commit is no approval"


def test_approving_other_args_than_filed_is_refused(state_dir, repo, trust):
    p = agent_files(repo, trust)
    c, then = approval_by(state_dir, p, ALICE, args=["-c", "print(2)"])
    verdict = check_approval(trust, trust.rules, c, then, filing(repo, p.path))
    assert not verdict.ok
    assert 'args: ["-c", "print(1)"] -> ["-c", "print(2)"]' in verdict.reason
    unreadable = check_approval(trust, trust.rules, c, then, Filing(None, None, None))
    assert "cannot be read" in unreadable.reason


# -- merges of the approval branch -------------------------------------------------------------
def offer(repo: GitRepo, trust: Trust, p: Proposal, pid: str | None = None) -> str:
    """The agent's approval branch for P (as the daemon offers it), named for PID."""
    pid = pid or p.id
    branch = f"{APPROVAL_BRANCH_PREFIX}{pid}"
    shown = Proposal(**{**p.__dict__, "status": Status.APPROVED})
    msg = format_message(f"janus: approve {pid}", "", {lifecycle.TRAILER_PROPOSAL: pid,
                                                       TRAILER_APPROVAL_BRANCH: branch})
    sha = repo.create_commit_on(repo.head(), {p.path: shown.to_yaml()}, msg,
                                trust.rules.config.identity)
    repo.update_branch_ref(branch, sha, None)
    return branch


def merge(state_dir, branch: str, *extra: str) -> Commit:
    git(state_dir, "merge", "--no-ff", "-q", "-m", "approve", *extra, branch, who=ALICE)
    return GitRepo(state_dir).commit_info("HEAD")


def test_a_merge_of_the_untouched_branch_approves_only_its_proposal(state_dir, repo, trust):
    p = agent_files(repo, trust)
    other = agent_files(repo, trust, args=("-c", "print(3)"))
    m = merge(state_dir, offer(repo, trust, p))
    assert branch_approval(repo, trust, trust.rules, m, p.id, p.path)
    assert not branch_approval(repo, trust, trust.rules, m, other.id, other.path)


def test_a_branch_named_for_another_proposal_does_not_approve_the_file_it_carries(
        state_dir, repo, trust):
    p = agent_files(repo, trust)
    other = agent_files(repo, trust, args=("-c", "print(3)"))
    m = merge(state_dir, offer(repo, trust, p, pid=other.id))
    assert list(GitRepo(state_dir).first_parent_log("HEAD~1")[-1].changes) == [p.path]
    assert not branch_approval(repo, trust, trust.rules, m, p.id, p.path)


def test_a_pushers_commit_on_the_branch_makes_it_no_approval(state_dir, repo, trust):
    p = agent_files(repo, trust)
    branch = offer(repo, trust, p)
    git(state_dir, "checkout", "-q", branch)
    person_commits(state_dir, MALLORY, {p.path: edited(p, status="approved",
                                                       args=["-c", "print('pwned')"])})
    git(state_dir, "checkout", "-q", "main")
    m = merge(state_dir, branch)
    assert not branch_approval(repo, trust, trust.rules, m, p.id, p.path)


def test_a_merge_that_changes_the_file_or_fast_forwards_is_no_approval(state_dir, repo,
                                                                        trust):
    p = agent_files(repo, trust)
    branch = offer(repo, trust, p)
    git(state_dir, "merge", "--no-ff", "--no-commit", "-q", branch, who=ALICE)
    (state_dir / p.path).write_bytes(edited(p, status="approved", rationale="mine"))
    git(state_dir, "commit", "-qam", "approve, edited", who=ALICE)
    m = repo.commit_info("HEAD")
    assert m.is_merge and not branch_approval(repo, trust, trust.rules, m, p.id, p.path)
    q = agent_files(repo, trust, args=("-c", "print(4)"))
    git(state_dir, "merge", "--ff-only", "-q", offer(repo, trust, q), who=ALICE)
    ff = repo.commit_info("HEAD")
    assert not ff.is_merge and not branch_approval(repo, trust, trust.rules, ff, q.id, q.path)
    verdict = check_approval(trust, trust.rules, ff, Proposal(**{**q.__dict__, "status":
                             Status.APPROVED}), filing(repo, q.path))
    assert not verdict.ok and "fast-forwarded" in verdict.reason


# -- who is an approver: authorize -------------------------------------------------------------
@pytest.fixture
def signed_rules(trust, tmp_path) -> tuple[Rules, dict[str, Path]]:
    keys = {name: keygen(tmp_path, name) for name in ("alice", "mallory", "bob")}
    pub = Path(f"{keys['alice']}.pub").read_text().split()
    signers = trust.rules.signers() + f"{ALICE[1]} {pub[0]} {pub[1]}\n".encode()
    rules = rules_with(trust, {"state/allowed_signers": signers},
                      require_signed_approvals=True)
    return rules, keys


def test_authorize_with_signatures_required(state_dir, trust, signed_rules):
    rules, keys = signed_rules
    unsigned = person_commits(state_dir, ALICE, {"notes/a": "1"})
    forged = person_commits(state_dir, ALICE, {"notes/b": "2"}, sign_key=keys["mallory"])
    good = person_commits(state_dir, ALICE, {"notes/c": "3"}, sign_key=keys["alice"])
    v = trust.authorize(unsigned, rules)
    assert not v.ok and v.reason == "signed approvals are required and the commit is not signed"
    v = trust.authorize(forged, rules)
    assert not v.ok and "does not verify against the allowed_signers in force" in v.reason
    v = trust.authorize(good, rules)
    assert v.ok and (v.approver, v.signer) == (ALICE[1], ALICE[1])


def test_authorize_wants_the_approvers_own_principal(state_dir, trust, signed_rules):
    rules, keys = signed_rules
    # Bob is an approver whose principal is his own; Alice's key does not make him
    data = yaml.safe_load(rules.files[AGENT_PATH])
    data["approvers"] = [{"email": ALICE[1]}, {"email": BOB[1], "principal": "bob@keys"}]
    text = yaml.safe_dump(data).encode()
    rules = Rules(rules.at, {**rules.files, AGENT_PATH: text}, config_from_text(text))
    as_bob = person_commits(state_dir, BOB, {"notes/d": "4"}, sign_key=keys["alice"])
    v = trust.authorize(as_bob, rules)
    assert not v.ok and "bob@keys" in v.reason
    assert trust.authorize(person_commits(state_dir, ALICE, {"notes/e": "5"},
                                          sign_key=keys["alice"]), rules).ok


def test_the_creator_approves_only_while_no_approver_is_listed(state_dir, trust):
    by_alice = person_commits(state_dir, ALICE, {"notes/e": "5"})  # Alice made the repository
    by_mallory = person_commits(state_dir, MALLORY, {"notes/f": "6"})
    nobody = rules_with(trust, approvers=[])
    assert trust.authorize(by_alice, nobody).ok
    assert "creator" in trust.authorize(by_alice, nobody).reason
    assert not trust.authorize(by_mallory, nobody).ok
    assert trust.authorize(by_alice, trust.rules).reason == "approver"


# -- quorum ------------------------------------------------------------------------------------
def test_counted_is_distinct_current_approvers_only(trust):
    rules = rules_with(trust, approvers=[{"email": ALICE[1]}, {"email": BOB[1]}])
    recorded = [{"by": ALICE[1]}, {"by": ALICE[1].upper()}, {"by": MALLORY[1]}, {},
                {"by": ""}, {"by": BOB[1]}]
    assert counted(recorded, rules) == [ALICE[1], BOB[1]]
    assert counted(recorded, rules_with(trust, approvers=[{"email": BOB[1]}])) == [BOB[1]]
    assert counted([], rules) == []


def test_quorum_is_asked_per_tool_and_risk(trust):
    rules = rules_with(trust, policy={**trust.rules.config["policy"],
                                      "approvals_required": {"high": 2}})
    assert rules.config.approvals_required("python") == 2  # python is high risk
    assert rules.config.approvals_required("shell") == 1


# -- reading a person's edit -------------------------------------------------------------------
def test_revert_of_a_result_and_describe_change():
    p = Proposal(id="x", mission="M", type="analysis", tool="shell", args=["ls"],
                 rationale="", created_at="", created_by="", digest="")
    done = Proposal(**{**p.__dict__, "status": Status.SUCCEEDED})
    back = Proposal(**{**p.__dict__, "status": Status.RUNNING})
    assert is_revert_of_result(done, back)
    assert not is_revert_of_result(back, done)
    assert not is_revert_of_result(Proposal(**{**p.__dict__, "status": Status.APPROVED}), back)
    other = Proposal(**{**p.__dict__, "tool": "python", "args": ["-c", "x" * 200]})
    text = describe_change(p, other)
    assert text.startswith('tool: "shell" -> "python"; args: ["ls"] -> ["-c", "xxx')
    assert text.endswith("…") and len(text.split("; ")[1]) < 100
    assert describe_change(p, p) == "no change"
    assert describe_change(None, p) == "the filed version cannot be read"


def test_identity_of_a_commit_is_not_its_email(state_dir, repo, trust):
    """A commit in the agent's name that the agent did not sign is a person's."""
    c = person_commits(state_dir, AGENT, {"notes/g": "7"})
    assert c.author_email == AGENT[1] and not trust.is_agent(c)
    assert Identity(*AGENT).email == trust.rules.config.identity.email


def test_an_early_signature_check_fills_the_cache_and_never_changes_a_verdict(tmp_path):
    """Trust.prefetch checks a new HEAD's signature in a thread while the catch-up reads
    the log; the judge then finds the same answer it would have computed."""
    import subprocess as sp

    from janus_git.gitrepo import GitRepo
    from janus_git.trust import Trust

    root = tmp_path / "r"
    root.mkdir()
    key = tmp_path / "k"
    sp.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    (root / "state").mkdir()
    (root / "state/agent.yaml").write_text(
        "approvers: [{email: a@x.org}]\nrequire_signed_approvals: true\n")
    (root / "state/allowed_signers").write_text(f"a@x.org {pub}\n")
    env = {"GIT_AUTHOR_NAME": "A", "GIT_AUTHOR_EMAIL": "a@x.org",
           "GIT_COMMITTER_NAME": "A", "GIT_COMMITTER_EMAIL": "a@x.org"}
    run = lambda *a: sp.run(["git", *a], cwd=root, check=True,  # noqa: E731
                            env={**__import__("os").environ, **env})
    run("init", "-q", "-b", "main")
    run("add", "-A")
    run("commit", "-qm", "root")
    (root / "f").write_text("x\n")
    run("add", "f")
    run("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-q", "-S",
        "-m", "signed")
    repo = GitRepo(root)
    sha = repo.head()
    early = Trust(repo)
    early.load(sha)
    early.prefetch(sha)
    thread = next(iter(early._early_started.values()))
    thread.join(10)
    assert any(k[0] == sha for k in early._verified)
    cold = Trust(repo)
    cold.load(sha)
    commit = repo.commit_info(sha)
    assert early.authorize(commit, early.rules) == cold.authorize(commit, cold.rules)
    assert early.authorize(commit, early.rules).ok
