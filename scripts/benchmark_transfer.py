#!/usr/bin/env python3
"""Benchmark: a directory tree (default 5,000 files, 50 MB of random bytes) into and out of
one guest with ``guest.put``/``guest.get`` (one tar stream over SSH), next to ``scp -r`` and
``rsync -a -e ssh`` to the same guest in the same run; and the same tree read through a
virtiofs share. Prints a table and JSON. Not a test; run it with nothing else booting.

With ``--kvm-host URI`` the guest runs on that remote host: the share is then a copy made on
the host when it is mounted (its time is the "hot-plug and mount" row), ``put`` goes through
the host link, a writable share's copy comes back with ``guest.sync_shares()``, and scp and
rsync are left out.

    .venv/bin/python scripts/benchmark_transfer.py            # 3 runs each
    .venv/bin/python scripts/benchmark_transfer.py --files 500 --megabytes 5 --runs 1
    .venv/bin/python scripts/benchmark_transfer.py --runs 1 --kvm-host qemu+ssh://root@hv/system
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_kvm.choices import ACCEL_CHOICES
from pytest_kvm.config import Settings
from pytest_kvm.hosts.uris import parse_host
from pytest_kvm.session.session import KvmSession


def make_tree(root: Path, files: int, total_bytes: int) -> None:
    per_dir = 50
    size = total_bytes // files
    for index in range(files):
        directory = root / f"d{index // per_dir:03d}"
        directory.mkdir(parents=True, exist_ok=True)
        # sizes vary around the mean, as source trees do
        (directory / f"f{index:05d}.dat").write_bytes(os.urandom(size // 2 + (index * 7919) % size))


def ssh_options(guest) -> list[str]:
    """The -o options of guest.ssh_command() (pinned host key, the session's key)."""
    argv = guest.ssh_command()
    options = []
    for flag, value in zip(argv, argv[1:]):
        if flag == "-o":
            options += ["-o", value]
    return options + ["-i", str(guest.login_key_file)]


def timed(action) -> float:
    t0 = time.monotonic()
    action()
    return time.monotonic() - t0


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--os", default="debian-12")
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kvm-host", metavar="URI", help="run the guest on this remote host")
    parser.add_argument("--kvm-accel", default="auto", choices=ACCEL_CHOICES)
    args = parser.parse_args()
    remote = args.kvm_host is not None
    for tool in () if remote else ("scp", "rsync"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed on this host (apt install openssh-client rsync)")

    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="pytest-kvm-transfer-") as tmp:
        tree = Path(tmp) / "tree"
        make_tree(tree, args.files, args.megabytes * 2**20)
        writable = Path(tmp) / "writable"
        shutil.copytree(tree, writable)
        hosts = (parse_host(args.kvm_host),) if remote else ()
        session = KvmSession(Settings(os_names=(args.os,), hosts=hosts, accel=args.kvm_accel),
                             progress=lambda m: print(m, file=sys.stderr))
        try:
            guest = session.boot(share={"/mnt/tree": tree,
                                        "/mnt/rw": {"path": writable, "writable": True}})
            results["share: hot-plug and mount of both shares (once, at start"
                    + ("; copies to the host" if remote else "") + ")"] = [
                seconds for phase, seconds in guest.timeline.entries if phase == "shares"]
            if not remote and guest.run("command -v rsync").failed:
                sys.exit(f"{args.os} has no rsync (rebuild the image: pytest-kvm image build --force)")
            target = f"{guest.user}@127.0.0.1"
            ssh = " ".join(["ssh", "-p", str(guest.port), *ssh_options(guest)])
            commands = {
                "put (plugin, tar over SSH)": lambda: guest.put(tree, "/tmp/put"),
                "scp -r into the guest": lambda: subprocess.run(
                    ["scp", "-q", "-r", "-P", str(guest.port), *ssh_options(guest), str(tree),
                     f"{target}:/tmp/scp"], check=True),
                "rsync -a into the guest": lambda: subprocess.run(
                    ["rsync", "-a", "-e", ssh, f"{tree}/", f"{target}:/tmp/rsync/"], check=True),
                "get (plugin, tar over SSH)": lambda: guest.get("/tmp/put", Path(tmp) / "got"),
                "scp -r out of the guest": lambda: subprocess.run(
                    ["scp", "-q", "-r", "-P", str(guest.port), *ssh_options(guest),
                     f"{target}:/tmp/put", str(Path(tmp) / "scp-out")], check=True),
                "rsync -a out of the guest": lambda: subprocess.run(
                    ["rsync", "-a", "-e", ssh, f"{target}:/tmp/put/", f"{tmp}/rsync-out/"], check=True),
                "read through a virtiofs share (cat every file)": lambda: guest.run(
                    "find /mnt/tree -type f -exec cat {} + > /dev/null", check=True, timeout=1200),
            }
            if remote:
                commands = {what: action for what, action in commands.items()
                            if not what.startswith(("scp", "rsync"))}
                commands["sync_shares() of the writable share (copy back, unchanged)"] = \
                    guest.sync_shares
            for run in range(args.runs):
                for what, action in commands.items():
                    guest.run("rm -rf /tmp/put /tmp/scp /tmp/rsync && sync", check=True)
                    if what.startswith(("get", "scp -r out", "rsync -a out")):
                        guest.put(tree, "/tmp/put")
                    for local in ("got", "scp-out", "rsync-out"):
                        shutil.rmtree(Path(tmp) / local, ignore_errors=True)
                    guest.run("sync; echo 3 | sudo tee /proc/sys/vm/drop_caches >/dev/null")
                    results.setdefault(what, []).append(timed(action))
                    print(f"run {run + 1}: {what}: {results[what][-1]:.2f} s", file=sys.stderr)
                    if what.startswith("put"):
                        count = guest.run("find /tmp/put -type f | wc -l").stdout.strip()
                        assert int(count) == args.files, f"the guest got {count} files, not {args.files}"
        finally:
            session.close()

    print(f"\n{args.files} files, {args.megabytes} MB, {args.runs} runs, median (min-max):\n")
    print("| what | time |\n|---|---|")
    for what, values in results.items():
        print(f"| {what} | {summary(values)} |")
    print(json.dumps({what: values for what, values in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
