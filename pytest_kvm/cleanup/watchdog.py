"""A watchdog tied to the pytest process: if the owner dies without closing its session
(SIGKILL, a crash), the watchdog destroys the owner's guests and removes its files.

The owner keeps the write end of a pipe whose read end only the watchdog holds. The
read returns as soon as the owner is gone, for whatever reason; a clean close writes
``bye`` first, and the watchdog then exits without touching anything.

Its log is ``CACHE/runs/RUN_ID.watchdog.log``, next to the run directory rather than in
it: a reap that could not destroy a guest keeps both, and says so in the log. A clean
end or a complete reap removes the log.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BYE = b"bye"
SLOT_WAIT = 20.0  # seconds to wait for the dead owner's embedded root to become free
KILL_WAIT = 5.0  # seconds for SIGKILLed QEMU processes to be gone


def log_path(run_dir: Path) -> Path:
    """Where the watchdog of *run_dir* logs: beside it, so that the log outlives it."""
    return run_dir.with_name(f"{run_dir.name}.watchdog.log")


class Watchdog:
    """The owner's side: spawn at session start, ``stop()`` at a clean session end."""

    def __init__(self, run_dir: Path, uri: str | None, embed_index: int | None) -> None:
        self.log = log_path(run_dir)
        read_fd, self._write_fd = os.pipe()
        argv = [sys.executable, "-m", "pytest_kvm.cleanup.watchdog", "--fd", str(read_fd),
                "--run-dir", str(run_dir), "--log", str(self.log)]
        if embed_index is not None:
            argv += ["--embed-index", str(embed_index)]
        elif uri:
            argv += ["--uri", uri]
        self.log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(argv, pass_fds=(read_fd,), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=log, start_new_session=True)
        finally:
            os.close(read_fd)
            log.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._write_fd, BYE)
        with contextlib.suppress(OSError):
            os.close(self._write_fd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        self.log.unlink(missing_ok=True)  # a clean end: nothing to tell


def _wait_for_owner(fd: int) -> bool:
    """Block until the owner is gone; True if it said goodbye (a clean close)."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 64)
        except InterruptedError:
            continue
        if not chunk:
            return BYE in data
        data += chunk


def _reap(args) -> bool:
    """Destroy the dead owner's guests and remove its run directory; True if all went. A
    guest of this run that libvirt could not destroy, or a QEMU of it still running after
    SIGKILL, keeps the run directory (its files may be in use) and is named in the log."""
    from ..vm.hypervisor import Hypervisor  # noqa: PLC0415 - only after the owner died
    from ..errors import KvmError  # noqa: PLC0415
    from .reaper import reap_domains  # noqa: PLC0415
    from ..vm.domain import NAME_PREFIX  # noqa: PLC0415

    prefix = NAME_PREFIX + Path(args.run_dir).name + "-"
    not_destroyed: list[str] = []

    def failed(name: str, exc: KvmError) -> None:
        print(f"watchdog: could not destroy {name}: {exc}", file=sys.stderr)
        if name.startswith(prefix):
            not_destroyed.append(name)

    deadline = time.monotonic() + SLOT_WAIT
    hv = None
    while hv is None:
        try:
            hv = (Hypervisor.open_embed_slot(args.embed_index) if args.embed_index is not None
                  else Hypervisor.open(args.uri))
        except KvmError as exc:
            if time.monotonic() > deadline:
                print(f"watchdog: cannot open libvirt: {exc}", file=sys.stderr)
                break
            time.sleep(0.2)
    if hv is not None:
        try:
            removed = reap_domains(hv, failed=failed)
            print(f"watchdog: removed {removed}", file=sys.stderr)
            if args.uri and "+" in args.uri.split(":", 1)[0]:  # a remote host's volumes
                from ..hosts.volumes import POOL, owner_volume, remove_guest_volumes  # noqa: PLC0415
                print(f"watchdog: removed volumes {remove_guest_volumes(hv, prefix)}",
                      file=sys.stderr)
                _remove_share_copies(args.uri, prefix)
                hv.delete_volume(POOL, owner_volume(Path(args.run_dir).name))  # its record
        except KvmError as exc:
            print(f"watchdog: reaping through libvirt failed: {exc}", file=sys.stderr)
        finally:
            hv.close()
    if args.uri and "+" in args.uri.split(":", 1)[0]:  # its networks= on the host
        from ..hosts.netsite import remove_run_networks  # noqa: PLC0415
        try:
            remove_run_networks(args.uri, Path(args.run_dir).name)
        except (KvmError, ValueError) as exc:
            print(f"watchdog: removing the run's networks on the host failed: {exc}",
                  file=sys.stderr)
    # a QEMU the dead owner was still starting may be unknown to libvirt: end it by name
    killed = kill_orphans(prefix)
    if killed:
        print(f"watchdog: killed QEMU processes libvirt did not know: {killed}", file=sys.stderr)
    kill_deadline = time.monotonic() + KILL_WAIT
    while qemu_pids(prefix) and time.monotonic() < kill_deadline:
        time.sleep(0.1)
    running = qemu_pids(prefix)
    if not_destroyed or running:
        print(f"watchdog: {args.run_dir} kept: guests not destroyed {not_destroyed}, "
              f"QEMU processes still running {running}", file=sys.stderr)
        return False
    shutil.rmtree(args.run_dir, ignore_errors=True)
    return True


def _remove_share_copies(uri: str, prefix: str) -> None:
    """The dead run's share copies on its remote host (over an SSH link of our own); if
    that fails, ``reap --host`` removes them later (the run's owner record says it is dead)."""
    from ..errors import KvmError  # noqa: PLC0415
    from ..hosts.shares import remove_run_shares  # noqa: PLC0415
    try:
        print(f"watchdog: removed share copies {remove_run_shares(uri, prefix)}", file=sys.stderr)
    except (KvmError, OSError) as exc:
        print(f"watchdog: share copies not removed ({exc}); `pytest-kvm reap --host` will",
              file=sys.stderr)


def kill_orphans(prefix: str) -> list[int]:
    """SIGKILL the QEMU processes of guests whose name starts with *prefix*."""
    killed = []
    for pid in qemu_pids(prefix):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def qemu_pids(prefix: str) -> list[int]:
    """The QEMU processes of guests whose name starts with *prefix*."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0] and any(
                a.startswith(f"guest={prefix}".encode()) for a in argv):
            found.append(int(proc.name))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pytest-kvm-watchdog")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--uri")
    parser.add_argument("--embed-index", type=int)
    parser.add_argument("--log", help="this watchdog's log, removed after a complete reap")
    args = parser.parse_args(argv)
    if _wait_for_owner(args.fd):
        return 0
    if _reap(args) and args.log:
        Path(args.log).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
