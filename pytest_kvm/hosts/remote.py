"""Where a guest's files live and how its forwarded port is reached: this machine, or a
remote hypervisor host (``--kvm-host``).

:class:`LocalPlacement` makes the overlay and the seed in the guest's work directory
and reaches 127.0.0.1 directly. :class:`HostPlacement` makes them on the host as
libvirt storage volumes (base images uploaded once per host into a pool the plugin
owns, checked by sha256 on the host's side), starts the domain so that libvirt
destroys it if our connection goes away, copies its serial console into the local
console file through a libvirt console stream, and reaches the guest's forward,
which listens on the host's 127.0.0.1 only, through an SSH tunnel to the host.

Warm clones: a golden saved on a host stays there (its saved state, frozen overlay
and seed are volumes; see :class:`~pytest_kvm.guest.golden.HostFiles`). A clone's saved
state is a copy of the golden's made by the host (``virStorageVolCreateXMLFrom``: a
reflink where the file system has them) whose head is rewritten with the clone's own
XML (a volume upload at offset 0; see :mod:`pytest_kvm.vm.saveimage`), restored paused
until its console is read, and deleted once QEMU has read it. libvirt has no
autodestroy flag for a restore: a clone outlives a dead controller until the run's
watchdog or ``pytest-kvm reap --host`` destroys it (its metadata names its run).

Shares (``share=``): each is a copy of the directory on the host, exported there by
virtiofs; a writable one's copy comes back (see :mod:`.shares`).
"""
from __future__ import annotations

import json
import secrets
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HypervisorError, ImageError
from ..files import file_lock, sha256_file, writable
from ..spec import SpecError
from ..vm.accel import KVM_MODULES, Accel, choose_remote_accel, probe_domain_xml
from ..vm.saveimage import HEADER, SaveImage
from ..workdir import HEAD_FILE
from .base import GuestFiles, Host
from .uris import HostUri
from .volumes import OVERLAY_SUFFIX, POOL, POOL_PATH, SAVE_SUFFIX, SEED_SUFFIX, SUFFIXES, \
    OWNER_SUFFIX, controller_tag, owner_record, owner_volume, snapshot_prefix

if TYPE_CHECKING:
    from ..guest.golden import Golden, HostFiles
    from ..images.store import BaseImage
    from ..networks.segments import Site
    from ..seed.iso import Seed
    from ..spec import Share
    from ..transport.ssh import Dial
    from ..vm.hypervisor import Hypervisor
    from .link import HostLink
    from .shares import RemoteShares


class RemoteHost(Host):
    reverts_in_place = False  # not tried there yet: its clones stay clones
    """Guests on a remote libvirt host reached over SSH (``--kvm-host``)."""

    copies_shares = True

    def __init__(self, host: HostUri, all_hosts: tuple[HostUri, ...], cache_dir: Path, *,
                 autodestroy: bool = True) -> None:
        """*host*: the one this session uses (of *all_hosts*, the header names them all);
        *cache_dir*: this controller's cache (its upload locks for the host, and its id in
        snapshot volumes' names); *autodestroy*: cold-booted domains
        end with our connection (off when guests may be kept past the session:
        ``--kvm-keep``; the watchdog still ends a crashed run's)."""
        super().__init__()
        self.host = host
        self.where = f" on {host.label}"
        self._all = all_hosts
        self.link: HostLink | None = None
        self._shares: RemoteShares | None = None
        self._autodestroy = autodestroy
        self.label = host.label
        self._lock_dir = cache_dir / "hosts" / host.key
        self._cache_dir = cache_dir
        self._bases: dict[Path, Path] = {}  # local file -> its verified volume on the host
        self._bases_lock = threading.Lock()
        self._consoles: dict[str, threading.Thread] = {}
        self._prefixes: dict[str, str] = {}  # guest -> its volumes' name prefix
        self._owner: dict[str, str] = {}  # this run's owner record (claim_run)
        self._run_id = ""
        self._frozen: list[str] = []  # volume prefixes of this run's user goldens (snapshots off)

    # -- the connection: libvirt's, and an SSH link of our own ---------------------------
    def open(self) -> "Hypervisor":
        if self._hv is not None:
            return self._hv
        from ..vm.hypervisor import Hypervisor  # noqa: PLC0415 - libvirt once a guest is needed
        from .link import HostLink  # noqa: PLC0415 - paramiko likewise
        from .shares import RemoteShares  # noqa: PLC0415
        hv = Hypervisor.open_remote(self.host)
        try:
            self.link = HostLink(self.host).connect()
            self._shares = RemoteShares(self.link)
            hv.ensure_pool(POOL, POOL_PATH)
        except BaseException:
            if self.link is not None:
                self.link.close()
                self.link = None
            hv.close()
            raise
        self._hv = hv
        return hv

    @property
    def uri(self) -> str | None:
        return self.host.uri

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None
        super().close()

    # -- what the session asks ------------------------------------------------------------
    def check_setup(self, accel: str) -> None:
        """Nothing without connecting: a remote host is asked once a guest is needed."""

    def describe(self, settings) -> str:
        where = ", ".join(h.label + (f" ({h.slots} slots)" if h.slots > 1 else "")
                          for h in self._all)
        return f"hosts {where}; accel {settings.accel}"

    def acceleration(self, requested: str, connect: Callable[[], "Hypervisor"]) -> Accel:
        """KVM if the host's libvirt offers it and its QEMU really starts with it (a probe
        domain, once per session), else TCG saying why (``--kvm-accel kvm``: an error)."""
        hv = connect()
        return choose_remote_accel(requested, hv.offers_kvm(), self.label,
                                   probe=lambda: hv.start_problem(probe_domain_xml()),
                                   modules=self._kvm_modules)

    def _kvm_modules(self) -> set[str]:
        """The KVM modules loaded on the host (``/sys/module``, read over the link)."""
        listing = self.link.run(["ls", "-1", "/sys/module"], timeout=60)
        return set(listing.split()) & set(KVM_MODULES)

    def accel_before_connecting(self, requested: str) -> str:
        return requested  # known once connected

    def cpu_model(self) -> str:
        return self.hv.host_cpu()

    def golden_fields(self) -> Mapping[str, str]:
        return {"host": self.host.key}  # a golden lives on its host (HostFiles)

    def snapshot_volume_prefix(self, key: str) -> str | None:
        return snapshot_prefix(key, controller_tag(self._cache_dir))  # they outlive this run

    def refuse_unsupported(self, request, config) -> None:
        """What a guest on a remote host cannot have yet, refused by name."""
        family = config.family
        if family.transport != "ssh" or family.firmware != "bios":
            raise SpecError(f"on remote host {self.label}: not supported yet: family "
                            f"{family.name} (WinRM and UEFI guests); run such tests without "
                            f"--kvm-host")

    def claim_run(self, run_id: str, owner: Mapping[str, str]) -> None:
        """The run's owner record as a volume on the host (see :mod:`.volumes`)."""
        self._owner = dict(owner)
        self._run_id = run_id
        self.hv.upload_volume(POOL, owner_volume(run_id), owner_record(owner))

    def release_run(self, run_id: str, *, kept: bool) -> None:
        """The run's record goes, and its user goldens' volumes unless it keeps guests (a
        kept clone reads its golden's disk)."""
        if not kept:
            for prefix in self._frozen:
                self._remove_volumes(prefix)
        self.hv.delete_volume(POOL, owner_volume(run_id))
        if kept:  # its kept guests' volumes stay until reap --kept --host
            self.hv.upload_volume(POOL, owner_volume(run_id), owner_record(self._owner, kept=True))

    def network_site(self, run_id: str, run_dir: Path) -> "Site":
        """The run's networks on the host, their switches started over its SSH link."""
        from .netsite import RemoteSite  # noqa: PLC0415
        return RemoteSite(lambda: self.link, run_id, self.label)

    def reap_hint(self) -> str:
        return f"pytest-kvm reap --kept --host URI (the --kvm-host of {self.label})"

    def remove_qemu_log(self, name: str) -> None:
        """QEMU's log is on the host, where libvirt keeps it."""

    # -- base images: uploaded once per host, content-addressed ------------------------
    def _base(self, local: Path, known: str | None = None) -> Path:
        """The host's copy of the local file *local* (whose sha256 is *known*, else hashed
        here), uploaded if missing or different."""
        with self._bases_lock:
            if local in self._bases:
                return self._bases[local]
        digest = known or sha256_file(local)
        name = f"base-{digest[:24]}{''.join(local.suffixes) or '.img'}"
        with writable(self._lock_dir.parent, "locking an upload"):
            self._lock_dir.mkdir(parents=True, exist_ok=True)
        # workers of this run (and other runs on this machine) upload a base once; other
        # machines' controllers may upload it at the same time: see _upload_into_place
        with file_lock(self._lock_dir / f"{name}.lock"):
            path = self.hv.volumes(POOL).get(name)
            if path is not None and self._host_sha256(path) != digest:
                # only ever linked into place whole: a damaged copy, or an older pytest-kvm's
                # upload that was cut short
                self.hv.delete_volume(POOL, name)
                path = None
            if path is None:
                path = self._upload_into_place(local, name, digest)
        with self._bases_lock:
            self._bases[local] = Path(path)
        return Path(path)

    def _upload_into_place(self, local: Path, name: str, digest: str) -> str:
        """Upload *local* as volume *name*: first under a name of its own
        (``pytest-kvm-RUN-upload-RANDOM.part``: a run's volume, so ``reap --host`` removes
        one a dead run left), checked by sha256 on the host, then hard-linked to *name*
        (``ln``: atomic, and never over an existing file) and the temporary name deleted.
        So *name* is either missing or complete: a controller on another machine that
        uploads the same base at the same moment either links first (ours then finds its
        complete copy) or finds ours; neither sees, hashes or deletes a half-written one,
        and no lock is left behind by a controller that died. Returns *name*'s host path."""
        part = f"{owner_volume(self._run_id).removesuffix(OWNER_SUFFIX)}-upload-" \
               f"{secrets.token_hex(4)}.part"
        part_path = self.hv.upload_volume(POOL, part, local)
        final = str(Path(part_path).with_name(name))
        try:
            got = self._host_sha256(part_path)
            if got != digest:
                raise ImageError(f"uploading {local} to host {self.label}: the host's copy has "
                                 f"sha256 {got}, the file {digest}; the upload was deleted")
            try:
                self.link.run(["ln", "--", part_path, final])
                linked = None
            except HypervisorError as exc:  # another controller's copy got there first?
                linked = exc
        finally:
            self.hv.delete_volume(POOL, part)
        path = self.hv.volumes(POOL).get(name)  # refreshed: libvirt knows the new name
        if path is None:
            raise ImageError(f"uploading {local} to host {self.label}: it could not be put in "
                             f"place as {final}: {linked}") from linked
        return path

    def _host_sha256(self, path: str) -> str:
        return self.link.run(["sha256sum", "--", path]).split(" ", 1)[0]

    # -- a guest's files ---------------------------------------------------------------
    def prepare(self, name: str, image: BaseImage, workdir: Path, seed: Seed,
                volume_prefix: str | None = None) -> GuestFiles:
        """Guest *name*'s overlay and seed as volumes named *volume_prefix* (default: *name*)
        plus a suffix."""
        known = dict(image.files_sha256)  # a cached image's, checked by the image store
        disk = self._base(image.disk, known.get(image.disk.name))
        kernel = self._base(image.kernel, known.get(image.kernel.name)) if image.kernel else None
        initrd = self._base(image.initrd, known.get(image.initrd.name)) if image.initrd else None
        prefix = self._prefixes[name] = volume_prefix or name
        if volume_prefix:  # a snapshot's name: an earlier, killed run may have left them
            self._remove_volumes(prefix)
        overlay = self.hv.create_overlay_volume(POOL, prefix + OVERLAY_SUFFIX, str(disk),
                                                image.format, _virtual_size(image.disk))
        try:
            seed_path = self.hv.upload_volume(POOL, prefix + SEED_SUFFIX, seed.iso())
        except BaseException:
            self.remove(name)
            raise
        return GuestFiles(disk=Path(overlay), seed=Path(seed_path), kernel=kernel, initrd=initrd,
                          console="pty")

    def start(self, xml: str, console_log: Path):
        # autodestroy: gone with our connection, whatever happens to this process. Paused
        # until its console is read: a pty drops what nobody reads (the first kernel banner)
        dom = self.hv.create(xml, autodestroy=self._autodestroy, paused=True)
        self._consoles[dom.name()] = self.hv.mirror_console(dom, console_log)
        self.hv.resume(dom)
        return dom

    # -- warm clones ---------------------------------------------------------------------
    def save_golden(self, name: str, files: GuestFiles, workdir: Path) -> tuple[SaveImage, HostFiles]:
        """Save the running guest *name* beside its volumes on the host; keep a copy of the
        save image's head in *workdir* (what a clone's restore rewrites)."""
        prefix = self._prefixes.get(name, name)
        save_path = str(Path(files.disk).parent / (prefix + SAVE_SUFFIX))
        self.hv.save(name, save_path)
        return self._golden_files(prefix, save_path, files.disk, files.seed, workdir)

    def freeze(self, name: str, files: GuestFiles, image: BaseImage, parent: Golden | None,
               directory: Path, volume_prefix: str | None) -> tuple[SaveImage, HostFiles]:
        """A user golden saved on the host, as the plugin's are: its saved state, its disk
        flattened onto the host's copy of the base image (``qemu-img convert -B`` on the
        host) and a copy of its seed, as volumes named *volume_prefix* (a snapshot's), else
        ``<guest name>-frozen`` (the run's: removed at its end, by its watchdog, or by
        ``reap --host`` once the run is over)."""
        prefix = volume_prefix or f"{name}-frozen"
        self._remove_volumes(prefix)  # a snapshot's name: a killed earlier run may have left them
        if volume_prefix is None:
            self._frozen.append(prefix)
        pool_dir = Path(files.disk).parent
        save_path, disk = str(pool_dir / (prefix + SAVE_SUFFIX)), str(pool_dir / (prefix + OVERLAY_SUFFIX))
        self.hv.save(name, save_path)
        base = self._base(image.disk, dict(image.files_sha256).get(image.disk.name))
        self.link.run(["qemu-img", "convert", "-O", "qcow2", "-B", str(base), "-F", image.format,
                       "--", str(files.disk), disk])
        own_seed = (parent.host_files.prefix if parent else self._prefixes.get(name, name)) + SEED_SUFFIX
        seed = self.hv.copy_volume(POOL, own_seed, prefix + SEED_SUFFIX)
        return self._golden_files(prefix, save_path, disk, seed, directory)

    def _golden_files(self, prefix: str, save_path: str, disk: Path | str, seed: Path | str,
                      directory: Path) -> tuple[SaveImage, HostFiles]:
        """A golden's volumes *prefix*.*; the save image's head read back into *directory*."""
        save_name = prefix + SAVE_SUFFIX
        first = self.hv.read_volume(POOL, save_name, 0, HEADER.size)
        size = self.hv.volume_capacity(POOL, save_name)
        head = first + self.hv.read_volume(POOL, save_name, HEADER.size,
                                           SaveImage.data_length(first, save_path, size))
        from ..guest.golden import HostFiles  # noqa: PLC0415
        image = SaveImage.parse(head, save_path, size)
        (directory / HEAD_FILE).write_bytes(head)
        return image, HostFiles(host=self.host.key, prefix=prefix, save=save_path,
                                disk=str(disk), seed=str(seed),
                                capacity=self.hv.volume_capacity(POOL, prefix + OVERLAY_SUFFIX))

    def clone_disk(self, name: str, golden: Golden, workdir: Path) -> Path:
        """A clone's overlay volume over its golden's frozen disk volume."""
        self._prefixes[name] = name
        return Path(self.hv.create_overlay_volume(POOL, name + OVERLAY_SUFFIX,
                                                  str(golden.frozen_disk), "qcow2",
                                                  golden.host_files.capacity))

    def restore(self, name: str, golden: Golden, xml: str, workdir: Path, console_log: Path):
        """Start clone *name* from a host-side copy of *golden*'s saved state with the
        clone's own head, paused until its console is read; the copy is deleted after."""
        save_name = name + SAVE_SUFFIX
        path = self.hv.copy_volume(POOL, golden.host_files.prefix + SAVE_SUFFIX, save_name)
        try:
            self.hv.write_volume(POOL, save_name, 0, golden.image.header_with(xml))
            dom = self.hv.restore(path, name, paused=True)
        finally:
            self.hv.delete_volume(POOL, save_name)
        self._consoles[name] = self.hv.mirror_console(dom, console_log)
        self.hv.resume(dom)
        return dom

    def dial(self) -> Dial:
        return self.link.tunnel

    def proxy_command(self) -> list[str] | None:
        return self.link.proxy_command()

    def export_share(self, name: str, index: int, share: Share, workdir: Path,
                     guest_ids: Callable[[], tuple[int, int]]) -> tuple[Path, Path | None]:
        """A copy of the share's directory on the host (see :mod:`.shares`)."""
        return self._shares.export(name, index, share, guest_ids)

    def sync_shares(self, name: str, *, last: bool = False) -> None:
        if self._shares is not None:  # else never opened: no share was copied
            self._shares.sync(name, last=last)

    def remove(self, name: str) -> None:
        """Its writable shares' copies back here, then its volumes and copies removed."""
        errors: list[BaseException] = []
        if self._shares is not None:
            try:
                self._shares.remove(name)
            except (HypervisorError, OSError) as exc:
                errors.append(exc)
        errors += self._remove_volumes(self._prefixes.pop(name, name))
        console = self._consoles.pop(name, None)
        if console is not None:
            console.join(timeout=5)
        if errors:
            raise errors[0]

    def _remove_volumes(self, prefix: str) -> list[HypervisorError]:
        errors = []
        for suffix in SUFFIXES:
            try:
                self.hv.delete_volume(POOL, prefix + suffix)
            except HypervisorError as exc:
                errors.append(exc)
        return errors



def _virtual_size(disk: Path) -> int:
    """The size a guest sees of *disk* (an overlay over it gets the same)."""
    result = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(disk)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ImageError(f"cannot read the size of {disk}: {result.stderr.strip()}")
    return int(json.loads(result.stdout)["virtual-size"])
