"""Leases: each daemon's heartbeat, pushed to `refs/janus/lease/<instance>` from a thread of
its own, and everyone's as this daemon last fetched them.

A lease that has not moved for `lease_seconds` (by the observer's own clock: no clock skew)
has expired.  Only the agent's signed heartbeats count, and only forward: anyone who can push
can delete or rewrite a lease ref, and that neither ends a lease sooner nor keeps one alive
longer.  A lease that vanished expires `lease_seconds` after its last genuine move, as one
that stopped; its daemon puts it back (from its heartbeat thread, at its next renewal or as
soon as a fetch shows it gone) and posts an alert.  Only its own signed "released" heartbeat
(a clean exit) ends a lease at once.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ...gitrepo import GitRepo
from ...util import utcnow

log = logging.getLogger(__name__)
LEASE_REFS = "refs/janus/lease/"
SEEN_LEASES = "refs/janus/leases/"  # our copy of everyone's, as last fetched


@dataclass
class Lease:
    sha: str
    changed: float  # monotonic: when this observer saw it move
    released: bool = False
    renewed_at: str = ""  # what its daemon wrote: a heartbeat only ever moves forward
    gone: bool = False  # its ref was missing at the last fetch (deleted: by someone else)


class Leases:
    """Everyone's heartbeat refs as this daemon last fetched them."""

    def __init__(self, own: str) -> None:
        self.own = own
        self.seen: dict[str, Lease] = {}

    def observe(self, moved: dict[str, Lease], present: set[str]) -> None:
        """MOVED: the leases whose heartbeat moved (already checked genuine); PRESENT: every
        lease name on the remote.  A lease missing from the remote is kept, as it was last
        seen: anyone who can push can delete a ref, and a deletion is no heartbeat of its
        daemon's (it never deletes its lease: a clean exit pushes a signed "released").  It
        expires `lease_seconds` after its last genuine move, like one that stopped moving,
        and its last renewed_at still refuses an older heartbeat put back in its place."""
        self.seen.update(moved)
        for name, lease in self.seen.items():
            lease.gone = name not in present

    def alive(self, name: str, seconds: float) -> bool:
        lease = self.seen.get(name)
        return (lease is not None and not lease.released
                and time.monotonic() - lease.changed < seconds)

    def live(self, seconds: float) -> set[str]:
        return {name for name in self.seen if self.alive(name, seconds)}

    def view(self, seconds: float) -> dict[str, Any]:
        now = time.monotonic()
        return {name: {"alive": self.alive(name, seconds), "released": lease.released,
                       "moved_seconds_ago": round(now - lease.changed, 1),
                       "deleted": lease.gone}
                for name, lease in sorted(self.seen.items())}


class Heartbeat:
    """This daemon's lease, renewed by push from a thread of its own: a busy main loop (a
    long commit, a held step) must not look like a dead daemon.

    Each push names the heartbeat it expects the ref to hold (--force-with-lease), so a ref
    that someone else deleted or rewrote is noticed at the next renewal: it is put back (the
    chain goes on from what is there when that is this daemon's own heartbeat, or a
    stranger's commit the main thread has read: `adopt`), and ON_TAMPERED is told."""

    def __init__(self, root, remote: str, instance: str, identity, every: float,
                 on_tampered: Callable[[str], None] | None = None) -> None:
        self.repo = GitRepo(root)  # its own: heartbeats go to the lease ref, never the branch
        self.root = root
        self.remote = remote
        self.ref = f"{LEASE_REFS}{instance}"
        self.instance = instance
        self.identity = identity
        self.every = every
        self.on_tampered = on_tampered
        self.sha: str | None = None  # the last heartbeat known to be on the remote
        self.made: str | None = None  # the last one made (a timed-out push may have landed)
        self.adopt: str | None = None  # a stranger's commit on the ref, to build on
        self.renewed = 0.0  # monotonic time of the last renewal that landed
        self.tampered = 0  # times the ref was found changed by someone else
        self.last_tampered = ""
        self.repushed_ms: float | None = None  # from noticing to the lease being back
        self.error = ""
        self.stop = threading.Event()
        self.now = threading.Event()  # renew at once (a fetch showed the lease missing)
        self.thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def start(self, current: str | None) -> None:
        self.sha = self.made = current  # the chain goes on from the remote's last heartbeat
        self.renew()
        self.thread.start()

    def renew_soon(self) -> None:
        self.now.set()

    def renew(self, note: str = "alive") -> bool:
        msg = (f"janus lease {self.instance}: {note}\n\nrenewed_at: {utcnow()}\n"
               f"pid: {os.getpid()}\nhost: {socket.gethostname()}\n")
        tip = self.made or self.sha
        parents = [tip] if tip else []
        adopt = self.adopt
        if adopt and adopt != tip and not (tip and self.repo.is_ancestor(adopt, tip)):
            parents.append(adopt)  # a stranger's commit on our ref: we build on it
        sha = self.repo.empty_commit(parents, msg, self.identity)
        self.made = sha
        expect = adopt or self.sha
        ok, words = self._push(sha, expect)
        what = f"overwritten with {adopt[:10]}, which is not its heartbeat" if adopt else ""
        if not ok and expect and "stale info" in words:
            ok, words, what = self._mend(sha)
        if ok:
            self.sha, self.renewed, self.error = sha, time.monotonic(), ""
            if self.adopt == adopt:
                self.adopt = None
            if what:
                self._tampered(what)
            return True
        self.error = (f"could not renew the lease {self.ref}: {words[-300:]} (another daemon "
                      f"with the instance name {self.instance!r}?)")
        log.error("%s", self.error)
        return False

    def _push(self, sha: str, expect: str | None) -> tuple[bool, str]:
        """Push SHA to the lease ref if the remote holds EXPECT there ("": nothing; None:
        no expectation, the first heartbeat of a lease never seen)."""
        lease = [] if expect is None else [f"--force-with-lease={self.ref}:{expect}"]
        return self.repo.push(self.remote, [*lease, f"{sha}:{self.ref}"], timeout=10)

    def _mend(self, sha: str) -> tuple[bool, str, str]:
        """The ref is not the heartbeat we last pushed: look at what is there instead.
        Returns (landed, git's words, what someone else did: "" if nothing)."""
        t0 = time.monotonic()
        ok, there = self.repo.ls_remote(self.remote, self.ref)
        if not ok:
            return False, there or "", ""
        if there == self.sha:
            return (*self._push(sha, there), "")  # (it moved back and forth meanwhile)
        if there is None:
            what = "deleted"
        elif self.repo.is_ancestor(there, sha):
            if there == self.made_before(sha):
                return (*self._push(sha, there), "")  # our timed-out push had landed
            what = f"reset to an older heartbeat ({there[:10]})"
        else:
            return False, (f"the remote holds {there[:10]} there, which is not this "
                           "daemon's heartbeat"), ""
        ok, words = self._push(sha, there or "")
        if ok:
            self.repushed_ms = round((time.monotonic() - t0) * 1000, 1)
        return ok, words, what

    def made_before(self, sha: str) -> str | None:
        """The heartbeat SHA was made on (its first parent)."""
        info = self.repo.commit_info(sha)
        return info.parents[0] if info.parents else None

    def _tampered(self, what: str) -> None:
        self.tampered += 1
        self.last_tampered = f"{utcnow()}: {what}"
        log.warning("the lease %s was %s by someone other than this daemon; pushed again",
                    self.ref, what)
        if self.on_tampered is not None:
            try:
                self.on_tampered(what)
            except Exception:
                log.exception("could not post the lease alert")

    def _run(self) -> None:
        while True:
            self.now.wait(self.every)
            self.now.clear()
            if self.stop.is_set():
                return
            try:
                self.renew()
            except Exception as e:  # a heartbeat failure must not take the daemon down
                self.error = f"lease renewal failed: {e}"
                log.exception("lease renewal failed")

    def close(self) -> None:
        """A clean exit releases the lease at once: nobody waits for it to expire."""
        self.stop.set()
        self.now.set()
        if self.thread.is_alive():
            self.thread.join(15)  # (a renewal in flight: up to a push, a look, a push)
        try:
            self.renew("released")
        except Exception:
            log.exception("could not release the lease")
        self.repo.close()
