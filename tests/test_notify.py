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
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
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


def test_daily_summary_is_committed_and_mailed(state_dir, smtp):
    configure(state_dir, notifications={"urls": [smtp.url], "daily_summary_at": "00:00"})
    ok = propose(state_dir, "echo", "fine")
    bad = propose(state_dir, "ls", "missing-file")
    run_once(state_dir)
    run_once(state_dir)
    out = subprocess.run(["janus-git", "summary", "-C", str(state_dir), "--json"],
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert data["executed"] == 2 and data["succeeded"] == 1 and data["success_rate"] == 0.5
    assert data["resources"]["wall_seconds"]["max"] > 0
    day = data["date"]
    assert (state_dir / "logs" / "summaries" / f"{day}.md").exists()  # the daemon wrote it
    wait_for(lambda: any("daily summary" in m for m in smtp.mails), 15, "the summary mail")
    assert ok and bad
