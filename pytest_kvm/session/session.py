"""The hypervisor session behind the ``kvm`` fixture: one per pytest process.

It does the heavy work once (acceleration choice, the host's libvirt connection, the
session's SSH key, base images, goldens) and makes guests on request. Closing it
destroys every guest it started and removes the run's work directory.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..arches import host_arch, split_image_name
from ..cleanup.reaper import make_run_dir
from ..owner import cache_id, machine_identity, process_start_time
from ..workdir import KEPT_MARKER
from ..config import Settings
from ..errors import KvmError
from ..families import family
from ..files import writable
from ..hosts.choose import host_for
from ..images.store import ImageStore
from ..keys import KeyPair
from ..networks.segments import Networks
from ..spec import GuestRequest, SpecError, check_arguments, guest_request
from ..vm.domain import NAME_PREFIX
from ..vm.hugepages import set_huge_pages
from .background import AheadPool, Reclaimer
from .goldens import Goldens
from .snapshots import SnapshotStore

if TYPE_CHECKING:
    from ..cleanup.watchdog import Watchdog
    from ..guest.config import GuestConfig
    from ..guest.facade import Guest
    from ..guest.golden import Golden
    from ..vm.accel import Accel
    from ..vm.hypervisor import Hypervisor


class KvmSession:
    """``kvm`` fixture object: ``kvm.boot(...)``, ``kvm.accel``, ``kvm.uri``."""

    def __init__(self, settings: Settings, progress: Callable[[str], None] = lambda msg: None,
                 worker_id: str = "") -> None:
        self.settings = settings
        self.progress = progress
        self._accel: Accel | None = None
        self._hv: Hypervisor | None = None
        self._watchdog: Watchdog | None = None
        self._hv_error: KvmError | None = None
        self.images = ImageStore(settings.cache_dir, settings.local_images, progress,
                                 mirror=settings.mirror, catalogs=settings.catalogs)
        #: where this session (or xdist worker) runs its guests: this machine or a remote host
        self.host = host_for(settings, worker_id)
        tag = f"{worker_id}-" if worker_id and worker_id != "master" else ""
        #: names this run's guests, files and volumes: its worker, PID, and the first hex
        #: digits of its cache's random id and of a random number (two controllers sharing
        #: a host never make the same names, whatever their host names and PIDs). Nothing is
        #: written here: a cache without an id yet (made with the first run directory, in
        #: start(), where an unwritable cache is one clear error) gives random digits.
        self.cache_id = cache_id(settings.cache_dir)
        self.run_id = f"{tag}{os.getpid()}-{(self.cache_id or secrets.token_hex(2))[:4]}" \
                      f"{secrets.token_hex(3)}"
        self.run_dir = settings.cache_dir / "runs" / self.run_id
        self._login_key: KeyPair | None = None
        self._counter = 0
        self.guests: list[Guest] = []
        self.kept: list[Guest] = []
        self.boots = 0  # cold boots, goldens included
        self.clones = 0  # clones handed to tests
        self.snapshots = SnapshotStore(settings.cache_dir, progress)
        self.goldens = Goldens(settings, self.host, self.snapshots, self.run_dir, progress,
                               boot=self._golden_guest, clone=self.create_for, config=self._config,
                               next_name=self._next_name)
        self._ahead = AheadPool(settings.prepare_ahead, progress)
        self._reclaimer = Reclaimer()
        # guests' private networks (networks=), where the host runs its guests
        self.networks = Networks(self.host.network_site(self.run_id, self.run_dir), self.host)
        pid = os.getpid()
        self._owner = {"owner_pid": str(pid), "owner_start": process_start_time(pid),
                       **machine_identity(), "cache_id": self.cache_id, "run_id": self.run_id,
                       "run_dir": str(self.run_dir)}

    # -- lazily opened pieces ---------------------------------------------------------
    @property
    def acceleration(self) -> Accel:
        if self._accel is None:
            self._accel = self.host.acceleration(self.settings.accel, lambda: self.hypervisor)
            if self.accel_note:
                self.progress(self.accel_note)
        return self._accel

    @property
    def accel_note(self) -> str | None:
        """``on HOST: tcg (kvm advertised but unusable: ...)`` when the host's QEMU could not
        start with the KVM its libvirt advertises (the progress line and the summary say it)."""
        if self._accel is None or not self._accel.fallback:
            return None
        return f"{self.host.where.strip() or 'on this machine'}: {self._accel.name} " \
               f"({self._accel.reason})"

    @property
    def accel(self) -> str:
        """``"kvm"`` or ``"tcg"``."""
        return self.acceleration.name

    @property
    def hypervisor(self) -> Hypervisor:
        """The libvirt connection. Its first use calls :meth:`start`, with the side effects
        that method names."""
        if self._hv is None:
            self.start()
        return self._hv

    def start(self) -> Hypervisor:
        """Open the host and set the run up, once: create the run directory together with its
        owner record, start the watchdog (which destroys this run's guests if this process
        dies without closing the session), then reap what dead runs left behind (our own
        directory is owned by then, so the reaper cannot take it). A failed open is raised
        again on every later call, without retrying."""
        from ..cleanup.reaper import reap_domains, reap_run_dirs  # noqa: PLC0415
        from ..cleanup.watchdog import Watchdog  # noqa: PLC0415
        if self._hv_error is not None:
            raise self._hv_error
        if self._hv is not None:
            return self._hv
        try:
            hv = self.host.open()
        except KvmError as exc:
            self._hv_error = exc
            raise
        try:
            self._make_run_dir()
            self.cache_id = self._owner["cache_id"] = cache_id(self.settings.cache_dir)
            self._watchdog = Watchdog(self.run_dir, self.host.uri, hv.embed_index)
            self.host.claim_run(self.run_id, self._owner)
        except BaseException:
            self.host.close()
            raise
        self._hv = hv
        if hv.embed_index is not None:  # QEMU is forked from this process: no huge pages
            set_huge_pages(False)
        leftovers = reap_domains(hv, cache=self.cache_id, failed=lambda name, exc: self.progress(
            f"could not destroy {name}, a leftover of a dead run (its files are kept): {exc}"))
        leftovers += [p.name for p in reap_run_dirs(self.settings.cache_dir / "runs")]
        if leftovers:
            self.progress(f"removed leftovers of dead runs: {', '.join(leftovers)}")
        return hv

    @property
    def start_error(self) -> KvmError | None:
        """Why :meth:`start` failed (raised again by every later call), else None."""
        return self._hv_error

    def _make_run_dir(self) -> None:
        with writable(self.run_dir.parent, "creating the run's work directory"):
            make_run_dir(self.run_dir)

    @property
    def uri(self) -> str:
        """The libvirt URI in use (calls :meth:`start` if needed)."""
        return self.hypervisor.uri

    def _key_file(self) -> Path:
        key_file = self.run_dir / "id_ed25519"
        if self._login_key is None:
            self._make_run_dir()
            with writable(self.run_dir.parent, "writing the run's login key"):
                key = KeyPair.generate(f"pytest-kvm-{self.run_id}")
                key.write_private(key_file)
            self._login_key = key
        return key_file

    # -- booting ----------------------------------------------------------------------
    def boot(self, os: str | None = None, **kwargs: Any) -> Guest:
        """Boot a guest and wait until it is ready; use it as a context manager to destroy it.
        Keywords (see :func:`pytest_kvm.spec.guest_request`): ``reset`` is ``"clone"`` (a warm
        clone of a golden guest) or ``"boot"`` (cold boot), default ``--kvm-reset``;
        ``family`` overrides the image's OS family, ``seed`` its seed format; ``unique=True``
        gives a clone its own hostname and machine-id; ``tpm=True`` adds an emulated TPM 2.0;
        ``share={"/mnt/src": "."}`` mounts host directories (read-only unless
        ``{"path": DIR, "writable": True}``); ``artifacts`` names guest paths collected
        when the test fails (``--kvm-artifacts``); ``networks=("lan",)`` puts the guest on
        private networks shared with the session's other guests there, ``name`` is its name
        on them (see :mod:`pytest_kvm.networks.segments`)."""
        return self.create(os, **kwargs).start()

    def create(self, os: str | None = None, **kwargs: Any) -> Guest:
        """Like :meth:`boot` but returns the guest unstarted (call ``.start()``). With
        ``reset="clone"`` the golden guest is booted here, the first time it is needed."""
        check_arguments((os,), kwargs)
        return self.create_for(guest_request(os, **kwargs))

    def create_for(self, request: GuestRequest) -> Guest:
        """:meth:`create` for a checked request (what the ``guest`` marker gives)."""
        if request.golden is not None:
            request = self.goldens.user_request(request)
        os_name = self.settings.os_for(request.os, request.arch)
        if request.image is None:
            self.images.check_name(os_name)
        config = self._config(os_name, request)
        if request.share and config.family.share_mount_command is None:
            raise SpecError(f"share: family {config.family.name} ({os_name}) cannot mount shared "
                            f"folders (virtiofs); copy files with guest.put(directory, ...) instead")
        if not config.native:
            self._refuse_foreign(request, config)
        if request.networks and (config.family.network_command is None
                                 or config.family.machine != "pc"):
            raise SpecError(f"networks: family {config.family.name} ({os_name}) cannot join "
                            f"private networks yet (only Linux guests can)")
        self.host.refuse_unsupported(request, config)
        tpm = config.family.tpm if config.tpm is None else config.tpm
        # libvirt keys a TPM's state by the domain's UUID, which clones share: cold boot those
        # ... and so are guests of an architecture whose restore does not work (arches.py)
        reset = request.reset or self.settings.reset
        if reset in ("clone", "revert") and not tpm and config.arch.warm_clones:
            from ..guest import revert  # noqa: PLC0415 - the guest modules once a guest is made
            if reset == "revert" and revert.why_not(
                    config, shares=bool(request.share), networks=bool(request.networks),
                    unique=request.unique, tpm=bool(tpm),
                    remote=not self.host.reverts_in_place) is None:
                config = replace(config, revert=True)
            if request.unique and config.family.identity_command is None:
                raise SpecError(f"unique=True: warm clones of family {config.family.name} cannot "
                                f"get a new identity; use reset='boot'")
            golden = request.golden or self.goldens.for_config(config)
            self.clones += 1
            # a unique clone gets its identity while it starts, and a clone with shares its
            # RAM in a memfd (those made ahead have private RAM): never one made ahead
            guest = None if request.unique or request.share else self._ahead.take(golden.key)
            if guest is None:
                guest = self._clone(golden, config)
            else:  # made ahead for whoever came next: this request's shares are mounted now
                guest.hand_over(config)
            if not request.unique and self._ahead.wanted(golden.key):
                ahead = replace(self._config(os_name, replace(request, share=(), artifacts=(),
                                                              networks=(), name=None)),
                                revert=config.revert)
                self._ahead.prepare(golden.key, self._clone(golden, ahead), after=guest)
            return guest
        return self._new_boot(config)

    @staticmethod
    def _refuse_foreign(request: GuestRequest, config: GuestConfig) -> None:
        """What guests of another architecture than the host's cannot do yet."""
        where = f"{config.os} ({config.arch.debian})"
        if config.family.name != "linux":
            raise SpecError(f"{where}: only Linux guests run on other architectures than the "
                            f"host's, not family {config.family.name}")
        image = config.image
        if image.kernel is None and (config.arch.uefi is None or image.firmware != "uefi"):
            why = ("give it a catalog entry with firmware = \"uefi\"" if config.arch.uefi else
                   "no UEFI firmware for it is packaged here")
            raise SpecError(f"{where}: the image has no kernel of its own for a direct boot, and "
                            f"{config.arch.debian} guests boot from their disk only with UEFI: "
                            f"{why}")
        if request.tpm:
            raise SpecError(f"tpm: {where}: an emulated TPM is only offered on the host's "
                            f"architecture")
        if request.share and config.arch.no_shares:
            raise SpecError(f"share: {where}: shared folders are not offered on "
                            f"{config.arch.debian}: {config.arch.no_shares}; copy files with "
                            f"guest.put")
        if request.networks:
            raise SpecError(f"networks: {where}: private networks are only offered on the "
                            f"host's architecture (their NICs go into slots of a PCI root bus, "
                            f"which the other machines do not have)")

    # -- goldens ------------------------------------------------------------------------------
    def golden(self, key: str, prepare: Callable[[Guest], Any], os: str | None = None,
               **keywords: Any) -> Golden:
        """A user golden made by ``prepare(guest)`` on a warm clone (``os`` and *keywords*:
        as for :meth:`boot`), then frozen (see ``Guest.freeze``). With snapshots on, a golden
        made earlier for the same parent and *key* is used as it is: *prepare* does not run."""
        check_arguments((os,), keywords)
        return self.goldens.made_by(key, prepare, guest_request(os, **{**keywords, "reset": "clone"}))

    # -- guests -------------------------------------------------------------------------------
    def _guest(self, config: GuestConfig, golden: Golden | None = None) -> Guest:
        from ..guest.facade import Guest  # noqa: PLC0415 - paramiko & co. once a guest is made
        return Guest(self.host, config, golden=golden, freezer=self.goldens.freeze,
                     networks=self.networks)

    def _new_boot(self, config: GuestConfig) -> Guest:
        """An unstarted guest booted cold from *config*, handed out (and destroyed at the end)."""
        self.boots += 1
        guest = self._guest(config)
        self.guests.append(guest)
        return guest

    def _golden_guest(self, config: GuestConfig) -> Guest:
        """An unstarted guest booted cold to become a golden (the goldens keep track of it)."""
        self.boots += 1
        return self._guest(config)

    def _clone(self, golden: Golden, config: GuestConfig) -> Guest:
        """A clone of *golden* named and placed by *config*, unstarted."""
        guest = self._guest(config, golden)
        self.guests.append(guest)
        return guest

    def _config(self, os_name: str, request) -> GuestConfig:
        from ..guest.config import GuestConfig  # noqa: PLC0415
        accel = self.acceleration  # first: an unreachable remote host fails before a build
        self.hypervisor  # noqa: B018 - and so does a local libvirt that cannot be opened (every
        # guest's config is made here: the host is open before any guest uses it)
        base = self.images.resolve(os_name, request.image)
        fam = family(request.family or base.family)
        memory = request.memory_mib or max(self.settings.memory_mib, base.min_memory_mib or 0)
        key_file = self._key_file()
        name = self._next_name()
        arch = split_image_name(os_name)[1]
        # another architecture than the host's is emulated (TCG), whatever KVM can do
        native = arch == host_arch()
        return GuestConfig(
            name=name, os=os_name, image=base, arch=arch,
            memory_mib=memory, cpus=request.cpus or self.settings.cpus,
            virt_type=accel.virt_type if native else "qemu",
            limits=self.settings.limits(accel.name if native else "tcg", request.boot_timeout),
            command_timeout=self.settings.command_timeout,
            workdir=self.run_dir / name, login_key_file=key_file, login_key=self._login_key,
            user_data=request.user_data, family=fam, seed_format=request.seed, unique=request.unique,
            tpm=request.tpm,
            machine_type=self.host.canonical_machine(fam.machine if native else arch.machine,
                                                     arch.kernel),
            shares=request.share, artifacts=request.artifacts,
            networks=request.networks, network_name=request.name,
            network_mode=self.settings.network, tb_cache_mib=self.settings.tb_cache_mib,
            metadata={**self._owner, "created": str(int(time.time()))})

    def _next_name(self) -> str:
        self._counter += 1
        return f"{NAME_PREFIX}{self.run_id}-{self._counter}"

    def release(self, guest: Guest) -> None:
        """Destroy *guest* in the background (the session end waits for it); what it wrote
        to writable shares copied to a remote host comes back first (by the end of its test,
        as it is there on this machine). A ``reset="revert"`` guest still running is reverted
        in place instead, and goes to the next test asking for a clone of its golden."""
        try:
            guest.sync_shares(last=True)
        except BaseException:
            self._reclaimer.destroy(guest.destroy)
            raise
        if guest.config.revert and guest.running and guest.golden is not None:
            self._ahead.recycle(guest.golden.key, guest)  # reverted in place for the next test
        else:
            self._reclaimer.destroy(guest.destroy)

    def inventory(self, path: str | os.PathLike) -> Path:
        """Write an Ansible inventory (YAML) of the running guests this session handed out
        (not the clones made ahead for later tests) to *path*."""
        ahead = self._ahead.waiting()
        from ..transport import integrations  # noqa: PLC0415
        return integrations.write_inventory(path, [
            g for g in self.guests
            if g.started.is_set() and not g.destroyed and g.name not in ahead])

    def counts(self) -> dict[str, int]:
        """Cold boots (goldens included), clones handed out (of them made ahead), snapshots
        reused and created: the summary line."""
        return {"boots": self.boots, "clones": self.clones, "ahead": self._ahead.handed_over,
                "reverted": self._ahead.reverted,
                "reused": self.snapshots.reused, "created": self.snapshots.created}

    def keep(self, guest: Guest) -> None:
        guest.keep()
        (self.run_dir / guest.name / KEPT_MARKER).write_text(guest.access() + "\n")
        self.kept.append(guest)

    # -- teardown ---------------------------------------------------------------------
    def close(self) -> list[BaseException]:
        """Destroy every guest not kept (clones made ahead and not taken included), remove
        the run's files, close libvirt. Every step runs even when one fails; the failures
        are returned."""
        self._ahead.close()
        needed = {g.golden_name for g in self.kept if g.cloned}  # their golden's disk is read
        for guest in self.guests + self.goldens.guests:
            if not guest.kept and guest.name not in needed:
                self._reclaimer.destroy(guest.destroy)
        errors: list[BaseException] = self._reclaimer.wait()
        try:
            self.networks.close(keep={g.name for g in self.kept})
        except Exception as exc:  # noqa: BLE001 - reported with the rest
            errors.append(exc)
        self.guests = [g for g in self.guests if g.kept]
        self.goldens.forget(needed)
        self.snapshots.release()
        self.images.close()  # its base images' use locks; old digests nobody uses are removed
        if self._hv is not None:
            try:
                self.host.release_run(self.run_id, kept=bool(self.kept))
            except KvmError as exc:  # reported with the rest; reap --host sweeps it later
                errors.append(exc)
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if not self.kept:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.run_dir)
        self.host.close()
        self._hv = None
        return errors
