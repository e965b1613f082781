"""The id-mapped virtiofsd launcher: its id maps, its script, the <binary> libvirt runs
(the namespaces themselves: tests/e2e/test_code_in_out.py)."""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from pytest_kvm.vm.domain import filesystem_xml
from pytest_kvm.vm.virtiofsd import (UNPRIVILEGED_BASE, find_virtiofsd, id_map, launcher_argv,
                                     write_launcher)


def test_the_login_user_is_the_host_user_and_everyone_else_nobody():
    lines = [tuple(map(int, line.split())) for line in id_map(1000, 0).splitlines()]
    assert lines == [(0, UNPRIVILEGED_BASE, 1000), (1000, 0, 1),
                     (1001, UNPRIVILEGED_BASE + 1001, 64535)]
    assert sum(count for _, _, count in lines) == 65536
    assert id_map(0, 1234) == f"0 1234 1\n1 {UNPRIVILEGED_BASE + 1} 65535\n"  # no empty range
    with pytest.raises(ValueError):
        id_map(70000, 0)


def test_the_launcher_script_passes_libvirts_arguments_on(tmp_path):
    argv = launcher_argv(tmp_path / "virtiofsd", tmp_path / "src dir", 1000, 1001, writable=False)
    assert argv[:3] == [sys.executable, "-I", str(sys.modules[id_map.__module__].__file__)]
    assert argv[argv.index("--uid") + 1] == f"1000:{os.getuid()}"
    assert argv[argv.index("--gid") + 1] == f"1001:{os.getgid()}"
    assert "--read-only" in argv and argv[-2:] == ["--", str(tmp_path / "virtiofsd")]
    assert "--read-only" not in launcher_argv(tmp_path, tmp_path, 1000, 1000, writable=True)
    script = write_launcher(tmp_path / "launch", ["echo", "it's", "$HOME"])
    assert script.stat().st_mode & 0o777 == 0o700
    done = subprocess.run([str(script), "--fd=3", "-o", "source=/x"], capture_output=True, text=True)
    assert done.stdout == "it's $HOME --fd=3 -o source=/x\n"


def test_virtiofsd_is_found_as_libvirt_finds_it(tmp_path):
    binary = tmp_path / "virtiofsd"
    binary.write_text("")
    (tmp_path / "10-other.json").write_text(json.dumps({"type": "gpu", "binary": str(binary)}))
    (tmp_path / "50-fs.json").write_text(json.dumps({"type": "fs", "binary": str(binary)}))
    assert find_virtiofsd((tmp_path / "none", tmp_path)) == binary
    (tmp_path / "50-fs.json").write_text("{broken")
    assert find_virtiofsd((tmp_path,)) is None


def test_filesystem_names_the_launcher():
    fs = ET.fromstring(filesystem_xml("tag", "/src", "/run/launch"))
    assert fs.find("binary").get("path") == "/run/launch"
    assert fs.find("source").get("dir") == "/src"
    assert ET.fromstring(filesystem_xml("tag", "/src")).find("binary") is None
