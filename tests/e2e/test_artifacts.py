"""A failing test's guest artifacts (--kvm-artifacts) and its live command log, in a child
pytest run as users run it."""
CHILD = '''
import pytest

@pytest.mark.guest(artifacts=["/etc/hostname", "/tmp/outdir", "/no/such/file", "/tmp/zero"])
def test_fails(guest):
    guest.run("mkdir -p /tmp/outdir && echo result > /tmp/outdir/r.txt", check=True)
    # du says a few bytes; it never ends (root's link: root follows no other user's in /tmp)
    guest.run("ln -s /dev/zero /tmp/zero", sudo=True, check=True)
    guest.run("echo building step one; echo step two", check=True)
    assert False, "deliberate"

def test_passes(guest):
    assert guest.run("true").ok
'''


def test_failed_test_leaves_its_guests_artifacts(pytester):
    pytester.makepyfile(CHILD)
    artifacts = pytester.path / "artifacts"
    result = pytester.runpytest_subprocess("--kvm-os", "debian-12", "--kvm-artifacts", str(artifacts),
                                           "--log-level=INFO", "-p", "no:cacheprovider",
                                           timeout=900)
    result.assert_outcomes(passed=1, failed=1)
    tests = sorted(p.name for p in artifacts.iterdir())
    assert tests == ["test_failed_test_leaves_its_guests_artifacts.py__test_fails"]
    (guest_dir,) = (artifacts / tests[0]).iterdir()
    files = {str(p.relative_to(guest_dir)) for p in guest_dir.rglob("*") if p.is_file()}
    assert {"console.log", "timeline.txt", "journal.txt", "cloud-init.log",
            "cloud-init-output.log", "files/etc/hostname", "files/tmp/outdir/r.txt",
            "errors.txt"} <= files
    assert (guest_dir / "files/tmp/outdir/r.txt").read_text() == "result\n"
    assert "Linux version" in (guest_dir / "console.log").read_text()
    assert "sshd" in (guest_dir / "journal.txt").read_text()
    errors = (guest_dir / "errors.txt").read_text()
    assert "/no/such/file" in errors and "journal" not in errors
    assert "/tmp/zero: OverLimit" in errors and "stopped at the size limit" in errors, errors
    out = result.stdout.str()
    # the report names the directory; the captured log has the command's lines
    assert "pytest-kvm artifacts" in out and str(artifacts / tests[0]) in out
    assert "building step one" in out and "step two" in out


def test_always_collects_for_passing_tests_too(pytester):
    pytester.makepyfile('def test_ok(guest):\n    assert guest.run("true").ok\n')
    artifacts = pytester.path / "a"
    result = pytester.runpytest_subprocess("--kvm-os", "debian-12", "--kvm-artifacts", str(artifacts),
                                           "--kvm-artifacts-when", "always", "-p", "no:cacheprovider",
                                           timeout=900)
    result.assert_outcomes(passed=1)
    (test_dir,) = artifacts.iterdir()
    (guest_dir,) = test_dir.iterdir()
    assert (guest_dir / "journal.txt").stat().st_size > 0
    assert not (guest_dir / "errors.txt").exists()
