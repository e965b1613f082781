"""The plugin's state in one pytest process: the settings, read and checked when pytest
configures, and the :class:`~pytest_kvm.session.session.KvmSession`, made the first time
something asks for it (the ``kvm`` fixture). A run whose tests use no guest never makes
one, so it never loads libvirt, paramiko, pycdlib, PyYAML or cryptography."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import Settings
from ..hosts.choose import host_for

if TYPE_CHECKING:  # pragma: no cover
    from ..images.store import ImageStore
    from ..session.session import KvmSession


class PluginState:
    """What the hooks and fixtures share: ``settings`` at once, ``session`` on first use."""

    def __init__(self, settings: Settings, progress: Callable[[str], None] = lambda msg: None,
                 worker_id: str = "") -> None:
        self.settings = settings
        self.progress = progress
        self.worker_id = worker_id
        self._session: KvmSession | None = None
        self._names: ImageStore | None = None
        #: the first test that met the session's start error (see :mod:`.reports`)
        self.start_error_test: str | None = None
        #: where guests will run (nothing is opened: for the checks and the header)
        self.host = host_for(settings, worker_id)

    def check(self) -> None:
        """What must fail before any test runs (raises :class:`~pytest_kvm.errors.KvmError`):
        ``--kvm-accel kvm`` on a machine without KVM (a remote host's is asked once a guest
        is needed) and OS names that no recipe, catalog entry or local image has."""
        self.host.check_setup(self.settings.accel)
        for name in self.settings.os_names:
            self.check_name(name)

    def check_name(self, name: str) -> None:
        """Raise :class:`~pytest_kvm.errors.ImageError` unless *name* is a known guest OS (the
        names only: this store never builds, downloads or holds an image; the session's does)."""
        if self._names is None:
            from ..images.store import ImageStore  # noqa: PLC0415 - recipes and catalogs: at configure
            s = self.settings
            self._names = ImageStore(s.cache_dir, s.local_images, self.progress, mirror=s.mirror,
                                     catalogs=s.catalogs)
        self._names.check_name(name)

    @property
    def accel(self) -> str:
        """``"kvm"`` or ``"tcg"``: the session's; before there is one, this machine's, or with
        ``--kvm-host`` the requested ``--kvm-accel`` (a host's is known once connected)."""
        if self._session is not None:
            return self._session.accel
        return self.host.accel_before_connecting(self.settings.accel)

    @property
    def session(self) -> KvmSession:
        """The session, made on first use (which loads the modules guests need)."""
        if self._session is None:
            from ..session.session import KvmSession  # noqa: PLC0415 - the heavy part, on demand
            self._session = KvmSession(self.settings, self.progress, worker_id=self.worker_id)
        return self._session

    @property
    def made(self) -> KvmSession | None:
        """The session if something asked for it, else None."""
        return self._session

    def close(self) -> list[BaseException]:
        """Close the session if there is one; what it could not clean up."""
        return self._session.close() if self._session is not None else []
