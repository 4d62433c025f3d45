"""Baseline pruning rules for the benchmark, plugged into the sampler's ``rule=`` hook.

They live here, not in the package: a later release will make baselines a named, public
feature. Each is a :class:`infobatch.PruningRule` (``select(scores, generator) -> Selection``),
so every policy runs through the same sampler, loader and training loop as InfoBatch.

- :class:`DynamicRandom`: each epoch keeps a given number of samples drawn uniformly at random
  (the number InfoBatch kept in that epoch), no rescaling.
- :class:`StaticRandom`: one random subset, drawn once and used for every epoch, no rescaling.
- :class:`NoRescale`: InfoBatch's soft pruning with every weight 1 (ablation).
- No annealing needs no rule: InfoBatch with ``delta=1.0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from infobatch import KEPT, Selection, SoftPruning
from infobatch.rng import random_permutation
from infobatch.rule import count_scored

__all__ = ["DynamicRandom", "StaticRandom", "NoRescale"]


def _check_count(name: str, count: int, num_samples: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"{name} must be an int, got {type(count).__name__}")
    if not 0 <= count <= num_samples:
        raise ValueError(f"Invalid {name} {count}, {name} should be in [0, {num_samples}]")


class DynamicRandom:
    """Keep exactly ``kept_counts[i]`` samples, uniformly at random, in the i-th pruned epoch.

    The sampler calls ``select`` once per pruned epoch, in epoch order, so the i-th call plans
    epoch ``i``; pass the per-epoch kept counts of an InfoBatch run with the same ``delta`` to
    prune the same number of samples per epoch (the same realised budget). Kept samples have
    weight 1 (the paper's dynamic random baseline does not rescale).

    Args:
        kept_counts (sequence of int): samples to keep in each pruned epoch.
    """

    def __init__(self, kept_counts: Sequence[int]) -> None:
        self.kept_counts = [int(c) for c in kept_counts]
        if any(c < 0 for c in self.kept_counts):
            raise ValueError(f"kept_counts must be >= 0, got {self.kept_counts}")
        self.calls = 0

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        """Keep the budgeted number of samples of this epoch, chosen uniformly at random."""
        if self.calls >= len(self.kept_counts):
            raise RuntimeError(
                f"DynamicRandom was asked to plan pruned epoch {self.calls} but has kept counts "
                f"for {len(self.kept_counts)} epochs; give one count per pruned epoch"
            )
        num_samples = scores.numel()
        count = self.kept_counts[self.calls]
        _check_count("kept count", count, num_samples)
        chosen = random_permutation(num_samples, generator, scores.device)[:count]
        status = torch.zeros(num_samples, dtype=torch.int8, device=scores.device)  # PRUNED
        status[chosen] = KEPT
        self.calls += 1
        return Selection(status, 1.0, float("nan"), count_scored(scores), 0)


class StaticRandom:
    """One random subset of ``subset_size`` samples, the same in every epoch, weight 1.

    The subset is drawn once from its own generator seeded with ``seed`` (the epoch generators
    are not used), so it is fixed across epochs. Use it with ``delta=1.0`` so every epoch is
    planned by this rule.

    Args:
        subset_size (int): samples kept in every epoch.
        seed (int): seed of the subset draw.
    """

    def __init__(self, subset_size: int, seed: int) -> None:
        if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 0:
            raise ValueError(f"Invalid subset_size {subset_size!r}, it should be an int >= 0")
        self.subset_size = subset_size
        self.seed = seed
        self._keep: Tensor | None = None

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        """Return the fixed subset (drawn on the first call)."""
        num_samples = scores.numel()
        _check_count("subset_size", self.subset_size, num_samples)
        if self._keep is None or self._keep.numel() != num_samples:
            own = torch.Generator().manual_seed(self.seed)
            chosen = torch.randperm(num_samples, generator=own)[: self.subset_size]
            keep = torch.zeros(num_samples, dtype=torch.bool)
            keep[chosen] = True
            self._keep = keep
        status = self._keep.to(device=scores.device, dtype=torch.int8)  # KEPT or PRUNED
        return Selection(status, 1.0, float("nan"), count_scored(scores), 0)


class NoRescale:
    """InfoBatch's soft pruning (same threshold, same coin flips) with every weight 1.

    Args:
        prune_ratio (float): probability of dropping a below-mean sample. Default ``0.5``.
    """

    def __init__(self, prune_ratio: float = 0.5) -> None:
        self.soft = SoftPruning(prune_ratio)

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
