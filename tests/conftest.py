"""Shared fixtures: real git repositories in temp dirs, and no test touches the real home."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

AGENT = ("Janus Agent", "janus-agent@localhost")
ALICE = ("Alice Reviewer", "alice@example.com")
MALLORY = ("Mallory", "mallory@example.com")


# Speed is measured in bench/, not asserted here.  Where a test must bound a wait (a tool
# killed "within a second", a fetch "at once"), the bound it asserts is a hang detector,
# HANG_FACTOR times the target, so that a busy 2-core host stays green; `pytest -m timing`
# asserts the targets themselves (and runs the tests marked `timing`, whose whole point is a
# figure: CI deselects them).
HANG_FACTOR = 10.0
_TIMING = {"on": False}


def pytest_configure(config):
    expr = config.option.markexpr or ""
    _TIMING["on"] = "timing" in expr and "not timing" not in expr


# Runs as uid 65534 without cgroups are capped by RLIMIT_NPROC, which counts every process
# of that uid on the host: two such test runs at once on two workers hit each other's cap
# (a pids limit the run did not reach).  Their modules share one worker.
ONE_WORKER = {"test_sandbox.py", "test_tools_registry.py", "test_resources.py",
              "test_prestart.py", "test_nonroot.py", "test_cgroup2.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in ONE_WORKER:
            item.add_marker(pytest.mark.xdist_group("uid-65534"))


def timing_on() -> bool:
    """Whether this run asserts timing figures (`pytest -m timing`)."""
    return _TIMING["on"]


def within(seconds: float) -> float:
    """The bound a test asserts for a target of SECONDS: the target itself under
    `pytest -m timing`, else HANG_FACTOR times it."""
    return seconds if _TIMING["on"] else seconds * HANG_FACTOR


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Point $HOME, $JANUS_GIT_HOME and git's global config at a temp dir; the person at the
    keyboard is Alice unless a test says otherwise."""
    home = tmp_path_factory.mktemp("home")
    gitconfig = home / ".gitconfig"
    gitconfig.write_text(f"[user]\n\tname = {ALICE[0]}\n\temail = {ALICE[1]}\n"
                         "[init]\n\tdefaultBranch = main\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("JANUS_GIT_HOME", str(home / "janus-git"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                "GIT_COMMITTER_EMAIL", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)
    return home


def git(root: Path, *args: str, who: tuple[str, str] | None = None, check: bool = True,
        **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if who:
        env.update(GIT_AUTHOR_NAME=who[0], GIT_AUTHOR_EMAIL=who[1],
                   GIT_COMMITTER_NAME=who[0], GIT_COMMITTER_EMAIL=who[1])
    for _ in range(200):  # like a person, try again while the daemon holds index.lock
        out = subprocess.run(["git", *args], cwd=root, env=env, text=True,
                             capture_output=True, **kw)
        if out.returncode == 0 or "index.lock" not in out.stderr:
            break
        time.sleep(0.02)
    if check:
        out.check_returncode()
    return out


def edit_yaml(path: Path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


TEST_MISSION = """\
id: TEST
title: The tests' own mission
goal: Proposals that tests file by hand.
kind: analysis
budget: {min: 1000, max: 1000, unit: proposals}
order: 99
depends_on: []
status: queued
proposal_types: [analysis, maintenance]
tools: [shell, python]
"""


def configure(root: Path, who: tuple[str, str] = ALICE, **changes) -> None:
    """Change state/agent.yaml and commit it as WHO."""
    edit_yaml(root / "state" / "agent.yaml", **changes)
    git(root, "add", "state/agent.yaml", "missions")
    git(root, "commit", "-qm", "configure", who=who)


@pytest.fixture(scope="session")
def _state_template(tmp_path_factory) -> Path:
    """One state repository made by `init`, with Alice as approver and the agent identity
    above; tests get a copy (~20 ms instead of ~500 ms for init + configure)."""
    from janus_git.staterepo import init_state
    home = tmp_path_factory.mktemp("template-home")
    cfg = home / ".gitconfig"
    cfg.write_text(f"[user]\n\tname = {ALICE[0]}\n\temail = {ALICE[1]}\n"
                   "[init]\n\tdefaultBranch = main\n")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in dict(HOME=str(home), GIT_CONFIG_GLOBAL=str(cfg), GIT_CONFIG_NOSYSTEM="1",
                         JANUS_GIT_HOME=str(home / "janus-git")).items():
            mp.setenv(k, v)
        root, _ = init_state(tmp_path_factory.mktemp("template") / "state")
        (root / "missions" / "TEST.yaml").write_text(TEST_MISSION)
        configure(root, agent={"name": AGENT[0], "email": AGENT[1]},
                  approvers=[{"name": ALICE[0], "email": ALICE[1]}])
        keys = root.parent / "agent-key"  # the agent's key lives outside the repository
        keys.mkdir()
        for f in (home / "janus-git").glob("agent_ed25519*"):
            shutil.copy2(f, keys / f.name)
    return root


@pytest.fixture
def state_dir(_state_template, tmp_path) -> Path:
    """A fresh state repository (a copy of the template): Alice approves, the agent is AGENT."""
    root = tmp_path / "state"
    shutil.copytree(_state_template, root, symlinks=True)
    home = Path(os.environ["JANUS_GIT_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    for f in (_state_template.parent / "agent-key").iterdir():
        shutil.copy2(f, home / f.name)
    return root


@pytest.fixture
def sr(state_dir):
    from janus_git.staterepo import StateRepo
    return StateRepo(state_dir)
