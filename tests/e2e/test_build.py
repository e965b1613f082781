"""Building base images (pytest_kvm/build.py) for real: debootstrap from the Debian mirror,
the recipe's files, masks, removals and commands, mkfs, qcow2, the manifest.

SLOW (about a minute): ``test_tiny_recipe_is_built_into_the_cache`` runs debootstrap
(minbase) from the mirror the image recipes use (PYTEST_KVM_DEBIAN_MIRROR or the recipe's),
into a temporary cache. It needs root and that mirror, as building the suite's own images
does. Its recipe has no kernel package (stand-in files take the place of the kernel and
initrd), which is what makes it cheap."""
import hashlib
import json
import stat
import subprocess

from pytest_kvm.images.store import ImageStore
from pytest_kvm.images.recipes import load_recipe

STAND_IN_KERNEL = "not a kernel: pytest-kvm's build test\n"


def tiny_recipe(directory, mirror: str) -> None:
    (directory / "tiny").mkdir(parents=True)
    (directory / "tiny" / "recipe.toml").write_text(f'''
description = "pytest-kvm build test: minbase, no kernel"
family = "linux"
builder = "debootstrap"
suite = "bookworm"
mirror = "{mirror}"
variant = "minbase"
packages = ["netbase"]
disk_size = "512M"
login_user = "pytest"
kernel_cmdline = "root=LABEL=rootfs console=ttyS0"
mask_units = ["e2scrub_reap.service"]
remove = ["etc/issue.net"]
truncate = ["etc/motd"]
commands = [["sh", "-c", "echo ran in the chroot > /etc/from-chroot"]]

[files]
"etc/pytest-kvm-build-test" = "written by the recipe\\n"
"boot/vmlinuz-0.0-stand-in" = "{STAND_IN_KERNEL.strip()}\\n"
"boot/initrd.img-0.0-stand-in" = "not an initrd\\n"
''')


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def debugfs(raw, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(raw)], capture_output=True, text=True,
                          check=True).stdout


def check_built(image, manifest: dict) -> None:
    """What every built image has: its manifest's files with their sha256, all read-only."""
    directory = image.disk.parent
    assert set(manifest["sha256"]) == {image.disk.name, image.kernel.name, image.initrd.name}
    for name, digest in manifest["sha256"].items():
        assert sha256(directory / name) == digest, name
    for path in (image.disk, image.kernel, image.initrd, directory / "manifest.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o444, path
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image.disk)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == manifest["format"] == "qcow2"
    assert "backing-filename" not in info


def test_tiny_recipe_is_built_into_the_cache(tmp_path):
    recipes = tmp_path / "recipes"
    tiny_recipe(recipes, load_recipe("debian-12").mirror_url())
    said = []
    image = ImageStore(tmp_path / "cache", recipe_dir=recipes, progress=said.append).ensure_built("tiny")
    manifest = json.loads((image.disk.parent / "manifest.json").read_text())
    check_built(image, manifest)
    recipe = load_recipe("tiny", recipes)
    assert {k: manifest[k] for k in ("name", "family", "recipe_digest", "suite", "kernel_version",
                                     "kernel_cmdline", "login_user")} == {
        "name": "tiny", "family": "linux", "recipe_digest": recipe.digest, "suite": "bookworm",
        "kernel_version": "0.0-stand-in", "kernel_cmdline": "root=LABEL=rootfs console=ttyS0",
        "login_user": "pytest"}
    assert manifest["built_at"] and manifest["build_seconds"] > 0
    assert image.kernel.read_text() == STAND_IN_KERNEL
    assert image.cmdline == manifest["kernel_cmdline"]
    assert any(line.startswith("debootstrap: bookworm from ") for line in said), said

    # the file system: labelled as the kernel command line expects, with the recipe applied
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image.disk), str(raw)], check=True)
    header = subprocess.run(["dumpe2fs", "-h", str(raw)], capture_output=True, text=True,
                            check=True).stdout
    assert any(line.split(":", 1)[1].strip() == "rootfs" for line in header.splitlines()
               if line.startswith("Filesystem volume name:"))
    assert debugfs(raw, "cat /etc/pytest-kvm-build-test") == "written by the recipe\n"
    assert debugfs(raw, "cat /etc/from-chroot") == "ran in the chroot\n"
    assert "/dev/null" in debugfs(raw, "stat /etc/systemd/system/e2scrub_reap.service")
    assert debugfs(raw, "cat /etc/motd") == ""
    assert "tcp" in debugfs(raw, "cat /etc/protocols")  # the recipe's package (netbase)
    gone = subprocess.run(["debugfs", "-R", "stat /etc/issue.net", str(raw)], capture_output=True,
                          text=True)
    assert "File not found" in gone.stderr + gone.stdout

    # a second store (another session) finds it built: no second build
    said.clear()
    again = ImageStore(tmp_path / "cache", recipe_dir=recipes, progress=said.append).ensure_built("tiny")
    assert again.disk == image.disk
    assert json.loads((again.disk.parent / "manifest.json").read_text()) == manifest
    assert not any("debootstrap" in line for line in said), said


def test_cached_recipe_image_is_as_built(kvm):
    """The image this run boots (built by build.py, here or in an earlier run): its manifest,
    hashes and read-only files."""
    image = kvm.images.resolve("debian-12")
    manifest = json.loads((image.disk.parent / "manifest.json").read_text())
    check_built(image, manifest)
    assert manifest["recipe_digest"] == load_recipe("debian-12").digest
    assert manifest["kernel_version"] and manifest["suite"] == "bookworm"
    assert image.kernel.read_bytes()[0x202:0x206] == b"HdrS"  # a real bzImage (x86 boot protocol)
