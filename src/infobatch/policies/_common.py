"""Pieces shared by the policies: per-epoch keep budgets, random top-k, status tensors.

The baseline policies run their selection on the CPU (the scores are copied there once per
epoch, 4 bytes per sample) and copy the ``int8`` status back to the scores' device: a sort or
a k-means pass is not the default path, and doing it on the CPU keeps every plan independent
of the device (ties and reductions behave the same everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..context import EpochContext
from ..rng import random_permutation
from ..rule import KEPT, PRUNED

__all__ = ["KeepBudget", "check_fraction", "status_of", "top_k", "cpu_scores"]


def check_fraction(
    name: str, value: Any, *, low_open: bool = False, high_open: bool = True
) -> float:
    """``value`` as a float in ``[0, 1)`` (or the interval the flags say); else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok and math.isfinite(value)):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"Invalid {name} {value}, {name} should be in the interval {interval}")
    return float(value)


@dataclass(frozen=True)
class KeepBudget:
    """How many samples an epoch keeps: a fixed ratio, or one count per epoch.

    Exactly one of the two is given. ``prune_ratio=r`` keeps ``N - round(r * N)`` samples in
    every pruned epoch. ``kept_counts=[k0, k1, ...]`` keeps ``k_e`` samples in epoch ``e`` (for
    example the per-epoch kept counts of an InfoBatch run, to compare policies at the same
    realised budget); planning an epoch past the list is an error.

    Args:
        prune_ratio (float, optional): fraction of the samples dropped each epoch, ``[0, 1)``.
        kept_counts (sequence of int, optional): samples kept in epoch 0, 1, ...
    """

    prune_ratio: float | None = None
    kept_counts: tuple[int, ...] | None = None

    @classmethod
    def of(cls, prune_ratio: float | None, kept_counts: Sequence[int] | None) -> KeepBudget:
        """Validated budget from the two optional arguments (exactly one must be given)."""
        if (prune_ratio is None) == (kept_counts is None):
            raise ValueError(
                "give exactly one of prune_ratio (a fraction dropped every epoch) and "
                f"kept_counts (samples kept per epoch), got prune_ratio={prune_ratio!r} and "
                f"kept_counts={kept_counts!r}"
            )
        if prune_ratio is not None:
            return cls(prune_ratio=check_fraction("prune_ratio", prune_ratio))
        counts = tuple(kept_counts or ())
        for count in counts:
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError(f"kept_counts must hold ints, got {type(count).__name__}")
            if count < 0:
                raise ValueError(f"Invalid kept count {count} in kept_counts, counts must be >= 0")
        return cls(kept_counts=counts)

    def count(self, epoch: int, num_samples: int) -> int:
        """Samples to keep in ``epoch`` out of ``num_samples``."""
        if self.prune_ratio is not None:
            return num_samples - round(self.prune_ratio * num_samples)
        counts = self.kept_counts or ()
        if epoch >= len(counts):
            raise ValueError(
                f"asked to plan epoch {epoch} but kept_counts has {len(counts)} entries "
                f"(epochs 0 to {len(counts) - 1}); give one count per pruned epoch"
            )
        if counts[epoch] > num_samples:
            raise ValueError(
                f"Invalid kept count {counts[epoch]} for epoch {epoch}: the dataset has "
                f"{num_samples} samples"
            )
        return counts[epoch]

    def count_for(self, context: EpochContext) -> int:
        """:meth:`count` for the context's epoch and dataset size."""
        return self.count(context.epoch, context.num_samples)


def cpu_scores(scores: Tensor) -> Tensor:
    """The scores as a float32 CPU tensor (a copy only when they live elsewhere)."""
    return scores.detach().to(device="cpu", dtype=torch.float32)


def status_of(kept: Tensor, num_samples: int, device: torch.device) -> Tensor:
    """``int8`` status on ``device``: ``KEPT`` at the indices ``kept``, ``PRUNED`` elsewhere."""
    status = torch.full((num_samples,), PRUNED, dtype=torch.int8)
    status[kept] = KEPT
    return status.to(device)


def top_k(priority: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Indices of the ``k`` largest ``priority`` values (CPU), ties broken uniformly at random.

    ``nan`` ranks above everything (a sample never scored is the most uncertain). The priorities
    are visited in a random order from ``generator`` and sorted stably, so equal priorities
    are kept in that random order: deterministic given the generator, on any device.
    """
    n = priority.numel()
    if not 0 <= k <= n:
        raise ValueError(f"Invalid k {k}, k should be in [0, {n}]")
    shuffle = random_permutation(n, generator, torch.device("cpu"))
    values = priority.index_select(0, shuffle).double()
    values = torch.where(torch.isnan(values), math.inf, values)
    order = torch.sort(values, descending=True, stable=True).indices[:k]
    return shuffle.index_select(0, order)
