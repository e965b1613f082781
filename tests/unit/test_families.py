import dataclasses
from datetime import datetime, timezone

import pytest

from pytest_kvm import cloudinit
from pytest_kvm.errors import ImageError
from pytest_kvm.families import FAMILIES, Family, family, family_for_name

EXPECTED = {"linux", "freebsd", "openbsd", "netbsd", "windows", "generic"}


def test_every_required_family_is_there():
    assert set(FAMILIES) == EXPECTED
    for name, fam in FAMILIES.items():
        assert fam.name == name
        assert family(name) is fam


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ImageError) as info:
        family("plan9")
    message = str(info.value)
    assert "'plan9'" in message
    assert "freebsd, generic, linux, netbsd, openbsd, windows" in message


def test_table_is_read_only():
    with pytest.raises(TypeError):
        FAMILIES["beos"] = FAMILIES["generic"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        FAMILIES["linux"].login_user = "root"  # type: ignore[misc]


def test_linux_keeps_todays_behaviour():
    linux = family("linux")
    assert (linux.seed_format, linux.transport, linux.guest_port) == ("nocloud", "ssh", 22)
    assert (linux.firmware, linux.machine, linux.disk_bus, linux.nic_model) == (
        "bios", "pc", "virtio", "virtio-net-pci")
    assert linux.login_user == cloudinit.LOGIN_USER
    assert linux.readiness == "cloud-init" and "cloud-init status --wait" in linux.ready_command
    assert set(linux.ready_exit_codes) == {0, 2, 127}
    assert linux.direct_kernel_boot and linux.login_shell == "/bin/bash"
    assert linux.boot_banner == "Linux version "


def test_bsds_assume_no_linux_tools():
    for name in ("freebsd", "openbsd", "netbsd"):
        bsd = family(name)
        assert bsd.transport == "ssh" and bsd.readiness == "ssh"
        assert bsd.ready_command is None  # no cloud-init status, no systemd
        assert bsd.login_shell == "/bin/sh"  # bash is not in any BSD base system
        assert not bsd.direct_kernel_boot
        assert bsd.disk_bus == "virtio" and bsd.nic_model == "virtio-net-pci"
    assert family("openbsd").privilege == "doas"
    assert family("freebsd").seed_format == "configdrive"


def test_windows_is_winrm_uefi_sata_e1000_configdrive_cdrom():
    win = family("windows")
    assert (win.transport, win.guest_port, win.readiness) == ("winrm", 5985, "winrm")
    assert (win.seed_format, win.seed_device, win.user_data_format) == (
        "configdrive", "cdrom", "cloudbase-ps1")
    assert (win.firmware, win.machine, win.disk_bus, win.nic_model) == ("uefi", "q35", "sata", "e1000")
    assert win.shell == "cmd.exe" and win.login_user == cloudinit.LOGIN_USER
    assert not win.seeds_host_key and win.privilege is None
    assert "cloudbase-init" in win.ready_command


def test_generic_makes_no_os_specific_assumption():
    gen = family("generic")
    assert gen.readiness == "ssh" and gen.ready_command is None
    assert gen.boot_banner is None and gen.panic_markers == () and gen.clock_command is None
    assert gen.login_shell == "/bin/sh"


def test_invalid_values_are_refused():
    with pytest.raises(ValueError, match="nic_model"):
        dataclasses.replace(family("linux"), nic_model="rtl8139")
    with pytest.raises(ValueError, match="Secure Boot"):
        dataclasses.replace(family("linux"), secure_boot=True)  # bios + pc
    ok = dataclasses.replace(family("windows"), secure_boot=True)
    assert ok.secure_boot


def test_clock_commands():
    epoch = datetime(2024, 2, 29, 13, 5, 7, tzinfo=timezone.utc).timestamp()
    assert family("linux").clock_command_for(epoch) == f"sudo -n date -u -s @{epoch:.3f} >/dev/null"
    assert family("openbsd").clock_command_for(epoch) == "doas -n date -u 202402291305.07 >/dev/null"
    assert family("freebsd").clock_command_for(epoch) == "sudo -n date -u 202402291305.07 >/dev/null"
    assert f"FromUnixTimeMilliseconds({epoch:.0f}000)" in family("windows").clock_command_for(epoch)
    assert family("generic").clock_command_for(epoch) is None


def test_every_family_is_a_family():
    assert all(isinstance(f, Family) for f in FAMILIES.values())
    assert {f.console for f in FAMILIES.values()} == {"serial"}


@pytest.mark.parametrize("name, expected", [
    ("windows-2022", "windows"), ("FreeBSD-14.3", "freebsd"), ("openbsd", "openbsd"),
    ("debian-12-local", "linux"), ("mylinux", "linux"),
])
def test_family_of_a_local_image_from_its_name(name, expected):
    assert family_for_name(name) == expected


def test_identity_commands_fill_in_the_hostname():
    assert "hostname pytest-kvm-1-x-2 " in family("linux").identity_command.format(hostname="pytest-kvm-1-x-2")
    assert "/etc/machine-id" in family("linux").identity_command
    assert family("openbsd").identity_command.format(hostname="h") == "doas -n hostname h"
    assert family("windows").identity_command is None
