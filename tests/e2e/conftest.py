"""End-to-end tests: they boot real guests under libvirt/QEMU (slow under TCG)."""
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def child_runs_share_the_cache(kvm, monkeypatch):
    """pytester points HOME at a temporary directory; child pytest runs must still find
    the images cached for this one instead of building them again."""
    monkeypatch.setenv("PYTEST_KVM_CACHE_DIR", str(kvm.settings.cache_dir))


@pytest.fixture(scope="module")
def shared_guest(kvm):
    """One guest for a whole module, made with kvm.boot (the documented pattern)."""
    with kvm.boot("debian-12") as g:
        yield g
