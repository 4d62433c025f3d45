"""InfoBatchCallback (Lightning) with 1 process and 2 gloo processes under strategy="ddp"."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lightning")

from infobatch import METRICS, EpochStats, InfoBatchError, epoch_metrics  # noqa: E402
from infobatch.integrations.progress import full_data_steps  # noqa: E402

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
from ._lightning_workers import (  # noqa: E402
    DEFAULTS,
    resume_points,
    run_lightning,
    run_lightning_and_resume,
)

Record = dict[str, Any]
EPOCHS = DEFAULTS["epochs"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    torch.set_num_threads(1)
    return [run_lightning_and_resume(tmp_path_factory.mktemp("pl1"), {})]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    return launch(2, run_lightning_and_resume, tmp_path_factory.mktemp("pl2"), {})


@pytest.fixture(scope="module")
def estimated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Record]:
    """One process, the schedule sized with ``estimated_stepping_batches``; resumed mid-epoch."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pl-estimated")
    config = {"steps": "estimated"}
    full = run_lightning(out / "full", {**config, "save": True})
    step = resume_points(full["steps"])["middle"]
    checkpoint = out / "full" / "ckpt" / f"step={step}.ckpt"
    resumed = run_lightning(out / "middle", {**config, "resume_from": str(checkpoint)})
    return {"full": full, "middle": resumed}


@pytest.fixture(params=["one_rank", "two_ranks"])
def ranks(request: pytest.FixtureRequest) -> list[Record]:
    result: list[Record] = request.getfixturevalue(request.param)
    return result


def test_lightning_trains_every_planned_sample_once_per_epoch(ranks: list[Record]) -> None:
    runs = [r["full"] for r in ranks]
    world = len(runs)
    assert [r["world"] for r in runs] == [world] * world
    for epoch in range(EPOCHS):
        assert len({r["plans"][epoch]["hash"] for r in runs}) == 1
        kept = runs[0]["plans"][epoch]["kept"]
        trained: Counter[int] = Counter()
        for run in runs:
            share = run["plans"][epoch]["share"]
            assert len(share) == math.ceil(kept / world)
            assert Counter(run["trained"][epoch]) == Counter(share)
            trained += Counter(share)
        assert len(trained) == kept
    kept_by_epoch = [h["num_kept"] for h in runs[0]["history"]]
    n = DEFAULTS["num_samples"]
    assert kept_by_epoch[0] == kept_by_epoch[-1] == n
    assert all(k < n for k in kept_by_epoch[1:-1])


def test_lightning_scores_are_the_epochs_losses_on_every_rank(ranks: list[Record]) -> None:
    runs = [r["full"] for r in ranks]
    for epoch in range(EPOCHS):
        scores = runs[0]["scores"][epoch]
        for run in runs:
            assert equal_nan(run["scores"][epoch], scores)
        for index in range(DEFAULTS["num_samples"]):
            found = [run["losses"][epoch][index] for run in runs if index in run["losses"][epoch]]
            if found:
                assert scores[index] == torch.tensor(max(found))
            elif epoch > 0:
                assert equal_nan(scores[index], runs[0]["scores"][epoch - 1][index])


def test_lightning_steps_at_every_epoch_end_and_schedule_ends_at_zero(
    ranks: list[Record],
) -> None:
    accumulation, batch = DEFAULTS["accumulation"], DEFAULTS["batch"]
    runs = [r["full"] for r in ranks]
    for run in runs:
        for epoch, plan in run["plans"].items():
            batches = math.ceil(len(plan["share"]) / batch)
            assert run["steps"][epoch] == math.ceil(batches / accumulation)
        assert run["final_lr"] == 0.0
        rates = run["learning_rates"]
        assert rates == sorted(rates, reverse=True) and rates[0] == DEFAULTS["lr"]
        assert rates == runs[0]["learning_rates"]


@pytest.mark.parametrize("point", ["boundary", "middle"])
def test_lightning_resume_reproduces_the_uninterrupted_run(ranks: list[Record], point: str) -> None:
    for rank_result in ranks:
        full, resumed = rank_result["full"], rank_result["resumed"][point]
        assert_resumed_run_equals_full_run(full, resumed, point, EPOCHS)
        # The loader implements Lightning's state protocol: no "not resumable" warning.
        assert not [w for w in resumed["warnings"] if "not resumable" in w]


TIMES = {name for name in METRICS if name.startswith("infobatch/time/")}


def _same_on_every_rank(metrics: dict[str, float]) -> dict[str, float]:
    """The logged values that are global (the times are each rank's own)."""
    return {k: v for k, v in metrics.items() if not k.startswith("infobatch/time/")}


def test_lightning_callback_logs_each_epochs_statistics_without_sync_dist_warning(
    ranks: list[Record],
) -> None:
    for rank_result in ranks:
        full = rank_result["full"]
        logged = full["logged"]  # what this rank's loggers received, once per epoch
        assert [int(m["epoch"]) for m in logged] == list(range(EPOCHS))
        for metrics, stats in zip(logged, full["history"]):
            # The whole epoch_metrics set (METRICS, nan left out), equal to the history
            # (float64, exact; the record's history leaves the times out)
            assert set(metrics) - {"epoch"} <= set(METRICS)
            assert _same_on_every_rank(metrics) == {
                "epoch": stats["epoch"],
                **epoch_metrics(EpochStats(**stats)),
            }
            assert ("infobatch/threshold" in metrics) == stats["pruning"]
            times = {k for k in metrics if k.startswith("infobatch/time/")}
            assert times == TIMES - (
                {"infobatch/time/between_epochs"} if stats["epoch"] == 0 else set()
            )
            # The loader timed the wait for batches; the epoch's timing was complete.
            assert 0 < metrics["infobatch/time/data"] < metrics["infobatch/time/epoch"]
            assert metrics["infobatch/time/training"] == pytest.approx(
                metrics["infobatch/time/epoch"]
                - metrics["infobatch/time/data"]
                - metrics["infobatch/time/update"]
            )
        assert logged[-1]["infobatch/saved_fraction"] == full["saved_fraction"] > 0
        assert [m["infobatch/pruning"] for m in logged] == [0.0, 1.0, 1.0, 0.0]  # epoch 0: none
        assert [_same_on_every_rank(m) for m in logged] == [
            _same_on_every_rank(m) for m in ranks[0]["full"]["logged"]
        ]
        assert not [w for w in full["warnings"] if "sync_dist" in w]
        # A run resumed mid-epoch logs the same statistics for the epochs it trains.
        resumed = rank_result["resumed"]["middle"]
        assert [_same_on_every_rank(m) for m in resumed["logged"]] == [
            _same_on_every_rank(m) for m in logged[-len(resumed["logged"]) :]
        ]
    # Rank 0's CSVLogger wrote them (float64, exact); a name an epoch left out is empty.
    with open(ranks[0]["full"]["csv"], newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("infobatch/num_kept")]
    columns = {k for k in rows[0] if k.startswith("infobatch/")}
    assert columns == set(METRICS)
    assert [{k: float(row[k]) for k in columns if row[k]} for row in rows] == [
        {k: v for k, v in m.items() if k != "epoch"} for m in ranks[0]["full"]["logged"]
    ]


def test_lightning_callback_requires_reloading_loaders(tmp_path: Path) -> None:
    with pytest.raises(InfoBatchError, match="reload_dataloaders_every_n_epochs=1"):
        run_lightning(tmp_path, {"reload": 0})


def test_lightning_schedule_sized_with_estimated_stepping_batches_completes(
    estimated: dict[str, Record],
) -> None:
    full, resumed = estimated["full"], estimated["middle"]
    n, batch = DEFAULTS["num_samples"], DEFAULTS["batch"]
    steps = full_data_steps(n, batch, EPOCHS, accumulation=DEFAULTS["accumulation"])
    assert full["schedule_steps"] == steps  # a fresh run: epoch 0 is full data
    assert full["global_step"] < steps  # pruned epochs had fewer steps...
    assert full["final_lr"] == 0.0  # ...yet the schedule reached its end
    rates = full["learning_rates"]
    assert rates == sorted(rates, reverse=True) and rates[0] == DEFAULTS["lr"]
    # Resumed in a pruned epoch, Lightning re-sizes it from that epoch's length; a schedule
    # written in pos / steps gives the same rates (up to rounding) and still ends at zero.
    assert resumed["schedule_steps"] < steps
    count = len(resumed["learning_rates"])
    assert resumed["learning_rates"] == pytest.approx(rates[-count:], rel=1e-12, abs=1e-15)
    assert resumed["final_lr"] == 0.0
    for epoch in range(min(resumed["plans"]), EPOCHS):
        assert resumed["plans"][epoch]["hash"] == full["plans"][epoch]["hash"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"trainer": {"limit_train_batches": 0.5}}, "limit_train_batches=0.5"),
        ({"trainer": {"limit_train_batches": 3}}, "limit_train_batches=3"),
        ({"trainer": {"overfit_batches": 2}}, "overfit_batches=2"),
        ({"trainer": {"fast_dev_run": True}}, "fast_dev_run=True"),
        ({"trainer": {"max_steps": 5}}, "max_steps=5"),
        ({"scheduler": "step_count"}, "LambdaLR scheduler steps every batch"),
        (
            {"scheduler": "one_cycle_lr"},
            r"OneCycleLR scheduler steps every batch.*InfoBatchCallback.find\(self.trainer\)"
            r".one_cycle\(optimizer, max_lr, steps",
        ),
    ],
    ids=[
        "limit-fraction",
        "limit-count",
        "overfit",
        "fast-dev-run",
        "max-steps",
        "step-lr",
        "one-cycle-lr",
    ],
)
def test_lightning_refuses_settings_that_cut_epochs_short(
    tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(InfoBatchError, match=message):
        run_lightning(tmp_path, config)


# ---------------------------------------------------------------------- stop and relaunch
# 4 epochs, delta 0.75: epochs 1-2 prune, epoch 3 anneals. Epoch 1 has 8 batches of 4 per rank
# in groups of 2. ModelCheckpoint(every_n_train_steps=1) saves after every optimizer step (its
# step count never stops inside a group); trainer.save_checkpoint can save inside one, but
# Lightning's checkpoint does not hold the accumulated gradients (resumed as is, the group's
# step would miss the earlier batches' gradients), so the run saves each rank's beside it.
RELAUNCH: dict[str, Any] = {"num_samples": 80, "epochs": 4, "delta": 0.75, "accumulation": 2}
RELAUNCH_POINTS = ["early", "middle", "in-group", "before-last", "in-last-group", "last"]
CONTROL_POINTS = ["middle", "in-group"]  # one process


def _relaunch_marks(full: list[Record]) -> dict[str, list[Record]]:
    marks = [pick_marks(run["marks"], RELAUNCH_EPOCH) for run in full]
    return {point: [m[point] for m in marks] for point in RELAUNCH_POINTS}


def _relaunch(
    out: Path, world: int, points: list[str], extra: dict[str, Any] | None = None
) -> Record:
    """``world`` gloo ranks (strategy="ddp") train uninterrupted, checkpointing after every
    step and inside epoch 1's groups, and exit; as many new processes then resume from each
    checkpoint of ``points`` (one process: in this process)."""
    settings = {**RELAUNCH, **(extra or {})}

    def resumes(full: list[Record]) -> dict[str, dict[str, Any]]:
        marks = _relaunch_marks(full)
        return {
            point: {
                **settings,
                "resume_from": mark[0]["name"],
                "resume_grads": not mark[0]["synced"],
            }
            for point, mark in ((p, marks[p]) for p in points)
        }

    config = {**settings, "save": True, "save_in_group_of": RELAUNCH_EPOCH}
    if world == 1:  # the control, in this process
        torch.set_num_threads(1)
        full, resumed = run_and_resume_in_process(run_lightning, out, config, resumes)
    else:
        full, resumed = stop_and_relaunch(world, run_lightning, out, config, resumes)
    return {"full": full, "resumed": resumed}


@pytest.fixture(scope="module")
def relaunched(tmp_path_factory: pytest.TempPathFactory) -> Record:
    return _relaunch(tmp_path_factory.mktemp("pl-relaunch2"), 2, RELAUNCH_POINTS)


@pytest.fixture(scope="module")
def relaunched_one_process(tmp_path_factory: pytest.TempPathFactory) -> Record:
    """The control: one process, in this process; it has nothing to merge (exact already
    on 0.2.0) and checks the test's own resume machinery (gradients saved inside a group)."""
    return _relaunch(tmp_path_factory.mktemp("pl-relaunch1"), 1, CONTROL_POINTS)


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
    resumed = relaunched["resumed"][point]
    assert not [w for r in resumed for w in r["warnings"] if "not resumable" in w]


@pytest.mark.parametrize("point", CONTROL_POINTS)
def test_one_process_relaunched_mid_epoch_reproduces_the_uninterrupted_run(
    relaunched_one_process: Record, point: str
) -> None:
    _check_relaunched(relaunched_one_process, point)


def test_lightning_one_cycle_schedule_reaches_its_final_rate(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = run_lightning(tmp_path, {"scheduler": "one_cycle"})
    n, batch, lr = DEFAULTS["num_samples"], DEFAULTS["batch"], DEFAULTS["lr"]
    steps = full_data_steps(n, batch, EPOCHS, accumulation=DEFAULTS["accumulation"])
    rates = run["learning_rates"]
    assert len(rates) < steps  # pruned epochs had fewer steps...
    peak = rates.index(max(rates))
    assert rates[0] == pytest.approx(lr / 25) and 0 < peak < len(rates) - 1
    assert rates[: peak + 1] == sorted(rates[: peak + 1])
    assert rates[peak:] == sorted(rates[peak:], reverse=True)
    assert rates[-1] == pytest.approx(lr / 25 / 1e4, rel=1e-12)  # ...yet the cycle completed
    assert run["final_lr"] == pytest.approx(lr / 25 / 1e4, rel=1e-12)
    assert run["final_momentum"] == pytest.approx(0.95)  # momentum cycled back up


# ---------------------------------------------------------------------- keep_steps
KEEP_STEPS_POINTS = ["middle", "in-group", "last"]


@pytest.fixture(scope="module")
def relaunched_keep_steps(tmp_path_factory: pytest.TempPathFactory) -> Record:
    """Two ranks (strategy="ddp") with ``keep_steps=True``, stopped inside epoch 1 and
    relaunched."""
    out = tmp_path_factory.mktemp("pl-keep-steps")
    return _relaunch(out, 2, KEEP_STEPS_POINTS, {"keep_steps": True})


def test_lightning_keep_steps_makes_full_datas_steps_every_epoch(
    relaunched_keep_steps: Record,
) -> None:
    full, epochs = relaunched_keep_steps["full"], RELAUNCH["epochs"]
    assert_full_run_is_sound(full, epochs, RELAUNCH["num_samples"])
    # 80 samples, 2 ranks, batches of 4: 10 batches a rank, 5 steps of 2 in every epoch
    for run in full:
        assert run["steps"] == {epoch: 5 for epoch in range(epochs)}
    assert full[0]["plans"][1]["kept"] < RELAUNCH["num_samples"]  # pruned, smaller batches


@pytest.mark.parametrize("point", KEEP_STEPS_POINTS)
def test_lightning_keep_steps_relaunched_mid_epoch_reproduces_the_uninterrupted_run(
    relaunched_keep_steps: Record, point: str
) -> None:
    _check_relaunched(relaunched_keep_steps, point)
