"""Per-epoch statistics of what was pruned and what it saved."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["EpochStats", "saved_fraction"]


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
        pruning: ``False`` for full-data (annealing) epochs.
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
