"""Seed ISOs built in memory with pycdlib.

NoCloud (volume ``cidata``: ``user-data``, ``meta-data``, optional
``network-config`` and ``vendor-data``) is what the Linux guests read. The ISO
writer itself is generic over a tree of files, so other layouts (OpenStack
ConfigDrive, ``config-2``) reuse it.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import pycdlib

from .cache import write_owner_only

NOCLOUD_LABEL = "cidata"


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


def nocloud_files(user_data: bytes, meta_data: bytes, network_config: bytes | None = None,
                  vendor_data: bytes | None = None) -> dict[str, bytes]:
    files = {"user-data": user_data, "meta-data": meta_data}
    if network_config is not None:
        files["network-config"] = network_config
    if vendor_data is not None:
        files["vendor-data"] = vendor_data
    return files


def write_seed(path: Path, volume_label: str, files: Mapping[str, bytes]) -> Path:
    """Write the seed ISO readable by its owner only: it carries a private host key."""
    return write_owner_only(path, iso_bytes(volume_label, files))


def read_iso(data: bytes) -> dict[str, bytes]:
    """Read every file of an ISO back by its Rock Ridge name (for tests and debugging)."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    found: dict[str, bytes] = {}
    try:
        for dirpath, _dirs, filenames in iso.walk(rr_path="/"):
            for name in filenames:
                rr_path = f"{dirpath.rstrip('/')}/{name}"
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=rr_path)
                found[rr_path.lstrip("/")] = out.getvalue()
        found[".volume"] = iso.pvd.volume_identifier.rstrip(b" ")
    finally:
        iso.close()
    return found
