"""`janus-git demo`: a state repository made, given one request and worked once by the daemon."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import lifecycle
from .daemon import Daemon
from .gitrepo import GitRepo
from .staterepo import StateRepo, committer, init_state

DEMO_TOPIC = "autonomy through empowerment, not risk"


def run_demo(directory: Path, echo: Callable[[str], None] = print) -> int:
    path, created = init_state(directory)
    echo(f"{'created' if created else 'reusing'} state repository {path}")
    if created:
        # The operator's side of the demo: one philosophy node asked for by topic (the local
        # model writes it); the agent's side is the thinking cycle on the active mission.
        p = lifecycle.new_proposal(
            mission="STUDY-002-BETA", type_="generate_new_nodes", tool="node_generator",
            args={"topic": DEMO_TOPIC}, rationale="demo: the operator asks for one node",
            created_by="janus-git demo")
        lifecycle.create(GitRepo(path), p, committer(GitRepo(path)))
        echo(f"filed {p.id}: node_generator on {DEMO_TOPIC!r} (whitelisted: runs by itself)")
    echo("running the daemon once: thinking cycle with the built-in model, policy, runs...")
    Daemon(path, once=True, think=True).run()
    sr = StateRepo(path)
    counts = sr.index.counts()
    echo("proposals: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    for folder in ("nodes", "notes"):
        files = [p for p in (path / folder).rglob("*") if p.is_file() and p.name != ".gitkeep"]
        echo(f"{folder}/: {len(files)} files")
    echo("latest commits:")
    echo(sr.repo.log_oneline(15).rstrip())
    echo(f"next: cd {path} && janus-git list && git log --stat")
    return 0
