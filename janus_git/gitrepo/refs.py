"""Refs, the shared remote, and the repository settings that keep a pusher from changing
what git shows.

`harden` is applied by `init` and again at every daemon start (so a repository made before
it is hardened too):
- `core.useReplaceRefs=false`: the repository's own receive-pack (a person's push into the
  daemon's checkout runs it) judges fast-forwards by the real parents, not a replacement's;
- `transfer.hideRefs=refs/replace`: a push of `refs/replace/*` is refused by receive-pack,
  and none is handed out to a clone;
- `.git/info/attributes` unsets every content filter (`text`, `eol`, `filter`, `ident`,
  `working-tree-encoding`) for every path: it takes precedence over any `.gitattributes` a
  commit brings, so a checkout writes each blob's bytes as they are, which is what the daemon
  compares the working tree with.
`replace_refs` lists what replacements are there anyway (written locally, or from before the
hardening); the daemon deletes them and says so.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import GitError, JanusError
from .commits import Identity
from .proc import Process

REPLACE_REFS = "refs/replace/"
NEUTRAL_ATTRIBUTES = "* -text !eol -filter -ident !working-tree-encoding -crlf\n"
HARDENING = {
    "core.useReplaceRefs": "false",
    "transfer.hideRefs": "refs/replace",
    "core.autocrlf": "false",
}


class Refs(Process):
    root: Path

    def _publisher(self):
        """Remote mode's publisher for this repository, if one is plugged in."""
        return None

    def branch(self) -> str:
        return self._run("symbolic-ref", "--short", "HEAD").strip()

    def branches(self, prefix: str) -> list[str]:
        """Local branch names under PREFIX (e.g. janus/proposal/)."""
        return self._run("for-each-ref", "--format=%(refname:short)",
                         f"refs/heads/{prefix}").split()

    def person(self) -> Identity | None:
        """Who git says is at the keyboard (user.name/email, GIT_AUTHOR_*), if anyone."""
        ident = self._run("var", "GIT_AUTHOR_IDENT", check=False).strip()
        if "<" not in ident:
            return None
        name, _, rest = ident.partition(" <")
        return Identity(name.strip(), rest.split(">", 1)[0])

    def set_config(self, key: str, value: str) -> None:
        self._run("config", key, value)

    def config_values(self, key: str, local: bool = False) -> list[str]:
        """Every value KEY has (in this repository's own config alone, with LOCAL)."""
        return self._run("config", *(["--local"] if local else []), "--get-all", key,
                         check=False).split()

    def refs(self, prefix: str) -> dict[str, str]:
        """Refs under PREFIX (full names) and the objects they name."""
        out = self._run("for-each-ref", "--format=%(objectname) %(refname)", prefix)
        return {ref: sha for sha, _, ref in (line.partition(" ") for line in out.splitlines())
                if ref}

    def set_ref(self, ref: str, sha: str | None) -> None:
        self._run("update-ref", *(["-d", ref] if sha is None else [ref, sha]), check=False)

    def branch_exists(self, branch: str) -> bool:
        return self._run_status("rev-parse", "-q", "--verify", f"refs/heads/{branch}")[0] == 0

    def delete_branch(self, branch: str) -> None:
        self._run("update-ref", "-d", f"refs/heads/{branch}", check=False)
        publisher = self._publisher()
        if publisher is not None:
            publisher.publish_ref(f"refs/heads/{branch}", None)

    def update_branch_ref(self, branch: str, new: str, old: str | None) -> None:
        self._run("update-ref", f"refs/heads/{branch}", new, *([old] if old else []))
        publisher = self._publisher()
        if publisher is not None:
            publisher.publish_ref(f"refs/heads/{branch}", new)

    # -- hardening -----------------------------------------------------------------------
    def harden(self) -> list[str]:
        """Apply the settings above where they are missing; what was changed."""
        changed = []
        for key, value in HARDENING.items():
            if value not in self.config_values(key, local=True):
                self._run("config", "--local", "--add" if key.endswith("hideRefs") else
                          "--replace-all", key, value)
                changed.append(f"{key}={value}")
        attributes = self.root / ".git" / "info" / "attributes"
        try:
            current = attributes.read_text()
        except FileNotFoundError:
            current = ""
        if NEUTRAL_ATTRIBUTES not in current:
            attributes.parent.mkdir(parents=True, exist_ok=True)
            attributes.write_text(NEUTRAL_ATTRIBUTES + current)
            changed.append(".git/info/attributes")
        return changed

    def replace_refs(self) -> dict[str, str]:
        return self.refs(REPLACE_REFS)

    def drop_replace_refs(self) -> dict[str, str]:
        """Delete every `refs/replace/*` (and a graft file); what was there."""
        found = self.replace_refs()
        for ref in found:
            self.set_ref(ref, None)
        grafts = self.root / ".git" / "info" / "grafts"
        if grafts.exists():
            grafts.rename(grafts.with_name("grafts.ignored-by-janus-git"))
            found["info/grafts"] = "(file)"
        return found

    # -- a shared remote (remote mode: daemon/remote/) ----------------------------------------
    def remote_url(self, name: str) -> str | None:
        out = self._run("remote", "get-url", name, check=False).strip()
        return out or None

    def ls_remote(self, remote: str, ref: str, timeout: float = 10.0) -> tuple[bool, str | None]:
        """(answered, the object REF names on REMOTE, or None where it has none); on no
        answer, (False, why)."""
        status, out, err = self._run_status_timed(timeout, "ls-remote", remote, ref)
        if status != 0:
            return False, (out + err).strip()[-300:]
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            if name == ref:
                return True, sha
        return True, None

    def fetch(self, remote: str, refspecs: list[str], timeout: float = 60.0) -> None:
        """Fetch REFSPECS (forced updates of our own tracking refs: the remote is the
        truth), pruning what it deleted."""
        self._run_timed(timeout, "fetch", "-q", "--no-tags", "--prune", "--no-write-fetch-head",
                        remote, *refspecs)

    def push(self, remote: str, refspecs: list[str], timeout: float = 60.0) -> tuple[bool, str]:
        """(landed, git's words).  A non-fast-forward is refused by the remote: the
        compare-and-swap every daemon's claim goes through."""
        status, out, err = self._run_status_timed(timeout, "push", "--porcelain", "-q",
                                                  remote, *refspecs)
        return status == 0, (out + err).strip()

    def fast_forward(self, sha: str) -> None:
        """Move the checked-out branch forward to SHA, index and working tree with it."""
        with self._commit_lock():  # type: ignore[attr-defined]
            self._run_retrying("merge", "--ff-only", "-q", sha)

    def rebase_onto(self, upstream: str) -> None:
        """A person's local commits replayed onto UPSTREAM (their CLI's push was refused);
        a conflict is left to them, with the clone as it was."""
        status, out, err = self._run_status("rebase", "-q", upstream)
        if status != 0:
            self._run("rebase", "--abort", check=False)
            raise JanusError(f"your commits do not rebase cleanly onto {upstream}: "
                             f"{(out + err).strip()[-300:]}; pull, resolve and push by hand")


__all__ = ["GitError", "HARDENING", "NEUTRAL_ATTRIBUTES", "REPLACE_REFS", "Refs"]
