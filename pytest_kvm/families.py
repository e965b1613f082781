"""Guest families as data: everything that differs between Linux, the BSDs, illumos and Windows.

A family says how a guest of that kind is seeded, reached, waited for and
described to libvirt. The rest of the plugin reads these fields and never asks
which operating system it is talking to: a new family is a new table entry.

Where the values come from (each first-boot agent's and OS's own code and docs), and
what is not verified by a boot (illumos), is in ``docs/design/families.md``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType

from .commands import PRIVILEGES, CommandSpecError, wrap
from .errors import ImageError
from .waiting import PANIC_MARKERS

#: the account every family's seed creates and the handle logs in as
LOGIN_USER = "pytest"

# exit 127 when the image has no cloud-init; else cloud-init's own status code
CLOUD_INIT_WAIT = ("command -v cloud-init >/dev/null 2>&1 || exit 127; "
                   "cloud-init status --wait >/dev/null 2>&1; rc=$?; cloud-init status --long; exit $rc")
# cloudbase-init stops its service once every plugin ran (a reboot it asked for included);
# WinRM answering only proves our user-data script ran, so wait for the service too.
CLOUDBASE_INIT_WAIT = (
    "powershell.exe -NoProfile -NonInteractive -Command "
    "\"while ((Get-Service cloudbase-init -ErrorAction SilentlyContinue).Status -eq 'Running') "
    "{ Start-Sleep -Seconds 2 }; exit 0\"")

SEED_FORMATS = ("nocloud", "configdrive")
TRANSPORTS = ("ssh", "winrm")
FIRMWARES = ("bios", "uefi")
MACHINES = ("pc", "q35")
DISK_BUSES = ("virtio", "sata")
NIC_MODELS = ("virtio-net-pci", "e1000", "e1000e")
SEED_DEVICES = ("disk", "cdrom")
USER_DATA_FORMATS = ("cloud-config", "cloudbase-ps1")
BSD_BANNER = "The Regents of the University of California"  # every BSD kernel prints it at boot


@dataclass(frozen=True)
class Family:
    """How one kind of guest is seeded, reached, waited for and wired up.

    Every field is plain data; ``docs/design/families.md`` says where the values
    come from.
    """

    name: str
    description: str
    #: ``"nocloud"`` (volume ``cidata``) or ``"configdrive"`` (OpenStack, volume ``config-2``)
    seed_format: str
    #: what the plugin puts in the seed's user data: a ``#cloud-config`` document
    #: (cloud-init, nuageinit) or a ``#ps1_sysnative`` script (cloudbase-init)
    user_data_format: str
    #: the account the seed creates and the handle logs in as
    login_user: str
    #: ``"ssh"`` (key auth, pinned host key) or ``"winrm"`` (HTTP, per-guest password)
    transport: str
    #: the guest port the 127.0.0.1 host forward points at
    guest_port: int
    #: run once the login works (SSH: our key logs in, so the seed created the user;
    #: WinRM: a command runs with our credentials); blocks until the guest's init system
    #: is done. Its exit code must be in ``ready_exit_codes``; None: the login is enough
    ready_command: str | None
    ready_exit_codes: tuple[int, ...]
    #: ``"bios"`` (SeaBIOS) or ``"uefi"`` (OVMF from Debian's ``ovmf``)
    firmware: str
    #: ``"pc"`` (i440fx) or ``"q35"`` (needed for Secure Boot: SMM)
    machine: str
    disk_bus: str
    nic_model: str
    #: how the seed is attached: ``"disk"`` (on ``disk_bus``) or ``"cdrom"`` (SATA)
    seed_device: str
    #: the shell ``run(command, sudo=, env=, cwd=)`` wraps the command in (``sh``/``bash``
    #: with POSIX quoting, or ``cmd.exe``); see :mod:`pytest_kvm.commands`
    shell: str
    #: the login shell the seed gives the user (None: the OS decides)
    login_shell: str | None
    #: how the login user runs a command as root (:data:`pytest_kvm.commands.PRIVILEGES`):
    #: ``"sudo"``, ``"doas"``, ``"su"``, ``"admin"`` (it is root / an Administrator
    #: already), or None (it cannot: root commands are refused). The seed grants it
    privilege: str | None
    #: whether the seed can install the host key the plugin generated (and pins)
    seeds_host_key: bool
    #: whether a kernel and initrd from the image recipe may be booted directly
    direct_kernel_boot: bool
    #: console text printed once per kernel start (counts reboots); None: unknown
    boot_banner: str | None
    #: console text that means the kernel panicked
    panic_markers: tuple[str, ...]
    #: ``str.format`` template run as root setting the guest clock from the host's after a
    #: warm restore (``{epoch}``: float seconds, ``{utc}``: an aware datetime); None:
    #: unsupported. Written without any privilege tool: :meth:`clock_command_for` adds it
    clock_command: str | None
    tpm: bool = False
    secure_boot: bool = False
    #: ``str.format`` template run as root (``{hostname}``) giving a warm clone its own
    #: hostname and machine identity when a test asks for ``unique=True``; None: unsupported.
    #: (Cold boots are always unique: cloud-init sets the hostname, the first boot a
    #: machine-id.) :meth:`identity_command_for` adds the privilege tool
    identity_command: str | None = None
    #: run as root in a warm clone of an architecture without a VM generation ID (see
    #: :mod:`pytest_kvm.arches`): the kernel reseeds its random number generator from fresh
    #: entropy, so clones of one golden do not share its state; None: unsupported
    reseed_command: str | None = None
    #: ``str.format`` template (``{tag}``, ``{mount_point}``, ``{mode}``: ``ro``/``rw``; the
    #: values come quoted) mounting a virtiofs share, run as root once the guest is up; None:
    #: the family cannot mount shares (``share=`` is refused for it)
    share_mount_command: str | None = None
    #: (file name, command run as root) pairs: the system logs a failed test's artifacts
    #: keep (``--kvm-artifacts``), each command's output saved under that name
    artifact_logs: tuple[tuple[str, str], ...] = ()
    #: run as root to reboot / power off the guest (``guest.reboot()``, ``guest.shutdown()``);
    #: None: ask libvirt (ACPI) instead
    reboot_command: str | None = None
    poweroff_command: str | None = None
    #: prints something that changes with every boot (``guest.reboot()`` waits for a new one)
    boot_id_command: str = "cat /proc/sys/kernel/random/boot_id"
    #: ``str.format`` template run as root once a private-network NIC was hot-plugged
    #: (``networks=``): wait for the NIC with MAC ``{mac}``, bring it up (MTU ``{mtu}``) with
    #: ``{ipv4}/{prefix4}`` and ``{ipv6}/{prefix6}``, and make the rest of the networks'
    #: ranges (``{scope4}``, ``{scope6}``) unreachable (values come quoted); None: the family
    #: cannot join networks
    network_command: str | None = None
    #: ``str.format`` template run as root: replace the plugin's lines of the hosts file with
    #: ``{lines}`` (each an ``ADDRESS NAME...`` line, quoted, separated by spaces)
    hosts_command: str | None = None
    #: run in a golden just before its save: fill the guest's free memory with zeros (one
    #: allocation, freed again), so the save image holds only the pages in use (QEMU writes
    #: a zero page as a marker) and each clone's QEMU allocates fewer; None: not done
    zero_free_memory_command: str | None = None

    def __post_init__(self) -> None:
        for field_name, allowed in (("seed_format", SEED_FORMATS), ("transport", TRANSPORTS),
                                    ("firmware", FIRMWARES),
                                    ("machine", MACHINES), ("disk_bus", DISK_BUSES),
                                    ("nic_model", NIC_MODELS), ("seed_device", SEED_DEVICES),
                                    ("user_data_format", USER_DATA_FORMATS)):
            value = getattr(self, field_name)
            if value not in allowed:
                raise ValueError(f"family {self.name}: {field_name}={value!r} is not one of {allowed}")
        if self.privilege is not None and self.privilege not in PRIVILEGES:
            raise ValueError(f"family {self.name}: privilege={self.privilege!r} is not one of "
                             f"{PRIVILEGES} or None")
        if self.secure_boot and (self.firmware != "uefi" or self.machine != "q35"):
            raise ValueError(f"family {self.name}: Secure Boot needs firmware='uefi' and machine='q35'")

    def as_root(self, command: str) -> str:
        """*command* wrapped to run as root through the family's privilege tool: the one
        place a family's own root commands get it (``run(sudo=True)`` goes the same way). A
        family whose login cannot become root raises :class:`CommandSpecError`."""
        try:
            return wrap(command, shell=self.shell, privilege=self.privilege, sudo=True)
        except CommandSpecError as exc:
            raise CommandSpecError(f"family {self.name}: {exc}") from None

    def clock_command_for(self, epoch: float) -> str | None:
        """The command (as root) that sets the guest clock to *epoch*, or None if the
        family has none."""
        if self.clock_command is None:
            return None
        return self.as_root(self.clock_command.format(
            epoch=epoch, utc=datetime.fromtimestamp(epoch, tz=timezone.utc)))

    def refresh_command_for(self, epoch: float) -> str:
        """The one root command, without the privilege tool (a reverted guest's helper runs
        it as root: :mod:`pytest_kvm.guest.revert`), that makes a guest whose memory was
        loaded back fresh again: its clock set to *epoch*, its random number generator
        reseeded; a :class:`ValueError` for a family without either."""
        if self.clock_command is None or self.reseed_command is None:
            raise ValueError(f"family {self.name} cannot set a guest's clock and reseed it")
        clock = self.clock_command.format(epoch=epoch,
                                          utc=datetime.fromtimestamp(epoch, tz=timezone.utc))
        return f"{clock} && {{ {self.reseed_command}; }}"

    def identity_command_for(self, hostname: str) -> str:
        """The command (as root) giving a clone *hostname* and a machine identity of its own;
        a :class:`ValueError` for a family without one or a name that is not a host name."""
        if self.identity_command is None:
            raise ValueError(f"family {self.name} cannot give a clone its own identity")
        if not _HOSTNAME.match(hostname):
            raise ValueError(f"{hostname!r} is not a host name (letters, digits, '-', '.')")
        return self.as_root(self.identity_command.format(hostname=hostname))


_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?\Z")


_UNIX = dict(user_data_format="cloud-config", login_user=LOGIN_USER, transport="ssh", guest_port=22,
             firmware="bios", machine="pc", disk_bus="virtio", nic_model="virtio-net-pci",
             seed_device="disk", shell="sh", seeds_host_key=True,
             direct_kernel_boot=False)
# what FreeBSD, OpenBSD and NetBSD share: base's sh, su/doas/sudo aside; the BSD banner
_BSD = dict(
    **_UNIX, ready_command=None, ready_exit_codes=(0,), login_shell="/bin/sh",
    boot_banner=BSD_BANNER,
    # BSD date(1) takes [[[[[cc]yy]mm]dd]HH]MM[.SS]; GNU date does not, so Linux has its own
    clock_command="date -u {utc:%Y%m%d%H%M.%S} >/dev/null",
    identity_command="hostname {hostname}",  # the hostname (no machine-id to renew)
    artifact_logs=(("messages.log", "cat /var/log/messages"), ("dmesg.txt", "dmesg")),
    reboot_command="shutdown -r now", poweroff_command="shutdown -p now",
    boot_id_command="sysctl -n kern.boottime")


# bash, as root: the hot-plugged NIC appears within seconds (PCI hotplug, driver probe)
LINUX_NETWORK_COMMAND = (
    "dev=; for i in $(seq 600); do for d in /sys/class/net/*; do "
    "[ \"$(cat \"$d/address\")\" = {mac} ] && dev=${{d##*/}}; done; [ -n \"$dev\" ] && break; "
    "sleep 0.1; done; [ -n \"$dev\" ] || {{ echo 'no interface with MAC '{mac}' appeared' >&2; "
    "exit 1; }}; sysctl -qw \"net.ipv6.conf.$dev.accept_ra=0\" && ip link set dev \"$dev\" mtu {mtu} up "
    "&& ip addr replace {ipv4}/{prefix4} dev \"$dev\" "
    "&& ip -6 addr replace {ipv6}/{prefix6} dev \"$dev\" nodad "
    # the rest of the networks' ranges never leaves through the default route (user networking)
    "&& ip route replace unreachable {scope4} && ip -6 route replace unreachable {scope6}")
HOSTS_MARK = "# pytest-kvm network"
UNIX_HOSTS_COMMAND = (f"sed -i '/ {HOSTS_MARK}$/d' /etc/hosts && "
                      f"printf '%s {HOSTS_MARK}\\n' {{lines}} >> /etc/hosts")


_FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family(
        name="linux", description="Linux with cloud-init (Debian, Ubuntu, Fedora, Alma/Rocky, Alpine)",
        **{**_UNIX, "direct_kernel_boot": True, "shell": "bash"},
        seed_format="nocloud",
        ready_command=CLOUD_INIT_WAIT, ready_exit_codes=(0, 2, 127),  # 2: done, recoverable errors
        login_shell="/bin/bash", privilege="sudo",
        boot_banner="Linux version ", panic_markers=PANIC_MARKERS,
        clock_command="date -u -s @{epoch:.3f} >/dev/null",
        # a new random machine-id: systemd-machine-id-setup would derive the same one from
        # the VM's UUID, which a clone shares with its golden
        identity_command=("hostname {hostname} && echo {hostname} > /etc/hostname"
                          " && sed -i 's/^127.0.1.1 .*/127.0.1.1 {hostname}/' /etc/hosts"
                          " && cat /proc/sys/kernel/random/uuid | tr -d - > /etc/machine-id"),
        # 32 bytes from the host (virtio-rng's /dev/hwrng) credited to the input pool
        # (RNDADDENTROPY), then a reseed of the kernel's generator from it (RNDRESEEDCRNG);
        # with perl where it is (Debian's perl-base: ~0.1 s under TCG), else python3 (cloud-init's
        # own interpreter, on every image of the family: ~0.4 s)
        reseed_command=("if command -v perl >/dev/null; then perl -e 'open(my $r, \"<\", \"/dev/hwrng\")"
                        " or die; read($r, my $d, 32) == 32 or die; open(my $f, \">\", \"/dev/random\")"
                        " or die; ioctl($f, 0x40085203, pack(\"ii\", 256, 32) . $d) or die;"
                        " ioctl($f, 0x5207, 0) or die'; else python3 -c 'import fcntl, struct;"
                        " d = open(\"/dev/hwrng\", \"rb\").read(32); f = open(\"/dev/random\", \"wb\");"
                        " fcntl.ioctl(f, 0x40085203, struct.pack(\"ii\", 256, 32) + d);"
                        " fcntl.ioctl(f, 0x5207)'; fi"),
        # virtiofs: in Linux since 5.4 (a module in Debian's cloud and generic kernels)
        share_mount_command="mkdir -p {mount_point} && mount -t virtiofs -o {mode} {tag} {mount_point}",
        reboot_command="systemctl reboot", poweroff_command="systemctl poweroff",
        network_command=LINUX_NETWORK_COMMAND, hosts_command=UNIX_HOSTS_COMMAND,
        # a new anonymous page comes zeroed: touch all free memory but 32 MiB once, in one
        # buffer (dd's block), and free it
        zero_free_memory_command=("n=$(awk '/^MemFree:/ {print int($2 / 1024) - 32}' /proc/meminfo);"
                                  " [ \"$n\" -gt 0 ] && dd if=/dev/zero of=/dev/null bs=\"$n\"M count=1"),
        artifact_logs=(("journal.txt", "journalctl -b --no-pager -o short-precise"),
                       ("cloud-init.log", "cat /var/log/cloud-init.log"),
                       ("cloud-init-output.log", "cat /var/log/cloud-init-output.log"))),
    Family(
        name="freebsd", description="FreeBSD BASIC-CLOUDINIT images (nuageinit, in base since 14.1)",
        **_BSD,
        # nuageinit reads both; config-2 is probed first, and it is what OpenStack gives it
        seed_format="configdrive",
        # base has no bash, no sudo and no doas: su, as a wheel member (docs/design/families.md)
        privilege="su", panic_markers=("panic: ",)),
    Family(
        name="openbsd", description="OpenBSD cloud images with cloud-init (community builds)",
        **_BSD, seed_format="nocloud",
        privilege="doas",  # doas(1) is in base, sudo is not
        panic_markers=("panic: ", "ddb{")),
    Family(
        name="netbsd", description="NetBSD cloud images with cloud-init (community builds)",
        **_BSD, seed_format="nocloud", privilege="sudo",
        panic_markers=("panic: ", "Stopped in pid")),
    Family(
        name="windows", description="Windows with cloudbase-init (images come from the user)",
        seed_format="configdrive", user_data_format="cloudbase-ps1", login_user=LOGIN_USER,
        transport="winrm", guest_port=5985,
        ready_command=CLOUDBASE_INIT_WAIT, ready_exit_codes=(0,),
        # UEFI: Windows 11 and Server 2022+ images are GPT/UEFI; q35 has AHCI built in
        firmware="uefi", machine="q35",
        # no virtio-win drivers assumed: AHCI disks and an Intel NIC have inbox drivers
        disk_bus="sata", nic_model="e1000", seed_device="cdrom",
        shell="cmd.exe", login_shell=None, privilege="admin",  # a local Administrator
        seeds_host_key=False, direct_kernel_boot=False,
        boot_banner=None, panic_markers=(),
        clock_command=("powershell.exe -NoProfile -NonInteractive -Command \"Set-Date -Date "
                       "([DateTimeOffset]::FromUnixTimeMilliseconds({epoch:.0f}000)).LocalDateTime "
                       "| Out-Null\""),
        reboot_command="shutdown /r /t 0", poweroff_command="shutdown /s /t 0",
        boot_id_command=("powershell.exe -NoProfile -NonInteractive -Command "
                         "\"(Get-CimInstance Win32_OperatingSystem).LastBootUpTime.ToString('o')\"")),
    Family(
        name="illumos", description="illumos with cloud-init: OmniOS cloud images",
        **{**_UNIX, "shell": "bash"},
        seed_format="nocloud",  # OmniOS's cloud-init finds an hsfs volume labelled cidata
        ready_command=CLOUD_INIT_WAIT, ready_exit_codes=(0, 2),  # the image has cloud-init
        login_shell="/bin/bash", privilege="sudo",  # as the vendor's default user
        boot_banner=None, panic_markers=("panic[cpu",),
        clock_command="/usr/bin/date -u {utc:%m%d%H%M%Y.%S} >/dev/null",
        identity_command="/usr/bin/hostname {hostname} && echo {hostname} > /etc/nodename",
        reboot_command="/usr/sbin/shutdown -y -i 6 -g 0",
        poweroff_command="/usr/sbin/shutdown -y -i 5 -g 0",
        boot_id_command="/usr/bin/kstat -p unix:0:system_misc:boot_time",
        artifact_logs=(("messages.log", "cat /var/adm/messages"),
                       ("cloud-init.log", "cat /var/log/cloud-init.log"),
                       ("svcs.txt", "/usr/bin/svcs -xv"))),
    Family(
        name="generic", description="any image with a NoCloud-capable cloud-init: no OS-specific assumption",
        **_UNIX,
        seed_format="nocloud", ready_command=None, ready_exit_codes=(0,),
        login_shell="/bin/sh", privilege="sudo",
        boot_banner=None, panic_markers=(), clock_command=None,
        reboot_command="reboot", poweroff_command="poweroff",
        boot_id_command="cat /proc/sys/kernel/random/boot_id"),
)}

FAMILIES: Mapping[str, Family] = MappingProxyType(_FAMILIES)


def family(name: str) -> Family:
    """The family called *name*; an unknown name is an :class:`ImageError` listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ImageError(f"unknown guest family {name!r}; known families: "
                         f"{', '.join(sorted(FAMILIES))}") from None


def family_for_name(image_name: str) -> str:
    """The family of a local image (``--kvm-image NAME=PATH``) from its name's first word:
    ``windows-2022`` is ``windows``, ``freebsd-14.3`` is ``freebsd``; anything else is
    ``linux`` (override it with the ``family=`` keyword of the marker or ``kvm.boot``)."""
    first = image_name.lower().split("-", 1)[0]
    return first if first in FAMILIES else "linux"
