"""InfoBatchTrainer (Hugging Face Trainer) trains tiny GPT-2 models for a few epochs.

One process in this process, two on spawned gloo ranks. The runs record what reached the loss
(``_hf_workers.py``); the tests check it against the epoch plans, the score table, the
learning rate and resumed runs.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from infobatch import (  # noqa: E402
    METRICS,
    EpochStats,
    InfoBatch,
    InfoBatchError,
    ShortScheduleWarning,
    epoch_metrics,
)
from infobatch.integrations.hf import STATE_FILE  # noqa: E402

from ._common import (  # noqa: E402
    RELAUNCH_EPOCH,
    assert_full_run_is_sound,
    assert_relaunched_run_equals_full_run,
    assert_resumed_run_equals_full_run,
    equal_nan,
    launch,
    pick_marks,
    stop_and_relaunch,
)
from ._hf_workers import DEFAULTS, build_trainer, run_trainer, run_trainer_and_resume  # noqa: E402

Record = dict[str, Any]
EPOCHS = DEFAULTS["epochs"]
PRUNED = [1, 2]  # epochs that may prune (epoch 0 has no scores yet, epoch 3 anneals)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def causal(tmp_path_factory: pytest.TempPathFactory) -> Record:
    """One process: an uninterrupted run, checkpointed every step, and two resumed runs."""
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        # e.g. "samples never reached update()"; rows without labels pass valid=False: no
        # "non-finite losses" warning either
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ShortScheduleWarning)  # test_regime.py
        return run_trainer_and_resume(tmp_path_factory.mktemp("hf1"), {})


@pytest.fixture(scope="module")
def two_ranks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf2")


@pytest.fixture(scope="module")
def two_ranks(two_ranks_dir: Path) -> list[Record]:
    """Two gloo ranks: the same uninterrupted and resumed runs, on each rank."""
    return launch(2, run_trainer_and_resume, two_ranks_dir, {})


# ---------------------------------------------------------------------- one process
def test_trainer_trains_every_planned_sample_once_per_epoch(causal: Record) -> None:
    run = causal["full"]
    assert sorted(run["plans"]) == list(range(EPOCHS))
    for epoch, plan in run["plans"].items():
        assert Counter(run["trained"][epoch]) == Counter(plan["share"]), epoch
        assert len(plan["share"]) == plan["kept"]


def test_trainer_kept_sets_shrink_in_pruning_epochs(causal: Record) -> None:
    kept = {h["epoch"]: h["num_kept"] for h in causal["full"]["history"]}
    n = DEFAULTS["num_samples"]
    assert kept[0] == n and kept[EPOCHS - 1] == n
    assert all(kept[e] < n for e in PRUNED)


def test_trainer_scores_are_each_epochs_per_sample_losses(causal: Record) -> None:
    run = causal["full"]
    previous = torch.full((DEFAULTS["num_samples"],), float("nan"))
    for epoch in range(EPOCHS):
        scores = run["scores"][epoch]
        expected = previous.clone()
        for index, loss in run["losses"][epoch].items():
            expected[index] = loss
        assert equal_nan(scores, expected), epoch
        # Samples with no label (empty output): trained with weight 0, never scored.
        unlabelled = run["unlabelled"][epoch]
        assert unlabelled and torch.isnan(scores[unlabelled]).all()
        previous = scores


def test_trainer_steps_at_every_epoch_end_without_leftover_gradient(causal: Record) -> None:
    run = causal["full"]
    accumulation, batch = DEFAULTS["accumulation"], DEFAULTS["batch"]
    for epoch, plan in run["plans"].items():
        batches = math.ceil(len(plan["share"]) / batch)
        assert run["steps"][epoch] == math.ceil(batches / accumulation)
        assert run["leftover"][epoch] == 0.0  # the last group stepped: nothing leaks onwards
    # The odd-sized last groups were filled (the path that prevents the leak was taken).
    assert sum(run["fillers"].values()) > 0


def test_trainer_learning_rate_schedule_completes(causal: Record) -> None:
    run = causal["full"]
    total = run["max_steps"]  # full-data steps: the length the linear schedule is written for
    assert run["global_step"] < total  # pruned epochs were shorter...
    assert run["final_lr"] == 0.0  # ...yet the schedule reached its end
    rates = run["learning_rates"]
    assert rates == sorted(rates, reverse=True)
    # The last step ran where a full-data run's last step runs: 1/total of the peak.
    assert rates[-1] == pytest.approx(DEFAULTS["lr"] / total)


def test_trainer_logs_the_saved_fraction(causal: Record) -> None:
    run = causal["full"]
    assert None not in run["saved_fraction_logged"]  # in every training log
    assert run["saved_fraction_logged"][-1] == pytest.approx(run["saved_fraction"], abs=1e-6)
    assert 0 < run["saved_fraction"] < 0.5
    assert not [e for e in run["log_history"] if "infobatch_saved_fraction" in e]  # renamed


def _epoch_logs(run: Record) -> list[Record]:
    return [e for e in run["log_history"] if "infobatch/num_kept" in e]


def test_trainer_logs_each_epochs_statistics_once(causal: Record) -> None:
    """logging_steps=1: each completed epoch's statistics are a log of their own, at the
    epoch's last step, equal to the history (every name of METRICS, nan left out)."""
    run = causal["full"]
    logs = _epoch_logs(run)
    assert [e["infobatch/epoch"] for e in logs] == list(range(EPOCHS))
    ends = [sum(run["steps"][e] for e in range(epoch + 1)) for epoch in range(EPOCHS)]
    assert [e["step"] for e in logs] == ends
    for entry, stats in zip(logs, run["history"]):
        names = {k for k in entry if k.startswith("infobatch/")}
        assert names <= set(METRICS)
        # Equal to the history (the record's leaves the times out, which differ between runs)
        expected = epoch_metrics(EpochStats(**stats))
        assert {k: entry[k] for k in names if "/time/" not in k} == expected
        assert ("infobatch/threshold" in entry) == stats["pruning"]
        assert {"infobatch/time/epoch", "infobatch/time/update", "infobatch/time/training"} < names
        assert 0 < entry["infobatch/time/data"] < entry["infobatch/time/epoch"]  # timed loader
        assert "loss" not in entry  # the Trainer's step logs are left as they were
    # A run resumed mid-epoch 2 logs the epochs it completes (the resumed one included) after
    # the checkpoint's log history (epochs 0 and 1).
    resumed = _epoch_logs(causal["resumed"]["middle"])
    assert [e["infobatch/epoch"] for e in resumed] == list(range(EPOCHS))
    assert resumed[:2] == logs[:2]
    for entry, full in zip(resumed[2:], logs[2:]):
        same = {k: v for k, v in full.items() if k.startswith("infobatch/") and "/time/" not in k}
        assert {k: entry[k] for k in same} == same


@pytest.mark.parametrize("strategy", ["epoch", "no"])
def test_trainer_epoch_statistics_follow_the_logging_strategy(
    tmp_path: Path, strategy: str
) -> None:
    config = {"epochs": 2, "delta": 0.5, "num_samples": 24, "args": {"logging_strategy": strategy}}
    run = run_trainer(tmp_path, config)
    logs = _epoch_logs(run)
    if strategy == "no":
        assert logs == []
        return
    # Merged into the Trainer's own epoch-end log: one entry per epoch, with the loss.
    training = [e for e in run["log_history"] if "loss" in e]
    assert logs == training and len(logs) == 2
    assert [e["infobatch/epoch"] for e in logs] == [0, 1]
    assert [e["infobatch/num_kept"] for e in logs] == [h["num_kept"] for h in run["history"]]


@pytest.mark.parametrize("point", ["boundary", "middle"])
def test_trainer_resume_reproduces_the_uninterrupted_run(causal: Record, point: str) -> None:
    assert_resumed_run_equals_full_run(causal["full"], causal["resumed"][point], point, EPOCHS)


def test_trainer_gives_infobatch_its_batch_size_and_refuses_mismatches(tmp_path: Path) -> None:
    trainer, _ = build_trainer(tmp_path, {})
    # InfoBatch knows the per-process batch size: exact epoch ends with drop_last.
    assert trainer.infobatch.sampler.batch_size == DEFAULTS["batch"]
    trainer, _ = build_trainer(tmp_path, {"infobatch": {"batch_size": DEFAULTS["batch"]}})
    assert trainer.infobatch.sampler.batch_size == DEFAULTS["batch"]
    with pytest.raises(ValueError, match="batch_size=8 but the Trainer's per-process"):
        build_trainer(tmp_path, {"infobatch": {"batch_size": 8}})
    with pytest.raises(ValueError, match="auto_find_batch_size"):
        build_trainer(tmp_path, {"args": {"auto_find_batch_size": True}})
    with pytest.raises(ValueError, match="does not take an InfoBatch with keep_steps=True"):
        build_trainer(
            tmp_path, {"infobatch": {"batch_size": DEFAULTS["batch"], "keep_steps": True}}
        )


def test_trainer_resume_negative_controls(causal: Record, tmp_path: Path) -> None:
    # Planning epoch 2 without the checkpoint's scores gives another plan: the equality of
    # plans above is not automatic.
    from ._common import InstructionSet, make_records

    fresh: InfoBatch[Any] = InfoBatch(
        InstructionSet(make_records(DEFAULTS["num_samples"])),
        EPOCHS,
        delta=DEFAULTS["delta"],
        seed=DEFAULTS["seed"],
    )
    fresh.sampler.set_epoch(2)
    from ._hf_workers import plan_hash

    assert fresh.sampler.plan is not None
    assert plan_hash(fresh.sampler.plan) != causal["full"]["plans"][2]["hash"]
    # A checkpoint without the InfoBatch state cannot be resumed silently.
    trainer, _ = build_trainer(tmp_path, {})
    with pytest.raises(InfoBatchError, match="no InfoBatch state"):
        trainer.train(resume_from_checkpoint=str(tmp_path))


def test_trainer_accumulation_scales_like_one_large_batch(tmp_path: Path) -> None:
    """One step of 2 x 4 samples moves the weights as one step of 8 samples does."""
    # no dropout: its masks differ between one batch of 8 and two of 4
    common = dict(optim="sgd", lr=0.5, stop_after_steps=1, epochs=2, dropout=0.0)
    accumulated = run_trainer(tmp_path / "a", {**common, "batch": 4, "accumulation": 2})
    single = run_trainer(tmp_path / "b", {**common, "batch": 8, "accumulation": 1})
    assert accumulated["trained"][0] == single["trained"][0]  # the same 8 samples
    for name, value in single["params"].items():
        torch.testing.assert_close(accumulated["params"][name], value, rtol=1e-5, atol=1e-6)


def test_trainer_without_pruning_follows_the_plain_trainers_schedule(tmp_path: Path) -> None:
    from transformers import Trainer

    run = run_trainer(tmp_path / "ib", {"prune_ratio": 0.0})
    trainer, _ = build_trainer(tmp_path / "plain", {})
    plain = Trainer(
        model=trainer.model,
        args=trainer.args,
        train_dataset=trainer.infobatch.dataset,
        data_collator=trainer.data_collator,
    )
    plain.train()
    rates = [e["learning_rate"] for e in plain.state.log_history if "learning_rate" in e]
    assert run["global_step"] == plain.state.global_step
    assert run["learning_rates"] == pytest.approx(rates, rel=1e-12)


def test_trainer_sequence_classification(tmp_path: Path) -> None:
    run = run_trainer(tmp_path, {"task": "classification", "num_samples": 48, "epochs": 3})
    for epoch, plan in run["plans"].items():
        assert Counter(run["trained"][epoch]) == Counter(plan["share"])
        for index, loss in run["losses"][epoch].items():
            assert run["scores"][epoch][index] == pytest.approx(loss, rel=0, abs=0)
    assert run["final_lr"] == 0.0


@pytest.mark.parametrize(
    "settings",
    [
        {"hf_dataset": True},  # a datasets.Dataset with a text column the model does not take
        {"remove_unused_columns": False},
        {"drop_last": True, "batch": 7},
        {"workers": 2},
        {"bf16": True},
        {"evaluate": True},  # evaluation each epoch uses the model's own loss, changes nothing
    ],
    ids=["datasets", "keep-columns", "drop-last", "workers", "bf16", "evaluate"],
)
def test_trainer_variants_train_each_planned_sample_once(
    tmp_path: Path, settings: dict[str, Any]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. "samples never reached update()"
        warnings.simplefilter("ignore", ShortScheduleWarning)  # test_regime.py
        warnings.filterwarnings("ignore", message=".*fork.*")
        run = run_trainer(tmp_path, {"epochs": 3, "delta": 0.67, **settings})
    batch = settings.get("batch", DEFAULTS["batch"])
    for epoch, plan in run["plans"].items():
        share = plan["share"]
        if settings.get("drop_last"):
            share = share[: len(share) // batch * batch]
        assert Counter(run["trained"][epoch]) == Counter(share), epoch
        assert run["leftover"][epoch] == 0.0
    assert run["final_lr"] == 0.0
    assert torch.isfinite(run["final_scores"][~torch.isnan(run["final_scores"])]).all()
    if settings.get("evaluate"):
        assert len(run["eval_losses"]) == 3


# ---------------------------------------------------------------------- two processes
def test_two_ranks_agree_and_train_every_planned_sample_once(two_ranks: list[Record]) -> None:
    runs = [r["full"] for r in two_ranks]
    assert [r["world"] for r in runs] == [2, 2]
    for epoch in range(EPOCHS):
        hashes = {r["plans"][epoch]["hash"] for r in runs}
        assert len(hashes) == 1, epoch  # one plan everywhere
        kept = runs[0]["plans"][epoch]["kept"]
        shares = [r["plans"][epoch]["share"] for r in runs]
        assert len(shares[0]) == len(shares[1]) == math.ceil(kept / 2)
        assert not set(shares[0]) & set(shares[1]) or kept % 2  # only padding is shared
        trained = Counter(runs[0]["trained"][epoch]) + Counter(runs[1]["trained"][epoch])
        assert trained == Counter(shares[0]) + Counter(shares[1])
        assert len(set(trained)) == kept  # every kept sample, on one rank (padding aside)
        # Every rank holds the merged table: each sample's latest loss from the rank that
        # trained it.
        assert equal_nan(runs[0]["scores"][epoch], runs[1]["scores"][epoch])
        for run in runs:
            for index, loss in run["losses"][epoch].items():
                if trained[index] == 1:
                    assert runs[0]["scores"][epoch][index] == loss
            # Samples without labels: trained with weight 0, never scored.
            assert torch.isnan(runs[0]["scores"][epoch][run["unlabelled"][epoch]]).all()
        # Samples not trained this epoch (pruned) keep their previous score.
        previous = runs[0]["scores"].get(epoch - 1)
        for index in set(range(DEFAULTS["num_samples"])) - set(trained):
            expected = previous[index] if previous is not None else torch.tensor(float("nan"))
            assert equal_nan(runs[0]["scores"][epoch][index], expected), (epoch, index)
    kept = {h["epoch"]: h["num_kept"] for h in runs[0]["history"]}
    assert all(kept[e] < DEFAULTS["num_samples"] for e in PRUNED)
    assert runs[0]["learning_rates"] == runs[1]["learning_rates"]
    assert runs[0]["final_lr"] == runs[1]["final_lr"] == 0.0
    for name, value in runs[0]["params"].items():
        assert torch.equal(runs[1]["params"][name], value), name


@pytest.mark.parametrize("point", ["boundary", "middle"])
def test_two_ranks_resume_reproduces_the_uninterrupted_run(
    two_ranks: list[Record], point: str
) -> None:
    for rank_result in two_ranks:
        full, resumed = rank_result["full"], rank_result["resumed"][point]
        for epoch in range(min(resumed["plans"]), EPOCHS):
            assert resumed["plans"][epoch]["hash"] == full["plans"][epoch]["hash"]
            done = len(full["trained"][epoch]) - len(resumed["trained"][epoch])
            assert resumed["trained"][epoch] == full["trained"][epoch][done:]
        count = len(resumed["learning_rates"])
        assert resumed["learning_rates"] == full["learning_rates"][-count:]
        assert equal_nan(resumed["final_scores"], full["final_scores"])
        for name, value in full["params"].items():
            torch.testing.assert_close(resumed["params"][name], value, rtol=0, atol=0)


def test_two_ranks_write_one_state_file_per_rank(
    two_ranks: list[Record], two_ranks_dir: Path
) -> None:
    folders = list(two_ranks_dir.glob("full/run/checkpoint-*"))
    assert len(folders) == two_ranks[0]["full"]["global_step"]  # one per step
    for folder in folders:
        names = sorted(p.name for p in folder.iterdir() if p.name.startswith("infobatch_"))
        assert names == [STATE_FILE.format(rank=0), STATE_FILE.format(rank=1)], folder


def test_two_rank_boundary_checkpoint_resumes_on_one_process(
    two_ranks: list[Record], two_ranks_dir: Path, tmp_path: Path
) -> None:
    """At an epoch boundary the scores are merged: any number of processes can resume."""
    full = two_ranks[0]["full"]
    step = two_ranks[0]["points"]["boundary"]
    checkpoint = two_ranks_dir / "full" / "run" / f"checkpoint-{step}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ShortScheduleWarning)  # test_regime.py
        resumed = run_trainer(tmp_path, {"resume_from": str(checkpoint)})
    assert min(resumed["plans"]) == 2
    for epoch in (2, 3):
        assert resumed["plans"][epoch]["hash"] == full["plans"][epoch]["hash"]
        assert Counter(resumed["trained"][epoch]) == Counter(resumed["plans"][epoch]["share"])
    assert resumed["final_lr"] == 0.0


# ---------------------------------------------------------------------- stop and relaunch
# 4 epochs, delta 0.75: epochs 1-2 prune, epoch 3 anneals. Checkpoints inside epoch 1 (4
# optimizer steps of 2 x 4 samples per rank); epoch 2 is planned (and pruned) from its scores.
RELAUNCH: dict[str, Any] = {"num_samples": 80, "epochs": 4, "delta": 0.75}
# The Trainer checkpoints at optimizer steps only (save_steps counts them), never inside an
# accumulation group: the points are after the epoch's first step, its middle step, the step
# before its last group, and its last step (its last batch).
RELAUNCH_POINTS = ["early", "middle", "before-last", "last"]


def _relaunch_marks(full: list[Record]) -> dict[str, list[Record]]:
    marks = [pick_marks(run["marks"], RELAUNCH_EPOCH) for run in full]
    return {point: [m[point] for m in marks] for point in RELAUNCH_POINTS}


@pytest.fixture(scope="module")
def relaunched(tmp_path_factory: pytest.TempPathFactory) -> Record:
    """Two gloo ranks train uninterrupted with a checkpoint at every step and exit; two new
    processes then resume from each checkpoint of :data:`RELAUNCH_POINTS`."""
    out = tmp_path_factory.mktemp("hf-relaunch")

    def resumes(full: list[Record]) -> dict[str, dict[str, Any]]:
        return {
            point: {**RELAUNCH, "resume_from": str(out / "full" / "run" / mark[0]["name"])}
            for point, mark in _relaunch_marks(full).items()
        }

    full, resumed = stop_and_relaunch(2, run_trainer, out, {**RELAUNCH, "save_steps": 1}, resumes)
    return {"out": out, "full": full, "resumed": resumed}


@pytest.mark.parametrize("point", RELAUNCH_POINTS)
def test_two_ranks_relaunched_mid_epoch_reproduce_the_uninterrupted_run(
    relaunched: Record, point: str
) -> None:
    """New processes resume from a checkpoint taken inside an epoch by two processes: the
    rest of that epoch and every later epoch train exactly the uninterrupted run's samples, in
    its order, on the same rank, with the same steps and bitwise the same final weights."""
    full, epochs = relaunched["full"], RELAUNCH["epochs"]
    assert_full_run_is_sound(full, epochs, RELAUNCH["num_samples"])
    mark = _relaunch_marks(full)[point]
    share = len(full[0]["plans"][RELAUNCH_EPOCH]["share"])
    assert (0 < mark[0]["done"] < share) == (point != "last")
    checkpoint = relaunched["out"] / "full" / "run" / mark[0]["name"]
    states = sorted(p.name for p in checkpoint.glob("infobatch_state_rank*.pt"))
    assert states == [STATE_FILE.format(rank=r) for r in range(2)]
    assert_relaunched_run_equals_full_run(full, relaunched["resumed"][point], mark, epochs)
