"""The part of a foreign-architecture build that runs inside an emulated guest of that
architecture: debootstrap's second stage, the recipe's files and commands.

No binfmt_misc: the host cannot run the root's programs itself, and proot (which would
start each one under qemu-user-static) aborts on systemd's maintainer scripts (proot 5.1
and 5.4: ``readlinkat(fd, "")``, proot-me/proot#182; it also does not translate ``statx``
and ``faccessat2``). So the root that ``debootstrap --foreign`` unpacked boots, whole, as
the initramfs of the kernel it downloaded (``qemu-system-<arch>``, TCG), with
:data:`SCRIPT` as its init. The script finishes the installation in RAM, writes the
recipe's files and runs its commands, then loads the virtio disk driver the installation
brought and writes the root as a tar to a scratch disk, which the host unpacks.
"""
from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

from ..arches import Arch
from ..errors import ImageError
from .recipes import Recipe

#: the directory in the root with the guest's script and the recipe's files (not in the image)
BUILD_DIR = "pytest-kvm-build"
#: the last line of a guest that did everything; any other end is a failure
DONE = "pytest-kvm-build: done"
#: guest RAM: the root lives in it (tmpfs, half the RAM) while it is installed
MEMORY_MIB = 6144
#: the scratch disk the guest writes the tar of its root to (sparse)
TAR_DISK_SIZE = 8 * 2**30

SCRIPT = """#!/bin/sh
# pytest-kvm's foreign-architecture build, as init of the root unpacked as an initramfs.
set -e
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "pytest-kvm-build: debootstrap --second-stage"
/debootstrap/debootstrap --second-stage
echo "pytest-kvm-build: the recipe's files and commands"
cp -a /{build}/files/. /
{commands}
audit="$(dpkg --audit)"
if [ -n "$audit" ]; then echo "pytest-kvm-build: packages left unconfigured:"; echo "$audit"; exit 1; fi
echo "pytest-kvm-build: writing the root to the scratch disk"
modprobe virtio_pci || true
modprobe virtio_blk
tar --create --file=/dev/vda --numeric-owner --xattrs --xattrs-include='*' --acls \\
    --one-file-system --exclude=./{build} --exclude=./proc/* --exclude=./sys/* \\
    --exclude=./dev/* -C / .
sync
echo "{done}"
# off at once (no service manager runs); if that fails, init's end panics the kernel,
# which ends QEMU too (panic=-1, -no-reboot)
systemctl poweroff --force --force || true
"""


def guest_script(recipe: Recipe) -> str:
    """The guest's init for *recipe*: its commands one a line, each echoed first."""
    lines = []
    for argv in recipe.commands:
        lines.append(f"echo {shlex.quote('$ ' + shlex.join(argv))}")
        lines.append(shlex.join(argv))
    return (SCRIPT.replace("{build}", BUILD_DIR).replace("{done}", DONE)
            .replace("{commands}", "\n".join(lines)))


def prepare_root(recipe: Recipe, root: Path) -> None:
    """Put the guest's script and the recipe's files into the unpacked *root*."""
    build = root / BUILD_DIR
    files = build / "files"
    files.mkdir(parents=True)
    for rel, content in recipe.files.items():
        target = files / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content.lstrip("\n"))
        target.chmod(0o644)
    (build / "init").write_text(guest_script(recipe))
    (build / "init").chmod(0o755)
    proc = root / "proc"  # the first stage may leave it a link to the host's
    if proc.is_symlink():
        proc.unlink()
    proc.mkdir(exist_ok=True)


def kernel_package_file(root: Path, arch: Arch) -> Path:
    """The .deb of the kernel image the recipe's kernel package depends on, downloaded
    by the first stage (``linux-image-<version>-...``, not the metapackage)."""
    found = sorted(p for p in (root / "var/cache/apt/archives").glob("linux-image-[0-9]*.deb"))
    if not found:
        raise ImageError(f"the first stage downloaded no kernel image for {arch.debian} "
                         f"(is {arch.kernel_package} in the recipe's packages?)")
    return found[-1]


def extract_kernel(deb: Path, arch: Arch, out: Path) -> Path:
    """The kernel image file (``/boot/vmlinuz-*`` or ``vmlinux-*``) of the package *deb*,
    unpacked into *out* with the host's dpkg-deb (it reads any architecture's package)."""
    out.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))} | "
                         f"tar -x -C {shlex.quote(str(out))} --wildcards './boot/{arch.kernel_file}-*'",
                         shell=True, capture_output=True, text=True)
    found = sorted((out / "boot").glob(f"{arch.kernel_file}-*"))
    if tar.returncode != 0 or not found:
        raise ImageError(f"no /boot/{arch.kernel_file}-* in {deb.name}: {tar.stderr.strip()}")
    return found[-1]


def _cpio_header(name: bytes, st: os.stat_result, mode: int, size: int, ino: int) -> bytes:
    fields = (ino, mode, st.st_uid, st.st_gid, 1, int(st.st_mtime), size, 0, 0,
              os.major(st.st_rdev), os.minor(st.st_rdev), len(name) + 1, 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\0"
    return header + b"\0" * (-len(header) % 4)


def write_cpio(root: Path, path: Path) -> None:
    """*root* as an uncompressed ``newc`` cpio archive, the initramfs format (hard links
    become copies; owners, modes and device numbers are kept)."""
    ino = 0
    with path.open("wb") as out:
        for directory, dirs, files in os.walk(root):
            dirs.sort()
            for entry in [directory] + [os.path.join(directory, f) for f in sorted(files)] + \
                    [os.path.join(directory, d) for d in dirs if os.path.islink(os.path.join(directory, d))]:
                rel = os.path.relpath(entry, root)
                st = os.lstat(entry)
                ino += 1
                name = rel.encode()
                if stat.S_ISLNK(st.st_mode):
                    data = os.readlink(entry).encode()
                    out.write(_cpio_header(name, st, st.st_mode, len(data), ino) + data)
                    out.write(b"\0" * (-len(data) % 4))
                elif stat.S_ISREG(st.st_mode):
                    out.write(_cpio_header(name, st, st.st_mode, st.st_size, ino))
                    with open(entry, "rb") as fh:
                        while chunk := fh.read(1 << 20):
                            out.write(chunk)
                    out.write(b"\0" * (-st.st_size % 4))
                else:  # directories, devices, fifos
                    out.write(_cpio_header(name, st, st.st_mode, 0, ino))
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(directory, d))]
        trailer = os.stat(root)
        out.write(_cpio_header(b"TRAILER!!!", trailer, 0, 0, 0))


def qemu_argv(arch: Arch, kernel: Path, initramfs: Path, disk: Path) -> list[str]:
    """The emulated guest: TCG on every vCPU, the console on stdout, no network (the first
    stage downloaded every package), the scratch disk, off (QEMU exits) when it is done
    or when its init fails (``panic=-1`` with ``-no-reboot``)."""
    cpu = ["-cpu", arch.tcg_cpu] if arch.tcg_cpu else []  # "": the machine's default
    return [arch.emulator, "-M", arch.machine, *cpu, *arch.builder_options,
            "-m", str(MEMORY_MIB), "-smp", "2", "-accel", "tcg,thread=multi",
            "-display", "none", "-serial", "stdio", "-monitor", "none", "-nic", "none",
            "-no-reboot", "-kernel", str(kernel), "-initrd", str(initramfs),
            "-append", f"console={arch.console} rdinit=/{BUILD_DIR}/init panic=-1",
            "-drive", f"file={disk},if=none,id=out,format=raw",
            "-device", f"{arch.device('virtio-blk-pci')},drive=out"]
