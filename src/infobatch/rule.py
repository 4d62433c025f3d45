"""Pruning rules: which samples an epoch keeps and which kept samples are up-weighted.

A rule is any object with ``select(scores, generator) -> Selection``. The InfoBatch rule is
:class:`SoftPruning`; other policies (random baselines, budgets) plug in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Selection", "PruningRule", "SoftPruning", "KeepAll"]


@dataclass(frozen=True)
class Selection:
    """What a rule decided for one epoch.

    Attributes:
        keep: bool tensor ``[N]``, ``True`` for samples trained on this epoch.
        upweighted: bool tensor ``[N]``, kept samples whose loss is multiplied by ``weight``.
        weight: the factor applied to up-weighted samples (every other kept sample has 1).
        threshold: the score threshold used (``nan`` when nothing was scored or nothing pruned).
        num_scored: samples with a score when the rule ran.
        num_well_learned: scored samples below the threshold (candidates for pruning).
    """

    keep: Tensor
    upweighted: Tensor
    weight: float
    threshold: float
    num_scored: int
    num_well_learned: int


@runtime_checkable
class PruningRule(Protocol):
    """Decides an epoch's kept set from the scores (``nan`` = never scored)."""

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        """Return the epoch's :class:`Selection`; must be deterministic given ``generator``."""
        ...


class KeepAll:
    """Full data: every sample kept with weight 1 (used for annealing epochs)."""

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        """Keep everything; consumes no randomness."""
        n = scores.numel()
        keep = torch.ones(n, dtype=torch.bool, device=scores.device)
        upweighted = torch.zeros(n, dtype=torch.bool, device=scores.device)
        scored = int(torch.count_nonzero(~torch.isnan(scores)))
        return Selection(keep, upweighted, 1.0, float("nan"), scored, 0)


_MIN_CHUNK = 1 << 20
_MAX_CHUNKS = 16


def split_in_chunks(values: Tensor) -> tuple[Tensor, ...]:
    """Views of ``values`` (1-d) in at most 16 pieces of at least 2^20 elements.

    Bounds an 8-byte-per-element temporary made per piece to ``max(8 MiB, N / 2)`` bytes
    while keeping the number of (possibly multi-threaded) operations small.
    """
    size = max(_MIN_CHUNK, -(-values.numel() // _MAX_CHUNKS))
    return torch.split(values, size)


def _nansum64(values: Tensor) -> Tensor:
    """Sum of the non-nan ``values`` in float64, converting a chunk at a time (no ``8 N`` copy)."""
    parts = [torch.nansum(chunk, dtype=torch.float64) for chunk in split_in_chunks(values)]
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum()


def _round_up(value: Tensor, dtype: torch.dtype) -> Tensor:
    """Smallest ``dtype`` number ``>= value``, so ``x < result`` equals ``x < value`` exactly."""
    rounded = value.to(dtype)
    if bool(rounded.double() < value):
        rounded = torch.nextafter(rounded, torch.full_like(rounded, float("inf")))
    return rounded


@dataclass(frozen=True)
class SoftPruning:
    """The InfoBatch rule: drop each below-mean sample with probability ``prune_ratio``.

    Threshold is the mean over scored samples; unscored samples (``nan``) and samples at or above
    the threshold are always kept. Kept below-mean samples get weight ``1 / (1 - prune_ratio)``
    so the expected gradient equals full-data training. O(N) work, no sort.

    Args:
        prune_ratio (float): probability ``r`` of dropping a well-learned sample, in ``[0, 1)``.
    """

    prune_ratio: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.prune_ratio, bool) or not isinstance(self.prune_ratio, (int, float)):
            raise TypeError(f"prune_ratio must be a float, got {type(self.prune_ratio).__name__}")
        if not (0.0 <= self.prune_ratio < 1.0):
            raise ValueError(
                f"Invalid prune_ratio {self.prune_ratio}, prune_ratio should be in the interval "
                "[0, 1) (1 would drop every well-learned sample and make the rescaling infinite)"
            )

    @property
    def weight(self) -> float:
        """Loss multiplier of kept well-learned samples: ``1 / (1 - prune_ratio)``."""
        return 1.0 / (1.0 - self.prune_ratio)

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        """Flip one coin per sample; drop below-mean samples whose coin falls under the ratio."""
        scored = ~torch.isnan(scores)
        num_scored_t = torch.count_nonzero(scored)
        mean = _nansum64(scores) / num_scored_t.clamp(min=1)
        well_learned = scores < _round_up(mean, scores.dtype)  # nan < x: unscored never pruned
        coin = torch.rand(scores.shape, generator=generator, device=scores.device)
        drop = well_learned & (coin < self.prune_ratio)
        del coin
        num_scored, num_well = (
            int(v) for v in torch.stack([num_scored_t, torch.count_nonzero(well_learned)]).tolist()
        )
        threshold = float(mean) if num_scored else float("nan")
        keep = ~drop
        return Selection(keep, well_learned & keep, self.weight, threshold, num_scored, num_well)
