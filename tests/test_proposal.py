"""The proposal record and the transition table: every pair of statuses, allowed or refused,
through lifecycle.transition on a real repository; the proposal validators."""
from __future__ import annotations

import itertools

import pytest
import yaml

from janus_git import lifecycle
from janus_git.errors import ConfigError, TransitionError
from janus_git.gitrepo import GitRepo, Identity, init_repo
from janus_git.proposal import (
    HUMAN_TRANSITIONS,
    TERMINAL,
    TRANSITIONS,
    Proposal,
    Status,
    check_transition,
    compute_digest,
    new_id,
    novelty_digest,
    parse_proposal,
    shard_path,
)

from conftest import AGENT

AGENT_ID = Identity(*AGENT)
PAIRS = list(itertools.product(Status, Status))


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory) -> GitRepo:
    """One repository for the 121 transition cases (a state repo each would cost ~20 s)."""
    home = tmp_path_factory.mktemp("mod-home")
    (home / ".gitconfig").write_text("[user]\n\tname = Nobody\n\temail = nobody@example.com\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        mp.setenv("HOME", str(home))
        repo = init_repo(tmp_path_factory.mktemp("transitions") / "repo")
        repo.commit_files({"README.md": b"transitions\n"}, "init\n", AGENT_ID)
    return repo


def _proposal(status: Status) -> Proposal:
    p = lifecycle.new_proposal(mission="M1", type_="analysis", tool="shell",
                               args=["ls", "-la"], rationale="test", created_by="test")
    p.status = status
    return p


def _log(repo: GitRepo, fmt: str, rng: str) -> list[str]:
    out = repo._run("log", f"--format={fmt}%x00", rng)
    return [r.strip("\n") for r in out.split("\0") if r.strip("\n")]


@pytest.mark.parametrize("old,new", PAIRS, ids=[f"{a.value}->{b.value}" for a, b in PAIRS])
def test_every_transition_allowed_or_refused(shared_repo: GitRepo, old: Status, new: Status):
    repo = shared_repo
    p = _proposal(old)
    lifecycle.create(repo, p, AGENT_ID)
    base = repo.head()
    base_text = (repo.root / p.path).read_bytes()
    if new in TRANSITIONS[old]:
        sha = lifecycle.transition(repo, p, new, AGENT_ID, base_text=base_text)
        assert repo.head() == sha
        assert _log(repo, "%H", f"{base}..HEAD") == [sha], "exactly one commit"
        trailers = repo._run("log", "-1", "--format=%(trailers:only,unfold)", sha)
        assert trailers.strip().splitlines() == [f"Janus-Proposal: {p.id}",
                                                 f"Janus-Transition: {old.value} -> {new.value}"]
        changed = repo._run("diff-tree", "--no-commit-id", "--name-only", "-r", sha).split()
        assert changed == [p.path]
        stored = parse_proposal(repo.read_blob("HEAD", p.path), p.path)
        assert stored.status is new
    else:
        with pytest.raises(TransitionError, match=f"from {old.value} to {new.value}"):
            lifecycle.transition(repo, p, new, AGENT_ID, base_text=base_text)
        assert repo.head() == base, "a refused transition commits nothing"
        assert (repo.root / p.path).read_bytes() == base_text, "and writes nothing"
        assert repo._run("status", "--porcelain") == ""


def test_table_is_closed_and_terminal_states_are_final():
    assert set(TRANSITIONS) == set(Status)
    assert TERMINAL == {Status.REJECTED, Status.DUPLICATE, Status.REVERTED}
    for old, allowed in HUMAN_TRANSITIONS.items():
        assert allowed <= TRANSITIONS[old], f"a person may not do what the lifecycle cannot: {old}"
    for s in Status:
        assert s not in TRANSITIONS[s], "no self-transitions (they would be empty commits)"


def test_status_groups_split_every_status_and_follow_the_table():
    from janus_git.proposal import CLEARED, FINISHED, IN_FLIGHT, LIVE, RUN_OUTCOMES
    groups = [IN_FLIGHT, FINISHED, CLEARED]
    assert set().union(*groups) == set(Status) and sum(map(len, groups)) == len(Status)
    assert LIVE == set(Status) - CLEARED and RUN_OUTCOMES <= FINISHED
    assert CLEARED <= TRANSITIONS[Status.PROPOSED], "hygiene moves proposed work there"
    assert TERMINAL <= FINISHED | CLEARED and not TERMINAL & IN_FLIGHT
    assert "running" in IN_FLIGHT and "archived" not in LIVE  # str-valued, as rows hold them


def test_refusal_message_says_what_is_allowed():
    with pytest.raises(TransitionError) as e:
        check_transition(Status.SUCCEEDED, Status.RUNNING)
    assert "from succeeded it may go to reverted" in str(e.value)
    with pytest.raises(TransitionError, match=r"nothing \(final\)"):
        check_transition(Status.REJECTED, Status.PROPOSED)


def test_ids_sort_by_time_and_shard_by_month():
    import datetime as dt
    t = dt.datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=dt.timezone.utc)
    a, b = new_id(t), new_id(t + dt.timedelta(milliseconds=1))
    assert a.startswith("20260304-050607891-") and a < b
    assert shard_path(a) == f"proposals/2026/03/{a}.yaml"


def test_digest_binds_type_tool_and_args():
    d = compute_digest("analysis", "shell", ["ls", "-la"])
    assert d.startswith("sha256:") and len(d) == 71
    assert d == compute_digest("analysis", "shell", ["ls", "-la"])
    assert d != compute_digest("analysis", "shell", ["ls", "-l"])
    assert d != compute_digest("process_chunk", "shell", ["ls", "-la"])
    # the novelty digest forgives whitespace and key order; the approval digest does not
    assert novelty_digest("a", "t", {"x": " a  b", "y": 1}) == \
        novelty_digest("a", "t", {"y": 1, "x": "a b"})
    assert compute_digest("a", "t", {"x": " a  b"}) != compute_digest("a", "t", {"x": "a b"})


def test_yaml_round_trip():
    p = _proposal(Status.PROPOSED)
    p.args = {"path": "notes/ünïcode.md", "n": 3}
    p.execution = {"exit_code": 0}
    q = parse_proposal(p.to_yaml(), p.path)
    assert q == p


# -- validators: one line, naming the file and the field ----------------------------------
def _valid() -> dict:
    return _proposal(Status.PROPOSED).to_dict()


def _error(data, path: str | None = None) -> ConfigError:
    d = data if isinstance(data, (str, bytes)) else yaml.safe_dump(data)
    pid = _valid()["id"]
    path = path or shard_path(data["id"] if isinstance(data, dict) and "id" in data else pid)
    with pytest.raises(ConfigError) as e:
        parse_proposal(d, path)
    msg = str(e.value)
    assert "\n" not in msg, "an error is one line"
    assert msg.startswith(path + ":"), "it names the file"
    return e.value


@pytest.mark.parametrize("mutate,field,words", [
    (lambda d: d.update(colour="red"), "colour", "unknown field"),
    (lambda d: d.update(mission=42), "mission", "must be a str"),
    (lambda d: d.update(args=3.5), "args", "wrong type"),
    (lambda d: d.update(decision="yes"), "decision", "wrong type"),
    (lambda d: d.update(status="done"), "status", "unknown status 'done'"),
    (lambda d: d.pop("digest"), "digest", "missing required field"),
    (lambda d: d.pop("status"), "status", "missing required field"),
    (lambda d: d.update(id="20250101-000000000-abcdef"), "id", "does not match"),
])
def test_validator_names_file_and_field(mutate, field, words):
    data = _valid()
    path = shard_path(data["id"])
    mutate(data)
    e = _error(data, path)
    assert e.field == field
    assert f"{path}: {field}: " in str(e) and words in str(e)


@pytest.mark.parametrize("text,words", [
    ("id: [unclosed\nstatus: proposed\n", "not valid YAML at line"),
    ("status: proposed\n  mission: : :\n\t- x", "not valid YAML"),
    ("just some prose someone pasted over the proposal\n", "must be a mapping"),
    ("- a\n- list\n", "must be a mapping"),
    ("", "must be a mapping"),
    (b"\xff\xfe\x00garbage", ""),  # read as UTF-16: a scalar, then "must be a mapping"
])
def test_nonsense_is_one_line_naming_the_file(text, words):
    e = _error(text)
    assert words in str(e)


def test_every_error_offers_a_way_out_for_yaml():
    e = _error("a: [\n")
    assert "git revert" in str(e)


@pytest.mark.parametrize("args", ["[2026-01-01]", "{1: a, b: c}", "[.nan]"])
def test_args_that_are_not_json_like_are_refused(args):
    """The digest hashes args as JSON: a date, mixed-type keys or NaN would raise later."""
    text = f"id: 20261129-120000000-abcdef\nmission: M\ntype: t\ntool: x\nargs: {args}\n" \
           "rationale: r\ncreated_at: now\ncreated_by: me\ndigest: d\nstatus: proposed\n"
    with pytest.raises(ConfigError, match="args: must be plain JSON-like data"):
        parse_proposal(text, "proposals/2026/11/20261129-120000000-abcdef.yaml")
