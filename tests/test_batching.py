"""Digests and routing, delivered for real to the HTTP receiver the tests start: bursts of
approval requests and identical alerts become one message; tags route kinds; targets come
from environment variables and apprise config files; the outbox survives a kill -9."""
from __future__ import annotations

import json
import time

import pytest
from test_notify import Receiver, receiver  # noqa: F401  (the fixture)

from janus_git.lifecycle import new_proposal
from janus_git.notify import Notifier, batching, needs_human, send
from janus_git.notify.outbox import Outbox
from janus_git.proposal import Status

from conftest import configure
from daemonkit import DaemonProcess, outbox_empty, propose, run_once, wait_for


def _proposal(n: int = 0, tool: str = "shell", args=("ls", "missing")):
    return new_proposal(mission="TEST", type_="analysis", tool=tool, args=list(args),
                        rationale=f"number {n}", created_by="janus-agent@localhost")


def test_the_rules_of_a_burst():
    item = {"at": 100.0}
    assert batching.due_at([item], None, 60) == 100.0 + batching.GATHER  # the first: at once
    assert batching.due_at([item], 90.0, 60) == 160.0        # in a burst: a quiet window later
    assert batching.due_at([item, {"at": 130.0}], 90.0, 60) == 190.0
    assert batching.due_at([item], 30.0, 60) == 101.0        # the burst is over
    assert batching.due_at([item, {"at": 1000.0}], 90.0, 60) == 100.0 + 5 * 60  # capped
    assert batching.due_at([item], 90.0, 0) == 100.0          # batch_seconds: 0 sends each
    assert batching.group_of("approval", "a", "b") == batching.group_of("approval", "c", "d")
    assert batching.group_of("alert", "a", "b") != batching.group_of("alert", "a", "c")


def test_100_identical_failure_alerts_are_one_message_saying_100(state_dir, receiver):
    notifier = Notifier(state_dir, [receiver.url]).start()
    p = _proposal()
    p.note = "ls: cannot access 'missing'"
    try:
        for _ in range(100):
            notifier.on_transition(p, Status.RUNNING, Status.FAILED, "sha")
        wait_for(lambda: receiver.messages, 10, "the merged alert")
        wait_for(lambda: outbox_empty(state_dir), 10, "every item sent")  # none can follow
    finally:
        notifier.close()
    assert len(receiver.messages) == 1
    msg = receiver.messages[0]
    assert msg["title"] == f"janus-git: run failed: {p.id} (100 times)"
    assert "This happened 100 times" in msg["message"]
    assert not notifier.outbox.pending()


def test_later_alerts_of_a_burst_wait_and_merge(state_dir, receiver):
    configure(state_dir, notifications={"urls": [receiver.url], "batch_seconds": 1})
    notifier = Notifier(state_dir, lambda: {"urls": [receiver.url], "batch_seconds": 1})
    notifier.start()
    try:
        notifier.post("janus-git: disk full", "on /", "alert")
        wait_for(lambda: receiver.messages, 10, "the first alert")
        for _ in range(3):
            notifier.post("janus-git: disk full", "on /", "alert")
        wait_for(lambda: len(receiver.messages) == 2, 10, "the merged rest")
    finally:
        notifier.close()
    assert receiver.messages[0]["title"] == "janus-git: disk full"  # the first: alone, at once
    assert receiver.messages[1]["title"] == "janus-git: disk full (3 times)"


def test_twenty_manual_proposals_in_5s_arrive_as_at_most_2_messages(state_dir, receiver):
    from janus_git.actions import propose
    from janus_git.staterepo import StateRepo
    configure(state_dir, notifications={"urls": [receiver.url], "batch_seconds": 3})
    sr = StateRepo(state_dir)
    ids = []
    with DaemonProcess(state_dir):
        filed = []
        for n in range(20):
            p = propose(sr, mission="TEST", type_="maintenance", tool="shell",
                        args=["echo", f"n{n}"], rationale=f"manual {n}")
            ids.append(p.id)
            filed.append(time.monotonic())
            time.sleep(0.05)
        # one burst: no pause as long as batch_seconds between two filings (on a busy host
        # a commit is slower, but not by seconds)
        assert max(b - a for a, b in zip(filed, filed[1:])) < 3, filed
        def named() -> set[str]:
            return {i for m in receiver.messages for i in ids if i in m["message"]}
        wait_for(lambda: len(named()) == 20, 30, "every proposal named")
        wait_for(lambda: outbox_empty(state_dir), 10, "every item sent")  # none for a third
    assert 1 <= len(receiver.messages) <= 2, [m["title"] for m in receiver.messages]
    digest_msg = receiver.messages[-1]
    assert "proposals need approval" in digest_msg["title"]
    some = ids[-1]
    assert f"janus-git approve {some}" in digest_msg["message"]
    assert f"janus-git reject {some}" in digest_msg["message"]
    assert '["echo", "n19"]' in digest_msg["message"]


def test_approval_entry_names_tool_args_risk_and_commands():
    p = _proposal(args=["x" * 500])
    title, body = needs_human(p, "tool 'curl' is a manual tool", "high")
    assert title == f"janus-git: approval needed: {p.id}"
    assert "risk high" in body and "…" in body and len(body) < 900
    assert f"janus-git approve {p.id}" in body and f"janus-git reject {p.id}" in body


def test_a_kill_between_digest_and_item_removal_loses_and_doubles_nothing(state_dir,
                                                                          receiver):
    box = Outbox(state_dir)
    items = [box.add(f"janus-git: approval needed: p{n}", f"• p{n}", "approval")
             for n in range(3)]
    late = box.add("janus-git: approval needed: p3", "• p3", "approval")
    # the state a kill -9 leaves in Outbox._make: the message written, its items not removed
    box.put("janus-git: 3 proposals need approval", "• p0\n\n• p1\n\n• p2", "approval",
            items=[p.name for p in items])
    after = Outbox(state_dir)  # the restart
    assert after.recover() == 3
    assert after.digest(3, force=True) is None
    assert after.flush([receiver.url]) == 2
    bodies = [m["message"] for m in receiver.messages]
    for n in range(4):
        assert sum(f"• p{n}" in b for b in bodies) == 1
    assert not after.pending() and not late.exists()


def test_a_daemon_killed_after_writing_a_digest_sends_each_item_once(state_dir, receiver):
    configure(state_dir, notifications={"urls": [receiver.url], "batch_seconds": 1})
    first = propose(state_dir, "echo", "a", type_="maintenance")
    second = propose(state_dir, "echo", "b", type_="maintenance")
    dead = run_once(state_dir, env={"JANUS_GIT_CRASHPOINT": "after-digest-written"})
    assert dead.returncode == -9, dead.stderr
    box = state_dir / ".git" / "janus" / "outbox"
    assert list(box.glob("m-*.json")) and list(box.glob("i-*.json"))  # both on disk
    assert run_once(state_dir).returncode == 0
    wait_for(lambda: receiver.messages, 10, "the digest")
    assert len(receiver.messages) == 1
    body = receiver.messages[0]["message"]
    assert body.count(f"janus-git approve {first}") == 1
    assert body.count(f"janus-git approve {second}") == 1
    assert not list(box.iterdir())


def test_tags_route_kinds_and_secrets_come_from_outside(state_dir, tmp_path, monkeypatch):
    summaries, approvals, env_target, conf_target = (Receiver() for _ in range(4))
    try:
        monkeypatch.setenv("JANUS_TEST_HOOK", env_target.url)
        conf = tmp_path / "apprise.yml"  # outside the repository
        conf.write_text(f"urls:\n  - {conf_target.url}:\n    - tag: alert\n")
        urls = [{"url": summaries.url, "tags": ["summary"]},
                {"url": approvals.url, "tags": ["approval", "reminder"]},
                {"env": "JANUS_TEST_HOOK", "tags": ["alert"]},
                {"config": str(conf)}]
        assert send(urls, "janus-git: run failed: x", "body", "alert", state_dir) == (2, 2)
        assert send(urls, "janus-git: approval needed: y", "body", "approval",
                    state_dir) == (2, 2)  # the config file's entry takes alerts only
        assert [m["title"] for m in env_target.messages] == ["janus-git: run failed: x"]
        assert [m["title"] for m in conf_target.messages] == ["janus-git: run failed: x"]
        assert [m["title"] for m in approvals.messages] == ["janus-git: approval needed: y"]
        assert not summaries.messages
        monkeypatch.delenv("JANUS_TEST_HOOK")
        assert send([{"env": "JANUS_TEST_HOOK"}], "t", "b", "alert") == (0, 1)
        inside = state_dir / "state" / "apprise.yml"
        inside.write_text(conf.read_text())
        assert send([{"config": str(inside)}], "t", "b", "alert", state_dir) == (0, 1)
    finally:
        for r in (summaries, approvals, env_target, conf_target):
            r.close()


def test_the_json_receiver_gets_the_sparkline_and_the_png(state_dir, receiver, tmp_path):
    png = tmp_path / "chart.png"
    from janus_git.summary.chart import draw
    from janus_git.summary.text import sparkline
    data = {"date": "2026-11-28", "timezone": "UTC",
            "hourly": [{"succeeded": h % 3, "failed": h % 2, "other": 0} for h in range(24)],
            "previous_days": [{"date": f"2026-11-2{d}", "success_rate": 0.9} for d in range(7)],
            "success_rate": 0.5}
    png.write_bytes(draw(data))
    line = sparkline([3, 0, 1, 2])
    assert line == "█▁▃▆"
    assert send([receiver.url], "janus-git daily summary", f"runs `{line}`", "summary",
                attach=str(png)) == (1, 1)
    msg = receiver.messages[0]
    assert "█▁▃▆" in msg["message"]
    import base64
    (att,) = msg["attachments"]
    assert base64.b64decode(att["base64"]).startswith(b"\x89PNG\r\n\x1a\n")


def test_outbox_messages_survive_a_broken_file(state_dir):
    box = Outbox(state_dir)
    (box.dir / "m-broken.json").write_text("{not json")
    assert box.messages() == []
    assert (box.dir / "m-broken.broken").exists()
    assert json.loads(box.put("t", "b", "alert").read_text())["kind"] == "alert"


@pytest.mark.parametrize("batch", [0])
def test_batch_seconds_zero_sends_each_at_once(state_dir, receiver, batch):
    notifier = Notifier(state_dir, lambda: {"urls": [receiver.url], "batch_seconds": batch})
    notifier.start()
    try:
        notifier.post("a", "1", "approval")
        wait_for(lambda: receiver.messages, 5, "the first")
        notifier.post("b", "2", "approval")
        wait_for(lambda: len(receiver.messages) == 2, 5, "the second, alone")
    finally:
        notifier.close()
