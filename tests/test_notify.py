"""Real apprise deliveries to servers the test starts: HTTP for json://, aiosmtpd for mailto://."""
from __future__ import annotations

import json
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import configure
from daemonkit import DaemonProcess, propose, run_once, wait_for, wait_status


class Receiver:
    """A JSON webhook receiver on 127.0.0.1 that keeps what it was sent."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.messages.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)  # (a 0.5 s poll made each close slow)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    class Keep(Sink):
        def __init__(self):
            self.mails = []

        async def handle_DATA(self, server, session, envelope):
            self.mails.append(envelope.content.decode(errors="replace"))
            return "250 OK"

    handler = Keep()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctl = Controller(handler, hostname="127.0.0.1", port=port)
    ctl.start()
    handler.url = f"mailto://127.0.0.1:{port}?to=ops@example.com&from=janus@example.com"
    yield handler
    ctl.stop()


def test_notify_test_delivers_to_http_and_smtp(state_dir, receiver, smtp):
    configure(state_dir, notifications={"urls": [receiver.url, smtp.url]})
    out = subprocess.run(["janus-git", "notify", "test", "-C", str(state_dir)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "delivered to 2 of 2" in out.stdout
    assert receiver.messages[0]["title"] == "janus-git: test"
    assert "Test notification" in smtp.mails[0]


def test_notify_test_exit_1_when_a_receiver_is_down(state_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    configure(state_dir, notifications={"urls": [f"json://127.0.0.1:{dead}/"]})
    out = subprocess.run(["janus-git", "notify", "test", "-C", str(state_dir)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "delivered to 0 of 1" in out.stdout


def test_failed_run_and_waiting_approval_alert(state_dir, receiver):
    configure(state_dir, notifications={"urls": [receiver.url]})
    with DaemonProcess(state_dir):
        failing = propose(state_dir, "ls", "no-such-file-here")
        manual = propose(state_dir, "echo", "x", type_="maintenance")
        wait_status(state_dir, failing, "failed")
        wait_for(lambda: len(receiver.messages) >= 2, what="two alerts")
    titles = [m["title"] for m in receiver.messages]
    assert f"janus-git: run failed: {failing}" in titles
    assert f"janus-git: approval needed: {manual}" in titles
    body = next(m["message"] for m in receiver.messages if manual in m["title"])
    assert f"janus-git approve {manual}" in body


def test_outbox_keeps_alerts_until_the_receiver_is_back(state_dir, tmp_path):
    from janus_git.notify import Outbox
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box = Outbox(state_dir)
    box.put("janus-git: run failed: x", "body", "alert")
    assert box.flush([f"json://127.0.0.1:{port}/"]) == 0
    assert len(box.pending()) == 1
    msg = json.loads(box.pending()[0].read_text())
    assert msg["attempts"] == 1
    msg["next_try"] = 0
    box.pending()[0].write_text(json.dumps(msg))
    r = Receiver()
    try:
        assert box.flush([r.url]) == 1
        assert not box.pending() and r.messages[0]["title"] == "janus-git: run failed: x"
    finally:
        r.close()


def test_summary_send_mails_the_chart_and_exits_1_when_a_target_is_down(state_dir, smtp):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    configure(state_dir, notifications={"urls": [smtp.url]})
    propose(state_dir, "echo", "fine")
    run_once(state_dir)
    today = subprocess.run(["date", "-u", "+%F"], capture_output=True, text=True).stdout.strip()
    out = subprocess.run(["janus-git", "summary", "-C", str(state_dir), "--date", today,
                          "--send"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "delivered to 1 of 1" in out.stderr
    assert "**1 runs, 100 % succeeded**" in out.stdout
    assert "Content-Type: image/png" in smtp.mails[0]
    configure(state_dir, notifications={"urls": [f"json://127.0.0.1:{dead}/"]})
    out = subprocess.run(["janus-git", "summary", "-C", str(state_dir), "--send"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "delivered to 0 of 1" in out.stderr


def test_a_committed_url_change_is_used_by_the_next_alert(state_dir):
    """Hot reload: the daemon reads notifications from the rules in force at each message."""
    first, second = Receiver(), Receiver()
    try:
        configure(state_dir, notifications={"urls": [first.url], "batch_seconds": 0})
        with DaemonProcess(state_dir):
            one = propose(state_dir, "ls", "no-such-file-1")
            wait_for(lambda: first.messages, what="the alert to the first URL")
            configure(state_dir, notifications={"urls": [second.url], "batch_seconds": 0})
            two = propose(state_dir, "ls", "no-such-file-2")
            wait_for(lambda: second.messages, what="the alert to the committed URL")
        assert [m["title"] for m in first.messages] == [f"janus-git: run failed: {one}"]
        assert [m["title"] for m in second.messages] == [f"janus-git: run failed: {two}"]
    finally:
        first.close()
        second.close()


def test_waiting_proposals_are_reminded_once_per_interval(sr, receiver, monkeypatch):
    import datetime as dt

    from janus_git.daemon.chores import Reminders
    from janus_git.notify import Notifier
    pid = propose(sr.root, "echo", "x", type_="maintenance")
    notifier = Notifier(sr.root, [receiver.url])
    reminders = Reminders(sr, notifier)
    conf = {"remind_after": 3600}
    now = dt.datetime.now(dt.timezone.utc)

    def at(hours: float) -> list[str]:
        monkeypatch.setenv("JANUS_GIT_NOW", (now + dt.timedelta(hours=hours)).isoformat())
        return reminders.maybe(conf)

    assert at(0.5) == []
    assert at(1.2) == [pid]
    assert at(1.9) == []          # once per interval
    assert at(2.1) == [pid]
    assert at(5.5) == [pid]       # a long gap: one reminder, not three
    notifier.start()
    wait_for(lambda: receiver.messages, what="the reminders")
    notifier.close()
    assert "still waiting for approval" in receiver.messages[0]["title"]
    assert f"janus-git approve {pid}" in receiver.messages[0]["message"]


# What whoever can push writes (args, rationale, a note, a mission, a STOP reason) must reach
# chat as text: no mention that pages a channel, no link that hides where it goes.
LIVE = ("@channel", "@here", "@everyone", "@room", "<!", "<@", "<http", "http://", "https://",
        "](", "|click>", "channel>")
HOSTILE_ARGS = ["echo", "@channel", "<!here>", "[docs](http://evil.example/login)",
                "<http://evil.example|click>", "!channel>"]
HOSTILE_WHY = ("@everyone @here @room: urgent, read https://evil.example/x and "
               "[the runbook](http://evil.example/r) or ping <@U024BE7LH>")


def assert_inert(text: str) -> None:
    for live in LIVE:
        assert live not in text, (live, text)


def test_pusher_text_reaches_chat_inert(tmp_path, receiver):
    from janus_git.lifecycle import new_proposal
    from janus_git.notify import Notifier, alert_for, needs_human
    from janus_git.proposal import Status
    p = new_proposal(mission="TEST @here", type_="maintenance", tool="python",
                     args=HOSTILE_ARGS, rationale=HOSTILE_WHY, created_by="mallory")
    p.note = "exit 1: see <http://evil.example|the log> @channel"
    notifier = Notifier(tmp_path, [receiver.url])
    notifier.post(*needs_human(p, "manual tool python", "high"), kind="approval")
    notifier.post(*alert_for(p, Status.RUNNING, Status.FAILED))
    # what the daemon posts with text it did not write: a STOP file's reason
    notifier.post("janus-git: EMERGENCY STOP in force",
                  "stopped by mallory@example.com: @channel see http://evil.example", kind="stop")
    notifier.cycle(force=True)
    assert len(receiver.messages) == 3
    by_title = {m["title"]: m["message"] for m in receiver.messages}
    approval = by_title[f"janus-git: approval needed: {p.id}"]
    for title, body in by_title.items():
        assert_inert(title)
        assert_inert(body)
    # still readable, and the agent's own text is as it wrote it
    assert "@\u200bchannel" in approval and "hxxp[:]//evil.example/login" in approval
    assert f"  approve: `janus-git approve {p.id}` (or set status: approved in {p.path}" \
        in approval
    assert f"janus-git: run failed: {p.id}" in by_title
    assert "hxxp[:]//evil.example" in by_title["janus-git: EMERGENCY STOP in force"]


def test_a_digest_of_hostile_approvals_is_inert(tmp_path, receiver):
    from janus_git.lifecycle import new_proposal
    from janus_git.notify import Notifier, needs_human
    notifier = Notifier(tmp_path, [receiver.url])
    for n in range(3):
        p = new_proposal(mission="TEST", type_="maintenance", tool="python",
                         args=[*HOSTILE_ARGS, str(n)], rationale=HOSTILE_WHY,
                         created_by="mallory")
        notifier.post(*needs_human(p, "manual tool python"), kind="approval")
    notifier.cycle(force=True)
    [message] = receiver.messages
    assert message["title"] == "janus-git: 3 proposals need approval"
    assert_inert(message["message"])
    assert "merging its branch janus/proposal/<id>" in message["message"]  # the agent's own
