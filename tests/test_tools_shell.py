"""The shell tool: hostile argv refused with a one-line reason before anything runs; what is
allowed runs for real in the sandbox, read-only, bounded."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from janus_git import tools
from janus_git.audit import validate_line
from janus_git.config import config_from_text
from janus_git.lifecycle import new_proposal
from janus_git.tools import ToolRefused

PROJECT = Path(__file__).resolve().parent.parent


def make_config(limits: dict | None = None, tools_over: dict | None = None):
    data = yaml.safe_load((PROJECT / "state" / "agent.yaml").read_text())
    data["limits"] = {**data["limits"], "timeout_s": 10, "memory_mb": 256,
                      **(limits or {})}
    for name, spec in (tools_over or {}).items():
        data["tools"][name] = {**data["tools"].get(name, {}), **spec}
    return config_from_text(yaml.safe_dump(data))


def proposal(args, tool="shell"):
    return new_proposal(mission="M-TEST", type_="analysis", tool=tool, args=args,
                        rationale="test", created_by="test")


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("alpha\nbeta\ngamma\nalpha\n")
    (root / "docs" / "b.txt").write_text("one:1\ntwo:2\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[remote]\n\turl = https://token@example.com\n")
    os.symlink("/etc", root / "etc-link")
    os.symlink("docs", root / "docs-link")
    return root


HOSTILE = [
    "ls; rm -rf /",
    ["ls;", "rm", "-rf", "/"],
    ["echo", "$(id)"],
    ["echo", "`id`"],
    ["echo", "${HOME}"],
    ["/bin/rm", "-rf", "docs"],
    ["./docs/a.txt"],
    ["sudo", "-n", "rm", "docs/a.txt"],
    ["rm", "-rf", "."],
    ["find", "/", "-delete"],
    ["find", ".", "-delete"],
    ["find", ".", "-exec", "cat", "{}", "+"],
    ["find", ".", "-execdir", "ls", "+"],
    ["find", ".", "-ok", "cat", "{}", "+"],
    ["find", ".", "-fprint", "out.txt"],
    ["find", "-L", "."],
    ["cat", "../../etc/shadow"],
    ["cat", "/etc/passwd"],
    ["cat", "~/.ssh/id_rsa"],
    ["cat", ".git/config"],
    ["cat", "docs/../../outside"],
    ["cat", "etc-link/passwd"],
    ["ls", "etc-link"],
    ["ls", "-L", "."],
    ["grep", "-r", "root", "/etc"],
    ["grep", "-f", "/etc/passwd", "docs"],
    ["grep", "--file=/etc/passwd", "docs"],
    ["grep", "-R", "x", "."],
    ["grep", "-rn", "token", ".git"],
    ["sed", "-i", "s/a/b/", "docs/a.txt"],
    ["sed", "-ni", "1p", "docs/a.txt"],
    ["sed", "s/a/b/", "docs/a.txt"],
    ["sed", "-n", "w out.txt", "docs/a.txt"],
    ["sed", "-n", "1e id", "docs/a.txt"],
    ["sed", "-n", "s/a/b/w out.txt", "docs/a.txt"],
    ["sed", "-n", "s/a/b/e", "docs/a.txt"],
    ["sed", "-n", "-e", "1r /etc/passwd", "docs/a.txt"],
    ["sed", "-n", "-f", "docs/a.txt", "docs/b.txt"],
    ["sort", "-o", "docs/a.txt", "docs/b.txt"],
    ["sort", "--output=docs/a.txt", "docs/b.txt"],
    ["sort", "--compress-program=sh", "docs/a.txt"],
    ["uniq", "docs/a.txt", "docs/b.txt"],
    ["tail", "-f", "docs/a.txt"],
    ["head", "-c", "100", "/dev/zero"],
    ["ls", "-la", ">", "x"],
    ["cat", "<", "docs/a.txt"],
    ["cat", "docs/a.txt", "|", "sh"],
    ["echo", "a", "&&", "id"],
    ["echo", "a", "||", "id"],
    ["echo", "a\nid"],
    ["echo", "a\x00b"],
    ["bash", "-c", "id"],
    ["python3", "-c", "print(1)"],
    ["env"],
    ["printenv"],
    ["curl", "http://127.0.0.1/"],
    ["dd", "if=/dev/zero", "of=x"],
    ["xargs", "rm"],
    ["chmod", "777", "docs"],
    ["tee", "x"],
    ["date", "-s", "2020-01-01"],
    ["ls", "docs/../.."],
    ["nl", "-", "../x"],
    ["wc", "--files0-from=/etc/passwd"],
    "echo 'unbalanced",
    [],
    [1, 2],
    {"cmd": "ls"},
    ["echo", "x" * 5000],
]


@pytest.mark.parametrize("args", HOSTILE, ids=[repr(a)[:40] for a in HOSTILE])
def test_hostile_argv_is_refused_with_a_one_line_reason(repo, args):
    cfg = make_config()
    p = proposal(args)
    with pytest.raises(ToolRefused) as exc:
        tools.check(p, cfg, repo)
    msg = str(exc.value)
    assert msg.startswith("shell: ") and "\n" not in msg.replace(repr("a\nid"), "")
    # execute() refuses the same way without raising, and writes a valid audit line
    res = tools.execute(p, cfg, repo)
    assert res.status == "failed" and res.isolation == "none" and res.error == msg
    validate_line(tools.tool_use_line(p, res))


def test_there_are_at_least_forty_hostile_cases():
    assert len(HOSTILE) >= 40


@pytest.mark.parametrize("args,reason", [
    (["ls;", "x"], "';' (command chaining)"),
    (["/bin/rm"], "commands are named, not given as paths"),
    (["sudo", "-n", "rm"], "'sudo' is forbidden"),
    (["find", "/", "-delete"], "find -delete is not allowed"),
    (["cat", "etc-link/passwd"], "leads out of the repository through a symlink"),
    (["cat", "../x"], "climbs out with '..'"),
    (["vim", "x"], "not on the read-only allow-list"),
    (["sed", "p", "docs/a.txt"], "sed must run with -n"),
])
def test_the_reason_names_the_problem(repo, args, reason):
    with pytest.raises(ToolRefused, match=None) as exc:
        tools.check(proposal(args), make_config(), repo)
    assert reason in str(exc.value)


ALLOWED = [
    (["ls", "docs"], b"a.txt\nb.txt\n"),
    ("grep -n alpha docs/a.txt", b"1:alpha\n4:alpha\n"),
    (["grep", "-rn", "beta", "."], b"./docs/a.txt:2:beta\n"),
    (["sed", "-n", "2,3p", "docs/a.txt"], b"beta\ngamma\n"),
    (["sed", "-n", "s/alpha/ALPHA/p", "docs/a.txt"], b"ALPHA\nALPHA\n"),
    (["sed", "-n", "-e", "$p", "docs/a.txt"], b"alpha\n"),
    (["wc", "-l", "docs/a.txt"], b"4 docs/a.txt\n"),
    (["head", "-n", "1", "docs/a.txt"], b"alpha\n"),
    (["tail", "-n", "1", "docs/b.txt"], b"two:2\n"),
    (["cut", "-d:", "-f2", "docs/b.txt"], b"1\n2\n"),
    (["sort", "-u", "docs/a.txt"], b"alpha\nbeta\ngamma\n"),
    (["uniq", "-c", "docs/b.txt"], b"      1 one:1\n      1 two:2\n"),
    (["find", "docs", "-name", "*.txt", "-type", "f"], None),
    (["cat", "docs-link/b.txt"], b"one:1\ntwo:2\n"),
    (["echo", "/etc/passwd", "is", "only", "text"], b"/etc/passwd is only text\n"),
    (["basename", "/a/b/c.txt"], b"c.txt\n"),
    (["pwd"], None),
    (["true"], b""),
]


@pytest.mark.parametrize("args,expected", ALLOWED, ids=[repr(a)[:40] for a, _ in ALLOWED])
def test_allowed_commands_run_in_the_sandbox(repo, args, expected):
    cfg = make_config()
    p = proposal(args)
    tools.check(p, cfg, repo)
    res = tools.execute(p, cfg, repo)
    assert res.status == "succeeded", (res.error, res.output)
    assert res.isolation in ("bwrap", "reduced") and res.files == {}
    if expected is not None:
        assert res.output == expected
    validate_line(tools.tool_use_line(p, res))


def test_find_lists_the_repo_without_git(repo):
    res = tools.execute(proposal(["find", ".", "-type", "f"]), make_config(), repo,
                        isolation="bwrap" if tools.doctor()["bwrap_usable"] else None)
    assert res.status == "succeeded"
    assert b"./docs/a.txt" in res.output
    if res.isolation == "bwrap":
        assert b".git/config" not in res.output


def test_false_fails_with_its_exit_status(repo):
    res = tools.execute(proposal(["false"]), make_config(), repo)
    assert res.status == "failed" and res.exit_code == 1 and res.error == "exit status 1"
    assert res.limit_hit is None


@pytest.mark.parametrize("isolation", ["bwrap", "reduced"])
def test_a_huge_file_is_read_but_the_output_is_bounded(repo, isolation):
    if isolation == "bwrap" and not tools.doctor()["bwrap_usable"]:
        pytest.skip("no bwrap")
    with open(repo / "docs" / "big.txt", "wb") as f:
        f.write(b"0123456789abcdef\n" * (1 << 16))  # 1.1 MB: truncated, under the hard cap
    res = tools.execute(proposal(["cat", "docs/big.txt"]), make_config({"output_kb": 32}), repo,
                        isolation=isolation)
    assert res.isolation == isolation and res.status == "succeeded"
    assert len(res.output) < 32 * 1024 + 200
    assert res.output.endswith(b"[janus-git: output truncated at 32 KiB; "
                               + str(17 * (1 << 16) - 32768).encode() + b" bytes dropped]\n")
    assert res.output_bytes == 17 * (1 << 16)


def test_an_endless_output_is_stopped_by_the_output_limit(repo):
    res = tools.execute(proposal(["seq", "1", "1000000000"]), make_config({"output_kb": 16}),
                        repo)
    assert res.status == "failed" and res.limit_hit == "output"
    assert len(res.output) < 16 * 1024 + 200


def test_a_read_only_repository_stays_unchanged(repo):
    before = sorted(str(p) for p in repo.rglob("*"))
    for args in (["ls", "-la"], ["grep", "-rn", "a", "."], ["sort", "docs/a.txt"]):
        assert tools.execute(proposal(args), make_config(), repo).status == "succeeded"
    assert sorted(str(p) for p in repo.rglob("*")) == before


# Options that make a command read a list of names (or patterns) from a file: the path of the
# list is checked, the names inside it never were (issue 21: /etc/passwd was committed).
LISTS = [
    ["wc", "--files0-from=docs/list"],
    ["wc", "--files0-from", "docs/list"],
    ["wc", "--files0=docs/list"],          # getopt takes any unambiguous abbreviation
    ["wc", "--files0-from=-"],             # the names from stdin
    ["du", "--files0-from=docs/list"],
    ["du", "-X", "docs/patterns", "."],
    ["du", "-sXdocs/patterns", "."],
    ["du", "--exclude-from=docs/patterns", "."],
    ["sort", "--files0-from=docs/list"],
    ["sort", "--files0-f", "docs/list"],
    ["find", "-files0-from", "docs/list"],
    ["find", "docs", "-files0-from", "docs/list"],
    ["sha256sum", "-c", "docs/sums"],
    ["md5sum", "--check", "docs/sums"],
    ["sha256sum", "--ch=docs/sums"],
    ["md5sum", "-wc", "docs/sums"],
    ["grep", "-f", "docs/patterns", "docs"],
    ["grep", "--file=docs/patterns", "docs"],
    ["grep", "--exclude-from=docs/patterns", "-r", "x", "."],
    ["grep", "--exclude-from", "/etc/passwd", "-r", "x", "."],
    ["date", "-r", "/etc/passwd"],
    ["date", "--reference", ".git/config"],
    ["date", "--ref=/etc/shadow"],
]


@pytest.fixture
def lists(repo) -> Path:
    (repo / "docs" / "list").write_bytes(b"/etc/passwd\0")
    (repo / "docs" / "patterns").write_text("*\n")
    (repo / "docs" / "sums").write_text("0" * 64 + "  /etc/passwd\n")
    return repo


@pytest.mark.parametrize("args", LISTS, ids=[" ".join(a)[:40] for a in LISTS])
def test_options_that_read_names_from_a_file_are_refused(lists, args):
    p = proposal(args)
    with pytest.raises(ToolRefused) as exc:
        tools.check(p, make_config(), lists)
    msg = str(exc.value)
    assert msg.startswith("shell: ") and "\n" not in msg
    res = tools.execute(p, make_config(), lists)
    assert res.status == "failed" and res.error == msg and b"root:" not in res.output


def test_files0_from_says_why(lists):
    with pytest.raises(ToolRefused, match=r"wc --files0-from reads the names to open from a "
                                          r"file, which are never checked"):
        tools.check(proposal(["wc", "--files0-from=docs/list"]), make_config(), lists)


@pytest.mark.parametrize("args", [
    ["ls", "--deref", "etc-link"],
    ["sort", "--out=docs/x", "docs/a.txt"],
    ["sort", "--temp=docs", "docs/a.txt"],
    ["tail", "--fol", "docs/a.txt"],
    ["sed", "-n", "--in-pl", "1p", "docs/a.txt"],
    ["stat", "--deref", "etc-link"],
], ids=lambda a: " ".join(a))
def test_an_abbreviated_refused_option_is_refused(repo, args):
    with pytest.raises(ToolRefused, match="is not allowed"):
        tools.check(proposal(args), make_config(), repo)


def test_a_symlink_into_git_is_refused(repo):
    """In the reduced sandbox without Landlock nothing hides .git: the check must."""
    os.symlink(".git", repo / "g")
    with pytest.raises(ToolRefused, match="into .git"):
        tools.check(proposal(["cat", "g/config"]), make_config(), repo)


@pytest.mark.parametrize("args,expected", [
    (["wc", "-l", "docs/a.txt", "docs/b.txt"], b"4 docs/a.txt"),
    (["du", "-s", "--exclude=*.md", "docs"], b"docs"),
    (["sort", "-r", "docs/a.txt"], b"gamma\nbeta\nalpha\nalpha\n"),
    (["sha256sum", "docs/b.txt"], b"docs/b.txt"),
    (["grep", "--include=*.txt", "-rn", "beta", "docs"], b"docs/a.txt:2:beta\n"),
    (["date", "-u", "-d", "@0", "+%F"], b"1970-01-01\n"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_the_same_commands_still_run_without_those_options(repo, args, expected):
    res = tools.execute(proposal(args), make_config(), repo)
    assert res.status == "succeeded", (res.error, res.output)
    assert expected in res.output
