"""Remote hypervisor hosts (``--kvm-host URI``): which host a worker uses, and how it is reached.

A host is a libvirt URI reached over SSH, such as ``qemu+ssh://ci@hv1/system``
or ``qemu+libssh://ci@hv1/system?keyfile=/path/key&known_hosts=/path/kh``:
libvirt's own remote protocol carries the API calls, and the plugin opens one
SSH connection of its own to the same host (same user, port and key) for what
libvirt has no API for: the tunnel to a guest's forwarded port, and hashing
uploaded images on the host's side. That connection trusts only host keys in
the URI's ``known_hosts`` file (libvirt's parameter of the libssh transports;
the ``ssh`` transport ignores it and uses OpenSSH's own files), else in
``~/.ssh/known_hosts`` of the user's passwd home, where OpenSSH looks. Our one
parameter, ``slots=N`` (a weight, default 1), is taken off before libvirt sees
the URI. Each pytest-xdist worker is given one host, by weighted round robin.

The user, host name, port and paths end up in an OpenSSH command line, in a
``ProxyCommand`` of a generated ssh_config and in inventories: they are checked here,
where they enter (:func:`parse_host`), so that none holds a control character (a ``%0A``
in a parameter would start a new ssh_config line), starts with ``-`` (an option to
``ssh``) or holds ``%`` (an OpenSSH token in a ProxyCommand).
"""
from __future__ import annotations

import os
import pwd
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("qemu+ssh", "qemu+libssh", "qemu+libssh2")
OUR_PARAMS = ("slots",)
DEFAULT_SSH_PORT = 22
# libvirt's URI rules (https://libvirt.org/uri.html) for --kvm-uri: DRIVER[+TRANSPORT]://
# [USER@][HOST][:PORT]/PATH[?PARAMS]; the plugin boots QEMU guests, and over SSH a host
# is a --kvm-host (the plugin needs its own SSH link to it)
LIBVIRT_TRANSPORTS = ("unix", "tcp", "tls", "ext", "ssh", "libssh", "libssh2")
QEMU_PATHS = ("/system", "/session", "/embed")
# what a user and a host name may be (a host: a name, an IPv4 or a bracketed IPv6 address)
USER_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
HOST_PATTERN = re.compile(r"[A-Za-z0-9_:][A-Za-z0-9._:-]*")
URI_FORM = "qemu[+TRANSPORT]://[HOST]/PATH[?PARAMS], e.g. qemu:///system or qemu:///session"


class HostError(ValueError):
    """A ``--kvm-host`` value that cannot be used; the message says why."""


@dataclass(frozen=True)
class HostUri:
    """One remote hypervisor host, as given with ``--kvm-host``."""

    uri: str  # what libvirt opens: the given URI without our own parameters
    slots: int  # weight in the round robin over workers
    user: str
    hostname: str
    port: int
    key_file: Path | None  # libvirt's ``keyfile`` parameter; None: the SSH defaults
    known_hosts: Path  # libvirt's ``known_hosts`` parameter, else ~/.ssh/known_hosts

    @property
    def key(self) -> str:
        """A file name for this host (``user@host_port``): its upload locks' directory."""
        return f"{self.user}@{self.hostname}_{self.port}"

    @property
    def display_uri(self) -> str:
        """The URI without its parameters (no key or known_hosts paths), for messages."""
        return urllib.parse.urlunsplit(urllib.parse.urlsplit(self.uri)._replace(query=""))

    @property
    def label(self) -> str:
        """``user@host[:port]``, for headers, summaries and messages (no secrets in a URI)."""
        port = f":{self.port}" if self.port != DEFAULT_SSH_PORT else ""
        return f"{self.user}@{self.hostname}{port}"


def parse_host(text: str) -> HostUri:
    """A :class:`Host` from a ``--kvm-host`` value; :class:`HostError` says what is wrong."""
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in SCHEMES:
        raise HostError(f"--kvm-host {text!r}: use a libvirt URI over SSH such as "
                        f"qemu+ssh://user@host/system (schemes: {', '.join(SCHEMES)})")
    if not parts.hostname:
        raise HostError(f"--kvm-host {text!r} names no host")
    if parts.password:
        raise HostError(f"--kvm-host {parts.hostname}: put no password in the URI; "
                        f"use an SSH key (keyfile=PATH)")
    params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    _check_values(parts, params)
    slots_values = [value for name, value in params if name == "slots"]
    try:
        slots = int(slots_values[-1]) if slots_values else 1
    except ValueError:
        slots = 0
    if slots < 1:
        raise HostError(f"--kvm-host {parts.hostname}: slots={slots_values[-1]!r} is not a "
                        f"positive whole number")
    kept = [(name, value) for name, value in params if name not in OUR_PARAMS]
    uri = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept, safe="/")))
    named = dict(kept)
    try:
        port = parts.port or DEFAULT_SSH_PORT
    except ValueError as exc:
        raise HostError(f"--kvm-host {text!r}: {exc}") from None
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # OpenSSH's choice, whatever $HOME says
    return HostUri(uri=uri, slots=slots, user=parts.username or _local_user(),
                hostname=parts.hostname, port=port,
                key_file=Path(named["keyfile"]) if named.get("keyfile") else None,
                known_hosts=Path(named.get("known_hosts") or home / ".ssh" / "known_hosts"))


def _check_values(parts: urllib.parse.SplitResult, params: list[tuple[str, str]]) -> None:
    """Raise :class:`HostError` for a value that would change the meaning of the ssh command
    line, ssh_config or inventory it ends up in (see the module's docstring)."""
    where = f"--kvm-host {parts.hostname!r}"
    for what, value, pattern in (("user", parts.username, USER_PATTERN),
                                 ("host name", parts.hostname, HOST_PATTERN)):
        if value is not None and not pattern.fullmatch(value):
            raise HostError(f"{where}: the {what} {value!r} holds characters that cannot reach "
                            f"ssh safely (letters, digits, '.', '_', '-' only, not first '-')")
    for name, value in params:
        if any(ord(c) < 32 or ord(c) == 127 for c in name + value):
            raise HostError(f"{where}: parameter {name!r} holds a control character (a newline "
                            f"or NUL, maybe a %0A or %00 in the URI); remove it")
        if name in ("keyfile", "known_hosts") and (value.startswith("-") or "%" in value):
            raise HostError(f"{where}: {name}={value!r} cannot be passed to ssh (a path may not "
                            f"start with '-' or hold '%'); give another path, e.g. an absolute one")


def check_uri(text: str) -> str:
    """*text* if it is a libvirt URI of the QEMU driver the plugin can use as ``--kvm-uri``;
    else :class:`HostError` saying what is wrong (checked as text: libvirt is not loaded)."""
    parts = urllib.parse.urlsplit(text.strip())
    driver, _, transport = parts.scheme.partition("+")
    leave_out = "or leave --kvm-uri out (libvirtd's qemu:///system if it runs, else the embedded driver)"
    if driver != "qemu" or not parts.netloc and not parts.path:
        raise HostError(f"--kvm-uri {text!r} is not a libvirt URI of the QEMU driver: give "
                        f"{URI_FORM}, {leave_out}")
    if transport and transport not in LIBVIRT_TRANSPORTS:
        raise HostError(f"--kvm-uri {text!r}: libvirt has no transport {transport!r} (it has "
                        f"{', '.join(LIBVIRT_TRANSPORTS)})")
    if transport in ("ssh", "libssh", "libssh2"):
        raise HostError(f"--kvm-uri {text!r}: a host reached over SSH is a --kvm-host "
                        f"(--kvm-host {text.strip()})")
    if parts.path not in QEMU_PATHS:
        raise HostError(f"--kvm-uri {text!r}: the QEMU driver's paths are "
                        f"{', '.join(QEMU_PATHS)}, not {parts.path or 'none'!r}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise HostError(f"--kvm-uri {text!r}: {exc}") from None
    if parts.path == "/embed" and "root" not in dict(urllib.parse.parse_qsl(parts.query)):
        raise HostError(f"--kvm-uri {text!r}: the embedded driver needs ?root=DIR; leave "
                        f"--kvm-uri out to let the plugin pick a root of its own")
    return text.strip()


def _local_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def worker_index(worker_id: str | None) -> int:
    """``gw3`` -> 3; no xdist (None or ``master``) -> 0."""
    if not worker_id or not worker_id.startswith("gw"):
        return 0
    try:
        return int(worker_id[2:])
    except ValueError:
        return 0


def host_for_worker(hosts: tuple[HostUri, ...], index: int) -> HostUri:
    """The host worker number *index* uses: weighted round robin, so with hosts A
    (slots=2) and B, workers 0..5 get A, B, A, A, B, A (smooth: no host gets a run of
    workers while another waits)."""
    if not hosts:
        raise HostError("no --kvm-host given")
    order: list[HostUri] = []
    credit = [0] * len(hosts)
    total = sum(h.slots for h in hosts)
    for _ in range(total):  # nginx's smooth weighted round robin, one full cycle
        for i, h in enumerate(hosts):
            credit[i] += h.slots
        best = max(range(len(hosts)), key=lambda i: credit[i])
        credit[best] -= total
        order.append(hosts[best])
    return order[index % total]
