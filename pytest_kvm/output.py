"""Live command output: each line a guest command prints is logged as it arrives, to the
``logging`` logger ``pytest_kvm.guest.<guest name>`` (``pytest --log-cli-level=INFO``
shows a long build while it runs; a failed test's captured log has it)."""
from __future__ import annotations

import logging
import threading

LOGGER_PREFIX = "pytest_kvm.guest."


def guest_logger(guest_name: str) -> logging.Logger:
    return logging.getLogger(LOGGER_PREFIX + guest_name)


class LineLog:
    """Splits the chunks of a command's stdout and stderr into lines and logs each whole
    line at INFO (stderr lines marked); :meth:`close` logs what is left without a newline."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._partial = {"stdout": b"", "stderr": b""}
        self._lock = threading.Lock()

    def feed(self, stream: str, data: bytes) -> None:
        with self._lock:
            *lines, self._partial[stream] = (self._partial[stream] + data).split(b"\n")
        for line in lines:
            self._emit(stream, line)

    def close(self) -> None:
        with self._lock:
            rest, self._partial = self._partial, {"stdout": b"", "stderr": b""}
        for stream, line in rest.items():
            if line:
                self._emit(stream, line)

    def _emit(self, stream: str, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if stream == "stderr":
            self._logger.info("[stderr] %s", text)
        else:
            self._logger.info("%s", text)
