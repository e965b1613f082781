"""A libvirt domain (``<domain>``) as objects: :class:`Domain` holds its identity, memory,
CPUs, boot (:class:`Os`), :class:`Features`, :class:`Cpu`, :class:`Clock`, the list of
its devices (see :mod:`.devices`), pytest-kvm's :class:`Metadata` and the QEMU
arguments passed through (:class:`~.qemu.QemuCommandline`).

``Domain.from_xml(xml)`` reads any domain XML, a saved one with everything libvirt added
included; ``to_xml()`` writes it back with what was changed (see :mod:`.elements`).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TypeVar

from .devices import DEVICE_TYPES
from .elements import (OtherElement, XmlElement, attr, child, child_attr, child_attrs, child_text,
                       children, flag, group)
from .qemu import QemuCommandline

META_NS = "https://github.com/pytest-kvm/pytest-kvm/run/1"
ET.register_namespace("pytestkvm", META_NS)
D = TypeVar("D", bound=XmlElement)


@dataclass
class Metadata(XmlElement):
    """``<metadata>``: *run* is pytest-kvm's ``<pytestkvm:run>`` element's attributes, the
    owner of the guest the reaper reads (other applications' elements are kept)."""

    tag = "metadata"
    run: dict[str, str] | None = child_attrs(f"{{{META_NS}}}run")


def run_metadata(element: str) -> dict[str, str]:
    """The pytest-kvm run metadata from its ``<run>`` element (what libvirt's
    ``virDomainGetMetadata`` returns for :data:`META_NS`)."""
    return dict(ET.fromstring(element).attrib)


@dataclass
class MemoryBacking(XmlElement):
    """``<memoryBacking>``: where the guest's RAM comes from (``memfd``) and whether other
    processes may map it (``shared``)."""

    tag = "memoryBacking"
    source_type: str | None = child_attr("source", "type")
    access_mode: str | None = child_attr("access", "mode")


@dataclass
class Boot(XmlElement):
    """``<boot dev="hd"/>``: one device to boot from, in the order of the list."""

    tag = "boot"
    dev: str | None = attr()


@dataclass
class Os(XmlElement):
    """``<os>``: machine type, firmware (a UEFI loader with its variable store) and what
    boots: a kernel directly, else the devices of *boot*."""

    tag = "os"
    type: str | None = child_text()  # "hvm"
    arch: str | None = child_attr("type", "arch")
    machine: str | None = child_attr("type", "machine")  # "pc", "q35", "pc-i440fx-7.2"...
    loader: str | None = child_text()  # the UEFI code file
    loader_readonly: str | None = child_attr("loader", "readonly")
    loader_type: str | None = child_attr("loader", "type")
    loader_secure: str | None = child_attr("loader", "secure")
    nvram: str | None = child_text()  # the guest's own UEFI variable store
    nvram_template: str | None = child_attr("nvram", "template")
    kernel: str | None = child_text()
    initrd: str | None = child_text()
    cmdline: str | None = child_text()
    boot: list[Boot] = children(Boot)


@dataclass
class Tcg(XmlElement):
    """``<tcg>`` (libvirt >= 8.0): TCG's translation cache size, *tb_cache* in
    *tb_cache_unit* (QEMU's ``-accel tcg,tb-size=``; libvirt writes it back in KiB)."""

    tag = "tcg"
    tb_cache: int | None = child_text("tb-cache", type=int)
    tb_cache_unit: str | None = child_attr("tb-cache", "unit")


@dataclass
class Features(XmlElement):
    """``<features>``: ACPI, SMM (which OVMF's Secure Boot build needs), and TCG's
    translation cache size (:class:`Tcg`)."""

    tag = "features"
    acpi: bool = flag()
    smm: str | None = child_attr("smm", "state")  # "on"
    tcg: Tcg | None = child(Tcg)


@dataclass
class Cpu(XmlElement):
    """``<cpu>``: the host's (``mode="host-passthrough"``) or a named *model*."""

    tag = "cpu"
    mode: str | None = attr()
    match: str | None = attr()
    check: str | None = attr()
    model: str | None = child_text()
    model_fallback: str | None = child_attr("model", "fallback")


@dataclass
class Clock(XmlElement):
    """``<clock>``: what the guest's clock starts from (``offset="utc"``)."""

    tag = "clock"
    offset: str | None = attr()


@dataclass
class Domain(XmlElement):
    """``<domain>``, in the order libvirt writes its elements."""

    tag = "domain"
    virt_type: str | None = attr("type")  # "kvm", "qemu" (TCG)
    name: str | None = child_text()
    uuid: str | None = child_text()
    #: the VM generation ID; ``""``: an empty element, libvirt picks one
    genid: str | None = child_text()
    metadata: Metadata | None = child(Metadata)
    memory: int | None = child_text(type=int)
    memory_unit: str | None = child_attr("memory", "unit")
    memory_backing: MemoryBacking | None = child(MemoryBacking)
    vcpus: int | None = child_text("vcpu", type=int)
    os: Os | None = child(Os)
    features: Features | None = child(Features)
    cpu: Cpu | None = child(Cpu)
    clock: Clock | None = child(Clock)
    on_poweroff: str | None = child_text()
    on_reboot: str | None = child_text()
    on_crash: str | None = child_text()
    devices: list[XmlElement] = group("devices", DEVICE_TYPES, OtherElement)
    commandline: QemuCommandline | None = child(QemuCommandline)

    def devices_of(self, cls: type[D]) -> list[D]:
        """The devices of class *cls* (e.g. every :class:`~.devices.Disk`), in order."""
        return [device for device in self.devices if isinstance(device, cls)]
