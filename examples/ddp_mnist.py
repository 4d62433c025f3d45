"""Data-parallel MNIST training with InfoBatch, launched by torchrun.

On CPUs (gloo), two processes::

    torchrun --nproc_per_node=2 examples/ddp_mnist.py --data-dir ../shared/data/mnist --epochs 4

Unchanged on GPUs (NCCL, one GPU per process)::

    torchrun --nproc_per_node=8 examples/ddp_mnist.py --data-dir /data/mnist --epochs 8

Without torchrun it trains in one process. ``--data-dir`` holds the four IDX files of MNIST
(``train-images-idx3-ubyte.gz`` ...; gzip-compressed or not). Rank 0 prints each epoch's test
accuracy and how many sample passes InfoBatch has saved. ``--checkpoint`` saves model, optimiser
and InfoBatch state on rank 0 after every epoch; ``--resume`` loads it on every rank (with any
number of processes; ``--stop-after E`` stops after epoch E to try it). ``--stop-at-step S``
instead saves a mid-epoch checkpoint after the run's S-th optimizer step and stops, as a
preempted job would; ``--resume`` then continues inside that epoch, on the same number of
processes, exactly as the uninterrupted run (compare the ``final weights`` line both print).
``--train-subset 6000`` makes a quick check run. ``--keep-steps`` makes every pruned epoch as
many optimizer steps as a full one, in smaller batches (for short, step-limited schedules).

The InfoBatch part is the usual three lines; under ``torch.distributed`` nothing else changes:
every rank plans the same epoch from the same scores and seed, trains its own share, and the
scores are merged across ranks with one all-reduce, started by each epoch's last ``update()``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from infobatch import InfoBatch

IDX_TYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain): magic ``0 0 type ndim``, big-endian dims, data."""
    if not path.exists() and path.with_suffix("").exists():
        path = path.with_suffix("")
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (header {data[:4]!r})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    values = np.frombuffer(data, dtype=IDX_TYPES[type_code], offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {values.size} values, its header says {shape}")
    return values.reshape(shape)


def load_mnist(data_dir: Path, split: str) -> TensorDataset:
    """MNIST ``split`` ("train" or "t10k") as uint8 images ``[n, 1, 28, 28]`` and int64 labels."""
    images = read_idx(data_dir / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{split}-labels-idx1-ubyte.gz")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return TensorDataset(
        torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
    )


def normalise(images: Tensor) -> Tensor:
    """uint8 pixels to the standardised floats the network sees (done on the device)."""
    return (images.float() / 255.0 - 0.1307) / 0.3081


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks and a linear classifier (about 20k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 7 * 7, 10)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images).flatten(1))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of the MNIST files")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--delta", type=float, default=0.875)
    parser.add_argument("--seed", type=int, default=0, help="same on every rank")
    parser.add_argument(
        "--keep-steps",
        action="store_true",
        help="pruned epochs keep full data's optimizer steps, in smaller batches",
    )
    parser.add_argument("--train-subset", type=int, default=None, help="first N training images")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per rank")
    parser.add_argument("--checkpoint", type=Path, default=None, help="saved by rank 0 each epoch")
    parser.add_argument("--resume", type=Path, default=None, help="checkpoint to resume from")
    parser.add_argument(
        "--stop-after", type=int, default=None, help="stop after this epoch (to try --resume)"
    )
    parser.add_argument(
        "--stop-at-step",
        type=int,
        default=None,
        help="save a mid-epoch checkpoint after this optimizer step of the run, and stop",
    )
    return parser.parse_args()


def save_mid_epoch(
    path: Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    dataset: InfoBatch[Any],
    run_steps: int,
) -> None:
    """Save a checkpoint inside an epoch: every rank's unmerged scores, gathered on every rank."""
    if path is None:
        raise SystemExit("--stop-at-step needs --checkpoint PATH to save to")
    infobatch = dataset.state_dict(all_ranks=True)  # on every rank
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(
            {
                "model": getattr(model, "module", model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "infobatch": infobatch,
                "run_steps": run_steps,
            },
            path,
        )
    if dist.is_initialized():
        dist.barrier()


def setup() -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (NCCL with GPUs, else gloo), or run alone."""
    if "RANK" not in os.environ:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return 0, 1, device
    if torch.cuda.is_available():
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (one all-reduce; the user's own metric, per epoch)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


@torch.no_grad()
def evaluate(model: nn.Module, test_set: TensorDataset, rank: int, world: int) -> tuple[int, int]:
    """Correct predictions and count on this rank's strided part of the test set."""
    device = next(model.parameters()).device
    images, labels = test_set.tensors[0][rank::world], test_set.tensors[1][rank::world]
    model.eval()
    correct = 0
    for start in range(0, len(labels), 1000):
        batch = normalise(images[start : start + 1000].to(device))
        predicted = model(batch).argmax(dim=1).cpu()
        correct += int((predicted == labels[start : start + 1000]).sum())
    model.train()
    return correct, len(labels)


def main() -> None:
    args = parse_args()
    rank, world, device = setup()
    train_set = load_mnist(args.data_dir, "train")
    test_set = load_mnist(args.data_dir, "t10k")
    if args.train_subset is not None:
        train_set = TensorDataset(*(t[: args.train_subset] for t in train_set.tensors))

    # 1. Wrap the dataset: same arguments (and seed) on every rank; the process group is found.
    dataset = InfoBatch(
        train_set,
        args.epochs,
        prune_ratio=args.prune_ratio,
        delta=args.delta,
        seed=args.seed,
        batch_size=args.batch_size,
        keep_steps=args.keep_steps,
    )
    # 2. Its sampler replaces DistributedSampler: each rank gets its share of the kept samples.
    #    With --keep-steps its batch sampler also sets each epoch's batch size.
    batching: dict[str, Any] = (
        {"batch_sampler": dataset.batch_sampler}
        if args.keep_steps
        else {"batch_size": args.batch_size, "sampler": dataset.sampler}
    )
    loader = DataLoader(
        dataset,
        **batching,
        num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0,
        pin_memory=device.type == "cuda",
    )
    torch.manual_seed(args.seed)
    model = SmallCNN().to(device)
    if world > 1:
        device_ids = [device] if device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)

    if args.resume is not None:  # every rank loads the file rank 0 saved
        state = torch.load(args.resume, map_location="cpu", weights_only=True)
        getattr(model, "module", model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        dataset.load_state_dict(state["infobatch"])
    run_steps = int(state.get("run_steps", 0)) if args.resume is not None else 0
    if rank == 0:
        print(
            f"{world} process(es), backend {dist.get_backend() if world > 1 else 'none'}, "
            f"device {device.type}; {len(dataset)} training samples, "
            f"batch {args.batch_size} per process; starting at epoch {dataset.epoch}",
            flush=True,
        )
        print("epoch     kept/total  steps  train loss  test acc  saved so far   time", flush=True)

    started, stopped = time.perf_counter(), False
    for epoch in range(dataset.epoch, args.epochs):
        dataset.sampler.set_epoch(epoch)  # optional, as with DistributedSampler
        epoch_start = time.perf_counter()
        loss_sum, trained, steps = torch.zeros((), device=device), 0, 0
        for images, labels in loader:
            images = normalise(images.to(device, non_blocking=True))
            labels = labels.to(device, non_blocking=True)
            per_sample = F.cross_entropy(model(images), labels, reduction="none")
            # 3. Record the scores, get the rescaled mean to back-propagate.
            loss = dataset.update(per_sample)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += per_sample.detach().sum()  # stays on the device: no sync per step
            trained += len(labels)
            steps += 1
            run_steps += 1
            if run_steps == args.stop_at_step:
                save_mid_epoch(args.checkpoint, model, optimizer, scheduler, dataset, run_steps)
                stopped = True
                break
        if stopped:
            if rank == 0:
                print(f"stopped in epoch {epoch} after step {run_steps}; saved", flush=True)
            break
        scheduler.step()
        correct, count = evaluate(model, test_set, rank, world)
        loss_total, trained, correct, count = sum_over_ranks(
            [float(loss_sum), trained, correct, count], device
        )
        if args.checkpoint is not None and rank == 0:  # scores are merged: save on rank 0
            torch.save(
                {
                    "model": getattr(model, "module", model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "infobatch": dataset.state_dict(),
                    "run_steps": run_steps,
                },
                args.checkpoint,
            )
        if rank == 0:
            stats = next(s for s in dataset.history if s.epoch == epoch)
            print(
                f"{epoch:5d}  {stats.num_kept:6d}/{stats.num_samples:<6d}  {steps:5d}  "
                f"{loss_total / trained:10.4f}  {100 * correct / count:7.2f}%  "
                f"{100 * dataset.saved_fraction:11.1f}%  {time.perf_counter() - epoch_start:6.1f}s",
                flush=True,
            )
        if epoch == args.stop_after:
            break
    if rank == 0 and not stopped:
        weights = torch.cat([p.detach().cpu().flatten() for p in model.parameters()])
        digest = hashlib.sha256(weights.numpy().tobytes()).hexdigest()[:16]
        print(f"final weights {digest}", flush=True)
        print(
            f"done in {time.perf_counter() - started:.1f}s; InfoBatch skipped "
            f"{dataset.get_pruned_count()} sample passes ({100 * dataset.saved_fraction:.1f}%)",
            flush=True,
        )
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
