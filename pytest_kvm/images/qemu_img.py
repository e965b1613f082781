"""Disk files: inspecting images and creating copy-on-write overlays (qemu-img)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from ..errors import ImageError

QEMU_IMG_TIMEOUT = 120.0


def _qemu_img(*args: str) -> subprocess.CompletedProcess:
    if not shutil.which("qemu-img"):
        raise ImageError("qemu-img not found: apt install qemu-utils")
    try:
        return subprocess.run(["qemu-img", *args], capture_output=True, text=True,
                              timeout=QEMU_IMG_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"qemu-img {' '.join(args)} did not finish in {QEMU_IMG_TIMEOUT:g} s") from exc


def _has_boot_signature(path: Path) -> bool:
    """A bootable raw disk has an MBR (0x55AA at byte 510) or a GPT header."""
    with path.open("rb") as fh:
        head = fh.read(520)
    return len(head) >= 512 and (head[510:512] == b"\x55\xaa" or head[512:520] == b"EFI PART")


def inspect_image(path: Path) -> str:
    """Check that *path* is a usable qcow2 or raw disk image; return its format.

    Raises :class:`ImageError` naming the path for a missing file, a file that is
    not a disk image, a corrupt or truncated qcow2, or a missing backing file.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image {path} does not exist")
    if not path.is_file():
        raise ImageError(f"image {path} is not a regular file")
    info = _qemu_img("info", "--output=json", "--backing-chain", str(path))
    if info.returncode != 0:
        raise ImageError(f"image {path} cannot be opened: {info.stderr.strip()}")
    chain = json.loads(info.stdout)
    fmt = chain[0].get("format")
    if fmt == "qcow2":
        check = _qemu_img("check", "--output=json", str(path))
        # exit 0: clean; 3: only leaked clusters (harmless); others: corruption
        if check.returncode not in (0, 3):
            detail = (check.stderr or check.stdout).strip().splitlines()
            raise ImageError(f"image {path} is a corrupt qcow2: {' '.join(detail[-3:])}")
    elif fmt == "raw":
        if not _has_boot_signature(path):
            raise ImageError(f"image {path} is not a bootable disk image "
                             "(no partition table; expected qcow2, or raw with MBR/GPT)")
    else:
        raise ImageError(f"image {path} has format {fmt!r}; expected qcow2 or raw")
    return fmt


def create_overlay(base: Path, base_format: str, overlay: Path) -> None:
    """Create a qcow2 overlay on top of *base*; the base is only ever read."""
    result = _qemu_img("create", "-q", "-f", "qcow2", "-b", str(Path(base).resolve()),
                       "-F", base_format, str(overlay))
    if result.returncode != 0:
        raise ImageError(f"cannot create overlay {overlay} on {base}: {result.stderr.strip()}")
    overlay.chmod(0o600)


def flatten_onto(overlay: Path, base: Path, base_format: str, target: Path) -> None:
    """Write *overlay*'s whole chain above *base* into a new overlay *target* backed by *base*
    only (what a user golden made from a clone keeps: it must not depend on the clone's
    golden, which the snapshot cache may remove)."""
    result = _qemu_img("convert", "-O", "qcow2", "-B", str(Path(base).resolve()), "-F", base_format,
                       str(overlay), str(target))
    if result.returncode != 0:
        raise ImageError(f"cannot flatten {overlay} onto {base}: {result.stderr.strip()}")
    target.chmod(0o400)
