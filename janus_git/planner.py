"""The thinking cycle: the active mission -> a constrained prompt -> schema-checked proposals.

The prompt is built in prompt.py.  The model's output is held to a JSON Schema (the grammar
makes it parse; the enums keep it to registered tools, types and, where the state allows, the
arguments still useful).  Every prompt and reply is committed as a prompt log beside the
proposals it produced.  The planner only ever files `proposed`: the policy and people decide.
"""
from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import jsonschema

from . import lifecycle, missions
from .backend import as_model
from .config import Config
from .errors import JanusError
from .gitrepo import GitRepo, format_message
from .llm import check_schema
from .novelty import NoveltyIndex
from .prompt import MAX_PER_CYCLE, NEXT_CHUNKS, Surface, build_messages, read_proposal
from .proposal import Proposal, new_id, utcnow
from .tools import runner_name

log = logging.getLogger(__name__)

CONSTITUTION_PATH = "state/constitution.md"
PROMPT_LOG_DIR = "logs/prompts"
TRAILER_CYCLE = "Janus-Cycle"
CHUNK_TOOLS = ("process_chunk", "file_chunker")
# which proposal types a tool's runner serves (the registry names runners, types are policy's)
RUNNER_TYPES = {"process_chunk": ["process_chunk"], "node_generator": ["generate_new_nodes"],
                "llama_bench": ["optimization_experiment"],
                "file_chunker": ["analysis"], "shell": ["analysis"]}
BENCH_CHOICES = {"threads": [1, 2, 4, 8], "batch": [32, 64, 128, 256, 512],
                 "n_ctx": [256, 512, 1024, 2048], "n_tokens": [32, 64, 128]}


class CycleSkipped(JanusError):
    """Nothing the planner may propose (no tool or type on offer): the cycle is skipped
    before the model is asked, and the message says why."""


def _s(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "string", "minLength": lo, "maxLength": hi}


def _str_list(items: int, length: int) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "maxItems": items, "items": _s(1, length)}


def args_schema(runner: str, surface: Surface) -> dict[str, Any]:
    if runner in CHUNK_TOOLS:
        docs = [d for d in surface.mission.documents if surface.chunks_left(d)]
        if not docs:
            return {"type": "object", "properties": {"path": _s(1, 120), "chunk": {
                "enum": list(range(1, 21))}}, "required": ["path", "chunk"],
                "additionalProperties": False}
        variants = [{"type": "object", "additionalProperties": False,
                     "required": ["path", "chunk"],
                     "properties": {"path": {"const": d}, "chunk": {
                         "enum": surface.chunks_left(d)[:NEXT_CHUNKS]}}}
                    for d in docs]
        return variants[0] if len(variants) == 1 else {"anyOf": variants}
    if runner == "node_generator":
        return {"type": "object", "additionalProperties": False,
                "required": ["title", "claim", "question", "related"],
                "properties": {"title": _s(3, 60), "claim": _s(10, 160),
                               "question": _s(10, 120), "related": {
                                   "type": "array", "maxItems": 3, "items": _s(3, 60)}}}
    if runner == "llama_bench":
        return {"type": "object", "additionalProperties": False,
                "required": list(BENCH_CHOICES),
                "properties": {k: {"enum": v} for k, v in BENCH_CHOICES.items()}}
    return _str_list(4, 60)  # argv-style: shell and the external (manual) tools


def tool_types(runner: str) -> list[str]:
    return RUNNER_TYPES.get(runner, ["analysis"])


def offered_tools(surface: Surface) -> list[str]:
    """The mission's tools when it names any (registered ones only), else the registry."""
    registry = surface.config.tools
    named = [t for t in surface.mission.tools if t in registry]
    return named or sorted(registry)


def why_nothing_to_offer(surface: Surface) -> str:
    """Why no proposal could match the output schema ("" when one can): an empty `anyOf`
    or `enum` is an empty grammar rule, on which llama.cpp 0.3.36 segfaults."""
    if not offered_tools(surface):  # the mission's own tools, else the whole registry
        return ("the tool registry (tools: in state/agent.yaml) is empty: there is no tool "
                "to propose; an approver can register one")
    return ""


def output_schema(surface: Surface, max_items: int) -> dict[str, Any]:
    """The answer's schema; every `enum` and `anyOf` in it has at least one member (the
    caller checks `why_nothing_to_offer` first, and `llm.check_schema` refuses the rest)."""
    variants = []
    for name in offered_tools(surface):
        spec = surface.config.tools[name]
        runner = runner_name(spec, name)
        variants.append({
            "type": "object", "additionalProperties": False,
            "required": ["tool", "type", "args", "rationale"],
            "properties": {"tool": {"const": name},
                           "type": {"enum": tool_types(runner)},
                           "args": args_schema(runner, surface),
                           "rationale": _s(8, 100)}})
    return {"type": "object", "additionalProperties": False, "required": ["proposals"],
            "properties": {"proposals": {"type": "array", "minItems": 1,
                                         "maxItems": max_items, "items": {"anyOf": variants}}}}


# -- the cycle -------------------------------------------------------------------------------
def index_rows(index: NoveltyIndex) -> list[dict[str, Any]]:
    from .novelty import CREATED, ID, MISSION, STATUS, TOOL, TYPE
    return [{"id": r[ID], "path": path, "status": r[STATUS], "mission": r[MISSION],
             "tool": r[TOOL], "type": r[TYPE], "created_at": r[CREATED]}
            for path, r in index.rows.items()]


def _taken_args(repo: GitRepo, mission: missions.Mission, rows: list[dict[str, Any]]) -> list:
    """Args of the mission's counting proposals that are done or under way: those chunks
    leave the schema's enum, so the model cannot ask for them again."""
    live = missions.IN_FLIGHT | {"succeeded"}
    counting = set(mission.proposal_types) or {"process_chunk"}
    out = []
    for r in rows:
        if r.get("mission") == mission.id and str(r.get("status")) in live \
                and r.get("type") in counting:
            p = read_proposal(repo, r["id"])
            if p:
                out.append(p.args)
    return out


def salvage(text: str) -> dict[str, Any]:
    """The complete proposals of an answer cut off at max_tokens: the grammar guarantees a
    valid prefix, so every item before the cut decodes on its own."""
    decoder, items = json.JSONDecoder(), []
    start = text.find("[", text.find('"proposals"'))
    pos = start + 1 if start >= 0 else len(text)
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t\n\r,":
            pos += 1
        try:
            item, pos = decoder.raw_decode(text, pos)
        except ValueError:
            break
        items.append(item)
    return {"proposals": items}


def validate_items(data: Any, schema: dict[str, Any]) -> tuple[list[dict], list[str]]:
    items, problems = [], []
    raw = data.get("proposals", []) if isinstance(data, dict) else []
    # our own schema: no need to check it (jsonschema.validate would, at ~150 ms a call)
    validator = jsonschema.Draft202012Validator(schema["properties"]["proposals"]["items"])
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        error = jsonschema.exceptions.best_match(validator.iter_errors(item))
        if error is not None:
            problems.append(f"proposal {i + 1} refused: {error.message[:200]}")
            continue
        items.append(item)
    return items, problems


def think(repo: GitRepo, config: Config, *, llm: Any = None,
          proposals: list[Any] | None = None, seed: int | None = None,
          commit_lock: Any = None, in_force: dict[str, bytes] | None = None) -> list[Proposal]:
    """One thinking cycle: advance the missions, then file up to MAX_PER_CYCLE proposals for
    the active one.  PROPOSALS: the derived list of proposals (rows or Proposal objects); by
    default read from the novelty index.  LLM: a Model, a ModelContext or None (load).
    COMMIT_LOCK: held only while committing, not while the model thinks (a minute on a
    small CPU).  IN_FORCE: the guarded files in force (trust.py), from which the missions
    and the constitution are read, never from a HEAD that may hold a refused change."""
    lock = commit_lock if commit_lock is not None else contextlib.nullcontext()
    index = NoveltyIndex(repo).sync()
    rows = proposals if proposals is not None else index_rows(index)
    rows = [r if isinstance(r, dict) else {**r.to_dict(), "status": str(r.status)}
            for r in rows]
    with lock:
        missions.advance(repo, config, rows, texts=in_force)
    mission = missions.active_mission(missions.load_missions(repo, on_error=_warn,
                                                             texts=in_force))
    if mission is None:
        return []
    pr = missions.progress(mission, rows)
    if pr.complete or pr.room <= 0:
        return []
    surface = Surface(config, mission, pr, rows, repo.root,
                      _taken_args(repo, mission, rows) if mission.documents else [])
    why = why_nothing_to_offer(surface)
    if why:
        raise CycleSkipped(f"thinking cycle skipped for {mission.id}: {why}")
    model = as_model(llm, config, repo.root)
    constitution = ((repo.read_blob("HEAD", CONSTITUTION_PATH) if in_force is None
                     else in_force.get(CONSTITUTION_PATH)) or b"").decode()
    messages, trim = build_messages(repo, surface, model.count_tokens, constitution)
    schema = output_schema(surface, min(MAX_PER_CYCLE, pr.room))
    check_schema(schema)  # before the model: a bug here is an error, not a native crash
    mc = config["model"]
    reply = model.chat(messages, schema=schema, max_tokens=mc["max_tokens"],
                       temperature=mc["temperature"],
                       seed=seed if seed is not None else mc.get("seed"))
    data = reply.data if reply.data is not None else salvage(reply.text)
    items, problems = validate_items(data, schema)
    if reply.data is None:
        problems.insert(0, f"{reply.error}; {len(items)} complete proposal(s) salvaged")
    with lock:  # what was filed while the model thought counts for novelty too
        return _file(repo, config, NoveltyIndex(repo).sync(), mission, messages, schema,
                     reply, items, problems, trim, getattr(model, "name", type(model).__name__))


def _file(repo, config, index, mission, messages, schema, reply, items, problems,
          trim, model_name) -> list[Proposal]:
    cycle = new_id()
    log_path = f"{PROMPT_LOG_DIR}/{cycle[0:4]}-{cycle[4:6]}-{cycle[6:8]}/{cycle}.json"
    me = config.identity
    filed: list[Proposal] = []
    seen: set[str] = set()
    window = config["hygiene"]["novelty_window_days"]
    for item in items:
        p = lifecycle.new_proposal(
            mission=mission.id, type_=item["type"], tool=item["tool"], args=item["args"],
            rationale=f"{item['rationale'].strip()} [prompt log: {log_path}]",
            created_by=f"{me.name} <{me.email}>")
        p.risk = config.tools[p.tool]["risk"]
        original = index.original_of(p, window)
        key = json.dumps([p.type, p.tool, p.args], sort_keys=True)
        if original or key in seen:
            why = f"{original[0]} ({original[1]})" if original else "an earlier item"
            problems.append(f"not filed ({p.tool} {json.dumps(p.args)[:80]}): duplicate of "
                            f"{why}")
            continue
        seen.add(key)
        filed.append(p)
    record = {"cycle": cycle, "at": utcnow(), "mission": mission.id,
              "model": model_name, "messages": messages, "schema": schema,
              "reply": reply.log(), "prompt": trim, "filed": [p.id for p in filed],
              "problems": problems}
    blob = (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode()
    reason = f"planner cycle {cycle} for {mission.id}; prompt log {log_path}"
    if not filed:
        msg = format_message(f"janus: thinking cycle {cycle}: no new proposals", reason,
                             {TRAILER_CYCLE: cycle})
        repo.commit_files({log_path: blob}, msg, me)
    for i, p in enumerate(filed):
        lifecycle.create(repo, p, me, reason=reason,
                         extra_files={log_path: blob} if i == 0 else None)
    log.info("cycle %s: %d proposals filed, %d problems", cycle, len(filed), len(problems))
    return filed


def _warn(e: Exception) -> None:
    log.error("mission skipped: %s", e)
