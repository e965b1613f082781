#!/usr/bin/env python3
"""Benchmark: what having pytest-kvm installed costs a pytest run that boots nothing. Runs
pytest on a 3-line test file in a temporary directory, alternately with the plugin (loaded
through its ``pytest11`` entry point) and with ``-p no:kvm``, and prints the median wall
time of each and their difference. The pytest_kvm measured is this checkout's (it is put
first on PYTHONPATH); bytecode is cached in the temporary directory, as an installed
package's would be (PYTHONDONTWRITEBYTECODE would make every run compile the plugin).
Not a test; boots nothing.

    .venv/bin/python scripts/benchmark_import.py               # 5 runs of each
    .venv/bin/python scripts/benchmark_import.py --runs 9
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

REPO = Path(__file__).resolve().parent.parent
TEST_FILE = "def test_nothing():\n    assert 1 + 1 == 2\n\n"
PYTEST_INI = "[pytest]\n"  # this directory is the rootdir: no ini file above it is read


def run_pytest(directory: Path, extra: list[str], env: dict[str, str]) -> float:
    """Seconds one ``python -m pytest`` process takes, start to exit; it must pass."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *extra,
               "test_nothing.py"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each (default 5)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="pytest-kvm-import-") as tmp:
        directory = Path(tmp)
        env["PYTHONPYCACHEPREFIX"] = str(directory / "pycache")  # the checkout stays as it is
        (directory / "test_nothing.py").write_text(TEST_FILE)
        (directory / "pytest.ini").write_text(PYTEST_INI)
        for extra in ([], ["-p", "no:kvm"]):  # warm the page cache and the bytecode cache once
            run_pytest(directory, extra, env)
        with_plugin, without = [], []
        for _ in range(args.runs):  # alternated, so both see the same machine load
            with_plugin.append(run_pytest(directory, [], env))
            without.append(run_pytest(directory, ["-p", "no:kvm"], env))
    results = {"runs": args.runs, "with_plugin_s": round(statistics.median(with_plugin), 3),
               "no_kvm_s": round(statistics.median(without), 3)}
    results["difference_s"] = round(results["with_plugin_s"] - results["no_kvm_s"], 3)
    print(f"pytest on a 3-line test, median of {args.runs} runs:")
    print(f"  with pytest-kvm   {results['with_plugin_s']:.3f} s")
    print(f"  -p no:kvm         {results['no_kvm_s']:.3f} s")
    print(f"  difference        {results['difference_s']:+.3f} s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
