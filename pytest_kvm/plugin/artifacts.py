"""Artifacts of a failed test (``--kvm-artifacts DIR``): each of its guests' console log,
timeline, system logs (the family names them) and the paths the test named in
``@pytest.mark.guest(artifacts=[...])``, copied to ``DIR/<test id>/<guest name>/`` while
the guest still runs. Bounded in time and size per guest; a failure to collect is written
to ``errors.txt`` and returned, never raised: it must not hide the test's own outcome."""
from __future__ import annotations

import re
import shlex
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..errors import KvmError

if TYPE_CHECKING:  # pragma: no cover
    from ..guest.facade import Guest

SECONDS_PER_GUEST = 120.0  # TCG: a journal of a few MB takes seconds
MAX_BYTES_PER_GUEST = 64 * 2**20
MAX_NAME = 120
ERRORS_FILE = "errors.txt"


def directory_for(root: Path, nodeid: str) -> Path:
    """``root/<test id>``: the node id with every character outside ``[A-Za-z0-9._-]``
    replaced, bounded in length (long parametrized ids keep their end, which differs)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid.replace("::", "__")).strip("._") or "test"
    if len(name) > MAX_NAME:
        name = name[:40] + "..." + name[-(MAX_NAME - 43):]
    return root / name


class _Budget:
    def __init__(self, seconds: float, max_bytes: int) -> None:
        self.deadline = time.monotonic() + seconds
        self.bytes_left = max_bytes

    def seconds(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 1:
            raise KvmError("out of time (the per-guest limit of artifact collection)")
        return left


def collect(guest: "Guest", directory: Path, *, seconds: float = SECONDS_PER_GUEST,
            max_bytes: int = MAX_BYTES_PER_GUEST) -> list[str]:
    """Copy *guest*'s artifacts into *directory*; return what could not be collected."""
    directory.mkdir(parents=True, exist_ok=True)
    budget = _Budget(seconds, max_bytes)
    problems: list[str] = []

    def save(name: str, text: str) -> None:
        data = text.encode("utf-8", errors="replace")
        if len(data) > budget.bytes_left:
            data = data[-max(budget.bytes_left, 0):]  # the end of a log is what explains
            problems.append(f"{name}: cut to its last {len(data)} bytes (size limit)")
        budget.bytes_left -= len(data)
        (directory / name).write_bytes(data)

    save("console.log", guest.console_log())
    save("timeline.txt", guest.timeline.format())
    if guest.destroyed:
        problems.append("the guest was no longer running: only its console log was kept")
    else:
        for name, command in guest.config.family.artifact_logs:
            try:
                limit = max(budget.bytes_left, 0)
                result = guest.run(f"{command} 2>&1 | head -c {limit}", sudo=True,
                                   timeout=budget.seconds())
                save(name, result.stdout)
            except Exception as exc:  # noqa: BLE001 - reported, never raised
                problems.append(f"{name}: {type(exc).__name__}: {_first_line(exc)}")
        for path in guest.config.artifacts:
            try:
                _copy_path(guest, path, directory / "files", budget)
            except Exception as exc:  # noqa: BLE001 - reported, never raised
                problems.append(f"{path}: {type(exc).__name__}: {_first_line(exc)}")
    if problems:
        (directory / ERRORS_FILE).write_text("\n".join(problems) + "\n")
    return problems


def _copy_path(guest: "Guest", path: str, files: Path, budget: _Budget) -> None:
    """One guest path (a file or a tree, read as root) to ``files/<path>``, if it fits."""
    remote = PurePosixPath(path)
    if not remote.is_absolute():
        remote = PurePosixPath("/home") / guest.user / remote  # the login user's home
    size = guest.run(f"du -sb {shlex.quote(str(remote))} | cut -f1", sudo=True,
                     timeout=budget.seconds())
    if size.failed or not size.stdout.strip().isdigit():
        raise KvmError(f"not found in the guest ({size.stderr.strip() or size.stdout.strip()})")
    if int(size.stdout) > budget.bytes_left:
        raise KvmError(f"{int(size.stdout)} bytes: over what is left of the size limit "
                       f"({budget.bytes_left} of {MAX_BYTES_PER_GUEST} bytes)")
    local = files / remote.relative_to("/")
    local.parent.mkdir(parents=True, exist_ok=True)
    # du counts a link to /dev/zero as a few bytes: the stream itself is bounded too
    guest.get(str(remote), local, sudo=True, timeout=budget.seconds(), max_bytes=budget.bytes_left)
    budget.bytes_left -= int(size.stdout)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]
