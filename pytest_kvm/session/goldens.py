"""Goldens: the guests warm clones are restored from. The plugin's own are booted once per
kind of guest (its key hashes everything that can make a saved state wrong); a user's are
made by ``guest.freeze()`` or ``kvm.golden(key, prepare)`` on top of one. With snapshots
on they are kept in the snapshot cache (:mod:`.snapshots`) across runs."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import sha256_file
from ..guest.golden import Golden, digest
from ..keys import KeyPair
from ..spec import SpecError

if TYPE_CHECKING:
    from ..config import Settings
    from ..guest.config import GuestConfig
    from ..guest.facade import Guest
    from ..hosts.base import Host
    from ..spec import GuestRequest
    from .snapshots import SnapshotStore


class Goldens:
    """The session's goldens, by key.

    *boot*: an unstarted guest for a config, counted as a cold boot (the session's);
    *clone*: a started warm clone for a request (the session's ``create_for``);
    *config*: a request's config for an OS name."""

    def __init__(self, settings: "Settings", host: "Host", snapshots: "SnapshotStore",
                 run_dir: Path, progress: Callable[[str], None], *,
                 boot: Callable[["GuestConfig"], "Guest"],
                 clone: Callable[["GuestRequest"], "Guest"],
                 config: Callable[[str, Any], "GuestConfig"],
                 next_name: Callable[[], str]) -> None:
        self.settings = settings
        self.host = host
        self.snapshots = snapshots
        self.run_dir = run_dir
        self.progress = progress
        self._boot, self._clone, self._config, self._next_name = boot, clone, config, next_name
        self._goldens: dict[str, Golden] = {}  # by key
        self.guests: list[Guest] = []  # golden guests of this session only (snapshots off)
        self._digests: dict[tuple, str] = {}  # local image (path, size, mtime, inode) -> sha256
        self._fields: dict[str, dict[str, Any]] = {}  # kind of guest -> its golden's key fields
        self._remake_lock = threading.Lock()

    # -- the plugin's goldens ------------------------------------------------------------------
    def for_config(self, config: "GuestConfig") -> Golden:
        """The golden clones of *config* are restored from, booted the first time."""
        # the full key builds a seed and hashes firmware: once per kind of guest and session
        kind = digest([config.os, str(config.image.disk), config.memory_mib, config.cpus,
                       config.user_data, config.family.name, config.seed_format, config.tpm,
                       config.tb_cache_mib])
        if kind not in self._fields:
            self._fields[kind] = self.fields(config)
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

    def _boot_golden(self, config: "GuestConfig", key: str, directory: Path,
                     fields: Mapping[str, Any]) -> Golden:
        """Boot a guest cold in *directory* and save it there as a golden."""
        t0 = time.monotonic()
        snapshot = self.settings.snapshots == "on"
        where = "snapshot" if snapshot else "golden guest"
        self.progress(f"booting {where} {key} ({config.os}) for warm clones")
        guest = self._boot(replace(config, name=self._next_name(), workdir=directory, shares=(),
                                   artifacts=(), networks=(), network_name=None,
                                   volume_prefix=(self.host.snapshot_volume_prefix(directory.name)
                                                  if snapshot else None)))
        self.guests.append(guest)
        try:
            guest.start()
            golden = guest.save_as_golden(key)
            golden.write_meta(fields, time.time())
        except BaseException as exc:
            self._discard_golden_guest(guest, exc)
            raise
        if snapshot:  # the cache keeps its files; nothing is running
            self.guests.remove(guest)
        self.progress(f"{where} {key} ready in {time.monotonic() - t0:.1f} s")
        return golden

    def _discard_golden_guest(self, guest: "Guest", exc: BaseException) -> None:
        """A golden guest that did not start or save is no golden: destroy it now, before
        the snapshot store removes its directory under a QEMU that may still run. If that
        fails too, a note on *exc* says so."""
        self.guests.remove(guest)
        try:
            guest.destroy()
        except Exception as err:  # noqa: BLE001 - reported on the error being raised
            exc.add_note(f"pytest-kvm: destroying the unsaved golden guest {guest.name} "
                         f"failed too: {err}")

    def _remake_snapshot(self, config: "GuestConfig", key: str, fields: Mapping[str, Any],
                         exc: BaseException, generation: int) -> None:
        """The first clone of a cached snapshot failed: boot cold and save it again (beside
        the old one if other sessions use that), and refresh the golden in place (once, if
        two clones failed on the same files)."""
        golden = self._goldens[key]
        with self._remake_lock:
            if golden.generation != generation:  # another clone already had it made anew
                return
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            golden.refresh_from(self.snapshots.replace(
                key, golden.directory,
                lambda directory: self._boot_golden(config, key, directory, fields),
                why=f"its clone did not come up ({first_line}); booting cold", what=config.os))

    def fields(self, config: "GuestConfig") -> dict[str, Any]:
        """Everything that can make a saved state wrong for *config*: the snapshot key hashes
        it, ``pytest-kvm snapshot list`` shows it."""
        from ..guest.config import domain_spec  # noqa: PLC0415
        from ..guest.cold import seed_for  # noqa: PLC0415
        from ..vm.domain import domain_xml, firmware_digest  # noqa: PLC0415
        fam = config.family
        # not the network mode: it is a netdev option outside the saved state, and each clone
        # gets its own through retarget (a golden booted in either mode serves both)
        template = replace(config, name="golden", workdir=Path("/golden"), metadata={},
                           network_mode="user")
        dummy = KeyPair("private", "ssh-ed25519 AAAA pytest-kvm")
        seed_files = seed_for(config, "golden", login_key=dummy, host_key=dummy,
                              password="password" if fam.transport == "winrm" else None).files
        spec = domain_spec(template, 0)
        return {
            "os": config.os, "arch": config.arch.debian, "family": fam.name,
            "accel": config.virt_type,
            "memory_mib": config.memory_mib, "cpus": config.cpus,
            "machine": config.machine_type or fam.machine,
            "cpu": spec.cpu_model if config.virt_type != "kvm" else self.host.cpu_model(),
            "base": self._image_digest(config.image),
            "domain": digest(domain_xml(spec)),
            "seed": digest({name: data.hex() for name, data in sorted(seed_files.items())}),
            "user_data": digest(config.user_data) if config.user_data else None,
            **self.host.versions(),
            "firmware": firmware_digest(spec),
            **self.host.golden_fields(),
        }

    def _image_digest(self, image) -> str:
        if image.digest:
            return image.digest
        stat = image.disk.stat()
        memo = (str(image.disk), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if memo not in self._digests:
            self._digests[memo] = sha256_file(image.disk)
        return self._digests[memo]

    # -- user goldens ----------------------------------------------------------------------------
    def user_request(self, request: "GuestRequest") -> "GuestRequest":
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

    def made_by(self, key: str, prepare: Callable[["Guest"], Any], request: "GuestRequest") -> Golden:
        """``kvm.golden(key, prepare, ...)``: see :meth:`KvmSession.golden`."""
        parent = self.for_config(self._config(self.settings.os_for(request.os, request.arch),
                                              request))
        user_key = _user_key(parent.key, key)
        if user_key in self._goldens:
            return self._goldens[user_key]

        def make(directory: Path) -> Golden:
            with self._clone(request) as guest:
                guest.start()
                prepare(guest)
                return self._save_user_golden(guest, user_key, directory, parent.fields, key)

        return self._keep_user_golden(user_key, make, key)

    def freeze(self, guest: "Guest", key: str) -> Golden:
        """``guest.freeze(key)``: the guest becomes a golden (or, if this parent and key were
        frozen before and kept as a snapshot, that one is used and the guest removed)."""
        if guest.golden is not None:
            parent_key, parent_fields = guest.golden.key, guest.golden.fields
        else:
            parent_fields = self.fields(guest.config)
            parent_key = digest(parent_fields)
        user_key = _user_key(parent_key, key)
        if user_key not in self._goldens:
            self._keep_user_golden(user_key, lambda directory: self._save_user_golden(
                guest, user_key, directory, parent_fields, key), key)
        guest.destroy()  # saved and moved (or not needed): nothing of it is left running
        return self._goldens[user_key]

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

    def _save_user_golden(self, guest: "Guest", user_key: str, directory: Path,
                          parent_fields: Mapping[str, Any], key: str) -> Golden:
        snapshot = self.settings.snapshots == "on"  # its volumes on a host outlive the run
        golden = guest.freeze_into(user_key, directory, self.host.snapshot_volume_prefix(
            directory.name) if snapshot else None)
        golden.write_meta({**parent_fields, "user_key": key}, time.time())
        self.progress(f"user golden {user_key} saved ({key})")
        return golden

    # -- the end ------------------------------------------------------------------------------------
    def forget(self, needed: set[str]) -> None:
        """Drop the goldens; keep only the golden guests named in *needed* (kept clones read
        their disks)."""
        self.guests = [g for g in self.guests if g.name in needed]
        self._goldens = {}


def _user_key(parent_key: str, key: str) -> str:
    return digest(["user golden", parent_key, key])
