"""Fault injection for tests, in one place: each hook is free when its variable is unset.

- `JANUS_GIT_CRASHPOINT=name`: the process SIGKILLs itself at `crashpoint(name)`, exactly as
  `kill -9` would (tests/test_crash.py names the points);
- `JANUS_GIT_STALLPOINT=name:seconds`: the calling thread sleeps at `stallpoint(name)`, to
  prove that something holds while the daemon's main loop is busy;
- `JANUS_MODEL_FAULT` (modelproc.FAULT_ENV): the model's child crashes, hangs or errs;
- `JANUS_GIT_NOW` (clock.py): the clock starts at a fixed time.

The variables are read once, at import, so a hook costs a comparison.
"""
from __future__ import annotations

import os
import signal
import time

CRASHPOINT_ENV = "JANUS_GIT_CRASHPOINT"
STALLPOINT_ENV = "JANUS_GIT_STALLPOINT"
MODEL_FAULT_ENV = "JANUS_MODEL_FAULT"
NOW_ENV = "JANUS_GIT_NOW"

_CRASHPOINT = os.environ.get(CRASHPOINT_ENV)
_stall = os.environ.get(STALLPOINT_ENV, "")
_STALLPOINT = _stall.partition(":")[::2] if _stall else None


def crashpoint(name: str) -> None:
    """Die here, as `kill -9` would, when the crash test names this point."""
    if _CRASHPOINT and _CRASHPOINT == name:
        os.kill(os.getpid(), signal.SIGKILL)


def stallpoint(name: str) -> None:
    """Sleep here for the time the test names (JANUS_GIT_STALLPOINT=name:seconds)."""
    if _STALLPOINT and _STALLPOINT[0] == name:
        time.sleep(float(_STALLPOINT[1]))
