#!/usr/bin/env python3
"""Chaos on one snapshot cache (issue 23): several pytest sessions and xdist workers start
together on a cache whose snapshot was removed, while ``snapshot prune --max-gb 0`` and
``snapshot rm`` loop; one session runs in another PID namespace (``unshare --pid --fork
--mount-proc``, needs root); one random session is SIGKILLed. Then a clean session runs
on the same cache. Reports sessions, kills, failures and leaks (QEMU processes and run
directories left). Not part of the test suite.

The cache is a separate directory whose base images are hard links to the default
cache's (nothing is rebuilt; the default cache is never pruned):

    .venv/bin/python scripts/chaos.py --sessions 3 --tests 3
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_kvm.files import default_cache_dir

TEST_FILE = '''
import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_guest(guest, n):
    assert guest.run("echo $((6*7))", check=True).stdout.strip() == "42"
'''


def link_images(source: Path, cache: Path) -> None:
    """The default cache's base images, hard-linked (``cp -al``) into *cache*."""
    (cache / "images").mkdir(parents=True)
    for name_dir in (source / "images").iterdir():
        if name_dir.is_dir():
            subprocess.run(["cp", "-al", str(name_dir), str(cache / "images" / name_dir.name)], check=True)


def qemu_of(cache: Path) -> list[int]:
    """PIDs of QEMU processes whose command line names *cache*."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "qemu-system" in args and str(cache) in args:
                found.append(int(proc.name))
    return found


def session_argv(work: Path, os_name: str, xdist: int) -> list[str]:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(work / "test_chaos.py"),
            "--kvm-os", os_name, "--kvm-snapshots", "on"]
    return argv + (["-n", str(xdist)] if xdist else [])


def janitor(cache: Path, stop_at: float) -> dict[str, int]:
    """``snapshot prune --max-gb 0`` and ``snapshot rm`` of every snapshot, in a loop."""
    cli = [sys.executable, "-m", "pytest_kvm.cli", "--cache-dir", str(cache), "snapshot"]
    counts = {"prunes": 0, "rms": 0, "rm_removed": 0, "rm_left_in_use": 0, "janitor_errors": 0}
    while time.monotonic() < stop_at:
        counts["prunes"] += 1
        if subprocess.run(cli + ["prune", "--max-gb", "0"], capture_output=True, timeout=120).returncode:
            counts["janitor_errors"] += 1
        snapshots = cache / "snapshots"
        names = [p.name for p in snapshots.iterdir() if p.is_dir()] if snapshots.is_dir() else []
        if names:
            counts["rms"] += 1
            done = subprocess.run(cli + ["rm", *names], capture_output=True, text=True, timeout=120)
            counts["rm_removed"] += done.stdout.count(": removed")
            counts["rm_left_in_use"] += done.stdout.count("left alone")
            if done.returncode > 1:
                counts["janitor_errors"] += 1
        time.sleep(1.0)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=3, help="plain sessions (one more with -n 2)")
    parser.add_argument("--tests", type=int, default=3, help="tests (guests) per session")
    parser.add_argument("--os", default="debian-12")
    parser.add_argument("--kill-after", type=float, default=60.0, help="seconds before the SIGKILL")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--cache", type=Path, help="a cache directory prepared beforehand (its "
                        "base images in place); default: a new one linking the default cache's")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pytest-kvm-chaos-"))
    cache = args.cache.resolve() if args.cache else work / "cache"
    if not args.cache:
        link_images(default_cache_dir(), cache)
    (work / "test_chaos.py").write_text(TEST_FILE.format(tests=args.tests))
    env = {**os.environ, "PYTEST_KVM_CACHE_DIR": str(cache)}
    t0 = time.monotonic()
    procs: dict[str, subprocess.Popen] = {}
    logs = {}

    def start(name: str, argv: list[str]) -> None:
        logs[name] = (work / f"{name}.log").open("w")
        procs[name] = subprocess.Popen(argv, cwd=work, env=env, stdout=logs[name], stderr=subprocess.STDOUT,
                                       start_new_session=True)

    for i in range(args.sessions):
        start(f"session-{i}", session_argv(work, args.os, 0))
    start("xdist", session_argv(work, args.os, 2))
    if os.geteuid() == 0 and shutil.which("unshare"):
        start("pidns", ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                        *session_argv(work, args.os, 0)])
    victim = random.choice(sorted(n for n in procs if n.startswith("session-")))
    killed = []
    stop_at = t0 + args.timeout
    janitor_counts: dict[str, int] = {}
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < stop_at:
        if not killed and time.monotonic() - t0 > args.kill_after and procs[victim].poll() is None:
            os.killpg(procs[victim].pid, signal.SIGKILL)
            killed.append(victim)
        for key, value in janitor(cache, time.monotonic() + 5).items():
            janitor_counts[key] = janitor_counts.get(key, 0) + value
    for name, proc in procs.items():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed.append(f"{name} (timeout)")
        proc.wait()
    outcomes = {name: proc.returncode for name, proc in procs.items()}
    time.sleep(5)  # the killed session's watchdog destroys its guests
    start("clean", session_argv(work, args.os, 0))
    procs["clean"].wait(args.timeout)
    time.sleep(2)
    runs = cache / "runs"
    result = {
        "sessions": len(outcomes), "killed": killed,
        "failed": sorted(n for n, rc in outcomes.items() if rc != 0 and n not in killed),
        "clean_session": procs["clean"].returncode,
        "qemu_left": len(qemu_of(cache)),
        "run_dirs_left": sorted(p.name for p in runs.iterdir()) if runs.is_dir() else [],
        "seconds": round(time.monotonic() - t0, 1), **janitor_counts, "logs": str(work),
    }
    print(json.dumps(result, indent=2))
    return 0 if not result["failed"] and result["clean_session"] == 0 and not result["qemu_left"] else 1


if __name__ == "__main__":
    sys.exit(main())
