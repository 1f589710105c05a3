"""Where notifications go: the `notifications.urls` entries of the rules in force, resolved.

An entry is a URL, the NAME of an environment variable that holds one, or an apprise config
file outside the repository: a secret (a Slack token, a mail password) lives in the service's
environment or in /etc, never in a commit.  Each entry carries apprise tags that route kinds
(approval, reminder, alert, stop, summary, test); an entry with none gets every kind.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
ALWAYS = "always"  # apprise's own tag for "every notification"


@dataclass(frozen=True)
class Target:
    key: str                # for delivery bookkeeping: a hash, so no secret lands on disk
    label: str              # for logs and `notify test`: the scheme and a redacted tail
    url: str | None = None
    config: str | None = None
    tags: tuple[str, ...] = ()

    def wants(self, kind: str) -> bool:
        """A config file's entries carry their own tags: apprise sorts those out."""
        return self.config is not None or not self.tags or ALWAYS in self.tags \
            or kind in self.tags


def redact(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://…{rest[-12:]}" if rest else "…"


def _key(where: str) -> str:
    return hashlib.sha256(where.encode()).hexdigest()[:16]


def resolve(entries: list[Any], root: Path | None = None) -> tuple[list[Target], list[str]]:
    """The targets ENTRIES name, and a line per entry that names none (an unset variable, a
    config file inside the repository)."""
    found: list[Target] = []
    problems: list[str] = []
    for entry in entries or []:
        if isinstance(entry, Target):
            found.append(entry)
            continue
        spec = {"url": entry} if isinstance(entry, str) else dict(entry)
        tags = tuple(spec.get("tags") or ())
        if "env" in spec:
            url = os.environ.get(spec["env"], "").strip()
            if not url:
                problems.append(f"environment variable {spec['env']} is not set")
                continue
            found.append(Target(_key(url), f"${spec['env']}", url=url, tags=tags))
        elif "config" in spec:
            path = Path(spec["config"]).expanduser().resolve()
            if root is not None and path.is_relative_to(Path(root).resolve()):
                problems.append(f"apprise config {path} is inside the repository: anyone "
                                "who can push could change where messages go")
                continue
            found.append(Target(_key(str(path)), str(path), config=str(path), tags=tags))
        else:
            url = str(spec["url"])
            found.append(Target(_key(url), redact(url), url=url, tags=tags))
    return found, problems


def deliver(target: Target, title: str, body: str, kind: str,
            attach: str | None = None) -> bool:
    """Send one message to TARGET with a fresh apprise instance (its mail plugin otherwise
    waits 5.5 s between sends on one instance).  apprise never raises: its result is truthy
    only on success.  A target whose entries want nothing of KIND counts as delivered."""
    import apprise

    ap = apprise.Apprise()
    if target.config is not None:
        conf = apprise.AppriseConfig()
        if not conf.add(target.config):
            log.error("apprise config %s could not be read", target.label)
            return False
        ap.add(conf)
    elif not target.url or not ap.add(target.url, tag=list(target.tags) or ALWAYS):
        log.error("notification URL not understood by apprise: %s", target.label)
        return False
    if not list(ap.find(tag=kind)):
        return True
    return bool(ap.notify(title=title, body=body, tag=kind, attach=attach or None))
