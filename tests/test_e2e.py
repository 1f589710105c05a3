"""The README's main-job command, run as a user would, and what it leaves in the repository."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, git

README = (ROOT / "README.md").read_text()


def readme_command(marker: str) -> str:
    """The shell line under the README comment that starts with MARKER."""
    block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    lines = block.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# " + marker):
            return lines[i + 1].strip()
    raise AssertionError(f"README has no command under '# {marker}'")


def test_ci_runs_exactly_the_readme_test_command():
    test_cmd = readme_command("2.")
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_main_job_leaves_real_work_in_the_state_repo(tmp_path):
    pytest.importorskip("llama_cpp")  # the demo's thinking cycle runs the built-in model
    cmd = readme_command("1.")
    assert "janus-git demo" in cmd
    demo = cmd.split("&&")[-1].strip()  # the install step already ran (CI does it first)
    out = subprocess.run(demo, shell=True, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    repo = tmp_path / demo.split()[-1]
    rows = json.loads(subprocess.run(["janus-git", "list", "--json", "-C", str(repo)],
                                     capture_output=True, text=True, check=True).stdout)
    agent_made = [r for r in rows if r["created_by"] and "janus" in r["created_by"]]
    assert agent_made, "the model filed no proposals"
    assert any(r["status"] == "succeeded" for r in rows), rows
    prompts = list((repo / "logs" / "prompts").rglob("*.json"))
    assert prompts, "no prompt log"
    log = git(repo, "log", "--format=%(trailers:key=Janus-Transition,valueonly)").stdout
    assert "running -> succeeded" in log
    assert git(repo, "status", "--porcelain").stdout == ""
    made = {d: [p for p in (repo / d).rglob("*") if p.is_file() and p.name != ".gitkeep"]
            for d in ("nodes", "notes")}
    assert made["nodes"] and made["notes"], made
    made = made["nodes"] + made["notes"]
    for p in made:  # every file a tool wrote is committed
        assert git(repo, "log", "--oneline", "--", str(p.relative_to(repo))).stdout.strip()


@pytest.mark.parametrize("name,as_", [("janus-git.service", "janus-git.service"),
                                     ("janus-git@.service", "janus-git@d1.service")])
def test_systemd_unit_verifies(tmp_path, name, as_):
    """The single daemon's unit, and the template for several on a shared remote (verified
    as an instance of it)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    exe = shutil.which("janus-git")
    unit = (ROOT / "deploy" / name).read_text()
    assert "--instance %i" in unit or "@" not in name
    unit = unit.replace("/usr/local/bin/janus-git", exe).replace("/srv/janus/state",
                                                                  str(tmp_path))
    (tmp_path / name).write_text(unit)
    path = tmp_path / as_
    if as_ != name:
        path.symlink_to(tmp_path / name)
    out = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if "janus-git" in line and ".service" in line and "User=" not in line]
    assert not problems, problems
