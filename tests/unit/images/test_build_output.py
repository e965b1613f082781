"""What an image build shows: a line per phase (a bar on a terminal), the commands' own
output in the build log only, the log named when a command fails. The tools are fakes
on PATH (a real build is root's and the network's: ``pytest-kvm image build``)."""
import dataclasses
import os

import pytest

from pytest_kvm.errors import ImageError
from pytest_kvm.images import build
from pytest_kvm.images.recipes import load_recipe

FAKES = {
    # debootstrap ARGS... SUITE ROOT MIRROR: talks a lot, leaves a kernel and an initrd
    "debootstrap": 'root="$(eval echo \\${$(($#-1))})"; for i in $(seq 300); do echo "I: Unpacking p$i"; done; '
                   'mkdir -p "$root/boot" && touch "$root/boot/vmlinuz-6.1" "$root/boot/initrd.img-6.1"',
    "chroot": "exit 0",
    "systemctl": "exit 0",
    "mkfs.ext4": 'eval touch "\\${$(($#-1))}"',
    "qemu-img": 'eval touch "\\${$#}"',
}


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(build, "_check_prerequisites", lambda recipe: None)
    return bin_dir


def test_a_build_shows_phases_and_logs_the_rest(fake_tools, tmp_path):
    out = tmp_path / "images" / "debian-12" / ".stage-x"
    out.mkdir(parents=True)
    lines = []
    manifest = build.build_image(load_recipe("debian-12"), out, lines.append)
    assert [line.split(":")[0] for line in lines[:-1]] == list(build.PHASES)
    assert lines[-1].startswith("built debian-12 in")
    log = (out.parent / build.BUILD_LOG).read_text()
    assert log.count("I: Unpacking") == 300 and "$ debootstrap" in log
    assert manifest["kernel_version"] == "6.1" and (out / build.DISK).exists()


def test_a_failed_command_names_the_log(fake_tools, tmp_path):
    (fake_tools / "mkfs.ext4").write_text("#!/bin/bash\necho 'mkfs: no space' >&2\nexit 3\n")
    out = tmp_path / "images" / "debian-12" / ".stage-x"
    out.mkdir(parents=True)
    recipe = dataclasses.replace(load_recipe("debian-12"), commands=())
    with pytest.raises(ImageError) as info:
        build.build_image(recipe, out, lambda line: None)
    message = str(info.value)
    assert "mkfs.ext4 failed (exit 3)" in message and "mkfs: no space" in message
    assert str(out.parent / build.BUILD_LOG) in message
    assert "I: Unpacking" not in message  # the tail of the failed command only
