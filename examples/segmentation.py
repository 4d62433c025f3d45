"""Semantic segmentation with InfoBatch, trained by iterations as mmseg/mmengine runners do.

What it trains: a tiny UNet-like fully-convolutional net (BatchNorm, as mmseg's models use; two
down- and two up-sampling stages, 30k parameters) on procedural 24x24 grey-level scenes of one
to three shapes of three classes (disc, triangle, bar; background is class 0) of random sizes,
angles and brightness over a background with a random shading, a low-frequency texture and
pixel noise as strong as the shapes' contrast, so no threshold segments them (the best global
threshold reaches 56% foreground IoU) and the classes differ only by their geometry. (Squares,
tried as a fourth class, stayed confused with discs at this size for most of the run, and the
seeds then differed by which class happened to be learned.) As in real datasets, part of every
label map is ``ignore_index=255``: a one-pixel border band, a random "unlabelled" patch in a
quarter of the images, and one training image in 64 left entirely unannotated. The metric is
mIoU (%) over the four classes on 300 held-out scenes, the same for every seed, computed as
mmseg does (intersections and unions summed over the whole set, ignored pixels excluded).

Iteration-based training: a fixed number of iterations (500 by default: 15.6 epoch-equivalents
of the 512 training images at batch size 16), AdamW with a linear warm-up and a poly(0.9)
learning rate over the iterations, random horizontal flips. The InfoBatch change is the three
lines marked ``# InfoBatch (1/3)`` to ``(3/3)`` in :func:`train`::

    dataset = InfoBatch(train_set, None, num_iterations=total, seed=seed)        # (1/3)
    loader = DataLoader(dataset, batch_size=16, sampler=dataset.sampler, generator=g)  # (2/3)
    for x, y in iterations(loader, total, start=dataset.sampler.iterations_done):
        ...
        loss = dataset.update(out.loss, valid=out.valid)                         # (3/3)

(``generator=`` only keeps the ``DataLoader`` from drawing each pass's worker seed from the
global RNG; full data iterates a plain shuffled ``DataLoader`` with the same ``iterations``
helper). For a
fixed number of iterations InfoBatch saves nothing: every iteration trains a batch of 16; its
passes skip well-learned images, so the same iterations go to the informative ones more often.
The saving comes from training fewer iterations: InfoBatch runs at ``INFOBATCH_SCALE = 0.7``
(README, "Iteration-based training"), and ``scale`` multiplies the iteration count, with the
learning-rate schedule over the scaled count. The last 12.5% of the iterations use all data
(``delta=0.875``).

The per-image loss is cross-entropy plus soft Dice, each per image, from
``infobatch.losses.segmentation_cross_entropy`` and ``dice_loss`` with ``ignore_index=255``:
ignored pixels count in neither term and get no gradient, and an image with every pixel
ignored has ``valid=False`` (no score, loss weight 0; the batch mean still divides by the batch
size, for full data too). Is the ``1/(1-r)`` rescaling unbiased? The loss terms are: each is
one image's own (a per-image Dice, not a batch-level one, which no per-sample weight could
rescale). BatchNorm's batch statistics are not: in training mode an image's loss depends a
little on which images share its batch, and pruning changes that, so the rescaled mean is
unbiased only up to that effect (README, "Losses that are not per-sample cross-entropy"); a
GroupNorm net would remove it but learned far more slowly at this size. The variant smooths
the scores, which flips, BatchNorm and a fast-changing model make noisy, with
``score_momentum=0.8``.

Measured against full data and the fewer-iterations control by ``benchmarks/domains.py``:
the figures are in BENCHMARKS.md and the README's table. The run is still improving at its end
(a step-limited regime), where the iterations InfoBatch drops cost accuracy.

Run it (one CPU thread: ~15 s for full data, the quick version in about a second)::

    python examples/segmentation.py --method full --seed 0
    python examples/segmentation.py --method infobatch --seed 0 --scale 0.7
    python examples/segmentation.py --method infobatch --quick --score-momentum 0.8
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from infobatch import InfoBatch, iterations
from infobatch.losses import PerSampleLoss, dice_loss, segmentation_cross_entropy

METRIC = "mIoU (%)"
HIGHER_IS_BETTER = True
INFOBATCH_SCALE = 0.7  # InfoBatch trains 0.7x the iterations (README "Iteration-based training")
VARIANTS: dict[str, dict[str, Any]] = {"score_momentum=0.8": {"score_momentum": 0.8}}

IGNORE_INDEX = 255
CLASSES = ("background", "disc", "triangle", "bar")
TEST_SEED = 12345  # the held-out images are the same for every seed
TEXTURE, NOISE = 0.3, 0.25  # background texture and pixel noise (std)
RADIUS = (0.12, 0.22)  # shape radius, fraction of the image side
CONTRAST = (0.5, 1.2)  # shape brightness over the background


class Config(NamedTuple):
    """One training setting (``DEFAULT`` or ``QUICK``); a NamedTuple, not a dataclass, so the
    module works when imported by path without being registered in ``sys.modules``."""

    size: int = 24  # image side, pixels
    num_train: int = 512
    num_test: int = 300
    iterations: int = 500  # at scale 1
    batch_size: int = 16
    width: int = 8  # channels of the first stage
    lr: float = 1e-2
    weight_decay: float = 1e-4
    warmup: float = 0.1  # fraction of the iterations with a linear warm-up
    poly_power: float = 0.9
    min_lr: float = 1e-5


DEFAULT = Config()
QUICK = Config(size=16, num_train=64, num_test=64, iterations=40, batch_size=8, width=6)


# --------------------------------------------------------------------------- data


def _shape_mask(kind: str, yy: Tensor, xx: Tensor, params: Tensor) -> Tensor:
    """Pixels of one shape: ``params`` = centre y, x, radius, angle, aspect."""
    cy, cx, radius, angle, aspect = params.tolist()
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    if kind == "disc":
        return u * u + v * v <= radius * radius
    if kind == "triangle":  # equilateral, of circumradius 1.3 * radius
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):
            a = angle + k * 2 * math.pi / 3
            inside &= dx * math.cos(a) + dy * math.sin(a) <= 0.65 * radius
        return inside
    # bar: long and thin
    return (u.abs() <= radius * aspect) & (v.abs() <= radius * 0.4)


def make_scenes(
    num: int, size: int, generator: torch.Generator, *, unlabelled_every: int = 0
) -> tuple[Tensor, Tensor]:
    """``num`` grey images ``[num, 1, size, size]`` and label maps ``[num, size, size]``
    (int64; ``IGNORE_INDEX`` where unlabelled). With ``unlabelled_every = k > 0``, one image in
    ``k`` (at random positions) has every pixel ignored."""
    g = generator
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
        indexing="ij",
    )  # fmt: skip
    # background: a random shading, a low-frequency texture and pixel noise
    slope = (torch.rand(num, 2, generator=g) - 0.5) * 1.6 / size
    shading = slope[:, 0, None, None] * (yy - size / 2) + slope[:, 1, None, None] * (xx - size / 2)
    texture = F.interpolate(
        torch.randn(num, 1, 5, 5, generator=g), size=(size, size), mode="bicubic",
        align_corners=False,
    )[:, 0] * TEXTURE  # fmt: skip
    images = shading + texture
    masks = torch.zeros(num, size, size, dtype=torch.int64)
    counts = torch.randint(1, 4, (num,), generator=g)
    for i in range(num):
        for _ in range(int(counts[i])):
            kind = int(torch.randint(1, len(CLASSES), (1,), generator=g))
            r = torch.rand(6, generator=g)
            radius = size * (RADIUS[0] + (RADIUS[1] - RADIUS[0]) * float(r[0]))
            params = torch.tensor(
                [
                    radius + float(r[1]) * (size - 2 * radius),  # centre y
                    radius + float(r[2]) * (size - 2 * radius),  # centre x
                    radius,
                    float(r[3]) * 2 * math.pi,  # angle
                    1.8 + 1.0 * float(r[4]),  # bar's half-length / radius
                ]
            )
            inside = _shape_mask(CLASSES[kind], yy, xx, params)
            contrast = CONTRAST[0] + (CONTRAST[1] - CONTRAST[0]) * float(r[5])
            images[i][inside] += contrast  # later shapes occlude earlier ones
            masks[i][inside] = kind
    images = images + NOISE * torch.randn(num, size, size, generator=g)
    # what is not labelled: a border band, random patches, whole unannotated images
    masks[:, 0, :] = masks[:, -1, :] = masks[:, :, 0] = masks[:, :, -1] = IGNORE_INDEX
    for i in torch.nonzero(torch.rand(num, generator=g) < 0.25).flatten().tolist():
        h, w = torch.randint(size // 6, size // 3 + 1, (2,), generator=g).tolist()
        top, left = torch.randint(0, size - max(h, w), (2,), generator=g).tolist()
        masks[i, top : top + h, left : left + w] = IGNORE_INDEX
    if unlabelled_every > 0:
        blank = torch.randperm(num, generator=g)[: num // unlabelled_every]
        masks[blank] = IGNORE_INDEX
    return images.unsqueeze(1), masks


# --------------------------------------------------------------------------- model


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )  # fmt: skip


class TinyUNet(nn.Module):
    """Encoder-decoder with skip connections (sizes s, s/2, s/4 and back): logits
    ``[B, classes, s, s]``."""

    def __init__(self, in_channels: int, classes: int, width: int) -> None:
        super().__init__()
        self.enc1 = _block(in_channels, width)
        self.enc2 = _block(width, 2 * width)
        self.mid = _block(2 * width, 4 * width)
        self.dec2 = _block(4 * width + 2 * width, 2 * width)
        self.dec1 = _block(2 * width + width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0), e2], dim=1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], dim=1))
        return self.head(d1)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- loss, metric


def per_image_loss(logits: Tensor, masks: Tensor) -> PerSampleLoss:
    """CE + Dice of each image, ignored pixels excluded; ``valid`` false for an image with
    no labelled pixel."""
    ce = segmentation_cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
    dice = dice_loss(logits, masks, ignore_index=IGNORE_INDEX)
    return PerSampleLoss(ce.loss + dice, ce.valid, ce.label_count)


@torch.no_grad()
def confusion(model: nn.Module, images: Tensor, masks: Tensor, batch: int = 256) -> Tensor:
    """Pixel confusion matrix ``[C, C]`` (rows: truth) over labelled pixels."""
    classes = len(CLASSES)
    matrix = torch.zeros(classes, classes, dtype=torch.int64)
    for start in range(0, len(images), batch):
        predicted = model(images[start : start + batch]).argmax(dim=1)
        truth = masks[start : start + batch]
        labelled = truth != IGNORE_INDEX
        pairs = truth[labelled] * classes + predicted[labelled]
        matrix += torch.bincount(pairs, minlength=classes * classes).view(classes, classes)
    return matrix


def iou_per_class(matrix: Tensor) -> Tensor:
    """IoU (%) of each class from a confusion matrix; ``nan`` for a class never present."""
    hits = matrix.diag().double()
    union = matrix.sum(dim=0).double() + matrix.sum(dim=1).double() - hits
    return torch.where(union > 0, 100.0 * hits / union.clamp(min=1), math.nan)


# --------------------------------------------------------------------------- training


def lr_factor(iteration: int, total: int, config: Config) -> float:
    """Linear warm-up, then poly decay to ``min_lr`` at ``total`` iterations (mmseg's)."""
    warmup = max(1, round(config.warmup * total))
    if iteration < warmup:
        return (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, total - warmup)
    floor = config.min_lr / config.lr
    return floor + (1 - floor) * (1 - progress) ** config.poly_power


def build_model(seed: int, config: Config) -> TinyUNet:
    """The initial model of ``seed`` (the same for both methods). ``torch.manual_seed`` inside
    ``fork_rng`` because ``nn.Module`` initialisers take no generator; the global RNG state is
    restored on exit."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyUNet(1, len(CLASSES), config.width)


class Trained(NamedTuple):
    """What :func:`train` leaves (the test inspects the dataset and the model)."""

    result: dict[str, Any]
    model: nn.Module
    train_set: TensorDataset
    dataset: InfoBatch[Any] | None  # None for full data


def train(method: str, seed: int, config: Config, *, scale: float = 1.0, **options: Any) -> Trained:
    """Train one run; ``options`` go to :class:`InfoBatch` (``method="infobatch"`` only)."""
    if method not in ("full", "infobatch"):
        raise ValueError(f"method must be 'full' or 'infobatch', got {method!r}")
    if method == "full" and options:
        raise ValueError(f"InfoBatch options {sorted(options)} given with method 'full'")
    images, masks = make_scenes(
        config.num_train, config.size, torch.Generator().manual_seed(seed), unlabelled_every=64
    )
    test_images, test_masks = make_scenes(
        config.num_test, config.size, torch.Generator().manual_seed(TEST_SEED)
    )
    train_set = TensorDataset(images, masks)
    model = build_model(seed, config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    total = max(1, round(config.iterations * scale))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, config)
    )
    flips = torch.Generator().manual_seed(seed + 1)  # augmentation: random horizontal flips

    loader_rng = torch.Generator().manual_seed(seed)
    dataset: InfoBatch[Any] | None = None
    if method == "infobatch":
        # InfoBatch (1/3): wrap the training set, iteration-based (num_epochs=None)
        dataset = InfoBatch(train_set, None, num_iterations=total, seed=seed, **options)
        # InfoBatch (2/3): its sampler replaces shuffle=True. (The generator only keeps the
        # DataLoader from drawing each pass's worker seed from the global RNG.)
        loader = DataLoader(
            dataset, batch_size=config.batch_size, sampler=dataset.sampler, generator=loader_rng
        )
        start = dataset.sampler.iterations_done  # 0 here; a resumed run continues its count
    else:
        loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            shuffle=True,
            generator=loader_rng,
        )
        start = 0

    sample_passes = steps = 0
    began = time.perf_counter()
    for x, y in iterations(loader, total, start=start):
        flip = torch.rand(len(x), generator=flips) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        out = per_image_loss(model(x), y)
        if dataset is not None:  # InfoBatch (3/3): per-image losses in, rescaled mean out
            loss = dataset.update(out.loss, valid=out.valid)
        else:
            loss = torch.where(out.valid, out.loss, 0.0).mean()  # update()'s mean, weights 1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        sample_passes += len(x)
        steps += 1
    seconds = time.perf_counter() - began

    model.eval()
    ious = iou_per_class(confusion(model, test_images, test_masks))
    epoch_equivalents = sample_passes / config.num_train
    extra: dict[str, Any] = {
        "iterations": total,
        "unannotated_images": int((masks == IGNORE_INDEX).flatten(1).all(dim=1).sum()),
        "epoch_equivalents": round(epoch_equivalents, 3),
        "iou_per_class": {name: round(float(v), 3) for name, v in zip(CLASSES, ious)},
        "final_lr": optimizer.param_groups[0]["lr"],
    }
    if dataset is not None:
        extra["saved_fraction"] = dataset.sampler.saved_fraction
        extra["passes"] = len(dataset.history)
        extra["kept_per_pass"] = [h.num_kept for h in dataset.history]
        extra["unscored_images"] = int(dataset.scores.isnan().sum())  # the unannotated ones
    result = {
        "metric": float(ious.nanmean()),
        "sample_passes": sample_passes,
        "steps": steps,
        "seconds": seconds,
        "extra": extra,
    }
    return Trained(result, model, train_set, dataset)


def run(
    method: str, seed: int, *, scale: float = 1.0, quick: bool = False, **options: Any
) -> dict[str, Any]:
    """One run of ``method`` ("full" or "infobatch"); see the module docstring."""
    return train(method, seed, QUICK if quick else DEFAULT, scale=scale, **options).result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=["full", "infobatch"], default="infobatch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="iterations x this")
    parser.add_argument("--quick", action="store_true", help="a tiny version (tests)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--prune-ratio", type=float, default=None)
    parser.add_argument("--delta", type=float, default=None)
    parser.add_argument("--score-momentum", type=float, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = {
        name: value
        for name, value in (
            ("prune_ratio", args.prune_ratio),
            ("delta", args.delta),
            ("score_momentum", args.score_momentum),
        )
        if value is not None
    }
    result = run(args.method, args.seed, scale=args.scale, quick=args.quick, **options)
    extra = result["extra"]
    saved = extra.get("saved_fraction")
    print(
        f"{args.method} seed {args.seed} scale {args.scale:g}: {METRIC} {result['metric']:.2f}, "
        f"{extra['iterations']} iterations, {result['sample_passes']} sample passes "
        f"({extra['epoch_equivalents']:.1f} epochs)"
        + (f", {saved:.1%} of passes saved per pass" if saved is not None else "")
        + f", {result['seconds']:.1f} s"
    )
    print(json.dumps({"method": args.method, "seed": args.seed, "scale": args.scale, **result}))


if __name__ == "__main__":
    main()
