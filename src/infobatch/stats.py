"""Per-epoch statistics of what was pruned and what it saved."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .timing import EpochTiming

if TYPE_CHECKING:
    from .plan import EpochPlan

__all__ = [
    "EpochStats",
    "TIMING_FIELDS",
    "ClassCounts",
    "class_counts",
    "saved_fraction",
    "with_epoch",
]

#: Sample passes kept and pruned per class in one epoch (``pruned`` is ``None`` under a
#: user's sampling, whose draws are not kept).
ClassCounts = tuple[tuple[int, ...], "tuple[int, ...] | None"]

logger = logging.getLogger("infobatch")


@dataclass(frozen=True)
class EpochStats:
    """One epoch's pruning figures (global, before any distributed padding).

    Attributes:
        epoch: epoch index (0-based).
        num_samples: dataset size.
        num_kept: samples trained on.
        num_pruned: samples skipped.
        num_scored: samples with a score when the epoch was planned.
        num_well_learned: scored samples below the threshold.
        threshold: the mean score used as threshold (``nan`` if nothing scored or annealing).
        weight: loss multiplier of kept well-learned samples (1 when annealing).
        pruning: ``False`` for full-data epochs: annealing ones, and those planned before
            any sample was scored (epoch 0), see :attr:`EpochPlan.pruning`.
        saved_fraction: sample passes saved versus full data, cumulative up to this epoch.
        planning_seconds, data_seconds, update_seconds, epoch_seconds,
            between_epochs_seconds: this rank's time accounting of the epoch (see
            :class:`~infobatch.timing.EpochTiming`; ``nan`` until the epoch is complete, and
            for what was not measured). They differ between ranks and runs, so they take no
            part in comparing two ``EpochStats`` nor in their ``repr`` (see :meth:`as_dict`).
        kept_per_class: sample passes trained per class (index = class label), when
            InfoBatch was given ``class_labels``; else ``None``.
        pruned_per_class: sample passes skipped per class, when InfoBatch was given
            ``class_labels`` (``None`` under ``sampling=``: the skipped draws are not kept).
    """

    epoch: int
    num_samples: int
    num_kept: int
    num_pruned: int
    num_scored: int
    num_well_learned: int
    threshold: float
    weight: float
    pruning: bool
    saved_fraction: float
    planning_seconds: float = field(default=math.nan, compare=False, repr=False)
    data_seconds: float = field(default=math.nan, compare=False, repr=False)
    update_seconds: float = field(default=math.nan, compare=False, repr=False)
    epoch_seconds: float = field(default=math.nan, compare=False, repr=False)
    between_epochs_seconds: float = field(default=math.nan, compare=False, repr=False)
    kept_per_class: tuple[int, ...] | None = None
    pruned_per_class: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("kept_per_class", "pruned_per_class"):  # lists from JSON or a checkpoint
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(int(v) for v in value))

    @property
    def training_seconds(self) -> float:
        """``epoch_seconds`` less the wait for batches (when measured) and ``update()``: the
        loop's forward, backward and optimizer steps (``nan`` until the epoch is complete)."""
        data = 0.0 if math.isnan(self.data_seconds) else self.data_seconds
        return self.epoch_seconds - data - self.update_seconds

    def with_timing(self, timing: EpochTiming) -> EpochStats:
        """These statistics with ``timing``'s time accounting."""
        return replace(self, **asdict(timing))

    def as_dict(self, *, timing: bool = True) -> dict[str, Any]:
        """Plain dict (for JSON, loggers, checkpoints); ``timing=False`` leaves out the time
        accounting (:data:`TIMING_FIELDS`), e.g. to compare two runs."""
        values = asdict(self)
        if not timing:
            for name in TIMING_FIELDS:
                del values[name]
        return values


#: The :class:`EpochStats` fields of the time accounting (they differ between runs).
TIMING_FIELDS = tuple(f.name for f in fields(EpochTiming))


def class_counts(labels: Tensor, plan: EpochPlan, num_classes: int) -> ClassCounts:
    """Sample passes of ``plan`` kept and pruned per class of ``labels`` (int64 ``[N]``).

    O(N) vectorised; one host copy of ``num_classes`` numbers each (made when planning).
    """
    labels = labels.to(plan.order.device)
    kept = torch.bincount(labels.index_select(0, plan.order.long()), minlength=num_classes)
    if plan.epoch_size is not None:  # a user's sampling: the draws not kept are gone
        return tuple(kept.tolist()), None
    total = torch.bincount(labels, minlength=num_classes)
    return tuple(kept.tolist()), tuple((total - kept).tolist())


def saved_fraction(history: list[EpochStats]) -> float:
    """Fraction of sample passes saved over ``history`` versus training on all samples."""
    total = sum(s.num_samples for s in history)
    return sum(s.num_pruned for s in history) / total if total else 0.0


def with_epoch(
    history: dict[int, EpochStats], plan: EpochPlan, per_class: ClassCounts | None = None
) -> dict[int, EpochStats]:
    """``history`` up to ``plan``'s epoch, plus that epoch's statistics (logged at INFO), with
    ``per_class`` (:func:`class_counts` of the plan) when given.

    Later epochs are dropped: training went back to ``plan.epoch`` (``set_epoch``).
    """
    earlier = {e: s for e, s in sorted(history.items()) if e < plan.epoch}
    total = sum(s.num_samples for s in earlier.values()) + plan.num_samples
    pruned = sum(s.num_pruned for s in earlier.values()) + plan.num_pruned
    stats = EpochStats(
        epoch=plan.epoch,
        num_samples=plan.num_samples,
        num_kept=plan.num_kept,
        num_pruned=plan.num_pruned,
        num_scored=plan.num_scored,
        num_well_learned=plan.num_well_learned,
        threshold=plan.threshold,
        weight=plan.weight,
        pruning=plan.pruning,
        saved_fraction=pruned / total,
        kept_per_class=per_class[0] if per_class is not None else None,
        pruned_per_class=per_class[1] if per_class is not None else None,
    )
    logger.info(
        "epoch %d: kept %d of %d samples (pruned %d, well-learned %d, threshold %.6g, "
        "weight %.4g%s); saved so far %.2f%%",
        stats.epoch,
        stats.num_kept,
        stats.num_samples,
        stats.num_pruned,
        stats.num_well_learned,
        stats.threshold,
        stats.weight,
        "" if stats.pruning else ", full data",
        100.0 * stats.saved_fraction,
    )
    return {**earlier, plan.epoch: stats}
