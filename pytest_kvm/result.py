"""What a command run in a guest gave back (every transport returns one)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def failed(self) -> bool:
        return self.exit_code != 0

    def __bool__(self) -> bool:  # ``if guest.run(...):`` reads as "if it succeeded"
        return self.ok
