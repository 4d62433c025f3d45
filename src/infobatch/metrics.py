"""Per-epoch statistics as loggers take them: one set of names (``infobatch/...``) everywhere.

:func:`epoch_metrics` turns one :class:`~infobatch.EpochStats` into ``{name: float}``; the
integrations hand that dict to the framework's loggers (Lightning's ``log_dict``,
``accelerator.log``, the Trainer's logs) and :func:`log_epoch` to anything with TensorBoard's
``add_scalar``. The names (:data:`METRICS`, from the :class:`~infobatch.EpochStats` field):

=================================  ============================================================
``infobatch/epoch``                epoch index (0-based)
``infobatch/num_kept``             sample passes trained
``infobatch/num_pruned``           sample passes skipped
``infobatch/num_scored``           samples with a score when the epoch was planned
``infobatch/num_well_learned``     scored samples below the threshold
``infobatch/threshold``            the threshold (mean score)
``infobatch/weight``               loss multiplier of the kept well-learned samples
``infobatch/pruning``              1.0 for a pruned epoch, 0.0 for a full-data one
``infobatch/saved_fraction``       sample passes saved so far versus full data (0 to 1)
``infobatch/time/planning``        seconds planning the epoch
``infobatch/time/data``            seconds waiting for batches (a timed loop only)
``infobatch/time/update``          seconds inside ``update()``
``infobatch/time/training``        the epoch less ``update()`` and the data wait (if timed)
``infobatch/time/epoch``           the epoch's span, first index to last ``update()``
``infobatch/time/between_epochs``  from the previous epoch's end to this one's planning
=================================  ============================================================

**A ``nan`` is left out**, not logged: it means "not measured" or "none" (no threshold in a
full-data epoch; no data wait unless the loop was timed with ``dataset.timed(loader)``; no
``between_epochs`` before the first epoch; no time at all before the epoch is complete), and
loggers draw ``nan`` as a gap, a zero or an error. So an epoch's dict holds a subset of
:data:`METRICS`, never another name. The times are this rank's (they differ between ranks);
everything else is the same on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol, Union

from .stats import EpochStats

__all__ = [
    "METRICS",
    "HasHistory",
    "ScalarWriter",
    "StatsSource",
    "epoch_metrics",
    "history_of",
    "last_epoch",
    "log_epoch",
    "log_history",
]

#: Every name :func:`epoch_metrics` may return, as ``{metric name: EpochStats attribute}``.
METRICS: Mapping[str, str] = MappingProxyType(
    {
        "infobatch/epoch": "epoch",
        "infobatch/num_kept": "num_kept",
        "infobatch/num_pruned": "num_pruned",
        "infobatch/num_scored": "num_scored",
        "infobatch/num_well_learned": "num_well_learned",
        "infobatch/threshold": "threshold",
        "infobatch/weight": "weight",
        "infobatch/pruning": "pruning",
        "infobatch/saved_fraction": "saved_fraction",
        "infobatch/time/planning": "planning_seconds",
        "infobatch/time/data": "data_seconds",
        "infobatch/time/update": "update_seconds",
        "infobatch/time/training": "training_seconds",
        "infobatch/time/epoch": "epoch_seconds",
        "infobatch/time/between_epochs": "between_epochs_seconds",
    }
)


class HasHistory(Protocol):
    """An object with per-epoch statistics: :class:`~infobatch.InfoBatch`, its sampler."""

    @property
    def history(self) -> list[EpochStats]: ...


class ScalarWriter(Protocol):
    """Anything with TensorBoard's ``add_scalar(tag, value, global_step)`` (a
    ``torch.utils.tensorboard.SummaryWriter``, tensorboardX's, ...)."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int, /) -> object: ...


#: What :func:`log_epoch` and the integrations take: one epoch's statistics, a history
#: (a list of them), or an object with a ``history`` (an InfoBatch dataset or its sampler).
StatsSource = Union[EpochStats, Sequence[EpochStats], HasHistory]


def epoch_metrics(stats: EpochStats) -> dict[str, float]:
    """``{name: value}`` of one epoch's statistics (names: :data:`METRICS`), as floats.

    ``nan`` values (not measured, no threshold) are left out; ``pruning`` is 1.0 or 0.0.

    >>> from infobatch import EpochStats
    >>> stats = EpochStats(epoch=0, num_samples=4, num_kept=4, num_pruned=0, num_scored=0,
    ...                    num_well_learned=0, threshold=float("nan"), weight=1.0,
    ...                    pruning=False, saved_fraction=0.0)
    >>> epoch_metrics(stats)["infobatch/num_kept"], "infobatch/threshold" in epoch_metrics(stats)
    (4.0, False)
    """
    if not isinstance(stats, EpochStats):
        raise TypeError(
            f"epoch_metrics() takes one EpochStats (an entry of dataset.history), got "
            f"{type(stats).__name__}"
        )
    values = ((name, float(getattr(stats, field))) for name, field in METRICS.items())
    return {name: value for name, value in values if not math.isnan(value)}


def history_of(source: StatsSource) -> list[EpochStats]:
    """The epochs of ``source``: ``[stats]``, a history list, or ``source.history``."""
    if isinstance(source, EpochStats):
        return [source]
    history = getattr(source, "history", source)
    if (
        isinstance(history, Sequence)
        and not isinstance(history, (str, bytes))
        and all(isinstance(s, EpochStats) for s in history)
    ):
        return list(history)
    raise TypeError(
        "expected an EpochStats, a list of them (dataset.history) or an InfoBatch dataset or "
        f"sampler, got {type(source).__name__}"
    )


def last_epoch(source: StatsSource) -> EpochStats:
    """The latest epoch of ``source`` (see :func:`history_of`); ``ValueError`` if it has none."""
    history = history_of(source)
    if not history:
        raise ValueError(
            "no epoch to log: the history is empty (an epoch enters it once its training "
            "starts); log after training an epoch"
        )
    return history[-1]


def _check_writer(writer: object, caller: str) -> ScalarWriter:
    if not callable(getattr(writer, "add_scalar", None)):
        raise TypeError(
            f"{caller} needs a writer with add_scalar(tag, value, global_step), such as "
            f"torch.utils.tensorboard.SummaryWriter(log_dir), got {type(writer).__name__}; for "
            "Lightning, Accelerate and the Trainer the integrations log for you "
            "(InfoBatchCallback, infobatch.integrations.accelerate.log_stats, InfoBatchTrainer)"
        )
    return writer  # type: ignore[return-value]


def log_epoch(
    writer: ScalarWriter, source: StatsSource, step: int | None = None
) -> dict[str, float]:
    """Write one epoch's :func:`epoch_metrics` with ``writer.add_scalar``; return them.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` or anything with
            ``add_scalar(tag, value, global_step)``.
        source: an :class:`~infobatch.EpochStats`, or a history / InfoBatch dataset /
            sampler, whose last epoch is written (call it after the epoch's loop).
        step (int, optional): the ``global_step``. Default: the epoch index.

    Example (a plain loop)::

        writer = SummaryWriter("runs/infobatch")
        for epoch in range(num_epochs):
            for x, y in dataset.timed(loader):      # timed: infobatch/time/data is logged
                ...
            log_epoch(writer, dataset)
    """
    out = _check_writer(writer, "log_epoch()")
    stats = last_epoch(source)
    metrics = epoch_metrics(stats)
    at = stats.epoch if step is None else step
    for name, value in metrics.items():
        out.add_scalar(name, value, at)
    return metrics


def log_history(writer: ScalarWriter, source: StatsSource) -> list[dict[str, float]]:
    """Write every epoch of ``source`` (a run logged after the fact), each at its epoch index;
    return the metrics written, one dict per epoch (see :func:`log_epoch`)."""
    out = _check_writer(writer, "log_history()")
    return [log_epoch(out, stats) for stats in history_of(source)]
