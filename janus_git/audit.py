"""logs/tool_use.jsonl: one JSON line per execution, and the JSON Schema it follows."""
from __future__ import annotations

import json
from typing import Any

from .proposal import RUN_OUTCOMES

LIMIT_NAMES = ["memory", "cpu", "disk", "timeout", "pids", "output", "cancelled"]
_num = {"type": "number", "minimum": 0}

TOOL_USE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://janus-git.dev/schema/tool_use.json",
    "title": "janus-git logs/tool_use.jsonl line",
    "description": "One execution of a tool: what ran, where, under which limits, what it used.",
    "type": "object",
    "additionalProperties": False,
    "required": ["v", "proposal", "tool", "type", "argv", "isolation", "network", "limits",
                 "resources", "status", "exit_code", "limit_hit", "error", "output_bytes",
                 "files", "started_at", "ended_at"],
    "properties": {
        "v": {"const": 1},
        "proposal": {"type": "string", "minLength": 1},
        "mission": {"type": "string"},
        "digest": {"type": "string"},
        "tool": {"type": "string", "minLength": 1},
        "type": {"type": "string"},
        "argv": {"type": "array", "items": {"type": "string"}},
        "isolation": {"enum": ["bwrap", "reduced", "in-process", "none"],
                      "description": "none: refused before anything ran"},
        "network": {"type": "boolean"},
        "confinement": {
            "type": "object", "additionalProperties": False,
            "description": "what held the run besides its isolation level",
            "properties": {
                "cgroups": {"type": "array",
                            "items": {"enum": ["memory", "pids", "cpu", "cpuacct"]}},
                "landlock": {"type": "boolean"},
                "warm_start": {"type": "boolean",
                               "description": "started from a pre-started waiter"}}},
        "limits": {"type": "object", "additionalProperties": {"type": "number"}, "properties": {
            "memory_mb": _num, "disk_write_mb": _num, "timeout_s": _num, "cpu_percent": _num,
            "cpu_s": _num, "pids": _num, "output_kb": _num}},
        "resources": {"type": "object", "additionalProperties": {"type": "number"}, "properties": {
            "cpu_seconds": _num,
            "cpu_peak_percent": {**_num, "description": "share of the whole machine, 0-100"},
            "peak_rss_mb": {**_num, "description": "the run's own memory at its peak: the "
                            "memory cgroup's (less set-up and page cache), else the sampled "
                            "VmHWM sum; see measured"},
            "bytes_written": _num, "wall_seconds": _num, "peak_processes": _num,
            "measured": {"type": "object", "additionalProperties": {"type": "string"},
                         "description": "how each figure was measured"}}},
        "status": {"enum": sorted(s.value for s in RUN_OUTCOMES)},
        "exit_code": {"type": ["integer", "null"]},
        "limit_hit": {"enum": [*LIMIT_NAMES, None]},
        "error": {"type": "string"},
        "output_bytes": {"type": "integer", "minimum": 0},
        "files": {"type": "array", "items": {"type": "string"}},
        "extra": {"type": "object"},
        "started_at": {"type": "string", "minLength": 1},
        "ended_at": {"type": "string", "minLength": 1},
    },
}


def tool_use_schema() -> dict[str, Any]:
    return json.loads(json.dumps(TOOL_USE_SCHEMA))  # a copy callers may change


def tool_use_line(proposal: Any, result: Any) -> dict[str, Any]:
    line = {
        "v": 1, "proposal": proposal.id, "mission": proposal.mission, "digest": proposal.digest,
        "tool": proposal.tool, "type": proposal.type, "argv": [str(a) for a in result.argv],
        "isolation": result.isolation, "network": bool(getattr(result, "network", False)),
        "limits": {k: v for k, v in result.limits.items() if isinstance(v, (int, float))},
        "resources": {k: v for k, v in result.resources.items()
                      if isinstance(v, (int, float)) or k == "measured"},
        "status": result.status, "exit_code": result.exit_code, "limit_hit": result.limit_hit,
        "error": result.error.splitlines()[0] if result.error else "",
        "output_bytes": int(getattr(result, "output_bytes", 0) or len(result.output)),
        "files": sorted(result.files), "started_at": result.started_at,
        "ended_at": result.ended_at,
    }
    if getattr(result, "confinement", None):
        line["confinement"] = result.confinement
    if getattr(result, "extra", None):
        line["extra"] = result.extra
    return line


def validate_line(line: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when LINE does not follow TOOL_USE_SCHEMA."""
    import jsonschema
    jsonschema.Draft202012Validator(TOOL_USE_SCHEMA).validate(line)
