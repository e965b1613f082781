import xml.etree.ElementTree as ET
from pathlib import Path

from pytest_kvm.domain import META_NS, QEMU_NS, DomainSpec, domain_xml, read_metadata


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


def test_own_bootloader_when_no_kernel():
    root = parse(spec(kernel=None, initrd=None, cmdline=""))
    assert root.find("os/kernel") is None
    assert root.find("os/boot").get("dev") == "hd"


def test_kvm_uses_host_cpu_tcg_does_not():
    assert parse(spec(virt_type="kvm")).find("cpu").get("mode") == "host-passthrough"
    assert parse(spec()).find("cpu") is None


def test_values_are_escaped_not_formatted():
    root = parse(spec(cmdline='a="<b>&c"', name="n&<x>"))
    assert root.findtext("os/cmdline") == 'a="<b>&c"'
    assert root.findtext("name") == "n&<x>"


def test_metadata_round_trip():
    xml = domain_xml(spec(metadata={"owner_pid": "7", "run_dir": "/tmp/x"}))
    assert read_metadata(xml) == {"owner_pid": "7", "run_dir": "/tmp/x"}
    assert META_NS in xml
    assert read_metadata("<domain><name>other</name></domain>") is None


def test_serial_console_to_file():
    serial = parse(spec()).find("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").get("path") == "/w/console.log"


def test_retarget_moves_disk_console_and_forward_only():
    from pytest_kvm.domain import retarget
    saved = domain_xml(spec())
    moved = ET.fromstring(retarget(saved, disk=Path("/c/clone.qcow2"), console_log=Path("/c/console.log"),
                                   ssh_port=41000))
    original = ET.fromstring(saved)
    disks = moved.findall("devices/disk")
    assert disks[0].find("source").get("file") == "/c/clone.qcow2"
    assert disks[1].find("source").get("file") == "/w/seed.iso"  # the seed stays
    assert moved.find("devices/serial/source").get("path") == "/c/console.log"
    args = [a.get("value") for a in moved.iter(f"{{{QEMU_NS}}}arg")]
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:41000-:22" in args
    assert moved.findtext("name") == original.findtext("name")
    assert moved.findtext("memory") == original.findtext("memory")
