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
import contextlib
import datetime
import fcntl
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from infobatch import (
    AnnealingSchedule,
    InfoBatch,
    KeepAll,
    Selection,
    ShortScheduleWarning,
    SoftPruning,
)
from infobatch.context import EpochContext
from infobatch.experiment import Splits, build_model, evaluate, load_mnist
from infobatch.policies import POLICIES, Rule, make_policy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import STEP_LIMITED_EPOCHS, STEP_LIMITED_SEEDS, STEP_LIMITED_TASKS  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_VERSION = 1
TASK = "mnist6k"


@dataclass(frozen=True)
class Variant:
    """One way of training the step-limited task (a run is a variant, a number of epochs and a
    seed; every variant is paired by seed with ``full``).

    Attributes:
        name: the key stored with each run.
        what: one line for the report.
        pruned: trains through ``InfoBatch`` (else a plain shuffled loader).
        prune_ratio, delta: InfoBatch's arguments.
        policy: a name of :data:`infobatch.policies.POLICIES` (``None``: InfoBatch's own rule).
        params: the policy's keyword arguments.
        matched: the policy's ``kept_counts`` are the seed's ``infobatch`` run's (equal budget).
        keep_steps: ``InfoBatch(keep_steps=True)``: pruned epochs train in smaller batches,
            as many optimizer steps as a full epoch.
        sized_once: the cosine schedule is sized once from epoch 0's ``len(loader)`` (what a
            framework counting steps up front does), so it ends early in learning rate.
        control: full data stopped at the sample passes of the seed's ``infobatch`` run.
        batch_size: full data's batch size when it is not the task's (a diagnostic).
    """

    name: str
    what: str
    pruned: bool = True
    prune_ratio: float = 0.5
    delta: float = 0.875
    policy: str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    matched: bool = False
    keep_steps: bool = False
    sized_once: bool = False
    control: bool = False
    batch_size: int | None = None


#: Every variant by name. ``full``, ``infobatch`` and ``control`` make the regime map; the rest
#: are the candidates of issue 14 item 2 and the policies of item 3.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("full", "full data", pruned=False),
        Variant("infobatch", "InfoBatch defaults (r=0.5, delta=0.875)"),
        Variant(
            "control",
            "full data stopped at InfoBatch's sample passes, cosine compressed to them",
            pruned=False,
            control=True,
        ),
        Variant(
            "infobatch_sized_once",
            "InfoBatch defaults, cosine sized once from epoch 0 (stops early in LR)",
            sized_once=True,
        ),
        Variant(
            "keep_steps",
            "InfoBatch defaults, pruned epochs with smaller batches: full data's optimizer steps",
            keep_steps=True,
        ),
        Variant(
            "full_half_batch",
            "full data at half the batch size (twice the optimizer steps, same samples)",
            pruned=False,
            batch_size=128,
        ),
        Variant("delta_0.75", "InfoBatch r=0.5, delta=0.75", delta=0.75),
        Variant("r_0.3", "InfoBatch r=0.3", prune_ratio=0.3),
        Variant(
            "r_0.3_keep_steps",
            "InfoBatch r=0.3, full data's steps",
            prune_ratio=0.3,
            keep_steps=True,
        ),
        Variant(
            "r_0.7_keep_steps",
            "InfoBatch r=0.7, full data's steps",
            prune_ratio=0.7,
            keep_steps=True,
        ),
        Variant(
            "no_rescale",
            "InfoBatch's pruning, weight 1",
            policy="no_rescale",
            params=(("prune_ratio", 0.5),),
        ),
        Variant(
            "dynamic_random",
            "a random subset each epoch at InfoBatch's budget",
            policy="dynamic_random",
            matched=True,
        ),
        Variant(
            "dynamic_random_keep_steps",
            "random subset at InfoBatch's budget, full steps",
            policy="dynamic_random",
            matched=True,
            keep_steps=True,
        ),
        Variant(
            "orderdp_matched",
            "OrderDP at InfoBatch's budget (its top 85% of a random subset)",
            policy="orderdp",
            params=(("top_fraction", 0.85),),
            matched=True,
        ),
        Variant(
            "orderdp_paper",
            "OrderDP at its paper's CIFAR setting (r=0.3625, subset 75%, every epoch)",
            policy="orderdp",
            params=(("prune_ratio", 0.3625), ("subset_fraction", 0.75)),
            delta=1.0,
        ),
        Variant(
            "orderdp_matched_keep_steps",
            "OrderDP at InfoBatch's budget, full data's steps",
            policy="orderdp",
            params=(("top_fraction", 0.85),),
            matched=True,
            keep_steps=True,
        ),
        Variant(
            "late_start",
            "InfoBatch r=0.5 from the second quarter of the epochs on (full data before)",
            policy="late_start",
            params=(("start_fraction", 0.25),),
        ),
        Variant(
            "saving_budget_0.3",
            "InfoBatch's rule with the ratio set per epoch to save 30% in total",
            policy="saving_budget",
            params=(("target", 0.3),),
        ),
        Variant("repb", "RePB (reconstructed), r=0.5, windows of 10 batches", policy="repb"),
        Variant("ies", "IES, threshold 1e-3", policy="ies"),
        Variant(
            "ies_window_3", "IES, threshold 1e-3, 3 epochs", policy="ies", params=(("window", 3),)
        ),
    )
}
MAP_VARIANTS = ("full", "infobatch", "control")
#: Kept for the runs stored before variants had names of their own.
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
    world_size: int = 1  # processes (torchrun); batch_size is the global batch of a step
    accumulation: int = 1  # micro-batches per optimizer step on each process

    @property
    def micro_batch(self) -> int:
        """Samples per micro-batch on one process."""
        return self.batch_size // (self.world_size * self.accumulation)


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


def _weight_norm(model: nn.Module) -> float:
    return float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))


class LateStart:
    """InfoBatch's rule from epoch ``ceil(start_fraction * E)`` on, full data before (a
    candidate of issue 14: start pruning later)."""

    def __init__(self, start_fraction: float, prune_ratio: float = 0.5) -> None:
        self.start_fraction, self.prune_ratio = start_fraction, prune_ratio

    def select_for_epoch(
        self, scores: Tensor, generator: torch.Generator, context: EpochContext
    ) -> Selection:
        """Keep everything before the start, InfoBatch's rule after."""
        start = math.ceil(self.start_fraction * (context.num_epochs or 0))
        rule = KeepAll() if context.epoch < start else SoftPruning(self.prune_ratio)
        return rule.select(scores, generator)


def make_rule(variant: Variant, epochs: int, reference: dict[str, Any] | None) -> Rule | None:
    """The variant's pruning rule (``None``: InfoBatch's own)."""
    if variant.policy is None:
        return None
    kwargs = dict(variant.params)
    if variant.policy == "late_start":
        return LateStart(**kwargs)
    if variant.matched:
        if reference is None:
            raise SystemExit(f"{variant.name} needs the infobatch run of its seed first")
        pruned_epochs = AnnealingSchedule(epochs, _delta(variant)).pruned_epochs
        kwargs["kept_counts"] = [int(k) for k in reference["kept_per_epoch"][:pruned_epochs]]
    return make_policy(variant.policy, **kwargs)


def _delta(variant: Variant) -> float:
    info = POLICIES.get(variant.policy) if variant.policy is not None else None
    if info is not None and info.delta is not None:
        return float(info.delta)
    return variant.delta


def train_run(
    splits: Splits,
    config: StepLimitedConfig,
    *,
    epochs: int,
    seed: int,
    variant: Variant,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one run of ``variant`` for ``epochs`` epochs and return what it measured.

    ``reference`` is the seed's ``infobatch`` run (for the control's budget of sample passes,
    then the cosine follows ``passes / budget``, and for matched budgets). Under torchrun
    (``config.world_size`` processes) the model is wrapped in DDP, each process trains its
    share in micro-batches of ``config.micro_batch`` and steps every ``config.accumulation``
    of them (and at each epoch's end); the counts returned are global.
    """
    world, accumulation = config.world_size, config.accumulation
    if world != (dist.get_world_size() if dist.is_initialized() else 1):
        raise SystemExit(f"world_size={world} needs torchrun --nproc_per_node={world}")
    budget = None
    if variant.control:
        if reference is None:
            raise SystemExit(f"control E={epochs} seed {seed} needs its infobatch run")
        if world > 1:
            raise SystemExit("the control runs in one process only")
        budget = int(reference["sample_passes"])
    model: nn.Module = build_model("mnist", seed)
    model.train()
    if world > 1:
        model = DistributedDataParallel(model)
    train_set = TensorDataset(splits.x_train, splits.y_train)
    num_train = len(train_set)
    full_steps = math.ceil(num_train / config.batch_size)
    pruned: InfoBatch[tuple[Tensor, ...]] | None = None
    generator = torch.Generator().manual_seed(seed)
    full_sampler: DistributedSampler[Any] | None = None
    if variant.pruned:
        pruned = InfoBatch(
            train_set,
            epochs,
            variant.prune_ratio,
            _delta(variant),
            seed=seed,
            batch_size=config.micro_batch,
            keep_steps=variant.keep_steps,
            rule=make_rule(variant, epochs, reference),
        )
    elif world > 1:
        full_sampler = DistributedSampler(train_set, shuffle=True, seed=seed)
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
    lr_sum = 0.0  # sum of the learning rate over optimizer steps
    weight_norms: list[float] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    max_epochs = epochs if budget is None else math.ceil(budget / num_train)
    for epoch in range(max_epochs):
        if pruned is not None:  # keep_steps: the epoch's batch size comes from the sampler
            loader: DataLoader[tuple[Tensor, ...]] = DataLoader(
                pruned, batch_sampler=pruned.batch_sampler, generator=generator
            )
        elif full_sampler is not None:
            full_sampler.set_epoch(epoch)
            loader = DataLoader(train_set, batch_size=config.micro_batch, sampler=full_sampler)
        else:
            loader = DataLoader(
                train_set,
                batch_size=variant.batch_size or config.micro_batch,
                shuffle=True,
                generator=generator,
            )
        epoch_batches = len(loader)
        epoch_passes = 0
        lr = config.max_lr
        for batch, (x, y) in enumerate(loader):
            if budget is not None:
                if passes >= budget:
                    break
                x, y = x[: budget - passes], y[: budget - passes]
                progress = passes / budget
            else:
                progress = (epoch + batch / epoch_batches) / epochs
                if variant.sized_once:  # epoch 0 is never pruned, so it is full
                    progress = steps / (epochs * full_steps)
            first_of_group = batch % accumulation == 0
            last_of_group = (batch + 1) % accumulation == 0 or batch + 1 == epoch_batches
            if first_of_group:
                lr = cosine_lr(config.max_lr, progress)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            syncing = last_of_group or not isinstance(model, DistributedDataParallel)
            with contextlib.nullcontext() if syncing else model.no_sync():
                per_sample = criterion(model(x), y)
                loss = pruned.update(per_sample) if pruned is not None else per_sample.mean()
                (loss / accumulation).backward()  # type: ignore[no-untyped-call]
            if last_of_group:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
                lr_sum += lr
            passes += len(y) * world
            epoch_passes += len(y) * world
        kept.append(pruned.history[epoch].num_kept if pruned is not None else epoch_passes)
        lr_at_epoch_end.append(lr)
        weight_norms.append(_weight_norm(model))
        if pruned is not None:
            weights.append(pruned.history[epoch].weight)
    if pruned is not None:
        passes = sum(kept)  # the plan's kept samples, without the padding of the shares
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = time.process_time() - cpu_started
    net = model.module if isinstance(model, DistributedDataParallel) else model
    accuracy = evaluate(net, splits.x_test, splits.y_test, config.eval_batch_size)
    train_loss, train_accuracy = train_loss_and_accuracy(
        net, splits.x_train, splits.y_train, config.eval_batch_size
    )
    schedule = AnnealingSchedule(epochs, _delta(variant))
    return {
        "mode": variant.name,
        "epochs": epochs,
        "seed": seed,
        "test_accuracy": accuracy,
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "sample_passes": passes,
        "full_passes": epochs * num_train,
        "saved_fraction": 1.0 - passes / (epochs * num_train),
        "optimizer_steps": steps,
        "full_optimizer_steps": epochs * full_steps,
        "lr_sum": lr_sum,
        "kept_per_epoch": kept,
        "weight_per_epoch": weights,
        "weight_norm_per_epoch": weight_norms,
        "lr_at_epoch_end": lr_at_epoch_end,
        "annealing_epochs": epochs - schedule.pruned_epochs if pruned is not None else None,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
    }


def load_task(mnist_dir: str, config: StepLimitedConfig) -> Splits:
    """The step-limited task's data: the first ``num_train`` MNIST training images, full test."""
    return load_mnist(mnist_dir).subset(num_train=config.num_train)


class Store:
    """The JSON file of finished runs, rewritten atomically after each one. Processes may share
    it: each write takes a lock and merges the runs other processes wrote meanwhile."""

    def __init__(self, path: Path, settings: dict[str, Any], write: bool = True) -> None:
        self.path = path
        self.settings = settings
        self.write = write  # only rank 0 writes under torchrun; every rank keeps its runs
        self.runs: list[dict[str, Any]] = self._read()

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        data = json.loads(self.path.read_text())
        if data.get("version") != RESULTS_VERSION:
            raise SystemExit(f"{self.path} has another results version; move it away")
        return list(data["runs"])

    @staticmethod
    def _key(run: dict[str, Any]) -> str:
        return json.dumps([run["mode"], run["epochs"], run["seed"], run["settings"]])

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
        if not self.write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f"{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            known = {self._key(r) for r in self.runs}
            self.runs += [r for r in self._read() if self._key(r) not in known]
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


def _paired(
    store: Store, variant: str, epochs: int, seeds: list[int], against: str = "full"
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    pairs = []
    for seed in seeds:
        run, base = store.find(variant, epochs, seed), store.find(against, epochs, seed)
        if run is not None and base is not None:
            pairs.append((run, base))
    return pairs


def summarise(store: Store, epochs_list: list[int], seeds: list[int]) -> list[dict[str, Any]]:
    """The regime map: per ``E``, full-data accuracy and the paired differences over the seeds
    that have all three runs (full, InfoBatch, control)."""
    rows = []
    for epochs in epochs_list:
        triples: list[list[dict[str, Any]]] = []
        for seed in seeds:
            runs = [store.find(mode, epochs, seed) for mode in MAP_VARIANTS]
            found = [run for run in runs if run is not None]
            if len(found) == len(MAP_VARIANTS):
                triples.append(found)
        if not triples:
            continue
        full = [100 * t[0]["test_accuracy"] for t in triples]
        infobatch = [100 * t[1]["test_accuracy"] for t in triples]
        control = [100 * t[2]["test_accuracy"] for t in triples]
        rows.append(
            {
                "epochs": epochs,
                "seeds": [t[0]["seed"] for t in triples],
                "full_accuracy": _mean_se(full),
                "full_accuracy_per_seed": full,
                "infobatch_minus_full": _mean_se([b - a for a, b in zip(full, infobatch)]),
                "control_minus_full": _mean_se([c - a for a, c in zip(full, control)]),
                "infobatch_minus_control": _mean_se([b - c for b, c in zip(infobatch, control)]),
                "infobatch_per_seed_diff": [b - a for a, b in zip(full, infobatch)],
                "saved_fraction": statistics.fmean(t[1]["saved_fraction"] for t in triples),
                "steps_lost_fraction": statistics.fmean(
                    1 - t[1]["optimizer_steps"] / t[0]["optimizer_steps"] for t in triples
                ),
                "annealing_epochs": triples[0][1]["annealing_epochs"],
                "train_loss": {
                    mode: statistics.fmean(t[i]["train_loss"] for t in triples)
                    for i, mode in enumerate(MAP_VARIANTS)
                },
                "seconds_per_run": {
                    mode: statistics.fmean(t[i]["train_seconds"] for t in triples)
                    for i, mode in enumerate(MAP_VARIANTS)
                },
            }
        )
    return rows


def summarise_variants(
    store: Store,
    epochs_list: list[int],
    seeds: list[int],
    exclude: tuple[str, ...] = MAP_VARIANTS,
) -> list[dict[str, Any]]:
    """Every variant but ``exclude`` against full data and InfoBatch, paired by seed, per
    ``E``."""
    rows = []
    for name, variant in VARIANTS.items():
        if name in exclude or name == "full":
            continue
        for epochs in epochs_list:
            pairs = _paired(store, name, epochs, seeds)
            if not pairs:
                continue
            versus_infobatch = _paired(store, name, epochs, seeds, against="infobatch")
            rows.append(
                {
                    "variant": name,
                    "what": variant.what,
                    "epochs": epochs,
                    "seeds": [run["seed"] for run, _ in pairs],
                    "minus_full": _mean_se(
                        [100 * (r["test_accuracy"] - b["test_accuracy"]) for r, b in pairs]
                    ),
                    "minus_infobatch": _mean_se(
                        [
                            100 * (r["test_accuracy"] - b["test_accuracy"])
                            for r, b in versus_infobatch
                        ]
                    )
                    if versus_infobatch
                    else None,
                    "saved_fraction": statistics.fmean(r["saved_fraction"] for r, _ in pairs),
                    "steps_lost_fraction": statistics.fmean(
                        1 - r["optimizer_steps"] / b["optimizer_steps"] for r, b in pairs
                    ),
                    "lr_sum_lost_fraction": statistics.fmean(
                        1 - r["lr_sum"] / b["lr_sum"] for r, b in pairs if "lr_sum" in b
                    )
                    if all("lr_sum" in r and "lr_sum" in b for r, b in pairs)
                    else None,
                    "train_loss": statistics.fmean(r["train_loss"] for r, _ in pairs),
                    "full_train_loss": statistics.fmean(b["train_loss"] for _, b in pairs),
                }
            )
    return rows


def _pm(value: tuple[float, float | None] | None, digits: int = 2) -> str:
    if value is None:
        return "-"
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
    return "\n".join(lines)


def format_variants(rows: list[dict[str, Any]]) -> str:
    """The candidates and policies as a markdown table."""
    lines = [
        "| variant | epochs | seeds | - full | - InfoBatch | saved | steps lost "
        "| LR sum lost | train loss (full) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for row in rows:
        lr_lost = row["lr_sum_lost_fraction"]
        lines.append(
            f"| {row['variant']}: {row['what']} | {row['epochs']} | {len(row['seeds'])} "
            f"| {_pm(row['minus_full'])} | {_pm(row['minus_infobatch'])} "
            f"| {100 * row['saved_fraction']:.1f}% | {100 * row['steps_lost_fraction']:.1f}% "
            f"| {'-' if lr_lost is None else f'{100 * lr_lost:.1f}%'} "
            f"| {row['train_loss']:.3f} ({row['full_train_loss']:.3f}) |"
        )
    return "\n".join(lines)


#: Variant name -> the policy it belongs to, for the largest lossless saving per policy.
POLICY_OF = {
    "infobatch": "InfoBatch",
    "delta_0.75": "InfoBatch",
    "r_0.3": "InfoBatch",
    "keep_steps": "InfoBatch, keep_steps=True",
    "r_0.3_keep_steps": "InfoBatch, keep_steps=True",
    "r_0.7_keep_steps": "InfoBatch, keep_steps=True",
    "no_rescale": "InfoBatch, no rescaling",
    "late_start": "InfoBatch",
    "saving_budget_0.3": "InfoBatch, saving budget",
    "control": "full data, fewer passes",
    "dynamic_random": "dynamic random",
    "dynamic_random_keep_steps": "dynamic random, full data's steps",
    "orderdp_matched": "OrderDP",
    "orderdp_paper": "OrderDP",
    "orderdp_matched_keep_steps": "OrderDP, full data's steps",
    "repb": "RePB (reconstructed)",
    "ies": "IES",
    "ies_window_3": "IES",
}
LOSSLESS = -0.1  # a mean paired difference (points) at or above this is lossless


def format_lossless(
    rows: list[dict[str, Any]], variant_rows: list[dict[str, Any]], min_seeds: int = 5
) -> str:
    """Per policy and ``E``: the largest saving whose mean paired difference with full data is
    at least :data:`LOSSLESS` (over at least ``min_seeds`` seeds), as a markdown table."""
    entries = [
        (v["variant"], v["epochs"], v["minus_full"], v["saved_fraction"], len(v["seeds"]))
        for v in variant_rows
    ]
    for row in rows:
        for name, key in (("infobatch", "infobatch_minus_full"), ("control", "control_minus_full")):
            entries.append(
                (name, row["epochs"], row[key], row["saved_fraction"], len(row["seeds"]))
            )
    epochs = sorted({e[1] for e in entries})
    policies = list(dict.fromkeys(POLICY_OF[e[0]] for e in entries if e[0] in POLICY_OF))
    lines = [
        "| policy | " + " | ".join(f"{e} epochs" for e in epochs) + " |",
        "| --- |" + " ---: |" * len(epochs),
    ]
    for policy in policies:
        cells = []
        for epoch in epochs:
            tried = [
                e
                for e in entries
                if POLICY_OF.get(e[0]) == policy and e[1] == epoch and e[4] >= min_seeds
            ]
            best = max((e for e in tried if e[2][0] >= LOSSLESS), key=lambda e: e[3], default=None)
            if not tried:
                cells.append("-")
            elif best is None:
                cells.append(f"none ({len(tried)} tried)")
            else:
                cells.append(f"{100 * best[3]:.1f}% ({best[0]}, {_pm(best[2])})")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
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
        default=list(MAP_VARIANTS),
        choices=list(VARIANTS),
        help="which variants to train (control and matched ones need the seed's infobatch run)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--max-lr", type=float, default=StepLimitedConfig.max_lr)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=StepLimitedConfig.batch_size,
        help="samples per optimizer step over all processes",
    )
    parser.add_argument(
        "--accumulation", type=int, default=1, help="micro-batches per optimizer step"
    )
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
    warnings.simplefilter("ignore", ShortScheduleWarning)  # this script measures that regime
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # under torchrun: gloo on CPU
        dist.init_process_group("gloo")
    config = StepLimitedConfig(
        max_lr=args.max_lr,
        batch_size=args.batch_size,
        world_size=world,
        accumulation=args.accumulation,
    )
    if config.micro_batch * world * config.accumulation != config.batch_size:
        raise SystemExit("--batch-size must be a multiple of processes x --accumulation")
    settings = asdict(config)
    if world == 1 and config.accumulation == 1:  # the runs stored before these two existed
        del settings["world_size"], settings["accumulation"]
    main_rank = not dist.is_initialized() or dist.get_rank() == 0
    store = Store(Path(args.output), settings, write=main_rank)
    splits = load_task(args.mnist_dir, config)
    print(f"{STEP_LIMITED_TASKS[TASK][0]}: {STEP_LIMITED_TASKS[TASK][1]}", flush=True)
    for seed in args.seeds:
        for epochs in args.epochs:
            for mode in args.modes:
                if store.find(mode, epochs, seed) is not None:
                    continue
                result = train_run(
                    splits,
                    config,
                    epochs=epochs,
                    seed=seed,
                    variant=VARIANTS[mode],
                    reference=store.find("infobatch", epochs, seed),
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
                if main_rank:
                    print(
                        f"E={epochs:2d} seed {seed} {mode:12s} "
                        f"acc {100 * result['test_accuracy']:6.2f}%  "
                        f"saved {100 * result['saved_fraction']:5.1f}%  "
                        f"steps {result['optimizer_steps']:5d}  "
                        f"train loss {result['train_loss']:.4f}  {result['train_seconds']:5.1f}s",
                        flush=True,
                    )
    all_epochs = sorted({run["epochs"] for run in store.runs})
    all_seeds = sorted({run["seed"] for run in store.runs})
    rows = summarise(store, all_epochs, all_seeds)
    variant_rows = summarise_variants(store, all_epochs, all_seeds)
    summary = {"rows": rows, "variants": variant_rows, "check": step_limited_check(rows)}
    store.add({}, summary)
    if dist.is_initialized():
        dist.destroy_process_group()
    if not main_rank:
        return 0
    print()
    print(format_table(rows))
    print(summary["check"])
    print()
    print(format_variants(variant_rows))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
