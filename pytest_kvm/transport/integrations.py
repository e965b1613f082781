"""Other tools on the plugin's guests: testinfra hosts, OpenSSH configs, Ansible inventories.

What differs by transport is in one class each (:class:`SshEntries`, :class:`WinRMEntries`:
host spec, testinfra host, inventory fields and variables, secrets, a kept guest's access line);
the rest never asks which transport a guest has. Every one of them logs in the way the plugin does: with the session's login key and the
guest's pinned host key (``StrictHostKeyChecking yes``, no global known_hosts), or, for a
Windows guest, over WinRM with the guest's generated password. No password or private key
is ever put in a repr, a log line or an error message; a password reaches a file only in
a 0600 one.

- :func:`testinfra_host` (``guest.testinfra()``): a ``testinfra`` host for a running guest
  (needs ``pip install 'pytest-kvm[testinfra]'``).
- :func:`write_ssh_config`: an ``ssh -F`` config with one ``Host`` entry for a guest.
- :func:`write_inventory` (``kvm.inventory(path)``) and :func:`kept_hosts` (the
  ``pytest-kvm inventory`` command): an Ansible inventory of guests, built as data
  (:func:`render_inventory`) and dumped with ``yaml.safe_dump``.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import struct
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..files import write_owner_only
from ..workdir import DISK_FILE, KEPT_MARKER, META_FILE
from ..errors import HypervisorError, KvmError

LOCALHOST = "127.0.0.1"
SSH_CONFIG_FILE = "ssh_config"  # in the guest's work directory
INVENTORY_GROUP = "pytest_kvm"  # every host is in it; each is also in a group named for its OS
HOST_VARS_DIR = "host_vars"  # beside the inventory: Ansible reads it for an inventory file
PYTHON_INTERPRETERS = {"linux": "/usr/bin/python3"}  # by family; others: Ansible discovers it
RESERVED_GROUPS = ("all", "ungrouped", INVENTORY_GROUP)
TESTINFRA_HINT = "pip install 'pytest-kvm[testinfra]'"
KNOWN_HOSTS_FILE = "known_hosts"  # in the guest's work directory
MANIFEST_FILE = "manifest.json"  # a cached base image's
# what a KEPT_MARKER file holds (Guest.access): the ssh command line, joined with spaces
# (so a path may hold spaces), or the WinRM endpoint and the file with its password
_SSH_ACCESS = re.compile(r"^ssh -i (?P<key>.+) -p (?P<port>\d+) -o (?P<known_hosts>.+) "
                         r"-o GlobalKnownHostsFile=/dev/null .* (?P<user>[^\s@]+)@[^\s@]+$")
_WINRM_ACCESS = re.compile(r"^winrm http://[^:/]+:(?P<port>\d+)/wsman user (?P<user>\S+) "
                           r"password in (?P<file>.+)$")
_QCOW2_HEADER = struct.Struct(">4sIQI")  # magic, version, backing file offset, its length
_QCOW2_MAGIC = b"QFI\xfb"
_BACKING_DEPTH = 8


class IntegrationError(KvmError):
    """A tool beside the plugin (testinfra, Ansible, OpenSSH) cannot be set up for a guest."""


class MissingExtra(IntegrationError):
    """An optional dependency is not installed; the message says which extra installs it."""


# -- testinfra ----------------------------------------------------------------------------
def _import_testinfra():
    try:
        import testinfra
    except ImportError as exc:
        raise MissingExtra(f"guest.testinfra() needs pytest-testinfra, which is not installed: "
                           f"{TESTINFRA_HINT}") from exc
    return testinfra


def testinfra_hostspec(guest) -> str:
    """The testinfra host spec of *guest*: ``ssh://NAME`` (the ``Host`` of the config that
    :func:`write_ssh_config` writes) or, for a WinRM guest, a ``winrm://`` URL with its user
    and password (quoted) over plain HTTP on the forwarded port. It holds the password:
    never print it."""
    return _entries(guest.config.family.transport).hostspec(guest)


def testinfra_host(guest):
    """A ``testinfra`` host connected to the running *guest* (what ``guest.testinfra()``
    returns). SSH guests: testinfra's ``ssh`` backend runs the system ``ssh`` with the
    config :func:`write_ssh_config` writes into the guest's work directory (the pinned host
    key and the session's login key; no connection sharing, so no ssh process outlives a
    command). Windows guests: testinfra's ``winrm`` backend (NTLM over HTTP).

    Raises :class:`MissingExtra` if pytest-testinfra is not installed."""
    testinfra = _import_testinfra()
    if guest.destroyed or not guest.port:
        raise HypervisorError(f"guest {guest.name} is not running")
    return _entries(guest.config.family.transport).testinfra_host(testinfra, guest)


# their names start with "test" and testinfra_host takes a `guest`: imported into a test
# module, pytest would collect them as tests (and boot a guest for one)
testinfra_host.__test__ = False
testinfra_hostspec.__test__ = False


# -- OpenSSH --------------------------------------------------------------------------------
def ssh_config_path(path: str | os.PathLike) -> str:
    """*path* as an ssh_config argument: ``%`` doubled (ssh expands ``%`` tokens in file
    names), in double quotes if it holds white space."""
    text = os.fspath(path)
    if any(c in text for c in '"\n\r') or "${" in text:
        raise IntegrationError(f"path {text!r} cannot be written in an ssh_config "
                               "(it holds a double quote, a newline or ${)")
    text = text.replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def render_ssh_config(name: str, port: int, user: str, key_file: str | os.PathLike,
                      known_hosts: str | os.PathLike,
                      proxy_command: Sequence[str] | None = None) -> str:
    """An OpenSSH client config with one ``Host`` entry, *name*, for a guest forwarded on
    127.0.0.1:*port*, logging in with *key_file* only and trusting only the host key
    pinned in *known_hosts*; *proxy_command* (an argv): how that 127.0.0.1 is reached
    (a guest on a remote host: ``ssh ... -W 127.0.0.1:%p HOST``)."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise IntegrationError(f"guest name {name!r} cannot be an ssh_config Host")
    options = [("HostName", LOCALHOST), ("Port", str(int(port))), ("User", user),
               ("IdentityFile", ssh_config_path(key_file)), ("IdentitiesOnly", "yes"),
               ("UserKnownHostsFile", ssh_config_path(known_hosts)),
               ("GlobalKnownHostsFile", "/dev/null"), ("StrictHostKeyChecking", "yes"),
               ("BatchMode", "yes")]
    if proxy_command:
        options.append(("ProxyCommand", shlex.join(proxy_command)))
    lines = [f"# pytest-kvm: guest {name}; use with: ssh -F THIS_FILE {name}", f"Host {name}"]
    lines += [f"    {key} {value}" for key, value in options]
    return "\n".join(lines) + "\n"


def write_ssh_config(guest, path: str | os.PathLike) -> Path:
    """Write an OpenSSH config for the SSH *guest* to *path* (see :func:`render_ssh_config`);
    ``ssh -F PATH NAME`` then logs in."""
    transport = guest.config.family.transport
    if transport != SshEntries.transport:
        raise IntegrationError(f"guest {guest.name} is reached over {transport}, "
                               "not SSH: it has no ssh_config")
    text = render_ssh_config(guest.name, guest.port, guest.user, guest.login_key_file,
                             guest.known_hosts, guest.proxy_command)
    return write_owner_only(Path(path), text.encode())


# -- Ansible ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class InventoryHost:
    """One guest as an inventory sees it: plain values (from a live guest or a kept one)."""

    name: str
    os: str
    transport: str  # "ssh" or "winrm"
    port: int
    user: str
    family: str | None = None  # None: unknown (a kept guest whose image is gone)
    key_file: Path | None = None  # ssh
    known_hosts: Path | None = None  # ssh
    password: str | None = field(default=None, repr=False)  # winrm: never in the inventory
    proxy_command: tuple[str, ...] = ()  # ssh to a guest on a remote host: through the host


def inventory_host(guest) -> InventoryHost:
    """The inventory entry of a live *guest*."""
    transport = guest.config.family.transport
    return InventoryHost(
        name=guest.name, os=guest.os, transport=transport, port=guest.port, user=guest.user,
        family=guest.config.family.name, **_entries(transport).inventory_fields(guest))


def group_name(os_name: str) -> str:
    """*os_name* as a valid Ansible group name: letters, digits and ``_``, not starting with
    a digit, not a group Ansible or this inventory already defines (``debian-12`` ->
    ``debian_12``, ``9front`` -> ``os_9front``)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", os_name)
    if not name or name[0].isdigit() or name in RESERVED_GROUPS:
        name = f"os_{name}"
    return name


def _ssh_common_args(known_hosts: Path, proxy_command: Sequence[str] = ()) -> str:
    ssh_config_path(known_hosts)  # ssh expands % and ${} in it: refuse what it would change
    proxy = ["-o", shlex.quote(f"ProxyCommand={shlex.join(proxy_command)}")] if proxy_command else []
    return " ".join(["-o", shlex.quote(f"UserKnownHostsFile={known_hosts}"),
                     "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null",
                     "-o", "IdentitiesOnly=yes", *proxy])


def host_vars(host: InventoryHost) -> dict[str, Any]:
    """The inventory variables of *host* (a WinRM host's password is not among them)."""
    common = {"ansible_host": LOCALHOST, "ansible_port": int(host.port), "ansible_user": host.user}
    return {**common, **_entries(host.transport).host_vars(host)}


def render_inventory(hosts: Iterable[InventoryHost]) -> dict[str, Any]:
    """An Ansible YAML inventory (as data) of *hosts*: each under its name, with its
    variables, in group ``pytest_kvm``, and in a group named for its OS (see
    :func:`group_name`)."""
    everyone: dict[str, Any] = {}
    by_os: dict[str, dict[str, None]] = {}
    for host in hosts:
        if host.name in everyone:
            raise IntegrationError(f"two guests are named {host.name}")
        everyone[host.name] = host_vars(host)
        by_os.setdefault(group_name(host.os), {})[host.name] = None
    children: dict[str, Any] = {INVENTORY_GROUP: {"hosts": everyone}}
    children.update((group, {"hosts": members}) for group, members in sorted(by_os.items()))
    return {"all": {"children": children}}


def write_host_inventory(path: str | os.PathLike, hosts: Sequence[InventoryHost]) -> Path:
    """Write the inventory of *hosts* to *path* (YAML). A WinRM host's password goes to
    ``host_vars/NAME.yml`` beside it, mode 0600, as ``ansible_password``: Ansible's WinRM
    connection has no password-file variable, and it reads ``host_vars/`` next to an
    inventory file by itself."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = yaml.safe_dump(render_inventory(hosts), default_flow_style=False, sort_keys=False)
    for host in hosts:
        _entries(host.transport).write_secrets(host, path.parent)
    path.write_text("# pytest-kvm guests; passwords, if any, are in host_vars/ beside it\n"
                    + document)
    return path


def write_inventory(path: str | os.PathLike, guests: Iterable) -> Path:
    """Write an Ansible inventory of the live *guests* to *path* (what ``kvm.inventory(path)``
    does for the session's guests): ``ansible -i PATH all -m ping``.

    SSH guests: ``ansible_ssh_common_args`` pins the host key (the guest's known_hosts,
    ``StrictHostKeyChecking=yes``, no global known_hosts), with the session's login key only.
    Windows guests: WinRM (NTLM over HTTP; Ansible needs pywinrm). Their passwords are not in
    the inventory: each is in ``host_vars/NAME.yml`` beside it, mode 0600, which Ansible reads
    by itself (its WinRM connection has no password-file variable)."""
    return write_host_inventory(path, [inventory_host(g) for g in guests])


# -- kept guests (pytest-kvm inventory) ----------------------------------------------------------
def qcow2_backing_file(path: Path) -> Path | None:
    """The backing file named in qcow2 *path*'s header (None: none, or not a qcow2)."""
    try:
        with path.open("rb") as fh:
            magic, _version, offset, length = _QCOW2_HEADER.unpack(fh.read(_QCOW2_HEADER.size))
            if magic != _QCOW2_MAGIC or not offset or not 0 < length <= 1023:
                return None
            fh.seek(offset)
            name = fh.read(length).decode("utf-8", errors="surrogateescape")
    except (OSError, struct.error):
        return None
    return path.parent / name  # an absolute name stays as it is


def _image_identity(disk: Path) -> tuple[str, str | None]:
    """(OS name, family) of the guest whose overlay is *disk*: from the first directory in
    its backing chain that says, a golden's ``meta.json`` or a cached image's
    ``manifest.json``; ("unknown", None) if none does (a local image)."""
    for _ in range(_BACKING_DEPTH):
        disk = qcow2_backing_file(disk)
        if disk is None:
            break
        for name, read in ((META_FILE, lambda d: d["fields"]), (MANIFEST_FILE, lambda d: d)):
            try:
                data = read(json.loads((disk.parent / name).read_text()))
                os_name = data.get("os") or data.get("name")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
            if isinstance(os_name, str) and os_name:
                return os_name, data.get("family")
    return "unknown", None


def _unquote(text: str) -> str:
    """A path as printed in a command line: shell-quoted (shlex.join) or not (" ".join)."""
    return shlex.split(text)[0] if text[:1] in "'\"" else text


def kept_host(workdir: Path, access: str) -> InventoryHost:
    """The inventory entry of the kept guest in *workdir*, from *access* (the text of its
    KEPT_MARKER file: the ssh command line or the WinRM endpoint, see ``Guest.access``) and
    its disk's backing chain (its OS). ValueError if *access* is neither."""
    os_name, family = _image_identity(workdir / DISK_FILE)
    access = access.strip()
    for entries in ENTRIES.values():
        host = entries.kept_host(workdir, access, os_name, family)
        if host is not None:
            return host
    raise ValueError("its KEPT file holds neither an ssh command line nor a WinRM endpoint")


def kept_hosts(runs_dir: Path, warn=lambda message: None) -> list[InventoryHost]:
    """The guests left running by ``--kvm-keep`` in the run directories under *runs_dir*
    (``CACHE/runs``): each one's work directory holds a ``workdir.KEPT_MARKER`` file saying
    how it is reached. One that cannot be read is skipped, with ``warn(message)``."""
    found = []
    if not runs_dir.is_dir():
        return found
    for marker_file in sorted(runs_dir.glob(f"*/*/{KEPT_MARKER}")):
        workdir = marker_file.parent
        try:
            found.append(kept_host(workdir, marker_file.read_text()))
        except (OSError, ValueError) as exc:
            warn(f"kept guest {workdir.name} skipped: {type(exc).__name__}: {exc}")
    return found


# -- what differs by transport ---------------------------------------------------------------------
class SshEntries:
    """An SSH guest as other tools reach it: an ssh_config ``Host``, the session's key and the
    pinned host key."""

    transport = "ssh"

    @staticmethod
    def hostspec(guest) -> str:
        return f"ssh://{guest.name}"

    @staticmethod
    def testinfra_host(testinfra, guest):
        config = write_ssh_config(guest, guest.config.workdir / SSH_CONFIG_FILE)
        return testinfra.get_host(testinfra_hostspec(guest), ssh_config=str(config),
                                  controlpersist=0)

    @staticmethod
    def inventory_fields(guest) -> dict[str, Any]:
        return {"key_file": Path(guest.login_key_file), "known_hosts": Path(guest.known_hosts),
                "proxy_command": tuple(guest.proxy_command or ())}

    @staticmethod
    def host_vars(host: InventoryHost) -> dict[str, Any]:
        if host.key_file is None or host.known_hosts is None:
            raise IntegrationError(f"guest {host.name}: an SSH host needs a key file and a known_hosts")
        found = {"ansible_ssh_private_key_file": str(host.key_file),
                 "ansible_ssh_common_args": _ssh_common_args(host.known_hosts, host.proxy_command)}
        interpreter = PYTHON_INTERPRETERS.get(host.family or "")
        if interpreter:
            found["ansible_python_interpreter"] = interpreter
        return found

    @staticmethod
    def write_secrets(host: InventoryHost, directory: Path) -> None:
        """Nothing: the key file is the session's, named in the inventory."""

    @staticmethod
    def kept_host(workdir: Path, access: str, os_name: str, family: str | None) -> InventoryHost | None:
        ssh = _SSH_ACCESS.match(access)
        if not ssh:
            return None
        known_hosts = _unquote(ssh["known_hosts"]).removeprefix("UserKnownHostsFile=")
        return InventoryHost(name=workdir.name, os=os_name, family=family, transport="ssh",
                             port=int(ssh["port"]), user=ssh["user"],
                             key_file=Path(_unquote(ssh["key"])),
                             known_hosts=(Path(known_hosts) if known_hosts
                                          else workdir / KNOWN_HOSTS_FILE))


class WinRMEntries:
    """A Windows guest as other tools reach it: WinRM (NTLM over HTTP) with its generated
    password, which goes only to 0600 files."""

    transport = "winrm"

    @staticmethod
    def hostspec(guest) -> str:
        creds = guest.credentials
        user = urllib.parse.quote(creds.user, safe="")
        password = urllib.parse.quote(creds.password, safe="")
        return f"winrm://{user}:{password}@{LOCALHOST}:{guest.port}?no_ssl=true&no_verify_ssl=true"

    @staticmethod
    def testinfra_host(testinfra, guest):
        return testinfra.get_host(testinfra_hostspec(guest))

    @staticmethod
    def inventory_fields(guest) -> dict[str, Any]:
        return {"password": guest.credentials.password}

    @staticmethod
    def host_vars(host: InventoryHost) -> dict[str, Any]:
        return {"ansible_connection": "winrm", "ansible_winrm_transport": "ntlm",
                "ansible_winrm_scheme": "http"}

    @staticmethod
    def write_secrets(host: InventoryHost, directory: Path) -> None:
        """The password in ``host_vars/NAME.yml`` beside the inventory, mode 0600."""
        if host.password is None:
            raise IntegrationError(f"guest {host.name}: its WinRM password is unknown")
        directory = directory / HOST_VARS_DIR
        directory.mkdir(mode=0o700, exist_ok=True)
        write_owner_only(directory / f"{host.name}.yml",
                         yaml.safe_dump({"ansible_password": host.password}).encode())

    @staticmethod
    def kept_host(workdir: Path, access: str, os_name: str, family: str | None) -> InventoryHost | None:
        winrm = _WINRM_ACCESS.match(access)
        if not winrm:
            return None
        password = Path(_unquote(winrm["file"])).read_text()
        return InventoryHost(name=workdir.name, os=os_name, family=family or "windows",
                             transport="winrm", port=int(winrm["port"]), user=winrm["user"],
                             password=password)


ENTRIES = {e.transport: e for e in (SshEntries, WinRMEntries)}  # a family's transport -> its entries


def _entries(transport: str):
    return ENTRIES[transport]
