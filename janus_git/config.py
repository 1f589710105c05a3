"""state/agent.yaml: load, validate against a JSON Schema, fill defaults."""
from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .gitrepo import Identity
from .proposal import load_yaml
from .util import atomic_write

AGENT_PATH = "state/agent.yaml"
AUTO_TYPES = ["analysis", "optimization_experiment", "generate_new_nodes", "process_chunk"]
RISKS = ["low", "medium", "high"]

DEFAULT_LIMITS = {"memory_mb": 2048, "disk_write_mb": 100, "timeout_s": 600,
                  "cpu_percent": 80, "pids": 64, "output_kb": 256}

DEFAULTS: dict[str, Any] = {
    "agent": {"name": "janus-agent", "email": "janus-agent@localhost"},
    "mode": "beta",
    "branch": "main",
    "approvers": [],
    "require_signed_approvals": False,
    "allowed_signers": "state/allowed_signers",
    "policy": {"auto_types": AUTO_TYPES, "max_auto_risk": "low", "suggest_after": 5,
               "approvals_required": {"low": 1, "medium": 1, "high": 1}},
    "tools": {},
    "limits": DEFAULT_LIMITS,
    "controls": {"tick_hz": 10, "mission_poll_interval": 300, "max_starts_per_second": 10,
                 "max_parallel_runs": 2, "reserved_for_people": 1,
                 "governor": {"target_cpu_percent": 80, "kp": 0.5, "ki": 0.1},
                 "relief_valve": {"max_pending_auto": 50, "max_memory_percent": 90,
                                  "max_recent_failures": 5, "close_at": 0.8}},
    # urls: strings, or {url|env|config, tags}; times in `timezone`; seconds for windows
    "notifications": {"urls": [], "daily_summary_at": "08:00", "timezone": "UTC",
                      "batch_seconds": 60, "remind_after": 86400},
    "model": {"path": None, "n_ctx": 2048, "max_tokens": 384, "temperature": 0.7,
              "seed": None, "threads": None, "prompt_token_budget": 1024},
    "hygiene": {"novelty_window_days": 14, "archive_after_days": 30},
    # a shared remote (#10): absent, the daemon works on its own clone only
    "remote": None,
}
REMOTE_DEFAULTS: dict[str, Any] = {"name": "origin", "branch": None, "poll_seconds": 10,
                                   "lease_seconds": 30, "claim_batch": 8, "webhook": None}

_limits_schema = {
    "type": "object", "additionalProperties": False,
    "properties": {**{k: {"type": "integer", "minimum": 1} for k in DEFAULT_LIMITS},
                   # CPU seconds; unset: cpu_percent % of timeout_s
                   "cpu_s": {"type": "integer", "minimum": 1}},
}
_quorum = {"type": "integer", "minimum": 1, "maximum": 10}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://janus-git.dev/schema/agent.json",
    "title": "janus-git state/agent.yaml",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "agent": {"type": "object", "additionalProperties": False, "required": ["name", "email"],
                  "properties": {"name": {"type": "string", "minLength": 1},
                                 "email": {"type": "string", "pattern": ".+@.+"}}},
        "mode": {"enum": ["alpha", "beta"]},
        "branch": {"type": "string", "minLength": 1},
        "approvers": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["email"],
            "properties": {"name": {"type": "string"}, "email": {"type": "string"},
                           "principal": {"type": "string"}}}},
        "require_signed_approvals": {"type": "boolean"},
        # a guarded file: it must live under state/, where only approvers change anything
        "allowed_signers": {"type": "string", "pattern": r"^state/[A-Za-z0-9_.-]+$",
                            "not": {"enum": ["state/STOP", "state/agent.yaml"]}},
        "policy": {"type": "object", "additionalProperties": False, "properties": {
            "auto_types": {"type": "array", "items": {"type": "string"}},
            "max_auto_risk": {"enum": RISKS},
            "suggest_after": {"type": "integer", "minimum": 0},
            "approvals_required": {"type": "object", "additionalProperties": False,
                                   "properties": {r: _quorum for r in RISKS}}}},
        "tools": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": False, "required": ["risk"],
            "properties": {
                "description": {"type": "string"},
                "risk": {"enum": RISKS},
                "auto_exec": {"type": "boolean"},
                "network": {"type": "boolean"},
                "runner": {"type": "string"},
                "command": {"type": "array", "items": {"type": "string"}},
                "approvals_required": _quorum,
                # measuring tools run alone: nothing else starts while one runs
                "exclusive": {"type": "boolean"},
                "limits": _limits_schema}}},
        "limits": _limits_schema,
        "controls": {"type": "object", "additionalProperties": False, "properties": {
            "tick_hz": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
            "mission_poll_interval": {"type": "number", "minimum": 0},
            "max_starts_per_second": {"type": "number", "exclusiveMinimum": 0},
            "max_parallel_runs": {"type": "integer", "minimum": 1, "maximum": 64},
            "reserved_for_people": {"type": "integer", "minimum": 0, "maximum": 64},
            "governor": {"type": "object", "additionalProperties": False, "properties": {
                "target_cpu_percent": {"type": "number", "minimum": 1, "maximum": 100},
                "kp": {"type": "number", "minimum": 0}, "ki": {"type": "number", "minimum": 0}}},
            "relief_valve": {"type": "object", "additionalProperties": False, "properties": {
                "max_pending_auto": {"type": "integer", "minimum": 1},
                "max_memory_percent": {"type": "number", "minimum": 1, "maximum": 100},
                "max_recent_failures": {"type": "integer", "minimum": 1},
                "close_at": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}}}}},
        "notifications": {"type": "object", "additionalProperties": False, "properties": {
            "urls": {"type": "array", "items": {"oneOf": [
                {"type": "string", "minLength": 1},
                # a target: the URL itself, the NAME of an environment variable holding it,
                # or an apprise config file outside the repository (secrets never committed)
                {"type": "object", "additionalProperties": False, "minProperties": 1,
                 "maxProperties": 2, "oneOf": [{"required": [k]} for k in
                                               ("url", "env", "config")], "properties": {
                    "url": {"type": "string", "minLength": 1},
                    "env": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                    "config": {"type": "string", "pattern": r"^(/|~)"},
                    "tags": {"type": "array", "items": {
                        "enum": ["approval", "reminder", "alert", "stop", "summary",
                                 "test", "always"]}}}}]}},
            "daily_summary_at": {"type": "string",
                                 "pattern": r"^([01]\d|2[0-3]):[0-5]\d$"},
            # an IANA name (Europe/Paris); one zoneinfo does not know falls back to UTC
            "timezone": {"type": "string", "maxLength": 64,
                         "pattern": r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"},
            "batch_seconds": {"type": "number", "minimum": 0, "maximum": 86400},
            "remind_after": {"type": "number", "minimum": 60}}},
        "model": {"type": "object", "additionalProperties": False, "properties": {
            "path": {"type": ["string", "null"]},
            "n_ctx": {"type": "integer", "minimum": 128},
            "max_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0},
            "seed": {"type": ["integer", "null"]},
            "threads": {"type": ["integer", "null"], "minimum": 1},
            "prompt_token_budget": {"type": "integer", "minimum": 64}}},
        "hygiene": {"type": "object", "additionalProperties": False, "properties": {
            "novelty_window_days": {"type": "number", "minimum": 0},
            "archive_after_days": {"type": "number", "minimum": 0}}},
        "remote": {"type": ["object", "null"], "additionalProperties": False, "properties": {
            "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
            "branch": {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9][A-Za-z0-9_./-]*$"},
            "poll_seconds": {"type": "number", "minimum": 0.1},
            "lease_seconds": {"type": "number", "minimum": 1},
            # automatic proposals claimed per push (daemon/remote/batch.py): pushes are the
            # bottleneck
            "claim_batch": {"type": "integer", "minimum": 1, "maximum": 100},
            "webhook": {"type": ["object", "null"], "additionalProperties": False,
                        "required": ["listen", "secret_env"], "properties": {
                "listen": {"type": "string", "pattern": r"^[^\s:]*:\d{1,5}$"},
                # the NAME of the environment variable holding the secret: never the secret
                "secret_env": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}}}}},
    },
}


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return copy.deepcopy(over)


def validate(data: Any, schema: dict[str, Any], path: str) -> None:
    """Raise ConfigError naming the first offending field (dotted path)."""
    import jsonschema  # ~0.1 s to import: only commands that load agent.yaml pay it
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), e.path))
    if not errors:
        return
    err = errors[0]
    field = ".".join(str(p) for p in err.absolute_path) or None
    message = err.message
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            field = ".".join(filter(None, [field, str(extra[0])]))
            message = "unknown field"
    raise ConfigError(path, field, message)


@dataclass
class Config:
    data: dict[str, Any]
    path: str = AGENT_PATH

    @property
    def identity(self) -> Identity:
        return Identity(self.data["agent"]["name"], self.data["agent"]["email"])

    @property
    def mode(self) -> str:
        return self.data["mode"]

    @property
    def branch(self) -> str:
        return self.data["branch"]

    @property
    def tools(self) -> dict[str, dict[str, Any]]:
        return self.data["tools"]

    @property
    def approver_emails(self) -> set[str]:
        return {a["email"].lower() for a in self.data["approvers"]}

    def approver_principals(self) -> set[str]:
        return {a.get("principal", a["email"]).lower() for a in self.data["approvers"]}

    def approvals_required(self, tool: str) -> int:
        """Distinct approvers a manual proposal for TOOL needs: the larger of the tool's own
        `approvals_required` and its risk's under `policy.approvals_required` (default 1)."""
        spec = self.tools.get(tool, {})
        by_risk = self.data["policy"]["approvals_required"].get(spec.get("risk", "high"), 1)
        return max(int(spec.get("approvals_required", 1)), int(by_risk))

    def approver_for(self, email: str) -> dict[str, Any] | None:
        for entry in self.data["approvers"]:
            if entry["email"].lower() == email.lower():
                return entry
        return None

    def tool_limits(self, tool: str) -> dict[str, int]:
        spec = self.tools.get(tool, {})
        return {**self.data["limits"], **spec.get("limits", {})}

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def config_from_text(text: bytes | str | None, path: str = AGENT_PATH, *,
                     schema_checked: bool = False) -> Config:
    """The configuration TEXT makes, or ConfigError.  SCHEMA_CHECKED: this very text passed
    the JSON Schema before (load_config's mark), so jsonschema need not even be imported."""
    raw = load_yaml(text, path) if text else {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, None, "agent.yaml must be a mapping")
    if not schema_checked:
        validate(raw, SCHEMA, path)
    data = _merge(DEFAULTS, raw)
    _check_timezone(path, data["notifications"].get("timezone"))
    if data["remote"] is not None:
        data["remote"] = _merge(REMOTE_DEFAULTS, data["remote"])
        data["remote"]["branch"] = data["remote"]["branch"] or data["branch"]
    agent_email = data["agent"]["email"].lower()
    if agent_email in {a["email"].lower() for a in data["approvers"]}:
        raise ConfigError(path, "approvers", "the agent's own identity can never approve",
                          "remove the agent's e-mail from approvers")
    for name, spec in data["tools"].items():
        for word in spec.get("command", [])[:1]:
            _check_program(path, name, word)
    model = data["model"]["path"]
    if model and not model.startswith(("/", "~", "state/")) or model and ".." in model.split("/"):
        raise ConfigError(path, "model.path", f"{model!r} is a file anyone who can push may "
                          "replace", "give an absolute path on this machine, or keep the model "
                          "under state/, where only approvers change anything")
    return Config(data, path)


def _check_timezone(path: str, name: str | None) -> None:
    if not name:
        return
    import zoneinfo
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(path, "notifications.timezone", f"{name!r} is not a time zone this "
                          "machine knows", "use an IANA name such as Europe/Paris or UTC") \
            from None


def _check_program(path: str, tool: str, word: str) -> None:
    """A tool's program is a system command: a bare name or an absolute path outside the
    repository's mount.  A repository file as the program would let anyone who can push
    change what an approved tool runs."""
    if word.startswith("/repo") or ("/" in word and not word.startswith("/")) \
            or ".." in word.split("/"):
        raise ConfigError(path, f"tools.{tool}.command",
                          f"{word!r} is not a system program",
                          "name a program on the system (python3) or give its absolute path; "
                          "a file in the repository can be changed by anyone who can push")


def load_config(root: Path) -> Config:
    path = root / AGENT_PATH
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ConfigError(AGENT_PATH, None, "is not a regular file (a symlink, a folder or a "
                          "submodule)", "the daemon puts the rules in force back; or restore "
                          "it with `git checkout HEAD -- state/agent.yaml`")
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(AGENT_PATH, None, "missing",
                          "run `janus-git init` or restore it with git") from None
    # a command that reads agent.yaml as it was when it last passed the schema skips the
    # check (importing jsonschema alone took 64 ms of `janus-git status`); the mark names
    # the text and the schema, so any edit of either checks again
    mark = root / ".git" / "janus" / "agent-yaml-valid"
    key = hashlib.sha256(_schema_id().encode() + b"\0" + text).hexdigest()
    try:
        checked = mark.read_text() == key
    except OSError:
        checked = False
    config = config_from_text(text, schema_checked=checked)
    if not checked and mark.parent.is_dir():
        try:
            atomic_write(mark, key.encode(), make_parents=False)
        except OSError:
            pass  # (a read-only clone: the next command checks again)
    return config


@functools.cache
def _schema_id() -> str:
    return hashlib.sha256(json.dumps(SCHEMA, sort_keys=True).encode()).hexdigest()
