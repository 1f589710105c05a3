"""The state repository: creating it from the templates, and opening it."""
from __future__ import annotations

import json
import shutil
from functools import cached_property
from pathlib import Path

from .config import AGENT_PATH, Config, load_config
from .errors import JanusError
from .gitrepo import GitRepo, Identity, format_message, init_repo
from .store import Store

TEMPLATE_DIRS = ("state", "missions", "proposals", "logs")
STOP_PATH = "state/STOP"


def template_root() -> Path:
    """Where the templates are: in the installed package (a wheel carries them as
    janus_git/templates/), else the project's top-level folders (a source checkout or an
    editable install)."""
    package = Path(__file__).resolve().parent
    for root in (package / "templates", package.parent):
        if (root / AGENT_PATH).is_file():
            return root
    raise JanusError(f"templates not found in the package ({package / 'templates'}) nor beside "
                     f"it ({package.parent}); reinstall janus-git from a source checkout "
                     "(`pipx install .` or `pip install .`)")


class StateRepo:
    def __init__(self, root: str | Path, *, pipe_reads: bool = False) -> None:
        self.root = Path(root).resolve()
        if not (self.root / ".git").exists() or not (self.root / "state").is_dir():
            raise JanusError(f"{self.root} is not a janus-git state repository "
                             "(create one with `janus-git init DIR`)")
        self.repo = GitRepo(self.root, pipe_reads=pipe_reads)
        self.store = Store(self.repo)

    @cached_property
    def index(self):
        """The derived sqlite index (imported on first use: `show` never needs it)."""
        from .index import Index
        return Index(self.repo)

    @cached_property
    def config(self) -> Config:
        return load_config(self.root)

    def human_identity(self) -> Identity:
        """The person at the keyboard: their git identity (approvals depend on it)."""
        me = self.repo.person()
        if me is None:
            raise JanusError("git does not know who you are: set `git config user.name` and "
                             "`git config user.email` (approvals are checked against them)")
        return me

    def stopped_at(self, rev: str = "HEAD") -> str | None:
        data = self.repo.read_blob(rev, STOP_PATH)
        return data.decode(errors="replace") if data is not None else None


def init_state(target: Path) -> tuple[Path, bool]:
    """Create a state repository at TARGET; returns (path, created).  An existing state
    repository is left as it is; any other non-empty folder is refused."""
    target = target.resolve()
    if target.exists() and any(target.iterdir()):
        if (target / ".git").exists() and (target / AGENT_PATH).is_file():
            return target, False
        raise JanusError(f"{target} is not empty and is not a janus-git state repository; "
                         "choose a new or empty folder")
    src = template_root()
    repo = init_repo(target)
    for name in TEMPLATE_DIRS:
        shutil.copytree(src / name, target / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", ".cache", "STOP"))
    for folder in ("nodes", "notes"):
        (target / folder).mkdir(exist_ok=True)
        (target / folder / ".gitkeep").touch()
    ident = committer(repo)
    _first_rules(target, repo, ident)
    repo.add_all()
    repo.commit_all_staged(format_message("janus: initialise state repository"), ident)
    # A commit-graph with changed-path Bloom filters makes per-file `git log` ~15x faster.
    repo.set_config("core.commitGraph", "true")
    repo.set_config("fetch.writeCommitGraph", "true")
    # the rules in force are derived from history: a push may add to it, never rewrite it
    repo.set_config("receive.denyNonFastForwards", "true")
    return target, True


def _first_rules(target: Path, repo: GitRepo, person: Identity | None) -> None:
    """The first commit's rules are trusted as they are: the person who runs `init` is the
    first approver (when git knows them), and the agent's key (made outside the repository)
    is listed under the agent's e-mail in state/allowed_signers."""
    from .agentkey import ensure_key, signers_line
    agent = load_config(target).identity
    signers = target / "state" / "allowed_signers"
    old = signers.read_text() if signers.is_file() else ""
    signers.write_text(old + signers_line(agent.email, ensure_key()))
    me = repo.person()
    if person is None and me is not None:
        name, email = me.name, me.email
        path = target / AGENT_PATH
        text = path.read_text()
        if email and email.lower() != agent.email.lower() and "\napprovers: []\n" in text:
            path.write_text(text.replace("\napprovers: []\n", f"\napprovers:\n  - name: "
                                         f"{json.dumps(name)}\n    email: {email}\n", 1))


def committer(repo: GitRepo) -> Identity | None:
    """None when git knows the person (their identity is used), else the agent's."""
    return None if repo.person() is not None else load_config(repo.root).identity
