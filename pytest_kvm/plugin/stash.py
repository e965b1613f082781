"""Keys under which the plugin keeps state on pytest objects, and the test outcome."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from ..guest.facade import Guest
    from .state import PluginState

STATE_KEY: pytest.StashKey[PluginState] = pytest.StashKey()  # the settings; the session once made
GUESTS_KEY: pytest.StashKey[list[Guest]] = pytest.StashKey()
OUTCOME_KEY = pytest.StashKey[dict[str, bool]]()  # phase ("setup"/"call") -> failed
WORKER_COUNTS_KEY = pytest.StashKey[dict[str, dict[str, int]]]()  # xdist worker id -> guest counts
CLOSE_ERRORS_KEY = pytest.StashKey[list[str]]()  # what the session end could not clean up
WORKER_CLOSE_ERRORS_KEY = pytest.StashKey[dict[str, list[str]]]()  # xdist worker id -> the same
WORKER_ACCEL_NOTES_KEY = pytest.StashKey[dict[str, str]]()  # xdist worker id -> its TCG fallback
WORKER_USAGE_ERRORS_KEY = pytest.StashKey[list[str]]()  # bad guest markers xdist workers found
SIGTERM_KEY = pytest.StashKey[tuple]()  # (SIGTERM handler before the session,)


def failed(item: pytest.Item) -> bool:
    return any(item.stash.get(OUTCOME_KEY, {}).values())
