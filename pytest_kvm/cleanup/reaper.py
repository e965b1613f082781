"""Sweeping up what dead runs left behind: domains whose owner process is gone, and their
work directories. Domains the plugin did not create (no pytest-kvm metadata) are never touched."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..vm.domain import NAME_PREFIX
from ..errors import KvmError
from ..owner import cache_id, machine_identity, process_start_time
from ..workdir import KEPT_MARKER
from ..vm.hypervisor import Hypervisor

OWNER_FILE = "owner"  # "PID START", as older pytest-kvm reads it (so its reaper sees an owner)
OWNER_RECORD = "owner.json"  # the whole record: read first
# an owner-less run directory younger than this may be a run still setting up (or one made
# by an older pytest-kvm that wrote its owner record later): never reaped
YOUNG_SECONDS = 600.0


def owner_alive(meta: dict[str, str], *, cache: str = "") -> bool:
    """Whether the run that made a domain or a run directory may still run: False only when
    that is proven. Proof: the same kernel boot and PID namespace as ours, and its PID gone
    or reused; or an earlier boot of this machine (same machine-id, and the same cache
    *cache* where both are known: two clones of one VM image share a machine-id, not a
    cache); or a record made against another cache than *cache* (this cache's id) on
    another machine (the cache was copied here). A run in another PID namespace (a
    container sharing the cache) or on another machine counts as alive: its domains go with
    its libvirt connection (they start with autodestroy), its directory with its session."""
    here = machine_identity()
    if "owner_machine_id" not in meta:  # a record of an older pytest-kvm: host name and boot
        if meta.get("owner_machine", here["owner_machine"]) != here["owner_machine"]:
            return True
        if meta.get("owner_boot") and meta["owner_boot"] != here["owner_boot"]:
            return False
        return _process_alive(meta)
    if meta.get("owner_boot") != here["owner_boot"]:  # another kernel: which machine?
        if meta["owner_machine_id"] and meta["owner_machine_id"] == here["owner_machine_id"]:
            # this machine, rebooted since, unless another cache made it: a machine cloned
            # from the same image (one machine-id) whose controller shares a host with us
            return bool(cache and meta.get("cache_id") and meta["cache_id"] != cache)
        return not (cache and meta.get("cache_id") and meta["cache_id"] != cache)
    if meta.get("owner_pidns") != here["owner_pidns"]:
        return True  # its PIDs are not ours to look up
    return _process_alive(meta)


def _process_alive(meta: dict[str, str]) -> bool:
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


def reap_domains(hv: Hypervisor, *, include_kept: bool = False, cache: str = "",
                 failed: Callable[[str, KvmError], None] = _warn_stderr) -> list[str]:
    """Destroy our domains whose owner is dead (and kept ones if asked); remove their files.
    A domain that could not be destroyed keeps its files (its QEMU may still use them) and
    is passed to *failed* with the error (default: a line on stderr); the others are still
    reaped. *cache*: this controller's cache id (see :func:`owner_alive`). Returns the
    names of the domains removed."""
    removed = []
    for name, meta in hv.our_domains().items():
        if owner_alive(meta, cache=cache):
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
    (or an unreadable one). Older pytest-kvm wrote only ``owner``: "PID START"."""
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((run_dir / OWNER_RECORD).read_text())
        if isinstance(record, dict) and all(isinstance(v, str) for v in record.values()):
            return record
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
    cache = cache_id(runs_dir.parent)
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        try:
            owner = read_owner(run_dir)
            if owner is not None and owner_alive(owner, cache=cache):
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
    """The owner record of a run directory in ``CACHE/runs/``: this process, its PID
    namespace, boot and machine, and the cache's id."""
    pid = os.getpid()
    record = {"owner_pid": str(pid), "owner_start": process_start_time(pid), **machine_identity(),
              "cache_id": cache_id(run_dir.parent.parent, create=True)}
    (run_dir / OWNER_RECORD).write_text(json.dumps(record) + "\n")
    (run_dir / OWNER_FILE).write_text(f"{pid} {record['owner_start']}\n")


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
