"""libvirt domain XML, built as a tree of data (no libvirt import; testable alone).

Networking is QEMU user-mode (slirp) with one host forward bound to 127.0.0.1.
libvirt 9.0 cannot express that forward for slirp, so the NIC is passed through
``<qemu:commandline>`` with a fixed PCI address that no libvirt-managed device uses
(slot 0x1e of the root bus: free on ``pc``; on ``q35`` libvirt only puts a
dmi-to-pci-bridge there, which these domains never need).

Firmware is SeaBIOS or OVMF from Debian's ``ovmf`` package. Debian's firmware
descriptors (``/usr/share/qemu/firmware/*.json``) say ``OVMF_CODE_4M.fd`` works on
both ``pc`` and ``q35``, and ``OVMF_CODE_4M.secboot.fd`` needs ``q35`` with SMM:
so Secure Boot implies ``q35``. Each guest gets its own NVRAM, which libvirt
copies from the ``OVMF_VARS_4M`` template when the file does not exist yet.
"""
from __future__ import annotations

import hashlib
import secrets
import shutil
import uuid as uuid_module
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..choices import NETWORK_MODES

if TYPE_CHECKING:  # pragma: no cover
    from ..families import Family

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
META_NS = "https://github.com/pytest-kvm/pytest-kvm/run/1"
ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("pytestkvm", META_NS)

NAME_PREFIX = "pytest-kvm-"
TCG_CPU_MODEL = "qemu64"  # QEMU's own default under TCG, named
NIC_PCI_SLOT = "0x1e"
OVMF_DIR = Path("/usr/share/OVMF")  # Debian's ovmf package
OVMF_CODE = "OVMF_CODE_4M.fd"
OVMF_VARS = "OVMF_VARS_4M.fd"
OVMF_CODE_SECBOOT = "OVMF_CODE_4M.secboot.fd"
OVMF_VARS_MS = "OVMF_VARS_4M.ms.fd"  # Microsoft's keys enrolled: what Windows Secure Boot needs
SWTPM = "swtpm"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
NVRAM_FILE = "OVMF_VARS.fd"  # the per-guest copy, in the guest's work directory
_DEV_PREFIX = {"virtio": "vd", "sata": "sd"}


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
    ssh_port: int  # the host end of the forward, whatever the transport
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    guest_port: int = 22
    metadata: dict[str, str] = field(default_factory=dict)
    machine: str = "pc"  # "pc" (i440fx) or "q35"
    machine_type: str | None = None  # the versioned type QEMU means by `machine` (pinned)
    firmware: str = "bios"  # "bios" (SeaBIOS) or "uefi" (OVMF)
    secure_boot: bool = False  # uefi + q35 only
    nvram: Path | None = None  # this guest's UEFI variable store; required with uefi
    ovmf_dir: Path = OVMF_DIR
    tpm: bool = False  # a TPM 2.0 (CRB) backed by swtpm, which libvirt starts
    disk_bus: str = "virtio"  # "virtio" or "sata"
    nic_model: str = "virtio-net-pci"  # a QEMU -device name: "virtio-net-pci", "e1000", "e1000e"
    seed_device: str = "disk"  # "disk" (on disk_bus) or "cdrom" (always SATA)
    mac: str | None = None  # the NIC's MAC; None: QEMU's default
    shared_memory: bool = False  # memfd RAM shared with helper processes (virtiofsd: shares)
    network_mode: str = "user"  # one of NETWORK_MODES
    #: "file": QEMU appends the serial console to ``console_log``; "pty": it is read through
    #: libvirt's console stream (a remote host: see pytest_kvm.hosts.placement)
    console: str = "file"

    def __post_init__(self) -> None:
        checks = (("machine", ("pc", "q35")), ("firmware", ("bios", "uefi")),
                  ("disk_bus", tuple(_DEV_PREFIX)), ("seed_device", ("disk", "cdrom")),
                  ("network_mode", NETWORK_MODES), ("console", ("file", "pty")))
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"DomainSpec.{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.firmware == "uefi" and self.nvram is None:
            raise ValueError("DomainSpec: UEFI firmware needs an nvram path (the guest's own copy)")
        if self.secure_boot and (self.firmware != "uefi" or self.machine != "q35"):
            raise ValueError("DomainSpec: Secure Boot needs firmware='uefi' and machine='q35' (SMM)")

    @property
    def loader(self) -> Path | None:
        if self.firmware != "uefi":
            return None
        return self.ovmf_dir / (OVMF_CODE_SECBOOT if self.secure_boot else OVMF_CODE)

    @property
    def nvram_template(self) -> Path | None:
        if self.firmware != "uefi":
            return None
        return self.ovmf_dir / (OVMF_VARS_MS if self.secure_boot else OVMF_VARS)


def family_fields(family: "Family", workdir: Path, *, firmware: str | None = None,
                  tpm: bool | None = None) -> dict[str, Any]:
    """The :class:`DomainSpec` fields a guest family decides, for ``DomainSpec(**common,
    **family_fields(family, workdir))``. *workdir* holds the guest's NVRAM; *firmware*
    (an image's own, e.g. from the catalog) and *tpm* override the family's defaults."""
    firmware = firmware or family.firmware
    return {
        "machine": family.machine,
        "firmware": firmware,
        "secure_boot": family.secure_boot and firmware == "uefi",
        "nvram": workdir / NVRAM_FILE if firmware == "uefi" else None,
        "tpm": family.tpm if tpm is None else tpm,
        "disk_bus": family.disk_bus,
        "nic_model": family.nic_model,
        "seed_device": family.seed_device,
        "guest_port": family.guest_port,
        "shared_memory": family.share_mount_command is not None,
    }


QEMU_DATA_DIRS = (Path("/usr/share/qemu"), Path("/usr/share/seabios"), Path("/usr/lib/ipxe/qemu"))
NIC_ROMS = {"virtio-net-pci": "efi-virtio.rom", "e1000": "efi-e1000.rom", "e1000e": "efi-e1000e.rom"}


def firmware_files(spec: DomainSpec) -> list[str]:
    """The firmware and option ROMs QEMU loads for *spec*: a saved state holds code from
    them, so a snapshot is only good with the same files."""
    names = ["bios-256k.bin" if spec.firmware == "bios" else None, "kvmvapic.bin",
             "linuxboot_dma.bin" if spec.kernel is not None else None, NIC_ROMS.get(spec.nic_model)]
    found = []
    for name in filter(None, names):
        path = next((d / name for d in QEMU_DATA_DIRS if (d / name).is_file()), None)
        found.append(str(path) if path else name)
    found += [str(p) for p in (spec.loader, spec.nvram_template) if p is not None]
    return found


def firmware_digest(spec: DomainSpec) -> dict[str, str]:
    """``{file: sha256 prefix}`` of :func:`firmware_files` (``missing`` where absent)."""
    digests = {}
    for name in firmware_files(spec):
        path = Path(name)
        digests[path.name] = (hashlib.sha256(path.read_bytes()).hexdigest()[:16]
                              if path.is_file() else "missing")
    return digests


def host_cpu() -> str:
    """The host CPU a ``host-passthrough`` guest sees (model name and a hash of its flags)."""
    model, flags = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.strip()
    except OSError:
        pass
    return f"{model} ({hashlib.sha256(flags.encode()).hexdigest()[:12]})"


def host_problems(spec: DomainSpec) -> list[str]:
    """What this host lacks for *spec* (firmware files, swtpm), as sentences; empty if
    nothing. Checked before defining the domain, so the error names the package."""
    problems = []
    for path in (spec.loader, spec.nvram_template):
        if path is not None and not path.is_file():
            problems.append(f"UEFI firmware file {path} is missing (install Debian's 'ovmf' package)")
    if spec.tpm and shutil.which(SWTPM) is None:
        problems.append("a TPM was asked for but 'swtpm' is not installed (Debian: swtpm, swtpm-tools)")
    return problems


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrib.items()})
    if text is not None:
        element.text = text
    return element


def _disk(devices: ET.Element, path: Path, fmt: str, target: str, *, bus: str = "virtio",
          device: str = "disk", readonly: bool = False) -> None:
    disk = _sub(devices, "disk", type="file", device=device)
    if device == "cdrom":
        _sub(disk, "driver", name="qemu", type=fmt)
    else:
        _sub(disk, "driver", name="qemu", type=fmt, discard="unmap")
    _sub(disk, "source", file=str(path))
    _sub(disk, "target", dev=target, bus=bus)
    if readonly:
        _sub(disk, "readonly")


def _disks(devices: ET.Element, spec: DomainSpec) -> None:
    """The system disk first (``retarget`` relies on it), then the seed; target names are
    handed out per bus in that order (vda, vdb / sda, sdb)."""
    used: dict[str, int] = {}

    def target(bus: str) -> str:
        index = used.get(bus, 0)
        used[bus] = index + 1
        return _DEV_PREFIX[bus] + chr(ord("a") + index)

    _disk(devices, spec.disk, spec.disk_format, target(spec.disk_bus), bus=spec.disk_bus)
    seed_bus = "sata" if spec.seed_device == "cdrom" else spec.disk_bus
    _disk(devices, spec.seed, "raw", target(seed_bus), bus=seed_bus, device=spec.seed_device,
          readonly=True)


def _os(dom: ET.Element, spec: DomainSpec) -> None:
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine=spec.machine_type or spec.machine)
    if spec.firmware == "uefi":
        _sub(os_el, "loader", str(spec.loader), readonly="yes", type="pflash",
             secure="yes" if spec.secure_boot else "no")
        _sub(os_el, "nvram", str(spec.nvram), template=str(spec.nvram_template))
    if spec.kernel is not None:
        _sub(os_el, "kernel", str(spec.kernel))
        if spec.initrd is not None:
            _sub(os_el, "initrd", str(spec.initrd))
        _sub(os_el, "cmdline", spec.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")


def domain_element(spec: DomainSpec) -> ET.Element:
    dom = ET.Element("domain", type=spec.virt_type)
    _sub(dom, "name", spec.name)
    # a VM generation ID: a clone restored under a new one makes the guest kernel reseed
    # its random number generator (see retarget)
    _sub(dom, "genid")
    if spec.metadata:
        meta = _sub(dom, "metadata")
        ET.SubElement(meta, f"{{{META_NS}}}run", dict(spec.metadata))
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    if spec.shared_memory:
        # virtiofsd maps the guest's RAM; a memfd saves and restores like private RAM, so
        # goldens keep it and a share is hot-plugged into any clone (see filesystem_xml)
        backing = _sub(dom, "memoryBacking")
        _sub(backing, "source", type="memfd")
        _sub(backing, "access", mode="shared")
    _sub(dom, "vcpu", str(spec.cpus))

    _os(dom, spec)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    if spec.secure_boot:
        _sub(features, "smm", state="on")  # OVMF's Secure Boot build refuses to run without it
    if spec.virt_type == "kvm":
        _sub(dom, "cpu", mode="host-passthrough")
    else:  # a named model: a saved state only restores onto the CPU it was saved on
        cpu = _sub(dom, "cpu", mode="custom", match="exact", check="none")
        _sub(cpu, "model", TCG_CPU_MODEL, fallback="forbid")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    _disks(devices, spec)
    if spec.console == "file":
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=str(spec.console_log), append="on")
    else:  # read through libvirt (virDomainOpenConsole): a remote host's console
        serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    # the QEMU guest agent's port (libvirt picks the host socket): sets a warm clone's clock
    # while the SSH login runs, where the image has the agent
    agent = _sub(devices, "channel", type="unix")
    _sub(agent, "target", type="virtio", name=AGENT_CHANNEL)
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    if spec.tpm:
        tpm = _sub(devices, "tpm", model="tpm-crb")
        _sub(tpm, "backend", type="emulator", version="2.0")

    cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
    for arg in _nic_args(spec.nic_model, spec.mac, spec.ssh_port, spec.guest_port,
                         spec.network_mode):
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    return dom


def _nic_args(model: str, mac: str | None, host_port: int, guest_port: int,
              network_mode: str = "user") -> list[str]:
    """QEMU arguments of the user-mode NIC with its one 127.0.0.1 forward; *network_mode*
    ``"isolated"`` adds ``restrict=on`` (see :data:`NETWORK_MODES`)."""
    if network_mode not in NETWORK_MODES:
        raise ValueError(f"network mode {network_mode!r} is not one of {NETWORK_MODES}")
    device = f"{model},netdev=net0,addr={NIC_PCI_SLOT}" + (f",mac={mac}" if mac else "")
    restrict = ",restrict=on" if network_mode == "isolated" else ""
    return ["-netdev", f"user,id=net0{restrict},hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}",
            "-device", device]


def filesystem_xml(tag: str, source: Path) -> str:
    """A virtiofs ``<filesystem>`` exporting host directory *source* under mount *tag*, to
    hot-plug into a running guest (QEMU 7.2 cannot save a guest with a vhost-user-fs device,
    so shares are never part of a golden: each clone gets its own after the restore).
    libvirt starts and stops the virtiofsd process with the device."""
    fs = ET.Element("filesystem", type="mount", accessmode="passthrough")
    _sub(fs, "driver", type="virtiofs", queue="1024")
    _sub(fs, "source", dir=str(source))
    _sub(fs, "target", dir=tag)
    return ET.tostring(fs, encoding="unicode")


#: PCI slots of the root bus for private-network NICs (``networks=``), one per network of a
#: guest. libvirt gives its own devices (and hot-plugged shares) the lowest free slots and
#: never learns of these, so they are taken from the top, below the user NIC's 0x1e.
PRIVATE_NIC_SLOTS = tuple(range(0x1d, 0x15, -1))


def private_nic_commands(index: int, mac: str, model: str, local: Path, hub: Path) -> list[dict]:
    """QMP commands hot-plugging a guest's NIC number *index* on a private network: a
    ``dgram`` netdev from the Unix socket *local* (QEMU binds it) to the network's hub
    socket *hub*, and a NIC of *model* with *mac* on it. libvirt 9.0 refuses to hot-plug
    its socket-like interface types (``udp``, ``mcast``, ``server``/``client``), so these go
    to QEMU's monitor through libvirt (see :meth:`Hypervisor.monitor`); the device exists
    only in the running QEMU (a new boot plugs it again)."""
    if not 0 <= index < len(PRIVATE_NIC_SLOTS):
        raise ValueError(f"a guest can be on at most {len(PRIVATE_NIC_SLOTS)} networks")
    netdev = f"pytest-kvm-net{index}"
    return [
        {"execute": "netdev_add", "arguments": {
            "type": "dgram", "id": netdev,
            "local": {"type": "unix", "path": str(local)},
            "remote": {"type": "unix", "path": str(hub)}}},
        {"execute": "device_add", "arguments": {
            "driver": model, "id": f"pytest-kvm-nic{index}", "netdev": netdev, "mac": mac,
            "bus": "pci.0", "addr": f"{PRIVATE_NIC_SLOTS[index]:#x}"}},
    ]


def random_mac() -> str:
    """A random locally administered unicast MAC in QEMU's 52:54:00 prefix."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def domain_xml(spec: DomainSpec) -> str:
    return ET.tostring(domain_element(spec), encoding="unicode")


def run_metadata(element: str) -> dict[str, str]:
    """The pytest-kvm run metadata from its ``<run>`` element (what libvirt's
    ``virDomainGetMetadata`` returns for :data:`META_NS`)."""
    return dict(ET.fromstring(element).attrib)


@dataclass(frozen=True)
class CloneIdentity:
    """What makes a clone of a saved golden a domain of its own: libvirt's name and UUID,
    the NIC's MAC, the VM generation ID (the guest reseeds its RNG when it changes), its
    own files and forward, its network mode (a golden saved in one mode clones into any:
    the mode is a netdev option, not part of the saved state) and the owner metadata the
    reaper reads."""

    name: str
    disk: Path
    console_log: Path
    ssh_port: int
    guest_port: int = 22
    nvram: Path | None = None
    seed: Path | None = None  # where the golden's seed now lives (it stays attached)
    metadata: dict[str, str] = field(default_factory=dict)
    uuid: str = field(default_factory=lambda: str(uuid_module.uuid4()))
    genid: str = field(default_factory=lambda: str(uuid_module.uuid4()))
    mac: str = field(default_factory=random_mac)
    network_mode: str = "user"  # one of NETWORK_MODES


def _set_text(root: ET.Element, tag: str, text: str) -> None:
    element = root.find(tag)
    if element is None:
        element = ET.SubElement(root, tag)
    element.text = text


def retarget(xml: str, clone: CloneIdentity) -> str:
    """A saved golden's XML made into *clone*'s: its own name, UUID, generation ID, MAC,
    system disk, console file, host forward, network mode, NVRAM (for UEFI) and owner
    metadata; every device stays as saved (QEMU's migration stream expects them). The
    system disk is the first ``device="disk"``, on any bus: :func:`domain_element` writes
    it first and libvirt keeps the order."""
    root = ET.fromstring(xml)
    _set_text(root, "name", clone.name)
    _set_text(root, "uuid", clone.uuid)
    _set_text(root, "genid", clone.genid)
    if clone.metadata:
        run = root.find(f"./metadata/{{{META_NS}}}run")
        if run is not None:
            run.attrib.clear()
            run.attrib.update(clone.metadata)
    system = next((d for d in root.iter("disk") if d.get("device", "disk") == "disk"), None)
    if system is not None and system.find("source") is not None:
        system.find("source").set("file", str(clone.disk))
        # the saved chain named the golden overlay; libvirt re-reads the new one's chain
        for backing in system.findall("backingStore"):
            system.remove(backing)
    for disk in root.iter("disk"):
        if clone.seed is not None and disk is not system and disk.find("readonly") is not None:
            disk.find("source").set("file", str(clone.seed))
    if clone.nvram is not None:
        for element in root.iter("nvram"):
            element.text = str(clone.nvram)
    for tag in ("serial", "console"):
        for device in root.iter(tag):
            source = device.find("source")
            if source is not None and device.get("type") == "file":
                source.set("path", str(clone.console_log))
    args = list(root.iter(f"{{{QEMU_NS}}}arg"))
    for index, arg in enumerate(args):
        value = arg.get("value", "")
        if value.startswith("user,id=net0,"):
            device = args[index + 2]  # -netdev VALUE -device VALUE
            model = device.get("value", "").split(",", 1)[0]
            netdev, nic = _nic_args(model, clone.mac, clone.ssh_port, clone.guest_port,
                                    clone.network_mode)[1::2]
            arg.set("value", netdev)
            device.set("value", nic)
            break
    return ET.tostring(root, encoding="unicode")
