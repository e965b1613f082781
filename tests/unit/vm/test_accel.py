import pytest

from pytest_kvm.vm.accel import choose_accel, choose_remote_accel, kvm_init_error, probe_domain_xml
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


# libvirt's error when QEMU could not open /dev/kvm (the FakeHost with kvm_usable=False)
NO_KVM = ("internal error: qemu unexpectedly closed the monitor: Could not access KVM kernel "
          "module: Permission denied\n2026-12-06T04:43:48.747543Z qemu-system-x86_64: -accel "
          "kvm: failed to initialize kvm: Permission denied")


def test_kvm_advertised_but_unusable_falls_back_to_tcg_saying_why():
    accel = choose_remote_accel("auto", True, "ci@hv1", probe=lambda: NO_KVM)
    assert (accel.name, accel.virt_type) == ("tcg", "qemu")
    assert accel.reason == ("kvm advertised but unusable: Could not access KVM kernel module: "
                            "Permission denied")


def test_kvm_requested_on_a_host_whose_qemu_cannot_use_it_names_host_cause_and_fix():
    with pytest.raises(HypervisorError) as info:
        choose_remote_accel("kvm", True, "ci@hv1", probe=lambda: NO_KVM)
    message = str(info.value)
    assert "host ci@hv1" in message and "Permission denied" in message
    assert "/dev/kvm" in message and "--kvm-accel auto" in message


def test_kvm_that_starts_is_kept_and_tcg_requested_is_not_probed():
    assert choose_remote_accel("auto", True, "ci@hv1", probe=lambda: None).name == "kvm"
    # a probe that failed for another reason leaves the choice to KVM: guests say what is wrong
    assert choose_remote_accel("auto", True, "ci@hv1",
                               probe=lambda: "internal error: no space left").name == "kvm"

    def never():
        raise AssertionError("probed")
    assert choose_remote_accel("tcg", True, "ci@hv1", probe=never).name == "tcg"
    assert choose_remote_accel("auto", False, "ci@hv1", probe=never).name == "tcg"


def test_kvm_init_errors_are_told_from_others():
    assert kvm_init_error("qemu-system-x86_64: failed to initialize kvm: No such file or "
                          "directory") == "failed to initialize kvm: No such file or directory"
    assert kvm_init_error("Cannot allocate memory") is None
    # libvirt's words in front, as a start that failed under load says it: QEMU's words only
    assert kvm_init_error("internal error: process exited while connecting to monitor: "
                          "Could not access KVM kernel module: No such file or directory") \
        == "Could not access KVM kernel module: No such file or directory"


def test_the_probe_is_a_tiny_kvm_domain_of_its_own_name():
    import xml.etree.ElementTree as ET
    root = ET.fromstring(probe_domain_xml())
    assert root.get("type") == "kvm" and root.findtext("name").startswith("pytest-kvm-probe-")
    assert root.find("devices/disk") is None and int(root.findtext("memory")) <= 64
    assert ET.fromstring(probe_domain_xml()).findtext("name") != root.findtext("name")


def test_this_machine_is_probed_the_same_way():
    """/dev/kvm that looks usable but that QEMU cannot start with: TCG, saying so."""
    from pytest_kvm.vm.accel import Accel, confirm_kvm
    accel = confirm_kvm(Accel("kvm", "/dev/kvm usable"), "auto", "this machine", lambda: NO_KVM)
    assert accel.fallback and accel.name == "tcg"
    with pytest.raises(HypervisorError, match="on this machine QEMU cannot start with KVM"):
        confirm_kvm(Accel("kvm", "/dev/kvm usable"), "kvm", "this machine", lambda: NO_KVM)


def test_a_host_whose_only_kvm_is_pvm_runs_tcg_under_auto_and_refuses_kvm():
    """QEMU starts on kvm_pvm (the probe passes) but real guests fail on it: the host's
    modules decide first."""
    pvm = lambda: {"kvm_pvm"}  # noqa: E731
    accel = choose_remote_accel("auto", True, "ci@hv1", probe=lambda: None, modules=pvm)
    assert (accel.name, accel.fallback) == ("tcg", True)
    assert accel.reason == "kvm advertised but unusable: kvm unusable (PVM)"
    with pytest.raises(HypervisorError, match="host ci@hv1 cannot run KVM guests.*kvm_intel"):
        choose_remote_accel("kvm", True, "ci@hv1", probe=lambda: None, modules=pvm)
    both = lambda: {"kvm_pvm", "kvm_intel"}  # noqa: E731
    assert choose_remote_accel("auto", True, "ci@hv1", probe=lambda: None, modules=both).name == "kvm"
