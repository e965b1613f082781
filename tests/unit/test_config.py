from pathlib import Path

import pytest

from pytest_kvm.config import TCG_TIMEOUT_FACTOR, Settings, SettingsError


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTEST_KVM_CACHE_DIR", str(tmp_path))
    s = Settings.build()
    assert s.os_names == ("debian-12",) and s.default_os == "debian-12"
    assert s.cache_dir == tmp_path
    assert s.boot_timeout == 60 and s.memory_mib == 512 and TCG_TIMEOUT_FACTOR > 1


def test_images_and_duplicates():
    s = Settings.build(os_names=["a", "b", "a"], images=["win=/x/win.qcow2"])
    assert s.os_names == ("a", "b")
    assert s.local_images == {"win": Path("/x/win.qcow2")}


@pytest.mark.parametrize("kwargs, word", [
    ({"images": ["nopath"]}, "--kvm-image"),
    ({"images": ["=x"]}, "--kvm-image"),
    ({"keep": "sometimes"}, "--kvm-keep"),
    ({"accel": "xen"}, "--kvm-accel"),
    ({"boot_timeout": "soon"}, "kvm_boot_timeout"),
    ({"boot_timeout": "-1"}, "kvm_boot_timeout"),
    ({"memory_mib": "0"}, "kvm_memory_mib"),
])
def test_bad_values(kwargs, word):
    with pytest.raises(SettingsError, match=word):
        Settings.build(**kwargs)
