"""The hypervisor session behind the ``kvm`` fixture: one per pytest process.

It does the heavy work once (acceleration choice, libvirt connection, the
session's SSH key, base images) and boots guests on request. Closing it
destroys every guest it started and removes the run's work directory.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
import time
from dataclasses import replace
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..vm.accel import Accel, choose_accel, choose_remote_accel
from ..files import sha256_file, writable
from ..seed import cloudinit, iso as seed
from ..transport import integrations
from .background import AheadPool, Reclaimer
from ..guest.golden import Golden, digest
from ..config import Settings
from ..errors import KvmError
from ..vm.domain import NAME_PREFIX, TCG_CPU_MODEL, domain_xml, firmware_digest, host_cpu
from ..guest.facade import Guest, GuestConfig, domain_spec
from ..hosts.link import HostLink
from ..hosts.uris import Host, host_for_worker, worker_index
from ..vm.hypervisor import Hypervisor
from ..images.store import ImageStore
from ..keys import KeyPair
from ..networks.segments import Networks
from ..hosts.placement import HostPlacement, LocalPlacement, Placement, snapshot_prefix
from ..cleanup.reaper import KEPT_MARKER, machine_identity, make_run_dir, process_start_time, reap_domains, \
    reap_run_dirs
from ..families import family
from .snapshots import SnapshotStore
from ..spec import GuestRequest, SpecError, guest_request
from ..cleanup.watchdog import Watchdog


class KvmSession:
    """``kvm`` fixture object: ``kvm.boot(...)``, ``kvm.accel``, ``kvm.uri``."""

    def __init__(self, settings: Settings, progress: Callable[[str], None] = lambda msg: None,
                 worker_id: str = "") -> None:
        self.settings = settings
        self.progress = progress
        self._accel: Accel | None = None
        self._hv: Hypervisor | None = None
        self._placement: Placement | None = None  # set by start(): this machine or --kvm-host
        self._watchdog: Watchdog | None = None
        self._hv_error: KvmError | None = None
        self.images = ImageStore(settings.cache_dir, settings.local_images, progress,
                                 mirror=settings.mirror, catalogs=settings.catalogs)
        #: the remote host this session (or xdist worker) runs its guests on; None: this machine
        self.host: Host | None = (host_for_worker(settings.hosts, worker_index(worker_id))
                                  if settings.hosts else None)
        tag = f"{worker_id}-" if worker_id and worker_id != "master" else ""
        self.run_id = f"{tag}{os.getpid()}-{secrets.token_hex(2)}"
        self.run_dir = settings.cache_dir / "runs" / self.run_id
        self._login_key: KeyPair | None = None
        self._counter = 0
        self.guests: list[Guest] = []
        self.kept: list[Guest] = []
        self.boots = 0  # cold boots, goldens included
        self.clones = 0  # clones handed to tests
        self._goldens: dict[str, Golden] = {}  # by key
        self._golden_guests: list[Guest] = []  # goldens of this session only (snapshots off)
        self._digests: dict[tuple, str] = {}  # local image (path, size, mtime, inode) -> sha256
        self._fields: dict[str, dict[str, Any]] = {}  # kind of guest -> its golden's key fields
        self.snapshots = SnapshotStore(settings.cache_dir, progress)
        self._ahead = AheadPool(settings.prepare_ahead)
        self._reclaimer = Reclaimer()
        self._remake_lock = threading.Lock()
        self.networks = Networks(self.run_dir)  # guests' private networks (networks=)
        pid = os.getpid()
        self._owner = {"owner_pid": str(pid), "owner_start": process_start_time(pid),
                       **machine_identity(), "run_id": self.run_id, "run_dir": str(self.run_dir)}

    # -- lazily opened pieces ---------------------------------------------------------
    @property
    def acceleration(self) -> Accel:
        if self._accel is None:
            self._accel = (choose_accel(self.settings.accel) if self.host is None else
                           choose_remote_accel(self.settings.accel, self.hypervisor.offers_kvm(),
                                               self.host.label))
        return self._accel

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
        """Open libvirt and set the run up, once: create the run directory together with its
        owner record, start the watchdog (which destroys this run's guests if this process
        dies without closing the session), then reap what dead runs left behind (our own
        directory is owned by then, so the reaper cannot take it). A failed open is raised
        again on every later call, without retrying."""
        if self._hv_error is not None:
            raise self._hv_error
        if self._hv is not None:
            return self._hv
        host = self.host
        try:
            if host is None:
                hv = Hypervisor.open(self.settings.uri)
                placement: Placement = LocalPlacement(hv)
            else:
                hv = Hypervisor.open_remote(host)
                try:
                    placement = HostPlacement(hv, HostLink(host).connect(),
                                              self.settings.cache_dir / "hosts" / host.key,
                                              autodestroy=self.settings.keep == "none")
                except BaseException:
                    hv.close()
                    raise
        except KvmError as exc:
            self._hv_error = exc
            raise
        try:
            self._make_run_dir()
            self._watchdog = Watchdog(self.run_dir, host.uri if host else self.settings.uri,
                                      hv.embed_index)
        except BaseException:
            placement.close()
            hv.close()
            raise
        self._hv = hv
        self._placement = placement
        leftovers = reap_domains(hv, failed=lambda name, exc: self.progress(
            f"could not destroy {name}, a leftover of a dead run (its files are kept): {exc}"))
        leftovers += [p.name for p in reap_run_dirs(self.settings.cache_dir / "runs")]
        if leftovers:
            self.progress(f"removed leftovers of dead runs: {', '.join(leftovers)}")
        return hv

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
        return self.create_for(guest_request(os, **kwargs))

    def create_for(self, request: GuestRequest) -> Guest:
        """:meth:`create` for a checked request (what the ``guest`` marker gives)."""
        if request.golden is not None:
            request = self._user_golden_request(request)
        os_name = request.os or self.settings.default_os
        if request.image is None:
            self.images.check_name(os_name)
        config = self._config(os_name, request)
        if request.share and config.family.share_mount_command is None:
            raise SpecError(f"share: family {config.family.name} ({os_name}) cannot mount shared "
                            f"folders (virtiofs); copy files with guest.put(directory, ...) instead")
        if request.networks and (config.family.network_command is None
                                 or config.family.machine != "pc"):
            raise SpecError(f"networks: family {config.family.name} ({os_name}) cannot join "
                            f"private networks yet (only Linux guests can)")
        if self.host is not None:
            self._check_remote(request, config)
        tpm = config.family.tpm if config.tpm is None else config.tpm
        # libvirt keys a TPM's state by the domain's UUID, which clones share: cold boot those
        if (request.reset or self.settings.reset) == "clone" and not tpm:
            if request.unique and config.family.identity_command is None:
                raise SpecError(f"unique=True: warm clones of family {config.family.name} cannot "
                                f"get a new identity; use reset='boot'")
            golden = request.golden or self._golden(config)
            self.clones += 1
            # a unique clone gets its identity while it starts: never one made ahead
            guest = None if request.unique else self._ahead.take(golden.key)
            if guest is None:
                guest = self._clone(golden, config)
            else:  # made ahead for whoever came next: this request's shares are mounted now
                guest.hand_over(config)
            if not request.unique and self._ahead.wanted(golden.key):
                ahead = self._config(os_name, replace(request, share=(), artifacts=(),
                                                      networks=(), name=None))
                self._ahead.prepare(golden.key, self._clone(golden, ahead), after=guest)
            return guest
        self.boots += 1
        return self._track(Guest(self.hypervisor, config, placement=self._placement))

    def _no_goldens_remote(self, what: str) -> None:
        if self.host is not None:
            raise KvmError(f"{what}: user goldens are not supported on remote hosts yet "
                           f"(--kvm-host {self.host.label})")

    def _check_remote(self, request: GuestRequest, config: GuestConfig) -> None:
        """What a guest on a remote host (``--kvm-host``) cannot have yet, refused by name."""
        missing = [what for what, asked in (
            ("share= (virtiofs runs beside QEMU, on the host)", request.share),
            ("networks= (the switch runs on this machine)", request.networks),
            ("golden= (user goldens are saved images on this machine)", request.golden),
            (f"family {config.family.name} (WinRM and UEFI guests)",
             config.family.transport != "ssh" or config.family.firmware != "bios"),
        ) if asked]
        if missing:
            raise SpecError(f"on remote host {self.host.label}: not supported yet: "
                            f"{'; '.join(missing)}; run such tests without --kvm-host")

    def _user_golden_request(self, request: GuestRequest) -> GuestRequest:
        """A request for a clone of a user golden: its OS, family, memory and vCPUs are the
        golden's (a saved state only restores onto the same machine)."""
        golden = request.golden
        if isinstance(golden, str):
            raise SpecError(f"golden={golden!r}: a fixture name only works in the guest marker; "
                            f"pass the golden itself (what guest.freeze() returned)")
        fields = golden.fields
        if request.os and request.os != fields["os"]:
            raise SpecError(f"golden= was made from {fields['os']}, not os={request.os!r}")
        return replace(request, os=fields["os"], family=fields["family"], reset="clone",
                       memory_mib=fields["memory_mib"], cpus=fields["cpus"])

    # -- user goldens ----------------------------------------------------------------------
    def golden(self, key: str, prepare: Callable[[Guest], Any], os: str | None = None,
               **keywords: Any) -> Golden:
        """A user golden made by ``prepare(guest)`` on a warm clone (``os`` and *keywords*:
        as for :meth:`boot`), then frozen (see ``Guest.freeze``). With snapshots on, a golden
        made earlier for the same parent and *key* is used as it is: *prepare* does not run."""
        self._no_goldens_remote("kvm.golden()")
        request = guest_request(os, **{**keywords, "reset": "clone"})
        parent = self._golden(self._config(request.os or self.settings.default_os, request))
        user_key = self._user_key(parent.key, key)
        if user_key in self._goldens:
            return self._goldens[user_key]

        def make(directory: Path) -> Golden:
            with self.create_for(request) as guest:
                guest.start()
                prepare(guest)
                return self._save_user_golden(guest, user_key, directory, parent.fields, key)

        return self._keep_user_golden(user_key, make, key)

    def _freeze(self, guest: Guest, key: str) -> Golden:
        """``guest.freeze(key)``: the guest becomes a golden (or, if this parent and key were
        frozen before and kept as a snapshot, that one is used and the guest removed)."""
        self._no_goldens_remote("guest.freeze()")
        if guest.cloned:
            parent_key, parent_fields = guest._golden.key, guest._golden.fields
        else:
            parent_fields = self._golden_fields(guest.config)
            parent_key = digest(parent_fields)
        user_key = self._user_key(parent_key, key)
        if user_key not in self._goldens:
            self._keep_user_golden(user_key, lambda directory: self._save_user_golden(
                guest, user_key, directory, parent_fields, key), key)
        guest.destroy()  # saved and moved (or not needed): nothing of it is left running
        return self._goldens[user_key]

    @staticmethod
    def _user_key(parent_key: str, key: str) -> str:
        return digest(["user golden", parent_key, key])

    def _keep_user_golden(self, user_key: str, make: Callable[[Path], Golden], key: str) -> Golden:
        what = f"user golden {key if not key.startswith('source:') else '(from its source)'}"
        if self.settings.snapshots == "on":
            golden = self.snapshots.get_or_create(user_key, make, what=what)
        else:
            directory = self.run_dir / f"golden-{user_key}"
            directory.mkdir(mode=0o700)
            golden = make(directory)
        self._goldens[user_key] = golden
        return golden

    def _save_user_golden(self, guest: Guest, user_key: str, directory: Path,
                          parent_fields: Mapping[str, Any], key: str) -> Golden:
        golden = guest.freeze_into(user_key, directory)
        golden.write_meta({**parent_fields, "user_key": key}, time.time())
        self.progress(f"user golden {user_key} saved ({key})")
        return golden

    def _clone(self, golden: Golden, config: GuestConfig) -> Guest:
        """A clone of *golden* named and placed by *config*, unstarted."""
        return self._track(Guest(self.hypervisor, config, golden=golden, placement=self._placement))

    def _config(self, os_name: str, request) -> GuestConfig:
        accel = self.acceleration  # first: an unreachable remote host fails before a build
        base = self.images.resolve(os_name, request.image)
        fam = family(request.family or base.family)
        memory = request.memory_mib or max(self.settings.memory_mib, base.min_memory_mib or 0)
        key_file = self._key_file()
        name = self._next_name()
        return GuestConfig(
            name=name, os=os_name, image=base,
            memory_mib=memory, cpus=request.cpus or self.settings.cpus,
            virt_type=accel.virt_type,
            limits=self.settings.limits(accel.name, request.boot_timeout),
            command_timeout=self.settings.command_timeout,
            workdir=self.run_dir / name, login_key_file=key_file, login_key=self._login_key,
            user_data=request.user_data, family=fam, seed_format=request.seed, unique=request.unique,
            tpm=request.tpm, machine_type=self.hypervisor.canonical_machine(fam.machine),
            shares=request.share, artifacts=request.artifacts,
            networks=request.networks, network_name=request.name,
            network_mode=self.settings.network,
            metadata={**self._owner, "created": str(int(time.time()))})

    def _next_name(self) -> str:
        self._counter += 1
        return f"{NAME_PREFIX}{self.run_id}-{self._counter}"

    # -- goldens ------------------------------------------------------------------------
    def _golden(self, config: GuestConfig) -> Golden:
        # the full key builds a seed and hashes firmware: once per kind of guest and session
        kind = digest([config.os, str(config.image.disk), config.memory_mib, config.cpus,
                       config.user_data, config.family.name, config.seed_format, config.tpm])
        if kind not in self._fields:
            self._fields[kind] = self._golden_fields(config)
        fields = self._fields[kind]
        key = digest(fields)
        if key in self._goldens:
            return self._goldens[key]
        if self.settings.snapshots == "on":
            golden = self.snapshots.get_or_create(
                key, lambda directory: self._boot_golden(config, key, directory, fields),
                what=config.os)
            golden.replace = lambda exc, gen: self._remake_snapshot(config, key, fields, exc, gen)
            if self.settings.snapshot_max_bytes is not None:
                for name in self.snapshots.prune(self.settings.snapshot_max_bytes):
                    self.progress(f"snapshot {name} removed: the snapshot cache is over "
                                  f"kvm_snapshot_max_gb")
        else:
            golden = self._boot_golden(config, key, self.run_dir / f"golden-{key}", fields)
        self._goldens[key] = golden
        return golden

    def _boot_golden(self, config: GuestConfig, key: str, directory: Path,
                     fields: Mapping[str, Any]) -> Golden:
        """Boot a guest cold in *directory* and save it there as a golden."""
        t0 = time.monotonic()
        where = "snapshot" if self.settings.snapshots == "on" else "golden guest"
        self.progress(f"booting {where} {key} ({config.os}) for warm clones")
        # on a remote host a snapshot's volumes are named for it: they outlive this run
        prefix = (snapshot_prefix(key)
                  if self.host is not None and self.settings.snapshots == "on" else None)
        guest = Guest(self.hypervisor, replace(config, name=self._next_name(), workdir=directory,
                                               shares=(), artifacts=(), networks=(),
                                               network_name=None, volume_prefix=prefix),
                      placement=self._placement)
        self.boots += 1
        self._golden_guests.append(guest)
        try:
            guest.start()
            golden = guest.save_as_golden(key)
            golden.write_meta(fields, time.time())
        except BaseException as exc:
            self._discard_golden_guest(guest, exc)
            raise
        if self.settings.snapshots == "on":  # the cache keeps its files; nothing is running
            self._golden_guests.remove(guest)
        self.progress(f"{where} {key} ready in {time.monotonic() - t0:.1f} s")
        return golden

    def _discard_golden_guest(self, guest: Guest, exc: BaseException) -> None:
        """A golden guest that did not start or save is no golden: destroy it now, before
        the snapshot store removes its directory under a QEMU that may still run. If that
        fails too, a note on *exc* says so."""
        self._golden_guests.remove(guest)
        try:
            guest.destroy()
        except Exception as err:  # noqa: BLE001 - reported on the error being raised
            exc.add_note(f"pytest-kvm: destroying the unsaved golden guest {guest.name} "
                         f"failed too: {err}")

    def _remake_snapshot(self, config: GuestConfig, key: str, fields: Mapping[str, Any],
                         exc: BaseException, generation: int) -> None:
        """The first clone of a cached snapshot failed: remove it, boot cold, save again,
        and refresh the golden in place (once, if two clones failed on the same files)."""
        golden = self._goldens[key]
        with self._remake_lock:
            if golden.generation != generation:  # another clone already had it made anew
                return
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.snapshots.discard(key, f"its clone did not come up ({first_line}); booting cold")
            golden.refresh_from(self.snapshots.get_or_create(
                key, lambda directory: self._boot_golden(config, key, directory, fields),
                what=config.os))

    def _golden_fields(self, config: GuestConfig) -> dict[str, Any]:
        """Everything that can make a saved state wrong for *config*: the snapshot key hashes
        it, ``pytest-kvm snapshot list`` shows it."""
        fam = config.family
        # not the network mode: it is a netdev option outside the saved state, and each clone
        # gets its own through retarget (a golden booted in either mode serves both)
        template = replace(config, name="golden", workdir=Path("/golden"), metadata={},
                           network_mode="user")
        dummy = KeyPair("private", "ssh-ed25519 AAAA pytest-kvm")
        user_data = cloudinit.render_user_data(fam, login_key=dummy, host_key=dummy,
                                               password="password" if fam.transport == "winrm"
                                               else None, extra=config.user_data)
        seed_files = seed.build_seed(config.seed_format or fam.seed_format, instance_id="golden",
                                     hostname="golden", user_data=user_data,
                                     public_keys={"pytest-kvm": dummy.public_openssh}).files
        spec = domain_spec(template, 0)
        return {
            "os": config.os, "family": fam.name, "accel": config.virt_type,
            "memory_mib": config.memory_mib, "cpus": config.cpus,
            "machine": config.machine_type or fam.machine,
            "cpu": (TCG_CPU_MODEL if config.virt_type != "kvm" else
                    host_cpu() if self.host is None else self.hypervisor.host_cpu()),
            "base": self._image_digest(config.image),
            "domain": digest(domain_xml(spec)),
            "seed": digest({name: data.hex() for name, data in sorted(seed_files.items())}),
            "user_data": digest(config.user_data) if config.user_data else None,
            **self.hypervisor.versions(),
            "firmware": firmware_digest(spec),
            # a remote host's golden lives there (HostFiles): one snapshot per host
            **({"host": self.host.key} if self.host is not None else {}),
        }

    def _image_digest(self, image) -> str:
        if image.digest:
            return image.digest
        stat = image.disk.stat()
        memo = (str(image.disk), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if memo not in self._digests:
            self._digests[memo] = sha256_file(image.disk)
        return self._digests[memo]

    def _track(self, guest: Guest) -> Guest:
        guest._freezer = self._freeze
        guest._networks = self.networks
        self.guests.append(guest)
        return guest

    def release(self, guest: Guest) -> None:
        """Destroy *guest* in the background (the session end waits for it)."""
        self._reclaimer.destroy(guest.destroy)

    def inventory(self, path: str | os.PathLike) -> Path:
        """Write an Ansible inventory (YAML) of the running guests this session handed out
        (not the clones made ahead for later tests) to *path*."""
        ahead = self._ahead.waiting()
        return integrations.write_inventory(path, [
            g for g in self.guests
            if g.started.is_set() and not g.destroyed and g.name not in ahead])

    def counts(self) -> dict[str, int]:
        """Cold boots (goldens included), clones handed out (of them made ahead), snapshots
        reused and created: the summary line."""
        return {"boots": self.boots, "clones": self.clones, "ahead": self._ahead.handed_over,
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
        for guest in self.guests + self._golden_guests:
            if not guest.kept and guest.name not in needed:
                self._reclaimer.destroy(guest.destroy)
        errors: list[BaseException] = self._reclaimer.wait()
        try:
            self.networks.close(keep={g.name for g in self.kept})
        except Exception as exc:  # noqa: BLE001 - reported with the rest
            errors.append(exc)
        self.guests = [g for g in self.guests if g.kept]
        self._golden_guests = [g for g in self._golden_guests if g.name in needed]
        self._goldens = {}
        self.snapshots.release()
        self.images.close()  # its base images' use locks; old digests nobody uses are removed
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if not self.kept:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.run_dir)
        if self._placement is not None:
            self._placement.close()
            self._placement = None
        if self._hv is not None:
            self._hv.close()
            self._hv = None
        return errors
