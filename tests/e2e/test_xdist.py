"""pytest-xdist: guests of parallel workers never clash, and the summary counts per worker."""
import json
import re
import time

from procs import qemu_processes

CHILD = """
import json, os, pytest

@pytest.mark.parametrize("n", range(4))
def test_fresh_guest(guest, worker_id, n):
    # a fresh guest per test: nothing left by a test that ran before on this worker
    assert guest.run("test ! -e /var/tmp/used").ok
    guest.run("touch /var/tmp/used", check=True)
    with open(os.environ["GUEST_LOG"], "a") as fh:
        fh.write(json.dumps({"worker": worker_id, "name": guest.name, "port": guest.ssh_port,
                             "cloned": guest.cloned}) + "\\n")
"""


def test_two_workers(pytester, monkeypatch, kvm):
    log = pytester.path / "guests.jsonl"
    monkeypatch.setenv("GUEST_LOG", str(log))
    pytester.makepyfile(CHILD)
    result = pytester.runpytest_subprocess("-n", "2", "--kvm-os", "debian-12", "-p", "no:cacheprovider",
                                           timeout=1500)
    result.assert_outcomes(passed=4)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    workers = {e["worker"] for e in entries}
    assert workers <= {"gw0", "gw1"} and len(entries) == 4
    # names carry the worker id, so workers never pick the same name
    for e in entries:
        assert e["name"].startswith(f"pytest-kvm-{e['worker']}-"), e
    # every clone has a name of its own, even clones of one golden
    assert len({e["name"] for e in entries}) == 4
    assert all(e["cloned"] for e in entries)
    # the summary: one line per worker, and totals that add up: the workers share one
    # snapshot, made once under its lock (or already cached), so at most one cold boot
    out = result.stdout.str()
    per_worker = dict(re.findall(r"^  (gw\d): (\d+) cold boots", out, re.M))
    assert set(per_worker) == {"gw0", "gw1"}, out
    total = re.search(r"guests: (\d+) cold boots, (\d+) warm clones.*; snapshots (\d+) reused, "
                      r"(\d+) created in 2 workers", out)
    assert total, out
    boots, clones, reused, created = map(int, total.groups())
    assert clones == 4 and boots == created <= 1 and reused + created == len(workers)
    # nothing left behind by either worker
    assert qemu_processes("pytest-kvm-gw", prefix=True) == []
    # xdist gives a worker 10 s to finish its session end before killing it (the watchdog
    # then finishes the job): the run directories are gone within seconds either way
    runs = kvm.settings.cache_dir / "runs"
    deadline = time.monotonic() + 30
    while [p for p in runs.iterdir() if p.name.startswith("gw")] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [p.name for p in runs.iterdir() if p.name.startswith("gw")] == []
