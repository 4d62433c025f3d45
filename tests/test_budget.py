"""The total-saving budget: reaches reachable targets, says when it cannot, stays unbiased."""

from __future__ import annotations

import io
import warnings
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from infobatch import InfoBatch, SavingBudget
from infobatch.context import EpochContext
from tests.helpers import IndexedDataset

SIZE, EPOCHS = 600, 12


def skewed_loss(index: torch.Tensor) -> torch.Tensor:
    """Right-skewed, stable per sample: about 63% of the samples lie below the mean."""
    uniform = ((index.double() * 0.6180339887) % 1.0).clamp(min=1e-6)
    return (-torch.log(uniform)).float()


def train(dataset: Any, epochs: range, stop: tuple[int, int] | None = None) -> list[list[int]]:
    loader = DataLoader(dataset, batch_size=16, sampler=dataset.sampler)
    orders = []
    for epoch in epochs:
        dataset.sampler.set_epoch(epoch)
        order: list[int] = []
        for step, (x, _label) in enumerate(loader):
            if stop == (epoch, step):
                return orders + [order]
            dataset.update(skewed_loss(x[:, 0].long()))
            order += x[:, 0].long().tolist()
        orders.append(order)
    return orders


@pytest.mark.parametrize("target", [0.15, 0.3, 0.45])
def test_a_reachable_target_is_realised_within_two_points(target: float) -> None:
    budget = SavingBudget(target)
    dataset = InfoBatch(IndexedDataset(SIZE), EPOCHS, rule=budget, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reachable: no warning
        train(dataset, range(EPOCHS))
    assert abs(dataset.saved_fraction - target) <= 0.02
    history = dataset.history
    for stats in history[1:]:
        if stats.pruning:
            assert stats.weight == pytest.approx(1 / (1 - budget.ratios[stats.epoch]))
    assert len({round(r, 6) for r in budget.ratios.values()}) > 2  # the ratio adapts


def test_an_unreachable_target_is_reported_once_with_the_achievable_figure() -> None:
    budget = SavingBudget(0.8, max_prune_ratio=0.5)
    dataset = InfoBatch(IndexedDataset(SIZE), EPOCHS, rule=budget, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(dataset, range(EPOCHS))
    messages = [str(w.message) for w in caught if "SavingBudget" in str(w.message)]
    assert len(messages) == 1 and "out of reach" in messages[0] and "at most about" in messages[0]
    achievable = float(messages[0].split("at most about ")[1].split("%")[0]) / 100
    assert abs(dataset.saved_fraction - achievable) < 0.05 and dataset.saved_fraction < 0.8
    assert max(budget.ratios.values()) == 0.5


def test_only_well_learned_samples_are_pruned_and_kept_ones_are_unbiased() -> None:
    """E[kept * weight] = 1 for every sample, over the pruning draws (full-data expectation)."""
    scores = skewed_loss(torch.arange(300))
    context = EpochContext(
        epoch=3,
        num_samples=300,
        num_epochs=10,
        pruned_epochs=9,
        iterations_done=0,
        num_iterations=None,
        history=(),
    )
    total = torch.zeros(300, dtype=torch.float64)
    draws = 400
    mean = scores.double().mean()
    budget = SavingBudget(0.3)
    for seed in range(draws):
        selection = budget.select_for_epoch(scores, torch.Generator().manual_seed(seed), context)
        keep, upweighted = selection.keep, selection.upweighted
        assert keep[scores.double() >= mean].all()  # at or above the mean: always kept
        weights = torch.where(upweighted, selection.weight, 1.0).double()
        total += weights * keep
    expectation = total / draws
    ratio = budget.ratios[3]
    assert 0.3 < ratio < 0.9  # a real pruning probability, not a trivial one
    spread = (ratio / (1 - ratio) / draws) ** 0.5  # std of the mean of kept * weight
    assert (expectation - 1).abs().max() < 5 * spread  # per sample, with room for 300 tests
    assert abs(float(expectation.mean()) - 1.0) < 5 * spread / 300**0.5


@pytest.mark.parametrize("stop", [(3, 0), (5, 7)])
def test_a_budgeted_run_resumes_exactly(stop: tuple[int, int]) -> None:
    straight = InfoBatch(IndexedDataset(SIZE), EPOCHS, rule=SavingBudget(0.3), seed=0)
    expected = train(straight, range(EPOCHS))
    first = InfoBatch(IndexedDataset(SIZE), EPOCHS, rule=SavingBudget(0.3), seed=0)
    before = train(first, range(EPOCHS), stop=stop)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = InfoBatch(IndexedDataset(SIZE), EPOCHS, rule=SavingBudget(0.3), seed=0)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    after = train(resumed, range(stop[0], EPOCHS))
    orders = before[:-1] + [before[-1] + after[0]] + after[1:]
    assert orders == expected
    assert resumed.saved_fraction == straight.saved_fraction


def test_budget_arguments_are_validated_and_need_epochs() -> None:
    with pytest.raises(ValueError, match=r"Invalid target 1.2, target should be in the interval"):
        SavingBudget(1.2)
    with pytest.raises(TypeError, match="max_prune_ratio must be a float"):
        SavingBudget(0.3, max_prune_ratio="0.5")  # type: ignore[arg-type]
    dataset = InfoBatch(IndexedDataset(40), None, num_iterations=20, rule=SavingBudget(0.3))
    with pytest.raises(ValueError, match="SavingBudget needs epoch-based training"):
        len(dataset.sampler)  # planning the first pass
