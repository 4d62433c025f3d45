"""DDPM noise prediction on sklearn's 8x8 digits, with InfoBatch (a tiny latent-diffusion stand-in).

What it trains: a denoising diffusion model (Ho et al. 2020) on ``sklearn.datasets.load_digits``
(1797 images of 8x8 pixels, scaled to ``[-1, 1]``; a fixed split keeps 1400 for training and
397 held out). Each sample of a batch gets its own timestep ``t ~ U{0..T-1}`` (``T = 100``,
cosine schedule of Nichol & Dhariwal) and noise ``eps``, both drawn from an explicit
``torch.Generator``; a residual MLP with a sinusoidal timestep embedding predicts ``eps`` from
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. Adam, learning rate on a cosine curve driven
by the fraction of training done (so it ends at the end of training although pruned epochs are
shorter), 70 epochs of batch 64 by default.

The InfoBatch change is the three lines marked ``# InfoBatch (1/3)`` to ``(3/3)`` in
:func:`train`: wrap the training set, give the loader its sampler, pass per-sample losses to
``dataset.update``. The per-sample loss is ``per_sample_mean(F.mse_loss(eps_pred, eps,
reduction="none"))``, each image's noise MSE averaged over its 64 pixels; the ``1/(1-r)``
rescaling of the kept low-loss samples is unbiased, since a sample's loss depends on that
sample (and its own timestep and noise) only and the model has no batch statistics.

The score is very noisy: a sample's loss depends far more on the timestep it drew than on the
image (small ``t``: ``x_t`` is almost the clean image and its little noise is hard to tell
apart, large loss; large ``t``: ``x_t`` is almost ``eps``, small loss). So InfoBatch mostly
prunes samples that happened to draw a large ``t`` last time. The ``timestep_normalised``
variant scores a sample by its loss over the running mean loss at its timestep instead
(``dataset.update(loss, score=...)``: what is rescaled stays the loss). ``extra`` records this
(``score_timestep_spearman``, ``pruned_large_t_fraction``) and how much a sample's score moves
from epoch to epoch (``score_epoch_change``), the thing ``score_momentum`` smooths.

Metric (lower is better): the Frechet distance between samples drawn by ancestral DDPM
sampling (Ho et al.'s sampler, predicted ``x_0`` clipped to [-1, 1] at each step) and the 397
held-out digits, in the 32-dimensional penultimate layer of a small MLP classifier trained once
(deterministically, cached per process; about 97% held-out accuracy) on the training digits;
the mean over two draws of 1000 samples with fixed generator seeds, the same for every run, so
paired runs share their sampling noise. Those features see digit identity and stroke shape,
which raw pixels weigh poorly (a blurry average digit is close in pixel space); the pixel-space
distance is reported too (``extra["fd_pixels"]``), as are the floor (training vs held-out
digits, ``fd_real``, about 6.5), a ceiling (uniform noise, ``fd_noise``, about 1460) and the
two draws (``metric_per_draw``), whose spread is the metric's own sampling noise.

Measured noise (default setting, one CPU thread): the distance of one trained model over eight
sampling seeds has a standard deviation of about 2.7 (5% of ~55; so about 1.9 for the mean of
two draws), and the paired InfoBatch - full difference under shared sampling seeds about 1.1
(0.8 for the mean of two). Without
the ``x_0`` clipping the distance is 3x larger and far noisier (seed to seed 90-190), which is
why the metric clips as Ho et al.'s sampler does.

Run it (one CPU thread)::

    python examples/diffusion.py --method full --seed 0
    python examples/diffusion.py --method infobatch --seed 0
    python examples/diffusion.py --method infobatch --seed 0 --score-momentum 0.9
    python examples/diffusion.py --method infobatch --seed 0 --timestep-normalised
    python examples/diffusion.py --method full --seed 0 --scale 0.7      # the control
    python examples/diffusion.py --quick                                  # a few seconds
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from infobatch import InfoBatch, ShortScheduleWarning
from infobatch.losses import per_sample_mean

METRIC = "Frechet distance (classifier features)"
HIGHER_IS_BETTER = False
INFOBATCH_SCALE = 1.0
VARIANTS: dict[str, dict[str, Any]] = {
    "momentum_0.5": {"score_momentum": 0.5},
    "momentum_0.9": {"score_momentum": 0.9},
    "timestep_normalised": {"timestep_normalised": True},
}

TIMESTEPS = 100
HELD_OUT = 397
EPOCHS = 70
QUICK_EPOCHS = 3
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
HIDDEN = 256
NUM_SAMPLES = 1000  # generated for the metric
QUICK_SAMPLES = 200
SAMPLING_SEEDS = (1234, 4321)  # the same for every run: paired runs draw the same noise


# ----------------------------------------------------------------------------------------------
# Data and the feature space of the metric (both fixed: they do not depend on the run's seed)


@functools.lru_cache(maxsize=1)
def digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(train_x, train_y, held_x, held_y)``: images flattened to 64 values in ``[-1, 1]``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.data, dtype=torch.float32) / 8.0 - 1.0
    labels = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    held, train = order[:HELD_OUT], order[HELD_OUT:]
    return images[train], labels[train], images[held], labels[held]


class Classifier(nn.Module):
    """64 -> 128 -> 32 (the metric's features) -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


@functools.lru_cache(maxsize=1)
def feature_net() -> Classifier:
    """The classifier, trained once per process on the training digits (full batch, so no
    shuffling; its initialisation is seeded inside ``fork_rng``, leaving the global RNG as it
    was). About 97% held-out accuracy."""
    train_x, train_y, _, _ = digits()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Classifier()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
    with torch.enable_grad():  # the first caller may be inside no_grad
        for _ in range(200):
            loss = F.cross_entropy(net(train_x), train_y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval().requires_grad_(False)
    return net


def features(images: Tensor) -> Tensor:
    with torch.no_grad():
        return feature_net().body(images)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` of two sets of rows."""
    a, b = a.double(), b.double()
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    mean_term = (a.mean(0) - b.mean(0)).square().sum()
    return float(mean_term + cov_a.trace() + cov_b.trace() - 2 * cross)


@functools.lru_cache(maxsize=1)
def reference_distances() -> dict[str, float]:
    """The metric's floor (training digits vs held-out ones) and a ceiling (uniform noise)."""
    train_x, _, held_x, _ = digits()
    noise = torch.rand(NUM_SAMPLES, 64, generator=torch.Generator().manual_seed(SAMPLING_SEEDS[0]))
    held = features(held_x)
    return {
        "fd_real": frechet_distance(features(train_x), held),
        "fd_noise": frechet_distance(features(noise * 2 - 1), held),
    }


# ----------------------------------------------------------------------------------------------
# The diffusion model


def cosine_schedule(steps: int) -> Tensor:
    """``abar_t`` for ``t = 0..steps-1`` (Nichol & Dhariwal 2021), betas clipped at 0.999."""
    s = 0.008
    grid = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((grid + s) / (1 + s) * math.pi / 2).square()
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


def timestep_embedding(t: Tensor, dim: int = 64) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Denoiser(nn.Module):
    """Residual MLP predicting ``eps`` from ``(x_t, t)``; no batch statistics."""

    def __init__(self, hidden: int = HIDDEN, blocks: int = 2) -> None:
        super().__init__()
        self.time = nn.Sequential(nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(64, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
            for _ in range(blocks)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 64))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time(timestep_embedding(t))
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


def make_model(seed: int) -> Denoiser:
    """The initial model of a seed (the same for "full" and "infobatch"), seeded inside
    ``fork_rng`` so the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Denoiser(HIDDEN)


def noisy(x0: Tensor, t: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    a = abar[t][:, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


@torch.no_grad()
def sample(model: Denoiser, count: int, seed: int, abar: Tensor, clip: bool = True) -> Tensor:
    """Ancestral DDPM sampling (Ho et al.'s sampler: posterior mean and variance ``beta~_t``
    given the predicted ``x_0``, clipped to [-1, 1] at every step when ``clip``)."""
    generator = torch.Generator().manual_seed(seed)
    abar_prev = torch.cat([torch.ones(1), abar[:-1]])
    betas = 1 - abar / abar_prev
    model.eval()
    x = torch.randn(count, 64, generator=generator)
    for step in reversed(range(len(abar))):
        t = torch.full((count,), step, dtype=torch.int64)
        eps = model(x, t)
        x0 = (x - (1 - abar[step]).sqrt() * eps) / abar[step].sqrt()
        if clip:
            x0 = x0.clamp(-1, 1)
        # the mean of q(x_{t-1} | x_t, x_0)
        x = (
            abar_prev[step].sqrt() * betas[step] * x0
            + (1 - betas[step]).sqrt() * (1 - abar_prev[step]) * x
        ) / (1 - abar[step])
        if step > 0:
            variance = betas[step] * (1 - abar_prev[step]) / (1 - abar[step])
            x = x + variance.sqrt() * torch.randn(count, 64, generator=generator)
    model.train()
    return x.clamp(-1, 1)


# ----------------------------------------------------------------------------------------------
# Training


def _spearman(a: Tensor, b: Tensor) -> float:
    ranks_a = a.argsort().argsort().double()
    ranks_b = b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ranks_a, ranks_b]))[0, 1])


def train(
    method: str,
    seed: int,
    epochs: int,
    score_momentum: float = 0.0,
    timestep_normalised: bool = False,
    total_steps: int | None = None,
) -> tuple[Denoiser, dict[str, Any]]:
    """Train one run. Returns the model and a dict of ``sample_passes``, ``steps``, ``seconds``
    (training only), ``extra`` (the score diagnostics) and ``dataset`` (the InfoBatch wrapper,
    ``None`` for full data).

    ``timestep_normalised`` scores each sample by its loss over the running mean loss at the
    timestep it drew (``update(loss, score=...)``; the loss and its rescaling are unchanged), so
    the score says how hard the image is rather than which timestep it drew. ``total_steps``
    (full data only) stops inside the last epoch, the schedule over those steps: the
    fewer-epochs control at a fractional number of epochs."""
    if method == "full" and (timestep_normalised or score_momentum):
        raise ValueError("score options are InfoBatch settings; 'full' has no scores")
    train_x, _, _, _ = digits()
    size = len(train_x)
    train_set = TensorDataset(train_x, torch.arange(size))  # the index rides along
    abar = cosine_schedule(TIMESTEPS)
    model = make_model(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    draws = torch.Generator().manual_seed(seed)  # timesteps and noise
    dataset: InfoBatch[tuple[Tensor, ...]] | None = None
    if method == "infobatch":
        with warnings.catch_warnings():  # quick runs are short on purpose
            warnings.simplefilter("ignore", ShortScheduleWarning)
            # InfoBatch (1/3): wrap the training set (prune_ratio=0.5, delta=0.875)
            dataset = InfoBatch(train_set, epochs, score_momentum=score_momentum, seed=seed)
        # InfoBatch (2/3): the loader draws each epoch's kept samples from its sampler
        loader = DataLoader(dataset, batch_size=BATCH_SIZE, sampler=dataset.sampler)
    elif method == "full":
        shuffle = torch.Generator().manual_seed(seed)
        loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True, generator=shuffle)
    else:
        raise ValueError(f"method must be 'full' or 'infobatch', got {method!r}")

    last_t = torch.full((size,), -1, dtype=torch.int64)  # the timestep behind each last loss
    loss_at_t = torch.ones(TIMESTEPS)  # running mean loss per timestep (timestep_normalised)
    passes = steps = 0
    pruned_large_t = pruned_total = 0
    score_changes: list[float] = []
    previous_scores: Tensor | None = None
    began = time.perf_counter()
    for epoch in range(epochs):
        batches = len(loader)  # shorter in pruned epochs
        t_when_planned = last_t.clone()
        seen = torch.zeros(size, dtype=torch.bool)
        for step, (x0, index) in enumerate(loader):
            if steps == total_steps:
                break
            progress = (epoch + step / batches) / epochs
            if total_steps is not None:
                progress = steps / total_steps
            for group in optimizer.param_groups:
                group["lr"] = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * progress))
            t = torch.randint(TIMESTEPS, (len(x0),), generator=draws)
            eps = torch.randn(x0.shape, generator=draws)
            eps_pred = model(noisy(x0, t, eps, abar), t)
            per_sample = per_sample_mean(F.mse_loss(eps_pred, eps, reduction="none")).loss
            score = None
            if timestep_normalised:
                with torch.no_grad():
                    sums = torch.zeros(TIMESTEPS).index_add_(0, t, per_sample.detach())
                    counts = torch.zeros(TIMESTEPS).index_add_(0, t, torch.ones(len(t)))
                    drawn = counts > 0
                    loss_at_t[drawn] = 0.9 * loss_at_t[drawn] + 0.1 * sums[drawn] / counts[drawn]
                    score = per_sample.detach() / loss_at_t[t]
            # InfoBatch (3/3): the rescaled mean, recording each sample's loss as its score
            loss = per_sample.mean() if dataset is None else dataset.update(per_sample, score=score)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            last_t[index] = t
            seen[index] = True
            passes += len(x0)
            steps += 1
        if dataset is not None:
            scores = dataset.scores.clone()
            if dataset.history[-1].pruning:
                pruned = ~seen
                pruned_total += int(pruned.sum())
                pruned_large_t += int((t_when_planned[pruned] >= TIMESTEPS // 2).sum())
            if previous_scores is not None:
                change = (scores - previous_scores).abs().mean() / scores.mean()
                score_changes.append(float(change))
            previous_scores = scores
    seconds = time.perf_counter() - began

    stats: dict[str, Any] = {"sample_passes": passes, "steps": steps, "seconds": seconds}
    if dataset is not None:
        scores = dataset.scores
        stats["extra"] = {
            "saved_fraction": dataset.sampler.saved_fraction,
            "score_momentum": score_momentum,
            # rank correlation of each sample's final score with the timestep it last drew
            "score_timestep_spearman": _spearman(scores, last_t.double()),
            # of the passes pruned, the fraction whose sample's last draw was t >= T/2 (of all
            # draws: 0.5); near 1 means InfoBatch mostly prunes on the timestep, not the image
            "pruned_large_t_fraction": pruned_large_t / max(pruned_total, 1),
            # mean |score change| between consecutive epochs over the mean score
            "score_epoch_change": sum(score_changes) / max(len(score_changes), 1),
        }
    else:
        stats["extra"] = {"saved_fraction": 0.0}
    stats["dataset"] = dataset
    return model, stats


def run(
    method: str, seed: int, *, scale: float = 1.0, quick: bool = False, **options: Any
) -> dict[str, Any]:
    """One training run and its held-out Frechet distance (see the module docstring)."""
    unknown = set(options) - {"score_momentum", "timestep_normalised"}
    if unknown:
        raise TypeError(
            f"unknown options {sorted(unknown)}; known: score_momentum, timestep_normalised"
        )
    if method == "full" and (options.get("score_momentum") or options.get("timestep_normalised")):
        raise ValueError("score_momentum is an InfoBatch setting; 'full' has no scores")
    length = (QUICK_EPOCHS if quick else EPOCHS) * scale  # epochs; full data may stop inside one
    epochs = max(1, math.ceil(length - 1e-9) if method == "full" else round(length))
    total_steps = None
    if method == "full" and epochs != length:
        total_steps = max(1, round(length * math.ceil(len(digits()[0]) / BATCH_SIZE)))
    count = QUICK_SAMPLES if quick else NUM_SAMPLES
    model, stats = train(
        method,
        seed,
        epochs,
        float(options.get("score_momentum", 0.0)),
        bool(options.get("timestep_normalised", False)),
        total_steps,
    )
    stats.pop("dataset")
    abar = cosine_schedule(TIMESTEPS)
    _, _, held_x, held_y = digits()
    held = features(held_x)
    draws = [sample(model, count, draw_seed, abar) for draw_seed in SAMPLING_SEEDS]
    per_draw = [frechet_distance(features(generated), held) for generated in draws]
    pixels = [frechet_distance(generated, held_x) for generated in draws]
    with torch.no_grad():
        labels = feature_net()(torch.cat(draws)).argmax(1)
    classes = labels.bincount(minlength=10).double() / len(labels)
    entropy = float(-(classes * classes.clamp_min(1e-12).log()).sum())
    extra = {
        **stats["extra"],
        "epochs": epochs,
        "metric_per_draw": per_draw,  # the metric is their mean; their spread is its noise
        "fd_pixels": sum(pixels) / len(pixels),
        **reference_distances(),
        "class_entropy": entropy,  # of the classifier's labels of the samples; ln 10 = 2.30
        "classifier_accuracy": float((feature_net()(held_x).argmax(1) == held_y).double().mean()),
    }
    return {
        "metric": sum(per_draw) / len(per_draw),
        "sample_passes": stats["sample_passes"],
        "steps": stats["steps"],
        "seconds": stats["seconds"],
        "extra": extra,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=["full", "infobatch"], default="infobatch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="training length multiplier")
    parser.add_argument("--quick", action="store_true", help="a tiny run (a few seconds)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--score-momentum", type=float, default=0.0, help="InfoBatch only")
    parser.add_argument(
        "--timestep-normalised", action="store_true", help="score: loss over its timestep's mean"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    options: dict[str, Any] = {"score_momentum": args.score_momentum} if args.score_momentum else {}
    if args.timestep_normalised:
        options["timestep_normalised"] = True
    result = run(args.method, args.seed, scale=args.scale, quick=args.quick, **options)
    extra = result["extra"]
    print(
        f"{args.method} seed {args.seed}: {METRIC} {result['metric']:.3f} "
        f"(draws {', '.join(f'{d:.3f}' for d in extra['metric_per_draw'])}; "
        f"real {extra['fd_real']:.3f}, "
        f"noise {extra['fd_noise']:.1f}), {result['sample_passes']} sample passes, "
        f"{result['steps']} steps, saved {extra['saved_fraction']:.1%}, "
        f"{result['seconds']:.1f} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
