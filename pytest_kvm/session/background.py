"""Work kept off the test's path: clones made ahead of the tests that will take them, and
guests destroyed behind the tests that used them.

Both run in threads of the pytest process; the libvirt connection and the handles
are safe to use from them. The session end waits for all of it (see ``KvmSession.close``).
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..guest.facade import Guest

DESTROY_WORKERS = 4
HANDOVER_WAIT = 600.0  # seconds a test waits for a clone already being made for it
#: how the progress line names a queued clone that did not come up, by how it was queued
FAILED = {"ahead": "made ahead did not start", "reverted": "reverted in place did not come back"}


class AheadPool:
    """Clones of each golden restored, logged in and clock-set before a test asks; and clones
    whose test is over, reverted in place for the next one (:meth:`recycle`).

    ``prepare(key, guest, after)`` starts *guest* in a thread once *after* (the clone
    just handed out, still starting) is up, so that the two never compete; ``take(key)``
    hands over the oldest prepared clone of golden *key*, waiting for it if it is still
    starting. A clone whose preparation failed is destroyed and not handed over, with one
    line to *progress* saying why.
    """

    def __init__(self, depth: int, progress: Callable[[str], None] = lambda msg: None) -> None:
        self.depth = depth
        self.progress = progress
        self._lock = threading.Lock()
        # per golden: (guest, its start or revert, which of the two: a key of FAILED)
        self._pending: dict[str, list[tuple[Guest, concurrent.futures.Future, str]]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(depth, 1),
                                                           thread_name_prefix="pytest-kvm-ahead")
        self.handed_over = 0  # clones made ahead that went to a test
        self.reverted = 0  # clones reverted in place after a test that went to another
        self._closed = threading.Event()

    def wanted(self, key: str) -> bool:
        with self._lock:
            return self.depth > 0 and len(self._pending.get(key, ())) < self.depth

    def prepare(self, key: str, guest: "Guest", after: "Guest | None" = None) -> None:
        def start() -> "Guest":
            deadline = time.monotonic() + HANDOVER_WAIT
            while after is not None and not after.started.wait(0.2):
                if self._closed.is_set() or time.monotonic() > deadline:
                    raise RuntimeError("not started: the session ended first")
            if self._closed.is_set():
                raise RuntimeError("not started: the session ended first")
            return guest.start()

        self._queue(key, guest, start, "ahead")

    def recycle(self, key: str, guest: "Guest") -> None:
        """*guest*, a clone of golden *key* whose test is over, reverted in place in a thread
        (``reset="revert"``) and queued for the next test that takes a clone of *key*."""
        def revert() -> "Guest":
            if self._closed.is_set():
                raise RuntimeError("not reverted: the session ended first")
            return guest.revert()

        self._queue(key, guest, revert, "reverted")

    def _queue(self, key: str, guest: "Guest", job: Callable[[], "Guest"], kind: str) -> None:
        with self._lock:
            self._pending.setdefault(key, []).append((guest, self._pool.submit(job), kind))

    def waiting(self) -> set[str]:
        """Names of the clones made ahead and not handed to a test yet."""
        with self._lock:
            return {guest.name for queue in self._pending.values() for guest, _, _ in queue}

    def take(self, key: str) -> "Guest | None":
        with self._lock:
            queue = self._pending.get(key, [])
            if not queue:
                return None
            guest, future, kind = queue.pop(0)
        try:
            future.result(HANDOVER_WAIT)
        except BaseException as exc:  # noqa: BLE001 - start() removed what it made; boot another
            first_line = (str(exc).strip().splitlines() or [""])[0]
            self.progress(f"clone {guest.name} {FAILED[kind]} ({type(exc).__name__}: "
                          f"{first_line}); destroyed, making another")
            guest.destroy()
            return None
        if kind == "reverted":
            self.reverted += 1
        else:
            self.handed_over += 1
        return guest

    def close(self) -> None:
        """Stop preparing and wait for clones being started; the caller destroys the clones
        nobody took (they are among the session's guests)."""
        self._closed.set()
        with self._lock:
            self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


class Reclaimer:
    """Destroys guests in threads (libvirt takes ~1.5 s to tear a domain down, mostly
    waiting, so several go at once); ``wait()`` returns the failures."""

    def __init__(self, workers: int = DESTROY_WORKERS) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                           thread_name_prefix="pytest-kvm-destroy")
        self._futures: list[concurrent.futures.Future] = []

    def destroy(self, destroy: Callable[[], None]) -> None:
        # keep what wait() reports: the ones still running and the ones that failed
        self._futures = [f for f in self._futures if not f.done() or f.exception() is not None]
        self._futures.append(self._pool.submit(destroy))

    def wait(self) -> list[BaseException]:
        errors = []
        for future in self._futures:
            try:
                future.result()
            except BaseException as exc:  # noqa: BLE001 - reported by the session
                errors.append(exc)
        self._futures.clear()
        return errors
