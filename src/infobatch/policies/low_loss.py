"""InfoBatch with the pruning threshold at a fraction of the mean score (an unbiased variant)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..rule import MeanThreshold, Selection, SoftPruning
from ._common import check_fraction

__all__ = ["LowLossPruning"]


class LowLossPruning:
    """Drop samples scored below ``threshold_scale * mean`` with probability ``prune_ratio``.

    Method note: InfoBatch's soft pruning and expectation rescaling, with a lower threshold.
    A sample scored below ``threshold_scale`` times the mean score is dropped with probability
    ``r = prune_ratio`` and, if kept, weighted ``1 / (1 - r)``; every other sample (and every
    sample never scored) is kept with weight 1. Each epoch's expected gradient is therefore the
    full-data one, exactly as with InfoBatch (``threshold_scale=1`` *is* InfoBatch). What
    changes is the variance the rescaling adds: ``r / (1 - r)`` times the sum of the pruned
    class's squared per-sample gradients. Per-sample gradients shrink with the loss (for
    cross-entropy the logit gradient's norm is at most ``sqrt(2) (1 - p_y)``, about the loss
    when it is small), so a low threshold with a high ratio buys the same saving with far less
    added noise than the mean threshold: the saving comes from the many nearly-solved samples,
    and the samples just below the mean, which still teach, are left alone.

    O(N) per epoch, no sort: :class:`~infobatch.SoftPruning` with its threshold scaled, so the
    coins, the chunked status and the exact comparison are InfoBatch's own.

    Args:
        prune_ratio (float, optional): probability of dropping a low-loss sample, ``[0, 1)``.
            Default: ``0.8``.
        threshold_scale (float, optional): the threshold as a fraction of the mean score,
            ``(0, 1]``. Default: ``0.25``.
    """

    def __init__(self, prune_ratio: float = 0.8, threshold_scale: float = 0.25) -> None:
        self.prune_ratio = check_fraction("prune_ratio", prune_ratio)
        self.threshold_scale = check_fraction(
            "threshold_scale", threshold_scale, low_open=True, high_open=False
        )

    @property
    def weight(self) -> float:
        """Loss multiplier of kept low-loss samples: ``1 / (1 - prune_ratio)``."""
        return 1.0 / (1.0 - self.prune_ratio)

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        """One coin per sample; drop the low-loss samples whose coin falls under the ratio."""
        below = MeanThreshold.of(scores).scaled(self.threshold_scale)
        return SoftPruning(self.prune_ratio).select_below(scores, generator, below)

    def __repr__(self) -> str:
        return (
            f"LowLossPruning(prune_ratio={self.prune_ratio}, "
            f"threshold_scale={self.threshold_scale})"
        )
