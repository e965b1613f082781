"""The plugin's storage pool on a remote host and the names of its volumes: base images
(``base-<sha256>``), guests' overlays, seeds and saved states (the guest's name, which holds
its run's id: see :class:`~pytest_kvm.session.session.KvmSession`), and snapshot goldens'
(``snap-<key>-<controller>``, which outlive the run that made them; the controller is this
machine's machine-id and the random id of its cache, so two controllers never share a name,
whatever their host names).

Each run that uses a host keeps its owner record there, a small volume
``pytest-kvm-<run id>.owner`` (JSON: the machine, boot, process and start time the
reaper's ``owner_alive`` reads), from before its first guest volume until its end. A
sweep (``reap --host``, :func:`remove_dead_runs_volumes`) tells a live run's volumes
(a guest shut down on purpose, whose domain is gone; a golden with snapshots off)
from a dead one's by that record, never by whether a domain still runs."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HypervisorError
from ..owner import cache_id, machine_identity

if TYPE_CHECKING:
    from ..vm.hypervisor import Hypervisor

POOL = "pytest-kvm"  # the storage pool the plugin owns on each remote host
POOL_PATH = "/var/lib/libvirt/pytest-kvm"
OVERLAY_SUFFIX = ".qcow2"
SEED_SUFFIX = ".seed.img"
SAVE_SUFFIX = ".save"
SUFFIXES = (OVERLAY_SUFFIX, SEED_SUFFIX, SAVE_SUFFIX)
SNAPSHOT_PREFIX = "snap-"  # snapshot goldens' volumes: they outlive the run that made them
OWNER_SUFFIX = ".owner"  # a run's owner record on the host
RUN_PREFIX = "pytest-kvm-"  # what a run's guests (NAME_PREFIX + run id + "-N") are named
RECORD_SIZE = 4096  # an owner record is read up to this many bytes


def owner_volume(run_id: str) -> str:
    """The name of run *run_id*'s owner record on a host."""
    return f"{RUN_PREFIX}{run_id}{OWNER_SUFFIX}"


def owner_record(owner: Mapping[str, str], *, kept: bool = False) -> bytes:
    """The owner record's content: *owner* (machine, boot, PID, start) and whether the run
    ended keeping guests (their volumes stay until ``reap --kept --host``)."""
    return json.dumps({**owner, **({"kept": "1"} if kept else {})}, sort_keys=True).encode()


def controller_tag(cache_dir: Path) -> str:
    """Which controller made a snapshot volume: this machine (its machine-id, else its host
    name) and its cache *cache_dir* (the cache's random id, made if missing). Two machines
    with one host name, two clones of one VM image (one machine-id) or two caches on one
    machine get different tags."""
    here = machine_identity()
    who = f"{here['owner_machine_id'] or here['owner_machine']}:{cache_id(cache_dir, create=True)}"
    return hashlib.sha256(who.encode()).hexdigest()[:8]


def snapshot_prefix(key: str, tag: str) -> str:
    """The volumes' name prefix of snapshot *key* made by the controller *tag*
    (:func:`controller_tag`): two controllers sharing a host never use (or remove) each
    other's."""
    return f"{SNAPSHOT_PREFIX}{key}-{tag}"


def remove_snapshot_volumes(hv: Hypervisor, keep: set[str], tag: str) -> list[str]:
    """Delete controller *tag*'s snapshot volumes on *hv*'s host whose key is not in *keep*
    (the snapshots in its cache): what ``snapshot rm``, pruning or a lost cache left there.
    Other controllers' snapshots stay."""
    tag = f"-{tag}"
    try:
        volumes = hv.volumes(POOL)
    except HypervisorError:
        return []  # no pool: nothing was ever made there
    names = []
    for name in volumes:
        prefix = name.split(".", 1)[0]
        if prefix.startswith(SNAPSHOT_PREFIX) and prefix.endswith(tag) \
                and prefix[len(SNAPSHOT_PREFIX):-len(tag)] not in keep:
            names.append(name)
    for name in names:
        hv.delete_volume(POOL, name)
    return names


def live_run_prefixes(hv: Hypervisor, alive: Callable[[dict[str, str]], bool], *,
                      include_kept: bool = False) -> tuple[list[str], list[str]]:
    """The name prefixes (``pytest-kvm-<run id>-``) of the runs on *hv*'s host whose things
    stay, by their owner records (see :func:`remove_dead_runs_volumes`), and the records of
    the runs that are over."""
    try:
        names = list(hv.volumes(POOL))
    except HypervisorError:
        return [], []  # no pool: nothing was ever made there
    live: list[str] = []
    records_over: list[str] = []
    for name in names:
        if not (name.startswith(RUN_PREFIX) and name.endswith(OWNER_SUFFIX)):
            continue
        try:
            record = json.loads(hv.read_volume(POOL, name, 0, RECORD_SIZE) or b"{}")
            over = not alive(record) and (include_kept or not record.get("kept"))
        except (HypervisorError, ValueError, TypeError, AttributeError):
            over = False  # unreadable: never guessed dead
        if over:
            records_over.append(name)
        else:
            live.append(name[:-len(OWNER_SUFFIX)] + "-")
    return live, records_over


def remove_dead_runs_volumes(hv: Hypervisor, alive: Callable[[dict[str, str]], bool], *,
                             running: set[str] = frozenset(),
                             include_kept: bool = False) -> list[str]:
    """Delete the guest volumes of runs that are over: whose owner record says its owner is
    dead (*alive*: the reaper's test; another machine's run counts as alive) or that have no
    record (a run killed with its machine before it wrote one, an older pytest-kvm). A run
    that ended keeping guests keeps its volumes unless *include_kept*; volumes of *running*
    domains always stay. A dead run's record goes with its volumes."""
    try:
        names = list(hv.volumes(POOL))
    except HypervisorError:
        return []  # no pool: nothing was ever made there
    live, records_over = live_run_prefixes(hv, alive, include_kept=include_kept)
    doomed = [name for name in names
              if name.startswith(RUN_PREFIX) and not name.endswith(OWNER_SUFFIX)
              and name.split(".", 1)[0] not in running
              and not any(name.startswith(prefix) for prefix in live)] + records_over
    for name in doomed:
        hv.delete_volume(POOL, name)
    return doomed


def remove_guest_volumes(hv: Hypervisor, prefix: str, keep: set[str] = frozenset()) -> list[str]:
    """Delete the guest volumes (overlays, seeds) in the plugin's pool on *hv*'s host whose
    guest name starts with *prefix* and is not in *keep*; base images stay."""
    try:
        names = [name for name in hv.volumes(POOL)
                 if name.startswith(prefix) and name.split(".", 1)[0] not in keep]
    except HypervisorError:
        return []  # no pool: nothing was ever made there
    for name in names:
        hv.delete_volume(POOL, name)
    return names
