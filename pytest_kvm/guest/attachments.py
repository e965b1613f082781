"""What a guest is given once it is up: shared host directories (virtiofs, hot-plugged and
mounted) and private networks (a NIC per network, hot-plugged, its addresses set, and the
hosts file of every guest on them). The object is the guest's member record on its
networks (see :mod:`pytest_kvm.networks.segments`)."""
from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import KvmError
from ..vm.domain import filesystem_xml, private_nic_commands
from .machine import Machine

if TYPE_CHECKING:
    from ..networks.segments import Attachment, Networks


class Attachments:
    """*m*'s shares and networks; *run* runs a command in the guest (``Guest.run``);
    *networks*: the session's (None: a guest made without a session cannot join any)."""

    def __init__(self, m: Machine, run: Callable[..., Any], networks: "Networks | None") -> None:
        self.m = m
        self._run = run
        self._networks = networks
        self.shares_mounted = False
        self.attachments: list[Attachment] = []  # this guest's NICs on its networks

    # -- a network member -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.m.name

    @property
    def host(self) -> Any:
        """The host the guest runs on (its networks must be there)."""
        return self.m.host

    @property
    def network_names(self) -> tuple[str, ...]:
        """The names the other guests on its networks know it by: ``name=`` (if given) and
        its own name, each also as ``NAME.NETWORK``."""
        alias = self.m.config.network_name
        return (alias, self.m.name) if alias else (self.m.name,)

    @property
    def running(self) -> bool:
        return self.m.running

    def write_hosts(self) -> None:
        """Name every guest on this guest's networks in its hosts file."""
        lines = self._networks.hosts_for(self)
        self._run(self.m.config.family.hosts_command.format(
            lines=" ".join(map(shlex.quote, lines))), sudo=True, check=True, timeout=60)

    # -- once the guest is up ------------------------------------------------------------------
    def connect(self) -> None:
        """Mount the shares and join the networks the guest's config names (once)."""
        self.mount_shares()
        self.join_networks()

    def _guest_ids(self) -> tuple[int, int]:
        """The guest's login uid and gid (what a virtiofsd launcher maps to the host user)."""
        ids = self._run("id -u && id -g", check=True, timeout=60).stdout.split()
        return int(ids[0]), int(ids[1])

    def mount_shares(self) -> None:
        """Hot-plug a virtiofs device per share and mount it (read-only unless writable);
        the host says what the device exports (the directory, or its copy on a remote
        host) and through which virtiofsd launcher."""
        cfg = self.m.config
        if self.shares_mounted or not cfg.shares:
            return
        t0 = time.monotonic()
        template = cfg.family.share_mount_command
        assert template is not None  # the session refuses shares for such families
        ids: list[tuple[int, int]] = []

        def guest_ids() -> tuple[int, int]:
            if not ids:
                ids.append(self._guest_ids())
            return ids[0]

        for index, share in enumerate(cfg.shares):
            source, launcher = self.m.host.export_share(self.m.name, index, share, cfg.workdir,
                                                        guest_ids)
            tag = f"pytest-kvm-{index}"
            self.m.host.attach(self.m.dom, filesystem_xml(tag, source, launcher),
                               f"share {share.source} ({share.mount_point})")
            self._run(template.format(tag=shlex.quote(tag), mount_point=shlex.quote(share.mount_point),
                                      mode="rw" if share.writable else "ro"),
                      sudo=True, check=True, timeout=120)
        self.shares_mounted = True
        self.m.timeline.add("shares", time.monotonic() - t0)

    def address(self, network: str, version: int = 4) -> str:
        if version not in (4, 6):
            raise ValueError(f"version must be 4 or 6, not {version!r}")
        for attachment in self.attachments:
            if attachment.network == network:
                return attachment.ipv4 if version == 4 else attachment.ipv6
        raise KvmError(f"guest {self.m.name} is not on network {network!r}; its networks: "
                       f"{', '.join(self.m.config.networks) or 'none'} (give networks=)")

    def join_networks(self) -> None:
        """A NIC per network (hot-plugged), its addresses set, and every guest on those
        networks told the names of the others (hosts files)."""
        names = self.m.config.networks
        if not names or self.attachments:
            return
        if self._networks is None:
            raise KvmError(f"guest {self.m.name} was not made by a session: it cannot join networks")
        t0 = time.monotonic()
        self.attachments = self._networks.join(self, names)
        self.plug_networks()
        for neighbour in self._networks.neighbours(self):
            if neighbour is self or neighbour.running:
                neighbour.write_hosts()
        self.m.timeline.add("networks", time.monotonic() - t0)

    def plug_networks(self) -> None:
        """Hot-plug this guest's private NICs into its (new) QEMU and configure them."""
        fam = self.m.config.family
        for attachment in self.attachments:
            for command in private_nic_commands(attachment.index, attachment.mac, fam.nic_model,
                                                attachment.socket, attachment.hub):
                self.m.host.monitor(self.m.dom, command,
                                    f"plugging a NIC on network {attachment.network}")
        self.configure_networks()

    def configure_networks(self) -> None:
        """Set the addresses of the private NICs (after a plug, or a reboot lost them)."""
        template = self.m.config.family.network_command
        assert template is not None  # the session refuses networks for such families
        for a in self.attachments:
            self._run(template.format(mac=shlex.quote(a.mac), ipv4=a.ipv4, prefix4=a.prefix4,
                                      ipv6=a.ipv6, prefix6=a.prefix6, scope4=a.scope4,
                                      scope6=a.scope6, mtu=a.mtu),
                      sudo=True, check=True, timeout=120)

    # -- after a new boot -------------------------------------------------------------------------
    def after_reboot(self) -> None:
        """The same QEMU booted again: mount the shares; address the NICs, which stayed."""
        self.mount_shares()
        if self.attachments:  # the NICs stayed in QEMU; the new boot has no addresses on them
            self.configure_networks()
            self.write_hosts()  # cloud-init may have written the hosts file anew at boot

    def after_power_on(self) -> None:
        """A new QEMU after a shutdown: plug the NICs again (shares come with connect)."""
        if self.attachments:
            self.plug_networks()
            self.write_hosts()

    def leave(self) -> None:
        if self._networks is not None:
            self._networks.leave(self.m.name)
