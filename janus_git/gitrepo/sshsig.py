"""SSH signatures (PROTOCOL.sshsig) made in-process, as `ssh-keygen -Y sign -n git` makes them.

git signs a commit with `ssh-keygen -Y sign`, a process a commit (~4-5 ms here); the agent's
key is ed25519, whose signature `cryptography` computes in microseconds.  The armoured output
is byte-for-byte what ssh-keygen writes (ed25519 signatures are deterministic): `git
verify-commit` and the trust layer's `ssh-keygen -Y verify` check it as any other.  A key of
another type, or one `cryptography` cannot read, is signed by ssh-keygen as before.
"""
from __future__ import annotations

import base64
import hashlib
import struct
from functools import lru_cache
from pathlib import Path

MAGIC = b"SSHSIG"
HASH = "sha512"


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@lru_cache(maxsize=4)
def _key(path: str, mtime_ns: int):
    """(private key, public key blob) of an ed25519 key, or None for another kind."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError:
        return None
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        return None
    if not isinstance(key, Ed25519PrivateKey):
        return None
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return key, _string(b"ssh-ed25519") + _string(raw)


def sign(path: Path, data: bytes, namespace: str = "git") -> bytes | None:
    """The armoured SSH signature of DATA by the key at PATH; None where this cannot make it
    (the caller then asks ssh-keygen)."""
    try:
        found = _key(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None
    if found is None:
        return None
    key, public = found
    ns = namespace.encode()
    digest = hashlib.sha512(data).digest()
    signed = MAGIC + _string(ns) + _string(b"") + _string(HASH.encode()) + _string(digest)
    signature = _string(b"ssh-ed25519") + _string(key.sign(signed))
    blob = (MAGIC + struct.pack(">I", 1) + _string(public) + _string(ns) + _string(b"")
            + _string(HASH.encode()) + _string(signature))
    text = base64.b64encode(blob).decode()
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    return ("-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines)
            + "\n-----END SSH SIGNATURE-----\n").encode()
