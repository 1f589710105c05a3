"""Real git remotes on 127.0.0.1 for tests: a bare repository served by `git daemon`
(`GitDaemonRemote`, git://) or by `git http-backend` behind a tiny CGI host (`HttpRemote`,
smart HTTP).  Both are plain helpers (context managers) and pytest fixtures
(`git_daemon_remote`, `http_remote`, and `any_remote`, which runs a test once per kind).

The bare repositories refuse non-fast-forward pushes (receive.denyNonFastForwards), so a push
from a stale clone is refused by the server: that refusal is the compare-and-swap the daemons
coordinate with.  Each server runs in its own process group and logs to a file beside the
repositories (`.log_path`), and is killed when the test ends, whether it passed or not.

Run as a script (`python remotekit.py --serve-http ROOT`) this file is the CGI host itself.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

START_TIMEOUT = 10.0


def _git(cwd: Path | None, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(["git", *args], cwd=cwd, text=True, capture_output=True)
    if out.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({out.returncode}):\n"
                             f"{out.stdout}{out.stderr}")
    return out


def make_bare(path: Path, branch: str = "main") -> Path:
    """An empty bare repository that refuses non-fast-forward pushes and accepts pushes over
    smart HTTP too."""
    _git(None, "init", "-q", "--bare", "-b", branch, str(path))
    _git(path, "config", "receive.denyNonFastForwards", "true")
    _git(path, "config", "http.receivepack", "true")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(proc: subprocess.Popen) -> None:
    """End the server and whatever it forked (git daemon forks one child per connection)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


class _Remote:
    """What both kinds share: a bare repository under BASE_DIR/repos, a server process, a log,
    and a stop that runs even if the test forgets (weakref.finalize also runs at exit)."""

    scheme = ""

    def __init__(self, base_dir: Path, name: str = "state.git", branch: str = "main") -> None:
        self.base_dir = Path(base_dir)
        self.root = self.base_dir / "repos"
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.branch = branch
        self.path = make_bare(self.root / name, branch)
        self.log_path = self.base_dir / f"{self.scheme}-server.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{self.name}"

    def _watch(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._finalizer = weakref.finalize(self, _kill_group, proc)

    def stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs _kill_group once, however often stop is called

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url})"


class GitDaemonRemote(_Remote):
    """A bare repository served by `git daemon` with receive-pack enabled: git://."""

    scheme = "git"

    def __init__(self, base_dir: Path, name: str = "state.git", branch: str = "main") -> None:
        super().__init__(base_dir, name, branch)
        # git daemon needs a port number up front; another process may take it between
        # free_port() and the bind, so a failed start tries another
        for _ in range(5):
            if self._start(free_port()):
                return
        raise AssertionError(f"git daemon did not start:\n{self.log()}")

    def _start(self, port: int) -> bool:
        mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                ["git", "daemon", "--reuseaddr", f"--base-path={self.root}", "--export-all",
                 "--enable=receive-pack", "--informative-errors", "--verbose",
                 "--listen=127.0.0.1", f"--port={port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            # --verbose logs this once the socket listens: a connect alone could reach
            # whoever else took the port
            if "Ready to rumble" in self.log()[mark:]:
                self.port = port
                self._watch(proc)
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.02)
        _kill_group(proc)
        return False


class HttpRemote(_Remote):
    """A bare repository served over smart HTTP by `git http-backend` as CGI, from a small
    host (this file run as a script) in its own process: http://."""

    scheme = "http"

    def __init__(self, base_dir: Path, name: str = "state.git", branch: str = "main") -> None:
        super().__init__(base_dir, name, branch)
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve-http", str(self.root)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True)
        self._watch(proc)
        self.port = self._read_port(proc)

    def _read_port(self, proc: subprocess.Popen) -> int:
        """The host binds port 0 and prints the port it got: no race for a free port."""
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        line = proc.stdout.readline().decode() if ready else ""
        if not line.strip().isdigit():
            self.stop()
            raise AssertionError(f"the HTTP git host did not start:\n{self.log()}")
        return int(line)


# -- helpers ------------------------------------------------------------------------------

def seed_remote(remote, source_repo: Path, branch: str = "main") -> None:
    """Push SOURCE_REPO's BRANCH to the (empty) REMOTE (a remote object or a URL)."""
    url = getattr(remote, "url", remote)
    _git(Path(source_repo), "push", "-q", url, f"{branch}:refs/heads/{branch}")


def clone(remote_url, dest: Path) -> Path:
    """Clone REMOTE_URL (or a remote object) into DEST; returns DEST."""
    url = getattr(remote_url, "url", remote_url)
    _git(None, "clone", "-q", url, str(dest))
    return Path(dest)


# -- pytest fixtures ----------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the CGI host runs without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def git_daemon_remote(tmp_path):
        with GitDaemonRemote(tmp_path / "git-daemon") as remote:
            yield remote

    @pytest.fixture
    def http_remote(tmp_path):
        with HttpRemote(tmp_path / "http") as remote:
            yield remote

    @pytest.fixture(params=["git", "http"])
    def any_remote(request, tmp_path):
        kind = GitDaemonRemote if request.param == "git" else HttpRemote
        with kind(tmp_path / f"remote-{request.param}") as remote:
            yield remote


# -- the CGI host for git http-backend ----------------------------------------------------

def _dechunk(rfile) -> bytes:
    """A chunked request body, whole (git sends one chunked when it outgrows
    http.postBuffer); http-backend wants a CONTENT_LENGTH."""
    parts = []
    while True:
        size = int(rfile.readline().split(b";")[0].strip(), 16)
        if size == 0:
            while rfile.readline().strip():  # trailers
                pass
            return b"".join(parts)
        parts.append(rfile.read(size))
        rfile.readline()


def _split_cgi(out: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """A CGI response -> status, headers, body."""
    ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := out.find(sep)) >= 0]
    if not ends:
        return 502, [], b"bad CGI response\n"
    end, width = min(ends)
    head, body = out[:end], out[end + width:]
    status, headers = 200, []
    for line in head.decode("latin-1").splitlines():
        key, _, value = line.partition(":")
        if key.lower() == "status":
            status = int(value.split()[0])
        else:
            headers.append((key.strip(), value.strip()))
    return status, headers, body


class _CgiHandler(BaseHTTPRequestHandler):
    root = ""

    def do_GET(self) -> None:
        self._cgi(b"")

    def do_POST(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = _dechunk(self.rfile)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._cgi(body)

    def _cgi(self, body: bytes) -> None:
        path, _, query = self.path.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=self.root, GIT_HTTP_EXPORT_ALL="1",
                   GATEWAY_INTERFACE="CGI/1.1", SERVER_PROTOCOL=self.request_version,
                   REQUEST_METHOD=self.command, PATH_INFO=path, QUERY_STRING=query,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), REMOTE_ADDR=self.client_address[0],
                   REMOTE_USER="tester")  # a user makes http-backend allow receive-pack
        for key, value in self.headers.items():  # Git-Protocol, Content-Encoding (gzip)...
            env["HTTP_" + key.upper().replace("-", "_")] = value
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True)
        sys.stderr.buffer.write(out.stderr)
        status, headers, payload = _split_cgi(out.stdout)
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {format % args}\n")
        sys.stderr.flush()


def serve_http(root: str) -> None:
    _CgiHandler.root = root
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CgiHandler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__" and sys.argv[1:2] == ["--serve-http"]:
    serve_http(sys.argv[2])


from janus_git.daemon.remote.replay import Replaying  # noqa: E402 (not for --serve-http)


class GitPublisher(Replaying):
    """The part of daemon/remote/sync.py that gitrepo calls (a Publisher), as plain git
    against a clone's `origin`: for tests of the commit path alone (tests/test_replay.py)."""

    def __init__(self, root: Path, branch: str = "main") -> None:
        self.root, self.branch = Path(root), branch
        self.pushes = self.refused = self.replays = 0

    def publish(self, sha: str, old: str | None) -> None:
        from janus_git.errors import Conflict
        out = subprocess.run(["git", "push", "--porcelain", "-q", "origin",
                              f"{sha}:refs/heads/{self.branch}"], cwd=self.root, text=True,
                             capture_output=True)
        if out.returncode != 0:
            self.refused += 1
            raise Conflict(f"the remote moved on ({out.stderr.strip()[-120:]})")
        self.pushes += 1

    def publish_ref(self, ref: str, sha: str | None) -> None:
        _git(self.root, "push", "-q", "origin", f"{sha or ''}:{ref}")

    def tip(self) -> str | None:
        _git(self.root, "fetch", "-q", "origin", f"+refs/heads/{self.branch}:"
             f"refs/remotes/origin/{self.branch}")
        return _git(self.root, "rev-parse", f"origin/{self.branch}").stdout.strip()

    def replayed(self) -> None:
        self.replays += 1


FORGE_HOOK = r'''#!{python} -S
"""post-receive: what a forge does after a push to a branch: a signed delivery to each
webhook (GitHub's X-Hub-Signature-256), sent after the push has returned."""
import hashlib, hmac, json, os, sys, urllib.request
refs = [line.split()[2] for line in sys.stdin.read().splitlines() if line.strip()]
branches = [r for r in refs if r.startswith("refs/heads/")]
if not branches or os.fork():
    sys.exit(0)  # the pusher does not wait for the deliveries
os.setsid()
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
body = json.dumps({{"ref": branches[0]}}).encode()
sig = "sha256=" + hmac.new({secret!r}, body, hashlib.sha256).hexdigest()
for url in {urls!r}:
    req = urllib.request.Request(url, data=body, method="POST", headers={{
        "X-Hub-Signature-256": sig, "X-GitHub-Delivery": os.urandom(8).hex()}})
    try:
        urllib.request.urlopen(req, timeout=5).read()
    except OSError:
        pass
'''


def forge_webhooks(bare: Path, urls: list[str], secret: bytes) -> None:
    """Make BARE deliver a forge's webhook to URLS after every push to a branch."""
    hook = Path(bare) / "hooks" / "post-receive"
    hook.write_text(FORGE_HOOK.format(python=sys.executable, secret=secret, urls=urls))
    hook.chmod(0o755)
