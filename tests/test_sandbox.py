"""The sandbox, for real: hostile programs under real bwrap, real cgroups and real rlimits.

Every hostile case runs under each isolation this machine offers: bwrap with cgroups, bwrap
without cgroups, the reduced fallback with cgroups, and the bare reduced fallback (rlimits
only), which is what a box without bwrap or writable cgroups gets."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from janus_git import sandbox
from janus_git.sandbox import prestart
from janus_git.sandbox.launch import sandbox_kind

from conftest import within

HAVE_BWRAP = sandbox.doctor()["bwrap_usable"]
HAVE_CGROUPS = all(sandbox.doctor()["cgroups"].values())

# With cgroups a run starts warm (from a shell already waiting in its cgroups) or cold; the
# hostile cases run both ways, the others warm.
MODES = [
    pytest.param("bwrap", True, id="bwrap+cgroups+warm",
                 marks=pytest.mark.skipif(not (HAVE_BWRAP and HAVE_CGROUPS), reason="no bwrap")),
    pytest.param("bwrap", False, id="bwrap+rlimits",
                 marks=pytest.mark.skipif(not HAVE_BWRAP, reason="no bwrap")),
    pytest.param("reduced", True, id="reduced+cgroups+warm",
                 marks=pytest.mark.skipif(not HAVE_CGROUPS, reason="no writable cgroups")),
    pytest.param("reduced", False, id="reduced+rlimits"),
]
# a whole bwrap sandbox already waiting for this repository and these limits
SANDBOX = [
    pytest.param("bwrap", True, id="bwrap+cgroups+sandbox",
                 marks=pytest.mark.skipif(not (HAVE_BWRAP and HAVE_CGROUPS), reason="no bwrap")),
]
COLD = [
    pytest.param("bwrap", True, id="bwrap+cgroups+cold",
                 marks=pytest.mark.skipif(not (HAVE_BWRAP and HAVE_CGROUPS), reason="no bwrap")),
    pytest.param("reduced", True, id="reduced+cgroups+cold",
                 marks=pytest.mark.skipif(not HAVE_CGROUPS, reason="no writable cgroups")),
]
SMALL = {"memory_mb": 256, "disk_write_mb": 100, "timeout_s": 5, "cpu_s": 1, "pids": 32,
         "output_kb": 64, "cpu_percent": 80}

HOSTILE = {
    "memory": "a = []\nwhile True:\n    a.append(b'x' * 10**7)\n",
    "disk": ("import os\nf = open(os.environ['TMPDIR'] + '/big', 'wb')\n"
             "for _ in range(200):\n    f.write(b'x' * 2**20)\nf.close()\n"),
    "cpu": "while True:\n    pass\n",
    "pids": ("import os, time\nfor _ in range(1000):\n    if os.fork() == 0:\n"
             "        time.sleep(60)\n        os._exit(0)\ntime.sleep(60)\n"),
    "timeout": "import time\ntime.sleep(60)\n",
}


@pytest.fixture(autouse=True)
def start(request, monkeypatch) -> str | None:
    """For a +warm mode, a shell is made ready in advance; for +cold, warm starts are off."""
    callspec = getattr(request.node, "callspec", None)
    name = callspec.id if callspec else ""
    if "+cold" in name:
        monkeypatch.setenv("JANUS_GIT_NO_PRESTART", "1")
        return "cold"
    if "+warm" in name:
        assert sandbox.prepare(callspec.params["isolation"], wait=10)
        return "warm"
    if "+sandbox" in name:
        return "sandbox"
    return None


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("hello\n")
    return root


MARK = f"# janus-test-{os.getpid()}"


def py(code: str) -> list[str]:
    return ["python3", "-c", f"{code}\n{MARK}\n"]


def leftovers() -> list[int]:
    """Processes of this test file's programs still alive (zombies included)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if p.info["cmdline"] and any(MARK in a for a in p.info["cmdline"]):
            out.append(p.pid)
    return out


def sandbox_waiting(repo: Path, limits: dict) -> None:
    """Have a whole sandbox wait for REPO: one run asks for it, its end has it made."""
    assert sandbox.run(["true"], limits, repo).ok
    key = sandbox_kind(repo.resolve(), False, True, [], 100 << 20)[0]
    assert prestart.pool.wait_ready(key, 10)


@pytest.mark.parametrize("isolation,cgroups", MODES + COLD + SANDBOX)
@pytest.mark.parametrize("limit", list(HOSTILE))
def test_hostile_program_is_stopped_with_the_limit_named(repo, isolation, cgroups, limit, start):
    # only the limit under test is tight: a loaded machine spends CPU seconds on a memory
    # bomb's page faults or a fork loop before the memory or pids cap is reached
    limits = SMALL if limit == "cpu" else dict(SMALL, cpu_s=4)
    if limit != "pids" and not cgroups:
        # rlimits alone: RLIMIT_NPROC counts every task of uid 65534 on the host; a run gets
        # the ones running at its start on top of its cap, but a run another worker starts
        # during it takes from it, so a tight cap is the pids test's only
        limits = dict(limits, pids=4096)
    if limit == "timeout":
        limits = dict(limits, timeout_s=2)
    if start == "sandbox":
        sandbox_waiting(repo, limits)
    t0 = time.monotonic()
    res = sandbox.run(py(HOSTILE[limit]), limits, repo, isolation=isolation, cgroups=cgroups)
    took = time.monotonic() - t0
    assert res.limit_hit == limit, (res.error, res.output[-300:], res.resources, res.waiter)
    assert not res.ok and res.error
    assert res.isolation == isolation
    if start:
        assert res.warm == (start != "cold")
    if start == "sandbox":
        assert res.waiter == "sandbox"
    assert took < within(8)
    if limit == "disk":
        assert res.resources["bytes_written"] >= 100 << 20
    if limit == "timeout":
        assert 2 <= res.resources["wall_seconds"] < 2 + within(3)
    # nothing it started outlives the run, and the daemon's next run is fine
    assert not leftovers()
    ok = sandbox.run(["echo", "fine"], SMALL, repo, isolation=isolation, cgroups=cgroups)
    assert ok.ok and ok.output == b"fine\n"


@pytest.mark.parametrize("isolation,cgroups", MODES)
def test_a_200mb_write_leaves_at_most_the_limit_on_disk(repo, isolation, cgroups):
    # in /tmp itself: the reduced sandbox's uid must be able to reach a caller's writable_dir
    out = Path(tempfile.mkdtemp(prefix="janus-test-"))
    try:
        res = sandbox.run(py(HOSTILE["disk"]), SMALL, repo, isolation=isolation,
                          cgroups=cgroups, writable_dir=out)
        assert res.limit_hit == "disk"
        assert (out / "big").stat().st_size <= 100 << 20
    finally:
        shutil.rmtree(out)


@pytest.mark.parametrize("isolation,cgroups", MODES)
def test_a_1gb_output_is_bounded(repo, isolation, cgroups):
    code = "import sys\nfor _ in range(1024):\n    sys.stdout.buffer.write(b'y' * 2**20)\n"
    res = sandbox.run(py(code), SMALL, repo, isolation=isolation, cgroups=cgroups)
    assert res.limit_hit == "output"
    assert len(res.output) < 64 * 1024 + 200
    assert b"[janus-git: output truncated at 64 KiB;" in res.output
    assert res.output_bytes < 1 << 30  # killed well before the gigabyte


def test_output_past_the_limit_but_under_the_hard_cap_is_truncated_not_failed(repo):
    res = sandbox.run(py("print('z' * 200_000)"), dict(SMALL, output_kb=16), repo)
    assert res.ok and res.limit_hit is None
    assert res.output.startswith(b"z" * 16384)
    assert res.output.endswith(b"[janus-git: output truncated at 16 KiB; 183617 bytes dropped]\n")


@pytest.mark.parametrize("isolation,cgroups", MODES)
def test_network_is_unreachable_unless_declared(repo, isolation, cgroups):
    if isolation == "reduced" and not sandbox.doctor()["network_isolation"]:
        pytest.skip("no unprivileged network namespace for the reduced sandbox here")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    code = ("import socket\ns = socket.socket()\ns.settimeout(2)\n"
            f"s.connect(('127.0.0.1', {port}))\nprint('connected')\n")
    try:
        closed = sandbox.run(py(code), SMALL, repo, isolation=isolation, cgroups=cgroups)
        assert not closed.ok and b"connected" not in closed.output
        assert not closed.network
        with pytest.raises(socket.timeout):
            server.accept()
        opened = sandbox.run(py(code), SMALL, repo, isolation=isolation, cgroups=cgroups,
                             network=True)
        assert opened.ok and opened.output == b"connected\n" and opened.network
    finally:
        server.close()


@pytest.mark.parametrize("isolation,cgroups", MODES)
def test_the_daemons_environment_does_not_leak(repo, monkeypatch, isolation, cgroups):
    monkeypatch.setenv("JANUS_SECRET", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter3")
    res = sandbox.run(py("import os\nfor k, v in sorted(os.environ.items()): print(k, v)"),
                      SMALL, repo, isolation=isolation, cgroups=cgroups)
    assert res.ok
    assert b"hunter" not in res.output
    names = {line.split()[0] for line in res.output.decode().splitlines()}
    assert names <= {"PATH", "LANG", "HOME", "TMPDIR", "PWD"}


@pytest.mark.parametrize("isolation,cgroups", MODES)
def test_runs_as_nobody_and_cannot_write_the_repository(repo, isolation, cgroups):
    code = ("import os\nprint(os.getuid(), os.getgid())\n"
            "try:\n    open('docs/a.txt', 'a').write('x')\n    print('WROTE')\n"
            "except OSError as e:\n    print('refused', e.errno)\n"
            "print(open('docs/a.txt').read().strip())\n")
    res = sandbox.run(py(code), SMALL, repo, isolation=isolation, cgroups=cgroups)
    assert res.ok, res.output
    lines = res.output.decode().splitlines()
    if os.geteuid() == 0:
        assert lines[0] == "65534 65534"
    assert lines[1].startswith("refused") and lines[2] == "hello"
    assert (repo / "docs" / "a.txt").read_text() == "hello\n"


def test_bwrap_hides_git_and_secrets_and_binds_the_repo_at_a_fixed_path(repo):
    if not HAVE_BWRAP:
        pytest.skip("no bwrap")
    (repo / ".git").mkdir()
    (repo / ".git" / "config").write_text("[remote]\n\turl = https://token@example.com\n")
    code = ("import os\nprint(os.getcwd())\nprint(sorted(os.listdir('.git')))\n"
            "print(os.path.exists('/root'), os.path.exists('/etc/shadow') and "
            "os.access('/etc/shadow', os.R_OK))\nprint(os.getpid())\n")
    res = sandbox.run(py(code), SMALL, repo, isolation="bwrap")
    assert res.ok, res.output
    cwd, git, root_and_shadow, pid = res.output.decode().splitlines()
    assert cwd == "/repo" and git == "[]" and root_and_shadow == "False False"
    assert int(pid) < 10  # its own pid namespace


@pytest.mark.parametrize("isolation,cgroups", MODES)
def test_cancel_kills_the_process_group(repo, isolation, cgroups):
    cancel = threading.Event()
    started = []
    code = "import os, time\nos.fork()\nos.fork()\ntime.sleep(60)\n"
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    t0 = time.monotonic()
    res = sandbox.run(py(code), SMALL, repo, isolation=isolation, cgroups=cgroups,
                      cancel=cancel, on_start=started.append)
    assert res.limit_hit == "cancelled" and res.error == "cancelled"
    assert time.monotonic() - t0 < within(3)
    assert len(started) == 1 and isinstance(started[0], int)
    assert not leftovers()


def test_measures_cpu_memory_and_time(repo):
    code = "x = b'm' * (100 * 2**20)\nn = 0\nfor i in range(3_000_000):\n    n += i\n"
    res = sandbox.run(py(code), SMALL, repo)
    r = res.resources
    assert res.ok, res.output
    assert r["peak_rss_mb"] >= 90
    assert r["cpu_seconds"] > 0.05 and r["wall_seconds"] >= r["cpu_seconds"] * 0.5
    assert 0 < r["cpu_peak_percent"] <= 100
    assert res.started_at < res.ended_at


def test_forced_reduced_by_environment(repo, monkeypatch):
    monkeypatch.setenv("JANUS_GIT_FORCE_REDUCED", "1")
    assert sandbox.doctor()["isolation"] == "reduced"
    assert sandbox.run(["true"], SMALL, repo).isolation == "reduced"


def test_doctor_says_what_is_available_and_why():
    d = sandbox.doctor()
    assert d["isolation"] in ("bwrap", "reduced") and d["why"]
    assert set(d["cgroups"]) == {"memory", "pids", "cpu", "cpuacct"}
    assert d["bwrap"] == (__import__("shutil").which("bwrap") is not None)


def test_a_missing_program_fails_cleanly(repo):
    res = sandbox.run(["no-such-program-xyz"], SMALL, repo)
    assert not res.ok and res.exit_code not in (0, None) and res.limit_hit is None


def test_python_binds_let_the_daemons_interpreter_run_under_bwrap(repo):
    """The model tools run `python -m janus_git...` with this interpreter, which may live
    under a 0700 /root: its binds get traversable parents."""
    if not HAVE_BWRAP:
        pytest.skip("no bwrap")
    code = "import janus_git, yaml, psutil; print('ok')"
    res = sandbox.run([sys.executable, "-c", code], dict(SMALL, memory_mb=1024), repo,
                      isolation="bwrap", ro_binds=sandbox.python_binds())
    assert res.ok and res.output == b"ok\n", res.output


@pytest.mark.parametrize("isolation,cgroups", MODES)
def test_no_capabilities_and_no_new_privileges(repo, isolation, cgroups):
    res = sandbox.run(["grep", "-E", "^(CapEff|CapBnd|CapPrm|NoNewPrivs|Uid)", "/proc/self/status"],
                      SMALL, repo, isolation=isolation, cgroups=cgroups)
    assert res.ok, res.output
    status = dict(line.split(":", 1) for line in res.output.decode().splitlines())
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    # setpriv sets no_new_privs in the reduced chain too.  Its bounding set is full again
    # inside the user namespace `unshare --net` needs, but only over that empty namespace.
    assert status["NoNewPrivs"].strip() == "1"
    if isolation == "bwrap":
        assert int(status["CapBnd"], 16) == 0
    if os.geteuid() == 0:
        assert status["Uid"].split()[:2] == ["65534", "65534"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to run processes as uid 65534 beside the run")
@pytest.mark.parametrize("isolation", [
    pytest.param("bwrap", marks=pytest.mark.skipif(not HAVE_BWRAP, reason="no bwrap")),
    "reduced"])
def test_without_cgroups_a_runs_process_cap_is_its_own(repo, isolation):
    """RLIMIT_NPROC counts every task of uid 65534 on the host: with 40 of them already
    running (another run, waiting sandboxes), a run capped at 32 processes may still start
    10, and a fork bomb beside them is still stopped by the cap."""
    others = [subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                "sleep", "60"]) for _ in range(40)]
    try:
        code = ("import os, time\nkids = []\nfor _ in range(10):\n    pid = os.fork()\n"
                "    if pid == 0:\n        time.sleep(0.5)\n        os._exit(0)\n"
                "    kids.append(pid)\nfor k in kids:\n    os.waitpid(k, 0)\nprint('ten')\n")
        res = sandbox.run(py(code), dict(SMALL, cpu_s=4), repo, isolation=isolation,
                          cgroups=False)
        assert res.ok and b"ten" in res.output, (res.error, res.output[-300:])
        bomb = sandbox.run(py(HOSTILE["pids"]), dict(SMALL, cpu_s=4), repo,
                           isolation=isolation, cgroups=False)
        assert bomb.limit_hit == "pids", (bomb.error, bomb.output[-300:])
    finally:
        for p in others:
            p.kill()
            p.wait()
