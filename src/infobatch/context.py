"""What a pruning rule may know about the run when it plans an epoch.

Plain rules (:class:`~infobatch.PruningRule`) see only the scores. A rule that also needs the
epoch, the schedule or what earlier epochs saved (a saving budget, a curriculum window, a
bandit) implements :class:`EpochAwareRule`; the sampler gives it an :class:`EpochContext`.
A rule with ``state_dict()``/``load_state_dict()`` has that state saved in the sampler's
checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .rule import Selection
from .stats import EpochStats

__all__ = ["EpochContext", "EpochAwareRule", "WithContext"]


@dataclass(frozen=True)
class EpochContext:
    """The run as the sampler knows it when planning ``epoch``; identical on every rank.

    Attributes:
        epoch: the epoch (or pass, in iteration-based training) being planned.
        num_samples: dataset size.
        num_epochs: epochs in the run (``None`` in iteration-based training).
        pruned_epochs: epochs in which pruning is allowed (``None`` in iteration-based training).
        iterations_done: batches trained so far on this rank (the same on every rank).
        num_iterations: iterations in the run (``None`` in epoch-based training).
        history: statistics of every earlier epoch that was trained, in order.
    """

    epoch: int
    num_samples: int
    num_epochs: int | None
    pruned_epochs: int | None
    iterations_done: int
    num_iterations: int | None
    history: tuple[EpochStats, ...]

    @property
    def passes_saved(self) -> int:
        """Sample passes skipped by the earlier epochs."""
        return sum(s.num_pruned for s in self.history if s.epoch < self.epoch)


@runtime_checkable
class EpochAwareRule(Protocol):
    """A rule that plans with the run's :class:`EpochContext`."""

    def select_for_epoch(
        self, scores: Tensor, generator: torch.Generator, context: EpochContext
    ) -> Selection:
        """Return the epoch's :class:`~infobatch.Selection`; deterministic given its inputs."""
        ...


class WithContext:
    """Adapts an :class:`EpochAwareRule` and one context to the plain rule interface."""

    def __init__(self, rule: EpochAwareRule, context: EpochContext) -> None:
        self.rule, self.context = rule, context

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        """``rule.select_for_epoch(scores, generator, context)``."""
        return self.rule.select_for_epoch(scores, generator, self.context)
