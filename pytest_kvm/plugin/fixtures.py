"""The fixtures: ``kvm`` (session), ``guest`` and ``guest_factory`` (per test). Thin on purpose:
the work is in :class:`~pytest_kvm.session.session.KvmSession`, which the ``kvm`` fixture
makes (and so loads) the first time a test asks for it."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from ..spec import guest_marker
from .stash import GUESTS_KEY, STATE_KEY, failed

if TYPE_CHECKING:  # pragma: no cover
    from ..guest.facade import Guest
    from ..session.session import KvmSession


@pytest.fixture(scope="session")
def kvm(pytestconfig: pytest.Config) -> KvmSession:
    """The hypervisor session: ``kvm.boot(os=None, **keywords)`` returns a started guest (a
    context manager); the keywords are :data:`pytest_kvm.spec.KEYWORDS`."""
    return pytestconfig.stash[STATE_KEY].session


def _finish(request: pytest.FixtureRequest, kvm: KvmSession, guest: Guest) -> None:
    keep = kvm.settings.keep
    if keep == "all" or (keep == "failed" and failed(request.node)):
        kvm.keep(guest)
    else:
        kvm.release(guest)  # destroyed in the background; the session end waits for it


def _remember(request: pytest.FixtureRequest, guest: Guest) -> None:
    request.node.stash.setdefault(GUESTS_KEY, []).append(guest)


@pytest.fixture
def guest(request: pytest.FixtureRequest, kvm: KvmSession) -> Iterator[Guest]:
    """A booted guest for this test, configured by ``@pytest.mark.guest(...)``."""
    marker = request.node.get_closest_marker("guest")
    spec = guest_marker(*marker.args, **marker.kwargs) if marker else guest_marker()
    if isinstance(spec.golden, str):  # golden="fixture name": that fixture's user golden
        spec = replace(spec, golden=request.getfixturevalue(spec.golden))
    os, arch = getattr(request, "param", (None, None))  # --kvm-os x --kvm-arch (see hooks)
    g = kvm.create_for(replace(spec, os=spec.os or os, arch=spec.arch or arch))
    _remember(request, g)
    try:
        g.start()
        yield g
    finally:
        _finish(request, kvm, g)


@pytest.fixture
def guest_testinfra(guest: Guest):
    """A testinfra host on ``guest`` (``pip install 'pytest-kvm[testinfra]'``)."""
    return guest.testinfra()


@pytest.fixture
def guest_factory(request: pytest.FixtureRequest, kvm: KvmSession) -> Iterator[Any]:
    """``guest_factory(**kwargs)`` boots a guest like ``kvm.boot``; all are destroyed after the test."""
    made: list[Guest] = []

    def factory(os: str | None = None, **kwargs: Any) -> Guest:
        g = kvm.create(os, **kwargs)
        made.append(g)
        _remember(request, g)
        return g.start()

    yield factory
    errors = []
    for g in made:
        try:
            _finish(request, kvm, g)
        except Exception as exc:  # release the others before reporting
            errors.append(exc)
    if errors:
        raise errors[0]
