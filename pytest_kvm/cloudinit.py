"""The cloud-config the plugin gives each guest, and merging the user's into it."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

from .errors import SeedError
from .keys import KeyPair

if TYPE_CHECKING:  # pragma: no cover
    from .families import Family

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


def plugin_user_data(login_key: KeyPair, host_key: KeyPair, user: str = LOGIN_USER, *,
                     shell: str | None = "/bin/bash", privilege: str | None = "sudo") -> dict[str, Any]:
    """What every guest needs: a user with the session's key who may become root without a
    password (*privilege*: ``"sudo"``, ``"doas"`` or None), and the pinned host key (so the
    client can refuse any other)."""
    account: dict[str, Any] = {"name": user}
    if privilege == "sudo":
        account["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
    if shell is not None:
        account["shell"] = shell
    account["lock_passwd"] = True
    account["ssh_authorized_keys"] = [login_key.public_openssh]
    data: dict[str, Any] = {
        "users": [account],
        "disable_root": True,
        "ssh_deletekeys": True,
        # only the type the seed brings (so nothing is generated); cloud-init 24+ rejects []
        "ssh_genkeytypes": [_cloudinit_key_name(host_key)],
        # the hostname resolves (127.0.1.1), so sudo does not try DNS and warn
        "manage_etc_hosts": True,
        "ssh_keys": {
            f"{_cloudinit_key_name(host_key)}_private": host_key.private_openssh,
            f"{_cloudinit_key_name(host_key)}_public": host_key.public_openssh,
        },
    }
    if privilege == "doas":
        # a file, not the newer users[].doas key: every cloud-init (and nuageinit) writes files
        data["write_files"] = [{"path": "/etc/doas.conf", "content": f"permit nopass {user}\n",
                                "owner": "root:wheel", "permissions": "0600", "append": True}]
    elif privilege not in ("sudo", None):
        raise ValueError(f"unknown privilege tool {privilege!r} (sudo, doas or None)")
    return data


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


def render_user_data(family: "Family", *, login_key: KeyPair, host_key: KeyPair,
                     password: str | None = None, extra: Mapping[str, Any] | None = None) -> bytes:
    """The seed's user data for a guest of *family*, serialised: a ``#cloud-config`` for
    cloud-init and nuageinit, a cloudbase-init PowerShell script (that needs *password*)
    for Windows. *extra* is the user's cloud-config, merged in (cloud-init) or added as a
    second MIME part (cloudbase-init)."""
    if family.user_data_format == "cloud-config":
        base = plugin_user_data(login_key, host_key, family.login_user,
                                shell=family.login_shell, privilege=family.privilege)
        return dump_cloud_config(merge(base, extra or {}))
    if family.user_data_format == "cloudbase-ps1":
        from . import cloudbase
        if password is None:
            raise SeedError(f"family {family.name}: the seed needs the guest's generated password")
        return cloudbase.user_data(family.login_user, password, extra=extra)
    raise SeedError(f"family {family.name}: unknown user data format {family.user_data_format!r}")
