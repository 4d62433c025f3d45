"""SimCLR-style contrastive pre-training on MNIST-1D with InfoBatch, measured by a linear probe.

What it trains: a tiny 1D CNN encoder (three convolutions and a linear layer, 128 features) plus
a two-layer projection head, on MNIST-1D's 4,000 training signals (``mnist1d.data.make_dataset``
with its default arguments, generated offline and cached by ``infobatch.experiment``; labels are
not used for training). Each step draws two random views of every sample of the batch, with an
explicit ``torch.Generator``: a random time shift and stretch, an amplitude scale, a random
linear trend, smooth (correlated) noise and white noise, the nuisances MNIST-1D's own generator
applies. AdamW with a cosine learning rate driven by the fraction of training done (so it ends at
the end of training although pruned epochs have fewer steps), 20 epochs, batch size 256.

Metric: linear-probe accuracy (%) on the 1,000 held-out test signals: the frozen encoder's
features (no augmentation), standardised, and a closed-form ridge regression onto one-hot
labels fitted on the training signals (deterministic, a few milliseconds). A random-init
encoder's probe is reported too (``extra["probe_random_init"]``): training lifts it from about
40% to about 70%, and it is still improving at the end (a step-limited setting).

The per-sample loss is SimCLR's NT-Xent, ``infobatch.losses.info_nce(z1, z2, temperature)``:
each sample's two views are anchors whose positive is the other view and whose negatives are
the other ``2B - 2`` views of the batch; the sample's loss (and InfoBatch score) is the mean of
its two anchors' cross-entropies. Its ``1/(1-r)`` rescaling is *not exactly unbiased*: an
anchor's loss depends on which samples share its batch, and pruning changes that (fewer
well-learned samples among the negatives). With ``drop_last=False`` pruned epochs keep the batch
size, so every anchor still sees ``2 * 256 - 2`` negatives except in each epoch's last batch;
``extra["mean_negatives_per_anchor"]`` records the average for full data and InfoBatch.

The InfoBatch change is the three lines marked ``# InfoBatch (1/3)`` .. ``(3/3)``: wrap the
dataset, give the loader its sampler (or, with ``keep_steps=True``, its batch sampler: the
second form of line 2), and pass the per-sample loss through ``update()``.

Measured against full data and the fewer-epochs control by ``benchmarks/domains.py``: the
figures are in BENCHMARKS.md and the README's table.

Run it (one CPU thread; about 15-20 s for full data)::

    python examples/contrastive.py --method full --seed 0
    python examples/contrastive.py --method infobatch --seed 0 --prune-ratio 0.3
    python examples/contrastive.py --method infobatch --quick          # a few seconds
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from infobatch import InfoBatch
from infobatch.experiment import Splits, load_mnist1d
from infobatch.losses import info_nce

METRIC = "linear-probe accuracy (%)"
HIGHER_IS_BETTER = True
INFOBATCH_SCALE = 1.0  # epoch-based: the saving comes from the pruned epochs
VARIANTS: dict[str, dict[str, Any]] = {
    "r0.3": {"prune_ratio": 0.3},
    # full data's optimizer steps in smaller batches: fewer negatives per anchor
    "keep_steps": {"keep_steps": True},
}

SIGNAL_LENGTH = 40  # MNIST-1D's final sequence length


@dataclass(frozen=True)
class Config:
    """The training recipe; ``quick`` shrinks it to a test-sized run."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    num_train: int | None = None  # None: all 4,000 training signals
    ridge: float = 1e-2  # probe penalty per training sample (features are standardised)


QUICK = Config(epochs=4, batch_size=128, num_train=800)


@lru_cache(maxsize=1)
def load_data() -> Splits:
    """MNIST-1D with ``make_dataset``'s default arguments: 4,000 train / 1,000 test signals
    ``[N, 1, 40]`` (generated once, about 5 s, then read from ``infobatch``'s cache)."""
    return load_mnist1d(num_train=4000, num_test=1000, seed=42)


# ------------------------------------------------------------------------------ augmentations
def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """One random view of each signal of ``x [B, 1, L]``, drawn from ``generator``.

    Resample on a randomly shifted (+-6 steps) and stretched (+-20%) time grid (zero outside the
    signal), scale the amplitude (+-20%), add a random linear trend, smooth noise and white noise.
    """
    batch, length = x.shape[0], x.shape[-1]

    def uniform(low: float, high: float) -> Tensor:
        return torch.empty(batch, 1).uniform_(low, high, generator=generator)

    span = (length - 1) * uniform(0.8, 1.2)
    start = ((length - 1) - span) * torch.rand(batch, 1, generator=generator) + uniform(-6, 6)
    position = start + torch.linspace(0, 1, length) * span
    inside = (position >= 0) & (position <= length - 1)
    position = position.clamp(0, length - 1)
    low = position.floor().long().clamp(max=length - 2)
    frac = position - low
    signal = x[:, 0]
    view = signal.gather(1, low) * (1 - frac) + signal.gather(1, low + 1) * frac
    view = view * inside * uniform(0.8, 1.2)
    view = view + 0.5 * torch.randn(batch, 1, generator=generator) * torch.linspace(-1, 1, length)
    kernel = torch.exp(-(torch.arange(-6.0, 7.0) ** 2) / 8)
    noise = torch.randn(batch, 1, length, generator=generator)
    view = view + 0.3 * F.conv1d(noise, (kernel / kernel.norm()).view(1, 1, -1), padding=6)[:, 0]
    view = view + 0.05 * torch.randn(batch, length, generator=generator)
    return view.unsqueeze(1)


# ------------------------------------------------------------------------------------- models
class Encoder(nn.Sequential):
    """A tiny 1D CNN: ``[B, 1, 40]`` signals to ``[B, 128]`` features (what the probe reads)."""

    def __init__(self, width: int = 32, features: int = 128) -> None:
        super().__init__(
            nn.Conv1d(1, width, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * (SIGNAL_LENGTH // 4), features),
            nn.ReLU(),
        )


def build_models(seed: int) -> tuple[Encoder, nn.Module]:
    """Encoder and projection head, initialised from ``seed``: PyTorch's initialisers draw from
    the global generator, so they run under ``fork_rng`` (the caller's RNG state is restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Encoder()
        head = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))
    return encoder, head


# -------------------------------------------------------------------------------------- probe
@torch.no_grad()
def linear_probe(encoder: nn.Module, data: Splits, num_train: int | None, ridge: float) -> float:
    """Test accuracy (%) of a ridge-regression probe on the frozen encoder's features."""
    encoder.eval()
    train = encoder(data.x_train[:num_train]).double()
    test = encoder(data.x_test).double()
    encoder.train()
    mean, std = train.mean(0), train.std(0) + 1e-6
    train = F.pad((train - mean) / std, (0, 1), value=1.0)  # a bias column
    test = F.pad((test - mean) / std, (0, 1), value=1.0)
    targets = F.one_hot(data.y_train[:num_train], data.num_classes).double()
    gram = train.T @ train + ridge * len(train) * torch.eye(train.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, train.T @ targets)
    correct = int((test @ weights).argmax(1).eq(data.y_test).sum())
    return 100 * correct / len(data.y_test)


# ----------------------------------------------------------------------------------- training
BatchHook = Callable[[Tensor, Tensor, Tensor, Tensor], None]


@dataclass
class Trained:
    """What :func:`train` returns: the models, the InfoBatch wrapper (or None) and counts."""

    encoder: Encoder
    head: nn.Module
    dataset: InfoBatch[Any] | None
    sample_passes: int
    steps: int
    seconds: float
    negatives: int  # summed over trained anchors (both views of each sample pass)
    batch_sizes: list[int]


def train(
    method: str,
    seed: int,
    config: Config,
    *,
    prune_ratio: float = 0.5,
    delta: float = 0.875,
    score_momentum: float = 0.0,
    keep_steps: bool = False,
    on_batch: BatchHook | None = None,
    total_steps: int | None = None,
) -> Trained:
    """Contrastive training, ``method`` ``"full"`` or ``"infobatch"``; ``on_batch(indices, z1,
    z2, per_sample)`` (detached) is called after every batch's ``update()``, for tests.
    ``total_steps`` (full data only) stops training there, inside its last epoch, with the
    schedule over those steps: the fewer-epochs control at a fractional number of epochs."""
    if method not in ("full", "infobatch"):
        raise ValueError(f"method must be 'full' or 'infobatch', got {method!r}")
    data = load_data()
    x = data.x_train[: config.num_train]
    train_set = TensorDataset(x, torch.arange(len(x)))  # the index rides along, for on_batch
    encoder, head = build_models(seed)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    views = torch.Generator().manual_seed(seed)  # augmentations
    # The loader's generator shuffles full data and seeds each iterator (without one, every
    # `iter(loader)` draws from the global generator); InfoBatch's sampler plans from its seed.
    order = torch.Generator().manual_seed(seed)
    dataset: InfoBatch[Any] | None = None
    if method == "infobatch":
        dataset = InfoBatch(  # InfoBatch (1/3)
            train_set,
            config.epochs,
            prune_ratio=prune_ratio,
            delta=delta,
            score_momentum=score_momentum,
            seed=seed,
            batch_size=config.batch_size,  # lets update() check every batch
            keep_steps=keep_steps,
        )
        if keep_steps:  # pruned epochs: full data's step count, in smaller batches
            loader = DataLoader(  # InfoBatch (2/3)
                dataset, batch_sampler=dataset.batch_sampler, generator=order
            )
        else:
            loader = DataLoader(  # InfoBatch (2/3)
                dataset, batch_size=config.batch_size, sampler=dataset.sampler, generator=order
            )
    else:
        loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=order)
    passes = steps = negatives = 0
    batch_sizes: list[int] = []
    started = time.perf_counter()
    if total_steps is not None and dataset is not None:
        raise ValueError("total_steps is for full data (the control); InfoBatch plans epochs")
    for epoch in range(config.epochs):
        if steps == total_steps:
            break
        batches = len(loader)  # shorter in pruned epochs: the schedule follows progress
        for step, (signals, indices) in enumerate(loader):
            if steps == total_steps:
                break
            progress = (epoch + step / batches) / config.epochs
            if total_steps is not None:
                progress = steps / total_steps
            for group in optimizer.param_groups:
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * progress))
            size = len(signals)
            if size < 2:  # a pruned epoch's last batch may hold one sample: no negatives
                if dataset is not None:  # no score, weight 0, no step
                    dataset.update(torch.zeros(size), valid=torch.zeros(size, dtype=torch.bool))
                continue
            pair = torch.cat([augment(signals, views), augment(signals, views)])
            z1, z2 = head(encoder(pair)).chunk(2)  # both views in one forward pass
            per_sample = info_nce(z1, z2, temperature=config.temperature)
            # InfoBatch (3/3): the rescaled mean; records every sample's loss as its score
            loss = per_sample.mean() if dataset is None else dataset.update(per_sample)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_batch is not None:
                on_batch(indices, z1.detach(), z2.detach(), per_sample.detach())
            passes += size
            steps += 1
            negatives += 2 * size * (2 * size - 2)
            batch_sizes.append(size)
    seconds = time.perf_counter() - started
    return Trained(encoder, head, dataset, passes, steps, seconds, negatives, batch_sizes)


def run(
    method: str, seed: int, *, scale: float = 1.0, quick: bool = False, **options: Any
) -> dict[str, Any]:
    """One run (the harness's contract, see the module docstring); ``options``: ``prune_ratio``,
    ``delta``, ``score_momentum``, ``keep_steps`` (InfoBatch only)."""
    unknown = set(options) - {"prune_ratio", "delta", "score_momentum", "keep_steps"}
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    base = QUICK if quick else Config()
    length = base.epochs * scale  # epochs; full data may stop inside its last one
    epochs = max(1, math.ceil(length - 1e-9) if method == "full" else round(length))
    config = Config(**{**base.__dict__, "epochs": epochs})
    data = load_data()
    total_steps = None
    if method == "full" and epochs != length:
        per_epoch = math.ceil(len(data.x_train[: config.num_train]) / config.batch_size)
        total_steps = max(1, round(length * per_epoch))
    random_probe = linear_probe(build_models(seed)[0], data, config.num_train, config.ridge)
    trained = train(method, seed, config, total_steps=total_steps, **options)
    metric = linear_probe(trained.encoder, data, config.num_train, config.ridge)
    num_train = len(data.x_train[: config.num_train])
    extra: dict[str, Any] = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "num_train": num_train,
        "probe_random_init": random_probe,
        # an anchor in a batch of B has 2B - 2 negatives; averaged over all trained anchors
        "mean_negatives_per_anchor": trained.negatives / (2 * max(trained.sample_passes, 1)),
        "mean_batch_size_per_sample": sum(s * s for s in trained.batch_sizes)
        / max(trained.sample_passes, 1),
        "full_batch_fraction": sum(s for s in trained.batch_sizes if s == config.batch_size)
        / max(trained.sample_passes, 1),
        "smallest_batch": min(trained.batch_sizes, default=0),
        "saved_fraction": 1 - trained.sample_passes / (config.epochs * num_train),
    }
    if trained.dataset is not None:
        extra.update(options)
        extra["infobatch_saved_fraction"] = trained.dataset.sampler.saved_fraction
    return {
        "metric": metric,
        "sample_passes": trained.sample_passes,
        "steps": trained.steps,
        "seconds": trained.seconds,
        "extra": extra,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=["full", "infobatch"], default="infobatch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="training length multiplier")
    parser.add_argument("--quick", action="store_true", help="a tiny run (a few seconds)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--prune-ratio", type=float, default=None)
    parser.add_argument("--delta", type=float, default=None)
    parser.add_argument("--score-momentum", type=float, default=None)
    parser.add_argument("--keep-steps", action="store_true", help="InfoBatch's keep_steps=True")
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
    if args.keep_steps:
        options["keep_steps"] = True
    result = run(args.method, args.seed, scale=args.scale, quick=args.quick, **options)
    extra = result["extra"]
    print(
        f"{args.method} seed {args.seed}: {METRIC} {result['metric']:.2f} "
        f"(random init {extra['probe_random_init']:.2f}), {result['sample_passes']} sample "
        f"passes ({extra['saved_fraction']:.1%} saved), {result['steps']} steps, "
        f"{extra['mean_negatives_per_anchor']:.1f} negatives per anchor, "
        f"{result['seconds']:.1f} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
