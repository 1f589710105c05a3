"""The auto-executor policy: a pure function of the proposal and agent.yaml."""
from __future__ import annotations

from dataclasses import dataclass

from .config import RISKS, Config
from .proposal import Proposal


@dataclass(frozen=True)
class Decision:
    auto: bool          # may run with no human
    risk: str           # from the tool registry, never from the proposal
    rule: str           # the rule that decided, recorded on the proposal
    reason: str
    reject: bool = False


def decide(p: Proposal, config: Config) -> Decision:
    spec = config.tools.get(p.tool)
    if spec is None:
        return Decision(False, "high", "reject:unknown-tool",
                        f"tool {p.tool!r} is not in the registry (state/agent.yaml tools:)",
                        reject=True)
    risk = spec["risk"]
    policy = config["policy"]
    if config.mode != "beta":
        return Decision(False, risk, "manual:alpha-mode",
                        "alpha mode: every proposal needs a human")
    if p.type not in policy["auto_types"]:
        return Decision(False, risk, "manual:type-not-whitelisted",
                        f"type {p.type!r} is not on the auto-exec whitelist")
    if not spec.get("auto_exec", False):
        return Decision(False, risk, "manual:tool-not-auto-exec",
                        f"tool {p.tool!r} is a manual tool")
    if RISKS.index(risk) > RISKS.index(policy["max_auto_risk"]):
        return Decision(False, risk, "manual:risk-above-limit",
                        f"tool risk {risk} is above max_auto_risk {policy['max_auto_risk']}")
    return Decision(True, risk, f"auto:beta:{p.type}:{p.tool}",
                    f"beta whitelist: type {p.type}, auto-exec tool {p.tool}, risk {risk}")
