"""Landlock for the reduced sandbox: confine, then exec the rest of the chain.

Run as ``python3 -I -S confine.py [--list P] [--read P]... [--exec P]... [--write P]...
[--no-net] -- CMD`` (standard library only, no site; its ~25 ms start is paid ahead by a
pre-started waiter, see prestart).  It sets no_new_privs, restricts itself with a Landlock
ruleset and execs CMD, which inherits the ruleset for good:

* files: read and execute the system (/usr, /etc, /bin, /lib*, /proc) and every --exec path;
  list the --list directories (the repository: its .git listed, never read); read and
  execute every --read path (never followed if a symlink); full access to every --write
  path (the scratch dir) and to the few character devices programs need; nothing else, not
  even in /tmp or /dev/shm;
* network (ABI 4+): with --no-net, no TCP bind or connect;
* scope (ABI 6+): no signals to, and no abstract unix sockets of, processes outside;
* with --no-net, a seccomp filter: no unix socket can be made (Landlock does not cover
  connecting to one by its path).

Landlock covers neither mode, owner, time nor xattr changes: a run may chmod or touch what
its uid owns (for a non-root daemon, the repository too), but not write, create, remove or
rename anything outside its scratch dir.

bwrap gives runs all of this with namespaces; without bwrap (no user namespaces, or not
installed) this is what keeps a run out of the repository, which a non-root daemon's runs
could otherwise write.  A kernel without Landlock makes this exit 126 with the reason: the
caller probes first (``available()``) and only asks for it where it works."""
from __future__ import annotations

import ctypes
import json
import os
import stat
import struct
import sys

_CREATE, _ADD_RULE, _RESTRICT = 444, 445, 446  # the same on x86_64 and the generic table
_VERSION = 1 << 0
_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ALL_V1 = (1 << 13) - 1  # through MAKE_SYM
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | _TRUNCATE | _IOCTL_DEV
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1

SYSTEM = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none (or it is disabled)."""
    n = _libc.syscall(_CREATE, None, 0, _VERSION)
    return n if n > 0 else 0


def available() -> bool:
    return abi() >= 1


def _fs_rights(version: int) -> int:
    rights = _ALL_V1
    if version >= 2:
        rights |= _REFER
    if version >= 3:
        rights |= _TRUNCATE
    if version >= 5:
        rights |= _IOCTL_DEV
    return rights


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock {what}: {os.strerror(err)}")
    return ret


def restrict(listed: list[str], read: list[str], execute: list[str], write: list[str],
             no_net: bool) -> None:
    version = abi()
    if version < 1:
        raise OSError(38, "landlock is not available in this kernel")
    handled = _fs_rights(version)
    attr = struct.pack("Q", handled)
    if version >= 4:
        attr += struct.pack("Q", (_NET_BIND_TCP | _NET_CONNECT_TCP) if no_net else 0)
    if version >= 6:
        attr += struct.pack("Q", _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _check(_libc.syscall(_CREATE, buf, len(attr), 0), "create_ruleset")
    # The repository's paths are never followed: a rule holds what its fd points at, and a
    # symlink in the repository must not lend its target the repository's rights.
    rules = [(p, READ_FILE | READ_DIR | EXECUTE, 0) for p in (*SYSTEM, *execute)]
    rules += [(p, READ_DIR, os.O_NOFOLLOW) for p in listed]
    rules += [(p, READ_FILE | READ_DIR | EXECUTE, os.O_NOFOLLOW) for p in read]
    rules += [(p, READ_FILE | WRITE_FILE | (_IOCTL_DEV if version >= 5 else 0), 0)
              for p in DEVICES]
    rules += [(p, handled, 0) for p in write]
    for path, rights, flags in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC | flags)
        except OSError:
            continue  # what does not exist needs no rule
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                continue
            if not stat.S_ISDIR(mode):
                rights &= _FILE_ONLY
            rule = ctypes.create_string_buffer(struct.pack("=Qi", rights & handled, fd), 12)
            _check(_libc.syscall(_ADD_RULE, ruleset, _PATH_BENEATH, rule, 0), f"rule {path}")
        finally:
            os.close(fd)
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.syscall(_RESTRICT, ruleset, 0), "restrict_self")
    os.close(ruleset)
    if no_net:
        no_unix_sockets()


# seccomp: Landlock does not cover connecting to a unix socket by its path (a user's
# systemd or docker socket is a way out), so without the network no AF_UNIX socket can be
# made (socketpair still works).  Other architectures' entry points (x32, 32-bit) get EPERM
# for everything, so nothing reaches socket() by another number.
_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_ALLOW, _EPERM = 0x7FFF0000, 0x00050000 | 1
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_AF_UNIX = 1


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def no_unix_sockets() -> None:
    arch = _ARCH.get(os.uname().machine)
    if arch is None:
        raise OSError(95, f"no seccomp filter for {os.uname().machine}: refusing to run "
                          "without a way to keep unix sockets closed")
    audit_arch, socket_nr = arch
    prog = b"".join([
        _bpf(_LD_W_ABS, 0, 0, 4),                  # arch
        _bpf(_JEQ_K, 1, 0, audit_arch),
        _bpf(_RET_K, 0, 0, _EPERM),
        _bpf(_LD_W_ABS, 0, 0, 0),                  # syscall number
        _bpf(_JGE_K, 0, 1, 0x40000000),            # x32
        _bpf(_RET_K, 0, 0, _EPERM),
        _bpf(_JEQ_K, 0, 3, socket_nr),
        _bpf(_LD_W_ABS, 0, 0, 16),                 # socket(domain, ...): low word of args[0]
        _bpf(_JEQ_K, 0, 1, _AF_UNIX),
        _bpf(_RET_K, 0, 0, _EPERM),
        _bpf(_RET_K, 0, 0, _ALLOW),
    ])
    filt = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("=HxxxxxxQ", len(prog) // 8, ctypes.addressof(filt))
    buf = ctypes.create_string_buffer(fprog, len(fprog))
    _check(_libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, buf, 0, 0), "seccomp")


def _which(name: str, env: dict[str, str] | None) -> str:
    if "/" in name:
        return name
    for d in (env or os.environ).get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise OSError(2, f"{name}: command not found")


def wait() -> int:
    """Pre-started (see prestart): the orders come as JSON on fd 2 ({cwd, env, argv}); then
    fd 2 becomes the output again, as for any run.  EOF with no orders: the daemon is gone."""
    data = b""
    while chunk := os.read(2, 1 << 16):
        data += chunk
    os.dup2(1, 2)
    if not data:
        return 0
    orders = json.loads(data)
    try:
        os.chdir(orders["cwd"])
    except OSError as e:
        print(f"janus-git confine: {e}", file=sys.stderr)
        return 126
    return main(orders["argv"], orders["env"])


def main(argv: list[str], env: dict[str, str] | None = None) -> int:
    listed: list[str] = []
    read: list[str] = []
    execute: list[str] = []
    write: list[str] = []
    no_net = False
    i = 0
    while i < len(argv) and argv[i] != "--":
        flag = argv[i]
        if flag == "--no-net":
            no_net = True
            i += 1
            continue
        target = {"--list": listed, "--read": read, "--exec": execute,
                  "--write": write}.get(flag)
        if target is None or i + 1 >= len(argv):
            print(f"janus-git confine: bad argument {flag!r}", file=sys.stderr)
            return 126
        target.append(argv[i + 1])
        i += 2
    cmd = argv[i + 1:]
    if not cmd:
        print("janus-git confine: no command after --", file=sys.stderr)
        return 126
    try:
        program = _which(cmd[0], env)  # before: afterwards Python may not import a module
        restrict(listed, read, execute, write, no_net)
        os.execve(program, cmd, os.environ if env is None else env)
    except OSError as e:
        print(f"janus-git confine: {e}", file=sys.stderr)
        return 127 if e.errno == 2 else 126
    return 126


if __name__ == "__main__":
    sys.exit(wait() if sys.argv[1:] == ["--wait"] else main(sys.argv[1:]))
