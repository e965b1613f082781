#!/usr/bin/env python3
"""Benchmark: ``guest.reboot()`` of a guest (command to logged in again), ``shutdown()`` +
``start()``, and a module of tests that each need a package installed: installing it in
every test vs cloning a user golden that has it (``kvm.golden``), wall time side by side
in one run. Prints a table and JSON. Not a test; run it with nothing else booting.

    .venv/bin/python scripts/benchmark_power.py                 # 3 reboots, 10-test modules
    .venv/bin/python scripts/benchmark_power.py --tests 4 --runs 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_kvm.config import Settings
from pytest_kvm.session.session import KvmSession

# a "package" that takes real work to install without a package index: a virtualenv
# with the project's own pytest and setuptools, what examples/ does per test
INSTALL = ("python3 -m venv --system-site-packages /opt/venv && "
           "/opt/venv/bin/python -c 'import pytest, setuptools' && touch /opt/installed")

MODULE = '''
import pytest

INSTALL = {install!r}

@pytest.fixture(scope="session")
def prepared(kvm):
    return kvm.golden("benchmark-install", lambda g: g.run(INSTALL, sudo=True, check=True, timeout=900))

@pytest.mark.parametrize("n", range({tests}))
def test_install_each_time(guest, n):
    guest.run(INSTALL, sudo=True, check=True, timeout=900)
    assert guest.run("test -e /opt/installed").ok

@pytest.mark.parametrize("n", range({tests}))
def test_from_user_golden(guest_factory, prepared, n):
    g = guest_factory(golden=prepared)
    assert g.run("test -e /opt/installed").ok
'''


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def module_times(tests: int) -> dict[str, dict[str, float]]:
    """Run the module in a child pytest (snapshots off: nothing cached helps either half);
    per half: its first test (which pays the golden or the user golden once) and the
    median of the others."""
    with tempfile.TemporaryDirectory(prefix="pytest-kvm-power-") as tmp:
        path = Path(tmp) / "test_module.py"
        path.write_text(MODULE.format(install=INSTALL, tests=tests))
        report = Path(tmp) / "durations.json"
        (Path(tmp) / "conftest.py").write_text(
            "import json, time\nstamps = {}\n"
            "def pytest_runtest_logstart(nodeid, location): stamps[nodeid] = [time.monotonic(), 0]\n"
            "def pytest_runtest_logfinish(nodeid, location): stamps[nodeid][1] = time.monotonic()\n"
            f"def pytest_sessionfinish(session): open({str(report)!r}, 'w').write(json.dumps(stamps))\n")
        subprocess.run([sys.executable, "-m", "pytest", str(path), "-q", "-p", "no:cacheprovider",
                        "--kvm-snapshots", "off"], check=True, cwd=tmp)
        stamps = json.loads(report.read_text())
    halves: dict[str, list[float]] = {}
    for nodeid, (start, end) in stamps.items():
        halves.setdefault(nodeid.split("::")[-1].split("[")[0], []).append(end - start)
    return {name: {"first": times[0], "others_median": statistics.median(times[1:]),
                   "total": sum(times)} for name, times in halves.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--os", default="debian-12")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tests", type=int, default=10)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"reboot (command to logged in again)": [],
                                       "shutdown + start (to logged in)": []}
    session = KvmSession(Settings(os_names=(args.os,)), progress=lambda m: print(m, file=sys.stderr))
    try:
        for reset in ("clone", "boot"):
            with session.boot(reset=reset) as guest:
                for _ in range(args.runs):
                    t0 = time.monotonic()
                    guest.reboot()
                    results["reboot (command to logged in again)"].append(time.monotonic() - t0)
                t0 = time.monotonic()
                guest.shutdown()
                guest.start()
                results["shutdown + start (to logged in)"].append(time.monotonic() - t0)
                print(guest.timeline.format(), file=sys.stderr)
    finally:
        session.close()
    module = module_times(args.tests)
    print(f"\n{args.os}, {args.runs} reboots each of a clone and a cold-booted guest, "
          f"median (min-max):\n")
    print("| what | time |\n|---|---|")
    for what, values in results.items():
        print(f"| {what} | {summary(values)} |")
    for name, times in module.items():
        print(f"| {args.tests} tests `{name}`: first test / each after / all | "
              f"{times['first']:.1f} s / {times['others_median']:.2f} s / {times['total']:.1f} s |")
    print(json.dumps({"results": results, "module": module}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
