"""An epoch plan: the shuffled kept indices and each sample's weight class."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .rule import KeepAll, PruningRule, Selection, split_in_chunks

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
        upweighted = self.status.index_select(0, indices) == UPWEIGHTED
        return torch.where(upweighted, self.weight, 1.0)

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

    The kept indices, in ascending order, are put in a uniformly random order by one
    permutation of their count: the same distribution as filtering a permutation of all ``N``
    samples, at a fraction of the cost. Deterministic given ``generator``. O(N), no sort, and
    no ``N``-sized ``int64`` temporaries.
    """
    n = scores.numel()
    dtype = index_dtype(n)
    selection: Selection = (rule or KeepAll()).select(scores, generator)
    if rule is None:
        order = torch.randperm(n, generator=generator, device=scores.device, dtype=dtype)
    else:
        order = _shuffled_kept(selection.keep, generator, dtype)
    status = selection.keep.to(torch.int8)
    status += selection.upweighted  # bool adds as 0/1
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


def _kept_indices(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """Ascending indices of ``keep``'s ``True`` entries as ``dtype``, found a chunk at a time.

    ``torch.nonzero`` returns ``int64`` (and ``masked_select`` allocates several ``N``-sized
    buffers); chunking bounds the ``int64`` temporary to a chunk.
    """
    chunks = split_in_chunks(keep)
    if len(chunks) == 1:
        return torch.nonzero(keep).view(-1).to(dtype)
    kept = torch.empty(int(torch.count_nonzero(keep)), dtype=dtype, device=keep.device)
    start = filled = 0
    for chunk in chunks:
        part = torch.nonzero(chunk).view(-1)
        kept[filled : filled + part.numel()].copy_(part).add_(start)
        filled += part.numel()
        start += chunk.numel()
    return kept


def _shuffled_kept(keep: Tensor, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """The indices of ``keep``'s ``True`` entries in a uniformly random order from ``generator``."""
    kept = _kept_indices(keep, dtype)
    permutation = torch.randperm(
        kept.numel(), generator=generator, device=kept.device, dtype=kept.dtype
    )
    return torch.index_select(kept, 0, permutation)
