"""A watchdog tied to the pytest process: if the owner dies without closing its session
(SIGKILL, a crash), the watchdog destroys the owner's guests and removes its files.

The owner keeps the write end of a pipe whose read end only the watchdog holds. The
read returns as soon as the owner is gone, for whatever reason; a clean close writes
``bye`` first, and the watchdog then exits without touching anything.
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


class Watchdog:
    """The owner's side: spawn at session start, ``stop()`` at a clean session end."""

    def __init__(self, run_dir: Path, uri: str | None, embed_index: int | None) -> None:
        read_fd, self._write_fd = os.pipe()
        argv = [sys.executable, "-m", "pytest_kvm.watchdog", "--fd", str(read_fd),
                "--run-dir", str(run_dir)]
        if embed_index is not None:
            argv += ["--embed-index", str(embed_index)]
        elif uri:
            argv += ["--uri", uri]
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # the log lives and dies with the run directory
        log = open(run_dir / "watchdog.log", "ab")  # noqa: SIM115
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


def _reap(args) -> None:
    from .hypervisor import Hypervisor  # noqa: PLC0415 - only after the owner died
    from .errors import KvmError  # noqa: PLC0415
    from .reaper import reap_domains  # noqa: PLC0415
    from .domain import NAME_PREFIX  # noqa: PLC0415

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
            removed = reap_domains(hv)
            print(f"watchdog: removed {removed}", file=sys.stderr)
        except KvmError as exc:
            print(f"watchdog: reaping through libvirt failed: {exc}", file=sys.stderr)
        finally:
            hv.close()
    # a QEMU the dead owner was still starting may be unknown to libvirt: end it by name
    killed = kill_orphans(NAME_PREFIX + Path(args.run_dir).name + "-")
    if killed:
        print(f"watchdog: killed QEMU processes libvirt did not know: {killed}", file=sys.stderr)
    shutil.rmtree(args.run_dir, ignore_errors=True)


def kill_orphans(prefix: str) -> list[int]:
    """SIGKILL the QEMU processes of guests whose name starts with *prefix*."""
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0] and any(
                a.startswith(f"guest={prefix}".encode()) for a in argv):
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pytest-kvm-watchdog")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--uri")
    parser.add_argument("--embed-index", type=int)
    args = parser.parse_args(argv)
    if _wait_for_owner(args.fd):
        return 0
    _reap(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
