"""Iterations that start while an epoch is being trained, and epochs that keep no sample.

A peek (``next(iter(loader))``), an evaluation pass over the training loader or a second loader
started *during* an epoch must neither end that epoch nor take its losses: the running loop
trains all its batches and each loss lands on its own sample. An epoch whose plan keeps no
sample completes at once and enters ``history``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from infobatch import InfoBatch, InfoBatchError, InfoBatchSampler, Phase, iterations
from infobatch.rule import PRUNED, Selection, count_scored
from tests.helpers import IndexedDataset, loss_of

SIZE, BATCH = 80, 8


def scores_are_the_samples_own(dataset: InfoBatch[Any]) -> None:
    scores = dataset.scores
    scored = ~torch.isnan(scores)
    expected = loss_of(torch.arange(SIZE))
    assert torch.equal(scores[scored], expected[scored])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_evaluation_pass_and_a_peek_during_an_epoch_change_nothing(num_workers: int) -> None:
    dataset = InfoBatch(IndexedDataset(SIZE), num_epochs=4, delta=0.75, seed=1)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=dataset.sampler, num_workers=num_workers)
    for epoch in range(4):
        expected = len(loader)
        trained: list[int] = []
        for step, (x, _label) in enumerate(loader):
            dataset.update(loss_of(x[:, 0]))
            trained += x[:, 0].long().tolist()
            if step == 3:
                evaluated = [int(i) for xs, _ in loader for i in xs[:, 0]]  # a whole pass
                peeked, _ = next(iter(loader))
                assert dataset.epoch == epoch and len(loader) == expected
                assert sorted(evaluated) == sorted(dataset.sampler.plan.order.tolist())  # type: ignore[union-attr]
                assert peeked[0, 0] == evaluated[0]
        assert len(trained) == len(dataset.sampler.plan.order)  # type: ignore[union-attr]
        assert sorted(trained) == sorted(dataset.sampler.plan.order.tolist())  # type: ignore[union-attr]
        assert dataset.epoch == epoch and dataset.sampler.phase is Phase.COMPLETE
        scores_are_the_samples_own(dataset)
    assert [s.epoch for s in dataset.history] == [0, 1, 2, 3]
    assert dataset.history[1].num_pruned > 0


def test_an_evaluation_pass_during_an_iteration_run_changes_nothing() -> None:
    dataset = InfoBatch(IndexedDataset(SIZE), num_epochs=None, num_iterations=40, seed=1)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=dataset.sampler)
    updates_per_pass: dict[int, int] = {}
    for step, (x, _label) in enumerate(iterations(loader, 40)):
        dataset.update(loss_of(x[:, 0]))
        updates_per_pass[dataset.epoch] = updates_per_pass.get(dataset.epoch, 0) + 1
        if step % 7 == 3:
            sum(1 for _ in loader)  # evaluation on the training loader, inside a pass
    assert dataset.sampler.iterations_done == 40
    history = dataset.history
    assert [s.epoch for s in history] == list(range(len(history))) == sorted(updates_per_pass)
    for stats in history[:-1]:  # every pass but the one cut at the count trained all batches
        assert updates_per_pass[stats.epoch] == -(-stats.num_kept // BATCH)
    scores_are_the_samples_own(dataset)


class PruneEverything:
    """A rule that keeps no scored sample (as a high ratio on a tiny dataset can)."""

    def select(self, scores: Tensor, generator: torch.Generator) -> Selection:
        status = torch.where(torch.isnan(scores), 1, PRUNED).to(torch.int8)
        return Selection(status, 1.0, float("nan"), count_scored(scores), count_scored(scores))


def test_an_epoch_that_keeps_no_sample_completes_and_the_next_ones_train() -> None:
    dataset = InfoBatch(IndexedDataset(20), num_epochs=4, delta=0.5, rule=PruneEverything())
    loader = DataLoader(dataset, batch_size=4, sampler=dataset.sampler)
    batches = []
    for epoch in range(4):
        count = 0
        for x, _label in loader:
            dataset.update(loss_of(x[:, 0]))
            count += 1
        batches.append(count)
        assert dataset.epoch == epoch
    assert batches == [5, 0, 5, 5]  # epoch 1 is empty, 2 and 3 anneal
    assert [(s.epoch, s.num_kept) for s in dataset.history] == [(0, 20), (1, 0), (2, 20), (3, 20)]


def test_an_empty_epoch_completes_without_set_epoch_and_with_len_first() -> None:
    sampler = InfoBatchSampler(6, num_epochs=3, delta=0.5, rule=PruneEverything())
    for _epoch in range(3):
        length = len(sampler)
        indices = list(sampler)
        assert len(indices) == length
        if indices:
            sampler.update(loss_of(torch.tensor(indices)))
    assert [s.num_kept for s in sampler.history] == [6, 0, 6]


def test_iteration_mode_with_passes_that_keep_nothing_names_the_cause() -> None:
    dataset = InfoBatch(
        IndexedDataset(20), num_epochs=None, num_iterations=30, rule=PruneEverything()
    )
    loader = DataLoader(dataset, batch_size=4, sampler=dataset.sampler)
    with pytest.raises(InfoBatchError, match="kept no sample"):
        for x, _label in iterations(loader, 30):
            dataset.update(loss_of(x[:, 0]))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_zero_in_kept_counts_gives_an_empty_epoch_that_completes(workers: int) -> None:
    from infobatch.policies import DynamicRandom

    rule = DynamicRandom(kept_counts=[20, 0, 12, 20])
    dataset = InfoBatch(IndexedDataset(20), num_epochs=4, delta=0.75, rule=rule)
    loader = DataLoader(dataset, batch_size=4, sampler=dataset.sampler, num_workers=workers)
    for _epoch in range(4):
        for x, _label in loader:
            dataset.update(loss_of(x[:, 0]))
    assert [s.num_kept for s in dataset.history] == [20, 0, 12, 20]
