"""Plugin behaviour (options, markers, ids, header, errors) through pytest's own pytester.
None of these boot a guest."""
import os
import signal
import subprocess
import sys
import time

import pytest

from pytest_kvm.vm.accel import choose_accel

KERNEL_TEST = """
import pytest

def test_a(guest):
    pass

@pytest.mark.guest(os="debian-13")
def test_pinned(guest):
    pass

def test_plain():
    pass
"""


def test_help_documents_every_option_and_ini(pytester):
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    for opt in ("--kvm-os", "--kvm-accel", "--kvm-uri", "--kvm-keep", "--kvm-image", "--kvm-cache-dir", "--kvm-reset", "kvm_reset",
                "kvm_os", "kvm_cache_dir", "kvm_boot_timeout", "kvm_ssh_timeout", "kvm_cloud_init_timeout", "kvm_memory_mib", "kvm_command_timeout",
                "--kvm-mirror", "kvm_mirror", "kvm_catalog", "kvm_cpus", "--kvm-snapshots", "kvm_snapshots",
                "kvm_snapshot_max_gb", "kvm_prepare_ahead", "--kvm-network", "kvm_network",
                "--kvm-host", "kvm_hosts"):
        assert opt in out, opt


def test_marker_is_registered(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.guest(os=None, memory_mib=None, cpus=None, user_data=None, image=None, boot_timeout=None, reset=None, family=None, seed=None, unique=False, tpm=None, share=None, artifacts=(), golden=None, networks=(), name=None, arch=None)*"])


def test_header_says_uri_and_acceleration(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    accel = choose_accel("auto")
    result.stdout.fnmatch_lines([f"pytest-kvm: accel {accel.name}: {accel.reason}; uri *; os debian-12; arch amd64; reset clone; snapshots on; prepare ahead 1; network user; cache *"])


def test_header_says_the_network_mode_and_refuses_an_unknown_one(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--kvm-network", "isolated")
    result.stdout.fnmatch_lines(["pytest-kvm: *; network isolated; cache *"])
    pytester.makeini("[pytest]\nkvm_network = isolated\n")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["pytest-kvm: *; network isolated; cache *"])
    result = pytester.runpytest("--kvm-network", "user")  # the option over the ini
    result.stdout.fnmatch_lines(["pytest-kvm: *; network user; cache *"])
    pytester.makeini("[pytest]\nkvm_network = host\n")
    result = pytester.runpytest()
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*kvm_network must be one of user, isolated, not 'host'*"])


def test_kvm_host_in_the_header_and_refused_when_unusable(pytester):
    """The header names the hosts (no key paths, no password) from the option or the ini;
    a URI that is not over SSH, or --kvm-uri beside it, is a usage error."""
    pytester.makepyfile("def test_x(): pass")
    # nothing connects to a host before a guest is needed (these do not exist)
    result = pytester.runpytest("--kvm-host", "qemu+ssh://ci@hv1.invalid/system?keyfile=/k/secret_key",
                                "--kvm-host", "qemu+libssh://ci@hv2.invalid:2222/system?slots=3")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["pytest-kvm: hosts ci@hv1.invalid, ci@hv2.invalid:2222 (3 slots); "
                                 "accel auto; os debian-12; arch amd64; reset clone; snapshots on; "
                                 "prepare ahead 1; network user; cache *"])
    assert "secret_key" not in result.stdout.str()
    pytester.makeini("[pytest]\nkvm_hosts =\n    qemu+ssh://ci@hv3.invalid/system\n")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["pytest-kvm: hosts ci@hv3.invalid; accel*"])
    result = pytester.runpytest("--kvm-host", "qemu:///system")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*use a libvirt URI over SSH*"])
    result = pytester.runpytest("--kvm-uri", "qemu:///system")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--kvm-uri and --kvm-host do not mix*"])


def test_an_unreachable_host_is_one_clear_error_naming_it(pytester):
    """Nothing listens on 127.0.0.1:1: the guest's test errors at once (before any image
    is built), naming the host and what to check."""
    pytester.makepyfile("def test_x(guest):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "--kvm-host", "qemu+libssh://root@127.0.0.1:1/system?keyfile=/k/id", timeout=120)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "HypervisorError: opening libvirt on root@127.0.0.1:1 " \
        "(qemu+libssh://root@127.0.0.1:1/system)" in out
    message = [line for line in out.splitlines() if "HypervisorError: opening" in line]
    assert message and not any("/k/id" in line for line in message)  # no URI parameters
    assert "drop that --kvm-host" in out


def test_two_os_parametrize_guest_tests_with_os_in_id(pytester):
    pytester.makepyfile(KERNEL_TEST)
    result = pytester.runpytest("--collect-only", "-q", "--kvm-os", "debian-12", "--kvm-os", "debian-13")
    result.stdout.fnmatch_lines([
        "*test_a[[]debian-12[]]", "*test_a[[]debian-13[]]", "*test_pinned", "*test_plain"])
    assert "test_pinned[" not in result.stdout.str()


def test_golden_marker_pins_the_os(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.guest(golden="prepared")
        def test_from_golden(guest):
            pass
    """)
    result = pytester.runpytest("--collect-only", "-q", "--kvm-os", "debian-12", "--kvm-os", "debian-13")
    result.stdout.fnmatch_lines(["*::test_from_golden"])
    assert "test_from_golden[" not in result.stdout.str()


def test_one_os_no_parametrization(pytester):
    pytester.makepyfile(KERNEL_TEST)
    result = pytester.runpytest("--collect-only", "-q", "--kvm-os", "debian-13")
    result.stdout.fnmatch_lines(["*::test_a", "*::test_pinned"])
    assert "[" not in result.stdout.str().split("test_plain")[0]


def test_ini_kvm_os(pytester):
    pytester.makeini("[pytest]\nkvm_os = debian-12 debian-13\n")
    pytester.makepyfile(KERNEL_TEST)
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*test_a[[]debian-13[]]"])


def test_unknown_os_lists_known(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--kvm-os", "plan9")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown guest OS 'plan9'; known: debian-12, debian-13*"])


def test_local_image_registers_a_name(pytester, tmp_path):
    pytester.makepyfile(KERNEL_TEST)
    result = pytester.runpytest("--collect-only", "-q", "--kvm-os", "win", "--kvm-image", f"win={tmp_path}/w.qcow2")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*::test_a"])


@pytest.mark.parametrize("marker, word", [
    ("memroy=512", "memroy"),
    ("memory_mib=0", "memory_mib must be between"),
    ("cpus='2'", "cpus must be an integer"),
    ("os='plan9'", "unknown guest OS 'plan9'"),
])
def test_bad_marker_is_a_usage_error_naming_it(pytester, marker, word):
    pytester.makepyfile(f"""
        import pytest
        @pytest.mark.guest({marker})
        def test_x(guest):
            pass
    """)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert word in result.stderr.str()
    assert "test_x" in result.stderr.str()


@pytest.mark.parametrize("args, word", [
    (["--kvm-image", "nopath"], "--kvm-image must be NAME=PATH"),
    (["-o", "kvm_boot_timeout=soon"], "kvm_boot_timeout must be a number"),
    (["--kvm-keep", "sometimes"], "invalid choice"),
    (["--kvm-snapshots", "maybe"], "invalid choice"),
    (["-o", "kvm_snapshots=maybe"], "kvm_snapshots must be one of on, off"),
    (["-o", "kvm_prepare_ahead=-1"], "kvm_prepare_ahead must be 0 or more"),
    (["-o", "kvm_prepare_ahead=two"], "kvm_prepare_ahead must be a whole number"),
    (["-o", "kvm_snapshot_max_gb=lots"], "kvm_snapshot_max_gb must be a number"),
])
def test_bad_options(pytester, args, word):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert word in result.stderr.str()


@pytest.mark.skipif(choose_accel("auto").name == "kvm", reason="KVM works on this host")
def test_kvm_requested_without_kvm_fails_at_once(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--kvm-accel", "kvm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kvm-accel kvm was requested but KVM cannot be used:*"])


def test_tests_without_guests_boot_nothing(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert "cold boots" not in result.stdout.str()


USER_CATALOG = """
[[image]]
name = "windows-2022"
family = "windows"
url = "https://images.example.com/windows-2022.qcow2"
sha256 = "%s"
format = "qcow2"
firmware = "uefi"
min_memory_mib = 4096
login_user = "Admin"
""" % ("ab" * 32)


def test_user_catalog_from_ini_adds_os_names(pytester):
    pytester.makefile(".toml", images=USER_CATALOG)
    pytester.makeini("[pytest]\nkvm_catalog = images.toml\n")
    pytester.makepyfile("def test_x(): pass")
    assert pytester.runpytest("--kvm-os", "windows-2022").ret == 0
    result = pytester.runpytest("--kvm-os", "windows-2023")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown guest OS 'windows-2023'*windows-2022*"])


def test_bad_mirror_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--kvm-mirror", "mirror.example")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kvm-mirror*must be an http*"])


def test_no_secret_reaches_a_failure_report(pytester):
    """Private keys and passwords never appear in reprs: `pytest -l --tb=long` prints every
    local of a failing test, as CI logs keep them."""
    pytester.makepyfile("""
        from pytest_kvm.keys import KeyPair
        from pytest_kvm.transport.winrm import Credentials

        def test_fails():
            key = KeyPair.generate("pytest-kvm")
            creds = Credentials.generate()
            pair = (key, creds)
            with open("secrets", "w") as out:
                out.write(key.private_openssh.splitlines()[1] + "\\n" + creds.password)
            assert False, f"{key!r} {creds!r} {pair!r}"
    """)
    result = pytester.runpytest("-l", "--tb=long")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    key_line, password = (pytester.path / "secrets").read_text().splitlines()
    assert "ssh-ed25519" in out  # the public half is shown: the repr was printed
    assert key_line not in out and password not in out and "PRIVATE KEY" not in out


CLOSE_FAILS = """
from pytest_kvm.errors import HypervisorError
from pytest_kvm.session.session import KvmSession

closes = []

def failing_close(self):
    closes.append(self)
    print(f"close called {len(closes)} time(s)")
    return [HypervisorError("destroying pytest-kvm-1-ab-2: the connection\\nbroke")]

KvmSession.close = failing_close
"""


def test_session_end_errors_are_reported_and_fail_the_run(pytester):
    pytester.makeconftest(CLOSE_FAILS)  # a subprocess run: the patch stays there
    pytester.makepyfile("def test_x(kvm): pass")  # the kvm fixture makes the session
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*pytest-kvm warnings: the session end could not clean up*",
        "HypervisorError: destroying pytest-kvm-1-ab-2: the connection broke",
        "*`pytest-kvm reap`*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the tests passed, the cleanup did not
    assert "close called 2" not in result.stdout.str()  # closed once, at session finish


def test_a_clean_session_end_says_nothing(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
    assert "pytest-kvm warnings" not in result.stdout.str()


def test_sigterm_is_ctrl_c_during_the_session_only(pytester):
    before = signal.getsignal(signal.SIGTERM)
    pytester.makepyfile("""
        import signal

        def test_handler():
            assert signal.getsignal(signal.SIGTERM).__name__ == "_sigterm_as_ctrl_c"
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert signal.getsignal(signal.SIGTERM) is before


def run_with_sigint(pytester, disposition):
    """A child pytest run that inherits *disposition* for SIGINT, as from a background job."""
    previous = signal.signal(signal.SIGINT, disposition)
    try:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    finally:
        signal.signal(signal.SIGINT, previous)


IGNORED_SIGINT_NOTE = ("pytest-kvm: SIGINT is ignored (started in the background): Ctrl-C "
                       "cannot interrupt this run; SIGTERM still ends the session cleanly")


@pytest.mark.parametrize(("disposition", "notes"), [(signal.SIG_IGN, [IGNORED_SIGINT_NOTE]),
                                                     (signal.SIG_DFL, [])], ids=["ignored", "default"])
def test_a_run_started_with_sigint_ignored_says_so_in_one_line(pytester, disposition, notes):
    pytester.makepyfile("def test_x(): pass")
    result = run_with_sigint(pytester, disposition)
    result.assert_outcomes(passed=1)
    assert [line for line in result.outlines if "SIGINT" in line] == notes


SIGTERM_CHILD = """
import os, time, pytest

@pytest.fixture(scope="session")
def resource():
    yield
    with open(os.environ["TORN_DOWN"], "w") as fh:
        fh.write("session fixture torn down")

def test_hang(resource):
    open(os.environ["STARTED"], "w").close()
    time.sleep(120)
"""


def test_sigterm_ends_the_run_like_ctrl_c(pytester):
    """Without guests: SIGTERM interrupts the test, and the session's teardown runs."""
    pytester.makepyfile(SIGTERM_CHILD)
    started, torn_down = pytester.path / "started", pytester.path / "torn_down"
    env = {**os.environ, "STARTED": str(started), "TORN_DOWN": str(torn_down)}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(pytester.path)],
                            env=env, cwd=pytester.path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out and "SIGTERM" in out
    assert torn_down.read_text() == "session fixture torn down"


def test_kvm_arch_makes_a_matrix_with_ids_naming_os_and_architecture(pytester):
    pytester.makepyfile("""
import pytest
def test_any(guest): pass
@pytest.mark.guest(arch="riscv64")
def test_pinned_arch(guest): pass
@pytest.mark.guest(os="debian-13")
def test_pinned_os(guest): pass
""")
    result = pytester.runpytest("--collect-only", "-q", "--kvm-os", "debian-12", "--kvm-os",
                                "debian-13", "--kvm-arch", "amd64", "--kvm-arch", "aarch64")
    result.stdout.fnmatch_lines([
        "*::test_any[[]debian-12-amd64]", "*::test_any[[]debian-12-arm64]",
        "*::test_any[[]debian-13-amd64]", "*::test_any[[]debian-13-arm64]",
        "*::test_pinned_arch[[]debian-12]", "*::test_pinned_arch[[]debian-13]",
        "*::test_pinned_os[[]amd64]", "*::test_pinned_os[[]arm64]"])
    result.stdout.fnmatch_lines(["*8 tests collected*"])


def test_kvm_arch_ini_and_an_unknown_architecture(pytester):
    pytester.makeini("[pytest]\nkvm_arch = arm64\n")
    pytester.makepyfile("def test_x(): pass")
    pytester.runpytest().stdout.fnmatch_lines(["pytest-kvm: *; arch arm64; *"])
    pytester.runpytest("--kvm-arch", "s390x").stdout.fnmatch_lines(["pytest-kvm: *; arch s390x; *"])
    result = pytester.runpytest("--kvm-arch", "mips")
    result.stderr.fnmatch_lines(["*--kvm-arch / kvm_arch: unknown architecture 'mips': known are "
                                 "amd64 (x86_64), arm64 (aarch64), *s390x (s390x)*"])
    assert result.ret != 0
