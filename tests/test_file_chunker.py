"""file_chunker: 5,000-line chunks of a file committed in the repository, read as git's blob
of HEAD's tree, and nothing else: not the working tree, not .git, not a symlink's target."""
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

from conftest import git

PROJECT = Path(__file__).resolve().parent.parent
TOKEN = "ghp_SECRETTOKEN1234"  # what a forge token in the remote URL looks like


def config(output_kb: int = 256):
    data = yaml.safe_load((PROJECT / "state" / "agent.yaml").read_text())
    data["limits"]["output_kb"] = output_kb
    return config_from_text(yaml.safe_dump(data))


def chunker(args, tool="file_chunker"):
    return new_proposal(mission="M-TEST", type_="process_chunk", tool=tool,
                        args=args, rationale="test", created_by="test")


def commit(root: Path, message: str = "files") -> None:
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A real repository whose remote URL carries a token, with hostile symlinks committed."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    git(root, "init", "-q")
    git(root, "remote", "add", "origin", f"https://x-access-token:{TOKEN}@forge.example/s.git")
    lines = "".join(f"line {i}\n" for i in range(1, 12_001))
    (root / "docs" / "book.txt").write_text(lines)
    (root / "docs" / "short.txt").write_text("one\ntwo\nthree")  # no final newline
    (root / "docs" / "empty.txt").write_text("")
    (root / "notes").mkdir()
    os.symlink("../.git", root / "notes" / "g")       # the attack of issue 21
    os.symlink("/etc", root / "etc-link")
    os.symlink("/etc/passwd", root / "docs" / "passwd")
    os.symlink("book.txt", root / "docs" / "book-link.txt")
    commit(root)
    os.mkfifo(root / "docs" / "fifo")  # (git cannot commit one: it stays in the working tree)
    (root / "docs" / "draft.txt").write_text("not committed\n")
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


def test_the_committed_content_is_read_not_the_working_tree(repo):
    """An uncommitted edit is not what was reviewed or what anyone can see in the history."""
    (repo / "docs" / "short.txt").write_text("changed\n")
    res = tools.execute(chunker({"path": "docs/short.txt"}), config(), repo)
    assert res.output == b"chunk 1 of 1: docs/short.txt lines 1-3 of 3\none\ntwo\nthree"


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
    ({"path": "notes/g/config"}, "into .git"),
    ({"path": "notes/g"}, "into .git"),
    ({"path": "docs/book-link.txt"}, "is a symlink"),
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


@pytest.mark.parametrize("tool", ["file_chunker", "process_chunk"])
def test_a_committed_symlink_to_git_leaks_no_token(repo, tool):
    """Issue 21: `notes/g -> ../.git` committed, then `notes/g/config` asked for.  The run
    fails with the reason and nothing of .git/config is in its output or its files."""
    p = chunker({"path": "notes/g/config", "chunk": 1}, tool=tool)
    res = tools.execute(p, config(), repo)
    assert res.status == "failed" and "into .git" in res.error
    assert TOKEN.encode() not in res.output + b"".join(v or b"" for v in res.files.values())
    validate_line(tools.tool_use_line(p, res))


def test_the_run_reads_head_never_what_the_working_tree_holds_meanwhile(repo):
    """A FIFO or a symlink put in the working tree after the check: the run's own check
    refuses it, and the reading itself (the runner, called directly) never opens the working
    tree's FIFO: it reads HEAD's blob."""
    from janus_git.tools import file_chunker
    (repo / "notes" / "n.txt").write_text("x\n")
    commit(repo, "a note")
    p = chunker({"path": "notes/n.txt"})
    tools.check(p, config(), repo)
    (repo / "notes" / "n.txt").unlink()
    os.mkfifo(repo / "notes" / "n.txt")  # an open() would block
    res = tools.execute(p, config(), repo)
    assert res.status == "failed" and "not a file in the repository" in res.error
    assert file_chunker.execute(p, config(), repo).output.endswith(b"\nx\n")
    (repo / "notes" / "n.txt").unlink()
    os.symlink("../.git/config", repo / "notes" / "n.txt")
    res = tools.execute(p, config(), repo)
    assert res.status == "failed" and "into .git" in res.error and res.output == b""


def test_a_symlink_committed_after_the_check_is_refused_at_the_run(repo):
    (repo / "notes" / "n.txt").write_text("x\n")
    commit(repo, "a note")
    p = chunker({"path": "notes/n.txt"})
    tools.check(p, config(), repo)
    (repo / "notes" / "n.txt").unlink()
    os.symlink("../.git/config", repo / "notes" / "n.txt")
    commit(repo, "swap in a symlink")
    res = tools.execute(p, config(), repo)
    assert res.status == "failed" and "into .git" in res.error
    assert TOKEN.encode() not in res.output


def test_a_file_in_the_working_tree_only_is_refused_at_the_run(repo):
    res = tools.execute(chunker({"path": "docs/draft.txt"}), config(), repo)
    assert res.status == "failed" and "not in HEAD's tree" in res.error


def test_a_submodule_is_refused(repo, tmp_path):
    from janus_git.tools import file_chunker
    sub = tmp_path / "sub"
    sub.mkdir()
    git(sub, "init", "-q")
    git(sub, "commit", "-q", "--allow-empty", "-m", "sub")
    sha = git(sub, "rev-parse", "HEAD").stdout.strip()
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{sha},docs/mod")
    git(repo, "commit", "-qm", "a gitlink")
    (repo / "docs" / "mod").mkdir()  # what a checkout leaves of a submodule not cloned
    p = chunker({"path": "docs/mod"})
    res = tools.execute(p, config(), repo)
    assert res.status == "failed" and "is a folder, not a file" in res.error
    with pytest.raises(ToolRefused, match=r"'docs/mod' is in a submodule"):
        file_chunker.execute(p, config(), repo)  # HEAD's tree says what it is


def test_replace_refs_do_not_change_what_is_read(repo):
    """refs/replace/ can be pushed; the blob read is the one HEAD's tree names."""
    blob = git(repo, "rev-parse", "HEAD:docs/short.txt").stdout.strip()
    other = git(repo, "hash-object", "-w", "--stdin", input="replaced\n").stdout.strip()
    git(repo, "replace", blob, other)
    res = tools.execute(chunker({"path": "docs/short.txt"}), config(), repo)
    assert res.output.endswith(b"one\ntwo\nthree")


def test_a_large_single_line_file_costs_only_the_output_limit(repo):
    with open(repo / "docs" / "huge.bin", "wb") as f:
        f.truncate(64 << 20)  # 64 MiB of zeros and no newline
    commit(repo, "a large file")
    res = tools.execute(chunker({"path": "docs/huge.bin"}), config(output_kb=64), repo)
    assert res.status == "succeeded"
    assert len(res.output) < 64 * 1024 + 200
    assert res.output.endswith(b"[janus-git: output truncated at 64 KiB; "
                               + str((64 << 20) - 65536).encode() + b" bytes dropped]\n")
    assert res.output_bytes == 64 << 20


def test_cancel_stops_a_long_read(repo):
    cancel = threading.Event()
    cancel.set()
    started = []
    res = tools.execute(chunker({"path": "docs/book.txt"}), config(), repo, cancel=cancel,
                        on_start=started.append)
    assert res.status == "failed" and res.limit_hit == "cancelled" and started == [os.getpid()]
