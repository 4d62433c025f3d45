"""Masked-autoencoder (MAE) pre-training on MNIST with InfoBatch, scored by a linear probe.

What it trains: a tiny MAE (He et al., 2022) on the first 4,000 MNIST training images (their
labels unused). Each 28x28 image is cut into 16 patches of 7x7 pixels; 75% of them (12) are
masked at random per sample, drawn from an explicit ``torch.Generator``. A 2-block transformer
encoder (width 64, MAE's fixed 2-D sin-cos positional embeddings) sees the 4 visible patches
only; a lighter 1-block decoder (width 32) gets them back in place among shared mask tokens and
predicts the pixels of every patch. The loss is MAE's: the squared error on the masked patches
only, against per-patch normalised pixels (``norm_pix_loss``; see ``NORM_PIX_EPS``). AdamW, a
linear warm-up then cosine learning rate driven by the fraction of training done (so it ends
at the end of training however short pruned epochs are), batch size 128, 20 epochs.

The metric is the linear-probe accuracy (%) of the frozen encoder: each image's 16 patches,
none masked, are encoded and mean-pooled into 64 features; a closed-form ridge regression onto
one-hot labels is fitted on the first 2,000 (labelled) training images and scored on the first
4,000 MNIST test images (deterministic, under a second). ``extra["probe_at_init"]`` is the
same probe on the untrained encoder (about 53%; about 61% after the default run, still rising:
about 58% at ``--scale 0.5`` and 65% at ``--scale 1.5``).

The InfoBatch change is the three marked lines (``# InfoBatch (1/3)`` ...): wrap the data,
give the loader its sampler, and pass the per-sample loss to ``dataset.update``. The
per-sample loss is ``infobatch.losses.masked_patch_loss`` (each sample's mean squared error
over its own masked patches), and that value is each sample's InfoBatch score. Its rescaling is
unbiased: the masking is drawn per sample and every sample masks as many patches, so a sample's
loss depends on that sample only and MAE's batch loss is the mean of the per-sample ones. The
score is noisy (a new random mask each pass), which the ``momentum`` variant
(``score_momentum=0.9``) smooths.

Measured against full data and the fewer-epochs control by ``benchmarks/domains.py``: the
figures are in BENCHMARKS.md and the README's table (``extra`` also records which digits
InfoBatch prunes most).

Run it (one CPU thread, about 20 s; ``--quick``, about a second of training)::

    python examples/mae.py --method full --seed 0
    python examples/mae.py --method infobatch --seed 0
    python examples/mae.py --method infobatch --seed 0 --score-momentum 0.9
    python examples/mae.py --method full --seed 0 --scale 0.77   # full data, as many passes
    python examples/mae.py --quick

Data: the MNIST IDX ``.gz`` files in ``../shared/data/mnist`` (relative to the repository;
``--data-dir`` elsewhere); only the images used are decompressed. Randomness: the masks, the
full-data shuffle and InfoBatch's pruning each use their own seeded generator; the model is
initialised under ``torch.random.fork_rng`` (``nn`` layers draw from the global generator),
so the global RNG state is left as it was.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import struct
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from infobatch import InfoBatch, ShortScheduleWarning
from infobatch.losses import masked_patch_loss

METRIC = "linear-probe accuracy (%)"
HIGHER_IS_BETTER = True
INFOBATCH_SCALE = 1.0
VARIANTS: dict[str, dict[str, Any]] = {
    "momentum": {"score_momentum": 0.9},  # the score under a new random mask each pass is noisy
    "keep_steps": {"keep_steps": True},  # pruned epochs keep full data's optimizer steps
}

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
PATCH = 7  # pixels per patch side
GRID = 28 // PATCH  # patches per image side
NUM_PATCHES = GRID * GRID  # 16
PATCH_DIM = PATCH * PATCH  # 49 pixels per patch
MASK_RATIO = 0.75
NUM_VISIBLE = round(NUM_PATCHES * (1 - MASK_RATIO))  # 4
# norm_pix's variance floor, in standardised pixel units (MAE: 1e-6). 41% of MNIST's 7x7 patches
# are blank and some hold a few faint pixels: at 1e-6 those become unit-variance targets of
# edge noise. 1.0 (about the median variance of a non-blank patch) keeps them small; it made
# the probe's seed-to-seed spread about 0.6 points instead of about 4 (3 seeds each).
NORM_PIX_EPS = 1.0
INFOBATCH_OPTIONS = ("prune_ratio", "delta", "score_momentum", "keep_steps")


class Setting(NamedTuple):
    """Sizes of one run: pre-training images, probe test images, epochs and optimiser (a
    NamedTuple, not a dataclass: the module may be imported by path, outside sys.modules)."""

    num_train: int = 4000
    num_probe_train: int = 2000  # the probe is fitted on the first of the training images
    num_test: int = 4000
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.05  # fraction of training with a linear warm-up
    ridge: float = 1.0  # the probe's L2 penalty (features are standardised)


DEFAULT = Setting()
QUICK = Setting(num_train=512, num_probe_train=512, num_test=1000, epochs=8)


# -------------------------------------------------------------------------------------- data
def read_idx(path: Path, count: int) -> np.ndarray:
    """The first ``count`` items of a gzip-compressed IDX file of unsigned bytes."""
    with gzip.open(path, "rb") as stream:
        magic = stream.read(4)
        if len(magic) < 4 or magic[:3] != b"\x00\x00\x08":
            raise ValueError(f"{path} is not an IDX file of unsigned bytes")
        shape = struct.unpack(f">{magic[3]}I", stream.read(4 * magic[3]))
        count = min(count, shape[0])
        item = math.prod(shape[1:])
        body = np.frombuffer(stream.read(count * item), dtype=np.uint8)
    return body.reshape(count, *shape[1:])


@lru_cache(maxsize=4)
def load_mnist(data_dir: str, num_train: int, num_test: int) -> tuple[Tensor, ...]:
    """Patches ``[N, 16, 49]`` (standardised pixels) and labels of the train and test images."""
    folder = Path(data_dir)
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        raise FileNotFoundError(
            f"MNIST IDX files (train-images-idx3-ubyte.gz, ...) not found in {folder}; "
            "pass --data-dir"
        )

    def images(split: str, count: int) -> Tensor:
        pixels = read_idx(folder / f"{split}-images-idx3-ubyte.gz", count)
        return patchify((torch.from_numpy(pixels.astype(np.float32)) / 255 - 0.1307) / 0.3081)

    def labels(split: str, count: int) -> Tensor:
        return torch.from_numpy(read_idx(folder / f"{split}-labels-idx1-ubyte.gz", count).copy())

    return (
        images("train", num_train),
        labels("train", num_train).long(),
        images("t10k", num_test),
        labels("t10k", num_test).long(),
    )


def patchify(images: Tensor) -> Tensor:
    """``[N, 28, 28]`` -> ``[N, 16, 49]``: 7x7 patches in row-major order."""
    n = images.shape[0]
    grid = images.reshape(n, GRID, PATCH, GRID, PATCH).permute(0, 1, 3, 2, 4)
    return grid.reshape(n, NUM_PATCHES, PATCH_DIM)


# ------------------------------------------------------------------------------------- model
def sincos_2d(dim: int) -> Tensor:
    """MAE's fixed 2-D sin-cos positional embedding of the 4x4 patch grid, ``[1, 16, dim]``."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    parts = []
    for position in (rows.reshape(-1), cols.reshape(-1)):
        angle = position[:, None].double() * omega[None, :]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float().unsqueeze(0)


class Block(nn.Module):
    """A pre-norm transformer block: multi-head self-attention, then a GELU MLP (width 2x).

    Attention is written out (``softmax(q k^T / sqrt(d)) v``): for 4-16 tokens it is cheaper
    on a CPU than ``nn.TransformerEncoderLayer``'s fused kernel."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, tokens, dim / heads]
        attention = (q @ k.transpose(-2, -1) * (dim // self.heads) ** -0.5).softmax(dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.mlp(self.norm2(x))


def blocks(dim: int, depth: int, heads: int) -> nn.Sequential:
    return nn.Sequential(*(Block(dim, heads) for _ in range(depth)))


class MAE(nn.Module):
    """A tiny MAE: the encoder sees the visible patches, the decoder predicts every patch."""

    def __init__(self, dim: int = 64, depth: int = 2, decoder_dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(PATCH_DIM, dim)
        self.register_buffer("pos", sincos_2d(dim))
        self.encoder = blocks(dim, depth, heads=4)
        self.norm = nn.LayerNorm(dim)
        self.to_decoder = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, decoder_dim))
        self.register_buffer("decoder_pos", sincos_2d(decoder_dim))
        self.decoder = blocks(decoder_dim, 1, heads=2)
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.head = nn.Linear(decoder_dim, PATCH_DIM)

    def encode(self, patches: Tensor, keep: Tensor | None = None) -> Tensor:
        """Encoded tokens of the patches listed in ``keep [B, K]`` (all patches if ``None``)."""
        pos = self.pos.expand(len(patches), -1, -1)
        if keep is not None:
            patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, PATCH_DIM))
            pos = pos.gather(1, keep.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
        return self.norm(self.encoder(self.embed(patches) + pos))

    def forward(self, patches: Tensor, keep: Tensor, restore: Tensor) -> Tensor:
        """Predicted pixels ``[B, 16, 49]`` of every patch from the visible ones (``keep``)."""
        latent = self.to_decoder(self.encode(patches, keep))
        batch, visible, width = latent.shape
        filler = self.mask_token.expand(batch, NUM_PATCHES - visible, width)
        tokens = torch.cat([latent, filler], dim=1)  # visible first, then mask tokens
        tokens = tokens.gather(1, restore.unsqueeze(-1).expand(-1, -1, width))  # back in place
        return self.head(self.decoder_norm(self.decoder(tokens + self.decoder_pos)))


def random_masking(batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-sample random masking: ``keep [B, 4]`` (visible patch indices), ``restore
    [B, 16]`` (undoes the shuffle) and ``mask [B, 16]`` (True = masked, 12 per sample)."""
    shuffle = torch.rand(batch, NUM_PATCHES, generator=generator).argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, NUM_PATCHES, dtype=torch.bool)
    mask[:, :NUM_VISIBLE] = False
    return shuffle[:, :NUM_VISIBLE], restore, mask.gather(1, restore)


def reconstruction_loss(pred: Tensor, patches: Tensor, mask: Tensor) -> Tensor:
    """MAE's loss per sample ``[B]``: squared error on the masked patches, norm_pix targets
    (each target patch minus its mean, over ``sqrt(variance + NORM_PIX_EPS)``)."""
    return masked_patch_loss(pred, patches, mask, norm_pix=True, eps=NORM_PIX_EPS).loss


# ------------------------------------------------------------------------------------- probe
@torch.no_grad()
def features(model: MAE, patches: Tensor) -> Tensor:
    """Mean-pooled encoder features of the unmasked images, ``[N, 64]`` (float64)."""
    model.eval()
    out = torch.cat([model.encode(chunk).mean(dim=1) for chunk in patches.split(1000)])
    model.train()
    return out.double()


def linear_probe(
    model: MAE, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], ridge: float
) -> float:
    """Accuracy (%) on ``test`` of a ridge regression onto one-hot labels fitted on ``train``
    (closed form on standardised features: deterministic)."""
    x_train, x_test = features(model, train[0]), features(model, test[0])
    mean, std = x_train.mean(dim=0), x_train.std(dim=0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    ones = torch.ones(len(x_train), 1, dtype=torch.float64)
    design = torch.cat([x_train, ones], dim=1)
    targets = torch.nn.functional.one_hot(train[1], 10).double()
    penalty = ridge * torch.eye(design.shape[1], dtype=torch.float64)
    penalty[-1, -1] = 0.0  # no penalty on the bias
    weights = torch.linalg.solve(design.T @ design + penalty, design.T @ targets)
    scores = torch.cat([x_test, torch.ones(len(x_test), 1, dtype=torch.float64)], 1) @ weights
    return float((scores.argmax(dim=1) == test[1]).double().mean() * 100)


# ---------------------------------------------------------------------------------- training
def learning_rate(setting: Setting, progress: float) -> float:
    """Linear warm-up, then cosine to 0, as a function of the fraction of training done."""
    if progress < setting.warmup:
        return setting.lr * progress / setting.warmup
    return (
        setting.lr
        * 0.5
        * (1 + math.cos(math.pi * (progress - setting.warmup) / (1 - setting.warmup)))
    )


def build_model(seed: int) -> MAE:
    """The initial model of ``seed``; built under ``fork_rng`` so the global RNG is untouched
    (``nn`` layers initialise from it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MAE()


def run(
    method: str,
    seed: int,
    *,
    scale: float = 1.0,
    quick: bool = False,
    data_dir: str | Path = DATA_DIR,
    **options: Any,
) -> dict[str, Any]:
    """Pre-train with ``method`` ("full" or "infobatch") and return the probe accuracy and the
    training cost (the harness's contract; see the module docstring)."""
    if method not in ("full", "infobatch"):
        raise ValueError(f"method must be 'full' or 'infobatch', got {method!r}")
    unknown = set(options) - set(INFOBATCH_OPTIONS)
    if unknown or (method == "full" and options):
        raise TypeError(f"unexpected options for {method!r}: {sorted(options)}")
    setting = QUICK if quick else DEFAULT
    length = setting.epochs * scale  # epochs; full data may stop inside its last one
    epochs = max(1, math.ceil(length - 1e-9) if method == "full" else round(length))
    total_steps = None  # the fewer-epochs control at a fractional number of epochs
    if method == "full" and epochs != length:
        total_steps = max(1, round(length * math.ceil(setting.num_train / setting.batch_size)))
    x_train, y_train, x_test, y_test = load_mnist(
        str(data_dir), setting.num_train, setting.num_test
    )
    train_set = TensorDataset(x_train)
    model = build_model(seed)
    labelled = (x_train[: setting.num_probe_train], y_train[: setting.num_probe_train])
    probe_at_init = linear_probe(model, labelled, (x_test, y_test), setting.ridge)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=setting.lr,
        betas=(0.9, 0.95),
        weight_decay=setting.weight_decay,
        fused=True,  # one kernel for all parameters (on CPU too)
    )
    masks = torch.Generator().manual_seed(seed + 1)  # the random masks
    dataset: InfoBatch[tuple[Tensor, ...]] | None = None
    if method == "infobatch":
        with warnings.catch_warnings():  # the quick run is short on purpose
            warnings.simplefilter("ignore", ShortScheduleWarning)
            dataset = InfoBatch(  # InfoBatch (1/3)
                train_set,
                epochs,
                seed=seed,
                batch_size=setting.batch_size,
                class_labels=y_train,  # statistics only: which digits get pruned
                **options,
            )
        # DataLoader draws a base seed per epoch from `generator` (the global RNG without one)
        loaders = torch.Generator().manual_seed(seed)
        if dataset.sampler.keep_steps:  # pruned epochs in full data's number of smaller batches
            loader = DataLoader(dataset, batch_sampler=dataset.batch_sampler, generator=loaders)
        else:  # InfoBatch (2/3)
            loader = DataLoader(
                dataset, setting.batch_size, sampler=dataset.sampler, generator=loaders
            )
    else:
        order = torch.Generator().manual_seed(seed)
        loader = DataLoader(train_set, setting.batch_size, shuffle=True, generator=order)

    sample_passes = steps = 0
    losses: list[float] = []
    started = time.perf_counter()
    for epoch in range(epochs):
        num_batches, total, count = len(loader), 0.0, 0
        for i, (patches,) in enumerate(loader):
            if steps == total_steps:
                break
            progress = (epoch + i / num_batches) / epochs
            if total_steps is not None:
                progress = steps / total_steps
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(setting, progress)
            keep, restore, mask = random_masking(len(patches), masks)
            per_sample = reconstruction_loss(model(patches, keep, restore), patches, mask)
            # InfoBatch (3/3): record the per-sample scores, return the rescaled mean
            loss = dataset.update(per_sample) if dataset is not None else per_sample.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sample_passes += len(patches)
            steps += 1
            total += float(per_sample.detach().sum())
            count += len(patches)
        losses.append(total / max(1, count))
    seconds = time.perf_counter() - started

    metric = linear_probe(model, labelled, (x_test, y_test), setting.ridge)
    extra: dict[str, Any] = {
        "epochs": epochs,
        "num_train": setting.num_train,
        "probe_at_init": probe_at_init,
        "loss_per_epoch": [round(value, 4) for value in losses],
        "saved_fraction": dataset.saved_fraction if dataset is not None else 0.0,
    }
    if dataset is not None:
        extra["kept_per_epoch"] = [stats.num_kept for stats in dataset.history]
        pruned = torch.tensor([stats.pruned_per_class for stats in dataset.history]).sum(0)
        passes = torch.bincount(y_train, minlength=10) * epochs
        extra["pruned_share_per_digit"] = [round(float(v), 4) for v in pruned / passes]
    return {
        "metric": metric,
        "sample_passes": sample_passes,
        "steps": steps,
        "seconds": seconds,
        "extra": extra,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=["full", "infobatch"], default="infobatch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="training length multiplier")
    parser.add_argument("--quick", action="store_true", help="a tiny version (test suite)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--prune-ratio", type=float, help="InfoBatch's r (default 0.5)")
    parser.add_argument("--delta", type=float, help="InfoBatch's annealing point (0.875)")
    parser.add_argument("--score-momentum", type=float, help="score moving average (0)")
    parser.add_argument(
        "--keep-steps", action="store_const", const=True, help="InfoBatch's keep_steps=True"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = {
        name: getattr(args, name) for name in INFOBATCH_OPTIONS if getattr(args, name) is not None
    }
    result = run(
        args.method,
        args.seed,
        scale=args.scale,
        quick=args.quick,
        data_dir=args.data_dir,
        **options,
    )
    extra = result["extra"]
    print(
        f"mae {args.method} seed {args.seed}: {METRIC} {result['metric']:.2f} "
        f"(untrained encoder {extra['probe_at_init']:.2f}), {result['sample_passes']} sample "
        f"passes, {result['steps']} steps, saved {extra['saved_fraction']:.1%}, "
        f"{result['seconds']:.1f} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
