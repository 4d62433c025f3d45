"""The total-saving budget: reaches reachable targets, says when it cannot, stays unbiased."""

from __future__ import annotations

import io
import warnings
from typing import Any, Callable

import pytest
import torch
from torch.utils.data import DataLoader

from infobatch import (
    EpochStats,
    InfoBatch,
    SavingBudget,
    ShortScheduleWarning,
    WeightedSampling,
    build_plan,
    epoch_generator,
)
from infobatch.context import EpochContext, WithContext
from infobatch.rule import MeanThreshold
from tests.helpers import IndexedDataset

SIZE, EPOCHS = 600, 12


def skewed_loss(index: torch.Tensor) -> torch.Tensor:
    """Right-skewed, stable per sample: about 63% of the samples lie below the mean."""
    uniform = ((index.double() * 0.6180339887) % 1.0).clamp(min=1e-6)
    return (-torch.log(uniform)).float()


def train(
    dataset: Any,
    epochs: range,
    stop: tuple[int, int] | None = None,
    loss: Callable[[torch.Tensor], torch.Tensor] = skewed_loss,
) -> list[list[int]]:
    loader = DataLoader(dataset, batch_size=16, sampler=dataset.sampler)
    orders = []
    for epoch in epochs:
        dataset.sampler.set_epoch(epoch)
        order: list[int] = []
        for step, (x, _label) in enumerate(loader):
            if stop == (epoch, step):
                return orders + [order]
            dataset.update(loss(x[:, 0].long()))
            order += x[:, 0].long().tolist()
        orders.append(order)
    return orders


def budget_messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "SavingBudget" in str(w.message)]


def context(
    epoch: int,
    num_samples: int,
    history: tuple[EpochStats, ...] = (),
    epoch_size: int | None = None,
    sample_weights: torch.Tensor | None = None,
) -> EpochContext:
    """Epoch ``epoch`` of a 10-epoch run whose first 9 epochs may be pruned."""
    return EpochContext(
        epoch=epoch,
        num_samples=num_samples,
        num_epochs=10,
        pruned_epochs=9,
        iterations_done=0,
        num_iterations=None,
        history=history,
        epoch_size=epoch_size,
        sample_weights=sample_weights,
    )


def pruned_epochs_before(epoch: int, passes: int, pruned: int) -> tuple[EpochStats, ...]:
    """Statistics of epochs ``0 .. epoch - 1``: epoch 0 full, the others ``pruned`` passes each."""
    return tuple(
        EpochStats(
            epoch=e,
            num_samples=passes,
            num_kept=passes - (pruned if e else 0),
            num_pruned=pruned if e else 0,
            num_scored=0,
            num_well_learned=0,
            threshold=float("nan"),
            weight=1.0,
            pruning=e > 0,
            saved_fraction=0.0,
        )
        for e in range(epoch)
    )


@pytest.mark.parametrize("target", [0.15, 0.3, 0.45])
def test_a_reachable_target_is_realised_within_two_points(target: float) -> None:
    budget = SavingBudget(target)
    dataset = InfoBatch(IndexedDataset(SIZE), EPOCHS, rule=budget, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reachable: no warning
        warnings.simplefilter("ignore", ShortScheduleWarning)  # test_regime.py
        train(dataset, range(EPOCHS))
    assert abs(dataset.saved_fraction - target) <= 0.02
    history = dataset.history
    for stats in history[1:]:
        if stats.pruning:
            assert stats.weight == pytest.approx(1 / (1 - budget.ratios[stats.epoch]))
    assert len({round(r, 6) for r in budget.ratios.values()}) > 2  # the ratio adapts


def test_an_unreachable_target_is_reported_once_with_the_achievable_figure() -> None:
    # The schedule allows 0.5 x 10 / 12 = 41.7% (no warning at construction); with about 63%
    # of the samples below the mean at most about 26% can be saved: one warning, at epoch 1.
    budget = SavingBudget(0.35, max_prune_ratio=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = InfoBatch(IndexedDataset(SIZE), EPOCHS, rule=budget, seed=0)
        train(dataset, range(EPOCHS))
    messages = budget_messages(caught)
    assert len(messages) == 1 and "out of reach" in messages[0] and "at most about" in messages[0]
    achievable = float(messages[0].split("at most about ")[1].split("%")[0]) / 100
    assert abs(dataset.saved_fraction - achievable) < 0.05 and dataset.saved_fraction < 0.35
    assert max(budget.ratios.values()) == 0.5


def test_equal_losses_warn_once_that_nothing_is_below_the_mean_but_not_at_epoch_0() -> None:
    budget = SavingBudget(0.2)
    dataset = InfoBatch(IndexedDataset(SIZE), EPOCHS, rule=budget, seed=0)
    constant = lambda index: torch.ones(index.shape)  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(dataset, range(1), loss=constant)  # epoch 0: nothing scored, nothing to say
    assert budget_messages(caught) == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(dataset, range(1, EPOCHS), loss=constant)
    messages = budget_messages(caught)
    assert (
        len(messages) == 1 and "no scored sample is below the mean score in epoch 1" in messages[0]
    )
    assert "reduction='none'" in messages[0]
    assert dataset.saved_fraction == 0.0 and set(budget.ratios.values()) == {0.0}


@pytest.mark.parametrize(
    ("num_epochs", "pruned_epochs", "message"),
    [
        (1, 1, "no epoch can be pruned"),  # num_epochs=1: only epoch 0, which has no scores
        (10, 0, "no epoch can be pruned"),  # delta=0
        (10, 3, "at most 18.0% can be saved"),  # 0.9 x 2 / 10 < 0.2
    ],
)
def test_a_schedule_that_cannot_reach_the_target_warns_once(
    num_epochs: int, pruned_epochs: int, message: str
) -> None:
    budget = SavingBudget(0.2)
    with pytest.warns(UserWarning, match=message):
        budget.check_schedule(num_epochs, pruned_epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ShortScheduleWarning)  # test_regime.py
        budget.check_schedule(num_epochs, pruned_epochs)  # once
        SavingBudget(0.2).check_schedule(10, 4)  # 0.9 x 3 / 10 = 27% >= 20%: silent
    with pytest.raises(ValueError, match="SavingBudget needs epoch-based training"):
        budget.check_schedule(None, None)


@pytest.mark.parametrize(("num_epochs", "delta"), [(1, 0.875), (4, 0.0)])
def test_a_run_with_no_prunable_epoch_warns_once_and_saves_nothing(
    num_epochs: int, delta: float
) -> None:
    """Needs the sampler to call ``SavingBudget.check_schedule`` when it is built."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = InfoBatch(
            IndexedDataset(SIZE), num_epochs, delta=delta, rule=SavingBudget(0.2), seed=0
        )
        train(dataset, range(num_epochs))
    messages = budget_messages(caught)
    assert len(messages) == 1 and "no epoch can be pruned" in messages[0]
    assert dataset.saved_fraction == 0.0


def test_the_ratio_counts_the_expected_draws_of_the_well_learned_samples() -> None:
    n, epoch = 300, 3
    scores = skewed_loss(torch.arange(n))
    below = MeanThreshold.of(scores)
    num_well = below.count_below(scores)
    # Without weights a budget over 2N draws plans as over N samples: only the unit changes.
    budget = SavingBudget(0.3)
    plain = context(epoch, n, pruned_epochs_before(epoch, n, 150))
    doubled = context(epoch, n, pruned_epochs_before(epoch, 2 * n, 300), epoch_size=2 * n)
    assert budget.passes_of(scores, below, num_well, doubled) == (2 * num_well, 2 * n)
    ratio = budget.ratio_for(plain, num_well)[0]
    assert 0.1 < ratio < 0.9
    assert budget.ratio_for(doubled, 2 * num_well)[0] == pytest.approx(ratio, rel=1e-12)
    # With weights, the well-learned samples make their share of the draws.
    weights = 1.0 + (torch.arange(n) % 4).double()
    draws = 2 * n
    weighted = context(epoch, n, pruned_epochs_before(epoch, draws, 300), draws, weights)
    share = float(weights[scores < below.threshold].sum() / weights.sum())
    expected_passes = draws * share
    passes, scored = budget.passes_of(scores, below, num_well, weighted)
    assert passes == pytest.approx(expected_passes, rel=1e-12) and scored == pytest.approx(draws)
    ratio = budget.ratio_for(weighted, passes)[0]
    assert ratio == pytest.approx((0.3 * draws * 10 - 600) / (9 - epoch) / expected_passes)
    # The composed plans prune that many draws on average (Monte Carlo over the coins and draws).
    sampling = WeightedSampling(weights, num_draws=draws)
    pruned = []
    for seed in range(200):
        generator = epoch_generator(seed, epoch)
        plan = build_plan(epoch, scores, WithContext(budget, weighted), generator)
        pruned.append(sampling.compose(plan, generator).num_pruned)
    mean = sum(pruned) / len(pruned)
    assert abs(mean - ratio * expected_passes) < 0.03 * ratio * expected_passes


@pytest.mark.parametrize("num_draws", [2 * SIZE, SIZE // 2])
def test_with_weighted_sampling_the_target_is_realised_in_draws(num_draws: int) -> None:
    """Needs the sampler to give the budget its draws (``EpochContext.epoch_size``/weights)."""
    weights = 1.0 + (torch.arange(SIZE) % 3).double()
    sampling = WeightedSampling(weights, num_draws=num_draws)
    budget = SavingBudget(0.2)
    dataset = InfoBatch(IndexedDataset(SIZE), EPOCHS, sampling=sampling, rule=budget, seed=0)
    with warnings.catch_warnings():
        # Reachable: no warning, although with N/2 draws epoch 1 has few samples scored yet.
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ShortScheduleWarning)  # test_regime.py
        train(dataset, range(EPOCHS))
    assert sum(s.num_samples for s in dataset.history) == num_draws * EPOCHS  # counted in draws
    assert abs(dataset.saved_fraction - 0.2) <= 0.02


def test_only_well_learned_samples_are_pruned_and_kept_ones_are_unbiased() -> None:
    """E[kept * weight] = 1 for every sample, over the pruning draws (full-data expectation)."""
    scores = skewed_loss(torch.arange(300))
    plan_context = context(3, 300)
    total = torch.zeros(300, dtype=torch.float64)
    draws = 400
    mean = scores.double().mean()
    budget = SavingBudget(0.3)
    for seed in range(draws):
        generator = torch.Generator().manual_seed(seed)
        selection = budget.select_for_epoch(scores, generator, plan_context)
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


def test_a_resumed_budget_keeps_its_ratios_and_does_not_warn_again() -> None:
    def make() -> Any:
        return InfoBatch(
            IndexedDataset(SIZE), EPOCHS, rule=SavingBudget(0.35, max_prune_ratio=0.5), seed=0
        )

    straight = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expected = train(straight, range(EPOCHS))
    assert len(budget_messages(caught)) == 1  # out of reach, said at epoch 1
    first = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = train(first, range(EPOCHS), stop=(5, 7))
    assert len(budget_messages(caught)) == 1
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.load_state_dict(torch.load(buffer, weights_only=False))
        assert resumed.sampler.rule.ratios == first.sampler.rule.ratios  # epochs 0-5
        after = train(resumed, range(5, EPOCHS))
    assert budget_messages(caught) == []  # it had warned before the checkpoint
    assert before[:-1] + [before[-1] + after[0]] + after[1:] == expected
    assert resumed.sampler.rule.ratios == straight.sampler.rule.ratios
    assert sorted(resumed.sampler.rule.ratios) == list(range(11))  # every pruned epoch


def test_budget_state_round_trips_and_malformed_state_is_refused() -> None:
    budget = SavingBudget(0.3)
    budget.ratios.update({0: 0.0, 1: 0.25})
    budget._warned = True
    state = budget.state_dict()
    restored = SavingBudget(0.3)
    restored.load_state_dict(state)
    assert restored.ratios == {0: 0.0, 1: 0.25} and restored.state_dict() == state
    restored.ratios[2] = 0.5  # the state is a copy
    assert 2 not in budget.ratios
    bad: list[tuple[Any, type[Exception], str]] = [
        ([1, 2], TypeError, "must be a dict from state_dict"),
        ({**state, "version": 9}, ValueError, "version 9, expected 1"),
        (
            {k: v for k, v in state.items() if k != "warned"},
            ValueError,
            r"missing keys \['warned'\]",
        ),
        ({**state, "target": 0.4}, ValueError, r"saved with SavingBudget\(target=0.4\)"),
        ({**state, "warned": "yes"}, ValueError, "warned must be a bool"),
        ({**state, "ratios": {"1": 0.2}}, ValueError, "ratios must map epochs"),
        ({**state, "ratios": {1: 0.95}}, ValueError, r"\[0, max_prune_ratio=0.9\]"),
        ({**state, "ratios": [0.2]}, ValueError, "ratios must map epochs"),
    ]
    for value, error, message in bad:
        with pytest.raises(error, match=message):
            SavingBudget(0.3).load_state_dict(value)


def test_budget_arguments_are_validated_and_need_epochs() -> None:
    with pytest.raises(ValueError, match=r"Invalid target 1.2, target should be in the interval"):
        SavingBudget(1.2)
    with pytest.raises(TypeError, match="max_prune_ratio must be a float"):
        SavingBudget(0.3, max_prune_ratio="0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SavingBudget needs epoch-based training"):
        dataset = InfoBatch(IndexedDataset(40), None, num_iterations=20, rule=SavingBudget(0.3))
        len(dataset.sampler)  # planning the first pass, if building did not refuse already
    with pytest.raises(ValueError, match="epoch_size should be an int >= 1"):
        context(0, 10, epoch_size=0)
    with pytest.raises(ValueError, match=r"shape \(10,\), got \(3,\)"):
        context(0, 10, sample_weights=torch.ones(3))


def test_the_repr_shows_the_budget_not_an_ignored_prune_ratio() -> None:
    shown = repr(InfoBatch(IndexedDataset(SIZE), EPOCHS, rule=SavingBudget(0.3)).sampler)
    assert "rule=SavingBudget(target=0.3, max_prune_ratio=0.9)" in shown
    assert "prune_ratio=0.5" not in shown
    assert "prune_ratio=0.5" in repr(InfoBatch(IndexedDataset(SIZE), EPOCHS).sampler)
