"""How long work is shown while it runs: each phase is one line; a download's bytes or a
build's steps are a bar (tqdm) when the output is a terminal, and nothing more otherwise
(a log or CI gets one line per phase, not one a second)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TextIO


class Bar:
    """What a running piece of work reports: :meth:`update` its count (and total, once
    known), :meth:`describe` what it is doing now."""

    def __init__(self, tqdm=None) -> None:
        self._tqdm = tqdm
        self.done = 0

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if self._tqdm is None:
            return
        if total is not None and self._tqdm.total != total:
            self._tqdm.total = total
        self._tqdm.update(done - self._tqdm.n)

    def describe(self, text: str) -> None:
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(text[:60], refresh=False)


class Progress:
    """Phase lines go to *emit*; bars are drawn on *stream* if it is a terminal. Calling
    the object emits a line, so it stands wherever a ``Callable[[str], None]`` is taken."""

    def __init__(self, emit: Callable[[str], None] = lambda message: None,
                 stream: TextIO | None = None) -> None:
        self.emit = emit
        self.stream = stream
        self._shown = None  # the tqdm bar on screen, if any

    @classmethod
    def of(cls, progress: "Progress | Callable[[str], None]") -> "Progress":
        return progress if isinstance(progress, Progress) else cls(progress)

    def __call__(self, message: str) -> None:
        if self._shown is None:
            self.emit(message)
            return
        with self._shown.external_write_mode(file=self.stream):  # above the bar
            self.emit(message)

    @property
    def draws_bars(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    @contextlib.contextmanager
    def bar(self, label: str, total: int | None = None, *, unit: str = "B") -> Iterator[Bar]:
        """A bar for *label* (bytes if *unit* is ``"B"``, else steps of *unit*) while the
        block runs; without a terminal, no output at all (the caller says when it is done)."""
        if not self.draws_bars:
            yield Bar()
            return
        from tqdm import tqdm  # noqa: PLC0415 - only when a terminal shows a bar
        bytes_ = unit == "B"
        with tqdm(total=total, desc=label, unit=unit, unit_scale=bytes_, unit_divisor=1024,
                  file=self.stream, leave=True, dynamic_ncols=True, mininterval=0.2) as shown:
            self._shown = shown
            try:
                yield Bar(shown)
            finally:
                self._shown = None
