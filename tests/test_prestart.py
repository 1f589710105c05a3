"""Warm starts: a shell waiting in the next run's cgroups, for real (real cgroups, real bwrap,
real processes killed with -9)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from janus_git import sandbox
from janus_git.sandbox import cgroups, prestart
from janus_git.sandbox.launch import sandbox_kind

from conftest import within

pytestmark = pytest.mark.skipif(not all(sandbox.doctor()["cgroups"].values()),
                                reason="no writable cgroups")
ISOLATIONS = ["reduced"] + (["bwrap"] if sandbox.doctor()["bwrap_usable"] else [])
SMALL = {"memory_mb": 256, "timeout_s": 10, "pids": 32, "output_kb": 64}


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "a.txt").write_text("hello\n")
    return root


def settle() -> None:
    """Until the background thread has done what earlier runs asked of it (waiters)."""
    import threading
    done = threading.Event()
    sandbox._later(done.set)
    assert done.wait(10)


def warm_run(argv, repo, isolation=None, **kw) -> sandbox.SandboxResult:
    """A run from a shell (or confine.py) waiter: a whole sandbox is kept from being ready."""
    assert sandbox.prepare(isolation, wait=10)
    settle()  # no waiter is being made behind our back
    for kind in [k for k in prestart.pool._ready if k.startswith("sandbox:")]:
        prestart.pool._ready.pop(kind).discard()
    res = sandbox.run(argv, SMALL, repo, isolation=isolation, **kw)
    assert res.warm and res.waiter != "sandbox"
    return res


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_arguments_and_environment_reach_the_command_verbatim(repo, isolation):
    args = ["$(id)", "`id`", "a'b\"c", "x\ny", "; rm -rf /", "*", "$HOME", "\\", "", " lead"]
    env = {"QUOTED": "it's $(id)\nline two", "EMPTY": ""}
    res = warm_run(["printf", "[%s]\\n", *args], repo, isolation=isolation, env=env)
    assert res.ok, res.output
    assert res.output.decode() == "".join(f"[{a}]\n" for a in args)
    res = warm_run(["env"], repo, isolation=isolation, env=env)
    seen = res.output.decode()
    assert "QUOTED=it's $(id)\nline two\n" in seen and "EMPTY=\n" in seen
    assert "OLDPWD" not in seen and "JANUS" not in seen


def test_paths_may_be_arguments_and_other_objects_are_refused(repo):
    assert sandbox.run(["cat", Path("a.txt")], SMALL, repo).output == b"hello\n"
    with pytest.raises(sandbox.SandboxError, match="cannot be passed to a program"):
        sandbox.run(["echo", 42], SMALL, repo)


def test_a_bad_environment_name_is_refused(repo):
    with pytest.raises(sandbox.SandboxError, match="not an environment variable name"):
        sandbox.run(["true"], SMALL, repo, env={"A; rm -rf /": "x"})


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_the_command_holds_no_fd_but_its_three_and_is_in_its_own_cgroup(repo, isolation):
    res = warm_run(["sh", "-c", "ls /proc/$$/fd; cat /proc/$$/cgroup"], repo,
                   isolation=isolation, stdin=b"")
    lines = res.output.decode().split()
    fds = [x for x in lines if x.isdigit()]
    assert fds == ["0", "1", "2"], res.output
    if isolation == "reduced":  # bwrap's cgroup namespace shows its own cgroup as "/"
        assert any("memory:/" in x and "/run-" in x for x in lines), res.output


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_stdin_reaches_a_warm_command(repo, isolation):
    res = warm_run(["cat"], repo, isolation=isolation, stdin=b"fed\n")
    assert res.output == b"fed\n"


@pytest.mark.parametrize("waiter", ["shell", "sandbox"])
def test_limits_are_set_before_the_command_runs(repo, waiter):
    if waiter == "sandbox":
        if "bwrap" not in ISOLATIONS:
            pytest.skip("no bwrap")
        assert sandbox.run(["true"], SMALL, repo).ok  # asks for a sandbox for this repo
        assert prestart.pool.wait_ready(sandbox_key(repo), 10)
        res = sandbox.run(["cat", "/proc/self/limits"], SMALL, repo)
    else:
        res = warm_run(["cat", "/proc/self/limits"], repo, isolation=ISOLATIONS[-1])
    assert res.waiter == waiter
    rows = {line[:26].strip(): line[26:].split() for line in res.output.decode().splitlines()}
    assert rows["Max cpu time"][:2] == ["8", "9"]  # 80 % of the 10 s timeout; KILL 1 s later
    assert rows["Max file size"][:2] == [str(100 << 20)] * 2
    assert rows["Max core file size"][:2] == ["0", "0"]


def test_a_killed_waiting_shell_means_a_cold_start_not_a_failure(repo):
    assert sandbox.prepare("bwrap" if "bwrap" in ISOLATIONS else "reduced", wait=10)
    settle()
    shell = prestart.pool._ready["shell"]
    os.kill(shell.pid, signal.SIGKILL)
    shell.proc.wait()
    res = sandbox.run(["echo", "ok"], SMALL, repo)
    assert res.ok and res.output == b"ok\n" and not res.warm
    assert not any(d.exists() for d in shell.cg.dirs.values())


CHILD = """
import os, sys, time
from janus_git import sandbox
from janus_git.sandbox import prestart
assert sandbox.prepare(sys.argv[2], wait=10)
print(next(iter(prestart.pool._ready.values())).pid, flush=True)
if sys.argv[1] == "hang":
    time.sleep(600)
"""


def child(how: str, isolation: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD), how, isolation],
                            stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def run_dirs(pid: int) -> list[Path]:
    return [d for ctl in cgroups.CONTROLLERS if (base := cgroups.cgroup_base(ctl))
            for d in base.glob(f"run-{pid}-*")]


def gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie":
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_process_killed_with_9_leaves_no_waiting_shell(repo, isolation):
    proc, shell = child("hang", isolation)
    assert psutil.Process(shell).ppid() == proc.pid and run_dirs(proc.pid)
    proc.kill()
    proc.wait()
    assert gone(shell, 5)  # its script pipe closed: EOF, the shell ends
    time.sleep(0.1)
    cgroups.probe()  # what the next daemon's probe does: empty dirs of dead owners go
    assert run_dirs(proc.pid) == []


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_normal_exit_removes_the_waiting_shell_and_its_cgroups(isolation):
    proc, shell = child("exit", isolation)
    assert proc.wait(timeout=10) == 0
    assert gone(shell, 5)
    assert run_dirs(proc.pid) == []


def test_reduced_runs_without_cgroups_start_warm_too_where_landlock_costs_a_python(repo):
    if not sandbox.doctor()["landlock"]:
        pytest.skip("no Landlock: a warm start would save nothing without cgroups")
    res = None
    for _ in range(3):  # the first run asks for the kind, its end has one made
        res = sandbox.run(["echo", "ok"], SMALL, repo, isolation="reduced", cgroups=False)
        time.sleep(0.3)
    assert res.ok and res.warm and res.landlock and res.cgroups == []


def test_warm_starts_can_be_turned_off(repo, monkeypatch):
    monkeypatch.setenv("JANUS_GIT_NO_PRESTART", "1")
    assert not sandbox.prepare(wait=0.5)
    assert not sandbox.run(["true"], SMALL, repo).warm
    assert sandbox.doctor()["warm_starts"] is False


def own_run_dirs() -> set[Path]:
    return set(run_dirs(os.getpid()))


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_run_that_cannot_start_leaves_no_waiter_or_cgroup(tmp_path, isolation):
    assert sandbox.prepare(isolation, wait=10)
    before = own_run_dirs()
    t0 = time.monotonic()
    res = sandbox.run(["true"], SMALL, tmp_path / "missing", isolation=isolation)
    assert not res.ok and time.monotonic() - t0 < within(2)
    time.sleep(0.2)
    left = own_run_dirs() - before
    ready = {pre.cg.name for pre in prestart.pool._ready.values()}
    assert {d.name for d in left} <= ready  # only the next waiter's, made after the run


@pytest.mark.parametrize("word", ["\ud800", "nul\0byte"])
def test_words_no_program_can_take_are_refused_before_anything_is_made(repo, word):
    assert sandbox.prepare(wait=10)
    settle()
    before_dirs, before_fds = own_run_dirs(), len(os.listdir("/proc/self/fd"))
    for kw in ({"argv": ["echo", word]}, {"argv": ["env"], "env": {"X": word}}):
        with pytest.raises(sandbox.SandboxError, match="cannot be passed to a program"):
            sandbox.run(kw["argv"], SMALL, repo, env=kw.get("env"))
    assert own_run_dirs() == before_dirs
    # no descriptor left behind (the pool's background refill may close some meanwhile)
    assert len(os.listdir("/proc/self/fd")) <= before_fds


def test_a_script_cut_short_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    text = prestart.script(["touch", str(marker)], str(tmp_path), {"A": "b"})
    for cut in (len(text) // 2, len(text) - 2):
        r = subprocess.run(["/bin/sh", "-c", ". /dev/fd/0"], input=text[:cut],
                           capture_output=True)
        assert r.returncode != 0 and not marker.exists()
    r = subprocess.run(["/bin/sh", "-c", ". /dev/fd/0"], input=text, capture_output=True)
    assert marker.exists()


def test_a_waiter_that_cannot_take_its_orders_means_a_cold_start(repo):
    assert sandbox.prepare(wait=10)
    settle()
    d = sandbox.doctor()
    kind = prestart.kind_for(d["isolation"] == "reduced" and d["landlock"], True)
    pre = prestart.pool._ready[kind]
    os.close(pre.script_fd)
    pre.script_fd = os.open("/dev/null", os.O_RDONLY)  # writing the orders fails
    res = sandbox.run(["echo", "ok"], SMALL, repo)
    assert res.ok and res.output == b"ok\n" and not res.warm
    assert pre.proc.returncode is not None and not any(d.exists() for d in pre.cg.dirs.values())


def test_scratch_dirs_of_a_dead_daemon_are_swept():
    from janus_git.sandbox import probe
    dead = Path(tempfile.mkdtemp(prefix="janus-git-run-999999999-"))
    mine = Path(tempfile.mkdtemp(prefix=f"janus-git-run-{os.getpid()}-"))
    try:
        probe.sweep_scratch()
        assert not dead.exists() and mine.exists()
    finally:
        shutil.rmtree(mine, ignore_errors=True)


def sandbox_key(repo: Path) -> str:
    return sandbox_kind(repo.resolve(), False, True, [], 100 << 20)[0]


def sandbox_ready(repo: Path) -> None:
    """One run asks for a whole sandbox for REPO; its end has one made."""
    assert sandbox.run(["true"], SMALL, repo).ok
    key = sandbox_key(repo)
    assert prestart.pool.wait_ready(key, 10)


@pytest.mark.skipif("bwrap" not in ISOLATIONS, reason="no bwrap")
def test_a_waiting_sandbox_sees_the_repository_as_it_is_at_the_run(repo):
    (repo / ".git").mkdir()
    (repo / ".git" / "config").write_text("secret\n")
    sandbox_ready(repo)
    (repo / "later.txt").write_text("written after the sandbox was made\n")
    res = sandbox.run(["sh", "-c", "cat later.txt; ls -A .git; ls /proc/$$/fd; env | sort"],
                      SMALL, repo, env={"EXTRA": "x y"})
    assert res.waiter == "sandbox" and res.ok, res.output
    out = res.output.decode()
    assert "written after the sandbox was made" in out and "secret" not in out
    assert [x for x in out.split() if x.isdigit()] == ["0", "1", "2"]
    assert sorted(line.split("=")[0] for line in out.splitlines() if "=" in line) == \
        ["EXTRA", "HOME", "LANG", "PATH", "PWD", "TMPDIR"]


@pytest.mark.skipif("bwrap" not in ISOLATIONS, reason="no bwrap")
def test_only_the_latest_few_sandbox_set_ups_are_kept_waiting(tmp_path):
    repos = []
    for i in range(prestart.SANDBOX_KINDS_KEPT + 2):
        repos.append(tmp_path / f"r{i}")
        repos[-1].mkdir()
        sandbox_ready(repos[-1])
    waiting = [k for k in prestart.pool._ready if k.startswith("sandbox:")]
    assert len(waiting) <= prestart.SANDBOX_KINDS_KEPT
    assert all(str(repos[0]) not in k for k in waiting)


@pytest.mark.skipif("bwrap" not in ISOLATIONS, reason="no bwrap")
def test_a_git_made_after_the_sandbox_was_built_is_still_hidden(repo):
    sandbox_ready(repo)  # built while the repository had no .git
    (repo / ".git").mkdir()
    (repo / ".git" / "config").write_text("secret\n")
    res = sandbox.run(["sh", "-c", "cat .git/config; ls -A .git"], SMALL, repo)
    assert "secret" not in res.output.decode() and res.waiter != "sandbox"


@pytest.mark.skipif("bwrap" not in ISOLATIONS, reason="no bwrap")
def test_a_waiting_sandbox_cannot_be_reached_by_other_processes_of_uid_65534(repo):
    """While it waits its shell is root and its scratch dir behind a 0700 directory: a
    reduced run (uid 65534, no Landlock) can neither write its orders nor plant files."""
    sandbox_ready(repo)
    pre = prestart.pool._ready[sandbox_key(repo)]
    shells: list[psutil.Process] = []
    end = time.monotonic() + 5
    while not shells and time.monotonic() < end:  # bwrap may still be building it
        shells = [p for p in psutil.Process(pre.pid).children(recursive=True)
                  if p.name() == "sh"]
        time.sleep(0.01)
    assert shells and all(p.uids().real == 0 for p in shells)
    target = f"/proc/{shells[0].pid}/fd/0"
    plant = pre.scratch / "tmp" / "planted"
    os.environ["JANUS_GIT_NO_LANDLOCK"] = "1"
    try:
        res = sandbox.run(["sh", "-c", f"echo echo INJECTED > {target}; echo x > {plant}"],
                          SMALL, repo, isolation="reduced")
    finally:
        del os.environ["JANUS_GIT_NO_LANDLOCK"]
    assert b"Permission denied" in res.output and not plant.exists()
    assert b"INJECTED" not in sandbox.run(["true"], SMALL, repo).output


@pytest.mark.skipif("bwrap" not in ISOLATIONS, reason="no bwrap")
def test_a_repository_replaced_at_the_same_path_gets_a_new_sandbox(repo):
    sandbox_ready(repo)
    old = repo.with_name("old")
    repo.rename(old)
    repo.mkdir()
    (repo / "a.txt").write_text("the new one\n")
    res = sandbox.run(["cat", "a.txt"], SMALL, repo)
    assert res.output == b"the new one\n" and res.waiter != "sandbox"


def test_two_runs_starting_together_never_share_a_waiter(repo):
    """Parallel run slots: eight threads take the one ready waiter of a kind at once; exactly
    one gets it (the others start cold), and run cgroup names never collide."""
    import threading
    assert sandbox.prepare("reduced", wait=10)
    settle()
    kind = next(k for k in prestart.pool._ready if not k.startswith("sandbox:"))
    got: list = []
    go = threading.Barrier(8)

    def take() -> None:
        go.wait()
        got.append(prestart.pool.take(kind))
    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    taken = [p for p in got if p is not None]
    assert len(got) == 8 and len(taken) == 1
    taken[0].discard()
    names = [cgroups.run_name() for _ in range(1000)]
    assert len(set(names)) == 1000  # even within one nanosecond
