"""libvirt's QEMU namespace: ``<qemu:commandline>`` (arguments libvirt passes to QEMU as
they are), and the user-mode NIC pytest-kvm passes through it.

libvirt 9.0 cannot bind a user-mode (slirp) host forward to 127.0.0.1, so that NIC is two
QEMU options, ``-netdev user,...`` and ``-device MODEL,netdev=...``: :class:`UserNic` makes
and reads them, found by their ``id``/``netdev`` wherever they are among the arguments.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .elements import XmlElement, each_attr

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)
_HOSTFWD = re.compile(r"tcp:(?P<address>[^:]*):(?P<host>\d+)-:(?P<guest>\d+)")


def _options(value: str) -> tuple[str, dict[str, str]]:
    """A QEMU option string ``head,key=value,...`` split (values here have no commas)."""
    head, *pairs = value.split(",")
    return head, dict(pair.partition("=")[::2] for pair in pairs)


def address_property(model: str) -> str:
    """The property of QEMU's device *model* that places it on its bus: a channel I/O
    (``-ccw``) device's number, else a PCI device's slot."""
    return "devno" if model.endswith("-ccw") else "addr"


@dataclass(frozen=True)
class UserNic:
    """A user-mode NIC of QEMU *model* at *slot* (its PCI slot on the root bus, or a
    channel I/O device's number: see :func:`address_property`), with one TCP forward
    from ``address:host_port`` on the host to *guest_port*; *restrict*: slirp's
    ``restrict=on`` (nothing beyond the guest but that forward). *mac*: None is QEMU's."""

    model: str
    host_port: int
    guest_port: int
    slot: str
    mac: str | None = None
    restrict: bool = False
    address: str = "127.0.0.1"
    netdev_id: str = "net0"

    def netdev(self) -> str:
        restrict = ",restrict=on" if self.restrict else ""
        return (f"user,id={self.netdev_id}{restrict},"
                f"hostfwd=tcp:{self.address}:{self.host_port}-:{self.guest_port}")

    def device(self) -> str:
        return (f"{self.model},netdev={self.netdev_id},"
                f"{address_property(self.model)}={self.slot}") + (f",mac={self.mac}" if self.mac else "")

    def args(self) -> list[str]:
        return ["-netdev", self.netdev(), "-device", self.device()]

    @classmethod
    def find(cls, args: list[str]) -> tuple[UserNic, int, int] | None:
        """The user-mode NIC among QEMU *args*, with the indexes of its ``-netdev`` and
        ``-device`` values; None if there is none (or not one this class wrote)."""
        pairs = list(zip(args, args[1:]))
        for netdev_at, (option, value) in enumerate(pairs):
            head, netdev = _options(value)
            forward = _HOSTFWD.fullmatch(netdev.get("hostfwd", ""))
            if option != "-netdev" or head != "user" or "id" not in netdev or forward is None:
                continue
            for device_at, (option, value) in enumerate(pairs):
                model, device = _options(value)
                slot = device.get(address_property(model))
                if option == "-device" and device.get("netdev") == netdev["id"] and slot:
                    nic = cls(model=model, host_port=int(forward["host"]),
                              guest_port=int(forward["guest"]), slot=slot,
                              mac=device.get("mac"), restrict=netdev.get("restrict") == "on",
                              address=forward["address"], netdev_id=netdev["id"])
                    return nic, netdev_at + 1, device_at + 1
        return None


@dataclass
class QemuCommandline(XmlElement):
    """``<qemu:commandline>``: QEMU arguments, in order (``<qemu:env>`` and the like are
    kept as they are)."""

    tag = f"{{{QEMU_NS}}}commandline"
    args: list[str] = each_attr(f"{{{QEMU_NS}}}arg", "value")

    @property
    def user_nic(self) -> UserNic | None:
        found = UserNic.find(self.args)
        return found[0] if found else None

    @user_nic.setter
    def user_nic(self, nic: UserNic) -> None:
        """Replace the user-mode NIC's two values where they are (else add its arguments)."""
        found = UserNic.find(self.args)
        if found is None:
            self.args += nic.args()
        else:
            _old, netdev_at, device_at = found
            self.args[netdev_at], self.args[device_at] = nic.netdev(), nic.device()
