"""libvirt domain XML, built as a tree of data (no libvirt import; testable alone).

Networking is QEMU user-mode (slirp) with one host forward bound to 127.0.0.1.
libvirt 9.0 cannot express that forward for slirp, so the NIC is passed through
``<qemu:commandline>`` with a fixed PCI address that no libvirt-managed device uses.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
META_NS = "https://github.com/pytest-kvm/pytest-kvm/run/1"
ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("pytestkvm", META_NS)

NAME_PREFIX = "pytest-kvm-"
NIC_PCI_SLOT = "0x1e"


@dataclass(frozen=True)
class DomainSpec:
    name: str
    virt_type: str  # "kvm" or "qemu" (TCG)
    memory_mib: int
    cpus: int
    disk: Path
    disk_format: str
    seed: Path
    console_log: Path
    ssh_port: int
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    guest_port: int = 22
    metadata: dict[str, str] = field(default_factory=dict)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrib.items()})
    if text is not None:
        element.text = text
    return element


def _disk(devices: ET.Element, path: Path, fmt: str, target: str, *, readonly: bool = False) -> None:
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=fmt, discard="unmap")
    _sub(disk, "source", file=str(path))
    _sub(disk, "target", dev=target, bus="virtio")
    if readonly:
        _sub(disk, "readonly")


def domain_element(spec: DomainSpec) -> ET.Element:
    dom = ET.Element("domain", type=spec.virt_type)
    _sub(dom, "name", spec.name)
    if spec.metadata:
        meta = _sub(dom, "metadata")
        ET.SubElement(meta, f"{{{META_NS}}}run", dict(spec.metadata))
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.cpus))

    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    if spec.kernel is not None:
        _sub(os_el, "kernel", str(spec.kernel))
        if spec.initrd is not None:
            _sub(os_el, "initrd", str(spec.initrd))
        _sub(os_el, "cmdline", spec.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    if spec.virt_type == "kvm":
        _sub(dom, "cpu", mode="host-passthrough")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    _disk(devices, spec.disk, spec.disk_format, "vda")
    _disk(devices, spec.seed, "raw", "vdb", readonly=True)
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(spec.console_log), append="on")
    _sub(serial, "target", port="0")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")

    cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
    for arg in ("-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:{spec.guest_port}",
                "-device", f"virtio-net-pci,netdev=net0,addr={NIC_PCI_SLOT}"):
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    return dom


def domain_xml(spec: DomainSpec) -> str:
    return ET.tostring(domain_element(spec), encoding="unicode")


def read_metadata(xml: str) -> dict[str, str] | None:
    """The pytest-kvm run metadata of a domain's XML, or None if it is not ours."""
    root = ET.fromstring(xml)
    run = root.find(f"./metadata/{{{META_NS}}}run")
    return dict(run.attrib) if run is not None else None


def retarget(xml: str, *, disk: Path, console_log: Path, ssh_port: int, guest_port: int = 22) -> str:
    """A saved domain's XML with its system disk, console file and host forward moved, for
    restoring a clone of it (name, UUID and devices stay as saved: libvirt requires it)."""
    root = ET.fromstring(xml)
    for element in root.iter("disk"):
        target = element.find("target")
        if target is not None and target.get("dev") == "vda":
            element.find("source").set("file", str(disk))
            # the saved chain named the golden overlay; libvirt re-reads the new one's chain
            for backing in element.findall("backingStore"):
                element.remove(backing)
    for serial in root.iter("serial"):
        source = serial.find("source")
        if source is not None and serial.get("type") == "file":
            source.set("path", str(console_log))
    for console in root.iter("console"):
        source = console.find("source")
        if source is not None and console.get("type") == "file":
            source.set("path", str(console_log))
    for arg in root.iter(f"{{{QEMU_NS}}}arg"):
        value = arg.get("value", "")
        if value.startswith("user,") and "hostfwd=" in value:
            arg.set("value", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:{guest_port}")
    return ET.tostring(root, encoding="unicode")
