"""A built wheel, installed without -e into a fresh venv, carries its templates: `init` and a
first `propose` work from it (an editable install hides a wheel that lacks them)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, git

pytestmark = pytest.mark.slow  # a wheel build and a venv: ~7 s

SKIP = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".cache",
                              ".pytest_cache", "janus-demo", ".work")


def run(*argv, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"{argv}: {out.stdout}\n{out.stderr}"
    return out


def source_copy(dest: Path) -> Path:
    """The checkout as git sees it (tracked and untracked, not ignored), so no stale build/
    from an earlier in-tree build can slip into the wheel."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard",
                             "-z"], capture_output=True, text=True)
    if listed.returncode != 0:  # not a git checkout (an unpacked sdist)
        shutil.copytree(ROOT, dest, ignore=SKIP)
        return dest
    for rel in filter(None, listed.stdout.split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def can_build_wheels() -> bool:
    """setuptools 70.1+ has bdist_wheel; an older one needs the `wheel` package."""
    import importlib.util

    import setuptools
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def pip_env(tmp_path_factory) -> dict[str, str]:
    """pip with no cache and no version check, and a temp HOME (module fixtures run before
    the autouse isolated_home)."""
    return {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")},
            "HOME": str(tmp_path_factory.mktemp("pip-home")), "PIP_NO_CACHE_DIR": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, pip_env) -> Path:
    if not can_build_wheels():
        pytest.skip("building a wheel without isolation needs setuptools>=70.1 "
                    "(pip install -e '.[test]')")
    src = source_copy(tmp_path_factory.mktemp("src") / "janus-git")
    out = tmp_path_factory.mktemp("wheel")
    # no build isolation: the build needs nothing beyond this environment (no network)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", out, src, cwd=out, env=pip_env)
    (found,) = out.glob("janus_git-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory, pip_env) -> Path:
    """A fresh venv that sees this environment's dependencies (no network) and has the wheel
    installed, not linked."""
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    run(sys.executable, "-m", "venv", "--system-site-packages", env_dir, cwd=env_dir.parent,
        env=pip_env)
    run(env_dir / "bin/python", "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
        wheel, cwd=env_dir.parent, env=pip_env)
    return env_dir


def test_the_wheel_carries_the_templates_and_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("state", "missions", "proposals", "logs"):
        for f in (ROOT / folder).rglob("*"):
            rel = f.relative_to(ROOT)
            if f.is_file() and not {"__pycache__", ".cache"} & set(rel.parts) \
                    and f.name != "STOP" and not f.name.startswith("daemon.log"):
                assert f"janus_git/templates/{rel.as_posix()}" in names
    assert not [n for n in names if "__pycache__" in n or "/.cache/" in n]
    # the package list in pyproject.toml is explicit: a new subpackage must be added there
    for f in (ROOT / "janus_git").rglob("*.py"):
        assert f.relative_to(ROOT).as_posix() in names, f"{f} is not in the wheel"


def test_the_installed_wheel_inits_and_proposes(venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    cwd = tmp_path / "elsewhere"  # not the checkout: nothing may come from the source tree
    cwd.mkdir()
    where = run(venv / "bin/python", "-c", "import janus_git; print(janus_git.__file__)",
                cwd=cwd, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), where

    jg = venv / "bin/janus-git"
    root = tmp_path / "st"
    run(jg, "init", root, cwd=cwd, env=env)
    assert (root / "state/agent.yaml").is_file() and (root / "missions/docs").is_dir()
    assert not (root / "state/__pycache__").exists()
    out = run(jg, "propose", "-C", root, "-m", "STUDY-004-BETA", "-t", "analysis", "--tool",
              "shell", "--", "ls", cwd=cwd, env=env).stdout
    pid = out.split()[1]
    assert out.startswith(f"proposed {pid} (proposals/")
    log = git(root, "log", "--format=%(trailers:key=Janus-Proposal,valueonly)").stdout
    assert pid in log.split()
    assert git(root, "ls-files", "--", f"proposals/{pid[:4]}/{pid[4:6]}/{pid}.yaml").stdout
    assert git(root, "status", "--porcelain").stdout == ""
