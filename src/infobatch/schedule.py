"""Annealing schedule: which epochs are pruned."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["AnnealingSchedule"]


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

    def prunes(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) is pruned; ``False`` means full data, weights 1."""
        return epoch < self.pruned_epochs
