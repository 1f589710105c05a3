"""`janus-git doctor` reports what this machine offers, naming the model it would load."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import configure, git


def test_doctor_names_isolation_model_and_config(state_dir):
    pytest.importorskip("llama_cpp")  # the built-in model comes with it (janus-git[llm])
    out = subprocess.run(["janus-git", "doctor", "--json", "-C", str(state_dir)],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["sandbox"]["isolation"] in ("bwrap", "reduced") and info["sandbox"]["why"]
    assert info["model"].endswith(".gguf"), info["model"]
    assert info["config"].startswith("valid (beta mode")


def test_doctor_says_when_the_configured_model_is_missing(state_dir):
    configure(state_dir, model={"path": "state/models/none.gguf"})
    out = subprocess.run(["janus-git", "doctor", "--json", "-C", str(state_dir)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["model"].startswith("NOT FOUND")


def test_doctor_for_people_spells_out_the_sandbox(state_dir):
    out = subprocess.run(["janus-git", "doctor", "-C", str(state_dir)],
                         capture_output=True, text=True, check=True).stdout
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert set(lines) >= {"git", "isolation", "cgroups", "guards", "model", "daemon", "config",
                          "trust"}
    assert "{" not in out  # no dict dumps
    assert "warm starts" in lines["guards"] and "not running" in lines["daemon"]


def test_doctor_says_what_to_add_to_the_unit_without_v2_delegation(state_dir, tmp_path):
    """A v2 host where the daemon's cgroup is not its own to write (no Delegate=): the
    cgroups line names the missing unit lines.  The tree is a stand-in directory."""
    import os
    env = {**os.environ, "JANUS_GIT_CGROUP_VERSION": "2",
           "JANUS_GIT_CGROUP2_MOUNT": str(tmp_path)}
    out = subprocess.run(["janus-git", "doctor", "-C", str(state_dir)], env=env,
                         capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("cgroups:"))
    assert "none writable" in line and "TO FIX" in line, line
    for words in ("Delegate=memory pids cpu", "ProtectControlGroups=no", "daemon-reload"):
        assert words in line, line
    info = json.loads(subprocess.run(["janus-git", "doctor", "--json", "-C", str(state_dir)],
                                     env=env, capture_output=True, text=True,
                                     check=True).stdout)
    assert info["sandbox"]["cgroup_version"] == 2
    assert "Delegate=" in info["sandbox"]["cgroup_advice"]


def test_doctor_cgroups_line_per_version():
    from janus_git.doctor import _cgroups
    v2 = {"cgroup_version": 2, "cgroups": {"memory": True, "pids": True, "cpu": True,
                                           "tree": True}, "cgroup_advice": ""}
    assert _cgroups(v2) == "v2: memory, pids, cpu"
    bare = {"cgroup_version": 2, "cgroups": {"memory": False, "pids": False, "cpu": False,
                                             "tree": True}, "cgroup_advice": "add X"}
    assert _cgroups(bare).startswith("v2: a cgroup per run") and _cgroups(bare).endswith(
        "TO FIX: add X")


def test_doctor_says_when_the_repository_lets_a_pusher_change_what_git_shows(state_dir):
    """A repository made before the hardening (or a pushed replacement) is named; the
    daemon's start puts it right."""
    from janus_git.doctor import diagnose
    assert diagnose(state_dir)["hosting"].startswith("hardened")
    git(state_dir, "config", "--unset-all", "transfer.hideRefs")
    blob = git(state_dir, "rev-parse", "HEAD:state/agent.yaml").stdout.strip()
    evil = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=state_dir, input="x\n",
                          capture_output=True, text=True).stdout.strip()
    git(state_dir, "update-ref", f"refs/replace/{blob}", evil)
    hosting = diagnose(state_dir)["hosting"]
    assert "REPLACEMENTS PRESENT" in hosting and "transfer.hideRefs=refs/replace" in hosting
    from daemonkit import burst
    burst(state_dir)
    assert diagnose(state_dir)["hosting"].startswith("hardened")
    assert git(state_dir, "for-each-ref", "refs/replace").stdout == ""
