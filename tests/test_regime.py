"""The construction warning for short schedules, where the regime map found the defaults lossy."""

from __future__ import annotations

import warnings

import pytest

from infobatch import InfoBatchSampler, ShortScheduleWarning
from infobatch.regime import FIGURES, SHORT_SCHEDULE_EPOCHS


def warnings_of(**kwargs: object) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        InfoBatchSampler(100, **kwargs)  # type: ignore[arg-type]
    return [str(w.message) for w in caught if issubclass(w.category, ShortScheduleWarning)]


def test_a_short_run_is_warned_about_with_the_measured_figures_and_the_fix() -> None:
    with pytest.warns(ShortScheduleWarning) as caught:
        InfoBatchSampler(100, 8)
    (message,) = [str(w.message) for w in caught]
    assert "a run of 8 epochs is short" in message
    assert "Its 6 pruned epochs" in message  # epochs 1-6; epoch 0 is never pruned, 7 anneals
    for figure in FIGURES.values():
        assert figure in message
    assert "keep_steps=True" in message and "batch_sampler=dataset.batch_sampler" in message
    assert "no full-data epoch" not in message  # epoch 7 anneals


def test_a_run_without_an_annealing_epoch_is_told_which_delta_gives_one() -> None:
    (message,) = warnings_of(num_epochs=3)
    assert "delta=0.875 also leaves no full-data epoch" in message
    assert "ceil(0.875 x 3) = 3" in message and "delta <= 0.667 gives one" in message


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_epochs=SHORT_SCHEDULE_EPOCHS + 1),
        dict(num_epochs=200),
        dict(num_epochs=8, batch_size=10, keep_steps=True),
        dict(num_epochs=8, prune_ratio=0.0),
        dict(num_epochs=1),
        dict(num_epochs=8, delta=0.1),  # only epoch 0, which is never pruned
        dict(num_epochs=None, num_iterations=50),
    ],
    ids=["17", "200", "keep_steps", "r0", "1", "delta0.1", "iterations"],
)
def test_no_warning_where_the_map_found_nothing_to_warn_about(kwargs: dict[str, object]) -> None:
    assert warnings_of(**kwargs) == []


def test_the_longest_warned_run_is_the_maps_last_lossy_one() -> None:
    assert len(warnings_of(num_epochs=SHORT_SCHEDULE_EPOCHS)) == 1


def test_the_warnings_figures_are_the_committed_benchmarks() -> None:
    """The figures quoted are those of ``benchmarks/results/step_limited.json`` (20 seeds)."""
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import step_limited
    finally:
        sys.path.remove(str(root / "benchmarks"))
    path = root / "benchmarks" / "results" / "step_limited.json"
    store = step_limited.Store(path, json.loads(path.read_text())["runs"][0]["settings"])
    seeds = list(range(20))
    rows = {row["epochs"]: row for row in step_limited.summarise(store, [4, 8, 16], seeds)}
    variants = {
        row["epochs"]: row
        for row in step_limited.summarise_variants(store, [4, 8, 16], seeds)
        if row["variant"] == "keep_steps"
    }
    for epochs in (4, 8, 16):
        assert len(rows[epochs]["seeds"]) == len(variants[epochs]["seeds"]) == 20
        assert FIGURES[f"ib{epochs}"] == f"{rows[epochs]['infobatch_minus_full'][0]:+.2f}"
        assert FIGURES[f"ks{epochs}"] == f"{variants[epochs]['minus_full'][0]:+.2f}"
