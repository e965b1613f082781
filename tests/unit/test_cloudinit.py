import pytest

from pytest_kvm import cloudinit
from pytest_kvm.errors import SeedError


def test_merge_dicts_recursively_lists_appended_scalars_replaced():
    base = {"a": {"x": 1, "y": [1]}, "l": [1], "s": "old"}
    merged = cloudinit.merge(base, {"a": {"y": [2], "z": 3}, "l": [2], "s": "new", "n": None})
    assert merged == {"a": {"x": 1, "y": [1, 2], "z": 3}, "l": [1, 2], "s": "new", "n": None}
    assert base == {"a": {"x": 1, "y": [1]}, "l": [1], "s": "old"}  # untouched


def test_user_users_are_added_not_replacing_ours():
    from pytest_kvm.keys import KeyPair
    data = cloudinit.user_data(KeyPair.generate("l"), KeyPair.generate("h"), {"users": [{"name": "alice"}]})
    assert [u["name"] for u in data["users"]] == [cloudinit.LOGIN_USER, "alice"]


def test_unserialisable_user_data_is_a_seed_error():
    with pytest.raises(SeedError, match="cannot be serialised"):
        cloudinit.dump_cloud_config({"runcmd": [object()]})


def test_cloud_config_header_and_yaml():
    out = cloudinit.dump_cloud_config({"write_files": [{"path": "/x", "content": "a: 'b'\n"}]})
    assert out.startswith(b"#cloud-config\n")
    import yaml
    assert yaml.safe_load(out)["write_files"][0]["content"] == "a: 'b'\n"
