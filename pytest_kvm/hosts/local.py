"""Guests on this machine: files in the run's work directory, forwards on 127.0.0.1,
acceleration read from ``/dev/kvm`` and sysfs before anything is opened."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..workdir import DISK_FILE, SAVE_FILE, SEED_FILE
from ..images.qemu_img import create_overlay, flatten_onto
from ..vm.accel import Accel, choose_accel, confirm_kvm, probe_domain_xml
from ..vm.virtiofsd import find_virtiofsd, launcher_argv, write_launcher
from .base import GuestFiles, Host

if TYPE_CHECKING:
    from ..guest.golden import Golden
    from ..images.store import BaseImage
    from ..seed.iso import Seed
    from ..spec import Share
    from ..transport.ssh import Dial
    from ..vm.hypervisor import Hypervisor
    from ..vm.saveimage import SaveImage


class LocalHost(Host):
    """This machine, through libvirt at *uri* (None: the system daemon if it runs, else the
    embedded driver)."""

    def __init__(self, uri: str | None) -> None:
        super().__init__()
        self._uri = uri
        self._sysfs: dict[str, Accel] = {}  # --kvm-accel -> what /dev/kvm and sysfs say
        self._virtiofsd: list[Path | None] = []  # found once

    def _choose(self, requested: str) -> Accel:
        """:func:`choose_accel` once per requested value (configure, the header, the
        session and the summary all ask)."""
        if requested not in self._sysfs:
            self._sysfs[requested] = choose_accel(requested)
        return self._sysfs[requested]

    def open(self) -> "Hypervisor":
        from ..vm.hypervisor import Hypervisor  # noqa: PLC0415 - libvirt only when guests are needed
        if self._hv is None:
            self._hv = Hypervisor.open(self._uri)
        return self._hv

    @property
    def uri(self) -> str | None:
        return self._uri

    def check_setup(self, accel: str) -> None:
        self._choose(accel)  # cheap sysfs check: --kvm-accel kvm without KVM fails here

    def describe(self, settings: Any) -> str:
        from ..vm.hypervisor import default_uri  # noqa: PLC0415 - no libvirt import in it
        uri = self._uri or default_uri() or "qemu:///embed (embedded driver, no daemon)"
        return f"accel {self._choose(settings.accel).describe()}; uri {uri}"

    def acceleration(self, requested: str, connect: Callable[[], "Hypervisor"]) -> Accel:
        """KVM if ``/dev/kvm`` looks usable and QEMU really starts with it (a probe domain,
        once per session), else TCG saying why (``--kvm-accel kvm``: an error)."""
        accel = self._choose(requested)
        if accel.name != "kvm":
            return accel
        return confirm_kvm(accel, requested, "this machine",
                           lambda: connect().start_problem(probe_domain_xml()))

    def accel_before_connecting(self, requested: str) -> str:
        return self._choose(requested).name

    def cpu_model(self) -> str:
        from ..vm.domain import host_cpu  # noqa: PLC0415
        return host_cpu()

    def prepare(self, name: str, image: "BaseImage", workdir: Path, seed: "Seed",
                volume_prefix: str | None = None) -> GuestFiles:
        create_overlay(image.disk, image.format, workdir / DISK_FILE)
        seed.write(workdir / SEED_FILE)
        return GuestFiles(disk=workdir / DISK_FILE, seed=workdir / SEED_FILE,
                          kernel=image.kernel, initrd=image.initrd, console="file")

    def start(self, xml: str, console_log: Path):
        return self.hv.create(xml)

    def save_golden(self, name: str, files: GuestFiles, workdir: Path) -> "tuple[SaveImage, None]":
        """Save the running guest *name* into *workdir* and freeze its disk."""
        from ..vm.saveimage import SaveImage  # noqa: PLC0415
        save_file = workdir / SAVE_FILE
        self.hv.save(name, save_file)
        files.disk.chmod(0o400)  # frozen: clones only read it, through their own overlays
        return SaveImage.read(save_file), None

    def freeze(self, name: str, files: GuestFiles, image: "BaseImage", parent: "Golden | None",
               directory: Path, volume_prefix: str | None) -> "tuple[SaveImage, None]":
        """Everything in *directory*: the saved state, the disk (a clone's flattened onto the
        base image; a cold-booted guest's overlay moved), the seed."""
        from ..vm.saveimage import SaveImage  # noqa: PLC0415
        self.hv.save(name, directory / SAVE_FILE)
        disk = directory / DISK_FILE
        if parent is not None:
            flatten_onto(files.disk, image.disk, image.format, disk)
            shutil.copyfile(parent.seed, directory / SEED_FILE)
        else:
            os.replace(files.disk, disk)
            disk.chmod(0o400)
            os.replace(files.seed, directory / SEED_FILE)
        return SaveImage.read(directory / SAVE_FILE), None

    def clone_disk(self, name: str, golden: "Golden", workdir: Path) -> Path:
        """A clone's overlay over its golden's frozen disk."""
        create_overlay(golden.frozen_disk, "qcow2", workdir / DISK_FILE)
        return workdir / DISK_FILE

    def restore(self, name: str, golden: "Golden", xml: str, workdir: Path, console_log: Path):
        """Start clone *name* (domain *xml*) from *golden*'s saved state, fed through a FIFO."""
        from ..vm.saveimage import Feeder  # noqa: PLC0415
        feeder = Feeder(golden.image, xml, workdir / "restore.fifo").start()
        try:
            return self.hv.restore(feeder.fifo, name)
        finally:
            feeder.finish()

    def dial(self) -> "Dial":
        from ..transport.ssh import dial_local  # noqa: PLC0415
        return dial_local

    def proxy_command(self) -> list[str] | None:
        return None

    def remove(self, name: str) -> None:
        """Nothing beyond the work directory, which the guest removes itself."""

    def export_share(self, name: str, index: int, share: "Share", workdir: Path,
                     guest_ids: Callable[[], tuple[int, int]]) -> tuple[Path, Path | None]:
        """The directory itself, through a launcher that maps the guest's login user to
        the user running pytest (see :mod:`pytest_kvm.vm.virtiofsd`); no launcher (libvirt's
        plain virtiofsd) if pytest does not run as root or no virtiofsd is declared where
        libvirt looks."""
        if not self._virtiofsd:
            self._virtiofsd.append(find_virtiofsd() if os.geteuid() == 0 else None)
        virtiofsd = self._virtiofsd[0]
        if virtiofsd is None:
            return share.source, None
        uid, gid = guest_ids()
        return share.source, write_launcher(workdir / f"virtiofsd-{index}", launcher_argv(
            virtiofsd, share.source, uid, gid, writable=share.writable))
