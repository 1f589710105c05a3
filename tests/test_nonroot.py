"""The sandbox as a non-root daemon runs it (the shipped systemd unit runs as User=janus):
the real package, run as uid 65534 by the system's python3, against real bwrap, Landlock and
rlimits.  No cgroup can be made without root, so the kernel's per-user-namespace
RLIMIT_NPROC is what stops a fork bomb."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest
import yaml

import janus_git

SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534


def _system_python_matches() -> bool:
    """psutil and PyYAML are copied over compiled: the system python must be the same minor."""
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return out == str(tuple(sys.version_info[:2]))


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not _system_python_matches(),
    reason="needs root (to become uid 65534), setpriv and a system python3 of this version")

SCRIPT = """
import json, os, sys, time
from pathlib import Path
from janus_git import sandbox
repo = Path(sys.argv[1])
bomb = ("import os, time\\nfor _ in range(1000):\\n    if os.fork() == 0:\\n"
        "        time.sleep(30)\\n        os._exit(0)\\ntime.sleep(30)\\n")
write = "echo x > notes.txt && echo WROTE-REPO; echo y > $TMPDIR/s && echo WROTE-SCRATCH"
limits = {"pids": 24, "timeout_s": 20, "memory_mb": 512, "cpu_s": 10}
out = {"uid": os.geteuid(), "doctor": sandbox.doctor()}
for iso in ("bwrap", "reduced"):
    if iso == "bwrap" and not out["doctor"]["bwrap_usable"]:
        continue
    r = sandbox.run(["python3", "-c", bomb], limits, repo, isolation=iso)
    out[iso + "_bomb"] = {"limit": r.limit_hit, "output": r.output.decode(errors="replace"),
                          "peak": r.resources.get("peak_processes")}
    r = sandbox.run(["sh", "-c", write], limits, repo, isolation=iso)
    out[iso + "_write"] = {"output": r.output.decode(errors="replace"), "landlock": r.landlock}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def nonroot_run():
    """Run SCRIPT as uid 65534, on a repository that uid owns, and return what it printed."""
    base = Path(tempfile.mkdtemp(prefix="janus-test-nonroot-"))
    try:
        site = base / "site"
        site.mkdir()
        for mod in (psutil, yaml):
            shutil.copytree(Path(mod.__file__).parent, site / mod.__name__)
        for extra in Path(yaml.__file__).parent.parent.glob("_yaml*"):
            (shutil.copytree if extra.is_dir() else shutil.copy)(extra, site / extra.name)
        repo = base / "repo"
        repo.mkdir()
        (repo / "notes.txt").write_text("before\n")
        (base / "run.py").write_text(textwrap.dedent(SCRIPT))
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(repo)], check=True)
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(base),
               "PYTHONPATH": f"{site}:{Path(janus_git.__file__).parent.parent}"}
        r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                            "--clear-groups", SYSTEM_PYTHON, str(base / "run.py"), str(repo)],
                           capture_output=True, text=True, env=env, timeout=180, cwd=base)
        if "PermissionError" in r.stderr and "janus_git" in r.stderr:
            pytest.skip("the checkout is not readable by uid 65534")
        assert r.returncode == 0, r.stderr[-2000:]
        yield json.loads(r.stdout.splitlines()[-1]), repo
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_doctor_as_non_root_names_the_guards_it_has(nonroot_run):
    out, _ = nonroot_run
    d = out["doctor"]
    assert out["uid"] == NOBODY and d["run_as_uid"] == NOBODY
    assert not any(d["cgroups"].values())  # only root can make them here
    assert d["fork_bomb_guard"] == "RLIMIT_NPROC in the run's own user namespace"


def measured(out: dict, key: str) -> dict:
    if key not in out:
        pytest.skip("bwrap does not work for uid 65534 here")
    return out[key]


@pytest.mark.parametrize("isolation", ["bwrap", "reduced"])
def test_a_fork_bomb_is_refused_by_the_kernel_without_root(nonroot_run, isolation):
    bomb = measured(nonroot_run[0], isolation + "_bomb")
    assert bomb["limit"] == "pids", bomb
    assert "Resource temporarily unavailable" in bomb["output"]  # fork() itself was refused
    assert bomb["peak"] <= 24 + 2


@pytest.mark.parametrize("isolation", ["bwrap", "reduced"])
def test_a_non_root_daemons_run_cannot_write_the_repository_it_owns(nonroot_run, isolation):
    out, repo = nonroot_run
    result = measured(out, isolation + "_write")
    assert "WROTE-SCRATCH" in result["output"] and "WROTE-REPO" not in result["output"]
    assert (repo / "notes.txt").read_text() == "before\n"
    if isolation == "reduced":
        assert result["landlock"]
