"""InfoBatch's overhead per sample pass in the plain three-line loop (issue 15, item 1).

Runs, interleaved in one process (A, B, A, B, ...), one epoch of the benchmark's loop
(:func:`infobatch.experiment.train`: SGD, one-cycle schedule)

- ``plain``: a shuffled ``DataLoader`` and ``loss.mean()``;
- ``infobatch``: the README's three lines with ``prune_ratio=0`` (every sample, weight 1, so
  both make the same sample passes and optimizer steps),

on the same model and data, and prints the median over pairs of the time ratio per sample
pass (wall-clock and process CPU time) and the time spent inside InfoBatch (planning the
epoch and the ``update()`` calls). One JSON line of results at the end::

    python benchmarks/overhead.py --mnist-dir ../shared/data/mnist --pairs 7 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from infobatch.experiment import Splits, TrainConfig, load_mnist, train

REPO_ROOT = Path(__file__).resolve().parent.parent


def one_epoch(mode: str, splits: Splits, batch_size: int, seed: int) -> dict[str, float]:
    """One epoch of :func:`infobatch.experiment.train` (the benchmark's loop) in ``mode``: its
    wall-clock and CPU seconds, and the part spent inside InfoBatch (planning, ``update()``)."""
    result = train(
        splits,
        TrainConfig(epochs=1, batch_size=batch_size),
        seed=seed,
        infobatch=mode == "infobatch",
        prune_ratio=0.0,
    )
    return {
        "seconds": result.train_seconds,
        "cpu_seconds": result.train_cpu_seconds,
        "infobatch_seconds": result.infobatch_seconds,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mnist-dir", default=str(REPO_ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--num-train", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=7, help="interleaved (plain, infobatch)")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure the pairs and print the medians and one JSON line."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = load_mnist(args.mnist_dir).subset(num_train=args.num_train)
    one_epoch("plain", splits, args.batch_size, 0)  # warm-up: allocator, kernels
    pairs: list[dict[str, Any]] = []
    for pair in range(args.pairs):
        order = ("plain", "infobatch") if pair % 2 == 0 else ("infobatch", "plain")
        runs = {mode: one_epoch(mode, splits, args.batch_size, pair) for mode in order}
        pairs.append(runs)
        print(
            f"pair {pair}: plain {runs['plain']['seconds']:.2f}s, "
            f"infobatch {runs['infobatch']['seconds']:.2f}s "
            f"({1e3 * runs['infobatch']['infobatch_seconds']:.0f} ms inside InfoBatch)",
            flush=True,
        )
    wall = [p["infobatch"]["seconds"] / p["plain"]["seconds"] for p in pairs]
    cpu = [p["infobatch"]["cpu_seconds"] / p["plain"]["cpu_seconds"] for p in pairs]
    batches = -(-args.num_train // args.batch_size)
    result = {
        "num_train": args.num_train,
        "batch_size": args.batch_size,
        "pairs": args.pairs,
        "threads": args.threads,
        "torch": torch.__version__,
        "wall_ratio_median": statistics.median(wall),
        "wall_ratio_min_max": [min(wall), max(wall)],
        "cpu_ratio_median": statistics.median(cpu),
        "cpu_ratio_min_max": [min(cpu), max(cpu)],
        "inside_infobatch_ms_per_batch_median": 1e3
        * statistics.median(p["infobatch"]["infobatch_seconds"] for p in pairs)
        / batches,
        "plain_ms_per_batch_median": 1e3
        * statistics.median(p["plain"]["seconds"] for p in pairs)
        / batches,
    }
    print(
        f"time per sample pass, InfoBatch (prune_ratio=0) / plain loop: wall "
        f"{result['wall_ratio_median']:.3f}x (range {min(wall):.3f}-{max(wall):.3f}), CPU "
        f"{result['cpu_ratio_median']:.3f}x; inside InfoBatch (planning and update()) "
        f"{result['inside_infobatch_ms_per_batch_median']:.3f} ms a batch of "
        f"{result['plain_ms_per_batch_median']:.2f} ms"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
