"""Example tests: each boots a real guest (the default OS, debian-12) and prints what it saw.

Run them with the README's first command, or: pytest examples -v -s
"""
import pytest


def test_kernel(guest):
    result = guest.run("uname -s")
    assert result.exit_code == 0
    assert result.stdout.strip() == "Linux"
    print(f"\n{guest.name} ({guest.os}) on 127.0.0.1:{guest.ssh_port}: {guest.run('uname -r').stdout.strip()}")


def test_os_release(guest):
    pretty = guest.run(". /etc/os-release && echo $PRETTY_NAME", check=True).stdout.strip()
    print(f"\nguest says: {pretty}")
    assert "Debian" in pretty


@pytest.mark.guest(memory_mib=768, user_data={
    "write_files": [{"path": "/etc/motd-pytest", "content": "hello from user_data\n"}],
})
def test_user_data_and_files(guest, tmp_path):
    assert guest.run("cat /etc/motd-pytest", check=True).stdout == "hello from user_data\n"
    src = tmp_path / "payload.bin"
    src.write_bytes(bytes(range(256)) * 64)
    guest.put(src, "/tmp/payload.bin")
    guest.get("/tmp/payload.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    mem_kib = int(guest.run("awk '/MemTotal/ {print $2}' /proc/meminfo").stdout)
    print(f"\nguest memory: {mem_kib // 1024} MiB; ssh: {' '.join(guest.ssh_command())}")
    assert 600 * 1024 < mem_kib <= 768 * 1024
