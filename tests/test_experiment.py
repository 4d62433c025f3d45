"""The demo/benchmark building blocks: offline data, models, one training run, baselines."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from infobatch.experiment import (
    Splits,
    TrainConfig,
    build_model,
    load_mnist,
    load_mnist1d,
    score_histogram,
    train,
)

REPO = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def _load_module(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    folder = str(REPO / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread (two spin-wait on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_mnist1d(tmp_path_factory: pytest.TempPathFactory) -> Splits:
    return load_mnist1d(tmp_path_factory.mktemp("cache"), num_train=300, num_test=100)


# ------------------------------------------------------------------------------------ data
def test_mnist1d_is_generated_cached_and_leaves_global_rng_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    random.seed(123)
    np.random.seed(123)
    expected_python, expected_numpy = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    lines: list[str] = []
    splits = load_mnist1d(tmp_path, num_train=240, num_test=60, log=lines.append)
    assert (random.random(), np.random.rand()) == (expected_python, expected_numpy)
    assert lines and "Generating MNIST-1D" in lines[0]
    assert splits.x_train.shape == (240, 1, 40) and splits.x_test.shape == (60, 1, 40)
    assert splits.x_train.dtype == torch.float32 and splits.y_train.dtype == torch.int64
    assert set(splits.y_train.tolist()) <= set(range(10))
    assert len(list(tmp_path.glob("*.npz"))) == 1

    import infobatch.experiment as experiment

    def fail(*args: Any) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(experiment, "_generate_mnist1d", fail)
    again = load_mnist1d(tmp_path, num_train=240, num_test=60)
    assert torch.equal(again.x_train, splits.x_train) and torch.equal(again.y_test, splits.y_test)


def test_mnist1d_rejects_sizes_it_cannot_make(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 10"):
        load_mnist1d(tmp_path, num_train=245, num_test=60)
    with pytest.raises(ValueError, match="positive"):
        load_mnist1d(tmp_path, num_train=0, num_test=60)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def _fake_mnist(folder: Path, train: int = 12, test: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(train, 28, 28))
    labels = rng.integers(0, 10, size=train)
    _write_idx(folder / "train-images-idx3-ubyte.gz", images)
    _write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, size=(test, 28, 28)))
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, size=test))
    return images, labels


def test_mnist_reads_idx_files(tmp_path: Path) -> None:
    images, labels = _fake_mnist(tmp_path)
    splits = load_mnist(tmp_path)
    assert splits.x_train.shape == (12, 1, 28, 28) and splits.x_test.shape == (5, 1, 28, 28)
    assert splits.y_train.tolist() == labels.tolist()
    restored = splits.x_train[:, 0] * 0.3081 + 0.1307
    assert torch.allclose(restored * 255, torch.from_numpy(images).float(), atol=1e-3)


def test_mnist_errors_say_what_is_missing_or_broken(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path)
    _fake_mnist(tmp_path)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as stream:
        stream.write(b"\x00\x00\x0d\x01" + struct.pack(">I", 5) + bytes(5))
    with pytest.raises(ValueError, match="magic"):
        load_mnist(tmp_path)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="no offline MNIST copy here")
def test_real_mnist_has_the_standard_split() -> None:
    splits = load_mnist(SHARED_MNIST)
    assert (len(splits.y_train), len(splits.y_test)) == (60_000, 10_000)
    assert torch.bincount(splits.y_test).tolist()[:2] == [980, 1135]  # the published counts


# ---------------------------------------------------------------------------------- models
@pytest.mark.parametrize(("name", "shape"), [("mnist1d", (4, 1, 40)), ("mnist", (4, 1, 28, 28))])
def test_models_are_seeded_without_touching_the_global_rng(
    name: str, shape: tuple[int, ...]
) -> None:
    state = torch.get_rng_state()
    first, second, other = build_model(name, 1), build_model(name, 1), build_model(name, 2)
    assert torch.equal(torch.get_rng_state(), state)
    weights = [torch.cat([p.flatten() for p in m.parameters()]) for m in (first, second, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    assert first(torch.randn(shape)).shape == (4, 10)


def test_unknown_dataset_is_rejected() -> None:
    with pytest.raises(ValueError, match="mnist1d"):
        build_model("cifar10", 0)


# -------------------------------------------------------------------------------- training
def test_train_full_and_infobatch_measure_what_they_did(tiny_mnist1d: Splits) -> None:
    config = TrainConfig(epochs=4, batch_size=32)
    full = train(tiny_mnist1d, config, seed=3, infobatch=False, eval_each_epoch=True)
    pruned = train(tiny_mnist1d, config, seed=3, snapshot_epochs=[1, 2])
    assert full.kept_per_epoch == [300] * 4 and full.saved_fraction == 0
    assert full.infobatch_seconds == 0 and len(full.test_accuracy_per_epoch) == 4
    assert full.test_accuracy == full.test_accuracy_per_epoch[-1]
    # epoch 0 is unscored (all kept); epoch 3 anneals (ceil(0.875 * 4) = 4 -> still pruned)
    assert pruned.kept_per_epoch[0] == 300
    assert all(k < 300 for k in pruned.kept_per_epoch[1:])
    assert pruned.sample_passes == sum(pruned.kept_per_epoch) < full.sample_passes
    assert 0 < pruned.infobatch_seconds < pruned.train_seconds
    assert [s["epoch"] for s in pruned.score_snapshots] == [1, 2]
    for snapshot in pruned.score_snapshots:
        assert sum(snapshot["counts"]) == snapshot["num_scored"] == 300
        assert 0 < snapshot["num_below_threshold"] < 300
    again = train(tiny_mnist1d, config, seed=3, snapshot_epochs=[1, 2])
    assert again.kept_per_epoch == pruned.kept_per_epoch
    assert again.test_accuracy == pruned.test_accuracy


@pytest.mark.parametrize("infobatch", [False, True])
def test_train_leaves_the_global_rng_alone(tiny_mnist1d: Splits, infobatch: bool) -> None:
    state = torch.get_rng_state()
    train(tiny_mnist1d, TrainConfig(epochs=2, batch_size=64), seed=0, infobatch=infobatch)
    assert torch.equal(torch.get_rng_state(), state)


def test_train_learning_rate_schedule_ends_exactly(tiny_mnist1d: Splits) -> None:
    # OneCycleLR raises "Tried to step N times" if an epoch has more batches than planned
    config = TrainConfig(epochs=8, batch_size=16)
    result = train(tiny_mnist1d, config, seed=0, delta=0.5)
    assert result.kept_per_epoch[4:] == [300] * 4  # annealing: epochs >= 0.5 * 8 use all data
    assert len(result.train_loss_per_epoch) == 8


def test_score_histogram_counts_scored_samples_and_threshold() -> None:
    scores = torch.tensor([float("nan"), 0.01, 0.1, 1.0, 10.0])
    histogram = score_histogram(scores, threshold=0.5, bins=4)
    assert histogram["num_scored"] == 4 and sum(histogram["counts"]) == 4
    assert histogram["num_below_threshold"] == 2
    assert histogram["log10_bin_edges"][0] == pytest.approx(-2)
    assert histogram["log10_bin_edges"][-1] == pytest.approx(1)


def test_train_config_validates() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="max_lr"):
        TrainConfig(epochs=1, max_lr=0.0)


# --------------------------------------------------------------------------- benchmark harness
def test_the_old_baselines_module_re_exports_the_package_policies() -> None:
    baselines = _load_module("baselines")
    from infobatch import policies

    assert baselines.DynamicRandom is policies.DynamicRandom
    assert baselines.StaticRandom is policies.StaticRandom
    assert baselines.NoRescale is policies.NoRescale


def _run(setting: str, seed: int, accuracy: float, saved: float) -> dict[str, Any]:
    return {
        "dataset": "mnist_mlp",
        "setting": setting,
        "seed": seed,
        "settings": {"epochs": 2},
        "test_accuracy": accuracy,
        "saved_fraction": saved,
        "train_seconds": 10.0 * (1 - saved),
        "train_cpu_seconds": 10.0 * (1 - saved),
        "infobatch_seconds": 0.1,
    }


def test_report_finds_the_largest_lossless_saving_and_the_noise() -> None:
    report = _load_module("report")
    sweep = importlib.import_module("sweep")  # the module report and runner use
    low, high = sweep.Setting("infobatch", (("prune_ratio", 0.3),)), sweep.DEFAULT
    runs = [_run(sweep.FULL.key, s, 0.950 + 0.001 * s, 0.0) for s in range(4)]
    runs += [_run(low.key, s, 0.9495 + 0.001 * s, 0.2) for s in range(4)]  # -0.05: lossless
    runs += [_run(high.key, s, 0.9480 + 0.001 * s + 0.0002 * s, 0.35) for s in range(4)]
    by_key = report.select_runs(runs, "mnist_mlp", {"epochs": 2}, seeds=4)
    summary = report.summarise(by_key, [sweep.FULL, high, low])
    best = report.largest_lossless(summary)["infobatch"]
    assert best is not None and best[0] == low  # -0.2 points at 35% is not lossless
    assert summary[high]["delta"] == pytest.approx([-0.2, -0.18, -0.16, -0.14])
    assert report._se(summary[high]["delta"]) == pytest.approx(0.0129, abs=1e-4)
    noise = "\n".join(report.noise_lines(summary))
    assert "std 0.03 points" in noise and "1 seeds bring it to 0.05" in noise
    met = {name: ok for name, ok, _ in report.targets("mnist_mlp", summary)}
    assert met["InfoBatch lossless at >= 30% of sample passes saved"] is False
    runs += [_run(high.key, s, 0.9500 + 0.001 * s, 0.35) for s in range(4, 8)]
    runs += [_run(sweep.FULL.key, s, 0.950 + 0.001 * s, 0.0) for s in range(4, 8)]
    summary = report.summarise(report.select_runs(runs, "mnist_mlp", {"epochs": 2}, 8), [high])
    best = report.largest_lossless(summary)["infobatch"]
    assert best is not None and best[0] == high  # four more seeds at no loss: mean -0.085


def test_result_store_is_resumable_shared_and_reads_version_1(tmp_path: Path) -> None:
    runner = _load_module("run_benchmarks")
    settings = {"epochs": 2}
    store = runner.ResultStore(tmp_path / "runs.json")
    assert store.find("mnist1d", "full()", 0, settings) is None
    other = runner.ResultStore(tmp_path / "runs.json")  # a second process, opened earlier
    store.add({"dataset": "mnist1d", "setting": "full()", "seed": 0, "settings": settings})
    other.add({"dataset": "mnist", "setting": "full()", "seed": 0, "settings": settings})
    reopened = runner.ResultStore(tmp_path / "runs.json")
    assert len(reopened.runs) == 2  # neither process overwrote the other's run
    assert reopened.find("mnist1d", "full()", 0, settings) == reopened.runs[0]
    assert reopened.find("mnist1d", "full()", 0, {"epochs": 3}) is None  # other settings rerun
    old = {"dataset": "mnist", "policy": "infobatch", "seed": 1, "x": 1}
    old["settings"] = {"epochs": 8, "prune_ratio": 0.5, "delta": 0.875}
    (tmp_path / "v1.json").write_text(json.dumps({"version": 1, "runs": [old]}))
    upgraded = runner.ResultStore(tmp_path / "v1.json")
    key = "infobatch(prune_ratio=0.5, delta=0.875)"
    assert upgraded.find("mnist", key, 1, {"epochs": 8}) is not None


def test_matched_baselines_take_infobatchs_budget() -> None:
    runner = _load_module("run_benchmarks")
    sweep = importlib.import_module("sweep")  # the module report and runner use
    config = TrainConfig(epochs=4)
    reference = {"kept_per_epoch": [100, 60, 50, 100]}
    _, dynamic = runner.policy_setup(sweep.MATCHED[0], 0, config, reference)
    assert dynamic.budget.kept_counts == (100, 60, 50, 100)
    _, static = runner.policy_setup(sweep.MATCHED[1], 0, config, reference)
    assert static.subset_size == round(310 / 4) and sweep.MATCHED[1].delta == 1.0
    assert runner.policy_setup(sweep.DEFAULT, 0, config, None) == (True, None)
    with pytest.raises(RuntimeError, match="needs the default InfoBatch run"):
        runner.policy_setup(sweep.MATCHED[0], 0, config, None)


def test_every_sweep_setting_builds_its_policy() -> None:
    runner = _load_module("run_benchmarks")
    sweep = importlib.import_module("sweep")  # the module report and runner use
    reference = {"kept_per_epoch": [100] * 12}
    keys = set()
    for task in sweep.TASKS:
        for setting in sweep.settings_for(task, "full"):
            use, _rule = runner.policy_setup(setting, 0, TrainConfig(epochs=12), reference)
            assert use == (setting.family not in ("full", "full_short"))
            keys.add(setting.key)
    assert len(keys) == len({s for t in sweep.TASKS for s in sweep.settings_for(t, "full")})


def test_step_limited_variants_keep_their_budgets_and_steps() -> None:
    limited = _load_module("step_limited")
    generator = torch.Generator().manual_seed(0)
    splits = Splits(
        "mnist",
        torch.randn(300, 1, 28, 28, generator=generator),
        torch.randint(0, 10, (300,), generator=generator),
        torch.randn(50, 1, 28, 28, generator=generator),
        torch.randint(0, 10, (50,), generator=generator),
    )
    config = limited.StepLimitedConfig(batch_size=32)
    variants = limited.VARIANTS

    def run(name: str, reference: dict[str, Any] | None = None) -> dict[str, Any]:
        return limited.train_run(
            splits, config, epochs=4, seed=0, variant=variants[name], reference=reference
        )

    infobatch = run("infobatch")
    assert 0 < infobatch["saved_fraction"] < 0.5
    assert infobatch["optimizer_steps"] < 4 * 10  # ceil(300 / 32) = 10 steps a full epoch
    keep = run("keep_steps")
    assert keep["optimizer_steps"] == 4 * 10  # full data's steps in every epoch
    # epoch 0 is batched as full data, so epoch 1 plans from the same scores
    assert keep["kept_per_epoch"][:2] == infobatch["kept_per_epoch"][:2]
    assert keep["saved_fraction"] == pytest.approx(infobatch["saved_fraction"], abs=0.05)
    control = run("control", infobatch)
    assert control["sample_passes"] == infobatch["sample_passes"]
    matched = run("dynamic_random", infobatch)
    assert matched["kept_per_epoch"] == infobatch["kept_per_epoch"]

    def row(name: str, diff: float, saved: float) -> dict[str, Any]:
        return {
            "variant": name,
            "epochs": 8,
            "minus_full": (diff, 0.05),
            "saved_fraction": saved,
            "seeds": list(range(5)),
        }

    table = limited.format_lossless(
        [],
        [row("keep_steps", 0.2, 0.31), row("r_0.7_keep_steps", -0.15, 0.44), row("ies", -0.3, 0.1)],
    )
    assert "| InfoBatch, keep_steps=True | 31.0% (keep_steps, +0.20 ± 0.05) |" in table
    assert "| IES | none (1 tried) |" in table


def _tiny_splits() -> Splits:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, 40, generator=generator)
    y = (x[:, 0, :10].sum(dim=1) > 0).long()
    return Splits("mnist1d", x[:240], y[:240], x[240:], y[240:])


def test_interleave_alternates_which_run_goes_first_and_equals_separate_runs() -> None:
    from infobatch.experiment import Training, interleave

    splits, config = _tiny_splits(), TrainConfig(epochs=3, batch_size=32)
    runs = {
        name: Training(splits, config, seed=1, infobatch=name == "infobatch")
        for name in ("infobatch", "full")
    }
    seen: list[tuple[str, int]] = []
    results = interleave(runs, on_epoch=lambda name, log: seen.append((name, log.epoch)))
    assert seen == [("infobatch", 0), ("full", 0), ("full", 1), ("infobatch", 1)] + [
        ("infobatch", 2),
        ("full", 2),
    ]
    alone = train(splits, config, seed=1)
    assert results["infobatch"].kept_per_epoch == alone.kept_per_epoch
    assert results["infobatch"].train_loss_per_epoch == alone.train_loss_per_epoch
    assert results["full"].sample_passes == 3 * 240
    accounting = results["infobatch"].time_accounting
    assert set(accounting) == {"planning", "data", "update", "steps"}
    assert sum(accounting.values()) == pytest.approx(results["infobatch"].train_seconds)
    assert all(value > 0 for value in accounting.values())


def test_time_saving_takes_the_median_per_sample_pass_ratio_of_the_pairs() -> None:
    from infobatch.experiment import RunResult, measure_time_saving

    def run(kept: list[int], seconds: list[float]) -> RunResult:
        return RunResult(
            test_accuracy=0.9,
            sample_passes=sum(kept),
            full_passes=400,
            train_seconds=sum(seconds),
            train_cpu_seconds=sum(seconds),
            infobatch_seconds=0.0,
            kept_per_epoch=kept,
            train_loss_per_epoch=[0.0] * len(kept),
            seconds_per_epoch=seconds,
        )

    full = run([100] * 4, [1.0, 1.0, 1.0, 1.0])
    pruned = run([100, 50, 50, 100], [1.1, 0.55, 5.0, 1.1])  # one epoch slowed by a 9x spike
    saving = measure_time_saving([full], [pruned])
    assert saving.median_ratio == pytest.approx(1.1) and saving.pairs == 4
    assert (saving.low_ratio, saving.high_ratio) == pytest.approx((1.1, 10.0))
    assert saving.passes_saved == pytest.approx(25.0)
    assert saving.saved == pytest.approx(100 * (1 - 1.1 * 0.75))  # the spike does not count
    assert saving.total_saved == pytest.approx(100 * (1 - 7.75 / 4))
    assert saving.follows_passes == pytest.approx(saving.saved / 25.0)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="no offline MNIST copy here")
def test_wall_clock_benchmark_reports_the_saving_its_accounting_and_the_eval_cost(
    tmp_path: Path,
) -> None:
    wall_clock = _load_module("wall_clock")
    output = tmp_path / "wall_clock.json"
    argv = ["--tasks", "mnist_mlp", "--epochs", "2", "--num-train", "1500"]
    argv += ["--mnist-dir", str(SHARED_MNIST), "--output", str(output)]
    assert wall_clock.main(argv) == 0
    (task,) = json.loads(output.read_text())["tasks"]
    assert task["task"] == "mnist_mlp" and task["pairs"] == 2 and task["num_train"] == 1500
    assert 0 < task["passes_saved"] < 50  # epoch 1 of 2 prunes
    low, high = task["ratio_range"]
    assert low <= task["median_ratio"] <= high
    assert task["follows"] == pytest.approx(task["time_saved"] / task["passes_saved"])
    assert all(v >= 0 for v in task["infobatch_ms_per_epoch"].values())
    assert task["eval_seconds_per_run"] > 0
    # the evaluation is the same for both runs, so it shrinks the relative saving
    assert abs(task["saved_with_eval"]) < abs(task["time_saved"])
