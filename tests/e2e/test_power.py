"""Reboots, power cycles, dropped connections, and goldens made from a guest the test
prepared (user goldens)."""
import json
import shutil
import time

import pytest

from pytest_kvm import KvmError
from pytest_kvm.errors import ConnectionLost, HypervisorError


def test_reboot_then_commands_work_with_a_new_boot_id(kvm):
    with kvm.boot() as g:
        g.run("echo kept > /home/pytest/file", check=True)
        before = g.boot_id()
        g.reboot()
        assert g.boot_id() != before
        assert g.run("cat /home/pytest/file").stdout == "kept\n"
        assert g.run("uptime -s").ok
        # the clock is the host's after the reboot too
        assert abs(float(g.run("date +%s.%N").stdout) - time.time()) < 10
        phases = [p for p, _ in g.timeline.entries]
        assert {"reboot", "new-boot"} <= set(phases)


def test_shutdown_then_start_keeps_the_disk(kvm):
    with kvm.boot() as g:
        g.run("echo before > /home/pytest/persist && sync", check=True)
        g.shutdown()
        assert g.powered_off
        with pytest.raises(HypervisorError, match="shut down.*start"):
            g.run("true")
        g.start()
        assert g.run("cat /home/pytest/persist").stdout == "before\n"
        g.reset()  # the hard way round
        assert g.run("cat /home/pytest/persist").stdout == "before\n"


def test_reboot_started_by_the_test_then_wait_ready(kvm):
    with kvm.boot() as g:
        before = g.boot_id()
        with pytest.raises(ConnectionLost):  # the connection drops under the command
            g.run("sudo systemctl reboot; sleep 60")
        # the next run() logs in again once; while the guest is down that fails clearly
        try:
            g.run("true")
        except ConnectionLost as exc:
            assert "wait_ready" in str(exc)
        g.wait_ready()
        assert g.boot_id() != before


def test_stopped_sshd_gives_a_clear_error_not_a_library_one(kvm):
    with kvm.boot() as g:
        with pytest.raises(ConnectionLost):
            g.run("sudo systemctl stop ssh.socket ssh.service; sudo pkill -f 'sshd:'; sleep 30")
        with pytest.raises(ConnectionLost, match="logging in again failed.*wait_ready"):
            g.run("true")


@pytest.fixture(scope="module")
def prepared(kvm):
    """A user golden: a clone with a 'package' installed (a file standing in for it)."""
    with kvm.boot() as g:
        g.run("echo 15 | sudo tee /opt/pg-version >/dev/null", check=True)
        return g.freeze(key="pg-15-test")


def test_user_golden_gives_isolated_clones_at_once(kvm, guest_factory, prepared):
    boots = kvm.boots
    a, b = guest_factory(golden=prepared), guest_factory(golden=prepared)
    assert kvm.boots == boots  # warm clones only
    for g in (a, b):
        assert g.cloned and g.run("cat /opt/pg-version").stdout == "15\n"
    a.run("touch /home/pytest/only-a", check=True)
    assert b.run("test -e /home/pytest/only-a").failed
    assert a.name != b.name and a.mac != b.mac


@pytest.mark.guest(golden="prepared")
def test_user_golden_by_fixture_name_in_the_marker(guest):
    assert guest.run("cat /opt/pg-version").stdout == "15\n"


def test_user_golden_repr_has_no_secrets(prepared):
    text = repr(prepared)
    assert "PRIVATE KEY" not in text and prepared.key in text


def test_freeze_refuses_a_guest_with_shares(kvm, tmp_path):
    with kvm.boot(share={"/mnt/x": tmp_path}) as g:
        with pytest.raises(KvmError, match="shares"):
            g.freeze(key="never")


SESSION = '''
import pytest

@pytest.fixture(scope="session")
def pg(kvm):
    return kvm.golden(KEY, lambda g: g.run(
        "echo setup-ran >> /home/pytest/setup-count; sudo touch /opt/pg", check=True)
        and open(COUNTER, "a").write("ran\\n"))

def test_a(guest_factory, pg):
    g = guest_factory(golden=pg)
    assert g.run("test -e /opt/pg").ok
'''


def test_second_session_reuses_the_user_golden(pytester, tmp_path, kvm):
    counter = tmp_path / "counter"

    def session(key):
        pytester.makepyfile(SESSION.replace("KEY", repr(key)).replace("COUNTER", repr(str(counter))))
        result = pytester.runpytest_subprocess("--kvm-os", "debian-12", "-p", "no:cacheprovider",
                                               timeout=900)
        result.assert_outcomes(passed=1)
        return result.stdout.str()

    key = f"e2e-{time.time_ns()}"  # new for this run: the first session makes it
    try:
        session(key)
        assert counter.read_text() == "ran\n"
        second = session(key)
        assert counter.read_text() == "ran\n"  # the setup did not run again
        assert "0 cold boots" in second and "0 created" in second
        session(key + "-changed")
        assert counter.read_text() == "ran\nran\n"  # a changed key makes a new one
    finally:  # these snapshots are this test's own: do not leave them in the cache
        for meta in (kvm.settings.cache_dir / "snapshots").glob("*/meta.json"):
            if json.loads(meta.read_text())["fields"].get("user_key", "").startswith(key):
                shutil.rmtree(meta.parent)
