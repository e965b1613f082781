import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_kvm.vm.domain import META_NS, QEMU_NS, DomainSpec, domain_xml, run_metadata


def spec(**overrides):
    values = dict(name="pytest-kvm-1-ab-1", virt_type="qemu", memory_mib=512, cpus=2,
                  disk=Path("/w/disk.qcow2"), disk_format="qcow2", seed=Path("/w/seed.iso"),
                  console_log=Path("/w/console.log"), ssh_port=40022,
                  kernel=Path("/c/vmlinuz"), initrd=Path("/c/initrd.img"),
                  cmdline="root=LABEL=rootfs console=ttyS0", metadata={"owner_pid": "42"})
    values.update(overrides)
    return DomainSpec(**values)


def parse(s):
    return ET.fromstring(domain_xml(s))


def test_basic_fields():
    root = parse(spec())
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "pytest-kvm-1-ab-1"
    assert root.find("memory").text == "512" and root.find("memory").get("unit") == "MiB"
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/kernel") == "/c/vmlinuz"
    assert root.findtext("os/initrd") == "/c/initrd.img"
    assert root.findtext("os/cmdline") == "root=LABEL=rootfs console=ttyS0"
    assert root.find("os/boot") is None


def test_disks_overlay_and_readonly_seed():
    disks = parse(spec()).findall("devices/disk")
    assert [d.find("source").get("file") for d in disks] == ["/w/disk.qcow2", "/w/seed.iso"]
    assert disks[0].find("driver").get("type") == "qcow2"
    assert disks[0].find("readonly") is None
    assert disks[1].find("readonly") is not None


def test_forward_binds_loopback_only():
    args = [a.get("value") for a in parse(spec()).findall(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert netdev == "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"
    assert "addr=0x1e" in args[args.index("-device") + 1]


def test_isolated_network_restricts_the_user_netdev_and_keeps_the_forward():
    args = [a.get("value") for a in parse(spec(network_mode="isolated")).findall(
        f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert netdev == "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"


def test_network_mode_is_checked():
    with pytest.raises(ValueError, match="network_mode"):
        spec(network_mode="bridge")


def test_own_bootloader_when_no_kernel():
    root = parse(spec(kernel=None, initrd=None, cmdline=""))
    assert root.find("os/kernel") is None
    assert root.find("os/boot").get("dev") == "hd"


def test_kvm_uses_host_cpu_tcg_a_named_model():
    assert parse(spec(virt_type="kvm")).find("cpu").get("mode") == "host-passthrough"
    cpu = parse(spec()).find("cpu")
    assert cpu.get("mode") == "custom" and cpu.findtext("model") == "qemu64"


def test_tcg_bounds_its_translation_cache_kvm_has_none():
    cache = parse(spec(tb_cache_mib=128)).find("features/tcg/tb-cache")
    assert cache.text == "128" and cache.get("unit") == "MiB"
    assert parse(spec(virt_type="kvm", tb_cache_mib=128)).find("features/tcg") is None
    assert parse(spec()).find("features/tcg") is None  # None: QEMU's default
    assert parse(spec()).find("features/acpi") is not None


def test_machine_type_is_pinned_when_given():
    assert parse(spec()).find("os/type").get("machine") == "pc"
    assert parse(spec(machine_type="pc-i440fx-7.2")).find("os/type").get("machine") == "pc-i440fx-7.2"


def test_every_domain_asks_for_a_generation_id():
    assert parse(spec()).find("genid") is not None


def test_values_are_escaped_not_formatted():
    root = parse(spec(cmdline='a="<b>&c"', name="n&<x>"))
    assert root.findtext("os/cmdline") == 'a="<b>&c"'
    assert root.findtext("name") == "n&<x>"


def read_metadata(xml):
    """The run metadata of a domain's XML, read as libvirt hands out the element."""
    run = ET.fromstring(xml).find(f"./metadata/{{{META_NS}}}run")
    return run_metadata(ET.tostring(run, encoding="unicode")) if run is not None else None


def test_metadata_round_trip():
    xml = domain_xml(spec(metadata={"owner_pid": "7", "run_dir": "/tmp/x"}))
    assert read_metadata(xml) == {"owner_pid": "7", "run_dir": "/tmp/x"}
    assert META_NS in xml
    assert read_metadata("<domain><name>other</name></domain>") is None
    # what libvirt's virDomainGetMetadata returns: the element without its namespace prefix
    assert run_metadata('<run owner_pid="7" run_dir="/tmp/x"/>') == {"owner_pid": "7",
                                                                     "run_dir": "/tmp/x"}


def test_serial_console_to_file():
    serial = parse(spec()).find("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").get("path") == "/w/console.log"


def test_a_remote_hosts_console_is_a_pty_read_through_libvirt():
    serial = parse(spec(console="pty")).find("devices/serial")
    assert serial.get("type") == "pty" and serial.find("source") is None
    assert serial.find("target").get("port") == "0"
    with pytest.raises(ValueError, match="console"):
        spec(console="tcp")


def saved_form(xml):
    """What libvirt's saved XML adds to ours: a UUID and a generation ID value."""
    root = ET.fromstring(xml)
    root.insert(1, ET.Element("uuid"))
    root.find("uuid").text = "11111111-2222-3333-4444-555555555555"
    root.find("genid").text = "66666666-7777-8888-9999-000000000000"
    return ET.tostring(root, encoding="unicode")


def test_retarget_gives_a_clone_its_own_identity_files_and_forward():
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    saved = saved_form(domain_xml(spec(metadata={"owner_pid": "1", "run_id": "old"})))
    clone = CloneIdentity(name="pytest-kvm-9-x-3", disk=Path("/c/clone.qcow2"),
                          console_log=Path("/c/console.log"), ssh_port=41000,
                          metadata={"owner_pid": "9", "run_id": "new"})
    moved = ET.fromstring(retarget(saved, clone))
    original = ET.fromstring(saved)
    disks = moved.findall("devices/disk")
    assert disks[0].find("source").get("file") == "/c/clone.qcow2"
    assert disks[1].find("source").get("file") == "/w/seed.iso"  # not asked to move: the seed stays
    assert moved.find("devices/serial/source").get("path") == "/c/console.log"
    args = [a.get("value") for a in moved.iter(f"{{{QEMU_NS}}}arg")]
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:41000-:22" in args
    assert f"virtio-net-pci,netdev=net0,addr=0x1e,mac={clone.mac}" in args
    assert moved.findtext("name") == "pytest-kvm-9-x-3"
    assert moved.findtext("uuid") == clone.uuid != original.findtext("uuid")
    assert moved.findtext("genid") == clone.genid != original.findtext("genid")
    assert read_metadata(ET.tostring(moved, encoding="unicode"))["owner_pid"] == "9"
    assert moved.findtext("memory") == original.findtext("memory")


@pytest.mark.parametrize("saved_shared", [True, False])
def test_retarget_gives_a_clone_shared_ram_only_with_shares(saved_shared):
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    saved = saved_form(domain_xml(spec(shared_memory=saved_shared, tb_cache_mib=64)))
    clone = CloneIdentity(name="c", disk=Path("/c/clone.qcow2"), console_log=Path("/c/log"),
                          ssh_port=41000)
    as_saved = ET.fromstring(retarget(saved, clone))
    assert (as_saved.find("memoryBacking") is not None) is saved_shared
    private = ET.fromstring(retarget(saved, replace(clone, shared_memory=False)))
    assert private.find("memoryBacking") is None
    shared = ET.fromstring(retarget(saved, replace(clone, shared_memory=True)))
    assert shared.find("memoryBacking/source").get("type") == "memfd"
    assert shared.find("memoryBacking/access").get("mode") == "shared"
    for moved in (as_saved, private, shared):  # the translation cache stays as saved
        assert moved.find("features/tcg/tb-cache").text == "64"


def test_two_clone_identities_differ():
    from pytest_kvm.vm.domain import CloneIdentity
    a, b = (CloneIdentity(name=n, disk=Path("/d"), console_log=Path("/c"), ssh_port=1) for n in "ab")
    assert a.uuid != b.uuid and a.genid != b.genid and a.mac != b.mac
    assert a.mac.startswith("52:54:00:") and len(a.mac) == 17


def test_retarget_moves_the_seed_when_asked():
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    clone = CloneIdentity(name="n", disk=Path("/c/d.qcow2"), console_log=Path("/c/l"), ssh_port=1,
                          seed=Path("/snap/seed.iso"))
    moved = ET.fromstring(retarget(saved_form(domain_xml(spec())), clone))
    assert moved.findall("devices/disk")[1].find("source").get("file") == "/snap/seed.iso"


# -- families: firmware, TPM, buses, NIC, seed device ---------------------------------------

from pytest_kvm.vm import domain  # noqa: E402
from pytest_kvm.families import FAMILIES, family  # noqa: E402


def family_spec(name, workdir=Path("/w"), **overrides):
    fields = domain.family_fields(family(name), workdir)
    values = dict(kernel=None, initrd=None, cmdline="")
    values.update(fields)
    values.update(overrides)
    return spec(**values)


def nic_args(root):
    args = [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    return args[args.index("-netdev") + 1], args[args.index("-device") + 1]


def test_default_spec_is_todays_linux_domain():
    root = parse(spec())
    assert root.find("os/type").get("machine") == "pc"
    assert root.find("os/loader") is None and root.find("os/nvram") is None
    assert root.find("devices/tpm") is None
    targets = [(d.get("device"), d.find("target").get("dev"), d.find("target").get("bus"))
               for d in root.findall("devices/disk")]
    assert targets == [("disk", "vda", "virtio"), ("disk", "vdb", "virtio")]
    assert nic_args(root)[1] == "virtio-net-pci,netdev=net0,addr=0x1e"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_builds_a_domain(name):
    fam = family(name)
    root = parse(family_spec(name))
    assert root.find("os/type").get("machine") == fam.machine
    assert root.find("os/boot").get("dev") == "hd"
    netdev, device = nic_args(root)
    assert netdev == f"user,id=net0,hostfwd=tcp:127.0.0.1:40022-:{fam.guest_port}"
    assert device == f"{fam.nic_model},netdev=net0,addr=0x1e"
    system, seed = root.findall("devices/disk")
    assert system.find("target").get("bus") == fam.disk_bus
    assert system.find("source").get("file") == "/w/disk.qcow2"
    assert seed.get("device") == fam.seed_device
    assert seed.find("source").get("file") == "/w/seed.iso"
    assert seed.find("readonly") is not None
    assert (root.find("os/loader") is not None) == (fam.firmware == "uefi")
    assert root.find("devices/serial/source").get("path") == "/w/console.log"


def test_windows_domain_uefi_sata_cdrom_e1000():
    root = parse(family_spec("windows", workdir=Path("/w")))
    loader = root.find("os/loader")
    assert loader.text == "/usr/share/OVMF/OVMF_CODE_4M.fd"
    assert (loader.get("readonly"), loader.get("type"), loader.get("secure")) == ("yes", "pflash", "no")
    nvram = root.find("os/nvram")
    assert nvram.text == "/w/OVMF_VARS.fd"
    assert nvram.get("template") == "/usr/share/OVMF/OVMF_VARS_4M.fd"
    system, seed = root.findall("devices/disk")
    assert (system.find("target").get("dev"), system.find("target").get("bus")) == ("sda", "sata")
    assert (seed.get("device"), seed.find("target").get("dev"), seed.find("target").get("bus")) == (
        "cdrom", "sdb", "sata")
    assert seed.find("driver").get("discard") is None  # a CD-ROM has nothing to discard
    assert nic_args(root)[1].startswith("e1000,")
    assert root.find("features/smm") is None


def test_cdrom_seed_next_to_a_virtio_disk_gets_the_first_sata_name():
    root = parse(spec(seed_device="cdrom"))
    targets = [(d.find("target").get("dev"), d.find("target").get("bus")) for d in root.findall("devices/disk")]
    assert targets == [("vda", "virtio"), ("sda", "sata")]


def test_tpm_is_an_swtpm_emulator():
    root = parse(spec(tpm=True))
    tpm = root.find("devices/tpm")
    assert tpm.get("model") == "tpm-crb"
    assert tpm.find("backend").get("type") == "emulator"
    assert tpm.find("backend").get("version") == "2.0"
    assert domain.family_fields(family("windows"), Path("/w"), tpm=True)["tpm"] is True
    assert domain.family_fields(family("windows"), Path("/w"))["tpm"] is False


def test_secure_boot_uses_secboot_code_ms_vars_and_smm():
    root = parse(spec(machine="q35", firmware="uefi", secure_boot=True, nvram=Path("/w/v.fd"),
                      firmware_dir=Path("/fw")))
    assert root.find("os/loader").text == "/fw/OVMF_CODE_4M.secboot.fd"
    assert root.find("os/loader").get("secure") == "yes"
    assert root.find("os/nvram").get("template") == "/fw/OVMF_VARS_4M.ms.fd"
    assert root.find("features/smm").get("state") == "on"


def test_inconsistent_specs_are_refused():
    with pytest.raises(ValueError, match="nvram"):
        spec(firmware="uefi")
    with pytest.raises(ValueError, match="Secure Boot"):
        spec(firmware="uefi", nvram=Path("/w/v.fd"), secure_boot=True)  # machine pc
    with pytest.raises(ValueError, match="disk_bus"):
        spec(disk_bus="ide")


def test_image_firmware_overrides_the_family():
    fields = domain.family_fields(family("windows"), Path("/w"), firmware="bios")
    assert fields["firmware"] == "bios" and fields["nvram"] is None
    fields = domain.family_fields(family("linux"), Path("/w"), firmware="uefi")
    assert fields["nvram"] == Path("/w/OVMF_VARS.fd")
    assert parse(spec(**{**fields, "kernel": None})).find("os/loader") is not None


def test_host_problems_name_the_missing_package(tmp_path, monkeypatch):
    uefi = spec(firmware="uefi", nvram=tmp_path / "v.fd", firmware_dir=tmp_path, tpm=True)
    monkeypatch.setattr(domain.shutil, "which", lambda name: None)
    problems = domain.host_problems(uefi)
    assert len(problems) == 3
    assert all("'ovmf'" in p for p in problems[:2]) and "swtpm" in problems[2]
    (tmp_path / "OVMF_CODE_4M.fd").write_bytes(b"")
    (tmp_path / "OVMF_VARS_4M.fd").write_bytes(b"")
    monkeypatch.setattr(domain.shutil, "which", lambda name: "/usr/bin/swtpm")
    assert domain.host_problems(uefi) == []
    assert domain.host_problems(spec()) == []


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_retarget_every_family_shape(name):
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    fam = family(name)
    saved = domain_xml(family_spec(name))
    moved = ET.fromstring(retarget(saved, CloneIdentity(
        name="c", disk=Path("/c/clone.qcow2"), console_log=Path("/c/console.log"), ssh_port=41000,
        guest_port=fam.guest_port, nvram=Path("/c/OVMF_VARS.fd"), mac="52:54:00:00:00:01")))
    system, seed = moved.findall("devices/disk")
    assert system.find("source").get("file") == "/c/clone.qcow2"
    assert seed.find("source").get("file") == "/w/seed.iso"
    assert nic_args(moved)[0] == f"user,id=net0,hostfwd=tcp:127.0.0.1:41000-:{fam.guest_port}"
    assert nic_args(moved)[1] == nic_args(ET.fromstring(saved))[1] + ",mac=52:54:00:00:00:01"
    if fam.firmware == "uefi":
        assert moved.find("os/nvram").text == "/c/OVMF_VARS.fd"
        assert moved.find("os/nvram").get("template") == "/usr/share/OVMF/OVMF_VARS_4M.fd"


@pytest.mark.parametrize("saved_mode", ["user", "isolated"])
def test_retarget_gives_a_clone_its_own_network_mode(saved_mode):
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    saved = domain_xml(spec(network_mode=saved_mode))

    def clone(mode):
        return ET.fromstring(retarget(saved, CloneIdentity(
            name="c", disk=Path("/c/d.qcow2"), console_log=Path("/c/console.log"), ssh_port=41000,
            mac="52:54:00:00:00:01", network_mode=mode)))

    assert nic_args(clone("isolated"))[0] == "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:41000-:22"
    assert nic_args(clone("user"))[0] == "user,id=net0,hostfwd=tcp:127.0.0.1:41000-:22"
    assert nic_args(clone("isolated"))[1] == "virtio-net-pci,netdev=net0,addr=0x1e,mac=52:54:00:00:00:01"
    # retargeting again (a user golden frozen from a clone) keeps working
    again = retarget(ET.tostring(clone("isolated"), encoding="unicode"), CloneIdentity(
        name="d", disk=Path("/d/d.qcow2"), console_log=Path("/d/console.log"), ssh_port=42000))
    assert nic_args(ET.fromstring(again))[0] == "user,id=net0,hostfwd=tcp:127.0.0.1:42000-:22"


def test_retarget_drops_the_saved_backing_chain_of_a_sata_disk():
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    root = parse(family_spec("windows"))
    ET.SubElement(root.find("devices/disk"), "backingStore", type="file")
    moved = ET.fromstring(retarget(ET.tostring(root, encoding="unicode"), CloneIdentity(
        name="c", disk=Path("/c/d.qcow2"), console_log=Path("/c/console.log"), ssh_port=1,
        guest_port=5985)))
    assert moved.find("devices/disk/backingStore") is None
    assert moved.find("os/nvram").text == "/w/OVMF_VARS.fd"  # not asked to move: untouched


def test_guest_agent_channel_lets_libvirt_pick_the_socket():
    channels = parse(spec()).findall("devices/channel")
    assert len(channels) == 1 and channels[0].get("type") == "unix"
    assert channels[0].find("source") is None  # libvirt makes the socket in its own state dir
    target = channels[0].find("target")
    assert (target.get("type"), target.get("name")) == ("virtio", "org.qemu.guest_agent.0")


# -- retarget of what libvirt saved, whatever the order of its devices ----------------------
SAVED = (Path(__file__).parent / "libvirt_saved_domain.xml").read_text()


def reordered(xml):
    """*xml* with its devices reversed (seed before system disk, console before serial) and
    the NIC's arguments in another order, as another libvirt might write it."""
    root = ET.fromstring(xml)
    devices = root.find("devices")
    reversed_devices = list(devices)[::-1]
    for device in reversed_devices:
        devices.remove(device)
    devices.extend(reversed_devices)
    line = root.find(f"{{{QEMU_NS}}}commandline")
    nic_args = list(line)
    for arg in nic_args:
        line.remove(arg)
    for value in ("-device", nic_args[3].get("value"), "-netdev", nic_args[1].get("value")):
        ET.SubElement(line, f"{{{QEMU_NS}}}arg", value=value)
    return ET.tostring(root, encoding="unicode")


@pytest.mark.parametrize("xml", [SAVED, reordered(SAVED)], ids=["as-saved", "reordered"])
def test_retarget_of_a_libvirt_saved_domain_in_any_device_order(xml):
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    clone = CloneIdentity(name="pytest-kvm-9-x-3", disk=Path("/c/clone.qcow2"),
                          console_log=Path("/c/console.log"), ssh_port=41000, seed=Path("/s/seed.iso"),
                          metadata={"owner_pid": "9"}, mac="52:54:00:00:00:09")
    moved = ET.fromstring(retarget(xml, clone))
    by_target = {d.find("target").get("dev"): d for d in moved.iter("disk")}
    assert by_target["vda"].find("source").get("file") == "/c/clone.qcow2"
    assert by_target["vda"].find("address").get("slot") == "0x03"  # libvirt's own additions stay
    assert by_target["vdb"].find("source").get("file") == "/s/seed.iso"
    assert by_target["vdb"].find("backingStore") is not None  # only the system disk's chain goes
    assert {d.find("source").get("path") for d in moved.iter() if d.tag in ("serial", "console")} == {
        "/c/console.log"}
    args = [a.get("value") for a in moved.iter(f"{{{QEMU_NS}}}arg")]
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:41000-:22" in args
    assert "virtio-net-pci,netdev=net0,addr=0x1e,mac=52:54:00:00:00:09" in args
    assert len(args) == len([a for a in ET.fromstring(xml).iter(f"{{{QEMU_NS}}}arg")])
    assert (moved.findtext("name"), moved.findtext("uuid"), moved.findtext("genid")) == (
        clone.name, clone.uuid, clone.genid)
    assert read_metadata(ET.tostring(moved, encoding="unicode")) == {"owner_pid": "9"}
    assert moved.findtext("currentMemory") == "524288"
    original = ET.fromstring(xml)
    assert [d.tag for d in moved.find("devices")] == [d.tag for d in original.find("devices")]


def test_retarget_refuses_a_domain_without_exactly_one_system_disk():
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    clone = CloneIdentity(name="c", disk=Path("/c/d"), console_log=Path("/c/l"), ssh_port=1)
    root = ET.fromstring(SAVED)
    devices = root.find("devices")
    devices.append(ET.fromstring('<disk type="file" device="disk"><source file="/x"/></disk>'))
    with pytest.raises(ValueError, match="2 writable disks"):
        retarget(ET.tostring(root, encoding="unicode"), clone)
    for disk in devices.findall("disk"):
        devices.remove(disk)
    with pytest.raises(ValueError, match="0 writable disks"):
        retarget(ET.tostring(root, encoding="unicode"), clone)


def test_retarget_gives_owner_metadata_to_a_domain_saved_without():
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    saved = domain_xml(spec(metadata={}))
    moved = retarget(saved, CloneIdentity(name="c", disk=Path("/c/d"), console_log=Path("/c/l"),
                                          ssh_port=1, metadata={"owner_pid": "5"}))
    assert read_metadata(saved) is None and read_metadata(moved) == {"owner_pid": "5"}


def _planted(change):
    root = ET.fromstring(SAVED)
    change(root)
    return ET.tostring(root, encoding="unicode")


def _add_arg(root, *values):
    for value in values:
        ET.SubElement(root.find(f"{{{QEMU_NS}}}commandline"), f"{{{QEMU_NS}}}arg", value=value)


def _set_emulator(root, path):
    root.find("devices/emulator").text = path


def _add_device(root, xml):
    root.find("devices").append(ET.fromstring(xml))


@pytest.mark.parametrize("change, named", [
    (lambda r: _add_arg(r, "-device", "virtio-rng-pci,id=x"), "QEMU arguments"),
    (lambda r: _add_arg(r, "-chardev", "socket,id=c,path=/tmp/x"), "QEMU arguments"),
    (lambda r: _set_emulator(r, "/tmp/evil"), "the emulator '/tmp/evil'"),
    (lambda r: _add_device(r, "<filesystem type='mount'><source dir='/'/><target dir='r'/></filesystem>"),
     "a <filesystem> device"),
    (lambda r: _add_device(r, "<disk type='block' device='disk'><source dev='/dev/sda'/>"
                              "<target dev='vdc'/><readonly/></disk>"), "a disk of type 'block'"),
    (lambda r: _add_device(r, "<serial type='pipe'><source path='/tmp/p'/></serial>"),
     "<serial type='pipe'>"),
    (lambda r: _add_device(r, "<rng model='virtio'><backend model='random'>/etc/shadow</backend></rng>"),
     "random number source '/etc/shadow'"),
], ids=["device-arg", "chardev-arg", "emulator", "filesystem", "block-disk", "pipe-serial", "rng"])
def test_retarget_refuses_a_saved_domain_with_what_the_plugin_did_not_put_there(change, named):
    """Finding 3: a saved XML from the cache is a QEMU command line run by this user."""
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    from pytest_kvm.vm.saved import ForeignDomain
    clone = CloneIdentity(name="c", disk=Path("/c/d"), console_log=Path("/c/l"), ssh_port=1)
    retarget(SAVED, clone)  # the real one passes
    with pytest.raises(ForeignDomain, match=re.escape(named)):
        retarget(_planted(change), clone)


def test_an_arm64_guest_is_a_virt_machine_with_a_named_cpu_and_no_acpi():
    from pytest_kvm.arches import ARCHES
    root = parse(spec(arch=ARCHES["arm64"], cmdline="root=LABEL=rootfs console=ttyAMA0"))
    os_type = root.find("os/type")
    assert (os_type.get("arch"), os_type.get("machine")) == ("aarch64", "virt")
    assert root.find("cpu/model").text == "cortex-a57"
    assert root.find("features/acpi") is None
    assert root.findtext("os/kernel") == "/c/vmlinuz"


def test_a_foreign_guest_needs_direct_kernel_boot_and_tcg():
    from pytest_kvm.arches import ARCHES
    with pytest.raises(ValueError, match="boots its kernel directly"):
        spec(arch=ARCHES["arm64"], kernel=None)
    with pytest.raises(ValueError, match="emulated"):
        spec(arch=ARCHES["riscv64"], virt_type="kvm")


def test_firmware_files_follow_the_architecture():
    from pytest_kvm.arches import ARCHES
    from pytest_kvm.vm.domain import firmware_files
    names = [Path(p).name for p in firmware_files(spec(arch=ARCHES["riscv64"]))]
    assert "opensbi-riscv64-generic-fw_dynamic.bin" in names and "bios-256k.bin" not in names
    assert "bios-256k.bin" in [Path(p).name for p in firmware_files(spec())]
    assert "slof.bin" in [Path(p).name for p in firmware_files(spec(arch=ARCHES["ppc64el"]))]


def test_a_ppc64el_guest_is_a_pseries_machine_with_libvirts_cpu_name():
    """pseries under TCG: libvirt's TCG model list spells the CPU POWER9; SLOF then the
    kernel; no ACPI, no VM generation ID (x86's)."""
    from pytest_kvm.arches import ARCHES
    root = parse(spec(arch=ARCHES["ppc64el"], cmdline="root=LABEL=rootfs console=hvc0"))
    os_type = root.find("os/type")
    assert (os_type.get("arch"), os_type.get("machine")) == ("ppc64le", "pseries")
    assert root.find("cpu/model").text == "POWER9"
    assert root.find("features/acpi") is None and root.find("devices/genid") is None
    assert root.findtext("os/kernel") == "/c/vmlinuz"


def test_an_arm64_vendor_image_boots_from_its_disk_with_aavmf():
    """No kernel of its own to boot directly: AAVMF (Debian's qemu-efi-aarch64) and the
    guest's own copy of its variable store; riscv64 has no UEFI firmware here."""
    from pytest_kvm.arches import ARCHES
    root = parse(spec(arch=ARCHES["arm64"], kernel=None, initrd=None, firmware="uefi",
                      nvram=Path("/w/OVMF_VARS.fd")))
    assert root.find("os/loader").text == "/usr/share/AAVMF/AAVMF_CODE.fd"
    assert root.find("os/loader").get("type") == "pflash"
    assert root.find("os/nvram").get("template") == "/usr/share/AAVMF/AAVMF_VARS.fd"
    assert root.find("os/kernel") is None and root.find("os/boot").get("dev") == "hd"
    with pytest.raises(ValueError, match="no UEFI firmware for riscv64"):
        spec(arch=ARCHES["riscv64"], kernel=None, firmware="uefi", nvram=Path("/w/v.fd"))


def test_a_missing_aavmf_names_its_package(tmp_path):
    from pytest_kvm.arches import ARCHES
    arm = spec(arch=ARCHES["arm64"], kernel=None, firmware="uefi", nvram=tmp_path / "v.fd",
               firmware_dir=tmp_path)
    problems = domain.host_problems(arm)
    assert len(problems) == 2 and all("'qemu-efi-aarch64'" in p for p in problems)


def test_an_arm64_guest_has_spare_root_ports_for_hot_plugged_shares():
    """libvirt puts each virtio device on a root port of its own, taking listed ports
    first: the domain lists one for each (two disks, the RNG, the agent's virtio-serial
    controller) plus ``hotplug_ports`` more, which stay empty for the shares."""
    from pytest_kvm.arches import ARCHES
    root = parse(spec(arch=ARCHES["arm64"]))
    controllers = [(c.get("model"), c.get("index")) for c in root.findall("devices/controller")
                   if c.get("type") == "pci"]
    assert controllers[0] == ("pcie-root", "0")
    assert [m for m, _ in controllers[1:]] == ["pcie-root-port"] * (4 + ARCHES["arm64"].hotplug_ports)
    assert ARCHES["arm64"].hotplug_ports == 2
    assert not [c for c in parse(spec()).findall("devices/controller") if c.get("type") == "pci"]


def test_an_s390x_guest_has_its_user_nic_on_channel_io():
    """No PCI root for the user NIC on s390x: virtio-net-ccw at device number 0x001e of
    the guest's channel subsystem 0 (what the image's networkd file matches), and a clone
    keeps it there."""
    from pytest_kvm.arches import ARCHES
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    s390x = ARCHES["s390x"]
    xml = domain_xml(spec(arch=s390x, cmdline="root=LABEL=rootfs console=ttysclp0"))
    root = ET.fromstring(xml)
    assert (root.find("os/type").get("arch"), root.find("os/type").get("machine")) == \
        ("s390x", "s390-ccw-virtio")
    args = [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    assert args[args.index("-device") + 1].startswith("virtio-net-ccw,netdev=net0,devno=fe.0.001e")
    assert s390x.nic_path == "ccw-0.0.001e"
    clone = ET.fromstring(retarget(xml, CloneIdentity(name="c", disk=Path("/c/d"), ssh_port=4,
                                                      console_log=Path("/c/l"), mac="52:54:00:00:00:09")))
    args = [a.get("value") for a in clone.iter(f"{{{QEMU_NS}}}arg")]
    assert "virtio-net-ccw,netdev=net0,devno=fe.0.001e,mac=52:54:00:00:00:09" in args


def test_a_saved_pseries_domain_may_hold_the_panic_device_libvirt_adds():
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    clone = CloneIdentity(name="c", disk=Path("/c/d"), console_log=Path("/c/l"), ssh_port=1)
    planted = _planted(lambda root: _add_device(root, "<panic model='pseries'/>"))
    assert "<panic" in retarget(planted, clone)


def test_only_x86_guests_have_a_vm_generation_id():
    from pytest_kvm.arches import ARCHES
    from pytest_kvm.vm.domain import CloneIdentity, retarget
    assert parse(spec()).find("genid") is not None
    arm = domain_xml(spec(arch=ARCHES["arm64"]))
    assert ET.fromstring(arm).find("genid") is None
    clone = retarget(arm, CloneIdentity(name="c", disk=Path("/w/c.qcow2"), console_log=Path("/w/c.log"),
                                        ssh_port=1))
    assert ET.fromstring(clone).find("genid") is None
