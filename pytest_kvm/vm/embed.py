"""libvirt's embedded driver (``qemu:///embed``, no daemon): the roots it runs in, one per
process, each under a lock, with the ``qemu.conf`` the plugin writes there."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import HypervisorError
from ..files import try_lock

EMBED_SLOTS = 64


def write_embed_config(root: Path) -> None:
    conf = root / "etc" / "qemu.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    lines = ['security_driver = "none"', 'stdio_handler = "file"']
    if os.geteuid() == 0:
        lines += ['user = "root"', 'group = "root"', "dynamic_ownership = 0"]
    conf.write_text("# written by pytest-kvm\n" + "\n".join(lines) + "\n")


@dataclass
class EmbedSlot:
    root: Path
    lock_fd: int
    index: int


def lock_embed_slot(state_dir: Path, index: int) -> EmbedSlot | None:
    root = state_dir / f"embed-{index}"
    fd = try_lock(state_dir / f"embed-{index}.lock")
    if fd is None:
        return None
    write_embed_config(root)
    return EmbedSlot(root, fd, index)


# libvirt loads its embedded driver once per process, and the loaded driver keeps its root
# busy until the process exits: so each process takes one root and keeps it (and our lock
# on it) for its whole life, like the event loop (see hypervisor).
_process_embed: dict[str, EmbedSlot] = {}


def take_embed_slot(state_dir: Path, index: int | None = None) -> EmbedSlot:
    """This process's embedded-driver root: the first free one (or number *index*). The
    capability cache inside a root survives, so only its first open probes QEMU (~8 s)."""
    held = _process_embed.get("slot")
    if held is not None:
        if index is None or held.index == index:
            return held
        raise HypervisorError(f"this process already uses embedded libvirt root {held.index}; "
                              "libvirt loads its embedded driver once per process")
    for candidate in range(EMBED_SLOTS) if index is None else (index,):
        slot = lock_embed_slot(state_dir, candidate)
        if slot is not None:
            _process_embed["slot"] = slot
            return slot
    if index is not None:
        raise HypervisorError(f"embedded libvirt root {index} is in use by a live run")
    raise HypervisorError(f"all {EMBED_SLOTS} embedded libvirt roots in {state_dir} are in use")


def libvirt_state_dir() -> Path:
    """Where the embedded driver's roots live. Not under the cache directory: QEMU's UNIX
    sockets go inside the root and their paths may not exceed 107 bytes, so this must be
    short: ``$XDG_RUNTIME_DIR/pytest-kvm``, else ``/tmp/pytest-kvm-UID``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(runtime) / "pytest-kvm" if runtime else Path(f"/tmp/pytest-kvm-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise HypervisorError(f"{path} belongs to another user; set XDG_RUNTIME_DIR to a directory of yours")
    return path
