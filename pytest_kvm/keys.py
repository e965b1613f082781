"""SSH keys: the session's login key, each guest's host key, and known_hosts files."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .files import write_owner_only


@dataclass(frozen=True)
class KeyPair:
    # PEM-like "-----BEGIN OPENSSH PRIVATE KEY-----" text; never in a repr (tracebacks, -l)
    private_openssh: str = field(repr=False)
    public_openssh: str  # "ssh-ed25519 AAAA... comment"

    @classmethod
    def generate(cls, comment: str) -> "KeyPair":
        # cryptography loads its OpenSSL bindings: only when a session makes a key
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        return cls(private, f"{public} {comment}")

    @property
    def key_type(self) -> str:
        return self.public_openssh.split()[0]

    @property
    def short_type(self) -> str:
        """The type as cloud-init's ``ssh_keys`` and OpenSSH's host key files name it:
        ``ed25519``, ``rsa``, ``ecdsa``."""
        return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa",
                "ecdsa-sha2-nistp256": "ecdsa"}[self.key_type]

    def write_private(self, path: Path) -> Path:
        """Write the private key readable by the owner only (0600), as OpenSSH wants."""
        return write_owner_only(path, self.private_openssh.encode())


def known_hosts_line(host: str, port: int, public_openssh: str) -> str:
    """A known_hosts entry pinning the public key *public_openssh* ("TYPE BLOB [comment]")
    for host:port (OpenSSH's bracket form)."""
    key_type, blob = public_openssh.split()[:2]
    return f"[{host}]:{port} {key_type} {blob}\n"


def write_known_hosts(path: Path, host: str, port: int, public_openssh: str) -> Path:
    return write_owner_only(path, known_hosts_line(host, port, public_openssh).encode())
