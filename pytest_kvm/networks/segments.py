"""Private networks between the guests of one session (``networks=("lan",)``).

Every guest that names a network gets a second NIC on it: a private Ethernet segment
that only the guests on it share. No root, no bridge, no tap: each NIC is a QEMU
``dgram`` netdev on a Unix socket in the run's directory, and a small switch process
(:mod:`pytest_kvm.networks.switch`, one per network) forwards frames between them. Both
must be on the machine QEMU runs on: a :class:`Site` the host gives says where
(:class:`LocalSite` here; a remote host's is :mod:`pytest_kvm.hosts.netsite`), so this
module never asks which host it is. Networks belong
to the session (one pytest process, or one xdist worker), so runs, workers and sessions
never share a segment. The default NIC (user networking, the SSH forward) is unchanged.

Addresses are chosen here and set in the guest by the family's commands:

* IPv4 ``169.254.N.H/24``: link-local (RFC 3927), an address range routers never
  forward, so it only ever exists inside the segment and cannot collide with a network
  the host or the guest's user NIC (``10.0.2.0/24``) is on. N is the network's number in
  the session (1, 2, ...; 169.254.169.0/24, home of the cloud metadata address, skipped).
* IPv6 ``fdXX:XXXX:XXXX:N::H/64``: a unique local prefix (RFC 4193) with a random
  global ID per session.

Host numbers H are handed out in turn (2, 3, ... 254, then free ones from the start
again), so a guest that joins rarely gets an address a destroyed guest had a moment ago
(whose MAC the others may still have in their neighbour caches).
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..vm.domain import PRIVATE_NIC_SLOTS, random_mac
from ..errors import KvmError
from .switch import HUB_SOCKET, MEMBER_SUFFIX

LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")
HOSTS = range(2, 255)
# jumbo frames: every member is configured by the plugin, and a frame costs the guests' TCP
# stacks (under TCG) and the switch the same whatever its size
MTU = 9000  # .1 is left free (a gateway a user may want to add)
SKIPPED_NETWORKS = {169}  # 169.254.169.254: the cloud metadata address
MAX_NETWORKS = 254 - len(SKIPPED_NETWORKS)
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes, one of them the terminating NUL
HUB_START = 10.0  # seconds the switch process may take to listen


class NetworkError(KvmError):
    """A guest network could not be made or joined; the message says what to do."""


@dataclass(frozen=True)
class Attachment:
    """One guest's NIC on one network."""

    network: str
    index: int  # the guest's NIC number among its networks (0, 1, ...)
    mac: str
    ipv4: str
    ipv6: str
    socket: Path  # the NIC's end (QEMU binds it)
    hub: Path  # the switch's end
    scope6: str  # the session's IPv6 prefix (every network's subnet is in it)
    prefix4: int = 24
    prefix6: int = 64
    scope4: str = str(LINK_LOCAL)  # every network's IPv4 subnet is in it
    mtu: int = MTU


class SwitchHandle(ABC):
    """A running switch process."""

    @abstractmethod
    def stop(self) -> None:
        """End it (and wait for it); nothing if it has ended."""


class Site(ABC):
    """Where a session's networks live: the machine QEMU runs on, which holds each network's
    directory (the sockets) and its switch process. :class:`LocalSite` is this machine; a
    remote host gives its own (see :meth:`pytest_kvm.hosts.base.Host.network_site`)."""

    #: the directory holding the session's network directories (a path where QEMU runs)
    root: Path
    #: what to do when the socket paths under :attr:`root` are too long
    shorter = "set PYTEST_KVM_CACHE_DIR to a shorter directory"

    @abstractmethod
    def start_switch(self, network: str, directory: Path) -> SwitchHandle:
        """Make *directory* and start network *network*'s switch there; return once it
        listens (a :class:`NetworkError` with its log if it does not in time)."""

    @abstractmethod
    def remove_member(self, socket: Path) -> None:
        """Remove a member's socket file (it is off the network for the switch)."""

    def close(self, kept: bool) -> None:
        """The session ended (*kept*: some network stays for a kept guest)."""


class LocalSwitch(SwitchHandle):
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LocalSite(Site):
    """Networks on this machine: directories under *root* (in the run's directory), switches
    as child processes that outlive pytest if a kept guest needs them (``--kvm-keep``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def start_switch(self, network: str, directory: Path) -> SwitchHandle:
        # inside the run's directory, which exists (with its owner record) once a guest does
        directory.parent.mkdir(mode=0o700, exist_ok=True)
        directory.mkdir(mode=0o700)
        with open(directory / "hub.log", "ab") as log:
            switch = LocalSwitch(subprocess.Popen(
                [sys.executable, "-m", "pytest_kvm.networks.switch", str(directory)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True))  # a kept network outlives pytest (--kvm-keep)
        deadline = time.monotonic() + HUB_START
        while not (directory / HUB_SOCKET).exists():
            if switch.proc.poll() is not None or time.monotonic() > deadline:
                switch.stop()
                log_text = (directory / "hub.log").read_text(errors="replace")[-2000:]
                raise NetworkError(f"network {network}: its switch process did not start "
                                   f"(log: {log_text.strip() or 'empty'})")
            time.sleep(0.02)
        return switch

    def remove_member(self, socket: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()


class Network:
    """One segment: its switch process, its members and their addresses."""

    def __init__(self, name: str, number: int, directory: Path, ula: ipaddress.IPv6Network,
                 site: "Site | None" = None) -> None:
        self.name = name
        self.directory = directory
        self.site = site or LocalSite(directory.parent)
        self.subnet4 = ipaddress.IPv4Network((int(LINK_LOCAL.network_address) + (number << 8), 24))
        self.ula = ula
        self.subnet6 = ipaddress.IPv6Network((int(ula.network_address) + (number << 64), 64))
        self.members: dict[str, tuple[Any, Attachment]] = {}  # guest name -> (guest, its NIC)
        self._last_host = HOSTS[0] - 1
        self._hub: SwitchHandle | None = None

    @property
    def hub_socket(self) -> Path:
        return self.directory / HUB_SOCKET

    def start(self) -> None:
        """Start the switch process (where the site says) and wait until it listens."""
        socket_path = self.directory / ("0" * 12 + MEMBER_SUFFIX)
        if len(os.fsencode(socket_path)) > SOCKET_PATH_MAX:
            raise NetworkError(
                f"network {self.name}: the socket paths under {self.directory} are too long for "
                f"a Unix socket ({len(os.fsencode(socket_path))} > {SOCKET_PATH_MAX} bytes); "
                f"{self.site.shorter}")
        self._hub = self.site.start_switch(self.name, self.directory)

    def stop(self) -> None:
        if self._hub is not None:
            self._hub.stop()

    def _next_host(self) -> int:
        taken = {int(ipaddress.IPv4Address(a.ipv4)) - int(self.subnet4.network_address)
                 for _, a in self.members.values()}
        candidates = [h for h in HOSTS if h > self._last_host] + [h for h in HOSTS if h <= self._last_host]
        for host in candidates:
            if host not in taken:
                self._last_host = host
                return host
        raise NetworkError(f"network {self.name} is full: {len(HOSTS)} guests are on it")

    def attach(self, guest: Any, index: int) -> Attachment:
        """Give *guest* (its NIC number *index*) an address and a MAC on this network."""
        host = self._next_host()
        macs = {a.mac for _, a in self.members.values()}
        mac = random_mac()
        while mac in macs:
            mac = random_mac()
        attachment = Attachment(
            network=self.name, index=index, mac=mac,
            ipv4=str(self.subnet4.network_address + host),
            ipv6=str(self.subnet6.network_address + host),
            socket=self.directory / (mac.replace(":", "") + MEMBER_SUFFIX), hub=self.hub_socket,
            scope6=str(self.ula))
        self.members[guest.name] = (guest, attachment)
        return attachment

    def detach(self, guest_name: str) -> None:
        entry = self.members.pop(guest_name, None)
        if entry is not None:
            self.site.remove_member(entry[1].socket)  # off the network for the switch


def hosts_lines(network: Network) -> list[str]:
    """The hosts-file lines naming every member of *network*: ``ADDRESS NAME NAME.NETWORK``
    for each of its names (``name=``, and the guest's own name), IPv4 and IPv6."""
    lines = []
    for guest, attachment in network.members.values():
        names = [n for alias in guest.network_names for n in (alias, f"{alias}.{network.name}")]
        lines += [f"{attachment.ipv4} {' '.join(names)}", f"{attachment.ipv6} {' '.join(names)}"]
    return lines


class Networks:
    """The session's networks, made on first use and ended with the session."""

    def __init__(self, site: Site, host: Any = None) -> None:
        """*site*: where the networks live; *host*: the one host of the session's guests
        (a guest on another host cannot join: its QEMU could not reach the sockets)."""
        self._site = site
        self._host = host
        self._networks: dict[str, Network] = {}
        self._lock = threading.RLock()
        self._ula = ipaddress.IPv6Network((int.from_bytes(b"\xfd" + secrets.token_bytes(5), "big")
                                           << 80, 48))

    def _network(self, name: str) -> Network:
        network = self._networks.get(name)
        if network is None:
            numbers = [n for n in range(1, 255) if n not in SKIPPED_NETWORKS]
            if len(self._networks) >= len(numbers):
                raise NetworkError(f"at most {MAX_NETWORKS} networks per session")
            number = numbers[len(self._networks)]
            network = Network(name, number, self._site.root / str(number), self._ula,
                              self._site)
            network.start()
            self._networks[name] = network
        return network

    def join(self, guest: Any, names: tuple[str, ...]) -> list[Attachment]:
        """Put *guest* on the networks *names* (starting their switches if needed): its
        MACs and addresses, one :class:`Attachment` per network."""
        host = getattr(guest, "host", None)
        if self._host is not None and host is not None and host is not self._host:
            raise NetworkError(
                f"guest {guest.name} runs{host.where or ' on this machine'} but the session's "
                f"networks are{self._host.where or ' on this machine'}: the guests of one "
                f"network must run on one host (boot them from one session)")
        if len(names) > len(PRIVATE_NIC_SLOTS):
            raise NetworkError(f"guest {guest.name}: at most {len(PRIVATE_NIC_SLOTS)} networks "
                               f"per guest, not {len(names)}")
        with self._lock:
            attachments = []
            try:
                for index, name in enumerate(names):
                    network = self._network(name)
                    for other, _ in network.members.values():
                        clash = set(other.network_names) & set(guest.network_names)
                        if clash:
                            raise NetworkError(
                                f"guest {guest.name}: the name {sorted(clash)[0]!r} is taken on "
                                f"network {name} by guest {other.name}; give name= another value")
                    attachments.append(network.attach(guest, index))
            except BaseException:
                self.leave(guest.name)
                raise
            return attachments

    def leave(self, guest_name: str) -> None:
        with self._lock:
            for network in self._networks.values():
                network.detach(guest_name)

    def neighbours(self, guest: Any) -> list[Any]:
        """The guests sharing a network with *guest* (itself included), in joining order."""
        with self._lock:
            seen: dict[str, Any] = {}
            for network in self._networks.values():
                if guest.name in network.members:
                    for other, _ in network.members.values():
                        seen.setdefault(other.name, other)
            return list(seen.values())

    def hosts_for(self, guest: Any) -> list[str]:
        """The hosts-file lines *guest* needs: every member of each of its networks."""
        with self._lock:
            return [line for network in self._networks.values() if guest.name in network.members
                    for line in hosts_lines(network)]

    def close(self, keep: set[str] = frozenset()) -> None:
        """Stop every switch but those of networks a kept guest (by name) is on."""
        with self._lock:
            kept = False
            for network in self._networks.values():
                if keep & set(network.members):
                    kept = True
                else:
                    network.stop()
            self._site.close(kept)
