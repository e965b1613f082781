#!/usr/bin/env python3
"""Stress: N consecutive guests (clones or cold boots), each used and destroyed; reports
failures, timings and leftovers. Not part of the test suite.

    .venv/bin/python scripts/stress.py --count 30 --reset clone
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import traceback

from pytest_kvm.config import Settings
from pytest_kvm.session.session import KvmSession


def qemu_count() -> int:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return sum(1 for line in ps.splitlines() if line.startswith("/usr/bin/qemu-system") and "pytest-kvm-" in line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--reset", choices=("clone", "boot"), default="clone")
    parser.add_argument("--os", default="debian-12")
    args = parser.parse_args()
    session = KvmSession(Settings.build(reset=args.reset), progress=lambda m: print(m, file=sys.stderr))
    ready, teardown, failures = [], [], []
    before = qemu_count()
    try:
        for i in range(args.count):
            t0 = time.monotonic()
            try:
                guest = session.boot(args.os)
            except Exception as exc:  # keep going: count it
                failures.append({"iteration": i, "phase": "start", "error": f"{type(exc).__name__}: {exc}"[:500]})
                continue
            try:
                guest.run("echo $((6*7)) > /var/tmp/answer && cat /var/tmp/answer", check=True, timeout=120)
                ready.append(time.monotonic() - t0)
            except Exception:
                failures.append({"iteration": i, "phase": "run", "error": traceback.format_exc(limit=2)[-500:]})
            t1 = time.monotonic()
            guest.destroy()
            teardown.append(time.monotonic() - t1)
            print(f"{i + 1}/{args.count}: ready+command {ready[-1] if ready else float('nan'):.2f} s, "
                  f"teardown {teardown[-1]:.2f} s", file=sys.stderr)
    finally:
        session.close()
    leftovers = qemu_count() - before

    def stats(values):
        return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
                "max": round(max(values), 2)} if values else None

    report = {"os": args.os, "reset": args.reset, "count": args.count, "ok": len(ready),
              "failures": failures, "start_to_first_command_s": stats(ready),
              "teardown_s": stats(teardown), "cold_boots": session.boots, "clones": session.clones,
              "leftover_qemu_processes": leftovers}
    print(json.dumps(report, indent=2))
    return 0 if not failures and leftovers == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
