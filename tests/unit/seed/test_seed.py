import pycdlib
import pytest
import yaml

from isoread import read_iso
from pytest_kvm.seed import cloudinit

from pytest_kvm.seed import iso as seed
from pytest_kvm.families import family
from pytest_kvm.keys import KeyPair


@pytest.mark.parametrize("label, files", [
    ("cidata", {"user-data": b"#cloud-config\n{}\n", "meta-data": b"instance-id: x\n"}),
    ("config-2", {"openstack/latest/meta_data.json": b"{}", "openstack/latest/user_data": b"#cloud-config\n"}),
], ids=["nocloud", "configdrive-nested"])
def test_iso_read_back_by_name_with_its_label(label, files):
    assert read_iso(seed.iso_bytes(label, files)) == {**files, ".volume": label.encode()}


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
    data = yaml.safe_load(cloudinit.render_user_data(family("linux"), login_key=login, host_key=host,
                                                     extra={"runcmd": ["true"]}))
    user = data["users"][0]
    assert user["name"] == cloudinit.LOGIN_USER
    assert user["ssh_authorized_keys"] == [login.public_openssh]
    assert "passwd" not in user and user["lock_passwd"] is True
    assert data["ssh_keys"]["ed25519_private"] == host.private_openssh
    # password logins are refused by the image's sshd drop-in; setting ssh_pwauth here
    # would make cloud-init rewrite sshd_config and restart sshd during every boot
    assert "ssh_pwauth" not in data
    assert data["runcmd"] == ["true"]


# -- one builder for every family; ConfigDrive read back ---------------------------------------
import json  # noqa: E402

from pytest_kvm.errors import SeedError  # noqa: E402


def test_configdrive_read_back_with_keys_hostname_and_user_data():
    login, host = KeyPair.generate("login"), KeyPair.generate("host")
    built = seed.build_seed("configdrive", instance_id="pytest-kvm-1-ab-1", hostname="guest-1",
                            user_data=cloudinit.dump_cloud_config(cloudinit.plugin_user_data(login, host)),
                            public_keys={"pytest-kvm": login.public_openssh})
    found = read_iso(built.iso())
    assert found[".volume"] == b"config-2"
    assert sorted(k for k in found if k != ".volume") == [
        "openstack/latest/meta_data.json", "openstack/latest/user_data"]
    meta = json.loads(found["openstack/latest/meta_data.json"])
    assert meta["uuid"] == "pytest-kvm-1-ab-1"  # cloud-init refuses a meta_data.json without it
    assert meta["hostname"] == "guest-1" and meta["name"] == "guest-1"
    assert meta["public_keys"] == {"pytest-kvm": login.public_openssh}
    assert "admin_pass" not in meta
    user = yaml.safe_load(found["openstack/latest/user_data"])
    assert found["openstack/latest/user_data"].startswith(b"#cloud-config\n")
    assert user["users"][0]["ssh_authorized_keys"] == [login.public_openssh]


def test_configdrive_joliet_names_and_label_for_windows(tmp_path):
    # Windows reads a CD through its Joliet tree: names and label must be right there too
    path = seed.build_seed("configdrive", instance_id="i", hostname="h",
                           user_data=b"#ps1_sysnative\r\nexit 0\r\n").write(tmp_path / "seed.iso")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.joliet_vd.volume_identifier.decode("utf-16-be").rstrip()
        names = sorted(c.file_identifier().decode("utf-16-be")
                       for c in iso.list_children(joliet_path="/openstack/latest") if c.is_file())
    finally:
        iso.close()
    assert label == "config-2"
    assert names == ["meta_data.json", "user_data"]


def test_nocloud_from_the_same_inputs():
    built = seed.build_seed("nocloud", instance_id="i-1", hostname="h-1",
                            user_data=cloudinit.dump_cloud_config({"runcmd": ["true"]}),
                            public_keys={"pytest-kvm": "ssh-ed25519 AAAA k"})
    found = read_iso(built.iso())
    assert found[".volume"] == b"cidata"
    assert yaml.safe_load(found["meta-data"]) == {
        "instance-id": "i-1", "local-hostname": "h-1", "public-keys": ["ssh-ed25519 AAAA k"]}
    assert found["user-data"].startswith(b"#cloud-config\n")
    assert yaml.safe_load(found["user-data"]) == {"runcmd": ["true"]}
    assert sorted(found) == [".volume", "meta-data", "user-data"]  # no network file: DHCP


def test_nocloud_meta_data_without_keys_is_what_linux_guests_got_before():
    built = seed.build_seed("nocloud", instance_id="n", hostname="n", user_data=b"#cloud-config\n{}\n")
    assert built.files["meta-data"] == b"instance-id: n\nlocal-hostname: n\n"
    assert built.files["user-data"] == b"#cloud-config\n{}\n"


def test_seed_format_comes_from_the_family():
    labels = {name: seed.build_seed(family(name).seed_format, instance_id="i", hostname="h",
                                    user_data=b"x").label
              for name in ("linux", "freebsd", "windows")}
    assert labels == {"linux": "cidata", "freebsd": "config-2", "windows": "config-2"}


def test_unknown_seed_format_is_a_seed_error():
    with pytest.raises(SeedError, match="unknown seed format 'floppy'"):
        seed.build_seed("floppy", instance_id="i", hostname="h", user_data=b"")


def test_plugin_cloud_config_is_valid_for_new_cloud_init():
    from pytest_kvm.seed import cloudinit
    from pytest_kvm.keys import KeyPair
    data = cloudinit.plugin_user_data(KeyPair.generate("l"), KeyPair.generate("h"))
    # cloud-init 24+ schema: at least one key type; the seed's own, so nothing is generated
    assert data["ssh_genkeytypes"] == ["ed25519"]
    assert set(data["ssh_keys"]) == {"ed25519_private", "ed25519_public"}
    assert data["manage_etc_hosts"] is True
