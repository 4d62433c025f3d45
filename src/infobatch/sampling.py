"""Your own sampling distribution (class-balanced, weighted), composed with pruning.

Each epoch, :class:`WeightedSampling` draws ``num_draws`` dataset indices independently with
probabilities proportional to ``weights`` (with replacement, as
``torch.utils.data.WeightedRandomSampler`` does), from the epoch's CPU generator, so every rank
and a resumed run draw the same. The pruning rule then decides per *sample* (its status), and
the epoch trains the draws whose sample was kept, in draw order, each with its sample's weight.

Why this stays unbiased: the draws and the pruning coins are independent, a pruned sample's
draws are all skipped with the probability ``r`` that its rescaling ``1 / (1 - r)`` undoes, so
for every draw ``E[kept * weight] = 1`` and the expected gradient of the epoch equals the
gradient of all its draws: exactly the objective of your weighted sampler. What it cannot make
unbiased: a sampler that adapts to what was trained (its input is then changed by the
pruning), and a sampler infobatch cannot reproduce (arbitrary ``Sampler`` objects: under
``torch.distributed`` every rank and every resumed run must draw the same indices, so give the
weights instead of the sampler).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Union

import torch
from torch import Tensor

from .hashing import hash_int64
from .plan import PRUNED, EpochPlan, index_dtype
from .rng import check_generator

__all__ = ["WeightedSampling", "class_balanced_weights"]

WeightsLike = Union[Tensor, Sequence[float]]

_CHUNK = 1 << 20


def class_balanced_weights(labels: WeightsLike) -> Tensor:
    """Per-sample weights ``1 / count(label)``: every class is drawn equally often."""
    labels_t = torch.as_tensor(labels)
    if labels_t.ndim != 1 or labels_t.dtype.is_floating_point or labels_t.dtype == torch.bool:
        raise TypeError(f"labels must be a 1-d integer tensor, got {labels_t.dtype}")
    _, inverse, counts = torch.unique(labels_t, return_inverse=True, return_counts=True)
    weights: Tensor = counts.double().reciprocal()[inverse]
    return weights


@dataclass(frozen=True)
class WeightedSampling:
    """Draw each epoch's samples with replacement, proportionally to ``weights``.

    Args:
        weights (Tensor or sequence of float): one non-negative weight per dataset sample, not
            all zero (e.g. :func:`class_balanced_weights`).
        num_draws (int, optional): draws per epoch. Default: the dataset size.
    """

    weights: Tensor
    num_draws: int

    def __init__(self, weights: WeightsLike, num_draws: int | None = None) -> None:
        values = torch.as_tensor(weights, dtype=torch.float64).cpu()
        if values.ndim != 1 or values.numel() == 0:
            raise ValueError(f"weights must be one value per sample, got shape {values.shape}")
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError("weights must be finite and non-negative")
        if float(values.sum()) <= 0:
            raise ValueError("weights are all zero; give at least one sample a positive weight")
        draws = values.numel() if num_draws is None else num_draws
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"Invalid num_draws {num_draws!r}, num_draws should be >= 1")
        object.__setattr__(self, "weights", values)
        object.__setattr__(self, "num_draws", draws)

    def digest(self) -> int:
        """A 64-bit hash of the weights' bits and the number of draws (to compare settings)."""
        return int(hash_int64(self.weights.view(torch.int64))) ^ self.num_draws

    def draw(self, generator: torch.Generator) -> Tensor:
        """``num_draws`` indices (int64, CPU) by inverse-CDF sampling from the CPU generator.

        O(N + D log N) for N samples and D draws; a float64 cumulative sum of N entries.
        """
        check_generator(generator)
        cumulative = torch.cumsum(self.weights, 0)
        total = cumulative[-1]
        draws = torch.empty(self.num_draws, dtype=torch.int64)
        for chunk in torch.split(draws, _CHUNK):
            uniforms = torch.rand(chunk.numel(), generator=generator, dtype=torch.float64)
            found = torch.searchsorted(cumulative, uniforms * total, right=True)
            chunk.copy_(found.clamp_(max=self.weights.numel() - 1))
        return draws

    def compose(self, plan: EpochPlan, generator: torch.Generator) -> EpochPlan:
        """The epoch's draws whose sample ``plan`` kept, in draw order, as a new plan."""
        if plan.status.numel() != self.weights.numel():
            raise ValueError(
                f"WeightedSampling has {self.weights.numel()} weights but the dataset has "
                f"{plan.status.numel()} samples; give one weight per sample"
            )
        draws = self.draw(generator).to(plan.status.device)
        kept = plan.status.index_select(0, draws) != PRUNED
        order = draws[kept].to(index_dtype(plan.status.numel()))
        return replace(plan, order=order, epoch_size=self.num_draws)
