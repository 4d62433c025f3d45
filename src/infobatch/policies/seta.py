"""SeTa (Zhou et al., CVPR 2025): random down-sampling, loss groups, an easy-to-hard window."""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import Tensor

from ..context import EpochContext
from ..rng import random_permutation
from ..rule import Selection
from ._common import check_fraction, cpu_scores, status_of
from .kmeans import kmeans_1d

__all__ = ["SeTa"]


class SeTa:
    """Scale Efficient Training: drop a random share, then a sliding window over loss groups.

    Method note (Zhou, Gao and Wang, "Scale Efficient Training for Large Datasets", CVPR 2025;
    written from the paper and its README, parameters named as there): before each epoch,

    1. *random down-sampling*: keep ``N - round(prune_ratio * N)`` samples uniformly at random
       (redundant samples go, whatever their loss);
    2. *grouping*: cluster the kept samples' scores (latest losses) into ``num_groups`` groups
       with 1-d k-means (:func:`~infobatch.policies.kmeans.kmeans_1d`, O(N k) per iteration),
       ordered from the lowest-loss (easiest) to the highest-loss group;
    3. *sliding window*: keep ``w = round(num_groups * window_scale)`` consecutive groups,
       the window starting at group ``t mod (num_groups - w + 1)`` in the ``t``-th pruned epoch
       (epoch 0 keeps every group): the window slides from the easy groups to the hard ones
       and wraps around, so both the easiest (little to learn) and the hardest (too hard now)
       groups are skipped in turn;
    4. *partial annealing*: in the epochs at or after ``ceil(delta * num_epochs)`` only the
       random down-sampling of step 1 applies.

    No rescaling (weight 1): the selection is biased by design. Samples never scored stay in
    after step 1 whatever the window. The README's lossless CIFAR setting is
    ``prune_ratio=0.1, num_groups=5, window_scale=0.9`` (``w = round(4.5) = 4``, Python's
    rounding, as the authors' code: windows of groups 0-3 and 1-4 alternate). SeTa does its
    own annealing, so build the sampler with ``delta=1.0``
    (``POLICIES["seta"].delta``). No state: the window position is the epoch.

    Args:
        prune_ratio (float, optional): share dropped at random each epoch, ``[0, 1)``.
            Default: ``0.1``.
        num_groups (int, optional): k-means groups, ``>= 1``. Default: ``5``.
        window_scale (float, optional): share of the groups in the window, ``(0, 1]``.
            Default: ``0.9``.
        delta (float, optional): share of the epochs with the window; later epochs are
            partially annealed. Default: ``0.875``.
        kmeans_iterations (int, optional): most Lloyd rounds per epoch. Default: ``30``.
    """

    def __init__(
        self,
        prune_ratio: float = 0.1,
        num_groups: int = 5,
        window_scale: float = 0.9,
        delta: float = 0.875,
        *,
        kmeans_iterations: int = 30,
    ) -> None:
        self.prune_ratio = check_fraction("prune_ratio", prune_ratio)
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"Invalid num_groups {num_groups!r}, num_groups should be an int >= 1")
        self.num_groups = num_groups
        self.window_scale = check_fraction(
            "window_scale", window_scale, low_open=True, high_open=False
        )
        if round(num_groups * self.window_scale) < 1:
            raise ValueError(
                f"window_scale {window_scale} with num_groups {num_groups} gives an empty window "
                f"(round({num_groups} * {window_scale}) = 0); raise either"
            )
        self.delta = check_fraction("delta", delta, high_open=False)
        self.kmeans_iterations = kmeans_iterations

    @property
    def window_size(self) -> int:
        """Groups in the window: ``round(num_groups * window_scale)``."""
        return round(self.num_groups * self.window_scale)

    def window(self, step: int, groups: int) -> range:
        """Groups kept at the ``step``-th pruned epoch when there are ``groups`` groups."""
        size = min(self.window_size, groups)
        if step == 0 or groups == 0:
            return range(groups)
        start = step % (groups - size + 1)
        return range(start, start + size)

    def annealing(self, context: EpochContext) -> bool:
        """Whether ``context.epoch`` is past SeTa's own annealing boundary."""
        if context.num_epochs is None:
            return False
        boundary = math.ceil(Fraction(str(self.delta)) * context.num_epochs)
        return context.epoch >= boundary

    def select_for_epoch(
        self, scores: Tensor, generator: torch.Generator, context: EpochContext
    ) -> Selection:
        """Steps 1-3 (or 1 and 4 once annealing); see the class notes."""
        num_samples = scores.numel()
        keep = num_samples - round(self.prune_ratio * num_samples)
        sampled = random_permutation(num_samples, generator, torch.device("cpu"))[:keep]
        values = cpu_scores(scores).index_select(0, sampled)
        scored = ~torch.isnan(values)
        num_scored = int(scored.sum())
        if self.annealing(context) or num_scored == 0:
            return Selection(
                status_of(sampled, num_samples, scores.device), 1.0, math.nan, num_scored, 0
            )
        labels, centres = kmeans_1d(
            values[scored], self.num_groups, generator, self.kmeans_iterations
        )
        window = self.window(context.epoch, centres.numel())
        in_window = (labels >= window.start) & (labels < window.stop)
        kept_scored = sampled[scored][in_window]
        kept = torch.cat([sampled[~scored], kept_scored])
        status = status_of(kept, num_samples, scores.device)
        dropped = num_scored - kept_scored.numel()
        return Selection(status, 1.0, math.nan, num_scored, dropped)

    def __repr__(self) -> str:
        return (
            f"SeTa(prune_ratio={self.prune_ratio}, num_groups={self.num_groups}, "
            f"window_scale={self.window_scale}, delta={self.delta})"
        )
