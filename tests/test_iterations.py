"""Iteration-based training: exact iteration counts, annealing by fraction, exact resume."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from infobatch import InfoBatch, InfoBatchError, IterationSchedule, iterations
from tests.helpers import IndexedDataset, loss_of

NUM_ITERATIONS = 60
BATCH = 8


def make(num_workers: int = 0) -> tuple[Any, Any]:
    dataset = InfoBatch(IndexedDataset(90), None, 0.5, 0.75, num_iterations=NUM_ITERATIONS, seed=1)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=dataset.sampler, num_workers=num_workers)
    return dataset, loader


def run(dataset: Any, loader: Any, stop: int | None = None) -> list[dict[str, Any]]:
    """Train to the end (or to ``stop`` iterations); one record per batch."""
    records = []
    start = dataset.sampler.iterations_done
    for x, _label in iterations(loader, NUM_ITERATIONS, start=start):
        if stop is not None and dataset.sampler.iterations_done == stop:
            break
        sampler = dataset.sampler
        records.append(
            {
                "pass": sampler.epoch,
                "pruning": sampler.plan.pruning,
                "done_before": sampler.iterations_done,
                "batch": x[:, 0].long().tolist(),
            }
        )
        dataset.update(loss_of(x[:, 0]))
    return records


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exactly_the_asked_iterations_run_and_passes_follow_each_other(num_workers: int) -> None:
    dataset, loader = make(num_workers)
    records = run(dataset, loader)
    assert len(records) == NUM_ITERATIONS == dataset.sampler.iterations_done
    passes = [r["pass"] for r in records]
    assert passes == sorted(passes) and len(set(passes)) > 5  # several passes, back to back


def test_passes_are_pruned_until_delta_of_the_iterations_then_use_all_data() -> None:
    dataset, loader = make()
    records = run(dataset, loader)
    boundary = math.ceil(0.75 * NUM_ITERATIONS)
    starts = {}  # each pass: iterations done when it was planned (its first batch)
    for record in records:
        starts.setdefault(record["pass"], record)
    assert len(starts) > 5
    for record in starts.values():  # pass 0 has no scores yet: it trains on all data
        assert record["pruning"] == (record["pass"] > 0 and record["done_before"] < boundary)
    full = [s for s in starts.values() if not s["pruning"]]
    assert full and all(dataset.history[s["pass"]].num_kept == 90 for s in full)
    assert any(dataset.history[s["pass"]].num_pruned > 0 for s in starts.values())


@pytest.mark.parametrize("stop", [5, 23, 47])
def test_a_resumed_iteration_run_trains_exactly_what_the_uninterrupted_run_trains(
    stop: int,
) -> None:
    straight = run(*make())
    dataset, loader = make()
    first = run(dataset, loader, stop=stop)
    buffer = io.BytesIO()
    torch.save(dataset.state_dict(), buffer)
    buffer.seek(0)
    resumed, resumed_loader = make()
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.sampler.iterations_done == stop
    second = run(resumed, resumed_loader)
    assert [r["batch"] for r in first + second] == [r["batch"] for r in straight]


def test_exactly_one_of_epochs_and_iterations_and_the_helpers_checks() -> None:
    with pytest.raises(ValueError, match="exactly one of num_epochs .* and num_iterations"):
        InfoBatch(IndexedDataset(10), 5, num_iterations=10)
    with pytest.raises(ValueError, match="exactly one of num_epochs"):
        InfoBatch(IndexedDataset(10), None)
    with pytest.raises(ValueError, match="Invalid num_iterations 0"):
        IterationSchedule(0)
    assert IterationSchedule(10, delta=0.25).pruned_iterations == 3
    assert list(iterations([1, 2], 5, start=2)) == [1, 2, 1]
    with pytest.raises(ValueError, match=r"Invalid start 6"):
        list(iterations([1], 5, start=6))
    with pytest.raises(InfoBatchError, match="no batch in two passes in a row"):
        list(iterations([], 3))
