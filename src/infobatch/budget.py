"""A total-saving budget: InfoBatch's rule with the pruning ratio adapted epoch by epoch.

Instead of a per-epoch probability, the user asks for an overall saving ("save 40% of the
run's sample passes"). Before each pruned epoch the ratio is set so that the epochs left to
prune, at the current number of well-learned samples, bring the realised total to the target:

    ratio_e = (target * N * E - passes saved so far) / (pruned epochs left) / (well-learned now)

clipped to ``[0, max_prune_ratio]``. Only well-learned samples (below the mean score) are ever
pruned, and the kept ones are weighted ``1 / (1 - ratio_e)`` with the ratio actually used, so
every epoch stays unbiased. The target may be unreachable (too few samples below the mean, or
too few pruned epochs): then the ratio stays at its cap and a warning, once, gives the
achievable figure.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .context import EpochContext
from .rule import MeanThreshold, Selection, SoftPruning

__all__ = ["SavingBudget"]

logger = logging.getLogger("infobatch")


@dataclass
class SavingBudget:
    """Save ``target`` of the run's sample passes with InfoBatch's rule (epoch-based training).

    Use it as ``InfoBatch(dataset, num_epochs, rule=SavingBudget(0.4))``: ``prune_ratio`` is
    then ignored; ``delta`` still decides which epochs may be pruned.

    Args:
        target (float): fraction of all sample passes (``N * num_epochs``) to save, in
            ``(0, 1)``.
        max_prune_ratio (float, optional): the highest per-epoch pruning probability the
            budget may use, in ``(0, 1)``; kept well-learned samples then weigh up to
            ``1 / (1 - max_prune_ratio)``. Default: ``0.9``.
    """

    target: float
    max_prune_ratio: float = 0.9
    ratios: dict[int, float] = field(default_factory=dict, repr=False, compare=False)
    _warned: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("target", "max_prune_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float, got {type(value).__name__}")
            if not 0.0 < value < 1.0:
                raise ValueError(f"Invalid {name} {value}, {name} should be in the interval (0, 1)")

    def ratio_for(self, context: EpochContext, num_well_learned: int) -> tuple[float, float]:
        """The ratio for this epoch, and the total saving reachable at the cap from here."""
        if context.num_epochs is None or context.pruned_epochs is None:
            raise ValueError(
                "SavingBudget needs epoch-based training (num_epochs); in iteration-based "
                "training fix the saving with fewer iterations instead"
            )
        total = context.num_samples * context.num_epochs
        left = max(context.pruned_epochs - context.epoch, 1)
        saved = context.passes_saved
        reachable = (saved + self.max_prune_ratio * num_well_learned * left) / total
        if num_well_learned == 0:
            return 0.0, reachable
        wanted = (self.target * total - saved) / left / num_well_learned
        return min(max(wanted, 0.0), self.max_prune_ratio), reachable

    def select_for_epoch(
        self, scores: Tensor, generator: torch.Generator, context: EpochContext
    ) -> Selection:
        """InfoBatch's rule at the ratio :meth:`ratio_for` gives."""
        below = MeanThreshold.of(scores)
        num_well = below.count_below(scores)
        ratio, reachable = self.ratio_for(context, num_well)
        if num_well and reachable < self.target - 1e-9 and not self._warned:
            self._warned = True
            warnings.warn(
                f"SavingBudget: the target of {self.target:.1%} of sample passes saved is out "
                f"of reach: with {num_well} of {context.num_samples} samples below the mean "
                f"and {(context.pruned_epochs or 0) - context.epoch} pruned epochs left, at most "
                f"about {reachable:.1%} can be saved at max_prune_ratio="
                f"{self.max_prune_ratio}. Pruning at that cap.",
                stacklevel=2,
            )
        self.ratios[context.epoch] = ratio
        total = context.num_samples * (context.num_epochs or 1)
        logger.info(
            "saving budget: epoch %d prunes well-learned samples with probability %.4g "
            "(target %.2f%% of sample passes, saved so far %.2f%%)",
            context.epoch,
            ratio,
            100.0 * self.target,
            100.0 * context.passes_saved / total,
        )
        return SoftPruning(ratio).select_below(scores, generator, below)
