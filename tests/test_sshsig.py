"""The agent's SSH signature made in-process is ssh-keygen's, byte for byte, and verifies."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from janus_git.gitrepo.sshsig import sign


def keygen(tmp_path: Path, kind: str) -> Path:
    key = tmp_path / f"key-{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "t", "-f", str(key)],
                   check=True)
    return key


@pytest.mark.parametrize("data", [b"", b"tree 4b82\n\nmessage\n", bytes(range(256)) * 40])
def test_an_ed25519_signature_is_ssh_keygens_own(tmp_path, data):
    key = keygen(tmp_path, "ed25519")
    theirs = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-n", "git", "-f", str(key)],
                            input=data, capture_output=True, check=True).stdout
    ours = sign(key, data)
    assert ours == theirs  # ed25519 is deterministic: the same bytes, not just a valid one
    signers = tmp_path / "signers"
    signers.write_text("t@x " + " ".join(Path(f"{key}.pub").read_text().split()[:2]) + "\n")
    sig = tmp_path / "s.sig"
    sig.write_bytes(ours)
    ok = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", "t@x", "-n",
                         "git", "-s", str(sig)], input=data, capture_output=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", "t@x",
                          "-n", "git", "-s", str(sig)], input=data + b"x", capture_output=True)
    assert bad.returncode != 0


def test_another_kind_of_key_is_left_to_ssh_keygen(tmp_path):
    assert sign(keygen(tmp_path, "ecdsa"), b"data") is None
    assert sign(tmp_path / "missing", b"data") is None
