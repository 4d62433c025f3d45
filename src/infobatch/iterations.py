"""Iteration-based training: passes over the pruned data, back to back, for a fixed count."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from .errors import InfoBatchError

__all__ = ["iterations"]

T = TypeVar("T")


def iterations(loader: Iterable[T], num_iterations: int, start: int = 0) -> Iterator[T]:
    """Yield exactly ``num_iterations - start`` batches of ``loader``, re-iterating it as needed.

    Each time a pass over the loader ends, the next one begins: with an iteration-based
    :class:`~infobatch.InfoBatch` (``num_iterations=``) every pass is a new plan, pruned while
    fewer than ``delta * num_iterations`` iterations are done. The last pass is broken off at
    the count. ``start`` is the number of iterations already trained (after a resume:
    ``dataset.sampler.iterations_done``).

    >>> list(iterations([1, 2, 3], 7))
    [1, 2, 3, 1, 2, 3, 1]
    """
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int):
        raise TypeError(f"num_iterations must be an int, got {type(num_iterations).__name__}")
    if not 0 <= start <= num_iterations:
        raise ValueError(
            f"Invalid start {start}, start should be in the interval [0, {num_iterations}]"
        )
    remaining, empty_passes = num_iterations - start, 0
    while remaining > 0:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
            remaining -= 1
            if remaining == 0:
                return
        empty_passes = 0 if yielded else empty_passes + 1
        if empty_passes > 1 and _kept_nothing(loader):
            raise InfoBatchError(
                "InfoBatch's plan kept no sample in two passes in a row, so the run cannot "
                "advance: the pruning rule or ratio prunes every sample of this dataset. Use a "
                "lower ratio (or keep_fraction) or a larger dataset"
            )
        if empty_passes > 1:  # one empty pass (drop_last on a small pruned pass) is fine
            raise InfoBatchError(
                "the loader yielded no batch in two passes in a row: the dataset is smaller "
                "than one batch with drop_last=True; use a smaller batch or drop_last=False"
            )


def _kept_nothing(loader: object) -> bool:
    """The loader's InfoBatch sampler planned a pass with no sample."""
    sampler = getattr(loader, "sampler", None)
    plan = getattr(sampler, "plan", None)
    return plan is not None and plan.num_kept == 0
