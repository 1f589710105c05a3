"""file_chunker: 5,000-line chunks of a file inside the repository, and nothing outside it."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml

from janus_git import tools
from janus_git.audit import validate_line
from janus_git.config import config_from_text
from janus_git.lifecycle import new_proposal
from janus_git.tools import ToolRefused
from janus_git.tools.file_chunker import CHUNK_LINES

PROJECT = Path(__file__).resolve().parent.parent


def config(output_kb: int = 256):
    data = yaml.safe_load((PROJECT / "state" / "agent.yaml").read_text())
    data["limits"]["output_kb"] = output_kb
    return config_from_text(yaml.safe_dump(data))


def chunker(args):
    return new_proposal(mission="M-TEST", type_="process_chunk", tool="file_chunker",
                        args=args, rationale="test", created_by="test")


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    lines = "".join(f"line {i}\n" for i in range(1, 12_001))
    (root / "docs" / "book.txt").write_text(lines)
    (root / "docs" / "short.txt").write_text("one\ntwo\nthree")  # no final newline
    (root / "docs" / "empty.txt").write_text("")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[remote]\n\turl = https://token@example.com\n")
    os.symlink("/etc", root / "etc-link")
    os.symlink("/etc/passwd", root / "docs" / "passwd")
    os.symlink("book.txt", root / "docs" / "book-link.txt")
    os.mkfifo(root / "docs" / "fifo")
    return root


@pytest.mark.parametrize("chunk,first,last", [(1, 1, 5000), (2, 5001, 10000), (3, 10001, 12000)])
def test_chunks_of_5000_lines(repo, chunk, first, last):
    p = chunker({"path": "docs/book.txt", "chunk": chunk})
    tools.check(p, config(), repo)
    res = tools.execute(p, config(), repo)
    assert res.status == "succeeded" and res.isolation == "in-process" and res.exit_code == 0
    header, *body = res.output.decode().splitlines()
    assert header == f"chunk {chunk} of 3: docs/book.txt lines {first}-{last} of 12000"
    assert body == [f"line {i}" for i in range(first, last + 1)]
    assert CHUNK_LINES == 5000
    validate_line(tools.tool_use_line(p, res))


def test_a_chunk_past_the_end_fails_and_says_how_many_there_are(repo):
    res = tools.execute(chunker({"path": "docs/book.txt", "chunk": 4}), config(), repo)
    assert res.status == "failed"
    assert res.error == "chunk 4 of 3 does not exist (docs/book.txt has 12000 lines)"


def test_last_line_without_newline_and_empty_file(repo):
    res = tools.execute(chunker({"path": "docs/short.txt"}), config(), repo)
    assert res.output == b"chunk 1 of 1: docs/short.txt lines 1-3 of 3\none\ntwo\nthree"
    res = tools.execute(chunker({"path": "docs/empty.txt", "chunk": 1}), config(), repo)
    assert res.status == "succeeded" and res.output.startswith(b"chunk 1 of 1:")


def test_a_symlink_inside_the_repository_is_followed(repo):
    res = tools.execute(chunker({"path": "docs/book-link.txt", "chunk": 3}), config(), repo)
    assert res.status == "succeeded" and res.output.endswith(b"line 12000\n")


ESCAPES = [
    ({"path": "../../etc/shadow"}, "climbs out with '..'"),
    ({"path": "docs/../../../etc/shadow"}, "climbs out with '..'"),
    ({"path": "/etc/shadow"}, "absolute path"),
    ({"path": "/dev/zero"}, "absolute path"),
    ({"path": "~/.ssh/id_rsa"}, "home-relative path"),
    ({"path": "etc-link/shadow"}, "through a symlink"),
    ({"path": "etc-link/passwd"}, "through a symlink"),
    ({"path": "docs/passwd"}, "through a symlink"),
    ({"path": ".git/config"}, "reaches into .git"),
    ({"path": "docs/fifo"}, "not a file in the repository"),
    ({"path": "docs"}, "not a file in the repository"),
    ({"path": "docs/missing.txt"}, "not a file in the repository"),
    ({"path": "docs/a\x00b"}, "NUL"),
    ({"path": ""}, "path must be a file"),
    ({"path": 7}, "path must be a file"),
    ({"path": "docs/book.txt", "chunk": 0}, "chunk must be a whole number"),
    ({"path": "docs/book.txt", "chunk": "1"}, "chunk must be a whole number"),
    ({"path": "docs/book.txt", "chunk": True}, "chunk must be a whole number"),
    ({"path": "docs/book.txt", "mode": "w"}, "unknown argument 'mode'"),
    (["docs/book.txt"], "args must be a mapping"),
]


@pytest.mark.parametrize("args,reason", ESCAPES, ids=[repr(a)[:40] for a, _ in ESCAPES])
def test_escapes_and_bad_args_are_refused(repo, args, reason):
    p = chunker(args)
    with pytest.raises(ToolRefused) as exc:
        tools.check(p, config(), repo)
    assert reason in str(exc.value) and str(exc.value).startswith("file_chunker: ")
    res = tools.execute(p, config(), repo)
    assert res.status == "failed" and res.output == b"" and reason in res.error
    validate_line(tools.tool_use_line(p, res))


def test_a_fifo_that_passed_check_is_still_not_opened(repo):
    """Swapped in after the check: execute opens non-blocking and refuses non-files."""
    (repo / "docs" / "later.txt").write_text("x\n")
    p = chunker({"path": "docs/later.txt"})
    tools.check(p, config(), repo)
    (repo / "docs" / "later.txt").unlink()
    os.mkfifo(repo / "docs" / "later.txt")
    res = tools.execute(p, config(), repo)
    assert res.status == "failed" and "not a file" in res.error


def test_a_symlink_swapped_in_after_check_is_refused(repo):
    (repo / "notes").mkdir()
    (repo / "notes" / "n.txt").write_text("x\n")
    p = chunker({"path": "notes/n.txt"})
    tools.check(p, config(), repo)
    (repo / "notes" / "n.txt").unlink()
    (repo / "notes").rmdir()
    os.symlink("/etc", repo / "notes")
    res = tools.execute(p, config(), repo)
    assert res.status == "failed" and "through a symlink" in res.error


def test_a_1gb_single_line_file_costs_only_the_output_limit(repo):
    big = repo / "docs" / "huge.bin"
    with open(big, "wb") as f:
        f.truncate(1 << 30)  # sparse: a gigabyte of zeros and no newline
    res = tools.execute(chunker({"path": "docs/huge.bin"}), config(output_kb=64), repo)
    assert res.status == "succeeded"
    assert len(res.output) < 64 * 1024 + 200
    assert res.output.endswith(b"[janus-git: output truncated at 64 KiB; "
                               + str((1 << 30) - 65536).encode() + b" bytes dropped]\n")
    assert res.output_bytes == 1 << 30


def test_cancel_stops_a_long_read(repo):
    big = repo / "docs" / "huge.bin"
    with open(big, "wb") as f:
        f.truncate(1 << 30)
    cancel = threading.Event()
    cancel.set()
    started = []
    res = tools.execute(chunker({"path": "docs/huge.bin"}), config(), repo, cancel=cancel,
                        on_start=started.append)
    assert res.status == "failed" and res.limit_hit == "cancelled" and started == [os.getpid()]
