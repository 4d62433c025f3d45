"""Everyday training-loop patterns that must neither corrupt, crash nor hang (one process)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from infobatch import InfoBatch, InfoBatchError, InfoBatchSampler
from tests.helpers import IndexedDataset, loss_of


def make(size: int = 97, epochs: int = 6, batch: int = 8, **kwargs: Any) -> tuple[Any, Any]:
    dataset = InfoBatch(IndexedDataset(size), num_epochs=epochs, seed=3, **kwargs)
    loader = DataLoader(
        dataset, batch_size=batch, sampler=dataset.sampler, drop_last=kwargs.get("drop_last", False)
    )
    return dataset, loader


def train_loop(dataset: Any, loader: Any) -> tuple[int, list[int]]:
    """One training loop; returns the epoch of the plan it trained and the samples it saw."""
    seen: list[int] = []
    epochs = set()
    for x, _label in loader:
        epochs.add(dataset.sampler.plan.epoch)
        dataset.update(loss_of(x[:, 0]))
        seen += x[:, 0].long().tolist()
    assert len(epochs) == 1
    return epochs.pop(), seen


def evaluate(loader: Any) -> int:
    """A pass over the training loader that trains nothing."""
    return sum(len(x) for x, _label in loader)


# ---------------------------------------------------------------------- 1. un-updated iterations
@pytest.mark.parametrize("call_set_epoch", [True, False])
def test_evaluating_on_the_training_loader_after_each_epoch_does_not_consume_epochs(
    call_set_epoch: bool,
) -> None:
    dataset, loader = make()
    trained = []
    for epoch in range(6):
        if call_set_epoch:
            dataset.sampler.set_epoch(epoch)
        trained.append(train_loop(dataset, loader)[0])
        evaluate(loader)
    assert trained == [0, 1, 2, 3, 4, 5]
    assert [s.epoch for s in dataset.history] == [0, 1, 2, 3, 4, 5]


def test_an_iteration_without_updates_yields_the_current_plan_again() -> None:
    dataset, loader = make()
    train_loop(dataset, loader)
    peeked = next(iter(loader))  # a peek at epoch 1
    evaluated = [x[:, 0].long().tolist() for x, _ in loader]  # an evaluation pass
    other_loader = DataLoader(dataset, batch_size=8, sampler=dataset.sampler)
    evaluated_again = [x[:, 0].long().tolist() for x, _ in other_loader]  # a second loader
    epoch, seen = train_loop(dataset, loader)
    assert epoch == 1 and dataset.history[-1].epoch == 1
    assert peeked[0][:, 0].long().tolist() == seen[:8]
    assert sum(evaluated, []) == seen and sum(evaluated_again, []) == seen


def test_set_epoch_then_a_loop_always_trains_that_epoch() -> None:
    dataset, loader = make(epochs=8)
    for epoch in (0, 1, 1, 4, 2):  # forward, the same again, a jump, backwards
        dataset.sampler.set_epoch(epoch)
        assert train_loop(dataset, loader)[0] == epoch


# ---------------------------------------------------------------------- 3. len(loader)
def test_len_is_exact_after_an_epoch_broken_off_without_set_epoch() -> None:
    dataset, loader = make(size=120, epochs=6, batch=10)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule: dict[str, Any] = dict(max_lr=0.1, epochs=6, div_factor=25, final_div_factor=1e4)
    for epoch in range(6):
        steps = len(loader)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, steps_per_epoch=steps, last_epoch=epoch * steps - 1, **schedule
        )
        yielded = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the broken-off epoch's missing updates
            for x, _label in loader:
                loss = dataset.update((model(x / 120)[:, 0] - 1.0) ** 2)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()  # "Tried to step N times" if len(loader) was stale
                yielded += 1
                if epoch == 2 and yielded == 3:
                    break  # a step budget for this epoch
        assert yielded == (3 if epoch == 2 else steps)


def test_len_is_exact_when_drop_last_drops_every_batch_of_an_epoch() -> None:
    # One hard sample and many easy ones: most are below the mean, so pruned epochs keep fewer
    # samples than one batch, and drop_last drops them all.
    dataset = InfoBatch(IndexedDataset(24), num_epochs=8, prune_ratio=0.9, seed=0, drop_last=True)
    loader = DataLoader(dataset, batch_size=8, sampler=dataset.sampler, drop_last=True)
    lengths, empty = [], 0
    for _ in range(8):
        announced = len(loader)
        yielded = 0
        for x, _label in loader:
            losses = torch.where(x[:, 0] == 0, 100.0, 0.01)
            dataset.update(losses)
            yielded += 1
        assert yielded == announced
        lengths.append(announced)
        empty += announced == 0
    assert empty > 0  # the case under test happened
    assert lengths[-1] == 3  # the annealing epoch trains all data again
    assert [s.epoch for s in dataset.history] == list(range(8))


# ---------------------------------------------------------------------- 4. wrong-length losses
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_loss_one_short_on_every_batch_fails_at_the_first_batch(num_workers: int) -> None:
    dataset = InfoBatch(IndexedDataset(56), num_epochs=3)
    loader = DataLoader(dataset, batch_size=8, sampler=dataset.sampler, num_workers=num_workers)
    batches = 0
    with pytest.raises(ValueError, match="one value per sample of the batch"):
        for x, _label in loader:
            batches += 1
            dataset.update(loss_of(x[:-1, 0]))
    assert batches == 1
    assert torch.isnan(dataset.scores).all()  # nothing was attributed to the wrong samples


def test_twice_length_losses_with_workers_fail_at_the_first_batch() -> None:
    dataset = InfoBatch(IndexedDataset(200), num_epochs=3)
    loader = DataLoader(dataset, batch_size=8, sampler=dataset.sampler, num_workers=2)
    batches = 0
    with pytest.raises((ValueError, InfoBatchError), match="one (value|loss) per sample"):
        for x, _label in loader:
            batches += 1
            dataset.update(loss_of(torch.cat([x[:, 0], x[:, 0]])))
    assert batches == 1


def test_with_batch_size_a_half_length_loss_fails_at_the_first_batch() -> None:
    dataset = InfoBatch(IndexedDataset(64), num_epochs=3, batch_size=8)
    loader = DataLoader(dataset, batch_size=8, sampler=dataset.sampler)
    x, _label = next(iter(loader))
    with pytest.raises(ValueError, match=r"batch at position 0 of epoch 0 holds 8 samples"):
        dataset.update(loss_of(x[:4, 0]))


def test_with_batch_size_the_last_partial_batch_is_accepted() -> None:
    dataset = InfoBatch(IndexedDataset(20), num_epochs=3, batch_size=8)
    loader = DataLoader(dataset, batch_size=8, sampler=dataset.sampler)
    for _ in range(3):
        announced = len(loader)
        sizes = [len(dataset.update(loss_of(x[:, 0])).shape) * 0 + len(x) for x, _ in loader]
        assert len(sizes) == announced and sizes[:-1] == [8] * (announced - 1)
    assert dataset.sampler.history[-1].epoch == 2


def test_without_batch_size_a_half_length_loss_is_reported_when_the_epoch_ends() -> None:
    """The documented blind spot: it looks like a smaller batch size until the epoch ends."""
    dataset = InfoBatch(IndexedDataset(64), num_epochs=3)
    loader = DataLoader(dataset, batch_size=8, sampler=dataset.sampler)
    for x, _label in loader:
        dataset.update(loss_of(x[:4, 0]))
    next_loop = iter(loader)  # cannot be told from an evaluation pass: it changes nothing
    x, _label = next(next_loop)
    with pytest.raises(InfoBatchError, match="32 still waiting for update"):
        dataset.update(loss_of(x[:4, 0]))


# ---------------------------------------------------------------------- 5. precision, validation
def test_float64_losses_are_reduced_in_float64() -> None:
    sampler = InfoBatchSampler(2, num_epochs=2, prune_ratio=0.0)
    list(sampler)
    loss = torch.tensor([2.5000000010025, 2.5000000010025], dtype=torch.float64)
    assert sampler.update(loss).item() == 2.5000000010025


def test_finite_float64_scores_beyond_float32_are_saturated_counted_and_warned() -> None:
    sampler = InfoBatchSampler(4, num_epochs=3, prune_ratio=0.0)
    order = list(sampler)
    sampler.update(torch.tensor([1e39, -1e39, 1.0, float("inf")], dtype=torch.float64))
    with pytest.warns(UserWarning, match="2 float64 scores in epoch 0 exceed float32's range"):
        len(sampler)
    big = torch.finfo(torch.float32).max
    assert sampler.scores[order].tolist()[:3] == [big, -big, 1.0]
    assert math.isnan(sampler.scores[order[3]]) and sampler.nonfinite_count == 1


def test_numpy_bools_and_seeds_up_to_2_64_are_accepted() -> None:
    dataset = InfoBatch(IndexedDataset(10), num_epochs=2, drop_last=np.bool_(True), seed=2**64 - 1)
    assert dataset.sampler.drop_last is True
    assert InfoBatch(IndexedDataset(10), 2, seed=2**63).sampler.seed == 2**63
    with pytest.raises(ValueError, match=r"seed should be in the interval \[0, 2\*\*64 - 1\]"):
        InfoBatch(IndexedDataset(10), 2, seed=2**64)
    with pytest.raises(TypeError, match="drop_last must be a bool, got str"):
        InfoBatch(IndexedDataset(10), 2, drop_last="yes")  # type: ignore[arg-type]


def test_an_iterable_dataset_with_a_length_is_rejected_up_front() -> None:
    class Stream(IterableDataset[int]):
        def __iter__(self) -> Any:
            return iter(range(5))

        def __len__(self) -> int:
            return 5

    with pytest.raises(TypeError, match="Stream is an IterableDataset"):
        InfoBatch(Stream(), num_epochs=2)


# ---------------------------------------------------------------------- 8. the default seed
def plan_of_epoch_1(**kwargs: Any) -> list[int]:
    sampler = InfoBatchSampler(64, num_epochs=4, **kwargs)
    order = list(sampler)
    sampler.update(torch.tensor(order, dtype=torch.float32))
    return list(sampler)


def test_the_default_seed_is_the_torch_seed_and_reading_it_draws_nothing() -> None:
    plans = []
    for seed in range(3):
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        plans.append(plan_of_epoch_1())
        assert torch.equal(torch.get_rng_state(), state)  # the global generator did not move
        assert InfoBatchSampler(8, 2).seed == seed
    assert len({tuple(p) for p in plans}) == 3  # each run prunes its own way
    torch.manual_seed(1)
    assert plan_of_epoch_1() == plans[1]  # and reproducibly
    torch.manual_seed(1)
    assert plan_of_epoch_1(seed=7) == plan_of_epoch_1(seed=7)  # an explicit seed wins


def test_a_sampler_without_seed_resumes_with_the_checkpoints_seed() -> None:
    torch.manual_seed(11)
    source = InfoBatchSampler(32, num_epochs=4)
    order = list(source)
    source.update(torch.tensor(order, dtype=torch.float32))
    state = source.state_dict()
    expected = list(source)
    torch.manual_seed(99)  # the resumed process was seeded differently
    resumed = InfoBatchSampler(32, num_epochs=4)
    resumed.load_state_dict(state)
    assert resumed.seed == 11 and list(resumed) == expected
    explicit = InfoBatchSampler(32, num_epochs=4, seed=5)
    with pytest.raises(ValueError, match="saved with seed=11 but this InfoBatch has seed=5"):
        explicit.load_state_dict(state)
