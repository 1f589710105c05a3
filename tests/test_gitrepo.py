"""The git layer: commits of exactly the named paths, polite retries on index.lock, and a
person committing in the same working tree at the same time without either side losing work."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import warnings
from typing import Callable

import pytest

from janus_git import gitrepo, lifecycle
from janus_git.errors import Conflict, GitError
from janus_git.gitrepo import GitRepo, Identity, format_message, read_blobs
from janus_git.proposal import Status

from conftest import AGENT, ALICE, git

AGENT_ID = Identity(*AGENT)


def test_commit_files_commits_only_the_named_paths(sr):
    root = sr.root
    (root / "notes" / "mine.md").write_text("a person's unstaged edit\n")
    (root / "notes" / "staged.md").write_text("a person's staged edit\n")
    git(root, "add", "notes/staged.md")
    sha = sr.repo.commit_files({"logs/x.txt": b"agent\n"}, "agent\n", AGENT_ID)
    changed = git(root, "diff-tree", "--no-commit-id", "--name-only", "-r", sha).stdout.split()
    assert changed == ["logs/x.txt"]
    # the person's work is exactly where they left it
    status = git(root, "status", "--porcelain").stdout.splitlines()
    assert "A  notes/staged.md" in status and "?? notes/mine.md" in status
    info = sr.repo.commit_info(sha)
    assert (info.author_name, info.author_email) == AGENT


def test_commit_files_deletes_and_guards(sr):
    sr.repo.commit_files({"notes/a.md": b"1\n"}, "add\n", AGENT_ID)
    sr.repo.commit_files({"notes/a.md": None}, "delete\n", AGENT_ID)
    assert not (sr.root / "notes/a.md").exists()
    assert sr.repo.read_blob("HEAD", "notes/a.md") is None
    # guard: None means "must not exist yet"
    (sr.root / "notes/b.md").write_text("someone's\n")
    with pytest.raises(Conflict):
        sr.repo.commit_files({"notes/b.md": b"agent\n"}, "x\n", AGENT_ID,
                             guard={"notes/b.md": None})
    assert (sr.root / "notes/b.md").read_text() == "someone's\n"


def test_message_trailers_parse(sr):
    msg = format_message("subject", "why\n", {"Janus-Proposal": "X", "Janus-Transition": "a -> b"})
    sha = sr.repo.commit_files({"notes/t.md": b"t\n"}, msg, AGENT_ID)
    assert sr.repo.commit_info(sha).trailers() == {"Janus-Proposal": "X",
                                                   "Janus-Transition": "a -> b"}
    out = git(sr.root, "log", "-1", "--format=%(trailers:key=Janus-Transition,valueonly)").stdout
    assert out.strip() == "a -> b"


def test_git_error_carries_command_and_output(sr):
    with pytest.raises(GitError) as e:
        sr.repo._run("rev-parse", "--verify", "no-such-branch")
    assert e.value.argv == ["rev-parse", "--verify", "no-such-branch"]
    assert e.value.returncode != 0
    assert "rev-parse" in str(e.value) and "\n" not in str(e.value)


def test_read_blob_and_read_blobs(sr):
    sha = sr.repo.commit_files({"notes/r.md": b"\x00binary\nok\n"}, "r\n", AGENT_ID)
    assert sr.repo.read_blob(sha, "notes/r.md") == b"\x00binary\nok\n"
    assert sr.repo.read_blob("HEAD", "notes/missing.md") is None
    assert sr.repo.read_blob("HEAD", "notes") is None  # a tree is not a blob
    blobs = git(sr.root, "ls-tree", "-r", "HEAD", "--", "notes", "state").stdout.splitlines()
    shas = [line.split()[2] for line in blobs]
    texts = read_blobs(sr.repo, shas)
    assert texts == [subprocess.run(["git", "cat-file", "blob", s], cwd=sr.root,
                                    capture_output=True).stdout for s in shas]
    assert read_blobs(sr.repo, []) == []
    assert read_blobs(sr.repo, ["0" * 40, shas[0]])[1] == texts[0], "a missing blob is skipped"


def test_fast_head_follows_packed_refs(sr):
    head = sr.repo.head()
    assert sr.repo.fast_head() == head
    git(sr.root, "pack-refs", "--all")
    assert not (sr.root / ".git/refs/heads/main").exists()
    assert sr.repo.fast_head() == head


def test_dirty_paths(sr):
    (sr.root / "state" / "constitution.md").write_text("edited\n")
    assert sr.repo.dirty_paths(["state/constitution.md", "state/agent.yaml"]) == {
        "state/constitution.md"}
    assert sr.repo.dirty_paths([]) == set()


def test_create_commit_on_leaves_worktree_and_index_alone(sr):
    head = sr.repo.head()
    index_before = (sr.root / ".git" / "index").read_bytes()
    sha = sr.repo.create_commit_on(head, {"notes/branch.md": b"on a branch\n"}, "branch\n",
                                   AGENT_ID)
    assert sr.repo.head() == head
    assert (sr.root / ".git" / "index").read_bytes() == index_before
    assert not (sr.root / "notes/branch.md").exists()
    assert sr.repo.read_blob(sha, "notes/branch.md") == b"on a branch\n"
    assert sr.repo.commit_info(sha).parents == [head]


# -- index.lock ---------------------------------------------------------------------------
def test_waits_politely_for_index_lock(sr):
    lock = sr.root / ".git" / "index.lock"
    lock.write_text("")

    def release():
        time.sleep(0.4)
        lock.unlink()

    t = threading.Thread(target=release)
    t.start()
    t0 = time.monotonic()
    sha = sr.repo.commit_files({"notes/l.md": b"l\n"}, "after the lock\n", AGENT_ID)
    waited = time.monotonic() - t0
    t.join()
    assert waited >= 0.35
    assert sr.repo.read_blob(sha, "notes/l.md") == b"l\n"


def test_gives_up_on_a_lock_that_stays(sr, monkeypatch):
    monkeypatch.setattr(gitrepo.commits, "LOCK_RETRY_SECONDS", 0.3)
    lock = sr.root / ".git" / "index.lock"
    lock.write_text("")
    head = sr.repo.head()
    with pytest.raises(Conflict) as e:
        sr.repo.commit_files({"notes/l.md": b"l\n"}, "never\n", AGENT_ID)
    assert "index.lock" in str(e.value)
    assert sr.repo.head() == head
    lock.unlink()


def test_a_failed_commit_leaves_the_working_tree_as_it_was(sr, monkeypatch):
    """Otherwise the agent's own half-done write looks like a person's uncommitted edit and
    every retry of the transition stops on Conflict."""
    monkeypatch.setattr(gitrepo.commits, "LOCK_RETRY_SECONDS", 0.2)
    p = lifecycle.new_proposal(mission="M", type_="analysis", tool="shell", args=[],
                               rationale="r", created_by="agent")
    lifecycle.create(sr.repo, p, AGENT_ID)
    text = (sr.root / p.path).read_bytes()
    (sr.root / ".git" / "index.lock").write_text("")
    with pytest.raises(Conflict):
        lifecycle.transition(sr.repo, p.__class__(**p.__dict__), Status.APPROVED, AGENT_ID,
                             base_text=text)
    (sr.root / ".git" / "index.lock").unlink()
    assert (sr.root / p.path).read_bytes() == text
    assert git(sr.root, "status", "--porcelain").stdout == ""
    lifecycle.transition(sr.repo, p, Status.APPROVED, AGENT_ID, base_text=text)  # retry works



# -- a person and the agent committing at the same time -----------------------------------
def _person_commits(root, path: str, text: str) -> str:
    (root / path).write_text(text)
    git(root, "add", path, who=ALICE)
    git(root, "commit", "-q", "-m", f"person: {path}", who=ALICE)
    return git(root, "rev-parse", "HEAD").stdout.strip()


def _interleave(monkeypatch, repo: GitRepo, when: str, action) -> "Callable[[], list[str]]":
    """Start ACTION once, just before (or just after) the agent's branch moves: the worst
    moment for a person to commit in the shared working tree.  The person runs beside the
    agent (their git waits while the agent holds index.lock, as a person's would).  Returns
    a function that waits for them and gives their commit."""
    fired: list[str] = []
    threads: list[threading.Thread] = []
    orig = repo._run_status

    def start() -> None:
        t = threading.Thread(target=lambda: fired.append(action()))
        t.start()
        threads.append(t)
        time.sleep(0.1)  # let it get as far as it can while the agent is mid-commit

    def run(*args, **kw):
        is_ref = "update-ref" in args[:3]
        if is_ref and when == "before" and not threads:
            start()
        out = orig(*args, **kw)
        if is_ref and when == "after" and not threads:
            start()
        return out

    monkeypatch.setattr(repo, "_run_status", run)

    def joined() -> list[str]:
        for t in threads:
            t.join()
        return fired
    return joined


def _new_proposal(sr):
    p = lifecycle.new_proposal(mission="M", type_="analysis", tool="shell", args=["ls"],
                               rationale="r", created_by="agent")
    return p


def _changed(root, sha) -> list[str]:
    return git(root, "diff-tree", "--no-commit-id", "--name-only", "-r", sha).stdout.split()


@pytest.mark.parametrize("step", ["create", "transition"])
def test_a_person_committing_mid_commit_never_takes_the_agents_change(sr, monkeypatch, step):
    p = _new_proposal(sr)
    if step == "transition":
        lifecycle.create(sr.repo, p, AGENT_ID)
    threads = _interleave(monkeypatch, sr.repo, "before",
                          lambda: _person_commits(sr.root, "notes/person.md", "mine\n"))
    if step == "create":
        sha = lifecycle.create(sr.repo, p, AGENT_ID)
    else:
        sha = lifecycle.transition(sr.repo, p, Status.APPROVED, AGENT_ID)
    fired = threads()
    assert fired, "the person committed in the middle"
    assert _changed(sr.root, fired[0]) == ["notes/person.md"], \
        "the person's commit swept the agent's change (it would look like their doing)"
    assert _changed(sr.root, sha) == [p.path]
    assert sr.repo.commit_info(sha).author_email == AGENT[1]
    assert git(sr.root, "status", "--porcelain").stdout == ""


def test_the_returned_sha_is_the_agents_commit(sr, monkeypatch):
    p = _new_proposal(sr)
    threads = _interleave(monkeypatch, sr.repo, "after",
                          lambda: _person_commits(sr.root, "notes/person.md", "mine\n"))
    sha = lifecycle.create(sr.repo, p, AGENT_ID)
    fired = threads()
    assert fired
    assert sha != fired[0], "commit_files returned the person's commit"
    assert sr.repo.commit_info(sha).trailers()["Janus-Proposal"] == p.id


def _human_loop(root, n: int, done: list[str], errors: list[str], lost_adds: list[str]) -> None:
    """What a person (or their editor's git plugin) does: write, add, commit; when git says
    index.lock is taken or HEAD moved under the commit, they wait and try again.

    If git says nothing is staged, their `git add` was undone by a concurrent index writer:
    git's own `commit` reads the index before it takes index.lock, so a `git add` landing in
    that window is overwritten (git 2.39).  They add again; LOST_ADDS counts it."""
    for k in range(n):
        path = f"notes/human-{k}.md"
        (root / path).write_text(f"human {k}\n")
        for _attempt in range(400):
            r = git(root, "add", path, who=ALICE, check=False)
            if r.returncode == 0:
                r = git(root, "commit", "-q", "-m", f"human {k}", who=ALICE, check=False)
                if r.returncode == 0:
                    done.append(path)
                    break
            if "index.lock" in r.stderr or "cannot lock ref" in r.stderr:
                time.sleep(0.01)
            elif "nothing added to commit" in r.stdout or "no changes added" in r.stdout:
                lost_adds.append(path)
            else:
                errors.append(f"{r.args}: {r.stderr.strip()} {r.stdout.strip()}")
                return
        else:
            errors.append(f"{path}: index.lock never released")
            return


def _locker(root, stop: threading.Event) -> None:
    """Someone (an IDE, a prompt running `git status`) holding index.lock for a moment."""
    lock = root / ".git" / "index.lock"
    while not stop.is_set():
        time.sleep(0.05)
        try:
            with open(lock, "x"):
                pass
        except FileExistsError:
            continue
        time.sleep(0.03)
        lock.unlink()


def test_concurrent_human_and_agent_commits_lose_nothing(sr):
    root = sr.root
    # a person's uncommitted edits to unrelated files, there the whole time
    (root / "notes" / "draft.md").write_text("half-written thought\n")
    (root / "state" / "constitution.md").write_text("an uncommitted edit\n")

    proposals = []
    for i in range(6):
        p = lifecycle.new_proposal(mission="M", type_="analysis", tool="shell",
                                   args=["echo", str(i)], rationale="r", created_by="agent")
        lifecycle.create(sr.repo, p, AGENT_ID)
        proposals.append(p)
    start = sr.repo.head()

    human_done: list[str] = []
    errors: list[str] = []
    lost_adds: list[str] = []
    stop = threading.Event()
    human = threading.Thread(target=_human_loop, args=(root, 15, human_done, errors, lost_adds))
    locker = threading.Thread(target=_locker, args=(root, stop))
    agent_shas = []
    human.start()
    locker.start()
    try:
        for p in proposals:
            for new in (Status.APPROVED, Status.RUNNING, Status.SUCCEEDED):
                agent_shas.append((p.id, new, lifecycle.transition(sr.repo, p, new, AGENT_ID)))
    finally:
        human.join()
        stop.set()
        locker.join()
    assert not errors, errors
    assert len(human_done) == 15
    if lost_adds:
        warnings.warn(f"git's read-before-lock race undid {len(lost_adds)} `git add`(s) of the "
                      "person; they added again (see _human_loop)", stacklevel=1)

    # every commit of both sides is there, in one line of history
    log = git(root, "log", "--format=%H %ae", f"{start}..HEAD").stdout.splitlines()
    authors = [line.split()[1] for line in log]
    assert authors.count(AGENT[1]) == len(agent_shas) == 18
    assert authors.count(ALICE[1]) == 15
    for path in human_done:
        assert sr.repo.read_blob("HEAD", path) is not None, f"lost {path}"
    for p in proposals:
        assert sr.store.read(p.id).status is Status.SUCCEEDED
    # each agent commit holds its proposal file only; each person's commit their file only
    for pid, new, sha in agent_shas:
        assert _changed(root, sha) == [f"proposals/{pid[:4]}/{pid[4:6]}/{pid}.yaml"], new
    for line in log:
        sha, email = line.split()
        if email == ALICE[1]:
            assert all(c.startswith("notes/human-") for c in _changed(root, sha))

    # the person's uncommitted work is untouched
    status = git(root, "status", "--porcelain").stdout.splitlines()
    assert sorted(status) == [" M state/constitution.md", "?? notes/draft.md"]
    assert (root / "state/constitution.md").read_text() == "an uncommitted edit\n"
    fsck = git(root, "fsck", "--strict", "--no-dangling", check=False)
    assert fsck.returncode == 0, fsck.stderr


def test_concurrent_agents_in_two_processes(sr, tmp_path):
    """Two committers through GitRepo (the daemon and `janus-git approve`) at once: all land."""
    script = tmp_path / "agent.py"
    script.write_text(
        "import sys\n"
        "from janus_git.gitrepo import GitRepo, Identity\n"
        "repo = GitRepo(sys.argv[1]); who = sys.argv[2]\n"
        "for k in range(10):\n"
        "    repo.commit_files({f'notes/{who}-{k}.md': b'x'}, f'{who} {k}\\n',\n"
        "                      Identity(who, who + '@localhost'))\n")
    procs = [subprocess.Popen([sys.executable, str(script), str(sr.root), who],
                              stderr=subprocess.PIPE, text=True) for who in ("one", "two")]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert [r for r, _ in results] == [0, 0], [e.strip().splitlines()[-1:] for _, e in results]
    for who in ("one", "two"):
        for k in range(10):
            assert sr.repo.read_blob("HEAD", f"notes/{who}-{k}.md") == b"x"
        assert len(git(sr.root, "log", f"--author={who}@", "--format=%H").stdout.split()) == 10
    assert git(sr.root, "status", "--porcelain").stdout == ""
    assert git(sr.root, "fsck", "--no-dangling", check=False).returncode == 0


def test_read_object_once_reads_loose_and_packed_commits_alike(sr):
    """Off the main thread a commit is read without the cat-file pipe: inflated from its
    loose object (checked against its id) or, once packed, through git."""
    sha = sr.repo.head()
    want = git(sr.root, "cat-file", "commit", sha).stdout.encode()
    assert sr.repo.read_object_once(sha) == want
    git(sr.root, "gc", "-q")  # now in a pack: no loose object to read
    assert sr.repo.read_object_once(sha) == want
    assert sr.repo.read_object_once("0" * 40) is None


def test_many_blobs_go_in_one_pack_with_the_ids_one_at_a_time_would_get(tmp_path):
    """write_blobs puts a batch in through one fast-import pack; the ids are each blob's
    own (binary, empty and newline-ended contents alike) and every blob reads back."""
    import os as _os

    from janus_git.gitrepo.commits import PACK_FROM
    git(tmp_path, "init", "-q", "-b", "main")
    repo = GitRepo(tmp_path)
    datas = [_os.urandom(n % 300) + b"\n\x00data 3\nblob\n" * (n % 3)
             for n in range(PACK_FROM + 7)]
    packs_before = list((tmp_path / ".git" / "objects" / "pack").glob("*.pack"))
    ids = repo.write_blobs(datas)
    assert list((tmp_path / ".git" / "objects" / "pack").glob("*.pack")) != packs_before
    expected = [subprocess.run(["git", "hash-object", "--stdin"], cwd=tmp_path, input=d,
                               capture_output=True, check=True).stdout.decode().strip()
                for d in datas[:5]]
    assert ids[:5] == expected
    assert [repo.objects.raw(i) for i in ids] == [(3, d) for d in datas]
    assert repo.write_blobs(datas[:3]) == ids[:3]  # a few: loose, the same ids
    repo.close()
