"""The plugin's storage pool on a remote host and the names of its volumes: base images
(``base-<sha256>``), guests' overlays, seeds and saved states (the guest's name), and
snapshot goldens' (``snap-<key>-<machine>``, which outlive the run that made them)."""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from ..owner import machine_identity
from ..errors import HypervisorError

if TYPE_CHECKING:
    from ..vm.hypervisor import Hypervisor

POOL = "pytest-kvm"  # the storage pool the plugin owns on each remote host
POOL_PATH = "/var/lib/libvirt/pytest-kvm"
OVERLAY_SUFFIX = ".qcow2"
SEED_SUFFIX = ".seed.img"
SAVE_SUFFIX = ".save"
SUFFIXES = (OVERLAY_SUFFIX, SEED_SUFFIX, SAVE_SUFFIX)
SNAPSHOT_PREFIX = "snap-"  # snapshot goldens' volumes: they outlive the run that made them


def snapshot_prefix(key: str) -> str:
    """The volumes' name prefix of snapshot *key* made by this machine: two controllers
    sharing a host never use (or remove) each other's."""
    return f"{SNAPSHOT_PREFIX}{key}-{_machine_tag()}"


def _machine_tag() -> str:
    return hashlib.sha256(machine_identity()["owner_machine"].encode()).hexdigest()[:8]


def remove_snapshot_volumes(hv: Hypervisor, keep: set[str]) -> list[str]:
    """Delete this machine's snapshot volumes on *hv*'s host whose key is not in *keep* (the
    snapshots in this machine's cache): what ``snapshot rm``, pruning or a lost cache left
    there. Other machines' snapshots stay."""
    tag = f"-{_machine_tag()}"
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
