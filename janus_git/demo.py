"""The main job on built-in defaults: a state repository worked once by the daemon."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .daemon import Daemon
from .state import StateRepo, init_state


def run_demo(directory: Path, echo: Callable[[str], None] = print) -> int:
    path, created = init_state(directory)
    echo(f"{'created' if created else 'reusing'} state repository {path}")
    echo("running the daemon once: thinking cycle with the built-in model, policy, runs...")
    Daemon(path, once=True, think=True).run()
    sr = StateRepo(path)
    counts = sr.index.counts()
    echo("proposals: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    for folder in ("nodes", "notes"):
        files = [p for p in (path / folder).rglob("*") if p.is_file() and p.name != ".gitkeep"]
        echo(f"{folder}/: {len(files)} files")
    echo("latest commits:")
    echo(sr.repo.run("log", "--oneline", "-n", "15").rstrip())
    echo(f"next: cd {path} && janus-git list && git log --stat")
    return 0
