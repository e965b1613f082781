"""Nothing outlives a run: the watchdog of a live run and the reaper of dead ones."""
