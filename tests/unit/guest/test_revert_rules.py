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
