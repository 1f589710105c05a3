"""`janus-git doctor`: what this machine offers janus-git, and why not when it does not."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .errors import JanusError


def diagnose(root: Path) -> dict[str, Any]:
    info: dict[str, Any] = {}
    from .gitrepo import git_version
    info["git"] = git_version() or "MISSING: install git"
    from . import tools
    info["sandbox"] = tools.doctor()
    info["llama_cpp"] = ("installed" if importlib.util.find_spec("llama_cpp") else
                         "MISSING: pip install -e '.[llm]'")
    from .llm import find_model
    try:
        model_cfg = {"path": None}
        if (root / "state" / "agent.yaml").is_file():
            from .config import load_config
            model_cfg = load_config(root)["model"]
        info["model"] = str(find_model(model_cfg, root))
    except JanusError as e:  # doctor reports, it does not fail
        info["model"] = f"NOT FOUND: {e}"
    if (root / ".git").exists():
        from .runlock import read_status
        info["daemon"] = read_status(root)
        try:
            from .config import load_config
            cfg = load_config(root)
            info["config"] = f"valid ({cfg.mode} mode, {len(cfg.tools)} tools, " \
                             f"{len(cfg.approver_emails)} approvers)"
        except Exception as e:
            info["config"] = f"INVALID: {e}"
        info["trust"] = _trust(root)
        info["hosting"] = _hosting(root)
    return info


def _hosting(root: Path) -> str:
    """Whether this repository keeps a pusher from changing what git shows (gitrepo/refs.py):
    the settings the daemon applies at start, replacements present, and the branch's
    protection against rewinds."""
    from .gitrepo import GitRepo
    from .gitrepo.refs import HARDENING, NEUTRAL_ATTRIBUTES
    repo = GitRepo(root)
    missing = [f"{k}={v}" for k, v in HARDENING.items()
               if v not in repo.config_values(k, local=True)]
    attributes = root / ".git" / "info" / "attributes"
    if not attributes.is_file() or NEUTRAL_ATTRIBUTES not in attributes.read_text():
        missing.append(".git/info/attributes")
    if repo.config_values("receive.denyNonFastForwards") != ["true"]:
        missing.append("receive.denyNonFastForwards=true")
    found = sorted(repo.replace_refs())
    parts = []
    if found:
        parts.append(f"REPLACEMENTS PRESENT ({', '.join(found[:3])}): the daemon deletes them "
                     "at start; find who pushed them")
    if missing:
        parts.append(f"NOT HARDENED: {', '.join(missing)} (the daemon sets its own at start; "
                     "set them on a shared bare remote too)")
    return "; ".join(parts) or ("hardened: replacements off and refused, no content filters, "
                                "no rewinds")


def _trust(root: Path) -> str:
    """Which approvals count here, and whether the agent's commits can be told apart."""
    from .agentkey import find_key, key_path
    from .gitrepo import GitRepo
    from .trust import Trust
    try:
        rules = Trust(GitRepo(root)).load(GitRepo(root).head() or "HEAD")
    except JanusError as e:
        return f"UNKNOWN: {e}"
    signed = ("signed approvals required" if rules.config["require_signed_approvals"] else
              "UNSIGNED approvals: an approver is only an author e-mail (turn on "
              "require_signed_approvals)")
    key = find_key()
    if key is None:
        agent = f"no agent key at {key_path()} (the daemon makes one)"
    else:
        blob = Path(f"{key}.pub").read_text().split()[1]
        listed = blob in rules.signers().decode(errors="replace")
        agent = f"agent key {key} " + ("listed" if listed else
                                       "NOT listed in allowed_signers: add its .pub line")
    return f"{signed}; {agent}"


def _cgroups(sb: dict[str, Any]) -> str:
    """Which cgroup version and controllers runs get, and what to change when not all."""
    version = sb.get("cgroup_version", 1)
    names = [n for n, ok in sb["cgroups"].items() if ok and n != "tree"]
    if names:
        line = f"v{version}: {', '.join(names)}"
    elif sb["cgroups"].get("tree"):
        line = (f"v{version}: a cgroup per run (exact CPU time, every process counted), no "
                "controller: memory and processes capped by rlimits")
    else:
        line = "none writable: memory and processes capped by rlimits"
    advice = sb.get("cgroup_advice", "")
    return f"{line}; TO FIX: {advice}" if advice else line


def render(info: dict[str, Any]) -> list[str]:
    """The report for people: one line per finding, the sandbox spelled out."""
    out = [f"git:        {info['git']}"]
    sb = info["sandbox"]
    out.append(f"isolation:  {sb['isolation']}; {sb['why']}")
    out.append(f"cgroups:    {_cgroups(sb)}")
    out.append(f"guards:     fork bombs: {sb['fork_bomb_guard']}; network "
               f"{'isolated' if sb['network_isolation'] else 'REACHABLE by every tool'}; "
               f"runs as uid {sb['run_as_uid']}; warm starts "
               f"{'on' if sb['warm_starts'] else 'off'}")
    out.append(f"llama_cpp:  {info['llama_cpp']}")
    out.append(f"model:      {info['model']}")
    if "daemon" in info:
        d = info["daemon"]
        out.append("daemon:     " + (f"running, pid {d.get('pid')}, {d.get('activity', '')}"
                                     if d.get("running") else "not running"))
    if "config" in info:
        out.append(f"config:     {info['config']}")
    if "trust" in info:
        out.append(f"trust:      {info['trust']}")
    if "hosting" in info:
        out.append(f"hosting:    {info['hosting']}")
    return out
