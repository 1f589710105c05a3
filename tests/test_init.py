"""`janus-git init`, and a new user's first five minutes, through the real command."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from janus_git.staterepo import TEMPLATE_DIRS, StateRepo, init_state, template_root

from conftest import ALICE, git


def _exe() -> list[str]:
    found = shutil.which("janus-git")
    return [found] if found else [sys.executable, "-m", "janus_git.cli"]


def jg(*args, cwd=None, ok=True):
    r = subprocess.run([*_exe(), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       timeout=60)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def test_init_makes_a_state_repository_from_the_templates(tmp_path):
    root, created = init_state(tmp_path / "new")
    assert created
    for name in TEMPLATE_DIRS:
        src = template_root() / name
        for f in src.rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and f.name != "STOP" \
                    and f.name != "agent.yaml":
                assert (root / f.relative_to(template_root())).read_bytes() == f.read_bytes()
    # the person who runs init is the first approver; the agent's key is listed, outside
    agent = (root / "state/agent.yaml").read_text()
    assert f"approvers:\n  - name: \"{ALICE[0]}\"\n    email: {ALICE[1]}\n" in agent
    signers = (root / "state/allowed_signers").read_text()
    assert signers.startswith("janus-agent@localhost ") and "ssh-ed25519 " in signers
    from janus_git.agentkey import key_path
    assert key_path().is_file() and not key_path().is_relative_to(root)
    assert (root / "nodes/.gitkeep").exists() and (root / "notes/.gitkeep").exists()
    assert git(root, "status", "--porcelain").stdout == ""
    assert git(root, "rev-list", "--count", "HEAD").stdout.strip() == "1"
    assert git(root, "log", "-1", "--format=%an <%ae>").stdout.strip() == f"{ALICE[0]} <{ALICE[1]}>"
    assert git(root, "config", "core.commitGraph").stdout.strip() == "true"
    assert git(root, "config", "receive.denyCurrentBranch").stdout.strip() == "updateInstead"
    assert StateRepo(root).config.mode in ("alpha", "beta")


def test_init_into_an_existing_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert init_state(tmp_path / "empty")[1]


def test_init_is_idempotent_on_a_state_repository(state_dir):
    head = git(state_dir, "rev-parse", "HEAD").stdout
    (state_dir / "notes" / "mine.md").write_text("keep me\n")
    r = jg("init", state_dir)
    assert r.stdout.startswith("already a state repository:")
    assert git(state_dir, "rev-parse", "HEAD").stdout == head
    assert (state_dir / "notes" / "mine.md").read_text() == "keep me\n"


@pytest.mark.parametrize("make", [
    lambda d: (d / "thesis.tex").write_text("years of work\n"),
    lambda d: subprocess.run(["git", "init", "-q", str(d)], check=True),   # a git repo, not ours
    lambda d: (d / "state").mkdir(),                                         # half of ours
])
def test_init_refuses_a_non_empty_folder_that_is_not_a_state_repo(tmp_path, make):
    target = tmp_path / "busy"
    target.mkdir()
    make(target)
    before = sorted(p.name for p in target.iterdir())
    r = jg("init", target, ok=False)
    assert r.returncode == 1
    assert r.stderr == (f"janus-git: {target} is not empty and is not a janus-git state "
                        "repository; choose a new or empty folder\n")
    assert sorted(p.name for p in target.iterdir()) == before


def test_a_new_users_walk_through(tmp_path):
    """README's five minutes: init, propose, list, show, export; git log is the audit trail."""
    root = tmp_path / "my-state"
    assert jg("init", root).stdout.startswith(f"created {root}")
    # init made Alice (git's user) the first approver
    assert f"email: {ALICE[1]}" in (root / "state/agent.yaml").read_text()

    out = jg("propose", "--mission", "STUDY-002-BETA", "--type", "analysis", "--tool", "python",
             "--rationale", "count the chunks", "--", "scripts/count.py", "--all",
             cwd=root).stdout
    pid = out.split()[1]
    assert out.startswith(f"proposed {pid} (proposals/{pid[:4]}/{pid[4:6]}/{pid}.yaml)")
    rows = json.loads(jg("list", "--json", cwd=root).stdout)
    assert [(r["id"], r["status"], r["risk"]) for r in rows] == [(pid, "proposed", "high")]
    assert pid in jg("list", cwd=root).stdout
    jg("approve", pid[:15], cwd=root)
    shown = json.loads(jg("show", pid, "--json", cwd=root).stdout)
    assert shown["record"]["status"] == "approved"
    assert shown["record"]["args"] == ["scripts/count.py", "--all"]
    exported = tmp_path / "proposals.csv"
    jg("export", "--format", "csv", "--output", exported, cwd=root)
    assert pid in exported.read_text()

    log = git(root, "log", "--format=%an|%(trailers:key=Janus-Proposal,valueonly,separator=)|"
              "%(trailers:key=Janus-Transition,valueonly,separator=)").stdout.splitlines()
    transitions = [line.split("|") for line in log if line.split("|")[1]]
    assert transitions == [[ALICE[0], pid, "proposed -> approved"],
                           [ALICE[0], pid, "new -> proposed"]]
    assert git(root, "status", "--porcelain").stdout == ""
