"""Sweeping up what dead runs left behind: domains whose owner process is gone, and their
work directories. Domains the plugin did not create (no pytest-kvm metadata) are never touched."""
from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..vm.domain import NAME_PREFIX
from ..errors import KvmError
from ..owner import machine_identity, process_start_time
from ..workdir import KEPT_MARKER
from ..vm.hypervisor import Hypervisor

OWNER_FILE = "owner"
# an owner-less run directory younger than this may be a run still setting up (or one made
# by an older pytest-kvm that wrote its owner record later): never reaped
YOUNG_SECONDS = 600.0


def owner_alive(meta: dict[str, str]) -> bool:
    """Whether the run that made a domain still runs. Another machine's run counts as alive
    (libvirt destroys its domains when its connection closes: they start with autodestroy);
    one of an earlier boot of this machine is dead."""
    if meta.get("owner_machine", socket.gethostname()) != socket.gethostname():
        return True
    if meta.get("owner_boot") and meta["owner_boot"] != machine_identity()["owner_boot"]:
        return False
    try:
        pid = int(meta.get("owner_pid", ""))
    except ValueError:
        return False
    start = process_start_time(pid)
    return bool(start) and start == meta.get("owner_start")


def is_kept(meta: dict[str, str], name: str) -> bool:
    return (Path(meta.get("run_dir", "/nonexistent")) / name / KEPT_MARKER).exists()


def _warn_stderr(name: str, exc: KvmError) -> None:
    print(f"pytest-kvm: could not destroy {name}, its files are kept: {exc}", file=sys.stderr)


def reap_domains(hv: Hypervisor, *, include_kept: bool = False,
                 failed: Callable[[str, KvmError], None] = _warn_stderr) -> list[str]:
    """Destroy our domains whose owner is dead (and kept ones if asked); remove their files.
    A domain that could not be destroyed keeps its files (its QEMU may still use them) and
    is passed to *failed* with the error (default: a line on stderr); the others are still
    reaped. Returns the names of the domains removed."""
    removed = []
    for name, meta in hv.our_domains().items():
        if owner_alive(meta):
            continue
        if is_kept(meta, name) and not include_kept:
            continue
        try:
            hv.destroy(name)
        except KvmError as exc:
            failed(name, exc)
            continue
        _remove_guest_files(meta, name)
        removed.append(name)
    return removed


def _remove_guest_files(meta: dict[str, str], name: str) -> None:
    run_dir = Path(meta.get("run_dir", ""))
    if not run_dir.name or not (run_dir / name).is_dir():
        return
    shutil.rmtree(run_dir / name, ignore_errors=True)
    # the run directory goes once no guest directory is left in it (its networks' switches
    # exit when it is gone; see pytest_kvm.networks.switch)
    if not any(p.is_dir() and p.name.startswith(NAME_PREFIX) for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


def read_owner(run_dir: Path) -> dict[str, str] | None:
    """The owner record of *run_dir* (as :func:`owner_alive` takes it), None if it has none
    (or an unreadable one)."""
    try:
        pid, start = (run_dir / OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        return None
    return {"owner_pid": pid, "owner_start": start}


def reap_run_dirs(runs_dir: Path, *, include_kept: bool = False,
                  young: float = YOUNG_SECONDS) -> list[Path]:
    """Remove work directories of runs whose owner is dead and that keep no guest. A
    directory without an owner record is removed only once it is older than *young*
    seconds (by mtime): a younger one may belong to a run being set up."""
    removed: list[Path] = []
    if not runs_dir.is_dir():
        return removed
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        try:
            owner = read_owner(run_dir)
            if owner is not None and owner_alive(owner):
                continue
            if owner is None and time.time() - run_dir.stat().st_mtime < young:
                continue
            if not include_kept and any((p / KEPT_MARKER).exists()
                                        for p in run_dir.iterdir() if p.is_dir()):
                continue
        except FileNotFoundError:  # renamed into place or removed meanwhile
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        removed.append(run_dir)
    return removed


def write_owner(run_dir: Path) -> None:
    pid = os.getpid()
    (run_dir / OWNER_FILE).write_text(f"{pid} {process_start_time(pid)}\n")


def make_run_dir(run_dir: Path) -> Path:
    """Create the run directory *run_dir* (0700) together with its owner record, in one
    step: it is made under a temporary name in the same parent with the owner file inside,
    then renamed into place, so no reaper ever sees it without its owner. Every creator of
    a run directory calls this; it does nothing if *run_dir* exists."""
    if run_dir.is_dir():
        return run_dir
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))  # 0700
    try:
        write_owner(staging)
        os.rename(staging, run_dir)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not run_dir.is_dir():
            raise
    return run_dir
