"""What one guest is made from (:class:`GuestConfig`, resolved to plain values by the
session) and the domain a cold boot of it runs (:func:`domain_spec`)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..arches import Arch, host_arch
from ..families import Family, family
from ..hosts.base import GuestFiles
from ..seed import plain
from ..vm.domain import DomainSpec, family_fields
from ..workdir import CONSOLE_FILE, DISK_FILE, SEED_FILE

if TYPE_CHECKING:
    from ..images.store import BaseImage
    from ..keys import KeyPair
    from ..spec import Share
    from ..waiting import Limit


@dataclass(frozen=True)
class GuestConfig:
    """Everything needed to start one guest, resolved to plain values."""

    name: str
    os: str
    image: "BaseImage"
    memory_mib: int
    cpus: int
    virt_type: str
    limits: "Mapping[str, Limit]"  # "boot", "ssh", "cloud-init"
    command_timeout: float
    workdir: Path
    login_key_file: Path
    login_key: "KeyPair"
    metadata: Mapping[str, str]
    user_data: Mapping[str, Any] | None = None
    family: Family = field(default_factory=lambda: family("linux"))
    seed_format: str | None = None  # None: the family's
    unique: bool = False  # a clone gets its own hostname and machine-id
    revert: bool = False  # a clone kept and reverted in place between tests (guest/revert.py)
    tpm: bool | None = None  # None: the family's default
    machine_type: str | None = None  # the versioned machine type (pinned); None: the alias
    shares: "tuple[Share, ...]" = ()  # host directories mounted once the guest is up
    artifacts: tuple[str, ...] = ()  # guest paths collected for a failed test
    networks: tuple[str, ...] = ()  # private networks joined once the guest is up
    network_name: str | None = None  # its name on them (name=); its own name is one too
    network_mode: str = "user"  # the user-mode NIC's reach (--kvm-network): "user" or "isolated"
    # its volumes' names on a remote host (default: its name); a snapshot golden's outlive the run
    volume_prefix: str | None = None
    tb_cache_mib: int = 0  # TCG's translation cache (see Settings.tb_cache_mib); 0: QEMU's default
    arch: Arch = field(default_factory=host_arch)  # the guest's CPU architecture

    @property
    def user(self) -> str:
        return self.family.login_user

    @property
    def native(self) -> bool:
        """Whether the guest has the host's architecture (else QEMU emulates it: TCG)."""
        return self.arch == host_arch()

    @property
    def plain_seed(self) -> bool:
        """Whether its cold boot goes without cloud-init (see :mod:`pytest_kvm.seed.plain`)."""
        return plain.applies(self)


def domain_spec(cfg: GuestConfig, port: int, mac: str | None = None,
                files: GuestFiles | None = None) -> DomainSpec:
    """The domain of a guest booted cold from *cfg*, forwarding 127.0.0.1:*port*; *files*:
    where its disk, seed, kernel and initrd are on the hypervisor's machine (default: the
    work directory and the cached image, on this machine)."""
    direct = cfg.family.direct_kernel_boot and cfg.image.kernel is not None
    workdir = cfg.workdir
    files = files or GuestFiles(disk=workdir / DISK_FILE, seed=workdir / SEED_FILE,
                                kernel=cfg.image.kernel, initrd=cfg.image.initrd, console="file")
    return DomainSpec(
        name=cfg.name, virt_type=cfg.virt_type, memory_mib=cfg.memory_mib, cpus=cfg.cpus,
        disk=files.disk, disk_format="qcow2", seed=files.seed,
        console_log=workdir / CONSOLE_FILE, console=files.console, ssh_port=port,
        kernel=files.kernel if direct else None, initrd=files.initrd if direct else None,
        cmdline=_cmdline(cfg) if direct else "", metadata=dict(cfg.metadata),
        machine_type=cfg.machine_type, mac=mac, network_mode=cfg.network_mode,
        tb_cache_mib=cfg.tb_cache_mib or None, arch=cfg.arch,
        **family_fields(cfg.family, workdir, firmware=cfg.image.firmware, tpm=cfg.tpm))


def _cmdline(cfg: GuestConfig) -> str:
    if cfg.plain_seed:
        return plain.cmdline(cfg.image.cmdline)
    return cfg.image.cmdline
