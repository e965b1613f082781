#!/usr/bin/env python3
"""Benchmark: bare QEMU vs the plugin's cold boots (per OS), warm clones, two clones alive
at once, the first test of a second session (snapshots on vs off), 20-test modules (the
new way: snapshots, clones made ahead, teardown in the background; today's way:
per-session goldens, serial clones, teardown in line), a module whose tests keep the
host's CPUs busy (clones made ahead on vs off), and memory: six clones alive at once
(private RAM vs the golden's memfd) and TCG translation cache sizes (each: cold boot,
idle QEMU RSS/PSS, clone to first command, six clones' RSS/PSS). Each next to its
baseline, in the same run. Prints a table and JSON. Not a test; run it with nothing else
booting.

    .venv/bin/python scripts/benchmark.py                  # 3 runs, 20-test modules
    .venv/bin/python scripts/benchmark.py --runs 5 --cold-os debian-12 debian-13
    .venv/bin/python scripts/benchmark.py --memory-only --tb-sizes 0 256 128 64
    .venv/bin/python scripts/benchmark.py --lean-only --runs 3   # scripts/benchmark_lean.py's rows
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

from pytest_kvm.seed import cloudinit

from pytest_kvm.config import DEFAULT_TB_CACHE_MIB, Settings
from pytest_kvm.guest.cold import seed_for
from pytest_kvm.guest.config import domain_spec
from pytest_kvm.guest.machine import free_port
from pytest_kvm.keys import KeyPair, write_known_hosts
from pytest_kvm.session.session import KvmSession
from pytest_kvm.transport.ssh import SshClient, read_banner
from pytest_kvm.images.qemu_img import create_overlay

import benchmark_lean  # beside this script: the rows of lean guests


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pss_mib(pid: int) -> float:
    """Proportional set size: each page shared with other processes counted by its share."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
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
        # the very seed and command line the plugin gives a guest without user_data (the
        # plain seed where the image has it: see pytest_kvm/seed/plain.py)
        unstarted = session.create(os_name, reset="boot")
        config = unstarted.config
        unstarted.destroy()
        seed_for(config, "bench", login_key=login, host_key=host).write(tmp / "seed.iso")
        port = free_port()
        write_known_hosts(tmp / "known_hosts", "127.0.0.1", port, host.public_openssh)
        accel = "kvm" if session.accel == "kvm" else "tcg"
        argv = ["qemu-system-x86_64", "-machine", f"pc,accel={accel}", "-m", str(memory), "-smp", str(cpus),
                "-nodefaults", "-no-user-config", "-display", "none",
                "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", domain_spec(config, port).cmdline,
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


STAMP = """
import json, os, time, pytest

@pytest.fixture(autouse=True)
def _stamp(request):
    t0 = time.monotonic()
    yield
    with open(os.environ["BENCH_STAMPS"], "a") as fh:
        fh.write(json.dumps({"test": request.node.name, "start": t0, "end": time.monotonic()}) + "\\n")
"""


def child_pytest(body: str, *options: str, conftest: str = STAMP) -> list[dict]:
    """Run a test module in a child pytest; each test's start and end (monotonic)."""
    with tempfile.TemporaryDirectory(prefix="pk-bench-mod-") as tmp:
        (Path(tmp) / "test_module.py").write_text(body)
        (Path(tmp) / "conftest.py").write_text(conftest)
        stamps = Path(tmp) / "stamps.jsonl"
        env = {**os.environ, "BENCH_STAMPS": str(stamps)}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, tmp],
                              capture_output=True, text=True, cwd=tmp, env=env)
        if done.returncode != 0:
            raise RuntimeError(done.stdout[:3000] + "\n...\n" + done.stdout[-1500:])
        return [json.loads(line) for line in stamps.read_text().splitlines()]


def per_test_after_first(stamps: list[dict]) -> float:
    """Wall time per test after the first: from the first test's end to the last's end."""
    return (stamps[-1]["end"] - stamps[0]["end"]) / (len(stamps) - 1)


FIRST_TEST = """
import time

def test_first(request):
    t0 = time.monotonic()
    guest = request.getfixturevalue("guest")
    assert guest.run("true").ok
    print(f"SETUP {time.monotonic() - t0:.3f}")
"""


def first_test_setup(os_name: str, snapshots: str) -> float:
    """Seconds from asking for ``guest`` to its first command, in a new session."""
    with tempfile.TemporaryDirectory(prefix="pk-bench-first-") as tmp:
        (Path(tmp) / "test_first.py").write_text(FIRST_TEST)
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                               "--kvm-os", os_name, "--kvm-snapshots", snapshots, tmp],
                              capture_output=True, text=True, cwd=tmp)
        if done.returncode != 0:
            raise RuntimeError(done.stdout[-3000:])
        return float(next(l.split()[1] for l in done.stdout.splitlines() if l.startswith("SETUP ")))


def module(n: int, *, inline_teardown: bool = False, busy: float = 0.0) -> str:
    """*n* trivial tests using ``guest``; *inline_teardown*: each destroys its guest itself
    (today's way); *busy*: each first keeps every host CPU busy for that many seconds."""
    lines = ["import multiprocessing, os, time", "",
             "def spin(seconds):", "    end = time.monotonic() + seconds",
             "    while time.monotonic() < end:", "        pass", ""]
    for i in range(n):
        lines.append(f"def test_{i:02d}(guest):")
        if busy:
            lines += [f"    procs = [multiprocessing.Process(target=spin, args=({busy},)) "
                      f"for _ in range(os.cpu_count())]",
                      "    [p.start() for p in procs]", "    [p.join() for p in procs]"]
        lines.append("    assert guest.run('true').ok")
        if inline_teardown:
            lines.append("    guest.destroy()")
        lines.append("")
    return "\n".join(lines)


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "runs": len(values)}


def idle_memory(guests: list, settle: float) -> list[dict]:
    """Each running guest's QEMU RSS and PSS (MiB) once all have been idle *settle* seconds."""
    time.sleep(settle)
    rows = []
    for guest in guests:
        pid = qemu_pid(guest.name)
        if pid is not None:
            rows.append({"rss": rss_mib(pid), "pss": pss_mib(pid), "cmdline": _cmdline(pid)})
    return rows


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


#: a guest workload of much different code (the translation cache's worst case): Python
#: byte-compiling its standard library, then compressing a tree
WORKLOAD = ("cd /usr/lib/python3.11 && python3 -m compileall -q -f -b email asyncio xml json"
            " >/dev/null 2>&1; tar czf /tmp/w.tgz /usr/share/doc 2>/dev/null; rm -f /tmp/w.tgz")


def tb_cache_rows(os_name: str, memory: int, sizes: list[int], runs: int, clones: int,
                  settle: float, log) -> dict:
    """For each TCG translation cache size (0: QEMU's default, 1 GiB), in turns so that the
    machine's load hits every size alike: a cold boot to ready and its idle QEMU's RSS/PSS,
    a warm clone to its first command, and *clones* clones alive at once, their RSS/PSS.
    Each size has its own golden (the domain XML is part of the snapshot key)."""
    rows = {size: {"cold_ready_s": [], "cold_rss": [], "cold_pss": [], "workload_s": [],
                   "workload_rss": [], "clone_cmd_s": [], "clones_rss": [], "clones_pss": []}
            for size in sizes}
    sessions = {size: KvmSession(Settings.build(tb_cache_mib=size, prepare_ahead=0), progress=log)
                for size in sizes}
    try:
        for size in sizes:  # the goldens first: not part of any figure
            sessions[size].boot(os_name, memory_mib=memory, reset="clone").destroy()
        for i in range(runs):
            for size in sizes:
                session, row = sessions[size], rows[size]
                t0 = time.monotonic()
                guest = session.boot(os_name, memory_mib=memory, reset="boot")
                row["cold_ready_s"].append(time.monotonic() - t0)
                (mem,) = idle_memory([guest], settle)
                row["cold_rss"].append(mem["rss"])
                row["cold_pss"].append(mem["pss"])
                t0 = time.monotonic()
                guest.run(WORKLOAD, timeout=1800, sudo=True)
                row["workload_s"].append(time.monotonic() - t0)
                row["workload_rss"].append(idle_memory([guest], 0)[0]["rss"])
                guest.destroy()
                t0 = time.monotonic()
                guest = session.boot(os_name, memory_mib=memory, reset="clone")
                guest.run("true", check=True)
                row["clone_cmd_s"].append(time.monotonic() - t0)
                guest.destroy()
                alive = []
                try:
                    for _ in range(clones):
                        alive.append(session.boot(os_name, memory_mib=memory, reset="clone"))
                        alive[-1].run("true", check=True)
                    mems = idle_memory(alive, settle)
                    if size and not all(f"tb-size={size}" in m["cmdline"] for m in mems):
                        raise RuntimeError(f"a clone's QEMU runs without tb-size={size}")
                finally:
                    for guest in alive:
                        guest.destroy()
                row["clones_rss"] += [m["rss"] for m in mems]
                row["clones_pss"] += [m["pss"] for m in mems]
                log(f"tb-cache {size or 'default'} run {i + 1}: cold ready {row['cold_ready_s'][-1]:.1f} s, "
                    f"idle RSS {row['cold_rss'][-1]:.0f} / PSS {row['cold_pss'][-1]:.0f} MiB; workload "
                    f"{row['workload_s'][-1]:.1f} s, then RSS {row['workload_rss'][-1]:.0f} MiB; clone to "
                    f"first command {row['clone_cmd_s'][-1]:.2f} s; {clones} clones: PSS "
                    f"{[round(m['pss']) for m in mems]} MiB")
    finally:
        for session in sessions.values():
            session.close()
    return {str(size): {name: summary(values) for name, values in row.items()}
            for size, row in rows.items()}


def memfd_clones():
    """Clones restored into the golden's memfd RAM, as before private RAM (the baseline)."""
    from unittest import mock  # noqa: PLC0415
    from pytest_kvm.guest import clone as clone_module  # noqa: PLC0415
    real = clone_module.CloneIdentity
    return mock.patch.object(clone_module, "CloneIdentity",
                             lambda **kw: real(**{**kw, "shared_memory": None}))


#: the ways clones' RAM is compared: (restored into the golden's memfd, huge pages, the
#: golden's free memory zeroed before its save)
CLONE_RAM_WAYS = {"private, no huge pages, zeroed (now)": (False, False, True),
                  "private, no huge pages": (False, False, False),
                  "private, huge pages": (False, True, False),
                  "memfd, huge pages (before)": (True, True, False)}


def clone_ram_rows(os_name: str, memory: int, runs: int, clones: int, settle: float, log) -> dict:
    """*clones* clones alive at once, restored each way of :data:`CLONE_RAM_WAYS`, in
    turns: each clone to its first command, and its QEMU's RSS/PSS once all idle."""
    import contextlib  # noqa: PLC0415
    from pytest_kvm.vm.hugepages import set_huge_pages  # noqa: PLC0415
    from unittest import mock  # noqa: PLC0415
    from pytest_kvm.guest import clone as clone_module  # noqa: PLC0415
    rows = {way: {"clone_cmd_s": [], "rss": [], "pss": [], "save_mib": [], "workload_s": []}
            for way in CLONE_RAM_WAYS}
    # a golden of each session's own (snapshots off): one zeroed before its save, one not
    sessions = {zeroed: KvmSession(Settings.build(prepare_ahead=0, snapshots="off"), progress=log)
                for zeroed in (True, False)}
    try:
        for zeroed, session in sessions.items():
            with contextlib.nullcontext() if zeroed else mock.patch.object(
                    clone_module, "zero_free_memory", lambda m: None):
                session.boot(os_name, memory_mib=memory, reset="clone").destroy()
        for i in range(runs):
            for way, row in rows.items():
                alive = []
                memfd, huge, zeroed = CLONE_RAM_WAYS[way]
                session = sessions[zeroed]
                set_huge_pages(huge)
                with memfd_clones() if memfd else contextlib.nullcontext():
                    try:
                        for _ in range(clones):
                            t0 = time.monotonic()
                            alive.append(session.boot(os_name, memory_mib=memory, reset="clone"))
                            alive[-1].run("true", check=True)
                            row["clone_cmd_s"].append(time.monotonic() - t0)
                        mems = idle_memory(alive, settle)
                        row["save_mib"].append(alive[0].golden.image.path.stat().st_size / 2**20)
                        t0 = time.monotonic()  # the others idle
                        alive[0].run(WORKLOAD, timeout=1800, sudo=True)
                        row["workload_s"].append(time.monotonic() - t0)
                    finally:
                        for guest in alive:
                            guest.destroy()
                        set_huge_pages(False)
                if any(("memory-backend-memfd" in m["cmdline"]) != memfd for m in mems):
                    raise RuntimeError(f"a clone's RAM is not what the {way} row measures")
                row["rss"] += [m["rss"] for m in mems]
                row["pss"] += [m["pss"] for m in mems]
                log(f"{clones} clones, {way} RAM, run {i + 1}: PSS {[round(m['pss']) for m in mems]} MiB")
    finally:
        for session in sessions.values():
            session.close()
    return {way: {name: summary(values) for name, values in row.items()} for way, row in rows.items()}


def print_clone_ram(ram: dict, clones: int) -> None:
    print(f"\n{f'{clones} clones alive at once, RAM':<40} {'to 1st cmd':>10} {'RSS':>7} {'PSS':>7} "
          f"{'save image':>10} {'workload':>9}  (medians)")
    for way, row in ram.items():
        print(f"{way:<40} {row['clone_cmd_s']['median']:>9.2f}s {row['rss']['median']:>6.0f}M "
              f"{row['pss']['median']:>6.0f}M {row['save_mib']['median']:>9.0f}M "
              f"{row['workload_s']['median']:>8.1f}s")


def print_tb_cache(tb: dict, clones: int) -> None:
    print(f"\n{'TCG translation cache (MiB)':<28} {'cold ready':>10} {'idle RSS':>9} {'idle PSS':>9} "
          f"{'workload':>9} {'then RSS':>9} {'clone->cmd':>10} {f'{clones} clones RSS':>14} "
          f"{f'{clones} clones PSS':>14}  (medians)")
    for size, row in tb.items():
        print(f"{'QEMU default (1024)' if size == '0' else size:<28} "
              f"{row['cold_ready_s']['median']:>9.1f}s {row['cold_rss']['median']:>8.0f}M "
              f"{row['cold_pss']['median']:>8.0f}M {row['workload_s']['median']:>8.1f}s "
              f"{row['workload_rss']['median']:>8.0f}M {row['clone_cmd_s']['median']:>9.2f}s "
              f"{row['clones_rss']['median']:>13.0f}M {row['clones_pss']['median']:>13.0f}M")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--os", default="debian-12")
    parser.add_argument("--cold-os", nargs="+", default=["debian-12", "debian-13"],
                        help="OSes whose cold boot is measured")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", type=int, default=512)
    parser.add_argument("--module-tests", type=int, default=20)
    parser.add_argument("--busy-tests", type=int, default=8)
    parser.add_argument("--busy-seconds", type=float, default=2.0)
    parser.add_argument("--tb-sizes", type=int, nargs="+", default=[0, DEFAULT_TB_CACHE_MIB],
                        help="TCG translation cache sizes in MiB compared (0: QEMU's default, 1 GiB)")
    parser.add_argument("--clones", type=int, default=6, help="clones alive at once, for memory")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds a guest idles before its memory is read")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the rows of memory and TCG translation cache sizes")
    parser.add_argument("--lean-only", action="store_true",
                        help="only the rows of lean guests (scripts/benchmark_lean.py): cold boot "
                             "with the plain seed vs cloud-init, a 12-test module reverted vs cloned")
    args = parser.parse_args()
    log = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    if args.lean_only:
        print(json.dumps(benchmark_lean.lean(args.runs, 12, args.os, log), indent=2))
        return 0
    ram = clone_ram_rows(args.os, args.memory, args.runs, args.clones, args.settle, log)
    print_clone_ram(ram, args.clones)
    tb = tb_cache_rows(args.os, args.memory, args.tb_sizes, args.runs, args.clones, args.settle, log)
    print_tb_cache(tb, args.clones)
    if args.memory_only:
        print(json.dumps({"clone_ram": ram, "tb_cache": tb}, indent=2))
        return 0
    session = KvmSession(Settings.build(reset="boot", prepare_ahead=0), progress=log)
    results: dict[str, object] = {"os": args.os, "accel": session.acceleration.describe(),
                                  "cpus": session.settings.cpus, "memory_mib": args.memory}
    bare, teardown, clone_cmd, pair = [], [], [], []
    cold = {name: {"auth": [], "ready": []} for name in args.cold_os}
    try:
        timeout = session.settings.limits(session.accel)["boot"].seconds
        for i in range(args.runs):
            bare.append(bare_qemu(session, args.os, args.memory, session.settings.cpus, timeout))
            log(f"run {i + 1}: bare QEMU to SSH auth {bare[-1]:.1f} s")
            for name in args.cold_os:
                t0 = time.monotonic()
                guest = session.boot(name, memory_mib=args.memory, reset="boot")
                cold[name]["ready"].append(time.monotonic() - t0)
                cold[name]["auth"].append(phase_sum(guest, "ssh-auth"))
                if i == 0 and name == args.os:
                    time.sleep(5)  # idle
                    pid = qemu_pid(guest.name)
                    results["guest_qemu_rss_mib"] = round(rss_mib(pid), 1) if pid else None
                t0 = time.monotonic()
                guest.destroy()
                if name == args.os:
                    teardown.append(time.monotonic() - t0)
                log(f"run {i + 1}: {name} cold boot to SSH auth {cold[name]['auth'][-1]:.1f} s, "
                    f"ready {cold[name]['ready'][-1]:.1f} s")
        session.boot(args.os, memory_mib=args.memory, reset="clone").destroy()  # the golden
        boots_before_clones = session.boots
        for i in range(max(args.runs, 5)):
            t0 = time.monotonic()
            guest = session.boot(args.os, memory_mib=args.memory, reset="clone")
            guest.run("true", check=True)
            clone_cmd.append(time.monotonic() - t0)
            guest.destroy()
            # two clones of the one golden alive at once: each to its first command
            alive = []
            for _ in range(2):
                t0 = time.monotonic()
                alive.append(session.boot(args.os, memory_mib=args.memory, reset="clone"))
                alive[-1].run("true", check=True)
                pair.append(time.monotonic() - t0)
            for g in alive:
                g.destroy()
        log(f"clone to first command: {statistics.median(clone_cmd):.2f} s; two at once: {pair}")
        results["plugin_rss_mib"] = round(rss_mib(os.getpid()), 1)
        results["cold_boots_during_clones"] = session.boots - boots_before_clones
    finally:
        session.close()
    results["bare_qemu_to_ssh_auth_s"] = summary(bare)
    for name in args.cold_os:
        results[f"{name}_cold_to_ssh_auth_s"] = summary(cold[name]["auth"])
        results[f"{name}_cold_to_ready_s"] = summary(cold[name]["ready"])
    results["plugin_overhead_ratio"] = round(statistics.median(cold[args.cold_os[0]]["auth"])
                                             / statistics.median(bare), 3)
    results["clone_to_first_command_s"] = summary(clone_cmd)
    results["two_clones_at_once_each_to_first_command_s"] = summary(pair)
    results["teardown_s"] = summary(teardown)

    log("first test of a second session: snapshots on vs off")
    first_test_setup(args.os, "on")  # make sure the snapshot exists
    results["second_session_first_test_s"] = {
        mode: summary([first_test_setup(args.os, mode) for _ in range(max(2, args.runs - 1))])
        for mode in ("on", "off")}
    log(f"{args.module_tests}-test modules: new way vs today's way")
    new = child_pytest(module(args.module_tests), "--kvm-os", args.os)
    two = child_pytest(module(args.module_tests), "--kvm-os", args.os, "-o", "kvm_prepare_ahead=2")
    old = child_pytest(module(args.module_tests, inline_teardown=True), "--kvm-os", args.os,
                       "--kvm-snapshots", "off", "-o", "kvm_prepare_ahead=0")
    results["module_per_test_after_first_s"] = {"new": round(per_test_after_first(new), 2),
                                                "new_ahead_2": round(per_test_after_first(two), 2),
                                                "today": round(per_test_after_first(old), 2),
                                                "tests": args.module_tests}
    log(f"{args.busy_tests} tests keeping the CPUs busy: clones made ahead on vs off")
    busy = {}
    for ahead in ("1", "0"):
        stamps = child_pytest(module(args.busy_tests, busy=args.busy_seconds), "--kvm-os", args.os,
                              "-o", f"kvm_prepare_ahead={ahead}")
        busy[f"ahead_{ahead}"] = round(per_test_after_first(stamps), 2)
    results["busy_module_per_test_after_first_s"] = {**busy, "busy_s": args.busy_seconds}

    rows = [("bare QEMU to SSH auth", results["bare_qemu_to_ssh_auth_s"])]
    for name in args.cold_os:
        rows += [(f"{name} cold boot to SSH auth", results[f"{name}_cold_to_ssh_auth_s"]),
                 (f"{name} cold boot to ready (cloud-init done)", results[f"{name}_cold_to_ready_s"])]
    rows += [("warm clone: start to first command", results["clone_to_first_command_s"]),
             ("two clones alive at once: each to first command",
              results["two_clones_at_once_each_to_first_command_s"]),
             ("new session, first test (snapshots on)", results["second_session_first_test_s"]["on"]),
             ("new session, first test (snapshots off)", results["second_session_first_test_s"]["off"]),
             ("teardown", results["teardown_s"])]
    print(f"\n{'measure':<50} {'median':>8} {'min':>8} {'max':>8} runs")
    for label, s in rows:
        print(f"{label:<50} {s['median']:>7.2f}s {s['min']:>7.2f}s {s['max']:>7.2f}s {s['runs']:>4}")
    print(f"plugin overhead vs bare QEMU (to SSH auth): {results['plugin_overhead_ratio']}x")
    m = results["module_per_test_after_first_s"]
    print(f"{m['tests']}-test module, per test after the first: {m['new']} s (snapshots, made ahead, "
          f"background teardown; {m['new_ahead_2']} s with kvm_prepare_ahead=2) vs {m['today']} s "
          f"(per-session golden, serial, teardown in line)")
    b = results["busy_module_per_test_after_first_s"]
    print(f"{args.busy_tests} tests each keeping the CPUs busy {b['busy_s']:g} s, per test after the first: "
          f"{b['ahead_1']} s with a clone made ahead vs {b['ahead_0']} s without")
    print(f"cold boots while cloning: {results['cold_boots_during_clones']}")
    print(f"idle guest QEMU RSS: {results.get('guest_qemu_rss_mib')} MiB; plugin RSS: {results.get('plugin_rss_mib')} MiB")
    print_clone_ram(ram, args.clones)
    print_tb_cache(tb, args.clones)
    lean = benchmark_lean.lean(args.runs, 12, args.os, log)
    print(json.dumps({**results, "clone_ram": ram, "tb_cache": tb, "lean": lean}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
