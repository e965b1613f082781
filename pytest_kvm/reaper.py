"""Sweeping up what dead runs left behind: domains whose owner process is gone, and their
work directories. Domains the plugin did not create (no pytest-kvm metadata) are never touched."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .domain import NAME_PREFIX
from .hypervisor import Hypervisor

KEPT_MARKER = "KEPT"


def process_start_time(pid: int) -> str:
    """The kernel's start time of *pid* (clock ticks since boot): with the PID, it tells a
    live owner from a new process that reused the PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def owner_alive(meta: dict[str, str]) -> bool:
    try:
        pid = int(meta.get("owner_pid", ""))
    except ValueError:
        return False
    start = process_start_time(pid)
    return bool(start) and start == meta.get("owner_start")


def is_kept(meta: dict[str, str], name: str) -> bool:
    return (Path(meta.get("run_dir", "/nonexistent")) / name / KEPT_MARKER).exists()


def reap_domains(hv: Hypervisor, *, include_kept: bool = False) -> list[str]:
    """Destroy our domains whose owner is dead (and kept ones if asked); remove their files."""
    removed = []
    for name, meta in hv.our_domains().items():
        if owner_alive(meta):
            continue
        if is_kept(meta, name) and not include_kept:
            continue
        hv.destroy(name)
        _remove_guest_files(meta, name)
        removed.append(name)
    return removed


def _remove_guest_files(meta: dict[str, str], name: str) -> None:
    run_dir = Path(meta.get("run_dir", ""))
    if not run_dir.name or not (run_dir / name).is_dir():
        return
    shutil.rmtree(run_dir / name, ignore_errors=True)
    # the run directory goes once no guest directory is left in it (its networks' switches
    # exit when it is gone; see pytest_kvm.hub)
    if not any(p.is_dir() and p.name.startswith(NAME_PREFIX) for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


def reap_run_dirs(runs_dir: Path, *, include_kept: bool = False) -> list[Path]:
    """Remove work directories of runs whose owner is dead and that keep no guest."""
    removed = []
    if not runs_dir.is_dir():
        return removed
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        owner = run_dir / "owner"
        with contextlib.suppress(OSError):
            pid, start = owner.read_text().split()
            if owner_alive({"owner_pid": pid, "owner_start": start}):
                continue
        if not include_kept and any((p / KEPT_MARKER).exists() for p in run_dir.iterdir() if p.is_dir()):
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        removed.append(run_dir)
    return removed


def write_owner(run_dir: Path) -> None:
    pid = os.getpid()
    (run_dir / "owner").write_text(f"{pid} {process_start_time(pid)}\n")
