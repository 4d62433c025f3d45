"""Where an epoch's wall-clock goes on this rank: planning, waiting for batches, ``update()``.

The sampler owns one :class:`EpochClock`. It measures what happens inside infobatch (planning,
``update()``) and the epoch's span (from its first index handed out to its last update); the
loop's wait for batches is measured where the loop is visible: :func:`timed_batches` (the
plain loop's ``for batch in dataset.timed(loader)``) and the framework integrations. What is
left of the epoch's span is the training steps (forward, backward, optimizer step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Callable, TypeVar

__all__ = ["EpochTiming", "EpochClock", "timed_batches"]

T = TypeVar("T")


@dataclass(frozen=True)
class EpochTiming:
    """One epoch's time accounting in seconds on this rank (``nan``: not measured).

    Attributes:
        planning_seconds: planning the epoch (the rule, the shuffle, and waiting for the
            previous epoch's cross-rank score merge).
        data_seconds: waiting for batches, when the loop was timed (:func:`timed_batches`,
            or an integration); ``nan`` otherwise.
        update_seconds: inside ``update()``.
        epoch_seconds: from the epoch's first index handed to the loader to the end of its
            last ``update()``.
        between_epochs_seconds: from the previous epoch's last ``update()`` to the start of
            this epoch's planning: what the loop did between epochs (evaluation,
            checkpoints, starting the loader's workers); ``nan`` for the first epoch.
    """

    planning_seconds: float = math.nan
    data_seconds: float = math.nan
    update_seconds: float = math.nan
    epoch_seconds: float = math.nan
    between_epochs_seconds: float = math.nan


class EpochClock:
    """Accumulates the current epoch's :class:`EpochTiming` (one per sampler, this rank only).

    Args:
        clock (callable, optional): seconds as a float. Default: ``time.perf_counter``.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._previous_end: float | None = None
        self.planning_total = 0.0  # over the run, so a wait that included planning excludes it
        self._reset()

    def _reset(self) -> None:
        self._planning = 0.0
        self._data: float | None = None
        self._update = 0.0
        self._started: float | None = None
        self._last_update_end: float | None = None
        self._between = math.nan

    def planning_started(self) -> float:
        """A new epoch is being planned: start its accounting; return the time."""
        now = self.clock()
        self._reset()
        if self._previous_end is not None:
            self._between = max(now - self._previous_end, 0.0)
        return now

    def planning_ended(self, started: float) -> None:
        """The plan begun at ``started`` is made."""
        seconds = self.clock() - started
        self._planning += seconds
        self.planning_total += seconds

    def first_index(self) -> None:
        """The loader took this epoch's first index (later calls in the epoch do nothing)."""
        if self._started is None:
            self._started = self.clock()

    def add_update(self, started: float) -> None:
        """An ``update()`` that began at ``started`` ends now."""
        now = self.clock()
        self._update += now - started
        self._last_update_end = now
        if self._started is None:  # trained from a position handed out by an earlier pass
            self._started = started

    def add_data(self, seconds: float, started: float | None = None) -> None:
        """The loop waited ``seconds`` for a batch, from ``started`` (less any planning); a
        wait that began before the epoch's first index opens the epoch's span."""
        self._data = (self._data or 0.0) + seconds
        if started is not None and (self._started is None or started < self._started):
            self._started = started

    def finish(self) -> EpochTiming:
        """The epoch is complete: its timing (the next epoch's ``between`` starts now)."""
        end = self._last_update_end if self._last_update_end is not None else self.clock()
        start = self._started if self._started is not None else end
        timing = EpochTiming(
            planning_seconds=self._planning,
            data_seconds=self._data if self._data is not None else math.nan,
            update_seconds=self._update,
            epoch_seconds=max(end - start, 0.0),
            between_epochs_seconds=self._between,
        )
        self._previous_end = end
        self._reset()
        return timing


def timed_batches(batches: Iterable[T], clock: EpochClock) -> Iterator[T]:
    """Yield ``batches``' items, adding the time each ``next()`` took to ``clock``'s data wait
    (less any planning it triggered, which is counted as planning)."""
    iterator = iter(batches)
    while True:
        started, planned = clock.clock(), clock.planning_total
        try:
            batch = next(iterator)
        except StopIteration:
            return
        planning = clock.planning_total - planned  # counted as planning, not as waiting
        clock.add_data(clock.clock() - started - planning, started + planning)
        yield batch
