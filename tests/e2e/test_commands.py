"""Commands, files, console and SSH on one module-scoped guest."""
import os
import re
import subprocess

import pytest

from pytest_kvm import CommandFailed, CommandTimeout, HostKeyMismatch
from pytest_kvm.files import sha256_file
from pytest_kvm.keys import KeyPair, write_known_hosts
from pytest_kvm.transport.ssh import SshClient


def test_exit_code_stdout_stderr(shared_guest):
    result = shared_guest.run("echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr, result.ok) == (3, "out\n", "err\n", False)
    assert result.command == "echo out; echo err >&2; exit 3"
    assert shared_guest.run("true").ok


def test_check_raises_with_result(shared_guest):
    with pytest.raises(CommandFailed) as info:
        shared_guest.run("echo nope >&2; exit 7", check=True)
    assert info.value.result.exit_code == 7
    assert info.value.result.stderr == "nope\n"
    assert "exited 7" in str(info.value)


def test_timeout(shared_guest):
    with pytest.raises(CommandTimeout) as info:
        shared_guest.run("echo started; sleep 60", timeout=3)
    assert info.value.timeout == 3
    assert info.value.result.stdout == "started\n"
    assert shared_guest.run("echo still alive").stdout == "still alive\n"


def test_megabytes_on_stderr_do_not_hang(shared_guest):
    result = shared_guest.run("head -c 4000000 /dev/zero | tr '\\0' x >&2; "
                              "head -c 1000000 /dev/zero | tr '\\0' y; echo", timeout=300)
    assert result.ok
    assert len(result.stderr) == 4_000_000 and set(result.stderr) == {"x"}
    assert len(result.stdout) == 1_000_001


def test_invalid_utf8_is_replaced(shared_guest):
    result = shared_guest.run("printf '\\377\\376ok'")
    assert result.stdout == "\ufffd\ufffdok"


def test_put_get_binary_round_trip(shared_guest, tmp_path):
    data = os.urandom(1024 * 1024)
    (tmp_path / "in.bin").write_bytes(data)
    shared_guest.put(tmp_path / "in.bin", "/tmp/in.bin")
    assert shared_guest.run("sha256sum /tmp/in.bin").stdout.split()[0] == __import__("hashlib").sha256(data).hexdigest()
    shared_guest.get("/tmp/in.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data


def test_identity_and_sudo(shared_guest):
    assert shared_guest.run("hostname").stdout.strip() == shared_guest.hostname
    assert shared_guest.run("sudo -n id -u").stdout.strip() == "0"
    assert shared_guest.os == "debian-12"


def test_no_password_login_possible(shared_guest):
    assert shared_guest.run("sudo -n grep -c '^pytest:[!*]' /etc/shadow").stdout.strip() == "1"
    sshd = shared_guest.run("sudo -n sshd -T").stdout
    assert "passwordauthentication no" in sshd
    assert "kbdinteractiveauthentication no" in sshd
    assert "permitrootlogin no" in sshd


def test_console_log(shared_guest):
    console = shared_guest.console_log()
    assert "Linux version" in console
    assert shared_guest.console_tail(5).count("\n") <= 4


def test_timeline(shared_guest):
    phases = [phase for phase, _ in shared_guest.timeline.entries]
    if shared_guest.cloned:
        assert phases[:4] == ["prepare", "restore", "ssh-auth", "clock"]
    else:
        init = "systemd" if shared_guest.config.plain_seed else "cloud-init"  # seed/plain.py
        assert phases[:5] == ["prepare", "domain-start", "ssh-banner", "ssh-auth", init]
    assert all(seconds >= 0 for _, seconds in shared_guest.timeline.entries)


def test_real_ssh_client_with_ssh_command(shared_guest):
    argv = shared_guest.ssh_command()
    assert argv[0] == "ssh" and argv[-1] == "pytest@127.0.0.1"
    done = subprocess.run(argv + ["uname -n"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == shared_guest.hostname


def test_wrong_host_key_is_refused(shared_guest, tmp_path):
    key_file = next(arg for prev, arg in zip(shared_guest.ssh_command(), shared_guest.ssh_command()[1:]) if prev == "-i")
    wrong = write_known_hosts(tmp_path / "known_hosts", "127.0.0.1", shared_guest.ssh_port, KeyPair.generate("x").public_openssh)
    client = SshClient(shared_guest.ssh_port, "pytest", key_file, wrong)
    with pytest.raises(HostKeyMismatch, match="not the one pinned"):
        client.connect(timeout=30)
    assert not client.connected
    argv = [f"UserKnownHostsFile={wrong}" if a.startswith("UserKnownHostsFile=") else a
            for a in shared_guest.ssh_command()]
    done = subprocess.run(argv + ["true"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 255
    assert re.search(r"HOST IDENTIFICATION HAS CHANGED|Host key verification failed", done.stderr)


def test_base_image_never_written(kvm, shared_guest):
    base = kvm.images.resolve("debian-12").disk
    before = sha256_file(base)
    assert not os.access(base, os.W_OK) or os.geteuid() == 0  # 0444; root may write anyway
    assert oct(base.stat().st_mode & 0o777) == "0o444"
    shared_guest.run("sudo -n dd if=/dev/urandom of=/var/tmp/blob bs=1M count=16 && sync", check=True,
                     timeout=300)
    shared_guest.run("sudo -n rm -f /etc/hostname && sync", check=True)
    assert sha256_file(base) == before
