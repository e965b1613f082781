import os
import subprocess
import sys

from pytest_kvm.reaper import owner_alive, process_start_time


def cli(*args, cache):
    return subprocess.run([sys.executable, "-m", "pytest_kvm.cli", "--cache-dir", str(cache), *args],
                          capture_output=True, text=True, timeout=300)


def test_image_list_shows_known_images(tmp_path):
    done = cli("image", "list", cache=tmp_path)
    assert done.returncode == 0
    assert "debian-12" in done.stdout and "debian-13" in done.stdout
    assert "not built" in done.stdout


def test_image_build_unknown_name(tmp_path):
    done = cli("image", "build", "plan9", cache=tmp_path)
    assert done.returncode == 1
    assert "no recipe named 'plan9'" in done.stderr and "debian-12" in done.stderr


def test_image_rm_not_cached(tmp_path):
    assert "not cached" in cli("image", "rm", "debian-12", cache=tmp_path).stdout


def test_names_cannot_leave_the_cache(tmp_path):
    cache = tmp_path / "cache"
    victim = tmp_path / "victim"
    (victim / "keep").mkdir(parents=True)
    (cache / "images").mkdir(parents=True)
    (cache / "snapshots").mkdir(parents=True)
    for args in (("image", "rm", "../../victim"), ("snapshot", "rm", "../../victim"),
                 ("image", "rm", "/tmp"), ("image", "build", "../x")):
        done = cli(*args, cache=cache)
        assert done.returncode == 1, args
        assert "is not allowed" in done.stderr, (args, done.stderr)
    assert (victim / "keep").is_dir()


def test_doctor_reports_each_check(tmp_path):
    done = cli("doctor", cache=tmp_path)
    for check in ("qemu-system-x86_64", "qemu-img", "libvirt-python", "acceleration", "cache directory"):
        assert check in done.stdout
    assert done.stdout.strip().splitlines()[-1] in ("all required checks passed", "some required checks failed")


def test_reap_on_empty_cache(tmp_path):
    done = cli("reap", cache=tmp_path)
    assert done.returncode == 0 and "0 removed" in done.stdout


def test_owner_alive_guards_pid_reuse():
    me = {"owner_pid": str(os.getpid()), "owner_start": process_start_time(os.getpid())}
    assert owner_alive(me)
    assert not owner_alive({**me, "owner_start": "1"})  # same PID, other process
    assert not owner_alive({"owner_pid": "999999999", "owner_start": "1"})
    assert not owner_alive({})
