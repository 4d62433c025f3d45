"""Checkpoint/resume: a resumed run equals the uninterrupted one (Composer-style)."""

from __future__ import annotations

import io
import pickle
import warnings
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from infobatch import (
    STATE_VERSION,
    InfoBatch,
    SavingBudget,
    ShortScheduleWarning,
    SoftPruning,
    WeightedSampling,
)

NUM_EPOCHS = 6


def make_run(
    num_workers: int = 0,
) -> tuple[nn.Module, torch.optim.Optimizer, InfoBatch[Any], DataLoader[Any]]:
    data = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=data)
    y = (x[:, :3].sum(dim=1) > 0).long()
    model_init = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=model_init) * 0.3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dataset = InfoBatch(TensorDataset(x, y), num_epochs=NUM_EPOCHS, prune_ratio=0.5, seed=5)
    loader = DataLoader(dataset, batch_size=32, sampler=dataset.sampler, num_workers=num_workers)
    return model, optimizer, dataset, loader


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: InfoBatch[Any],
    loader: DataLoader[Any],
    stop_at: tuple[int, int] | None = None,
) -> tuple[list[list[int]], dict[str, Any] | None]:
    """Train until the end, or until (epoch, batches) and return a checkpoint there."""
    criterion = nn.CrossEntropyLoss(reduction="none")
    seen: list[list[int]] = []
    for _ in range(dataset.epoch, NUM_EPOCHS):  # after a resume, epoch is the one to run
        epoch_seen: list[int] = []
        seen.append(epoch_seen)
        for step, (x, y) in enumerate(loader):
            if stop_at is not None and (dataset.epoch, step) == stop_at:
                return seen, checkpoint(model, optimizer, dataset)
            positions = dataset.sampler._share[dataset.sampler._life.consumed :][: len(y)]
            epoch_seen += positions.tolist()
            loss = dataset.update(criterion(model(x), y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if stop_at is not None and stop_at == (dataset.epoch, -1):
            return seen, checkpoint(model, optimizer, dataset)
    return seen, None


def checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer, dataset: InfoBatch[Any]
) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "infobatch": dataset.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # type: ignore[no-any-return]


def resume(
    state: dict[str, Any], load_infobatch: bool = True, num_workers: int = 0
) -> tuple[Any, ...]:
    model, optimizer, dataset, loader = make_run(num_workers)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if load_infobatch:
        dataset.load_state_dict(state["infobatch"])
    return model, optimizer, dataset, loader


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def uninterrupted(num_workers: int = 0) -> tuple[list[torch.Tensor], list[list[int]], list[Any]]:
    model, optimizer, dataset, loader = make_run(num_workers)
    seen, _ = train(model, optimizer, dataset, loader)
    return params(model), seen, dataset.history


@pytest.mark.parametrize("stop_epoch", [1, 3])
def test_resume_at_epoch_boundary_is_bitwise_identical(stop_epoch: int) -> None:
    expected_params, expected_seen, expected_history = uninterrupted()
    model, optimizer, dataset, loader = make_run()
    _, state = train(model, optimizer, dataset, loader, stop_at=(stop_epoch, -1))
    assert state is not None and state["infobatch"]["plan"] is None  # boundary: plan rebuilt
    model, optimizer, dataset, loader = resume(state)
    seen, _ = train(model, optimizer, dataset, loader)
    assert seen == expected_seen[stop_epoch + 1 :]  # same pruned sets, same order
    assert str(dataset.history) == str(expected_history)  # str: nan thresholds compare equal
    for got, want in zip(params(model), expected_params):
        assert torch.equal(got, want)


def test_resume_without_infobatch_state_differs_negative_control() -> None:
    expected_params, expected_seen, _ = uninterrupted()
    model, optimizer, dataset, loader = make_run()
    _, state = train(model, optimizer, dataset, loader, stop_at=(2, -1))
    assert state is not None
    model, optimizer, dataset, loader = resume(state, load_infobatch=False)
    dataset.set_epoch(3)  # right epoch, but scores lost
    seen, _ = train(model, optimizer, dataset, loader)
    assert seen != expected_seen[3:]
    assert any(not torch.equal(a, b) for a, b in zip(params(model), expected_params))


@pytest.mark.parametrize(("stop_step", "num_workers"), [(1, 0), (4, 0), (3, 2)])
def test_resume_mid_epoch_continues_the_same_plan(stop_step: int, num_workers: int) -> None:
    expected_params, expected_seen, _ = uninterrupted(num_workers)
    stop_epoch = 2
    model, optimizer, dataset, loader = make_run(num_workers)
    before, state = train(model, optimizer, dataset, loader, stop_at=(stop_epoch, stop_step))
    assert state is not None and state["infobatch"]["plan"] is not None
    model, optimizer, dataset, loader = resume(state, num_workers=num_workers)
    assert dataset.epoch == stop_epoch
    after, _ = train(model, optimizer, dataset, loader)
    # the interrupted epoch: no sample repeated, none skipped
    assert before[-1] + after[0] == expected_seen[stop_epoch]
    assert after[1:] == expected_seen[stop_epoch + 1 :]
    for got, want in zip(params(model), expected_params):
        assert torch.equal(got, want)


def test_state_dict_carries_version_and_is_validated() -> None:
    _, _, dataset, _ = make_run()
    state = dataset.state_dict()
    assert state["version"] == STATE_VERSION
    other = InfoBatch(dataset.dataset, num_epochs=NUM_EPOCHS, prune_ratio=0.5, seed=6)
    with pytest.raises(ValueError, match="saved with seed=5 but this InfoBatch has seed=6"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="unsupported InfoBatch state version 99"):
        dataset.load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="missing keys"):
        dataset.load_state_dict({"version": STATE_VERSION, **{k: state[k] for k in ("seed",)}})
    with pytest.raises(TypeError, match="state must be a dict"):
        dataset.load_state_dict([])  # type: ignore[arg-type]


def test_pickled_wrapper_keeps_state_and_attributes() -> None:
    model, optimizer, dataset, loader = make_run()
    train(model, optimizer, dataset, loader, stop_at=(2, -1))
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(clone) == len(dataset) and torch.equal(clone[5][0], dataset[5][0])
    assert torch.equal(
        clone.scores,
        dataset.scores,
    ) or torch.allclose(clone.scores, dataset.scores, equal_nan=True)
    assert clone.tensors[0].shape == (300, 8)  # attribute of the wrapped TensorDataset
    assert clone.state_dict()["epoch"] == dataset.state_dict()["epoch"]


def test_spawned_workers_can_load_batches() -> None:
    model, optimizer, dataset, _ = make_run()
    loader = DataLoader(
        dataset,
        batch_size=64,
        sampler=dataset.sampler,
        num_workers=2,
        multiprocessing_context="spawn",
    )
    seen, _ = train(model, optimizer, dataset, loader, stop_at=(1, -1))
    assert sorted(seen[0]) == list(range(300))


def test_going_back_to_an_earlier_epoch_right_after_a_resume_is_warned() -> None:
    source = InfoBatch(TensorDataset(torch.arange(20.0)), num_epochs=6, seed=1)
    for _ in range(3):
        for (x,) in DataLoader(source, batch_size=5, sampler=source.sampler):
            source.update(x)
    state = source.state_dict()
    resumed = InfoBatch(TensorDataset(torch.arange(20.0)), num_epochs=6, seed=1)
    resumed.load_state_dict(state)
    with pytest.warns(UserWarning, match=r"set_epoch\(0\) right after loading a checkpoint of"):
        resumed.sampler.set_epoch(0)  # what a framework that restarts its counter does
    resumed.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ShortScheduleWarning)  # test_regime.py
        resumed.sampler.set_epoch(3)  # the right epoch: silent


# ---------------------------------------------------------------------- what shapes a plan
def _mid_epoch_state(**settings: Any) -> dict[str, Any]:
    dataset = InfoBatch(TensorDataset(torch.arange(40.0)), num_epochs=4, seed=3, **settings)
    loader = DataLoader(dataset, batch_size=8, sampler=dataset.sampler)
    for step, (x,) in enumerate(loader):
        dataset.update(x.float())
        if step == 1:
            break
    return dataset.state_dict()


@pytest.mark.parametrize(
    ("saved", "loading", "named"),
    [
        (dict(sampling=WeightedSampling(torch.ones(40), 40)), {}, "sampling"),
        (
            dict(sampling=WeightedSampling(torch.ones(40), 40)),
            dict(sampling=WeightedSampling(torch.ones(40), 10)),
            "sampling",
        ),
        (
            dict(sampling=WeightedSampling(torch.ones(40), 40)),
            dict(sampling=WeightedSampling(torch.arange(1.0, 41.0), 40)),
            "sampling",
        ),
        (dict(rule=SavingBudget(0.3)), {}, "rule"),
        (dict(rule=SavingBudget(0.3)), dict(rule=SavingBudget(0.2)), "rule"),
    ],
)
def test_a_checkpoint_is_refused_by_a_sampler_that_would_plan_differently(
    saved: dict[str, Any], loading: dict[str, Any], named: str
) -> None:
    state = _mid_epoch_state(**saved)
    other = InfoBatch(TensorDataset(torch.arange(40.0)), num_epochs=4, seed=3, **loading)
    with pytest.raises(ValueError, match=f"saved with {named}=.*build it with the same"):
        other.load_state_dict(state)
    same = InfoBatch(TensorDataset(torch.arange(40.0)), num_epochs=4, seed=3, **saved)
    same.load_state_dict(state)  # the same settings load
    assert same.sampler.position == 16


def test_the_default_rule_and_the_same_rule_given_explicitly_are_interchangeable() -> None:
    state = _mid_epoch_state()
    explicit = InfoBatch(TensorDataset(torch.arange(40.0)), 4, seed=3, rule=SoftPruning(0.5))
    explicit.load_state_dict(state)
    assert explicit.sampler.position == 16


# ---------------------------------------------------------------------- a deliberate break
def _break_each_epoch(dataset: InfoBatch[Any], epochs: range, cap: int, end: bool) -> list[int]:
    loader = DataLoader(dataset, batch_size=8, sampler=dataset.sampler)
    batches = []
    for _epoch in epochs:
        count = 0
        for (x,) in loader:
            dataset.update(x.float())
            count += 1
            if count == cap:
                break
        if end:
            dataset.end_epoch()
        batches.append(count)
    return batches


def test_a_checkpoint_after_a_break_resumes_the_rest_of_that_epoch() -> None:
    # A preemption: stop, save, exit. The relaunched run finishes the epoch first.
    first = InfoBatch(TensorDataset(torch.arange(40.0)), num_epochs=4, prune_ratio=0.0, seed=3)
    _break_each_epoch(first, range(1), cap=2, end=False)
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (0, 16)
    resumed = InfoBatch(TensorDataset(torch.arange(40.0)), num_epochs=4, prune_ratio=0.0, seed=3)
    resumed.load_state_dict(state)
    loader = DataLoader(resumed, batch_size=8, sampler=resumed.sampler)
    assert len(loader) == 3 and resumed.epoch == 0


def test_end_epoch_after_a_step_cap_makes_the_resumed_run_go_on_like_the_uninterrupted_one() -> (
    None
):
    def build() -> InfoBatch[Any]:
        return InfoBatch(TensorDataset(torch.arange(40.0)), num_epochs=4, seed=3)

    straight = build()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deliberate cut is not warned about
        warnings.simplefilter("ignore", ShortScheduleWarning)  # test_regime.py
        expected = _break_each_epoch(straight, range(4), cap=2, end=True)
    first = build()
    _break_each_epoch(first, range(2), cap=2, end=True)
    state = first.state_dict()
    assert (state["epoch"], state["plan"]) == (2, None)
    resumed = build()
    resumed.load_state_dict(state)
    after = _break_each_epoch(resumed, range(2, 4), cap=2, end=True)
    assert expected == [2, 2, 2, 2] and after == [2, 2]
    assert torch.equal(resumed.scores.isnan(), straight.scores.isnan())
    finite = ~straight.scores.isnan()
    assert torch.equal(resumed.scores[finite], straight.scores[finite])
    assert [s.epoch for s in resumed.history] == [0, 1, 2, 3]
