"""How a run starts: the bwrap command line, the rlimits, and the two launchers that put the
command under its cgroups and rlimits before any of it runs."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .cgroups import Cgroups

if TYPE_CHECKING:
    from .prestart import Prestarted

NOBODY = 65534
PATH = "/usr/local/bin:/usr/bin:/bin"
_WRAPPER = 'read -r _ && exec "$@"'


def drop_to_nobody() -> bool:
    """As root, runs become uid 65534; as anyone else they stay that user (in a userns)."""
    return os.geteuid() == 0


# As root, bwrap runs privileged: namespaces without a user namespace (in one, the sandbox's
# uid would map to kuid 0 and own every root file), only the capabilities setpriv needs, and
# setpriv drops to 65534 with empty capability sets before the command.  As another user,
# bwrap makes a user namespace and maps 65534 to that user.  Paths are bound by name because
# bwrap resolves even --bind-fd sources by path (a 0700 parent refuses uid 65534).
_NAMESPACES = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
               "--unshare-cgroup-try"]
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_DROP = ["--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
         "--inh-caps=-all", "--bounding-set=-all"]


def setpriv_argv() -> list[str]:
    """As root, what drops a command to uid 65534 with nothing left to regain."""
    return [shutil.which("setpriv") or "setpriv", *_DROP, "--"] if drop_to_nobody() else []


def bwrap_argv(argv: list[str], root: Path, scratch: Path, network: bool, hide_git: bool,
               binds: list[str], shm_bytes: int = 64 << 20, drop: bool = True) -> list[str]:
    """DROP: setpriv in front of ARGV (a waiting sandbox leaves it to its script)."""
    cmd = [shutil.which("bwrap") or "bwrap"]
    if drop_to_nobody():
        cmd += [n for n in _NAMESPACES if not (network and n == "--unshare-net")]
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                "--cap-add", "CAP_SETPCAP"]
    else:
        cmd += ["--unshare-all", *(["--share-net"] if network else []), "--cap-drop", "ALL",
                "--uid", str(NOBODY), "--gid", str(NOBODY)]
    cmd += ["--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    cmd += ["--proc", "/proc", "--perms", "0755", "--dir", "/dev"]  # else 0700: untraversable
    for dev in _DEVICES:  # five binds instead of --dev's sixteen mounts (~5 ms here)
        cmd += ["--dev-bind", dev, dev]
    # /dev/shm is memory, not disk: its own size cap, and the memory cgroup counts it.
    cmd += ["--perms", "1777", "--size", str(shm_bytes), "--tmpfs", "/dev/shm",
            "--ro-bind", str(root), "/repo"]
    if hide_git and (root / ".git").is_dir():
        cmd += ["--tmpfs", "/repo/.git"]
    elif hide_git and (root / ".git").exists():  # a linked worktree's or submodule's file
        cmd += ["--ro-bind", "/dev/null", "/repo/.git"]
    cmd += extra_binds(binds)
    cmd += ["--bind", str(scratch), "/tmp"]
    # what lives under /tmp (a virtualenv, say) is bound over the scratch, after it
    cmd += extra_binds([p for p in binds if os.path.normpath(p).startswith("/tmp/")],
                       under_tmp=True)
    cmd += ["--chdir", "/repo", "--"]
    return cmd + (setpriv_argv() if drop else []) + argv


def extra_binds(paths: list[str], under_tmp: bool = False) -> list[str]:
    """Read-only binds at their own path.  Missing ancestors are made 0755 first: bwrap
    copies the host's mode, and a 0700 /root would hide a Python under /root/.pyenv."""
    system: tuple[str, ...] = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/proc",
                               "/dev")
    system += () if under_tmp else ("/tmp",)
    keep = sorted({os.path.normpath(p) for p in paths})
    keep = [p for p in keep if not any(p != q and p.startswith(q + "/") for q in keep)]
    keep = [p for p in keep if not p.startswith(system) and os.path.exists(p)]
    out: list[str] = []
    made: set[str] = set()
    for path in keep:
        for anc in reversed(Path(path).parents[:-1]):
            if str(anc) not in made:
                made.add(str(anc))
                out += ["--perms", "0755", "--dir", str(anc)]
        out += ["--ro-bind", path, path]
    return out


def rlimits(limits: dict, cg: Cgroups, overhead: int, own_userns: bool) -> dict[int, int]:
    """OWN_USERNS: the command runs in a user namespace of its own (bwrap, or `unshare
    --user` in the reduced chain), where the kernel counts RLIMIT_NPROC for it alone."""
    lim = {resource.RLIMIT_CORE: 0,
           resource.RLIMIT_FSIZE: limits["disk_write_mb"] << 20,
           resource.RLIMIT_CPU: int(limits["cpu_s"])}
    if "memory" not in cg.dirs:
        # Address space, not memory: it breaks programs that map big files (llama.cpp models),
        # so it is the cap only when the memory cgroup is missing.
        lim[resource.RLIMIT_AS] = limits["memory_mb"] << 20
    if drop_to_nobody() or own_userns:
        # As root the run is uid 65534 in the host's own count, where NPROC counts every
        # task of that uid (another run, a waiting sandbox).  A non-root daemon's run in a
        # user namespace of its own is counted there alone (the levels above hold it to
        # the daemon's own limit), and bwrap's outer process (OVERHEAD counts it) is not.
        # With a pids cgroup NPROC is only a generous backstop; without one it is the cap,
        # so as root the tasks uid 65534 already runs are added: each run gets its own
        # limit's worth, not a share of one.
        n = limits["pids"] + (max(0, overhead - 1) if own_userns else overhead)
        if "pids" in cg.dirs:
            n *= 8
        elif drop_to_nobody():
            n += tasks_of(NOBODY)
        lim[resource.RLIMIT_NPROC] = n
    return lim


def tasks_of(uid: int) -> int:
    """The tasks (threads) processes of UID run on the host now, by /proc (~1 ms)."""
    n = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            with open(f"/proc/{entry.name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Threads:"):
                        n += int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue  # (gone meanwhile)
    return n


# dash's ulimit: flag and unit of each limit
_ULIMIT = {resource.RLIMIT_CPU: ("-t", 1), resource.RLIMIT_FSIZE: ("-f", 512),
           resource.RLIMIT_CORE: ("-c", 512), resource.RLIMIT_AS: ("-v", 1024),
           resource.RLIMIT_NPROC: ("-p", 1)}


def ulimit_lines(lim: dict[int, int]) -> list[str]:
    """The rlimits as shell lines that lower the shell's own (soft first: the hard limit may
    not drop below it); a limit that cannot be set ends the script before the command."""
    out = []
    for res, value in lim.items():
        flag, unit = _ULIMIT[res]
        hard = value + 1 if res == resource.RLIMIT_CPU else value  # SIGXCPU first, then KILL
        out.append(f"ulimit -S {flag} {value // unit} && ulimit -H {flag} {hard // unit} "
                   "|| exit 126")
    return out


_PRLIMIT_FLAGS = {"RLIMIT_CORE": "--core", "RLIMIT_FSIZE": "--fsize", "RLIMIT_CPU": "--cpu",
                  "RLIMIT_AS": "--as", "RLIMIT_NPROC": "--nproc"}


def prlimit_argv(lim: dict[int, int]) -> list[str]:
    """The child lowers its own limits with util-linux prlimit: lowering needs no privilege,
    while setting them from here on a uid-65534 child needs CAP_SYS_RESOURCE (absent on this
    box's root)."""
    names = {getattr(resource, n): flag for n, flag in _PRLIMIT_FLAGS.items()}
    out = [shutil.which("prlimit") or "prlimit"]
    for res, value in lim.items():
        hard = value + 1 if res == resource.RLIMIT_CPU else value  # SIGXCPU first, then KILL
        out.append(f"{names[res]}={value}:{hard}")
    return out + ["--"]


def start_bwrap(argv: list[str], cwd: Path, env: dict, stdin, cg: Cgroups,
                lim: dict[int, int]) -> subprocess.Popen:
    """bwrap waits on --block-fd, after its namespaces are built and before it forks the
    command: meanwhile we put its two processes into the cgroups and lower their rlimits
    (same uid, so prlimit(2) is allowed).  The cgroup attach, which pays an RCU grace period
    of 5-15 ms, overlaps bwrap's own mount work instead of adding to it."""
    block_r, block_w = os.pipe()
    info_r, info_w = os.pipe()
    argv = [argv[0], "--block-fd", str(block_r), "--info-fd", str(info_w), *argv[1:]]
    try:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                pass_fds=(block_r, info_w), start_new_session=True)
    finally:
        os.close(block_r)
        os.close(info_w)
    try:
        cg.attach(proc.pid)  # first: its RCU wait runs while bwrap clones and mounts
        inner = child_pid(info_r)
        for pid in inner:
            cg.attach(pid)
        for pid in [proc.pid, *inner]:
            set_rlimits(pid, lim)
        cg.start_counting()
        os.write(block_w, b"x")
    except OSError as e:
        abort(proc, e)  # never run the command outside its limits
    finally:
        os.close(info_r)
        os.close(block_w)
    return proc


def child_pid(fd: int) -> list[int]:
    """The sandbox's pid 1, from bwrap's --info-fd JSON (none if bwrap failed early)."""
    data = b""
    while b"}" not in data:
        chunk = os.read(fd, 4096)
        if not chunk:
            return []
        data += chunk
    return [int(json.loads(data[:data.index(b"}") + 1])["child-pid"])]


def set_rlimits(pid: int, lim: dict[int, int]) -> None:
    for res, value in lim.items():
        hard = value + 1 if res == resource.RLIMIT_CPU else value  # SIGXCPU first, then KILL
        resource.prlimit(pid, res, (value, hard))


def start_warm(pre: Prestarted, argv: list[str], cwd: Path, env: dict,
               lim: dict[int, int] | None) -> subprocess.Popen:
    """Release a pre-started shell (see prestart): it is already in the run's cgroups, and
    its rlimits are lowered here when LIM is given (the bwrap path: the shell is ours, same
    uid); the reduced chain lowers its own with prlimit(1) instead."""
    if lim:
        set_rlimits(pre.pid, lim)
    pre.cg.start_counting()
    pre.release(argv, str(cwd), env)
    return pre.proc


def reduced_argv(argv: list[str], lim: dict[int, int], network: bool,
                 unshare: bool) -> list[str]:
    """Each execs the next, none forks: setpriv sets no_new_privs (and, as root, becomes
    uid 65534 with no capability left to regain), prlimit lowers its own rlimits (lowering
    needs no privilege; setting them from here on a uid-65534 process would need
    CAP_SYS_RESOURCE, which root in a container often lacks), unshare takes the network away.  Where
    the kernel has Landlock, confine.py goes first (CONFINE + confine_flags)."""
    if not network and unshare:
        argv = [shutil.which("unshare") or "unshare", "--user", "--net", "--", *argv]
    drop = _DROP if drop_to_nobody() else []
    return [shutil.which("setpriv") or "setpriv", *drop, "--no-new-privs", "--",
            *prlimit_argv(lim), *argv]


# The Landlock step of the reduced chain.  It runs with the daemon's own interpreter and
# uid, before setpriv, so it can reach both (a 0700 home would hide them from 65534).
CONFINE = [sys.executable, "-I", "-S", str(Path(__file__).with_name("confine.py"))]


def confine_flags(root: Path, scratch: Path, network: bool, hide_git: bool,
                  binds: list[str]) -> list[str]:
    out = []
    if hide_git:
        out += ["--list", str(root)]
        for entry in sorted(os.listdir(root)):
            path = root / entry
            if path.is_symlink():  # a rule would hold its target: only one inside the repo
                path = path.resolve()
                if path == root or not path.is_relative_to(root) or \
                        path.is_relative_to(root / ".git"):
                    continue
            if entry != ".git":
                out += ["--read", str(path)]
    else:
        out += ["--read", str(root)]
    for bind in binds:
        out += ["--exec", bind]
    out += ["--write", str(scratch)]
    return out + ([] if network else ["--no-net"]) + ["--"]


def start_reduced(argv: list[str], cwd: Path, env: dict, stdin,
                  cg: Cgroups) -> subprocess.Popen:
    """The reduced chain (reduced_argv); with cgroups a /bin/sh in front waits on stdin until
    we have attached its pid, then execs it, so nothing escapes the cgroups."""
    if cg.joined:
        argv = ["/bin/sh", "-c", _WRAPPER, "janus-sandbox", *argv]
        stdin = subprocess.PIPE
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=cwd, env=env,
                            start_new_session=True)
    if cg.joined:
        try:
            cg.attach(proc.pid)
            cg.start_counting()
            assert proc.stdin is not None  # (started with a pipe)
            os.write(proc.stdin.fileno(), b"\n")  # the wrapper's `read` returns: exec
        except OSError as e:
            abort(proc, e)
    return proc


def abort(proc: subprocess.Popen, e: OSError) -> None:
    proc.kill()
    proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            f.close()
    raise OSError(e.errno, f"could not put the run under its limits: {e.strerror}")
