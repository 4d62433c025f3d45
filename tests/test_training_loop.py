"""The three-line usage inside real DataLoader loops: attribution, lengths, LR schedules."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import pytest
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from infobatch import InfoBatch
from infobatch.plan import UPWEIGHTED
from tests.helpers import IndexedDataset, loss_of

T = TypeVar("T")


def prefetch(batches: Iterable[T], depth: int) -> Iterator[T]:
    """Read ``depth`` batches ahead of the consumer, like GPU prefetchers do."""
    buffer: deque[T] = deque()
    for batch in batches:
        buffer.append(batch)
        if len(buffer) > depth:
            yield buffer.popleft()
    while buffer:
        yield buffer.popleft()


class Shifted(Dataset[tuple[torch.Tensor, int]]):
    """IndexedDataset whose items report ``index + offset``."""

    def __init__(self, size: int, offset: int) -> None:
        self.size, self.offset = size, offset

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(index + self.offset)]), index + self.offset


def run_epochs(
    dataset: InfoBatch[Any],
    loader: Iterable[Any],
    epochs: int,
    to_position: dict[int, int] | None = None,
    accumulate: int = 1,
) -> list[int]:
    """Train a fake model; check each returned mean and recorded score; return batch counts."""
    counts = []
    for _ in range(epochs):
        expected_len = len(loader)  # type: ignore[arg-type]
        seen = 0
        for x, label in loader:
            loss = loss_of(x[:, 0])
            positions = (
                label if to_position is None else torch.tensor([to_position[int(v)] for v in label])
            )
            plan = dataset.sampler.plan
            assert plan is not None
            weights = torch.where(plan.status[positions] == UPWEIGHTED, plan.weight, 1.0)
            result = dataset.update(loss)
            assert torch.allclose(result, (weights * loss).sum() / len(loss))
            assert torch.equal(dataset.scores[positions], loss)
            seen += 1
            if seen % accumulate == 0:
                pass  # an optimizer step would go here; updates need not be one per step
        assert seen == expected_len
        counts.append(seen)
    return counts


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_losses_reach_the_right_samples_with_workers_and_drop_last(
    num_workers: int, drop_last: bool
) -> None:
    dataset = InfoBatch(IndexedDataset(203), num_epochs=6, drop_last=drop_last)
    loader = DataLoader(
        dataset,
        batch_size=16,
        sampler=dataset.sampler,
        num_workers=num_workers,
        drop_last=drop_last,
    )
    counts = run_epochs(dataset, loader, epochs=6)
    assert counts[0] == (203 // 16 if drop_last else 13)
    assert min(counts[1:5]) < counts[0]  # pruning happened
    assert dataset.get_pruned_count() > 0


@pytest.mark.parametrize("depth", [1, 3])
def test_losses_reach_the_right_samples_behind_a_prefetcher(depth: int) -> None:
    dataset = InfoBatch(IndexedDataset(150), num_epochs=5)
    loader = DataLoader(
        dataset, batch_size=8, sampler=dataset.sampler, num_workers=2, prefetch_factor=4
    )

    class Prefetched:
        def __len__(self) -> int:
            return len(loader)

        def __iter__(self) -> Iterator[Any]:
            return prefetch(loader, depth)

    run_epochs(dataset, Prefetched(), epochs=5)


def test_gradient_accumulation_several_updates_per_step() -> None:
    dataset = InfoBatch(IndexedDataset(100), num_epochs=4)
    loader = DataLoader(dataset, batch_size=10, sampler=dataset.sampler)
    run_epochs(dataset, loader, epochs=4, accumulate=3)


def test_subset_inside_infobatch() -> None:
    base = IndexedDataset(300)
    chosen = list(range(0, 300, 3))
    dataset = InfoBatch(Subset(base, chosen), num_epochs=4)
    loader = DataLoader(dataset, batch_size=7, sampler=dataset.sampler)
    run_epochs(dataset, loader, epochs=4, to_position={b: p for p, b in enumerate(chosen)})


def test_concat_dataset_inside_infobatch() -> None:
    dataset = InfoBatch(ConcatDataset([IndexedDataset(50), Shifted(70, offset=50)]), 4)
    loader = DataLoader(dataset, batch_size=9, sampler=dataset.sampler, num_workers=2)
    run_epochs(dataset, loader, epochs=4)


@pytest.mark.parametrize("drop_last", [False, True])
def test_len_loader_at_epoch_start_equals_batches_yielded(drop_last: bool) -> None:
    dataset = InfoBatch(IndexedDataset(97), num_epochs=8, drop_last=drop_last)
    loader = DataLoader(dataset, batch_size=10, sampler=dataset.sampler, drop_last=drop_last)
    lengths = []
    for _ in range(8):
        announced = len(loader)
        assert len(loader) == announced  # asking twice does not move on
        yielded = 0
        for x, _label in loader:
            assert len(loader) == announced  # stable during the epoch
            dataset.update(loss_of(x[:, 0]))
            yielded += 1
        assert yielded == announced
        lengths.append(announced)
    assert len(set(lengths)) > 1  # epochs really differ in length
    assert lengths[-1] == (9 if drop_last else 10)  # annealing epoch: all data


def test_set_epoch_each_epoch_gives_the_same_run_as_not_calling_it() -> None:
    def run(call_set_epoch: bool) -> list[list[int]]:
        dataset = InfoBatch(IndexedDataset(60), num_epochs=5, seed=3)
        loader = DataLoader(dataset, batch_size=8, sampler=dataset.sampler)
        orders = []
        for epoch in range(5):
            if call_set_epoch:
                dataset.sampler.set_epoch(epoch)
            order = []
            for x, label in loader:
                dataset.update(loss_of(x[:, 0]))
                order += label.tolist()
            orders.append(order)
        return orders

    assert run(True) == run(False)


def test_delta_zero_is_ordinary_shuffled_full_data_training() -> None:
    dataset = InfoBatch(IndexedDataset(50), num_epochs=4, prune_ratio=0.5, delta=0.0)
    loader = DataLoader(dataset, batch_size=10, sampler=dataset.sampler)
    orders = []
    for _ in range(4):
        order = []
        for x, label in loader:
            loss = loss_of(x[:, 0])
            mean = loss.sum() / len(loss)  # up to the last bit (summed in another order)
            assert torch.allclose(dataset.update(loss), mean, rtol=2e-7, atol=0)
            order += label.tolist()
        assert sorted(order) == list(range(50))
        orders.append(order)
    assert orders[0] != orders[1]
    assert dataset.get_pruned_count() == 0


def _train_with_one_cycle(num_epochs: int, recreate_each_epoch: bool) -> tuple[Any, list[float]]:
    dataset = InfoBatch(IndexedDataset(120), num_epochs=num_epochs)
    loader = DataLoader(dataset, batch_size=10, sampler=dataset.sampler)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = dict(max_lr=0.1, epochs=num_epochs, div_factor=25, final_div_factor=1e4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        steps_per_epoch=len(loader),
        **schedule,  # type: ignore[arg-type]
    )
    used_lrs = []
    for epoch in range(num_epochs):
        if recreate_each_epoch:  # the documented recipe (as in the official example)
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                steps_per_epoch=len(loader),
                last_epoch=epoch * len(loader) - 1,
                **schedule,  # type: ignore[arg-type]
            )
        for x, _label in loader:
            loss = dataset.update((model(x / 120)[:, 0] - 1.0) ** 2)
            optimizer.zero_grad()
            loss.backward()
            used_lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    return scheduler, used_lrs


def test_one_cycle_recreated_per_epoch_ends_exactly_at_the_end_of_training() -> None:
    scheduler, used_lrs = _train_with_one_cycle(num_epochs=6, recreate_each_epoch=True)
    assert scheduler.last_epoch == scheduler.total_steps  # every step taken, none too many
    assert used_lrs[-1] == pytest.approx(0.1 / 25 / 1e4, rel=1e-6)  # last step at the final LR
    assert max(used_lrs) == pytest.approx(0.1, rel=1e-2)


def test_one_cycle_sized_once_ends_early_which_is_why_the_recipe_recreates_it() -> None:
    # Negative control: a schedule sized with epoch 0's length never reaches its end.
    scheduler, used_lrs = _train_with_one_cycle(num_epochs=6, recreate_each_epoch=False)
    assert len(used_lrs) < scheduler.total_steps
    assert used_lrs[-1] > 10 * (0.1 / 25 / 1e4)
