"""Seed ISOs built in memory with pycdlib.

Two layouts over one generic ISO writer (Joliet and Rock Ridge names):

- NoCloud (volume ``cidata``: ``user-data``, ``meta-data``): cloud-init, nuageinit.
- OpenStack ConfigDrive (volume ``config-2``: ``openstack/latest/`` with
  ``meta_data.json`` and ``user_data``): cloudbase-init, cloud-init, nuageinit.

No network file is written (every reader then does DHCP on the first NIC), and only
``openstack/latest``: ``docs/design/seeds.md`` says what each reader reads and why.
"""
from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycdlib

from ..files import write_owner_only
from .cloudinit import dump_yaml
from ..errors import SeedError

NOCLOUD_LABEL = "cidata"
CONFIGDRIVE_LABEL = "config-2"
CONFIGDRIVE_DIR = "openstack/latest"
LABELS = {"nocloud": NOCLOUD_LABEL, "configdrive": CONFIGDRIVE_LABEL}


def iso_bytes(volume_label: str, files: Mapping[str, bytes]) -> bytes:
    """An ISO 9660 image with Joliet and Rock Ridge holding *files* (``"dir/name": data``).

    ISO 9660 names are generated (8.3-safe); readers use the Rock Ridge or
    Joliet names, which are the real ones.
    """
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=volume_label)
    made_dirs: dict[str, str] = {"": ""}  # real dir path -> ISO 9660 dir path
    counter = 0
    for path in sorted(files):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            real = "/".join(parts[:depth])
            if real not in made_dirs:
                counter += 1
                iso_dir = f"{made_dirs['/'.join(parts[:depth - 1])]}/D{counter:05d}"
                iso.add_directory(iso_dir, rr_name=parts[depth - 1], joliet_path="/" + real)
                made_dirs[real] = iso_dir
        counter += 1
        data = files[path]
        parent = made_dirs["/".join(parts[:-1])]
        iso.add_fp(io.BytesIO(data), len(data), f"{parent}/F{counter:05d}.;1",
                   rr_name=parts[-1], joliet_path="/" + "/".join(parts))
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def configdrive_meta_data(instance_id: str, hostname: str,
                          public_keys: Mapping[str, str]) -> dict[str, Any]:
    """``meta_data.json`` as data. cloud-init requires ``uuid`` (its instance id) and takes
    ``hostname`` as the local hostname; cloudbase-init reads ``uuid``, ``hostname`` and
    ``public_keys`` (no ``admin_pass``: the user data script sets the password)."""
    return {
        "uuid": instance_id,
        "hostname": hostname,
        "name": hostname,
        "launch_index": 0,
        "availability_zone": "nova",
        "public_keys": dict(public_keys),
        "files": [],
        "meta": {},
    }


def _json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode()


@dataclass(frozen=True)
class Seed:
    """A seed's volume label and files, ready to be written as an ISO."""

    label: str
    files: Mapping[str, bytes]

    def iso(self) -> bytes:
        return iso_bytes(self.label, self.files)

    def write(self, path: Path) -> Path:
        return write_seed(path, self.label, self.files)


def build_seed(seed_format: str, *, instance_id: str, hostname: str, user_data: bytes,
               public_keys: Mapping[str, str] | None = None) -> Seed:
    """The seed of *seed_format* (a family's ``seed_format``: ``"nocloud"`` or
    ``"configdrive"``) from the same inputs for every family: *user_data* serialised
    already (``#cloud-config``, a script, MIME), *public_keys* (name: OpenSSH public key)
    for the metadata (``public-keys`` / ``public_keys``). Neither layout gets a network
    file: every consumer then does DHCP on the first NIC."""
    keys = dict(public_keys or {})
    if seed_format == "nocloud":
        meta: dict[str, Any] = {"instance-id": instance_id, "local-hostname": hostname}
        if keys:
            meta["public-keys"] = list(keys.values())
        return Seed(NOCLOUD_LABEL, {"user-data": user_data, "meta-data": dump_yaml(meta, "meta-data")})
    if seed_format == "configdrive":
        return Seed(CONFIGDRIVE_LABEL, {
            f"{CONFIGDRIVE_DIR}/meta_data.json": _json(configdrive_meta_data(instance_id, hostname, keys)),
            f"{CONFIGDRIVE_DIR}/user_data": user_data})
    raise SeedError(f"unknown seed format {seed_format!r}; known: {', '.join(LABELS)}")


def write_seed(path: Path, volume_label: str, files: Mapping[str, bytes]) -> Path:
    """Write the seed ISO readable by its owner only: it carries a private host key."""
    return write_owner_only(path, iso_bytes(volume_label, files))
