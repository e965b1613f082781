#!/usr/bin/env python3
"""Benchmark rows of lean guests (issue: a test's guest in under a second, a cold boot in
seconds), each mechanism next to the way before it, in the same run:

- cold boot to ready (``reset="boot"``): the plain seed (no user_data: no cloud-init) vs
  cloud-init (the same guest with an empty ``runcmd``, which is cloud-init's way);
- a module of N trivial tests (three one-line commands each) in a second session: per-test
  wall (setup + call + teardown, from pytest's reports) median, and the machine's busy
  CPU-seconds per test, with each test's guest reverted in place (``--kvm-reset revert``)
  vs a new warm clone per test (``--kvm-reset clone``, the default).

    .venv/bin/python scripts/benchmark_lean.py [--runs 3] [--module-tests 12]

``scripts/benchmark.py --lean-only`` runs the same rows. Not a test; run it with nothing
else booting (two cores: another guest job measures the contention, not the code).
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

from pytest_kvm.config import Settings
from pytest_kvm.session.session import KvmSession

REPORTS = """
import json, os

def pytest_runtest_logreport(report):
    with open(os.environ["BENCH_REPORTS"], "a") as fh:
        fh.write(json.dumps({"test": report.nodeid, "when": report.when,
                             "duration": report.duration}) + "\\n")
"""


def module(n: int) -> str:
    """*n* trivial tests using ``guest``, three one-line commands each (the issue's module)."""
    return "\n".join(
        f"def test_{i:02d}(guest):\n    assert guest.run('true').ok\n"
        f"    assert guest.run('echo hi').stdout == 'hi\\n'\n    assert guest.run('uname -m').ok\n"
        for i in range(n))


def busy_jiffies() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return user + nice + system + irq + softirq + steal


def session_walls(body: str, *options: str) -> tuple[list[float], float]:
    """Run *body* in a child pytest; each test's setup + call + teardown, and the machine's
    busy CPU-seconds during the run."""
    with tempfile.TemporaryDirectory(prefix="pk-bench-lean-") as tmp:
        (Path(tmp) / "test_module.py").write_text(body)
        (Path(tmp) / "conftest.py").write_text(REPORTS)
        reports = Path(tmp) / "reports.jsonl"
        env = {**os.environ, "BENCH_REPORTS": str(reports)}
        before = busy_jiffies()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *options, tmp], capture_output=True, text=True, cwd=tmp, env=env)
        cpu = (busy_jiffies() - before) / os.sysconf("SC_CLK_TCK")
        if done.returncode != 0:
            raise RuntimeError(done.stdout[:3000] + "\n...\n" + done.stdout[-1500:])
        walls: dict[str, float] = {}
        for line in reports.read_text().splitlines():
            row = json.loads(line)
            walls[row["test"]] = walls.get(row["test"], 0.0) + row["duration"]
        return list(walls.values()), cpu


def module_rows(tests: int, runs: int, os_name: str, log) -> dict:
    """Per-test wall and CPU per test, second sessions, a new clone vs a revert per test."""
    ways = {"revert in place (--kvm-reset revert)": ("--kvm-reset", "revert"),
            "new warm clone (--kvm-reset clone)": ("--kvm-reset", "clone")}
    session_walls(module(2), "--kvm-os", os_name)  # the golden's snapshot exists
    results: dict[str, dict[str, list]] = {label: {"walls": [], "cpu": []} for label in ways}
    for run in range(runs):
        for label, options in ways.items():  # alternating: the machine's drift hits both
            walls, cpu = session_walls(module(tests), "--kvm-os", os_name, *options)
            results[label]["walls"].append(statistics.median(walls))
            results[label]["cpu"].append(cpu / tests)
            log(f"run {run + 1}: {label}: per-test wall median {results[label]['walls'][-1]:.2f} s, "
                f"{results[label]['cpu'][-1]:.2f} CPU-s a test")
    return {label: {"per_test_wall_median_s": round(statistics.median(r["walls"]), 2),
                    "sessions": [round(w, 2) for w in r["walls"]],
                    "busy_cpu_s_per_test": round(statistics.median(r["cpu"]), 2)}
            for label, r in results.items()}


def cold_rows(runs: int, os_name: str, log) -> dict:
    """Cold boot to ready, the plain seed vs cloud-init, alternating."""
    times: dict[str, list[float]] = {"plain seed (no user_data)": [], "cloud-init": []}
    session = KvmSession(Settings.build(reset="boot", prepare_ahead=0), progress=log)
    try:
        for run in range(runs):
            for label, user_data in (("plain seed (no user_data)", None),
                                     ("cloud-init", {"runcmd": []})):
                t0 = time.monotonic()
                guest = session.boot(os_name, reset="boot", user_data=user_data)
                times[label].append(time.monotonic() - t0)
                guest.destroy()
                log(f"run {run + 1}: {label}: cold boot to ready {times[label][-1]:.1f} s")
    finally:
        session.close()
    return {label: {"median": round(statistics.median(t), 1), "min": round(min(t), 1),
                    "max": round(max(t), 1), "runs": len(t)} for label, t in times.items()}


def lean(runs: int, tests: int, os_name: str, log) -> dict:
    results = {"os": os_name, "cold_boot_to_ready_s": cold_rows(runs, os_name, log),
               f"module_{tests}_tests_second_session": module_rows(tests, runs, os_name, log)}
    print(f"\n{'cold boot to ready (reset=boot)':<44} {'median':>8} {'min':>8} {'max':>8} runs")
    for label, s in results["cold_boot_to_ready_s"].items():
        print(f"  {label:<42} {s['median']:>7.1f}s {s['min']:>7.1f}s {s['max']:>7.1f}s {s['runs']:>4}")
    print(f"{tests}-test module, second session          per-test wall median   busy CPU-s a test")
    for label, r in results[f"module_{tests}_tests_second_session"].items():
        print(f"  {label:<42} {r['per_test_wall_median_s']:>8.2f}s {r['busy_cpu_s_per_test']:>12.2f}"
              f"   (sessions: {r['sessions']})")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--os", default="debian-12")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--module-tests", type=int, default=12)
    args = parser.parse_args()
    log = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    print(json.dumps(lean(args.runs, args.module_tests, args.os, log), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
