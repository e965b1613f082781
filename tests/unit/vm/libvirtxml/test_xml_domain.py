"""Domain XML objects: a domain built from scratch and one libvirt saved read and written back."""
import xml.etree.ElementTree as ET
from pathlib import Path

from pytest_kvm.vm.libvirtxml.devices import (Channel, Console, Controller, Disk, Filesystem,
                                              MemBalloon, Rng, Serial, Tpm)
from pytest_kvm.vm.libvirtxml.domain import (META_NS, Boot, Clock, Cpu, Domain, Features,
                                             MemoryBacking, Metadata, Os, Tcg, run_metadata)
from pytest_kvm.vm.libvirtxml.elements import OtherElement
from pytest_kvm.vm.libvirtxml.qemu import QEMU_NS, QemuCommandline

SAVED = (Path(__file__).parent.parent / "libvirt_saved_domain.xml").read_text()
ORDERED = {"devices", "os", f"{{{QEMU_NS}}}commandline"}  # where libvirt reads children in order


def canonical(element):
    """*element* as libvirt reads it: attributes and, but for lists, children in any order."""
    kids = [canonical(child) for child in element]
    if element.tag not in ORDERED:
        kids.sort()
    return (element.tag, sorted(element.attrib.items()), (element.text or "").strip(), kids)


def a_domain():
    return Domain(
        virt_type="kvm", name="n", uuid="u", genid="", metadata=Metadata(run={"owner_pid": "1"}),
        memory=512, memory_unit="MiB", memory_backing=MemoryBacking(source_type="memfd",
                                                                     access_mode="shared"),
        vcpus=2, os=Os(type="hvm", arch="x86_64", machine="q35", loader="/l", loader_readonly="yes",
                       loader_type="pflash", loader_secure="yes", nvram="/v", nvram_template="/t",
                       boot=[Boot(dev="hd"), Boot(dev="cdrom")]),
        features=Features(acpi=True, smm="on", tcg=Tcg(tb_cache=131072, tb_cache_unit="KiB")),
        cpu=Cpu(mode="host-passthrough"),
        clock=Clock(offset="utc"), on_poweroff="destroy", on_reboot="restart", on_crash="destroy",
        devices=[Disk(type="file", device="disk", driver_name="qemu", driver_type="qcow2",
                      source_file="/d", target_dev="sda", target_bus="sata"),
                 Disk(type="file", device="cdrom", source_file="/s", target_dev="sdb",
                      target_bus="sata", readonly=True),
                 Serial(type="pty", target_port="0"), Controller(type="usb", model="none"),
                 MemBalloon(model="none"), Channel(type="unix", target_type="virtio", target_name="a"),
                 Rng(model="virtio", backend_model="random", backend="/dev/urandom"),
                 Tpm(model="tpm-crb", backend_type="emulator", backend_version="2.0"),
                 Filesystem(type="mount", driver_type="virtiofs", source_dir="/h", target_dir="t")],
        commandline=QemuCommandline(args=["-a", "b"]))


def test_a_domain_built_from_objects_parses_back_to_the_same_objects():
    domain = a_domain()
    again = Domain.from_xml(domain.to_xml())
    assert again == domain
    assert [type(d) for d in again.devices] == [Disk, Disk, Serial, Controller, MemBalloon,
                                                Channel, Rng, Tpm, Filesystem]


def test_a_saved_domain_is_written_back_as_libvirt_wrote_it():
    domain = Domain.from_xml(SAVED)
    assert canonical(ET.fromstring(domain.to_xml())) == canonical(ET.fromstring(SAVED))
    assert Domain.from_xml(domain.to_xml()) == domain


def test_a_saved_domain_reads_as_objects():
    domain = Domain.from_xml(SAVED)
    assert (domain.name, domain.uuid, domain.vcpus, domain.memory) == (
        "pytest-kvm-14637-9201-2", "8623d44b-c0b7-4725-874a-140895bbda5d", 2, 524288)
    assert domain.os.kernel == "/cache/images/debian-12/vmlinuz" and domain.os.boot == [Boot(dev="hd")]
    assert [type(d).__name__ for d in domain.devices] == [
        "OtherElement", "Disk", "Disk", "Controller", "Controller", "Serial", "Console", "Channel",
        "OtherElement", "MemBalloon", "Rng"]
    system, seed = domain.devices_of(Disk)
    assert system.writable_disk and not seed.writable_disk
    assert seed.backing_chain == OtherElement(ET.Element("backingStore"))
    assert domain.devices_of(Serial)[0].target_type == "isa-serial"
    assert domain.metadata.run["run_id"] == "14637-9201"
    assert domain.commandline.user_nic.host_port == 34757


def test_changes_land_and_everything_libvirt_added_stays():
    domain = Domain.from_xml(SAVED)
    domain.devices_of(Disk)[0].source_file = "/new/disk.qcow2"
    domain.devices_of(Console)[0].source_path = "/new/console.log"
    out = ET.fromstring(domain.to_xml())
    disk = out.find("devices/disk")
    assert disk.find("source").get("file") == "/new/disk.qcow2"
    assert disk.find("address").get("slot") == "0x03"
    assert out.find("devices/console/source").attrib == {"path": "/new/console.log", "append": "on"}
    assert out.find("devices/serial/target/model").get("name") == "isa-serial"
    assert out.findtext("currentMemory") == "524288" and out.find("vcpu").get("placement") == "static"
    assert out.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"


def test_devices_keep_their_order_whatever_it_is():
    root = ET.fromstring(SAVED)
    devices = root.find("devices")
    shuffled = list(devices)[::-1]
    for device in list(devices):
        devices.remove(device)
    devices.extend(shuffled)
    domain = Domain.from_xml(ET.tostring(root, encoding="unicode"))
    assert [d.tag for d in domain.devices] == [d.tag for d in shuffled]
    assert [d.tag for d in ET.fromstring(domain.to_xml()).find("devices")] == [d.tag for d in shuffled]


def test_metadata_round_trip_keeps_other_applications_elements():
    xml = (f'<metadata><pk:run xmlns:pk="{META_NS}" owner_pid="7" run_dir="/tmp/&lt;x&gt;"/>'
           '<o:app xmlns:o="urn:other" v="1"/></metadata>')
    metadata = Metadata.from_xml(xml)
    assert metadata.run == {"owner_pid": "7", "run_dir": "/tmp/<x>"}
    metadata.run = {"owner_pid": "8"}
    out = ET.fromstring(metadata.to_xml())
    assert out.find(f"{{{META_NS}}}run").attrib == {"owner_pid": "8"}
    assert out.find("{urn:other}app").get("v") == "1"
    assert Metadata.from_xml(Metadata(run={"a": '"&'}).to_xml()).run == {"a": '"&'}
    # what libvirt's virDomainGetMetadata returns: the element without its namespace prefix
    assert run_metadata('<run owner_pid="7" run_dir="/tmp/x"/>') == {"owner_pid": "7", "run_dir": "/tmp/x"}


def test_odd_values_are_escaped():
    domain = a_domain()
    domain.name, domain.os.cmdline = "n&<'\">", 'console="ttyS0" a<b'
    again = Domain.from_xml(domain.to_xml())
    assert (again.name, again.os.cmdline) == ("n&<'\">", 'console="ttyS0" a<b')
