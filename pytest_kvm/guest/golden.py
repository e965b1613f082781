"""Warm clones: a golden guest is booted once, its memory state saved and its disk
frozen; each clone restores that state onto a fresh overlay in well under the time
of a boot.

A golden is a directory of files (the ``*_FILE`` names of :mod:`.workdir`): the saved state, the frozen
disk, the seed that stays attached, the golden's console, its UEFI variables, the
login key it trusts and ``meta.json``. A golden made on a remote host (``--kvm-host``)
keeps its saved state, disk and seed there, as volumes (:class:`HostFiles`), and only a
copy of the save image's head (``memory.head``) beside the rest here. It lives in the
run's work directory (goldens per session) or in the snapshot cache (see :mod:`pytest_kvm.session.snapshots`), where later
sessions find it. Clones only ever read it: each is restored under a name, UUID,
MAC and VM generation ID of its own (see :mod:`pytest_kvm.vm.saveimage`), so any number
of clones of one golden run at the same time.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..files import sha256_file, write_owner_only
from ..keys import KeyPair
from ..vm.saveimage import SaveImage
from ..transport.winrm import Credentials
from ..workdir import CONSOLE_FILE, DISK_FILE, HEAD_FILE, LOGIN_KEY_FILE, META_FILE, PASSWORD_FILE, \
    SAVE_FILE, SEED_FILE



def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value (keys sorted)."""
    blob = json.dumps(value, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HostFiles:
    """Where a golden made on a remote host keeps its big files: volumes of the plugin's
    pool there (see :mod:`pytest_kvm.hosts.volumes`), named *prefix* plus a suffix."""

    host: str  # Host.key of the host holding them
    prefix: str
    save: str  # host paths
    disk: str
    seed: str
    capacity: int  # the disk's virtual size (a clone's overlay gets the same)


@dataclass
class Golden:
    """A saved, stopped guest that clones are restored from."""

    key: str
    directory: Path
    image: SaveImage = field(repr=False)
    login_key: KeyPair = field(repr=False)
    host_public: str  # the guest's SSH host key, pinned for every clone
    hostname: str  # also its libvirt name when it booted (Guest.golden_name)
    credentials: Credentials | None = None  # WinRM families
    verified: bool = False  # a clone of it came up in this session
    generation: int = 0  # how many times it was made anew (see replace)
    # replace(error, generation): the first clone of a golden loaded from the cache failed:
    # the session makes it anew and refreshes this object in place, so that every clone
    # holding it (one made ahead too) uses the new files; a second caller with the same
    # generation finds it done (see KvmSession)
    replace: Callable[[BaseException, int], None] | None = field(default=None, repr=False)
    # what it was made from (os, family, memory_mib, cpus, ...: KvmSession._golden_fields)
    fields: dict[str, Any] = field(default_factory=dict, repr=False)
    host_files: HostFiles | None = None  # on a remote host; None: in the directory

    @property
    def files(self) -> tuple[str, ...]:
        """The names of the files in its directory that make it up."""
        if self.host_files is not None:
            return (HEAD_FILE,)
        return (SAVE_FILE, DISK_FILE, SEED_FILE)

    def refresh_from(self, other: "Golden") -> None:
        """Take *other*'s files and keys: this golden was made anew."""
        for name in ("directory", "image", "login_key", "host_public", "hostname", "credentials",
                     "fields", "host_files"):
            setattr(self, name, getattr(other, name))
        self.verified = False
        self.generation += 1

    @property
    def frozen_disk(self) -> Path:
        """Its disk, on the machine its clones run on."""
        return Path(self.host_files.disk) if self.host_files else self.directory / DISK_FILE

    @property
    def seed(self) -> Path:
        """Its seed, on the machine its clones run on."""
        return Path(self.host_files.seed) if self.host_files else self.directory / SEED_FILE

    @property
    def console_log(self) -> Path:
        return self.directory / CONSOLE_FILE

    @property
    def login_key_file(self) -> Path:
        return self.directory / LOGIN_KEY_FILE

    def write_meta(self, fields: Mapping[str, Any], created: float) -> None:
        """Record what the golden is (written last: it marks the directory complete)."""
        self.fields = dict(fields)
        self.login_key.write_private(self.login_key_file)
        if self.credentials is not None:
            write_owner_only(self.directory / PASSWORD_FILE, self.credentials.password.encode())
        meta = {"key": self.key, "hostname": self.hostname, "host_public": self.host_public,
                "login_public": self.login_key.public_openssh, "created": created,
                "user": self.credentials.user if self.credentials else None,
                "fields": dict(fields),
                "sizes": {name: (self.directory / name).stat().st_size for name in self.files},
                **_fingerprints(self.directory, (*self.files, LOGIN_KEY_FILE)),
                "host_files": asdict(self.host_files) if self.host_files else None,
                "save_size": self.image.size}
        write_owner_only(self.directory / META_FILE, json.dumps(meta, indent=2).encode())

    @classmethod
    def load(cls, directory: Path) -> "Golden":
        """A golden from its directory; ValueError/OSError if it is incomplete or damaged."""
        meta = json.loads((directory / META_FILE).read_text())
        for name, size in meta["sizes"].items():
            found = (directory / name).stat().st_size
            if found != size:
                raise ValueError(f"{name} is {found} bytes, {size} when saved")
        _verify(directory, meta)
        login = KeyPair((directory / LOGIN_KEY_FILE).read_text(), meta["login_public"])
        credentials = None
        if meta.get("user"):
            credentials = Credentials(meta["user"], (directory / PASSWORD_FILE).read_text())
        host_files = HostFiles(**meta["host_files"]) if meta.get("host_files") else None
        if host_files is None:
            image = SaveImage.read(directory / SAVE_FILE)
        else:  # the head kept here; the whole image is on the host
            image = SaveImage.parse((directory / HEAD_FILE).read_bytes(), host_files.save,
                                    meta["save_size"])
        return cls(key=meta["key"], directory=directory, image=image,
                   login_key=login, host_public=meta["host_public"], hostname=meta["hostname"],
                   credentials=credentials, fields=meta.get("fields", {}), host_files=host_files)


def _stamp(st) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def _fingerprints(directory: Path, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The sha256 of each file (hashing a 230 MB save takes ~0.15 s, when the golden is
    made) and its size, mtime, inode and device (a stat: microseconds, at every load)."""
    return {"sha256": {name: sha256_file(directory / name) for name in names},
            "stamps": {name: _stamp((directory / name).stat()) for name in names}}


def _verify(directory: Path, meta: Mapping[str, Any]) -> None:
    """ValueError unless each file recorded is the one saved: the same size, mtime, inode
    and device (only this user can write the snapshot cache: see SnapshotStore), else the
    same sha256 (a cache copied or restored elsewhere is hashed once per session)."""
    stamps = meta.get("stamps", {})
    for name, expected in meta.get("sha256", {}).items():
        path = directory / name
        if _stamp(path.stat()) == stamps.get(name):
            continue
        if sha256_file(path) != expected:
            raise ValueError(f"{name} changed since it was saved (its sha256 differs)")
