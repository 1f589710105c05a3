"""The `llama_bench` runner and tool (proposal type `optimization_experiment`): llama.cpp
throughput at given settings, measured in a sandboxed child so the run's CPU, memory and
time are limited and recorded like any other tool's.

Args: ``{"threads": 1-64, "batch": 8-2048, "n_ctx": 128-8192, "n_tokens": 8-512}`` (n_tokens
optional, default 64).  The child (``python -m janus_git.tools.llama_bench``) loads the model
with those settings, evaluates a prompt of n_ctx/4 tokens and generates n_tokens, and prints
one JSON line: prompt and generation tokens/s.  The result lands in
notes/optimization/<proposal id>.json (committed with the result).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import RunResult, ToolRefused, from_sandbox

RANGES = {"threads": (1, 64), "batch": (8, 2048), "n_ctx": (128, 8192), "n_tokens": (8, 512)}
DEFAULT_TOKENS = 64
RESULTS_DIR = "notes/optimization"
SCRATCH_PREFIX = "scratch:"


def settings(args: Any) -> dict[str, int]:
    if not isinstance(args, dict):
        raise ToolRefused("llama_bench: args must be {threads, batch, n_ctx, n_tokens}")
    unknown = sorted(set(args) - set(RANGES))
    if unknown:
        raise ToolRefused(f"llama_bench: unknown argument {unknown[0]!r} "
                          f"(known: {', '.join(RANGES)})")
    out = {}
    for key, (lo, hi) in RANGES.items():
        value = args.get(key, DEFAULT_TOKENS if key == "n_tokens" else None)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ToolRefused(f"llama_bench: {key} must be a whole number from {lo} to {hi}, "
                              f"got {value!r}")
        out[key] = value
    return out


def check(proposal: Any, config: Any, root: Path) -> None:
    settings(proposal.args)


def execute(proposal: Any, config: Any, root: Path, *, cancel=None, on_start=None,
            context=None, isolation: str | None = None, **_: Any) -> RunResult:
    from .. import sandbox
    from ..llm import find_model

    s = settings(proposal.args)
    model = find_model(config["model"], Path(root))
    with tempfile.TemporaryDirectory(prefix="janus-bench-") as scratch:
        shown = _reachable(model, Path(scratch))
        argv = [sys.executable, "-m", "janus_git.tools.llama_bench", shown,
                json.dumps(s, separators=(",", ":"))]
        res = sandbox.run(argv, dict(config.tool_limits(proposal.tool)), Path(root),
                          cancel=cancel, on_start=on_start, isolation=isolation,
                          writable_dir=Path(scratch),
                          ro_binds=sorted({*sandbox.python_binds(), str(model.parent)}))
    if res.exit_code in (126, 127) and b"failed to execute" in res.output:
        # The sandbox's uid cannot reach this interpreter (a Python under /root, say): run
        # the benchmark here instead; it executes no code from the proposal, only integers.
        return _in_process(proposal, config, model, s, cancel, on_start,
                           f"sandbox could not start the interpreter: "
                           f"{res.output.decode(errors='replace').strip()[:200]}")
    measured = _last_json(res.output)
    files = _record(proposal, model, s, measured, res.isolation, res.resources, res.ended_at) \
        if res.ok and measured else {}
    result = from_sandbox(res, files)
    if res.ok and not measured:
        result.status, result.error = "failed", "the benchmark printed no result line"
    result.extra = {"tokens_per_second": measured.get("gen_tokens_per_s") if measured else None}
    return result


def _reachable(model: Path, scratch: Path) -> str:
    """The model's path as the child will see it.  The sandbox mounts its scratch dir over
    /tmp, hiding a model that lives there: such a model is hard-linked into the scratch dir
    (no copy; it counts towards the run's disk writes, so this is for small test models)."""
    if not str(model.resolve()).startswith("/tmp/"):
        return str(model)
    try:
        os.link(model, scratch / model.name)
    except OSError:
        shutil.copyfile(model, scratch / model.name)
    return f"{SCRATCH_PREFIX}{model.name}"


def _record(proposal: Any, model: Path, s: dict, measured: dict, isolation: str,
            resources: dict, at: str) -> dict[str, bytes | None]:
    record = {"proposal": proposal.id, "mission": proposal.mission, "model": model.name,
              "settings": s, **measured, "isolation": isolation, "resources": resources,
              "measured_at": at}
    return {f"{RESULTS_DIR}/{proposal.id}.json":
            (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()}


def _in_process(proposal: Any, config: Any, model: Path, s: dict, cancel, on_start,
                why: str) -> RunResult:
    from ..util import utcnow
    from .node_generator import in_process_result

    started, t0, c0 = utcnow(), time.monotonic(), time.thread_time()
    if on_start is not None:
        on_start(os.getpid())
    measured = bench(str(model), s, cancel=cancel)
    out = (f"[janus-git: in-process run; {why}]\n" + json.dumps(measured, sort_keys=True)
           + "\n").encode()
    result = in_process_result(proposal, config, output=out, started=started, t0=t0, c0=c0,
                               files={}, argv=["llama_bench", *map(str, s.values())],
                               error="cancelled" if measured.get("cancelled") else "",
                               extra={"tokens_per_second": measured.get("gen_tokens_per_s"),
                                      "fallback": why})
    if not result.error:
        result.files = _record(proposal, model, s, measured, "in-process", result.resources,
                               result.ended_at)
    else:
        result.limit_hit = "cancelled"
    return result


def _last_json(output: bytes) -> dict[str, Any] | None:
    for line in reversed(output.decode("utf-8", "replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def bench(model_path: str, s: dict[str, int], cancel: Any = None) -> dict[str, Any]:
    """Runs in the child: load with S, time prompt evaluation and generation."""
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=s["n_ctx"], n_batch=s["batch"],
                          n_threads=s["threads"], verbose=False, seed=0)
    load = time.perf_counter() - t0
    words = ("the quick brown fox jumps over the lazy dog " * 4096).encode()
    prompt = llm.tokenize(words, add_bos=True)[: max(8, s["n_ctx"] // 4)]
    n_gen = min(s["n_tokens"], s["n_ctx"] - len(prompt) - 1)
    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
    t1 = time.perf_counter()
    cancelled = False
    for i, _tok in enumerate(llm.generate(prompt, temp=0.0)):
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        if i + 1 >= n_gen:
            break
    wall = time.perf_counter() - t1
    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
    return {"load_s": round(load, 3), "prompt_tokens": perf.n_p_eval,
            "prompt_tokens_per_s": round(perf.n_p_eval / max(1e-9, perf.t_p_eval_ms / 1000), 1),
            "gen_tokens": perf.n_eval,
            "gen_tokens_per_s": round(perf.n_eval / max(1e-9, perf.t_eval_ms / 1000), 1),
            "wall_s": round(wall, 3), **({"cancelled": True} if cancelled else {})}


if __name__ == "__main__":
    given = sys.argv[1]
    if given.startswith(SCRATCH_PREFIX):  # $TMPDIR is the scratch dir in either sandbox
        given = os.path.join(os.environ.get("TMPDIR", "/tmp"), given[len(SCRATCH_PREFIX):])
    result = bench(given, json.loads(sys.argv[2]))
    print(json.dumps(result, sort_keys=True))
