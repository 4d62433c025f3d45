"""Wall-clock saved against sample passes saved, on the demo's and the benchmark's tasks.

For each task (``mnist1d``: the demo; ``mnist``, ``mnist_mlp``: the benchmark's) and seed, it
trains full data and InfoBatch (defaults: ``prune_ratio=0.5``, ``delta=0.875``) on the task's
default schedule, one epoch of each in turn (:func:`infobatch.experiment.interleave`: A B,
B A, ...), and reports

- sample passes saved and training time saved, the time from the median over the epoch
  pairs of the time-per-sample-pass ratio (and from the summed times), and their quotient
  (``follows``: 1 when the clock follows the samples exactly; the issue's bar is 0.9);
- where InfoBatch's training time goes (planning, waiting for batches, ``update()``, the
  training steps), from the runs' :class:`~infobatch.EpochStats` time accounting;
- what a fixed per-epoch cost does to the saving: with the evaluation after every epoch
  counted in (it is the same for both runs), the time saved shrinks to ``saved_with_eval``.

One JSON line of results at the end (``--output`` writes it to a file)::

    python benchmarks/wall_clock.py --tasks mnist1d mnist mnist_mlp --seeds 0 1 \\
        --mnist-dir ../shared/data/mnist --output benchmarks/results/wall_clock.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from infobatch.experiment import (
    RunResult,
    Training,
    default_config,
    interleave,
    load_dataset,
    measure_time_saving,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_task(
    task: str, seeds: list[int], args: argparse.Namespace
) -> tuple[dict[str, Any], list[tuple[RunResult, RunResult]]]:
    """Interleaved full/InfoBatch pairs of ``task`` for each seed, and their summary."""
    splits = load_dataset(task, cache_dir=args.cache_dir, mnist_dir=args.mnist_dir)
    if args.num_train is not None:
        splits = splits.subset(num_train=min(args.num_train, len(splits.y_train)))
    config = default_config(task)
    if args.epochs is not None:
        config = type(config)(
            epochs=args.epochs,
            batch_size=config.batch_size,
            max_lr=config.max_lr,
            weight_decay=config.weight_decay,
        )
    pairs: list[tuple[RunResult, RunResult]] = []
    for seed in seeds:
        runs = {
            name: Training(
                splits, config, seed=seed, infobatch=name == "infobatch", eval_each_epoch=True
            )
            for name in ("infobatch", "full")
        }
        results = interleave(runs)
        pairs.append((results["full"], results["infobatch"]))
        saving = measure_time_saving([results["full"]], [results["infobatch"]])
        print(
            f"{task} seed {seed}: passes saved {saving.passes_saved:.1f}%, time saved "
            f"{saving.saved:.1f}% (median ratio {saving.median_ratio:.3f}x, range "
            f"{saving.low_ratio:.2f}-{saving.high_ratio:.2f}x), "
            f"follows {saving.follows_passes:.2f}",
            flush=True,
        )
    return summarise(task, config.epochs, len(splits.y_train), pairs), pairs


def summarise(
    task: str, epochs: int, num_train: int, pairs: list[tuple[RunResult, RunResult]]
) -> dict[str, Any]:
    """The task's figures over its seeds (``pairs`` of ``(full, infobatch)`` results)."""
    full = [f for f, _ in pairs]
    pruned = [p for _, p in pairs]
    saving = measure_time_saving(full, pruned)
    accounting = {
        name: 1e3 * statistics.fmean(p.time_accounting[name] for p in pruned) / epochs
        for name in ("planning", "data", "update", "steps")
    }
    full_accounting = {
        name: 1e3 * statistics.fmean(f.time_accounting[name] for f in full) / epochs
        for name in ("data", "steps")
    }
    train_full = statistics.fmean(f.train_seconds for f in full)
    train_pruned = statistics.fmean(p.train_seconds for p in pruned)
    evaluation = statistics.fmean(f.eval_seconds + p.eval_seconds for f, p in pairs) / 2
    saved_seconds = train_full * (saving.saved / 100)  # from the median ratio
    return {
        "task": task,
        "epochs": epochs,
        "num_train": num_train,
        "seeds": len(pairs),
        "passes_saved": saving.passes_saved,
        "time_saved": saving.saved,
        "time_saved_total": saving.total_saved,
        "follows": saving.follows_passes,
        "median_ratio": saving.median_ratio,
        "ratio_range": [saving.low_ratio, saving.high_ratio],
        "pairs": saving.pairs,
        "train_seconds": {"full": train_full, "infobatch": train_pruned},
        "infobatch_ms_per_epoch": accounting,
        "full_ms_per_epoch": full_accounting,
        "eval_seconds_per_run": evaluation,
        "saved_with_eval": 100 * saved_seconds / (train_full + evaluation),
        "follows_with_eval": (
            100 * saved_seconds / (train_full + evaluation) / saving.passes_saved
            if saving.passes_saved
            else float("nan")
        ),
        "accuracy": {
            "full": statistics.fmean(f.test_accuracy for f in full),
            "infobatch": statistics.fmean(p.test_accuracy for p in pruned),
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", nargs="+", default=["mnist1d", "mnist", "mnist_mlp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: the task's")
    parser.add_argument("--num-train", type=int, default=None, help="default: all")
    parser.add_argument("--mnist-dir", default=str(REPO_ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="also write the JSON line here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every task and print one table and one JSON line."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    summaries = [run_task(task, args.seeds, args)[0] for task in args.tasks]
    print()
    print(
        f"{'task':10s} {'passes saved':>12s} {'time saved':>10s} {'follows':>7s} "
        f"{'ratio (range)':>19s} {'with eval':>9s}  InfoBatch ms/epoch: plan data update steps"
    )
    for s in summaries:
        ms = s["infobatch_ms_per_epoch"]
        print(
            f"{s['task']:10s} {s['passes_saved']:11.1f}% {s['time_saved']:9.1f}% "
            f"{s['follows']:7.2f} {s['median_ratio']:6.3f} ({s['ratio_range'][0]:.2f}-"
            f"{s['ratio_range'][1]:.2f}) {s['saved_with_eval']:8.1f}%  {ms['planning']:.1f} "
            f"{ms['data']:.0f} {ms['update']:.0f} {ms['steps']:.0f}"
        )
    result = {"threads": args.threads, "torch": torch.__version__, "tasks": summaries}
    line = json.dumps(result)
    print(line)
    if args.output:
        Path(args.output).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
