"""InfoBatch in a plain Accelerate loop (``prepare_loader``), with 1 and 2 gloo processes."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")

from torch.utils.data import DataLoader  # noqa: E402

from infobatch import InfoBatch  # noqa: E402

from ._accelerate_workers import DEFAULTS, Blobs, run_loop, run_loop_and_resume  # noqa: E402
from ._common import (  # noqa: E402
    RELAUNCH_EPOCH,
    assert_full_run_is_sound,
    assert_relaunched_run_equals_full_run,
    assert_resumed_run_equals_full_run,
    equal_nan,
    launch,
    pick_marks,
    run_and_resume_in_process,
    stop_and_relaunch,
)

Record = dict[str, Any]
EPOCHS = DEFAULTS["epochs"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    torch.set_num_threads(1)
    return [run_loop_and_resume(tmp_path_factory.mktemp("acc1"), {})]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    return launch(2, run_loop_and_resume, tmp_path_factory.mktemp("acc2"), {})


@pytest.fixture(params=["one_rank", "two_ranks"])
def ranks(request: pytest.FixtureRequest) -> list[Record]:
    result: list[Record] = request.getfixturevalue(request.param)
    return result


def test_accelerate_trains_every_planned_sample_once_per_epoch(ranks: list[Record]) -> None:
    runs = [r["full"] for r in ranks]
    world = len(runs)
    for epoch in range(EPOCHS):
        assert len({r["plans"][epoch]["hash"] for r in runs}) == 1  # ranks agree on the plan
        kept = runs[0]["plans"][epoch]["kept"]
        trained: Counter[int] = Counter()
        for run in runs:
            share = run["plans"][epoch]["share"]
            assert len(share) == math.ceil(kept / world)
            assert Counter(run["trained"][epoch]) == Counter(share)  # its share, once
            trained += Counter(share)
        assert len(trained) == kept  # all kept samples, each on one rank (padding aside)
        assert sum(trained.values()) - kept < world
    kept_by_epoch = [h["num_kept"] for h in runs[0]["history"]]
    n = DEFAULTS["num_samples"]
    assert kept_by_epoch[0] == kept_by_epoch[-1] == n
    assert all(k < n for k in kept_by_epoch[1:-1])


def test_accelerate_scores_are_the_epochs_losses_on_every_rank(ranks: list[Record]) -> None:
    runs = [r["full"] for r in ranks]
    for epoch in range(EPOCHS):
        scores = runs[0]["scores"][epoch]
        for run in runs:
            assert equal_nan(run["scores"][epoch], scores)
        for index in range(DEFAULTS["num_samples"]):
            found = [run["losses"][epoch][index] for run in runs if index in run["losses"][epoch]]
            if found:  # trained this epoch: its latest loss (the larger one if padded twice)
                assert scores[index] == torch.tensor(max(found))
            elif epoch > 0:  # pruned: keeps the previous score
                assert equal_nan(scores[index], runs[0]["scores"][epoch - 1][index])


def test_accelerate_accumulation_steps_at_every_epoch_end(ranks: list[Record]) -> None:
    accumulation, batch = DEFAULTS["accumulation"], DEFAULTS["batch"]
    for rank_result in ranks:
        run = rank_result["full"]
        for epoch, plan in run["plans"].items():
            batches = math.ceil(len(plan["share"]) / batch)
            assert run["steps"][epoch] == math.ceil(batches / accumulation)
            assert run["leftover"][epoch] == 0.0
        # Some epoch ended on a partial group, so the end-of-epoch step was exercised.
        assert any(math.ceil(len(p["share"]) / batch) % accumulation for p in run["plans"].values())


def test_accelerate_progress_schedule_ends_at_zero(ranks: list[Record]) -> None:
    runs = [r["full"] for r in ranks]
    for run in runs:
        assert run["final_lr"] == 0.0
        rates = run["learning_rates"]
        assert rates == sorted(rates, reverse=True) and rates[0] == DEFAULTS["lr"]
        assert run["learning_rates"] == runs[0]["learning_rates"]


@pytest.mark.parametrize("point", ["boundary", "middle"])
def test_accelerate_resume_reproduces_the_uninterrupted_run(
    ranks: list[Record], point: str
) -> None:
    for rank_result in ranks:
        full, resumed = rank_result["full"], rank_result["resumed"][point]
        assert_resumed_run_equals_full_run(full, resumed, point, EPOCHS)


def test_accelerate_implicit_updates_match_indexed_updates(ranks: list[Record]) -> None:
    """``update(losses)`` without ``indices=`` through ``prepare_loader`` (which reads one
    batch ahead) attributes every loss to the right sample: the run equals the indexed one,
    uninterrupted and resumed mid-epoch."""
    for rank_result in ranks:
        indexed, implicit = rank_result["full"], rank_result["implicit"]["full"]
        for epoch in range(EPOCHS):
            assert implicit["plans"][epoch] == indexed["plans"][epoch]
            assert implicit["trained"][epoch] == indexed["trained"][epoch]
            assert implicit["losses"][epoch] == indexed["losses"][epoch]
            assert equal_nan(implicit["scores"][epoch], indexed["scores"][epoch])
        assert implicit["learning_rates"] == indexed["learning_rates"]
        for name, value in indexed["params"].items():
            assert torch.equal(implicit["params"][name], value), name
        resumed = rank_result["implicit"]["middle"]
        first = min(resumed["plans"])
        done = len(implicit["trained"][first]) - len(resumed["trained"][first])
        assert done > 0 and resumed["trained"][first] == implicit["trained"][first][done:]
        assert equal_nan(resumed["final_scores"], implicit["final_scores"])
        for name, value in implicit["params"].items():
            assert torch.equal(resumed["params"][name], value), name


def test_accelerate_plain_prepare_shards_a_second_time(two_ranks: list[Record]) -> None:
    """Negative control: ``accelerator.prepare(loader)`` trains only part of each share."""
    for rank_result in two_ranks:
        control = rank_result["control"]
        share = control["plans"][0]["share"]
        assert len(control["trained"][0]) < len(share)


def test_prepare_loader_rejects_other_loaders() -> None:
    from accelerate import Accelerator

    from infobatch.integrations.accelerate import prepare_loader

    accelerator = Accelerator(cpu=True)
    with pytest.raises(TypeError, match="sampler=<InfoBatch>.sampler"):
        prepare_loader(accelerator, DataLoader(Blobs(10), batch_size=2))
    dataset: InfoBatch[Any] = InfoBatch(Blobs(10), 2, num_replicas=2, rank=1)
    with pytest.raises(ValueError, match="rank 1 of 2"):
        prepare_loader(accelerator, DataLoader(dataset, sampler=dataset.sampler))
    dataset = InfoBatch(Blobs(10), 2, drop_last=True)
    with pytest.raises(ValueError, match="drop_last"):
        prepare_loader(accelerator, DataLoader(dataset, sampler=dataset.sampler))


def test_log_stats_writes_each_epoch_to_accelerates_tensorboard_tracker(tmp_path: Path) -> None:
    """A real Accelerator with a TensorBoard tracker, a timed loop with accumulation: the
    event file holds each epoch's epoch_metrics at its index, and the epoch's last, shorter
    group still steps through ``dataset.timed(loader)``."""
    from accelerate import Accelerator

    from infobatch import METRICS, epoch_metrics
    from infobatch.integrations.accelerate import log_stats, prepare_loader

    from .._tensorboard import read_scalars

    torch.set_num_threads(1)
    accelerator = Accelerator(
        cpu=True, gradient_accumulation_steps=2, log_with="tensorboard", project_dir=str(tmp_path)
    )
    accelerator.init_trackers("infobatch")
    dataset: InfoBatch[Any] = InfoBatch(Blobs(30), 3, delta=0.67, seed=0)
    loader = prepare_loader(accelerator, DataLoader(dataset, batch_size=4, sampler=dataset.sampler))
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    logged, steps = [], []
    for epoch in range(3):
        loader.set_epoch(epoch)
        steps.append(0)
        for batch in dataset.timed(loader):
            with accelerator.accumulate(model):
                losses = torch.nn.functional.cross_entropy(
                    model(batch["x"]), batch["y"], reduction="none"
                )
                accelerator.backward(dataset.update(losses, indices=batch["index"]))
                steps[-1] += int(accelerator.sync_gradients)
                optimizer.step()
                optimizer.zero_grad()
        logged.append(log_stats(accelerator, dataset))
    accelerator.end_training()

    history = dataset.history
    assert steps == [math.ceil(math.ceil(s.num_kept / 4) / 2) for s in history]
    assert logged == [epoch_metrics(s) for s in history]
    assert all("infobatch/time/data" in m for m in logged)  # the timed loop
    scalars = read_scalars(tmp_path)
    assert set(scalars) == set().union(*logged) and set(scalars) <= set(METRICS)
    for name, events in scalars.items():
        expected = [(s.epoch, m[name]) for s, m in zip(history, logged) if name in m]
        assert [step for step, _ in events] == [step for step, _ in expected]
        assert [value for _, value in events] == [np.float32(v) for _, v in expected]
    with pytest.raises(TypeError, match="needs an accelerate.Accelerator"):
        log_stats(object(), dataset)


# ---------------------------------------------------------------------- stop and relaunch
# 4 epochs, delta 0.75: epochs 1-2 prune, epoch 3 anneals. Epoch 1 has 8 batches of 4 per rank
# in groups of 2; the loop saves its state after each of them. The loop is the user's, so it
# can checkpoint anywhere, inside an accumulation group too: Accelerate's save_state keeps its
# accumulation counter, and the loop saves each rank's accumulated gradients beside it.
RELAUNCH: dict[str, Any] = {"num_samples": 80, "epochs": 4, "delta": 0.75, "accumulation": 2}
# After the epoch's first step, its middle step, inside a group past the middle, the step
# before the last group, inside the last group (one batch left) and after the last batch.
RELAUNCH_POINTS = ["early", "middle", "in-group", "before-last", "in-last-group", "last"]
CONTROL_POINTS = ["middle", "in-group"]  # one process


def _relaunch_marks(full: list[Record]) -> dict[str, list[Record]]:
    marks = [pick_marks(run["marks"], RELAUNCH_EPOCH) for run in full]
    return {point: [m[point] for m in marks] for point in RELAUNCH_POINTS}


def _relaunch(
    out: Path, world: int, points: list[str], extra: dict[str, Any] | None = None
) -> Record:
    """``world`` gloo ranks train uninterrupted, saving after every batch of epoch 1, and
    exit; as many new processes then resume from each checkpoint of ``points`` (one process:
    in this process)."""
    settings = {**RELAUNCH, **(extra or {})}

    def resumes(full: list[Record]) -> dict[str, dict[str, Any]]:
        marks = _relaunch_marks(full)
        return {
            point: {
                **settings,
                "resume_from": mark[0]["name"],
                "start_step": mark[0]["global_step"],
                "resume_grads": True,
            }
            for point, mark in ((p, marks[p]) for p in points)
        }

    config = {**settings, "save_batches_of": RELAUNCH_EPOCH}
    if world == 1:  # the control, in this process
        torch.set_num_threads(1)
        full, resumed = run_and_resume_in_process(run_loop, out, config, resumes)
    else:
        full, resumed = stop_and_relaunch(world, run_loop, out, config, resumes)
    return {"full": full, "resumed": resumed}


@pytest.fixture(scope="module")
def relaunched(tmp_path_factory: pytest.TempPathFactory) -> Record:
    return _relaunch(tmp_path_factory.mktemp("acc-relaunch2"), 2, RELAUNCH_POINTS)


@pytest.fixture(scope="module")
def relaunched_one_process(tmp_path_factory: pytest.TempPathFactory) -> Record:
    """The control: one process, in this process; it has nothing to merge (exact already
    on 0.2.0) and checks the test's own resume machinery (gradients saved inside a group)."""
    return _relaunch(tmp_path_factory.mktemp("acc-relaunch1"), 1, CONTROL_POINTS)


def _check_relaunched(relaunched: Record, point: str) -> None:
    full, epochs = relaunched["full"], RELAUNCH["epochs"]
    assert_full_run_is_sound(full, epochs, RELAUNCH["num_samples"])
    mark = _relaunch_marks(full)[point]
    share = len(full[0]["plans"][RELAUNCH_EPOCH]["share"])
    assert (0 < mark[0]["done"] < share) == (point != "last")
    assert mark[0]["synced"] == (point in ("early", "middle", "before-last", "last"))
    assert_relaunched_run_equals_full_run(full, relaunched["resumed"][point], mark, epochs)


@pytest.mark.parametrize("point", RELAUNCH_POINTS)
def test_two_ranks_relaunched_mid_epoch_reproduce_the_uninterrupted_run(
    relaunched: Record, point: str
) -> None:
    """New processes resume from a checkpoint two processes took inside an epoch: the rest
    of that epoch and every later epoch train exactly the uninterrupted run's samples, in its
    order, on the same rank, with the same steps and bitwise the same final weights."""
    _check_relaunched(relaunched, point)


@pytest.mark.parametrize("point", CONTROL_POINTS)
def test_one_process_relaunched_mid_epoch_reproduces_the_uninterrupted_run(
    relaunched_one_process: Record, point: str
) -> None:
    _check_relaunched(relaunched_one_process, point)


# ---------------------------------------------------------------------- keep_steps
KEEP_STEPS_POINTS = ["middle", "in-group", "last"]


@pytest.fixture(scope="module")
def relaunched_keep_steps(tmp_path_factory: pytest.TempPathFactory) -> Record:
    """Two ranks with ``keep_steps=True``, stopped inside epoch 1 and relaunched."""
    out = tmp_path_factory.mktemp("acc-keep-steps")
    return _relaunch(out, 2, KEEP_STEPS_POINTS, {"keep_steps": True})


def test_keep_steps_makes_full_datas_steps_every_epoch_under_two_ranks(
    relaunched_keep_steps: Record,
) -> None:
    full, epochs = relaunched_keep_steps["full"], RELAUNCH["epochs"]
    assert_full_run_is_sound(full, epochs, RELAUNCH["num_samples"])
    # 80 samples, 2 ranks, batches of 4: 10 batches a rank, 5 steps of 2 in every epoch
    for run in full:
        assert run["steps"] == {epoch: 5 for epoch in range(epochs)}
        assert len(run["learning_rates"]) == 5 * epochs
    kept = [full[0]["plans"][epoch]["kept"] for epoch in range(epochs)]
    assert kept[1] < RELAUNCH["num_samples"]  # epoch 1 is pruned, in smaller batches


@pytest.mark.parametrize("point", KEEP_STEPS_POINTS)
def test_keep_steps_relaunched_mid_epoch_reproduces_the_uninterrupted_run(
    relaunched_keep_steps: Record, point: str
) -> None:
    _check_relaunched(relaunched_keep_steps, point)
