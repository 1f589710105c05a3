"""Daemon logging: stderr and logs/daemon.log (git-ignored, so the tree stays clean)."""
from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path


def setup_logging(root: Path, verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    logs = Path(root) / "logs"
    if logs.is_dir():
        handlers.append(logging.handlers.RotatingFileHandler(
            logs / "daemon.log", maxBytes=5_000_000, backupCount=2))
    top = logging.getLogger("janus_git")
    top.setLevel(level)
    for h in handlers:
        h.setFormatter(fmt)
        top.addHandler(h)
