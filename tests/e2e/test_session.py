"""Whole pytest runs in a subprocess: failure reports, --kvm-keep, reaping, and no leftovers."""
import json
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET

from procs import qemu_processes
from pytest_kvm.cleanup.watchdog import log_path as watchdog_log
from pytest_kvm.vm.domain import NAME_PREFIX

CHILD = """
import json, os, pytest

@pytest.fixture(autouse=True)
def record(request):
    yield
    for g in request.node.stash.get(__import__("pytest_kvm.plugin.stash", fromlist=["x"]).GUESTS_KEY, []):
        with open(os.environ["GUEST_LOG"], "a") as fh:
            fh.write(json.dumps({"test": request.node.name, "name": g.name}) + "\\n")

def test_passes(guest):
    assert guest.run("true").ok

def test_fails(guest):
    guest.run("echo leaving a trace > /var/tmp/trace", check=True)
    assert guest.run("false").ok, "deliberate failure"
"""




def test_keep_failed_report_and_reap(pytester, monkeypatch, kvm):
    log = pytester.path / "guests.jsonl"
    monkeypatch.setenv("GUEST_LOG", str(log))
    pytester.makepyfile(CHILD)
    result = pytester.runpytest_subprocess("--kvm-os", "debian-12", "--kvm-keep", "failed", "--kvm-reset", "boot",
                                           "-p", "no:cacheprovider", "--junitxml=junit.xml",
                                           "-o", "junit_logging=system-out", timeout=1500)
    result.assert_outcomes(passed=1, failed=1)
    names = {entry["test"]: entry["name"] for entry in map(json.loads, log.read_text().splitlines())}
    out = result.stdout.str()
    # the failure report carries the guest's console tail and timeline, and so does JUnit
    record = f"pytest-kvm guest {names['test_fails']}: os debian-12, accel "
    assert f"Captured stdout pytest-kvm guest {names['test_fails']} call" in out
    assert record in out and "timeline:" in out and "ssh-banner" in out
    case = next(c for c in ET.parse(pytester.path / "junit.xml").iter("testcase")
                if c.get("name") == "test_fails")
    assert record in "".join(e.text or "" for e in case.iter("system-out"))
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["kvm_guest_name"] == names["test_fails"]
    assert properties["kvm_guest_os"] == "debian-12" and properties["kvm_guest_ssh"].startswith("ssh ")
    # the passing test's guest is gone; the failed one is kept and its ssh command works
    assert qemu_processes(names["test_passes"]) == []
    assert len(qemu_processes(names["test_fails"])) == 1
    line = next(l for l in out.splitlines() if l.startswith(f"kept {names['test_fails']}"))
    argv = shlex.split(line.split(": ", 1)[1])
    done = subprocess.run(argv + ["cat /var/tmp/trace"], capture_output=True, text=True, timeout=60)
    assert done.stdout == "leaving a trace\n", done.stderr
    # a plain reap leaves kept guests alone; --kept removes them
    reap = [sys.executable, "-m", "pytest_kvm.cli", "--cache-dir", str(kvm.settings.cache_dir), "reap"]
    subprocess.run(reap, check=True, capture_output=True, text=True, timeout=120)
    assert len(qemu_processes(names["test_fails"])) == 1
    removed = subprocess.run(reap + ["--kept"], check=True, capture_output=True, text=True, timeout=120)
    assert names["test_fails"] in removed.stdout
    assert qemu_processes(names["test_fails"]) == []
    # the child's run directory and watchdog log went with its kept guest (other runs that
    # share this cache, e.g. parallel jobs, are not this test's business)
    child_run = kvm.settings.cache_dir / "runs" / names["test_fails"][len(NAME_PREFIX):].rsplit("-", 1)[0]
    assert not child_run.exists() and not watchdog_log(child_run).exists()
