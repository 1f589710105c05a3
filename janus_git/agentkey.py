"""The agent's signing key: how the agent's own commits are told from a pusher's.

A commit is the agent's only when it carries a good SSH signature by a key listed under the
agent's principal in the allowed-signers file in force, never because of its e-mail address.
The private key lives outside the repository, in $JANUS_GIT_HOME (not bound into any sandbox,
mode 0600); `janus-git init` makes it and lists its public half in `state/allowed_signers`.
Several daemons sharing one remote each have their own key, all under the agent's principal.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .errors import JanusError

KEY_NAME = "agent_ed25519"


def home_dir() -> Path:
    return Path(os.environ.get("JANUS_GIT_HOME")
                or Path.home() / ".local" / "state" / "janus-git")


def key_path() -> Path:
    """$JANUS_GIT_AGENT_KEY, or the key in $JANUS_GIT_HOME."""
    explicit = os.environ.get("JANUS_GIT_AGENT_KEY")
    return Path(explicit) if explicit else home_dir() / KEY_NAME


def find_key() -> Path | None:
    path = key_path()
    return path if path.is_file() and Path(f"{path}.pub").is_file() else None


def ensure_key() -> Path:
    """The agent's key, made on first use (ed25519, no passphrase, 0600 in a 0700 folder)."""
    path = key_path()
    if find_key():
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "janus-git agent",
                        "-f", str(path)], check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise JanusError("ssh-keygen is not installed (apt-get install openssh-client): the "
                         "agent signs its commits with an SSH key") from None
    except subprocess.CalledProcessError as e:
        raise JanusError(f"ssh-keygen could not make the agent key at {path}: "
                         f"{e.stderr.strip()}") from None
    os.chmod(path, 0o600)
    return path


def signers_line(principal: str, key: Path) -> str:
    """The allowed_signers line that lists KEY's public half under PRINCIPAL."""
    kind, blob = Path(f"{key}.pub").read_text().split()[:2]
    return f"{principal} namespaces=\"git\" {kind} {blob} janus-git agent\n"


def sign_args(key: Path | None) -> list[str]:
    """`git` options that make a commit signed by KEY (nothing when there is no key)."""
    if key is None:
        return []
    return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"]
