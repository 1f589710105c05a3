"""Remote mode: the state repository lives on a shared remote (a bare repository over SSH or
git://, a forge), people review in their own clones, and several daemons share the work.

Git is the coordination; there is no service of our own:
- every commit this daemon makes is pushed *before* its local branch moves (gitrepo's
  publisher), so the clone is never ahead of the remote with work of its own.  The remote's
  refusal of a non-fast-forward push is the compare-and-swap: a claim (`approved -> running`)
  is the push that lands, and a daemon whose push is refused fetches, reads what landed and
  decides again (a person's edit of the same file wins: it is read first);
- what others pushed arrives by fetch, on the poll interval or at once when poked
  (`janus-git poke`, a webhook delivery, a refused push), and is fast-forwarded in: the
  reader then judges it commit by commit, as it judges a local commit;
- liveness is a lease: each daemon pushes a heartbeat commit to `refs/janus/lease/<instance>`.
  A lease that has not moved for `lease_seconds` (by the observer's own clock: no clock skew)
  has expired; the claims of its daemon become `interrupted`, never run twice.  The live
  daemon with the least instance name leads: it alone decides new proposals, thinks, and
  makes the daily summary and hygiene.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import Conflict, GitError, JanusError
from ..gitrepo import PUBLISHERS, GitRepo, Publisher
from ..notify import Notifier
from ..util import utcnow
from .state import DaemonState

log = logging.getLogger("janus_git.daemon")
LEASE_REFS = "refs/janus/lease/"
SEEN_LEASES = "refs/janus/leases/"  # our copy of everyone's, as last fetched


def default_instance() -> str:
    return socket.gethostname() or "janus"


@dataclass
class Lease:
    sha: str
    changed: float  # monotonic: when this observer saw it move
    released: bool = False
    renewed_at: str = ""  # what its daemon wrote: a heartbeat only ever moves forward


class Leases:
    """Everyone's heartbeat refs as this daemon last fetched them."""

    def __init__(self, own: str) -> None:
        self.own = own
        self.seen: dict[str, Lease] = {}

    def observe(self, moved: dict[str, Lease], present: set[str]) -> None:
        """MOVED: the leases whose heartbeat moved (already checked genuine); PRESENT: every
        lease name on the remote."""
        self.seen.update(moved)
        for name in set(self.seen) - present:
            del self.seen[name]

    def alive(self, name: str, seconds: float) -> bool:
        lease = self.seen.get(name)
        return (lease is not None and not lease.released
                and time.monotonic() - lease.changed < seconds)

    def live(self, seconds: float) -> set[str]:
        return {name for name in self.seen if self.alive(name, seconds)}

    def view(self, seconds: float) -> dict[str, Any]:
        now = time.monotonic()
        return {name: {"alive": self.alive(name, seconds), "released": lease.released,
                       "moved_seconds_ago": round(now - lease.changed, 1)}
                for name, lease in sorted(self.seen.items())}


class Heartbeat:
    """This daemon's lease, renewed by push from a thread of its own: a busy main loop (a
    long commit, a held step) must not look like a dead daemon."""

    def __init__(self, root, remote: str, instance: str, identity, every: float) -> None:
        self.repo = GitRepo(root)  # its own: GitPython's pipes are not shared across threads
        self.remote = remote
        self.ref = f"{LEASE_REFS}{instance}"
        self.instance = instance
        self.identity = identity
        self.every = every
        self.sha: str | None = None
        self.renewed = 0.0  # monotonic time of the last renewal that landed
        self.error = ""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def start(self, current: str | None) -> None:
        self.sha = current  # the chain goes on from the remote's last heartbeat
        self.renew()
        self.thread.start()

    def renew(self, note: str = "alive") -> bool:
        msg = (f"janus lease {self.instance}: {note}\n\nrenewed_at: {utcnow()}\n"
               f"pid: {os.getpid()}\nhost: {socket.gethostname()}\n")
        sha = self.repo.empty_commit([self.sha] if self.sha else [], msg, self.identity)
        ok, words = self.repo.push(self.remote, [f"{sha}:{self.ref}"], timeout=10)
        if ok:
            self.sha, self.renewed, self.error = sha, time.monotonic(), ""
            return True
        self.error = (f"could not renew the lease {self.ref}: {words[-300:]} (another daemon "
                      f"with the instance name {self.instance!r}?)")
        log.error("%s", self.error)
        return False

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.renew()
            except Exception as e:  # a heartbeat failure must not take the daemon down
                self.error = f"lease renewal failed: {e}"
                log.exception("lease renewal failed")

    def close(self) -> None:
        """A clean exit releases the lease at once: nobody waits for it to expire."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        try:
            self.renew("released")
        except Exception:
            log.exception("could not release the lease")
        self.repo.close()


class Remote(Publisher):
    def __init__(self, repo: GitRepo, state: DaemonState, instance: str,
                 notifier: Notifier, listen: str | None = None) -> None:
        self.repo = repo
        self.listen = listen  # this daemon's webhook address, over the configuration's
        self.state = state
        self.instance = instance
        self.notifier = notifier
        self.poked = threading.Event()
        self.leases = Leases(instance)
        self.heartbeat: Heartbeat | None = None
        self.webhook = None
        self.next_fetch = 0.0
        self._poked_at = 0.0
        self.behind = False  # fetched, but not yet brought in (a claim held the writes)
        self.fetching = threading.Lock()
        self.fetcher: threading.Thread | None = None  # the poll's fetch, when in the background
        self.fetch_failure: GitError | None = None
        self.url = ""
        self.stats: dict[str, Any] = {"last_fetch": None, "last_push": None, "fetches": 0,
                                      "pushes": 0, "refused_pushes": 0, "replayed": 0,
                                      "lag_commits": 0,
                                      "fetch_error": "", "poke_to_fetch_ms": None}

    @property
    def cfg(self) -> dict[str, Any]:
        return self.state.config["remote"] or {}

    @property
    def name(self) -> str:
        return self.cfg.get("name", "origin")

    @property
    def branch(self) -> str:
        return self.cfg.get("branch") or self.state.config.branch

    @property
    def tracking(self) -> str:
        return f"refs/remotes/{self.name}/{self.branch}"

    # -- life ----------------------------------------------------------------------------
    def open(self) -> None:
        url = self.repo.remote_url(self.name)
        if url is None:
            raise JanusError(f"state/agent.yaml names the remote {self.name!r}, but this clone "
                             f"has none: `git -C {self.repo.root} remote add {self.name} URL`")
        self.url = _redact(url)
        self.sync()
        PUBLISHERS[self.repo.root] = self
        seconds = float(self.cfg["lease_seconds"])
        self.heartbeat = Heartbeat(self.repo.root, self.name, self.instance,
                                   self.state.config.identity, every=seconds / 3)
        self.heartbeat.start(self.repo.refs(SEEN_LEASES).get(
            f"{SEEN_LEASES}{self.instance}"))
        self._start_webhook()

    def close(self) -> None:
        PUBLISHERS.pop(self.repo.root, None)
        if self.fetcher is not None:
            self.fetcher.join(35)  # (a fetch has a 30 s limit)
        if self.webhook is not None:
            self.webhook.close()
        if self.heartbeat is not None:
            self.heartbeat.close()

    def _start_webhook(self) -> None:
        hook = self.cfg.get("webhook")
        if not hook:
            if self.listen:
                raise JanusError("--webhook-listen was given, but remote.webhook in "
                                 "state/agent.yaml names no secret_env: there is no webhook "
                                 "to listen for")
            return
        from ..webhook import WebhookServer, secret_from_env
        self.webhook = WebhookServer(self.listen or hook["listen"],
                                     secret_from_env(hook["secret_env"]),
                                     lambda _delivery: self.poke(),
                                     seen_path=self.repo.git_dir / "janus" / "webhook-seen")
        self.webhook.start()

    def poke(self) -> None:
        """Fetch at the next step (a webhook delivery, `janus-git poke`, a refused push)."""
        if not self.poked.is_set():
            self._poked_at = time.monotonic()
        self.poked.set()
        self.state.wake.set()

    # -- fetch and integrate ---------------------------------------------------------------
    def due(self) -> bool:
        return (self.poked.is_set() or self.behind or time.monotonic() >= self.next_fetch
                or (self.fetcher is not None and not self.fetcher.is_alive()))

    def wait_time(self) -> float:
        return 0.0 if self.poked.is_set() else max(0.0, self.next_fetch - time.monotonic())

    def sync(self, background: bool = False) -> None:
        """Fetch the branch and everyone's leases, and bring the clone up to the remote.
        In the BACKGROUND (the main loop's poll) the fetch runs in a thread of its own and a
        later call brings in what it fetched: the loop never waits on the network while a
        run could be starting (a poll's fetch in the loop held each next start ~60 ms)."""
        if self.fetcher is not None:
            if background and self.fetcher.is_alive():
                return
            self.fetcher.join()
            self.fetcher = None
            self._fetched()
            if background:
                return
        if self.behind and not self.poked.is_set() and time.monotonic() < self.next_fetch:
            self._integrate()  # fetched while a claim was landing: brought in now
            return
        if self.poked.is_set():  # how long a poke waited for its fetch (status, tests)
            self.stats["poke_to_fetch_ms"] = round(
                (time.monotonic() - self._poked_at) * 1000, 1)
        self.poked.clear()
        self.next_fetch = time.monotonic() + float(self.cfg["poll_seconds"])
        if background:
            self.fetcher = threading.Thread(target=self._fetch, name="fetch", daemon=True)
            self.fetcher.start()
            return
        self._fetch()
        self._fetched()

    def _fetch(self) -> None:
        self.fetch_failure = None
        try:
            with self.fetching:  # (a claim's replay may fetch from its own thread)
                self.repo.fetch(self.name, [f"+refs/heads/{self.branch}:{self.tracking}",
                                            f"+{LEASE_REFS}*:{SEEN_LEASES}*"], timeout=30)
        except GitError as e:
            self.fetch_failure = e
        finally:
            self.state.wake.set()

    def _fetched(self) -> None:
        """What a fetch brought: leases observed, the branch brought in (main thread)."""
        e = self.fetch_failure
        if e is not None:
            self.stats["fetch_error"] = str(e)[-300:]
            raise JanusError(f"could not fetch from {self.name}: {e.stderr.strip()[-200:]}; "
                             "retrying at the next poll") from None
        self.stats.update(last_fetch=utcnow(), fetches=self.stats["fetches"] + 1,
                          fetch_error="")
        self._observe_leases()
        self._integrate()

    def _integrate(self) -> None:
        self.behind = not self.state.writes.acquire(blocking=False)
        if self.behind:
            return  # a claim is being pushed from its thread: the next step brings this in
        try:
            self._bring_in()
        finally:
            self.state.writes.release()

    def _bring_in(self) -> None:
        tip = self.repo.refs(self.tracking).get(self.tracking)
        head = self.repo.head()
        if tip is None or tip == head:
            self.stats["lag_commits"] = 0
            return
        if head is None or self.repo.is_ancestor(head, tip):
            self.stats["lag_commits"] = self.repo.rev_count(head, tip) if head else 0
            with self.state.writes:
                self.repo.fast_forward(tip)
            return
        if self.repo.is_ancestor(tip, head):
            # commits made in this clone by hand: they go up as they are (the reader judges
            # them like any other)
            self.publish(head, tip)
            return
        raise JanusError(f"{self.repo.root}'s {self.branch} and {self.name}/{self.branch} "
                         "have diverged: commits were made in the daemon's clone while the "
                         "remote moved on; rebase them onto the remote and push, or reset "
                         "the clone to it")

    def _observe_leases(self) -> None:
        """Everyone's heartbeats as fetched.  Anyone who can push can write a lease ref, so
        a move counts only when it is the agent's signed commit, names the lease it is on,
        and is newer than the last one seen: a forged lease cannot keep a dead daemon's
        claims alive, and a made-up name cannot take the lead (and with it the deciding)."""
        refs = self.repo.refs(SEEN_LEASES)
        moved = {}
        for ref, sha in refs.items():
            name = ref[len(SEEN_LEASES):]
            known = self.leases.seen.get(name)
            if known is not None and known.sha == sha:
                continue
            lease = self._genuine(name, sha, known)
            if lease is not None:
                moved[name] = lease
            elif known is None or known.sha != sha:
                log.warning("lease %s moved to %s, which is not the agent's signed heartbeat "
                            "for it; ignored", name, sha[:10])
        self.leases.observe(moved, {ref[len(SEEN_LEASES):] for ref in refs})

    def _genuine(self, name: str, sha: str, known: Lease | None) -> Lease | None:
        commit = self.repo.commit_info(sha)
        subject = commit.subject
        renewed = next((line.split(":", 1)[1].strip() for line in commit.body.splitlines()
                        if line.startswith("renewed_at:")), "")
        if not subject.startswith(f"janus lease {name}: ") or not renewed:
            return None
        if known is not None and renewed <= known.renewed_at:
            return None  # an old heartbeat put back: a replay
        if not self.state.trust.is_agent(commit):
            return None
        return Lease(sha, time.monotonic(), subject.endswith(": released"), renewed)

    # -- publishing (gitrepo calls these inside its commit lock) ----------------------------
    def publish(self, sha: str, old: str | None) -> None:
        ok, words = self.repo.push(self.name, [f"{sha}:refs/heads/{self.branch}"], timeout=30)
        if ok:
            self.stats.update(last_push=utcnow(), pushes=self.stats["pushes"] + 1)
            return
        self.stats["refused_pushes"] += 1
        self.poke()
        last = words.splitlines()[-1][-160:] if words else "?"
        why = "the remote moved on" if _refused(words) else f"the push to {self.name} failed"
        raise Conflict(f"{why} ({last}); fetching, then deciding again")

    def tip(self) -> str | None:
        with self.fetching:
            self.repo.fetch(self.name, [f"+refs/heads/{self.branch}:{self.tracking}"],
                            timeout=30)
        self.stats["fetches"] += 1
        return self.repo.refs(self.tracking).get(self.tracking)

    def replayed(self) -> None:
        self.stats["replayed"] += 1

    def publish_ref(self, ref: str, sha: str | None) -> None:
        ok, words = self.repo.push(self.name, [f"{sha or ''}:{ref}"], timeout=30)
        if not ok:
            log.warning("could not push %s to %s: %s", ref, self.name, words[-200:])

    # -- leases: who is alive, who leads, whose claims are orphaned --------------------------
    def alive(self) -> set[str]:
        seconds = float(self.cfg["lease_seconds"])
        live = self.leases.live(seconds)
        if self.heartbeat and time.monotonic() - self.heartbeat.renewed < seconds:
            live.add(self.instance)
        return live

    def leader(self) -> bool:
        live = self.alive()
        return bool(live) and min(live) == self.instance

    def orphaned(self, claimed_by: str | None) -> bool:
        """A claim whose daemon's lease has expired (or that no daemon holds a lease for)."""
        return bool(claimed_by) and claimed_by != self.instance and \
            claimed_by not in self.alive()

    def status(self) -> dict[str, Any]:
        seconds = float(self.cfg.get("lease_seconds", 30))
        return {"name": self.name, "url": self.url,
                "branch": self.branch, "instance": self.instance, "leader": self.leader(),
                **self.stats, "lease_error": self.heartbeat.error if self.heartbeat else "",
                "leases": self.leases.view(seconds),
                "webhook": self.webhook.stats if self.webhook is not None else None}


def _refused(words: str) -> bool:
    return any(w in words for w in ("rejected", "non-fast-forward", "fetch first",
                                    "stale info", "failed to update ref", "cannot lock ref"))


def _redact(url: str) -> str:
    """user:password@ never reaches a status file."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/")[0]:
        rest = "…@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def claimed_by(execution: dict[str, Any]) -> str | None:
    return execution.get("instance") if isinstance(execution, dict) else None


