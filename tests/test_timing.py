"""Time accounting in EpochStats: the clock, the timed loop, and what it leaves out."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from infobatch import EpochClock, InfoBatch, timed_batches
from infobatch.stats import TIMING_FIELDS


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_the_clock_accounts_each_part_of_an_epoch_exactly() -> None:
    fake = FakeClock()
    clock = EpochClock(fake)
    started = clock.planning_started()
    fake.advance(2.0)
    clock.planning_ended(started)
    fake.advance(1.0)  # the loader starting
    clock.first_index()
    for _ in range(3):
        fake.advance(0.5)  # a batch arrives
        clock.add_data(0.5)
        fake.advance(4.0)  # forward
        began = fake()
        fake.advance(0.25)
        clock.add_update(began)
        fake.advance(3.0)  # backward and step
    first = clock.finish()
    assert first.planning_seconds == 2.0 and first.data_seconds == 1.5
    assert first.update_seconds == 0.75
    assert first.epoch_seconds == 3 * 7.75 - 3.0  # ends at the last update, not after its step
    assert math.isnan(first.between_epochs_seconds)
    fake.advance(10.0)  # an evaluation (after the last step's 3 s)
    started = clock.planning_started()
    clock.planning_ended(started)
    clock.first_index()
    began = fake()
    clock.add_update(began)
    second = clock.finish()
    assert second.between_epochs_seconds == 13.0
    assert math.isnan(second.data_seconds)  # the loop was not timed this epoch


def test_a_wait_that_triggered_planning_counts_the_planning_once() -> None:
    fake = FakeClock()
    clock = EpochClock(fake)

    def batches() -> Iterator[int]:
        fake.advance(1.0)  # waiting before the sampler is asked
        started = clock.planning_started()  # the sampler plans inside the first next()
        fake.advance(5.0)
        clock.planning_ended(started)
        clock.first_index()
        fake.advance(2.0)
        yield 0
        fake.advance(0.5)
        yield 1

    assert list(timed_batches(batches(), clock)) == [0, 1]
    timing = clock.finish()
    assert timing.planning_seconds == 5.0
    assert timing.data_seconds == 3.5  # 1 + 2 + 0.5, without the 5 s of planning


def train(dataset: InfoBatch[tuple[torch.Tensor, ...]], epochs: int, timed: bool) -> None:
    loader = DataLoader(dataset, batch_size=16, sampler=dataset.sampler)
    for _ in range(epochs):
        for x, _ in dataset.timed(loader) if timed else loader:
            dataset.update((x.squeeze(1) - 0.3) ** 2)


def make(**kwargs: object) -> InfoBatch[tuple[torch.Tensor, ...]]:
    data = TensorDataset(torch.linspace(0, 1, 100).unsqueeze(1), torch.arange(100) % 3)
    return InfoBatch(data, 4, 0.5, 0.75, seed=1, **kwargs)  # type: ignore[arg-type]


def test_every_epoch_of_a_timed_loop_has_its_time_accounting() -> None:
    timed, untimed = make(), make()
    train(timed, 4, timed=True)
    train(untimed, 4, timed=False)
    for stats in timed.history:
        parts = (stats.planning_seconds, stats.data_seconds, stats.update_seconds)
        assert all(math.isfinite(p) and p >= 0 for p in parts)
        assert stats.epoch_seconds >= stats.data_seconds + stats.update_seconds - 1e-6
        assert stats.training_seconds >= -1e-6
        assert math.isfinite(stats.between_epochs_seconds) == (stats.epoch > 0)
    assert all(math.isnan(s.data_seconds) for s in untimed.history)
    assert all(math.isfinite(s.update_seconds) for s in untimed.history)
    # the time accounting takes no part in equality or repr; as_dict can leave it out
    assert timed.history[1:3] == untimed.history[1:3]  # pruned epochs (others: nan threshold)
    assert repr(timed.history) == repr(untimed.history)
    record = timed.history[1].as_dict(timing=False)
    assert not set(TIMING_FIELDS) & set(record)
    assert set(TIMING_FIELDS) <= set(timed.history[1].as_dict())


def test_time_accounting_survives_a_checkpoint() -> None:
    dataset = make()
    train(dataset, 2, timed=True)
    resumed = make()
    resumed.load_state_dict(dataset.state_dict())
    # repr: nan compares unequal to itself
    assert repr([s.as_dict() for s in resumed.history]) == repr(
        [s.as_dict() for s in dataset.history]
    )


def test_an_epoch_broken_off_gets_its_time_accounting_when_the_next_is_planned() -> None:
    dataset = make()
    loader = DataLoader(dataset, batch_size=16, sampler=dataset.sampler)
    for step, (x, _) in enumerate(loader):
        dataset.update((x.squeeze(1) - 0.3) ** 2)
        if step == 1:
            break
    with pytest.warns(UserWarning, match="never reached update"):
        train(dataset, 1, timed=False)  # plans epoch 1, which ends epoch 0
    first, second = dataset.history[0], dataset.history[1]
    assert math.isfinite(first.epoch_seconds) and math.isfinite(first.update_seconds)
    assert math.isfinite(second.between_epochs_seconds)
