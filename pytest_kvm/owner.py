"""Who made a run: the machine, the boot of it and the process (a run's owner record and
its domains' metadata say so; the reaper tells a dead owner from a live one by them)."""
from __future__ import annotations

import socket
from pathlib import Path


def process_start_time(pid: int) -> str:
    """The kernel's start time of *pid* (clock ticks since boot): with the PID, it tells a
    live owner from a new process that reused the PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def machine_identity() -> dict[str, str]:
    """Which machine, and which boot of it, a run's process lives on (domain metadata): a
    remote host's domains may belong to other machines' runs, whose processes this one
    cannot see."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return {"owner_machine": socket.gethostname(), "owner_boot": boot}
