"""The model backend: what the planner and the tools call, and which backend serves it.

Every backend answers the same protocol (`ModelBackend`): llm.Model, llama.cpp in this
process, and modelproc.ModelProcess, the same model in a child process of its own (the
daemon's choice: a crash in llama.cpp then kills only the child).  `open_model` chooses; it
is the one place that imports both, so neither imports the other.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .llm import Reply


class ModelBackend(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def n_ctx(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def chat(self, messages: list[dict[str, str]], *, schema: dict[str, Any] | None = None,
             max_tokens: int = 256, temperature: float = 0.7,
             seed: int | None = None) -> "Reply":
        """One chat completion; with SCHEMA the output is JSON of that schema (Reply.data),
        or Reply.error says why not."""
        ...


def open_model(model_cfg: dict[str, Any], root: Path | None = None, *,
               isolated: bool = False) -> ModelBackend:
    """The model `model:` in agent.yaml names, in this process or (ISOLATED) in a child."""
    if isolated:
        from .modelproc import ModelProcess
        return ModelProcess.from_config(model_cfg, root)
    from .llm import Model
    return Model.from_config(model_cfg, root)


class ModelContext:
    """What the daemon hands to tools and the planner: the model, loaded on first use.
    ISOLATED: in its own process (modelproc.py), so that a crash in llama.cpp kills only it."""

    def __init__(self, config: Any, root: Path | None = None, *, isolated: bool = False) -> None:
        self.config = config
        self.root = Path(root) if root is not None else None
        self.isolated = isolated
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def llm(self) -> ModelBackend:
        with self._lock:
            if self._model is None:
                self._model = open_model(self.config["model"], self.root,
                                         isolated=self.isolated)
            return self._model

    def close(self) -> None:
        """End the model's process, if it has one (an in-process Llama stays cached)."""
        with self._lock:
            model, self._model = self._model, None
        if model is not None and hasattr(model, "close"):
            model.close()


def as_model(llm: Any, config: Any, root: Path | None = None) -> ModelBackend:
    """Accept a Model, a ModelContext, any object with `chat`, or None (load from config)."""
    if llm is None:
        return open_model(config["model"], root)
    if isinstance(llm, ModelContext):
        return llm.llm
    return llm
