import hashlib
import subprocess
import sys
import textwrap

from pytest_kvm.files import file_lock, sha256_file, try_lock


def test_sha256(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10_000_000)
    assert sha256_file(path) == hashlib.sha256(b"x" * 10_000_000).hexdigest()


def test_lock_excludes_another_process(tmp_path):
    lock = tmp_path / "a.lock"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from pytest_kvm.files import try_lock
        print(try_lock(Path({str(lock)!r})) is None)
    """)
    with file_lock(lock):
        held = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    free = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert held.stdout.strip() == "True"
    assert free.stdout.strip() == "False"
    assert try_lock(lock) is not None
