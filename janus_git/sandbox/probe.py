"""What this machine offers the sandbox (probed once per process), and doctor()."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from . import cgroups, confine
from .argv import NOBODY, bwrap_argv, drop_to_nobody
from .cgroups import v2 as cgroup2
from .prestart import prestart_off

_probe_lock = threading.Lock()
_probe: dict | None = None


def bwrap_probe() -> tuple[bool, str]:
    """Run `true` with exactly the bwrap command line real runs get."""
    path = shutil.which("bwrap")
    if not path:
        return False, "bwrap is not installed (apt-get install bubblewrap)"
    scratch = Path(tempfile.mkdtemp(prefix="janus-git-probe-"))
    try:
        r = subprocess.run(bwrap_argv(["true"], Path("/usr"), scratch, False, False, []),
                           capture_output=True, timeout=10, cwd="/")
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"bwrap does not start: {e}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if r.returncode != 0:
        detail = (r.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        return False, f"bwrap cannot build the sandbox here: {detail}"
    how = ("as root: privileged namespaces, setpriv to uid 65534" if drop_to_nobody()
           else "in a user namespace as uid 65534")
    return True, f"bwrap works ({how}, all capabilities dropped)"


def unshare_probe() -> bool:
    """Can the reduced sandbox still take the network away (an unprivileged user+net
    namespace with util-linux unshare)?"""
    path = shutil.which("unshare")
    if not path:
        return False
    kw: dict[str, Any] = (dict(user=NOBODY, group=NOBODY, extra_groups=[])
                          if drop_to_nobody() else {})
    try:
        return subprocess.run([path, "--user", "--net", "true"], capture_output=True,
                              timeout=10, cwd="/", **kw).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def sweep_scratch() -> int:
    """Scratch dirs (janus-git-run-<pid>-*) whose daemon died without removing them."""
    gone = 0
    for path in Path(tempfile.gettempdir()).glob("janus-git-run-*-*"):
        if not cgroups.owner_alive(path.name.removeprefix("janus-git-")):
            shutil.rmtree(path, ignore_errors=True)
            gone += 1
    return gone


def probes() -> dict:
    global _probe
    with _probe_lock:
        if _probe is None:
            sweep_scratch()
            ok, why = bwrap_probe()
            _probe = {"bwrap_usable": ok, "bwrap_why": why, "cgroups": cgroups.probe(),
                      "cgroup_version": cgroups.version(),
                      "unshare_net": unshare_probe(), "landlock": confine.abi()}
        return _probe


def forced_reduced() -> bool:
    return os.environ.get("JANUS_GIT_FORCE_REDUCED", "") not in ("", "0")


def landlock_off() -> bool:
    return os.environ.get("JANUS_GIT_NO_LANDLOCK", "") not in ("", "0")


def cgroups_off() -> bool:
    return os.environ.get("JANUS_GIT_NO_CGROUPS", "") not in ("", "0")


def doctor() -> dict:
    """Which isolation runs would get, and why (for `janus-git doctor`)."""
    p = probes()
    forced = forced_reduced()
    isolation = "bwrap" if p["bwrap_usable"] and not forced else "reduced"
    why = p["bwrap_why"] if not forced else "JANUS_GIT_FORCE_REDUCED is set"
    landlock = p["landlock"] >= 1 and not landlock_off()
    if isolation == "reduced":
        why += "; runs get rlimits, their own session and a clean environment, no namespaces"
        why += (f"; Landlock ABI {p['landlock']} confines files, TCP and signals" if landlock
                else "; no Landlock: a run can write what its uid can")
    cg = {k: (v and not cgroups_off()) for k, v in p["cgroups"].items()}
    return {"bwrap": shutil.which("bwrap") is not None, "bwrap_path": shutil.which("bwrap"),
            "bwrap_usable": p["bwrap_usable"], "isolation": isolation, "why": why,
            "forced_reduced": forced, "cgroups": cg, "cgroup_version": p["cgroup_version"],
            "cgroup_advice": cgroup_advice(cg, p["cgroup_version"]),
            "fork_bomb_guard": "pids cgroup" if cg.get("pids") else
            "RLIMIT_NPROC as uid 65534" if drop_to_nobody() else
            "RLIMIT_NPROC in the run's own user namespace" if isolation == "bwrap" or
            p["unshare_net"] else "sampling only (not root, no cgroup, no user namespace)",
            "run_as_uid": NOBODY if drop_to_nobody() else os.geteuid(),
            "network_isolation": isolation == "bwrap" or p["unshare_net"],
            "warm_starts": any(cg.values()) and not prestart_off(),
            "landlock": landlock}


def cgroup_advice(cg: dict, version: int) -> str:
    """What to change so that runs get every controller; "" when they do."""
    if cgroups_off():
        return "JANUS_GIT_NO_CGROUPS is set: runs get no cgroup"
    controllers = {k: v for k, v in cg.items() if k != "tree"}
    if controllers and all(controllers.values()):
        return ""
    if version == 2 or cgroup2.mount_point() is not None and not any(cg.values()):
        return cgroup2.delegation_advice()
    missing = ", ".join(k for k, v in controllers.items() if not v)
    return (f"cgroup v1 {missing} not writable under the daemon's cgroup: run the daemon as "
            "root, or on a cgroup v2 host under systemd with Delegate=yes")


def python_binds() -> list[str]:
    """Paths a `python -m janus_git...` child needs inside bwrap (interpreter, site, package)."""
    import janus_git
    paths = {sys.base_prefix, sys.prefix, str(Path(janus_git.__file__).parent.parent)}
    paths.update(p for p in sys.path if p and Path(p).is_dir() and "site-packages" in p)
    return sorted(p for p in paths if not p.startswith(("/usr/", "/etc/")) and p != "/usr")
