"""A tiny library to test inside a guest."""
import platform


def greeting(name: str) -> str:
    return f"Hello, {name}!"


def where() -> str:
    """The kernel this code runs on (the guest's, when tested there)."""
    return platform.system()
