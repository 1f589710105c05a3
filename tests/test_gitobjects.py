"""The daemon's view of history equals git's own, with replacements off, whatever a pusher
puts in a commit: arbitrary bytes in messages, author names and e-mails, mode and type
changes on every guarded path, symlinks, gitlinks, `.gitattributes`, `.gitmodules`,
replacement refs, lease refs and merges (a differential property test, hypothesis).

The reference is git itself, asked one commit at a time with NUL-separated fields
(`GIT_NO_REPLACE_OBJECTS=1`): what `gitrepo` reads from objects must match it field for
field.  JANUS_GIT_PROPERTY_EXAMPLES sets how many examples run (the suite's default keeps the
file well under a minute; `bench/bench_objects.py --examples N` runs more).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pygit2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from janus_git.gitrepo import REGULAR_MODES, GitRepo, ObjectReader, parse_commit

EXAMPLES = int(os.environ.get("JANUS_GIT_PROPERTY_EXAMPLES", "150"))
PATHS = ["state/STOP", "state/agent.yaml", "state/allowed_signers", "missions/m.yaml",
         "proposals/2026/12/20261208-000000000-aaaaaa.yaml", ".gitattributes", ".gitmodules",
         "notes/a.md", "logs/tool_use.jsonl"]
GITLINK_TARGET = "1" * 40
REF_ENV = {"GIT_NO_REPLACE_OBJECTS": "1", "LC_ALL": "C"}


def raw_git(root: Path, *args: str, stdin: bytes | None = None, env: dict | None = None
            ) -> bytes:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")
            or k.startswith(("GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM"))}
    full.update(env or {})
    proc = subprocess.run(["git", *args], cwd=root, input=stdin, capture_output=True, env=full)
    assert proc.returncode == 0, (args, proc.stderr)
    return proc.stdout


# -- what a pusher can make ------------------------------------------------------------------
ident_text = st.text(st.characters(blacklist_characters="\n\x00", codec="utf-8",
                                   blacklist_categories=("Cs",)), max_size=30)
message_bytes = st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b"\x1e"))
file_op = st.tuples(
    st.sampled_from(PATHS),
    st.sampled_from(["blob", "blob", "exec", "symlink", "gitlink", "delete", "folder"]),
    st.binary(max_size=40))
commit_spec = st.fixed_dictionaries({
    "author": st.tuples(ident_text, ident_text),
    "message": message_bytes,
    "ops": st.lists(file_op, max_size=4),
    "merge": st.booleans(),
})
history = st.fixed_dictionaries({
    "commits": st.lists(commit_spec, min_size=1, max_size=5),
    "replace": st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), max_size=2),
    "lease": st.booleans(),
})


def _tree(repo: pygit2.Repository, files: dict[str, tuple[int, bytes | str]]) -> str:
    """A tree of FILES ({path: (mode, content or gitlink id)}), nested folders and all."""
    top: dict = {}
    for path, entry in files.items():
        *dirs, name = path.split("/")
        node = top
        for d in dirs:
            node = node.setdefault(d, {})
            if not isinstance(node, dict):
                break
        else:
            node[name] = entry

    def write(node: dict) -> str:
        builder = repo.TreeBuilder()
        for name, entry in node.items():
            if isinstance(entry, dict):
                builder.insert(name, write(entry), pygit2.enums.FileMode.TREE)
            else:
                mode, data = entry
                oid = data if mode == 0o160000 else repo.create_blob(data)
                builder.insert(name, oid, mode)
        return str(builder.write())
    return write(top)


def build(root: Path, spec: dict) -> list[str]:
    """Make SPEC's commits on `main` as raw objects (so authors and messages are exactly
    the bytes drawn); returns every object id made."""
    repo = pygit2.Repository(str(root / ".git"))
    made: list[str] = []
    files: dict[str, tuple[int, bytes | str]] = {}
    parent: str | None = None
    side: str | None = None
    for n, c in enumerate(spec["commits"]):
        for path, kind, data in c["ops"]:
            files.pop(path, None)
            files.pop(f"{path}/x", None)
            for other in [p for p in files if path.startswith(p + "/")]:
                files.pop(other)  # a file cannot also be a folder
            if kind == "delete":
                continue
            mode = {"blob": 0o100644, "exec": 0o100755, "symlink": 0o120000,
                    "folder": 0o100644, "gitlink": 0o160000}[kind]
            key = f"{path}/x" if kind == "folder" else path
            files[key] = (mode, GITLINK_TARGET if kind == "gitlink" else data)
            if kind != "gitlink":
                made.append(str(pygit2.hash(data)))
        for p in [p for p in files if any(q.startswith(p + "/") for q in files)]:
            files.pop(p)
        tree = _tree(repo, files)
        parents = [p for p in (parent, side if c["merge"] else None) if p]
        name, email = c["author"]
        header = f"tree {tree}\n" + "".join(f"parent {p}\n" for p in parents)
        who = f"{name} <{email}> 1700000000 +0000".encode()
        raw = header.encode() + b"author " + who + b"\ncommitter " + who + b"\n\n" + c["message"]
        sha = str(repo.odb.write(pygit2.enums.ObjectType.COMMIT, raw))
        made.append(sha)
        if c["merge"] or side is None:  # a side line to merge later
            side = str(repo.odb.write(pygit2.enums.ObjectType.COMMIT, header.encode() +
                                      b"author s <s@x> 1 +0000\ncommitter s <s@x> 1 +0000"
                                      b"\n\nside %d\n" % n))
        parent = sha
    raw_git(root, "update-ref", "refs/heads/main", parent, env=REF_ENV)
    made = [m for m in made if m in repo]  # a blob written over in the same commit is not
    for a, b in spec["replace"]:
        x, y = made[a % len(made)], made[b % len(made)]
        if x != y and repo.odb.read(x)[0] == repo.odb.read(y)[0]:
            raw_git(root, "update-ref", f"refs/replace/{x}", y, env=REF_ENV)
    if spec["lease"]:
        raw_git(root, "update-ref", "refs/janus/lease/d1", parent, env=REF_ENV)
    return made


def git_view(root: Path, sha: str) -> dict:
    """git's own account of one commit, replacements off."""
    fields = raw_git(root, "show", "-s", "--encoding=none", "--format=%P%x00%an%x00%ae", sha,
                     env=REF_ENV).rstrip(b"\n").split(b"\x00")
    parents = fields[0].decode().split()
    base = parents[0] if parents else "--root"
    out = raw_git(root, "diff-tree", "-r", "-z", "--no-renames", "--no-commit-id",
                  *([base, sha] if parents else ["--root", sha]), env=REF_ENV)
    items = out.split(b"\x00")
    changes, modes, blobs = {}, {}, {}
    for i in range(0, len(items) - 1, 2):
        meta = items[i].lstrip(b":").split()
        if len(meta) < 5:
            continue
        path = items[i + 1].decode()
        letter = meta[4].decode()[0]
        changes[path] = letter
        modes[path] = 0 if letter == "D" else int(meta[1], 8)
        blobs[path] = meta[3].decode()
    return {"parents": parents, "name": fields[1].decode("utf-8", "replace"),
            "email": fields[2].decode("utf-8", "replace"), "changes": changes,
            "modes": modes, "blobs": blobs}


def ours(repo: GitRepo, sha: str) -> dict:
    c = repo.objects.with_changes(repo.commit_info(sha))
    blobs = {p: (repo.entry(sha, p) or (0, "0" * 40))[1] for p in c.changes}
    return {"parents": c.parents, "name": c.author_name, "email": c.author_email,
            "changes": c.changes, "modes": c.modes, "blobs": blobs}


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=history)
def test_the_daemons_view_of_history_is_gits_own(tmp_path_factory, spec):
    root = tmp_path_factory.mktemp("prop")
    raw_git(root, "init", "-q", "-b", "main")
    build(root, spec)
    repo = GitRepo(root)
    chain = [c.sha for c in repo.first_parent_log(None, "HEAD")]
    assert chain == raw_git(root, "rev-list", "--first-parent", "--reverse", "HEAD",
                            env=REF_ENV).decode().split()
    for sha in chain:
        mine, theirs = ours(repo, sha), git_view(root, sha)
        # diff-tree reports a changed file's old-side blob for a deletion; ours reports none
        theirs["blobs"] = {p: b for p, b in theirs["blobs"].items()
                           if theirs["changes"][p] != "D"}
        mine["blobs"] = {p: b for p, b in mine["blobs"].items() if mine["changes"][p] != "D"}
        assert mine == theirs, sha
        if mine["parents"]:  # the index's diff: each file's blob id is git's own
            diffed = {path: blob for letter, path, blob in repo.diff_tree(mine["parents"][0], sha)
                      if letter != "D"}
            assert diffed == {p: b for p, b in theirs["blobs"].items()
                              if theirs["modes"][p] in REGULAR_MODES}, sha
    # a read command's pipe (git cat-file --batch, trees parsed in Python) reads the same
    # raw objects and entries as libgit2, file, symlink, gitlink and folder alike
    piped = ObjectReader(root, pipe=True)
    for sha in chain:
        c = repo.commit_info(sha)
        assert piped.raw(sha) == repo.objects.raw(sha) and piped.raw(c.tree) == \
            repo.objects.raw(c.tree)
        paths = set(repo.objects.with_changes(repo.commit_info(sha)).changes)
        paths |= {p.rsplit("/", 1)[0] for p in paths if "/" in p}
        paths |= {p + "/below" for p in list(paths)} | {"", "nothing/there", "a//b"}
        for path in sorted(paths):
            assert piped.entry(c.tree, path) == repo.objects.entry(c.tree, path), path
            assert piped.blob(c.tree, path) == repo.objects.blob(c.tree, path), path
    piped.close()
    # many commits at once (one `git diff-tree --stdin`) read the same as one at a time
    batch = [repo.commit_info(sha) for sha in chain]
    repo._diff_many(batch, ())
    for c in batch:
        one = repo.objects.with_changes(repo.commit_info(c.sha))
        assert (c.changes, c.modes) == (one.changes, one.modes), c.sha
    # the first-parent log restricted to the guarded folders is the same walk, filtered
    guarded = repo.first_parent_log(None, "HEAD", paths=("state", "missions"))
    expected = raw_git(root, "rev-list", "--first-parent", "--reverse", "HEAD", "--",
                       "state", "missions", env=REF_ENV).decode().split()
    assert [c.sha for c in guarded] == expected
    # and what each changed there is what it changed anywhere, under those folders, one at
    # a time and in a batch
    batched = [repo.commit_info(c.sha) for c in guarded]
    repo._diff_many(batched, ("state/", "missions/"))
    for c, b in zip(guarded, batched):
        assert (c.changes, c.modes) == (b.changes, b.modes), c.sha
    for c in guarded:
        whole = repo.objects.with_changes(repo.commit_info(c.sha))
        inside = {p: x for p, x in whole.changes.items() if p.startswith(("state/", "missions/"))}
        assert c.changes == inside, c.sha
        assert c.modes == {p: whole.modes[p] for p in inside}, c.sha
    repo.close()


# -- malformed objects -----------------------------------------------------------------------
@pytest.mark.parametrize("header, why", [
    (b"parent " + b"a" * 40 + b"\nauthor x <x@y> 1 +0000\n", "tree"),
    (b"tree " + b"4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor a <a@b> 1 +0000\n"
     b"author janus-agent <janus-agent@localhost> 1 +0000\n", "2 author lines"),
    (b"tree zz\nauthor x <x@y> 1 +0000\n", "tree"),
])
def test_a_malformed_commit_has_no_author(header, why):
    c = parse_commit("f" * 40, header + b"committer x <x@y> 1 +0000\n\nmsg\n")
    assert c.malformed and why in c.malformed
    assert c.author_email == "" and c.author_name == ""


def test_a_message_cannot_add_a_record_or_a_parent():
    """The bytes that split `git log` output, and a made-up header, in a message are text."""
    forged = (b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
              b"author Mallory <m@x> 1 +0000\ncommitter Mallory <m@x> 1 +0000\n\n"
              b"subject\x1f\x1e" + b"a" * 40 + b"\x1f\x1fJanus Agent\x1fjanus-agent@localhost"
              b"\nparent " + b"b" * 40 + b"\n")
    c = parse_commit("c" * 40, forged)
    assert c.parents == [] and c.author_email == "m@x" and not c.malformed


# -- signatures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signing(tmp_path_factory):
    """A repository, the agent's key, and an allowed_signers file that lists it."""
    root = tmp_path_factory.mktemp("sig")
    raw_git(root, "init", "-q", "-b", "main")
    key = root.parent / "agent_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    signers = root.parent / "allowed_signers"
    public = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    signers.write_text(f"janus-agent@localhost {public}\n")
    return root, key, signers


@settings(max_examples=max(10, EXAMPLES // 10), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                       max_size=120), tamper=st.booleans())
def test_the_signature_verdict_is_gits_own(signing, message, tamper):
    """The agent's commit signed in-process verifies with `git verify-commit`; the same
    signature on a changed object verifies with neither."""
    from janus_git.gitrepo import Identity
    from janus_git.trust import Rules, Trust
    root, key, signers = signing
    repo = GitRepo(root)
    repo._key = key
    sha = repo.commit_tree("4b825dc642cb6eb9a060e54bf8d69288fbee4904", [],
                           message + "\n", Identity("Janus Agent", "janus-agent@localhost"))
    if tamper:
        raw = repo.read_object(sha)
        forged = raw.replace(b"\n\n", b"\n\nchanged: ", 1)
        sha = raw_git(root, "hash-object", "-t", "commit", "-w", "--literally", "--stdin",
                      stdin=forged).decode().strip()
    proc = subprocess.run(["git", "-c", f"gpg.ssh.allowedSignersFile={signers}",
                           "verify-commit", sha], cwd=root, capture_output=True,
                          env={**os.environ, **REF_ENV})
    rules = Rules("", {"state/allowed_signers": signers.read_bytes()},
                  __import__("janus_git.config", fromlist=["x"]).config_from_text(None))
    ours_ok, _ = Trust(repo).signed_by(sha, "janus-agent@localhost", rules)
    assert ours_ok == (proc.returncode == 0) == (not tamper)
    repo.close()


# -- the read commands' pipe ----------------------------------------------------------------
def test_status_through_the_pipe_shows_a_stop_a_pushed_replacement_hides(state_dir):
    """A pusher's `refs/replace/*` swapping the stop commit for its parent (whose tree has no
    state/STOP) changes what a replacement-honouring git shows, never what `status` reads."""
    import json
    subprocess.run(["janus-git", "stop", "--reason", "hold", "-C", str(state_dir)],
                   check=True, capture_output=True)
    raw_git(state_dir, "config", "--unset", "core.useReplaceRefs")  # as before harden()
    raw_git(state_dir, "replace", "HEAD", "HEAD~1")
    shown = raw_git(state_dir, "ls-tree", "--name-only", "HEAD", "state/")
    assert b"state/STOP" not in shown  # the replacement bites plain git
    out = subprocess.run(["janus-git", "status", "--json", "-C", str(state_dir)],
                         capture_output=True, text=True, check=True).stdout
    assert "hold" in (json.loads(out)["stopped"] or "")


def test_the_pipe_says_missing_apart_from_a_pipe_that_ended(tmp_path):
    from janus_git.errors import GitError
    raw_git(tmp_path, "init", "-q", "-b", "main")
    blob = raw_git(tmp_path, "hash-object", "-w", "--stdin", stdin=b"x\n").decode().strip()
    reader = ObjectReader(tmp_path, pipe=True)
    assert reader.raw(blob) == (3, b"x\n") and reader.raw("0" * 40) is None
    reader._pipe.proc.kill()
    reader._pipe.proc.wait()
    with pytest.raises(GitError, match="cat-file --batch"):
        reader.raw(blob)  # not "no such object": the stop would read as off


def test_a_malformed_tree_has_no_entries_through_the_pipe_as_through_libgit2(tmp_path):
    raw_git(tmp_path, "init", "-q", "-b", "main")
    bad = raw_git(tmp_path, "hash-object", "-t", "tree", "-w", "--literally", "--stdin",
                  stdin=b"100644 no-nul-and-no-id").decode().strip()
    piped, linked = ObjectReader(tmp_path, pipe=True), ObjectReader(tmp_path)
    assert piped.entry(bad, "no-nul-and-no-id") is None
    assert piped.entry(bad, "x") == linked.entry(bad, "x") is None
    piped.close()
