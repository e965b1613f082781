"""reset="revert": which guests are reverted in place (the rest are clones as before), and
the names the option and the summary use. The revert itself is e2e/test_revert.py."""
from pathlib import Path

import pytest

from pytest_kvm.arches import ARCHES, host_arch
from pytest_kvm.choices import RESET_CHOICES
from pytest_kvm.families import family
from pytest_kvm.guest.config import GuestConfig
from pytest_kvm.guest.revert import why_not
from pytest_kvm.images.store import BaseImage
from pytest_kvm.keys import KeyPair
from pytest_kvm.plugin.hooks import _counts_line
from pytest_kvm.spec import guest_marker


def config(**overrides) -> GuestConfig:
    image = BaseImage(name="debian-12", disk=Path("/i/base.qcow2"), format="qcow2")
    fields = dict(name="g1", os="debian-12", image=image, memory_mib=512, cpus=2,
                  virt_type="qemu", limits={}, command_timeout=60, workdir=Path("/w/g1"),
                  login_key_file=Path("/w/key"), login_key=KeyPair("p", "ssh-ed25519 AAAA x"),
                  metadata={})
    return GuestConfig(**{**fields, **overrides})


NONE = dict(shares=False, networks=False, unique=False, tpm=False)


def test_a_plain_linux_clone_can_be_reverted():
    assert why_not(config(), **NONE) is None


@pytest.mark.parametrize("what, words", [
    ({"shares": True}, "shares or private networks"),
    ({"networks": True}, "shares or private networks"),
    ({"unique": True}, "unique clone"),
    ({"tpm": True}, "TPM"),
    ({"remote": True}, "remote hosts"),
])
def test_what_keeps_a_guest_a_clone(what, words):
    assert words in why_not(config(), **{**NONE, **what})


def test_other_families_and_architectures_stay_clones():
    assert "family freebsd" in why_not(config(family=family("freebsd")), **NONE)
    foreign = next(arch for arch in ARCHES.values() if arch != host_arch())
    assert f"on {foreign.debian} guests" in why_not(config(arch=foreign), **NONE)


def test_revert_is_a_reset_choice_of_the_marker():
    assert "revert" in RESET_CHOICES
    assert guest_marker(reset="revert").reset == "revert"


def test_the_summary_counts_reverted_guests():
    line = _counts_line({"boots": 1, "clones": 8, "ahead": 1, "reverted": 6, "reused": 1,
                         "created": 0})
    assert line == ("1 cold boots, 8 warm clones (1 made ahead, 6 reverted in place); "
                    "snapshots 1 reused, 0 created")
    assert "reverted" not in _counts_line({"boots": 0, "clones": 2, "reused": 0, "created": 0})


@pytest.fixture
def helper(tmp_path):
    """The revert helper's loop run by this host's sh, its FIFOs moved under *tmp_path*."""
    import subprocess
    from pytest_kvm.guest import revert

    def here(command: str) -> str:
        return command.replace(revert.RUN_DIR, str(tmp_path / "run"))

    subprocess.run(["sh", "-c", here(revert.helper_command("root"))], check=True, timeout=10)
    yield lambda root_command: subprocess.run(
        ["sh", "-c", here(revert.wake_command(root_command))], capture_output=True, text=True,
        timeout=10)
    subprocess.run(["pkill", "-f", str(tmp_path / "run")])


def test_the_revert_helper_runs_each_command_it_is_handed_and_answers_its_status(helper, tmp_path):
    """The helper waiting in a reverted guest's saved state (no sudo after a loadvm): the
    login user's one command hands it a root command and fails as that command failed,
    with its errors; the helper goes on waiting for the next."""
    done = helper(f"echo 'quoted $HOME' > {tmp_path}/out")
    assert done.returncode == 0 and (tmp_path / "out").read_text() == "quoted $HOME\n"
    failed = helper("echo no clock here >&2; exit 3")
    assert failed.returncode == 3 and "no clock here" in failed.stderr
    # a command arrives whole: both quotes, a backslash, expansions (the family's refresh
    # has them all)
    assert helper(f"""printf '%s\\n' "a'b\\"c\\\\d $((1+1))" > {tmp_path}/out""").returncode == 0
    assert (tmp_path / "out").read_text() == "a'b\"c\\d 2\n"
