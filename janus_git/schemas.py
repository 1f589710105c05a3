"""The JSON Schemas of every file kind a person or an editor may want to validate."""
from __future__ import annotations

from typing import Any


def all_schemas() -> dict[str, dict[str, Any]]:
    from . import audit, config, missions, proposal
    return {"agent": config.SCHEMA, "proposal": proposal.json_schema(),
            "mission": missions.SCHEMA, "tool_use": audit.TOOL_USE_SCHEMA}
