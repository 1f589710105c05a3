"""The shared remote's branch: fetched and brought in, and every commit of this daemon's
pushed before its local branch moves (the Publisher the git layer is handed).

The remote's refusal of a non-fast-forward push is the compare-and-swap: a claim
(`approved -> running`) is the push that lands, and a daemon whose push is refused fetches,
reads what landed and decides again (a person's edit of the same file wins: it is read
first); when nothing it changed moved meanwhile, the same change is made again on the new
tip instead (replay.py).  What others pushed arrives by fetch, on the poll interval or at
once when poked (`janus-git poke`, a webhook delivery, a refused push), and is
fast-forwarded in: the reader then judges it commit by commit, as it judges a local commit.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ...errors import Conflict, GitError, JanusError
from ...gitrepo import GitRepo
from ...notify import Notifier
from ...util import utcnow
from ..state import DaemonState
from .leases import LEASE_REFS, SEEN_LEASES, Heartbeat, Lease, Leases
from .replay import Replaying

if TYPE_CHECKING:
    from ...webhook import WebhookServer

log = logging.getLogger(__name__)


class Remote(Replaying):
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
        self.webhook: WebhookServer | None = None
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
        self.repo.publisher = self
        seconds = float(self.cfg["lease_seconds"])
        self.heartbeat = Heartbeat(self.repo.root, self.name, self.instance,
                                   self.state.config.identity, every=seconds / 3,
                                   on_tampered=self._lease_tampered)
        self.heartbeat.start(self.repo.refs(SEEN_LEASES).get(
            f"{SEEN_LEASES}{self.instance}"))
        self._start_webhook()

    def close(self) -> None:
        self.repo.publisher = None
        if self.fetcher is not None:
            self.fetcher.join(35)  # (a fetch has a 30 s limit)
        if self.webhook is not None:
            self.webhook.close()
        if self.heartbeat is not None:
            self.heartbeat.close()

    def _lease_tampered(self, what: str) -> None:
        """(The heartbeat's thread.)  Someone other than this daemon changed its lease."""
        ref = f"{LEASE_REFS}{self.instance}"
        self.notifier.post(
            f"janus-git: lease {self.instance} {what.split(' (')[0].split(',')[0]} by "
            "someone else",
            f"{ref} on {self.name} ({self.url}) was {what} by someone other than its daemon "
            f"{self.instance!r} (which never deletes or rewinds it: a clean exit pushes a "
            "signed 'released' heartbeat).  The daemon pushed its lease again; the other "
            "daemons count from its last signed heartbeat, so its claims stay its own while "
            "it renews within lease_seconds.  Someone who can push to this remote did it.",
            kind="alert")

    def _start_webhook(self) -> None:
        hook = self.cfg.get("webhook")
        if not hook:
            if self.listen:
                raise JanusError("--webhook-listen was given, but remote.webhook in "
                                 "state/agent.yaml names no secret_env: there is no webhook "
                                 "to listen for")
            return
        from ...webhook import WebhookServer, secret_from_env
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
        present = {ref[len(SEEN_LEASES):] for ref in refs}
        self.leases.observe(moved, present)
        self._check_own(refs.get(f"{SEEN_LEASES}{self.instance}"))

    def _check_own(self, sha: str | None) -> None:
        """This daemon's own lease as fetched: missing (deleted) or a stranger's commit
        (deleted and pushed again by someone): the heartbeat puts it back now, not at its
        next renewal (the others keep counting from its last signed heartbeat meanwhile)."""
        hb = self.heartbeat
        if hb is None or hb.sha is None:
            return  # not pushed yet: nothing of ours to be missing
        if sha is None:
            hb.renew_soon()
            return
        known = self.leases.seen.get(self.instance)
        if sha in (hb.sha, hb.made) or (known is not None and known.sha == sha):
            return  # ours, or a genuine heartbeat (another daemon with our name: its error)
        if not self._ours(sha):
            hb.adopt = sha  # (an older heartbeat of ours put back: the heartbeat sees it)
        hb.renew_soon()

    def _ours(self, sha: str) -> bool:
        """Whether SHA is a heartbeat this daemon made (an older one of its chain)."""
        hb = self.heartbeat
        return hb is not None and hb.made is not None and self.repo.is_ancestor(sha, hb.made)

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
                "lease_tampered": self.heartbeat.tampered if self.heartbeat else 0,
                "lease_last_tampered": self.heartbeat.last_tampered if self.heartbeat else "",
                "lease_repushed_ms": self.heartbeat.repushed_ms if self.heartbeat else None,
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


