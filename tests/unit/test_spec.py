import pytest

from pytest_kvm.spec import SpecError, UnknownKeyword, check_arguments, guest_marker, guest_request


def test_defaults():
    req = guest_marker()
    assert (req.os, req.memory_mib, req.cpus, req.user_data, req.image) == (None, None, None, None, None)


def test_unknown_keyword_names_it_and_the_closest_one():
    with pytest.raises(UnknownKeyword, match=r"unknown keyword 'memroy' \(did you mean memory_mib\?\)"):
        guest_marker(memroy=512)
    with pytest.raises(TypeError, match="'shares'.*did you mean share"):  # a TypeError too
        guest_marker(shares={})
    with pytest.raises(UnknownKeyword, match="'zzz' .*the keywords are os, memory_mib, cpus"):
        guest_marker(zzz=1)


def test_arguments_are_checked_without_naming_internal_functions():
    for args, kwargs, word in (((), {"bogus": 1}, "bogus"), (("a", "b"), {}, "one positional"),
                               (("a",), {"os": "b"}, "os is given twice")):
        with pytest.raises(UnknownKeyword, match=word) as info:
            check_arguments(args, kwargs)
        assert "guest_request" not in str(info.value)
    check_arguments(("debian-12",), {"memory_mib": 512, "networks": ("lan",)})  # fine


@pytest.mark.parametrize("user_data, message", [
    ({"write_files": [{"path": "/x", "content": object()}]},
     'user_data["write_files"][0]["content"]: not serialisable (object)'),
    ({"runcmd": [["echo", 1], ("echo", len)]},
     'user_data["runcmd"][1][1]: not serialisable (builtin_function_or_method)'),
    ({object(): 1}, "user_data: the key <object object at"),
])
def test_unserialisable_user_data_names_the_key_path(user_data, message):
    with pytest.raises(SpecError) as info:
        guest_marker(user_data=user_data)
    assert str(info.value).startswith(message)


def test_serialisable_user_data_is_kept():
    data = {"packages": ["vim"], "write_files": [{"path": "/x", "content": "y", "permissions": 0o644}],
            "bootcmd": [("echo", "tuple")], "x": None}
    assert guest_marker(user_data=data).user_data == data


@pytest.mark.parametrize("kwargs, word", [
    ({"memory_mib": 0}, "memory_mib"),
    ({"memory_mib": "512"}, "memory_mib"),
    ({"cpus": -1}, "cpus"),
    ({"cpus": True}, "cpus"),
    ({"user_data": "#cloud-config"}, "user_data"),
    ({"image": 3}, "image"),
    ({"os": ""}, "os"),
    ({"family": "plan9"}, "family"),
    ({"family": ["linux"]}, "family"),
    ({"reset": ["boot"]}, "reset"),
    ({"seed": "cidata"}, "seed"),
    ({"unique": "yes"}, "unique"),
    ({"tpm": 1}, "tpm"),
])
def test_bad_values_name_the_keyword(kwargs, word):
    with pytest.raises(SpecError, match=word):
        guest_marker(**kwargs)


def test_boot_timeout_on_boot_and_marker():
    assert guest_request(boot_timeout=5).boot_timeout == 5.0
    assert guest_marker(boot_timeout=5).boot_timeout == 5.0  # one keyword list for both
    with pytest.raises(SpecError, match="boot_timeout"):
        guest_request(boot_timeout=0)
    with pytest.raises(UnknownKeyword, match="bogus"):
        guest_marker(bogus=5)


def test_share_forms_and_errors(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    req = guest_request(share={"/mnt/src": "src", "/mnt/out": {"path": tmp_path, "writable": True}})
    assert [(s.mount_point, s.source, s.writable) for s in req.share] == [
        ("/mnt/src", tmp_path / "src", False), ("/mnt/out", tmp_path, True)]
    for bad, word in (({"mnt": "src"}, "absolute"), ({"/mnt": "missing"}, "does not exist"),
                      (["/mnt"], "dict"), ({"/mnt": {"path": "src", "rw": True}}, "writable"),
                      ({"/mnt": {"path": "src", "writable": "yes"}}, "True or False"),
                      ({"/mnt": 3}, "must be a path")):
        with pytest.raises(SpecError, match=word):
            guest_request(share=bad)


def test_artifacts_are_a_list_of_paths():
    assert guest_marker(artifacts=["/var/log/syslog"]).artifacts == ("/var/log/syslog",)
    for bad in ("/var/log", [""], [3]):
        with pytest.raises(SpecError, match="artifacts"):
            guest_marker(artifacts=bad)


def test_family_seed_and_unique_are_kept():
    req = guest_marker(family="windows", seed="configdrive", unique=True)
    assert (req.family, req.seed, req.unique) == ("windows", "configdrive", True)
