"""InfoBatchCallback (Lightning) with 1 process and 2 gloo processes under strategy="ddp"."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lightning")

from infobatch import InfoBatchError  # noqa: E402
from infobatch.integrations.progress import full_data_steps  # noqa: E402

from ._common import assert_resumed_run_equals_full_run, equal_nan, launch  # noqa: E402
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
    ],
    ids=["limit-fraction", "limit-count", "overfit", "fast-dev-run", "max-steps", "step-lr"],
)
def test_lightning_refuses_settings_that_cut_epochs_short(
    tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(InfoBatchError, match=message):
        run_lightning(tmp_path, config)
