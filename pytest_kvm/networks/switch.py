"""The switch of one guest network: a small process forwarding Ethernet frames between
the guests' private NICs.

Each guest's NIC is a QEMU ``dgram`` netdev whose local end is a Unix datagram socket
in the network's directory (``<mac>.sock``) and whose remote end is this hub's socket
(``hub.sock``, same directory). A frame the hub receives from one member goes to the
member that owns its destination MAC (learned from the frames each member sent), or to
every other member (broadcast, multicast, not yet learned). The members are the sockets
in the directory: a guest is on the network as soon as QEMU bound its socket, and off it
once the plugin removed the file, so a frame never reaches a guest of another network
or of another run. A full receive queue drops the frame, as a switch does.

Run as ``python -m pytest_kvm.networks.switch DIRECTORY``; it exits on SIGTERM or once its directory
is gone (the session, the watchdog or the reaper removed the run's files).

On a remote host (``--kvm-host``) the module's source is piped to the host's ``python3``
(which has no pytest-kvm: this module uses the standard library only) and run as
``... --stdin-lifeline DIRECTORY`` over the plugin's SSH connection: it also exits once its
standard input reaches end of file (the SSH channel closed: the session ended, or the
controller died), says ``listening`` on its standard output once its socket is bound, and
removes its directory (and the run's, once empty) when it exits.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import sys
from pathlib import Path

HUB_SOCKET = "hub.sock"
MEMBER_SUFFIX = ".sock"
FRAME_MAX = 65536
CHECK_INTERVAL = 1.0  # seconds between checks that the directory still exists
#: learned MACs at most (a guest sending from a million spoofed MACs would otherwise grow the
#: table by ~77 bytes each); past it the least recently seen is forgotten, so its frames
#: are flooded until it sends again, as a hardware switch's full table does
MAX_MACS = 4096
LIFELINE = "--stdin-lifeline"
READY = "listening"  # what a lifeline switch prints once its socket is bound


class Switch:
    """A learning switch over members named by their socket paths (pure logic)."""

    def __init__(self, max_macs: int = MAX_MACS) -> None:
        self._owner: dict[bytes, str] = {}  # MAC -> member that sent from it, oldest first
        self.max_macs = max_macs

    def destinations(self, frame: bytes, source: str, members: set[str]) -> list[str]:
        """Where *frame*, received from *source*, goes among *members*."""
        if len(frame) < 14:  # not an Ethernet frame
            return []
        dst, src = frame[0:6], frame[6:12]
        if not src[0] & 1:  # a unicast source address: it lives behind *source*
            self._owner.pop(src, None)  # re-inserted: the most recently seen
            if len(self._owner) >= self.max_macs:
                del self._owner[next(iter(self._owner))]
            self._owner[src] = source
        if not dst[0] & 1:
            owner = self._owner.get(dst)
            if owner is not None and owner in members:
                return [] if owner == source else [owner]
        return sorted(m for m in members if m != source)

    @property
    def learned(self) -> int:
        """How many MACs it knows the member of."""
        return len(self._owner)

    def forget(self, member: str) -> None:
        for mac in [mac for mac, owner in self._owner.items() if owner == member]:
            del self._owner[mac]


def members(directory: Path) -> set[str]:
    """The members' socket paths: every ``*.sock`` in *directory* but the hub's own."""
    try:
        names = os.listdir(directory)
    except OSError:
        return set()
    return {str(directory / n) for n in names if n.endswith(MEMBER_SUFFIX) and n != HUB_SOCKET}


def serve(directory: Path, lifeline: bool = False) -> None:
    """Forward frames until the directory is gone (or, with *lifeline*, standard input
    reached end of file)."""
    hub_path = directory / HUB_SOCKET
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(hub_path))
    # QEMU may run as another user than the switch (a remote host's QEMU user): it may send
    # here; the directory's own mode keeps everyone else out of it
    os.chmod(hub_path, 0o666)
    sock.setblocking(False)
    watched = [sock]
    if lifeline:
        watched.append(sys.stdin.fileno())
        print(READY, flush=True)
    switch = Switch()
    known: set[str] = set()
    seen_mtime = -1
    try:
        while True:
            ready, _, _ = select.select(watched, [], [], CHECK_INTERVAL)
            if lifeline and sys.stdin.fileno() in ready and not os.read(sys.stdin.fileno(), 4096):
                return  # the controller's channel closed
            try:
                mtime = directory.stat().st_mtime_ns
            except OSError:
                return  # the run's files were removed: the network is over
            if mtime != seen_mtime:
                seen_mtime, known = mtime, members(directory)
            if sock not in ready:
                continue
            while True:
                try:
                    frame, source = sock.recvfrom(FRAME_MAX)
                except (BlockingIOError, InterruptedError):
                    break
                for target in switch.destinations(frame, source, known):
                    try:
                        sock.sendto(frame, target)
                    except BlockingIOError:  # that guest's queue is full: drop, like a switch
                        pass
                    except OSError:  # the guest is gone (its QEMU exited, its file removed)
                        switch.forget(target)
    finally:
        sock.close()
        try:
            hub_path.unlink()
        except OSError:
            pass


def remove_directory(directory: Path) -> None:
    """A lifeline switch's last step: its network's directory, and the run's if empty."""
    shutil.rmtree(directory, ignore_errors=True)
    try:
        directory.parent.rmdir()
    except OSError:  # another network of the run is still there
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    lifeline = bool(args) and args[0] == LIFELINE
    if lifeline:
        args = args[1:]
    if len(args) != 1:
        print(f"usage: python -m pytest_kvm.networks.switch [{LIFELINE}] DIRECTORY",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(0))
    try:
        serve(Path(args[0]), lifeline)
    finally:
        if lifeline:
            remove_directory(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
