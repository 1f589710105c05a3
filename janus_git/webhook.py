"""The webhook receiver: a forge's push notification pokes the daemon to fetch at once.

A delivery is only a poke.  Nothing in its body is parsed or trusted: the receiver checks the
HMAC-SHA256 of the raw body under the shared secret (GitHub's `X-Hub-Signature-256: sha256=<hex>`
or Gitea's `X-Gitea-Signature: <hex>`), refuses a replay, and calls `on_delivery(delivery_id)`.
The worst a forged or replayed poke could do is make the daemon fetch, and the door is bounded
anyway (body size, read deadline, handler threads) so that nobody can pin it down.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from .errors import JanusError
from .util import atomic_write

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024          # GitHub caps its payloads at 25 MB; a poke needs none of it
SEEN_LIMIT = 10_000             # remembered delivery keys, oldest forgotten first
READ_TIMEOUT = 5.0              # seconds a single socket read may stall
REQUEST_DEADLINE = 10.0         # seconds a whole request may take, however it trickles in
MAX_HANDLERS = 16               # concurrent handler threads; more connections get a 503
# a delivery id is a GUID on both forges; anything else is not a header we want to store
DELIVERY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
STATS = ("accepted", "missing_signature", "bad_signature", "replay", "too_large",
         "length_required", "bad_request", "not_allowed", "busy", "callback_error")


def secret_from_env(name: str) -> bytes:
    """The webhook secret from the environment variable NAME (agent.yaml names the variable,
    never the secret itself, so the secret is never committed)."""
    value = os.environ.get(name, "")
    if not value:
        raise JanusError(f"webhook: the environment variable {name} that should hold the "
                         f"secret is not set or empty; set it in the daemon's environment "
                         f"(e.g. the service unit's EnvironmentFile)")
    return value.encode()


def parse_listen(listen: str) -> tuple[str, int]:
    """"host:port" (or "[v6]:port") -> (host, port); port 0 picks a free one."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise JanusError(f"webhook: listen {listen!r} is not host:port (e.g. 127.0.0.1:8787)")
    return host.strip("[]"), int(port)


def signature_ok(secret: bytes, body: bytes, headers) -> bool | None:
    """True when every signature header present matches BODY under SECRET, False when one does
    not, None when there is none.  Gitea sends both forms; both must then be right."""
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    github = headers.get("X-Hub-Signature-256")
    gitea = headers.get("X-Gitea-Signature")
    if github is None and gitea is None:
        return None
    ok = True
    if github is not None:
        ok &= hmac.compare_digest(github.strip().encode(), f"sha256={digest}".encode())
    if gitea is not None:
        ok &= hmac.compare_digest(gitea.strip().encode(), digest.encode())
    return bool(ok)


class SeenDeliveries:
    """The delivery keys already accepted: bounded (least recently seen dropped first) and
    saved after every change, so a restart does not reopen the replay window."""

    def __init__(self, path: Path | None, limit: int = SEEN_LIMIT) -> None:
        self.path = path
        self.limit = limit
        self._keys: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            keys = json.loads(path.read_bytes())
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ValueError("not a list of strings")
        except (OSError, ValueError) as exc:
            raise JanusError(f"webhook: cannot read the seen-deliveries file {path}: {exc}; "
                             f"remove it to start afresh") from exc
        for key in keys[-self.limit:]:
            self._keys[key] = None

    def add_new(self, keys: list[str]) -> bool:
        """Record KEYS and return True, unless one of them was seen already (then refresh it,
        record nothing new and return False)."""
        with self._lock:
            old = [k for k in keys if k in self._keys]
            for key in old:
                self._keys.move_to_end(key)
            if old:
                return False
            for key in keys:
                self._keys[key] = None
            while len(self._keys) > self.limit:
                self._keys.popitem(last=False)
            self._save()
            return True

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            atomic_write(self.path, json.dumps(list(self._keys)).encode())
        except OSError as exc:  # a poke still works; the replay window reopens on restart
            log.error("webhook: cannot save seen deliveries to %s: %s", self.path, exc)

    def __len__(self) -> int:
        return len(self._keys)


class _Refused(Exception):
    def __init__(self, status: int, stat: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.stat, self.reason = status, stat, reason


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    timeout = READ_TIMEOUT      # StreamRequestHandler puts it on the socket: no read waits forever
    server_version = "janus-git-webhook"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # READ_TIMEOUT bounds one read; a slowloris sending a byte every few seconds is cut
        # off by this whole-request deadline instead
        self._deadline = threading.Timer(REQUEST_DEADLINE, self._cut_off)
        self._deadline.daemon = True
        self._deadline.start()

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def _cut_off(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_POST(self) -> None:
        receiver = self.server.receiver
        try:
            body = self._read_body()
            delivery = receiver.check(body, self.headers)
        except _Refused as refusal:
            receiver.count(refusal.stat)
            log.warning("webhook: refused a delivery from %s: %s", self.client_address[0],
                        refusal.reason)
            return self._reply(refusal.status, refusal.reason)
        if not receiver.deliver(delivery):
            return self._reply(500, "accepted, but the daemon could not be poked")
        self._reply(202, "accepted")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _Refused(411, "length_required", "chunked bodies are refused; send a length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise _Refused(411, "length_required", "Content-Length is required")
        length = lengths[0].strip()
        # one plain ASCII number: "²".isdigit() is true, and two lengths invite smuggling
        if len(lengths) > 1 or not re.fullmatch(r"[0-9]{1,16}", length):
            raise _Refused(400, "bad_request", "Content-Length is not one plain number")
        if int(length) > MAX_BODY:  # refused before a byte of it is read
            raise _Refused(413, "too_large", f"body over {MAX_BODY} bytes")
        try:
            body = self.rfile.read(int(length))
        except OSError:
            raise _Refused(400, "bad_request", "body not received in time") from None
        if len(body) != int(length):
            raise _Refused(400, "bad_request", "body shorter than Content-Length")
        return body

    def _not_allowed(self) -> None:
        self.server.receiver.count("not_allowed")
        self._reply(405, "only POST", {"Allow": "POST"})

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def do_HEAD(self) -> None:
        self.server.receiver.count("not_allowed")
        self.send_response(405)
        self.send_header("Allow", "POST")
        self.end_headers()

    def _reply(self, status: int, reason: str, headers: dict | None = None) -> None:
        data = (reason + "\n").encode()
        try:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the sender went away; nothing to tell it
        self.close_connection = True

    def log_message(self, format: str, *args) -> None:
        # the request line and status only: never a header value or the body
        log.debug("webhook: %s %s", self.client_address[0], format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address, receiver: "WebhookServer", family: int) -> None:
        self.address_family = family
        self.receiver = receiver
        self._slots = threading.BoundedSemaphore(receiver.max_handlers)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        # a thread per connection, but only so many at once: the rest get a quick 503
        if not self._slots.acquire(blocking=False):
            self.receiver.count("busy")
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
                # closing over unread bytes sends a reset that can eat the 503: take what has
                # already arrived (one bounded, non-blocking read) before closing
                request.setblocking(False)
                request.recv(65536)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        # a sender cut off or gone mid-reply: worth a debug line, not a traceback on stderr
        log.debug("webhook: connection from %s ended badly", client_address[0], exc_info=True)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class WebhookServer:
    """Serve the webhook on LISTEN ("host:port"; port 0 picks a free one) in a daemon thread.

    A delivery with a good signature and a new id calls ON_DELIVERY(delivery_id) before the
    202 goes back; ON_DELIVERY must only poke (set an event), never fetch itself.  SEEN_PATH
    keeps the accepted delivery keys across restarts."""

    def __init__(self, listen: str, secret: bytes, on_delivery: Callable[[str], None],
                 seen_path: Path | None = None, *, max_handlers: int = MAX_HANDLERS,
                 replay_by_body: bool = True) -> None:
        if not secret:
            raise JanusError("webhook: the secret is empty; set a long random one")
        self.listen = listen
        self._secret = secret
        self.on_delivery = on_delivery
        self.seen = SeenDeliveries(seen_path)
        self.max_handlers = max_handlers
        # the signature covers the body, not the delivery-id header: without this a captured
        # delivery could be replayed under a fresh id
        self.replay_by_body = replay_by_body
        self._stats = dict.fromkeys(STATS, 0)
        self._stats_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"WebhookServer(listen={self.listen!r})"

    def start(self) -> "WebhookServer":
        host, port = parse_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._server = _Server((host, port), self, family)
        except OSError as exc:
            raise JanusError(f"webhook: cannot listen on {self.listen}: {exc.strerror or exc}; "
                             f"pick another address in remote.webhook.listen") from exc
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="janus-webhook", daemon=True)
        self._thread.start()
        log.info("webhook: listening on %s:%d", *self.address)
        return self

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise JanusError("webhook: not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def __enter__(self) -> "WebhookServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self._stats, seen=len(self.seen))

    def count(self, stat: str) -> None:
        with self._stats_lock:
            self._stats[stat] += 1

    def check(self, body: bytes, headers) -> str:
        """The delivery id of a signed, new delivery; _Refused otherwise.  The id is recorded
        only after the signature checks out, so nobody without the secret can burn ids."""
        verdict = signature_ok(self._secret, body, headers)
        if verdict is None:
            raise _Refused(401, "missing_signature", "no X-Hub-Signature-256 or "
                           "X-Gitea-Signature header")
        if not verdict:
            raise _Refused(403, "bad_signature", "signature does not match")
        body_key = "sha256:" + hashlib.sha256(body).hexdigest()
        given = headers.get("X-GitHub-Delivery") or headers.get("X-Gitea-Delivery")
        if given is not None and not DELIVERY_ID.fullmatch(given.strip()):
            raise _Refused(400, "bad_request", "delivery id is not a plain id")
        delivery = given.strip() if given else body_key
        keys = [delivery]
        if self.replay_by_body and body_key != delivery:
            keys.append(body_key)
        if not self.seen.add_new(keys):
            raise _Refused(409, "replay", f"delivery {delivery} was seen already")
        return delivery

    def deliver(self, delivery: str) -> bool:
        try:
            self.on_delivery(delivery)
        except Exception:
            self.count("callback_error")
            log.exception("webhook: on_delivery failed for delivery %s", delivery)
            return False
        self.count("accepted")
        log.info("webhook: accepted delivery %s", delivery)
        return True
