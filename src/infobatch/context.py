"""What a pruning rule may know about the run when it plans an epoch.

Plain rules (:class:`~infobatch.PruningRule`) see only the scores. A rule that also needs the
epoch, the schedule or what earlier epochs saved (a saving budget, a curriculum window, a
bandit) implements :class:`EpochAwareRule`; the sampler gives it an :class:`EpochContext`.
A rule with ``state_dict()``/``load_state_dict()`` has that state saved in the sampler's
checkpoints. A rule whose class sets ``needs_score_iterations = True`` also gets, in
:attr:`EpochContext.score_iterations`, the iteration at which each score was recorded (the
sampler then keeps them, 4 bytes per sample, merged across ranks and checkpointed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
        epoch_size: sample passes of a full epoch, the unit :class:`~infobatch.EpochStats`
            counts in: the draws of the user's :class:`~infobatch.WeightedSampling`, or
            ``None`` for the dataset size (every sample once).
        sample_weights: the user's ``WeightedSampling`` weights (float64, CPU, one per
            sample), or ``None`` when every sample is trained once per full epoch.
        score_iterations: int32 ``[N]`` on the scores' device: the iteration (0-based
            ``update()`` count of the run, the same on every rank) at which each score was
            recorded, ``-1`` for never (or unknown, in a checkpoint older than this field).
            Given only to a rule whose ``needs_score_iterations`` is true, else ``None``.
            Read-only: do not modify it.
    """

    epoch: int
    num_samples: int
    num_epochs: int | None
    pruned_epochs: int | None
    iterations_done: int
    num_iterations: int | None
    history: tuple[EpochStats, ...]
    epoch_size: int | None = None
    sample_weights: Tensor | None = field(default=None, compare=False)
    score_iterations: Tensor | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        size = self.epoch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"Invalid epoch_size {size!r}, epoch_size should be an int >= 1")
        for name, value, what in (
            ("sample_weights", self.sample_weights, "weight"),
            ("score_iterations", self.score_iterations, "iteration"),
        ):
            if value is not None and (
                not isinstance(value, Tensor) or value.shape != (self.num_samples,)
            ):
                shown = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"{name} must be a tensor of one {what} per sample, shape "
                    f"({self.num_samples},), got {shown}"
                )

    @property
    def epoch_passes(self) -> int:
        """Sample passes of a full epoch: ``epoch_size``, or the dataset size."""
        return self.num_samples if self.epoch_size is None else self.epoch_size

    @property
    def passes_saved(self) -> int:
        """Sample passes skipped by the earlier epochs (draws, with ``epoch_size``)."""
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
