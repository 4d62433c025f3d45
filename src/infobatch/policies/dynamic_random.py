"""Dynamic uniform random pruning: a fresh random subset of a fixed size every epoch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..context import EpochContext
from ..rng import random_permutation
from ..rule import Selection, count_scored
from ._common import KeepBudget, status_of

__all__ = ["DynamicRandom"]


class DynamicRandom:
    """Keep a uniformly random subset of a given size in every pruned epoch, weight 1.

    Method note: each epoch draws a new subset of ``K`` samples uniformly at random, whatever
    their scores (Raju et al. 2021 found this "dynamic random" pruning a strong baseline at
    high pruning rates; the InfoBatch paper uses it as its random baseline). Every sample has
    the same chance ``K / N`` to be trained on, so the batch mean is already an unbiased
    estimate of the full-data gradient and no rescaling is needed (weight 1). The size is a
    ratio (``prune_ratio``) or one count per epoch (``kept_counts``, e.g. the per-epoch kept
    counts of an InfoBatch run, to compare at the same realised budget). Scores are ignored;
    unscored samples are pruned like any other. O(N) per epoch (one permutation).

    It is an :class:`~infobatch.EpochAwareRule` (the epoch picks its count) and keeps no state:
    a resumed run plans exactly as the uninterrupted one.

    Args:
        prune_ratio (float, optional): fraction dropped each epoch, in ``[0, 1)``.
        kept_counts (sequence of int, optional): samples kept in epoch 0, 1, ... Give exactly
            one of the two.

    >>> from infobatch.policies import DynamicRandom
    >>> rule = DynamicRandom(prune_ratio=0.3)   # InfoBatch(dataset, epochs, rule=rule)
    """

    def __init__(
        self, prune_ratio: float | None = None, *, kept_counts: Sequence[int] | None = None
    ) -> None:
        self.budget = KeepBudget.of(prune_ratio, kept_counts)

    def select_for_epoch(
        self, scores: Tensor, generator: torch.Generator, context: EpochContext
    ) -> Selection:
        """Keep the epoch's budgeted number of samples, drawn uniformly at random."""
        num_samples = scores.numel()
        count = self.budget.count(context.epoch, num_samples)
        kept = random_permutation(num_samples, generator, torch.device("cpu"))[:count]
        status = status_of(kept, num_samples, scores.device)
        return Selection(status, 1.0, float("nan"), count_scored(scores), 0)

    def __repr__(self) -> str:
        budget = self.budget
        what = (
            f"prune_ratio={budget.prune_ratio}"
            if budget.prune_ratio is not None
            else f"kept_counts={list(budget.kept_counts or ())}"
        )
        return f"DynamicRandom({what})"
