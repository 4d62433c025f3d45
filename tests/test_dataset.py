"""The InfoBatch wrapper: official-compatible surface, delegation, validation, statistics."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from infobatch import InfoBatch, InfoBatchSampler
from tests.helpers import IndexedDataset, loss_of


def test_official_positional_order_and_defaults() -> None:
    dataset = InfoBatch(IndexedDataset(10), 20, 0.3, 0.5)
    assert dataset.sampler.num_epochs == 20
    assert dataset.sampler.prune_ratio == 0.3
    assert dataset.sampler.delta == 0.5
    default = InfoBatch(IndexedDataset(10), 20)
    assert (default.sampler.prune_ratio, default.sampler.delta) == (0.5, 0.875)


def test_items_and_attributes_of_the_wrapped_dataset_are_reachable() -> None:
    base = IndexedDataset(10)
    dataset = InfoBatch(base, 4)
    assert len(dataset) == 10
    assert dataset[3][1] == 3 and torch.equal(dataset[3][0], base[3][0])
    assert dataset.classes == ["even", "odd"]
    with pytest.raises(AttributeError):
        _ = dataset.no_such_attribute


def test_setting_an_attribute_of_the_wrapped_dataset_on_the_wrapper_is_refused() -> None:
    """A write would not reach the wrapped dataset (its items would not change): refused with
    what to do; the wrapped dataset's own attribute and new wrapper attributes still work."""
    base = IndexedDataset(10)
    dataset = InfoBatch(base, 4)
    with pytest.raises(AttributeError, match=r"dataset\.dataset\.classes = \.\.\."):
        dataset.classes = ["a", "b"]
    assert base.classes == ["even", "odd"] and "classes" not in vars(dataset)
    dataset.dataset.classes = ["a", "b"]
    assert dataset.classes == ["a", "b"]
    dataset.note = "mine"  # not an attribute of the wrapped dataset: the wrapper's own
    assert dataset.note == "mine" and not hasattr(base, "note")
    outer = InfoBatch(dataset, 4)  # the wrapper's own attributes, though the inner has them
    assert outer.dataset is dataset and outer.sampler is not dataset.sampler


def test_sampler_property_is_one_object() -> None:
    dataset = InfoBatch(IndexedDataset(10), 4)
    assert dataset.sampler is dataset.sampler
    assert isinstance(dataset.sampler, InfoBatchSampler)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_prune_ratio_out_of_range_is_rejected(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"Invalid prune_ratio .* interval \[0, 1\)"):
        InfoBatch(IndexedDataset(10), 4, ratio)


def test_bad_epochs_and_delta_are_rejected() -> None:
    with pytest.raises(ValueError, match="Invalid num_epochs 0"):
        InfoBatch(IndexedDataset(10), 0)
    with pytest.raises(ValueError, match="Invalid delta 2"):
        InfoBatch(IndexedDataset(10), 4, 0.5, 2)


def test_empty_and_iterable_datasets_are_rejected() -> None:
    with pytest.raises(ValueError, match="the dataset is empty"):
        InfoBatch(IndexedDataset(0), 4)

    class Stream(IterableDataset[int]):
        def __iter__(self) -> Any:
            return iter(range(3))

    with pytest.raises(TypeError, match="map-style dataset"):
        InfoBatch(Stream(), 4)


def test_invalid_rank_is_rejected_like_distributed_sampler() -> None:
    with pytest.raises(
        ValueError, match=r"Invalid rank 3, rank should be in the interval \[0, 1\]"
    ):
        InfoBatch(IndexedDataset(10), 4, num_replicas=2, rank=3)


def test_statistics_count_every_sample_and_accumulate_savings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dataset = InfoBatch(IndexedDataset(400), num_epochs=8)
    loader = DataLoader(dataset, batch_size=50, sampler=dataset.sampler)
    caplog.set_level(logging.INFO, logger="infobatch")
    for _ in range(8):
        for x, _label in loader:
            dataset.update(loss_of(x[:, 0]))
    history = dataset.history
    assert [s.epoch for s in history] == list(range(8))
    assert all(s.num_kept + s.num_pruned == 400 for s in history)
    assert history[0].num_pruned == 0 and not math.isnan(history[1].threshold)
    assert history[-1].num_pruned == 0 and not history[-1].pruning  # annealing
    pruned = 0
    for i, s in enumerate(history):
        pruned += s.num_pruned
        assert s.saved_fraction == pytest.approx(pruned / (400 * (i + 1)))
    assert dataset.get_pruned_count() == pruned > 0
    assert dataset.saved_fraction == pytest.approx(history[-1].saved_fraction)
    assert len([r for r in caplog.records if r.name == "infobatch"]) == 8
    assert "epoch 1: kept" in caplog.text


def test_mean_score_and_scores_follow_updates() -> None:
    dataset = InfoBatch(IndexedDataset(30), 3)
    assert math.isnan(float(dataset.mean_score()))
    loader = DataLoader(dataset, batch_size=30, sampler=dataset.sampler)
    for x, _label in loader:
        dataset.update(loss_of(x[:, 0]))
    expected = loss_of(torch.arange(30))
    assert torch.equal(dataset.scores, expected)
    assert float(dataset.mean_score()) == pytest.approx(float(expected.mean()))


def test_official_example_training_pattern_runs_unchanged() -> None:
    """Mirrors the official example's calls: positional args, sampler, update under autocast,
    OneCycleLR re-created per epoch with len(trainloader), get_pruned_count()."""
    torch.manual_seed(0)
    x = torch.randn(256, 3, 8, 8)
    y = torch.randint(0, 4, (256,))
    num_epoch, ratio, delta = 5, 0.5, 0.875
    trainset = InfoBatch(torch.utils.data.TensorDataset(x, y), num_epoch, ratio, delta)
    sampler = trainset.sampler
    trainloader = DataLoader(
        trainset, batch_size=32, shuffle=(sampler is None), num_workers=2, sampler=sampler
    )
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1, reduction="none")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 0.1, steps_per_epoch=len(trainloader), epochs=num_epoch
    )
    for epoch in range(num_epoch):
        lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            0.1,
            steps_per_epoch=len(trainloader),
            epochs=num_epoch,
            last_epoch=epoch * len(trainloader) - 1,
        )
        for inputs, targets in trainloader:
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outputs = net(inputs)
                loss = criterion(outputs, targets)
                loss = trainset.update(loss)
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
    assert trainset.get_pruned_count() > 0
    assert lr_scheduler.last_epoch == lr_scheduler.total_steps


def test_asking_len_after_the_last_epoch_does_not_count_an_extra_epoch() -> None:
    dataset = InfoBatch(IndexedDataset(100), num_epochs=3)
    loader = DataLoader(dataset, batch_size=25, sampler=dataset.sampler)
    for _ in range(3):
        for x, _label in loader:
            dataset.update(loss_of(x[:, 0]))
    saved, pruned = dataset.saved_fraction, dataset.get_pruned_count()
    assert len(loader) == 4  # epoch 3 is planned (full data, past num_epochs) ...
    assert [s.epoch for s in dataset.history] == [0, 1, 2]  # ... but not counted
    assert (dataset.saved_fraction, dataset.get_pruned_count()) == (saved, pruned)


def test_batches_are_fetched_through_the_wrapped_datasets_getitems() -> None:
    """The loader fetches a batch with one ``__getitems__`` call: the wrapped dataset's own
    when it has one (a ``Subset``), else item by item; the batches are the same either way."""
    base = TensorDataset(torch.arange(40.0), torch.arange(40))
    calls: list[list[int]] = []

    class Counted(torch.utils.data.Subset):  # type: ignore[type-arg]
        def __getitems__(self, indices: list[int]) -> list[Any]:
            calls.append(list(indices))
            return super().__getitems__(indices)

    for inner, counted in ((base, False), (Counted(base, list(range(40))), True)):
        dataset = InfoBatch(inner, num_epochs=2, seed=3)
        assert dataset.__getitems__([4, 1]) == [inner[4], inner[1]]
        batches = list(DataLoader(dataset, batch_size=16, sampler=dataset.sampler))
        order = [int(i) for x, _ in batches for i in x]
        assert sorted(order) == list(range(40)) and [len(x) for x, _ in batches] == [16, 16, 8]
        if counted:
            assert [len(c) for c in calls] == [2, 16, 16, 8]
