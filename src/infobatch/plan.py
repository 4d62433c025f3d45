"""An epoch plan: the shuffled kept indices and each sample's weight class."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .rule import KeepAll, PruningRule, Selection

__all__ = ["EpochPlan", "build_plan", "index_dtype", "PRUNED", "KEPT", "UPWEIGHTED"]

#: Values of :attr:`EpochPlan.status`.
PRUNED, KEPT, UPWEIGHTED = 0, 1, 2


def index_dtype(num_samples: int) -> torch.dtype:
    """``int32`` while every index fits (half the memory of ``int64``), else ``int64``."""
    return torch.int32 if num_samples <= torch.iinfo(torch.int32).max else torch.int64


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch trains on. Identical on every rank given the same scores and generator.

    Attributes:
        epoch: the epoch index (0-based).
        order: kept sample indices in training order (``int32`` or ``int64``).
        status: int8 ``[N]``: ``PRUNED`` (0), ``KEPT`` (1) or ``UPWEIGHTED`` (2).
        weight: loss multiplier of ``UPWEIGHTED`` samples; every other kept sample has 1.
        threshold: score threshold of the rule (``nan`` if none).
        num_scored: samples that had a score when the plan was made.
        num_well_learned: scored samples below the threshold.
        pruning: whether the pruning rule ran (``False`` in annealing epochs).
    """

    epoch: int
    order: Tensor
    status: Tensor
    weight: float
    threshold: float
    num_scored: int
    num_well_learned: int
    pruning: bool

    @property
    def num_samples(self) -> int:
        """Size of the dataset."""
        return self.status.numel()

    @property
    def num_kept(self) -> int:
        """Samples trained on this epoch (before any distributed padding)."""
        return self.order.numel()

    @property
    def num_pruned(self) -> int:
        """Samples skipped this epoch."""
        return self.num_samples - self.num_kept

    def weights_of(self, indices: Tensor) -> Tensor:
        """float32 loss weights of ``indices`` (a tensor on the plan's device)."""
        upweighted = self.status[indices] == UPWEIGHTED
        return torch.where(upweighted, self.weight, 1.0).to(torch.float32)

    def share(self, rank: int, num_replicas: int) -> Tensor:
        """Rank ``rank``'s part of ``order``: every ``num_replicas``-th index, starting at ``rank``.

        The order is first padded by repeating its head so all ranks get
        ``ceil(num_kept / num_replicas)`` indices (the same number of batches on every rank,
        as :class:`torch.utils.data.DistributedSampler` does). With one replica it is ``order``.
        """
        if num_replicas == 1:
            return self.order
        per_rank = math.ceil(self.num_kept / num_replicas)
        total = per_rank * num_replicas
        padded = self.order
        if total > self.num_kept and self.num_kept > 0:
            repeats = math.ceil(total / self.num_kept)
            padded = self.order.repeat(repeats)[:total]
        return padded[rank:total:num_replicas].contiguous()

    def to(self, device: torch.device) -> EpochPlan:
        """The same plan with its tensors on ``device``."""
        return EpochPlan(
            self.epoch,
            self.order.to(device),
            self.status.to(device),
            self.weight,
            self.threshold,
            self.num_scored,
            self.num_well_learned,
            self.pruning,
        )


def build_plan(
    epoch: int, scores: Tensor, rule: PruningRule | None, generator: torch.Generator
) -> EpochPlan:
    """Plan ``epoch``: apply ``rule`` (``None`` = keep all) and shuffle the kept samples.

    The shuffle draws one permutation of all ``N`` samples and filters it by the kept mask, so
    randomness used does not depend on how many were kept. O(N), no sort.
    """
    n = scores.numel()
    selection: Selection = (rule or KeepAll()).select(scores, generator)
    permutation = torch.randperm(n, generator=generator, device=scores.device, dtype=index_dtype(n))
    if rule is None:
        order = permutation
    else:
        kept_in_order = selection.keep.view(torch.uint8)[permutation].view(torch.bool)
        order = permutation[kept_in_order]
    status = selection.keep.to(torch.int8)
    status += selection.upweighted.to(torch.int8)
    return EpochPlan(
        epoch=epoch,
        order=order,
        status=status,
        weight=selection.weight,
        threshold=selection.threshold,
        num_scored=selection.num_scored,
        num_well_learned=selection.num_well_learned,
        pruning=rule is not None,
    )
