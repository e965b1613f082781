"""Looking at the process table from end-to-end tests."""
import subprocess


def qemu_processes(name: str, *, prefix: bool = False) -> list[str]:
    """Command lines of running QEMU processes of guest *name* (or of every guest whose name
    starts with *name*, with ``prefix=True``)."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    needle = f"guest={name}" if prefix else f"guest={name},"
    return [line for line in ps.splitlines() if "qemu-system" in line and needle in line]
