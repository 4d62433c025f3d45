"""A step-limited task and the pilot of InfoBatch's regime map (issue 14, item 1).

The benchmark's other tasks are at their ceiling or capacity-limited. Here a small CNN trains
on a fixed 6,000-sample subset of real MNIST for a few epochs, so accuracy still rises with
more optimizer steps when the schedule ends. For each number of epochs ``E`` and seed, three
runs are paired by seed (same initialisation):

- ``full``: every sample every epoch, cosine learning rate over the ``E`` epochs;
- ``infobatch``: ``InfoBatch`` at its defaults (``prune_ratio=0.5``, ``delta=0.875``), the
  cosine schedule following training progress ``(epoch + step / len(loader)) / E`` (the
  README's recipe), so pruned epochs still end at the final learning rate;
- ``control``: full data stopped at the sample passes the InfoBatch run of the same seed made,
  with the cosine schedule compressed to that budget: what the same saving buys by training
  less.

It prints, per ``E``, full-data accuracy, the paired differences (InfoBatch - full,
control - full) with their standard errors over seeds, the saving and the optimizer steps
lost, and writes everything to JSON. Runs are stored as they finish; a rerun with more seeds
or epochs trains only what is missing::

    python benchmarks/step_limited.py --mnist-dir ../shared/data/mnist --epochs 4 8 16 \\
        --seeds 0 1 2 3 4 5 6 7 8 9 --threads 1 --output benchmarks/results/step_limited.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from infobatch import AnnealingSchedule, InfoBatch
from infobatch.experiment import Splits, build_model, evaluate, load_mnist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import STEP_LIMITED_EPOCHS, STEP_LIMITED_SEEDS, STEP_LIMITED_TASKS  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_VERSION = 1
TASK = "mnist6k"
MODES = ("full", "infobatch", "control")
#: A diagnostic, not part of the map: InfoBatch with the cosine schedule sized once from the
#: first epoch's ``len(loader)`` (what a framework that counts steps up front does), so it ends
#: early in learning rate when pruned epochs are shorter.
DIAGNOSTIC = "infobatch_sized_once"


@dataclass(frozen=True)
class StepLimitedConfig:
    """Hyperparameters of the step-limited task (shared by every run of a comparison)."""

    num_train: int = 6_000
    batch_size: int = 256
    max_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    prune_ratio: float = 0.5
    delta: float = 0.875
    eval_batch_size: int = 2_000


def cosine_lr(max_lr: float, progress: float) -> float:
    """Cosine decay from ``max_lr`` at progress 0 to 0 at progress 1."""
    return max_lr * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


@torch.no_grad()
def train_loss_and_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``(x, y)`` in evaluation mode."""
    model.eval()
    total = correct = 0.0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        total += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    model.train()
    return total / len(y), correct / len(y)


def train_run(
    splits: Splits,
    config: StepLimitedConfig,
    *,
    epochs: int,
    seed: int,
    mode: str,
    budget: int | None = None,
) -> dict[str, Any]:
    """Train one run of ``mode`` for ``epochs`` epochs and return what it measured.

    ``budget`` (``control`` only) is the number of sample passes to stop at; the cosine
    schedule then follows ``passes / budget``.
    """
    if mode not in (*MODES, DIAGNOSTIC):
        raise ValueError(f"Unknown mode {mode!r}, expected one of {[*MODES, DIAGNOSTIC]}")
    if (mode == "control") != (budget is not None):
        raise ValueError("a control run needs a budget of sample passes, and only it takes one")
    model = build_model("mnist", seed)
    model.train()
    train_set = TensorDataset(splits.x_train, splits.y_train)
    num_train = len(train_set)
    pruned: InfoBatch[tuple[Tensor, ...]] | None = None
    generator = torch.Generator().manual_seed(seed)
    if mode in ("infobatch", DIAGNOSTIC):
        pruned = InfoBatch(
            train_set,
            epochs,
            config.prune_ratio,
            config.delta,
            seed=seed,
            batch_size=config.batch_size,
        )
        loader: DataLoader[tuple[Tensor, ...]] = DataLoader(
            pruned, batch_size=config.batch_size, sampler=pruned.sampler, generator=generator
        )
    else:
        loader = DataLoader(
            train_set, batch_size=config.batch_size, shuffle=True, generator=generator
        )
    criterion = nn.CrossEntropyLoss(reduction="none")
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.max_lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    passes = steps = 0
    kept: list[int] = []
    weights: list[float] = []
    lr_at_epoch_end: list[float] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    max_epochs = epochs if budget is None else math.ceil(budget / num_train)
    for epoch in range(max_epochs):
        epoch_steps = len(loader)  # InfoBatch plans the epoch here: exact
        epoch_passes = 0
        lr = config.max_lr
        for step, (x, y) in enumerate(loader):
            if budget is not None:
                if passes >= budget:
                    break
                x, y = x[: budget - passes], y[: budget - passes]
                progress = passes / budget
            else:
                progress = (epoch + step / epoch_steps) / epochs
                if mode == DIAGNOSTIC:  # sized once: epoch 0 is never pruned, so it is full
                    progress = steps / (epochs * math.ceil(num_train / config.batch_size))
            lr = cosine_lr(config.max_lr, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            per_sample = criterion(model(x), y)
            loss = pruned.update(per_sample) if pruned is not None else per_sample.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            steps += 1
            passes += len(y)
            epoch_passes += len(y)
        kept.append(epoch_passes)
        lr_at_epoch_end.append(lr)
        if pruned is not None:
            weights.append(pruned.history[epoch].weight)
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = time.process_time() - cpu_started
    accuracy = evaluate(model, splits.x_test, splits.y_test, config.eval_batch_size)
    train_loss, train_accuracy = train_loss_and_accuracy(
        model, splits.x_train, splits.y_train, config.eval_batch_size
    )
    schedule = AnnealingSchedule(epochs, config.delta)
    return {
        "mode": mode,
        "epochs": epochs,
        "seed": seed,
        "test_accuracy": accuracy,
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "sample_passes": passes,
        "full_passes": epochs * num_train,
        "saved_fraction": 1.0 - passes / (epochs * num_train),
        "optimizer_steps": steps,
        "full_optimizer_steps": epochs * math.ceil(num_train / config.batch_size),
        "kept_per_epoch": kept,
        "weight_per_epoch": weights,
        "lr_at_epoch_end": lr_at_epoch_end,
        "annealing_epochs": epochs - schedule.pruned_epochs if pruned is not None else None,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
    }


def load_task(mnist_dir: str, config: StepLimitedConfig) -> Splits:
    """The step-limited task's data: the first ``num_train`` MNIST training images, full test."""
    return load_mnist(mnist_dir).subset(num_train=config.num_train)


class Store:
    """The JSON file of finished runs, rewritten atomically after each one."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.settings = settings
        self.runs: list[dict[str, Any]] = []
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("version") != RESULTS_VERSION:
                raise SystemExit(f"{path} has another results version; move it away")
            self.runs = list(data["runs"])

    def find(self, mode: str, epochs: int, seed: int) -> dict[str, Any] | None:
        """The finished run with these keys and the current settings, if any."""
        for run in self.runs:
            if (run["mode"], run["epochs"], run["seed"], run["settings"]) == (
                mode,
                epochs,
                seed,
                self.settings,
            ):
                return run
        return None

    def add(self, run: dict[str, Any], summary: dict[str, Any] | None = None) -> None:
        """Append ``run`` (if given) and rewrite the file with ``summary``."""
        if run:
            self.runs.append(run)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        body = {"version": RESULTS_VERSION, "task": TASK, "runs": self.runs}
        if summary is not None:
            body["summary"] = summary
        partial.write_text(json.dumps(body, indent=1))
        os.replace(partial, self.path)


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return mean, se


def summarise(store: Store, epochs_list: list[int], seeds: list[int]) -> list[dict[str, Any]]:
    """Per ``E``: full-data accuracy and the paired differences over the seeds that have all
    three runs."""
    rows = []
    for epochs in epochs_list:
        triples: list[list[dict[str, Any]]] = []
        for seed in seeds:
            runs = [store.find(mode, epochs, seed) for mode in MODES]
            found = [run for run in runs if run is not None]
            if len(found) == len(MODES):
                triples.append(found)
        if not triples:
            continue
        full = [100 * t[0]["test_accuracy"] for t in triples]
        infobatch = [100 * t[1]["test_accuracy"] for t in triples]
        control = [100 * t[2]["test_accuracy"] for t in triples]
        ib_diff = _mean_se([b - a for a, b in zip(full, infobatch)])
        control_diff = _mean_se([c - a for a, c in zip(full, control)])
        ib_vs_control = _mean_se([b - c for b, c in zip(infobatch, control)])
        sized_once = [
            100 * d["test_accuracy"] - f
            for t, f in zip(triples, full)
            if (d := store.find(DIAGNOSTIC, epochs, t[0]["seed"])) is not None
        ]
        rows.append(
            {
                "epochs": epochs,
                "seeds": [t[0]["seed"] for t in triples],
                "full_accuracy": _mean_se(full),
                "full_accuracy_per_seed": full,
                "infobatch_minus_full": ib_diff,
                "control_minus_full": control_diff,
                "infobatch_minus_control": ib_vs_control,
                "infobatch_per_seed_diff": [b - a for a, b in zip(full, infobatch)],
                "sized_once_minus_full": _mean_se(sized_once) if sized_once else None,
                "sized_once_seeds": len(sized_once),
                "saved_fraction": statistics.fmean(t[1]["saved_fraction"] for t in triples),
                "steps_lost_fraction": statistics.fmean(
                    1 - t[1]["optimizer_steps"] / t[0]["optimizer_steps"] for t in triples
                ),
                "annealing_epochs": triples[0][1]["annealing_epochs"],
                "train_loss": {
                    mode: statistics.fmean(t[i]["train_loss"] for t in triples)
                    for i, mode in enumerate(MODES)
                },
                "seconds_per_run": {
                    mode: statistics.fmean(t[i]["train_seconds"] for t in triples)
                    for i, mode in enumerate(MODES)
                },
            }
        )
    return rows


def _pm(value: tuple[float, float | None], digits: int = 2) -> str:
    mean, se = value
    text = f"{mean:+.{digits}f}"
    return text + (f" ± {se:.{digits}f}" if se is not None else "")


def format_table(rows: list[dict[str, Any]]) -> str:
    """The regime map as a markdown table (accuracies and differences in points)."""
    lines = [
        "| epochs | seeds | full data acc % | InfoBatch - full | saved | steps lost "
        "| annealing epochs | control - full | InfoBatch - control "
        "| train loss full / IB / control |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    diagnostic = any(row.get("sized_once_minus_full") for row in rows)
    if diagnostic:
        lines[0] += " schedule sized once - full (seeds) |"
        lines[1] += " ---: |"
    for row in rows:
        mean, se = row["full_accuracy"]
        loss = row["train_loss"]
        lines.append(
            f"| {row['epochs']} | {len(row['seeds'])} | {mean:.2f}"
            + (f" ± {se:.2f}" if se is not None else "")
            + f" | {_pm(row['infobatch_minus_full'])} | {100 * row['saved_fraction']:.1f}% "
            f"| {100 * row['steps_lost_fraction']:.1f}% | {row['annealing_epochs']} "
            f"| {_pm(row['control_minus_full'])} | {_pm(row['infobatch_minus_control'])} "
            f"| {loss['full']:.3f} / {loss['infobatch']:.3f} / {loss['control']:.3f} |"
        )
        if diagnostic:
            sized = row.get("sized_once_minus_full")
            lines[-1] += f" {_pm(sized)} ({row['sized_once_seeds']}) |" if sized else " - |"
    return "\n".join(lines)


def step_limited_check(rows: list[dict[str, Any]]) -> str:
    """Full-data accuracy gained between consecutive ``E`` (paired by seed)."""
    parts = []
    for low, high in zip(rows, rows[1:]):
        common = [s for s in low["seeds"] if s in high["seeds"]]
        gains = [
            high["full_accuracy_per_seed"][high["seeds"].index(s)]
            - low["full_accuracy_per_seed"][low["seeds"].index(s)]
            for s in common
        ]
        if gains:
            parts.append(f"{low['epochs']}->{high['epochs']} epochs: {_pm(_mean_se(gains))} points")
    return "full-data accuracy gained: " + ("; ".join(parts) if parts else "n/a")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--mnist-dir",
        default=str(REPO_ROOT.parent / "shared" / "data" / "mnist"),
        help="folder with the MNIST IDX .gz files",
    )
    parser.add_argument("--epochs", type=int, nargs="+", default=list(STEP_LIMITED_EPOCHS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(STEP_LIMITED_SEEDS))
    parser.add_argument(
        "--modes",
        nargs="+",
        default=list(MODES),
        choices=[*MODES, DIAGNOSTIC],
        help="which runs to train (control needs the infobatch run of its seed)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--max-lr", type=float, default=StepLimitedConfig.max_lr)
    parser.add_argument("--batch-size", type=int, default=StepLimitedConfig.batch_size)
    parser.add_argument(
        "--output",
        default=str(REPO_ROOT / "benchmarks" / "results" / "step_limited.json"),
        help="JSON file of runs and summary (runs already there are reused)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train every missing run, then print the regime map and write the JSON."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = StepLimitedConfig(max_lr=args.max_lr, batch_size=args.batch_size)
    settings = asdict(config)
    store = Store(Path(args.output), settings)
    splits = load_task(args.mnist_dir, config)
    print(f"{STEP_LIMITED_TASKS[TASK][0]}: {STEP_LIMITED_TASKS[TASK][1]}", flush=True)
    for seed in args.seeds:
        for epochs in args.epochs:
            for mode in args.modes:
                if store.find(mode, epochs, seed) is not None:
                    continue
                budget = None
                if mode == "control":
                    reference = store.find("infobatch", epochs, seed)
                    if reference is None:
                        raise SystemExit(f"control E={epochs} seed {seed} needs its infobatch run")
                    budget = int(reference["sample_passes"])
                result = train_run(
                    splits, config, epochs=epochs, seed=seed, mode=mode, budget=budget
                )
                run = {
                    **result,
                    "settings": settings,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                }
                store.add(run)
                print(
                    f"E={epochs:2d} seed {seed} {mode:9s} "
                    f"acc {100 * result['test_accuracy']:6.2f}%  "
                    f"saved {100 * result['saved_fraction']:5.1f}%  "
                    f"steps {result['optimizer_steps']:5d}  "
                    f"train loss {result['train_loss']:.4f}  {result['train_seconds']:5.1f}s",
                    flush=True,
                )
    rows = summarise(store, sorted(set(args.epochs)), args.seeds)
    summary = {"rows": rows, "check": step_limited_check(rows)}
    store.add({}, summary)
    print()
    print(format_table(rows))
    print(summary["check"])
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
