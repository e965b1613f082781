"""The seed's user data: the cloud-config the plugin gives each guest and merging the user's
into it, or for a cloudbase-init family the script of :mod:`pytest_kvm.seed.cloudbase`.

Every YAML a seed holds is dumped here (:func:`dump_yaml`, :func:`dump_cloud_config`), from
data, never from string templates. Imports go one way: this module uses
:mod:`~pytest_kvm.families` and :mod:`~pytest_kvm.seed.cloudbase`, neither of which imports it.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml

from . import cloudbase
from ..commands import PRIVILEGES
from ..errors import SeedError
from ..families import LOGIN_USER, Family
from ..keys import KeyPair

__all__ = ["LOGIN_USER", "dump_cloud_config", "dump_yaml", "merge", "plugin_user_data",
           "render_user_data"]


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
    password through *privilege* (a family's: ``"sudo"``, ``"doas"``, ``"su"``: a member of
    ``wheel``; ``"admin"`` or None: nothing to grant), and the pinned host key (so the
    client can refuse any other)."""
    if privilege is not None and privilege not in PRIVILEGES:
        raise ValueError(f"unknown privilege tool {privilege!r} ({', '.join(PRIVILEGES)} or None)")
    account: dict[str, Any] = {"name": user}
    if privilege == "sudo":
        account["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
    elif privilege == "su":
        # su lets wheel through (pam_group), then pam_unix nullok: root has no password
        account["groups"] = ["wheel"]
    if shell is not None:
        account["shell"] = shell
    account["lock_passwd"] = True
    account["ssh_authorized_keys"] = [login_key.public_openssh]
    data: dict[str, Any] = {
        "users": [account],
        "disable_root": True,
        "ssh_deletekeys": True,
        # only the type the seed brings (so nothing is generated); cloud-init 24+ rejects []
        "ssh_genkeytypes": [host_key.short_type],
        # the hostname resolves (127.0.1.1), so sudo does not try DNS and warn
        "manage_etc_hosts": True,
        "ssh_keys": {
            f"{host_key.short_type}_private": host_key.private_openssh,
            f"{host_key.short_type}_public": host_key.public_openssh,
        },
    }
    if privilege == "doas":
        # a file, not the newer users[].doas key: every cloud-init (and nuageinit) writes files
        data["write_files"] = [{"path": "/etc/doas.conf", "content": f"permit nopass {user}\n",
                                "owner": "root:wheel", "permissions": "0600", "append": True}]
    return data


def dump_yaml(data: Mapping[str, Any], what: str = "user_data") -> bytes:
    """*data* as a YAML document; what cannot be serialised is a :class:`SeedError` naming
    *what* it was meant to be."""
    try:
        return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False).encode()
    except yaml.YAMLError as exc:
        raise SeedError(f"{what} cannot be serialised to YAML: {exc}") from exc


def dump_cloud_config(data: Mapping[str, Any]) -> bytes:
    """Serialise *data* as a ``#cloud-config`` document."""
    return b"#cloud-config\n" + dump_yaml(data)


def render_user_data(family: Family, *, login_key: KeyPair, host_key: KeyPair,
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
        if password is None:
            raise SeedError(f"family {family.name}: the seed needs the guest's generated password")
        return cloudbase.user_data(family.login_user, password,
                                   cloud_config=dump_cloud_config(extra) if extra else None)
    raise SeedError(f"family {family.name}: unknown user data format {family.user_data_format!r}")
