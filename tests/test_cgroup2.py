"""cgroup v2, two ways.

* For real, in this machine's cgroup2 tree.  Here every controller is bound to v1, so the
  tree has none to give: what is proven for real is the layout (the daemon moved into a leaf
  of its own, one cgroup per run under <own>/janus-git), processes born in their run's
  cgroup from a pre-started waiter (warm starts), the CPU time from the run cgroup's
  cpu.stat, every process counted from cgroup.procs, and the cleanup.  A child process
  plays the daemon, in a fresh cgroup as systemd would give it (Delegate=yes).
* Against a stand-in: the same `Hierarchy` and `Cgroups2` pointed at a tree of plain files,
  for what needs controllers (memory.max, pids.max, cpu.max written; memory.peak,
  pids.peak, memory.events, pids.events read).  This proves what we write and how we read
  it, not what a kernel does with it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_resources import LIMITS, PROGRAMS, check

from janus_git.sandbox import measure
from janus_git.sandbox.cgroups import v2 as cgroup2

MOUNT = cgroup2.mount_point()
REAL = MOUNT is not None and os.access(MOUNT / "cgroup.procs", os.W_OK)

DAEMON = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    mount, name, root, limits, programs = sys.argv[1:6]
    (Path(mount) / name).mkdir()
    (Path(mount) / name / "cgroup.procs").write_text(str(os.getpid()))  # systemd's part
    os.environ["JANUS_GIT_CGROUP_VERSION"] = "2"
    import subprocess
    kid = subprocess.Popen(["sleep", "60"])  # a child from before the first run (a git)
    from janus_git import sandbox
    out = {"doctor": sandbox.doctor(), "runs": []}
    limits, programs = json.loads(limits), json.loads(programs)
    # first, right after a waiter is ready: it shows where a warm-started run is born
    programs = {"where": "print(open('/proc/self/cgroup').read())", **programs}
    for iso in ("bwrap", "reduced"):
        sandbox.prepare(iso, wait=30)
        for prog, code in programs.items():
            r = sandbox.run(["python3", "-S", "-c", code], limits, Path(root), isolation=iso)
            out["runs"].append({"iso": iso, "name": prog, "res": r.resources,
                                "warm": r.warm, "exit": r.exit_code, "error": r.error,
                                "wall": r.resources.get("wall_seconds"),
                                "output": r.output.decode(errors="replace")})
    out["own"] = open("/proc/self/cgroup").read()
    out["kid"] = open(f"/proc/{kid.pid}/cgroup").read()
    kid.kill()
    kid.wait()
    print(json.dumps(out))
""")


def _rmtree_cgroups(top: Path) -> None:
    for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        d.rmdir()
    top.rmdir()


@pytest.fixture(scope="module")
def v2_daemon(tmp_path_factory):
    if not REAL:
        pytest.skip("no writable cgroup2 tree on this machine")
    name = f"janus-git-test-{os.getpid()}"
    root = tmp_path_factory.mktemp("repo")
    os.chmod(root, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_GIT_NO_")}
    try:
        done = subprocess.run([sys.executable, "-c", DAEMON, str(MOUNT), name, str(root),
                               json.dumps(LIMITS), json.dumps(PROGRAMS)],
                              capture_output=True, text=True, timeout=120, env=env)
    finally:
        if (MOUNT / name).exists():
            _rmtree_cgroups(MOUNT / name)
    assert done.returncode == 0, done.stderr[-2000:]
    return name, json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize("iso", ["bwrap", "reduced"])
def test_v2_figures_are_true(v2_daemon, iso, name):
    _, out = v2_daemon
    run = next(r for r in out["runs"] if r["iso"] == iso and r["name"] == name)
    assert run["exit"] == 0, run
    check(name, run["res"], run["output"].encode())
    assert run["res"]["measured"]["cpu_seconds"] == "cgroup-v2:cpu.stat usage_usec"
    assert run["res"]["measured"]["peak_processes"] == "sampled:cgroup.procs"


def test_v2_daemon_lives_in_a_leaf_and_runs_are_born_in_their_cgroup(v2_daemon):
    name, out = v2_daemon
    assert out["doctor"]["cgroup_version"] == 2
    assert out["doctor"]["cgroups"]["tree"] is True
    assert f"0::/{name}/daemon" in out["own"] and f"0::/{name}/daemon" in out["kid"]
    where = next(r for r in out["runs"] if r["iso"] == "reduced" and r["name"] == "where")
    assert where["warm"], where  # a waiter pre-started in the run's cgroup
    assert f"0::/{name}/janus-git/run-" in where["output"], where["output"]
    assert any(r["warm"] for r in out["runs"] if r["iso"] == "bwrap"), out["runs"]


# --- the stand-in: plain files where the kernel's would be -----------------------------------

OWN = "/system.slice/janus-git.service"


@pytest.fixture
def fake(tmp_path):
    own = tmp_path / OWN.lstrip("/")
    own.mkdir(parents=True)
    (own / "cgroup.procs").write_text(f"1234\n{os.getpid()}\n")  # a stranger, and us
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "janus-git").mkdir()  # what the kernel would show in it once it exists
    (own / "janus-git" / "cgroup.controllers").write_text("cpu memory pids\n")
    return cgroup2.Hierarchy(tmp_path, OWN)


def test_standin_set_up_leaf_then_controllers(fake):
    runs = fake.runs_dir()
    assert runs == fake.own_dir / "janus-git"
    assert (fake.own_dir / "daemon" / "cgroup.procs").read_text() == str(os.getpid())
    assert (fake.own_dir / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (runs / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert fake.problem == ""
    assert cgroup2.delegation_advice(fake) == ""
    assert cgroup2.probe(fake) == {"memory": True, "pids": True, "cpu": True, "tree": True}


def test_standin_started_in_the_leaf(fake):
    """systemd 254+ with DelegateSubgroup=daemon, or a daemon restarted in the same cgroup:
    runs go beside the leaf, not under it."""
    again = cgroup2.Hierarchy(fake.mount, OWN + "/daemon")
    assert again.own == OWN and again.runs_dir() == fake.own_dir / "janus-git"


def test_standin_caps_written(fake):
    cg = cgroup2.Cgroups2("run-1-2-3", fake)
    assert sorted(cg.dirs) == ["cpu", "memory", "pids"] and cg.joined
    cg.limit({**LIMITS, "memory_mb": 300, "pids": 20, "cpu_percent": 50}, overhead=2)
    files = {n: (cg.path / n).read_text() for n in
             ("memory.max", "memory.swap.max", "pids.max", "cpu.max")}
    quota = int(100_000 * (os.cpu_count() or 1) * 0.5)
    assert files == {"memory.max": str(300 << 20), "memory.swap.max": "0", "pids.max": "22",
                     "cpu.max": f"{quota} 100000"}
    cg.attach(4321)
    assert cg.pids() == [4321]


@pytest.mark.parametrize("resettable", [True, False], ids=["peak-fd-reset", "old-kernel"])
def test_standin_readings(fake, resettable):
    cg = cgroup2.Cgroups2("run-1-2-4", fake)
    p = cg.path
    (p / "memory.current").write_text(str(9 << 20))  # the waiter: 6 MB anon, 3 MB set-up
    (p / "memory.stat").write_text(f"anon {6 << 20}\nfile {2 << 20}\nshmem 0\n")
    if resettable:
        (p / "memory.peak").write_text(str(9 << 20))
    cg.start_counting()
    # the run: 200 MB anonymous at its peak, 50 MB of files read
    (p / "memory.peak").write_text(str((200 << 20) + (3 << 20) + (50 << 20)))
    (p / "memory.stat").write_text(f"anon 0\nfile {52 << 20}\nshmem 0\n")
    (p / "pids.peak").write_text("3\n")
    (p / "cpu.stat").write_text("usage_usec 1012000\nuser_usec 1000000\nsystem_usec 12000\n")
    (p / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    (p / "pids.events").write_text("max 2\n")

    class Sampled:  # what the sampler saw (less than the kernel: it looks less often)
        peak_rss, cpu_seconds, peak_pids, cpu_peak, bytes_written = 150.0, 0.9, 2, 40.0, 0

    class Usage:
        ru_maxrss, ru_utime, ru_stime = 0, 0.9, 0.0
    res = measure.figures(cg, Sampled, Usage, 1.1, 2)
    assert res["peak_rss_mb"] == 200.0
    assert res["cpu_seconds"] == 1.012 and res["peak_processes"] == 3
    assert res["measured"]["peak_rss_mb"] == "cgroup-v2:memory.peak less page cache"
    assert res["measured"]["peak_processes"] == "cgroup-v2:pids.peak"
    assert (cg.oom_kills(), cg.pids_refused()) == (1, 2)
    cg.remove()


def test_standin_advice_when_not_delegated(tmp_path):
    nowhere = cgroup2.Hierarchy(tmp_path, OWN)  # the service's cgroup is not ours to write
    advice = cgroup2.delegation_advice(nowhere)
    assert "Delegate=memory pids cpu" in advice and "ProtectControlGroups=no" in advice
    assert "DelegateSubgroup=daemon" in advice


def test_standin_advice_when_controllers_missing(fake):
    (fake.own_dir / "cgroup.controllers").write_text("cpu\n")
    (fake.own_dir / "janus-git" / "cgroup.controllers").write_text("cpu\n")
    fake.runs_dir()
    assert "memory, pids not delegated" in fake.problem
    assert "Delegate=memory pids cpu" in cgroup2.delegation_advice(fake)
    assert cgroup2.probe(fake) == {"memory": False, "pids": False, "cpu": True, "tree": True}
