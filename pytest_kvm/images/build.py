"""Build a base image from a recipe, offline, into a staging directory (the image cache,
:mod:`pytest_kvm.images.cache`, renames it into place, content-addressed, once complete).

The only builder so far is ``debootstrap``: install a minimal Debian root from
a package mirror, configure it from the recipe's data (files, unit masks, clean-up, then its
``commands`` in a chroot, e.g. rebuilding the initramfs), turn the root into an
ext4 file system without loop devices (``mkfs.ext4 -d``), convert it to qcow2
and keep the kernel and initrd beside it for direct kernel boot.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..files import sha256_file
from ..errors import ImageError
from .cache import utc_now
from .recipes import Recipe

Progress = Callable[[str], None]

DISK = "base.qcow2"
KERNEL = "vmlinuz"
INITRD = "initrd.img"

TOOLS = {"debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs", "qemu-img": "qemu-utils",
         "chroot": "coreutils"}


def _check_prerequisites(recipe: Recipe) -> None:
    if recipe.builder != "debootstrap":
        raise ImageError(f"recipe {recipe.name!r}: unknown builder {recipe.builder!r}")
    missing = [f"{tool} (apt install {pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
    if missing:
        raise ImageError(f"cannot build {recipe.name!r}: missing {', '.join(missing)}")
    if os.geteuid() != 0:
        raise ImageError(
            f"building image {recipe.name!r} needs root (debootstrap, chroot): run "
            f"`sudo pytest-kvm image build {recipe.name}` once, or point --kvm-image "
            f"{recipe.name}=PATH at an image you have")


def _run(argv: list[str], progress: Progress, label: str, *, stream: bool = False) -> str:
    """Run *argv*; stream its output to *progress* if asked; raise ImageError on failure."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace")
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if stream and line.strip():
            progress(f"{label}: {line.rstrip()}")
    rc = proc.wait()
    if rc != 0:
        tail = "".join(lines[-25:])
        raise ImageError(f"{label} failed (exit {rc}): {' '.join(argv)}\n{tail}")
    return "".join(lines)


def _configure_root(recipe: Recipe, root: Path, progress: Progress) -> None:
    for rel, content in recipe.files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content.lstrip("\n"))
        target.chmod(0o644)
    for unit in recipe.mask_units:
        link = root / "etc/systemd/system" / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    if recipe.enable_units:
        _run(["systemctl", f"--root={root}", "enable", *recipe.enable_units], progress,
             "systemctl enable")
    for pattern in recipe.remove:
        for match in glob.glob(str(root / pattern)):
            path = Path(match)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    for rel in recipe.truncate:
        (root / rel).write_text("")
    for argv in recipe.commands:
        _run(["chroot", str(root), *argv], progress, " ".join(argv))
    audit = _run(["chroot", str(root), "dpkg", "--audit"], progress, "dpkg --audit")
    if audit.strip():
        raise ImageError(f"recipe {recipe.name!r}: packages left unconfigured:\n{audit}")


def _newest(root: Path, pattern: str) -> Path:
    found = sorted((root / "boot").glob(pattern))
    if not found:
        raise ImageError(f"the built root has no /boot/{pattern}: is a kernel in the recipe?")
    return found[-1]


def build_image(recipe: Recipe, out: Path, progress: Progress) -> dict:
    """Build *recipe* into *out*, an empty staging directory the image cache made (and
    renames into place once complete), and return the manifest. The work files (the root,
    the raw disk) are kept in a temporary directory beside *out* and removed on every path."""
    _check_prerequisites(recipe)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out.parent) as tmp:
        work = Path(tmp)
        root = work / "root"
        mirror = recipe.mirror_url()
        progress(f"debootstrap {recipe.suite} from {mirror} (about a minute or two)")
        _run(["debootstrap", f"--variant={recipe.variant}", f"--include={','.join(recipe.packages)}",
              recipe.suite, str(root), mirror], progress, "debootstrap", stream=True)
        progress("configuring the root file system")
        _configure_root(recipe, root, progress)
        shutil.copyfile(_newest(root, "vmlinuz-*"), out / KERNEL)
        shutil.copyfile(_newest(root, "initrd.img-*"), out / INITRD)
        kernel_version = _newest(root, "vmlinuz-*").name.removeprefix("vmlinuz-")
        progress(f"making the ext4 file system ({recipe.disk_size})")
        raw = work / "disk.raw"
        _run(["mkfs.ext4", "-q", "-L", "rootfs", "-d", str(root), str(raw), recipe.disk_size],
             progress, "mkfs.ext4")
        shutil.rmtree(root)
        progress("converting to qcow2")
        _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / DISK)], progress,
             "qemu-img convert")
    manifest = {
        "name": recipe.name,
        "source": "recipe",
        "family": recipe.family,
        "description": recipe.description,
        "recipe_digest": recipe.digest,
        "suite": recipe.suite,
        "kernel_version": kernel_version,
        "kernel_cmdline": recipe.kernel_cmdline,
        "login_user": recipe.login_user,
        "format": "qcow2",
        "sha256": {name: sha256_file(out / name) for name in (DISK, KERNEL, INITRD)},
        "built_at": utc_now(),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    progress(f"built {recipe.name} in {manifest['build_seconds']} s")
    return manifest
