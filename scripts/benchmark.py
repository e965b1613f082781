#!/usr/bin/env python3
"""Benchmark: bare QEMU vs the plugin's cold boot, warm clones, a module of tests with
``--kvm-reset clone`` and ``boot``, and memory. Prints a table and JSON. Not a test.

    .venv/bin/python scripts/benchmark.py                  # 3 runs, 20-test modules
    .venv/bin/python scripts/benchmark.py --runs 5 --module-tests 20 --boot-module-tests 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_kvm import cloudinit, seed
from pytest_kvm.config import Settings
from pytest_kvm.families import family
from pytest_kvm.guest import free_port
from pytest_kvm.keys import KeyPair, write_known_hosts
from pytest_kvm.session import KvmSession
from pytest_kvm.ssh import SshClient, read_banner
from pytest_kvm.storage import create_overlay


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def qemu_pid(name: str) -> int | None:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in ps.splitlines():
        pid, _, args = line.strip().partition(" ")
        if "qemu-system" in args and f"guest={name}," in args:
            return int(pid)
    return None


def bare_qemu(session: KvmSession, os_name: str, memory: int, cpus: int, timeout: float) -> float:
    """The floor: the same kernel, initrd, disk, seed and NIC started by hand; seconds to SSH auth."""
    image = session.images.resolve(os_name)
    with tempfile.TemporaryDirectory(prefix="pk-bench-") as tmp:
        tmp = Path(tmp)
        login, host = KeyPair.generate("bench"), KeyPair.generate("bench-host")
        login.write_private(tmp / "id")
        create_overlay(image.disk, image.format, tmp / "disk.qcow2")
        # the very seed the plugin writes for this family (same builder, same contents)
        linux = family(image.family)
        seed.build_seed(linux.seed_format, instance_id="bench", hostname="bench",
                        user_data=cloudinit.render_user_data(linux, login_key=login, host_key=host),
                        public_keys={"pytest-kvm": login.public_openssh}).write(tmp / "seed.iso")
        port = free_port()
        write_known_hosts(tmp / "known_hosts", "127.0.0.1", port, host)
        accel = "kvm" if session.accel == "kvm" else "tcg"
        argv = ["qemu-system-x86_64", "-machine", f"pc,accel={accel}", "-m", str(memory), "-smp", str(cpus),
                "-nodefaults", "-no-user-config", "-display", "none",
                "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", image.cmdline,
                "-drive", f"file={tmp / 'disk.qcow2'},if=virtio,format=qcow2",
                "-drive", f"file={tmp / 'seed.iso'},if=virtio,format=raw,readonly=on",
                "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
                "-device", "virtio-net-pci,netdev=net0,addr=0x1e",
                "-device", "virtio-rng-pci", "-serial", f"file:{tmp / 'console.log'}"]
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            while time.monotonic() - t0 < timeout:
                try:
                    if read_banner(port, 3).startswith(b"SSH-"):
                        client = SshClient(port, cloudinit.LOGIN_USER, tmp / "id", tmp / "known_hosts")
                        client.connect(timeout=20)
                        client.close()
                        return time.monotonic() - t0
                except Exception:  # not up yet
                    pass
                time.sleep(0.5)
            raise TimeoutError("bare QEMU guest did not accept SSH")
        finally:
            proc.kill()
            proc.wait()


def phase_sum(guest, upto: str) -> float:
    total = 0.0
    for phase, seconds in guest.timeline.entries:
        total += seconds
        if phase == upto:
            return total
    return total


def module_run(n: int, reset: str, os_name: str) -> float:
    with tempfile.TemporaryDirectory(prefix="pk-bench-mod-") as tmp:
        body = "".join(f"def test_{i}(guest):\n    assert guest.run('true').ok\n\n" for i in range(n))
        (Path(tmp) / "test_module.py").write_text(body)
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--kvm-reset", reset, "--kvm-os", os_name, tmp],
                              capture_output=True, text=True, cwd=tmp)
        wall = time.monotonic() - t0
        if done.returncode != 0:
            raise RuntimeError(done.stdout[:3000] + "\n...\n" + done.stdout[-1500:])
        return wall


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "runs": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--os", default="debian-12")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", type=int, default=512)
    parser.add_argument("--module-tests", type=int, default=20)
    parser.add_argument("--boot-module-tests", type=int, default=20,
                        help="tests in the --kvm-reset boot module (each a cold boot)")
    args = parser.parse_args()
    log = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    session = KvmSession(Settings.build(reset="boot"), progress=log)
    results: dict[str, object] = {"os": args.os, "accel": session.acceleration.describe(),
                                  "cpus": session.settings.cpus, "memory_mib": args.memory}
    bare, cold_auth, cold_ready, clone_cmd, teardown = [], [], [], [], []
    try:
        timeout = session.settings.limits(session.accel)["boot"].seconds
        for i in range(args.runs):
            bare.append(bare_qemu(session, args.os, args.memory, session.settings.cpus, timeout))
            log(f"run {i + 1}: bare QEMU to SSH auth {bare[-1]:.1f} s")
            t0 = time.monotonic()
            guest = session.boot(args.os, memory_mib=args.memory, reset="boot")
            cold_ready.append(time.monotonic() - t0)
            cold_auth.append(phase_sum(guest, "ssh-auth"))
            if i == 0:
                time.sleep(5)  # idle
                pid = qemu_pid(guest.name)
                results["guest_qemu_rss_mib"] = round(rss_mib(pid), 1) if pid else None
            t0 = time.monotonic()
            guest.destroy()
            teardown.append(time.monotonic() - t0)
            log(f"run {i + 1}: plugin cold boot to SSH auth {cold_auth[-1]:.1f} s, ready {cold_ready[-1]:.1f} s")
        session.boot(args.os, memory_mib=args.memory, reset="clone").destroy()  # make the golden
        for i in range(max(args.runs, 5)):
            t0 = time.monotonic()
            guest = session.boot(args.os, memory_mib=args.memory, reset="clone")
            guest.run("true", check=True)
            clone_cmd.append(time.monotonic() - t0)
            guest.destroy()
        log(f"clone to first command: {statistics.median(clone_cmd):.2f} s")
        results["plugin_rss_mib"] = round(rss_mib(os.getpid()), 1)
    finally:
        session.close()
    results["bare_qemu_to_ssh_auth_s"] = summary(bare)
    results["plugin_cold_to_ssh_auth_s"] = summary(cold_auth)
    results["plugin_cold_to_ready_s"] = summary(cold_ready)
    results["plugin_overhead_ratio"] = round(statistics.median(cold_auth) / statistics.median(bare), 3)
    results["clone_to_first_command_s"] = summary(clone_cmd)
    results["teardown_s"] = summary(teardown)
    for reset, n in (("clone", args.module_tests), ("boot", args.boot_module_tests)):
        if n <= 0:
            continue
        log(f"{n}-test module with --kvm-reset {reset}")
        wall = module_run(n, reset, args.os)
        results[f"module_{reset}"] = {"tests": n, "wall_s": round(wall, 1), "per_test_s": round(wall / n, 2)}
    rows = [
        ("bare QEMU to SSH auth", results["bare_qemu_to_ssh_auth_s"]),
        ("plugin cold boot to SSH auth", results["plugin_cold_to_ssh_auth_s"]),
        ("plugin cold boot to ready (cloud-init done)", results["plugin_cold_to_ready_s"]),
        ("warm clone: start to first command", results["clone_to_first_command_s"]),
        ("teardown", results["teardown_s"]),
    ]
    print(f"\n{'measure':<46} {'median':>8} {'min':>8} {'max':>8} runs")
    for label, s in rows:
        print(f"{label:<46} {s['median']:>7.2f}s {s['min']:>7.2f}s {s['max']:>7.2f}s {s['runs']:>4}")
    print(f"plugin overhead vs bare QEMU (to SSH auth): {results['plugin_overhead_ratio']}x")
    for reset in ("clone", "boot"):
        if f"module_{reset}" in results:
            m = results[f"module_{reset}"]
            print(f"{m['tests']}-test module, --kvm-reset {reset}: {m['wall_s']} s wall, {m['per_test_s']} s per test")
    print(f"idle guest QEMU RSS: {results.get('guest_qemu_rss_mib')} MiB; plugin RSS: {results.get('plugin_rss_mib')} MiB")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
