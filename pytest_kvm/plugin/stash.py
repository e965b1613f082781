"""Keys under which the plugin keeps state on pytest objects, and the test outcome."""
from __future__ import annotations

import pytest

from ..guest.facade import Guest
from ..session.session import KvmSession

SESSION_KEY = pytest.StashKey[KvmSession]()
GUESTS_KEY = pytest.StashKey[list[Guest]]()
OUTCOME_KEY = pytest.StashKey[dict[str, bool]]()  # phase ("setup"/"call") -> failed
WORKER_COUNTS_KEY = pytest.StashKey[dict[str, dict[str, int]]]()  # xdist worker id -> guest counts
CLOSE_ERRORS_KEY = pytest.StashKey[list[str]]()  # what the session end could not clean up
WORKER_CLOSE_ERRORS_KEY = pytest.StashKey[dict[str, list[str]]]()  # xdist worker id -> the same
SIGTERM_KEY = pytest.StashKey[tuple]()  # (SIGTERM handler before the session,)


def failed(item: pytest.Item) -> bool:
    return any(item.stash.get(OUTCOME_KEY, {}).values())
