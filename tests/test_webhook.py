"""The webhook receiver over real HTTP on 127.0.0.1: signed deliveries in GitHub's and Gitea's
forms poke at once; bad or missing signatures, replays (also across a restart), oversized,
chunked and lengthless bodies, slow senders and a crowd are refused; the secret is never
logged."""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import secrets
import socket
import statistics
import time

import pytest

from janus_git import webhook
from janus_git.errors import JanusError
from janus_git.webhook import SeenDeliveries, WebhookServer, secret_from_env

from conftest import within

SECRET = ("s3cr3t-" + secrets.token_hex(8)).encode()


def github(body: bytes, delivery: str | None = None, secret: bytes = SECRET) -> dict:
    sig = hmac.new(secret, body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": f"sha256={sig}", "X-GitHub-Event": "push"}
    if delivery:
        headers["X-GitHub-Delivery"] = delivery
    return headers


def gitea(body: bytes, delivery: str | None = None, secret: bytes = SECRET) -> dict:
    headers = {"X-Gitea-Signature": hmac.new(secret, body, hashlib.sha256).hexdigest()}
    if delivery:
        headers["X-Gitea-Delivery"] = delivery
    return headers


def post(server: WebhookServer, body: bytes, headers: dict) -> tuple[int, str]:
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    try:
        conn.request("POST", "/hook", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def raw(server: WebhookServer, data: bytes, timeout: float = 5) -> bytes:
    """Send DATA as is and read until the server closes."""
    with socket.create_connection(server.address, timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


def push_body(n: int = 0) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "after": f"{n:040x}"}).encode()


class Pokes(list):
    """on_delivery: remembers each id and when it came."""

    def __call__(self, delivery: str) -> None:
        self.append((delivery, time.perf_counter()))

    def ids(self) -> list[str]:
        return [d for d, _ in self]


@pytest.fixture
def pokes():
    return Pokes()


@pytest.fixture
def hook(tmp_path, pokes):
    with WebhookServer("127.0.0.1:0", SECRET, pokes, tmp_path / "seen.json") as server:
        yield server


def test_a_github_delivery_pokes(hook, pokes):
    assert post(hook, push_body(), github(push_body(), "gh-1")) == (202, "accepted\n")
    assert pokes.ids() == ["gh-1"]
    assert hook.stats["accepted"] == 1


def test_a_gitea_delivery_pokes(hook, pokes):
    # Gitea sends both signature forms; each one present must be right
    both = {**gitea(push_body(), "gt-1"), **github(push_body())}
    assert post(hook, push_body(), both)[0] == 202
    assert post(hook, push_body(1), gitea(push_body(1), "gt-2"))[0] == 202
    assert pokes.ids() == ["gt-1", "gt-2"]


def test_without_an_id_the_body_digest_is_the_id(hook, pokes):
    assert post(hook, push_body(), github(push_body()))[0] == 202
    assert pokes.ids() == ["sha256:" + hashlib.sha256(push_body()).hexdigest()]
    assert post(hook, push_body(), github(push_body()))[0] == 409


@pytest.mark.parametrize("headers", [
    github(push_body(), "x", secret=b"wrong secret"),
    github(push_body(1), "x"),                      # signed a different body
    {"X-Hub-Signature-256": "sha1=" + hmac.new(SECRET, push_body(), "sha1").hexdigest()},
    {"X-Hub-Signature-256": hmac.new(SECRET, push_body(), "sha256").hexdigest()},  # no prefix
    gitea(push_body(), "x", secret=b"wrong secret"),
    {**github(push_body()), **gitea(push_body(), secret=b"wrong")},  # one of two is wrong
], ids=["wrong-secret", "other-body", "sha1", "no-prefix", "gitea-wrong", "half-right"])
def test_a_bad_signature_is_refused(hook, pokes, headers):
    status, reason = post(hook, push_body(), headers)
    assert status == 403 and "signature" in reason
    assert pokes == [] and hook.stats["bad_signature"] == 1


def test_a_missing_signature_is_refused(hook, pokes):
    status, reason = post(hook, push_body(), {"X-GitHub-Delivery": "m-1"})
    assert status == 401 and "X-Hub-Signature-256" in reason
    assert pokes == [] and hook.stats["missing_signature"] == 1


def test_a_replay_is_refused(hook, pokes):
    assert post(hook, push_body(), github(push_body(), "r-1"))[0] == 202
    assert post(hook, push_body(), github(push_body(), "r-1"))[0] == 409
    # the id header is not signed: the same signed body under a fresh id is a replay too
    assert post(hook, push_body(), github(push_body(), "r-2"))[0] == 409
    assert post(hook, push_body(1), github(push_body(1), "r-1"))[0] == 409
    assert pokes.ids() == ["r-1"]
    assert hook.stats["replay"] == 3


def test_a_replay_is_refused_after_a_restart(tmp_path, pokes):
    seen = tmp_path / "state" / "seen.json"
    with WebhookServer("127.0.0.1:0", SECRET, pokes, seen) as first:
        assert post(first, push_body(), github(push_body(), "d-1"))[0] == 202
    with WebhookServer("127.0.0.1:0", SECRET, pokes, seen) as second:
        assert post(second, push_body(), github(push_body(), "d-1"))[0] == 409
        assert post(second, push_body(2), github(push_body(2), "d-2"))[0] == 202
    assert pokes.ids() == ["d-1", "d-2"]


def test_a_forged_delivery_does_not_burn_its_id(hook, pokes):
    assert post(hook, push_body(), github(push_body(), "f-1", secret=b"forger"))[0] == 403
    assert post(hook, push_body(), github(push_body(), "f-1"))[0] == 202
    assert pokes.ids() == ["f-1"]


def test_an_odd_delivery_id_is_refused(hook, pokes):
    assert post(hook, push_body(), github(push_body(), "x" * 200))[0] == 400
    assert post(hook, push_body(), github(push_body(), "a/../b"))[0] == 400
    assert pokes == []


def test_an_oversized_body_is_refused_without_reading_it(hook, pokes):
    head = (b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in github(b"").items()).encode() + b"\r\n")
    t0 = time.perf_counter()
    reply = raw(hook, head)  # not a byte of the 2 MB is sent: reading it would hang
    assert reply.startswith(b"HTTP/1.0 413")
    assert time.perf_counter() - t0 < within(1.0)
    assert pokes == [] and hook.stats["too_large"] == 1


def test_exactly_one_megabyte_is_accepted(hook, pokes):
    body = b"x" * webhook.MAX_BODY
    assert post(hook, body, github(body, "big-1"))[0] == 202


@pytest.mark.parametrize("head, status", [
    (b"Transfer-Encoding: chunked\r\n", b"411"),
    (b"", b"411"),                                   # no Content-Length at all
    (b"Content-Length: lots\r\n", b"400"),
    (b"Content-Length: -1\r\n", b"400"),
    (b"Content-Length: \xb2\r\n", b"400"),          # latin-1 superscript two: isdigit()
    (b"Content-Length: 5\r\nContent-Length: 5\r\n", b"400"),
], ids=["chunked", "no-length", "not-a-number", "negative", "superscript", "twice"])
def test_a_body_without_a_plain_length_is_refused(hook, pokes, head, status):
    body = b"5\r\nhello\r\n0\r\n\r\n" if b"chunked" in head else b""
    sig = "".join(f"{k}: {v}\r\n" for k, v in github(b"hello", "c-1").items()).encode()
    reply = raw(hook, b"POST / HTTP/1.1\r\nHost: x\r\n" + head + sig + b"\r\n" + body)
    assert reply.split(b" ")[1] == status
    assert pokes == []


def test_a_short_body_is_refused(hook, pokes, monkeypatch):
    monkeypatch.setattr(webhook._Handler, "timeout", 0.3)
    sig = "".join(f"{k}: {v}\r\n" for k, v in github(b"0123456789").items()).encode()
    with socket.create_connection(hook.address, timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n" + sig + b"\r\n01234")
        s.shutdown(socket.SHUT_WR)  # five bytes, then nothing more
        assert s.recv(4096).startswith(b"HTTP/1.0 400")
    assert pokes == []


def test_only_post(hook, pokes):
    conn = http.client.HTTPConnection(*hook.address, timeout=5)
    conn.request("GET", "/hook")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("Allow") == "POST"
    conn.close()
    assert pokes == []


def test_a_slow_sender_is_cut_off(hook, monkeypatch):
    """A byte every 0.1 s never trips the read timeout; the request deadline ends it."""
    monkeypatch.setattr(webhook, "REQUEST_DEADLINE", 0.5)
    with socket.create_connection(hook.address, timeout=5) as s:
        t0 = time.perf_counter()
        closed = False
        for byte in b"POST / HTTP/1.1\r\nX-Drip: " + b"a" * 100:
            try:
                s.sendall(bytes([byte]))
                time.sleep(0.1)
            except OSError:
                closed = True
                break
            s.setblocking(False)
            try:
                closed = s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed = True
            s.setblocking(True)
            if closed:
                break
        assert closed and time.perf_counter() - t0 < within(3.0)


def busy_or(server: WebhookServer) -> int:
    """The status of a good delivery; 503 also when the server hung up on it while busy (it
    answers a crowd without reading, so the client's send may hit a closed socket)."""
    try:
        return post(server, push_body(), github(push_body(), "after"))[0]
    except OSError:
        return 503


def test_a_crowd_gets_busy_replies_and_the_door_reopens(tmp_path, pokes, monkeypatch):
    monkeypatch.setattr(webhook._Handler, "timeout", 0.5)
    with WebhookServer("127.0.0.1:0", SECRET, pokes, max_handlers=2) as server:
        idle = [socket.create_connection(server.address) for _ in range(2)]  # say nothing
        time.sleep(0.1)
        assert raw(server, b"POST / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 503")
        assert server.stats["busy"] == 1
        # the idle ones time out after 0.5 s and free their slots (a 503 records nothing)
        deadline = time.monotonic() + 5
        while (status := busy_or(server)) == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 202 and pokes.ids() == ["after"]
        for s in idle:
            s.close()


def test_a_good_delivery_pokes_within_100ms(hook, pokes):
    latencies = []
    for n in range(20):
        body = push_body(n)
        t0 = time.perf_counter()
        assert post(hook, body, github(body, f"lat-{n}"))[0] == 202
        latencies.append(pokes[-1][1] - t0)
    p50 = statistics.median(latencies)
    print(f"\nwebhook: request sent -> on_delivery p50 {p50 * 1000:.2f} ms, "
          f"max {max(latencies) * 1000:.2f} ms over {len(latencies)}")
    assert p50 < 0.1


def test_a_failing_callback_is_a_500_and_the_server_lives_on(tmp_path):
    def broken(delivery: str) -> None:
        raise RuntimeError("daemon gone")

    with WebhookServer("127.0.0.1:0", SECRET, broken) as server:
        assert post(server, push_body(), github(push_body(), "e-1"))[0] == 500
        assert post(server, push_body(1), github(push_body(1), "e-2"))[0] == 500
        assert server.stats["callback_error"] == 2


def test_the_secret_and_the_body_are_never_logged(hook, caplog):
    caplog.set_level(logging.DEBUG, logger="janus_git.webhook")
    body = b'{"marker": "BODY-MARKER-123"}'
    post(hook, body, github(body, "log-1"))
    post(hook, body, github(body, "log-1"))
    post(hook, body, github(body, "log-2", secret=b"nope"))
    post(hook, body, {"X-GitHub-Delivery": "log-3"})
    post(hook, body, gitea(body, "log-4"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused" in text and "accepted" in text  # the refusals are logged...
    for needle in (SECRET.decode(), "BODY-MARKER-123",
                   hmac.new(SECRET, body, hashlib.sha256).hexdigest()):
        assert needle not in text                     # ...and nothing secret with them
    assert SECRET.decode() not in repr(hook) + repr(hook.stats)


def test_secret_from_env(monkeypatch):
    monkeypatch.setenv("JANUS_HOOK_SECRET", "abc")
    assert secret_from_env("JANUS_HOOK_SECRET") == b"abc"
    monkeypatch.setenv("JANUS_HOOK_SECRET", "")
    with pytest.raises(JanusError, match="JANUS_HOOK_SECRET"):
        secret_from_env("JANUS_HOOK_SECRET")
    monkeypatch.delenv("JANUS_HOOK_SECRET")
    with pytest.raises(JanusError, match="JANUS_HOOK_SECRET.*not set"):
        secret_from_env("JANUS_HOOK_SECRET")


def test_the_seen_set_is_bounded_and_saved(tmp_path):
    path = tmp_path / "seen.json"
    seen = SeenDeliveries(path, limit=3)
    for key in "abcde":
        assert seen.add_new([key])
    assert len(seen) == 3 and json.loads(path.read_text()) == ["c", "d", "e"]
    assert not seen.add_new(["c"])           # seen: refreshed, so "d" is now the oldest
    assert seen.add_new(["a"])                # long forgotten
    assert SeenDeliveries(path, limit=3)._keys.keys() == {"c", "e", "a"}


def test_a_broken_seen_file_is_a_clear_error(tmp_path):
    path = tmp_path / "seen.json"
    path.write_text("{not json")
    with pytest.raises(JanusError, match="seen.json.*remove it"):
        WebhookServer("127.0.0.1:0", SECRET, print, path)


def test_a_bad_listen_address_is_a_clear_error(hook):
    with pytest.raises(JanusError, match="not host:port"):
        WebhookServer("8080", SECRET, print).start()
    host, port = hook.address
    with pytest.raises(JanusError, match="cannot listen"):
        WebhookServer(f"{host}:{port}", SECRET, print).start()
    with pytest.raises(JanusError, match="secret is empty"):
        WebhookServer("127.0.0.1:0", b"", print)
