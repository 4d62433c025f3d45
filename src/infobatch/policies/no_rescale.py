"""InfoBatch without expectation rescaling (an ablation)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..rule import KEPT, Selection, SoftPruning

__all__ = ["NoRescale"]


class NoRescale:
    """InfoBatch's soft pruning (same threshold, same coin flips) with every weight 1.

    Method note: the ablation of the paper's expectation rescaling. Samples below the mean
    score are dropped with probability ``prune_ratio`` exactly as :class:`~infobatch.SoftPruning`
    drops them (the same draws for the same generator), but the kept well-learned samples keep
    weight 1, so each pruned epoch under-weights the well-learned part of the data by
    ``1 - prune_ratio``: the gradient is biased towards the hard samples. The kept set equals
    InfoBatch's for the same seed, so any accuracy difference is the rescaling's. O(N), no sort.

    Args:
        prune_ratio (float, optional): probability of dropping a below-mean sample, in
            ``[0, 1)``. Default: ``0.5``.
    """

    def __init__(self, prune_ratio: float = 0.5) -> None:
        self.soft = SoftPruning(prune_ratio)

    @property
    def prune_ratio(self) -> float:
        """The probability of dropping a below-mean sample."""
        return self.soft.prune_ratio

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        """Soft pruning's kept set; no sample is up-weighted."""
        chosen = self.soft.select(scores, generator)
        return Selection(
            chosen.status.clamp_(max=KEPT),  # UPWEIGHTED -> KEPT
            1.0,
            chosen.threshold,
            chosen.num_scored,
            chosen.num_well_learned,
        )

    def __repr__(self) -> str:
        return f"NoRescale(prune_ratio={self.prune_ratio})"
