"""Starting a run: from a waiting sandbox, from a waiting shell or confine.py, or cold; and
the run's scratch dir."""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import cgroups
from .argv import (
    CONFINE,
    NOBODY,
    PATH,
    bwrap_argv,
    confine_flags,
    drop_to_nobody,
    reduced_argv,
    rlimits,
    setpriv_argv,
    start_bwrap,
    start_reduced,
    start_warm,
    ulimit_lines,
)
from .cgroups import Cgroups
from .prestart import Prestarted, kind_for, pool, prestart_off, spawn_sandbox
from .probe import probes

log = logging.getLogger(__name__)


def _scratch(writable_dir: Path | None) -> tuple[Path, bool]:
    if writable_dir is not None:
        path, owned = Path(writable_dir), False
        path.mkdir(parents=True, exist_ok=True)
    else:
        # the pid names the owner: a daemon killed with -9 leaves its dirs to the next probe
        path, owned = Path(tempfile.mkdtemp(prefix=f"janus-git-run-{os.getpid()}-")), True
    if drop_to_nobody():
        os.chown(path, NOBODY, NOBODY)
    return path, owned


def sandbox_kind(root: Path, network: bool, hide_git: bool, binds: list[str],
                 shm_bytes: int) -> tuple[str, bool, list[str]]:
    """The waiting sandbox a run fits, named by what its mounts are made from: .git is
    hidden only if it exists, a bind made only if its path does, and a repository replaced
    at the same path is another one."""
    hide = hide_git and (root / ".git").exists()
    kept = sorted(b for b in binds if os.path.exists(b))
    st = os.stat(root)
    key = json.dumps([str(root), st.st_dev, st.st_ino, network, hide, kept, shm_bytes])
    return f"sandbox:{key}", hide, kept


@dataclass
class Launch:
    """Everything a start needs, so that a warm start that fails can be retried cold."""
    argv: list[str]
    iso: str
    root: Path
    network: bool
    hide_git: bool
    binds: list[str]
    limits: dict
    overhead: int
    use_cg: bool
    landlock: bool
    extra_env: dict[str, str]
    stdin: int
    writable_dir: Path | None
    scratch: Path | None = None
    owned: bool = False

    def env(self) -> dict[str, str]:
        home = "/tmp" if self.iso == "bwrap" else str(self.scratch)
        return {**self.extra_env, "PATH": PATH, "LANG": "C.UTF-8", "HOME": home,
                "TMPDIR": home}

    def drop_scratch(self) -> None:
        if self.owned and self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch, self.owned = None, False

    def start(self) -> tuple[subprocess.Popen, Cgroups, str]:
        """Warm from a waiter when one is ready, else (or when it fails) cold.  On failure
        nothing is left behind but the scratch dir (drop_scratch): no waiter, no cgroup."""
        have_cg = self.use_cg and any(probes()["cgroups"].values())
        if have_cg and self.iso == "bwrap" and self.writable_dir is None and \
                self.stdin == subprocess.DEVNULL and not prestart_off():
            warm_kind, recipe = self._sandbox()
            pre = pool.take(warm_kind, recipe)
            if pre is not None:
                self.scratch, self.owned = pre.scratch, False  # the waiter's to remove
                try:
                    return self._release_sandbox(pre), pre.cg, "sandbox"
                except (OSError, ValueError) as e:
                    log.warning("warm start failed (%s); starting cold", e)
                    pre.discard()
        self.scratch, self.owned = _scratch(self.writable_dir)
        kind = kind_for(self.landlock, have_cg)
        pre = pool.take(kind) if kind and not prestart_off() else None
        if pre is not None and kind:
            try:
                return self._start(pre, pre.cg), pre.cg, kind.removesuffix("-bare")
            except (OSError, ValueError) as e:
                log.warning("warm start failed (%s); starting cold", e)
                pre.discard()
        cg = cgroups.make(cgroups.run_name(), self.use_cg)
        try:
            return self._start(None, cg), cg, ""
        except OSError:
            cg.remove()
            raise

    def _sandbox(self) -> tuple[str, Callable[[], Prestarted | None]]:
        """The waiting sandbox this run fits: same repository, network, binds, /dev/shm."""
        shm = self.limits["disk_write_mb"] << 20
        kind, hide, binds = sandbox_kind(self.root, self.network, self.hide_git, self.binds,
                                         shm)
        return kind, functools.partial(spawn_sandbox, kind, self.root, self.network, hide,
                                       binds, shm)

    def _release_sandbox(self, pre: Prestarted) -> subprocess.Popen:
        pre.cg.limit(self.limits, self.overhead, strict=True)
        lim = rlimits(self.limits, pre.cg, self.overhead, not drop_to_nobody())
        # no `cd`: bwrap made /repo the working directory (and a 0700 repository could not
        # be entered again by uid 65534); the shell is still root: setpriv drops it last
        pre.cg.start_counting()
        pre.release(setpriv_argv() + self.argv, None, self.env(), ulimit_lines(lim))
        # the waiter's scratch is the run's from now on: the run removes it
        pre.scratch, self.owned = None, True
        return pre.proc

    def _start(self, pre: Prestarted | None, cg: Cgroups) -> subprocess.Popen:
        assert self.scratch is not None  # (made by `start` before this)
        cg.limit(self.limits, self.overhead, strict=pre is not None)
        userns = self.iso == "bwrap" or (not self.network and probes()["unshare_net"])
        lim = rlimits(self.limits, cg, self.overhead, userns and not drop_to_nobody())
        if self.iso == "bwrap":
            cmd = bwrap_argv(self.argv, self.root, self.scratch, self.network, self.hide_git,
                             self.binds, self.limits["disk_write_mb"] << 20)
            if pre is not None:
                return start_warm(pre, cmd, self.root, self.env(), lim)
            return start_bwrap(cmd, self.root, self.env(), self.stdin, cg, lim)
        flags = (confine_flags(self.root, self.scratch, self.network, self.hide_git,
                               self.binds) if self.landlock else [])
        cmd = reduced_argv(self.argv, lim, self.network, probes()["unshare_net"])
        if pre is not None:
            return start_warm(pre, flags + cmd, self.root, self.env(), None)
        return start_reduced((CONFINE if self.landlock else []) + flags + cmd, self.root,
                             self.env(), self.stdin, cg)
