"""KvmSession without libvirt: the run directory's life and goldens that did not save."""
import dataclasses

import pytest

from pytest_kvm.session import session as session_module
from pytest_kvm.config import Settings
from pytest_kvm.guest.config import GuestConfig
from pytest_kvm.vm.hypervisor import Hypervisor
from pytest_kvm.cleanup.reaper import owner_alive, read_owner, reap_run_dirs
from pytest_kvm.session.session import KvmSession


class FakeHv:
    uri, embed_index = "test:///fake", None

    def our_domains(self):
        return {}

    def close(self):
        pass


@pytest.fixture
def session(tmp_path, monkeypatch):
    monkeypatch.setattr(Hypervisor, "open", classmethod(lambda cls, uri, state_dir=None: FakeHv()))
    s = KvmSession(Settings(cache_dir=tmp_path / "cache"))
    yield s
    s.close()


def test_the_run_dir_is_owned_before_anything_can_reap_it(session):
    """Reading kvm.uri before any boot starts the watchdog: the run directory it has then
    is owned by this live process, so no reaper (another worker's, even one treating
    every owner-less directory as dead) removes it."""
    assert session.uri == "test:///fake"
    assert session.run_dir.is_dir()
    assert owner_alive(read_owner(session.run_dir))
    assert reap_run_dirs(session.run_dir.parent, young=0) == []
    assert session.run_dir.is_dir()


def test_start_is_explicit_and_once(session):
    hv = session.start()
    assert session.start() is hv and session.hypervisor is hv


class FakeGuest:
    """Starts, then fails to save (what a full disk or a QEMU error during save gives)."""
    made = []

    def __init__(self, config):
        self.name, self.workdir, self.destroyed = config.name, config.workdir, False
        self.workdir_at_destroy = None
        FakeGuest.made.append(self)

    def start(self):
        self.workdir.joinpath("overlay.qcow2").write_bytes(b"in use by QEMU")
        return self

    def save_as_golden(self, key):
        raise session_module.KvmError("saving the golden: no space left on device")

    def destroy(self):
        self.workdir_at_destroy = self.workdir.exists()
        self.destroyed = True


@pytest.mark.parametrize("snapshots", ["on", "off"])
def test_a_golden_that_did_not_save_is_destroyed_at_once(tmp_path, monkeypatch, snapshots):
    FakeGuest.made = []
    kvm = KvmSession(Settings(cache_dir=tmp_path / "cache", snapshots=snapshots))
    monkeypatch.setattr(kvm, "_guest", lambda config, golden=None: FakeGuest(config))
    kvm._hv = FakeHv()  # no libvirt: the session's hypervisor is this fake
    required = [f.name for f in dataclasses.fields(GuestConfig)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    config = GuestConfig(**{**dict.fromkeys(required), "os": "debian-12"})

    def boot(directory):
        return kvm.goldens._boot_golden(config, "k1", directory, {})

    with pytest.raises(session_module.KvmError, match="no space left"):
        if snapshots == "on":
            kvm.snapshots.get_or_create("k1", boot, what="debian-12")
        else:
            directory = tmp_path / "golden-k1"
            directory.mkdir()
            boot(directory)
    [guest] = FakeGuest.made
    # destroyed before the snapshot store removed its files, not left to the session end
    assert guest.destroyed and guest.workdir_at_destroy
    assert kvm.goldens.guests == [] and kvm.guests == []
