"""The test remotes themselves: a real `git daemon` and a real smart-HTTP host on 127.0.0.1,
each cloned, pushed to and fetched from with real git; the server refuses a stale push (the
compare-and-swap the daemons rely on), and of two racing pushers exactly one lands."""
from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from pathlib import Path

import pytest

from conftest import git, within
from remotekit import (  # noqa: F401
    GitDaemonRemote,
    HttpRemote,
    any_remote,
    clone,
    git_daemon_remote,
    http_remote,
    seed_remote,
)


def commit_file(repo: Path, name: str, text: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", f"{name}: {text[:20]}")
    return git(repo, "rev-parse", "HEAD").stdout.strip()


def remote_head(remote) -> str:
    return git(remote.path, "rev-parse", f"refs/heads/{remote.branch}").stdout.strip()


@pytest.fixture
def seeded(any_remote, tmp_path):
    """ANY_REMOTE holding one commit, pushed from a local repository."""
    src = tmp_path / "src"
    git(tmp_path, "init", "-q", "-b", "main", str(src))
    commit_file(src, "README", "seed\n")
    seed_remote(any_remote, src)
    return any_remote


def test_seed_clone_push_and_fetch(seeded, tmp_path):
    alice = clone(seeded, tmp_path / "alice")
    bob = clone(seeded.url, tmp_path / "bob")
    assert (bob / "README").read_text() == "seed\n"
    head = commit_file(alice, "note.txt", "from alice\n")
    git(alice, "push", "-q")
    assert remote_head(seeded) == head
    git(bob, "pull", "-q", "--ff-only")
    assert (bob / "note.txt").read_text() == "from alice\n"
    assert git(seeded.path, "fsck", "--strict").returncode == 0


def test_a_stale_push_is_refused_even_forced(seeded, tmp_path):
    alice = clone(seeded, tmp_path / "alice")
    bob = clone(seeded, tmp_path / "bob")
    won = commit_file(alice, "a.txt", "alice\n")
    git(alice, "push", "-q")
    commit_file(bob, "b.txt", "bob\n")
    plain = git(bob, "push", check=False)
    assert plain.returncode != 0 and "rejected" in plain.stderr
    # --force skips the client's own check: the server's denyNonFastForwards is the CAS
    forced = git(bob, "push", "--force", check=False)
    assert forced.returncode != 0
    assert "non-fast-forward" in forced.stderr or "denying" in forced.stderr
    assert remote_head(seeded) == won


def test_of_two_racing_pushers_exactly_one_lands(seeded, tmp_path):
    clones = [clone(seeded, tmp_path / f"c{i}") for i in range(2)]
    for round_ in range(4):
        for repo in clones:  # both start from the same remote tip
            git(repo, "fetch", "-q")
            git(repo, "reset", "-q", "--hard", "origin/main")
        heads = [commit_file(repo, f"r{round_}-{i}.txt", f"{i}\n")
                 for i, repo in enumerate(clones)]
        start = threading.Barrier(2)
        results: list = [None, None]

        def push(i: int) -> None:
            start.wait()
            results[i] = git(clones[i], "push", "--force", "origin", "HEAD:main", check=False)

        threads = [threading.Thread(target=push, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        landed = [i for i, out in enumerate(results) if out.returncode == 0]
        assert len(landed) == 1, [r.stderr for r in results]
        assert remote_head(seeded) == heads[landed[0]]


def test_a_push_that_outgrows_the_post_buffer_still_lands(seeded, tmp_path):
    """Over http.postBuffer (1 MiB) git sends a chunked body; the HTTP host must take it."""
    alice = clone(seeded, tmp_path / "alice")
    (alice / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    git(alice, "add", "big.bin")
    git(alice, "commit", "-q", "-m", "big")
    git(alice, "push", "-q")
    bob = clone(seeded, tmp_path / "bob")
    assert (bob / "big.bin").read_bytes() == (alice / "big.bin").read_bytes()


def test_push_round_trip(seeded, tmp_path):
    """Informational: how long one small push takes against this kind of remote."""
    alice = clone(seeded, tmp_path / "alice")
    times = []
    for i in range(12):
        commit_file(alice, "counter.txt", f"{i}\n")
        t0 = time.perf_counter()
        git(alice, "push", "-q")
        times.append(time.perf_counter() - t0)
    p50 = statistics.median(times)
    print(f"\n{seeded.scheme} push round trip: p50 {p50 * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms over {len(times)}")
    assert p50 < within(2.0)


def test_the_server_logs_and_stops(any_remote):
    git(any_remote.path, "status", check=False)  # the bare repo exists
    host_port = ("127.0.0.1", any_remote.port)
    socket.create_connection(host_port, timeout=2).close()
    any_remote.stop()
    any_remote.stop()  # twice is fine
    assert any_remote.proc.poll() is not None
    with pytest.raises(OSError):
        socket.create_connection(host_port, timeout=2).close()
    assert any_remote.log_path.exists()


def test_plain_helpers_without_fixtures(tmp_path):
    """The classes work as context managers outside pytest's fixtures (for bench/)."""
    with GitDaemonRemote(tmp_path / "g") as g, HttpRemote(tmp_path / "h", name="x.git") as h:
        assert g.url.startswith("git://127.0.0.1:") and g.url.endswith("/state.git")
        assert h.url.startswith("http://127.0.0.1:") and h.url.endswith("/x.git")
        for remote in (g, h):
            assert git(tmp_path, "ls-remote", remote.url).returncode == 0
    assert g.proc.poll() is not None and h.proc.poll() is not None


def test_the_fixtures_by_name(git_daemon_remote, http_remote):
    assert isinstance(git_daemon_remote, GitDaemonRemote)
    assert isinstance(http_remote, HttpRemote)
    assert git_daemon_remote.port != http_remote.port
