"""Pruning rules: which samples an epoch keeps and which kept samples are up-weighted.

A rule is any object with ``select(scores, generator) -> Selection``: it returns one ``int8``
status per sample (:data:`PRUNED`, :data:`KEPT` or :data:`UPWEIGHTED`), the weight of the
up-weighted samples and a few statistics. The InfoBatch rule is :class:`SoftPruning`; other
policies (random baselines, budgets, bandits) plug in the same way, e.g.::

    class KeepRandomHalf:
        def select(self, scores, generator):
            keep = infobatch.rng.random_mask(scores.numel(), 0.5, generator, scores.device)
            return Selection(keep.to(torch.int8), 1.0, float("nan"), count_scored(scores), 0)

(a ``bool`` mask converted to ``int8`` is exactly ``KEPT`` where ``True``, ``PRUNED`` elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .rng import random_mask

__all__ = [
    "Selection",
    "PruningRule",
    "SoftPruning",
    "MeanThreshold",
    "KeepAll",
    "PRUNED",
    "KEPT",
    "UPWEIGHTED",
    "count_scored",
    "check_sample_weights",
    "mean_upweighted",
]

#: Status of a sample not trained on this epoch.
PRUNED = 0
#: Status of a sample trained on with weight 1.
KEPT = 1
#: Status of a sample trained on with its loss multiplied by :attr:`Selection.weight` (or by
#: its own entry of :attr:`Selection.sample_weights`, when the rule gives them).
UPWEIGHTED = 2


@dataclass(frozen=True)
class Selection:
    """What a rule decided for one epoch.

    Attributes:
        status: ``int8`` tensor ``[N]`` on the scores' device, one of :data:`PRUNED` (0, not
            trained on this epoch), :data:`KEPT` (1, weight 1) or :data:`UPWEIGHTED` (2, loss
            multiplied by ``weight``). One byte per sample: a rule need not build any other
            ``N``-sized mask. :func:`~infobatch.build_plan` takes it over, without a copy, as
            the plan's status, so return a fresh tensor each call and do not modify it later.
        weight: the factor applied to up-weighted samples, finite and positive.
        threshold: the score threshold used (``nan`` when there is none).
        num_scored: samples with a score (not ``nan``) when the rule ran.
        num_well_learned: scored samples the rule considered for pruning (below the threshold).
        sample_weights: optional per-sample loss weights, float32 ``[N]`` on the status'
            device, finite and positive at every kept sample (pruned entries are ignored).
            When given, every kept sample's loss is multiplied by its own entry, whatever its
            status (``KEPT`` and ``UPWEIGHTED`` then only tell the statistics apart), and
            ``weight`` is a summary for the statistics (:func:`mean_upweighted` gives the
            mean over the up-weighted samples). ``None`` (the default): ``weight`` for
            ``UPWEIGHTED``, 1 for ``KEPT``. The plan takes it over without a copy.
    """

    status: Tensor
    weight: float
    threshold: float
    num_scored: int
    num_well_learned: int
    sample_weights: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.status, Tensor) or self.status.dtype != torch.int8:
            kind = getattr(self.status, "dtype", type(self.status).__name__)
            raise TypeError(
                f"Selection.status must be an int8 tensor of PRUNED/KEPT/UPWEIGHTED, got {kind} "
                "(a bool keep mask becomes one with keep.to(torch.int8))"
            )
        if self.status.ndim != 1:
            raise ValueError(
                f"Selection.status must have one entry per sample, got shape "
                f"{tuple(self.status.shape)}"
            )
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"Selection.weight must be finite and positive, got {self.weight}")
        if self.sample_weights is not None:
            check_sample_weights(self.sample_weights, self.status)

    @property
    def keep(self) -> Tensor:
        """bool ``[N]``: samples trained on this epoch (computed on access)."""
        return self.status != PRUNED

    @property
    def upweighted(self) -> Tensor:
        """bool ``[N]``: samples marked ``UPWEIGHTED`` (computed on access); their loss is
        multiplied by ``weight``, or by their own entry of ``sample_weights`` when given."""
        return self.status == UPWEIGHTED


def check_sample_weights(weights: Tensor, status: Tensor) -> None:
    """Raise a clear error unless ``weights`` are valid per-sample weights for ``status``.

    They must be a float32 tensor of ``status``'s shape on its device, finite and positive
    wherever ``status`` is not ``PRUNED`` (one pass, one host sync).
    """
    if not isinstance(weights, Tensor) or weights.dtype != torch.float32:
        kind = getattr(weights, "dtype", type(weights).__name__)
        raise TypeError(
            f"Selection.sample_weights must be a float32 tensor of one weight per sample, got "
            f"{kind}"
        )
    if weights.shape != status.shape or weights.device != status.device:
        raise ValueError(
            f"Selection.sample_weights has shape {tuple(weights.shape)} on {weights.device}; it "
            f"must have one weight per sample, shape {tuple(status.shape)}, on {status.device} "
            "(the status' device)"
        )
    bad = (status != PRUNED) & ~(torch.isfinite(weights) & (weights > 0))
    count = int(torch.count_nonzero(bad))
    if count:
        first = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"Selection.sample_weights must be finite and positive at every kept sample; "
            f"{count} are not (the first, sample {first}, has {float(weights[first])})"
        )


def mean_upweighted(status: Tensor, weights: Tensor) -> float:
    """Mean of ``weights`` over the ``UPWEIGHTED`` samples (1.0 when there is none): the
    summary ``Selection.weight`` of a selection with per-sample weights."""
    upweighted = status == UPWEIGHTED
    count = int(torch.count_nonzero(upweighted))
    if count == 0:
        return 1.0
    return float(weights.double().masked_fill(~upweighted, 0.0).sum() / count)


@runtime_checkable
class PruningRule(Protocol):
    """Decides an epoch's kept set from the scores (``nan`` = never scored).

    ``select`` must be deterministic given ``generator``, a CPU generator whatever device the
    scores live on: draw randomness with :func:`infobatch.rng.random_mask` /
    :func:`infobatch.rng.random_permutation` (or on the CPU and move the result), never with
    ``device=scores.device``, so plans do not depend on the device.
    """

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        """Return the epoch's :class:`Selection`, its status on ``scores.device``."""
        ...


class KeepAll:
    """Full data: every sample kept with weight 1 (used for annealing epochs)."""

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        """Keep everything; consumes no randomness."""
        status = torch.full((scores.numel(),), KEPT, dtype=torch.int8, device=scores.device)
        return Selection(status, 1.0, float("nan"), count_scored(scores), 0)


_CPU_CHUNK = 1 << 15
_MIN_CHUNK = 1 << 16
_MAX_CHUNK = 1 << 20
_CHUNKS = 16


def chunk_size(num_elements: int, device: torch.device) -> int:
    """Elements per chunk of planning's chunked passes over ``num_elements`` on ``device``.

    On the CPU, 2^15: PyTorch runs an operation on at most 2^15 elements on the calling thread,
    so planning's hundreds of chunk operations never wait for an OpenMP thread (on a machine
    whose cores are busy, each multi-threaded operation can wait a scheduler time slice), and
    a chunk's temporaries stay in the core's cache. Elsewhere, ``N / 16`` clamped to
    ``[2^16, 2^20]``, so kernel launches and host syncs stay few. Either way a temporary of
    ``b`` bytes per element made per chunk takes at most ``b * 2^20`` bytes (8 MiB for
    ``int64``) and never more than ``b / 16`` bytes per sample beyond the first 2^16.
    """
    if device.type == "cpu":
        return _CPU_CHUNK
    return min(_MAX_CHUNK, max(_MIN_CHUNK, -(-num_elements // _CHUNKS)))


def split_in_chunks(values: Tensor) -> tuple[Tensor, ...]:
    """Views of ``values`` (1-d) in consecutive chunks of :func:`chunk_size` elements."""
    return torch.split(values, chunk_size(values.numel(), values.device))


def _scored_sum_and_count(values: Tensor) -> tuple[Tensor, Tensor]:
    """float64 sum and count of the non-``nan`` ``values`` (device tensors, no host sync).

    Converts a chunk at a time: no ``8 N``-byte float64 copy and no ``N``-sized mask.
    """
    sums, counts = [], []
    for chunk in split_in_chunks(values):
        sums.append(torch.nansum(chunk, dtype=torch.float64))
        counts.append(torch.count_nonzero(torch.isnan(chunk)))
    missing = counts[0] if len(counts) == 1 else torch.stack(counts).sum()
    total = sums[0] if len(sums) == 1 else torch.stack(sums).sum()
    return total, values.numel() - missing


def count_scored(scores: Tensor) -> int:
    """Number of scored (not ``nan``) entries, counted a chunk at a time (one host sync)."""
    return int(_scored_sum_and_count(scores)[1])


def _round_up(value: Tensor, dtype: torch.dtype) -> Tensor:
    """Smallest ``dtype`` number ``>= value``, so ``x < result`` equals ``x < value`` exactly."""
    rounded = value.to(dtype)
    if bool(rounded.double() < value):
        rounded = torch.nextafter(rounded, torch.full_like(rounded, float("inf")))
    return rounded


@dataclass(frozen=True)
class MeanThreshold:
    """The mean score over scored samples, as the rule compares with it.

    Attributes:
        mean: float64 mean (a 0-d device tensor; ``0`` when nothing is scored).
        threshold: ``mean`` rounded up to the scores' dtype, so ``score < threshold`` is
            exactly ``score < mean`` (``nan`` scores compare ``False``: never below it).
        num_scored: scored samples (a 0-d device tensor).
    """

    mean: Tensor
    threshold: Tensor
    num_scored: Tensor

    @classmethod
    def of(cls, scores: Tensor) -> MeanThreshold:
        """One chunked pass over ``scores``; no host sync."""
        total, num_scored = _scored_sum_and_count(scores)
        mean = total / num_scored.clamp(min=1)
        return cls(mean, _round_up(mean, scores.dtype), num_scored)

    def scaled(self, factor: float) -> MeanThreshold:
        """The threshold at ``factor * mean``, rounded up to the scores' dtype the same way."""
        mean = self.mean * factor
        return MeanThreshold(mean, _round_up(mean, self.threshold.dtype), self.num_scored)

    def count_below(self, scores: Tensor) -> int:
        """Scored samples below the mean (a chunked pass, one host sync)."""
        counts = [
            torch.count_nonzero(torch.lt(part, self.threshold)) for part in split_in_chunks(scores)
        ]
        return int(counts[0] if len(counts) == 1 else torch.stack(counts).sum())


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
        """Flip one coin per sample; drop below-mean samples whose coin falls under the ratio.

        Works a chunk at a time (see :func:`chunk_size`): besides the 1-byte-per-sample status
        it returns, it allocates only chunk-sized temporaries. The coins are float32 uniforms
        drawn from the CPU ``generator`` in sample order (one per sample, scored or not) and
        compared with ``prune_ratio`` on the CPU; on an accelerator only that comparison's bool
        mask is copied, 1 byte per sample (see :mod:`infobatch.rng`).
        """
        return self.select_below(scores, generator, MeanThreshold.of(scores))

    def select_below(
        self, scores: Tensor, generator: torch.Generator, below: MeanThreshold
    ) -> Selection:
        """:meth:`select` with the mean already computed (``MeanThreshold.of(scores)``)."""
        threshold_t, num_scored_t = below.threshold, below.num_scored
        status = torch.empty(scores.numel(), dtype=torch.int8, device=scores.device)
        well_counts = []
        for scores_part, status_part in zip(split_in_chunks(scores), split_in_chunks(status)):
            well = torch.lt(scores_part, threshold_t)  # nan < x: unscored never pruned
            drop = random_mask(scores_part.numel(), self.prune_ratio, generator, scores.device)
            drop &= well
            # KEPT + 1 = UPWEIGHTED where well-learned, then - 2 = PRUNED where also dropped
            torch.add(well.view(torch.int8), KEPT, out=status_part)
            status_part.sub_(drop.view(torch.int8), alpha=UPWEIGHTED)
            well_counts.append(torch.count_nonzero(well))
            del well, drop
        num_well_t = well_counts[0] if len(well_counts) == 1 else torch.stack(well_counts).sum()
        num_scored, num_well = (int(v) for v in torch.stack([num_scored_t, num_well_t]).tolist())
        threshold = float(below.mean) if num_scored else float("nan")
        return Selection(status, self.weight, threshold, num_scored, num_well)
