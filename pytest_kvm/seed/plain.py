"""The plain seed: a cold boot without cloud-init, for a guest that asked for no user data.

Under TCG cloud-init's four Python stages are most of a cold boot (measured on debian-12:
33 s to ready with them, SSH up ~5 s after the kernel's start without them). What the
plugin needs from them when the user gave no ``user_data`` is small: the login user with
the session's key and password-less sudo, the pinned host key, the hostname. The
plugin's own images (recipes with ``plain_seed = true``) carry a shell script,
``pytest-kvm-seed.service``, that applies exactly that from plain files in the seed's
:data:`DIR` before sshd starts, when the kernel command line has :data:`CMDLINE_FLAG`.
That line also has ``cloud-init=disabled``, which keeps cloud-init out of that boot.

The seed keeps its cloud-init files too (the same ISO serves both ways); a guest with
user data, another seed format or an image without the script boots through cloud-init
as before. Readiness is then systemd's: the boot is finished (:data:`READY_COMMAND`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..guest.config import GuestConfig
    from ..keys import KeyPair

#: the kernel command line's word that starts the image's plain seed unit
CMDLINE_FLAG = "pytest_kvm.seed=plain"
#: what a plain-seeded boot adds to the image's kernel command line
CMDLINE = ("cloud-init=disabled", CMDLINE_FLAG)
#: the seed's directory of plain files the unit reads
DIR = "pytest-kvm"
#: ready once systemd finished starting the boot's units ("degraded", exit 1: some failed,
#: as cloud-init's recoverable errors are accepted); prints the state
READY_COMMAND = "systemctl is-system-running --wait"
READY_EXIT_CODES = (0, 1)
#: what ``guest.cloud_init_status`` holds for a plain-seeded guest, before systemd's state
STATUS = "status: disabled (pytest-kvm's plain seed: no user_data given)\nsystemd: "


def applies(cfg: "GuestConfig") -> bool:
    """Whether *cfg*'s cold boot uses the plain seed: its image has the unit, the family
    seeds a cloud-config through NoCloud, and there is no user data to give cloud-init."""
    fam = cfg.family
    return (cfg.image.plain_seed and not cfg.user_data
            and fam.user_data_format == "cloud-config" and fam.privilege == "sudo"
            and (cfg.seed_format or fam.seed_format) == "nocloud")


def cmdline(image_cmdline: str) -> str:
    """The image's kernel command line for a plain-seeded boot."""
    return " ".join((image_cmdline, *CMDLINE)).strip()


def files(*, user: str, hostname: str, login_key: "KeyPair",
          host_key: "KeyPair") -> dict[str, bytes]:
    """The seed's plain files (ISO paths): one value each, read by the image's script."""
    key_type = host_key.short_type
    return {
        f"{DIR}/user": f"{user}\n".encode(),
        f"{DIR}/hostname": f"{hostname}\n".encode(),
        f"{DIR}/authorized_keys": f"{login_key.public_openssh.strip()}\n".encode(),
        f"{DIR}/ssh_host_{key_type}_key": host_key.private_openssh.encode(),
        f"{DIR}/ssh_host_{key_type}_key.pub": f"{host_key.public_openssh.strip()}\n".encode(),
    }
