"""The tool registry at run time: check a proposal's tool and args, run it, describe the run.

A tool is an entry under ``tools:`` in state/agent.yaml; its ``runner`` names an entry of
RUNNERS (a module path or an object), which answers the ToolRunner protocol below.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from .. import audit
from ..audit import TOOL_USE_SCHEMA, tool_use_schema
from ..errors import JanusError

__all__ = ["RUNNERS", "RunResult", "TOOL_USE_SCHEMA", "ToolRefused", "ToolRunner", "check",
           "doctor",
           "execute", "from_sandbox", "path_problem", "refused", "tool_use_line",
           "tool_use_schema"]
log = logging.getLogger(__name__)

RUNNERS: dict[str, Any] = {
    "shell": "janus_git.tools.shell",
    "file_chunker": "janus_git.tools.file_chunker",
    "external": "janus_git.tools.external",
    "node_generator": "janus_git.tools.node_generator",
    "process_chunk": "janus_git.tools.process_chunk",
    "llama_bench": "janus_git.tools.llama_bench",
}
# runner names of earlier versions, still read in an agent.yaml that names them
RUNNER_ALIASES = {"optimization_experiment": "llama_bench"}


@dataclass
class RunResult:
    status: str                 # "succeeded" | "failed"
    exit_code: int | None
    limit_hit: str | None       # memory|cpu|disk|timeout|pids|output|cancelled|None
    isolation: str              # "bwrap" | "reduced" | "in-process" | "none" (refused)
    resources: dict             # cpu_seconds, cpu_peak_percent, peak_rss_mb, bytes_written, ...
    output: bytes               # already truncated, with the marker
    files: dict[str, bytes | None]  # repo-relative files to commit with the result
    argv: list[str]
    limits: dict
    started_at: str
    ended_at: str
    error: str = ""             # one-line reason when failed
    output_bytes: int = 0       # what the tool printed before truncation
    network: bool = False       # whether the run could reach the network
    confinement: dict = field(default_factory=dict)  # cgroups, landlock, warm_start
    extra: dict = field(default_factory=dict)  # runner-specific facts for the audit line


class ToolRefused(JanusError):
    """The proposal's tool or arguments are not acceptable; the message says why."""


def from_sandbox(res: Any, files: dict[str, bytes | None] | None = None) -> RunResult:
    """A RunResult from a sandbox.SandboxResult (for runners that use janus_git.sandbox)."""
    return RunResult(status="succeeded" if res.ok else "failed", exit_code=res.exit_code,
                     limit_hit=res.limit_hit, isolation=res.isolation, resources=res.resources,
                     output=res.output, files=files or {}, argv=res.argv, limits=res.limits,
                     started_at=res.started_at, ended_at=res.ended_at, error=res.error,
                     output_bytes=res.output_bytes, network=res.network,
                     confinement={"cgroups": list(res.cgroups), "landlock": res.landlock,
                                  "warm_start": res.warm})


def tool_use_line(proposal: Any, result: Any) -> dict[str, Any]:
    """The logs/tool_use.jsonl line, with how each figure was measured (``resources
    ["measured"]``, see sandbox.measure): in ``resources.measured`` once the line's schema
    has that key, until then in ``extra.measured`` (the schema keeps ``resources`` to
    numbers; the summary reads only those)."""
    line = audit.tool_use_line(proposal, result)
    measured = (result.resources or {}).get("measured")
    if not (isinstance(measured, dict) and measured):
        return line
    if "measured" in TOOL_USE_SCHEMA["properties"]["resources"].get("properties", {}):
        line["resources"]["measured"] = dict(measured)
    else:
        line["extra"] = {**line.get("extra", {}), "measured": dict(measured)}
    return line


def refused(proposal: Any, config: Any, reason: str) -> RunResult:
    from ..util import utcnow
    now = utcnow()
    args = proposal.args if isinstance(proposal.args, list) else []
    return RunResult(status="failed", exit_code=None, limit_hit=None, isolation="none",
                     resources={}, output=b"", files={},
                     argv=[str(proposal.tool), *map(str, args)],
                     limits=dict(config.tool_limits(proposal.tool)) if proposal.tool in
                     config.tools else {}, started_at=now, ended_at=now, error=reason)


def path_problem(root: Path, value: str) -> str | None:
    """Why VALUE is not a path inside the repository ROOT, or None when it is.

    Refused: absolute paths, ``~``, ``..`` components, ``.git`` (it can hold credentials) and
    any path whose real location (symlinks resolved) is outside the repository or inside its
    ``.git`` (``notes/g -> ../.git``: what hides .git in the sandbox is not there everywhere,
    and an in-process tool has no sandbox)."""
    if "\x00" in value:
        return "a NUL byte in a path"
    if value.startswith("/"):
        return f"absolute path {value!r}: use a path relative to the repository"
    if value.startswith("~"):
        return f"home-relative path {value!r}: use a path relative to the repository"
    parts = value.split("/")
    if ".." in parts:
        return f"{value!r} climbs out with '..': stay inside the repository"
    if ".git" in parts:
        return f"{value!r} reaches into .git, which tools may not read"
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, value))
    if real != real_root and not real.startswith(real_root + os.sep):
        return f"{value!r} leads out of the repository through a symlink (to {real})"
    if os.path.relpath(real, real_root).split(os.sep)[0] == ".git":
        return f"{value!r} leads into .git through a symlink, which tools may not read"
    return None


class ToolRunner(Protocol):
    """What a runner (a module of tools/, or an object in RUNNERS) gives the daemon."""

    def check(self, proposal: Any, config: Any, root: Path) -> None:
        """Cheap and static (no subprocess): raise ToolRefused with a one-line reason."""

    def execute(self, proposal: Any, config: Any, root: Path, *,
                cancel: threading.Event | None = None,
                on_start: Callable[[int], None] | None = None,
                context: object | None = None, **kw: Any) -> "RunResult":
        """Run it; never raise for a failing tool: a failed RunResult whose ``error`` says
        why (`on_start` is told the pid the run started as)."""


def runner_name(spec: dict, tool: str) -> str:
    """The runner a tool's entry names (its own name when it names none)."""
    name = spec.get("runner", tool)
    return RUNNER_ALIASES.get(name, name)


def _runner(proposal: Any, config: Any) -> tuple[dict, ToolRunner]:
    spec = config.tools.get(proposal.tool)
    if spec is None:
        known = ", ".join(sorted(config.tools)) or "none"
        raise ToolRefused(f"unknown tool {proposal.tool!r}; registered tools: {known} "
                          "(state/agent.yaml tools:)")
    name = runner_name(spec, proposal.tool)
    target = RUNNERS.get(name)
    if target is None:
        raise ToolRefused(f"tool {proposal.tool!r} uses runner {name!r}, which janus-git does "
                          f"not have; runners: {', '.join(sorted(RUNNERS))}")
    if isinstance(target, str):
        try:
            target = importlib.import_module(target)
        except ModuleNotFoundError as e:
            if e.name and target.startswith(e.name):
                raise ToolRefused(f"runner {name!r} is not installed (no module {target})") \
                    from None
            raise
    return spec, target


def check(proposal: Any, config: Any, root: Path) -> None:
    """Static check before any approval or run; raises ToolRefused with a one-line reason."""
    _, runner = _runner(proposal, config)
    runner.check(proposal, config, Path(root))


def execute(proposal: Any, config: Any, root: Path, *, cancel: threading.Event | None = None,
            on_start: Callable[[int], None] | None = None, context: object | None = None,
            isolation: str | None = None) -> RunResult:
    """Run the proposal's tool in the sandbox; a failure is a failed RunResult, never raised.

    ``isolation`` ("bwrap" | "reduced") forces a level for the built-in runners (tests)."""
    try:
        _, runner = _runner(proposal, config)
        runner.check(proposal, config, Path(root))
    except ToolRefused as e:
        return refused(proposal, config, str(e))
    kw: dict[str, Any] = {"cancel": cancel, "on_start": on_start, "context": context}
    if isolation is not None:
        kw["isolation"] = isolation
    try:
        return runner.execute(proposal, config, Path(root), **kw)
    except JanusError as e:
        return refused(proposal, config, str(e))
    except Exception as e:  # a runner bug becomes a failed run with its reason, and a traceback
        log.exception("tool %s crashed", proposal.tool)
        return refused(proposal, config, f"tool crashed: {type(e).__name__}: {e}")


def doctor() -> dict:
    from ..sandbox import doctor as sandbox_doctor
    return sandbox_doctor()
