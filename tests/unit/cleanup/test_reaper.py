"""The reaper and the watchdog never take what a live run, or a guest they could not destroy,
still uses."""
import os
import time

from pytest_kvm.cleanup import reaper

from pytest_kvm.cleanup import watchdog
from pytest_kvm.errors import HypervisorError
from pytest_kvm.vm.hypervisor import Hypervisor
from pytest_kvm.cleanup.reaper import make_run_dir, read_owner, reap_domains, reap_run_dirs, write_owner

DEAD = {"owner_pid": "999999999", "owner_start": "1"}


def test_a_run_dir_is_born_with_its_owner(tmp_path, monkeypatch):
    """A reaper running in the middle of make_run_dir (before and after the owner record is
    written) removes nothing, and the directory ends up in place with its owner."""
    runs = tmp_path / "runs"
    reaped = []

    def write_owner_between_reaps(directory):
        reaped.extend(reap_run_dirs(runs))
        write_owner(directory)
        reaped.extend(reap_run_dirs(runs, young=0))  # owned now: even "young" does not matter

    monkeypatch.setattr(reaper, "write_owner", write_owner_between_reaps)
    run_dir = make_run_dir(runs / "1234-abcd")
    assert reaped == []
    assert run_dir.is_dir() and read_owner(run_dir) is not None
    assert reaper.owner_alive(read_owner(run_dir))
    assert [p.name for p in runs.iterdir()] == ["1234-abcd"]  # no staging directory left
    assert oct(run_dir.stat().st_mode & 0o777) == "0o700"
    assert make_run_dir(run_dir) == run_dir  # made once: a second call changes nothing


def test_owner_less_dirs_are_reaped_only_when_old(tmp_path):
    runs = tmp_path / "runs"
    young, old = runs / "young", runs / "old"
    young.mkdir(parents=True)
    old.mkdir()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert reap_run_dirs(runs) == [old]
    assert young.is_dir() and not old.exists()


def test_dead_owners_go_at_any_age_live_ones_stay(tmp_path):
    runs = tmp_path / "runs"
    dead, live = make_run_dir(runs / "dead"), make_run_dir(runs / "live")
    (dead / "owner.json").unlink()  # a run of an older pytest-kvm: "PID START" only
    (dead / "owner").write_text(f"{DEAD['owner_pid']} {DEAD['owner_start']}\n")
    an_hour_ago = time.time() - 3600
    os.utime(live, (an_hour_ago, an_hour_ago))
    assert reap_run_dirs(runs) == [dead]
    assert live.is_dir()


class FakeHv:
    """our_domains() and destroy(): a domain named in *broken* cannot be destroyed."""

    def __init__(self, domains, broken=()):
        self.domains, self.broken, self.destroyed = domains, set(broken), []

    def our_domains(self):
        return dict(self.domains)

    def destroy(self, name):
        if name in self.broken:
            raise HypervisorError(f"destroying {name}: connection broken")
        self.destroyed.append(name)
        return True

    def close(self):
        pass


def dead_run(tmp_path, run_id, *guests):
    run_dir = tmp_path / "runs" / run_id
    for name in guests:
        (run_dir / name).mkdir(parents=True)
    return run_dir, {name: {**DEAD, "run_dir": str(run_dir)} for name in guests}


def test_a_domain_not_destroyed_keeps_its_files(tmp_path):
    run_dir, domains = dead_run(tmp_path, "7-aa", "pytest-kvm-7-aa-1", "pytest-kvm-7-aa-2")
    hv = FakeHv(domains, broken={"pytest-kvm-7-aa-1"})
    failures = []
    removed = reap_domains(hv, failed=lambda name, exc: failures.append((name, str(exc))))
    assert removed == ["pytest-kvm-7-aa-2"]
    assert failures == [("pytest-kvm-7-aa-1", "destroying pytest-kvm-7-aa-1: connection broken")]
    assert (run_dir / "pytest-kvm-7-aa-1").is_dir()  # its QEMU may still run on these
    assert not (run_dir / "pytest-kvm-7-aa-2").exists()


def run_watchdog(run_dir, monkeypatch, hv):
    """The watchdog's main() as after its owner died without a goodbye."""
    monkeypatch.setattr(Hypervisor, "open", classmethod(lambda cls, uri, state_dir=None: hv))
    log = watchdog.log_path(run_dir)
    log.write_text("watchdog started\n")
    read_fd, write_fd = os.pipe()
    os.close(write_fd)  # the owner is gone
    watchdog.main(["--fd", str(read_fd), "--run-dir", str(run_dir), "--log", str(log)])
    return log


def test_watchdog_keeps_run_dir_and_log_when_a_guest_was_not_destroyed(tmp_path, monkeypatch, capsys):
    run_id = f"{os.getpid()}-w1"
    name = f"pytest-kvm-{run_id}-1"
    run_dir, domains = dead_run(tmp_path, run_id, name)
    log = run_watchdog(run_dir, monkeypatch, FakeHv(domains, broken={name}))
    err = capsys.readouterr().err  # the watchdog's stderr is its log
    assert f"could not destroy {name}" in err and f"{run_dir} kept" in err
    assert (run_dir / name).is_dir() and log.is_file()
    assert log.parent == run_dir.parent  # beside the run directory, not in it


def test_watchdog_removes_run_dir_and_log_after_a_complete_reap(tmp_path, monkeypatch):
    run_id = f"{os.getpid()}-w2"
    run_dir, domains = dead_run(tmp_path, run_id, f"pytest-kvm-{run_id}-1")
    hv = FakeHv(domains)
    log = run_watchdog(run_dir, monkeypatch, hv)
    assert hv.destroyed == [f"pytest-kvm-{run_id}-1"]
    assert not run_dir.exists() and not log.exists()


def test_watchdog_logs_beside_the_run_dir_and_a_clean_stop_removes_the_log(tmp_path):
    run_dir = make_run_dir(tmp_path / "runs" / f"{os.getpid()}-w3")
    dog = watchdog.Watchdog(run_dir, None, None)
    try:
        assert dog.log == tmp_path / "runs" / f"{run_dir.name}.watchdog.log" and dog.log.exists()
    finally:
        dog.stop()
    assert not dog.log.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["owner", "owner.json"]  # nothing of the watchdog's


def _record(**changes):
    """An owner record of a dead process of this kernel boot and PID namespace, changed."""
    from pytest_kvm.owner import machine_identity
    return {**DEAD, **machine_identity(), "cache_id": "c1", **changes}


def _owned_run(runs, name, record):
    import json
    run_dir = make_run_dir(runs / name)
    (run_dir / "owner.json").write_text(json.dumps(record))
    return run_dir


def test_a_run_the_reaper_cannot_prove_dead_stays(tmp_path):
    """Finding 4: a run in another PID namespace (a container sharing the cache) or on
    another machine looks dead by its PID; only a provable death reaps it."""
    runs = tmp_path / "runs"
    (tmp_path / "cache-id").write_text("c1\n")
    other_ns = _owned_run(runs, "other-ns", _record(owner_pidns="1"))
    other_machine = _owned_run(runs, "other-machine", _record(owner_boot="b2", owner_machine_id="m2"))
    dead_here = _owned_run(runs, "dead-here", _record())
    rebooted = _owned_run(runs, "rebooted", _record(owner_boot="b0"))
    copied = _owned_run(runs, "copied", _record(owner_boot="b2", owner_machine_id="m2", cache_id="c0"))
    assert sorted(reap_run_dirs(runs)) == sorted([dead_here, rebooted, copied])
    assert other_ns.is_dir() and other_machine.is_dir()


def test_a_clone_of_this_machine_with_another_cache_is_never_judged_dead():
    """Two VMs cloned from one image share a machine-id (not a boot, not a cache): a run
    recorded by the other one, sharing a remote host with us, stays alive to our reaper;
    our own run from before a reboot (same cache) is over."""
    from pytest_kvm.owner import machine_identity
    here = machine_identity()
    record = {**here, "owner_boot": "another-boot", "owner_pid": "1", "owner_start": "1"}
    assert reaper.owner_alive({**record, "cache_id": "theirs"}, cache="ours")
    assert not reaper.owner_alive({**record, "cache_id": "ours"}, cache="ours")
    assert not reaper.owner_alive(record, cache="ours")  # no cache recorded: an older run here


def test_a_run_dir_records_its_namespace_machine_and_cache(tmp_path):
    from pytest_kvm.owner import machine_identity
    run_dir = make_run_dir(tmp_path / "runs" / "r")
    record = read_owner(run_dir)
    assert record["owner_pidns"] == machine_identity()["owner_pidns"] != ""
    assert record["owner_boot"] and record["cache_id"] == (tmp_path / "cache-id").read_text().strip()
    assert reaper.owner_alive(record, cache=record["cache_id"])


UNSHARE_SESSION = """
import sys, time
from pathlib import Path
from pytest_kvm.cleanup.reaper import make_run_dir
make_run_dir(Path(sys.argv[1]))
print("ready", flush=True)
time.sleep(60)
"""


def test_a_session_in_another_pid_namespace_survives_one_starting_beside_it(tmp_path):
    """A real PID namespace (``unshare --pid --fork --mount-proc``): its run directory
    outlives a reap from this namespace while its process lives."""
    import shutil
    import subprocess
    import sys

    import pytest
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a PID namespace")
    runs = tmp_path / "runs"
    inside = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-c",
                               UNSHARE_SESSION, str(runs / "contained")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert inside.stdout.readline().strip() == "ready"
        assert read_owner(runs / "contained")["owner_pid"] == "1"  # PID 1 of its namespace
        assert reap_run_dirs(runs) == []
        assert (runs / "contained").is_dir()
    finally:
        inside.kill()
        inside.wait(10)
