"""libvirt storage XML as objects: a directory :class:`StoragePool` and its
:class:`StorageVolume` (owner-only files, optionally copy-on-write over a backing file)."""
from __future__ import annotations

from dataclasses import dataclass

from .elements import XmlElement, attr, child, child_attr, child_text


@dataclass
class Permissions(XmlElement):
    """``<permissions>``: the file mode libvirt gives what it creates (``0600``)."""

    tag = "permissions"
    mode: str | None = child_text()


@dataclass
class PoolTarget(XmlElement):
    """``<target>`` of a pool: its directory on the host."""

    tag = "target"
    path: str | None = child_text()
    permissions: Permissions | None = child(Permissions)


@dataclass
class StoragePool(XmlElement):
    """``<pool>``: a storage pool (``type="dir"``: a directory of files)."""

    tag = "pool"
    type: str | None = attr()
    name: str | None = child_text()
    target: PoolTarget | None = child(PoolTarget)


@dataclass
class VolumeTarget(XmlElement):
    """``<target>`` of a volume: its format (``qcow2``, ``raw``) and file mode."""

    tag = "target"
    format: str | None = child_attr("format", "type")
    compat: str | None = child_text()  # qcow2's version: "1.1"
    permissions: Permissions | None = child(Permissions)


@dataclass
class BackingStore(XmlElement):
    """``<backingStore>`` of a volume: the file it is a copy-on-write layer over."""

    tag = "backingStore"
    path: str | None = child_text()
    format: str | None = child_attr("format", "type")


@dataclass
class StorageVolume(XmlElement):
    """``<volume>``: a file in a pool, *capacity* bytes as the guest sees it."""

    tag = "volume"
    name: str | None = child_text()
    capacity: int | None = child_text(type=int)
    capacity_unit: str | None = child_attr("capacity", "unit")
    target: VolumeTarget | None = child(VolumeTarget)
    backing: BackingStore | None = child(BackingStore)


def pool_xml(name: str, path: str) -> str:
    """A directory storage pool, as libvirt's XML."""
    return StoragePool(type="dir", name=name,
                       target=PoolTarget(path=path, permissions=Permissions(mode="0711"))).to_xml()


def volume_xml(name: str, *, capacity: int, format: str, backing: str | None = None,
               backing_format: str | None = None) -> str:
    """A storage volume (owner-only), optionally a copy-on-write one over *backing*."""
    return StorageVolume(
        name=name, capacity=capacity, capacity_unit="bytes",
        target=VolumeTarget(format=format,
                            # libvirt's default is the old 0.10
                            compat="1.1" if format == "qcow2" else None,
                            permissions=Permissions(mode="0600")),
        backing=None if backing is None else BackingStore(path=backing,
                                                          format=backing_format or "qcow2"),
    ).to_xml()
