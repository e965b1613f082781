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
import time
from dataclasses import replace
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .accel import Accel, choose_accel
from .cache import writable
from .clones import Golden, golden_key
from .config import Settings
from .errors import KvmError
from .domain import NAME_PREFIX
from .guest import Guest, GuestConfig
from .hypervisor import Hypervisor
from .images import ImageStore
from .keys import KeyPair
from .reaper import KEPT_MARKER, process_start_time, reap_domains, reap_run_dirs, write_owner
from .families import family
from .spec import GuestRequest, SpecError, guest_request
from .watchdog import Watchdog


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
        tag = f"{worker_id}-" if worker_id and worker_id != "master" else ""
        self.run_id = f"{tag}{os.getpid()}-{secrets.token_hex(2)}"
        self.run_dir = settings.cache_dir / "runs" / self.run_id
        self._login_key: KeyPair | None = None
        self._counter = 0
        self.guests: list[Guest] = []
        self.kept: list[Guest] = []
        self.boots = 0  # cold boots, goldens included
        self.clones = 0
        self._goldens: dict[str, Golden] = {}
        pid = os.getpid()
        self._owner = {"owner_pid": str(pid), "owner_start": process_start_time(pid),
                       "run_id": self.run_id, "run_dir": str(self.run_dir)}

    # -- lazily opened pieces ---------------------------------------------------------
    @property
    def acceleration(self) -> Accel:
        if self._accel is None:
            self._accel = choose_accel(self.settings.accel)
        return self._accel

    @property
    def accel(self) -> str:
        """``"kvm"`` or ``"tcg"``."""
        return self.acceleration.name

    @property
    def hypervisor(self) -> Hypervisor:
        if self._hv_error is not None:  # do not retry a failed open in every test
            raise self._hv_error
        if self._hv is None:
            try:
                self._hv = Hypervisor.open(self.settings.uri)
            except KvmError as exc:
                self._hv_error = exc
                raise
            self._watchdog = Watchdog(self.run_dir, self.settings.uri, self._hv.embed_index)
            leftovers = reap_domains(self._hv)
            leftovers += [p.name for p in reap_run_dirs(self.settings.cache_dir / "runs")]
            if leftovers:
                self.progress(f"removed leftovers of dead runs: {', '.join(leftovers)}")
        return self._hv

    @property
    def uri(self) -> str:
        """The libvirt URI in use (opens the connection if needed)."""
        return self.hypervisor.uri

    def _key_file(self) -> Path:
        key_file = self.run_dir / "id_ed25519"
        if self._login_key is None:
            with writable(self.run_dir.parent, "creating the run's work directory"):
                self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                write_owner(self.run_dir)
                key = KeyPair.generate(f"pytest-kvm-{self.run_id}")
                key.write_private(key_file)
            self._login_key = key
        return key_file

    # -- booting ----------------------------------------------------------------------
    def boot(self, os: str | None = None, *, memory_mib: int | None = None, cpus: int | None = None,
             user_data: Mapping[str, Any] | None = None, image: str | Path | None = None,
             boot_timeout: float | None = None, reset: str | None = None,
             family: str | None = None, seed: str | None = None, unique: bool = False,
             tpm: bool | None = None) -> Guest:
        """Boot a guest and wait until it is ready; use it as a context manager to destroy it.
        ``reset`` is ``"clone"`` (restore a warm clone of a golden guest) or ``"boot"`` (cold
        boot); default: ``--kvm-reset``. ``family`` overrides the image's OS family, ``seed``
        its seed format (``"nocloud"`` or ``"configdrive"``); ``unique=True`` gives a clone
        its own hostname and machine-id; ``tpm=True`` adds an emulated TPM 2.0 (swtpm)."""
        return self.create(os, memory_mib=memory_mib, cpus=cpus, user_data=user_data,
                           image=image, boot_timeout=boot_timeout, reset=reset, family=family,
                           seed=seed, unique=unique, tpm=tpm).start()

    def create(self, os: str | None = None, **kwargs: Any) -> Guest:
        """Like :meth:`boot` but returns the guest unstarted (call ``.start()``). With
        ``reset="clone"`` the golden guest is booted here, the first time it is needed."""
        return self.create_for(guest_request(os, **kwargs))

    def create_for(self, request: GuestRequest) -> Guest:
        """:meth:`create` for a checked request (what the ``guest`` marker gives)."""
        os_name = request.os or self.settings.default_os
        if request.image is None:
            self.images.check_name(os_name)
        config = self._config(os_name, request)
        tpm = config.family.tpm if config.tpm is None else config.tpm
        # libvirt keys a TPM's state by the domain's UUID, which clones share: cold boot those
        if (request.reset or self.settings.reset) == "clone" and not tpm:
            if request.unique and config.family.identity_command is None:
                raise SpecError(f"unique=True: warm clones of family {config.family.name} cannot "
                                f"get a new identity; use reset='boot'")
            golden = self._golden(config, request)
            if not golden.in_use:  # one clone per golden at a time; else a cold boot
                golden.in_use = True
                golden.clones += 1
                self.clones += 1
                config = replace(golden.guest.config,
                                 workdir=golden.guest.config.workdir / f"clone-{golden.clones}",
                                 limits=config.limits, unique=request.unique)
                return self._track(Guest(self.hypervisor, config, golden=golden))
        self.boots += 1
        return self._track(Guest(self.hypervisor, config))

    def _config(self, os_name: str, request) -> GuestConfig:
        base = self.images.resolve(os_name, request.image)
        fam = family(request.family or base.family)
        memory = request.memory_mib or max(self.settings.memory_mib, base.min_memory_mib or 0)
        accel = self.acceleration
        key_file = self._key_file()
        self._counter += 1
        name = f"{NAME_PREFIX}{self.run_id}-{self._counter}"
        return GuestConfig(
            name=name, os=os_name, image=base,
            memory_mib=memory, cpus=request.cpus or self.settings.cpus,
            virt_type=accel.virt_type,
            limits=self.settings.limits(accel.name, request.boot_timeout),
            command_timeout=self.settings.command_timeout,
            workdir=self.run_dir / name, login_key_file=key_file, login_key=self._login_key,
            user_data=request.user_data, family=fam, seed_format=request.seed, unique=request.unique,
            tpm=request.tpm,
            metadata={**self._owner, "created": str(int(time.time()))})

    def _golden(self, config: GuestConfig, request) -> Golden:
        key = golden_key(config.os, request.image, config.memory_mib, config.cpus, request.user_data,
                         config.family.name, config.seed_format, config.tpm)
        if key not in self._goldens:
            t0 = time.monotonic()
            self.progress(f"booting golden guest {config.name} ({config.os}) for warm clones")
            guest = Guest(self.hypervisor, config).start()
            self.boots += 1
            self._goldens[key] = guest.save_as_golden(config.workdir / "memory.save")
            self.progress(f"golden {config.name} ready in {time.monotonic() - t0:.1f} s")
        return self._goldens[key]

    def _track(self, guest: Guest) -> Guest:
        self.guests.append(guest)
        return guest

    def keep(self, guest: Guest) -> None:
        guest.keep()
        (self.run_dir / guest.name / KEPT_MARKER).write_text(guest.access() + "\n")
        self.kept.append(guest)

    # -- teardown ---------------------------------------------------------------------
    def close(self) -> list[BaseException]:
        """Destroy every guest not kept, remove the run's files, close libvirt.
        Every step runs even when one fails; the failures are returned."""
        errors: list[BaseException] = []
        for guest in self.guests:
            if guest.kept:
                continue
            try:
                guest.destroy()
            except Exception as exc:
                errors.append(exc)
        self.guests = [g for g in self.guests if g.kept]
        needed = {g.golden_name for g in self.kept if g.cloned}
        for golden in self._goldens.values():
            if golden.name in needed:  # a kept clone still reads its golden's disk
                continue
            try:
                golden.guest.destroy()
            except Exception as exc:
                errors.append(exc)
        self._goldens = {k: g for k, g in self._goldens.items() if g.name in needed}
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if not self.kept:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.run_dir)
        if self._hv is not None:
            self._hv.close()
            self._hv = None
        return errors
