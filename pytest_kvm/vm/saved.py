"""What a saved golden's domain may hold: a clone's domain is the saved one retargeted
(QEMU's migration stream expects the same devices), so a saved XML from the snapshot cache
becomes a QEMU command line run by this user. Before that, :func:`refuse_foreign` checks
that it has only what pytest-kvm's own domains have (see :func:`.domain.build_domain`) plus
what libvirt adds to every domain: nothing that runs another program, reads or writes other
host files through a device, or passes QEMU more arguments than the one user-mode NIC.
A check of the parsed objects: microseconds, once per clone."""
from __future__ import annotations

import re
from pathlib import PurePosixPath

from .libvirtxml.devices import Channel, CharDevice, Disk, Rng
from .libvirtxml.domain import Domain
from .libvirtxml.elements import OtherElement
from .libvirtxml.qemu import UserNic

#: device tags of build_domain's domains, and those libvirt adds (``<emulator>``, ``<input>``
#: mouse and keyboard, controllers for the buses it uses, pseries' ``<panic>``)
DEVICE_TAGS = frozenset({"emulator", "disk", "controller", "serial", "console", "channel", "input",
                         "memballoon", "rng", "tpm", "panic"})
_EMULATOR = re.compile(r"qemu-system-[a-z0-9_]+|qemu-kvm")
_CHAR_TYPES = {"serial": {"file", "pty"}, "console": {"file", "pty"}, "channel": {"unix"}}
_DOMAIN_EXTRAS = frozenset({"currentMemory", "resource", "seclabel"})  # what libvirt adds


class ForeignDomain(ValueError):
    """A saved domain with something pytest-kvm did not put there."""


def refuse_foreign(domain: Domain) -> None:
    """:class:`ForeignDomain` naming the first thing in a saved golden's *domain* that
    pytest-kvm's domains do not have."""
    for device in domain.devices:
        if device.tag not in DEVICE_TAGS:
            raise ForeignDomain(f"a <{device.tag}> device")
        if isinstance(device, OtherElement) and device.tag == "emulator":
            name = PurePosixPath((device.element.text or "").strip()).name
            if not _EMULATOR.fullmatch(name):
                raise ForeignDomain(f"the emulator {device.element.text!r}, not QEMU")
        if isinstance(device, Disk) and (device.type != "file" or device.device not in ("disk", "cdrom")):
            raise ForeignDomain(f"a disk of type {device.type!r} ({device.device!r})")
        if isinstance(device, CharDevice) and device.type not in _CHAR_TYPES[device.tag]:
            raise ForeignDomain(f"a <{device.tag} type={device.type!r}>")
        if isinstance(device, Channel) and device.unknown.parts.get("source"):
            raise ForeignDomain("a guest agent channel with a host path of its own")
        if isinstance(device, Rng) and device.backend != "/dev/urandom":
            raise ForeignDomain(f"a random number source {device.backend!r}")
    extras = {child.tag for child in domain.unknown.children} - _DOMAIN_EXTRAS
    if extras:
        raise ForeignDomain(f"elements {sorted(extras)}")
    commandline = domain.commandline
    if commandline is not None:
        found = UserNic.find(commandline.args)
        if found is None or sorted(_pairs(commandline.args)) != sorted(_pairs(found[0].args())) \
                or commandline.unknown:
            raise ForeignDomain(f"QEMU arguments {commandline.args!r} beyond the plugin's NIC")


def _pairs(args: list[str]) -> list[tuple[str, ...]]:
    """QEMU arguments as (option, value) pairs, in any order; an odd one out alone."""
    return [tuple(args[i:i + 2]) for i in range(0, len(args), 2)]
