"""janus-git: a git-backed, file-first agent with ChatOps."""

__version__ = "0.1.0"
