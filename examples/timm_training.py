"""ImageNet-style training through timm's pipeline, with InfoBatch.

A timm user trains with timm's dataset (an image folder), its training transforms, its
prefetching loader (normalisation on the device, random erasing), mixup/cutmix with label
smoothing, timm's optimizer and its epoch-stepped cosine schedule. This example does all of
that on a procedurally drawn image folder (10 classes: 5 shapes x solid/striped, random colour,
position and clutter; written once to a temporary folder) with a tiny timm model
(``test_byobnet``, random weights), and measures top-1 accuracy on held-out images.

The lines a timm user changes (``create_loader`` builds its own sampler, so the training loader
is assembled from the same timm parts around InfoBatch's sampler)::

    train_set = create_dataset("", root=root, split="train", is_training=True)
    train_set.transform = create_transform(size, is_training=True, use_prefetcher=True, ...)
    train_set = InfoBatch(train_set, num_epochs, batch_size=B, drop_last=True)     # (1/3)
    loader = PrefetchLoader(                                                         # (2/3)
        DataLoader(train_set, B, sampler=train_set.sampler, collate_fn=fast_collate,
                   drop_last=True), mean=..., std=..., device=device, re_prob=0.25)
    ...
    x, target = mixup_fn(x, target)
    loss = train_set.update(soft_target_cross_entropy(model(x), target))            # (3/3)

Set the transform on the dataset before wrapping it (InfoBatch refuses to set it on the
wrapper, where timm's ``create_loader`` would put it). Mixup needs even batches, hence
``drop_last=True`` on both the loader and InfoBatch. timm's cosine schedule steps per epoch, so
it ends at its end although pruned epochs are shorter.

What mixup/cutmix does to the scores: row ``i`` of a mixed batch is sample ``i`` blended
(weight ``lam``) with its partner, the sample at the mirrored position of the batch; the soft
target blends their labels the same way. Its loss, ``sample i``'s score, is ``lam * CE(own
label) + (1 - lam) * CE(partner's label)`` on the blended image: part of it is the partner's.
Scores are noisier than without mixup (``score_momentum`` smooths them: the ``momentum``
variant), and the rescaling is not exactly unbiased: a kept sample's row carries its partner,
and pruning changes which samples can be partners. ``tests/test_example_timm.py`` checks that
each row's score lands on its own sample, with its own label weighted by ``lam``, through the
prefetcher.

timm's pipeline draws from the global random generators (torchvision's transforms from torch's,
mixup from numpy's); like timm's ``train.py``, :func:`run` seeds them. Run it::

    python examples/timm_training.py                       # InfoBatch
    python examples/timm_training.py --method full         # the baseline
    python examples/timm_training.py --quick --threads 1   # seconds

timm needs torchvision; on CPU-only machines without a matching torchvision wheel, use the
torch/torchvision pair the machine has (see the README's timm section).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm import create_model
from timm.data import Mixup, create_dataset, create_loader, create_transform
from timm.data.loader import PrefetchLoader, fast_collate
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader

from infobatch import InfoBatch, soft_target_cross_entropy

METRIC = "top-1 accuracy (%)"
HIGHER_IS_BETTER = True
INFOBATCH_SCALE = 1.0
VARIANTS: dict[str, dict[str, Any]] = {"momentum": {"score_momentum": 0.5}}

NUM_CLASSES = 10
SHAPES = ("disc", "square", "diamond", "ring", "cross")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {"train": 1200, "val": 500, "size": 32, "epochs": 16, "batch": 64},
    "quick": {"train": 160, "val": 80, "size": 24, "epochs": 3, "batch": 32},
}


# ----------------------------------------------------------------------------------- data
def draw_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size x size`` RGB image of class ``label``: shape ``label // 2``, striped if odd."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.35, 0.65, size=2) * size
    radius = rng.uniform(0.2, 0.3) * size
    dy, dx = yy - cy, xx - cx
    distance = np.sqrt(dx**2 + dy**2)
    shape = SHAPES[label // 2]
    if shape == "disc":
        mask = distance < radius
    elif shape == "square":
        mask = np.maximum(abs(dx), abs(dy)) < radius * 0.85
    elif shape == "diamond":
        mask = abs(dx) + abs(dy) < radius * 1.2
    elif shape == "ring":
        mask = (distance < radius) & (distance > radius * 0.55)
    else:
        arm = radius / 3
        mask = ((abs(dx) < arm) & (abs(dy) < radius)) | ((abs(dy) < arm) & (abs(dx) < radius))
    if label % 2:
        mask &= ((xx + yy) // 2) % 2 == 0
    background = rng.uniform(0.0, 0.4, size=3)
    colour = rng.uniform(0.55, 1.0, size=3)
    image = np.broadcast_to(background, (size, size, 3)).copy()
    blob = np.sqrt((yy - rng.uniform(0, size)) ** 2 + (xx - rng.uniform(0, size)) ** 2)
    image[blob < size * 0.08] = rng.uniform(0.3, 0.8, size=3)  # clutter
    image[mask] = colour
    image += rng.normal(0.0, 0.06, size=image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def image_folder(num_train: int, num_val: int, size: int, root: Path | None = None) -> Path:
    """Write (once) the ImageFolder layout ``root/{train,val}/class_k/*.png`` and return root."""
    key = hashlib.sha1(f"{num_train}-{num_val}-{size}-v1".encode()).hexdigest()[:10]
    root = root or Path(tempfile.gettempdir()) / f"infobatch_timm_shapes_{key}"
    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(0)  # the data is fixed; seeds vary the model and augmentations
    for split, count in (("train", num_train), ("val", num_val)):
        for n in range(count):
            label = n % NUM_CLASSES
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(draw_image(label, size, rng)).save(folder / f"{n:05d}.png")
    (root / "done").write_text("")
    return root


# ------------------------------------------------------------------------------ pipeline
def training_loader(
    dataset: Any, batch_size: int, size: int, seed: int, *, infobatch: InfoBatch | None
) -> PrefetchLoader:
    """timm's training loader around InfoBatch's sampler (or a shuffling one for full data)."""
    dataset.transform = create_transform(
        size,
        is_training=True,
        use_prefetcher=True,
        scale=(0.6, 1.0),
        hflip=0.5,
        color_jitter=0.3,
    )
    if infobatch is not None:
        loader = DataLoader(
            infobatch,
            batch_size,
            sampler=infobatch.sampler,
            collate_fn=fast_collate,
            drop_last=True,
        )
    else:
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(
            dataset,
            batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=fast_collate,
            drop_last=True,
        )
    return PrefetchLoader(loader, mean=MEAN, std=STD, device=torch.device("cpu"), re_prob=0.25)


def evaluate(model: nn.Module, root: Path, size: int) -> float:
    """Top-1 accuracy (%) on the held-out split, through timm's evaluation loader."""
    val_set = create_dataset("", root=str(root), split="val")
    loader = create_loader(
        val_set,
        input_size=(3, size, size),
        batch_size=256,
        is_training=False,
        mean=MEAN,
        std=STD,
        crop_pct=1.0,
        num_workers=0,
        device=torch.device("cpu"),
        persistent_workers=False,
    )
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train()
    return 100.0 * correct / total


def train_one_epoch(
    model: nn.Module,
    loader: PrefetchLoader,
    optimizer: torch.optim.Optimizer,
    mixup_fn: Mixup | None,
    infobatch: InfoBatch | None,
    on_batch: Any = None,
    max_steps: int | None = None,
) -> tuple[int, int]:
    """One epoch, as timm's ``train_one_epoch``, or its first ``max_steps`` steps; returns
    (sample passes, optimizer steps). ``on_batch(inputs, targets, per_sample_loss)`` sees each
    batch after mixup (the tests use it)."""
    passes = steps = 0
    for x, target in loader:
        if mixup_fn is not None:
            x, target = mixup_fn(x, target)
        output = model(x)
        if target.ndim == 2:  # mixup/cutmix soft targets (label smoothing inside)
            per_sample = soft_target_cross_entropy(output, target)
        else:
            per_sample = F.cross_entropy(output, target, label_smoothing=0.1, reduction="none")
        if on_batch is not None:
            on_batch(x, target, per_sample.detach())
        loss = infobatch.update(per_sample) if infobatch is not None else per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        passes, steps = passes + len(x), steps + 1
        if steps == max_steps:
            break
    return passes, steps


def seed_everything(seed: int) -> None:
    """Seed the global generators timm's pipeline draws from (as timm's ``train.py``)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(
    method: str,
    seed: int,
    *,
    scale: float = 1.0,
    quick: bool = False,
    score_momentum: float = 0.0,
    prune_ratio: float = 0.5,
    mixup: bool = True,
    on_batch: Any = None,
) -> dict[str, Any]:
    """Train ``test_byobnet`` on the shapes folder; see the module docstring."""
    if method not in ("full", "infobatch"):
        raise ValueError(f"method must be 'full' or 'infobatch', got {method!r}")
    setting = SETTINGS["quick" if quick else "default"]
    batch, size, steps_per_epoch = (
        setting["batch"],
        setting["size"],
        setting["train"] // setting["batch"],
    )
    length = setting["epochs"] * scale  # in epochs; full data may stop inside its last epoch
    if method == "infobatch":
        length = max(1, round(length))
    total_steps = max(1, round(length * steps_per_epoch)) if method == "full" else None
    root = image_folder(setting["train"], setting["val"], size)
    seed_everything(seed)
    model = create_model("test_byobnet", pretrained=False, num_classes=NUM_CLASSES)
    train_set = create_dataset("", root=str(root), split="train", is_training=True)
    infobatch = None
    if method == "infobatch":
        infobatch = InfoBatch(
            train_set,
            int(length),
            prune_ratio=prune_ratio,
            score_momentum=score_momentum,
            seed=seed,
            batch_size=batch,
            drop_last=True,
        )
    loader = training_loader(train_set, batch, size, seed, infobatch=infobatch)
    mixup_fn = None
    if mixup:
        mixup_fn = Mixup(
            mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=NUM_CLASSES
        )
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-2, weight_decay=0.05)
    # what create_scheduler_v2(optimizer, "cosine", num_epochs, warmup_epochs=1) builds, with
    # a length in epochs that may be fractional (the fewer-epochs control); stepped per epoch
    scheduler = CosineLRScheduler(
        optimizer, t_initial=length, lr_min=0.0, warmup_t=1, warmup_lr_init=1e-5
    )
    started = time.perf_counter()
    passes = steps = epoch = 0
    while (steps < total_steps) if total_steps is not None else (epoch < length):
        remaining = None if total_steps is None else total_steps - steps
        epoch_passes, epoch_steps = train_one_epoch(
            model, loader, optimizer, mixup_fn, infobatch, on_batch, remaining
        )
        passes, steps, epoch = passes + epoch_passes, steps + epoch_steps, epoch + 1
        scheduler.step(epoch)
    seconds = time.perf_counter() - started
    extra: dict[str, Any] = {"epochs": length, "final_lr": optimizer.param_groups[0]["lr"]}
    if infobatch is not None:
        extra["saved_fraction"] = infobatch.sampler.saved_fraction
    return {
        "metric": evaluate(model, root, size),
        "sample_passes": passes,
        "steps": steps,
        "seconds": seconds,
        "extra": extra,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=["full", "infobatch"], default="infobatch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--score-momentum", type=float, default=0.0)
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--no-mixup", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(
        args.method,
        args.seed,
        scale=args.scale,
        quick=args.quick,
        score_momentum=args.score_momentum,
        prune_ratio=args.prune_ratio,
        mixup=not args.no_mixup,
    )
    print(
        f"{args.method}: {METRIC} {result['metric']:.2f}, {result['sample_passes']} sample "
        f"passes, {result['steps']} steps, {result['seconds']:.1f} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
