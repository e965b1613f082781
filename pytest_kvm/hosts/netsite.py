"""Private networks (``networks=``) on a remote host (``--kvm-host``).

A guest's private NIC is a QEMU ``dgram`` netdev whose Unix sockets must be on the machine
QEMU runs on, so a remote host's networks live there: each in a directory
``/tmp/pytest-kvm-net-<run id>/<N>/`` (the run id names its owner record on the host, so
the watchdog and ``pytest-kvm reap --host`` find a dead run's), served by a switch
process started over the plugin's SSH connection (:class:`~pytest_kvm.hosts.link.HostLink`).
The host has no pytest-kvm: the switch module (standard library only) is piped to the
host's ``python3`` and runs with ``--stdin-lifeline``, so it ends when its channel does
(the session ended, or the controller died: its SSH connection went with it), besides
SIGTERM and its directory vanishing; it removes its directory when it exits.

The run's directory is ``0711`` and each network's ``2733`` (setgid): QEMU may run as
another user than the SSH login (``libvirt-qemu``, ``qemu``) and binds its socket there,
which gets the directory's group (libvirt starts QEMU with umask 0002, so the switch can
send to it); the hub's socket is ``0666``. Nobody but the login can list the directory.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HypervisorError
from ..networks import switch
from ..networks.segments import NetworkError, Site, SwitchHandle
from .volumes import OWNER_SUFFIX, POOL, RUN_PREFIX

if TYPE_CHECKING:
    from ..vm.hypervisor import Hypervisor
    from .link import HostLink, RemoteProcess

NET_DIR_PREFIX = "/tmp/pytest-kvm-net-"  # + run id: a run's networks on a host
SWITCH_START = 30.0  # seconds the host's switch may take to listen (python3 starting there)
# run the source read from standard input (its length first), then standard input is the
# switch's lifeline: `python3 -c BOOTSTRAP LENGTH --stdin-lifeline DIRECTORY`
BOOTSTRAP = ("import sys; n = int(sys.argv.pop(1)); "
             "exec(compile(sys.stdin.buffer.read(n), 'pytest-kvm-switch', 'exec'), "
             "{'__name__': '__main__'})")


def network_root(run_id: str) -> Path:
    """The directory holding run *run_id*'s networks on a host."""
    return Path(f"{NET_DIR_PREFIX}{run_id}")


class RemoteSwitch(SwitchHandle):
    def __init__(self, process: RemoteProcess) -> None:
        self.process = process

    def stop(self) -> None:
        self.process.stop()


class RemoteSite(Site):
    """Run *run_id*'s networks on the host *label* reached through *link* (the host's SSH
    connection, open by the time a guest joins a network)."""

    shorter = "the host's /tmp path is fixed: report this as a bug"

    def __init__(self, link: Callable[[], "HostLink | None"], run_id: str, label: str) -> None:
        self.root = network_root(run_id)
        self._link = link
        self._label = label
        self._made = False  # whether a network directory was made (else nothing to remove)

    def link(self) -> HostLink:
        link = self._link()
        if link is None:
            raise NetworkError(f"host {self._label} is not connected: its networks cannot start")
        return link

    def start_switch(self, network: str, directory: Path) -> SwitchHandle:
        link = self.link()
        source = Path(switch.__file__).read_bytes()
        try:
            self._made = True
            link.run(["mkdir", "-p", "-m", "0711", "--", str(self.root)])
            link.run(["mkdir", "-m", "2733", "--", str(directory)])
        except HypervisorError as exc:
            raise NetworkError(f"network {network}: cannot make its directory on host "
                               f"{self._label}: {exc}") from exc
        process = link.start(["python3", "-c", BOOTSTRAP, str(len(source)), switch.LIFELINE,
                              str(directory)], stdin=source)
        if not process.wait_for_line(switch.READY, SWITCH_START):
            status = process.stop()
            log = process.stderr_tail()
            raise NetworkError(
                f"network {network}: its switch on host {self._label} did not start within "
                f"{SWITCH_START:.0f} s (exit status {status}; log: {log or 'empty'}); the host "
                f"needs python3 (3.8 or later) on the SSH user's PATH")
        return RemoteSwitch(process)

    def remove_member(self, socket: Path) -> None:
        # a socket left behind is harmless: its QEMU is gone, so the switch forgets it
        with contextlib.suppress(HypervisorError, NetworkError):
            self.link().run(["rm", "-f", "--", str(socket)])

    def close(self, kept: bool) -> None:
        """Remove the run's networks directory: the switches ended with their channels (a
        kept guest's network too: it ends with the session on a remote host)."""
        link = self._link()
        if link is not None and self._made:
            link.run(["rm", "-rf", "--", str(self.root)])


def remove_run_networks(uri: str, run_id: str) -> None:
    """Remove run *run_id*'s networks directory on the host of libvirt URI *uri* (its
    switches exit, if the end of their channels did not end them): the watchdog's step."""
    from .link import HostLink  # noqa: PLC0415 - paramiko only when needed
    from .uris import parse_host  # noqa: PLC0415
    link = HostLink(parse_host(uri)).connect()
    try:
        link.run(["rm", "-rf", "--", str(network_root(run_id))])
    finally:
        link.close()


def remove_dead_runs_networks(link: HostLink, hv: Hypervisor) -> list[str]:
    """Remove the networks directories of runs that have no owner record left on the host
    (run it after :func:`~pytest_kvm.hosts.volumes.remove_dead_runs_volumes`, which
    removes the dead runs' records); returns the directories removed."""
    try:
        volumes = hv.volumes(POOL)
    except HypervisorError:
        volumes = {}
    live = {name[len(RUN_PREFIX):-len(OWNER_SUFFIX)] for name in volumes
            if name.startswith(RUN_PREFIX) and name.endswith(OWNER_SUFFIX)}
    parent, prefix = NET_DIR_PREFIX.rsplit("/", 1)
    found = link.run(["find", parent, "-mindepth", "1", "-maxdepth", "1", "-type", "d",
                      "-name", f"{prefix}*", "-user", link.host.user]).split()
    removed = []
    for directory in found:
        if directory[len(NET_DIR_PREFIX):] in live:
            continue
        with contextlib.suppress(HypervisorError):  # not ours to remove after all: kept
            link.run(["rm", "-rf", "--", directory])
            removed.append(directory)
    return removed
