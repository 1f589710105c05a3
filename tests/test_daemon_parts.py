"""The daemon's parts one at a time: the executor's lanes, the decider and the judge, each
built as the loop builds it but with fakes, implementing the real interfaces, for the
collaborators the test is not about (the notifier, the approval branches, the corrections).
The repositories are real; no daemon loop runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from janus_git import lifecycle
from janus_git.config import Config
from janus_git.controls import Controls
from janus_git.daemon.coordinator import LocalCoordinator
from janus_git.daemon.decider import Decider
from janus_git.daemon.executor import Executor
from janus_git.daemon.judge import ApprovalJudge
from janus_git.daemon.state import DaemonState, RunQueue, Ticket
from janus_git.gitrepo import Identity
from janus_git.proposal import Proposal, Status, parse_proposal
from janus_git.staterepo import StateRepo
from janus_git.trust import Trust

from conftest import AGENT, ALICE, MALLORY, git

S = Status
AGENT_ID = Identity(*AGENT)


# -- fakes of the collaborators, with the real interfaces ------------------------------------
@dataclass
class RecordingNotifier:
    """notify.Notifier's `post`: what would have reached people."""
    posts: list[tuple[str, str, str]] = field(default_factory=list)

    def post(self, title: str, body: str = "", kind: str = "alert") -> None:
        self.posts.append((title, body, kind))


@dataclass
class RecordingBranches:
    """daemon/branches.ApprovalBranches: the branches a person would be offered."""
    offered: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def offer(self, p: Proposal) -> None:
        self.offered.append(p.id)

    def drop(self, pid: str) -> None:
        self.dropped.append(pid)


@dataclass
class RecordingCorrections:
    """daemon/corrections.Corrections, for the judge: what it would have put right."""
    changed_calls: list[str] = field(default_factory=list)

    def changed(self, c, new, filed) -> None:
        self.changed_calls.append(new.id)


class FakeStore:
    """store.Store's `head`: proposals by id, as HEAD would show them."""

    def __init__(self, proposals: dict[str, Proposal]) -> None:
        self.proposals = proposals

    def head(self, pid: str) -> tuple[Proposal, bytes] | None:
        p = self.proposals.get(pid)
        return (p, p.to_yaml()) if p is not None else None


@dataclass
class FakeRules:
    config: Config
    stopped: bool = False


class FakeTrust:
    """trust.Trust as DaemonState reads it: the rules in force."""

    def __init__(self, config: Config) -> None:
        self.rules = FakeRules(config)


class FakeRun:
    def __init__(self, lane: str, exclusive: bool = False) -> None:
        self.lane, self.exclusive = lane, exclusive


# -- the run queue ----------------------------------------------------------------------------
def test_the_run_queue_is_changed_only_through_its_verbs():
    q = RunQueue()
    a, p = Ticket("a", {"rule": "auto:x"}), Ticket("p", {"rule": "human"})
    q.offer(a)
    q.offer(p)
    q.offer_once(Ticket("a", {"rule": "human"}))  # queued already: kept as it was
    assert [t.id for t in q.values()] == ["a", "p"] and q.get("a").lane == "auto"
    assert q.next("people").id == "p" and q.next().id == "a"
    assert q.next(skip=lambda t: t.id == "a").id == "p"
    assert q.pending_auto() == 1 and "a" in q and len(q) == 2
    assert q.withdraw("a") is a and q.withdraw("a") is None
    assert q.take("p") is p and not q
    with pytest.raises(TypeError):
        q["x"] = a  # type: ignore[index]  (no writes but the verbs)


# -- the executor's lanes ---------------------------------------------------------------------
def executor_for(sr: StateRepo, proposals: dict[str, Proposal], **controls: Any):
    config = sr.config
    config.data["controls"] = {**config.data["controls"], **controls}
    state = DaemonState(FakeTrust(config))  # type: ignore[arg-type]
    sr.store = FakeStore(proposals)  # type: ignore[assignment]
    ex = Executor(sr, state, RecordingBranches(), Controls(config["controls"]),  # type: ignore[arg-type]
                  LocalCoordinator("d1"), context=lambda: None)
    return ex, state


def proposal(pid: str, tool: str = "shell") -> Proposal:
    return Proposal(id=pid, mission="TEST", type="analysis", tool=tool, args=["true"],
                    rationale="r", created_by="t", created_at="2026-12-08T00:00:00Z",
                    digest="0" * 64, status=S.APPROVED)


def test_people_go_first_and_automatic_work_leaves_the_reserved_slot(sr):
    ex, state = executor_for(sr, {"a": proposal("a"), "p": proposal("p")},
                             max_parallel_runs=2, reserved_for_people=1)
    state.queue.offer(Ticket("a", {"rule": "auto:shell"}))
    state.queue.offer(Ticket("p", {"rule": "human"}))
    assert ex.next_ticket().id == "p"  # queued second, starts first
    state.runs["x"] = FakeRun("auto")  # one automatic run: the other slot is the people's
    state.queue.withdraw("p")
    assert ex.next_ticket() is None
    state.queue.offer(Ticket("p", {"rule": "human"}))
    assert ex.next_ticket().id == "p"
    state.runs["y"] = FakeRun("people")  # every slot taken
    assert ex.next_ticket() is None
    assert ex.status()["slots"]["in_use"] == {"people": 1, "auto": 1}


def test_an_exclusive_tool_waits_and_holds_automatic_work_but_never_a_person(sr):
    sr.config.data["tools"]["llama_bench"]["exclusive"] = True
    ex, state = executor_for(sr, {"bench": proposal("bench", "llama_bench"),
                                  "a": proposal("a"), "p": proposal("p")},
                             max_parallel_runs=3, reserved_for_people=0)
    state.runs["x"] = FakeRun("auto")
    state.queue.offer(Ticket("bench", {"rule": "auto:llama_bench"}))
    state.queue.offer(Ticket("a", {"rule": "auto:shell"}))
    assert ex.next_ticket() is None and ex.exclusive_waiting == "bench"
    assert ex.holds_thinking()  # no thinking cycle starts meanwhile
    state.queue.offer(Ticket("p", {"rule": "human"}))
    assert ex.next_ticket().id == "p"  # a person's approval does not wait for it
    del state.runs["x"]
    state.queue.withdraw("p")
    assert ex.next_ticket().id == "bench"  # nothing else runs: its turn
    state.runs["bench"] = FakeRun("auto", exclusive=True)
    state.queue.withdraw("bench")
    assert ex.next_ticket() is None  # nothing beside it


def test_the_local_coordinator_claims_nothing_ahead_and_leaves_results_to_the_executor(sr):
    ex, state = executor_for(sr, {})
    claims = ex.claims
    assert not claims.takes(Ticket("a", {"rule": "auto:shell"}))
    assert claims.report() is False and claims.backlog == {}
    assert ex.claim_record == {} and ex.idle()


# -- the decider ------------------------------------------------------------------------------
def decider_for(sr: StateRepo) -> tuple[Decider, DaemonState, RecordingBranches,
                                        RecordingNotifier]:
    trust = Trust(sr.repo)
    trust.load(sr.repo.head())
    state = DaemonState(trust, cursor=sr.repo.head())
    branches, notifier = RecordingBranches(), RecordingNotifier()
    return (Decider(sr, state, branches, Controls(state.config["controls"]),  # type: ignore[arg-type]
                    notifier),  # type: ignore[arg-type]
            state, branches, notifier)


def file(sr: StateRepo, tool: str, args: Any, type_: str = "analysis") -> Proposal:
    p = lifecycle.new_proposal(mission="TEST", type_=type_, tool=tool, args=args,
                               rationale="r", created_by=f"{AGENT[0]} <{AGENT[1]}>")
    lifecycle.create(sr.repo, p, AGENT_ID)
    return p


def test_the_decider_approves_whitelisted_work_and_offers_the_rest_to_a_person(sr):
    auto = file(sr, "shell", ["ls"])
    manual = file(sr, "python", ["-c", "print(1)"], type_="maintenance")
    decider, state, branches, notifier = decider_for(sr)
    decider.decide_new()
    assert sr.store.read(auto.id).status == S.APPROVED
    assert state.queue.get(auto.id).decision["rule"].startswith("auto:")
    assert sr.store.read(manual.id).status == S.PROPOSED and manual.id not in state.queue
    assert branches.offered == [manual.id]
    assert [kind for _, _, kind in notifier.posts] == ["approval"]
    head = sr.repo.head()
    decider.decide_new()  # decided once: nothing more is committed or offered
    assert sr.repo.head() == head and branches.offered == [manual.id]


def test_the_decider_refuses_a_forged_digest_and_defers_auto_work_while_the_valve_is_open(sr):
    forged = file(sr, "shell", ["ls"])
    text = (sr.root / forged.path).read_bytes().replace(forged.digest.encode(), b"beef" * 16)
    sr.repo.commit_files({forged.path: text}, "forge\n", AGENT_ID)
    decider, state, _, notifier = decider_for(sr)
    decider.decide_new()
    assert sr.store.read(forged.id).status == S.REJECTED
    later = file(sr, "shell", ["pwd"])
    decider.valve.max_pending = 1  # two queued automatic runs: over the limit, it opens
    state.queue.offer(Ticket("queued-1", {"rule": "auto:shell"}))
    state.queue.offer(Ticket("queued-2", {"rule": "auto:shell"}))
    head = sr.repo.head()
    decider.decide_new()
    assert later.id in decider.deferred and sr.repo.head() == head  # nothing committed
    assert any("relief valve open" in title for title, _, _ in notifier.posts)


# -- the judge --------------------------------------------------------------------------------
def judge_for(sr: StateRepo):
    trust = Trust(sr.repo)
    trust.load(sr.repo.head())
    state = DaemonState(trust, cursor=sr.repo.head())
    corrections, notifier = RecordingCorrections(), RecordingNotifier()
    return ApprovalJudge(sr, state, corrections, notifier), state, corrections, notifier  # type: ignore[arg-type]


def approve_as(sr: StateRepo, p: Proposal, who: tuple[str, str]) -> str:
    path = sr.root / p.path
    path.write_bytes(path.read_bytes().replace(b"status: proposed", b"status: approved"))
    git(sr.root, "commit", "-qam", f"approve {p.id}", who=who)
    return git(sr.root, "rev-parse", "HEAD").stdout.strip()


def test_the_judge_queues_an_approvers_approval_for_the_people_lane(sr):
    p = file(sr, "python", ["-c", "print(1)"], type_="maintenance")
    sha = approve_as(sr, p, ALICE)
    judge, state, corrections, notifier = judge_for(sr)
    then = parse_proposal(sr.repo.read_blob(sha, p.path), p.path)
    judge.judge(sr.repo.commit_info(sha), then, state.rules)
    ticket = state.queue.get(p.id)
    assert ticket is not None and ticket.lane == "people"
    assert ticket.decision["by"] == ALICE[1] and ticket.decision["commit"] == sha
    assert corrections.changed_calls == [] and notifier.posts == []


def test_the_judge_answers_a_strangers_approval_and_says_so(sr):
    p = file(sr, "python", ["-c", "print(1)"], type_="maintenance")
    sha = approve_as(sr, p, MALLORY)
    judge, state, _, notifier = judge_for(sr)
    then = parse_proposal(sr.repo.read_blob(sha, p.path), p.path)
    judge.judge(sr.repo.commit_info(sha), then, state.rules)
    assert p.id not in state.queue
    assert sr.store.read(p.id).status == S.PROPOSED  # put back by a correction commit
    info = sr.repo.commit_info("HEAD")
    assert info.trailers().get("Janus-Correction") and MALLORY[1] in info.body
    assert [kind for _, _, kind in notifier.posts] == ["alert"]


# -- one read per step, handed along ---------------------------------------------------------
class CountingStore:
    """The real store, counting how often a proposal is read from HEAD."""

    def __init__(self, store) -> None:
        self.store, self.reads = store, 0

    def head(self, pid: str):
        self.reads += 1
        return self.store.head(pid)

    def head_at(self, pid: str):
        self.reads += 1
        return self.store.head_at(pid)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def test_the_judges_read_is_the_one_the_executor_starts_from(sr):
    """A person's approval: the reader reads HEAD's version once and hands it to the judge,
    whose ticket carries it to the executor: no second or third read at the same HEAD.  Once
    HEAD has moved, the executor reads it afresh."""
    p = file(sr, "python", ["-c", "print(1)"], type_="maintenance")
    sha = approve_as(sr, p, ALICE)
    judge, state, _, _ = judge_for(sr)
    counting = CountingStore(sr.store)
    judge.store = counting
    read = counting.head_at(p.id)
    then = parse_proposal(sr.repo.read_blob(sha, p.path), p.path)
    judge.judge(sr.repo.commit_info(sha), then, state.rules, read)
    ticket = state.queue.get(p.id)
    assert ticket is not None and ticket.seen is not None and ticket.seen.head == sha
    ex = Executor(sr, state, RecordingBranches(), Controls(state.config["controls"]),  # type: ignore[arg-type]
                  LocalCoordinator("d1"), context=lambda: None)
    ex.store = counting
    assert not ex.is_exclusive(ticket)  # (the lanes ask first, as next_ticket does)
    admitted = ex.admit(ticket)
    assert admitted is not None and admitted[1] == (sr.root / p.path).read_bytes()
    assert counting.reads == 1  # the reader's, and no other
    # the same ticket again (its start had to wait; HEAD moved meanwhile): read afresh
    git(sr.root, "commit", "-q", "--allow-empty", "-m", "later", who=ALICE)
    assert ticket.seen is None  # (used once)
    assert ex.admit(ticket) is not None and counting.reads == 2
