"""The epoch lifecycle: every transition, alone and through the sampler."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from infobatch import EpochLifecycle, InfoBatchSampler, Phase


# ---------------------------------------------------------------------- the state machine alone
def test_a_fresh_lifecycle_plans_epoch_0_for_an_iteration_and_for_len() -> None:
    life = EpochLifecycle()
    assert life.phase is Phase.UNPLANNED
    assert life.epoch_to_plan_for_iteration() == 0
    assert life.epoch_to_plan_for_len() == 0
    assert life.set_epoch_action(0) == "plan"


def test_an_iteration_without_updates_leaves_the_epoch_ready() -> None:
    life = EpochLifecycle()
    life.planned(0, 10)
    for expected_pass in (1, 2, 3):  # iterate three times, never update
        assert life.epoch_to_plan_for_iteration() is None
        assert life.open_pass() == expected_pass
        life.yielded = 10
    assert life.phase is Phase.READY and life.remaining() == 10
    assert life.set_epoch_action(0) == "nothing"


def test_updates_start_then_complete_the_epoch_and_the_next_iteration_moves_on() -> None:
    life = EpochLifecycle()
    life.planned(0, 10)
    life.open_pass()
    assert life.receive(4) is True  # the epoch's first update starts it
    assert life.phase is Phase.TRAINING
    assert life.receive(6) is False
    assert life.epoch_to_plan_for_len() is None  # the pass under way keeps its length
    assert life.remaining() == 10
    life.complete()
    assert life.epoch_to_plan_for_iteration() == 1
    assert life.epoch_to_plan_for_len() == 1


def test_a_broken_off_pass_keeps_its_length_until_its_iterator_is_closed() -> None:
    life = EpochLifecycle()
    life.planned(3, 10)
    number = life.open_pass()
    life.receive(4)
    assert life.epoch_to_plan_for_len() is None
    life.closed(number - 1)  # an older pass's iterator closing changes nothing
    assert not life.abandoned
    life.closed(number)
    assert life.abandoned
    assert life.epoch_to_plan_for_len() == 4
    assert life.epoch_to_plan_for_iteration() == 4


@pytest.mark.parametrize("phase", [Phase.TRAINING, Phase.COMPLETE])
def test_set_epoch_of_the_trained_epoch_restarts_it_and_another_epoch_is_planned(
    phase: Phase,
) -> None:
    life = EpochLifecycle()
    life.planned(2, 10)
    life.open_pass()
    life.receive(10)
    if phase is Phase.COMPLETE:
        life.complete()
    assert life.set_epoch_action(2) == "restart"
    assert life.set_epoch_action(3) == "plan"
    assert life.set_epoch_action(1) == "plan"  # backwards too
    life.restart()
    assert (life.phase, life.epoch, life.remaining(), life.consumed) == (Phase.READY, 2, 10, 0)


def test_a_mid_epoch_position_is_where_every_pass_starts_until_an_update() -> None:
    life = EpochLifecycle()
    life.planned(5, 10, position=6)
    assert life.remaining() == 4
    life.open_pass()
    assert (life.start, life.yielded, life.consumed) == (6, 6, 6)
    life.yielded = 10
    life.open_pass()  # a pass without updates (evaluation), then the real one
    assert (life.start, life.yielded) == (6, 6)
    life.receive(4)
    assert life.consumed == 10


def test_an_unplanned_epoch_boundary_plans_the_saved_epoch() -> None:
    life = EpochLifecycle()
    life.unplanned(7)
    assert life.epoch_to_plan_for_iteration() == 7 and life.set_epoch_action(7) == "plan"
    with pytest.raises(RuntimeError, match="READY"):
        life.open_pass()


# ---------------------------------------------------------------------- through the sampler
def train_epoch(
    sampler: InfoBatchSampler, stop_after: int | None = None, iterator: Iterator[int] | None = None
) -> list[int]:
    """Iterate once (or go on with ``iterator``), updating every batch of 4."""
    seen: list[int] = []
    batch: list[int] = []
    for index in iterator if iterator is not None else sampler:
        batch.append(index)
        if len(batch) == 4:
            sampler.update(torch.tensor(batch, dtype=torch.float32) + 1)
            seen += batch
            batch = []
            if stop_after is not None and len(seen) >= stop_after:
                break
    if batch:
        sampler.update(torch.tensor(batch, dtype=torch.float32) + 1)
        seen += batch
    return seen


def test_sampler_phases_follow_iterations_updates_and_set_epoch() -> None:
    sampler = InfoBatchSampler(22, num_epochs=6, seed=1)
    assert sampler.phase is Phase.UNPLANNED
    assert len(sampler) == 22 and sampler.phase is Phase.READY
    first = list(sampler)
    assert list(sampler) == first  # no update: the same plan again
    assert sampler.history == []  # nothing counted yet
    train_epoch(sampler)
    assert sampler.phase is Phase.COMPLETE and [s.epoch for s in sampler.history] == [0]
    one = list(sampler)  # iterating after a complete epoch plans the next
    assert sampler.epoch == 1 and sampler.phase is Phase.READY
    assert train_epoch(sampler) == one
    sampler.set_epoch(1)  # the epoch just trained: trained again with the same plan
    assert sampler.epoch == 1 and list(sampler) == one
    sampler.set_epoch(4)
    assert sampler.epoch == 4 and sampler.phase is Phase.READY
    sampler.set_epoch(2)  # backwards
    assert sampler.epoch == 2


def test_break_then_iterate_trains_the_next_epoch_and_len_sees_it() -> None:
    sampler = InfoBatchSampler(40, num_epochs=6, seed=2)
    train_epoch(sampler)
    planned = len(sampler)  # epoch 1
    iterator = iter(sampler)
    batch = torch.tensor([next(iterator) for _ in range(4)])
    sampler.update(batch.float())
    assert len(sampler) == planned  # inside the loop: the pass under way
    del iterator  # the loop broke off: its iterator is gone
    missing = rf"{planned - 4} of the {planned} samples planned for epoch 1"
    with pytest.warns(UserWarning, match=missing):
        announced = len(sampler)  # so this is epoch 2's length
    assert sampler.epoch == 2
    assert len(train_epoch(sampler)) == announced


# ---------------------------------------------------------------------- resume at each state
def drive(sampler: InfoBatchSampler, state: str) -> Iterator[int] | None:
    """Bring a fresh sampler to one lifecycle state; return the live iteration, if any."""
    if state == "unplanned":
        return None
    train_epoch(sampler)  # epoch 0 complete
    if state == "complete":
        return None
    len(sampler)  # epoch 1 planned
    if state == "ready":
        return None
    iterator = iter(sampler)
    batch = torch.tensor([next(iterator) for _ in range(4)])
    sampler.update(batch.float() + 1)
    if state == "training":
        return iterator
    sampler.set_epoch(1)  # "restarted": epoch 1's plan again, scores changed since planning
    assert state == "restarted"
    return None


def rest_of_run(sampler: InfoBatchSampler, iterator: Iterator[int] | None) -> list[int]:
    """Everything the run trains from here to the end of epoch 3, in order."""
    seen = train_epoch(sampler, iterator=iterator) if iterator is not None else []
    while sampler.epoch < 3 or sampler.phase is not Phase.COMPLETE:
        seen += train_epoch(sampler)
    return seen


@pytest.mark.parametrize("state", ["unplanned", "ready", "training", "complete", "restarted"])
def test_a_checkpoint_taken_in_any_state_resumes_exactly(state: str) -> None:
    straight = InfoBatchSampler(30, num_epochs=5, seed=4)
    live = drive(straight, state)
    saved = straight.state_dict()
    resumed = InfoBatchSampler(30, num_epochs=5, seed=4)
    resumed.load_state_dict(saved)
    assert resumed.epoch == straight.epoch + (state == "complete")
    expected = rest_of_run(straight, live)  # the uninterrupted run goes on with its loop
    assert rest_of_run(resumed, None) == expected
    assert torch.equal(resumed.scores.nan_to_num(-1), straight.scores.nan_to_num(-1))
    if state in ("training", "restarted"):
        assert saved["plan"] is not None  # rebuilding the plan from the scores would differ
    else:
        assert saved["plan"] is None
