"""The session behind the ``kvm`` fixture: goldens, snapshots, background work."""


def __getattr__(name: str):
    if name == "KvmSession":
        from .session import KvmSession
        return KvmSession
    raise AttributeError(name)
