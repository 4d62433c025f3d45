"""``keep_steps=True``: pruned epochs make full data's number of optimizer steps, in smaller
batches, with every planned sample in exactly one batch, exact weights and exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from infobatch import EpochBatchSampler, InfoBatch, InfoBatchSampler
from infobatch.batching import BatchLayout, full_data_share

SIZE, EPOCHS, BATCH = 1000, 4, 16  # 63 full-data batches; pruned epochs keep ~700 samples


class Indices(Dataset[int]):
    """Item ``i`` is ``i``: a batch is the tensor of its indices."""

    def __len__(self) -> int:
        return SIZE

    def __getitem__(self, index: int) -> int:
        return index


def make(keep_steps: bool = True, **kwargs: object) -> InfoBatch[int]:
    return InfoBatch(Indices(), EPOCHS, batch_size=BATCH, keep_steps=keep_steps, seed=3, **kwargs)


def losses_of(indices: torch.Tensor) -> torch.Tensor:
    """A deterministic loss per sample, spread so that pruning has something to prune."""
    return (indices.double() * 0.7548776662).remainder(1.0).float() + 0.01


def train(dataset: InfoBatch[int], loader: DataLoader[torch.Tensor], stop: int | None = None):
    """Batches (index lists) per epoch and the weighted losses update() returned."""
    batches: list[list[list[int]]] = []
    returned: list[float] = []
    for _ in range(dataset.epoch, EPOCHS):
        epoch: list[list[int]] = []
        for indices in loader:
            epoch.append(indices.tolist())
            returned.append(float(dataset.update(losses_of(indices))))
            if stop is not None and sum(map(len, batches)) + len(epoch) == stop:
                batches.append(epoch)
                return batches, returned
        batches.append(epoch)
    return batches, returned


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(0, 20_000),
    share_extra=st.integers(0, 20_000),
    batch_size=st.integers(1, 512),
    data=st.data(),
)
def test_a_kept_steps_layout_cuts_the_epoch_into_full_datas_batches(
    length: int, share_extra: int, batch_size: int, data: st.DataObject
) -> None:
    share = length + share_extra
    full_batches = math.ceil(share / batch_size)
    layout = BatchLayout.keeping_steps(length, share, batch_size)
    sizes, position = [], 0
    while position < length:
        sizes.append(layout.size_at(position))
        assert layout.batches_from(position) == layout.num_batches - len(sizes) + 1
        position += sizes[-1]
    assert position == length and layout.batches_from(length) == 0
    assert len(sizes) == layout.num_batches == min(full_batches, length)
    assert all(size >= 1 for size in sizes) and max(sizes, default=0) == layout.largest
    if share_extra == 0:  # an unpruned epoch is batched as full data
        assert sizes == [min(batch_size, length - i) for i in range(0, length, batch_size)]
    elif sizes:
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        assert max(sizes) <= batch_size
    if sizes:
        at = data.draw(st.integers(0, len(sizes) - 1))
        start = sum(sizes[:at])
        assert layout.batch_at(start) == (at, sizes[at])


def test_full_data_share_is_the_padded_share_of_a_rank() -> None:
    assert full_data_share(203, 2) == 102 and full_data_share(203, 1) == 203
    assert full_data_share(9, 4) == 3


def test_every_epoch_makes_full_datas_steps_and_trains_each_planned_sample_once() -> None:
    dataset = make()
    loader = DataLoader(dataset, batch_sampler=dataset.batch_sampler)
    plain = make(keep_steps=False)
    plain_loader = DataLoader(plain, batch_size=BATCH, sampler=plain.sampler)
    full_batches = math.ceil(SIZE / BATCH)
    for epoch in range(EPOCHS):
        assert len(loader) == full_batches  # asked before the epoch: exact
        batches = [indices.tolist() for indices in loader]
        for indices in batches:
            dataset.update(losses_of(torch.tensor(indices)))
        plan = dataset.sampler.plan
        assert plan is not None and plan.epoch == epoch
        flat = [i for batch in batches for i in batch]
        assert flat == plan.order.tolist()  # the plan, in its order, each sample once
        assert len(batches) == full_batches
        sizes = [len(batch) for batch in batches]
        if epoch > 0:  # pruned: sizes differ by at most one
            assert max(sizes) - min(sizes) <= 1 and max(sizes) < BATCH
        plain_batches = [indices for indices in plain_loader]
        for indices in plain_batches:
            plain.update(losses_of(indices))
        if epoch == 0:
            assert batches == [b.tolist() for b in plain_batches]  # unpruned: as full data
        else:
            assert len(flat) < SIZE and len(plain_batches) < full_batches
            assert flat == plain.sampler.plan.order.tolist()  # the same plan, other batches
    assert dataset.saved_fraction == plain.saved_fraction > 0.15


def test_update_weights_each_smaller_batch_exactly() -> None:
    dataset = make()
    loader = DataLoader(dataset, batch_sampler=dataset.batch_sampler)
    for indices in loader:  # epoch 0: every sample, weight 1
        dataset.update(losses_of(indices))
    upweighted = 0
    for indices in loader:  # epoch 1, pruned: batches of fewer than BATCH samples
        plan = dataset.sampler.plan
        assert plan is not None and len(indices) < BATCH
        weights = plan.weights_of(indices, torch.float64)
        upweighted += int((weights == 2.0).sum())
        expected = (weights * losses_of(indices).double()).sum() / len(indices)
        assert float(dataset.update(losses_of(indices))) == pytest.approx(float(expected), 1e-6)
    assert upweighted > 0


def test_a_wrong_sized_update_is_refused_against_the_epochs_batch_size() -> None:
    dataset = make()
    loader = DataLoader(dataset, batch_sampler=dataset.batch_sampler)
    for indices in loader:
        dataset.update(losses_of(indices))
    batches = iter(loader)
    batch = next(batches)
    assert len(batch) < BATCH
    with pytest.raises(ValueError, match=f"holds {len(batch)} samples"):
        dataset.update(losses_of(batch)[:-1])
    dataset.update(losses_of(batch))
    small = [b for b in batches if len(b) < len(batch)]
    assert small  # the smaller batches come last; each is checked against its own size
    with pytest.raises(ValueError, match=f"holds {len(batch)} samples"):
        dataset.update(losses_of(small[0]))


@pytest.mark.parametrize("stop", [1, 63 + 5, 63 + 62, 63 * 2 + 20])
def test_a_run_resumed_mid_epoch_cuts_the_rest_of_the_epoch_at_the_same_places(
    stop: int,
) -> None:
    straight = make()
    expected, expected_losses = train(
        straight, DataLoader(straight, batch_sampler=straight.batch_sampler)
    )
    first = make()
    done, done_losses = train(first, DataLoader(first, batch_sampler=first.batch_sampler), stop)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    rest, rest_losses = train(resumed, DataLoader(resumed, batch_sampler=resumed.batch_sampler))
    joined = done[:-1] + [done[-1] + rest[0]] + rest[1:]
    assert joined == expected
    assert done_losses + rest_losses == expected_losses
    assert torch.equal(resumed.scores, straight.scores)
    assert repr([s.as_dict(timing=False) for s in resumed.history]) == repr(
        [s.as_dict(timing=False) for s in straight.history]
    )  # nan thresholds compare by repr


def test_a_checkpoint_with_other_keep_steps_is_refused() -> None:
    dataset = make()
    state = dataset.state_dict()
    other = make(keep_steps=False)
    with pytest.raises(ValueError, match="keep_steps=True"):
        other.load_state_dict(state)


def test_states_from_before_keep_steps_load_as_keep_steps_false() -> None:
    plain = make(keep_steps=False)
    state = plain.state_dict()
    del state["keep_steps"]
    make(keep_steps=False).load_state_dict(state)
    with pytest.raises(ValueError, match="keep_steps=None"):
        make().load_state_dict(state)


def test_bad_settings_get_errors_that_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="needs batch_size="):
        InfoBatchSampler(SIZE, EPOCHS, keep_steps=True)
    with pytest.raises(ValueError, match="drop_last=False"):
        InfoBatchSampler(SIZE, EPOCHS, batch_size=BATCH, keep_steps=True, drop_last=True)
    with pytest.raises(ValueError, match="num_iterations the run already"):
        InfoBatchSampler(SIZE, None, num_iterations=100, batch_size=BATCH, keep_steps=True)
    with pytest.raises(TypeError, match="keep_steps"):
        InfoBatchSampler(SIZE, EPOCHS, batch_size=BATCH, keep_steps="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass batch_size= to InfoBatch"):
        EpochBatchSampler(InfoBatchSampler(SIZE, EPOCHS))
    with pytest.raises(ValueError, match="pass batch_size= to InfoBatch"):
        _ = InfoBatchSampler(SIZE, EPOCHS).batch_layout


def test_without_keep_steps_the_batch_sampler_is_the_plain_batching() -> None:
    dataset = make(keep_steps=False)
    batches = [b.tolist() for b in DataLoader(dataset, batch_sampler=dataset.batch_sampler)]
    assert [len(b) for b in batches] == [BATCH] * (SIZE // BATCH) + [SIZE % BATCH]
    assert dataset.sampler.batch_sampler is dataset.batch_sampler  # one object


def test_integrations_that_do_not_take_it_refuse_it_with_the_reason() -> None:
    from infobatch.integrations._loader import infobatch_sampler_of

    dataset = make()
    loader = DataLoader(dataset, batch_sampler=dataset.batch_sampler)
    with pytest.raises(ValueError, match="does not take an InfoBatch with keep_steps=True yet"):
        infobatch_sampler_of(loader, "InfoBatchTrainer")  # the Trainer does not take it
    assert infobatch_sampler_of(loader, "prepare_loader()", keep_steps=True) is dataset.sampler
    plain = make(keep_steps=False)
    found = infobatch_sampler_of(DataLoader(plain, batch_sampler=plain.batch_sampler), "x")
    assert found is plain.sampler
