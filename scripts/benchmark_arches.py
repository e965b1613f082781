#!/usr/bin/env python3
"""Benchmark: each CPU architecture next to amd64, in the same run: its image's build
time (from the cached image's manifest; built now if missing), a cold boot to ready
(``reset="boot"``), a warm clone to its first command, and the per-test wall of a
module of small tests in a new session (the golden comes from the snapshot cache). Not
a test; run it with nothing else booting (two cores: another guest's boot is measured
too).

    .venv/bin/python scripts/benchmark_arches.py                    # every architecture
    .venv/bin/python scripts/benchmark_arches.py --arch arm64 --runs 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import child_pytest, module, per_test_after_first  # noqa: E402

from pytest_kvm.arches import ARCHES, arch_of, image_name  # noqa: E402
from pytest_kvm.config import Settings  # noqa: E402
from pytest_kvm.images.cache import read_manifest  # noqa: E402
from pytest_kvm.session.session import KvmSession  # noqa: E402

#: the OS each architecture is measured on (bookworm has no riscv64)
OS = {"riscv64": "debian-13"}


def measure(arch: str, runs: int, tests: int) -> dict:
    os_name = OS.get(arch, "debian-12")
    settings = Settings.build(os_names=(os_name,), archs=(arch,), prepare_ahead=0)
    row: dict = {"os": image_name(os_name, arch_of(arch)), "cold_ready_s": [], "clone_cmd_s": []}
    session = KvmSession(settings, progress=lambda line: print(line, file=sys.stderr, flush=True))
    try:
        started = time.monotonic()
        image = session.images.resolve(row["os"])
        row["image_s"] = round(time.monotonic() - started, 1)  # ~0 when cached
        manifest = read_manifest(image.disk.parent) or {}
        row["build_s"] = manifest.get("build_seconds")
        for _ in range(runs):
            started = time.monotonic()
            with session.boot(reset="boot") as guest:
                guest.run("true", check=True)
                row["cold_ready_s"].append(time.monotonic() - started)
        session.boot(reset="clone").destroy()  # the golden, once
        for _ in range(runs):
            started = time.monotonic()
            with session.boot(reset="clone") as guest:
                guest.run("true", check=True)
                row["clone_cmd_s"].append(time.monotonic() - started)
    finally:
        session.close()
    stamps = child_pytest(module(tests), "--kvm-os", os_name, "--kvm-arch", arch)
    row["per_test_s"] = per_test_after_first(stamps)
    for key in ("cold_ready_s", "clone_cmd_s"):
        row[key] = round(statistics.median(row[key]), 2)
    row["per_test_s"] = round(row["per_test_s"], 2)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=list(ARCHES))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--module-tests", type=int, default=6)
    args = parser.parse_args()
    rows = [measure(arch, args.runs, args.module_tests) for arch in args.arch]
    print(f"{'image':22} {'build s':>8} {'cold ready s':>13} {'clone->cmd s':>13} {'per test s':>11}")
    for row in rows:
        print(f"{row['os']:22} {row['build_s'] or '-':>8} {row['cold_ready_s']:>13} "
              f"{row['clone_cmd_s']:>13} {row['per_test_s']:>11}")
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
