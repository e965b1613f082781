"""Code in, results out: directory trees, run() options, live output, lost connections,
shared folders (issue: trees, shares, commands)."""
import logging
import os
import subprocess
import time

import pytest

from pytest_kvm import CommandFailed
from pytest_kvm.errors import ConnectionLost

TRICKY = "it's a \"quoted\" $HOME with  spaces"


def make_tree(root):
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    (root / "pkg" / "sub" / "deep.txt").write_text("deep\n")
    (root / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (root / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    (root / "link").symlink_to("pkg/mod.py")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref\n")
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "mod.pyc").write_bytes(b"\0")
    return root


def test_tree_put_and_get_round_trip(shared_guest, tmp_path):
    src = make_tree(tmp_path / "src")
    shared_guest.put(src, "/tmp/tree in", exclude=[".git", "__pycache__"])
    listing = shared_guest.run("cd '/tmp/tree in' && find . | sort", check=True).stdout.split()
    assert listing == [".", "./empty", "./link", "./pkg", "./pkg/mod.py", "./pkg/sub",
                       "./pkg/sub/deep.txt", "./run.sh"]
    assert shared_guest.run("'/tmp/tree in/run.sh'").stdout == "ran\n"  # still executable
    assert shared_guest.run("readlink '/tmp/tree in/link'").stdout == "pkg/mod.py\n"
    assert shared_guest.run("stat -c %U '/tmp/tree in/pkg/mod.py'").stdout.strip() == shared_guest.user

    shared_guest.run("mkdir -p '/tmp/tree in/build' && echo artifact > '/tmp/tree in/build/out.txt'")
    back = tmp_path / "back"
    shared_guest.get("/tmp/tree in", back, exclude=["pkg"])
    assert sorted(str(p.relative_to(back)) for p in back.rglob("*")) == [
        "build", "build/out.txt", "empty", "link", "run.sh"]
    assert (back / "build" / "out.txt").read_text() == "artifact\n"
    assert os.access(back / "run.sh", os.X_OK)
    assert os.readlink(back / "link") == "pkg/mod.py"


def test_get_refuses_links_out_of_the_target(shared_guest, tmp_path):
    shared_guest.run("rm -rf /tmp/evil && mkdir -p /tmp/evil && ln -s /etc /tmp/evil/etc", check=True)
    from pytest_kvm.transport.archive import UnsafeArchive
    with pytest.raises(UnsafeArchive, match="etc"):
        shared_guest.get("/tmp/evil", tmp_path / "out")
    assert not (tmp_path / "out" / "etc").exists()


def test_sudo_env_cwd_input(shared_guest):
    assert shared_guest.run("id -u", sudo=True).stdout == "0\n"
    assert shared_guest.run("id -u").stdout != "0\n"
    result = shared_guest.run('printf "%s|%s" "$A" "$B"', env={"A": TRICKY, "B": "$(id)"})
    assert result.stdout == f"{TRICKY}|$(id)"
    shared_guest.run("mkdir -p \"/tmp/dir with 'q' \\$x\"", check=True)
    assert shared_guest.run("pwd", cwd="/tmp/dir with 'q' $x").stdout == "/tmp/dir with 'q' $x\n"
    both = shared_guest.run('echo "$V $(id -u) $(pwd)"', sudo=True, env={"V": "v w"}, cwd="/root")
    assert both.stdout == "v w 0 /root\n"
    assert shared_guest.run("cat", input="line 1\nline 2\n").stdout == "line 1\nline 2\n"
    assert shared_guest.run("wc -c", input=os.urandom(100_000)).stdout.strip() == "100000"
    assert shared_guest.run("cat").stdout == ""  # stdin is closed: nothing waits for a terminal
    failed = shared_guest.run("exit 4")
    assert failed.failed and not failed and shared_guest.run("true")


def test_output_is_logged_line_by_line(shared_guest, caplog):
    caplog.set_level(logging.INFO, logger="pytest_kvm.guest")
    shared_guest.run("echo one; echo two >&2; printf three")
    records = [r for r in caplog.records if r.name == f"pytest_kvm.guest.{shared_guest.name}"]
    lines = [r.getMessage() for r in records][1:]
    # each stream in order; stdout and stderr are drained by two threads, so a busy machine
    # may log "two" before "one"
    assert [line for line in lines if not line.startswith("[stderr]")] == ["one", "three"]
    assert [line for line in lines if line.startswith("[stderr]")] == ["[stderr] two"]
    assert records[0].getMessage().startswith("$ echo one")


def test_env_values_never_reach_the_log(shared_guest, caplog):
    caplog.set_level(logging.INFO, logger="pytest_kvm.guest")
    shared_guest.run("true", env={"TOKEN": "s3cr3t-value"})
    assert "s3cr3t-value" not in caplog.text and "TOKEN" in caplog.text


def test_destroyed_guest_under_a_running_command(kvm):
    with kvm.boot() as g:
        import threading
        threading.Timer(2.0, g.destroy).start()
        with pytest.raises(ConnectionLost, match="stopped|lost"):
            g.run("sleep 60")


def test_sshd_stopped_is_a_lost_connection_not_a_command_failure(kvm):
    with kvm.boot() as g:
        with pytest.raises(ConnectionLost, match="still running") as info:
            g.run("sudo systemctl stop ssh.socket ssh.service; sudo pkill -f 'sshd:'; sleep 30")
        assert not isinstance(info.value, CommandFailed)


def test_share_read_only_and_writable_in_clones(kvm, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "hello.txt").write_text("from a\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "hello.txt").write_text("from b\n")
    out = tmp_path / "out"
    out.mkdir()
    with kvm.boot(share={"/mnt/src": tmp_path / "a", "/mnt/out": {"path": out, "writable": True}}) as one, \
            kvm.boot(share={"/mnt/src": tmp_path / "b"}) as two:
        assert one.cloned and two.cloned
        assert one.run("cat /mnt/src/hello.txt").stdout == "from a\n"
        assert two.run("cat /mnt/src/hello.txt").stdout == "from b\n"
        assert not one.run("touch /mnt/src/new").ok  # read-only
        assert not (tmp_path / "a" / "new").exists()
        one.run("echo made in guest > /mnt/out/result.txt", check=True)
        assert (out / "result.txt").read_text() == "made in guest\n"
        assert two.run("test -e /mnt/out").failed  # not its share
    # no virtiofsd left: libvirt ends them with their domain (under load, a moment later)
    deadline = time.monotonic() + 15
    while True:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if (str(out) not in ps and str(tmp_path / "a") not in ps) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert str(out) not in ps and str(tmp_path / "a") not in ps, ps


@pytest.mark.skipif(os.geteuid() != 0, reason="the id-mapped virtiofsd needs root")
def test_share_of_a_private_directory_reads_and_writes_as_the_host_user(kvm, tmp_path):
    """tmp_path is 0700: the login user reads it and writes as the host user; guest root
    writes as an id no one has, makes no device nodes, and cannot write to a read-only
    share even after remounting it (see pytest_kvm/vm/virtiofsd.py)."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir(mode=0o700)
    out.mkdir(mode=0o700)
    (src / "secret.txt").write_text("for the login user\n")
    (src / "secret.txt").chmod(0o600)
    with kvm.boot(share={"/mnt/src": src, "/mnt/out": {"path": out, "writable": True}}) as g:
        assert g.run("cat /mnt/src/secret.txt", check=True).stdout == "for the login user\n"
        g.run("echo mine > /mnt/out/mine.txt && chmod 644 /mnt/out/mine.txt", check=True)
        g.run("echo root > /mnt/out/root.txt", sudo=True, check=True)
        assert g.run("mknod /mnt/out/null c 1 3", sudo=True).failed
        g.run("mount -o remount,rw /mnt/src", sudo=True)
        assert g.run("touch /mnt/src/new", sudo=True).failed
        setuid = g.run("cp /bin/true /mnt/out/suid && chmod 4755 /mnt/out/suid")
    mine = (out / "mine.txt").stat()
    assert (mine.st_uid, mine.st_gid) == (os.getuid(), os.getgid())
    assert (out / "root.txt").stat().st_uid not in (0, os.getuid())
    assert not (out / "null").exists() and not (src / "new").exists()
    # what remains (the threat model says so): the mode is the guest's, so a writable share
    # can hold a setuid file of the host user's; share only directories no one else executes from
    assert setuid.ok and (out / "suid").stat().st_mode & 0o4000
    assert (out / "suid").stat().st_uid == os.getuid()
