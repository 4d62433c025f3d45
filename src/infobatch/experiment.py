"""Shared pieces of ``infobatch demo`` and the benchmarks: offline data, small CNNs, one run.

Everything here runs offline on a CPU in minutes: MNIST-1D is generated locally with the
``mnist1d`` package (never downloaded) and cached as ``.npz``; real MNIST is read from IDX
``.gz`` files in a folder the caller names. One :func:`train` call trains one model, with
full data (a plain shuffled ``DataLoader``) or through :class:`~infobatch.InfoBatch` with any
pruning rule, and returns what it measured: test accuracy, sample passes, wall-clock time of
the training loop and time spent inside infobatch.

The ``mnist1d``, ``matplotlib`` and ``tqdm`` packages come with ``pip install "infobatch[demo]"``.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import random
import statistics
import struct
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader, TensorDataset

from .context import EpochAwareRule
from .dataset import InfoBatch
from .regime import ShortScheduleWarning
from .rule import PruningRule

__all__ = [
    "DATASETS",
    "Splits",
    "TrainConfig",
    "EpochLog",
    "RunResult",
    "default_cache_dir",
    "load_mnist1d",
    "load_mnist",
    "load_dataset",
    "build_model",
    "default_config",
    "train",
    "Training",
    "TimeSaving",
    "interleave",
    "measure_time_saving",
    "evaluate",
    "score_histogram",
]

#: Datasets known to :func:`load_dataset`, :func:`build_model` and :func:`default_config`.
#: ``mnist_mlp`` is real MNIST with a small MLP: a task whose accuracy is not saturated.
DATASETS = ("mnist1d", "mnist", "mnist_mlp")

_DEMO_EXTRA = 'pip install "infobatch[demo]"'
_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


# ---------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Splits:
    """A classification dataset held in memory as tensors.

    Attributes:
        name: dataset name (``"mnist1d"`` or ``"mnist"``).
        x_train: float32 inputs ``[N, C, ...]``.
        y_train: int64 labels ``[N]``.
        x_test: float32 test inputs.
        y_test: int64 test labels.
        num_classes: number of classes.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int = 10

    def subset(self, num_train: int | None = None, num_test: int | None = None) -> Splits:
        """The first ``num_train`` training and ``num_test`` test samples (for quick runs)."""
        for name, value, limit in (
            ("num_train", num_train, len(self.y_train)),
            ("num_test", num_test, len(self.y_test)),
        ):
            if value is not None and not 1 <= value <= limit:
                raise ValueError(f"Invalid {name} {value}, {name} should be in [1, {limit}]")
        return Splits(
            self.name,
            self.x_train[:num_train],
            self.y_train[:num_train],
            self.x_test[:num_test],
            self.y_test[:num_test],
            self.num_classes,
        )


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/infobatch``, else ``~/.cache/infobatch``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "infobatch"


def _generate_mnist1d(num_samples: int, train_fraction: float, seed: int) -> dict[str, Any]:
    """Run ``mnist1d``'s generator with the global RNG states saved and restored around it."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise ImportError(
            f"MNIST-1D needs the mnist1d package: {_DEMO_EXTRA} (or pip install mnist1d)"
        ) from error
    args = get_dataset_args()
    args.num_samples = num_samples
    args.train_split = train_fraction
    args.seed = seed
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:  # make_dataset reseeds the global `random` and NumPy generators
        data: dict[str, Any] = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return data


def load_mnist1d(
    cache_dir: str | os.PathLike[str] | None = None,
    num_train: int = 40_000,
    num_test: int = 10_000,
    seed: int = 42,
    log: Callable[[str], None] | None = None,
) -> Splits:
    """MNIST-1D generated offline (``mnist1d.data.make_dataset``), cached as ``.npz``.

    Generation takes about 30 s for the default 50,000 samples; later calls read the cache.

    Args:
        cache_dir (path, optional): folder of the cache file. Default: :func:`default_cache_dir`.
        num_train (int, optional): training samples. Default: ``40_000``.
        num_test (int, optional): test samples. Default: ``10_000``. ``num_train + num_test``
            must be a multiple of 10 (mnist1d makes equally many samples per class).
        seed (int, optional): the generator's seed (mnist1d's own default is 42).
        log (callable, optional): receives a line of text before a slow generation.
    """
    if num_train < 1 or num_test < 1 or (num_train + num_test) % 10:
        raise ValueError(
            f"Invalid MNIST-1D sizes num_train={num_train}, num_test={num_test}: both must be "
            "positive and their sum a multiple of 10 (one tenth per class)"
        )
    total = num_train + num_test
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"mnist1d_train{num_train}_test{num_test}_seed{seed}.npz"
    arrays: dict[str, np.ndarray] | None = None
    if path.is_file():
        try:
            with np.load(path) as stored:
                arrays = {key: stored[key] for key in ("x", "y", "x_test", "y_test")}
        except (OSError, KeyError, ValueError):
            arrays = None  # unreadable or partial cache: make it again
        if arrays is not None and (len(arrays["y"]), len(arrays["y_test"])) != (
            num_train,
            num_test,
        ):
            arrays = None
    if arrays is None:
        if log is not None:
            estimate = max(1, round(total * 0.0007))  # about 35 s for 50,000 on one core
            log(f"Generating MNIST-1D ({total:,} samples, about {estimate} s once; cache: {path})")
        data = _generate_mnist1d(total, num_train / total, seed)
        arrays = {
            "x": data["x"].astype(np.float32),
            "y": data["y"].astype(np.int64),
            "x_test": data["x_test"].astype(np.float32),
            "y_test": data["y_test"].astype(np.int64),
        }
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(
            partial, x=arrays["x"], y=arrays["y"], x_test=arrays["x_test"], y_test=arrays["y_test"]
        )
        os.replace(partial, path)
    return Splits(
        "mnist1d",
        torch.from_numpy(arrays["x"]).unsqueeze(1),
        torch.from_numpy(arrays["y"]),
        torch.from_numpy(arrays["x_test"]).unsqueeze(1),
        torch.from_numpy(arrays["y_test"]),
    )


def _read_idx(path: Path) -> np.ndarray:
    """Read one gzip-compressed IDX file (unsigned bytes) into an array."""
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(shape):
        raise ValueError(f"{path} holds {body.size} values but its header says {shape}")
    return body.reshape(shape)


def load_mnist(data_dir: str | os.PathLike[str]) -> Splits:
    """Real MNIST (60,000 / 10,000) from the four IDX ``.gz`` files in ``data_dir``.

    ``data_dir`` may also be a torchvision root holding ``MNIST/raw/``. Pixels are scaled to
    ``[0, 1]`` and standardised with the usual MNIST mean 0.1307 and std 0.3081.
    """
    folder = Path(data_dir)
    if not (folder / _MNIST_FILES["x_train"]).is_file() and (folder / "MNIST" / "raw").is_dir():
        folder = folder / "MNIST" / "raw"
    missing = [name for name in _MNIST_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"MNIST files {missing} not found in {folder}; pass the folder holding the IDX .gz "
            "files (train-images-idx3-ubyte.gz, ...) as the MNIST data directory"
        )
    arrays = {key: _read_idx(folder / name) for key, name in _MNIST_FILES.items()}

    def images(values: np.ndarray) -> Tensor:
        pixels = torch.from_numpy(values.astype(np.float32) / 255.0).unsqueeze(1)
        return (pixels - 0.1307) / 0.3081

    return Splits(
        "mnist",
        images(arrays["x_train"]),
        torch.from_numpy(arrays["y_train"].astype(np.int64)),
        images(arrays["x_test"]),
        torch.from_numpy(arrays["y_test"].astype(np.int64)),
    )


def load_dataset(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    mnist_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> Splits:
    """Load ``"mnist1d"`` (generated, cached in ``cache_dir``) or ``"mnist"``/``"mnist_mlp"``
    (read from ``mnist_dir``; the two differ only in the model :func:`build_model` gives)."""
    if name == "mnist1d":
        return load_mnist1d(cache_dir, log=log)
    if name in ("mnist", "mnist_mlp"):
        if mnist_dir is None:
            raise ValueError("the mnist dataset needs a data directory holding the IDX .gz files")
        return dataclasses.replace(load_mnist(mnist_dir), name=name)
    raise ValueError(f"Unknown dataset {name!r}, expected one of {list(DATASETS)}")


# -------------------------------------------------------------------------------------- models
class _ConvBlock(nn.Sequential):
    def __init__(self, conv: nn.Module, channels: int, batch_norm: type[nn.Module]) -> None:
        super().__init__(conv, batch_norm(channels), nn.ReLU(inplace=True))


def build_model(name: str, seed: int) -> nn.Module:
    """The small CNN used for ``name``, initialised from ``seed`` (global RNG left unchanged).

    ``mnist1d``: three 1D convolutions (16-32-32 channels) and a linear layer (8k weights).
    ``mnist``: two strided 3x3 convolutions (8-16 channels) and a linear layer (9k weights).
    Both are small on purpose: a run takes about a minute on one CPU core and full-data
    training is not saturated (accuracy still rises with more epochs).
    ``mnist_mlp``: a 784-16-10 MLP (13k weights), limited by its capacity to about 96% on
    MNIST, so a pruning policy's cost shows (about 10 s a run on one core).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mnist1d":  # input [B, 1, 40]
            return nn.Sequential(
                _ConvBlock(nn.Conv1d(1, 16, 5, padding=2, bias=False), 16, nn.BatchNorm1d),
                _ConvBlock(nn.Conv1d(16, 32, 3, 2, 1, bias=False), 32, nn.BatchNorm1d),
                _ConvBlock(nn.Conv1d(32, 32, 3, 2, 1, bias=False), 32, nn.BatchNorm1d),
                nn.Flatten(),
                nn.Linear(32 * 10, 10),
            )
        if name == "mnist":  # input [B, 1, 28, 28]
            return nn.Sequential(
                _ConvBlock(nn.Conv2d(1, 8, 3, 2, 1, bias=False), 8, nn.BatchNorm2d),
                _ConvBlock(nn.Conv2d(8, 16, 3, 2, 1, bias=False), 16, nn.BatchNorm2d),
                nn.Flatten(),
                nn.Linear(16 * 7 * 7, 10),
            )
        if name == "mnist_mlp":  # input [B, 1, 28, 28]
            return nn.Sequential(
                nn.Flatten(), nn.Linear(28 * 28, 16), nn.ReLU(inplace=True), nn.Linear(16, 10)
            )
    raise ValueError(f"Unknown dataset {name!r}, expected one of {list(DATASETS)}")


# ------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one run (shared by every policy of a comparison).

    Attributes:
        epochs: training epochs.
        batch_size: samples per batch.
        max_lr: peak learning rate of the one-cycle schedule (SGD, Nesterov momentum 0.9).
        weight_decay: L2 weight decay.
        eval_batch_size: batch size of evaluation (no effect on results).
    """

    epochs: int
    batch_size: int = 128
    max_lr: float = 0.05
    weight_decay: float = 5e-4
    eval_batch_size: int = 2000

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name} {value!r}, {name} should be an int >= 1")
        if not self.max_lr > 0:
            raise ValueError(f"Invalid max_lr {self.max_lr}, max_lr should be > 0")


def default_config(name: str) -> TrainConfig:
    """The benchmark's (and demo's) hyperparameters for dataset ``name``.

    Chosen on full-data training only: a peak learning rate of 0.1 gave loss spikes, 0.05 a
    smooth run; the epochs keep a run near a minute on one core with accuracy still rising.
    """
    if name == "mnist1d":
        return TrainConfig(epochs=12, batch_size=128, max_lr=0.05, weight_decay=5e-4)
    if name in ("mnist", "mnist_mlp"):
        return TrainConfig(epochs=8, batch_size=128, max_lr=0.05, weight_decay=5e-4)
    raise ValueError(f"Unknown dataset {name!r}, expected one of {list(DATASETS)}")


@dataclass(frozen=True)
class EpochLog:
    """What one epoch did (passed to the ``on_epoch`` callback of :func:`train`)."""

    epoch: int
    num_kept: int
    num_samples: int
    train_loss: float
    seconds: float
    test_accuracy: float | None
    eval_seconds: float = 0.0


@dataclass
class RunResult:
    """Everything :func:`train` measured. ``saved_fraction`` counts sample passes.

    Attributes:
        test_accuracy: final test accuracy in ``[0, 1]``.
        sample_passes: forward+backward passes of samples over the run.
        full_passes: ``epochs * num_train``, the passes of full-data training.
        train_seconds: wall-clock of the training loop (no data loading from disk, no eval).
        train_cpu_seconds: CPU time of this process in the same loop; less sensitive than
            wall-clock to other jobs on the machine.
        infobatch_seconds: part of ``train_seconds`` spent inside infobatch (epoch planning
            in ``len(loader)`` and the ``update()`` calls); 0 for full data.
        kept_per_epoch: samples trained on in each epoch.
        test_accuracy_per_epoch: test accuracy after each epoch (empty if not evaluated).
        train_loss_per_epoch: mean weighted training loss of each epoch.
        score_snapshots: score histograms with the threshold at the requested epochs.
        seconds_per_epoch: ``train_seconds`` of each epoch.
        time_accounting: ``train_seconds`` split into ``planning`` (InfoBatch's epoch plans),
            ``data`` (waiting for batches), ``update`` (inside ``update()``) and ``steps``
            (forward, backward, optimizer: the rest), summed over the epochs.
        eval_seconds: time of the per-epoch evaluations (``eval_each_epoch``), outside
            ``train_seconds``: a fixed per-epoch cost that pruning does not shrink.
    """

    test_accuracy: float
    sample_passes: int
    full_passes: int
    train_seconds: float
    train_cpu_seconds: float
    infobatch_seconds: float
    kept_per_epoch: list[int]
    train_loss_per_epoch: list[float]
    test_accuracy_per_epoch: list[float] = field(default_factory=list)
    score_snapshots: list[dict[str, Any]] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)
    time_accounting: dict[str, float] = field(default_factory=dict)
    eval_seconds: float = 0.0

    @property
    def saved_fraction(self) -> float:
        """Fraction of sample passes saved versus full data."""
        return 1.0 - self.sample_passes / self.full_passes

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), with ``saved_fraction`` included."""
        result = asdict(self)
        result["saved_fraction"] = self.saved_fraction
        return result


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 2000) -> float:
    """Accuracy of ``model`` on ``(x, y)``; the model is left in training mode."""
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    model.train()
    return correct / len(y)


def score_histogram(scores: Tensor, threshold: float, bins: int = 60) -> dict[str, Any]:
    """Histogram of ``log10`` of the scored (finite, positive) scores, with the threshold."""
    values = scores[torch.isfinite(scores)].double()
    positive = values[values > 0]
    floor = float(positive.min()) if positive.numel() else 1e-8
    logs = torch.log10(values.clamp(min=floor)).numpy()
    counts, edges = np.histogram(logs, bins=bins)
    return {
        "num_scored": int(values.numel()),
        "num_below_threshold": int((values < threshold).sum()) if math.isfinite(threshold) else 0,
        "threshold": threshold,
        "log10_threshold": math.log10(threshold) if threshold > 0 else None,
        "log10_bin_edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
    }


def _warm_up(splits: Splits, config: TrainConfig) -> None:
    """A few throw-away steps, so no timed loop pays one-off start-up costs."""
    model = build_model(splits.name, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.max_lr)
    x, y = splits.x_train[: config.batch_size], splits.y_train[: config.batch_size]
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()


class Training:
    """One run of :func:`train`, an epoch at a time (so two runs can be interleaved).

    ``Training(splits, config, seed=..., ...)`` takes :func:`train`'s arguments; each
    :meth:`run_epoch` trains the next epoch and returns its :class:`EpochLog`, and
    :meth:`result` evaluates the model and returns the :class:`RunResult`.
    """

    def __init__(
        self,
        splits: Splits,
        config: TrainConfig,
        *,
        seed: int,
        infobatch: bool = True,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        rule: PruningRule | EpochAwareRule | None = None,
        score_momentum: float = 0.0,
        keep_steps: bool = False,
        eval_each_epoch: bool = False,
        snapshot_epochs: Sequence[int] = (),
    ) -> None:
        self.splits, self.config = splits, config
        self.eval_each_epoch = eval_each_epoch
        self.model = build_model(splits.name, seed)
        self.model.train()
        train_set = TensorDataset(splits.x_train, splits.y_train)
        self.num_train = len(train_set)
        self.pruned_set: InfoBatch[tuple[Tensor, ...]] | None = None
        self.loader: DataLoader[tuple[Tensor, ...]]
        if infobatch:
            with warnings.catch_warnings():  # the benchmark measures this regime itself
                warnings.simplefilter("ignore", ShortScheduleWarning)
                self.pruned_set = InfoBatch(
                    train_set,
                    config.epochs,
                    prune_ratio,
                    delta,
                    seed=seed,
                    rule=rule,
                    score_momentum=score_momentum,
                    batch_size=config.batch_size,
                    keep_steps=keep_steps,
                    class_labels=splits.y_train,
                )
            # the generator only seeds the loader's base seed, so the global RNG is not drawn
            batching: dict[str, Any] = (
                {"batch_sampler": self.pruned_set.batch_sampler}
                if keep_steps
                else {"batch_size": config.batch_size, "sampler": self.pruned_set.sampler}
            )
            self.loader = DataLoader(
                self.pruned_set, **batching, generator=torch.Generator().manual_seed(seed)
            )
        else:
            order = torch.Generator().manual_seed(seed)
            self.loader = DataLoader(
                train_set, batch_size=config.batch_size, shuffle=True, generator=order
            )
        self.criterion = nn.CrossEntropyLoss(reduction="none")
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=config.max_lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=config.weight_decay,
        )
        self.snapshot_at = set(snapshot_epochs)
        self.epoch = 0
        self.logs: list[EpochLog] = []
        self.snapshots: list[dict[str, Any]] = []
        self.train_seconds = self.train_cpu_seconds = self.infobatch_seconds = 0.0
        self.time_accounting = {"planning": 0.0, "data": 0.0, "update": 0.0, "steps": 0.0}
        _warm_up(splits, config)

    @property
    def done(self) -> bool:
        """Every epoch was trained."""
        return self.epoch >= self.config.epochs

    def run_epoch(self) -> EpochLog:
        """Train the next epoch; its log (test accuracy too with ``eval_each_epoch``)."""
        if self.done:
            raise RuntimeError(f"all {self.config.epochs} epochs were trained")
        epoch, config, pruned_set = self.epoch, self.config, self.pruned_set
        started, cpu_started = time.perf_counter(), time.process_time()
        steps = len(self.loader)  # InfoBatch plans the epoch here, so the length is exact
        planned = time.perf_counter()
        not_training = not_training_cpu = 0.0
        if pruned_set is not None:
            plan = pruned_set.sampler.plan
            if epoch in self.snapshot_at and plan is not None:
                snapshot_cpu = time.process_time()
                self.snapshots.append(
                    {"epoch": epoch, **score_histogram(pruned_set.scores, plan.threshold)}
                )
                not_training = time.perf_counter() - planned  # the snapshot is not training
                not_training_cpu = time.process_time() - snapshot_cpu
        scheduler = OneCycleLR(
            self.optimizer,
            max_lr=config.max_lr,
            epochs=config.epochs,
            steps_per_epoch=steps,
            last_epoch=epoch * steps - 1,
        )
        loss_sum = torch.zeros((), dtype=torch.float64)
        batches = pruned_set.timed(self.loader) if pruned_set is not None else self.loader
        waited = 0.0
        iterator = iter(batches)
        while True:
            fetch = time.perf_counter()
            try:
                x, y = next(iterator)
            except StopIteration:
                break
            waited += time.perf_counter() - fetch
            per_sample = self.criterion(self.model(x), y)
            loss = pruned_set.update(per_sample) if pruned_set is not None else per_sample.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
        seconds = time.perf_counter() - started - not_training
        self.train_seconds += seconds
        self.train_cpu_seconds += time.process_time() - cpu_started - not_training_cpu
        if pruned_set is not None:
            stats = pruned_set.history[epoch]
            num_kept = stats.num_kept
            self.infobatch_seconds += stats.planning_seconds + stats.update_seconds
            accounting = {
                "planning": stats.planning_seconds,
                "data": stats.data_seconds,
                "update": stats.update_seconds,
            }
        else:
            num_kept = self.num_train
            accounting = {"planning": 0.0, "data": waited, "update": 0.0}
        accounting["steps"] = seconds - sum(accounting.values())
        for name, value in accounting.items():
            self.time_accounting[name] += value
        accuracy, evaluated = None, time.perf_counter()
        if self.eval_each_epoch:
            accuracy = evaluate(
                self.model, self.splits.x_test, self.splits.y_test, config.eval_batch_size
            )
        log = EpochLog(
            epoch,
            num_kept,
            self.num_train,
            float(loss_sum) / max(steps, 1),
            seconds,
            accuracy,
            eval_seconds=time.perf_counter() - evaluated if self.eval_each_epoch else 0.0,
        )
        self.logs.append(log)
        self.epoch += 1
        return log

    def result(self) -> RunResult:
        """Final test accuracy and everything measured (after the last epoch)."""
        accuracies = [log.test_accuracy for log in self.logs if log.test_accuracy is not None]
        final = (
            accuracies[-1]
            if accuracies and len(accuracies) == len(self.logs)
            else evaluate(
                self.model, self.splits.x_test, self.splits.y_test, self.config.eval_batch_size
            )
        )
        return RunResult(
            test_accuracy=final,
            sample_passes=sum(log.num_kept for log in self.logs),
            full_passes=self.config.epochs * self.num_train,
            train_seconds=self.train_seconds,
            train_cpu_seconds=self.train_cpu_seconds,
            infobatch_seconds=self.infobatch_seconds,
            kept_per_epoch=[log.num_kept for log in self.logs],
            train_loss_per_epoch=[log.train_loss for log in self.logs],
            test_accuracy_per_epoch=accuracies,
            score_snapshots=self.snapshots,
            seconds_per_epoch=[log.seconds for log in self.logs],
            time_accounting=dict(self.time_accounting),
            eval_seconds=sum(log.eval_seconds for log in self.logs),
        )


@dataclass(frozen=True)
class TimeSaving:
    """Training time saved, measured on epochs trained in interleaved pairs.

    :func:`interleave` trains full data and InfoBatch one epoch each in turn (alternating which goes
    first), so both see the same machine load. Each pair gives the ratio of the time per
    sample pass, InfoBatch over full data; the saving is taken from the median ratio, so one
    epoch slowed by another job moves it little.

    Attributes:
        median_ratio: median over the pairs of the time-per-sample-pass ratio.
        low_ratio, high_ratio: the smallest and largest ratio (how noisy it was).
        pairs: number of epoch pairs.
        saved: training time saved in % (``1 - median_ratio * passes InfoBatch / full``).
        total_saved: training time saved in %, from the summed times alone.
        passes_saved: sample passes saved in %.
    """

    median_ratio: float
    low_ratio: float
    high_ratio: float
    pairs: int
    saved: float
    total_saved: float
    passes_saved: float

    @property
    def follows_passes(self) -> float:
        """Time saved over sample passes saved (1: the clock follows the samples exactly)."""
        return self.saved / self.passes_saved if self.passes_saved else float("nan")


def measure_time_saving(full: Sequence[RunResult], pruned: Sequence[RunResult]) -> TimeSaving:
    """The :class:`TimeSaving` of runs trained in interleaved pairs (``full[i]`` beside
    ``pruned[i]``, e.g. by :func:`interleave`; seeds pooled)."""
    ratios = [
        (ib_seconds / ib_kept) / (full_seconds / full_kept)
        for f, p in zip(full, pruned)
        for ib_seconds, ib_kept, full_seconds, full_kept in zip(
            p.seconds_per_epoch, p.kept_per_epoch, f.seconds_per_epoch, f.kept_per_epoch
        )
        if ib_kept > 0 and full_seconds > 0
    ]
    pass_fraction = statistics.fmean(r.sample_passes for r in pruned) / statistics.fmean(
        r.sample_passes for r in full
    )
    median = statistics.median(ratios) if ratios else float("nan")
    return TimeSaving(
        median_ratio=median,
        low_ratio=min(ratios, default=float("nan")),
        high_ratio=max(ratios, default=float("nan")),
        pairs=len(ratios),
        saved=100 * (1 - median * pass_fraction),
        total_saved=100
        * (
            1
            - statistics.fmean(r.train_seconds for r in pruned)
            / statistics.fmean(r.train_seconds for r in full)
        ),
        passes_saved=100 * (1 - pass_fraction),
    )


def interleave(
    runs: dict[str, Training], on_epoch: Callable[[str, EpochLog], None] | None = None
) -> dict[str, RunResult]:
    """Train ``runs`` one epoch each in turn, reversing the order every epoch (A B, B A, ...),
    so all see the same machine load and none always follows another's evaluation; their
    results once all are done. ``on_epoch(name, log)`` is called after each epoch."""
    names = list(runs)
    epoch = 0
    while not all(run.done for run in runs.values()):
        for name in names if epoch % 2 == 0 else names[::-1]:
            if not runs[name].done:
                log = runs[name].run_epoch()
                if on_epoch is not None:
                    on_epoch(name, log)
        epoch += 1
    return {name: run.result() for name, run in runs.items()}


def train(
    splits: Splits,
    config: TrainConfig,
    *,
    seed: int,
    infobatch: bool = True,
    prune_ratio: float = 0.5,
    delta: float = 0.875,
    rule: PruningRule | EpochAwareRule | None = None,
    score_momentum: float = 0.0,
    keep_steps: bool = False,
    eval_each_epoch: bool = False,
    snapshot_epochs: Sequence[int] = (),
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> RunResult:
    """Train :func:`build_model` on ``splits`` once and measure it.

    With ``infobatch=False`` the loader is a plain shuffled ``DataLoader`` (the full-data
    baseline). Otherwise the training set is wrapped with ``InfoBatch(..., rule=rule)`` and the
    loop is the three-line usage (iterating ``dataset.timed(loader)``, so the statistics hold
    the wait for batches). The learning rate follows ``OneCycleLR`` stepped per batch,
    re-created each epoch with ``steps_per_epoch=len(loader)`` (exact with InfoBatch), so the
    schedule follows training progress and ends exactly for every policy.

    Args:
        splits (Splits): the data.
        config (TrainConfig): hyperparameters.
        seed (int): seeds the model's initialisation and the data order.
        infobatch (bool, optional): train through InfoBatch. Default: ``True``.
        prune_ratio, delta (float, optional): InfoBatch's settings (defaults 0.5, 0.875).
        rule (PruningRule or EpochAwareRule, optional): replaces InfoBatch's rule (for the
            policies of :mod:`infobatch.policies`).
        score_momentum (float, optional): InfoBatch's ``score_momentum`` (default ``0``, the
            latest loss).
        keep_steps (bool, optional): InfoBatch's ``keep_steps``: pruned epochs make full
            data's optimizer steps in smaller batches (the loader takes the dataset's
            ``batch_sampler``). Default: ``False``.
        eval_each_epoch (bool, optional): measure test accuracy after every epoch (outside the
            timed loop). Default: ``False``.
        snapshot_epochs (sequence of int, optional): epochs at whose start the score
            distribution and threshold are recorded (InfoBatch only).
        on_epoch (callable, optional): called with an :class:`EpochLog` after each epoch.
    """
    run = Training(
        splits,
        config,
        seed=seed,
        infobatch=infobatch,
        prune_ratio=prune_ratio,
        delta=delta,
        rule=rule,
        score_momentum=score_momentum,
        keep_steps=keep_steps,
        eval_each_epoch=eval_each_epoch,
        snapshot_epochs=snapshot_epochs,
    )
    while not run.done:
        log = run.run_epoch()
        if on_epoch is not None:
            on_epoch(log)
    return run.result()
