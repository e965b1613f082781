"""The QEMU namespace: pass-through arguments and the user-mode NIC among them."""
import xml.etree.ElementTree as ET
from dataclasses import replace

from pytest_kvm.vm.libvirtxml.qemu import QEMU_NS, QemuCommandline, UserNic

NIC = UserNic(model="e1000", host_port=40022, guest_port=5985, slot="0x1e", mac="52:54:00:00:00:01")


def test_user_nic_arguments():
    assert NIC.args() == ["-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:5985",
                          "-device", "e1000,netdev=net0,addr=0x1e,mac=52:54:00:00:00:01"]
    assert replace(NIC, mac=None, restrict=True).args()[1::2] == [
        "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:5985", "e1000,netdev=net0,addr=0x1e"]


def test_user_nic_is_found_wherever_its_arguments_are():
    for nic in (NIC, replace(NIC, restrict=True, mac=None)):
        netdev, device = nic.args()[1::2]
        args = ["-device", device, "-S", "-netdev", "socket,id=other", "-netdev", netdev]
        assert UserNic.find(args) == (nic, 6, 1)
    ccw = replace(NIC, model="virtio-net-ccw", slot="fe.0.001e")  # s390x: a device number
    assert ccw.device() == "virtio-net-ccw,netdev=net0,devno=fe.0.001e,mac=52:54:00:00:00:01"
    assert UserNic.find(ccw.args()) == (ccw, 1, 3)
    assert UserNic.find(["-netdev", "user,id=net0"]) is None  # no forward: not ours
    assert UserNic.find(NIC.args()[:2]) is None  # no device on it


def test_setting_the_user_nic_replaces_it_in_place():
    line = QemuCommandline(args=["-S", *NIC.args(), "-no-user-config"])
    line.user_nic = replace(NIC, host_port=41000)
    assert line.args[0] == "-S" and line.args[-1] == "-no-user-config"
    assert line.args[2] == "user,id=net0,hostfwd=tcp:127.0.0.1:41000-:5985"
    empty = QemuCommandline()
    empty.user_nic = NIC
    assert empty.args == NIC.args() and empty.user_nic == NIC


def test_commandline_round_trip_keeps_environment_entries():
    xml = (f'<qemu:commandline xmlns:qemu="{QEMU_NS}"><qemu:arg value="-S"/>'
           '<qemu:env name="A" value="1"/><qemu:arg value="a,b=c"/></qemu:commandline>')
    line = QemuCommandline.from_xml(xml)
    assert line.args == ["-S", "a,b=c"]
    out = ET.fromstring(line.to_xml())
    assert [a.get("value") for a in out.findall(f"{{{QEMU_NS}}}arg")] == ["-S", "a,b=c"]
    assert out.find(f"{{{QEMU_NS}}}env").attrib == {"name": "A", "value": "1"}
    assert QemuCommandline.from_xml(line.to_xml()) == line
