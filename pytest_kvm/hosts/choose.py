"""Which host a session runs its guests on: this machine, or (``--kvm-host``) the remote
host its pytest-xdist worker is given. Nothing is opened here."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .uris import host_for_worker, worker_index

if TYPE_CHECKING:
    from ..config import Settings
    from .base import Host


def host_for(settings: "Settings", worker_id: str = "") -> "Host":
    if settings.hosts:
        from .remote import RemoteHost  # noqa: PLC0415 - paramiko only for remote hosts
        host = host_for_worker(settings.hosts, worker_index(worker_id))
        return RemoteHost(host, settings.hosts, settings.cache_dir,
                          autodestroy=settings.keep == "none")
    from .local import LocalHost  # noqa: PLC0415
    return LocalHost(settings.uri)


def where_worker_ran(settings: "Settings", worker_id: str) -> str:
    """`` on LABEL`` for an xdist worker given a remote host (the summary's words), else ``""``."""
    if not settings.hosts:
        return ""
    return f" on {host_for_worker(settings.hosts, worker_index(worker_id)).label}"
