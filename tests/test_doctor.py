"""`janus-git doctor` reports what this machine offers, naming the model it would load."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import configure


def test_doctor_names_isolation_model_and_config(state_dir):
    pytest.importorskip("llama_cpp")  # the built-in model comes with it (janus-git[llm])
    out = subprocess.run(["janus-git", "doctor", "--json", "-C", str(state_dir)],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["sandbox"]["isolation"] in ("bwrap", "reduced") and info["sandbox"]["why"]
    assert info["model"].endswith(".gguf"), info["model"]
    assert info["config"].startswith("valid (beta mode")


def test_doctor_says_when_the_configured_model_is_missing(state_dir):
    configure(state_dir, model={"path": "state/models/none.gguf"})
    out = subprocess.run(["janus-git", "doctor", "--json", "-C", str(state_dir)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["model"].startswith("NOT FOUND")


def test_doctor_for_people_spells_out_the_sandbox(state_dir):
    out = subprocess.run(["janus-git", "doctor", "-C", str(state_dir)],
                         capture_output=True, text=True, check=True).stdout
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert set(lines) >= {"git", "isolation", "cgroups", "guards", "model", "daemon", "config",
                          "trust"}
    assert "{" not in out  # no dict dumps
    assert "warm starts" in lines["guards"] and "not running" in lines["daemon"]
