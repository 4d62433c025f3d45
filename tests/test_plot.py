"""plot_history: its panels draw exactly the history's numbers; matplotlib stays optional."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from infobatch import InfoBatch, plot_history  # noqa: E402
from infobatch.plot import PANEL_TITLES  # noqa: E402

from .test_metrics import train  # noqa: E402


@pytest.fixture(scope="module")
def run() -> InfoBatch[Any]:
    labels = torch.randint(3, (60,), generator=torch.Generator().manual_seed(0))
    return train(class_labels=labels)  # the same labels as the dataset's targets


def _panels(figure: Figure) -> dict[str, Any]:
    return {ax.get_title(): ax for ax in figure.axes}


def _bar_heights(ax: Any, label: str) -> list[float]:
    container = next(c for c in ax.containers if c.get_label() == label)
    return [patch.get_height() for patch in container]


def test_panels_draw_the_history(run: InfoBatch[Any], tmp_path: Path) -> None:
    history = run.history
    figure = plot_history(history, tmp_path / "history.png")
    assert isinstance(figure, Figure)
    assert (tmp_path / "history.png").stat().st_size > 0
    panels = _panels(figure)
    assert list(panels) == list(PANEL_TITLES)
    epochs = [s.epoch for s in history]

    passes = panels["Sample passes per epoch"]
    assert _bar_heights(passes, "kept") == [s.num_kept for s in history]
    assert _bar_heights(passes, "pruned") == [s.num_pruned for s in history]
    pruned_bars = next(c for c in passes.containers if c.get_label() == "pruned")
    assert [p.get_y() for p in pruned_bars] == [s.num_kept for s in history]  # stacked
    shaded = [p for p in passes.patches if p not in [*passes.containers[0], *pruned_bars]]
    centres = [p.get_x() + p.get_width() / 2 for p in shaded]
    assert centres == [s.epoch for s in history if not s.pruning] == [0, 3]  # full data

    (threshold,) = panels["Threshold (mean score)"].get_lines()
    assert list(threshold.get_xdata()) == epochs
    np.testing.assert_array_equal(threshold.get_ydata(), [s.threshold for s in history])
    assert math.isnan(threshold.get_ydata()[0])  # no threshold: a gap

    (saved,) = panels["Sample passes saved so far"].get_lines()
    assert list(saved.get_ydata()) == [s.saved_fraction for s in history]

    # Per class: the run's pruned passes over all its passes.
    kept = np.sum([s.kept_per_class for s in history], axis=0)
    pruned = np.sum([s.pruned_per_class for s in history], axis=0)
    shares = _bar_heights(panels["Share of each class's passes pruned"], "pruned")
    assert shares == list(pruned / (kept + pruned)) and len(shares) == 3


def test_the_per_class_panel_needs_class_labels(run: InfoBatch[Any]) -> None:
    plain = train(3)
    assert plain.history[0].kept_per_class is None
    assert list(_panels(plot_history(plain))) == list(PANEL_TITLES[:3])
    assert list(_panels(plot_history(run))) == list(PANEL_TITLES)  # the dataset itself


def test_plot_history_refuses_an_empty_history() -> None:
    with pytest.raises(ValueError, match="empty history"):
        plot_history([])


def test_without_matplotlib_the_error_names_the_extra(
    run: InfoBatch[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "infobatch\[plot\]"'):
        plot_history(run.history)
