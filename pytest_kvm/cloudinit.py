"""The cloud-config the plugin gives each guest, and merging the user's into it."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml

from .errors import SeedError
from .keys import KeyPair

LOGIN_USER = "pytest"


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Merge *extra* into a copy of *base*: mappings recursively, lists appended,
    anything else replaced by *extra*'s value."""
    merged = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        elif isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = merged[key] + copy.deepcopy(value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def plugin_user_data(login_key: KeyPair, host_key: KeyPair, user: str = LOGIN_USER) -> dict[str, Any]:
    """What every guest needs: a passwordless sudo user with the session's key, and the
    pinned host key (so the client can refuse any other)."""
    return {
        "users": [{
            "name": user,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "shell": "/bin/bash",
            "lock_passwd": True,
            "ssh_authorized_keys": [login_key.public_openssh],
        }],
        "disable_root": True,
        "ssh_pwauth": False,
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            f"{_cloudinit_key_name(host_key)}_private": host_key.private_openssh,
            f"{_cloudinit_key_name(host_key)}_public": host_key.public_openssh,
        },
    }


def _cloudinit_key_name(key: KeyPair) -> str:
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa", "ecdsa-sha2-nistp256": "ecdsa"}[key.key_type]


def user_data(login_key: KeyPair, host_key: KeyPair, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return merge(plugin_user_data(login_key, host_key), extra or {})


def dump_cloud_config(data: Mapping[str, Any]) -> bytes:
    """Serialise *data* as a ``#cloud-config`` document (YAML, never string templates)."""
    try:
        body = yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)
    except yaml.YAMLError as exc:
        raise SeedError(f"user_data cannot be serialised to YAML: {exc}") from exc
    return ("#cloud-config\n" + body).encode()


def meta_data(instance_id: str, hostname: str) -> bytes:
    return yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname},
                          sort_keys=False).encode()
