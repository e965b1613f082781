import pycdlib
import yaml

from pytest_kvm import cloudinit, seed
from pytest_kvm.keys import KeyPair


def test_nocloud_iso_read_back():
    files = seed.nocloud_files(b"#cloud-config\n{}\n", b"instance-id: x\n", network_config=b"version: 2\n")
    found = seed.read_iso(seed.iso_bytes("cidata", files))
    assert found[".volume"] == b"cidata"
    assert found["user-data"] == b"#cloud-config\n{}\n"
    assert found["meta-data"] == b"instance-id: x\n"
    assert found["network-config"] == b"version: 2\n"
    assert "vendor-data" not in found


def test_nested_layout_for_configdrive():
    files = {"openstack/latest/meta_data.json": b"{}", "openstack/latest/user_data": b"#cloud-config\n"}
    found = seed.read_iso(seed.iso_bytes("config-2", files))
    assert found["openstack/latest/meta_data.json"] == b"{}"
    assert found["openstack/latest/user_data"] == b"#cloud-config\n"
    assert found[".volume"] == b"config-2"


def test_joliet_names_too(tmp_path):
    path = seed.write_seed(tmp_path / "seed.iso", "cidata", {"user-data": b"abc", "meta-data": b""})
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    names = [c.file_identifier().decode("utf-16-be")
             for c in iso.list_children(joliet_path="/") if c.is_file()]
    iso.close()
    assert sorted(names) == ["meta-data", "user-data"]


def test_seed_user_data_carries_keys():
    login, host = KeyPair.generate("login"), KeyPair.generate("host")
    data = yaml.safe_load(cloudinit.dump_cloud_config(cloudinit.user_data(login, host, {"runcmd": ["true"]})))
    user = data["users"][0]
    assert user["name"] == cloudinit.LOGIN_USER
    assert user["ssh_authorized_keys"] == [login.public_openssh]
    assert "passwd" not in user and user["lock_passwd"] is True
    assert data["ssh_keys"]["ed25519_private"] == host.private_openssh
    assert data["ssh_pwauth"] is False
    assert data["runcmd"] == ["true"]
