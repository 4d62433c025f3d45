"""Per-epoch statistics of what was pruned and what it saved."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plan import EpochPlan

__all__ = ["EpochStats", "saved_fraction", "with_epoch"]

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

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON, loggers, checkpoints)."""
        return asdict(self)


def saved_fraction(history: list[EpochStats]) -> float:
    """Fraction of sample passes saved over ``history`` versus training on all samples."""
    total = sum(s.num_samples for s in history)
    return sum(s.num_pruned for s in history) / total if total else 0.0


def with_epoch(history: dict[int, EpochStats], plan: EpochPlan) -> dict[int, EpochStats]:
    """``history`` up to ``plan``'s epoch, plus that epoch's statistics (logged at INFO).

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
