"""`janus-git missions`: a table a person reads, and --json a program reads."""
from __future__ import annotations

import json
import os
import subprocess


def test_missions_table_and_json(state_dir):
    human = subprocess.run(["janus-git", "missions", "-C", str(state_dir)], capture_output=True,
                           text=True, check=True, env={**os.environ, "COLUMNS": "160"})
    assert "STUDY-004-BETA" in human.stdout and "0/13 chunks" in human.stdout
    rows = json.loads(subprocess.run(["janus-git", "missions", "--json", "-C", str(state_dir)],
                                     capture_output=True, text=True, check=True).stdout)
    assert [r["status"] for r in rows].count("active") == 1
