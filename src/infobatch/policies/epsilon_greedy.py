"""Epsilon-greedy dynamic pruning (Raju et al. 2021): mostly the highest scores, some at random."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..context import EpochContext
from ..rng import random_permutation
from ..rule import Selection, count_scored
from ._common import KeepBudget, check_fraction, cpu_scores, status_of, top_k

__all__ = ["EpsilonGreedy"]


class EpsilonGreedy:
    """Keep the highest-scoring samples (exploit) plus a random share of the rest (explore).

    Method note (the formulation implemented; Raju et al. 2021, "Accelerating Deep Learning
    with Dynamic Data Pruning", as the InfoBatch paper's baseline): each pruned epoch keeps a
    budget of ``K`` samples. ``K - round(epsilon * K)`` of them are the samples with the highest
    scores (the latest losses: the least-learned samples, ties broken at random, never-scored
    samples first), and the remaining ``round(epsilon * K)`` are drawn uniformly at random from
    the samples not yet chosen, so every sample is revisited now and then and its stale score
    refreshed. Kept samples have weight 1: the selection is biased towards hard samples by
    design, which is what the InfoBatch paper contrasts with its unbiased rescaling. Cost: one
    sort of the N scores per epoch, on the CPU.

    Args:
        prune_ratio (float, optional): fraction dropped each epoch, in ``[0, 1)``.
        kept_counts (sequence of int, optional): samples kept in epoch 0, 1, ... (give exactly
            one of the two).
        epsilon (float, optional): share of the budget drawn at random, in ``[0, 1]``.
            Default: ``0.1``.
    """

    def __init__(
        self,
        prune_ratio: float | None = None,
        *,
        kept_counts: Sequence[int] | None = None,
        epsilon: float = 0.1,
    ) -> None:
        self.budget = KeepBudget.of(prune_ratio, kept_counts)
        self.epsilon = check_fraction("epsilon", epsilon, high_open=False)

    def select_for_epoch(
        self, scores: Tensor, generator: torch.Generator, context: EpochContext
    ) -> Selection:
        """The top ``K - round(epsilon K)`` scores, then ``round(epsilon K)`` others at random."""
        num_samples = scores.numel()
        count = self.budget.count(context.epoch, num_samples)
        explore = round(self.epsilon * count)
        values = cpu_scores(scores)
        greedy = top_k(values, count - explore, generator)
        rest = torch.ones(num_samples, dtype=torch.bool)
        rest[greedy] = False
        candidates = rest.nonzero().view(-1)
        pick = random_permutation(candidates.numel(), generator, torch.device("cpu"))[:explore]
        kept = torch.cat([greedy, candidates.index_select(0, pick)])
        status = status_of(kept, num_samples, scores.device)
        return Selection(status, 1.0, float("nan"), count_scored(scores), 0)

    def __repr__(self) -> str:
        return f"EpsilonGreedy({self.budget}, epsilon={self.epsilon})"
