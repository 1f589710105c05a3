"""Views for people: the `missions` table and the live `watch` table."""
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


def test_watch_redraws_when_a_commit_lands(state_dir):
    """`watch` draws the table, then draws it again when HEAD moves (--count 2 exits)."""
    import time

    from daemonkit import propose
    proc = subprocess.Popen(["janus-git", "watch", "--count", "2", "--interval", "0.1", "-C",
                             str(state_dir)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    time.sleep(1.5)
    assert proc.poll() is None, "watch must keep waiting while nothing changes"
    pid = propose(state_dir, "echo", "watched")
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and pid in out and "1 proposals" in out
