"""Per-class statistics (``class_labels=``) and deferred score recording."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from infobatch import InfoBatch, InfoBatchSampler, ScoreTable, WeightedSampling
from infobatch.plan import PRUNED

LABELS = torch.arange(120) % 4


def trained(epochs: int = 3, **kwargs: object) -> InfoBatch[tuple[torch.Tensor, ...]]:
    data = TensorDataset(torch.linspace(0, 1, 120), LABELS)
    dataset = InfoBatch(data, 4, 0.5, 0.75, seed=2, class_labels=LABELS, **kwargs)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=32, sampler=dataset.sampler)
    for _ in range(epochs):
        for x, y in loader:
            dataset.update(x + 0.1 * y)  # class 3 learns slowest: pruned least
    return dataset


def test_per_class_counts_add_up_and_match_the_plan() -> None:
    dataset = trained(epochs=2)
    plan = dataset.sampler.plan
    assert plan is not None and plan.epoch == 1 and plan.num_pruned > 0
    stats = dataset.history[1]
    assert stats.kept_per_class is not None and stats.pruned_per_class is not None
    assert sum(stats.kept_per_class) == stats.num_kept
    assert sum(stats.pruned_per_class) == stats.num_pruned
    pruned = torch.bincount(LABELS[plan.status == PRUNED], minlength=4)
    assert list(stats.pruned_per_class) == pruned.tolist()
    assert stats.pruned_per_class[0] > stats.pruned_per_class[3]
    assert dataset.history[0].pruned_per_class == (0, 0, 0, 0)


def test_per_class_counts_are_none_without_labels_and_kept_only_under_sampling() -> None:
    plain = InfoBatchSampler(20, num_epochs=2)
    for _ in plain:
        pass
    plain.update(torch.rand(20))
    assert plain.history[0].kept_per_class is None and plain.history[0].pruned_per_class is None
    labels = torch.arange(20) % 2
    sampling = WeightedSampling(torch.ones(20), num_draws=30)
    drawn = InfoBatchSampler(20, num_epochs=2, sampling=sampling, class_labels=labels)
    order = list(drawn)
    drawn.update(torch.rand(len(order)))
    stats = drawn.history[0]
    assert stats.pruned_per_class is None and stats.kept_per_class is not None
    assert sum(stats.kept_per_class) == 30


def test_per_class_counts_survive_a_checkpoint() -> None:
    dataset = trained(epochs=2)
    data = TensorDataset(torch.linspace(0, 1, 120), LABELS)
    resumed = InfoBatch(data, 4, 0.5, 0.75, seed=2, class_labels=LABELS)
    resumed.load_state_dict(dataset.state_dict())
    assert resumed.history[1].pruned_per_class == dataset.history[1].pruned_per_class
    assert isinstance(resumed.history[1].pruned_per_class, tuple)


@pytest.mark.parametrize(
    ("labels", "error", "message"),
    [
        (torch.rand(120), TypeError, "integer class labels"),
        (torch.zeros(119, dtype=torch.int64), ValueError, "one class label per sample"),
        (torch.full((120,), -1), ValueError, ">= 0"),
    ],
)
def test_bad_class_labels_say_what_to_pass(
    labels: torch.Tensor, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        InfoBatchSampler(120, num_epochs=2, class_labels=labels)


losses = st.lists(
    st.one_of(
        st.floats(0, 10, width=32),
        st.sampled_from([float("nan"), float("inf")]),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(losses, min_size=1, max_size=80),
    momentum=st.sampled_from([0.0, 0.5]),
    read_at=st.integers(0, 80),
)
def test_deferred_recording_gives_the_same_table_as_recording_each_batch(
    batches: list[list[float]], momentum: float, read_at: int
) -> None:
    """Queued batches (each sample once, as in an epoch) leave the table, its counters and
    every read in between exactly as recording each batch at once does."""
    total = sum(len(b) for b in batches)
    at_once, deferred = (ScoreTable(total, momentum=momentum) for _ in range(2))
    for table in (at_once, deferred):
        table.load(torch.rand(total, generator=torch.Generator().manual_seed(0)))
    start = 0
    for number, batch in enumerate(batches):
        indices = torch.arange(start, start + len(batch))
        scores = torch.tensor(batch)
        at_once.record(indices, scores)
        deferred.record(indices, scores, defer=True)
        if number == read_at:  # a read in the middle sees every queued batch
            assert torch.equal(deferred.values.isnan(), at_once.values.isnan())
            assert torch.equal(deferred.view().nan_to_num(-1), at_once.view().nan_to_num(-1))
        start += len(batch)
    assert torch.equal(deferred.values, at_once.values)
    assert deferred.pop_counts() == at_once.pop_counts()


def test_deferral_is_ignored_where_it_would_change_the_result() -> None:
    table = ScoreTable(4)
    table.record(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]), defer=True)
    table.record(  # valid= records at once, after the queued batch
        torch.tensor([2, 3]), torch.tensor([3.0, 4.0]), torch.tensor([True, False]), defer=True
    )
    assert table.values.tolist()[:3] == [1.0, 2.0, 3.0] and table.values[3].isnan()
    wide = ScoreTable(1)
    wide.record(torch.tensor([0]), torch.tensor([1e300], dtype=torch.float64), defer=True)
    assert wide.pop_counts() == (0, 1)  # float64 beyond float32 is counted as saturated


def test_a_queued_batch_is_a_copy_of_the_scores_given() -> None:
    table = ScoreTable(2)
    scores = torch.tensor([1.0, 2.0])
    table.record(torch.tensor([0, 1]), scores, defer=True)
    scores.mul_(10)  # the caller reuses its tensor before the queue is recorded
    assert table.values.tolist() == [1.0, 2.0]
