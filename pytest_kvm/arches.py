"""CPU architectures as data: what differs between an amd64, arm64, riscv64, s390x and
ppc64el guest, for the image builder, the domain and the plugin's ids.

Like :mod:`pytest_kvm.families`, the rest of the plugin reads these fields and never asks
which architecture it is: a new architecture is a new table entry. Two spellings name
each one: Debian's (``arm64``, the plugin's ids and image names) and the kernel's
(``aarch64``, what ``uname -m`` prints and ``guest.arch`` is); both are accepted wherever
a user names one.
"""
from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .errors import KvmError


@dataclass(frozen=True)
class Uefi:
    """UEFI firmware of one architecture for guests that boot from their disk (a vendor's
    image, ``firmware = "uefi"``): its code, the template of a guest's variable store, in
    *directory*, from the Debian *package*."""
    directory: str
    code: str
    vars: str
    package: str


@dataclass(frozen=True)
class Arch:
    #: Debian's name (``dpkg --print-architecture``): image names, ids, ``--kvm-arch``
    debian: str
    #: the kernel's name (``uname -m``): ``guest.arch``, libvirt's ``<os><type arch>``
    kernel: str
    #: QEMU's system emulator (``qemu-system-<x>``) and the Debian package that has it
    emulator: str
    emulator_package: str
    #: the machine type and, under TCG, the named CPU model (a saved state restores only
    #: onto the CPU it was saved on; aarch64 TCG refuses host-model); "": QEMU's default CPU
    #: of the machine, left unnamed (libvirt 9.0 has no CPU models for riscv64)
    machine: str
    tcg_cpu: str
    #: Debian's kernel package for a virtual machine, and the serial console it prints on
    kernel_package: str
    console: str
    #: the Debian suites whose images the builder makes for it
    suites: tuple[str, ...]
    #: modules its image's initramfs needs besides the virtio disk's (``virtio_pci``,
    #: ``virtio_blk``: every recipe lists them) to mount the root
    initramfs_modules: tuple[str, ...] = ()
    #: the bus of its virtio devices (QEMU's ``virtio-<x>-<bus>``): ``pci``, or ``ccw``
    #: (s390x's channel I/O, where there is no PCI root for the user NIC)
    virtio_bus: str = "pci"
    #: udev's ID_PATH of the user NIC (slot 0x1e of the PCI root bus; device number 0x001e
    #: of channel subsystem 0 on ccw), which the image's systemd-networkd file matches: on
    #: ``virt`` machines the PCIe host bridge is a platform device, whose name comes first
    nic_path: str = "pci-0000:00:1e.0"
    #: the name its kernel package gives the kernel in /boot (``vmlinuz-<version>``)
    kernel_file: str = "vmlinuz"
    #: whether QEMU gives its guests a VM generation ID (``vmgenid``, an ACPI device: x86
    #: only), whose change makes a restored clone's kernel reseed its random number
    #: generator; without one the plugin reseeds it (the family's ``reseed_command``)
    vm_genid: bool = False
    #: whether a saved guest restores into a working clone (QEMU 7.2, TCG): a riscv64 clone
    #: came back with SSH logins timing out, and QEMU before 8.2 does not save a pseries
    #: CPU's decrementer under TCG (a restored ppc64el guest can hang: QEMU commit 578912ad73),
    #: so their guests boot cold (``reset="boot"``)
    warm_clones: bool = True
    #: firmware QEMU runs before the kernel (files in its data directory): a saved state
    #: holds its code, so it is part of the snapshot key
    firmware: tuple[str, ...] = ()
    #: options of QEMU's command line for the image builder's emulated guest besides the
    #: machine's defaults
    builder_options: tuple[str, ...] = ()
    #: UEFI firmware for images that boot from their disk (vendor images); None: the
    #: architecture's guests boot their kernel directly only
    uefi: Uefi | None = None
    #: empty PCI Express root ports the domain gets, for devices hot-plugged into a running
    #: guest (shares): on QEMU's ``virt`` machine nothing can be plugged into the root
    #: complex itself; 0: none (amd64's ``pc`` hot-plugs into its root bus)
    hotplug_ports: int = 0
    #: why its guests get no shared folders (virtiofs, hot-plugged after a clone's
    #: restore); empty: they do
    no_shares: str = ""

    def device(self, model: str) -> str:
        """QEMU's name on this architecture for the PCI device *model*: a virtio device is
        on the architecture's bus (``virtio-net-pci`` is ``virtio-net-ccw`` on s390x)."""
        if model.startswith("virtio-") and model.endswith("-pci"):
            return model.removesuffix("pci") + self.virtio_bus
        return model


ARCHES: Mapping[str, Arch] = MappingProxyType({a.debian: a for a in (
    Arch(debian="amd64", kernel="x86_64", emulator="qemu-system-x86_64",
         emulator_package="qemu-system-x86",
         machine="pc", tcg_cpu="qemu64", kernel_package="linux-image-cloud-amd64",
         console="ttyS0", suites=("bookworm", "trixie"), vm_genid=True,
         uefi=Uefi("/usr/share/OVMF", "OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd", "ovmf")),
    Arch(debian="arm64", kernel="aarch64", emulator="qemu-system-aarch64",
         emulator_package="qemu-system-arm",
         machine="virt", tcg_cpu="cortex-a57", kernel_package="linux-image-cloud-arm64",
         console="ttyAMA0", suites=("bookworm", "trixie"),
         nic_path="platform-*-pci-0000:00:1e.0",
         # AAVMF: what arm64 cloud images boot with (their GRUB is an EFI program)
         uefi=Uefi("/usr/share/AAVMF", "AAVMF_CODE.fd", "AAVMF_VARS.fd", "qemu-efi-aarch64"),
         hotplug_ports=2),
    Arch(debian="riscv64", kernel="riscv64", emulator="qemu-system-riscv64",
         emulator_package="qemu-system-misc",
         machine="virt", tcg_cpu="", kernel_package="linux-image-riscv64",
         console="ttyS0", suites=("trixie",),
         nic_path="platform-*-pci-0000:00:1e.0",
         # its generic kernel has ext4 as a module (the cloud kernels build it in; crc32c
         # is ext4's soft dependency, loaded first)
         initramfs_modules=("crc32c_generic", "ext4"),
         kernel_file="vmlinux",  # an uncompressed Image
         firmware=("opensbi-riscv64-generic-fw_dynamic.bin",),  # run before the kernel
         warm_clones=False,
         # tried with arm64's spare root ports: libvirt hot-plugged the share's device,
         # the guest's mount of it failed ("wrong fs type"); not investigated further
         no_shares="its guest did not mount a share hot-plugged into a spare PCI Express "
                   "root port (tried as on arm64)"),
    # channel I/O instead of PCI; the console is the SCLP's VT220 line (ttysclp0)
    Arch(debian="s390x", kernel="s390x", emulator="qemu-system-s390x",
         emulator_package="qemu-system-misc",
         machine="s390-ccw-virtio", tcg_cpu="qemu", kernel_package="linux-image-s390x",
         console="ttysclp0", suites=("bookworm", "trixie"),
         virtio_bus="ccw", nic_path="ccw-0.0.001e",
         # seen: the device attached and the share mounted, but every access to it failed
         # with "Connection refused" (FUSE messages are in the guest's byte order)
         no_shares="virtiofsd on this little-endian host does not serve a big-endian guest",
         initramfs_modules=("virtio_ccw", "crc32c_generic", "ext4")),
    # pseries: SLOF runs, then the kernel (an uncompressed ELF); the serial console is the
    # hypervisor's virtual terminal (hvc0); libvirt names the TCG CPU POWER9
    Arch(debian="ppc64el", kernel="ppc64le", emulator="qemu-system-ppc64",
         emulator_package="qemu-system-ppc",
         machine="pseries", tcg_cpu="POWER9", kernel_package="linux-image-powerpc64le",
         console="hvc0", suites=("bookworm", "trixie"),
         initramfs_modules=("crc32c_generic", "ext4"), kernel_file="vmlinux",
         firmware=("slof.bin",), warm_clones=False,
         no_shares="pseries hot-plug needs rtas_errd and drmgr in the guest (ppc64-diag, "
                   "powerpc-ibm-utils), which the image does not have",
         # no VGA (and so no USB keyboard and mouse): SLOF would print to it
         builder_options=("-vga", "none")),
)})

class UnknownArch(KvmError):
    """An architecture name that is in neither spelling of :data:`ARCHES`."""


def arch_of(name: str) -> Arch:
    """The architecture called *name* in Debian's or the kernel's spelling (``arm64`` or
    ``aarch64``; ``amd64`` or ``x86_64``; ``ppc64el`` or ``ppc64le``)."""
    wanted = name.strip().lower()
    for arch in ARCHES.values():
        if wanted in (arch.debian, arch.kernel):
            return arch
    known = ", ".join(f"{a.debian} ({a.kernel})" for a in ARCHES.values())
    raise UnknownArch(f"unknown architecture {name!r}: known are {known}")


def host_arch() -> Arch:
    """This machine's architecture: the default, and the only one KVM can run."""
    return arch_of(platform.machine())


def image_name(os: str, arch: Arch) -> str:
    """The image cache's name for *os* on *arch*: *os* itself on amd64 (the names every
    cache and ``--kvm-image`` already use), ``<os>-<debian arch>`` otherwise
    (``debian-12-arm64``: also the test id's suffix)."""
    return os if arch.debian == "amd64" else f"{os}-{arch.debian}"


def split_image_name(name: str) -> tuple[str, Arch]:
    """The inverse of :func:`image_name`: ``debian-12-arm64`` -> (``debian-12``, arm64);
    a name without an architecture suffix is amd64's."""
    for arch in ARCHES.values():
        if arch.debian != "amd64" and name.endswith(f"-{arch.debian}"):
            return name.removesuffix(f"-{arch.debian}"), arch
    return name, ARCHES["amd64"]
