"""Goldens kept across runs: a second session boots nothing, gets a fresh guest, and a
changed configuration or a damaged snapshot falls back to a cold boot that saves anew."""
import os
import re
import secrets
import subprocess
import sys

CHILD = """
import os, pytest

TOKEN = os.environ["SNAP_TOKEN"]

@pytest.mark.guest(memory_mib=int(os.environ["SNAP_MEMORY"]),
                   user_data={"write_files": [{"path": "/etc/snap-token", "content": TOKEN}]})
def test_fresh(guest):
    assert guest.cloned
    assert guest.run("cat /etc/snap-token").stdout == TOKEN
    # a file written by a test of an earlier session is not in this one's guest
    assert guest.run("test ! -e /var/tmp/written-by-a-test").ok
    guest.run("touch /var/tmp/written-by-a-test", check=True)
"""


def session(pytester, monkeypatch, token, memory=512, *options):
    monkeypatch.setenv("SNAP_TOKEN", token)
    monkeypatch.setenv("SNAP_MEMORY", str(memory))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-os", "debian-12",
                                           "--kvm-snapshots", "on", *options, timeout=900)
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    counts = re.search(r"guests: (\d+) cold boots, (\d+) warm clones.*; snapshots (\d+) reused, "
                       r"(\d+) created", out)
    assert counts, out
    boots, clones, reused, created = map(int, counts.groups())
    made = re.findall(r"booting snapshot ([0-9a-f]+) ", out)
    return {"boots": boots, "clones": clones, "reused": reused, "created": created}, made, out


def snapshot_cli(kvm, *args):
    return subprocess.run([sys.executable, "-m", "pytest_kvm.cli", "--cache-dir", str(kvm.settings.cache_dir),
                           "snapshot", *args], capture_output=True, text=True, timeout=120)


def test_sessions_share_snapshots_and_fall_back_when_damaged(pytester, monkeypatch, kvm):
    pytester.makepyfile(CHILD)
    token = secrets.token_hex(8)  # user data no other run has: a snapshot of this test's own
    made = []
    try:
        first, keys, _ = session(pytester, monkeypatch, token)
        made += keys
        assert first == {"boots": 1, "clones": 1, "reused": 0, "created": 1}
        (key,) = keys
        snapshot = kvm.settings.cache_dir / "snapshots" / key
        assert oct(snapshot.stat().st_mode & 0o777) == "0o700"
        assert oct((snapshot / "id_ed25519").stat().st_mode & 0o777) == "0o600"
        assert key in snapshot_cli(kvm, "list").stdout

        second, keys, _ = session(pytester, monkeypatch, token)
        assert second == {"boots": 0, "clones": 1, "reused": 1, "created": 0} and keys == []

        other, keys, _ = session(pytester, monkeypatch, token, memory=640)  # a new key
        made += keys
        assert other["created"] == 1 and keys and keys[0] != key

        # damage the saved state that the cheap check misses (same size, mtime and inode:
        # bit rot): the clone fails, the snapshot is removed with one line, the guest
        # booted cold and saved again
        save = snapshot / "memory.save"
        stamp = save.stat()
        with save.open("r+b") as fh:
            fh.seek(stamp.st_size // 2)
            fh.write(b"\xff" * (1 << 20))
        os.utime(save, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        fixed, keys, out = session(pytester, monkeypatch, token)
        assert f"snapshot {key} removed: its clone did not come up" in out, out
        assert fixed["boots"] == 1 and fixed["created"] == 1 and keys == [key]

        # the same damage written plainly (a new mtime): its sha256 catches it before restoring
        with save.open("r+b") as fh:
            fh.seek(save.stat().st_size // 2)
            fh.write(b"\xff" * (1 << 20))
        hashed, keys, out = session(pytester, monkeypatch, token)
        assert f"snapshot {key} is damaged (memory.save changed since it was saved" in out, out
        assert hashed["created"] == 1 and keys == [key]

        # a truncated one is caught before restoring
        save.write_bytes(save.read_bytes()[:-4096])
        again, keys, out = session(pytester, monkeypatch, token)
        assert f"snapshot {key} is damaged" in out, out
        assert again["created"] == 1

        # over the size limit: the snapshots no session uses go (the 640 MiB one among
        # them), the one in use stays
        limited, keys, out = session(pytester, monkeypatch, token, 512, "-o", "kvm_snapshot_max_gb=0")
        assert limited["reused"] == 1 and keys == []
        assert f"snapshot {made[1]} removed: the snapshot cache is over kvm_snapshot_max_gb" in out, out
        assert not (kvm.settings.cache_dir / "snapshots" / made[1]).exists()
        assert snapshot.is_dir()
    finally:
        for name in made:
            snapshot_cli(kvm, "rm", name)
    assert not any((kvm.settings.cache_dir / "snapshots" / name).exists() for name in made)
