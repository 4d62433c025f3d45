"""epoch_metrics, log_epoch and log_history: one set of names, equal to the history, on a real
TensorBoard SummaryWriter read back from its event file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import infobatch
from infobatch import METRICS, EpochStats, InfoBatch, epoch_metrics, log_epoch, log_history

from ._tensorboard import read_scalars

EPOCHS = 4  # delta 0.75: epoch 0 full data (nothing scored), 1-2 pruned, 3 annealing
TIMES = {name for name in METRICS if name.startswith("infobatch/time/")}


def train(epochs: int = EPOCHS, *, timed: bool = True, **options: Any) -> InfoBatch[Any]:
    """A small classifier trained with InfoBatch in a plain loop."""
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(3, (60,), generator=generator)
    features = torch.randn(3, 5, generator=generator)[labels] + torch.randn(
        60, 5, generator=generator
    )
    dataset = InfoBatch(TensorDataset(features, labels), epochs, delta=0.75, seed=0, **options)
    loader = DataLoader(dataset, batch_size=8, sampler=dataset.sampler)
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(epochs):
        for x, y in dataset.timed(loader) if timed else loader:
            loss = dataset.update(F.cross_entropy(model(x), y, reduction="none"))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return dataset


@pytest.fixture(scope="module")
def run() -> InfoBatch[Any]:
    return train()


def test_the_names_are_one_fixed_set_and_exported() -> None:
    assert list(METRICS) == [
        "infobatch/epoch",
        "infobatch/num_kept",
        "infobatch/num_pruned",
        "infobatch/num_scored",
        "infobatch/num_well_learned",
        "infobatch/threshold",
        "infobatch/weight",
        "infobatch/pruning",
        "infobatch/saved_fraction",
        "infobatch/time/planning",
        "infobatch/time/data",
        "infobatch/time/update",
        "infobatch/time/training",
        "infobatch/time/epoch",
        "infobatch/time/between_epochs",
    ]
    assert all(
        hasattr(EpochStats, field) or field in EpochStats.__dataclass_fields__
        for field in METRICS.values()
    )
    with pytest.raises(TypeError):
        METRICS["infobatch/other"] = "epoch"  # type: ignore[index]
    for name in ("METRICS", "epoch_metrics", "log_epoch", "log_history", "plot_history"):
        assert name in infobatch.__all__


def test_epoch_metrics_equal_the_history_exactly(run: InfoBatch[Any]) -> None:
    history = run.history
    assert [s.pruning for s in history] == [False, True, True, False]
    for stats in history:
        metrics = epoch_metrics(stats)
        assert set(metrics) <= set(METRICS)
        for name, field in METRICS.items():
            value = float(getattr(stats, field))
            if math.isnan(value):
                assert name not in metrics
            else:
                assert metrics[name] == value and type(metrics[name]) is float
    first, pruned, last = (epoch_metrics(history[e]) for e in (0, 1, 3))
    # nan means "none" or "not measured": left out
    assert "infobatch/threshold" not in first and "infobatch/threshold" not in last
    assert pruned["infobatch/threshold"] == history[1].threshold
    assert "infobatch/time/between_epochs" not in first  # nothing before the first epoch
    assert set(pruned) >= TIMES  # a timed loop measures everything after the first epoch
    assert pruned["infobatch/pruning"] == 1.0 and last["infobatch/pruning"] == 0.0
    assert last["infobatch/saved_fraction"] == run.saved_fraction > 0
    assert pruned["infobatch/time/training"] == pytest.approx(
        pruned["infobatch/time/epoch"]
        - pruned["infobatch/time/data"]
        - pruned["infobatch/time/update"]
    )


def test_epoch_metrics_leave_nan_values_out() -> None:
    stats = EpochStats(
        epoch=2,
        num_samples=10,
        num_kept=10,
        num_pruned=0,
        num_scored=10,
        num_well_learned=0,
        threshold=math.nan,
        weight=1.0,
        pruning=False,
        saved_fraction=0.25,
        planning_seconds=0.5,
        update_seconds=0.25,
        epoch_seconds=2.0,
    )
    assert epoch_metrics(stats) == {
        "infobatch/epoch": 2.0,
        "infobatch/num_kept": 10.0,
        "infobatch/num_pruned": 0.0,
        "infobatch/num_scored": 10.0,
        "infobatch/num_well_learned": 0.0,
        "infobatch/weight": 1.0,
        "infobatch/pruning": 0.0,
        "infobatch/saved_fraction": 0.25,
        "infobatch/time/planning": 0.5,
        "infobatch/time/update": 0.25,
        "infobatch/time/training": 1.75,  # the data wait was not measured: counted here
        "infobatch/time/epoch": 2.0,
    }


def test_an_untimed_loop_logs_no_data_wait() -> None:
    history = train(2, timed=False).history
    assert all("infobatch/time/data" not in epoch_metrics(s) for s in history)
    assert all("infobatch/time/epoch" in epoch_metrics(s) for s in history)


def test_log_epoch_and_log_history_on_a_real_summary_writer(
    run: InfoBatch[Any], tmp_path: Path
) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "history"))
    written = log_history(writer, run)
    writer.close()
    assert written == [epoch_metrics(s) for s in run.history]
    scalars = read_scalars(tmp_path / "history")
    assert set(scalars) == set().union(*written)
    for name, events in scalars.items():
        expected = [(s.epoch, m[name]) for s, m in zip(run.history, written) if name in m]
        assert [step for step, _ in events] == [step for step, _ in expected]
        # TensorBoard stores scalars as float32
        assert [value for _, value in events] == [np.float32(v) for _, v in expected]

    # One call after each epoch of a loop: the last epoch, at its index or the step given.
    writer = SummaryWriter(str(tmp_path / "loop"))
    assert log_epoch(writer, run) == written[-1]
    log_epoch(writer, run.history[1], step=100)
    writer.close()
    scalars = read_scalars(tmp_path / "loop")
    assert scalars["infobatch/num_kept"] == [
        (EPOCHS - 1, float(run.history[-1].num_kept)),
        (100, float(run.history[1].num_kept)),
    ]
    assert scalars["infobatch/threshold"] == [(100, np.float32(run.history[1].threshold))]


def test_log_epoch_takes_a_dataset_its_sampler_a_history_or_one_epoch(
    run: InfoBatch[Any],
) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, float, int]] = []

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.calls.append((tag, value, step))

    expected = [(k, v, EPOCHS - 1) for k, v in epoch_metrics(run.history[-1]).items()]
    for source in (run, run.sampler, run.history, run.history[-1]):
        writer = Recorder()
        log_epoch(writer, source)
        assert writer.calls == expected


def test_bad_inputs_are_refused_with_what_to_pass(run: InfoBatch[Any]) -> None:
    with pytest.raises(TypeError, match=r"add_scalar\(tag, value, global_step\).*SummaryWriter"):
        log_epoch(object(), run)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="add_scalar.*got dict"):
        log_history({}, run)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="history is empty"):
        log_epoch(_NoWriter(), InfoBatch(TensorDataset(torch.zeros(4)), 2))
    with pytest.raises(TypeError, match="EpochStats, a list of them.*got str"):
        log_epoch(_NoWriter(), "history")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="epoch_metrics\\(\\) takes one EpochStats.*got list"):
        epoch_metrics(run.history)  # type: ignore[arg-type]


class _NoWriter:
    def add_scalar(self, tag: str, value: float, step: int) -> None:
        raise AssertionError("nothing should be written")


def test_the_readmes_plain_loop_snippet_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Statistics on your loggers\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    history = namespace["dataset"].history
    assert len(history) == 20 and history[-1].saved_fraction > 0
    scalars = read_scalars(tmp_path / "runs")
    assert [step for step, _ in scalars["infobatch/num_kept"]] == list(range(20))
    assert "infobatch/time/data" in scalars  # timed
    assert (tmp_path / "infobatch-history.png").stat().st_size > 0
