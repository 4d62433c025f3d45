"""A self-contained check of infobatch on one GPU (issue 15, item 3); also runs on a CPU.

Six checks, on a tiny ResNet and synthetic 32x32 images whose labels come from a fixed random
linear teacher (so the loss falls), each reported ``ok``, ``skipped`` or ``failed``:

1. ``three_lines``: the README's three lines, ``DataLoader(num_workers=2, pin_memory=True)``
   (pinned only when CUDA is available) and ``non_blocking=True`` copies; the loss falls and
   every planned sample reaches ``update()`` once per epoch.
2. ``sync_free_update``: every ``update()`` of an epoch (plain, ``score=``, ``valid=``,
   ``indices=``) under ``torch.cuda.set_sync_debug_mode("error")``; skipped without CUDA.
3. ``plan_across_devices``: the same seed, epoch and scores give the same plan on CUDA and on
   the CPU (a CUDA-trained state loaded into a CPU instance), and a resumed instance (state
   dict, new object, ``load_state_dict``) plans and trains exactly as the original; without
   CUDA only the resume half runs (CPU against CPU).
4. ``private_merge_group``: a single-rank process group (NCCL on CUDA, gloo on the CPU) with
   infobatch's own merge group (``collectives=TorchCollectives()``): two epochs give the
   scores and plans of a non-distributed run of the same seed; the group is destroyed after.
5. ``bf16_autocast``: ``torch.autocast(device_type, dtype=torch.bfloat16)``: the returned
   loss is finite and has the loss's dtype, the recorded scores are finite float32.
6. ``time_vs_samples``: interleaved pairs (full data, InfoBatch, then InfoBatch, full data,
   ...) of a short schedule: sample passes saved, wall-clock saved, their ratio, median and
   spread over the pairs.

Human-readable lines while running, then exactly one JSON line of results; the exit code is 1
if any check that ran failed::

    python benchmarks/gpu_check.py                       # CUDA if available: under 4 minutes
    python benchmarks/gpu_check.py --device cpu --quick  # what tests/test_gpu_check.py runs
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import struct
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from infobatch import InfoBatch, ShortScheduleWarning, TorchCollectives
from infobatch.plan import UPWEIGHTED

NUM_CLASSES = 10
Figures = dict[str, Any]


# ---------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Config:
    """What one run of the checks uses (see :func:`make_config` for the defaults)."""

    device: torch.device
    quick: bool
    epochs: int  # of the timed schedule (check 6)
    pairs: int  # interleaved (full data, InfoBatch) pairs of check 6
    seed: int
    threads: int
    num_train: int
    batch_size: int
    width: int  # channels of the ResNet's first stage
    workers: int  # DataLoader workers of checks 1 and 6

    @property
    def cuda(self) -> bool:
        """Whether the checks run on a CUDA device."""
        return self.device.type == "cuda"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--quick", action="store_true", help="smaller data and schedule")
    parser.add_argument("--epochs", type=int, default=None, help="timed schedule's epochs")
    parser.add_argument("--pairs", type=int, default=None, help="interleaved timing pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: 1 on the CPU)"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available here")
    for name in ("epochs", "pairs"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "epochs" else 1):
            parser.error(f"--{name} {value} is too small")
    return args


def make_config(args: argparse.Namespace) -> Config:
    """The run's settings: a larger run on CUDA, a tiny one on the CPU, smaller with --quick."""
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    if use_cuda:
        sizes = (4096, 128, 16, 4, 2) if args.quick else (16384, 128, 16, 6, 3)
    else:
        sizes = (512, 64, 8, 2, 2) if args.quick else (2048, 64, 8, 2, 3)
    num_train, batch_size, width, epochs, pairs = sizes
    return Config(
        device=device,
        quick=args.quick,
        epochs=args.epochs if args.epochs is not None else epochs,
        pairs=args.pairs if args.pairs is not None else pairs,
        seed=args.seed,
        threads=args.threads or (torch.get_num_threads() if use_cuda else 1),
        num_train=num_train,
        batch_size=batch_size,
        width=width,
        workers=2,
    )


# ------------------------------------------------------------------------------ data, model
def make_data(num_samples: int, seed: int) -> TensorDataset:
    """Random 32x32 RGB images with labels of a fixed random linear teacher (learnable).

    Each image is a 2x2 grid of random colours plus pixel noise; its label is the argmax of a
    random linear map of the 12 colour values. Drawn from a generator of its own.
    """
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_samples, 3, 2, 2, generator=generator)
    teacher = torch.randn(NUM_CLASSES, 12, generator=generator)
    labels = (coarse.flatten(1) @ teacher.T).argmax(dim=1)
    images = F.interpolate(coarse, scale_factor=16, mode="nearest")
    images = images + 0.5 * torch.randn(images.shape, generator=generator)
    return TensorDataset(images.contiguous(), labels)


class WithIndex(Dataset[tuple[Tensor, Tensor, int]]):
    """Items of ``dataset`` with their index appended, for ``update(loss, indices=...)``."""

    def __init__(self, dataset: TensorDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        x, y = self.dataset[index]
        return x, y, index


class BasicBlock(nn.Module):
    """A ResNet basic block: two 3x3 convolutions with batch norm and a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """A three-stage ResNet for 32x32 images (``width``, 2x, 4x channels), 2x2 pooled head."""

    def __init__(self, width: int, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.stages = nn.Sequential(
            BasicBlock(width, width, 1),
            BasicBlock(width, 2 * width, 2),
            BasicBlock(2 * width, 4 * width, 2),
        )
        self.head = nn.Linear(4 * width * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        features = F.adaptive_avg_pool2d(self.stages(self.stem(x)), 2)
        logits: Tensor = self.head(features.flatten(1))
        return logits


def build_model(cfg: Config, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A freshly initialised model on the device (the global RNG is left as it was) and SGD."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyResNet(cfg.width)
    model = model.to(cfg.device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    return model, optimizer


def make_loader(
    dataset: Dataset[Any],
    cfg: Config,
    *,
    sampler: Any = None,
    workers: int = 0,
    seed: int = 0,
    pin: bool | None = None,
) -> DataLoader[Any]:
    """A loader at the run's batch size: ``sampler`` given (InfoBatch's), else shuffled.

    Pinned memory (``pin`` ``None``) when CUDA is available; the generator seeds the shuffle
    and the workers' base seed, so the global RNG is not drawn.
    """
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        shuffle=sampler is None,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin is None else pin,
        generator=torch.Generator().manual_seed(seed),
    )


def new_infobatch(dataset: Dataset[Any], cfg: Config, **kwargs: Any) -> InfoBatch[Any]:
    """``InfoBatch(dataset, num_epochs=4, prune_ratio=0.5, delta=0.75, seed=cfg.seed)``:
    epoch 0 is full data (nothing scored yet), epochs 1-2 prune, epoch 3 anneals."""
    settings: dict[str, Any] = {"num_epochs": 4, "prune_ratio": 0.5, "delta": 0.75}
    settings.update(kwargs)
    return InfoBatch(dataset, seed=cfg.seed, **settings)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch: Sequence[Tensor], device: torch.device) -> list[Tensor]:
    """The batch's tensors on ``device`` (``non_blocking``: overlaps with pinned memory)."""
    return [t.to(device, non_blocking=True) for t in batch]


def evaluate(model: nn.Module, data: TensorDataset, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on all of ``data`` (eval mode)."""
    model.eval()
    total_loss, correct = 0.0, 0
    x_all, y_all = data.tensors
    with torch.no_grad():
        for start in range(0, len(y_all), 1024):
            x = x_all[start : start + 1024].to(device)
            y = y_all[start : start + 1024].to(device)
            logits = model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
    model.train()
    return total_loss / len(y_all), correct / len(y_all)


def step(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    """One optimizer step on ``loss``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()


def float_bits(value: float) -> int:
    """The bits of a float64, so that two floats (``nan`` included) compare exactly."""
    return int(struct.unpack("<q", struct.pack("<d", float(value)))[0])


def same_bits(a: Tensor, b: Tensor) -> bool:
    """Whether two float32 tensors hold exactly the same values (``nan`` equal to ``nan``)."""
    a, b = a.detach().cpu().float(), b.detach().cpu().float()
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def compare_plans(a: InfoBatch[Any], b: InfoBatch[Any]) -> Figures:
    """Whether two instances' current plans are the same (epoch, order, status, weight,
    threshold), with the devices they were planned on."""
    plan_a, plan_b = a.sampler.plan, b.sampler.plan
    if plan_a is None or plan_b is None:
        return {"planned": False, "equal": False}
    same = {
        "epoch": plan_a.epoch == plan_b.epoch,
        "order": torch.equal(plan_a.order.cpu(), plan_b.order.cpu()),
        "status": torch.equal(plan_a.status.cpu(), plan_b.status.cpu()),
        "weight": float_bits(plan_a.weight) == float_bits(plan_b.weight),
        "threshold": float_bits(plan_a.threshold) == float_bits(plan_b.threshold),
    }
    return {
        "epoch": plan_a.epoch,
        "devices": [str(plan_a.status.device), str(plan_b.status.device)],
        "kept": [plan_a.num_kept, plan_b.num_kept],
        "same": same,
        "equal": all(same.values()),
    }


@contextlib.contextmanager
def sync_debug(mode: str) -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode(mode)`` for the block; the previous mode restored."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def lockstep_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    datasets: Sequence[InfoBatch[Any]],
    cfg: Config,
    *,
    guard: bool = False,
) -> Figures:
    """Train one epoch of the first instance, feeding every instance the same losses.

    The instances must plan alike: their loaders are read side by side and must yield the
    same batches. Each ``update()`` gets the first loader's per-sample losses; the first
    instance's result is back-propagated. With ``guard`` (CUDA only), every ``update()`` runs
    under ``set_sync_debug_mode("error")``.
    """
    loaders = [make_loader(d, cfg, sampler=d.sampler) for d in datasets]
    lengths = [len(loader) for loader in loaders]
    same_batches = same_results = len(set(lengths)) == 1
    batches = 0
    for group in zip(*loaders):
        first = group[0]
        same_batches &= all(
            torch.equal(b[0], first[0]) and torch.equal(b[1], first[1]) for b in group
        )
        x, y = to_device(first, cfg.device)
        losses = F.cross_entropy(model(x), y, reduction="none")
        with sync_debug("error") if guard else contextlib.nullcontext():
            results = [d.update(losses) for d in datasets]
        same_results &= all(same_bits(r, results[0]) for r in results)
        step(optimizer, results[0])
        batches += 1
    return {
        "batches": batches,
        "lengths": lengths,
        "same_batches": bool(same_batches),
        "same_results": bool(same_results),
    }


# ------------------------------------------------------------------------------------ checks
def check_three_lines(cfg: Config) -> Figures:
    """The README's three lines with workers, pinned memory and non-blocking copies."""
    data = make_data(cfg.num_train, cfg.seed)
    epochs = 3 if cfg.quick else 4
    dataset = InfoBatch(data, num_epochs=epochs, prune_ratio=0.5, delta=0.875, seed=cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=dataset.sampler,
        num_workers=cfg.workers,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    criterion = nn.CrossEntropyLoss(reduction="none")
    model, optimizer = build_model(cfg, cfg.seed)
    loss_before, accuracy_before = evaluate(model, data, cfg.device)
    every_batch, every_sample, finite = True, True, True
    for epoch in range(epochs):
        expected_batches = len(loader)
        batches = samples = 0
        for x, y in loader:
            x, y = x.to(cfg.device, non_blocking=True), y.to(cfg.device, non_blocking=True)
            loss = dataset.update(criterion(model(x), y))
            step(optimizer, loss)
            finite &= bool(torch.isfinite(loss.detach()).item()) if batches % 8 == 0 else True
            batches, samples = batches + 1, samples + len(y)
        kept = dataset.history[epoch].num_kept
        every_batch &= batches == expected_batches
        every_sample &= samples == kept
        print(f"  epoch {epoch}: {batches} batches, {samples} of {cfg.num_train} samples")
    loss_after, accuracy_after = evaluate(model, data, cfg.device)
    history = dataset.history
    pruned = [s.num_pruned for s in history]
    ok = (
        finite
        and every_batch
        and every_sample
        and loss_after < loss_before
        and sum(pruned) > 0
        and dataset.sampler.phase.name == "COMPLETE"
    )
    return {
        "status": "ok" if ok else "failed",
        "epochs": epochs,
        "num_workers": cfg.workers,
        "pin_memory": torch.cuda.is_available(),
        "train_loss_before_after": [loss_before, loss_after],
        "train_accuracy_before_after": [accuracy_before, accuracy_after],
        "kept_per_epoch": [s.num_kept for s in history],
        "saved_fraction": dataset.saved_fraction,
        "every_batch_of_len_loader": every_batch,
        "every_kept_sample_updated": every_sample,
        "finite": finite,
    }


def check_sync_free_update(cfg: Config) -> Figures:
    """No ``update()`` synchronises host and device (``set_sync_debug_mode("error")``)."""
    if not cfg.cuda:
        return {"status": "skipped", "reason": "needs CUDA"}
    data = WithIndex(make_data(cfg.num_train, cfg.seed))
    dataset = new_infobatch(data, cfg)
    # no workers and no pinning: nothing else runs (a pin-memory thread) while the sync
    # debug mode, which is process-wide, is "error"
    loader = make_loader(dataset, cfg, sampler=dataset.sampler, pin=False)
    model, optimizer = build_model(cfg, cfg.seed)
    detector_works = False  # the positive control: a deliberate sync must raise
    with sync_debug("error"):
        try:
            torch.zeros(1, device=cfg.device).item()
        except RuntimeError:
            detector_works = True
    first_update_syncs: int | None = None
    checked: dict[str, int] = {"plain": 0, "score": 0, "valid": 0, "indices": 0}
    failure: str | None = None
    for epoch in range(3):
        for batch_number, (x_cpu, y_cpu, i_cpu) in enumerate(loader):
            x, y, indices = to_device((x_cpu, y_cpu, i_cpu), cfg.device)
            losses = F.cross_entropy(model(x), y, reduction="none")
            if epoch == 0:  # moves the score table to the device: counted, not an error
                if batch_number == 0:
                    with warnings.catch_warnings(record=True) as caught, sync_debug("warn"):
                        warnings.simplefilter("always")
                        loss = dataset.update(losses)
                    first_update_syncs = sum("synchroniz" in str(w.message) for w in caught)
                else:
                    loss = dataset.update(losses)
                step(optimizer, loss)
                continue
            variant = "indices" if epoch == 2 else ("plain", "score", "valid")[batch_number % 3]
            keyword: dict[str, Tensor] = {}
            if variant == "score":
                keyword["score"] = losses.detach() * 0.5
            elif variant == "valid":
                keyword["valid"] = torch.arange(len(y), device=cfg.device) % 7 != 0
            elif variant == "indices":
                keyword["indices"] = indices
            try:
                with sync_debug("error"):
                    loss = dataset.update(losses, **keyword)
            except RuntimeError as error:
                failure = f"epoch {epoch}, batch {batch_number}, {variant}: {error}"
                break
            checked[variant] += 1
            step(optimizer, loss)
        if failure is not None:
            break
    ok = detector_works and failure is None and all(checked.values())
    return {
        "status": "ok" if ok else "failed",
        "detector_works": detector_works,
        "updates_checked": checked,
        "first_update_sync_warnings": first_update_syncs,
        "failure": failure,
    }


def check_plan_across_devices(cfg: Config) -> Figures:
    """The same seed, epoch and scores plan alike on CUDA and the CPU, and after a resume."""
    data = make_data(cfg.num_train, cfg.seed)
    original = new_infobatch(data, cfg)
    model, optimizer = build_model(cfg, cfg.seed)
    for x, y in make_loader(original, cfg, sampler=original.sampler):
        x, y = to_device((x, y), cfg.device)
        step(optimizer, original.update(F.cross_entropy(model(x), y, reduction="none")))
    state = original.state_dict()  # at the boundary to epoch 1, scores from the device
    len(original.sampler)  # plans epoch 1 where the scores live
    figures: Figures = {"state_epoch": state["epoch"]}
    if cfg.cuda:
        on_cpu = new_infobatch(data, cfg)
        on_cpu.load_state_dict(state)
        len(on_cpu.sampler)  # plans epoch 1 on the CPU, where a loaded table lives
        cross = compare_plans(original, on_cpu)
        # the float64 mean may differ in its last bit between devices (plan.py says so):
        # the plan is the same if order, status and weight are
        cross["equal"] = all(cross["same"][k] for k in ("epoch", "order", "status", "weight"))
        figures["cuda_vs_cpu"] = {"status": "ok" if cross["equal"] else "failed", **cross}
    else:
        figures["cuda_vs_cpu"] = {"status": "skipped", "reason": "needs CUDA"}
    resumed = new_infobatch(data, cfg)
    resumed.load_state_dict(state)
    len(resumed.sampler)
    resume: Figures = {"epoch_1_plan": compare_plans(original, resumed)}
    resume["lockstep_epoch_1"] = lockstep_epoch(model, optimizer, [original, resumed], cfg)
    resume["scores_equal"] = same_bits(original.scores, resumed.scores)
    for instance in (original, resumed):  # plan epoch 2 (on the device, both)
        len(instance.sampler)
    resume["epoch_2_plan"] = compare_plans(original, resumed)
    resume["states_equal"] = same_bits(
        original.state_dict()["scores"], resumed.state_dict()["scores"]
    )
    lockstep = resume["lockstep_epoch_1"]
    ok = (
        resume["epoch_1_plan"]["equal"]
        and resume["epoch_2_plan"]["equal"]
        and resume["scores_equal"]
        and resume["states_equal"]
        and lockstep["same_batches"]
        and lockstep["same_results"]
        and original.sampler.plan is not None
        and original.sampler.plan.pruning
    )
    figures["resume"] = {"status": "ok" if ok else "failed", **resume}
    statuses = [figures["cuda_vs_cpu"]["status"], figures["resume"]["status"]]
    figures["status"] = "failed" if "failed" in statuses else "ok"
    return figures


@contextlib.contextmanager
def single_rank_group(backend: str, device: torch.device) -> Iterator[None]:
    """A default process group of one rank (a file store in a temporary folder) for the
    block, destroyed after it."""
    with tempfile.TemporaryDirectory(prefix="infobatch-gpu-check-") as folder:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend,
            rank=0,
            world_size=1,
            init_method=f"file://{Path(folder) / 'store'}",
            timeout=timedelta(seconds=60),
        )
        try:
            yield
        finally:
            dist.destroy_process_group()


def check_private_merge_group(cfg: Config) -> Figures:
    """A single-rank process group with infobatch's own merge group gives a plain run's
    scores and plans; the group is destroyed after."""
    if dist.is_initialized():
        return {"status": "failed", "error": "a process group is already initialised"}
    backend = "nccl" if cfg.cuda else "gloo"
    data = make_data(cfg.num_train, cfg.seed)
    plain = new_infobatch(data, cfg)  # built before the group: no collectives at all
    model, optimizer = build_model(cfg, cfg.seed)
    with single_rank_group(backend, cfg.device):
        collectives = TorchCollectives(timeout=timedelta(seconds=60))
        merged = new_infobatch(data, cfg, collectives=collectives)
        by_default = new_infobatch(data, cfg)  # one rank: no merge group unless asked
        group = collectives.group
        figures: Figures = {
            "backend": backend,
            "private_group_backend": str(dist.get_backend(group)),
            "private_group_is_not_world": group is not dist.group.WORLD,
            "private_group_size": dist.get_world_size(group),
            "collectives_device": str(collectives.device),
            "epochs": [],
        }
        runs = [plain, merged, by_default]
        for epoch in range(2):
            lengths = [len(d.sampler) for d in runs]  # plans epoch (merge of the last done)
            plans = [compare_plans(plain, d)["equal"] for d in runs[1:]]
            # on CUDA the updates of epoch 1 also start the NCCL merge: none may sync
            lockstep = lockstep_epoch(model, optimizer, runs, cfg, guard=cfg.cuda and epoch == 1)
            unmerged = merged.state_dict()["unmerged"]  # waits for the merge just started
            figures["epochs"].append(
                {
                    "epoch": epoch,
                    "lengths": lengths,
                    "plans_equal": plans,
                    **lockstep,
                    "scores_equal": [same_bits(plain.scores, d.scores) for d in runs[1:]],
                    "merged_at_epoch_end": unmerged is None,
                }
            )
        for instance in runs:  # plan epoch 2 from the merged scores
            len(instance.sampler)
        figures["epoch_2_plans_equal"] = [compare_plans(plain, d)["equal"] for d in runs[1:]]
        figures["saved_fraction"] = [d.saved_fraction for d in runs]
    figures["destroyed"] = not dist.is_initialized()
    ok = (
        figures["destroyed"]
        and figures["private_group_is_not_world"]
        and figures["private_group_backend"] == backend
        and all(
            all(e["plans_equal"])
            and all(e["scores_equal"])
            and e["same_batches"]
            and e["same_results"]
            and e["merged_at_epoch_end"]
            for e in figures["epochs"]
        )
        and all(figures["epoch_2_plans_equal"])
    )
    figures["status"] = "ok" if ok else "failed"
    return figures


def check_bf16_autocast(cfg: Config) -> Figures:
    """Under bf16 autocast: ``update()``'s result is finite and in the loss's dtype, and the
    scores are the losses as finite float32."""
    data = make_data(cfg.num_train, cfg.seed)
    dataset = new_infobatch(data, cfg)
    loader = make_loader(dataset, cfg, sampler=dataset.sampler)
    model, optimizer = build_model(cfg, cfg.seed)
    dtypes: set[str] = set()
    dtype_matches = finite = values_match = scores_match = True
    for _epoch in range(2):
        len(loader)  # plans the epoch, to compute the expected weights independently
        plan = dataset.sampler.plan
        assert plan is not None
        order, status, position = plan.order.cpu().long(), plan.status.cpu(), 0
        recorded: list[tuple[Tensor, Tensor]] = []
        for batch_number, (x, y) in enumerate(loader):
            x, y = to_device((x, y), cfg.device)
            with torch.autocast(cfg.device.type, dtype=torch.bfloat16):
                logits = model(x)
                autocast_loss = F.cross_entropy(logits, y, reduction="none")
            # even batches: the loss in the dtype autocast gives it; odd ones: a bfloat16
            # loss computed outside autocast
            losses = (
                autocast_loss
                if batch_number % 2 == 0
                else F.cross_entropy(logits.to(torch.bfloat16), y, reduction="none")
            )
            result = dataset.update(losses)
            dtypes.add(str(losses.dtype).replace("torch.", ""))
            dtype_matches &= result.dtype == losses.dtype
            finite &= bool(torch.isfinite(result.detach().float()).item())
            indices = order[position : position + len(y)]
            position += len(y)
            values = losses.detach().float().cpu()
            weights = torch.where(status[indices] == UPWEIGHTED, plan.weight, 1.0)
            expected = (values * weights).sum() / len(y)
            tolerance = 1e-2 if losses.dtype == torch.bfloat16 else 1e-5
            difference = abs(float(result.detach()) - float(expected))
            values_match &= difference <= tolerance * (1 + abs(float(expected)))
            recorded.append((indices, values))
            step(optimizer, result)
        scores = dataset.scores
        scores_match &= scores.dtype == torch.float32
        for indices, values in recorded:
            scores_match &= same_bits(scores.cpu()[indices], values)
    scores = dataset.scores
    all_finite = bool(torch.isfinite(scores).all())
    parameters_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    ok = (
        dtype_matches
        and finite
        and values_match
        and scores_match
        and all_finite
        and parameters_finite
        and "bfloat16" in dtypes
    )
    return {
        "status": "ok" if ok else "failed",
        "loss_dtypes": sorted(dtypes),
        "result_dtype_is_loss_dtype": dtype_matches,
        "result_finite": finite,
        "result_is_weighted_mean": values_match,
        "scores_dtype": str(scores.dtype).replace("torch.", ""),
        "scores_are_the_losses": scores_match,
        "scores_finite": all_finite,
        "parameters_finite": parameters_finite,
        "saved_fraction": dataset.saved_fraction,
    }


def timed_run(cfg: Config, data: TensorDataset, infobatch: bool, seed: int) -> Figures:
    """One short schedule, full data or InfoBatch: wall-clock (device synchronised at both
    ends), sample passes and final training loss."""
    model, optimizer = build_model(cfg, seed)
    dataset: InfoBatch[Any] | None = None
    if infobatch:
        dataset = InfoBatch(data, num_epochs=cfg.epochs, prune_ratio=0.5, delta=0.875, seed=seed)
        loader = make_loader(dataset, cfg, sampler=dataset.sampler, workers=cfg.workers, seed=seed)
    else:
        loader = make_loader(data, cfg, workers=cfg.workers, seed=seed)
    criterion = nn.CrossEntropyLoss(reduction="none")
    synchronize(cfg.device)
    started = time.perf_counter()
    for _epoch in range(cfg.epochs):
        for x, y in loader:
            x, y = x.to(cfg.device, non_blocking=True), y.to(cfg.device, non_blocking=True)
            losses = criterion(model(x), y)
            step(optimizer, dataset.update(losses) if dataset is not None else losses.mean())
    synchronize(cfg.device)
    seconds = time.perf_counter() - started
    passes = sum(s.num_kept for s in dataset.history) if dataset else cfg.epochs * len(data)
    loss, accuracy = evaluate(model, data, cfg.device)
    return {"seconds": seconds, "passes": passes, "loss": loss, "accuracy": accuracy}


def check_time_vs_samples(cfg: Config) -> Figures:
    """Wall-clock saved against sample passes saved, over interleaved pairs."""
    data = make_data(cfg.num_train, cfg.seed)
    warm_up = dataclasses.replace(cfg, epochs=1)
    timed_run(warm_up, data, infobatch=False, seed=cfg.seed)  # kernels, allocator, workers
    pairs: list[dict[str, Figures]] = []
    for pair in range(cfg.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        runs = {
            ("infobatch" if ib else "full"): timed_run(cfg, data, ib, cfg.seed + pair)
            for ib in order
        }
        pairs.append(runs)
        full, pruned = runs["full"], runs["infobatch"]
        print(
            f"  pair {pair}: full {full['seconds']:.2f} s ({full['passes']} passes), "
            f"InfoBatch {pruned['seconds']:.2f} s ({pruned['passes']} passes)",
            flush=True,
        )
    samples_saved = [1 - p["infobatch"]["passes"] / p["full"]["passes"] for p in pairs]
    time_saved = [1 - p["infobatch"]["seconds"] / p["full"]["seconds"] for p in pairs]
    ratios = [t / s if s > 0 else math.nan for t, s in zip(time_saved, samples_saved)]
    finite = all(math.isfinite(r["loss"]) for p in pairs for r in p.values())

    def summary(values: list[float]) -> Figures:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    ok = finite and all(s > 0 for s in samples_saved)
    return {
        "status": "ok" if ok else "failed",
        "epochs": cfg.epochs,
        "pairs": cfg.pairs,
        "num_train": cfg.num_train,
        "samples_saved": summary(samples_saved),
        "wall_clock_saved": summary(time_saved),
        "time_per_sample_saving": summary(ratios),
        "seconds_full": summary([p["full"]["seconds"] for p in pairs]),
        "seconds_infobatch": summary([p["infobatch"]["seconds"] for p in pairs]),
        "train_accuracy_full": summary([p["full"]["accuracy"] for p in pairs]),
        "train_accuracy_infobatch": summary([p["infobatch"]["accuracy"] for p in pairs]),
    }


CHECKS: list[tuple[str, Callable[[Config], Figures]]] = [
    ("three_lines", check_three_lines),
    ("sync_free_update", check_sync_free_update),
    ("plan_across_devices", check_plan_across_devices),
    ("private_merge_group", check_private_merge_group),
    ("bf16_autocast", check_bf16_autocast),
    ("time_vs_samples", check_time_vs_samples),
]


# -------------------------------------------------------------------------------------- main
def run_check(name: str, check: Callable[[Config], Figures], cfg: Config) -> Figures:
    """Run one check; an exception makes it ``failed`` (traceback on stderr), never fatal."""
    print(f"[{name}] ...", flush=True)
    started = time.perf_counter()
    try:
        figures = check(cfg)
    except Exception as error:  # a check that raises is a failed check, the others still run
        traceback.print_exc()
        figures = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    figures["seconds"] = round(time.perf_counter() - started, 3)
    reason = figures.get("reason") or figures.get("error") or figures.get("failure") or ""
    print(f"[{name}] {figures['status']} in {figures['seconds']:.1f} s {reason}".rstrip())
    return figures


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as ``None``, so the JSON line is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks, print one line per check and one JSON line; 1 if any check failed."""
    args = parse_args(argv)
    cfg = make_config(args)
    torch.set_num_threads(cfg.threads)  # tiny models train fastest on one CPU thread
    warnings.simplefilter("ignore", ShortScheduleWarning)  # short schedules are the point
    device_name = torch.cuda.get_device_name(cfg.device) if cfg.cuda else "cpu"
    print(
        f"infobatch GPU check on {device_name} (torch {torch.__version__}, "
        f"{'quick' if cfg.quick else 'full'}: {cfg.num_train} samples, batch {cfg.batch_size})",
        flush=True,
    )
    started = time.perf_counter()
    checks = {name: run_check(name, check, cfg) for name, check in CHECKS}
    failed = [name for name, figures in checks.items() if figures["status"] == "failed"]
    result = {
        "device": str(cfg.device),
        "device_name": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "quick": cfg.quick,
        "seed": cfg.seed,
        "threads": cfg.threads,
        "num_train": cfg.num_train,
        "batch_size": cfg.batch_size,
        "checks": checks,
        "failed": failed,
        "seconds": round(time.perf_counter() - started, 3),
    }
    print(f"{len(checks) - len(failed)} of {len(checks)} checks ok or skipped; failed: {failed}")
    print(json.dumps(jsonable(result)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
