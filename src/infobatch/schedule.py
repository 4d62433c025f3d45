"""Annealing schedules: which epochs (or passes, in iteration-based training) are pruned."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["AnnealingSchedule", "IterationSchedule"]


@dataclass(frozen=True)
class AnnealingSchedule:
    """Epoch ``e`` (0-based) is pruned only if ``e < delta * num_epochs``; later ones use all data.

    The boundary is an integer computed once from the decimal value of ``delta`` (so
    ``delta=0.7, num_epochs=10`` prunes exactly epochs 0-6, not 0-7 as float rounding would).

    Args:
        num_epochs (int): total number of training epochs, at least 1.
        delta (float): fraction of the epochs that may be pruned, in ``[0, 1]``. Default 0.875.

    >>> AnnealingSchedule(num_epochs=90, delta=0.875).pruned_epochs
    79
    """

    num_epochs: int
    delta: float = 0.875

    def __post_init__(self) -> None:
        if isinstance(self.num_epochs, bool) or not isinstance(self.num_epochs, int):
            raise TypeError(f"num_epochs must be an int, got {type(self.num_epochs).__name__}")
        if self.num_epochs < 1:
            raise ValueError(f"Invalid num_epochs {self.num_epochs}, num_epochs should be >= 1")
        if isinstance(self.delta, bool) or not isinstance(self.delta, (int, float)):
            raise TypeError(f"delta must be a float, got {type(self.delta).__name__}")
        if not (0.0 <= self.delta <= 1.0):
            raise ValueError(f"Invalid delta {self.delta}, delta should be in the interval [0, 1]")

    @property
    def pruned_epochs(self) -> int:
        """Number of leading epochs in which pruning is allowed: ``ceil(delta * num_epochs)``."""
        return math.ceil(Fraction(str(float(self.delta))) * self.num_epochs)

    def prunes(self, epoch: int, iterations_done: int = 0) -> bool:
        """Whether epoch ``epoch`` (0-based) is pruned; ``False`` means full data, weights 1."""
        return epoch < self.pruned_epochs


@dataclass(frozen=True)
class IterationSchedule:
    """Iteration-based training: a pass over the pruned data is pruned only if it starts
    before ``delta * num_iterations`` iterations (updates) were trained.

    Passes run back to back (see :func:`infobatch.iterations`) until ``num_iterations``
    batches were trained; the pass that crosses the boundary finishes as planned, every later
    pass uses all data with weight 1. The boundary is an integer, ``ceil(delta *
    num_iterations)``, computed once from the decimal value of ``delta``.

    Args:
        num_iterations (int): total training iterations (batches per rank), at least 1.
        delta (float): fraction of the iterations in which passes may be pruned, in ``[0, 1]``.

    >>> IterationSchedule(num_iterations=1000, delta=0.875).pruned_iterations
    875
    """

    num_iterations: int
    delta: float = 0.875

    def __post_init__(self) -> None:
        if isinstance(self.num_iterations, bool) or not isinstance(self.num_iterations, int):
            raise TypeError(
                f"num_iterations must be an int, got {type(self.num_iterations).__name__}"
            )
        if self.num_iterations < 1:
            raise ValueError(
                f"Invalid num_iterations {self.num_iterations}, num_iterations should be >= 1"
            )
        AnnealingSchedule(1, self.delta)  # the same checks of delta

    @property
    def pruned_iterations(self) -> int:
        """Iterations before which a pass may be pruned: ``ceil(delta * num_iterations)``."""
        return math.ceil(Fraction(str(float(self.delta))) * self.num_iterations)

    def prunes(self, epoch: int, iterations_done: int = 0) -> bool:
        """Whether a pass planned after ``iterations_done`` iterations is pruned."""
        return iterations_done < self.pruned_iterations
