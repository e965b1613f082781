"""The host interface: what a machine that runs guests does for them.

A guest and the session hold a :class:`Host` and never ask which one it is.
:class:`~pytest_kvm.hosts.local.LocalHost` runs guests on this machine (files in the run's
work directory, forwards on 127.0.0.1); :class:`~pytest_kvm.hosts.remote.RemoteHost` runs
them on a libvirt host reached over SSH (``--kvm-host``: files as storage volumes there,
forwards reached through an SSH tunnel). What differs between the two is abstract here;
what is the same (the domain's power, devices, monitor, clock) goes through the one
libvirt connection, :attr:`Host.hv`, in the methods below.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..guest.golden import Golden, HostFiles
    from ..images.store import BaseImage
    from ..networks.segments import Site
    from ..seed.iso import Seed
    from ..spec import Share
    from ..transport.ssh import Dial
    from ..vm.accel import Accel
    from ..vm.hypervisor import Hypervisor
    from ..vm.saveimage import SaveImage


@dataclass(frozen=True)
class GuestFiles:
    """A guest's files as the hypervisor sees them (paths on the machine QEMU runs on)."""

    disk: Path
    seed: Path
    kernel: Path | None
    initrd: Path | None
    console: str  # "file": QEMU writes the local console file; "pty": copied from a stream


class Host(ABC):
    """A machine that runs guests. Nothing is opened until :meth:`open`."""

    #: how the summary names where guests ran (empty for this machine)
    where: str = ""
    #: whether its clones may be reverted in place (``reset="revert"``: tried on this
    #: machine's libvirt; a remote host's clones are destroyed after their test)
    reverts_in_place: bool = True

    def __init__(self) -> None:
        self._hv: Hypervisor | None = None

    # -- the connection ---------------------------------------------------------------
    @abstractmethod
    def open(self) -> "Hypervisor":
        """Connect (libvirt, and whatever else the host needs); returns the libvirt connection."""

    @property
    def hv(self) -> "Hypervisor":
        if self._hv is None:
            raise RuntimeError("the host is not open")  # a bug: the session opens it first
        return self._hv

    @property
    @abstractmethod
    def uri(self) -> str | None:
        """The libvirt URI the watchdog and the reaper use (None: the default)."""

    def close(self) -> None:
        if self._hv is not None:
            self._hv.close()
            self._hv = None

    # -- what the session asks ------------------------------------------------------------
    @abstractmethod
    def check_setup(self, accel: str) -> None:
        """Fail early (a usage error at configure) on what can be known without connecting."""

    @abstractmethod
    def describe(self, settings: Any) -> str:
        """The header's part about where guests run and how they are accelerated."""

    @abstractmethod
    def acceleration(self, requested: str, connect: Callable[[], "Hypervisor"]) -> "Accel":
        """KVM or TCG for this host, and why; *connect* opens the host if it must be asked."""

    @abstractmethod
    def accel_before_connecting(self, requested: str) -> str:
        """What the summary says of acceleration where no session connected (a controller)."""

    @abstractmethod
    def cpu_model(self) -> str:
        """The host CPU model a KVM guest sees (a saved state restores only onto the same)."""

    def golden_fields(self) -> Mapping[str, str]:
        """What a golden's key needs besides the guest's own fields to name where it lives."""
        return {}

    def snapshot_volume_prefix(self, key: str) -> str | None:
        """The name prefix of snapshot *key*'s files on the host, if they live there."""
        return None

    def refuse_unsupported(self, request: Any, config: Any) -> None:
        """Raise :class:`~pytest_kvm.spec.SpecError` naming what this host cannot give a guest."""

    def claim_run(self, run_id: str, owner: Mapping[str, str]) -> None:
        """Record on the host that run *run_id* of *owner* (machine, boot, PID) uses it, before
        it makes anything there (what a sweep of the host tells live runs by)."""

    def release_run(self, run_id: str, *, kept: bool) -> None:
        """Run *run_id* ended: remove its record, or (*kept*) mark it as keeping guests."""

    def network_site(self, run_id: str, run_dir: Path) -> "Site":
        """Where run *run_id*'s private networks (``networks=``) live: their sockets and
        switches must be on the machine QEMU runs on. Here: in the run's directory."""
        from ..networks.segments import LocalSite  # noqa: PLC0415
        return LocalSite(run_dir / "networks")

    def reap_hint(self) -> str:
        """The command that removes kept guests."""
        return "pytest-kvm reap --kept"

    # -- a guest's files and domain (what differs) ----------------------------------------
    @abstractmethod
    def prepare(self, name: str, image: "BaseImage", workdir: Path, seed: "Seed",
                volume_prefix: str | None = None) -> GuestFiles:
        """Guest *name*'s overlay over *image* and its *seed*, where QEMU will read them."""

    @abstractmethod
    def start(self, xml: str, console_log: Path):
        """Start the domain *xml*; its console ends up in *console_log*."""

    @abstractmethod
    def save_golden(self, name: str, files: GuestFiles,
                    workdir: Path) -> "tuple[SaveImage, HostFiles | None]":
        """Save the running guest *name* as a golden and freeze its disk."""

    @abstractmethod
    def freeze(self, name: str, files: GuestFiles, image: "BaseImage", parent: "Golden | None",
               directory: Path, volume_prefix: str | None) -> "tuple[SaveImage, HostFiles | None]":
        """Save the running guest *name* as a user golden (``freeze``, ``kvm.golden``) whose
        files do not depend on the guest's: its disk flattened onto *image* (a clone's no
        longer needs its golden *parent*), its seed its own or *parent*'s. Small files go to
        *directory*; a host that keeps the big ones names them *volume_prefix* (a snapshot's,
        which outlives the run; None: the run's own, removed at its end)."""

    @abstractmethod
    def clone_disk(self, name: str, golden: "Golden", workdir: Path) -> Path:
        """A clone's overlay over its golden's frozen disk."""

    @abstractmethod
    def restore(self, name: str, golden: "Golden", xml: str, workdir: Path, console_log: Path):
        """Start clone *name* (domain *xml*) from *golden*'s saved state."""

    @abstractmethod
    def dial(self) -> "Dial":
        """How to open a TCP connection to a forwarded port of a guest."""

    @abstractmethod
    def proxy_command(self) -> list[str] | None:
        """An argv OpenSSH uses as ``ProxyCommand`` to reach a forward (None: directly)."""

    @abstractmethod
    def remove(self, name: str) -> None:
        """Remove what the host keeps of guest *name* beyond its local work directory (its
        writable shares' copies first come back, see :meth:`sync_shares`)."""

    # -- shares -----------------------------------------------------------------------------
    #: whether a share is a copy on the host (what the guest writes comes back on
    #: :meth:`sync_shares`), not the directory itself
    copies_shares: bool = False

    @abstractmethod
    def export_share(self, name: str, index: int, share: "Share", workdir: Path,
                     guest_ids: Callable[[], tuple[int, int]]) -> tuple[Path, Path | None]:
        """What guest *name*'s virtiofs device for its share *index* exports (a path on the
        host) and the virtiofsd launcher libvirt starts for it (None: libvirt's plain
        virtiofsd); *guest_ids*: the guest's login uid and gid, asked only if needed."""

    def sync_shares(self, name: str, *, last: bool = False) -> None:
        """Bring what guest *name* wrote to its writable shares back to their directories
        (*last*: nothing more comes back when it is removed). Here: nothing to do."""

    # -- a running domain (the same on every host: through libvirt) ----------------------
    def destroy(self, name: str) -> bool:
        return self.hv.destroy(name)

    def exists(self, name: str) -> bool:
        return self.hv.exists(name)

    def is_running(self, dom) -> bool:
        return self.hv.is_running(dom)

    def attach(self, dom, xml: str, what: str) -> None:
        self.hv.attach(dom, xml, what)

    def monitor(self, dom, command: dict, what: str) -> dict:
        return self.hv.monitor(dom, command, what)

    def power(self, dom, action: str) -> None:
        self.hv.power(dom, action)

    def set_time(self, dom, epoch: float, timeout: int = 5) -> None:
        self.hv.set_time(dom, epoch, timeout=timeout)

    def save(self, name: str, path: Path) -> None:
        self.hv.save(name, path)

    def canonical_machine(self, alias: str, arch: str = "x86_64") -> str:
        return self.hv.canonical_machine(alias, arch)

    def versions(self) -> dict[str, str]:
        return self.hv.versions()

    def remove_qemu_log(self, name: str) -> None:
        """QEMU's log of domain *name* (this machine's libvirt keeps one per domain)."""
        log = self.hv.qemu_log(name)
        if log is not None:
            with contextlib.suppress(FileNotFoundError):
                log.unlink()
