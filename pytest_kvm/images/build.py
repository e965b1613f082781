"""Build a base image from a recipe, offline, into a staging directory (the image cache,
:mod:`pytest_kvm.images.cache`, renames it into place, content-addressed, once complete).

The only builder so far is ``debootstrap``: install a minimal Debian root from
a package mirror, configure it from the recipe's data (files, unit masks, clean-up, then its
``commands`` in a chroot, e.g. rebuilding the initramfs), turn the root into an
ext4 file system without loop devices (``mkfs.ext4 -d``), convert it to qcow2
and keep the kernel and initrd beside it for direct kernel boot.

A recipe for another CPU architecture than this machine's (``Recipe.arch``) is built
without binfmt_misc: ``debootstrap --foreign`` downloads and unpacks the packages here,
then the root boots in an emulated guest of its architecture, which installs it and runs
the recipe's commands (:mod:`pytest_kvm.images.emulated`); the rest (unit masks, clean-up,
the file system) is done here as for this machine's architecture.
"""
from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ..arches import ARCHES, host_arch
from ..files import sha256_file
from ..errors import ImageError
from ..progress import Bar, Progress
from . import emulated
from .cache import utc_now
from .recipes import Recipe

DISK = "base.qcow2"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
#: the output of the last build of a name, beside its digests (a dot file: the cache sweeps
#: it before the next build and when the name is removed)
BUILD_LOG = ".build.log"

TOOLS = {"debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs", "qemu-img": "qemu-utils",
         "chroot": "coreutils"}


def foreign(recipe: Recipe) -> bool:
    """Whether *recipe* is for another CPU architecture than this machine's."""
    return recipe.arch != host_arch().debian


def _tools(recipe: Recipe) -> dict[str, str]:
    """The commands a build of *recipe* runs, and the Debian package of each."""
    if not foreign(recipe):
        return TOOLS
    arch = ARCHES[recipe.arch]
    return {**TOOLS, "dpkg-deb": "dpkg", "tar": "tar", arch.emulator: arch.emulator_package}


def _check_prerequisites(recipe: Recipe) -> None:
    if recipe.builder != "debootstrap":
        raise ImageError(f"recipe {recipe.name!r}: unknown builder {recipe.builder!r}")
    tools = _tools(recipe)
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        packages = sorted({tools[tool] for tool in missing})
        raise ImageError(f"cannot build {recipe.image!r}: missing {', '.join(missing)} "
                         f"(apt install {' '.join(packages)})")
    if os.geteuid() != 0:
        arch = f" --arch {recipe.arch}" if recipe.arch != "amd64" else ""
        raise ImageError(
            f"building image {recipe.image!r} needs root (debootstrap, chroot): run "
            f"`sudo pytest-kvm image build {recipe.name}{arch}` once, or point --kvm-image "
            f"{recipe.image}=PATH at an image you have")


def debootstrap_argv(recipe: Recipe, root: Path, mirror: str) -> list[str]:
    """debootstrap's first (and, natively, only) stage."""
    stage = [f"--arch={recipe.arch}", "--foreign"] if foreign(recipe) else []
    return ["debootstrap", *stage, f"--variant={recipe.variant}",
            f"--include={','.join(recipe.packages)}", recipe.suite, str(root), mirror]


class _Steps:
    """A build's commands: their output goes to the build log (whole) and, a line at a
    time, to the bar's description; a failure quotes the last lines and names the log."""

    def __init__(self, log: TextIO, log_path: Path, bar: Bar) -> None:
        self.log = log
        self.log_path = log_path
        self.bar = bar

    def run(self, argv: list[str], label: str) -> str:
        """Run *argv*; raise ImageError on failure."""
        self.log.write(f"$ {shlex.join(argv)}\n")
        self.log.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace")
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            self.log.write(line)
            self.log.flush()  # an emulated build runs for long: the log can be followed
            if line.strip():
                self.bar.describe(f"{label}: {line.strip()}")
        rc = proc.wait()
        self.log.flush()
        if rc != 0:
            tail = "".join(lines[-25:])
            raise ImageError(f"{label} failed (exit {rc}): {shlex.join(argv)}\n{tail}"
                             f"(the whole output of the build: {self.log_path})")
        return "".join(lines)


def _configure_root(recipe: Recipe, root: Path, steps: _Steps, *, commands: bool = True) -> None:
    """Write the recipe's files, mask and enable its units, clean up; then (*commands*)
    run its commands in a chroot and check that every package is configured (a foreign
    root did those in its guest, :mod:`~pytest_kvm.images.emulated`)."""
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
        steps.run(["systemctl", f"--root={root}", "enable", *recipe.enable_units],
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
    if not commands:
        return
    for argv in recipe.commands:
        steps.run(["chroot", str(root), *argv], " ".join(argv))
    audit = steps.run(["chroot", str(root), "dpkg", "--audit"], "dpkg --audit")
    if audit.strip():
        raise ImageError(f"recipe {recipe.name!r}: packages left unconfigured:\n{audit}")


def _newest(root: Path, pattern: str) -> Path:
    found = sorted((root / "boot").glob(pattern))
    if not found:
        raise ImageError(f"the built root has no /boot/{pattern}: is a kernel in the recipe?")
    return found[-1]


def _build_in_guest(recipe: Recipe, root: Path, work: Path, steps: _Steps,
                    progress: Callable[[str], None]) -> None:
    """Install the foreign *root* the first stage unpacked, in an emulated guest booted
    from it (:mod:`~pytest_kvm.images.emulated`), and put the result back at *root*."""
    arch = ARCHES[recipe.arch]
    kernel = emulated.extract_kernel(emulated.kernel_package_file(root, arch), arch,
                                     work / "kernel")
    emulated.prepare_root(recipe, root)
    initramfs = work / "root.cpio"
    emulated.write_cpio(root, initramfs)
    shutil.rmtree(root)
    disk = work / "root.tar"
    with disk.open("wb") as fh:
        fh.truncate(emulated.TAR_DISK_SIZE)
    progress(f"installing in an emulated {arch.debian} guest ({arch.emulator}, TCG: "
             f"tens of minutes)")
    output = steps.run(emulated.qemu_argv(arch, kernel, initramfs, disk), arch.emulator)
    initramfs.unlink()
    if emulated.DONE not in output:
        tail = "".join(output.splitlines(keepends=True)[-30:])
        raise ImageError(f"the emulated {arch.debian} guest did not finish installing "
                         f"{recipe.image}:\n{tail}(the whole output of the build: {steps.log_path})")
    root.mkdir()
    steps.run(["tar", "--extract", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
               "--preserve-permissions", f"--file={disk}", f"--directory={root}"], "tar --extract")
    disk.unlink()


#: the phases of a build, one step of its bar each
PHASES = ("debootstrap", "configuring", "mkfs.ext4", "qemu-img convert")


def build_image(recipe: Recipe, out: Path, progress: Progress | Callable[[str], None],
                log: Path | None = None) -> dict:
    """Build *recipe* into *out*, an empty staging directory the image cache made (and
    renames into place once complete), and return the manifest. The work files (the root,
    the raw disk) are kept in a temporary directory beside *out* and removed on every path.
    *progress* gets a line per phase (and a bar on a terminal); the commands' output goes
    to *log* (default: ``build.log`` in *out*'s parent), which a failure names."""
    _check_prerequisites(recipe)
    progress = Progress.of(progress)
    log = log or out.parent / BUILD_LOG
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out.parent) as tmp, \
            log.open("w") as log_file, \
            progress.bar(f"building {recipe.image}", len(PHASES), unit="step") as bar:
        steps = _Steps(log_file, log, bar)

        def phase(index: int, text: str) -> None:
            bar.update(index, len(PHASES))
            progress(f"{PHASES[index]}: {text}")

        work = Path(tmp)
        root = work / "root"
        mirror = recipe.mirror_url()
        if foreign(recipe):
            phase(0, f"{recipe.suite} {recipe.arch} from {mirror} (emulated: tens of minutes; "
                     f"output in {log})")
        else:
            phase(0, f"{recipe.suite} from {mirror} (about a minute or two; output in {log})")
        steps.run(debootstrap_argv(recipe, root, mirror), "debootstrap")
        if foreign(recipe):
            _build_in_guest(recipe, root, work, steps, progress)
        phase(1, "the root file system")
        _configure_root(recipe, root, steps, commands=not foreign(recipe))
        kernel_file = ARCHES[recipe.arch].kernel_file
        shutil.copyfile(_newest(root, f"{kernel_file}-*"), out / KERNEL)
        shutil.copyfile(_newest(root, "initrd.img-*"), out / INITRD)
        kernel_version = _newest(root, f"{kernel_file}-*").name.removeprefix(f"{kernel_file}-")
        phase(2, f"the ext4 file system ({recipe.disk_size})")
        raw = work / "disk.raw"
        steps.run(["mkfs.ext4", "-q", "-L", "rootfs", "-d", str(root), str(raw), recipe.disk_size],
                  "mkfs.ext4")
        shutil.rmtree(root)
        phase(3, "to qcow2")
        steps.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / DISK)],
                  "qemu-img convert")
        bar.update(len(PHASES), len(PHASES))
    manifest = {
        "name": recipe.image,
        "source": "recipe",
        "arch": recipe.arch,
        "family": recipe.family,
        "description": recipe.description,
        "recipe_digest": recipe.digest,
        "suite": recipe.suite,
        "kernel_version": kernel_version,
        "kernel_cmdline": recipe.kernel_cmdline,
        "plain_seed": recipe.plain_seed,
        "login_user": recipe.login_user,
        "format": "qcow2",
        "sha256": {name: sha256_file(out / name) for name in (DISK, KERNEL, INITRD)},
        "built_at": utc_now(),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    progress(f"built {recipe.image} in {manifest['build_seconds']} s")
    return manifest
