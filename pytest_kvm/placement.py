"""Where a guest's files live and how its forwarded port is reached: this machine, or a
remote hypervisor host (``--kvm-host``).

:class:`LocalPlacement` makes the overlay and the seed in the guest's work directory
and reaches 127.0.0.1 directly. :class:`HostPlacement` makes them on the host as
libvirt storage volumes (base images uploaded once per host into a pool the plugin
owns, checked by sha256 on the host's side), starts the domain so that libvirt
destroys it if our connection goes away, copies its serial console into the local
console file through a libvirt console stream, and reaches the guest's forward,
which listens on the host's 127.0.0.1 only, through an SSH tunnel to the host.
"""
from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from .cache import file_lock, sha256_file, writable
from .clones import DISK_FILE, SEED_FILE
from .errors import HypervisorError, ImageError
from .hostlink import HostLink
from .hypervisor import Hypervisor
from .images import BaseImage
from .seed import Seed
from .ssh import Dial, dial_local
from .storage import create_overlay

POOL = "pytest-kvm"  # the storage pool the plugin owns on each remote host
POOL_PATH = "/var/lib/libvirt/pytest-kvm"
OVERLAY_SUFFIX = ".qcow2"
SEED_SUFFIX = ".seed.img"


@dataclass(frozen=True)
class GuestFiles:
    """A guest's files as the hypervisor sees them (paths on the machine QEMU runs on)."""

    disk: Path
    seed: Path
    kernel: Path | None
    initrd: Path | None
    console: str  # "file": QEMU writes the local console file; "pty": copied from a stream


class LocalPlacement:
    """Guests on this machine: files in the work directory, ports on 127.0.0.1."""

    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv

    def prepare(self, name: str, image: BaseImage, workdir: Path, seed: Seed) -> GuestFiles:
        create_overlay(image.disk, image.format, workdir / DISK_FILE)
        seed.write(workdir / SEED_FILE)
        return GuestFiles(disk=workdir / DISK_FILE, seed=workdir / SEED_FILE,
                          kernel=image.kernel, initrd=image.initrd, console="file")

    def start(self, xml: str, console_log: Path):
        return self.hv.create(xml)

    def dial(self) -> Dial:
        return dial_local

    def proxy_command(self) -> list[str] | None:
        return None

    def remove(self, name: str) -> None:
        """Nothing beyond the work directory, which the guest removes itself."""

    def close(self) -> None:
        """Nothing to close: the hypervisor is the session's."""


class HostPlacement:
    """Guests on a remote libvirt host reached over SSH."""

    def __init__(self, hv: Hypervisor, link: HostLink, lock_dir: Path) -> None:
        self.hv = hv
        self.link = link
        self.label = link.host.label
        self._lock_dir = lock_dir
        self._bases: dict[Path, Path] = {}  # local file -> its verified volume on the host
        self._bases_lock = threading.Lock()
        self._consoles: dict[str, threading.Thread] = {}
        hv.ensure_pool(POOL, POOL_PATH)

    # -- base images: uploaded once per host, content-addressed ------------------------
    def _base(self, local: Path) -> Path:
        """The host's copy of the local file *local*, uploaded if missing or different."""
        with self._bases_lock:
            if local in self._bases:
                return self._bases[local]
        digest = sha256_file(local)
        name = f"base-{digest[:24]}{''.join(local.suffixes) or '.img'}"
        with writable(self._lock_dir.parent, "locking an upload"):
            self._lock_dir.mkdir(parents=True, exist_ok=True)
        # workers of this run (and other runs on this machine) upload a base once
        with file_lock(self._lock_dir / f"{name}.lock"):
            path = self.hv.volumes(POOL).get(name)
            if path is not None and self._host_sha256(path) != digest:
                self.hv.delete_volume(POOL, name)  # an upload that was cut short
                path = None
            if path is None:
                path = self.hv.upload_volume(POOL, name, local)
                got = self._host_sha256(path)
                if got != digest:
                    self.hv.delete_volume(POOL, name)
                    raise ImageError(f"uploading {local} to host {self.label}: the host's copy has "
                                     f"sha256 {got}, the file {digest}; the upload was deleted")
        with self._bases_lock:
            self._bases[local] = Path(path)
        return Path(path)

    def _host_sha256(self, path: str) -> str:
        return self.link.run(["sha256sum", "--", path]).split(" ", 1)[0]

    # -- a guest's files ---------------------------------------------------------------
    def prepare(self, name: str, image: BaseImage, workdir: Path, seed: Seed) -> GuestFiles:
        disk = self._base(image.disk)
        kernel = self._base(image.kernel) if image.kernel else None
        initrd = self._base(image.initrd) if image.initrd else None
        overlay = self.hv.create_overlay_volume(POOL, name + OVERLAY_SUFFIX, str(disk),
                                                image.format, _virtual_size(image.disk))
        try:
            seed_path = self.hv.upload_volume(POOL, name + SEED_SUFFIX, seed.iso())
        except BaseException:
            self.remove(name)
            raise
        return GuestFiles(disk=Path(overlay), seed=Path(seed_path), kernel=kernel, initrd=initrd,
                          console="pty")

    def start(self, xml: str, console_log: Path):
        # autodestroy: gone with our connection, whatever happens to this process. Paused
        # until its console is read: a pty drops what nobody reads (the first kernel banner)
        dom = self.hv.create(xml, autodestroy=True, paused=True)
        self._consoles[dom.name()] = self.hv.mirror_console(dom, console_log)
        self.hv.resume(dom)
        return dom

    def dial(self) -> Dial:
        return self.link.tunnel

    def proxy_command(self) -> list[str] | None:
        return self.link.proxy_command()

    def remove(self, name: str) -> None:
        errors = []
        for suffix in (OVERLAY_SUFFIX, SEED_SUFFIX):
            try:
                self.hv.delete_volume(POOL, name + suffix)
            except HypervisorError as exc:
                errors.append(exc)
        console = self._consoles.pop(name, None)
        if console is not None:
            console.join(timeout=5)
        if errors:
            raise errors[0]

    def close(self) -> None:
        self.link.close()


def remove_guest_volumes(hv: Hypervisor, prefix: str, keep: set[str] = frozenset()) -> list[str]:
    """Delete the guest volumes (overlays, seeds) in the plugin's pool on *hv*'s host whose
    guest name starts with *prefix* and is not in *keep*; base images stay."""
    try:
        names = [name for name in hv.volumes(POOL)
                 if name.startswith(prefix) and name.split(".", 1)[0] not in keep]
    except HypervisorError:
        return []  # no pool: nothing was ever made there
    for name in names:
        hv.delete_volume(POOL, name)
    return names


def _virtual_size(disk: Path) -> int:
    """The size a guest sees of *disk* (an overlay over it gets the same)."""
    result = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(disk)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ImageError(f"cannot read the size of {disk}: {result.stderr.strip()}")
    return int(json.loads(result.stdout)["virtual-size"])


Placement = LocalPlacement | HostPlacement
