"""share= on a remote host without a host: which copies a sweep removes, how a copy that
came back is applied to the directory here, the launcher as it runs there."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from pytest_kvm.hosts.remote import RemoteHost

from pytest_kvm.hosts.shares import LAUNCHER_SUFFIX, apply_copy, copy_name, doomed_entries, \
    guest_of, tree_paths
from pytest_kvm.hosts.uris import parse_host
from pytest_kvm.hosts.volumes import live_run_prefixes, owner_record, owner_volume
from pytest_kvm.spec import SpecError
from pytest_kvm.vm import virtiofsd
from pytest_kvm.vm.virtiofsd import launcher_argv

from test_volumes import DEAD, LIVE, Volumes, alive


def test_a_copy_names_its_guest_and_so_its_run():
    name = copy_name("pytest-kvm-1-aa-3", 0)
    assert guest_of(name) == "pytest-kvm-1-aa-3"
    assert guest_of(name + LAUNCHER_SUFFIX) == "pytest-kvm-1-aa-3"
    assert guest_of(copy_name("pytest-kvm-1-aa-3", 12)) == "pytest-kvm-1-aa-3"
    for other in (".virtiofsd-0123.py", "notes", "pytest-kvm-x", "pytest-kvm-1-aa-3-x"):
        assert guest_of(other) is None, other


def test_a_sweep_removes_the_copies_of_runs_that_are_over_only():
    """The live runs come from the owner records, as for volumes; a running domain's stay."""
    hv = Volumes([], {owner_volume("1-aa"): owner_record(LIVE), owner_volume("2-bb"): owner_record(DEAD)})
    live, over = live_run_prefixes(hv, alive)
    assert live == ["pytest-kvm-1-aa-"] and over == ["pytest-kvm-2-bb.owner"]
    entries = [".virtiofsd-0123.py", "pytest-kvm-1-aa-1-0", "pytest-kvm-1-aa-1-0.virtiofsd",
               "pytest-kvm-2-bb-1-0", "pytest-kvm-2-bb-1-0.virtiofsd", "pytest-kvm-2-bb-2-1",
               "pytest-kvm-3-cc-1-0", "pytest-kvm-1-aaa-1-0"]
    assert doomed_entries(entries, live, running={"pytest-kvm-2-bb-2"}) == [
        "pytest-kvm-1-aaa-1-0", "pytest-kvm-2-bb-1-0", "pytest-kvm-2-bb-1-0.virtiofsd",
        "pytest-kvm-3-cc-1-0"]


def test_tree_paths_are_what_a_tar_of_the_tree_holds(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "link").symlink_to("d")
    os.mkfifo(tmp_path / "fifo")  # never sent, so never "deleted by the guest"
    assert tree_paths(tmp_path) == {"d", "d/e", "d/f", "link"}


def test_a_copy_that_came_back_mirrors_the_guests_view(tmp_path):
    dest, copy = tmp_path / "dest", tmp_path / "copy"
    for root in (dest, copy):
        (root / "keep").mkdir(parents=True)
        (root / "keep" / "same.txt").write_text("same")
    os.utime(dest / "keep" / "same.txt", (1000, 1000))
    os.utime(copy / "keep" / "same.txt", (1000, 1000))
    (dest / "gone.txt").write_text("the guest deleted me")
    (dest / "gone_dir" / "x").mkdir(parents=True)
    (dest / "was_file").write_text("now a directory")
    (dest / "changed.txt").write_text("old")
    (dest / "made_here.txt").write_text("after the copy: the guest never saw it")
    sent = {"keep", "keep/same.txt", "gone.txt", "gone_dir", "gone_dir/x", "was_file", "changed.txt"}
    (copy / "was_file").mkdir()
    (copy / "was_file" / "inner").write_text("inner")
    (copy / "changed.txt").write_text("new")
    (copy / "new.txt").write_text("from the guest")
    (copy / "new_link").symlink_to("new.txt")
    inode = (dest / "keep" / "same.txt").stat().st_ino
    now = apply_copy(copy, dest, sent)
    assert now == {"keep", "keep/same.txt", "was_file", "was_file/inner", "changed.txt",
                   "new.txt", "new_link"}
    assert sorted(p.name for p in dest.iterdir()) == [
        "changed.txt", "keep", "made_here.txt", "new.txt", "new_link", "was_file"]
    assert (dest / "changed.txt").read_text() == "new"
    assert (dest / "was_file" / "inner").read_text() == "inner"
    assert os.readlink(dest / "new_link") == "new.txt"
    assert (dest / "keep" / "same.txt").stat().st_ino == inode  # unchanged: left alone
    # the next sync (a new copy: the last was consumed): what the guest deleted since, by
    # what the last one found
    again = tmp_path / "again"
    (again / "keep").mkdir(parents=True)
    (again / "was_file").mkdir()
    (again / "changed.txt").write_text("newer")
    assert apply_copy(again, dest, now) == {"keep", "was_file", "changed.txt"}
    assert sorted(p.name for p in dest.iterdir()) == ["changed.txt", "keep", "made_here.txt", "was_file"]
    assert (dest / "changed.txt").read_text() == "newer" and not list((dest / "keep").iterdir())


def test_the_launcher_runs_the_uploaded_code_with_the_hosts_ids(tmp_path):
    argv = launcher_argv("/usr/libexec/virtiofsd", "/var/lib/x/g-0", 1000, 1000, writable=True,
                         python="/usr/bin/python3", script="/var/lib/x/.virtiofsd-ab.py",
                         host_ids=(1234, 1235))
    assert argv[:3] == ["/usr/bin/python3", "-I", "/var/lib/x/.virtiofsd-ab.py"]
    assert argv[argv.index("--uid") + 1] == "1000:1234"
    assert argv[argv.index("--gid") + 1] == "1000:1235"
    assert argv[-2:] == ["--", "/usr/libexec/virtiofsd"] and "--read-only" not in argv


def test_the_launcher_code_says_which_virtiofsd_the_host_declares():
    """What the plugin asks on a remote host (the file run alone, as uploaded)."""
    done = subprocess.run([sys.executable, "-I", virtiofsd.__file__, "--find-virtiofsd"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = virtiofsd.find_virtiofsd()
    assert done.stdout.strip() == (str(found) if found else "")
    missing = subprocess.run([sys.executable, "-I", virtiofsd.__file__, "--source", "/x"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "--uid and --gid are required" in missing.stderr


def test_a_remote_host_takes_shares_networks_and_goldens_but_not_winrm_or_uefi(tmp_path):
    uri = parse_host("qemu+ssh://ci@hv1/system")
    host = RemoteHost(uri, (uri,), tmp_path)
    config = SimpleNamespace(family=SimpleNamespace(name="debian", transport="ssh", firmware="bios"))
    request = SimpleNamespace(share=({"/mnt": tmp_path},), networks=("lan",), golden=object())
    host.refuse_unsupported(request, config)
    assert host.copies_shares
    windows = SimpleNamespace(family=SimpleNamespace(name="windows", transport="winrm",
                                                     firmware="uefi"))
    with pytest.raises(SpecError, match="on remote host ci@hv1: not supported yet: family windows"):
        host.refuse_unsupported(request, windows)
