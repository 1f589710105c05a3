"""The model in its own process: a native crash, a hang or running out of memory in llama.cpp
ends the child, never the daemon (an empty grammar rule once segfaulted the sampler and took
the daemon down with it).

`ModelProcess` is what the daemon holds: the interface of `llm.Model` (name, n_ctx,
count_tokens, chat -> Reply), answered by `python -m janus_git.modelproc` over a pipe, one
JSON line per request and per answer.  The child stays alive between calls, so llama.cpp's KV
cache still serves the prompt prefix that consecutive cycles share; after a failure it is
started again on the next call.

Limits of the child: RLIMIT_CORE 0 (a crash leaves no core of a multi-GB model) and RLIMIT_AS
sized from the model file and n_ctx (`address_space_limit`).  Every call has a deadline
(`chat_deadline`): past it the child is killed with SIGKILL.  The child ends itself when the
daemon goes (its stdin closes, or its parent changes while it computes).
"""
from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from .errors import JanusError
from .faults import MODEL_FAULT_ENV as FAULT_ENV  # one home for the test hooks
from .llm import Reply, check_schema, find_model

# Tests only: make the child's chat crash (segv), hang, or run out of memory (oom).  Read from
# the daemon's own environment, never from anything a commit can bring.
FAULTS = ("segv", "hang", "oom")
LOAD_SECONDS = 120.0       # start, import llama_cpp and load the model
GRACE_SECONDS = 60.0       # the fixed part of every call's deadline
# A deadline generous enough for a loaded small CPU: SmolLM2 measured 5-8 tok/s generating and
# 10-80 tok/s evaluating prompts on the shared 2-CPU machine; 2 tok/s over both, with a prompt
# token counted as 3 characters (SmolLM2 averages ~4), leaves a margin of 4-6x.
MIN_TOKENS_PER_S = 2.0
CHARS_PER_TOKEN = 3.0
AS_BASE = 2 << 30          # Python, llama_cpp's libraries, thread stacks and malloc arenas
AS_PER_CTX_TOKEN = 256 << 10   # KV cache and compute buffers (~23 KB a token for SmolLM2)

_live: "weakref.WeakSet[ModelProcess]" = weakref.WeakSet()


class ModelFailed(JanusError):
    """The model's process crashed, hung past its deadline or ran out of memory; KIND says
    which ("crashed", "hung", "oom", "start")."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def address_space_limit(path: Path, n_ctx: int) -> int:
    """RLIMIT_AS for a child that maps PATH (mmap counts in full) with an N_CTX context."""
    return AS_BASE + 2 * Path(path).stat().st_size + n_ctx * AS_PER_CTX_TOKEN


def chat_deadline(messages: list[dict[str, str]], max_tokens: int, *,
                  grace: float = GRACE_SECONDS, rate: float = MIN_TOKENS_PER_S) -> float:
    """Seconds a chat may take: GRACE plus the prompt and MAX_TOKENS at RATE tokens/s."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return grace + (chars / CHARS_PER_TOKEN + max_tokens) / rate


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class ModelProcess:
    """llm.Model's interface, answered by a child process; calls are serialised."""

    def __init__(self, path: Path, *, n_ctx: int = 2048, threads: int | None = None,
                 fault: str | None = None, grace: float | None = None,
                 rate: float | None = None, load_seconds: float | None = None,
                 deadline_s: float | None = None, as_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.asked_ctx = n_ctx
        self.threads = threads
        self.fault = fault  # None: the daemon's environment says (read at each start)
        self.grace = grace if grace is not None else GRACE_SECONDS
        self.rate = rate if rate is not None else MIN_TOKENS_PER_S
        self.load_seconds = load_seconds if load_seconds is not None else LOAD_SECONDS
        self.deadline_s = deadline_s  # a fixed deadline for every call, instead of the derived
        self.as_bytes = as_bytes if as_bytes is not None else address_space_limit(path, n_ctx)
        self.starts = 0            # children started so far
        self.last_kill_late = 0.0  # how long after its deadline the last hung child was gone
        self._proc: subprocess.Popen | None = None
        self._info: dict[str, Any] = {}
        self._buf = b""
        self._lock = threading.Lock()
        _live.add(self)

    @classmethod
    def from_config(cls, model_cfg: dict[str, Any], root: Path | None = None) -> "ModelProcess":
        return cls(find_model(model_cfg, root), n_ctx=model_cfg.get("n_ctx", 2048),
                   threads=model_cfg.get("threads"), deadline_s=model_cfg.get("deadline_s"))

    # -- llm.Model's interface ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def n_ctx(self) -> int:
        with self._lock:
            self._ensure()
            return int(self._info["n_ctx"])

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def count_tokens(self, text: str) -> int:
        return int(self._call({"op": "count", "text": text}, self.deadline_s or self.grace)["n"])

    def chat(self, messages: list[dict[str, str]], *, schema: dict[str, Any] | None = None,
             max_tokens: int = 256, temperature: float = 0.7, seed: int | None = None) -> Reply:
        if schema is not None:
            check_schema(schema)  # refused here, without a round trip (the child checks too)
        seconds = self.deadline_s or chat_deadline(messages, max_tokens, grace=self.grace,
                                                   rate=self.rate)
        out = self._call({"op": "chat", "messages": messages, "schema": schema,
                          "max_tokens": max_tokens, "temperature": temperature, "seed": seed},
                         seconds)
        return Reply(**out["reply"])

    def close(self) -> None:
        """End the child: EOF on its stdin first (it exits), SIGKILL if it does not.  A call
        in flight (a thread waiting on a hung child) does not make close wait for it."""
        if self._lock.acquire(timeout=1.0):
            try:
                self._stop(polite=True)
            finally:
                self._lock.release()
        elif self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)  # the caller's wait then ends
            except ProcessLookupError:
                pass

    # -- the pipe ----------------------------------------------------------------------------
    def _call(self, request: dict[str, Any], seconds: float) -> dict[str, Any]:
        with self._lock:
            self._ensure()
            deadline = time.monotonic() + seconds
            self._send(request, deadline, seconds)
            answer = self._recv(deadline, seconds)
        if not answer.get("ok"):
            if answer.get("oom"):
                raise ModelFailed(f"the model's process ran out of memory (limit "
                                  f"{self.as_bytes >> 20} MB): {answer.get('error')}", "oom")
            raise JanusError(answer.get("error") or "the model's process failed")
        return answer

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._stop(polite=False)
        fault = self.fault if self.fault is not None else os.environ.get(FAULT_ENV) or None
        opts = {"path": str(self.path), "n_ctx": self.asked_ctx, "threads": self.threads,
                "as_bytes": self.as_bytes, "fault": fault}
        # its own session: a Ctrl-C meant for the daemon is not the model's; no inherited fds
        # (the daemon's lock must not outlive the daemon in a child)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "janus_git.modelproc", json.dumps(opts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
            close_fds=True)
        self.starts += 1
        self._buf = b""
        info = self._recv(time.monotonic() + self.load_seconds, self.load_seconds)
        if not info.get("ok"):
            self._stop(polite=False)
            raise ModelFailed(f"the model's process could not load {self.path}: "
                              f"{info.get('error')}", "start")
        self._info = info

    def _send(self, request: dict[str, Any], deadline: float, seconds: float) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        data = (json.dumps(request, ensure_ascii=False) + "\n").encode()
        fd = self._proc.stdin.fileno()
        os.set_blocking(fd, False)  # a hung child stops reading: never block on a full pipe
        while data:
            if not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
                self._hung(deadline, seconds)
            try:
                data = data[os.write(fd, data):]
            except BrokenPipeError:
                self._died()

    def _recv(self, deadline: float, seconds: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                self._hung(deadline, seconds)
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self._died()
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _hung(self, deadline: float, seconds: float) -> None:
        self._stop(polite=False)
        self.last_kill_late = time.monotonic() - deadline
        raise ModelFailed(f"the model's process did not answer within its deadline of "
                          f"{seconds:.1f} s; killed", "hung")

    def _died(self) -> None:
        assert self._proc is not None
        try:
            code = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        self._stop(polite=False)
        if code is not None and code < 0:
            why = f"died with {_signal_name(code)}"
            if code == -signal.SIGKILL:
                why += " (the kernel's OOM killer, or someone else)"
            elif code == -signal.SIGABRT:
                why += (f" (llama.cpp aborts when an allocation fails: its memory limit is "
                        f"{self.as_bytes >> 20} MB)")
            raise ModelFailed(f"the model's process {why}; it is started again on the next "
                              "call", "crashed")
        raise ModelFailed(f"the model's process exited ({code}) in the middle of a call",
                          "crashed")

    def _stop(self, polite: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for f in (proc.stdin, proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        try:
            proc.wait(2 if polite else 0.0)
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its session: the child and its threads
            except ProcessLookupError:
                pass
            proc.wait()


@atexit.register
def _close_all() -> None:
    for mp in list(_live):
        mp.close()


# -- the child ---------------------------------------------------------------------------------
def _limit(as_bytes: int) -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if as_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))


def _watch_parent() -> None:
    """End when the daemon is gone, even in the middle of a long generation (llama.cpp's
    calls release the GIL, so this thread runs)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(70)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def _fault(kind: str | None) -> None:
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "hang":
        while True:
            time.sleep(3600)
    elif kind == "oom":
        import mmap
        held = []
        try:  # reserve address space until RLIMIT_AS says no (no page is touched)
            while True:
                held.append(mmap.mmap(-1, 64 << 20))
        except OSError:
            pass
        sys.stderr.write(f"modelproc: out of address space after {len(held) * 64} MB\n")
        os.abort()  # as llama.cpp does when an allocation fails (GGML_ABORT)


def _answer(model: Any, req: dict[str, Any], fault: str | None) -> dict[str, Any]:
    from dataclasses import asdict
    if req["op"] == "count":
        return {"ok": True, "n": model.count_tokens(req["text"])}
    _fault(fault)
    reply = model.chat(req["messages"], schema=req["schema"], max_tokens=req["max_tokens"],
                       temperature=req["temperature"], seed=req["seed"])
    return {"ok": True, "reply": asdict(reply)}


def serve(opts: dict[str, Any]) -> int:
    _limit(int(opts.get("as_bytes") or 0))
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what llama.cpp prints goes to the daemon's log, not into the pipe
    import faulthandler
    faulthandler.enable()  # a native crash leaves its Python stack in the daemon's log
    _watch_parent()

    def send(obj: dict[str, Any]) -> None:
        out.write((json.dumps(obj, ensure_ascii=False) + "\n").encode())
        out.flush()

    from .llm import Model
    try:
        model = Model(Path(opts["path"]), n_ctx=opts["n_ctx"], threads=opts["threads"])
    except (JanusError, MemoryError, OSError) as e:
        send({"ok": False, "error": str(e) or type(e).__name__})
        return 1
    send({"ok": True, "name": model.name, "n_ctx": model.n_ctx, "pid": os.getpid()})
    for line in sys.stdin.buffer:
        try:
            send(_answer(model, json.loads(line), opts.get("fault")))
        except MemoryError as e:  # the heap may be in pieces: answer, then end
            send({"ok": False, "oom": True, "error": f"MemoryError {e}"})
            return 1
        except BrokenPipeError:
            return 0  # the daemon is gone
        except Exception as e:  # a refused grammar, a prompt too long: the caller's error
            send({"ok": False, "error": str(e) or type(e).__name__})
    return 0


if __name__ == "__main__":
    sys.exit(serve(json.loads(sys.argv[1])))
