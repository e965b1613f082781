"""The package as a user gets it: a wheel built from this repository, installed with the
lowest versions pyproject.toml allows into a fresh virtualenv outside the source tree, works
there (the plugin loads, the command runs, the guest-images recipes travel with it).

It needs PyPI (the floors are downloaded once into pip's cache) and takes a minute or two;
libvirt-python is taken from pip's wheel cache when one is there (it compiles otherwise)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

import pytest_kvm

ROOT = Path(__file__).resolve().parents[2]
PLUGGY_FLOOR = "1.3.0"  # what pytest's floor (8.0.0) itself requires
COMPILED = {"libvirt-python"}  # built from source: any version the cache has, not the floor


def run(*argv, cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def floors(wheel: Path) -> dict[str, str]:
    """``name -> lowest version`` of the wheel's own (non-extra) requirements."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    found = {}
    for line in meta.splitlines():
        m = re.fullmatch(r"Requires-Dist: ([A-Za-z0-9_.-]+)>=([0-9.]+)", line)
        if m:  # lines with "; extra == ..." do not match
            found[m[1].lower()] = m[2]
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv's bin directory, the wheel, a clean environment, a directory outside the tree)."""
    work = tmp_path_factory.mktemp("packaging")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    built = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist",
                ROOT, cwd=work, env=env)
    assert built.returncode == 0, built.stderr
    wheel = next((work / "dist").glob("pytest_kvm-*.whl"))
    pins = {name: version for name, version in floors(wheel).items() if name not in COMPILED}
    assert {"pytest", "paramiko", "pyyaml"} <= set(pins), pins
    (work / "constraints.txt").write_text(
        "".join(f"{name}=={version}\n" for name, version in pins.items())
        + f"pluggy=={PLUGGY_FLOOR}\n")
    venv = work / "venv"
    made = run(sys.executable, "-m", "venv", venv, cwd=work, env=env)
    assert made.returncode == 0, made.stderr
    links = [a for w in Path.home().glob(".cache/pip/wheels/**/libvirt_python-*.whl")
             for a in ("--find-links", w.parent)]
    done = run(venv / "bin/python", "-m", "pip", "install", "-q", *links,
               "-c", work / "constraints.txt", wheel, cwd=work, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    outside = work / "project"
    outside.mkdir()
    return venv / "bin", wheel, env, outside, pins


def test_the_wheel_carries_the_license_and_py_typed(installed):
    _, wheel, *_ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "pytest_kvm/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "pytest_kvm/guest-images/debian-12/recipe.toml" in names


def test_the_floors_are_what_got_installed(installed):
    bin_dir, _, env, outside, pins = installed
    listed = run(bin_dir / "python", "-m", "pip", "list", "--format=freeze", cwd=outside, env=env)
    versions = {name.lower(): Version(v) for name, v in
                (line.split("==") for line in listed.stdout.split())}
    assert {name: versions.get(name) for name in pins} == {n: Version(v) for n, v in pins.items()}
    assert versions["pluggy"] == Version(PLUGGY_FLOOR)
    assert "pywinrm" not in versions  # an extra, not a dependency


def test_the_command_says_its_version(installed):
    bin_dir, _, env, outside, _ = installed
    shown = run(bin_dir / "pytest-kvm", "--version", cwd=outside, env=env)
    assert (shown.returncode, shown.stdout.strip()) == (0, f"pytest-kvm {pytest_kvm.__version__}")


def test_the_recipes_travel_with_the_wheel(installed):
    bin_dir, _, env, outside, _ = installed
    listed = run(bin_dir / "pytest-kvm", "image", "list", cwd=outside, env=env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^debian-12\s+recipe\s", listed.stdout, re.M), listed.stdout


def test_pytest_loads_the_plugin_outside_the_source_tree(installed):
    bin_dir, _, env, outside, _ = installed
    (outside / "test_it.py").write_text(
        "import pytest\n\n@pytest.mark.guest(memory_mib=512)\ndef test_it():\n    assert True\n")
    ran = run(bin_dir / "python", "-m", "pytest", "-p", "no:cacheprovider", "test_it.py",
              cwd=outside, env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert re.search(r"^pytest-kvm: accel \w+", ran.stdout, re.M), ran.stdout
    assert f"plugins: kvm-{pytest_kvm.__version__}" in ran.stdout
    assert "1 passed" in ran.stdout


def test_a_windows_guest_without_pywinrm_says_which_extra_to_install(installed):
    bin_dir, _, env, outside, _ = installed
    ran = run(bin_dir / "python", "-c",
              "from pytest_kvm.transport.winrm import require_pywinrm; require_pywinrm()",
              cwd=outside, env=env)
    assert ran.returncode == 1
    assert "pip install 'pytest-kvm[winrm]'" in ran.stderr
