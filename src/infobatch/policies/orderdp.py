"""OrderDP (Jin et al., ICLR 2026): a uniformly random subset, then its top-q samples by loss."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..context import EpochContext
from ..rng import random_permutation
from ..rule import Selection, count_scored
from ._common import KeepBudget, check_fraction, cpu_scores, status_of, top_k

__all__ = ["OrderDP"]


class OrderDP:
    """Draw a random subset of ``S`` samples, keep its ``q`` highest scores, weight 1.

    Method note (Jin, Xu, Wang, Jia, Chen and Zeng, "OrderDP: A Theoretically Guaranteed
    Lossless Dynamic Data Pruning Framework", ICLR 2026, arXiv 2606.08574; written from the
    abstract and the authors' README and CIFAR sampler, none of their code copied): before each
    pruned epoch,

    1. draw ``S = round(subset_fraction * N)`` samples uniformly at random, without
       replacement (one permutation of the epoch's generator);
    2. keep the ``q`` of them with the highest scores (latest losses; never-scored samples
       rank first, ties broken at random, as :func:`~infobatch.policies._common.top_k`),
       where ``q`` is the epoch's budget: ``N - round(prune_ratio * N)`` or the epoch's entry
       of ``kept_counts``. The saving is therefore known exactly in advance. An epoch whose
       budget is every sample (``kept_counts`` copied from a run whose epoch 0 kept all)
       keeps all; any other budget larger than the subset is an error.

    Kept samples have weight 1, as in the authors' sampler. What the paper calls unbiased is
    the *surrogate* objective this selection optimises exactly in expectation: the sample of
    loss rank ``j`` (1 = highest) is kept with the hypergeometric probability
    ``p_j = sum_{m < q} C(j-1, m) C(N-j, S-1-m) / C(N, S)`` (it is in the subset and fewer than
    ``q`` subset members outrank it), so an epoch's expected gradient is that of
    ``sum_j p_j loss_(j)``, an ordered (L-statistic) loss that leans to hard samples, not the
    full-data mean: hence ``unbiased=False`` in :data:`~infobatch.policies.POLICIES`. The
    paper's convergence and generalisation analysis of that surrogate is not reproduced here.
    The authors' CIFAR defaults are ``subset_fraction=0.75`` with ``q = 0.85 S`` (a
    ``prune_ratio`` of ``1 - 0.75 * 0.85 = 0.3625``); their sampler prunes every epoch, with
    no full-data epochs at the end (``delta=1.0`` here; the sampler's ``delta`` is yours).
    Scores of samples not trained in an epoch stay as they were (no extra forward pass), as in
    the authors' code. Cost: one permutation of N and one sort of ``S`` scores per epoch, on
    the CPU. No state: the subset comes from the epoch's generator.

    Args:
        prune_ratio (float, optional): fraction dropped each epoch, in ``[0, 1)``.
        kept_counts (sequence of int, optional): samples kept (``q``) in epoch 0, 1, ... Give
            exactly one of the two.
        subset_fraction (float, optional): share ``S / N`` of the random subset, in
            ``(0, 1]``; the subset must hold at least the budget. Default: ``0.75``.
        top_fraction (float, optional): instead of ``subset_fraction``, size each epoch's
            subset so that its budget is this share of it (``S = ceil(q / top_fraction)``, at
            most ``N``): the paper's ``q = 0.85 S`` for any budget, e.g. InfoBatch's per-epoch
            ``kept_counts``. Default: ``None``.

    >>> from infobatch.policies import OrderDP
    >>> rule = OrderDP(prune_ratio=0.3625, subset_fraction=0.75)   # the authors' CIFAR setting
    """

    def __init__(
        self,
        prune_ratio: float | None = None,
        *,
        kept_counts: Sequence[int] | None = None,
        subset_fraction: float = 0.75,
        top_fraction: float | None = None,
    ) -> None:
        self.budget = KeepBudget.of(prune_ratio, kept_counts)
        self.subset_fraction = check_fraction(
            "subset_fraction", subset_fraction, low_open=True, high_open=False
        )
        self.top_fraction = (
            None
            if top_fraction is None
            else check_fraction("top_fraction", top_fraction, low_open=True, high_open=False)
        )
        ratio = self.budget.prune_ratio
        if top_fraction is None and ratio is not None and 1.0 - ratio > subset_fraction + 1e-12:
            raise ValueError(
                f"Invalid subset_fraction {subset_fraction} for prune_ratio {ratio}: the random "
                f"subset ({subset_fraction} of the samples) must hold the {1.0 - ratio:.4g} kept; "
                "raise subset_fraction to at least 1 - prune_ratio"
            )

    def subset_size(self, num_samples: int, count: int | None = None) -> int:
        """Samples in the random subset: ``round(subset_fraction * num_samples)``, or with
        ``top_fraction`` the ``min(num_samples, ceil(count / top_fraction))`` whose top
        ``top_fraction`` is the epoch's budget ``count``."""
        if self.top_fraction is not None and count is not None:
            return min(num_samples, math.ceil(count / self.top_fraction - 1e-9))
        return round(self.subset_fraction * num_samples)

    def select_for_epoch(
        self, scores: Tensor, generator: torch.Generator, context: EpochContext
    ) -> Selection:
        """A random subset of :meth:`subset_size` samples, then its budgeted top scores."""
        num_samples = scores.numel()
        count = self.budget.count(context.epoch, num_samples)
        size = self.subset_size(num_samples, count)
        if count == num_samples:  # an epoch that keeps everything (e.g. a matched epoch 0)
            size = num_samples
        if count > size:
            raise ValueError(
                f"OrderDP keeps {count} samples in epoch {context.epoch} but its random subset "
                f"holds {size} (subset_fraction={self.subset_fraction} of {num_samples}); "
                "raise subset_fraction or lower the kept count"
            )
        subset = random_permutation(num_samples, generator, torch.device("cpu"))[:size]
        best = top_k(cpu_scores(scores).index_select(0, subset), count, generator)
        status = status_of(subset.index_select(0, best), num_samples, scores.device)
        return Selection(status, 1.0, float("nan"), count_scored(scores), 0)

    def __repr__(self) -> str:
        sizing = (
            f"subset_fraction={self.subset_fraction}"
            if self.top_fraction is None
            else f"top_fraction={self.top_fraction}"
        )
        return f"OrderDP({self.budget}, {sizing})"
