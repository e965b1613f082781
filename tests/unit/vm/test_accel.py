import pytest

from pytest_kvm.vm.accel import choose_accel
from pytest_kvm.errors import HypervisorError


@pytest.fixture
def host(tmp_path):
    dev = tmp_path / "kvm"
    mods = tmp_path / "module"
    mods.mkdir()
    return dev, mods


def test_no_dev_kvm_falls_back_to_tcg(host):
    dev, mods = host
    accel = choose_accel("auto", dev=dev, sys_module=mods)
    assert (accel.name, accel.reason, accel.virt_type) == ("tcg", "/dev/kvm missing", "qemu")


def test_pvm_is_not_real_kvm(host):
    dev, mods = host
    dev.touch()
    (mods / "kvm").mkdir()
    (mods / "kvm_pvm").mkdir()
    assert choose_accel("auto", dev=dev, sys_module=mods).describe() == "tcg: kvm unusable (PVM)"


def test_real_kvm(host):
    dev, mods = host
    dev.touch()
    (mods / "kvm_intel").mkdir()
    accel = choose_accel("auto", dev=dev, sys_module=mods)
    assert (accel.name, accel.virt_type) == ("kvm", "kvm")


def test_kvm_requested_but_unusable_is_an_error_saying_why(host):
    dev, mods = host
    with pytest.raises(HypervisorError, match="/dev/kvm missing.*--kvm-accel auto"):
        choose_accel("kvm", dev=dev, sys_module=mods)


def test_tcg_requested():
    assert choose_accel("tcg").reason.startswith("requested")
