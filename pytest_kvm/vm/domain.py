"""The domains pytest-kvm defines: a :class:`DomainSpec` made into libvirt's domain XML,
a saved golden's XML made into a clone's (:func:`retarget`), the devices hot-plugged
into a running guest, and what a host needs for them. The XML itself is built and read
as objects (:mod:`pytest_kvm.vm.libvirtxml`); no libvirt import, testable alone.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .libvirtxml.devices import (Channel, Console, Controller, Disk, Filesystem, MemBalloon, Rng,
                                 Serial, Tpm)
from .libvirtxml.domain import (META_NS, Boot, Clock, Cpu, Domain, Features,  # noqa: F401
                                MemoryBacking, Metadata, Os, Tcg, run_metadata)
from .libvirtxml.elements import XmlElement
from .libvirtxml.qemu import QEMU_NS, QemuCommandline, UserNic, address_property  # noqa: F401
from ..arches import Arch, host_arch
from ..choices import NETWORK_MODES

if TYPE_CHECKING:  # pragma: no cover
    from ..families import Family

NAME_PREFIX = "pytest-kvm-"
NIC_PCI_SLOT = "0x1e"
#: on channel I/O (s390x) the user NIC's device number instead: the guest sees 0.0.001e
#: (``Arch.nic_path``); libvirt numbers its own devices from fe.0.0000 up
NIC_CCW_DEVNO = "fe.0.001e"
#: amd64's Secure Boot build of OVMF (in its ``Arch.uefi`` directory: Debian's ovmf package)
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
    firmware: str = "bios"  # "bios" (SeaBIOS) or "uefi" (the architecture's: OVMF, AAVMF)
    secure_boot: bool = False  # uefi + q35 only
    nvram: Path | None = None  # this guest's UEFI variable store; required with uefi
    firmware_dir: Path | None = None  # where the UEFI files are; None: the architecture's
    tpm: bool = False  # a TPM 2.0 (CRB) backed by swtpm, which libvirt starts
    disk_bus: str = "virtio"  # "virtio" or "sata"
    nic_model: str = "virtio-net-pci"  # a QEMU -device name: "virtio-net-pci", "e1000", "e1000e"
    seed_device: str = "disk"  # "disk" (on disk_bus) or "cdrom" (always SATA)
    mac: str | None = None  # the NIC's MAC; None: QEMU's default
    shared_memory: bool = False  # memfd RAM shared with helper processes (virtiofsd: shares)
    network_mode: str = "user"  # one of NETWORK_MODES
    #: "file": QEMU appends the serial console to ``console_log``; "pty": it is read through
    #: libvirt's console stream (a remote host: see pytest_kvm.hosts.remote)
    console: str = "file"
    #: TCG's translation cache in MiB (``<features><tcg><tb-cache>``); None: QEMU's default
    #: (1 GiB). Written only under TCG: KVM runs guest code natively and has none
    tb_cache_mib: int | None = None
    #: the guest's CPU architecture: its machine (``virt`` for arm64 and riscv64, instead of
    #: the family's), its named CPU under TCG (see :mod:`pytest_kvm.arches`)
    arch: Arch = field(default_factory=host_arch)

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
        if self.firmware == "uefi" and self.arch.uefi is None:
            raise ValueError(f"DomainSpec: no UEFI firmware for {self.arch.debian} guests")
        if not self.x86 and (self.kernel is None and self.firmware != "uefi" or self.tpm
                             or self.virt_type == "kvm" and self.arch != host_arch()):
            raise ValueError(f"DomainSpec: a {self.arch.debian} guest boots its kernel directly "
                             f"or from UEFI (no BIOS, no TPM), emulated unless it is the host's")

    @property
    def x86(self) -> bool:
        return self.arch.kernel == "x86_64"

    @property
    def nic_device(self) -> str:
        """QEMU's device for the user NIC on this architecture (``nic_model`` on its bus)."""
        return self.arch.device(self.nic_model)

    @property
    def cpu_model(self) -> str:
        """The named CPU a TCG guest gets (a saved state restores only onto it)."""
        return self.arch.tcg_cpu

    def _uefi_file(self, secure_boot_name: str, name: str) -> Path | None:
        """The architecture's UEFI file *name* (``code``, ``vars``), or amd64's Secure Boot
        build's *secure_boot_name*; None without UEFI."""
        uefi = self.arch.uefi
        if self.firmware != "uefi" or uefi is None:
            return None
        file = secure_boot_name if self.secure_boot else getattr(uefi, name)
        return (self.firmware_dir or Path(uefi.directory)) / file

    @property
    def loader(self) -> Path | None:
        return self._uefi_file(OVMF_CODE_SECBOOT, "code")

    @property
    def nvram_template(self) -> Path | None:
        return self._uefi_file(OVMF_VARS_MS, "vars")


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
    x86 = spec.x86
    names = ["bios-256k.bin" if spec.firmware == "bios" and x86 else None,
             "kvmvapic.bin" if x86 else None,
             "linuxboot_dma.bin" if spec.kernel is not None and x86 else None,
             *spec.arch.firmware, NIC_ROMS.get(spec.nic_device)]
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
            problems.append(f"UEFI firmware file {path} is missing (install Debian's "
                            f"'{spec.arch.uefi.package}' package)")
    if spec.tpm and shutil.which(SWTPM) is None:
        problems.append("a TPM was asked for but 'swtpm' is not installed (Debian: swtpm, swtpm-tools)")
    return problems


def _disks(spec: DomainSpec) -> list[Disk]:
    """The system disk, then the seed; target names are handed out per bus in that order
    (vda, vdb / sda, sdb)."""
    used: dict[str, int] = {}

    def disk(path: Path, fmt: str, bus: str, device: str = "disk", readonly: bool = False) -> Disk:
        index = used.get(bus, 0)
        used[bus] = index + 1
        return Disk(type="file", device=device, driver_name="qemu", driver_type=fmt,
                    driver_discard=None if device == "cdrom" else "unmap", source_file=str(path),
                    target_dev=_DEV_PREFIX[bus] + chr(ord("a") + index), target_bus=bus,
                    readonly=readonly)

    seed_bus = "sata" if spec.seed_device == "cdrom" else spec.disk_bus
    return [disk(spec.disk, spec.disk_format, spec.disk_bus),
            disk(spec.seed, "raw", seed_bus, spec.seed_device, readonly=True)]


def _os(spec: DomainSpec) -> Os:
    os = Os(type="hvm", arch=spec.arch.kernel,
            machine=spec.machine_type or (spec.machine if spec.x86 else spec.arch.machine))
    if spec.firmware == "uefi":
        os.loader, os.loader_readonly, os.loader_type = str(spec.loader), "yes", "pflash"
        os.loader_secure = "yes" if spec.secure_boot else "no"
        os.nvram, os.nvram_template = str(spec.nvram), str(spec.nvram_template)
    if spec.kernel is not None:
        os.kernel = str(spec.kernel)
        os.initrd = None if spec.initrd is None else str(spec.initrd)
        os.cmdline = spec.cmdline
    else:
        os.boot = [Boot(dev="hd")]
    return os


def _devices(spec: DomainSpec) -> list[XmlElement]:
    if spec.console == "file":
        serial = Serial(type="file", source_path=str(spec.console_log), source_append="on",
                        target_port="0")
    else:  # read through libvirt (virDomainOpenConsole): a remote host's console
        serial = Serial(type="pty", target_port="0")
    devices = [*_disks(spec), serial, Controller(type="usb", model="none"),
               MemBalloon(model="none"),
               # the QEMU guest agent's port (libvirt picks the host socket): sets a warm
               # clone's clock while the SSH login runs, where the image has the agent
               Channel(type="unix", target_type="virtio", target_name=AGENT_CHANNEL),
               Rng(model="virtio", backend_model="random", backend="/dev/urandom")]
    # spare PCI Express root ports: a virt machine's devices are on its root complex,
    # where nothing can be hot-plugged (shares are, after a clone's restore)
    if spec.arch.hotplug_ports:
        # libvirt puts each of these devices on a root port of its own (the virtio disks,
        # the agent channel's virtio-serial controller, the RNG), taking the ports
        # listed here first: so as many more as are to stay empty
        taken = sum(isinstance(d, Disk) and d.target_bus == "virtio" or isinstance(d, Rng)
                    for d in devices) + 1
        devices += [Controller(type="pci", index="0", model="pcie-root"),
                    *(Controller(type="pci", model="pcie-root-port")
                      for _ in range(taken + spec.arch.hotplug_ports))]
    if spec.tpm:
        devices.append(Tpm(model="tpm-crb", backend_type="emulator", backend_version="2.0"))
    return devices


def build_domain(spec: DomainSpec) -> Domain:
    """The domain of *spec*, as objects (:func:`domain_xml` is its XML)."""
    tcg = spec.virt_type != "kvm"
    return Domain(
        virt_type=spec.virt_type, name=spec.name,
        # a VM generation ID: a clone restored under a new one makes the guest kernel reseed
        # its random number generator (see retarget), where the architecture has one
        genid="" if spec.arch.vm_genid else None,
        metadata=Metadata(run=dict(spec.metadata)) if spec.metadata else None,
        memory=spec.memory_mib, memory_unit="MiB",
        # virtiofsd maps the guest's RAM; a memfd saves and restores like private RAM, so
        # goldens keep it and a share is hot-plugged into any clone (see filesystem_xml)
        memory_backing=shared_memory_backing() if spec.shared_memory else None,
        vcpus=spec.cpus, os=_os(spec),
        # OVMF's Secure Boot build refuses to run without SMM
        # ACPI: x86 only (libvirt ties it to UEFI on aarch64; the kernel finds virt's devices
        # in its device tree)
        features=Features(acpi=spec.x86, smm="on" if spec.secure_boot else None,
                          tcg=Tcg(tb_cache=spec.tb_cache_mib, tb_cache_unit="MiB")
                          if tcg and spec.tb_cache_mib else None),
        # under TCG a named model: a saved state only restores onto the CPU it was saved on
        cpu=(Cpu(mode="custom", match="exact", check="none", model=spec.cpu_model,
                 model_fallback="forbid") if spec.cpu_model else None)
        if tcg else Cpu(mode="host-passthrough"),
        clock=Clock(offset="utc"), on_poweroff="destroy", on_reboot="restart", on_crash="destroy",
        devices=_devices(spec),
        commandline=QemuCommandline(args=user_nic(spec.nic_device, spec.mac, spec.ssh_port,
                                                  spec.guest_port, spec.network_mode).args()))


def shared_memory_backing() -> MemoryBacking:
    """Guest RAM in a memfd other processes may map: what virtiofsd needs (shares)."""
    return MemoryBacking(source_type="memfd", access_mode="shared")


def domain_xml(spec: DomainSpec) -> str:
    return build_domain(spec).to_xml()


def user_nic(model: str, mac: str | None, host_port: int, guest_port: int,
             network_mode: str = "user") -> UserNic:
    """The user-mode NIC with its one 127.0.0.1 forward; *network_mode* ``"isolated"``
    restricts it (see :data:`NETWORK_MODES`)."""
    if network_mode not in NETWORK_MODES:
        raise ValueError(f"network mode {network_mode!r} is not one of {NETWORK_MODES}")
    slot = NIC_CCW_DEVNO if address_property(model) == "devno" else NIC_PCI_SLOT
    return UserNic(model=model, host_port=host_port, guest_port=guest_port, slot=slot,
                   mac=mac, restrict=network_mode == "isolated")


def filesystem_xml(tag: str, source: Path, binary: Path | None = None) -> str:
    """A virtiofs ``<filesystem>`` exporting host directory *source* under mount *tag*, to
    hot-plug into a running guest (QEMU 7.2 cannot save a guest with a vhost-user-fs device,
    so shares are never part of a golden: each clone gets its own after the restore).
    libvirt starts and stops the virtiofsd process with the device: *binary* if given (a
    launcher, see :mod:`pytest_kvm.vm.virtiofsd`)."""
    return Filesystem(type="mount", accessmode="passthrough", driver_type="virtiofs",
                      driver_queue="1024", source_dir=str(source), target_dir=tag,
                      binary_path=str(binary) if binary else None).to_xml()


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
    #: True: RAM in a shared memfd (a clone with shares); False: private RAM; None: as saved.
    #: A golden's memfd restores into private RAM too, where QEMU 7.2's restore does not
    #: allocate every page of the guest's RAM (it reads each zero page, which in a memfd
    #: allocates one): six idle clones of 512 MiB went from ~604 to ~335 MiB PSS each
    shared_memory: bool | None = None


def retarget_domain(domain: Domain, clone: CloneIdentity) -> None:
    """Make a saved golden's *domain* *clone*'s: its own name, UUID, generation ID, MAC,
    system disk, console file, host forward, network mode, NVRAM (for UEFI), seed (when it
    moved), owner metadata and RAM (shared or private); every device stays as saved (QEMU's migration stream expects
    them). The system disk is the one writable disk, wherever it is among the devices."""
    domain.name, domain.uuid = clone.name, clone.uuid
    if domain.genid is not None:
        domain.genid = clone.genid
    if clone.metadata:
        domain.metadata = domain.metadata or Metadata()
        domain.metadata.run = dict(clone.metadata)
    disks = domain.devices_of(Disk)
    system = [disk for disk in disks if disk.writable_disk]
    if len(system) != 1:
        raise ValueError(f"a saved domain has {len(system)} writable disks, not the one system disk")
    system[0].source_file = str(clone.disk)
    system[0].backing_chain = None  # the golden overlay's; libvirt reads the clone's own
    if clone.shared_memory is not None:
        domain.memory_backing = shared_memory_backing() if clone.shared_memory else None
    for seed in (disk for disk in disks if disk.readonly and clone.seed is not None):
        seed.source_file = str(clone.seed)
    if clone.nvram is not None and domain.os is not None and domain.os.nvram is not None:
        domain.os.nvram = str(clone.nvram)
    for console in domain.devices_of(Serial) + domain.devices_of(Console):
        if console.type == "file" and console.source_path is not None:
            console.source_path = str(clone.console_log)
    nic = domain.commandline.user_nic if domain.commandline is not None else None
    if nic is not None:
        domain.commandline.user_nic = replace(user_nic(
            nic.model, clone.mac, clone.ssh_port, clone.guest_port, clone.network_mode),
            slot=nic.slot)


def retarget(xml: str, clone: CloneIdentity) -> str:
    """A saved golden's domain *xml* made into *clone*'s (see :func:`retarget_domain`);
    :class:`~.saved.ForeignDomain` if it holds what pytest-kvm did not put there."""
    from .saved import refuse_foreign  # noqa: PLC0415
    domain = Domain.from_xml(xml)
    refuse_foreign(domain)
    retarget_domain(domain, clone)
    return domain.to_xml()
