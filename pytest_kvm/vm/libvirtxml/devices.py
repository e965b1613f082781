"""The devices of a libvirt domain (``<devices>``) as objects: disks, serial consoles and
channels, controllers, the RNG, the TPM, virtiofs file systems. Any other device (an
``<input>``, libvirt's ``<emulator>``...) is an :class:`~.elements.OtherElement`, kept whole.
"""
from __future__ import annotations

from dataclasses import dataclass

from .elements import OtherElement, XmlElement, attr, child_attr, child_text, flag, raw_child


@dataclass
class Disk(XmlElement):
    """``<disk>``: an image file seen by the guest as a disk or a CD-ROM on *target_bus*."""

    tag = "disk"
    type: str | None = attr()  # "file"
    device: str | None = attr()  # "disk" (libvirt's default) or "cdrom"
    driver_name: str | None = child_attr("driver", "name")
    driver_type: str | None = child_attr("driver", "type")  # the image format: "qcow2", "raw"
    driver_discard: str | None = child_attr("driver", "discard")
    source_file: str | None = child_attr("source", "file")
    #: the image's backing files as libvirt found them (in saved XML); None: libvirt reads them
    backing_chain: OtherElement | None = raw_child("backingStore")
    target_dev: str | None = child_attr("target", "dev")  # "vda", "sdb"...
    target_bus: str | None = child_attr("target", "bus")  # "virtio", "sata"...
    readonly: bool = flag()

    @property
    def writable_disk(self) -> bool:
        """A disk the guest writes (not a CD-ROM, not read-only)."""
        return (self.device or "disk") == "disk" and not self.readonly


@dataclass
class CharDevice(XmlElement):
    """A character device: its host side (*type*: ``file``, ``pty``, ``unix``...) and
    the guest side it is wired to (its target)."""

    type: str | None = attr()
    source_path: str | None = child_attr("source", "path")
    source_append: str | None = child_attr("source", "append")  # "on": never truncate the file
    target_type: str | None = child_attr("target", "type")
    target_port: str | None = child_attr("target", "port")
    target_name: str | None = child_attr("target", "name")  # a channel's: "org.qemu.guest_agent.0"


@dataclass
class Serial(CharDevice):
    """``<serial>``: a serial port."""

    tag = "serial"


@dataclass
class Console(CharDevice):
    """``<console>``: libvirt's console, which it points at the first serial port."""

    tag = "console"


@dataclass
class Channel(CharDevice):
    """``<channel>``: a virtio-serial port with a name (the QEMU guest agent's)."""

    tag = "channel"


@dataclass
class Controller(XmlElement):
    """``<controller>``: a bus controller (``model="none"``: none of that bus)."""

    tag = "controller"
    type: str | None = attr()
    index: str | None = attr()
    model: str | None = attr()


@dataclass
class MemBalloon(XmlElement):
    """``<memballoon>``: the balloon device (``model="none"``: none)."""

    tag = "memballoon"
    model: str | None = attr()


@dataclass
class Rng(XmlElement):
    """``<rng>``: a random number generator fed from the host."""

    tag = "rng"
    model: str | None = attr()  # "virtio"
    backend_model: str | None = child_attr("backend", "model")  # "random"
    backend: str | None = child_text("backend")  # the host file: "/dev/urandom"


@dataclass
class Tpm(XmlElement):
    """``<tpm>``: a TPM, emulated by swtpm that libvirt starts."""

    tag = "tpm"
    model: str | None = attr()  # "tpm-crb"
    backend_type: str | None = child_attr("backend", "type")  # "emulator"
    backend_version: str | None = child_attr("backend", "version")  # "2.0"


@dataclass
class Filesystem(XmlElement):
    """``<filesystem>``: a host directory exported to the guest under a mount tag."""

    tag = "filesystem"
    type: str | None = attr()  # "mount"
    accessmode: str | None = attr()  # "passthrough"
    driver_type: str | None = child_attr("driver", "type")  # "virtiofs"
    driver_queue: str | None = child_attr("driver", "queue")
    source_dir: str | None = child_attr("source", "dir")
    target_dir: str | None = child_attr("target", "dir")  # the mount tag
    binary_path: str | None = child_attr("binary", "path")  # virtiofsd (None: libvirt's pick)


#: the device class of each ``<devices>`` child tag modelled here
DEVICE_TYPES: dict[str, type[XmlElement]] = {
    cls.tag: cls for cls in (Disk, Serial, Console, Channel, Controller, MemBalloon, Rng, Tpm,
                             Filesystem)}
