"""Usage errors (bad markers, options, URIs, user_data) end the run before anything is built,
with and without pytest-xdist, naming the test and the keyword; a host that cannot be
opened is one full error, then a line per test. Through pytester; no guest boots."""
import shutil

import pytest

TYPO = """
import pytest

def test_plain():
    pass

@pytest.mark.guest(memry_mib=512)
def test_typo(guest):
    pass
"""


@pytest.mark.parametrize("args", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_marker_typo_is_a_usage_error_naming_test_keyword_and_suggestion(pytester, args):
    pytester.makepyfile(test_it=TYPO)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: test_it.py::test_typo: @pytest.mark.guest: unknown "
                                 "keyword 'memry_mib' (did you mean memory_mib?)"])
    assert result.stderr.str().count("ERROR:") == 1  # once, whatever the number of workers
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out and "guest_request" not in out


@pytest.mark.parametrize("args", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_bad_marker_on_a_deselected_test_does_not_stop_the_run(pytester, args):
    pytester.makepyfile(test_it=TYPO)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "plain", *args)
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    result.stdout.fnmatch_lines(["*1 passed*"])


def test_every_bad_marker_is_named_at_once(pytester):
    pytester.makepyfile(test_it="""
        import pytest

        @pytest.mark.guest(cpus=0)
        def test_one(guest):
            pass

        @pytest.mark.guest("debian-12", "debian-13")
        def test_two(guest):
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: test_it.py::test_one: @pytest.mark.guest: cpus must be between 1 and 256, not 0",
        "ERROR: test_it.py::test_two: @pytest.mark.guest: takes one positional argument (os), not 2*"])


def test_a_test_run_once_per_os_is_named_once(pytester):
    pytester.makepyfile(test_it=TYPO)
    result = pytester.runpytest("-p", "no:cacheprovider", "--kvm-os", "debian-12", "--kvm-os",
                                "debian-13")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: test_it.py::test_typo: @pytest.mark.guest: unknown*"])
    assert result.stderr.str().count("ERROR:") == 1


def test_unserialisable_user_data_is_a_usage_error_at_collection(pytester):
    pytester.makepyfile(test_it="""
        import pytest

        @pytest.mark.guest(user_data={"write_files": [{"path": "/x", "content": object()}]})
        def test_data(guest):
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["collected 1 item"])  # collected, not set up
    assert ('ERROR: test_it.py::test_data: @pytest.mark.guest: user_data["write_files"][0]'
            '["content"]: not serialisable (object)') in result.stderr.str()


def test_a_bad_kvm_uri_is_a_usage_error_before_anything_is_built(pytester, tmp_path):
    """Checked when pytest configures, from the URI's text: no test runs, the cache stays
    empty, libvirt is not opened."""
    pytester.makepyfile("def test_x(): pass")
    cache = tmp_path / "cache"
    result = pytester.runpytest("-p", "no:cacheprovider", "--kvm-uri", "bogus://",
                                "--kvm-cache-dir", str(cache))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("ERROR: --kvm-uri 'bogus://' is not a libvirt URI of the QEMU driver: give "
            "qemu[+TRANSPORT]://") in result.stderr.str()
    assert not cache.exists() or not any(cache.iterdir())


THREE = """
def test_a(guest):
    pass

def test_b(guest):
    pass

def test_c(kvm):
    kvm.boot()
"""


@pytest.mark.skipif(shutil.which("ssh") is None, reason="libvirt's ssh transport runs ssh")
def test_an_unreachable_ssh_host_is_one_error_then_a_line_per_test(pytester):
    """Nothing listens on 127.0.0.1:1. The first test shows the message with what to check;
    the others one line pointing to it (the issue's goal: at most 120 lines for 3 tests)."""
    pytester.makepyfile(test_three=THREE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-host",
                                           "qemu+ssh://nobody@127.0.0.1:1/system", timeout=120)
    result.assert_outcomes(errors=2, failed=1)
    out = result.stdout.str()
    assert len(out.splitlines()) <= 120
    # once in the reports (the short summary may repeat it whole: pytest does not cut its
    # lines when $CI is set, as in CI)
    assert out.split("short test summary info")[0].count("Check that the host is up") == 1
    result.stdout.fnmatch_lines([
        "*ERROR at setup of test_a*",
        "HypervisorError: opening libvirt on nobody@127.0.0.1:1 (qemu+ssh://nobody@127.0.0.1:1/"
        "system): libvirt is not reachable at *Check that the host is up, that ssh works (`ssh "
        "-p 1 nobody@127.0.0.1 true`*and that libvirtd runs there*",
        "*ERROR at setup of test_b*",
        "no guest can start (see test_three.py::test_a): HypervisorError: opening libvirt*",
        "*test_c*",
        "no guest can start (see test_three.py::test_a): HypervisorError: opening libvirt*"])
    assert "Traceback" not in out and "hypervisor.py" not in out


@pytest.mark.skipif(shutil.which("ssh") is None, reason="libvirt's ssh transport runs ssh")
def test_the_traceback_of_the_first_host_error_stays_with_tb_long(pytester):
    pytester.makepyfile(test_three=THREE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--tb=long", "--kvm-host",
                                           "qemu+ssh://nobody@127.0.0.1:1/system", timeout=120)
    out = result.stdout.str()
    assert out.count("hypervisor.py") >= 1  # the first: the whole traceback
    lines = out.splitlines()
    assert sum(line.startswith("no guest can start (see test_three.py::test_a)") for line in lines) == 2
