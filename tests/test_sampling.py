"""Composition with the user's own sampling: balanced draws, per-sample pruning, unbiased."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from infobatch import (
    InfoBatch,
    SoftPruning,
    WeightedSampling,
    build_plan,
    class_balanced_weights,
    epoch_generator,
)
from infobatch.plan import PRUNED, UPWEIGHTED
from tests.helpers import IndexedDataset, loss_of

SIZE = 200
LABELS = torch.tensor([0] * 180 + [1] * 20)  # an imbalanced dataset: 90% / 10%


def test_class_balanced_weights_draw_each_class_equally_often() -> None:
    weights = class_balanced_weights(LABELS)
    assert weights[0] == pytest.approx(1 / 180) and weights[-1] == pytest.approx(1 / 20)
    draws = WeightedSampling(weights, num_draws=20_000).draw(torch.Generator().manual_seed(0))
    minority = float((LABELS[draws] == 1).double().mean())
    assert abs(minority - 0.5) < 0.02  # 4 standard errors
    assert draws.dtype == torch.int64 and int(draws.min()) >= 0 and int(draws.max()) < SIZE


def test_a_composed_plan_trains_the_draws_of_kept_samples_with_their_weights() -> None:
    scores = loss_of(torch.arange(SIZE))
    sampling = WeightedSampling(class_balanced_weights(LABELS), num_draws=300)
    generator = epoch_generator(3, 1)
    plan = sampling.compose(build_plan(1, scores, SoftPruning(0.5), generator), generator)
    order = plan.order.long()
    assert plan.num_samples == 300 and plan.num_kept == order.numel() < 300
    assert (plan.status[order] != PRUNED).all()  # no draw of a pruned sample
    counts = Counter(order.tolist())
    assert max(counts.values()) > 1  # the minority class is drawn repeatedly
    assert plan.num_pruned == 300 - order.numel()


def test_pruning_the_draws_is_unbiased_for_the_users_sampling() -> None:
    """E[weighted kept draws of a sample] = E[draws of it] = num_draws * p_i, over seeds."""
    scores = loss_of(torch.arange(SIZE))
    weights = class_balanced_weights(LABELS)
    sampling = WeightedSampling(weights, num_draws=400)
    runs = 300
    weighted = torch.zeros(SIZE, dtype=torch.float64)
    for seed in range(runs):
        generator = epoch_generator(seed, 1)
        plan = sampling.compose(build_plan(1, scores, SoftPruning(0.5), generator), generator)
        order = plan.order.long()
        per_draw = torch.where(plan.status[order] == UPWEIGHTED, plan.weight, 1.0).double()
        weighted.index_add_(0, order, per_draw)
    expected = 400 * weights / weights.sum()
    by_class = [float(weighted[LABELS.eq(c)].sum() / runs) for c in (0, 1)]
    assert by_class == pytest.approx([200.0, 200.0], rel=0.03)  # balanced, as drawn
    relative = (weighted / runs - expected) / expected
    assert float(relative.abs().mean()) < 0.15  # per sample, noisy but centred
    assert abs(float((weighted / runs).sum()) - 400) < 400 * 0.02


def train(dataset: Any, epochs: range, stop: tuple[int, int] | None = None) -> list[list[int]]:
    loader = DataLoader(dataset, batch_size=16, sampler=dataset.sampler)
    orders = []
    for epoch in epochs:
        dataset.sampler.set_epoch(epoch)
        assert len(loader) == -(-len(dataset.sampler) // 16)
        order: list[int] = []
        for step, (x, _label) in enumerate(loader):
            if stop == (epoch, step):
                return orders + [order]
            dataset.update(loss_of(x[:, 0]))
            order += x[:, 0].long().tolist()
        orders.append(order)
    return orders


def balanced(seed: int = 0) -> Any:
    sampling = WeightedSampling(class_balanced_weights(LABELS), num_draws=240)
    return InfoBatch(IndexedDataset(SIZE), 6, sampling=sampling, seed=seed)


def test_a_training_loop_with_balanced_draws_prunes_and_counts_draws() -> None:
    dataset = balanced()
    orders = train(dataset, range(6))
    assert [len(o) for o in orders][0] == 240 and min(len(o) for o in orders) < 240
    assert all(s.num_samples == 240 for s in dataset.history)
    assert 0 < dataset.saved_fraction < 0.5
    minority = sum(LABELS[i] == 1 for o in orders for i in o) / sum(len(o) for o in orders)
    assert 0.35 < minority < 0.65


@pytest.mark.parametrize("stop", [(2, 0), (3, 5)])
def test_a_run_with_draws_resumes_exactly(stop: tuple[int, int]) -> None:
    expected = train(balanced(), range(6))
    first = balanced()
    before = train(first, range(6), stop=stop)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = balanced()
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    after = train(resumed, range(stop[0], 6))
    assert before[:-1] + [before[-1] + after[0]] + after[1:] == expected


def test_sampling_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="weights are all zero"):
        WeightedSampling([0.0, 0.0])
    with pytest.raises(ValueError, match="finite and non-negative"):
        WeightedSampling([1.0, -1.0])
    with pytest.raises(ValueError, match="Invalid num_draws 0"):
        WeightedSampling([1.0], num_draws=0)
    with pytest.raises(ValueError, match="3 weights but the dataset has 10 samples"):
        InfoBatch(IndexedDataset(10), 2, sampling=WeightedSampling([1.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="give its per-sample weights"):
        InfoBatch(IndexedDataset(10), 2, sampling=[1.0] * 10)  # type: ignore[arg-type]
