import importlib.util
import os
import pwd
import shutil
import subprocess
import sys

import pytest

from pytest_kvm import cli as cli_module
from pytest_kvm.vm.accel import choose_accel
from pytest_kvm.cleanup.reaper import owner_alive
from pytest_kvm.owner import process_start_time


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


def test_removing_what_is_not_there_fails_alike(tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path)]
    assert cli_module.main([*cache, "image", "rm", "nosuch"]) == 1
    assert cli_module.main([*cache, "snapshot", "rm", "nosuch"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "nosuch: not cached\nnosuch: no such snapshot\n"


def test_cache_dir_is_taken_after_the_command_too(tmp_path, capsys):
    assert cli_module.main(["image", "list", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"cache: {tmp_path / 'images'}\n")
    assert cli_module.main(["--cache-dir", str(tmp_path), "snapshot", "list"]) == 0
    assert capsys.readouterr().out.startswith(f"snapshots: {tmp_path / 'snapshots'}\n")


def test_prune_refuses_a_negative_size(tmp_path, capsys):
    for bad in ("-1", "nan", "lots"):
        with pytest.raises(SystemExit) as info:
            cli_module.main(["--cache-dir", str(tmp_path), "snapshot", "prune", "--max-gb", bad])
        assert info.value.code == 2
        assert "--max-gb" in capsys.readouterr().err
    assert not (tmp_path / "snapshots").exists()
    assert cli_module.main(["--cache-dir", str(tmp_path), "snapshot", "prune", "--max-gb", "0"]) == 0


def test_fetch_of_a_recipe_points_to_build(tmp_path, capsys):
    assert cli_module.main(["--cache-dir", str(tmp_path), "image", "fetch", "debian-12"]) == 1
    assert "debian-12 is built from a recipe, not downloaded: `pytest-kvm image build " \
           "debian-12`" in capsys.readouterr().err


def test_mirror_means_the_catalog_mirror_in_build_too(tmp_path, capsys):
    argv = ["--cache-dir", str(tmp_path), "image", "build", "debian-12", "--mirror", "http://m"]
    assert cli_module.main(argv) == 2
    err = capsys.readouterr().err
    assert "--mirror is where catalog images are downloaded from" in err
    assert "--debian-mirror URL" in err
    assert not (tmp_path / "images").exists()  # refused before anything was built


def test_image_list_fits_100_columns(tmp_path, capsys):
    assert cli_module.main(["--cache-dir", str(tmp_path), "image", "list", "--long"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 3 and max(map(len, lines)) <= cli_module.WIDTH


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


def doctor_lines(stdout):
    """``[ok] what`` / ``[FAIL] what`` / ``[WARN] what`` lines -> {what: mark}."""
    return {line.split("] ", 1)[1]: line[1:].split("]")[0]
            for line in stdout.splitlines() if line.startswith(("[ok] ", "[FAIL] ", "[WARN] "))}


def test_doctor_reports_each_check(tmp_path):
    """Each check's outcome is what this machine has, found out here independently."""
    done = cli("doctor", cache=tmp_path)
    checks = doctor_lines(done.stdout)

    def outcome(prefix):
        [mark] = [mark for what, mark in checks.items() if what.startswith(prefix)]
        assert mark in ("ok", "FAIL" if prefix in required else "WARN"), (prefix, mark)
        return mark == "ok"

    try:
        pwd.getpwnam("libvirt-qemu")
        has_user = True
    except KeyError:
        has_user = False
    has_libvirt = importlib.util.find_spec("libvirt") is not None
    required = {
        "qemu-system-x86_64: ": bool(shutil.which("qemu-system-x86_64")),
        "qemu-img: ": bool(shutil.which("qemu-img")),
        "libvirt-python importable": has_libvirt,
        "user libvirt-qemu exists": has_user,
        f"cache directory writable: {tmp_path}": True,
    }
    optional = {
        "debootstrap": bool(shutil.which("debootstrap")),
        "acceleration: ": choose_accel("auto").name == "kvm",
    }
    for prefix, expected in {**required, **optional}.items():
        assert outcome(prefix) is expected, (prefix, done.stdout)
    if has_libvirt:  # the e2e suite needs it, so the machine that runs it must pass this
        assert outcome("libvirt connection: ") is True, done.stdout
        required["libvirt connection: "] = True
    good = all(required.values())
    warnings = sum(not ok for ok in optional.values())
    verdict = done.stdout.strip().splitlines()[-1]
    assert verdict.startswith("all required checks passed" if good else "some required checks failed")
    assert verdict.endswith(f"; {warnings} warning(s): see [WARN]" if warnings else "passed")
    assert ("[FAIL]" in done.stdout) is (not good)  # the verdict matches the lines
    assert done.returncode == (0 if good else 1)
    assert "--kvm-cache-dir DIR" not in done.stdout  # the hint names this command's flag


def test_doctor_names_the_cli_flag_for_an_unwritable_cache(tmp_path):
    (tmp_path / "file").write_text("")
    done = cli("doctor", cache=tmp_path / "file" / "cache")
    assert "[FAIL] cache directory writable" in done.stdout and done.returncode == 1
    assert "fix: pass --cache-dir DIR (pytest: --kvm-cache-dir)" in done.stdout


def test_reap_on_empty_cache(tmp_path, monkeypatch, capsys):
    """Isolated from this machine's libvirt: its own cache and embedded-driver state
    directory, no qemu:///system, and no connection opened at all."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(cli_module, "SYSTEM_SOCKET", tmp_path / "no-libvirtd-sock")

    def no_libvirt(*args, **kwargs):
        raise AssertionError("the test reap opened a libvirt connection")

    monkeypatch.setattr(cli_module.Hypervisor, "open", no_libvirt)
    monkeypatch.setattr(cli_module.Hypervisor, "open_embed_slot", no_libvirt)
    assert cli_module.main(["--cache-dir", str(tmp_path / "cache"), "reap"]) == 0
    assert capsys.readouterr().out == "0 removed\n"
    assert cli_module.libvirt_state_dir() == tmp_path / "run" / "pytest-kvm"


def test_owner_alive_guards_pid_reuse():
    me = {"owner_pid": str(os.getpid()), "owner_start": process_start_time(os.getpid())}
    assert owner_alive(me)
    assert not owner_alive({**me, "owner_start": "1"})  # same PID, other process
    assert not owner_alive({"owner_pid": "999999999", "owner_start": "1"})
    assert not owner_alive({})
