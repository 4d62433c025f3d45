"""CIFAR-10/100 with InfoBatch: the paper's recipe (ResNet, SGD, OneCycle, label smoothing).

Runs on one CPU or GPU, or under torchrun (one process per GPU, NCCL; gloo on CPUs)::

    python examples/cifar.py --dataset cifar10 --model resnet18 --data-dir data --download
    python examples/cifar.py --dataset cifar100 --model resnet50 --mode full      # baseline
    torchrun --nproc_per_node=4 examples/cifar.py --dataset cifar100 --batch-size 32
    python examples/cifar.py --dataset synthetic --model tiny --epochs 3          # smoke test

Setup (the paper's CIFAR experiments): ResNet-18/50 with a 3x3 stem and no max-pool (the usual
CIFAR variant of torchvision's models), SGD with Nesterov momentum 0.9 and weight decay 5e-4,
a OneCycle learning rate per step, label smoothing 0.1, batch size 128, random crop and flip,
200 epochs, ``prune_ratio=0.5``, ``delta=0.875``. ``--mode full`` trains on all data with the
same everything. ``--dataset synthetic --model tiny`` needs neither torchvision nor a download
(it is what CI runs, for a few steps, so this script cannot rot).

The paper's figures for comparison (ResNet-18; full data / InfoBatch at prune ratio 0.3 and 0.5;
about 40% of sample passes saved overall): CIFAR-10 95.6 / 95.6 / 95.1, CIFAR-100 78.2 / 78.2 /
78.1.

The InfoBatch part is the official three lines (dataset, loader, ``update``); the OneCycle
schedule is re-created at each epoch's start from ``len(loader)``, so it ends exactly at the end
of training although pruned epochs are shorter. A checkpoint (``--checkpoint``) is written at
every epoch's end and ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, TensorDataset

from infobatch import InfoBatch

MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", choices=["cifar10", "cifar100", "synthetic"], default="cifar10"
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--download", action="store_true", help="download CIFAR (torchvision)")
    parser.add_argument("--model", choices=["resnet18", "resnet50", "tiny"], default="resnet18")
    parser.add_argument("--mode", choices=["infobatch", "full"], default="infobatch")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128, help="per process")
    parser.add_argument("--lr", type=float, default=0.1, help="OneCycle peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--delta", type=float, default=0.875)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    parser.add_argument("--checkpoint", type=Path, default=None, help="saved at epoch ends")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--output", type=Path, default=None, help="write a JSON summary here")
    parser.add_argument("--num-train", type=int, default=2048, help="synthetic training samples")
    parser.add_argument("--max-steps", type=int, default=0, help="stop early (smoke tests)")
    return parser.parse_args(argv)


def synthetic(size: int, classes: int, seed: int) -> TensorDataset:
    """Random 3x32x32 images labelled by a fixed random linear teacher (learnable)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 32, 32, generator=generator)
    teacher = torch.randn(3 * 32 * 32, classes, generator=torch.Generator().manual_seed(seed + 1))
    labels = (images.flatten(1) @ teacher).argmax(dim=1)
    return TensorDataset(images, labels)


def datasets(args: argparse.Namespace) -> tuple[Dataset[Any], Dataset[Any], int]:
    if args.dataset == "synthetic":
        return synthetic(args.num_train, 10, 0), synthetic(512, 10, 1), 10
    import torchvision
    from torchvision import transforms as T

    normalize = T.Normalize(MEAN[args.dataset], STD[args.dataset])
    train_tf = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
    )
    test_tf = T.Compose([T.ToTensor(), normalize])
    cls = (
        torchvision.datasets.CIFAR10 if args.dataset == "cifar10" else torchvision.datasets.CIFAR100
    )
    train = cls(args.data_dir, train=True, transform=train_tf, download=args.download)
    test = cls(args.data_dir, train=False, transform=test_tf, download=args.download)
    return train, test, 10 if args.dataset == "cifar10" else 100


def build_model(name: str, classes: int) -> nn.Module:
    if name == "tiny":
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
        )  # fmt: skip
    import torchvision

    model: Any = getattr(torchvision.models, name)(num_classes=classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()  # CIFAR variant: 32x32 inputs keep their resolution
    return model  # type: ignore[no-any-return]


def evaluate(model: nn.Module, loader: DataLoader[Any], device: torch.device) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            predicted = model(images.to(device)).argmax(dim=1)
            correct += int((predicted.cpu() == labels).sum())
            total += labels.numel()
    model.train()
    return 100.0 * correct / total


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    distributed = "RANK" in os.environ
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    train_set, test_set, classes = datasets(args)
    dataset = InfoBatch(  # 1: wrap the training set (rank-aware under torch.distributed)
        train_set,
        args.epochs,
        prune_ratio=args.prune_ratio if args.mode == "infobatch" else 0.0,
        delta=args.delta,
        seed=args.seed,
    )
    loader = DataLoader(  # 2: its sampler replaces shuffle=True / DistributedSampler
        dataset,
        batch_size=args.batch_size,
        sampler=dataset.sampler,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    test_loader = DataLoader(test_set, batch_size=256, num_workers=args.workers)

    torch.manual_seed(args.seed)
    model: nn.Module = build_model(args.model, classes).to(device)
    if distributed:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None
        )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay
    )
    if args.resume and args.checkpoint is not None and args.checkpoint.exists():
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        (model.module if distributed else model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        dataset.load_state_dict(state["infobatch"])

    start, steps, last_step_lr = time.perf_counter(), 0, float("nan")
    for epoch in range(dataset.epoch, args.epochs):
        dataset.sampler.set_epoch(epoch)
        steps_per_epoch = len(loader)  # this epoch's exact length (pruned epochs are shorter)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=args.lr,
            epochs=args.epochs,
            steps_per_epoch=steps_per_epoch,
            pct_start=0.25,
            last_epoch=epoch * steps_per_epoch - 1,
        )
        for images, labels in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                logits = model(images.to(device, non_blocking=True))
            losses = F.cross_entropy(
                logits.float(),
                labels.to(device),
                reduction="none",
                label_smoothing=args.label_smoothing,
            )
            loss = dataset.update(losses)  # 3: per-sample losses in, weighted mean out
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            last_step_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            steps += 1
            if args.max_steps and steps >= args.max_steps:
                break
        if args.checkpoint is not None and rank == 0:
            torch.save(
                {
                    "model": (model.module if distributed else model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "infobatch": dataset.state_dict(),
                },
                args.checkpoint,
            )
        if args.max_steps and steps >= args.max_steps:
            break
    seconds = time.perf_counter() - start
    summary = {
        "mode": args.mode,
        "test_accuracy": evaluate(model, test_loader, device),
        "saved_fraction": dataset.saved_fraction,
        "kept_per_epoch": [h.num_kept for h in dataset.history],
        "train_seconds": round(seconds, 2),
        "optimizer_steps": steps,
        "last_step_lr": last_step_lr,  # OneCycle's final value if the schedule completed
    }
    if rank == 0:
        print(json.dumps(summary, indent=2))
        if args.output is not None:
            args.output.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
