"""Failures a user can meet: each is one clear error, in bounded time, leaving nothing behind."""
import subprocess
import time

import pytest

from pytest_kvm import BootTimeout, GuestCrashed, ImageError, SpecError


def qemu_processes(name):
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if "qemu-system" in line and f"guest={name}," in line]


def test_boot_timeout_names_phase_and_cleans_up(kvm):
    guest = kvm.create("debian-12", boot_timeout=5, reset="boot")
    t0 = time.monotonic()
    with pytest.raises(BootTimeout) as info:
        guest.start()
    assert time.monotonic() - t0 < 30
    assert info.value.phase == "ssh-banner"
    assert "did not finish within 5 s (boot_timeout=5 given to kvm.boot;" in str(info.value)
    assert guest.destroyed and not guest.console_log()  # work dir removed
    assert qemu_processes(guest.name) == []


def test_panic_fails_fast_with_console_tail(kvm):
    # 128 MiB is too little for the initramfs to unpack: the kernel panics within seconds
    guest = kvm.create("debian-12", memory_mib=128, reset="boot")
    t0 = time.monotonic()
    with pytest.raises(GuestCrashed) as info:
        guest.start()
    elapsed = time.monotonic() - t0
    assert elapsed < info.value.timeout / 2
    message = str(info.value)
    assert "guest console (last lines)" in message
    assert "panic" in message.lower() or "stopped" in message
    assert qemu_processes(guest.name) == []


def test_missing_image_is_an_image_error_before_boot(kvm, tmp_path):
    before = len(kvm.guests)
    with pytest.raises(ImageError, match=r"nope\.qcow2 does not exist"):
        kvm.boot(image=tmp_path / "nope.qcow2")
    assert len(kvm.guests) == before


def test_unknown_os(kvm):
    with pytest.raises(ImageError, match="unknown guest OS 'plan9'; known: debian-12, debian-13"):
        kvm.boot("plan9")


def test_bad_arguments(kvm):
    with pytest.raises(SpecError, match="cpus"):
        kvm.boot(cpus=-1)
    with pytest.raises(TypeError, match="colour"):
        kvm.boot(colour="red")


def test_user_data_that_breaks_cloud_init_is_reported(kvm):
    from pytest_kvm import CloudInitError
    guest = kvm.create("debian-12", reset="boot", user_data={"bootcmd": [["sh", "-c", "exit 3"]]})
    with pytest.raises(CloudInitError) as info:
        guest.start()
    assert "cloud-init reported an error" in str(info.value)
    assert "error" in info.value.status
    assert guest.destroyed and qemu_processes(guest.name) == []
