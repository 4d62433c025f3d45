"""A picture of a run from its ``history`` alone: :func:`plot_history` (needs matplotlib,
``pip install "infobatch[plot]"``, imported only when called)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Union

from .metrics import HasHistory, history_of
from .stats import EpochStats

if TYPE_CHECKING:
    from collections.abc import Sequence
    from os import PathLike

    from matplotlib.figure import Figure

__all__ = ["PANEL_TITLES", "plot_history"]

#: The panels' titles, in order; the last is drawn only when the history has per-class counts.
PANEL_TITLES = (
    "Sample passes per epoch",
    "Threshold (mean score)",
    "Sample passes saved so far",
    "Share of each class's passes pruned",
)


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            'plot_history() needs matplotlib; install it with pip install "infobatch[plot]"'
        ) from error
    return Figure


def _pruned_share_per_class(history: list[EpochStats]) -> list[float] | None:
    """Per class, the run's pruned passes over its kept and pruned ones (epochs with both
    counts only); ``None`` when no epoch has them (no ``class_labels``, or ``sampling=``)."""
    counted = [
        (s.kept_per_class, s.pruned_per_class)
        for s in history
        if s.kept_per_class is not None and s.pruned_per_class is not None
    ]
    if not counted:
        return None
    classes = max(max(len(k), len(p)) for k, p in counted)
    kept, pruned = [0] * classes, [0] * classes
    for k, p in counted:
        for c, n in enumerate(k):
            kept[c] += n
        for c, n in enumerate(p):
            pruned[c] += n
    return [p / (k + p) if k + p else math.nan for k, p in zip(kept, pruned)]


def plot_history(
    history: Union[Sequence[EpochStats], HasHistory],
    path: Union[str, PathLike[str], None] = None,
) -> Figure:
    """Draw a run's statistics; save the figure to ``path`` when given (format from its suffix).

    Panels (titles: :data:`PANEL_TITLES`): the sample passes kept and pruned per epoch
    (stacked bars; full-data epochs, annealing ones and those before any score, shaded), the
    threshold per epoch (none in full-data epochs), the fraction of sample passes saved so far,
    and, when InfoBatch was given ``class_labels`` (without ``sampling=``), the share of each
    class's passes pruned over the run: a class pruned much more than the others is one the
    model finds easy.

    Uses ``matplotlib.figure.Figure`` directly (no pyplot, no global state, any backend).

    Args:
        history: ``dataset.history`` (or the InfoBatch dataset or sampler itself).
        path (str or path-like, optional): where to save the figure. Default: not saved.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: the history is empty.
    """
    epochs = history_of(history)
    if not epochs:
        raise ValueError("plot_history() got an empty history: train at least one epoch first")
    figure_class = _figure_class()
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    shares = _pruned_share_per_class(epochs)
    panels = 3 if shares is None else 4
    figure = figure_class(figsize=(12, 7.5) if panels == 4 else (15, 4), layout="constrained")
    grid = figure.subplots(2, 2) if panels == 4 else figure.subplots(1, 3)
    axes = list(grid.flat)
    for ax, title in zip(axes, PANEL_TITLES):
        ax.set_title(title)
    x = [s.epoch for s in epochs]
    kept = [s.num_kept for s in epochs]

    ax = axes[0]
    ax.bar(x, kept, label="kept", color="tab:blue")
    ax.bar(x, [s.num_pruned for s in epochs], bottom=kept, label="pruned", color="tab:orange")
    full = [s.epoch for s in epochs if not s.pruning]
    for i, epoch in enumerate(full):
        ax.axvspan(
            epoch - 0.5, epoch + 0.5, color="0.85", zorder=0, label="full data" if i == 0 else None
        )
    ax.set_ylabel("sample passes")
    ax.set_ylim(0, 1.2 * max(k + s.num_pruned for k, s in zip(kept, epochs)) or 1)
    ax.legend(loc="upper center", ncol=3)

    ax = axes[1]
    ax.plot(x, [s.threshold for s in epochs], marker="o", color="tab:green")
    ax.set_ylabel("threshold")

    ax = axes[2]
    ax.plot(x, [s.saved_fraction for s in epochs], marker="o", color="tab:purple")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_ylim(bottom=0.0)
    ax.set_ylabel("saved versus full data")
    for ax in axes[:3]:
        ax.set_xlim(min(x) - 0.5, max(x) + 0.5)  # the same epochs (a threshold may be absent)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    if shares is not None:
        ax = axes[3]
        ax.bar(range(len(shares)), shares, color="tab:orange", label="pruned")
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        ax.set_xlabel("class")
        ax.set_ylabel("pruned passes / passes")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if path is not None:
        figure.savefig(path)
    return figure
