"""Who made a run: the machine, the boot of it, the PID namespace and the process (a run's
owner record and its domains' metadata say so; the reaper tells a dead owner from a live one
by them, and leaves alone an owner it cannot see: one in another PID namespace, such as a
container sharing the cache, or on another machine)."""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
from pathlib import Path

CACHE_ID_FILE = "cache-id"
_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def process_start_time(pid: int) -> str:
    """The kernel's start time of *pid* (clock ticks since boot): with the PID, it tells a
    live owner from a new process that reused the PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """This process's PID namespace (its inode): PIDs mean something only inside it."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def machine_identity() -> dict[str, str]:
    """Which machine (host name and machine-id), which boot of its kernel, and which PID
    namespace a run's process lives in (owner records, domain metadata): a remote host's
    domains, or a shared cache's runs, may belong to processes this one cannot see."""
    machine_id = next((found for found in map(_read, _MACHINE_ID_FILES) if found), "")
    return {"owner_machine": socket.gethostname(), "owner_machine_id": machine_id,
            "owner_boot": _read("/proc/sys/kernel/random/boot_id"), "owner_pidns": pid_namespace()}


def cache_id(cache_dir: Path, *, create: bool = False) -> str:
    """The random id of the cache directory *cache_dir* (made once, atomically, if *create*;
    "" if it has none): a run recorded against another id was copied in with the cache
    (a CI cache restored on another machine), so its owner is not running on it."""
    path = cache_dir / CACHE_ID_FILE
    found = _read(str(path))
    if found or not create:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".{CACHE_ID_FILE}.{secrets.token_hex(4)}"
    staging.write_text(secrets.token_hex(16) + "\n")
    try:
        os.link(staging, path)  # the first writer wins; the others read its id
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(OSError):
            staging.unlink()
    return _read(str(path))
