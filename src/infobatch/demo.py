"""``infobatch demo``: train twice (full data, InfoBatch) and show what InfoBatch saved.

Runs offline on a CPU: MNIST-1D is generated locally (about 30 s once, then cached) and a small
1D CNN is trained with full data and with InfoBatch, same seed, model and learning-rate
schedule. Prints a side-by-side table (test accuracy, sample passes, training time, savings)
and writes ``demo.png`` and ``demo.json`` to the output folder. Needs
``pip install "infobatch[demo]"`` (mnist1d, matplotlib, tqdm).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .experiment import (
    DATASETS,
    EpochLog,
    RunResult,
    Splits,
    TimeSaving,
    Training,
    default_cache_dir,
    default_config,
    interleave,
    load_mnist,
    load_mnist1d,
    measure_time_saving,
)

__all__ = [
    "DemoOptions",
    "DemoReport",
    "DemoRun",
    "TimeSaving",
    "add_demo_arguments",
    "format_table",
    "headline",
    "options_from_args",
    "run_demo",
    "savings",
    "time_saving",
    "timing_note",
    "write_plot",
]

_DEMO_EXTRA = 'pip install "infobatch[demo]"'
_LABELS = {"full": "full data", "infobatch": "InfoBatch"}
_DATASET_LABELS = {"mnist1d": "MNIST-1D", "mnist": "MNIST"}


@dataclass(frozen=True)
class DemoOptions:
    """Settings of one demo (the command-line options).

    Attributes:
        dataset: ``"mnist1d"`` (generated offline) or ``"mnist"`` (needs ``data_dir``).
        epochs: training epochs; ``None`` = the dataset's default (12 for MNIST-1D, 8 for MNIST).
        seeds: one full-data and one InfoBatch run per seed.
        prune_ratio: InfoBatch's probability of dropping a well-learned sample.
        delta: fraction of epochs that are pruned (annealing after).
        output: folder for ``demo.png`` and ``demo.json``.
        cache_dir: MNIST-1D cache folder; ``None`` = ``~/.cache/infobatch``.
        data_dir: folder of the MNIST IDX ``.gz`` files (``dataset="mnist"`` only).
        threads: torch CPU threads during the demo.
        num_train: training samples (``None`` = all: 40,000 MNIST-1D, 60,000 MNIST).
        num_test: test samples (``None`` = all: 10,000).
        progress: show progress bars.
    """

    dataset: str = "mnist1d"
    epochs: int | None = None
    seeds: tuple[int, ...] = (0,)
    prune_ratio: float = 0.5
    delta: float = 0.875
    output: str = "infobatch-demo"
    cache_dir: str | None = None
    data_dir: str | None = None
    threads: int = 1
    num_train: int | None = None
    num_test: int | None = None
    progress: bool = True


@dataclass
class DemoRun:
    """One training run of the demo."""

    policy: str
    seed: int
    result: RunResult


@dataclass
class DemoReport:
    """What :func:`run_demo` produced."""

    options: DemoOptions
    epochs: int
    num_train: int
    runs: list[DemoRun] = field(default_factory=list)
    table: str = ""
    plot_path: Path | None = None
    json_path: Path | None = None
    data_seconds: float = 0.0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _ratio(low: float, high: float, closed_high: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = low <= value <= high if closed_high else low <= value < high
        if not inside:
            interval = f"[{low}, {high}]" if closed_high else f"[{low}, {high})"
            raise argparse.ArgumentTypeError(f"{value} is outside the interval {interval}")
        return value

    return parse


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser``."""
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="mnist1d",
        help="mnist1d is generated offline by the mnist1d package (about 30 s once, then "
        "cached); mnist reads the four IDX .gz files from --data-dir (default: mnist1d)",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="training epochs (default: 12 for mnist1d, 8 for mnist)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        metavar="SEED",
        help="seeds; each trains full data and InfoBatch, mean and std shown for several "
        "(default: 0)",
    )
    parser.add_argument(
        "--prune-ratio",
        type=_ratio(0.0, 1.0, closed_high=False),
        default=0.5,
        help="InfoBatch's probability of dropping a below-mean-loss sample, in [0, 1) "
        "(default: 0.5)",
    )
    parser.add_argument(
        "--delta",
        type=_ratio(0.0, 1.0, closed_high=True),
        default=0.875,
        help="fraction of epochs that are pruned, in [0, 1]; later epochs use all data "
        "(default: 0.875)",
    )
    parser.add_argument(
        "--output",
        default="infobatch-demo",
        help="folder for demo.png (plot) and demo.json (every number) (default: infobatch-demo)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help=f"where generated MNIST-1D is cached (default: {default_cache_dir()})",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the MNIST IDX .gz files (needed with --dataset mnist)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch CPU threads; 1 is usually fastest for these small models (default: 1)",
    )
    parser.add_argument(
        "--num-train",
        type=_positive_int,
        default=None,
        help="training samples (default all: 40,000 mnist1d, 60,000 mnist)",
    )
    parser.add_argument(
        "--num-test",
        type=_positive_int,
        default=None,
        help="test samples (default all: 10,000)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """The :class:`DemoOptions` of parsed command-line arguments."""
    return DemoOptions(
        dataset=args.dataset,
        epochs=args.epochs,
        seeds=tuple(args.seeds),
        prune_ratio=args.prune_ratio,
        delta=args.delta,
        output=args.output,
        cache_dir=args.cache_dir,
        data_dir=args.data_dir,
        threads=args.threads,
        num_train=args.num_train,
        num_test=args.num_test,
        progress=not args.no_progress,
    )


def _load(options: DemoOptions, log: Callable[[str], None]) -> Splits:
    if options.dataset == "mnist1d":
        num_train = options.num_train or 40_000
        num_test = options.num_test or 10_000
        return load_mnist1d(options.cache_dir, num_train=num_train, num_test=num_test, log=log)
    if options.dataset in ("mnist", "mnist_mlp"):  # the same data, another model
        if options.data_dir is None:
            raise ValueError(
                f"--dataset {options.dataset} needs --data-dir, the folder holding the four "
                "MNIST IDX .gz files (train-images-idx3-ubyte.gz, ...)"
            )
        splits = dataclasses.replace(load_mnist(options.data_dir), name=options.dataset)
        return splits.subset(options.num_train, options.num_test)
    raise ValueError(f"Unknown dataset {options.dataset!r}, expected one of {list(DATASETS)}")


def _progress_bar(total: int, description: str, enabled: bool) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError(f"the demo's progress bar needs tqdm: {_DEMO_EXTRA}") from error
    return tqdm(total=total, desc=description, unit="epoch", disable=not enabled, leave=True)


def _mean_std(values: Sequence[float], scale: float, digits: int) -> str:
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _split(report: DemoReport) -> tuple[list[RunResult], list[RunResult]]:
    """``(full, infobatch)`` results of the report's runs."""
    full = [run.result for run in report.runs if run.policy == "full"]
    pruned = [run.result for run in report.runs if run.policy == "infobatch"]
    return full, pruned


def time_saving(report: DemoReport) -> TimeSaving:
    """The :class:`~infobatch.experiment.TimeSaving` of the report's runs (seeds pooled)."""
    full, pruned = _split(report)
    return measure_time_saving(full, pruned)


def savings(report: DemoReport) -> tuple[float, float, float]:
    """``(accuracy change in points, % sample passes saved, % training time saved)``, the
    time from the median of the interleaved epoch pairs (:func:`time_saving`)."""
    full, pruned = _split(report)
    accuracy_gap = 100 * (
        statistics.fmean(r.test_accuracy for r in pruned)
        - statistics.fmean(r.test_accuracy for r in full)
    )
    passes_saved = 100 * statistics.fmean(r.saved_fraction for r in pruned)
    return accuracy_gap, passes_saved, time_saving(report).saved


def headline(report: DemoReport) -> str:
    """One line: what InfoBatch saved and what it cost in accuracy."""
    accuracy_gap, passes_saved, time_saved = savings(report)
    return (
        f"InfoBatch: {passes_saved:.1f}% fewer sample passes, {time_saved:.1f}% less training "
        f"time, test accuracy {accuracy_gap:+.2f} points"
    )


def timing_note(report: DemoReport) -> str:
    """How the time saving was measured and how noisy it was."""
    saving = time_saving(report)
    return (
        f"Training time: epochs of the two runs interleaved; time per sample pass, InfoBatch / "
        f"full data, median {saving.median_ratio:.3f}x over {saving.pairs} epoch pairs (range "
        f"{saving.low_ratio:.2f}-{saving.high_ratio:.2f}x), so {saving.saved:.1f}% saved, "
        f"{saving.follows_passes:.2f}x the passes saved ({saving.total_saved:.1f}% from the "
        "summed times)."
    )


def format_table(report: DemoReport) -> str:
    """The side-by-side table printed by the demo."""
    full, pruned = _split(report)
    seeds = len(report.options.seeds)
    title = (
        f"{_DATASET_LABELS[report.options.dataset]}, {report.num_train:,} training samples, "
        f"{report.epochs} epochs, {seeds} seed{'s' if seeds > 1 else ''}"
        + (" (mean ± std)" if seeds > 1 else "")
    )
    accuracy_gap, passes_saved, time_saved = savings(report)
    rows = [
        (
            "test accuracy (%)",
            _mean_std([r.test_accuracy for r in full], 100, 2),
            _mean_std([r.test_accuracy for r in pruned], 100, 2),
            f"{accuracy_gap:+.2f} points",
        ),
        (
            "sample passes (fwd+bwd)",
            f"{statistics.fmean(r.sample_passes for r in full):,.0f}",
            f"{statistics.fmean(r.sample_passes for r in pruned):,.0f}",
            f"{passes_saved:.1f}% saved",
        ),
        (
            "training time (s)",
            _mean_std([r.train_seconds for r in full], 1, 1),
            _mean_std([r.train_seconds for r in pruned], 1, 1),
            f"{time_saved:.1f}% saved*",
        ),
        (
            "  of which in infobatch (s)",
            "-",
            _mean_std([r.infobatch_seconds for r in pruned], 1, 2),
            "",
        ),
    ]
    head = ("", "full data", "InfoBatch", "difference")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(4)]
    lines = [title]
    for row in [head, *rows]:
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, 4)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(2, "-" * len(lines[1]))
    return "\n".join(lines)


def write_plot(report: DemoReport, path: Path) -> None:
    """Two panels: test accuracy against sample passes, and samples used per epoch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(f"the demo's plot needs matplotlib: {_DEMO_EXTRA}") from error
    colors = {"full": "black", "infobatch": "tab:red"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    labelled: set[str] = set()
    for run in report.runs:
        result = run.result
        label = None if run.policy in labelled else _LABELS[run.policy]
        labelled.add(run.policy)
        cumulative, total = [], 0
        for kept in result.kept_per_epoch:
            total += kept
            cumulative.append(total / 1e6)
        if result.test_accuracy_per_epoch:
            accuracy = [100 * a for a in result.test_accuracy_per_epoch]
            left.plot(cumulative, accuracy, marker="o", ms=3, color=colors[run.policy], label=label)
        right.plot(
            range(len(result.kept_per_epoch)),
            [k / report.num_train for k in result.kept_per_epoch],
            marker="o",
            ms=3,
            color=colors[run.policy],
            label=label,
        )
    curves = [r.result.test_accuracy_per_epoch for r in report.runs]
    later = [100 * a for curve in curves for a in curve[1:]] or [
        100 * r.result.test_accuracy for r in report.runs
    ]
    left.set_ylim(max(min(later) - 0.5, 0), min(max(later) + 0.3, 100))
    left.set_xlabel("cumulative sample passes (millions)")
    left.set_ylabel("test accuracy (%)")
    left.set_title("test accuracy vs compute")
    left.grid(alpha=0.3)
    left.legend(loc="lower right")
    right.set_ylim(0, 1.05)
    right.set_xlabel("epoch")
    right.set_ylabel("fraction of training samples used")
    right.set_title("samples used per epoch (InfoBatch anneals to full data at the end)")
    right.grid(alpha=0.3)
    right.legend(loc="lower left")
    fig.suptitle(f"{report.table.splitlines()[0]}\n{headline(report)}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(options: DemoOptions, out: Callable[[str], None] = print) -> DemoReport:
    """Train full data and InfoBatch for each seed, print the table, write plot and JSON."""
    if not options.seeds:
        raise ValueError("seeds is empty; give at least one seed")
    if options.dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {options.dataset!r}, expected one of {list(DATASETS)}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        started = time.perf_counter()
        splits = _load(options, out)
        data_seconds = time.perf_counter() - started
        config = default_config(options.dataset)
        if options.epochs is not None:
            config = type(config)(
                epochs=options.epochs,
                batch_size=config.batch_size,
                max_lr=config.max_lr,
                weight_decay=config.weight_decay,
            )
        report = DemoReport(options, config.epochs, len(splits.y_train), data_seconds=data_seconds)
        for seed in options.seeds:
            for policy, result in _interleaved_runs(splits, config, seed, options).items():
                report.runs.append(DemoRun(policy, seed, result))
        report.table = format_table(report)
        out("")
        out(report.table)
        out(headline(report))
        out("* " + timing_note(report))
        output = Path(options.output)
        output.mkdir(parents=True, exist_ok=True)
        report.plot_path = output / "demo.png"
        write_plot(report, report.plot_path)
        report.json_path = output / "demo.json"
        report.json_path.write_text(json.dumps(_as_json(report), indent=1))
        out("")
        out(f"Plot: {report.plot_path}   Numbers: {report.json_path}")
        out(
            "Training time covers the training loop only (not data generation or evaluation); "
            "it varies with machine load."
        )
        return report
    finally:
        torch.set_num_threads(previous_threads)


def _interleaved_runs(
    splits: Splits, config: Any, seed: int, options: DemoOptions
) -> dict[str, RunResult]:
    """Train InfoBatch and full data for ``seed``, one epoch of each in turn."""
    runs = {
        policy: Training(
            splits,
            config,
            seed=seed,
            infobatch=policy == "infobatch",
            prune_ratio=options.prune_ratio,
            delta=options.delta,
            eval_each_epoch=True,
        )
        for policy in ("infobatch", "full")
    }
    with _progress_bar(2 * config.epochs, f"seed {seed}", options.progress) as bar:

        def advance(policy: str, log: EpochLog) -> None:
            bar.set_postfix_str(
                f"{_LABELS[policy]}: kept {log.num_kept / log.num_samples:.0%}, "
                f"acc {100 * (log.test_accuracy or 0):.1f}%"
            )
            bar.update(1)

        return interleave(runs, on_epoch=advance)


def _as_json(report: DemoReport) -> dict[str, Any]:
    options = report.options
    return {
        "options": {
            "dataset": options.dataset,
            "epochs": report.epochs,
            "seeds": list(options.seeds),
            "prune_ratio": options.prune_ratio,
            "delta": options.delta,
            "threads": options.threads,
            "num_train": report.num_train,
        },
        "environment": {"cpus": os.cpu_count(), "torch": torch.__version__},
        "data_seconds": report.data_seconds,
        "runs": [
            {"policy": run.policy, "seed": run.seed, **run.result.as_dict()} for run in report.runs
        ],
        "table": report.table,
        "time_saving": dataclasses.asdict(time_saving(report)),
    }
