"""pytest-kvm costs (almost) nothing where it is installed but unused: importing the package
or the plugin, and a pytest run whose tests use no guest, load none of the heavy libraries
(libvirt, paramiko, pycdlib, PyYAML, pywinrm, cryptography); they load when a test asks for
the session. See scripts/benchmark_import.py for the time this saves."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest_kvm

HEAVY = ("paramiko", "libvirt", "pycdlib", "yaml", "winrm", "cryptography")
CHECKOUT = Path(pytest_kvm.__file__).resolve().parent.parent  # python -c puts its cwd first

#: what ``from pytest_kvm import ...`` offered before the names were made lazy
PUBLIC = ["BootTimeout", "CloudInitError", "CommandError", "CommandFailed", "CommandResult",
          "CommandTimeout", "Guest", "GuestCrashed", "HostKeyMismatch", "HypervisorError",
          "ImageError", "InfrastructureError", "KvmError", "KvmSession", "SeedError",
          "SpecError", "StorageError", "UnknownKeyword"]


def heavy(modules) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def modules_after(code: str) -> list[str]:
    """``sorted(sys.modules)`` of a fresh interpreter after *code*."""
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(sorted(sys.modules))"],
                          cwd=CHECKOUT, capture_output=True, text=True, check=True, timeout=60)
    return ast.literal_eval(done.stdout)


def test_importing_the_package_and_the_plugin_loads_no_heavy_library():
    modules = modules_after("import pytest_kvm, pytest_kvm.plugin")
    assert "pytest_kvm.plugin.hooks" in modules and "pytest_kvm.plugin.fixtures" in modules
    assert heavy(modules) == []
    # nor the session and guest machinery, nor urllib's HTTP client (only to download)
    assert [m for m in ("pytest_kvm.session.session", "pytest_kvm.guest.facade",
                        "pytest_kvm.seed.iso", "http.client") if m in modules] == []


def test_public_names_are_still_exported_and_load_on_first_use():
    modules = modules_after("from pytest_kvm import Guest, KvmSession, CommandResult, BootTimeout\n"
                            "assert KvmSession.__module__ == 'pytest_kvm.session.session'\n"
                            "assert Guest.__module__ == 'pytest_kvm.guest.facade'")
    assert "pytest_kvm.session.session" in modules
    assert pytest_kvm.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(pytest_kvm, name).__name__ == name
    assert pytest_kvm.__version__ == "0.1.0"
    assert set(PUBLIC) <= set(dir(pytest_kvm))
    try:
        pytest_kvm.NoSuchName  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("an unknown name must be an AttributeError")


RECORD_MODULES = """
import json, sys
import pytest

@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    with open("modules.json", "w") as fh:
        json.dump(sorted(sys.modules), fh)
"""


def test_a_run_whose_tests_use_no_guest_loads_no_heavy_library(pytester):
    """With the plugin loaded (the header line says so), through the session end."""
    pytester.makeconftest(RECORD_MODULES)
    pytester.makepyfile(f"""
        import sys

        def test_plain(pytestconfig):
            assert pytestconfig.pluginmanager.hasplugin("kvm")
            assert sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}) == []
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pytest-kvm: accel *"])
    modules = json.loads((pytester.path / "modules.json").read_text())
    assert "pytest_kvm.plugin.hooks" in modules and heavy(modules) == []
    assert "pytest_kvm.session.session" not in modules  # no session was made


def test_the_kvm_fixture_makes_the_session_on_first_use(pytester):
    pytester.makepyfile("""
        from pytest_kvm.plugin.stash import STATE_KEY

        def test_first(pytestconfig):
            assert pytestconfig.stash[STATE_KEY].made is None

        def test_kvm(pytestconfig, kvm):
            assert type(kvm).__name__ == "KvmSession"
            assert pytestconfig.stash[STATE_KEY].made is kvm
            assert kvm.settings.os_names == ("debian-13",)
    """)
    pytester.runpytest("-p", "no:cacheprovider", "--kvm-os", "debian-13").assert_outcomes(passed=2)
