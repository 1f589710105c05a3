"""Landlock in the reduced sandbox, for real: the kernel's Landlock, real sockets, real
signals.  Each case also runs without Landlock to show the test can see the difference."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from janus_git import sandbox
from janus_git.sandbox import NOBODY, confine

pytestmark = pytest.mark.skipif(not confine.available(), reason="no Landlock in this kernel")
CONFINE = [sys.executable, "-I", "-S", confine.__file__]
SMALL = {"memory_mb": 512, "timeout_s": 20, "pids": 32, "output_kb": 64}


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository the run's uid could write, were it not for Landlock."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "docs" / "a.txt").write_text("hello\n")
    (root / ".git" / "config").write_text("[remote] url = https://token@example\n")
    for path in (tmp_path, root, root / "docs", root / ".git", root / "docs" / "a.txt",
                 root / ".git" / "config"):
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
    return root


def reduced(argv, repo, monkeypatch, landlock: bool, **kw) -> sandbox.SandboxResult:
    if not landlock:
        monkeypatch.setenv("JANUS_GIT_NO_LANDLOCK", "1")
    res = sandbox.run(argv, SMALL, repo, isolation="reduced", **kw)
    monkeypatch.delenv("JANUS_GIT_NO_LANDLOCK", raising=False)
    assert res.landlock == landlock
    return res


SCRIPT = ("cat docs/a.txt; echo x > docs/new && echo WROTE-REPO; "
          "cat .git/config && echo READ-GIT; echo y > /tmp/janus-confine-$$ && echo WROTE-TMP; "
          "echo z > $TMPDIR/ok && echo WROTE-SCRATCH; rm -f /tmp/janus-confine-$$")


def test_a_reduced_run_reads_the_repo_writes_only_its_scratch(repo, monkeypatch):
    res = reduced(["sh", "-c", SCRIPT], repo, monkeypatch, landlock=True)
    out = res.output.decode()
    assert "hello" in out and "WROTE-SCRATCH" in out
    assert "WROTE-REPO" not in out and "READ-GIT" not in out and "WROTE-TMP" not in out
    assert not (repo / "docs" / "new").exists()
    # the same run without Landlock: the uid alone does not stop it here
    res = reduced(["sh", "-c", SCRIPT], repo, monkeypatch, landlock=False)
    out = res.output.decode()
    assert "WROTE-REPO" in out and "READ-GIT" in out and "WROTE-TMP" in out


def test_python_tools_still_run_confined(repo, monkeypatch):
    # the system's python3: as root the run is uid 65534, which cannot reach an interpreter
    # under a 0700 home such as root's /root/.pyenv, Landlock or not
    code = "import json, sys; print(json.dumps({'ok': sys.version_info[0]}))"
    res = reduced(["python3", "-c", code], repo, monkeypatch, landlock=True,
                  ro_binds=sandbox.python_binds())
    assert res.ok and res.output == b'{"ok": 3}\n', res.output


def test_tcp_is_refused_unless_the_tool_declares_network(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    code = (f"import socket; print('STARTED', flush=True); "
            f"socket.create_connection(('127.0.0.1', {port}), 2); print('CONNECTED')")
    # the interpreter and, in a virtualenv, its pyvenv.cfg
    python = ["--exec", sys.base_prefix, "--exec", sys.prefix]
    try:
        denied = subprocess.run([*CONFINE, "--write", str(tmp_path), *python, "--no-net", "--",
                                 sys.executable, "-I", "-c", code],
                                capture_output=True, text=True, timeout=30)
        allowed = subprocess.run([*CONFINE, "--write", str(tmp_path), *python, "--",
                                  sys.executable, "-I", "-c", code],
                                 capture_output=True, text=True, timeout=30)
    finally:
        server.close()
    if confine.abi() >= 4:
        assert "STARTED" in denied.stdout, denied.stderr  # it ran; only the connect failed
        assert "PermissionError" in denied.stderr and "CONNECTED" not in denied.stdout
    assert "CONNECTED" in allowed.stdout, allowed.stderr


def test_no_signal_leaves_the_confined_process(tmp_path):
    me = os.getpid()
    argv = ["sh", "-c", f"kill -0 {me} && echo SIGNALLED"]
    confined = subprocess.run([*CONFINE, "--", *argv], capture_output=True, text=True)
    free = subprocess.run(argv, capture_output=True, text=True)
    if confine.abi() >= 6:
        assert "SIGNALLED" not in confined.stdout
    assert "SIGNALLED" in free.stdout


def test_bad_arguments_and_missing_programs_fail_clearly():
    r = subprocess.run([*CONFINE, "--bogus", "x", "--", "true"], capture_output=True, text=True)
    assert r.returncode == 126 and "bad argument '--bogus'" in r.stderr
    r = subprocess.run([*CONFINE, "--", "no-such-program-xyz"], capture_output=True, text=True)
    assert r.returncode == 127 and "command not found" in r.stderr


def test_doctor_names_landlock():
    d = sandbox.doctor()
    assert d["landlock"] is True
    assert os.geteuid() != 0 or d["run_as_uid"] == NOBODY


@pytest.fixture
def outside():
    """A directory uid 65534 can reach (pytest's own temp dirs sit under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="janus-test-outside-"))
    os.chmod(path, 0o755)
    (path / "secret").write_text("outside secret\n")
    os.chmod(path / "secret", 0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_symlink_in_the_repository_lends_its_target_nothing(repo, monkeypatch, outside):
    (repo / "gitlink").symlink_to(".git")
    (repo / "out").symlink_to(outside)
    (repo / "readme").symlink_to("docs/a.txt")  # inside the repository: still readable
    res = reduced(["sh", "-c", "cat gitlink/config; cat out/secret; cat readme"], repo,
                  monkeypatch, landlock=True)
    out = res.output.decode()
    assert "token" not in out and "outside secret" not in out and "hello" in out, out
    res = reduced(["sh", "-c", "cat gitlink/config; cat out/secret"], repo, monkeypatch,
                  landlock=False)
    assert "token" in res.output.decode() and "outside secret" in res.output.decode()


def test_no_unix_socket_without_the_network(repo, monkeypatch, outside):
    sockdir = outside
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sockdir / "s"))
    os.chmod(sockdir / "s", 0o777)
    server.listen()
    code = (f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(sockdir / 's')!r});"
            " print('CONNECTED')")
    try:
        denied = reduced(["python3", "-c", code], repo, monkeypatch, landlock=True)
        allowed = reduced(["python3", "-c", code], repo, monkeypatch, landlock=True,
                          network=True)
        pair = reduced(["python3", "-c", "import socket; socket.socketpair(); print('PAIR')"],
                       repo, monkeypatch, landlock=True)
    finally:
        server.close()
    assert b"CONNECTED" not in denied.output and b"PermissionError" in denied.output
    assert b"CONNECTED" in allowed.output, allowed.output
    assert pair.output == b"PAIR\n"


def test_programs_in_the_repository_can_run(repo, monkeypatch):
    script = repo / "docs" / "run.sh"
    script.write_text("#!/bin/sh\necho RAN\n")
    os.chmod(script, 0o755)
    res = reduced(["./docs/run.sh"], repo, monkeypatch, landlock=True)
    assert res.ok and res.output == b"RAN\n", res.output
