"""One guest: the :class:`Guest` facade and the parts it delegates to (cold start, clones,
attachments, power)."""


def __getattr__(name: str):
    if name == "Guest":  # ``from pytest_kvm.guest import Guest`` without importing paramiko first
        from .facade import Guest
        return Guest
    raise AttributeError(name)
