"""Run slots in two lanes (daemon/executor.py): people first, parallel runs, exclusive tools.

Real daemons (in this process, on a thread, so the tool's start is timed by the sandbox's own
on_start callback) on real state repositories; the tools are real sandboxed python3
processes that sleep."""
from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import configure, git, within
from daemonkit import daemon_json, propose, record, wait_for, wait_status

MANUAL = "maintenance"  # not on the auto whitelist: a person approves it


def sleeper(root: Path, **extra) -> dict:
    """The registry with `sleeper`: python3 that the policy lets run by itself."""
    tools = yaml.safe_load((root / "state/agent.yaml").read_text())["tools"]
    tools["sleeper"] = {"description": "sleeps (tests)", "risk": "low", "auto_exec": True,
                        "network": False, "runner": "external", "command": ["python3"],
                        **extra}
    return tools


def sleep_args(seconds: float) -> list[str]:
    return ["-c", f"import time; time.sleep({seconds}); print('slept')"]


def when(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=dt.timezone.utc).timestamp()


class LiveDaemon:
    """`Daemon.work()` on a thread of this process; STARTS[pid] is when the tool's process
    started (time.monotonic()).  On exit every run is cancelled and the daemon stops."""

    def __init__(self, root: Path, think: bool = False) -> None:
        from janus_git.daemon import Daemon
        self.starts: dict[str, float] = {}
        self.d = Daemon(root, think=think,
                        on_start=lambda pid, _os: self.starts.setdefault(pid, time.monotonic()))
        self.thread = threading.Thread(target=self.d.work, daemon=True)

    def __enter__(self) -> "LiveDaemon":
        self.thread.start()
        wait_for(lambda: self.d.state.activity not in ("starting",), what="daemon up")
        return self

    def __exit__(self, *exc) -> None:
        for run in list(self.d.state.runs.values()):
            run.cancel.set()
        self.d.request_stop()
        self.thread.join(60)
        assert not self.thread.is_alive()


def approve_all(root: Path, ids: list[str]) -> float:
    """A person approves IDS in one commit; returns when the commit returned."""
    paths = []
    for pid in ids:
        path = root / f"proposals/{pid[0:4]}/{pid[4:6]}/{pid}.yaml"
        data = yaml.safe_load(path.read_text())
        data["status"] = "approved"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        paths.append(str(path))
    git(root, "commit", "-qm", f"approve {len(ids)}", "--", *paths)
    return time.monotonic()


def offered(root: Path, pid: str) -> bool:
    return git(root, "rev-parse", "-q", "--verify", f"refs/heads/janus/proposal/{pid}",
               check=False).returncode == 0


def test_a_persons_approval_starts_at_once_beside_two_long_auto_runs(state_dir):
    configure(state_dir, tools=sleeper(state_dir),
              controls={"max_parallel_runs": 3, "reserved_for_people": 1, "tick_hz": 10,
                        "max_starts_per_second": 10,
                        "governor": {"target_cpu_percent": 100, "kp": 0.5, "ki": 0.1}})
    with LiveDaemon(state_dir) as live:
        autos = [propose(state_dir, tool="sleeper", args_json=json.dumps(sleep_args(20)))
                 for _ in range(3)]
        wait_for(lambda: sum(status == "running" for status in
                             (record(state_dir, a).get("status") for a in autos)) == 2,
                 what="two auto runs")
        # the daemon's own account of a step with both running: the third held in the queue
        wait_for(lambda: len(daemon_json(state_dir).get("running_ids", ())) == 2 and
                 daemon_json(state_dir).get("queued") == [autos[2]], what="the third held")
        # the third auto run waits: the last slot is the people's
        assert record(state_dir, autos[2])["status"] == "approved"
        # and the loop, holding it back, still ticks at its rate (no busy wait)
        assert live.d.controls.ticks.rate() < 20, live.d.controls.ticks.rate()
        person = propose(state_dir, "-c", "print('a person asked')", tool="python",
                         type_=MANUAL)
        wait_for(lambda: offered(state_dir, person), what="the approval branch")
        t0 = approve_all(state_dir, [person])
        wait_for(lambda: person in live.starts, timeout=10, what="the person's run")
        latency = live.starts[person] - t0
        running = {pid for pid, run in live.d.state.runs.items()}
        assert set(autos[:2]) <= running | {person}  # the auto runs are still going
        assert latency < within(0.3), latency
        wait_status(state_dir, person, "succeeded")
        assert record(state_dir, person)["execution"]["lane"] == "people"
        st = live.d.executor.status()
        assert st["slots"]["in_use"] == {"people": 0, "auto": 2}
        assert st["slots"]["queued"] == {"people": 0, "auto": 1}


def test_six_two_second_runs_in_three_slots_take_under_six_seconds(state_dir):
    configure(state_dir, controls={"max_parallel_runs": 3, "reserved_for_people": 1,
                                   "tick_hz": 10, "max_starts_per_second": 10})
    ids = [propose(state_dir, *sleep_args(2), tool="python", type_=MANUAL) for _ in range(6)]
    with LiveDaemon(state_dir):
        wait_for(lambda: all(offered(state_dir, pid) for pid in ids), what="six branches")
        t0 = approve_all(state_dir, ids)
        for pid in ids:
            wait_status(state_dir, pid, "succeeded", timeout=20)
        elapsed = time.monotonic() - t0
    assert elapsed < within(6.0), elapsed
    spans = [(when(e["started_at"]), when(e["ended_at"]))
             for e in (record(state_dir, pid)["execution"] for pid in ids)]
    at_once = [sum(1 for s, e in spans if s <= start < e) for start, _ in spans]
    assert max(at_once) == 3, spans  # three at once, never more (the slots, not a clock)
    assert max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans) == 3


def test_one_slot_is_one_run_at_a_time(state_dir):
    from daemonkit import burst
    configure(state_dir, controls={"max_parallel_runs": 1, "reserved_for_people": 1})
    ids = [propose(state_dir, "echo", str(i)) for i in range(3)]
    assert burst(state_dir) == 0  # reserved is capped at max - 1: auto work still runs
    spans = sorted((when(e["started_at"]), when(e["ended_at"]))
                   for e in (record(state_dir, pid)["execution"] for pid in ids))
    assert all(a[1] <= b[0] + 0.01 for a, b in zip(spans, spans[1:]))


def test_an_exclusive_run_has_the_host_to_itself_and_people_wait_only_for_it(state_dir):
    tools = sleeper(state_dir)
    tools["measurer"] = {**tools["sleeper"], "exclusive": True}
    configure(state_dir, tools=tools,
              controls={"max_parallel_runs": 3, "reserved_for_people": 1, "tick_hz": 10,
                        "max_starts_per_second": 10,
                        "governor": {"target_cpu_percent": 100, "kp": 0.5, "ki": 0.1}})
    args = json.dumps(sleep_args(1.5))
    with LiveDaemon(state_dir) as live:
        before = [propose(state_dir, tool="sleeper", args_json=args) for _ in range(2)]
        wait_for(lambda: all(b in live.starts for b in before), what="two auto runs")
        excl = propose(state_dir, tool="measurer", args_json=json.dumps(sleep_args(4)))
        after = [propose(state_dir, tool="sleeper", args_json=args) for _ in range(2)]
        wait_status(state_dir, excl, "running", timeout=20)
        person = propose(state_dir, *sleep_args(0.2), tool="python", type_=MANUAL)
        wait_for(lambda: offered(state_dir, person), what="the approval branch")
        assert live.d.executor.status()["exclusive"]["state"] == "running"
        approve_all(state_dir, [person])
        for pid in [*before, excl, *after, person]:
            wait_status(state_dir, pid, "succeeded", timeout=30)
    ex = {pid: record(state_dir, pid)["execution"] for pid in [*before, excl, *after, person]}
    span = {pid: (when(e["started_at"]), when(e["ended_at"])) for pid, e in ex.items()}
    s, e = span[excl]
    for pid in [*before, *after, person]:  # nothing beside it
        assert span[pid][1] <= s + 0.05 or span[pid][0] >= e - 0.05, pid
    assert all(span[b][1] <= s + 0.05 for b in before)  # it waited for the runs before it
    # the person's approval waited for that run only, and went before the auto work queued
    assert span[person][0] <= min(span[a][0] for a in after) + 0.05
    assert span[person][0] - e < within(1.0)
    load = ex[excl]["host_load"]
    assert ex[excl]["exclusive"] is True
    assert len(load["before"]["loadavg"]) == 3 and len(load["after"]["loadavg"]) == 3
    assert load["before"]["cpu_percent"] is not None


@pytest.mark.timing
def test_an_exclusive_llama_bench_measures_as_on_a_quiet_box(state_dir):
    """Two CPU-spinning automatic runs are going and two more are queued behind it: the
    exclusive llama_bench (SmolLM2) waits for the two, runs alone, and reports tokens/s within
    15 % of the same settings with nothing else running (measured before and after).  A
    figure, so `timing` (run it on a quiet host: `pytest -m timing`); that the run waits and
    runs alone is asserted by the test above in every run."""
    tools = sleeper(state_dir)
    configure(state_dir, tools=tools,
              controls={"max_parallel_runs": 3, "reserved_for_people": 1, "tick_hz": 10,
                        "max_starts_per_second": 10,
                        "governor": {"target_cpu_percent": 100, "kp": 0.5, "ki": 0.1}})
    spin = json.dumps(["-c", "import time\nend = time.time() + 4\nwhile time.time() < end: "
                             "pass\n"])
    bench = json.dumps({"threads": 2, "batch": 64, "n_ctx": 256, "n_tokens": 96})

    def llama_bench(live: LiveDaemon, tag: int) -> tuple[str, float]:
        pid = propose(state_dir, tool="llama_bench", type_="optimization_experiment",
                      mission="OPT-001-BETA", args_json=bench.replace("96", str(96 + tag)))
        wait_status(state_dir, pid, "succeeded", timeout=60)
        out = git(state_dir, "show", f"HEAD:notes/optimization/{pid}.json").stdout
        return pid, json.loads(out)["gen_tokens_per_s"]

    with LiveDaemon(state_dir) as live:
        quiet = [llama_bench(live, 0)[1]]
        spinners = [propose(state_dir, tool="sleeper", args_json=spin.replace("4", f"4 + {i}"
                                                                              "* 0"))
                    for i in range(2)]
        wait_for(lambda: all(s in live.starts for s in spinners), what="two spinning runs")
        box: dict = {}
        waiter = threading.Thread(target=lambda: box.update(r=llama_bench(live, 1)))
        waiter.start()
        wait_for(lambda: live.d.executor.exclusive_waiting or any(
            r.exclusive for r in live.d.state.runs.values()), what="the exclusive run")
        assert live.d.executor.holds_thinking()  # no thinking cycle starts meanwhile
        after = [propose(state_dir, tool="sleeper", args_json=spin.replace("4", f"4 + {i}"
                                                                           "* 1"))
                 for i in range(2)]
        waiter.join(180)
        if "r" not in box:
            d = live.d
            raise AssertionError((dict(d.state.queue), dict(d.state.runs), d.executor.status(),
                                  d.executor.exclusive_waiting, d.state.results))
        excl, loaded = box["r"]
        for pid in [*spinners, *after]:
            wait_status(state_dir, pid, "succeeded", timeout=60)
        quiet.append(llama_bench(live, 2)[1])
    ex = record(state_dir, excl)["execution"]
    s, e = when(ex["started_at"]), when(ex["ended_at"])
    for pid in [*spinners, *after]:
        x = record(state_dir, pid)["execution"]
        assert when(x["ended_at"]) <= s + 0.05 or when(x["started_at"]) >= e - 0.05, pid
    ref = sum(quiet) / len(quiet)
    print(f"exclusive llama_bench: {loaded:.1f} tok/s beside queued work; quiet box "
          f"{quiet[0]:.1f} before, {quiet[1]:.1f} after ({(loaded - ref) / ref:+.1%})")
    assert abs(loaded - ref) / ref < 0.15, (loaded, quiet)
