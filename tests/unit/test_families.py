import dataclasses
import shlex
from datetime import datetime, timezone

import pytest

from pytest_kvm.commands import CommandSpecError, wrap
from pytest_kvm.errors import ImageError
from pytest_kvm.families import FAMILIES, family, family_for_name

EXPECTED = {"linux", "freebsd", "openbsd", "netbsd", "windows", "illumos", "generic"}


def test_every_required_family_is_there():
    assert set(FAMILIES) == EXPECTED
    for name, fam in FAMILIES.items():
        assert fam.name == name
        assert family(name) is fam


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ImageError) as info:
        family("plan9")
    message = str(info.value)
    assert "'plan9'" in message
    assert "freebsd, generic, illumos, linux, netbsd, openbsd, windows" in message


def test_table_is_read_only():
    with pytest.raises(TypeError):
        FAMILIES["beos"] = FAMILIES["generic"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        FAMILIES["linux"].login_user = "root"  # type: ignore[misc]


def test_invalid_values_are_refused():
    with pytest.raises(ValueError, match="nic_model"):
        dataclasses.replace(family("linux"), nic_model="rtl8139")
    with pytest.raises(ValueError, match="Secure Boot"):
        dataclasses.replace(family("linux"), secure_boot=True)  # bios + pc
    ok = dataclasses.replace(family("windows"), secure_boot=True)
    assert ok.secure_boot


def test_clock_commands():
    epoch = datetime(2024, 2, 29, 13, 5, 7, tzinfo=timezone.utc).timestamp()
    assert shlex.split(family("linux").clock_command_for(epoch)) == [
        "sudo", "-n", "bash", "-c", f"date -u -s @{epoch:.3f} >/dev/null"]
    assert shlex.split(family("openbsd").clock_command_for(epoch)) == [
        "doas", "-n", "sh", "-c", "date -u 202402291305.07 >/dev/null"]
    assert f"FromUnixTimeMilliseconds({epoch:.0f}000)" in family("windows").clock_command_for(epoch)
    assert family("generic").clock_command_for(epoch) is None


def test_freebsd_becomes_root_with_su_not_sudo():
    # FreeBSD base has neither sudo nor doas: su, which the seed's wheel membership allows
    epoch = datetime(2024, 2, 29, 13, 5, 7, tzinfo=timezone.utc).timestamp()
    su, minus_m, root, minus_c, rest = shlex.split(family("freebsd").clock_command_for(epoch))
    assert (su, minus_m, root, minus_c) == ("su", "-m", "root", "-c")
    assert shlex.split(rest) == ["sh", "-c", "date -u 202402291305.07 >/dev/null"]
    assert shlex.split(family("freebsd").identity_command_for("h"))[:4] == ["su", "-m", "root", "-c"]


def test_no_family_template_names_a_privilege_tool():
    # the privileged form is built in one place (Family.as_root), from Family.privilege
    for fam in FAMILIES.values():
        templates = [fam.clock_command, fam.identity_command, fam.share_mount_command,
                     fam.reboot_command, fam.poweroff_command, fam.network_command,
                     fam.hosts_command, *(command for _, command in fam.artifact_logs)]
        for template in filter(None, templates):
            assert not template.startswith(("sudo", "doas", "su ")), (fam.name, template)


def test_as_root_follows_the_privilege_tool():
    linux = family("linux")
    assert shlex.split(linux.as_root("id -u")) == ["sudo", "-n", "bash", "-c", "id -u"]
    assert family("windows").as_root("whoami") == "whoami"  # an Administrator already
    root_login = dataclasses.replace(linux, privilege="admin")
    assert shlex.split(root_login.as_root("id -u")) == ["bash", "-c", "id -u"]


def test_a_login_that_cannot_become_root_refuses_root_commands():
    stuck = dataclasses.replace(family("generic"), name="stuck", privilege=None,
                                clock_command="date -s @{epoch}")
    with pytest.raises(CommandSpecError, match="stuck.*no way to become root"):
        stuck.clock_command_for(0.0)
    with pytest.raises(CommandSpecError, match="no way to become root"):
        wrap("id", shell="sh", privilege=None, sudo=True)
    assert wrap("id", shell="sh", privilege=None) == "id"  # without sudo, nothing to refuse
    with pytest.raises(ValueError, match="pfexec"):
        dataclasses.replace(family("linux"), privilege="pfexec")


def test_su_keeps_env_and_cwd_quoted():
    words = shlex.split(wrap("pwd", shell="sh", privilege="su", sudo=True, env={"A": "x y"},
                             cwd="/tmp/a b"))
    assert words[:4] == ["su", "-m", "root", "-c"]
    assert shlex.split(words[4]) == ["env", "A=x y", "sh", "-c", "cd '/tmp/a b' && pwd"]


@pytest.mark.parametrize("name, expected", [
    ("windows-2022", "windows"), ("FreeBSD-14.3", "freebsd"), ("openbsd", "openbsd"),
    ("debian-12-local", "linux"), ("mylinux", "linux"),
])
def test_family_of_a_local_image_from_its_name(name, expected):
    assert family_for_name(name) == expected


def test_identity_commands_fill_in_the_hostname():
    sudo, minus_n, bash, minus_c, inner = shlex.split(family("linux").identity_command_for("pytest-kvm-1-x-2"))
    assert (sudo, minus_n, bash, minus_c) == ("sudo", "-n", "bash", "-c")
    assert "hostname pytest-kvm-1-x-2 " in inner and "/etc/machine-id" in inner
    assert "s/^127.0.1.1 .*/127.0.1.1 pytest-kvm-1-x-2/" in inner
    assert shlex.split(family("openbsd").identity_command_for("h")) == ["doas", "-n", "sh", "-c", "hostname h"]
    with pytest.raises(ValueError, match="own identity"):
        family("windows").identity_command_for("h")
    for bad in ("a b", "x;reboot", "-h", ""):
        with pytest.raises(ValueError, match="not a host name"):
            family("linux").identity_command_for(bad)


def test_linux_goldens_zero_their_free_memory_with_a_valid_shell_command():
    import subprocess
    command = family("linux").zero_free_memory_command
    assert "/proc/meminfo" in command and "/dev/zero" in command
    assert subprocess.run(["sh", "-n", "-c", command]).returncode == 0
    assert family("windows").zero_free_memory_command is None


def test_the_linux_reseed_command_runs_as_root_and_reseeds_from_the_hosts_entropy():
    fam = family("linux")
    command = fam.as_root(fam.reseed_command)
    assert command.startswith("sudo -n ")
    assert "/dev/hwrng" in command and "0x40085203" in command and "0x5207" in command
    assert all(f.reseed_command is None for f in FAMILIES.values() if f.name != "linux")


def test_a_reverted_guest_is_made_fresh_by_one_root_command():
    """reset="revert": the clock and the random seed in one root command, which the helper
    in the guest runs as root: no privilege tool in it (guest/revert.py)."""
    fam = family("linux")
    command = fam.refresh_command_for(1765000000.25)
    assert "sudo" not in command
    assert "date -u -s @1765000000.250" in command and "0x5207" in command
    assert "perl" in command and "python3" in command  # perl where it is, else python3
    with pytest.raises(ValueError, match="freebsd"):
        family("freebsd").refresh_command_for(0)
