"""The trust boundary at the git layer (issue 21): an attacker who can push anything (any
author e-mail, any bytes in a commit message, any object type at any path, refs outside
refs/heads) but is not an approver and has no listed key, with signed approvals required.

Each case checks that nothing of the attacker's ran, that the daemon answered with a commit
that says why, that the rules in force are unchanged, and that a legitimate signed approval
by Alice is still honoured afterwards (the reader is not stalled, the start does not crash).
Hostile objects are made with plain git (plumbing where porcelain refuses), and pushed from
a clone where the working tree a push leaves behind matters."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from test_trust import (
    AGENT_YAML,
    BOB,
    MANUAL,
    _stop,
    agent_yaml,
    answers,
    commit_as,
    head,
    path_of,
    pub,
    signed,  # noqa: F401  (a fixture: Alice's key listed, signing required)
)

from conftest import AGENT, ALICE, MALLORY, git
from daemonkit import propose, record, set_status, status, tool_use_lines

STOP = "state/STOP"
CONSTITUTION = "state/constitution.md"


# -- helpers ---------------------------------------------------------------------------------
def settle(root: Path, limit: float = 40.0) -> int:
    """`burst` (the daemon in this process until idle; a restart each time), with a watchdog:
    a daemon that waits forever on a hostile commit (a Conflict it can never clear) fails the
    test instead of hanging it."""
    from janus_git.daemon import Daemon
    waits: list[str] = []

    class Waits(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            if rec.getMessage().startswith("waiting"):
                waits.append(rec.getMessage())
    handler = Waits(logging.INFO)
    logger = logging.getLogger("janus_git")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.INFO, logging.INFO))
    stalled = threading.Event()
    try:
        d = Daemon(root, think=False)

        def give_up() -> None:
            stalled.set()
            d.request_stop()
        timer = threading.Timer(limit, give_up)
        timer.start()
        try:
            rc = d.work(burst=True)
        finally:
            timer.cancel()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert not stalled.is_set(), (f"the daemon did not settle within {limit:.0f} s "
                                  f"(last error: {d.state.last_error!r}; "
                                  f"{waits[-1] if waits else 'no wait logged'})")
    assert rc == 0
    return rc


def entry(root: Path, path: str, rev: str = "HEAD") -> tuple[str, str, str] | None:
    """(mode, type, object id) of PATH in REV's tree, as the tree holds it."""
    out = git(root, "ls-tree", rev, "--", path).stdout.strip()
    if not out:
        return None
    meta, _ = out.split("\t", 1)
    mode, kind, sha = meta.split()
    return mode, kind, sha


def regular_file(root: Path, path: str, rev: str = "HEAD") -> bool:
    e = entry(root, path, rev)
    return e is not None and e[0] == "100644" and e[1] == "blob"


def stop_in_force(root: Path) -> bool:
    return regular_file(root, STOP)


def permissive(root: Path) -> str:
    """agent.yaml as in force, but python runs by itself."""
    cfg = agent_yaml(root)
    return yaml.safe_dump({**cfg, "tools": {**cfg["tools"], "python": {
        **cfg["tools"]["python"], "auto_exec": True, "risk": "low"}}}, sort_keys=False)


def auto_python(root: Path, marker: str = "pwned") -> str:
    """A python proposal of an auto type: it runs by itself only if python is auto_exec."""
    return propose(root, "-c", f"print({marker!r})", tool="python", type_="analysis")


def auto_shell(root: Path, text: str) -> str:
    """Whitelisted low-risk work: runs by itself unless the stop is in force."""
    return propose(root, "echo", text)


def agent_commits(root: Path) -> list[str]:
    """The agent's commits on the first-parent line, newest first (the daemon made them all:
    no test here commits in the agent's name)."""
    return git(root, "log", "--first-parent", f"--author={AGENT[1]}", "--format=%H"
               ).stdout.split()


def forged_record(root: Path, sha: str, subject: str = "janus: correction") -> str:
    """What a commit body must hold to add a made-up record to the daemon's `git log`
    parsing (fields split on \\x1f, records on \\x1e): the \\x1f closes the real record's
    fields, the \\x1e opens one that claims to be SHA (a genuine agent-signed commit), by
    the agent.  git appends its own \\x1f after %b and then the real commit's changes, so
    those are read as SHA's."""
    parents = git(root, "log", "-1", "--format=%P", sha).stdout.strip()
    return f"\x1f\x1e{sha}\x1f{parents}\x1f{AGENT[0]}\x1f{AGENT[1]}\x1f{subject}\x1fdone"


def raw_message(root: Path, rev: str = "HEAD") -> bytes:
    return subprocess.run(["git", "cat-file", "commit", rev], cwd=root, capture_output=True,
                          check=True).stdout.partition(b"\n\n")[2]


def never_ran(root: Path, pid: str) -> bool:
    """No tool_use line for PID, and HEAD does not show it running or run (read as git holds
    it: a path that is no regular file there has no status)."""
    if tool_use_lines(root, pid):
        return False
    if not regular_file(root, path_of(pid)):
        return True
    try:
        rec = yaml.safe_load(git(root, "show", f"HEAD:{path_of(pid)}").stdout)
    except yaml.YAMLError:
        return True
    return not (isinstance(rec, dict) and rec.get("status") in ("running", "succeeded",
                                                                 "failed"))


def listed_error(root: Path, pid: str) -> str:
    """What `janus-git list` says of PID when it cannot read it."""
    out = subprocess.run(["janus-git", "list", "--json", "-C", str(root)], capture_output=True,
                         text=True)
    try:
        rows = json.loads(out.stdout)
    except ValueError:
        return ""
    return " ".join(str(r.get("error", "")) for r in rows if r.get("id") == pid)


def daemon_error(root: Path) -> str:
    """The last error the daemon reported in its status file."""
    try:
        return str(json.loads((root / ".git" / "janus" / "daemon.json").read_text())
                   .get("last_error") or "")
    except (OSError, ValueError):
        return ""


def names_duplicate(said: str, key: str) -> bool:
    """The answer names KEY as doubled (`duplicate key`, `appears twice`...)."""
    return key in said and any(w in said.lower() for w in ("duplicate", "twice", "more than once"))


def legit_approval_runs(root: Path, keys: dict, marker: str, lift_stop: bool = False) -> str:
    """Liveness: Alice (signed) lifts the stop if asked, then approves a manual proposal;
    the next daemon run honours it."""
    if lift_stop:
        commit_as(root, ALICE, "resume", {STOP: None}, sign_key=keys["alice"])
        settle(root)
        assert not stop_in_force(root), "an approver's signed lift of the stop was undone"
    pid = propose(root, "-c", f"print({marker!r})", tool="python", type_=MANUAL)
    settle(root)
    set_status(root, pid, "approved", sign_key=keys["alice"])
    settle(root)
    rec = record(root, pid)
    assert rec.get("status") == "succeeded", rec
    return pid


def clone_of(root: Path, where: Path) -> Path:
    """A pusher's clone, up to date with the state repository's main."""
    if not (where / ".git").is_dir():
        git(root.parent, "clone", "-q", str(root), str(where))
    git(where, "fetch", "-q", "origin")
    git(where, "reset", "-q", "--hard", "origin/main")
    return where


def push_entries(root: Path, clone: Path, who, message: str,
                 entries: dict[str, tuple[str, str] | str | None]) -> str:
    """Commit ENTRIES in CLONE (path -> (mode, object id) for any object type, text for a
    regular file, None to delete) and push them to the state repository's main, as an
    attacker's push lands (receive.denyCurrentBranch=updateInstead updates its working
    tree).  Returns the pushed commit."""
    clone_of(root, clone)
    for path, what in entries.items():
        git(clone, "rm", "-rq", "--cached", "--ignore-unmatch", "--", path)
        if what is None:
            continue
        if isinstance(what, str):
            (clone / path).parent.mkdir(parents=True, exist_ok=True)
            if (clone / path).is_symlink() or (clone / path).is_file():
                (clone / path).unlink()
            (clone / path).write_text(what)
            git(clone, "add", "--", path)
            continue
        mode, sha = what
        git(clone, "update-index", "--add", "--cacheinfo", f"{mode},{sha},{path}")
    git(clone, "commit", "-q", "--allow-empty", "-m", message, who=who)
    sha = git(clone, "rev-parse", "HEAD").stdout.strip()
    out = git(clone, "push", "-q", "origin", "HEAD:main", check=False)
    assert out.returncode == 0, f"the attacker's push was refused: {out.stderr}"
    return sha


def blob(root: Path, data: str | bytes) -> str:
    data = data.encode() if isinstance(data, str) else data
    return subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=root, input=data,
                          capture_output=True, check=True).stdout.decode().strip()


def replace_refs(root: Path) -> list[str]:
    return git(root, "for-each-ref", "--format=%(refname)", "refs/replace/").stdout.split()


def show_plain(root: Path, spec: str) -> str:
    """`git show` with no replace object honoured: what the repository really holds."""
    return git(root, "--no-replace-objects", "show", spec).stdout


# -- 1. forged log records -------------------------------------------------------------------
def test_forged_agent_record_does_not_lift_an_approvers_stop(state_dir, signed):
    before_stop = auto_shell(state_dir, "before the stop")
    settle(state_dir)
    assert status(state_dir, before_stop) == "succeeded"
    genuine = agent_commits(state_dir)[0]  # the agent's, signed, from before the stop
    assert entry(state_dir, STOP, genuine) is None
    _stop(state_dir)  # Alice, an approver, imposes the stop
    settle(state_dir)
    since = head(state_dir)
    msg = "tidy up\n\nnothing to see here" + forged_record(state_dir, genuine,
                                                          "janus: resume after emergency stop")
    hostile = commit_as(state_dir, MALLORY, msg, {STOP: None})
    assert b"\x1e" + genuine.encode() in raw_message(state_dir, hostile)
    during = auto_shell(state_dir, "during the stop")
    settle(state_dir)
    assert stop_in_force(state_dir), "a made-up log record lifted the stop"
    assert never_ran(state_dir, during)
    said = answers(state_dir, since)
    assert STOP in said and MALLORY[1] in said, said
    legit_approval_runs(state_dir, signed, "after the forged resume", lift_stop=True)


@pytest.mark.parametrize("source", ["rollback", "refused-content"])
def test_forged_agent_record_does_not_put_an_agent_yaml_in_force(state_dir, signed, source):
    """The made-up record claims a genuine agent commit G made the attacker's change to
    agent.yaml; the daemon would then take G's agent.yaml (read at G) as the rules.
    - rollback: G is from a time an approver let python run by itself (since withdrawn);
    - refused-content: G is the agent's correction of a proposal, committed on top of the
      attacker's own (refused) agent.yaml, which G's tree therefore holds."""
    alice = signed["alice"]
    if source == "rollback":
        commit_as(state_dir, ALICE, "python runs by itself", {AGENT_YAML: permissive(state_dir)},
                  sign_key=alice)
        first = auto_python(state_dir, "while allowed")
        settle(state_dir)
        assert status(state_dir, first) == "succeeded"
        bad = git(state_dir, "show", f"HEAD:{AGENT_YAML}").stdout
        cfg = agent_yaml(state_dir)
        commit_as(state_dir, ALICE, "python is manual again", {AGENT_YAML: yaml.safe_dump(
            {**cfg, "tools": {**cfg["tools"], "python": {**cfg["tools"]["python"],
                                                          "auto_exec": False,
                                                          "risk": "high"}}},
            sort_keys=False)}, sign_key=alice)
        settle(state_dir)
    else:
        settle(state_dir)
        filed = propose(state_dir, "-c", "print('filed')", tool="python", type_=MANUAL)
        settle(state_dir)
        bad = permissive(state_dir)
        data = record(state_dir, filed)
        data["args"] = ["-c", "print('tweaked')"]
        commit_as(state_dir, MALLORY, "policy and a tweak", {
            AGENT_YAML: bad, path_of(filed): yaml.safe_dump(data, sort_keys=False)})
        settle(state_dir)
    bad_blob = blob(state_dir, bad)
    carrying = [c for c in agent_commits(state_dir)
                if (entry(state_dir, AGENT_YAML, c) or ("", "", ""))[2] == bad_blob]
    # (should a daemon never commit on top of a refused agent.yaml, the newest agent commit
    # stands in: the forgery must change nothing either way)
    genuine = carrying[0] if carrying else agent_commits(state_dir)[0]
    before = agent_yaml(state_dir)
    assert before["tools"]["python"].get("auto_exec") is not True
    since = head(state_dir)
    msg = "fix whitespace\n\nno functional change" + forged_record(state_dir, genuine)
    commit_as(state_dir, MALLORY, msg, {AGENT_YAML: bad})
    pid = auto_python(state_dir)
    settle(state_dir)
    assert never_ran(state_dir, pid), "python ran by itself under a forged agent.yaml"
    assert agent_yaml(state_dir) == before
    said = answers(state_dir, since)
    assert AGENT_YAML in said and MALLORY[1] in said, said
    legit_approval_runs(state_dir, signed, "after the forged policy")


def test_forged_agent_record_in_a_files_history_does_not_count_toward_a_quorum(state_dir,
                                                                             signed):
    """`recorded_approvals` takes the quorum's earlier approvals from the newest agent commit
    in the file's history (`git log -- PATH`, same record parsing): a made-up record there
    claims a genuine agent commit G whose tree holds the attacker's `approvals:` list (G is
    the agent's correction of another proposal, committed on top of the attacker's push)."""
    alice, bob = signed["alice"], signed["bob"]
    cfg = agent_yaml(state_dir)
    signers = git(state_dir, "show", "HEAD:state/allowed_signers").stdout
    commit_as(state_dir, ALICE, "two for high", {
        "state/allowed_signers": signers + f"{BOB[1]} {pub(bob)}\n",
        AGENT_YAML: yaml.safe_dump({**cfg, "approvers": [{"email": ALICE[1]}, {"email": BOB[1]}],
                                    "policy": {**cfg["policy"],
                                               "approvals_required": {"high": 2}}},
                                   sort_keys=False)}, sign_key=alice)
    other = propose(state_dir, "-c", "print('other')", tool="python", type_=MANUAL)
    pid = propose(state_dir, "-c", "print('quorum')", tool="python", type_=MANUAL)
    assert path_of(other) < path_of(pid)  # the agent answers OTHER first, then PID
    settle(state_dir)
    data = record(state_dir, other)
    data["args"] = ["-c", "print('tweaked')"]
    commit_as(state_dir, MALLORY, "bob said yes", {
        path_of(other): yaml.safe_dump(data, sort_keys=False),
        path_of(pid): yaml.safe_dump({**record(state_dir, pid), "approvals": [
            {"by": BOB[1], "commit": head(state_dir), "at": "2026-11-29T12:00:00Z"}]},
            sort_keys=False)})
    settle(state_dir)
    assert not record(state_dir, pid).get("approvals")

    def bobs(c: str) -> bool:
        out = git(state_dir, "show", f"{c}:{path_of(pid)}", check=False).stdout
        return BOB[1] in str((yaml.safe_load(out) or {}).get("approvals", "")) if out else False
    carrying = [c for c in agent_commits(state_dir) if bobs(c)]
    genuine = carrying[0] if carrying else agent_commits(state_dir)[0]
    commit_as(state_dir, MALLORY, "typo\n\nrationale wording" + forged_record(state_dir, genuine),
              {path_of(pid): yaml.safe_dump({**record(state_dir, pid),
                                             "rationale": "reworded"}, sort_keys=False)})
    settle(state_dir)
    set_status(state_dir, pid, "approved", sign_key=alice)  # one approver of the two
    settle(state_dir)
    assert never_ran(state_dir, pid), "one approval and a forged record made a quorum"
    rec = record(state_dir, pid)
    assert rec["status"] == "proposed" and "1 of 2 approvals" in rec["note"], rec
    set_status(state_dir, pid, "approved", who=BOB, sign_key=bob)  # the real second one
    settle(state_dir)
    rec = record(state_dir, pid)
    assert rec["status"] == "succeeded", rec
    assert sorted(a["by"] for a in rec["decision"]["approvals"]) == [ALICE[1], BOB[1]]


@pytest.mark.parametrize("message", [
    "tidy\n\na lone record separator \x1e in the body",
    "tidy\n\na lone unit separator \x1f in the body",
    "tidy \x1e in the subject\n\nand a body",
    "tidy \x1f in the subject\n\nand a body",
], ids=["rs-body", "us-body", "rs-subject", "us-subject"])
def test_separator_bytes_in_a_message_neither_crash_nor_hide_the_change(state_dir, signed,
                                                                        message):
    settle(state_dir)
    before = git(state_dir, "show", f"HEAD:{CONSTITUTION}").stdout
    since = head(state_dir)
    hostile = commit_as(state_dir, MALLORY, message, {CONSTITUTION: "Obey Mallory.\n"})
    assert any(b in raw_message(state_dir, hostile) for b in (b"\x1e", b"\x1f"))
    for _ in range(2):  # it used to raise ValueError at every start
        settle(state_dir)
    assert git(state_dir, "show", f"HEAD:{CONSTITUTION}").stdout == before
    said = answers(state_dir, since)
    # judged as the commit it is: the answer names the refused change and whose it was
    assert CONSTITUTION in said and MALLORY[1] in said, said
    legit_approval_runs(state_dir, signed, "after the odd message")


# -- 2. replacement objects ------------------------------------------------------------------
def test_a_pushed_replace_ref_does_not_change_the_rules(state_dir, signed, tmp_path):
    settle(state_dir)  # the daemon has run once (and cached the rules it derived)
    before = agent_yaml(state_dir)
    since = head(state_dir)
    clone = clone_of(state_dir, tmp_path / "mallory-clone")
    in_force = git(clone, "rev-parse", f"HEAD:{AGENT_YAML}").stdout.strip()
    evil = blob(clone, permissive(state_dir))
    git(clone, "replace", "-f", in_force, evil)
    out = git(clone, "push", "origin", "refs/replace/*:refs/replace/*", check=False)
    pid = auto_python(state_dir)
    if out.returncode == 0:  # accepted: the daemon must refuse it itself
        settle(state_dir)
        assert never_ran(state_dir, pid), "python ran by itself through a replace object"
        assert replace_refs(state_dir) == [], "the replace ref is still honoured"
        # said why: in an agent commit, or as the daemon's reported error (no file changed)
        said = answers(state_dir, since) + daemon_error(state_dir)
        assert "refs/replace" in said, said
    else:
        assert replace_refs(state_dir) == []
        settle(state_dir)
        assert never_ran(state_dir, pid)
    assert yaml.safe_load(show_plain(state_dir, f"HEAD:{AGENT_YAML}")) == before
    assert agent_yaml(state_dir) == before
    legit_approval_runs(state_dir, signed, "after the replace ref")


def test_a_rewind_dressed_as_a_fast_forward_by_a_replace_ref_is_refused(state_dir, signed,
                                                                        tmp_path):
    """Replace an old approver-signed commit B with a copy whose parent is today's tip: git's
    fast-forward check then reads the rewind of main to B as a fast-forward."""
    settle(state_dir)
    legit_approval_runs(state_dir, signed, "before")
    old = git(state_dir, "log", "-1", "--first-parent", f"--author={ALICE[1]}",
              "--format=%H").stdout.strip()  # Alice's signed approval
    assert "gpgsig" in git(state_dir, "cat-file", "commit", old).stdout
    _stop(state_dir)
    settle(state_dir)
    tip = head(state_dir)
    clone = clone_of(state_dir, tmp_path / "mallory-clone")
    tree = git(clone, "rev-parse", f"{old}^{{tree}}").stdout.strip()
    dressed = git(clone, "commit-tree", tree, "-p", tip, "-m", "approved", who=ALICE
                  ).stdout.strip()
    git(clone, "replace", "-f", old, dressed)
    git(clone, "push", "origin", "refs/replace/*:refs/replace/*", check=False)
    out = git(clone, "push", "origin", f"{old}:refs/heads/main", check=False)
    assert out.returncode != 0, "the repository took a rewind of main for a fast-forward"
    assert git(state_dir, "--no-replace-objects", "rev-parse", "main").stdout.strip() == tip
    settle(state_dir)
    assert stop_in_force(state_dir)
    assert replace_refs(state_dir) == []
    legit_approval_runs(state_dir, signed, "after the dressed rewind", lift_stop=True)


# -- 3. object types on guarded paths --------------------------------------------------------
@pytest.mark.parametrize("kind", ["gitlink", "symlink"])
def test_the_stop_turned_into_a_gitlink_or_symlink_stays_in_force(state_dir, signed, tmp_path,
                                                                  kind):
    settle(state_dir)
    _stop(state_dir)
    settle(state_dir)
    since = head(state_dir)
    clone = tmp_path / "mallory-clone"
    if kind == "gitlink":
        new = ("160000", head(state_dir))
    else:
        new = ("120000", blob(state_dir, "../notes/.gitkeep"))
    push_entries(state_dir, clone, MALLORY, "stop is now a " + kind, {STOP: new})
    pid = auto_shell(state_dir, "during the stop")
    settle(state_dir)
    assert never_ran(state_dir, pid), f"work ran while the stop was a {kind}"
    assert stop_in_force(state_dir), f"state/STOP is {entry(state_dir, STOP)}"
    assert (state_dir / STOP).is_file() and not (state_dir / STOP).is_symlink()
    said = answers(state_dir, since)
    assert STOP in said and MALLORY[1] in said, said
    out = subprocess.run(["janus-git", "stop", "-C", str(state_dir), "--reason", "again"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    settle(state_dir)  # a daemon started with the stop starts nothing
    assert never_ran(state_dir, pid)
    legit_approval_runs(state_dir, signed, "after the odd stop", lift_stop=True)


def test_agent_yaml_turned_into_a_symlink_is_refused_and_put_back(state_dir, signed, tmp_path):
    settle(state_dir)
    before = agent_yaml(state_dir)
    since = head(state_dir)
    pid = auto_python(state_dir)  # filed before: the CLI reads no config through a symlink
    push_entries(state_dir, tmp_path / "mallory-clone", MALLORY, "config lives in notes now", {
        "notes/evil.yaml": permissive(state_dir),
        AGENT_YAML: ("120000", blob(state_dir, "../notes/evil.yaml"))})
    out = subprocess.run(["janus-git", "propose", "-C", str(state_dir), "-m", "TEST", "-t",
                          "analysis", "--tool", "python", "--", "-c", "print(1)"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "not a regular file" in out.stderr, out.stderr
    settle(state_dir)
    assert never_ran(state_dir, pid)
    assert regular_file(state_dir, AGENT_YAML), entry(state_dir, AGENT_YAML)
    assert not (state_dir / AGENT_YAML).is_symlink()
    assert agent_yaml(state_dir) == before
    said = answers(state_dir, since)
    assert AGENT_YAML in said and MALLORY[1] in said, said
    legit_approval_runs(state_dir, signed, "after the symlinked config")


def test_agent_yaml_as_a_symlink_is_invalid_even_from_an_approver(state_dir, signed, tmp_path):
    """The rules are blobs in the tree: a link's target text is no configuration, and the
    file it points at (notes/, which any pusher may change) must never become the rules."""
    settle(state_dir)
    before = agent_yaml(state_dir)
    since = head(state_dir)
    pid = auto_python(state_dir)  # filed before: the CLI reads no config through a symlink
    commit_as(state_dir, ALICE, "permissive notes", {"notes/evil.yaml": permissive(state_dir)},
              sign_key=signed["alice"])
    (state_dir / AGENT_YAML).unlink()
    os.symlink("../notes/evil.yaml", state_dir / AGENT_YAML)
    git(state_dir, "add", "--", AGENT_YAML)
    git(state_dir, "-c", "gpg.format=ssh", "-c", f"user.signingkey={signed['alice']}",
        "commit", "-q", "-S", "-m", "config by link", who=ALICE)
    settle(state_dir)
    assert never_ran(state_dir, pid)
    assert regular_file(state_dir, AGENT_YAML), entry(state_dir, AGENT_YAML)
    assert agent_yaml(state_dir) == before
    said = answers(state_dir, since)
    assert AGENT_YAML in said, said
    legit_approval_runs(state_dir, signed, "after the linked config")


@pytest.mark.parametrize("kind", ["symlink", "gitlink"])
def test_a_proposal_turned_into_a_symlink_or_gitlink_is_put_back(state_dir, signed, tmp_path,
                                                                 kind):
    target = propose(state_dir, "-c", "print('filed')", tool="python", type_=MANUAL)
    settle(state_dir)
    filed_text = git(state_dir, "show", f"HEAD:{path_of(target)}").stdout
    since = head(state_dir)
    path = path_of(target)
    if kind == "symlink":
        approved = yaml.safe_dump({**record(state_dir, target), "status": "approved",
                                   "decision": {"rule": "human", "by": ALICE[1]}},
                                  sort_keys=False)
        entries = {"notes/approved.yaml": approved,
                   path: ("120000", blob(state_dir, "../../../notes/approved.yaml"))}
    else:
        entries = {path: ("160000", head(state_dir))}
    push_entries(state_dir, tmp_path / "mallory-clone", MALLORY, f"{target} is a {kind}", entries)
    settle(state_dir)
    assert never_ran(state_dir, target)
    assert regular_file(state_dir, path), entry(state_dir, path)
    assert (state_dir / path).is_file() and not (state_dir / path).is_symlink()
    assert yaml.safe_load(git(state_dir, "show", f"HEAD:{path}").stdout)["status"] == "proposed"
    assert yaml.safe_load(git(state_dir, "show", f"HEAD:{path}").stdout)["args"] == \
        yaml.safe_load(filed_text)["args"]
    said = answers(state_dir, since) + str(record(state_dir, target).get("note", ""))
    assert target in said and MALLORY[1] in said, said
    legit_approval_runs(state_dir, signed, f"after the {kind} proposal")


# -- 4. the working tree is not the record ---------------------------------------------------
@pytest.mark.parametrize("attributes", ["proposals/** text eol=crlf\n", "* text eol=crlf\n"],
                         ids=["proposals-crlf", "all-crlf"])
def test_committed_gitattributes_do_not_freeze_approvals(state_dir, signed, tmp_path,
                                                         attributes):
    settle(state_dir)
    push_entries(state_dir, tmp_path / "mallory-clone", MALLORY, "line endings",
                 {".gitattributes": attributes})
    settle(state_dir)
    pid = propose(state_dir, "-c", "print('through crlf')", tool="python", type_=MANUAL)
    settle(state_dir)
    # Alice approves from her clone and pushes: the push checks the file out with CRLF
    alice = clone_of(state_dir, tmp_path / "alice-clone")
    p = alice / path_of(pid)
    data = yaml.safe_load(p.read_text())
    data["status"] = "approved"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    git(alice, "-c", "gpg.format=ssh", "-c", f"user.signingkey={signed['alice']}", "commit",
        "-q", "-S", "-m", f"approved {pid}", "--", path_of(pid), who=ALICE)
    out = git(alice, "push", "-q", "origin", "HEAD:main", check=False)
    assert out.returncode == 0, out.stderr
    settle(state_dir, limit=15)
    rec = record(state_dir, pid)
    assert rec.get("status") == "succeeded", rec
    legit_approval_runs(state_dir, signed, "after the attributes")


def test_a_dangling_symlink_proposal_neither_stalls_the_reader_nor_the_start(state_dir, signed,
                                                                             tmp_path):
    target = propose(state_dir, "-c", "print('filed')", tool="python", type_=MANUAL)
    settle(state_dir)
    since = head(state_dir)
    path = path_of(target)
    push_entries(state_dir, tmp_path / "mallory-clone", MALLORY, "dangling",
                 {path: ("120000", blob(state_dir, "/nonexistent"))})
    settle(state_dir, limit=15)
    settle(state_dir, limit=15)  # and the next start
    assert never_ran(state_dir, target)
    assert regular_file(state_dir, path), entry(state_dir, path)
    said = answers(state_dir, since) + str(record(state_dir, target).get("note", ""))
    assert target in said and MALLORY[1] in said, said
    legit_approval_runs(state_dir, signed, "after the dangling link")


# -- 5. duplicate keys -----------------------------------------------------------------------
def test_agent_yaml_with_duplicate_keys_is_refused_even_from_an_approver(state_dir, signed):
    settle(state_dir)
    before = agent_yaml(state_dir)
    since = head(state_dir)
    text = git(state_dir, "show", f"HEAD:{AGENT_YAML}").stdout
    tools = yaml.safe_load(permissive(state_dir))["tools"]
    # a reviewer reads the first `tools:`; a YAML loader keeps the last
    doubled = text.rstrip("\n") + "\n" + yaml.safe_dump({"tools": tools}, sort_keys=False)
    pid = auto_python(state_dir)  # decided after the commit below, under the rules then
    commit_as(state_dir, ALICE, "tidy", {AGENT_YAML: doubled}, sign_key=signed["alice"])
    settle(state_dir)
    assert never_ran(state_dir, pid), "python ran by itself under a doubled `tools:`"
    assert agent_yaml(state_dir) == before
    said = answers(state_dir, since)
    assert AGENT_YAML in said and names_duplicate(said, "tools"), said
    legit_approval_runs(state_dir, signed, "after the doubled config")


@pytest.mark.parametrize("who", ["mallory", "alice-signed"])
def test_a_proposal_with_duplicate_status_keys_is_unreadable(state_dir, signed, who):
    pid = propose(state_dir, "-c", "print('doubled')", tool="python", type_=MANUAL)
    settle(state_dir)
    since = head(state_dir)
    text = git(state_dir, "show", f"HEAD:{path_of(pid)}").stdout
    assert "status: proposed" in text
    doubled = text.rstrip("\n") + "\nstatus: approved\n"  # read as proposed, loaded as approved
    if who == "mallory":
        commit_as(state_dir, MALLORY, "doubled", {path_of(pid): doubled})
    else:
        commit_as(state_dir, ALICE, "doubled", {path_of(pid): doubled}, sign_key=signed["alice"])
    settle(state_dir)
    assert never_ran(state_dir, pid), "a doubled `status:` approved it"
    said = answers(state_dir, since) + str(record(state_dir, pid).get("note", ""))
    assert names_duplicate(said, "status"), said
    legit_approval_runs(state_dir, signed, "after the doubled status")


def test_a_proposal_filed_with_duplicate_args_is_unreadable_and_never_runs(state_dir, signed):
    """Mallory files a proposal whose first `args:` is harmless and whose last is not: the
    reviewer approves what she reads, a loader would run the other."""
    from janus_git.proposal import compute_digest
    settle(state_dir)
    since = head(state_dir)
    pid = "20261129-120000000-d0b1e5"
    evil = ["-c", "print('evil')"]
    fields = {"id": pid, "mission": "TEST", "type": MANUAL, "tool": "python",
              "args": ["-c", "print('harmless')"], "rationale": "tidy the notes",
              "created_at": "2026-11-29T12:00:00Z", "created_by": "mallory",
              "digest": compute_digest(MANUAL, "python", evil), "status": "proposed"}
    text = yaml.safe_dump(fields, sort_keys=False) + "args: " + yaml.safe_dump(
        evil, default_flow_style=True)
    commit_as(state_dir, MALLORY, "file a proposal", {path_of(pid): text})
    settle(state_dir)
    # Alice approves what she reads: `status: proposed` -> `approved`, by hand, signed
    now = git(state_dir, "show", f"HEAD:{path_of(pid)}", check=False)
    if now.returncode == 0 and "status: proposed" in now.stdout:
        commit_as(state_dir, ALICE, f"approved {pid}", {
            path_of(pid): now.stdout.replace("status: proposed", "status: approved")},
            sign_key=signed["alice"])
        settle(state_dir)
    assert not any("evil" in " ".join(map(str, line.get("argv", [])))
                   for line in tool_use_lines(state_dir, pid)), "the hidden args ran"
    assert never_ran(state_dir, pid)
    # a named refusal: the agent's answer, or the listing's error for a file it cannot read
    said = answers(state_dir, since) + str(record(state_dir, pid).get("note", "")) + \
        listed_error(state_dir, pid)
    assert names_duplicate(said, "args"), said
    legit_approval_runs(state_dir, signed, "after the doubled args")


# -- the audit log ---------------------------------------------------------------------------
def test_a_pushed_change_to_the_audit_log_is_taken_out_and_answered(state_dir, signed):
    """logs/tool_use.jsonl is the agent's: a pusher's megabyte in it would weigh on every
    result commit after, and a rewritten line would hide a run.  Their change comes out
    again; the agent's lines stay."""
    pid = auto_shell(state_dir, "counted")
    settle(state_dir)
    log_path = state_dir / "logs/tool_use.jsonl"
    before = log_path.read_bytes()
    assert tool_use_lines(state_dir, pid)
    since = head(state_dir)
    commit_as(state_dir, MALLORY, "pad the log", {
        "logs/tool_use.jsonl": before + b'{"forged": true}\n' + b"x" * 1_000_000 + b"\n"})
    settle(state_dir)
    assert git(state_dir, "show", "HEAD:logs/tool_use.jsonl").stdout.encode() == before
    assert "only the agent appends to it" in answers(state_dir, since)
    assert "mallory@example.com" in answers(state_dir, since)
    later = auto_shell(state_dir, "after")  # the agent's own appends go on as before
    settle(state_dir)
    assert status(state_dir, later) == "succeeded" and tool_use_lines(state_dir, later)
    assert log_path.read_bytes().startswith(before)


# -- a person's `git add -A && git commit` in the daemon's own tree ----------------------------
def test_a_persons_add_all_and_commit_beside_finishing_runs_never_sweeps_a_result(state_dir):
    """An approver commits everything in the daemon's working tree, again and again, while
    runs finish, with malformed files mixed in.  The agent's commits are built from blobs and
    land under index.lock, so no person's commit ever carries a half-written result (which
    the reader would take for their edit and turn into a revert)."""
    from daemonkit import DaemonProcess, wait_status
    pids = [auto_shell(state_dir, f"run {i}") for i in range(12)]
    since = head(state_dir)
    with DaemonProcess(state_dir):
        for k in range(60):
            target = state_dir / ("proposals/2026/12/20261208-000000000-bad%03d.yaml" % k
                                  if k % 6 == 5 else f"notes/person-{k}.md")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("id: [not yaml\n" if k % 6 == 5 else f"person {k}\n")
            for _attempt in range(200):
                r = git(state_dir, "add", "-A", who=ALICE, check=False)
                if r.returncode == 0:
                    r = git(state_dir, "commit", "-qm", f"person {k}", who=ALICE, check=False)
                if r.returncode == 0 or "nothing to commit" in r.stdout:
                    break
        for pid in pids:
            wait_status(state_dir, pid, "succeeded", "failed", "reverted", "interrupted",
                        timeout=60)
    mine = git(state_dir, "log", f"--author={ALICE[1]}", "--format=%H",  # (HEAD may already
               f"{since}..HEAD").stdout.split()                          # be the agent's)
    ours = {path_of(pid) for pid in pids} | {"logs/tool_use.jsonl"}
    swept = {sha: set(git(state_dir, "diff-tree", "--no-commit-id", "--name-only", "-r",
                          sha).stdout.split()) & ours for sha in mine}
    assert not any(swept.values()), f"a person's commit swept the agent's files: {swept}"
    assert len(mine) > 40
    assert [status(state_dir, pid) for pid in pids] == ["succeeded"] * len(pids)
    assert git(state_dir, "status", "--porcelain", "--untracked-files=no").stdout == ""


# -- liveness: a live daemon answers each hostile commit and goes on ---------------------------
def test_after_each_hostile_commit_a_signed_approval_starts_within_5_s(state_dir, signed,
                                                                       tmp_path):
    """A live daemon; after each kind of hostile push, Alice's signed approval of a manual
    proposal must start its run within 5 s of her commit (the reader is never stalled)."""
    import time

    from daemonkit import DaemonProcess, wait_for
    clone = tmp_path / "pusher"  # (tmp_path/mallory is her key)
    victim = auto_shell(state_dir, "victim")
    settle(state_dir)
    g = agent_commits(state_dir)[0]
    hostile = {
        "forged record": lambda: commit_as(state_dir, MALLORY, "x" + forged_record(
            state_dir, g), {"notes/x.md": "x\n"}),
        "separator bytes": lambda: commit_as(state_dir, MALLORY, "a\x1e\x1fb",
                                             {"notes/y.md": "y\n"}),
        "replace ref push": lambda: git(clone_of(state_dir, clone), "push", "-q", "origin",
                                        f"{blob(clone, 'evil')}:refs/replace/"
                                        + git(state_dir, "rev-parse", "HEAD:" + AGENT_YAML)
                                        .stdout.strip(),
                                        check=False),
        "agent.yaml symlink": lambda: push_entries(state_dir, clone, MALLORY, "link", {
            AGENT_YAML: ("120000", blob(clone, "../notes/evil.yaml"))}),
        "proposal gitlink": lambda: push_entries(state_dir, clone, MALLORY, "gitlink", {
            path_of(victim): ("160000", g)}),
        "gitattributes crlf": lambda: push_entries(state_dir, clone, MALLORY, "attrs", {
            ".gitattributes": "* text eol=crlf\n"}),
        "dangling symlink": lambda: push_entries(state_dir, clone, MALLORY, "dangle", {
            "proposals/2026/12/20261208-000000000-dangle.yaml": (
                "120000", blob(clone, "/nonexistent"))}),
        "audit log padding": lambda: push_entries(state_dir, clone, MALLORY, "pad", {
            "logs/tool_use.jsonl": "x" * 100_000 + "\n"}),
    }
    took: dict[str, float] = {}
    with DaemonProcess(state_dir) as d:
        for name, attack in hostile.items():
            for attempt in range(10):  # the live daemon may commit between fetch and push
                try:
                    attack()
                    break
                except AssertionError:
                    if attempt == 9:
                        raise
            pid = propose(state_dir, "-c", f"print({name!r})", tool="python", type_=MANUAL)
            set_status(state_dir, pid, "approved", sign_key=signed["alice"])
            t0 = time.monotonic()
            wait_for(lambda: status(state_dir, pid) in ("running", "succeeded", "failed"), 20,
                     f"{name}: the approval to start")
            took[name] = time.monotonic() - t0
            assert d.alive(), d.text()[-2000:]
    print("approval -> start after each hostile commit (s):",
          {k: round(v, 2) for k, v in took.items()})
    slow = {k: v for k, v in took.items() if v > 5.0}
    assert not slow, f"an approval waited more than 5 s after a hostile commit: {slow}"
    assert replace_refs(state_dir) == []


def test_agent_yaml_turned_into_a_folder_is_refused_and_put_back(state_dir, signed, tmp_path):
    """A file replaced by a folder of the same name: a deletion of the file and an addition
    under it.  Both are refused and the file comes back in place of the folder."""
    settle(state_dir)
    before = agent_yaml(state_dir)
    since = head(state_dir)
    clone = clone_of(state_dir, tmp_path / "pusher")
    git(clone, "rm", "-q", AGENT_YAML)
    (clone / AGENT_YAML).mkdir()
    (clone / AGENT_YAML / "x").write_text(permissive(state_dir))
    git(clone, "add", "--", f"{AGENT_YAML}/x")
    git(clone, "commit", "-qm", "a folder now", who=MALLORY)
    git(clone, "push", "-q", "origin", "HEAD:main")
    out = subprocess.run(["janus-git", "list", "-C", str(state_dir)], capture_output=True,
                         text=True)  # a command before the daemon answers: a clear error
    assert out.returncode in (0, 1) and "Traceback" not in out.stderr, out.stderr
    settle(state_dir)
    pid = auto_python(state_dir)
    settle(state_dir)
    assert never_ran(state_dir, pid)
    assert regular_file(state_dir, AGENT_YAML) and agent_yaml(state_dir) == before
    assert entry(state_dir, f"{AGENT_YAML}/x") is None
    assert (state_dir / AGENT_YAML).is_file()
    assert MALLORY[1] in answers(state_dir, since)
    legit_approval_runs(state_dir, signed, "after the folder")


def test_a_reviewers_pull_merge_keeps_the_agents_audit_lines(state_dir, tmp_path):
    """A reviewer commits in their clone, `git pull`s (a merge: main's new runs come in as
    its second parent) and pushes.  The merge's first-parent change to the audit log is the
    agent's lines, brought in: they stay, and nothing is answered."""
    clone = clone_of(state_dir, tmp_path / "reviewer")
    (clone / "notes" / "review.md").write_text("looked at it\n")
    git(clone, "add", "notes/review.md")
    git(clone, "commit", "-qm", "review notes", who=ALICE)
    pid = auto_shell(state_dir, "ran meanwhile")
    settle(state_dir)
    lines = (state_dir / "logs/tool_use.jsonl").read_bytes()
    assert tool_use_lines(state_dir, pid)
    git(clone, "pull", "-q", "--no-rebase", "--no-edit", "origin", "main", who=ALICE)
    since = head(state_dir)
    git(clone, "push", "-q", "origin", "HEAD:main")
    settle(state_dir)
    assert git(state_dir, "show", "HEAD:logs/tool_use.jsonl").stdout.encode() == lines
    assert "put back logs/tool_use.jsonl" not in answers(state_dir, since)
    assert status(state_dir, pid) == "succeeded"


def test_a_merge_of_an_agent_commit_never_on_main_is_still_judged_as_the_persons(
        state_dir, tmp_path):
    """Mallory merges an agent-signed commit that never landed on main (here: one the
    agent made beside the branch, as a refused claim or an approval branch's tip is) whose
    version of a finished proposal reads `approved`.  It is her act: put back, never run
    again."""
    from janus_git.gitrepo import GitRepo, Identity
    pid = auto_shell(state_dir, "once only")
    settle(state_dir)
    assert status(state_dir, pid) == "succeeded"
    path = path_of(pid)
    old = git(state_dir, "log", "--format=%H", "-1", "--grep", "proposed -> approved",
              "--", path).stdout.strip()
    approved = (git(state_dir, "show", f"{old}:{path}").stdout  # a version of its own there
                + "note: beside the branch\n").encode()
    repo = GitRepo(state_dir)
    side = repo.create_commit_on(old, {path: approved}, "janus: beside the branch\n",
                                 Identity(*AGENT))  # agent-signed, never on main
    since = head(state_dir)
    clone = clone_of(state_dir, tmp_path / "pusher")
    git(clone, "fetch", "-q", "origin", side)
    r = git(clone, "merge", "-q", "--no-edit", "-s", "ours", side, who=MALLORY, check=False)
    assert r.returncode == 0, r.stderr
    (clone / path).write_bytes(approved)
    git(clone, "add", path)
    git(clone, "commit", "-q", "--amend", "--no-edit", who=MALLORY)
    git(clone, "push", "-q", "origin", "HEAD:main")
    settle(state_dir)
    assert len(tool_use_lines(state_dir, pid)) == 1, "a finished run ran again"
    assert status(state_dir, pid) == "succeeded"
    assert answers(state_dir, since), "the merge was not answered"
