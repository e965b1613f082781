"""Image inspection with the real qemu-img (no mocks): the errors a user can meet."""
import subprocess

import pytest

from pytest_kvm.errors import ImageError
from pytest_kvm.images.qemu_img import create_overlay, inspect_image


def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture
def qcow2(tmp_path):
    path = tmp_path / "good.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "64M")
    return path


def test_good_qcow2(qcow2):
    assert inspect_image(qcow2) == "qcow2"


def test_missing_file_named(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.qcow2 does not exist"):
        inspect_image(tmp_path / "nope.qcow2")


def test_not_a_disk_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n" * 200)
    with pytest.raises(ImageError, match=r"notes\.txt is not a bootable disk image"):
        inspect_image(path)


def test_raw_with_mbr_is_accepted(tmp_path):
    path = tmp_path / "disk.raw"
    data = bytearray(1024 * 1024)
    data[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(data))
    assert inspect_image(path) == "raw"


def test_corrupt_qcow2(qcow2):
    with qcow2.open("r+b") as fh:  # smash the L1 table offset in the header
        fh.seek(40)
        fh.write(b"\xff" * 8)
    with pytest.raises(ImageError, match=str(qcow2)):
        inspect_image(qcow2)


def test_truncated_qcow2(tmp_path, qcow2):
    data = qcow2.read_bytes()
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(data[:100])
    with pytest.raises(ImageError, match=r"cut\.qcow2"):
        inspect_image(cut)


def test_missing_backing_file(tmp_path, qcow2):
    overlay = tmp_path / "overlay.qcow2"
    create_overlay(qcow2, "qcow2", overlay)
    assert oct(overlay.stat().st_mode & 0o777) == "0o600"
    qcow2.unlink()
    with pytest.raises(ImageError, match=r"overlay\.qcow2 cannot be opened"):
        inspect_image(overlay)


def test_overlay_leaves_base_untouched(tmp_path, qcow2):
    before = qcow2.read_bytes()
    create_overlay(qcow2, "qcow2", tmp_path / "o.qcow2")
    assert qcow2.read_bytes() == before
