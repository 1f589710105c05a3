"""The JSON Schemas of every file kind a person or an editor may want to validate."""
from __future__ import annotations

from typing import Any


def all_schemas() -> dict[str, dict[str, Any]]:
    from . import config, proposal
    out = {"agent": config.SCHEMA, "proposal": proposal.json_schema()}
    try:
        from . import missions
        out["mission"] = missions.SCHEMA
    except (ImportError, AttributeError):
        pass
    try:
        from . import tools
        out["tool_use"] = tools.TOOL_USE_SCHEMA
    except (ImportError, AttributeError):
        pass
    return out
