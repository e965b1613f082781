#!/usr/bin/env python3
"""Benchmark: would an in-place revert (QEMU's ``loadvm`` of an internal snapshot in a
running process) make a test's guest cheaper than a warm clone (a new QEMU restored from
the golden's saved state)? Prints, in one run on the same image:

- a warm clone of the plugin: start to first command, and its QEMU's CPU-seconds then;
- the same guest booted by hand (the plugin's kernel, seed and command line) and saved once
  with ``savevm``; then, each run: ``loadvm`` to a new SSH login and first command, the
  QEMU CPU-seconds it took, and TCG's translation-block counters before and after
  (``info jit``: whether the translated code survived the revert).

    .venv/bin/python scripts/benchmark_revert.py [--runs 5]

Not a test; run it with nothing else booting.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_kvm.config import Settings
from pytest_kvm.guest.cold import seed_for
from pytest_kvm.guest.config import domain_spec
from pytest_kvm.guest.machine import free_port
from pytest_kvm.images.qemu_img import create_overlay
from pytest_kvm.keys import KeyPair, write_known_hosts
from pytest_kvm.session.session import KvmSession
from pytest_kvm.transport.ssh import SshClient


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def qemu_pid(name: str) -> int:
    ps = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return int(next(line.split()[0] for line in ps.splitlines()
                    if "qemu-system" in line and f"guest={name}," in line))


class Hmp:
    """QEMU's human monitor on a UNIX socket: one command at a time, its output."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self._until_prompt()

    def _until_prompt(self) -> str:
        data = b""
        while not data.endswith(b"(qemu) "):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("monitor closed")
            data += chunk
        return data.decode(errors="replace")

    def __call__(self, command: str) -> str:
        self.sock.sendall(command.encode() + b"\n")
        return self._until_prompt()


def tb_counters(hmp: Hmp) -> dict[str, int]:
    """``TB count`` and ``TB flush count`` of ``info jit``."""
    out = {}
    for line in hmp("info jit").splitlines():
        for key in ("TB count", "TB flush count"):
            if line.strip().startswith(key):
                out[key] = int(line.split()[-1].split("/")[0])
    return out


def login_and_run(port: int, key: Path, known: Path, timeout: float) -> float:
    """Seconds until a new SSH login ran ``true``."""
    t0 = time.monotonic()
    while True:
        try:
            client = SshClient(port, "pytest", key, known)
            client.connect(timeout=10)
            client.run("true", timeout=30, check=True)
            client.close()
            return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - not back yet
            if time.monotonic() - t0 > timeout:
                raise
            time.sleep(0.05)


def clones(session: KvmSession, os_name: str, runs: int) -> tuple[list[float], list[float]]:
    session.boot(os_name).destroy()  # the golden
    walls, cpus = [], []
    for _ in range(runs):
        t0 = time.monotonic()
        guest = session.boot(os_name)
        guest.run("true", check=True)
        walls.append(time.monotonic() - t0)
        cpus.append(cpu_seconds(qemu_pid(guest.name)))
        guest.destroy()
    return walls, cpus


def reverts(session: KvmSession, os_name: str, runs: int) -> dict:
    unstarted = session.create(os_name, reset="boot")
    config = unstarted.config
    unstarted.destroy()
    image = config.image
    with tempfile.TemporaryDirectory(prefix="pk-bench-revert-") as tmp:
        tmp = Path(tmp)
        login, host = KeyPair.generate("bench"), KeyPair.generate("bench-host")
        login.write_private(tmp / "id")
        create_overlay(image.disk, image.format, tmp / "disk.qcow2")
        seed_for(config, "bench", login_key=login, host_key=host).write(tmp / "seed.iso")
        port = free_port()
        write_known_hosts(tmp / "known_hosts", "127.0.0.1", port, host.public_openssh)
        argv = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg,tb-size=128",
                "-cpu", "qemu64", "-m", str(config.memory_mib), "-smp", str(config.cpus),
                "-nodefaults", "-no-user-config", "-display", "none",
                "-kernel", str(image.kernel), "-initrd", str(image.initrd),
                "-append", domain_spec(config, port).cmdline,
                "-drive", f"file={tmp / 'disk.qcow2'},if=virtio,format=qcow2",
                # savevm skips read-only drives: the snapshot lives in the overlay
                "-drive", f"file={tmp / 'seed.iso'},if=virtio,format=raw,readonly=on",
                "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
                "-device", "virtio-net-pci,netdev=net0,addr=0x1e", "-device", "virtio-rng-pci",
                "-serial", f"file:{tmp / 'console.log'}",
                "-monitor", f"unix:{tmp / 'hmp'},server=on,wait=off"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            boot = login_and_run(port, tmp / "id", tmp / "known_hosts", 300)
            time.sleep(5)  # settle, as a golden does
            hmp = Hmp(tmp / "hmp")
            t0 = time.monotonic()
            saved = hmp("savevm golden")
            save_s = time.monotonic() - t0
            rows = []
            for _ in range(runs):
                login_and_run(port, tmp / "id", tmp / "known_hosts", 60)  # warm: code translated
                before = tb_counters(hmp)
                c0, t0 = cpu_seconds(proc.pid), time.monotonic()
                out = hmp("loadvm golden")
                load_s = time.monotonic() - t0
                after_load = tb_counters(hmp)
                first = login_and_run(port, tmp / "id", tmp / "known_hosts", 60)
                rows.append({"loadvm_s": load_s, "to_first_command_s": load_s + first,
                             "cpu_s": cpu_seconds(proc.pid) - c0, "tb_before": before,
                             "tb_after_loadvm": after_load, "monitor": out.strip()[-200:]})
            return {"boot_s": boot, "savevm_s": save_s, "savevm_out": saved.strip()[-200:],
                    "runs": rows}
        finally:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--os", default="debian-12")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    session = KvmSession(Settings.build(prepare_ahead=0))
    try:
        walls, cpus = clones(session, args.os, args.runs)
        revert = reverts(session, args.os, args.runs)
    finally:
        session.close()
    rows = revert["runs"]
    med = lambda values: statistics.median(values)  # noqa: E731
    print(f"\nwarm clone (new QEMU, restore): start to first command {med(walls):.2f} s "
          f"({min(walls):.2f}-{max(walls):.2f}); QEMU CPU then {med(cpus):.2f} CPU-s")
    print(f"in-place revert (loadvm in the running QEMU): loadvm {med([r['loadvm_s'] for r in rows]):.2f} s; "
          f"to first command {med([r['to_first_command_s'] for r in rows]):.2f} s; "
          f"QEMU CPU {med([r['cpu_s'] for r in rows]):.2f} CPU-s")
    print(f"  savevm once: {revert['savevm_s']:.2f} s; boot by hand to first command {revert['boot_s']:.1f} s")
    for r in rows:
        print(f"  TB counters before loadvm {r['tb_before']} -> after {r['tb_after_loadvm']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
